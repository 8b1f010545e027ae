"""NVIDIA Riva's ASR service (``nvidia.riva.asr.RivaSpeechRecognition``) over the worker's engine: Riva's own clients,
Pipecat's ``NvidiaSTTService`` / ``NvidiaSegmentedSTTService`` and LiveKit's NVIDIA plugin talk to the worker as they
would to a Riva server (docs/RIVA.md says what is honoured and what differs). Served by
:mod:`~parakeet_worker.serving.grpc_server` on its own port, beside the HTTP/WebSocket app, with the same token,
session limit and shutdown drain.

- ``StreamingRecognize``: one :class:`RivaSession` per RPC (an engine stream on the shared session core,
  :class:`~parakeet_worker.serving.live_core.LiveCore`). The first request must carry ``streaming_config``; audio is
  decoded (PCM16 / mu-law / A-law at 8-48 kHz, resampled); the engine's partials become interims (the whole
  current-utterance hypothesis), each endpoint of the server VAD (``endpointing_config``) one ``is_final`` result;
  ``runtime_config["force_eou"] == "true"`` finalizes at once. The client's half-close flushes the last final and
  ends the RPC with OK; a server-side end (shutdown, idle, length limit) does the same, then ends it with a status
  that says why.
- ``Recognize``: a whole file (WAV/FLAC/OGG, sniffed) or raw audio at ``sample_rate_hertz``, through the batch
  service (the job path's decoding and limits); one result per segment.
- ``GetRivaSpeechRecognitionConfig``: the model, as an online and an offline config.

Every RPC needs the token in the metadata (``authorization: Bearer <token>``; ``function-id`` is ignored); without
it, ``UNAUTHENTICATED``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
import uuid
import wave
from typing import Any

import grpc
import numpy as np
from riva.client.proto import riva_asr_pb2 as rasr
from riva.client.proto import riva_asr_pb2_grpc as rasr_grpc

from parakeet_worker.audio.live import MAX_LIVE_RATE_HZ, MIN_LIVE_RATE_HZ, LiveAudioDecoder, g711_to_float32
from parakeet_worker.audio.sniff import HEAD_BYTES, sniff
from parakeet_worker.errors import EngineClosedError, EngineOverloadedError, ParakeetError
from parakeet_worker.observability import log_context
from parakeet_worker.serving import riva_messages as rm
from parakeet_worker.serving.batch import http_status
from parakeet_worker.serving.faces import FaceContext, request_token
from parakeet_worker.serving.live_core import LiveCore, LiveStream
from parakeet_worker.serving.protocol import EndReason, ErrorCode
from parakeet_worker.serving.ws_grants import Grant, GrantBook, SessionSummary
from parakeet_worker.streaming import FinalizeLimitError, StreamBacklogError, StreamEvent, StreamOptions
from parakeet_worker.transcript import SAMPLE_RATE_HZ

logger = logging.getLogger(__name__)

# Pipecat sends keep-alive silence only after 30 s without audio, checking every 5 s: a Riva session stays open at
# least this long without audio, whatever the worker's (shorter) idle timeout.
RIVA_MIN_IDLE_S = 60.0
Status = tuple[grpc.StatusCode, str]
_END_STATUS: dict[EndReason, Status] = {
    EndReason.SERVER_SHUTDOWN: (grpc.StatusCode.UNAVAILABLE,
                                "the worker is shutting down: the utterance in progress got its final; reconnect"),
    EndReason.CANCELLED: (grpc.StatusCode.CANCELLED, "the session's job was cancelled"),
}


def _metadata_token(context: grpc.aio.ServicerContext) -> str | None:
    """The RPC's token: ``authorization: Bearer <token>`` in its metadata (header names are lower case)."""
    headers = {str(key).lower(): str(value) for key, value in (context.invocation_metadata() or ())}
    return request_token(headers, {})


def _peer_host(context: grpc.aio.ServicerContext) -> str:
    """``ipv4:127.0.0.1:5000`` -> ``127.0.0.1`` (the refusal back-off's key)."""
    peer = str(context.peer() or "unknown")
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition("]")[0].lstrip("[%") or rest
    return rest.rpartition(":")[0] or peer


async def check_caller(ctx: FaceContext, context: grpc.aio.ServicerContext, rpc: str) -> str | None:
    """The RPC's token; the RPC is aborted unless it is one the worker accepts (``UNAUTHENTICATED``) and the model
    is ready (``UNAVAILABLE``)."""
    token = _metadata_token(context)
    if not ctx.authorize(token):
        wait_s = ctx.refused(_peer_host(context), f"riva {rpc}: " + ("no token" if token is None else "wrong token"))
        hint = f"; too many refusals from this address: retry in {wait_s:.0f} s" if wait_s > 0 else ""
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "missing or invalid token: send the metadata 'authorization: Bearer <token>' (Riva "
                            f"clients: riva.client.Auth(..., metadata_args=[['authorization', 'Bearer <token>']])){hint}")
    if not ctx.ready():
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the model is still loading; retry shortly")
    return token


def job_grant(ctx: FaceContext, token: str | None) -> Grant | None:
    """The single-use grant (a ``websocket`` job's) ``token`` belongs to, or None (the standalone token)."""
    book = ctx.sessions
    grant = book.grant_for(token) if isinstance(book, GrantBook) else None
    return grant if grant is not None and not grant.multi_use else None


class RivaSession(LiveCore):
    """One ``StreamingRecognize`` RPC: its decoder, its engine stream and its responses (a
    :class:`~parakeet_worker.serving.faces.LiveSession`)."""

    face = "riva"

    def __init__(self, ctx: FaceContext, rpc: grpc.aio.ServicerContext, settings: rm.StreamSettings) -> None:
        super().__init__(session_id=uuid.uuid4().hex[:12], metrics=ctx.metrics,
                         idle_timeout_s=max(ctx.limits.idle_timeout_s, RIVA_MIN_IDLE_S),
                         max_session_s=ctx.limits.max_session_s, transmit=rpc.write,
                         gone=(asyncio.InvalidStateError, grpc.aio.UsageError, RuntimeError))
        self.ctx = ctx
        self.rpc = rpc
        self.settings = settings
        self.decoder = LiveAudioDecoder(settings.encoding, settings.sample_rate)
        self.stream: LiveStream | None = None
        self.status: Status = (grpc.StatusCode.OK, "")
        self.utterances = 0
        self.finals: list[str] = []
        self.dropped_s = 0.0
        self._interim_shown = False  # an interim with text was sent since the last final
        self._closed = asyncio.Event()  # the RPC is to end now (the ending is done, or it was abandoned)

    def open_stream(self) -> str | None:
        """Open the engine stream; None, or why it cannot be opened."""
        options = StreamOptions(endpointing=True, endpoint=self.settings.endpoint)
        try:
            self.stream = LiveStream(self.ctx.engine.open_stream(self.on_engine_event, options,
                                                                 stream_id=f"riva-{self.id}"))
        except ParakeetError as exc:
            logger.warning("riva session %s refused: %s", self.id, exc)
            return str(exc)
        s = self.settings
        logger.info("riva session %s opened (%s %d Hz, interim %s, endpoint silence %.0f ms)", self.id, s.encoding,
                    s.sample_rate, s.interim_results, s.endpoint.silence_s * 1000)
        return None

    # --- LiveCore hooks -------------------------------------------------------------------------------------------
    async def _receive_loop(self) -> None:
        closing = asyncio.ensure_future(self._closed.wait())
        try:
            while not self.ended():
                read = asyncio.ensure_future(self.rpc.read())
                await asyncio.wait((read, closing), return_when=asyncio.FIRST_COMPLETED)
                if not read.done():  # the server ended the RPC (its ending is done, or it was abandoned)
                    read.cancel()
                    return
                request = read.result()
                if request is grpc.aio.EOF:  # the client half-closed: the last final, then OK
                    await self.end(EndReason.STOP)
                    return
                self.touch()
                self._on_request(request)
        finally:
            closing.cancel()

    async def _ending_steps(self, reason: EndReason) -> None:
        if self.stream is not None:
            lost = await self.stream.stop(self._flush())
            if lost is not None:
                self.final_lost(lost)
                self._set_status(grpc.StatusCode.DATA_LOSS, f"the final of the last utterance could not be "
                                 f"produced: {lost}; send that audio again")
        status = _END_STATUS.get(reason)
        if reason is EndReason.IDLE_TIMEOUT:
            status = (grpc.StatusCode.DEADLINE_EXCEEDED, f"no audio for {self.idle_timeout_s:.0f} s: the stream "
                      "was closed; send audio (or keep-alive silence) more often")
        elif reason is EndReason.MAX_SESSION_LENGTH:
            status = (grpc.StatusCode.DEADLINE_EXCEEDED, f"the stream reached its limit of "
                      f"{self.max_session_s:.0f} s; the utterance in progress got its final; open a new stream")
        if status is not None:
            self._set_status(*status)
        await self.drain()
        self._closed.set()

    def _deliver(self, event: StreamEvent) -> None:
        if event.kind == "closed":
            if self.stream_closed(self.stream, event.reason):  # its status first: the ending's would say shutdown
                self._set_status(grpc.StatusCode.UNAVAILABLE if event.reason == "engine_closed"
                                 else grpc.StatusCode.INTERNAL, f"the engine ended the stream ({event.reason})")
            return
        if event.kind == "error":
            if isinstance(event.error, StreamBacklogError):
                self.dropped_s += event.error.dropped_s
            self._fail(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{event.error}; audio was dropped, so the stream "
                       "ends here (its last final is sent); send audio at real-time pace",
                       str(getattr(event.error, "code", ErrorCode.ENGINE_ERROR)))
            return
        if event.result is None or event.kind not in ("partial", "final"):
            return
        result, s = event.result, self.settings
        if event.kind == "partial":
            if s.interim_results and result.text:
                self._interim_shown = True
                self.post(rm.interim(result, audio_processed_s=result.audio_end_s, language=s.language))
            return
        text = result.committed_text
        if text:
            self.utterances += 1
            self.finals.append(text)
            if self.ctx.settings.log_transcripts:
                logger.info("riva session %s final %d (%s): %s", self.id, event.utterance, event.reason, text)
        if text or self._interim_shown:  # an utterance that was never shown and has no words gets no final
            self.post(rm.final(result, audio_processed_s=result.audio_end_s, language=s.language,
                               word_offsets=s.word_offsets))
        self._interim_shown = False

    def _release(self) -> bool:
        if self.stream is not None and not self.stream.handle.closed:
            self.stream.handle.abort()
            return True
        return False

    async def _close_transport(self, code: int, reason: str) -> None:
        self._set_status(grpc.StatusCode.UNAVAILABLE, f"the stream was closed by the server ({reason})")
        self._closed.set()

    def _rate_notice(self) -> rasr.StreamingRecognizeResponse:
        return rasr.StreamingRecognizeResponse()  # no results: clients skip it (the refusal is logged)

    @property
    def audio_seconds(self) -> float:
        return max(0.0, self.decoder.seconds_in - self.dropped_s)

    def summary(self) -> SessionSummary:
        """What a ``websocket`` job whose token opened this stream returns."""
        return SessionSummary(session_id=self.id, reason=(self.reason or EndReason.DISCONNECT).value,
                              audio_seconds=round(self.audio_seconds, 3), utterances=self.utterances,
                              final_text=" ".join(self.finals), duration_s=round(time.monotonic() - self.opened, 3),
                              error_code=self.error_code)

    def _closed_log(self) -> str:
        return f"{self.audio_seconds:.1f} s of audio, {self.utterances} utterances, status {self.status[0].name}"

    # --- incoming -------------------------------------------------------------------------------------------------
    def _on_request(self, request: rasr.StreamingRecognizeRequest) -> None:
        if request.HasField("streaming_config"):
            self._fail(grpc.StatusCode.INVALID_ARGUMENT, "streaming_config is sent once, in the first request; "
                       "later requests carry audio_content", ErrorCode.BAD_MESSAGE.value)
            return
        if request.audio_content:
            self._on_audio(request.audio_content)
        if rm.force_eou(request) and self.admit_control():
            self._force_eou()

    def _on_audio(self, data: bytes) -> None:
        if self.ending or self.stream is None:
            return  # the stream is ending: its last final is on its way
        s, limits = self.settings, self.ctx.limits
        seconds = len(data) / s.bytes_per_sample / s.sample_rate
        if seconds > limits.max_frame_audio_s:
            self._fail(grpc.StatusCode.INVALID_ARGUMENT, f"one request carried {seconds:.2f} s of audio, over the "
                       f"{limits.max_frame_audio_s:.1f} s limit: send audio_content in chunks of 20-500 ms",
                       ErrorCode.FRAME_TOO_LARGE.value)
            return
        samples = self.decoder.decode_stream(data)  # a byte stream: a sample may straddle two requests
        try:
            if samples.size:
                self.stream.handle.push(samples)
        except EngineClosedError as exc:
            self._fail(grpc.StatusCode.UNAVAILABLE, str(exc), ErrorCode.ENGINE_CLOSED.value)
        except EngineOverloadedError as exc:  # a stream backlog: the engine is not keeping up with this stream
            self.dropped_s += seconds
            self._fail(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{exc}; send audio at real-time pace",
                       str(getattr(exc, "code", ErrorCode.OVERLOADED.value)))

    def _force_eou(self) -> None:
        if self.ending or self.stream is None:
            return  # the ending's final covers the utterance
        tail = self._flush()  # the utterance's last samples, through the resampler
        if tail is not None:
            self.stream.push_tail(tail)
        try:
            self.stream.handle.finalize()
        except FinalizeLimitError as exc:  # finalizes already queued: their finals cover this one
            logger.info("riva session %s: force_eou refused: %s", self.id, exc)
        except EngineClosedError as exc:
            self._fail(grpc.StatusCode.UNAVAILABLE, str(exc), ErrorCode.ENGINE_CLOSED.value)

    def _flush(self) -> np.ndarray | None:
        tail = self.decoder.flush()
        return tail if tail.size else None

    def _set_status(self, code: grpc.StatusCode, details: str) -> None:
        if self.status[0] is grpc.StatusCode.OK:  # the first cause is the one reported
            self.status = (code, details)

    def _fail(self, code: grpc.StatusCode, details: str, error_code: str) -> None:
        """End the RPC with ``code`` (the finals of what was heard are still sent first)."""
        if self.ending:
            return
        logger.warning("riva session %s ends with %s: %s", self.id, code.name, details)
        self._set_status(code, details)
        self.error_code = self.error_code or error_code
        self.begin_end(EndReason.STOP)


class RivaServicer(rasr_grpc.RivaSpeechRecognitionServicer):  # the generated, untyped base
    """The three RPCs of ``RivaSpeechRecognition`` over one :class:`~parakeet_worker.serving.faces.FaceContext`."""

    def __init__(self, ctx: FaceContext) -> None:
        self.ctx = ctx

    async def StreamingRecognize(self, request_iterator: Any,  # noqa: N802 (the proto's name)
                                 context: grpc.aio.ServicerContext) -> None:
        with log_context(face=RivaSession.face):
            token = await check_caller(self.ctx, context, "StreamingRecognize")
            grant = job_grant(self.ctx, token)
            if grant is not None and grant.used:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this job's token already opened its "
                                    "session (one per websocket job); start another job")
            first = await context.read()
            if first is grpc.aio.EOF or not first.HasField("streaming_config"):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry "
                                    "streaming_config (then audio_content in the following ones)")
            try:
                settings = rm.stream_settings(first.streaming_config)
            except rm.RivaConfigError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            session = RivaSession(self.ctx, context, settings)
            why = self.ctx.sessions.admit(session)
            if why is not None:
                draining = bool(getattr(self.ctx.sessions, "draining", False))
                await context.abort(grpc.StatusCode.UNAVAILABLE if draining else grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    why)
            if grant is not None:
                grant.used = True  # the job now lasts as long as this stream (and cancelling the job ends it)
                grant.sessions.add(session)
            try:
                refusal = session.open_stream()
                if refusal is not None:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
                with log_context(session_id=session.id, job_id=grant.job_id if grant else None):
                    await session.run()
            finally:
                session.release()
                self.ctx.sessions.leave(session)
                if grant is not None:
                    assert isinstance(self.ctx.sessions, GrantBook)
                    grant.sessions.discard(session)
                    self.ctx.sessions.retire(grant)
                    grant.finish(session.summary())
            code, details = session.status
            if code is not grpc.StatusCode.OK:
                context.set_code(code)
                context.set_details(details)

    async def Recognize(self, request: rasr.RecognizeRequest,  # noqa: N802 (the proto's name)
                        context: grpc.aio.ServicerContext) -> rasr.RecognizeResponse:
        with log_context(face=RivaSession.face):
            await check_caller(self.ctx, context, "Recognize")
            batch = self.ctx.batch
            if batch is None or bool(getattr(self.ctx.sessions, "draining", False)):
                await context.abort(grpc.StatusCode.UNAVAILABLE, "this worker takes no batch requests now; retry "
                                    "on another worker")
            assert batch is not None
            config = request.config
            try:
                audio = await asyncio.to_thread(file_bytes, request.audio, config)
                result = await batch.transcribe_upload(audio)
            except ParakeetError as exc:
                await context.abort(_status_of(exc), str(exc))
            return rm.offline_results(result, language=config.language_code or rm.LANGUAGE,
                                      word_offsets=config.enable_word_time_offsets)

    async def GetRivaSpeechRecognitionConfig(  # noqa: N802 (the proto's name)
            self, request: rasr.RivaSpeechRecognitionConfigRequest,
            context: grpc.aio.ServicerContext) -> rasr.RivaSpeechRecognitionConfigResponse:
        with log_context(face=RivaSession.face):
            token = _metadata_token(context)
            if not self.ctx.authorize(token):
                self.ctx.refused(_peer_host(context), "riva GetRivaSpeechRecognitionConfig: bad token")
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid token: send the metadata "
                                    "'authorization: Bearer <token>'")
            return rm.model_configs(self.ctx.engine.info().model)


def _status_of(exc: ParakeetError) -> grpc.StatusCode:
    """A batch error's status: the worker's overload or shutdown is UNAVAILABLE / RESOURCE_EXHAUSTED, the audio's
    own problems INVALID_ARGUMENT."""
    if exc.code in ("overloaded", "audio_budget_exceeded"):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode.UNAVAILABLE if http_status(exc.code) == 503 else grpc.StatusCode.INVALID_ARGUMENT


def file_bytes(audio: bytes, config: rasr.RecognitionConfig) -> bytes:
    """``Recognize``'s audio as a file the batch decoder reads: a WAV/FLAC/OGG/... file as it is (sniffed; its
    header wins over ``encoding``), raw audio (LINEAR_PCM, MULAW, ALAW at ``sample_rate_hertz``, default 16 kHz)
    wrapped in a WAV header. Raises :class:`~parakeet_worker.serving.riva_messages.RivaConfigError`."""
    if not audio:
        raise rm.RivaConfigError("audio is empty: send a WAV/FLAC/OGG file or raw LINEAR_PCM at sample_rate_hertz")
    container, strong = sniff(audio[:HEAD_BYTES])
    if container is not None and strong:
        return audio
    encoding = rm.encoding_of(config)
    rate = config.sample_rate_hertz or SAMPLE_RATE_HZ
    if not MIN_LIVE_RATE_HZ <= rate <= MAX_LIVE_RATE_HZ:
        raise rm.RivaConfigError(f"sample_rate_hertz {rate} is out of range for raw audio: "
                                 f"{MIN_LIVE_RATE_HZ}-{MAX_LIVE_RATE_HZ} Hz (or send a WAV file)")
    if encoding == "pcm16":
        pcm = audio[: len(audio) - len(audio) % 2]
    else:
        samples = g711_to_float32(audio, encoding)
        pcm = (np.clip(samples, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()
    return wav_bytes(pcm, rate)


def wav_bytes(pcm: bytes, rate: int) -> bytes:
    """A mono PCM16 WAV file of ``pcm`` at ``rate``."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return out.getvalue()


def add_to_server(ctx: FaceContext, server: grpc.aio.Server) -> None:
    """Serve ``RivaSpeechRecognition`` on ``server``."""
    rasr_grpc.add_RivaSpeechRecognitionServicer_to_server(RivaServicer(ctx), server)


__all__ = ["RIVA_MIN_IDLE_S", "RivaServicer", "RivaSession", "add_to_server", "check_caller", "file_bytes",
           "wav_bytes"]
