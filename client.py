"""Command-line client for the Parakeet worker: live streaming, batch jobs and RunPod websocket sessions.

    # real-time streaming to a WebSocket server (standalone `python websocket_handler.py`, or a session's ws_url)
    python client.py stream speech.wav --url "ws://127.0.0.1:8765/?token=secret"
    python client.py stream speech.wav --url ws://127.0.0.1:8765 --token secret --fast --json
    python client.py stream --mic --url ws://127.0.0.1:8765 --token secret          # needs `pip install sounddevice`

    # a batch job through a RunPod endpoint (API key from RUNPOD_API_KEY) or a local `--rp_serve_api` server
    python client.py batch speech.flac --endpoint-id abc123 --timestamps
    python client.py batch https://example.com/talk.mp3 --endpoint-id abc123 --output-format srt -o talk.srt
    python client.py batch speech.flac --api-url http://127.0.0.1:8000 --sync

    # a real-time session on a RunPod endpoint: start an `action: websocket` job, wait for `ready`, stream, stop
    python client.py session speech.wav --endpoint-id abc123

Exit codes: 0 done, 1 the server or the job failed (the reason is printed on stderr), 2 a usage error.
The streaming protocol is described in docs/PROTOCOL.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import requests
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from parakeet_worker.audio import media as audio_utils
from parakeet_worker.errors import ParakeetError

logger = logging.getLogger("client")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
ENGINE_RATE_HZ = audio_utils.SAMPLE_RATE
MIN_RATE_HZ, MAX_RATE_HZ = 8_000, 48_000
DEFAULT_FRAME_MS = 20
MAX_FRAME_MS = 1000
FAST_MAX_LEAD_S = 15.0  # --fast: stay at most this far ahead of what the server has transcribed (it refuses > 30 s)
FAST_LEAD_WAIT_S = 2.0  # ... but never wait longer than this for the server to report progress
FINALIZE_WAIT_S = 30.0  # --fast: how long to wait for the final answering a `finalize`
CONNECT_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 120.0  # after `stop`, how long the final results may take
SESSION_END_TIMEOUT_S = 60.0  # after the session stopped, how long its job may take to complete
RUNPOD_API_BASE = "https://api.runpod.ai/v2"
RUN_BODY_LIMIT_BYTES = 10 * 1000 * 1000  # RunPod refuses larger request bodies on /run ...
RUNSYNC_BODY_LIMIT_BYTES = 20 * 1000 * 1000  # ... and on /runsync
HTTP_CONNECT_TIMEOUT_S = 10.0
HTTP_READ_TIMEOUT_S = 60.0
POLL_FIRST_S, POLL_MAX_S = 0.5, 3.0
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
URL_SCHEMES = ("http", "https", "s3")


class UsageError(Exception):
    """The command line asks for something impossible (missing file, bad URL, ...): exit code 2."""


class ServerError(Exception):
    """The server, the endpoint or the job failed: exit code 1."""


# --- output ------------------------------------------------------------------------------------------------------
def _clock(seconds: float) -> str:
    minutes, secs = divmod(max(0.0, seconds), 60)
    return f"{int(minutes):02d}:{secs:05.2f}"


def _redact(url: str) -> str:
    """The URL with its token hidden, for messages."""
    parts = urlsplit(url)
    query = [(k, "***" if k == "token" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


class Sink(Protocol):
    """Where a session's messages go: a person's terminal or machine-readable lines."""

    def message(self, message: dict[str, Any]) -> None: ...
    def note(self, text: str) -> None: ...
    def close(self) -> None: ...


class JsonSink:
    """``--json``: every server message (and, for sessions, every job status) as one JSON object per line."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def message(self, message: dict[str, Any]) -> None:
        self.out.write(json.dumps(message, ensure_ascii=False) + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        logger.info("%s", text)

    def close(self) -> None:
        self.out.flush()


class HumanSink:
    """Finals on their own lines (stdout) as they land; on a terminal, the current partial updates in place below
    them (committed words plain, the draft dimmed). Notes, errors and the summary go to stderr."""

    CLEAR = "\r\x1b[2K"

    def __init__(self, *, timestamps: bool, quiet: bool = False, out: TextIO | None = None,
                 err: TextIO | None = None) -> None:
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.timestamps = timestamps
        self.quiet = quiet
        self.live = self.out.isatty()
        self.color = self.live and not os.environ.get("NO_COLOR")
        self._partial_shown = False

    def message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "transcription":
            if message.get("is_final"):
                self._final(message)
            elif self.live:
                self._partial(message)
        elif kind == "error":
            self._clear()
            self.err.write(f"server error [{message.get('code')}]: {message.get('message')}\n")
            self.err.flush()
        elif kind == "stopped":
            self.note(f"stopped ({message.get('reason')}): {message.get('audio_seconds', 0):.2f} s of audio, "
                      f"{message.get('utterances', 0)} utterance(s)")

    def _partial(self, message: dict[str, Any]) -> None:
        committed = message.get("committed_text", "")
        draft = message.get("draft_text", "")
        sep = 1 if committed and draft else 0
        width = max(10, shutil.get_terminal_size((80, 24)).columns - 1)
        cut = len(committed) + sep + len(draft) - (width - 1)
        if cut > 0:  # one line only, or the carriage return cannot take it back: keep the newest words
            if cut <= len(committed):
                committed = "…" + committed[cut:]
            else:
                committed, draft, sep = "", "…" + draft[cut - len(committed) - sep:], 0
        text = committed + " " * sep
        text += f"\x1b[2m{draft}\x1b[0m" if self.color and draft else draft
        self.out.write(self.CLEAR + text)
        self.out.flush()
        self._partial_shown = True

    def _final(self, message: dict[str, Any]) -> None:
        self._clear()
        text = message.get("text", "")
        if not text:
            return
        if self.timestamps:
            text = f"[{_clock(message.get('audio_start', 0.0))} → {_clock(message.get('audio_end', 0.0))}] {text}"
        self.out.write(text + "\n")
        self.out.flush()

    def _clear(self) -> None:
        if self._partial_shown:
            self.out.write(self.CLEAR)
            self.out.flush()
            self._partial_shown = False

    def note(self, text: str) -> None:
        if self.quiet:
            return
        self._clear()
        self.err.write(text + "\n")
        self.err.flush()

    def close(self) -> None:
        self._clear()


# --- audio sources -----------------------------------------------------------------------------------------------
def pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] as 16-bit little-endian PCM bytes."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class AudioSource(Protocol):
    sample_rate: int
    live: bool  # frames arrive at real-time pace by themselves (a microphone): no pacing needed

    def describe(self) -> str: ...
    def frames(self, frame_samples: int) -> AsyncIterator[np.ndarray]: ...


@dataclass(frozen=True)
class FileAudio:
    """A decoded file (float32 mono), at the rate it will be sent."""

    path: Path
    samples: np.ndarray
    sample_rate: int
    live: bool = False

    @classmethod
    def load(cls, path: str, sample_rate: int = ENGINE_RATE_HZ) -> FileAudio:
        file = Path(path)
        if not file.exists():
            raise UsageError(f"no such file: {path}")
        if not file.is_file():
            raise UsageError(f"not a file: {path}")
        try:
            decoded = audio_utils.decode_file(file)
        except ParakeetError as exc:
            raise UsageError(f"cannot read {path} as audio: {exc}") from exc
        samples = audio_utils.resample(decoded.samples, decoded.sample_rate, sample_rate)
        logger.debug("decoded %s (%s): %.2f s, sent at %d Hz", path, decoded.source_format, decoded.duration_s,
                     sample_rate)
        return cls(file, samples, sample_rate)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate

    def describe(self) -> str:
        return f"{self.path.name} ({self.duration_s:.2f} s)"

    async def frames(self, frame_samples: int) -> AsyncIterator[np.ndarray]:
        for start in range(0, len(self.samples), frame_samples):
            yield self.samples[start:start + frame_samples]


class MicAudio:
    """The default input device through ``sounddevice`` (PortAudio), until Ctrl+C or ``seconds``."""

    live = True

    def __init__(self, sample_rate: int, seconds: float | None = None) -> None:
        try:
            import sounddevice
        except (ImportError, OSError) as exc:  # OSError: the package is there but the PortAudio library is not
            raise UsageError("--mic needs the sounddevice package and PortAudio: `pip install sounddevice` "
                             f"(and on Debian/Ubuntu `apt-get install libportaudio2`); {exc}") from exc
        self._sd = sounddevice
        self.sample_rate = sample_rate
        self.seconds = seconds

    def describe(self) -> str:
        return "microphone" + (f" ({self.seconds:.0f} s)" if self.seconds else " (Ctrl+C to stop)")

    async def frames(self, frame_samples: int) -> AsyncIterator[np.ndarray]:
        loop = asyncio.get_running_loop()
        blocks: asyncio.Queue[np.ndarray] = asyncio.Queue()

        def captured(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            if status:
                logger.warning("microphone: %s", status)
            loop.call_soon_threadsafe(blocks.put_nowait, indata[:, 0].copy())

        sent = 0
        limit = int(self.seconds * self.sample_rate) if self.seconds else None
        with self._sd.InputStream(samplerate=self.sample_rate, channels=1, dtype="float32",
                                  blocksize=frame_samples, callback=captured):
            while limit is None or sent < limit:
                block = await blocks.get()
                sent += len(block)
                yield block


# --- real-time streaming -----------------------------------------------------------------------------------------
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
    sample_rate: int = ENGINE_RATE_HZ
    frame_ms: int = DEFAULT_FRAME_MS
    realtime: bool = True  # paced on an absolute clock; False: as fast as the server keeps up
    timestamps: bool = False
    endpointing: bool = True
    endpoint_silence_ms: int | None = None
    final_pass: bool = True  # False: ask for streamed finals (committed words never revised)
    finalize_every_s: float | None = None  # send `finalize` each time this much audio has been sent
    stop_timeout_s: float = STOP_TIMEOUT_S

    def start_message(self) -> dict[str, Any]:
        start: dict[str, Any] = {"action": "start", "sample_rate": self.sample_rate, "encoding": "pcm_s16le",
                                 "timestamps": self.timestamps, "endpointing": self.endpointing}
        if self.endpoint_silence_ms is not None:
            start["endpoint_silence_ms"] = self.endpoint_silence_ms
        if not self.final_pass:
            start["final_pass"] = False
        return start


@dataclass
class StreamOutcome:
    finals: list[str] = field(default_factory=list)
    stopped: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    audio_sent_s: float = 0.0
    close_code: int | None = None
    close_reason: str = ""

    @property
    def ok(self) -> bool:
        return self.stopped is not None and self.stopped.get("reason") == "stop" and not self.errors

    def failure(self) -> str:
        if self.stopped is None:
            return (f"the connection closed before the session stopped (code {self.close_code}"
                    f"{': ' + self.close_reason if self.close_reason else ''})")
        if self.errors:
            return "; ".join(f"[{e.get('code')}] {e.get('message')}" for e in self.errors)
        return f"the session ended: {self.stopped.get('reason')}"


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
            raise ServerError(f"{_redact(url)} refused the connection: HTTP {exc.response.status_code}"
                              f"{': ' + body if body else ''}") from exc
        except InvalidURI as exc:
            raise UsageError(f"not a WebSocket URL: {exc}") from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise ServerError(f"could not connect to {_redact(url)}: {exc or type(exc).__name__}") from exc
        logger.debug("connected to %s", _redact(url))
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
                    message = json.loads(raw)
                except json.JSONDecodeError:
                    logger.warning("the server sent a text frame that is not JSON: %.200s", raw)
                    continue
                if not isinstance(message, dict):
                    continue
                self.sink.message(message)
                await self._track(message)
        except ConnectionClosed:
            pass
        self.outcome.close_code = ws.close_code
        self.outcome.close_reason = ws.close_reason or ""
        self._started.set()  # wakes a sender still waiting for `started`
        async with self._progress:
            self._closed = True
            self._progress.notify_all()

    async def _track(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "started":
            self._started.set()
        elif kind == "transcription":
            if message.get("is_final") and message.get("text"):
                self.outcome.finals.append(message["text"])
            reached = max(float(message.get("audio_end") or 0.0), float(message.get("committed_until") or 0.0))
            async with self._progress:
                self._transcribed_s = max(self._transcribed_s, reached)
                self._finalized += bool(message.get("is_final") and message.get("final_reason") == "finalize")
                self._progress.notify_all()
        elif kind == "error":
            self.outcome.errors.append(message)
            if not self._started.is_set():  # the server refused our `start`
                self._start_refused = True
                self._started.set()
        elif kind == "stopped":
            self.outcome.stopped = message

    async def _send(self, ws: ClientConnection, receiver: asyncio.Task[None]) -> None:
        options, rate = self.options, self.source.sample_rate
        try:
            await ws.send(json.dumps(options.start_message()))
            try:
                await asyncio.wait_for(self._started.wait(), CONNECT_TIMEOUT_S)
            except TimeoutError:
                self.outcome.errors.append({"code": "no_started", "message": "the server did not answer `start` "
                                            f"within {CONNECT_TIMEOUT_S:.0f} s"})
                self._start_refused = True
            if receiver.done():
                return
            if self._start_refused:
                await ws.close(1000, "start refused")
                return
            self.sink.note(f"streaming {self.source.describe()} to {_redact(options.url)}")
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
                        await ws.send(json.dumps({"action": "finalize"}))
                        next_finalize += options.finalize_every_s or 0.0
                        finalizes += 1
                        if not options.realtime and not self.source.live:
                            await self._wait_for_final(finalizes)
            await ws.send(json.dumps({"action": "stop"}))
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


# --- the RunPod job API --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobApi:
    """RunPod's job API (``/run``, ``/runsync``, ``/status/<id>``, ``/cancel/<id>``) on an endpoint, or the
    SDK's local ``--rp_serve_api`` copy of it (``local``: POST-only, no cancel, no progress updates)."""

    base_url: str
    api_key: str | None = None
    local: bool = False

    @classmethod
    def endpoint(cls, endpoint_id: str, api_base: str = RUNPOD_API_BASE) -> JobApi:
        key = os.environ.get("RUNPOD_API_KEY", "").strip()
        if not key:
            raise UsageError("set RUNPOD_API_KEY to your RunPod API key (Settings > API Keys) to use --endpoint-id")
        if not endpoint_id or "/" in endpoint_id:
            raise UsageError(f"--endpoint-id must be the endpoint's id (as in api.runpod.ai/v2/<id>), got "
                             f"{endpoint_id!r}")
        return cls(f"{_http_base(api_base, '--api-base')}/{endpoint_id}", key)

    @classmethod
    def local_server(cls, api_url: str) -> JobApi:
        return cls(_http_base(api_url, "--api-url"), os.environ.get("RUNPOD_API_KEY") or None, local=True)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              read_timeout_s: float = HTTP_READ_TIMEOUT_S) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        logger.debug("%s %s", method, url)
        try:
            response = requests.request(method, url, json=body, headers=headers,
                                        timeout=(HTTP_CONNECT_TIMEOUT_S, read_timeout_s))
        except requests.ConnectionError as exc:
            reason = getattr(exc.args[0], "reason", exc) if exc.args else exc
            raise ServerError(f"could not reach {self.base_url} (is it running?): {reason}") from exc
        except requests.RequestException as exc:
            raise ServerError(f"{method} {url} failed: {exc}") from exc
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code >= 400:
            detail = data.get("error") or data.get("detail") if isinstance(data, dict) else None
            hint = {401: " (check RUNPOD_API_KEY)", 403: " (check RUNPOD_API_KEY)",
                    404: " (check the endpoint id / URL)",
                    413: " (the request is too large: send the audio by URL)"}.get(response.status_code, "")
            raise ServerError(f"{method} {url}: HTTP {response.status_code}{hint}: "
                              f"{detail or response.text[:300] or response.reason}")
        if not isinstance(data, dict):
            raise ServerError(f"{method} {url}: expected a JSON object, got {response.text[:300]!r}")
        return data

    def run(self, job_input: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/run", {"input": job_input})

    def runsync(self, job_input: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        return self._call("POST", "/runsync", {"input": job_input}, read_timeout_s=timeout_s)

    def status(self, job_id: str, read_timeout_s: float = HTTP_READ_TIMEOUT_S) -> dict[str, Any]:
        # the local server runs a /run job when its status is first asked for, and answers only POST
        return self._call("POST" if self.local else "GET", f"/status/{job_id}", {} if self.local else None,
                          read_timeout_s=read_timeout_s)

    def cancel(self, job_id: str) -> None:
        if self.local:
            return
        with contextlib.suppress(ServerError):
            self._call("POST", f"/cancel/{job_id}")
            logger.warning("cancelled job %s", job_id)

    def wait(self, job_id: str, timeout_s: float, on_status: Callable[[dict[str, Any]], bool | None],
             first: dict[str, Any] | None = None) -> dict[str, Any]:
        """Poll until the job ends; ``on_status`` sees every answer and may return True to stop waiting early."""
        deadline = time.monotonic() + timeout_s
        delay = POLL_FIRST_S
        status = first
        while True:
            if status is not None:
                if on_status(status) or status.get("status") in TERMINAL_STATES:
                    return status
                if time.monotonic() > deadline:
                    raise ServerError(f"job {job_id} is still {status.get('status')} after {timeout_s:.0f} s")
                time.sleep(delay)
                delay = min(POLL_MAX_S, delay * 1.5)
            status = self.status(job_id, read_timeout_s=max(HTTP_READ_TIMEOUT_S, deadline - time.monotonic()))


def _http_base(url: str, flag: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{flag} must be an http(s) URL such as http://127.0.0.1:8000, got {url!r}")
    return url.strip().rstrip("/")


def job_error(status: dict[str, Any]) -> str:
    """The reason a job failed, readable: the worker's own message, not the SDK's JSON wrapping of it."""
    error: Any = status.get("error")
    output = status.get("output")
    if not error and isinstance(output, dict):
        error = output.get("error")
    if isinstance(error, str):
        with contextlib.suppress(ValueError):
            decoded = json.loads(error)
            if isinstance(decoded, dict):
                error = decoded
    if isinstance(error, dict):  # an exception in the handler: {"error_type", "error_message", "error_traceback"}
        error = f"{error.get('error_type', 'error')}: {error.get('error_message', error)}"
    code = output.get("error_code") if isinstance(output, dict) else None
    return f"{error or 'no reason given'}" + (f" [{code}]" if code else "")


class StatusLine:
    """Job status and progress on stderr: one line updated in place on a terminal, else a line per change."""

    def __init__(self, err: TextIO | None = None, quiet: bool = False) -> None:
        self.err = err or sys.stderr
        self.quiet = quiet
        self.live = self.err.isatty()
        self.started = time.monotonic()
        self._last = ""

    def show(self, status: dict[str, Any]) -> None:
        text = describe_status(status)
        if self.quiet or not text:
            return
        if self.live:
            self.err.write(f"\r\x1b[2K{text} ({time.monotonic() - self.started:.0f} s)")
        elif text != self._last:
            self.err.write(text + "\n")
        self._last = text
        self.err.flush()

    def done(self) -> None:
        if self.live and self._last and not self.quiet:
            self.err.write("\r\x1b[2K")
            self.err.flush()


def describe_status(status: dict[str, Any]) -> str:
    state = status.get("status", "?")
    job = status.get("id", "")
    if state == "IN_QUEUE":
        return f"job {job}: queued, waiting for a worker"
    if state != "IN_PROGRESS":
        return f"job {job}: {state.lower()}"
    progress = status.get("output")
    if isinstance(progress, dict):
        if progress.get("status") == "ready":
            return f"job {job}: session ready"
        stage = progress.get("stage", "working")
        if progress.get("chunks_total"):
            return f"job {job}: {stage}, window {progress.get('chunks_done', 0)}/{progress['chunks_total']}"
        if progress.get("audio_seconds") is not None:
            return f"job {job}: {stage} {progress['audio_seconds']:.1f} s of audio"
        return f"job {job}: {stage}"
    return f"job {job}: in progress"


# --- batch --------------------------------------------------------------------------------------------------------
def batch_input(source: str, *, timestamps: bool, output_format: str | None, chunk_long_audio: bool,
                chunk_duration: float | None) -> dict[str, Any]:
    """The job input for a local file (sent as base64) or a URL (fetched by the worker)."""
    job: dict[str, Any] = {}
    scheme = urlsplit(source).scheme.lower()
    if "://" in source:
        if scheme not in URL_SCHEMES:
            raise UsageError(f"the worker fetches http://, https:// and s3:// URLs, not {scheme}:// ({source})")
        job["audio_url"] = source
    else:
        path = Path(source)
        if not path.is_file():
            raise UsageError(f"no such file: {source}" if not path.exists() else f"not a file: {source}")
        data = path.read_bytes()
        if not data:
            raise UsageError(f"{source} is empty")
        job["audio_base64"] = base64.b64encode(data).decode("ascii")
    if timestamps:
        job["timestamps"] = True
    if output_format:
        job["output_format"] = output_format
    if chunk_long_audio:
        job["chunk_long_audio"] = True
    if chunk_duration is not None:
        if not chunk_long_audio:
            raise UsageError("--chunk-duration needs --chunk-long-audio")
        job["chunk_duration"] = chunk_duration
    return job


def warn_if_too_large(job_input: dict[str, Any], sync: bool) -> None:
    size = len(json.dumps({"input": job_input}))
    limit = RUNSYNC_BODY_LIMIT_BYTES if sync else RUN_BODY_LIMIT_BYTES
    if size > limit:
        logger.warning("the request is %.1f MB; RunPod refuses bodies over %d MB on %s: upload the file and pass "
                       "its URL instead (e.g. an S3 pre-signed URL)", size / 1e6, limit // 1_000_000,
                       "/runsync" if sync else "/run")


def render_output(output: dict[str, Any], output_format: str | None, timestamps: bool) -> str:
    """The job output as a person wants it: the subtitle file, the text, or the JSON."""
    if output_format in ("srt", "vtt"):
        return output.get(output_format, "")
    if output_format == "json":
        return json.dumps(output, indent=2, ensure_ascii=False) + "\n"
    if "results" in output:  # several inputs in one job
        return "".join(render_output(r, output_format, timestamps) for r in output["results"])
    if timestamps and output.get("segments"):
        return "".join(f"[{_clock(s['start'])} → {_clock(s['end'])}] {s['text']}\n" for s in output["segments"])
    return output.get("text", "") + "\n"


def output_stats(output: dict[str, Any]) -> str:
    if "duration" not in output:
        return ""
    speed = f" ({output['rtfx']}× real time)" if output.get("rtfx") else ""
    chunking = f", {output['chunking']['windows']} windows" if output.get("chunking") else ""
    return (f"{output['duration']:.2f} s of audio in {output.get('processing_time', 0):.2f} s{speed} · "
            f"{output.get('model')} on {output.get('device')}/{output.get('dtype')}, "
            f"{output.get('attention')} attention{chunking}")


def cmd_batch(args: argparse.Namespace) -> int:
    api = JobApi.local_server(args.api_url) if args.api_url else JobApi.endpoint(args.endpoint_id, args.api_base)
    if args.output and args.json:
        raise UsageError("-o writes the rendered output; --json prints the whole response: pick one")
    job_input = batch_input(args.source, timestamps=args.timestamps, output_format=args.output_format,
                            chunk_long_audio=args.chunk_long_audio, chunk_duration=args.chunk_duration)
    warn_if_too_large(job_input, args.sync)
    progress = StatusLine(quiet=args.quiet)
    job_id: str | None = None
    try:
        if args.sync:
            first = api.runsync(job_input, timeout_s=args.timeout)
        else:
            first = api.run(job_input)
        job_id = str(first.get("id", ""))
        status = first
        if first.get("status") not in TERMINAL_STATES:  # /runsync hands long jobs over to /status
            if not job_id:
                raise ServerError(f"the endpoint answered without a job id: {first}")

            def seen(status: dict[str, Any]) -> None:
                progress.show(status)

            status = api.wait(job_id, args.timeout, seen, first)
    except KeyboardInterrupt:
        progress.done()
        if job_id:
            api.cancel(job_id)
        return EXIT_INTERRUPTED
    progress.done()
    if args.json:
        print(json.dumps(status, ensure_ascii=False))
    if status.get("status") != "COMPLETED":
        raise ServerError(f"job {job_id or ''} {str(status.get('status', '')).lower()}: {job_error(status)}")
    output = status.get("output")
    if not isinstance(output, dict):
        raise ServerError(f"job {job_id} completed without an output object: {output!r}")
    if args.json:
        return EXIT_OK
    rendered = render_output(output, args.output_format, args.timestamps)
    if args.output:
        Path(args.output).write_text(rendered, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(rendered)
    if stats := output_stats(output):
        if not args.quiet:
            print(stats, file=sys.stderr)
    return EXIT_OK


# --- stream and session ----------------------------------------------------------------------------------------------
def _stream_options(args: argparse.Namespace, url: str) -> StreamOptions:
    if not MIN_RATE_HZ <= args.sample_rate <= MAX_RATE_HZ:
        raise UsageError(f"--sample-rate must be from {MIN_RATE_HZ} to {MAX_RATE_HZ} Hz, got {args.sample_rate}")
    if not 1 <= args.frame_ms <= MAX_FRAME_MS:
        raise UsageError(f"--frame-ms must be from 1 to {MAX_FRAME_MS}, got {args.frame_ms}")
    if args.finalize_after_s is not None and args.finalize_after_s <= 0:
        raise UsageError("--finalize-after-s must be a positive number of seconds")
    return StreamOptions(url=url, sample_rate=args.sample_rate, frame_ms=args.frame_ms, realtime=args.realtime,
                         timestamps=args.timestamps, endpointing=args.endpointing,
                         endpoint_silence_ms=args.silence_ms, finalize_every_s=args.finalize_after_s,
                         final_pass=args.final_pass)


def _audio_source(args: argparse.Namespace) -> AudioSource:
    if args.mic and args.source:
        raise UsageError("give a file or --mic, not both")
    if args.seconds is not None and (not args.mic or args.seconds <= 0):
        raise UsageError("--seconds takes a positive number and goes with --mic")
    if args.mic:
        return MicAudio(args.sample_rate, args.seconds)
    if not args.source:
        raise UsageError("give an audio file to stream, or --mic")
    return FileAudio.load(args.source, args.sample_rate)


def _sink(args: argparse.Namespace) -> Sink:
    return JsonSink() if args.json else HumanSink(timestamps=args.timestamps, quiet=args.quiet)


def cmd_stream(args: argparse.Namespace) -> int:
    if not args.url:
        raise UsageError("--url is required (or set PARAKEET_WS_URL), e.g. --url ws://127.0.0.1:8765")
    options = _stream_options(args, build_ws_url(args.url, args.token))
    source = _audio_source(args)
    outcome = asyncio.run(stream_once(options, source, _sink(args)))
    if not outcome.ok:
        raise ServerError(outcome.failure())
    return EXIT_OK


@dataclass(frozen=True)
class SessionReady:
    """The ``status: ready`` progress update of an ``action: websocket`` job (docs/PROTOCOL.md)."""

    ws_url: str
    address: str  # "public": RunPod's public IP and mapped port; "internal": reachable only beside the worker
    protocol: str | None
    limits: dict[str, Any]
    raw: dict[str, Any]


def find_ready(status: dict[str, Any]) -> SessionReady | None:
    """The ready announcement in a ``/status`` (or ``/stream``) answer, or None while there is none yet."""
    candidates: list[Any] = [status.get("output")]
    candidates += [chunk.get("output") for chunk in status.get("stream") or [] if isinstance(chunk, dict)]
    flat: list[Any] = []
    for candidate in candidates:
        flat.extend(candidate if isinstance(candidate, list) else [candidate])
    for candidate in reversed(flat):
        if isinstance(candidate, str):
            try:
                candidate = json.loads(candidate)
            except ValueError:
                continue
        if isinstance(candidate, dict) and candidate.get("status") == "ready":
            return parse_ready(candidate)
    return None


def parse_ready(ready: dict[str, Any]) -> SessionReady:
    url = ready.get("ws_url")
    token = ready.get("token")
    if not url:
        host, port = ready.get("host"), ready.get("port")
        if not host or not port:
            raise ServerError(f"the session's ready message names no ws_url (nor host and port): {ready}")
        host = f"[{host}]" if ":" in str(host) and not str(host).startswith("[") else host  # IPv6
        url = f"ws://{host}:{port}/"
    try:
        url = build_ws_url(str(url), str(token) if token and "token=" not in str(url) else None)
    except UsageError as exc:
        raise ServerError(f"the session's ready message has an unusable ws_url: {exc}") from exc
    limits = ready.get("limits") if isinstance(ready.get("limits"), dict) else {}
    return SessionReady(url, str(ready.get("address", "unknown")), ready.get("protocol"), limits or {}, ready)


def cmd_session(args: argparse.Namespace) -> int:
    api = JobApi.endpoint(args.endpoint_id, args.api_base)
    source = _audio_source(args)
    sink = _sink(args)
    job_input: dict[str, Any] = {"action": "websocket"}
    if args.idle_timeout is not None:
        job_input["idle_timeout"] = args.idle_timeout
    if args.max_session_length is not None:
        job_input["max_session_length"] = args.max_session_length
    progress = StatusLine(quiet=args.json or args.quiet)
    job_id = ""
    finished = False
    try:
        submitted = api.run(job_input)
        job_id = str(submitted.get("id", ""))
        if not job_id:
            raise ServerError(f"the endpoint answered /run without a job id: {submitted}")
        found: list[SessionReady] = []

        def seen(status: dict[str, Any]) -> bool:
            progress.show(status)
            ready = find_ready(status)
            if ready is not None:
                found.append(ready)
            return ready is not None

        status = api.wait(job_id, args.ready_timeout, seen, submitted)
        progress.done()
        if not found:
            finished = True
            raise ServerError(f"job {job_id} ended before its session was ready: "
                              f"{status.get('status')}: {job_error(status)}")
        ready = found[0]
        if args.json:
            sink.message({"type": "job", "id": job_id, "status": "IN_PROGRESS", "output": ready.raw})
        else:
            sink.note(f"job {job_id}: session ready at {_redact(ready.ws_url)} ({ready.address} address)")
        if ready.address == "internal":
            logger.warning("the worker announced its internal address: from outside RunPod it is reachable only "
                           "when the endpoint exposes TCP port 8765 (Expose HTTP/TCP ports)")
        outcome = asyncio.run(stream_once(_stream_options(args, ready.ws_url), source, sink))
        final = api.wait(job_id, SESSION_END_TIMEOUT_S, lambda status: None)
        finished = True
    except KeyboardInterrupt:
        progress.done()
        if job_id and not finished:
            api.cancel(job_id)
        return EXIT_INTERRUPTED
    except ServerError:
        if job_id and not finished:
            api.cancel(job_id)
        raise
    if args.json:
        sink.message({"type": "job", **final})
    if final.get("status") != "COMPLETED":
        raise ServerError(f"job {job_id} {str(final.get('status', '')).lower()}: {job_error(final)}")
    output = final.get("output") if isinstance(final.get("output"), dict) else {}
    if not args.json:
        sink.note(f"job {job_id} completed: {output.get('reason')}, {output.get('audio_seconds', 0):.2f} s of "
                  f"audio, {output.get('utterances', 0)} utterance(s) in {output.get('duration_s', 0):.1f} s")
    if not outcome.ok:
        raise ServerError(outcome.failure())
    return EXIT_OK


# --- command line ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="client.py", description="Talk to the Parakeet speech-to-text worker: stream audio in real time, "
        "run batch jobs, or open a real-time session on a RunPod endpoint.",
        epilog="exit codes: 0 done, 1 the server or job failed, 2 usage error")
    parser.add_argument("-v", "--verbose", action="store_true", help="log requests and diagnostics on stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    audio = argparse.ArgumentParser(add_help=False)
    audio.add_argument("source", nargs="?", metavar="FILE", help="audio file (any common format)")
    audio.add_argument("--mic", action="store_true", help="stream the microphone instead (needs sounddevice)")
    audio.add_argument("--seconds", type=float, default=None, help="with --mic: stop after this long")
    audio.add_argument("--sample-rate", type=int, default=ENGINE_RATE_HZ, metavar="HZ",
                       help="send PCM at this rate, 8000-48000 (the file is resampled with soxr; default 16000)")
    audio.add_argument("--frame-ms", type=int, default=DEFAULT_FRAME_MS, help="audio per frame (default 20)")
    pace = audio.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="realtime", action="store_true", default=True,
                      help="send a file at real-time pace on an absolute clock (default)")
    pace.add_argument("--fast", dest="realtime", action="store_false",
                      help="send a file as fast as the server keeps up")
    audio.add_argument("--timestamps", action="store_true", help="ask for word timestamps; show utterance times")
    audio.add_argument("--no-endpointing", dest="endpointing", action="store_false",
                       help="no server VAD: one utterance until finalize/stop")
    audio.add_argument("--streamed-finals", dest="final_pass", action="store_false",
                       help="finals from the streamed chunks instead of an offline pass over each utterance")
    audio.add_argument("--silence-ms", type=int, default=None, help="silence that ends an utterance (server: 600)")
    audio.add_argument("--finalize-after-s", type=float, default=None, metavar="S",
                       help="send a finalize each time S more seconds of audio have been sent")
    audio.add_argument("--json", action="store_true", help="one JSON object per line for every server message")
    audio.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")

    stream = commands.add_parser("stream", parents=[audio], help="stream a file or the microphone to a ws:// URL",
                                 description="Stream audio to the WebSocket server and show partials in place and "
                                             "finals as they land.")
    stream.add_argument("--url", default=os.environ.get("PARAKEET_WS_URL"),
                        help="ws://host:port/?token=... (env PARAKEET_WS_URL)")
    stream.add_argument("--token", default=os.environ.get("PARAKEET_WS_TOKEN"),
                        help="the session token, if not in the URL (env PARAKEET_WS_TOKEN)")
    stream.set_defaults(run=cmd_stream)

    endpoint = argparse.ArgumentParser(add_help=False)
    endpoint.add_argument("--api-base", default=os.environ.get("RUNPOD_API_BASE", RUNPOD_API_BASE),
                          help=f"RunPod's API (default {RUNPOD_API_BASE}; env RUNPOD_API_BASE)")

    batch = commands.add_parser("batch", parents=[endpoint], help="transcribe a file or URL as a job",
                                description="Transcribe a file (sent as base64) or a URL (fetched by the worker) "
                                            "through a RunPod endpoint or a local --rp_serve_api server.")
    batch.add_argument("source", metavar="FILE_OR_URL")
    where = batch.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint-id", help="RunPod endpoint id (API key from env RUNPOD_API_KEY)")
    where.add_argument("--api-url", help="a local `rp_handler.py --rp_serve_api` server, e.g. http://127.0.0.1:8000")
    batch.add_argument("--sync", action="store_true", help="use /runsync instead of /run + /status polling")
    batch.add_argument("--timestamps", action="store_true", help="word/segment/char timestamps; show segment times")
    batch.add_argument("--output-format", choices=("json", "text", "srt", "vtt"), default=None,
                       help="json: the whole output; text: the transcript; srt/vtt: subtitles (default: transcript "
                            "and stats)")
    batch.add_argument("-o", "--output", metavar="FILE", help="write the rendered output (e.g. the srt) to FILE")
    batch.add_argument("--chunk-long-audio", action="store_true", help="transcribe in overlapping windows")
    batch.add_argument("--chunk-duration", type=float, default=None, metavar="S", help="window length")
    batch.add_argument("--timeout", type=float, default=3600.0, metavar="S", help="give up after S seconds")
    batch.add_argument("--json", action="store_true", help="print the job's final response as one JSON object")
    batch.add_argument("-q", "--quiet", action="store_true", help="no progress or stats on stderr")
    batch.set_defaults(run=cmd_batch)

    session = commands.add_parser("session", parents=[audio, endpoint],
                                  help="start a websocket job on an endpoint, stream to it, stop",
                                  description="Start an `action: websocket` job, wait for its ready message, stream "
                                              "the audio to its ws_url, stop, and print the job's summary.")
    session.add_argument("--endpoint-id", required=True, help="RunPod endpoint id (API key from env RUNPOD_API_KEY)")
    session.add_argument("--idle-timeout", type=float, default=None, metavar="S", help="the session's idle timeout")
    session.add_argument("--max-session-length", type=float, default=None, metavar="S", help="the session's limit")
    session.add_argument("--ready-timeout", type=float, default=600.0, metavar="S",
                         help="how long to wait for a worker to announce the session (cold starts take minutes)")
    session.set_defaults(run=cmd_session)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        return int(args.run(args))
    except UsageError as exc:
        print(f"client.py {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ServerError as exc:
        print(f"client.py {args.command}: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `client.py ... | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # keeps the interpreter's final flush quiet
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
