"""One real-time session over the WebSocket protocol (docs/PROTOCOL.md): connect, ``start``, send PCM16 frames
(paced in real time, or as fast as the server keeps up), ``stop``, and collect what the server says."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from parakeet_client.audio import AudioSource, pcm16
from parakeet_client.errors import ServerError, UsageError
from parakeet_client.render import Sink
from parakeet_worker.serving import protocol as proto

logger = logging.getLogger("client")

DEFAULT_FRAME_MS = 20
MAX_FRAME_MS = 1000
FAST_MAX_LEAD_S = 15.0  # --fast: stay at most this far ahead of what the server has transcribed (it refuses > 30 s)
FAST_LEAD_WAIT_S = 2.0  # ... but never wait longer than this for the server to report progress
FINALIZE_WAIT_S = 30.0  # --fast: how long to wait for the final answering a `finalize`
CONNECT_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 120.0  # after `stop`, how long the final results may take


def redact(url: str) -> str:
    """The URL with its token hidden, for messages."""
    parts = urlsplit(url)
    query = [(k, "***" if k == "token" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


def build_ws_url(url: str, token: str | None = None) -> str:
    """``url`` checked (ws:// or wss://, a host) with ``token`` put in its query (replacing one already there)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("ws", "wss"):
        hint = " (use ws:// or wss:// for the WebSocket server; batch jobs take http(s) URLs)" \
            if parts.scheme in ("http", "https") else ""
        raise UsageError(f"the stream URL must start with ws:// or wss://, got {url!r}{hint}")
    if not parts.hostname:
        raise UsageError(f"the stream URL {url!r} has no host")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not (token and k == "token")]
    if token:
        query.append(("token", token))
    return urlunsplit(parts._replace(path=parts.path or "/", query=urlencode(query)))


@dataclass(frozen=True)
class StreamOptions:
    """What ``stream`` (and ``session``) send: the connection, the ``start`` message and the pacing."""

    url: str
    sample_rate: int = proto.DEFAULT_SAMPLE_RATE_HZ
    frame_ms: int = DEFAULT_FRAME_MS
    realtime: bool = True  # paced on an absolute clock; False: as fast as the server keeps up
    timestamps: bool = False
    endpointing: bool = True
    endpoint_silence_ms: int | None = None
    final_pass: bool = True  # False: ask for streamed finals (committed words never revised)
    finalize_every_s: float | None = None  # send `finalize` each time this much audio has been sent
    stop_timeout_s: float = STOP_TIMEOUT_S

    def start_message(self) -> proto.Start:
        return proto.Start(sample_rate=self.sample_rate, timestamps=self.timestamps, endpointing=self.endpointing,
                           endpoint_silence_ms=self.endpoint_silence_ms, final_pass=self.final_pass)


@dataclass
class StreamOutcome:
    finals: list[str] = field(default_factory=list)
    stopped: proto.Stopped | None = None
    errors: list[proto.Error] = field(default_factory=list)
    audio_sent_s: float = 0.0
    close_code: int | None = None
    close_reason: str = ""

    @property
    def ok(self) -> bool:
        return self.stopped is not None and self.stopped.reason == proto.EndReason.STOP and not self.errors

    def failure(self) -> str:
        if self.stopped is None:
            return (f"the connection closed before the session stopped (code {self.close_code}"
                    f"{': ' + self.close_reason if self.close_reason else ''})")
        if self.errors:
            return "; ".join(f"[{e.code}] {e.message}" for e in self.errors)
        return f"the session ended: {self.stopped.reason}"


def _read(obj: dict[str, Any]) -> proto.ServerMessage | proto.UnknownMessage:
    """A server message, typed; one this client cannot read is kept whole (printed with --json, else ignored)."""
    try:
        return proto.parse_server(obj)
    except proto.ProtocolError as exc:
        logger.warning("the server sent a message this client cannot read (%s): %.200s", exc, obj)
        return proto.UnknownMessage(type=str(obj.get("type")), fields=obj)


class StreamClient:
    """One session: connect, ``start``, send PCM16 frames, ``stop``, collect what the server says until it closes."""

    def __init__(self, options: StreamOptions, source: AudioSource, sink: Sink) -> None:
        self.options = options
        self.source = source
        self.sink = sink
        self.outcome = StreamOutcome()
        self.stop_requested = asyncio.Event()
        self._started = asyncio.Event()  # `started`, or an error answering `start`, or the connection closed
        self._start_refused = False
        self._progress = asyncio.Condition()
        self._transcribed_s = 0.0  # how far the server's results reach (session seconds)
        self._finalized = 0  # finals answering a `finalize`
        self._closed = False

    async def run(self) -> StreamOutcome:
        url = self.options.url
        try:
            ws = await connect(url, open_timeout=CONNECT_TIMEOUT_S, max_size=None)
        except InvalidStatus as exc:
            body = exc.response.body.decode("utf-8", "replace") if exc.response.body else ""
            with contextlib.suppress(ValueError, AttributeError):
                body = json.loads(body).get("error", body)
            raise ServerError(f"{redact(url)} refused the connection: HTTP {exc.response.status_code}"
                              f"{': ' + body if body else ''}") from exc
        except InvalidURI as exc:
            raise UsageError(f"not a WebSocket URL: {exc}") from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise ServerError(f"could not connect to {redact(url)}: {exc or type(exc).__name__}") from exc
        logger.debug("connected to %s", redact(url))
        receiver = asyncio.create_task(self._receive(ws), name="receive")
        try:
            await self._send(ws, receiver)
            await asyncio.wait_for(asyncio.shield(receiver), self.options.stop_timeout_s)
        except TimeoutError:
            self.sink.note(f"no `stopped` within {self.options.stop_timeout_s:.0f} s of stop; closing")
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver
            await ws.close()
            self.outcome.close_code = self.outcome.close_code or ws.close_code
            self.sink.close()
        return self.outcome

    async def _receive(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                if isinstance(raw, bytes):
                    logger.debug("ignored a binary message of %d bytes", len(raw))
                    continue
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError:
                    logger.warning("the server sent a text frame that is not JSON: %.200s", raw)
                    continue
                if not isinstance(obj, dict):
                    continue
                message = _read(obj)
                self.sink.message(message, obj)
                await self._track(message)
        except ConnectionClosed:
            pass
        self.outcome.close_code = ws.close_code
        self.outcome.close_reason = ws.close_reason or ""
        self._started.set()  # wakes a sender still waiting for `started`
        async with self._progress:
            self._closed = True
            self._progress.notify_all()

    async def _track(self, message: proto.ServerMessage | proto.UnknownMessage) -> None:
        if isinstance(message, proto.Started):
            self._started.set()
        elif isinstance(message, proto.Transcription):
            if message.is_final and message.text:
                self.outcome.finals.append(message.text)
            async with self._progress:
                self._transcribed_s = max(self._transcribed_s, message.reached_s)
                self._finalized += message.is_final and message.from_finalize
                self._progress.notify_all()
        elif isinstance(message, proto.Error):
            self.outcome.errors.append(message)
            if not self._started.is_set():  # the server refused our `start`
                self._start_refused = True
                self._started.set()
        elif isinstance(message, proto.Stopped):
            self.outcome.stopped = message

    async def _send(self, ws: ClientConnection, receiver: asyncio.Task[None]) -> None:
        options, rate = self.options, self.source.sample_rate
        try:
            await ws.send(json.dumps(options.start_message().to_json()))
            try:
                await asyncio.wait_for(self._started.wait(), CONNECT_TIMEOUT_S)
            except TimeoutError:
                self.outcome.errors.append(proto.Error(code="no_started", message="the server did not answer "
                                                       f"`start` within {CONNECT_TIMEOUT_S:.0f} s"))
                self._start_refused = True
            if receiver.done():
                return
            if self._start_refused:
                await ws.close(proto.CloseCode.NORMAL, "start refused")
                return
            self.sink.note(f"streaming {self.source.describe()} to {redact(options.url)}")
            frame_samples = max(1, rate * options.frame_ms // 1000)
            next_finalize = options.finalize_every_s
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            sent = finalizes = 0
            async with contextlib.aclosing(self.source.frames(frame_samples)) as frames:
                async for block in frames:
                    if self.stop_requested.is_set() or receiver.done():
                        break
                    if not self.source.live:
                        if options.realtime:  # a frame leaves when its last sample would have been spoken
                            await self._sleep_or_stop(t0 + (sent + len(block)) / rate - loop.time())
                        else:
                            await self._wait_for_server(sent / rate)
                    await ws.send(pcm16(block))
                    sent += len(block)
                    self.outcome.audio_sent_s = sent / rate
                    if next_finalize is not None and sent / rate >= next_finalize:
                        await ws.send(json.dumps(proto.Finalize().to_json()))
                        next_finalize += options.finalize_every_s or 0.0
                        finalizes += 1
                        if not options.realtime and not self.source.live:
                            await self._wait_for_final(finalizes)
            await ws.send(json.dumps(proto.Stop().to_json()))
        except ConnectionClosed:
            logger.debug("the connection closed while sending")

    async def _sleep_or_stop(self, delay_s: float) -> None:
        if delay_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_requested.wait(), delay_s)

    async def _wait_for_final(self, finalizes: int) -> None:
        """``--fast``: the server ends the utterance at whatever audio it holds when it gets to a `finalize`, so
        audio sent right after it could land in the finalized utterance: wait for the final before sending more."""
        async with self._progress:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._progress.wait_for(lambda: self._closed or self._finalized >= finalizes), FINALIZE_WAIT_S)

    async def _wait_for_server(self, sent_s: float) -> None:
        """``--fast``: keep at most FAST_MAX_LEAD_S of audio in flight, so the server never drops frames as
        overloaded; if it reports nothing for FAST_LEAD_WAIT_S, go on anyway."""
        async with self._progress:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._progress.wait_for(lambda: sent_s - self._transcribed_s < FAST_MAX_LEAD_S),
                    FAST_LEAD_WAIT_S)


def _install_interrupt(loop: asyncio.AbstractEventLoop, on_interrupt: Callable[[], None]) -> None:
    """First Ctrl+C: ``on_interrupt`` (a graceful stop); a second one interrupts for real."""
    def first() -> None:
        loop.remove_signal_handler(signal.SIGINT)
        on_interrupt()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows / not the main thread
        loop.add_signal_handler(signal.SIGINT, first)


async def stream_once(options: StreamOptions, source: AudioSource, sink: Sink) -> StreamOutcome:
    client = StreamClient(options, source, sink)
    loop = asyncio.get_running_loop()

    def interrupted() -> None:
        sink.note("stopping (Ctrl+C again to quit at once)")
        client.stop_requested.set()

    _install_interrupt(loop, interrupted)
    try:
        return await client.run()
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
