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

import contextlib
import hashlib
import logging
import uuid
from datetime import UTC, datetime
from functools import partial
from typing import Any

from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from parakeet_worker.audio.live import LiveAudioDecoder
from parakeet_worker.errors import EngineClosedError, EngineOverloadedError, ParakeetError
from parakeet_worker.serving import deepgram_messages as dg
from parakeet_worker.serving.faces import FaceContext, request_token
from parakeet_worker.serving.live_core import LiveCore, LiveStream
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
    StreamOptions,
)

logger = logging.getLogger(__name__)

LISTEN_PATH = "/v1/listen"
DEEPGRAM_IDLE_S = 10.0  # Deepgram closes a stream that got neither audio nor a message for this long (NET-0001)
SMALL_CONTROL_CHARS = 256  # past the rate limit only a small CloseStream is still read
_GONE = (WebSocketDisconnect, WebSocketDisconnected, RuntimeError, OSError)
BROWSER_SCHEMES = ("token", "bearer")  # Sec-WebSocket-Protocol: token, <key> (Deepgram's browser auth)


def _is_close_stream(raw: str) -> bool:
    """A small text message that is a ``CloseStream``: honoured past the control-message rate limit."""
    if len(raw) > SMALL_CONTROL_CHARS or dg.Control.CLOSE_STREAM.value not in raw:
        return False
    with contextlib.suppress(dg.ClientMessageError):
        return dg.parse_control(raw)[0] is dg.Control.CLOSE_STREAM
    return False


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


class DeepgramSession(LiveCore):
    """One client's ``/v1/listen`` session: its stream on the engine and its decoder, on the shared session core
    (:class:`~parakeet_worker.serving.live_core.LiveCore`; a :class:`~parakeet_worker.serving.faces.LiveSession`)."""

    face = "deepgram"  # the metrics' face label

    def __init__(self, ctx: FaceContext, ws: WebSocket, options: dg.ListenOptions, request_id: str) -> None:
        super().__init__(session_id=uuid.uuid4().hex[:12], metrics=ctx.metrics,
                         idle_timeout_s=min(DEEPGRAM_IDLE_S, ctx.limits.idle_timeout_s),
                         max_session_s=ctx.limits.max_session_s, transmit=ws.send_text, gone=_GONE)
        self.ctx = ctx
        self.ws = ws
        self.options = options
        self.request_id = request_id
        self.created = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self.decoder = LiveAudioDecoder(options.encoding, options.sample_rate)
        self.model = dg.ModelInfo(ctx.engine.info().model)
        self.result_meta = dg.results_metadata(request_id, self.model)
        self.stream: LiveStream | None = None
        self.audio_bytes = 0  # accepted, at the client's rate and encoding
        self.dropped_s = 0.0  # audio the engine refused (backlog): not counted in the duration
        self.utterances = 0  # finals with text
        self._sha = hashlib.sha256()
        self._window_start = 0.0  # where the current utterance's Results window starts (the last final's end)

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
            handle = self.ctx.engine.open_stream(self.on_engine_event, options, stream_id=f"dg-{self.id}")
        except ParakeetError as exc:
            logger.warning("deepgram session %s refused: %s", self.id, exc)
            return str(exc)
        self.stream = LiveStream(handle)
        return None

    def _release(self) -> bool:
        """An engine stream still open is dropped (nobody is left to read its final)."""
        if self.stream is not None and not self.stream.handle.closed:
            self.stream.handle.abort()
            return True
        return False

    async def run(self, *first: Any) -> None:
        o = self.options
        logger.info("deepgram session %s opened (request %s, %s %d Hz, interim %s, endpointing %s, model %r)",
                    self.id, self.request_id, o.encoding, o.sample_rate, o.interim_results,
                    o.endpoint_silence_ms if o.endpointing else "off", o.model)
        await super().run(*first)

    async def _receive_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            self.touch()
            data = message.get("bytes")
            if data is not None:
                self._on_audio(data)
                continue
            text = message.get("text")
            if text is not None and self.admit_control(partial(_is_close_stream, text)):
                self._on_text(text)

    def _end_notice(self, reason: EndReason) -> str | None:
        if reason is EndReason.MAX_SESSION_LENGTH:
            return dg.error("SessionLimit", f"the session reached its limit of {self.max_session_s:.0f} s; the "
                            "utterance in progress gets its final, then the stream closes; reconnect to go on",
                            code=ErrorCode.MAX_SESSION_LENGTH.value)
        return None  # idle is said in the close frame (NET-0001), shutdown by the going-away close

    def _rate_notice(self) -> str:
        return dg.error("RateLimited", f"more than {MAX_CONTROL_RATE_PER_S:.0f} text messages per second (burst "
                        f"{MAX_CONTROL_BURST}); {self.refused_messages} were dropped so far; send KeepAlive every few "
                        "seconds at most", code=ErrorCode.RATE_LIMITED.value)

    async def _ending_steps(self, reason: EndReason) -> None:
        if self.stream is not None:
            lost = await self.stream.stop(self.decoder.flush())
            if lost is not None:
                self.final_lost(lost)
                self.post(dg.error("FinalUnavailable", f"the final of the last utterance could not be produced: "
                                   f"{lost}; send that audio again", code=ErrorCode.FINAL_UNAVAILABLE.value))
        self.post(dg.metadata(request_id=self.request_id, sha256=self._sha.hexdigest(), created=self.created,
                              duration=self.audio_seconds, model=self.model))
        await self.drain()  # close only after everything queued went out (Metadata last), even to a slow reader
        await self._close_transport(*self._close_frame(reason))

    def _close_frame(self, reason: EndReason) -> tuple[int, str]:
        if self.stream is not None and self.stream.closed_reason == "error":
            return CloseCode.INTERNAL_ERROR, "engine_error: the stream failed; reconnect to go on"
        if reason is EndReason.IDLE_TIMEOUT:
            return CloseCode.INTERNAL_ERROR, (f"NET-0001: no audio or KeepAlive within {self.idle_timeout_s:.0f} s")
        if reason in (EndReason.STOP, EndReason.MAX_SESSION_LENGTH):
            return CloseCode.NORMAL, "" if reason is EndReason.STOP else reason.value
        return CloseCode.GOING_AWAY, reason.value

    async def _close_transport(self, code: int, reason: str) -> None:
        with contextlib.suppress(*_GONE):
            await self.ws.close(code, reason)

    @property
    def audio_seconds(self) -> float:
        heard = self.audio_bytes / self.options.bytes_per_sample / self.options.sample_rate
        return max(0.0, heard - self.dropped_s)

    def _closed_log(self) -> str:
        return f"{self.audio_seconds:.1f} s of audio, {self.utterances} utterances"

    # --- incoming -----------------------------------------------------------------------------------------------
    def _on_text(self, raw: str) -> None:
        try:
            control, body = dg.parse_control(raw)
        except dg.ClientMessageError as exc:
            self.post(dg.error("SchemaError", str(exc), code=exc.code, message=raw))
            return
        if control is dg.Control.FINALIZE:
            self._finalize()
        elif control is dg.Control.CLOSE_STREAM:
            self.begin_end(EndReason.STOP)
        elif control is dg.Control.CONFIGURE:
            self.post(dg.configure_failure(self.request_id, keyterms=body.get("keyterms") is not None))
        # KeepAlive: receiving it was the point (the idle clock restarted)

    def _on_audio(self, data: bytes) -> None:
        if self.ending:
            self.notice_once("late", dg.error("StreamClosing", f"the stream is closing ({self.reason}): audio sent "
                                              "after that is not transcribed; open a new connection to go on",
                                              code=ErrorCode.STOPPED.value))
            return
        if not data:  # Deepgram's older close signal: an empty binary frame ends the stream like CloseStream
            self.begin_end(EndReason.STOP)
            return
        o, limits = self.options, self.ctx.limits
        seconds = len(data) / o.bytes_per_sample / o.sample_rate
        if seconds > limits.max_frame_audio_s:
            self.post(dg.error("DataError", f"one binary frame carried {seconds:.2f} s of audio, over the "
                               f"{limits.max_frame_audio_s:.1f} s limit; the frame was dropped: send audio in "
                               "frames of 20-250 ms", code=ErrorCode.FRAME_TOO_LARGE.value))
            return
        assert self.stream is not None
        samples = self.decoder.decode_stream(data)  # a byte stream, as Deepgram reads it
        try:
            if samples.size:
                self.stream.handle.push(samples)
        except StreamBacklogError as exc:
            self.dropped_s += seconds
            self.post(dg.error("Overloaded", f"{exc}; this frame was dropped: {seconds:.3f} s",
                               code=ErrorCode.STREAM_BACKLOG.value))
        except EngineOverloadedError as exc:
            self.dropped_s += seconds
            self.post(dg.error("Overloaded", str(exc), code=ErrorCode.OVERLOADED.value))
        except EngineClosedError as exc:
            self.notice_once("closed", dg.error("StreamClosed", str(exc), code=ErrorCode.STOPPED.value))
            return
        self._sha.update(data)
        self.audio_bytes += len(data)

    def _finalize(self) -> None:
        if self.ending or self.stream is None:
            return  # the ending's final covers the utterance
        self.stream.push_tail(self.decoder.flush())  # so the utterance's last samples are transcribed
        try:
            self.stream.handle.finalize()
        except FinalizeLimitError as exc:
            self.post(dg.error("RateLimited", str(exc), code=exc.code))
        except EngineClosedError as exc:
            self.notice_once("closed", dg.error("StreamClosed", str(exc), code=ErrorCode.STOPPED.value))

    # --- engine events (handed to the loop by LiveCore.on_engine_event) ---------------------------------------------
    def _deliver(self, event: StreamEvent) -> None:
        if event.kind == "closed":
            self.stream_closed(self.stream, event.reason)
            return
        if event.kind == "error":
            text = str(event.error)
            if isinstance(event.error, StreamBacklogError):
                self.dropped_s += event.error.dropped_s
                text += f"; audio dropped: {event.error.dropped_s:.3f} s"
            self.post(dg.error("EngineError", text, code=getattr(event.error, "code", ErrorCode.ENGINE_ERROR)))
            return
        if event.kind == "speech_start":  # the VAD heard speech begin (asked for with vad_events)
            if self.options.vad_events and event.at_s is not None:
                self.post(dg.speech_started(event.at_s))
            return
        if event.kind == "speech_stop":  # utterance_end_ms of silence after speech (asked for with utterance_end_ms)
            if self.options.utterance_end_ms is not None and event.at_s is not None:
                self.post(dg.utterance_end(event.at_s))
            return
        if event.result is None:
            return
        if event.kind == "partial":
            self._on_partial(event.result)
        else:
            self._on_final(event.utterance, event.reason, event.result)

    def _on_partial(self, result: StepResult) -> None:
        if self.options.interim_results:
            self.post(dg.results(transcript=result.text, words=result.words, start=self._window_start,
                                  end=result.audio_end_s, is_final=False, speech_final=False, from_finalize=False,
                                  metadata=self.result_meta))

    def _on_final(self, utterance: int, reason: str, result: StepResult) -> None:
        text = result.committed_text
        if text:
            self.utterances += 1
            if self.ctx.settings.log_transcripts:
                logger.info("deepgram session %s final %d (%s): %s", self.id, utterance, reason, text)
        end = max(result.audio_end_s, self._window_start)
        self.post(dg.results(transcript=text, words=result.words, start=self._window_start, end=end, is_final=True,
                              speech_final=reason == "endpoint", from_finalize=reason == "finalize",
                              metadata=self.result_meta))
        self._window_start = end


__all__ = ["DEEPGRAM_IDLE_S", "LISTEN_PATH", "DeepgramSession", "routes", "serve_listen"]
