"""The real-time WebSocket server: PCM16 in, partial and final transcripts out (protocol: docs/PROTOCOL.md).

One server per worker, shared by every websocket job. It runs its own asyncio loop on its own thread (so the RunPod
SDK's loop and the server never wait on each other); the model work happens on the engine's worker thread, where
all live streams are batched into one forward per step. The asyncio side only moves bytes and messages.

Access is by token: a RunPod ``action: websocket`` job asks :meth:`StreamServer.grant` for a one-session token and
waits for that session's summary; standalone, a fixed token admits any number of sessions::

    python websocket_handler.py --port 8765 --token secret      # or no --token: one is generated and printed
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import soxr
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from parakeet_worker.audio import pcm16_to_float32
from parakeet_worker.config import Settings
from parakeet_worker.engine import ParakeetEngine
from parakeet_worker.errors import EngineClosedError, EngineOverloadedError, ParakeetError
from parakeet_worker.observability import Metrics, log_context
from parakeet_worker.streaming import EndpointConfig, StreamEvent, StreamHandle, StreamOptions

logger = logging.getLogger("websocket_handler")

PROTOCOL_VERSION = "parakeet-stream/1"
ENGINE_RATE_HZ = 16_000
MIN_RATE_HZ, MAX_RATE_HZ = 8_000, 48_000
START_KEYS = frozenset({"action", "sample_rate", "chunk_duration", "timestamps", "interim_results", "endpointing",
                        "endpoint_silence_ms", "encoding", "language", "final_pass"})
CONFIG_KEYS = frozenset({"action", "timestamps", "interim_results"})


@dataclass(frozen=True)
class ServerLimits:
    max_sessions: int = 32
    idle_timeout_s: float = 30.0  # no audio and no message for this long ends the session
    max_session_s: float = 3600.0
    max_frame_bytes: int = 1 << 20  # a WebSocket message larger than this closes the connection (1009)
    max_frame_audio_s: float = 5.0  # one binary frame may carry at most this much audio
    connect_timeout_s: float = 120.0  # a websocket job ends if no client connects within this


@dataclass(frozen=True)
class SessionSummary:
    session_id: str
    reason: str  # stop | disconnect | idle_timeout | max_session_length | cancelled | no_client | server_shutdown
    audio_seconds: float
    utterances: int
    final_text: str
    duration_s: float


class StreamError(ParakeetError):
    """A protocol error answered with ``{"type": "error", "code": ..., "message": ...}``; the session goes on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Grant:
    """Permission for sessions under one token; ``summary`` resolves when its (single) session ends."""

    token: str
    job_id: str | None
    limits: ServerLimits
    multi_use: bool = False
    created: float = field(default_factory=time.monotonic)
    summary: concurrent.futures.Future[SessionSummary] = field(default_factory=concurrent.futures.Future)
    sessions: set[Session] = field(default_factory=set)
    used: bool = False

    def finish(self, summary: SessionSummary) -> None:
        if not self.multi_use and not self.summary.done():
            self.summary.set_result(summary)


# --- the server -------------------------------------------------------------------------------------------------
class StreamServer:
    def __init__(self, engine: ParakeetEngine, settings: Settings, limits: ServerLimits | None = None,
                 *, ready: Callable[[], bool] | None = None, metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.metrics = metrics or Metrics(None)
        self.settings = settings
        self.limits = limits or ServerLimits()
        self._ready = ready or (lambda: True)
        self._grants: dict[str, Grant] = {}
        self._sessions: set[Session] = set()
        self._server: Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = settings.ws_port

    # --- lifecycle ----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._server = await serve(
            self._connection, self.settings.ws_host, self.settings.ws_port, process_request=self._process_request,
            max_size=self.limits.max_frame_bytes, ping_interval=20, ping_timeout=20, close_timeout=5,
            server_header=f"parakeet-worker ({PROTOCOL_VERSION})",
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        logger.info("WebSocket server listening on %s:%d", self.settings.ws_host, self.port)

    async def stop(self) -> None:
        for session in list(self._sessions):
            await session.end("server_shutdown")
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for grant in self._grants.values():
            if not grant.summary.done():
                grant.summary.set_result(SessionSummary("", "server_shutdown", 0.0, 0, "", 0.0))

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    # --- grants (thread-safe entry points) ----------------------------------------------------------------------
    def grant(self, job_id: str | None, *, idle_timeout_s: float | None = None, max_session_s: float | None = None,
              token: str | None = None, multi_use: bool = False) -> Grant:
        limits = replace(self.limits, idle_timeout_s=idle_timeout_s or self.limits.idle_timeout_s,
                         max_session_s=max_session_s or self.limits.max_session_s)
        grant = Grant(token=token or secrets.token_urlsafe(24), job_id=job_id, limits=limits, multi_use=multi_use)
        self._grants[grant.token] = grant  # dict assignment is atomic; the loop only reads it
        if not multi_use and self.loop is not None:
            self.loop.call_soon_threadsafe(self._watch_unused, grant)
        return grant

    def revoke(self, grant: Grant, reason: str = "cancelled") -> None:
        """End the grant's sessions (e.g. its job was cancelled) and refuse its token from now on."""
        if self.loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._revoke(grant, reason), self.loop)

    async def _revoke(self, grant: Grant, reason: str) -> None:
        self._grants.pop(grant.token, None)
        for session in list(grant.sessions):
            await session.end(reason)
        if not grant.summary.done():
            grant.summary.set_result(SessionSummary("", reason, 0.0, 0, "", 0.0))

    def _watch_unused(self, grant: Grant) -> None:
        def expire() -> None:
            if not grant.used and not grant.summary.done():
                self._grants.pop(grant.token, None)
                grant.summary.set_result(SessionSummary("", "no_client", 0.0, 0, "", 0.0))
        assert self.loop is not None
        self.loop.call_later(grant.limits.connect_timeout_s, expire)

    # --- HTTP side: health endpoints and the handshake's token check ------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return _http(http.HTTPStatus.OK, {"status": "alive"})
        if path == "/readyz":
            if self._ready():
                return _http(http.HTTPStatus.OK, {"status": "ready", "sessions": self.active_sessions})
            return _http(http.HTTPStatus.SERVICE_UNAVAILABLE, {"status": "loading"})
        token = _token_of(request)
        grant = self._grants.get(token or "")
        if grant is None:
            logger.warning("refused a connection with %s token", "no" if not token else "an unknown")
            return _http(http.HTTPStatus.UNAUTHORIZED,
                         {"error": "missing or invalid token: pass ?token=<token from the job's ready message>"})
        if grant.used and not grant.multi_use:
            return _http(http.HTTPStatus.CONFLICT, {"error": "this token's session is already in use or over"})
        if self.active_sessions >= self.limits.max_sessions:
            return _http(http.HTTPStatus.SERVICE_UNAVAILABLE,
                         {"error": f"server is busy ({self.limits.max_sessions} sessions); retry later"})
        grant.used = True
        connection.grant = grant  # type: ignore[attr-defined]
        return None

    async def _connection(self, ws: ServerConnection) -> None:
        grant: Grant = ws.grant  # type: ignore[attr-defined]
        session = Session(self, ws, grant)
        self._sessions.add(session)
        grant.sessions.add(session)
        try:
            with log_context(session_id=session.id, job_id=grant.job_id):
                await session.run()
        finally:
            self._sessions.discard(session)
            grant.sessions.discard(session)
            if not grant.multi_use:
                self._grants.pop(grant.token, None)
            grant.finish(session.summary())


def _token_of(request: Request) -> str | None:
    query = parse_qs(urlsplit(request.path).query)
    if query.get("token"):
        return query["token"][0]
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return None


def _http(status: http.HTTPStatus, body: dict[str, Any]) -> Response:
    data = json.dumps(body).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                       ("Connection", "close")])
    return Response(status.value, status.phrase, headers, data)


# --- one connection ---------------------------------------------------------------------------------------------
@dataclass
class _Started:
    sample_rate: int
    timestamps: bool
    interim_results: bool
    endpointing: bool
    endpoint_silence_ms: int
    language: str
    final_pass: bool


class Session:
    def __init__(self, server: StreamServer, ws: ServerConnection, grant: Grant) -> None:
        self.server = server
        self.ws = ws
        self.grant = grant
        self.id = uuid.uuid4().hex[:12]
        self.loop = asyncio.get_running_loop()
        self.opened = time.monotonic()
        self.last_activity = self.opened
        self.started: _Started | None = None
        self.handle: StreamHandle | None = None
        self.resampler: soxr.ResampleStream | None = None
        self.seq = 0
        self.finals: list[str] = []
        self.audio_samples = 0  # at the client's rate
        self.reason: str | None = None
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
            async for message in self.ws:
                self.last_activity = time.monotonic()
                try:
                    if isinstance(message, bytes):
                        self._on_audio(message)
                    else:
                        await self._on_text(message)
                except StreamError as exc:
                    self._send({"type": "error", "code": exc.code, "message": str(exc)})
                if self._ended:
                    break
        except ConnectionClosed:
            pass
        finally:
            if self.reason is None:
                self.reason = "disconnect"
            if self.handle is not None and not self.handle.closed:
                self.handle.abort()
            watchdog.cancel()
            self.outbox.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender
            logger.info("session %s closed: %s, %.1f s of audio, %d utterances", self.id, self.reason,
                        self.audio_seconds, len(self.finals))
            normal = ("stop", "disconnect", "idle_timeout", "max_session_length", "cancelled", "server_shutdown")
            self.server.metrics.record("stream", audio_s=self.audio_seconds, total_s=time.monotonic() - self.opened,
                                       session_id=self.id, job_id=self.grant.job_id,
                                       active_sessions=self.server.active_sessions,
                                       error_code=None if self.reason in normal else self.reason)

    async def end(self, reason: str) -> None:
        """Server-side end (idle, max length, job cancelled, shutdown): flush, say ``stopped``, close."""
        if self._ended:
            return
        self.reason = reason
        await self._stop_stream(reason)
        await self.ws.close(1000 if reason in ("idle_timeout", "max_session_length") else 1001, reason)

    def summary(self) -> SessionSummary:
        return SessionSummary(session_id=self.id, reason=self.reason or "disconnect",
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
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if now - self.opened > limits.max_session_s:
                self._send({"type": "error", "code": "max_session_length",
                            "message": f"the session reached its limit of {limits.max_session_s:.0f} s"})
                await self.end("max_session_length")
                return
            if now - self.last_activity > limits.idle_timeout_s:
                self._send({"type": "error", "code": "idle_timeout",
                            "message": f"no audio or message for {limits.idle_timeout_s:.0f} s; send audio or "
                                       "{\"action\": \"ping\"} to keep the session open"})
                await self.end("idle_timeout")
                return

    # --- outgoing -----------------------------------------------------------------------------------------------
    def _send(self, message: dict[str, Any]) -> None:
        self.seq += 1
        self.outbox.put_nowait({**message, "seq": self.seq})

    async def _send_loop(self) -> None:
        while True:
            message = await self.outbox.get()
            if message is None:
                return
            try:
                await self.ws.send(json.dumps(message))
            except ConnectionClosed:
                return

    def _welcome(self) -> dict[str, Any]:
        info = self.server.engine.info()
        cfg = self.server.engine.streamer.config
        return {"type": "welcome", "protocol": PROTOCOL_VERSION, "session_id": self.id, "model": info.model,
                "sample_rates": [MIN_RATE_HZ, MAX_RATE_HZ], "encoding": "pcm_s16le",
                "chunk_duration": cfg.chunk_s, "right_context": cfg.right_s, "left_context": cfg.left_s,
                "limits": {"idle_timeout_s": self.grant.limits.idle_timeout_s,
                           "max_session_s": self.grant.limits.max_session_s,
                           "max_frame_bytes": self.grant.limits.max_frame_bytes,
                           "max_frame_audio_s": self.grant.limits.max_frame_audio_s}}

    # --- incoming -----------------------------------------------------------------------------------------------
    async def _on_text(self, raw: str) -> None:
        try:
            message = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise StreamError("bad_json", f"text frames must be JSON objects: {exc.msg} at position {exc.pos}") from None
        if not isinstance(message, dict):
            raise StreamError("bad_message", "a text frame must be a JSON object such as {\"action\": \"start\"}")
        action = message.get("action", message.get("type"))
        if not isinstance(action, str):
            raise StreamError("bad_message", "missing \"action\" (start, stop, finalize, ping, info, config)")
        handler = {"start": self._start, "stop": self._stop, "finalize": self._finalize, "ping": self._ping,
                   "info": self._info, "config": self._config, "keepalive": self._ping}.get(action.lower())
        if handler is None:
            raise StreamError("unknown_action",
                              f"unknown action {action!r}: use start, stop, finalize, ping, info or config")
        await handler(message)

    async def _start(self, message: dict[str, Any]) -> None:
        if self.started is not None:
            raise StreamError("already_started", "the session is already started; send {\"action\": \"stop\"} first")
        unknown = sorted(set(message) - START_KEYS - {"type"})
        if unknown:
            raise StreamError("bad_message", f"unknown start option(s) {', '.join(unknown)}; accepted: "
                                             f"{', '.join(sorted(START_KEYS - {'action'}))}")
        rate = message.get("sample_rate", ENGINE_RATE_HZ)
        if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
            raise StreamError("bad_sample_rate", f"sample_rate must be an integer from {MIN_RATE_HZ} to {MAX_RATE_HZ}"
                                                 f" Hz, got {rate!r}")
        encoding = message.get("encoding", "pcm_s16le")
        if encoding not in ("pcm_s16le", "linear16", "pcm16"):
            raise StreamError("bad_message", f"encoding {encoding!r} is not supported: send PCM16 little-endian "
                                             "mono (pcm_s16le)")
        flags = {}
        for key, default in (("timestamps", False), ("interim_results", True), ("endpointing", True),
                             ("final_pass", True)):
            value = message.get(key, default)
            if not isinstance(value, bool):
                raise StreamError("bad_message", f"{key} must be true or false, got {value!r}")
            flags[key] = value
        silence = message.get("endpoint_silence_ms", int(EndpointConfig().silence_s * 1000))
        if isinstance(silence, bool) or not isinstance(silence, int | float) or not 100 <= silence <= 10_000:
            raise StreamError("bad_message", f"endpoint_silence_ms must be a number from 100 to 10000, got {silence!r}")
        chunk = message.get("chunk_duration")
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int | float) or not 0 < chunk <= 30):
            raise StreamError("bad_message", f"chunk_duration must be a number of seconds in (0, 30], got {chunk!r}")
        language = message.get("language", "auto")
        if not isinstance(language, str) or len(language) > 16:
            raise StreamError("bad_message", "language must be a short string such as \"en\" or \"auto\"")
        options = StreamOptions(endpointing=flags["endpointing"],
                                endpoint=EndpointConfig(silence_s=float(silence) / 1000),
                                final_pass=flags["final_pass"])
        try:
            self.handle = self.server.engine.open_stream(self._on_engine_event, options, stream_id=self.id)
        except EngineClosedError as exc:
            raise StreamError("engine_closed", str(exc)) from None
        self.started = _Started(sample_rate=rate, timestamps=flags["timestamps"],
                                interim_results=flags["interim_results"], endpointing=flags["endpointing"],
                                endpoint_silence_ms=int(silence), language=language,
                                final_pass=flags["final_pass"] and self.server.engine.streamer.config.final_pass_max_s > 0)
        if rate != ENGINE_RATE_HZ:
            self.resampler = soxr.ResampleStream(rate, ENGINE_RATE_HZ, 1, dtype="float32", quality="HQ")
        cfg = self.server.engine.streamer.config
        self._send({"type": "started", "session_id": self.id, **asdict(self.started), "encoding": "pcm_s16le",
                    "chunk_duration": cfg.chunk_s, "left_context": cfg.left_s, "right_context": cfg.right_s,
                    "final_pass_max_s": cfg.final_pass_max_s,
                    "early_final_s": self.server.engine.streams.early_final_s if self.started.final_pass else 0.0,
                    "requested_chunk_duration": chunk, "protocol": PROTOCOL_VERSION})

    def _on_audio(self, data: bytes) -> None:
        if self.started is None or self.handle is None:
            raise StreamError("not_started", "audio arrived before {\"action\": \"start\"}; the frame was dropped")
        if self.handle.closed:
            raise StreamError("stopped", "the session is stopping; the frame was dropped")
        if len(data) % 2:
            raise StreamError("bad_audio", f"a PCM16 frame must hold an even number of bytes, got {len(data)}; "
                                           "the frame was dropped")
        rate = self.started.sample_rate
        if len(data) / 2 / rate > self.grant.limits.max_frame_audio_s:
            raise StreamError("frame_too_large", f"one frame carried {len(data) / 2 / rate:.1f} s of audio; send at "
                                                 f"most {self.grant.limits.max_frame_audio_s:.0f} s per frame")
        if not data:
            return
        samples = pcm16_to_float32(data)
        if self.resampler is not None:
            samples = self.resampler.resample_chunk(samples)
        try:
            self.handle.push(samples)
        except EngineOverloadedError as exc:
            raise StreamError("overloaded", str(exc)) from None
        except EngineClosedError as exc:
            raise StreamError("stopped", str(exc)) from None
        self.audio_samples += len(data) // 2

    async def _stop(self, message: dict[str, Any]) -> None:
        self.reason = "stop"
        await self._stop_stream("stop")
        await self.ws.close(1000, "stopped")

    async def _stop_stream(self, reason: str) -> None:
        if self._ended:
            return
        self._ended = True
        if self.handle is not None and not self.handle.closed:
            if self.resampler is not None:
                tail = self.resampler.resample_chunk(np.zeros(0, np.float32), last=True)
                if tail.size:
                    with contextlib.suppress(ParakeetError):
                        self.handle.push(tail)
            self.handle.stop()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.closed_event.wait(), timeout=30)
        self._send({"type": "stopped", "reason": reason, "final_text": self.final_text,
                    "audio_seconds": round(self.audio_seconds, 3), "utterances": len(self.finals)})
        self.outbox.put_nowait(None)  # the sender drains what is queued (``stopped`` last), then ends
        if self._sender is not None:  # close only after everything queued went out, even to a slow reader
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, ConnectionClosed):
                await asyncio.wait_for(asyncio.shield(self._sender), timeout=10)

    async def _finalize(self, message: dict[str, Any]) -> None:
        if self.handle is None:
            raise StreamError("not_started", "nothing to finalize: send {\"action\": \"start\"} and audio first")
        if self.resampler is not None:  # flush the resampler's delay line so the last samples are transcribed
            tail = self.resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            self.resampler = soxr.ResampleStream(self.started.sample_rate, ENGINE_RATE_HZ, 1, dtype="float32",
                                                 quality="HQ") if self.started else None
            if tail.size:
                self.handle.push(tail)
        self.handle.finalize()

    async def _ping(self, message: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"type": "pong", "server_time": time.time()}
        for key in ("id", "timestamp"):
            if key in message:
                reply[key] = message[key]
        self._send(reply)

    async def _info(self, message: dict[str, Any]) -> None:
        info = asdict(self.server.engine.info())
        self._send({"type": "info", **info, "protocol": PROTOCOL_VERSION,
                    "active_sessions": self.server.active_sessions})

    async def _config(self, message: dict[str, Any]) -> None:
        if self.started is None:
            raise StreamError("not_started", "config changes apply to a started session; send start first")
        unknown = sorted(set(message) - CONFIG_KEYS - {"type"})
        if unknown:
            raise StreamError("bad_message", f"config cannot change {', '.join(unknown)}; it can change: "
                                             "timestamps, interim_results")
        for key in ("timestamps", "interim_results"):
            if key in message:
                if not isinstance(message[key], bool):
                    raise StreamError("bad_message", f"{key} must be true or false")
                setattr(self.started, key, message[key])
        self._send({"type": "config_updated", **asdict(self.started)})

    # --- engine events (called on the engine thread) --------------------------------------------------------------
    def _on_engine_event(self, event: StreamEvent) -> None:
        self.loop.call_soon_threadsafe(self._deliver, event)

    def _deliver(self, event: StreamEvent) -> None:
        started = self.started
        if event.kind == "closed":
            self.closed_event.set()
            return
        if event.kind == "error":
            code = getattr(event.error, "code", "engine_error")
            self._send({"type": "error", "code": code, "message": str(event.error)})
            return
        result = event.result
        if result is None or started is None:
            return
        is_final = event.kind == "final"
        text = result.committed_text if is_final else result.text
        if not is_final and not started.interim_results:
            return
        accumulated = " ".join(t for t in [*self.finals, text] if t)
        message: dict[str, Any] = {
            "type": "transcription", "text": text, "is_final": is_final, "accumulated_text": accumulated,
            "utterance": event.utterance, "committed_text": result.committed_text,
            "draft_text": "" if is_final else result.draft_text,
            "audio_start": result.words[0].start if result.words else result.committed_until_s,
            "audio_end": result.audio_end_s, "committed_until": result.committed_until_s,
            "latency_ms": round((time.monotonic() - event.emitted_at) * 1000, 2),
        }
        if is_final:
            message.update(final_reason=event.reason, from_finalize=event.reason == "finalize",
                           speech_final=event.reason == "endpoint", final_source=result.source)
            self.finals.append(text)
        if started.timestamps:
            message["words"] = [{"word": w.word, "start": w.start, "end": w.end} for w in result.words]
        self._send(message)


# --- running it -------------------------------------------------------------------------------------------------
class ServerThread:
    """Runs a :class:`StreamServer` on its own event loop in a daemon thread (the RunPod worker's way)."""

    def __init__(self, server: StreamServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ws-server", daemon=True)

    def start(self) -> StreamServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout=30)
        return self.server

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def public_address(settings: Settings, port: int) -> tuple[str, int, str]:
    """(host, port, which) a client should use: RunPod's public IP and mapped TCP port when set."""
    if settings.runpod_public_ip and settings.runpod_tcp_port:
        return settings.runpod_public_ip, settings.runpod_tcp_port, "public"
    host = settings.ws_host if settings.ws_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return host, port, "internal"
