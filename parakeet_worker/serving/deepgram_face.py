"""Deepgram live transcription on ``/v1/listen``: Deepgram's SDKs and Pipecat's ``DeepgramSTTService`` talk to the
worker's engine as they would to Deepgram (docs/DEEPGRAM.md says what is honoured and what differs).

A session is one engine stream: binary frames are decoded (linear16, mu-law, A-law at the query's rate) and
pushed; the engine's partials become interim ``Results`` (``interim_results=true``), its finals ``Results`` with
``is_final`` (``speech_final`` at a server-VAD endpoint, ``from_finalize`` after the client's ``Finalize``).
Every outgoing message goes through one queue and one sender task, so nothing is reordered. However a session
ends — ``CloseStream``, idle (Deepgram's NET-0001), its length limit, shutdown — one task does the ending: the
utterance in progress gets its final, then ``Metadata``, then the close; a final the engine could not produce is
said so in an ``Error``, never dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from datetime import UTC, datetime

from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from parakeet_worker.audio.live import LiveAudioDecoder
from parakeet_worker.errors import EngineClosedError, EngineOverloadedError, ParakeetError
from parakeet_worker.serving import deepgram_messages as dg
from parakeet_worker.serving.faces import FaceContext, request_token
from parakeet_worker.serving.protocol import (
    MAX_CONTROL_BURST,
    MAX_CONTROL_RATE_PER_S,
    CloseCode,
    EndReason,
    ErrorCode,
)
from parakeet_worker.streaming import (
    EndpointConfig,
    FinalizeLimitError,
    StepResult,
    StreamBacklogError,
    StreamEvent,
    StreamHandle,
    StreamOptions,
)

logger = logging.getLogger(__name__)

LISTEN_PATH = "/v1/listen"
DEEPGRAM_IDLE_S = 10.0  # Deepgram closes a stream that got neither audio nor a message for this long (NET-0001)
STOP_WAIT_S = 30.0  # how long the engine may take to serve the last final of an ending session
DRAIN_WAIT_S = 10.0  # ... and the queued messages to reach a slow reader before the close
WATCHDOG_PERIOD_S = 0.5
RATE_LIMIT_NOTICE_S = 1.0  # at most one rate-limit Error per this long
SMALL_CONTROL_CHARS = 256  # past the rate limit only a small CloseStream is still read
NORMAL_ENDS = frozenset(EndReason) - {EndReason.NO_CLIENT}
BROWSER_SCHEMES = ("token", "bearer")  # Sec-WebSocket-Protocol: token, <key> (Deepgram's browser auth)


def routes(ctx: FaceContext) -> list[BaseRoute]:
    """The Deepgram face: the ``/v1/listen`` WebSocket."""

    async def listen(websocket: WebSocket) -> None:
        await serve_listen(ctx, websocket)

    return [WebSocketRoute(LISTEN_PATH, listen)]


def _token(websocket: WebSocket) -> tuple[str | None, str | None]:
    """The request's token and the subprotocol to accept: ``?token=``, ``Authorization: Token|Bearer``, or a
    browser's ``Sec-WebSocket-Protocol: token, <key>``."""
    token = request_token(websocket.headers, websocket.query_params, token_scheme=True)
    if token is not None:
        return token, None
    offered = list(websocket.scope.get("subprotocols") or [])
    if len(offered) == 2 and offered[0].lower() in BROWSER_SCHEMES and offered[1]:
        return offered[1], offered[0]
    return None, None


async def _deny(websocket: WebSocket, status: int, err_code: str, err_msg: str, request_id: str,
                retry_after_s: float | None = None) -> None:
    """Refuse the handshake with an HTTP status and Deepgram's error body (and its ``dg-error`` header)."""
    headers = {"dg-request-id": request_id, "dg-error": err_msg.encode("ascii", "replace").decode("ascii")}
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(retry_after_s)))
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await websocket.send_denial_response(
            JSONResponse(dg.handshake_error(err_code, err_msg, request_id), status_code=status, headers=headers))


async def serve_listen(ctx: FaceContext, websocket: WebSocket) -> None:
    """One ``/v1/listen`` connection: the token, the query, admission, then the session."""
    request_id = str(uuid.uuid4())
    address = websocket.client.host if websocket.client else "unknown"
    token, subprotocol = _token(websocket)
    if not ctx.authorize(token):
        wait_s = ctx.refused(address, "deepgram listen: " + ("no token" if token is None else "wrong token"))
        if wait_s > 0:
            await _deny(websocket, 429, "TOO_MANY_REQUESTS", f"too many refused handshakes from this address; "
                        f"retry in {wait_s:.0f} s", request_id, retry_after_s=wait_s)
        else:
            await _deny(websocket, 401, "INVALID_AUTH", "Invalid credentials: send Authorization: Token <token> "
                        "(or Bearer <token>, or ?token=<token>)", request_id)
        return
    if not ctx.ready():
        await _deny(websocket, 503, "SERVICE_UNAVAILABLE", "the model is still loading; retry shortly", request_id)
        return
    try:
        options = dg.parse_listen_params(websocket.query_params)
    except dg.ListenParamError as exc:
        await _deny(websocket, 400, exc.code, str(exc), request_id)
        return
    session = DeepgramSession(ctx, websocket, options, request_id)
    why = ctx.sessions.admit(session)
    if why is not None:
        await _deny(websocket, 503, "SERVICE_UNAVAILABLE", why, request_id)
        return
    try:
        refusal = session.open_stream()
        if refusal is not None:
            await _deny(websocket, 503, "SERVICE_UNAVAILABLE", refusal, request_id)
            return
        await websocket.accept(subprotocol=subprotocol, headers=[(b"dg-request-id", request_id.encode())])
        await session.run()
    finally:
        session.release()
        ctx.sessions.leave(session)


class DeepgramSession:
    """One client's ``/v1/listen`` session: its stream on the engine, its decoder and its outgoing queue (a
    :class:`~parakeet_worker.serving.faces.LiveSession`)."""

    face = "deepgram"  # the metrics' face label (the app also tags the session's log context with it)

    def __init__(self, ctx: FaceContext, ws: WebSocket, options: dg.ListenOptions, request_id: str) -> None:
        self.ctx = ctx
        self.ws = ws
        self.options = options
        self.request_id = request_id
        self.id = uuid.uuid4().hex[:12]
        self.loop = asyncio.get_running_loop()
        self.opened = time.monotonic()
        self.created = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self.last_activity = self.opened
        self.idle_timeout_s = min(DEEPGRAM_IDLE_S, ctx.limits.idle_timeout_s)
        self.decoder = LiveAudioDecoder(options.encoding, options.sample_rate)
        self.model = dg.ModelInfo(ctx.engine.info().model)
        self.result_meta = dg.results_metadata(request_id, self.model)
        self.handle: StreamHandle | None = None
        self.outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self.reason: EndReason | None = None
        self.error_code: str | None = None  # what the session lost or why the engine ended it, for the metric
        self.closed_event = asyncio.Event()  # the engine stream is closed ...
        self.closed_reason = ""  # ... and why (``stop`` when its last final was served)
        self.audio_bytes = 0  # accepted, at the client's rate and encoding
        self.dropped_s = 0.0  # audio the engine refused (backlog): not counted in the duration
        self.utterances = 0  # finals with text
        self._sha = hashlib.sha256()
        self._carry = b""  # linear16: the odd byte of a frame, completed by the next frame's first byte
        self._window_start = 0.0  # where the current utterance's Results window starts (the last final's end)
        self._sender: asyncio.Task[None] | None = None
        self._ending: asyncio.Task[None] | None = None  # the one task that ends the session (see end())
        self._closer: asyncio.Task[None] | None = None
        self._control_tokens = float(MAX_CONTROL_BURST)
        self._control_at = self.opened
        self._notice_at: dict[str, float] = {}
        self.refused_messages = 0

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def open_stream(self) -> str | None:
        """Open the engine stream; None, or why it cannot be opened (the handshake is refused with 503)."""
        o = self.options
        # SpeechStarted and UtteranceEnd are the VAD's speech starts and stops; with utterance_end_ms a speech turn
        # stops after that much silence (at least 100 ms, as endpointing), so each SpeechStarted is paired with one
        # UtteranceEnd; without it a turn stops at the endpoint.
        endpoint = EndpointConfig(silence_s=o.endpoint_silence_ms / 1000)
        stop_ms = None if o.utterance_end_ms is None else max(o.utterance_end_ms, dg.MIN_ENDPOINT_MS)
        options = StreamOptions(endpointing=o.endpointing, endpoint=endpoint,
                                vad_events=o.vad_events or stop_ms is not None,
                                speech_stop_s=None if stop_ms is None else stop_ms / 1000)
        try:
            self.handle = self.ctx.engine.open_stream(self._on_engine_event, options, stream_id=f"dg-{self.id}")
        except ParakeetError as exc:
            logger.warning("deepgram session %s refused: %s", self.id, exc)
            return str(exc)
        return None

    def release(self) -> None:
        """The connection is over: an engine stream still open is dropped (nobody is left to read its final)."""
        if self.handle is not None and not self.handle.closed:
            self.handle.abort()

    async def run(self) -> None:
        o = self.options
        logger.info("deepgram session %s opened (request %s, %s %d Hz, interim %s, endpointing %s, model %r)",
                    self.id, self.request_id, o.encoding, o.sample_rate, o.interim_results,
                    o.endpoint_silence_ms if o.endpointing else "off", o.model)
        self._sender = asyncio.create_task(self._send_loop(), name=f"dg-send-{self.id}")
        watchdog = asyncio.create_task(self._watchdog(), name=f"dg-watch-{self.id}")
        try:
            await self._receive_loop()
        finally:
            await self._close(watchdog, self._sender)

    async def _receive_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            self.last_activity = time.monotonic()
            data = message.get("bytes")
            if data is not None:
                self._on_audio(data)
                continue
            text = message.get("text")
            if text is not None and self._admit_control(text):
                self._on_text(text)

    async def _close(self, watchdog: asyncio.Task[None], sender: asyncio.Task[None]) -> None:
        if self._ending is not None:  # a server-side end in progress: it sends the final, Metadata and the close
            with contextlib.suppress(Exception, asyncio.CancelledError):  # abandon() cancels it
                await asyncio.shield(self._ending)
        if self.reason is None:
            self.reason = EndReason.DISCONNECT
        self.release()
        watchdog.cancel()
        self.outbox.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        total_s = time.monotonic() - self.opened
        logger.info("deepgram session %s closed: %s, %.1f s of audio, %d utterances", self.id, self.reason,
                    self.audio_seconds, self.utterances)
        error_code = self.error_code or (None if self.reason in NORMAL_ENDS else self.reason.value)
        self.ctx.metrics.record("stream", audio_s=self.audio_seconds, total_s=total_s, session_id=self.id,
                                error_code=error_code)

    async def end(self, reason: EndReason, notice: str | None = None) -> None:
        """End the session (``CloseStream`` included): ``notice`` first if given, then the utterance in progress
        gets its final, then ``Metadata``, then the close with the reason's code. The first call starts the ending
        in a task of its own and later calls wait for that one."""
        await asyncio.shield(self._begin_end(reason, notice))

    def _begin_end(self, reason: EndReason, notice: str | None = None) -> asyncio.Task[None]:
        if self._ending is None:
            self.reason = reason
            if notice is not None:
                self._send(notice)
            self._ending = asyncio.create_task(self._end(reason), name=f"dg-end-{self.id}")
        return self._ending

    async def _end(self, reason: EndReason) -> None:
        await self._stop_stream()
        self._send(dg.metadata(request_id=self.request_id, sha256=self._sha.hexdigest(), created=self.created,
                               duration=self.audio_seconds, model=self.model))
        self.outbox.put_nowait(None)  # the sender drains what is queued (Metadata last), then ends
        if self._sender is not None:  # close only after everything queued went out, even to a slow reader
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._sender), timeout=DRAIN_WAIT_S)
        await self._close_socket(*self._close_frame(reason))

    def _close_frame(self, reason: EndReason) -> tuple[int, str]:
        if self.closed_reason == "error":
            return CloseCode.INTERNAL_ERROR, "engine_error: the stream failed; reconnect to go on"
        if reason is EndReason.IDLE_TIMEOUT:
            return CloseCode.INTERNAL_ERROR, (f"NET-0001: no audio or KeepAlive within {self.idle_timeout_s:.0f} s")
        if reason in (EndReason.STOP, EndReason.MAX_SESSION_LENGTH):
            return CloseCode.NORMAL, "" if reason is EndReason.STOP else reason.value
        return CloseCode.GOING_AWAY, reason.value

    async def _close_socket(self, code: int, reason: str) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await self.ws.close(code, reason)

    def abandon(self) -> None:
        """Give up an ending that overran the shutdown grace period: the final it waited for is lost and the
        socket is closed (going away)."""
        if self._ending is None or self._ending.done():
            return
        self.error_code = ErrorCode.FINAL_UNAVAILABLE.value
        self.release()
        self._ending.cancel()
        self._closer = asyncio.create_task(self._close_socket(CloseCode.GOING_AWAY, EndReason.SERVER_SHUTDOWN.value))

    @property
    def audio_seconds(self) -> float:
        heard = self.audio_bytes / self.options.bytes_per_sample / self.options.sample_rate
        return max(0.0, heard - self.dropped_s)

    async def _stop_stream(self) -> None:
        if self.handle is None:
            return
        if not self.handle.closed:
            tail = self.decoder.flush()
            if tail.size:
                with contextlib.suppress(ParakeetError):
                    self.handle.push(tail)
            self.handle.stop()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.closed_event.wait(), timeout=STOP_WAIT_S)
        if self.closed_reason != "stop":  # timed out, or the engine closed the stream before its final
            if not self.closed_event.is_set():
                self.handle.abort()
                why = f"the engine did not produce it within {STOP_WAIT_S:.0f} s"
            else:
                why = f"the engine closed the stream first ({self.closed_reason or 'unknown'})"
            self.error_code = ErrorCode.FINAL_UNAVAILABLE.value
            logger.error("deepgram session %s: the last utterance's final was lost: %s", self.id, why)
            self._send(dg.error("FinalUnavailable", f"the final of the last utterance could not be produced: {why}; "
                                "send that audio again", code=ErrorCode.FINAL_UNAVAILABLE.value))

    async def _watchdog(self) -> None:
        limits = self.ctx.limits
        while self._ending is None:
            await asyncio.sleep(WATCHDOG_PERIOD_S)
            now = time.monotonic()
            if self._ending is not None:
                return
            if now - self.opened > limits.max_session_s:
                await self.end(EndReason.MAX_SESSION_LENGTH, dg.error(
                    "SessionLimit", f"the session reached its limit of {limits.max_session_s:.0f} s; the utterance "
                    "in progress gets its final, then the stream closes; reconnect to go on",
                    code=ErrorCode.MAX_SESSION_LENGTH.value))
                return
            if now - self.last_activity > self.idle_timeout_s:
                await self.end(EndReason.IDLE_TIMEOUT)
                return

    # --- outgoing -----------------------------------------------------------------------------------------------
    def _send(self, message: str) -> None:
        self.outbox.put_nowait(message)

    def _notice(self, key: str, message: str) -> None:
        """An Error that a client's repeated mistake would repeat: at most one per key and second."""
        now = time.monotonic()
        if now - self._notice_at.get(key, float("-inf")) >= RATE_LIMIT_NOTICE_S:
            self._notice_at[key] = now
            self._send(message)

    async def _send_loop(self) -> None:
        while True:
            message = await self.outbox.get()
            if message is None:
                return
            try:
                await self.ws.send_text(message)
            except (WebSocketDisconnect, RuntimeError, OSError):
                return

    # --- incoming -----------------------------------------------------------------------------------------------
    def _admit_control(self, raw: str) -> bool:
        """The per-session token bucket on text messages; past it a message is refused (one Error a second),
        except a ``CloseStream``, which always ends the session."""
        now = time.monotonic()
        self._control_tokens = min(float(MAX_CONTROL_BURST),
                                   self._control_tokens + (now - self._control_at) * MAX_CONTROL_RATE_PER_S)
        self._control_at = now
        if self._control_tokens >= 1.0:
            self._control_tokens -= 1.0
            return True
        if len(raw) <= SMALL_CONTROL_CHARS and dg.Control.CLOSE_STREAM.value in raw:
            with contextlib.suppress(dg.ClientMessageError):
                if dg.parse_control(raw)[0] is dg.Control.CLOSE_STREAM:
                    return True
        self.refused_messages += 1
        self._notice("rate", dg.error(
            "RateLimited", f"more than {MAX_CONTROL_RATE_PER_S:.0f} text messages per second (burst "
            f"{MAX_CONTROL_BURST}); {self.refused_messages} were dropped so far; send KeepAlive every few seconds "
            "at most", code=ErrorCode.RATE_LIMITED.value))
        return False

    def _on_text(self, raw: str) -> None:
        try:
            control, body = dg.parse_control(raw)
        except dg.ClientMessageError as exc:
            self._send(dg.error("SchemaError", str(exc), code=exc.code, message=raw))
            return
        if control is dg.Control.FINALIZE:
            self._finalize()
        elif control is dg.Control.CLOSE_STREAM:
            self._begin_end(EndReason.STOP)
        elif control is dg.Control.CONFIGURE:
            self._send(dg.configure_failure(self.request_id, keyterms=body.get("keyterms") is not None))
        # KeepAlive: receiving it was the point (the idle clock restarted)

    def _on_audio(self, data: bytes) -> None:
        if self._ending is not None:
            self._notice("late", dg.error("StreamClosing", f"the stream is closing ({self.reason}): audio sent "
                                          "after that is not transcribed; open a new connection to go on",
                                          code=ErrorCode.STOPPED.value))
            return
        if not data:  # Deepgram's older close signal: an empty binary frame ends the stream like CloseStream
            self._begin_end(EndReason.STOP)
            return
        o, limits = self.options, self.ctx.limits
        seconds = len(data) / o.bytes_per_sample / o.sample_rate
        if seconds > limits.max_frame_audio_s:
            self._send(dg.error("DataError", f"one binary frame carried {seconds:.2f} s of audio, over the "
                                f"{limits.max_frame_audio_s:.1f} s limit; the frame was dropped: send audio in "
                                "frames of 20-250 ms", code=ErrorCode.FRAME_TOO_LARGE.value))
            return
        assert self.handle is not None
        pcm = data
        if o.encoding == "pcm16":  # a byte stream, as Deepgram reads it: a sample may straddle two frames
            if self._carry:
                pcm, self._carry = self._carry + pcm, b""
            if len(pcm) % 2:
                pcm, self._carry = pcm[:-1], pcm[-1:]
        samples = self.decoder.decode(pcm)
        try:
            if samples.size:
                self.handle.push(samples)
        except StreamBacklogError as exc:
            self.dropped_s += seconds
            self._send(dg.error("Overloaded", f"{exc}; this frame was dropped: {seconds:.3f} s",
                                code=ErrorCode.STREAM_BACKLOG.value))
        except EngineOverloadedError as exc:
            self.dropped_s += seconds
            self._send(dg.error("Overloaded", str(exc), code=ErrorCode.OVERLOADED.value))
        except EngineClosedError as exc:
            self._notice("closed", dg.error("StreamClosed", str(exc), code=ErrorCode.STOPPED.value))
            return
        self._sha.update(data)
        self.audio_bytes += len(data)

    def _finalize(self) -> None:
        if self._ending is not None or self.handle is None:
            return  # the ending's final covers the utterance
        tail = self.decoder.flush()  # so the utterance's last samples are transcribed
        if tail.size:
            with contextlib.suppress(ParakeetError):  # a full backlog: those samples are dropped like a frame
                self.handle.push(tail)
        try:
            self.handle.finalize()
        except FinalizeLimitError as exc:
            self._send(dg.error("RateLimited", str(exc), code=exc.code))
        except EngineClosedError as exc:
            self._notice("closed", dg.error("StreamClosed", str(exc), code=ErrorCode.STOPPED.value))

    # --- engine events (called on the engine thread) ----------------------------------------------------------------
    def _on_engine_event(self, event: StreamEvent) -> None:
        self.loop.call_soon_threadsafe(self._deliver, event)

    def _deliver(self, event: StreamEvent) -> None:
        if event.kind == "closed":
            self.closed_reason = event.reason
            self.closed_event.set()
            if event.reason in ("error", "engine_closed") and self._ending is None:
                self.error_code = "engine_error" if event.reason == "error" else ErrorCode.ENGINE_CLOSED.value
                self._begin_end(EndReason.SERVER_SHUTDOWN)
            return
        if event.kind == "error":
            text = str(event.error)
            if isinstance(event.error, StreamBacklogError):
                self.dropped_s += event.error.dropped_s
                text += f"; audio dropped: {event.error.dropped_s:.3f} s"
            self._send(dg.error("EngineError", text, code=getattr(event.error, "code", ErrorCode.ENGINE_ERROR)))
            return
        if event.kind == "speech_start":  # the VAD heard speech begin (asked for with vad_events)
            if self.options.vad_events and event.at_s is not None:
                self._send(dg.speech_started(event.at_s))
            return
        if event.kind == "speech_stop":  # utterance_end_ms of silence after speech (asked for with utterance_end_ms)
            if self.options.utterance_end_ms is not None and event.at_s is not None:
                self._send(dg.utterance_end(event.at_s))
            return
        if event.result is None:
            return
        if event.kind == "partial":
            self._on_partial(event.result)
        else:
            self._on_final(event.utterance, event.reason, event.result)

    def _on_partial(self, result: StepResult) -> None:
        if self.options.interim_results:
            self._send(dg.results(transcript=result.text, words=result.words, start=self._window_start,
                                  end=result.audio_end_s, is_final=False, speech_final=False, from_finalize=False,
                                  metadata=self.result_meta))

    def _on_final(self, utterance: int, reason: str, result: StepResult) -> None:
        text = result.committed_text
        if text:
            self.utterances += 1
            if self.ctx.settings.log_transcripts:
                logger.info("deepgram session %s final %d (%s): %s", self.id, utterance, reason, text)
        end = max(result.audio_end_s, self._window_start)
        self._send(dg.results(transcript=text, words=result.words, start=self._window_start, end=end, is_final=True,
                              speech_final=reason == "endpoint", from_finalize=reason == "finalize",
                              metadata=self.result_meta))
        self._window_start = end


__all__ = ["DEEPGRAM_IDLE_S", "LISTEN_PATH", "DeepgramSession", "routes", "serve_listen"]
