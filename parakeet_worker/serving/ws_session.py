"""One WebSocket connection: the protocol (docs/PROTOCOL.md) between a client and its stream on the engine.

The asyncio side only moves bytes and messages: audio is resampled to the engine's rate and pushed to the stream,
the engine's events (on its own thread) come back through the loop as ``transcription`` messages. Every outgoing
message goes through one queue, numbered in order (``seq``), so a slow reader never reorders or loses them.
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
from typing import Any

import numpy as np
import soxr
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from parakeet_worker.audio import pcm16_to_float32
from parakeet_worker.engine import ParakeetEngine
from parakeet_worker.errors import EngineClosedError, EngineOverloadedError, ParakeetError
from parakeet_worker.observability import Metrics
from parakeet_worker.serving import protocol as proto
from parakeet_worker.serving.protocol import EndReason, ErrorCode, ProtocolError
from parakeet_worker.serving.ws_grants import Grant, SessionSummary
from parakeet_worker.streaming import EndpointConfig, StreamEvent, StreamHandle, StreamOptions
from parakeet_worker.transcript import SAMPLE_RATE_HZ

logger = logging.getLogger("websocket_handler")

STOP_WAIT_S = 30.0  # after ``stop``, how long the engine may take to serve the last finals
DRAIN_WAIT_S = 10.0  # ... and the queued messages to reach a slow reader before the socket closes
WATCHDOG_PERIOD_S = 0.5
# Ends that are no fault of the session; the metric records any other reason as its error code.
NORMAL_ENDS = frozenset(EndReason) - {EndReason.NO_CLIENT}


def _resampler(rate: int) -> soxr.ResampleStream:
    return soxr.ResampleStream(rate, SAMPLE_RATE_HZ, 1, dtype="float32", quality="HQ")


class Session:
    """One client's session: its protocol state, its stream on the engine and its outgoing queue."""

    def __init__(self, engine: ParakeetEngine, ws: ServerConnection, grant: Grant, *, metrics: Metrics,
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
        self.outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self._ended = False

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
        try:
            async for message in self.ws:
                self.last_activity = time.monotonic()
                try:
                    if isinstance(message, bytes):
                        self._on_audio(message)
                    else:
                        await self._on_text(message)
                except ProtocolError as exc:
                    self._send(proto.Error.of(exc))
                if self._ended:
                    break
        except ConnectionClosed:
            pass

    async def _close(self, watchdog: asyncio.Task[None], sender: asyncio.Task[None]) -> None:
        if self.reason is None:
            self.reason = EndReason.DISCONNECT
        if self.handle is not None and not self.handle.closed:
            self.handle.abort()
        watchdog.cancel()
        self.outbox.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await sender
        logger.info("session %s closed: %s, %.1f s of audio, %d utterances", self.id, self.reason,
                    self.audio_seconds, len(self.finals))
        self.metrics.record("stream", audio_s=self.audio_seconds, total_s=time.monotonic() - self.opened,
                            session_id=self.id, job_id=self.grant.job_id, active_sessions=self.active_sessions(),
                            error_code=None if self.reason in NORMAL_ENDS else self.reason.value)

    async def end(self, reason: EndReason) -> None:
        """Server-side end (idle, max length, job cancelled, shutdown): flush, say ``stopped``, close."""
        if self._ended:
            return
        self.reason = reason
        await self._stop_stream(reason)
        await self.ws.close(reason.close_code, reason.value)

    def summary(self) -> SessionSummary:
        return SessionSummary(session_id=self.id, reason=(self.reason or EndReason.DISCONNECT).value,
                              audio_seconds=round(self.audio_seconds, 3), utterances=len(self.finals),
                              final_text=self.final_text, duration_s=round(time.monotonic() - self.opened, 3))

    @property
    def audio_seconds(self) -> float:
        return self.audio_samples / self.started.sample_rate if self.started else 0.0

    @property
    def final_text(self) -> str:
        return " ".join(t for t in self.finals if t)

    async def _watchdog(self) -> None:
        limits = self.grant.limits
        while True:
            await asyncio.sleep(WATCHDOG_PERIOD_S)
            now = time.monotonic()
            if now - self.opened > limits.max_session_s:
                self._send(proto.Error(code=ErrorCode.MAX_SESSION_LENGTH,
                                       message=f"the session reached its limit of {limits.max_session_s:.0f} s"))
                await self.end(EndReason.MAX_SESSION_LENGTH)
                return
            if now - self.last_activity > limits.idle_timeout_s:
                self._send(proto.Error(code=ErrorCode.IDLE_TIMEOUT,
                                       message=f"no audio or message for {limits.idle_timeout_s:.0f} s; send audio "
                                               "or {\"action\": \"ping\"} to keep the session open"))
                await self.end(EndReason.IDLE_TIMEOUT)
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
                await self.ws.send(json.dumps(message))
            except ConnectionClosed:
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
        self.reason = EndReason.STOP
        await self._stop_stream(EndReason.STOP)
        await self.ws.close(proto.CloseCode.NORMAL, "stopped")

    async def _stop_stream(self, reason: EndReason) -> None:
        if self._ended:
            return
        self._ended = True
        if self.handle is not None and not self.handle.closed:
            tail = self._flush_resampler()
            if tail is not None and tail.size:
                with contextlib.suppress(ParakeetError):
                    self.handle.push(tail)
            self.handle.stop()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.closed_event.wait(), timeout=STOP_WAIT_S)
        self._send(proto.Stopped(reason=reason.value, final_text=self.final_text,
                                 audio_seconds=round(self.audio_seconds, 3), utterances=len(self.finals)))
        self.outbox.put_nowait(None)  # the sender drains what is queued (``stopped`` last), then ends
        if self._sender is not None:  # close only after everything queued went out, even to a slow reader
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, ConnectionClosed):
                await asyncio.wait_for(asyncio.shield(self._sender), timeout=DRAIN_WAIT_S)

    def _finalize(self) -> None:
        if self.handle is None:
            raise ProtocolError(ErrorCode.NOT_STARTED,
                                "nothing to finalize: send {\"action\": \"start\"} and audio first")
        tail = self._flush_resampler()  # so the utterance's last samples are transcribed
        if tail is not None and self.started is not None:
            self.resampler = _resampler(self.started.sample_rate)
            if tail.size:
                self.handle.push(tail)
        self.handle.finalize()

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
            self.closed_event.set()
            return
        if event.kind == "error":
            code = getattr(event.error, "code", ErrorCode.ENGINE_ERROR)
            self._send(proto.Error(code=code, message=str(event.error)))
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
