"""One WebSocket connection: the protocol (docs/PROTOCOL.md) between a client and its stream on the engine.

The session talks to its socket through :class:`Connection` (receive a text or binary message, send text, close
with a code and reason), which the native face (:mod:`~parakeet_worker.serving.native_face`) implements over the
app's WebSocket; the session itself knows no web framework.

The asyncio side only moves bytes and messages: audio is resampled to the engine's rate and pushed to the stream,
the engine's events (on its own thread) come back through the loop as ``transcription`` messages. Every outgoing
message goes through one queue, numbered in order (``seq``), so a slow reader never reorders or loses them.

However a session ends — the client's ``stop``, idle, its length limit, its job cancelled, shutdown — one task
(:meth:`Session.end`) does the ending: the utterance in progress gets its final, then ``stopped``, then the close
with its code and reason; the receive loop and the connection wait for it, so a client still sending cannot cut
it short. A final the engine could not produce is said so (``final_unavailable``), never dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any, Protocol

import numpy as np
import soxr

from parakeet_worker.audio import pcm16_to_float32
from parakeet_worker.engine import ParakeetEngine
from parakeet_worker.errors import EngineClosedError, EngineOverloadedError, ParakeetError
from parakeet_worker.observability import Metrics
from parakeet_worker.serving import protocol as proto
from parakeet_worker.serving.protocol import EndReason, ErrorCode, ProtocolError
from parakeet_worker.serving.ws_grants import Grant, SessionSummary
from parakeet_worker.streaming import (
    EndpointConfig,
    FinalizeLimitError,
    StreamBacklogError,
    StreamEvent,
    StreamHandle,
    StreamOptions,
)
from parakeet_worker.transcript import SAMPLE_RATE_HZ

logger = logging.getLogger("websocket_handler")

STOP_WAIT_S = 30.0  # after ``stop``, how long the engine may take to serve the last finals
DRAIN_WAIT_S = 10.0  # ... and the queued messages to reach a slow reader before the socket closes
WATCHDOG_PERIOD_S = 0.5
RATE_LIMIT_NOTICE_S = 1.0  # at most one ``rate_limited`` error per this long: refusals must not flood the reader
SMALL_CONTROL_BYTES = 256  # past the rate limit only small text frames are read (a ``stop`` is always honoured)
# Ends that are no fault of the session; the metric records any other reason as its error code.
NORMAL_ENDS = frozenset(EndReason) - {EndReason.NO_CLIENT}


def _resampler(rate: int) -> soxr.ResampleStream:
    return soxr.ResampleStream(rate, SAMPLE_RATE_HZ, 1, dtype="float32", quality="HQ")


class ConnectionGone(Exception):
    """The client's socket is closed: nothing more can be sent on it."""


class Connection(Protocol):
    """The session's socket, whatever serves it."""

    @property
    def remote_address(self) -> str:
        """The client's address (for the refusal back-off and the log)."""

    async def receive(self) -> str | bytes | None:
        """The next message (text or binary), or ``None`` once the connection is closed."""

    async def send_text(self, text: str) -> None:
        """Send one text message; raises :class:`ConnectionGone` when the socket is closed."""

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code`` and ``reason`` (idempotent; never raises)."""


# The notice a session gets when the server ends it for a reason the session did not cause.
_END_NOTICES: dict[EndReason, proto.Error] = {
    EndReason.SERVER_SHUTDOWN: proto.Error(
        code=ErrorCode.SERVER_SHUTDOWN,
        message="the worker is shutting down: the utterance in progress gets its final, then the session stops; "
                "reconnect to another worker"),
    EndReason.CANCELLED: proto.Error(
        code=ErrorCode.CANCELLED,
        message="the session's job was cancelled: the utterance in progress gets its final, then the session stops"),
}


class Session:
    """One client's session: its protocol state, its stream on the engine and its outgoing queue. A
    :class:`~parakeet_worker.serving.faces.LiveSession` of the native face."""

    face = "native"  # the metrics' face label

    def __init__(self, engine: ParakeetEngine, ws: Connection, grant: Grant, *, metrics: Metrics,
                 active_sessions: Callable[[], int]) -> None:
        self.engine = engine
        self.ws = ws
        self.grant = grant
        self.metrics = metrics
        self.active_sessions = active_sessions
        self.id = uuid.uuid4().hex[:12]
        self.loop = asyncio.get_running_loop()
        self.opened = time.monotonic()
        self.last_activity = self.opened
        self.started: proto.SessionSettings | None = None
        self.handle: StreamHandle | None = None
        self.resampler: soxr.ResampleStream | None = None
        self.seq = 0
        self.finals: list[str] = []
        self.audio_samples = 0  # at the client's rate
        self.reason: EndReason | None = None
        self.closed_event = asyncio.Event()  # the engine stream is closed
        self.closed_reason = ""  # ... and why (``stop`` when its last final was served)
        self.dropped_s = 0.0  # audio the engine refused (backlog): not counted in ``audio_seconds``
        self.error_code: str | None = None  # what the session lost (``final_unavailable``), for the summary
        self.outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self._ending: asyncio.Task[None] | None = None  # the one task that ends the session (see end())
        self._closing: asyncio.Task[None] | None = None  # abandon()'s close
        self._control_tokens = float(proto.MAX_CONTROL_BURST)
        self._control_at = self.opened
        self._refused_notice_at = 0.0
        self.refused_messages = 0

    # --- lifecycle ----------------------------------------------------------------------------------------------
    async def run(self) -> None:
        logger.info("session %s opened (job %s)", self.id, self.grant.job_id)
        sender = self._sender = asyncio.create_task(self._send_loop(), name=f"ws-send-{self.id}")
        watchdog = asyncio.create_task(self._watchdog(), name=f"ws-watch-{self.id}")
        self._send(self._welcome())
        try:
            await self._receive_loop()
        finally:
            await self._close(watchdog, sender)

    async def _receive_loop(self) -> None:
        while (message := await self.ws.receive()) is not None:
            self.last_activity = time.monotonic()
            try:
                if isinstance(message, bytes):
                    self._on_audio(message)
                elif self._admit_control(message):
                    await self._on_text(message)
            except ProtocolError as exc:
                self._send(proto.Error.of(exc))
            if self._ending is not None and self._ending.done():
                break

    def _admit_control(self, raw: str) -> bool:
        """The per-session token bucket on control messages; past it a message is refused (one ``rate_limited``
        notice per second), except a ``stop``, which always ends the session."""
        now = time.monotonic()
        self._control_tokens = min(float(proto.MAX_CONTROL_BURST),
                                   self._control_tokens + (now - self._control_at) * proto.MAX_CONTROL_RATE_PER_S)
        self._control_at = now
        if self._control_tokens >= 1.0:
            self._control_tokens -= 1.0
            return True
        if len(raw) <= SMALL_CONTROL_BYTES and '"stop"' in raw:
            with contextlib.suppress(ProtocolError):
                if proto.action_of(proto.loads(raw)) is proto.Action.STOP:
                    return True
        self.refused_messages += 1
        if now - self._refused_notice_at >= RATE_LIMIT_NOTICE_S:
            self._refused_notice_at = now
            logger.warning("session %s: control messages over %.0f/s refused (%d so far)", self.id,
                           proto.MAX_CONTROL_RATE_PER_S, self.refused_messages)
            self._send(proto.Error(code=ErrorCode.RATE_LIMITED,
                                   message=f"more than {proto.MAX_CONTROL_RATE_PER_S:.0f} control messages per second "
                                           f"(burst {proto.MAX_CONTROL_BURST}); {self.refused_messages} were refused "
                                           "so far; slow down (audio frames are not limited)"))
        return False

    async def _close(self, watchdog: asyncio.Task[None], sender: asyncio.Task[None]) -> None:
        if self._ending is not None:  # a server-side end in progress: it sends the final, stopped and the close
            with contextlib.suppress(Exception, asyncio.CancelledError):  # abandon() cancels it
                await asyncio.shield(self._ending)
        if self.reason is None:
            self.reason = EndReason.DISCONNECT
        if self.handle is not None and not self.handle.closed:
            self.handle.abort()
        watchdog.cancel()
        self.outbox.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        logger.info("session %s closed: %s, %.1f s of audio, %d utterances", self.id, self.reason,
                    self.audio_seconds, len(self.finals))
        self.metrics.record("stream", audio_s=self.audio_seconds, total_s=time.monotonic() - self.opened,
                            session_id=self.id, job_id=self.grant.job_id, active_sessions=self.active_sessions(),
                            error_code=None if self.reason in NORMAL_ENDS else self.reason.value, face=self.face)

    async def end(self, reason: EndReason, notice: proto.Error | None = None) -> None:
        """End the session (any reason, the client's ``stop`` included): ``notice`` first (by default the
        reason's own: ``server_shutdown``, ``cancelled``), then the utterance in progress gets its final,
        ``stopped``, and the socket closes with the reason's code and name. The first call starts the ending in a
        task of its own and later calls wait for that one, so neither the receive loop's end nor a cancelled
        caller (the watchdog) can cut it short."""
        if self._ending is None:
            self.reason = reason
            notice = notice or _END_NOTICES.get(reason)
            if notice is not None:
                self._send(notice)
            self._ending = asyncio.create_task(self._end(reason), name=f"ws-end-{self.id}")
        await asyncio.shield(self._ending)

    async def _end(self, reason: EndReason) -> None:
        await self._stop_stream(reason)
        await self.ws.close(reason.close_code, "stopped" if reason is EndReason.STOP else reason.value)

    @property
    def ending(self) -> bool:
        return self._ending is not None

    def abandon(self) -> None:
        """Give up an ending that overran the server's grace period (or never began): the final it waited for is
        lost (the summary says ``final_unavailable``) and the socket is closed now, with the reason's code."""
        if self._ending is not None and self._ending.done():
            return
        if self._ending is not None or (self.handle is not None and not self.handle.closed):
            self.error_code = ErrorCode.FINAL_UNAVAILABLE.value
        if self.handle is not None and not self.handle.closed:
            self.handle.abort()
        if self._ending is not None:
            self._ending.cancel()
        reason = self.reason = self.reason or EndReason.SERVER_SHUTDOWN
        closing = self.loop.create_task(self.ws.close(reason.close_code, reason.value), name=f"ws-close-{self.id}")
        self._closing = closing  # referenced until done (the loop keeps only weak references to tasks)

    def summary(self) -> SessionSummary:
        return SessionSummary(session_id=self.id, reason=(self.reason or EndReason.DISCONNECT).value,
                              audio_seconds=round(self.audio_seconds, 3), utterances=len(self.finals),
                              final_text=self.final_text, duration_s=round(time.monotonic() - self.opened, 3),
                              error_code=self.error_code)

    @property
    def audio_seconds(self) -> float:
        heard = self.audio_samples / self.started.sample_rate if self.started else 0.0
        return max(0.0, heard - self.dropped_s)

    @property
    def final_text(self) -> str:
        return " ".join(t for t in self.finals if t)

    async def _watchdog(self) -> None:
        limits = self.grant.limits
        while True:
            await asyncio.sleep(WATCHDOG_PERIOD_S)
            now = time.monotonic()
            if self._ending is not None:
                return
            if now - self.opened > limits.max_session_s:
                await self.end(EndReason.MAX_SESSION_LENGTH, proto.Error(
                    code=ErrorCode.MAX_SESSION_LENGTH,
                    message=f"the session reached its limit of {limits.max_session_s:.0f} s; the utterance in "
                            "progress gets its final, then the session stops"))
                return
            if now - self.last_activity > limits.idle_timeout_s:
                await self.end(EndReason.IDLE_TIMEOUT, proto.Error(
                    code=ErrorCode.IDLE_TIMEOUT,
                    message=f"no audio or message for {limits.idle_timeout_s:.0f} s; send audio "
                            "or {\"action\": \"ping\"} to keep the session open"))
                return

    # --- outgoing -----------------------------------------------------------------------------------------------
    def _send(self, message: proto.ServerMessage) -> None:
        self.seq += 1
        self.outbox.put_nowait(replace(message, seq=self.seq).to_json())

    async def _send_loop(self) -> None:
        while True:
            message = await self.outbox.get()
            if message is None:
                return
            try:
                await self.ws.send_text(json.dumps(message))
            except ConnectionGone:
                return

    def _welcome(self) -> proto.Welcome:
        geometry = self.engine.stream_geometry
        limits = self.grant.limits
        return proto.Welcome(session_id=self.id, model=self.engine.info().model, chunk_duration=geometry.chunk_s,
                             right_context=geometry.right_s, left_context=geometry.left_s,
                             limits=proto.Limits(idle_timeout_s=limits.idle_timeout_s,
                                                 max_session_s=limits.max_session_s,
                                                 max_frame_bytes=limits.max_frame_bytes,
                                                 max_frame_audio_s=limits.max_frame_audio_s))

    # --- incoming -----------------------------------------------------------------------------------------------
    async def _on_text(self, raw: str) -> None:
        obj = proto.loads(raw)
        action = proto.action_of(obj)
        # state before fields: a second start is `already_started` whatever it holds, a config before start
        # `not_started`
        if action is proto.Action.START and self.started is not None:
            raise ProtocolError(ErrorCode.ALREADY_STARTED,
                                "the session is already started; send {\"action\": \"stop\"} first")
        if action is proto.Action.CONFIG and self.started is None:
            raise ProtocolError(ErrorCode.NOT_STARTED, "config changes apply to a started session; send start first")
        message = proto.parse(obj)
        if isinstance(message, proto.Start):
            self._start(message)
        elif isinstance(message, proto.Stop):
            await self._stop()
        elif isinstance(message, proto.Finalize):
            self._finalize()
        elif isinstance(message, proto.Ping):
            self._send(proto.Pong(server_time=time.time(), echo=message.echo()))
        elif isinstance(message, proto.InfoRequest):
            self._send(proto.Info(engine=asdict(self.engine.info()), active_sessions=self.active_sessions()))
        elif isinstance(message, proto.Config):
            self._config(message)

    def _start(self, start: proto.Start) -> None:
        silence_ms = start.endpoint_silence_ms
        if silence_ms is None:
            silence_ms = int(EndpointConfig().silence_s * 1000)
        options = StreamOptions(endpointing=start.endpointing,
                                endpoint=EndpointConfig(silence_s=float(silence_ms) / 1000),
                                final_pass=start.final_pass)
        try:
            self.handle = self.engine.open_stream(self._on_engine_event, options, stream_id=self.id)
        except EngineClosedError as exc:
            raise ProtocolError(ErrorCode.ENGINE_CLOSED, str(exc)) from None
        geometry = self.engine.stream_geometry
        self.started = proto.SessionSettings(
            sample_rate=start.sample_rate, timestamps=start.timestamps, interim_results=start.interim_results,
            endpointing=start.endpointing, endpoint_silence_ms=int(silence_ms), language=start.language,
            final_pass=start.final_pass and geometry.final_pass_max_s > 0)
        if start.sample_rate != SAMPLE_RATE_HZ:
            self.resampler = _resampler(start.sample_rate)
        self._send(proto.Started(
            session_id=self.id, settings=self.started, chunk_duration=geometry.chunk_s,
            left_context=geometry.left_s, right_context=geometry.right_s, final_pass_max_s=geometry.final_pass_max_s,
            early_final_s=geometry.early_final_s if self.started.final_pass else 0.0,
            requested_chunk_duration=start.chunk_duration))

    def _on_audio(self, data: bytes) -> None:
        if self._ending is not None:
            return  # the session is ending (its final, stopped and close follow): audio after that is not heard
        if self.started is None or self.handle is None:
            raise ProtocolError(ErrorCode.NOT_STARTED,
                                "audio arrived before {\"action\": \"start\"}; the frame was dropped")
        if self.handle.closed:
            raise ProtocolError(ErrorCode.STOPPED, "the session is stopping; the frame was dropped")
        proto.check_audio_frame(data, self.started.sample_rate, self.grant.limits.max_frame_audio_s)
        if not data:
            return
        samples = pcm16_to_float32(data)
        if self.resampler is not None:
            samples = self.resampler.resample_chunk(samples)
        try:
            self.handle.push(samples)
        except StreamBacklogError as exc:
            seconds = samples.shape[0] / SAMPLE_RATE_HZ
            raise ProtocolError(ErrorCode.STREAM_BACKLOG, f"{exc}; this frame was dropped: {seconds:.3f} s") from None
        except EngineOverloadedError as exc:
            raise ProtocolError(ErrorCode.OVERLOADED, str(exc)) from None
        except EngineClosedError as exc:
            raise ProtocolError(ErrorCode.STOPPED, str(exc)) from None
        self.audio_samples += len(data) // proto.PCM16_BYTES_PER_SAMPLE

    def _flush_resampler(self) -> np.ndarray | None:
        """The resampler's delay line (its last samples), or None without a resampler."""
        if self.resampler is None:
            return None
        tail: np.ndarray = self.resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        return tail

    async def _stop(self) -> None:
        await self.end(EndReason.STOP)

    async def _stop_stream(self, reason: EndReason) -> None:
        if self.handle is not None:
            if not self.handle.closed:
                tail = self._flush_resampler()
                if tail is not None and tail.size:
                    with contextlib.suppress(ParakeetError):
                        self.handle.push(tail)
                self.handle.stop()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.closed_event.wait(), timeout=STOP_WAIT_S)
            if self.closed_reason != "stop":  # timed out, or the engine closed the stream before its final
                self._final_unavailable()
        self._send(proto.Stopped(reason=reason.value, final_text=self.final_text,
                                 audio_seconds=round(self.audio_seconds, 3), utterances=len(self.finals),
                                 error_code=self.error_code))
        self.outbox.put_nowait(None)  # the sender drains what is queued (``stopped`` last), then ends
        if self._sender is not None:  # close only after everything queued went out, even to a slow reader
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._sender), timeout=DRAIN_WAIT_S)

    def _final_unavailable(self) -> None:
        """The engine ended this stream without serving its last final: say so, never answer as if it were."""
        assert self.handle is not None
        if not self.closed_event.is_set():
            self.handle.abort()
            why = f"the engine did not produce it within {STOP_WAIT_S:.0f} s"
        else:
            why = f"the engine closed the stream first ({self.closed_reason or 'unknown'})"
        self.error_code = ErrorCode.FINAL_UNAVAILABLE.value
        logger.error("session %s: the last utterance's final was lost: %s", self.id, why)
        self._send(proto.Error(code=ErrorCode.FINAL_UNAVAILABLE,
                               message=f"the final of the last utterance could not be produced: {why}; the "
                                       "stopped message's final_text lacks it; send that audio again"))

    def _finalize(self) -> None:
        if self.handle is None:
            raise ProtocolError(ErrorCode.NOT_STARTED,
                                "nothing to finalize: send {\"action\": \"start\"} and audio first")
        if self._ending is not None:
            return  # the ending's final covers the utterance
        tail = self._flush_resampler()  # so the utterance's last samples are transcribed
        if tail is not None and self.started is not None:
            self.resampler = _resampler(self.started.sample_rate)
            if tail.size:
                with contextlib.suppress(ParakeetError):  # a full backlog: those samples are dropped like a frame
                    self.handle.push(tail)
        try:
            self.handle.finalize()
        except FinalizeLimitError as exc:
            raise ProtocolError(ErrorCode.RATE_LIMITED, str(exc)) from None
        except EngineClosedError as exc:
            raise ProtocolError(ErrorCode.STOPPED, str(exc)) from None

    def _config(self, config: proto.Config) -> None:
        assert self.started is not None  # checked before parsing
        changes = {k: v for k, v in asdict(config).items() if v is not None}
        self.started = replace(self.started, **changes)
        self._send(proto.ConfigUpdated(settings=self.started))

    # --- engine events (called on the engine thread) --------------------------------------------------------------
    def _on_engine_event(self, event: StreamEvent) -> None:
        self.loop.call_soon_threadsafe(self._deliver, event)

    def _deliver(self, event: StreamEvent) -> None:
        if event.kind == "closed":
            self.closed_reason = event.reason
            self.closed_event.set()
            return
        if event.kind == "error":
            text = str(event.error)
            if isinstance(event.error, StreamBacklogError):
                self.dropped_s += event.error.dropped_s
                text += f"; audio dropped: {event.error.dropped_s:.3f} s"
            code = getattr(event.error, "code", ErrorCode.ENGINE_ERROR)
            self._send(proto.Error(code=code, message=text))
            return
        if event.result is None or self.started is None:
            return
        is_final = event.kind == "final"
        if not is_final and not self.started.interim_results:
            return
        message = transcription(event, self.finals, timestamps=self.started.timestamps)
        if is_final:
            self.finals.append(message.text)
        self._send(message)


def transcription(event: StreamEvent, finals: list[str], *, timestamps: bool) -> proto.Transcription:
    """The ``transcription`` message of one engine result; ``finals`` are the session's finals before it."""
    result = event.result
    assert result is not None
    is_final = event.kind == "final"
    text = result.committed_text if is_final else result.text
    return proto.Transcription(
        text=text, is_final=is_final, accumulated_text=" ".join(t for t in [*finals, text] if t),
        utterance=event.utterance, committed_text=result.committed_text,
        draft_text="" if is_final else result.draft_text,
        audio_start=result.words[0].start if result.words else result.committed_until_s,
        audio_end=result.audio_end_s, committed_until=result.committed_until_s,
        latency_ms=round((time.monotonic() - event.emitted_at) * 1000, 2),
        final_reason=event.reason if is_final else None, final_source=result.source if is_final else None,
        words=tuple(result.words) if timestamps else None)
