"""One WebSocket connection: the protocol (docs/PROTOCOL.md) between a client and its stream on the engine.

The session talks to its socket through :class:`Connection` (receive a text or binary message, send text, close
with a code and reason), which the native face (:mod:`~parakeet_worker.serving.native_face`) implements over the
app's WebSocket; the session itself knows no web framework.

The asyncio side only moves bytes and messages: audio is resampled to the engine's rate and pushed to the stream,
the engine's events (on its own thread) come back through the loop as ``transcription`` messages, numbered in
order (``seq``). The promises every live face keeps — one ordered outbox, one ending task however the session
ends (here: the utterance in progress gets its final, then ``stopped``, then the close with its code and reason),
the watchdog, the control-message rate limit, ``final_unavailable`` instead of a silent loss — are the session
core's (:mod:`~parakeet_worker.serving.live_core`); this module is the native protocol's adapter to it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, replace
from functools import partial
from typing import Any, Protocol

import numpy as np
import soxr

from parakeet_worker.audio import pcm16_to_float32
from parakeet_worker.engine import ParakeetEngine
from parakeet_worker.errors import EngineClosedError, EngineOverloadedError
from parakeet_worker.observability import Metrics
from parakeet_worker.serving import protocol as proto
from parakeet_worker.serving.live_core import LiveCore, LiveStream
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

SMALL_CONTROL_BYTES = 256  # past the rate limit only small text frames are read (a ``stop`` is always honoured)


def _is_stop(raw: str) -> bool:
    """A small text frame that is a ``stop``: honoured past the control-message rate limit."""
    if len(raw) > SMALL_CONTROL_BYTES or '"stop"' not in raw:
        return False
    with contextlib.suppress(ProtocolError):
        return proto.action_of(proto.loads(raw)) is proto.Action.STOP
    return False


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


class Session(LiveCore):
    """One client's session: its protocol state, its stream on the engine and its outgoing messages, on the
    shared session core (:class:`~parakeet_worker.serving.live_core.LiveCore`). A
    :class:`~parakeet_worker.serving.faces.LiveSession` of the native face."""

    face = "native"  # the metrics' face label

    def __init__(self, engine: ParakeetEngine, ws: Connection, grant: Grant, *, metrics: Metrics,
                 active_sessions: Callable[[], int]) -> None:
        super().__init__(session_id=uuid.uuid4().hex[:12], metrics=metrics,
                         idle_timeout_s=grant.limits.idle_timeout_s, max_session_s=grant.limits.max_session_s,
                         transmit=ws.send_text, gone=(ConnectionGone,))
        self.engine = engine
        self.ws = ws
        self.grant = grant
        self.active_sessions = active_sessions
        self.started: proto.SessionSettings | None = None
        self.stream: LiveStream | None = None
        self.resampler: soxr.ResampleStream | None = None
        self.seq = 0
        self.finals: list[str] = []
        self.audio_samples = 0  # at the client's rate
        self.dropped_s = 0.0  # audio the engine refused (backlog): not counted in ``audio_seconds``

    @property
    def handle(self) -> StreamHandle | None:
        return self.stream.handle if self.stream is not None else None

    # --- lifecycle ----------------------------------------------------------------------------------------------
    async def run(self, *first: Any) -> None:
        logger.info("session %s opened (job %s)", self.id, self.grant.job_id)
        await super().run(*first, self._message(self._welcome()))

    async def _receive_loop(self) -> None:
        while (message := await self.ws.receive()) is not None:
            self.touch()
            try:
                if isinstance(message, bytes):
                    self._on_audio(message)
                elif self.admit_control(partial(_is_stop, message)):
                    await self._on_text(message)
            except ProtocolError as exc:
                self._send(proto.Error.of(exc))
            if self.ended():
                break

    def _rate_notice(self) -> str:
        return self._message(proto.Error(
            code=ErrorCode.RATE_LIMITED,
            message=f"more than {proto.MAX_CONTROL_RATE_PER_S:.0f} control messages per second (burst "
                    f"{proto.MAX_CONTROL_BURST}); {self.refused_messages} were refused so far; slow down (audio "
                    "frames are not limited)"))

    def _end_notice(self, reason: EndReason) -> str | None:
        notice = _END_NOTICES.get(reason)
        if reason is EndReason.MAX_SESSION_LENGTH:
            notice = proto.Error(code=ErrorCode.MAX_SESSION_LENGTH,
                                 message=f"the session reached its limit of {self.max_session_s:.0f} s; the "
                                         "utterance in progress gets its final, then the session stops")
        elif reason is EndReason.IDLE_TIMEOUT:
            notice = proto.Error(code=ErrorCode.IDLE_TIMEOUT,
                                 message=f"no audio or message for {self.idle_timeout_s:.0f} s; send audio "
                                         "or {\"action\": \"ping\"} to keep the session open")
        return None if notice is None else self._message(notice)

    async def _ending_steps(self, reason: EndReason) -> None:
        await self._stop_stream(reason)
        await self.ws.close(reason.close_code, "stopped" if reason is EndReason.STOP else reason.value)

    async def _close_transport(self, code: int, reason: str) -> None:
        await self.ws.close(code, reason)

    def _release(self) -> bool:
        if self.handle is not None and not self.handle.closed:
            self.handle.abort()
            return True
        return False

    def _record_fields(self) -> dict[str, Any]:
        return {"job_id": self.grant.job_id, "active_sessions": self.active_sessions()}

    def _closed_log(self) -> str:
        return f"{self.audio_seconds:.1f} s of audio, {len(self.finals)} utterances"

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

    # --- outgoing -----------------------------------------------------------------------------------------------
    def _message(self, message: proto.ServerMessage) -> str:
        """The message as sent: numbered (``seq``) in the order it is queued."""
        self.seq += 1
        return json.dumps(replace(message, seq=self.seq).to_json())

    def _send(self, message: proto.ServerMessage) -> None:
        self.post(self._message(message))

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
            self.stream = LiveStream(self.engine.open_stream(self.on_engine_event, options, stream_id=self.id))
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
        if self.ending:
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
        if self.stream is not None:
            lost = await self.stream.stop(self._flush_resampler())
            if lost is not None:
                self.final_lost(lost)
                self._send(proto.Error(code=ErrorCode.FINAL_UNAVAILABLE,
                                       message=f"the final of the last utterance could not be produced: {lost}; "
                                               "the stopped message's final_text lacks it; send that audio again"))
        self._send(proto.Stopped(reason=reason.value, final_text=self.final_text,
                                 audio_seconds=round(self.audio_seconds, 3), utterances=len(self.finals),
                                 error_code=self.error_code))
        await self.drain()  # close only after everything queued went out (``stopped`` last), even to a slow reader

    def _finalize(self) -> None:
        if self.handle is None:
            raise ProtocolError(ErrorCode.NOT_STARTED,
                                "nothing to finalize: send {\"action\": \"start\"} and audio first")
        if self.ending:
            return  # the ending's final covers the utterance
        tail = self._flush_resampler()  # so the utterance's last samples are transcribed
        if tail is not None and self.started is not None and self.stream is not None:
            self.resampler = _resampler(self.started.sample_rate)
            self.stream.push_tail(tail)
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

    # --- engine events (handed to the loop by LiveCore.on_engine_event) -------------------------------------------
    def _deliver(self, event: StreamEvent) -> None:
        if event.kind == "closed":
            if self.stream is not None:
                self.stream.mark_closed(event.reason)
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
