"""OpenAI-compatible REST transcription: ``POST /v1/audio/transcriptions``, ``GET /v1/models`` (docs/OPENAI.md).

Shapes follow the ``openai`` SDK's types (``Transcription``, ``TranscriptionVerbose``, ``TranscriptionSegment``,
``TranscriptionWord``, ``TranscriptionTextDeltaEvent`` / ``...DoneEvent``, ``Model``), not other "compatible"
servers. The upload is read as it arrives, at most :data:`MAX_REQUEST_BYTES` (the multipart parser spools the file
to disk past 1 MB), then transcribed by the worker's :class:`~parakeet_worker.serving.batch.BatchService` under the
same limits, budget and batching as a batch job; nothing in it is ever fetched. Errors come in OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}`` with the status of :func:`~parakeet_worker.serving.batch.http_status`.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from parakeet_worker.engine import TranscriptionResult
from parakeet_worker.errors import AudioTooLargeError, InputError, ParakeetError
from parakeet_worker.observability import log_context
from parakeet_worker.serving.batch import BatchService, http_status
from parakeet_worker.serving.faces import FaceContext, request_token
from parakeet_worker.serving.subtitles import cues_from_words, to_srt, to_vtt

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 30 * 1024 * 1024
"""Largest request body (the multipart form, file included): RunPod load-balancing endpoints' 30 MB payload."""
MAX_FORM_FIELDS = 64
MAX_FIELD_BYTES = 64 * 1024  # one non-file field (a prompt of OpenAI's 224 tokens is far below)
NOT_READY_RETRY_S = 5
ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
RESPONSE_FORMATS: tuple[str, ...] = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES: tuple[str, ...] = ("word", "segment")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
LANGUAGE_NAMES = {
    "bg": "bulgarian", "hr": "croatian", "cs": "czech", "da": "danish", "nl": "dutch", "en": "english",
    "et": "estonian", "fi": "finnish", "fr": "french", "de": "german", "el": "greek", "hu": "hungarian",
    "it": "italian", "lv": "latvian", "lt": "lithuanian", "mt": "maltese", "pl": "polish", "pt": "portuguese",
    "ro": "romanian", "sk": "slovak", "sl": "slovenian", "es": "spanish", "sv": "swedish", "ru": "russian",
    "uk": "ukrainian",
}  # fmt: skip
"""The names OpenAI's ``verbose_json`` gives languages (``"english"``), for the languages Parakeet v3 knows."""


class FormError(InputError):
    """A form field is missing or has a value the route does not take (400, naming the field)."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class TranscriptionForm:
    """The fields of a transcription request that change the answer; ``model``, ``prompt``, ``temperature`` and
    unknown fields are accepted and ignored."""

    response_format: ResponseFormat = "json"
    granularities: frozenset[str] = frozenset({"segment"})
    stream: bool = False
    language: str | None = None


# --- errors and refusals, shared with the load-balancing routes --------------------------------------------------
def openai_error(status: int, message: str, code: str | None, param: str | None = None,
                 retry_after_s: float | None = None) -> JSONResponse:
    """An error in OpenAI's envelope."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    headers = {"Retry-After": str(math.ceil(retry_after_s))} if retry_after_s else None
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status,
                        headers=headers)


@dataclass(frozen=True)
class Refusal:
    """Why a request is not served before its body is read: 401 (token), 429 (back-off), 503 (not ready)."""

    status: int
    message: str
    code: str
    retry_after_s: float | None = None


def with_request_id(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """``handler`` under a request id of its own: in the log context of everything it does (its metrics record's
    ``job_id``) and in the answer's ``x-request-id`` header."""
    async def tagged(request: Request) -> Response:
        request_id = f"req_{uuid.uuid4().hex[:24]}"
        with log_context(job_id=request_id):
            response = await handler(request)
        response.headers["x-request-id"] = request_id
        return response

    return tagged


def refusal(ctx: FaceContext, request: Request) -> Refusal | None:
    """``None`` when the request carries a token the worker accepts and the worker can serve it now."""
    token = request_token(request.headers, request.query_params)
    if not ctx.authorize(token):
        address = request.client.host if request.client else "unknown"
        wait_s = ctx.refused(address, "no token" if token is None else "an unknown token")
        if wait_s > 0:
            return Refusal(429, f"too many refused requests from this address; retry in {math.ceil(wait_s)} s",
                           "rate_limit_exceeded", wait_s)
        return Refusal(401, "missing or invalid token: send the worker's token as 'Authorization: Bearer <token>'",
                       "invalid_api_key")
    if not ctx.ready():
        return Refusal(503, "the worker is loading its model; retry in a few seconds", "not_ready",
                       NOT_READY_RETRY_S)
    if ctx.batch is None:
        return Refusal(503, "this worker serves no batch transcription (its app was built without one); use "
                            "another worker", "not_ready")
    return None


async def limited_body(request: Request, max_bytes: int) -> AsyncGenerator[bytes, None]:
    """The request body as it arrives; :class:`AudioTooLargeError` once it passes ``max_bytes`` (a declared
    ``Content-Length`` over it is refused before anything is read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise AudioTooLargeError(_too_large(max_bytes))
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise AudioTooLargeError(_too_large(max_bytes))
        yield chunk


def _too_large(max_bytes: int) -> str:
    return (f"the request is over the {max_bytes // (1024 * 1024)} MiB limit of this endpoint; compress the audio "
            "(mp3, opus, flac) or send it as a batch job with an audio_url")


# --- the form ------------------------------------------------------------------------------------------------------
async def read_form(request: Request) -> FormData:
    """The multipart form, its file spooled (memory, then disk past 1 MB), the body bounded."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        raise _UnsupportedRequest(f"the request body must be multipart/form-data with a 'file' part, got "
                                  f"{content_type.split(';')[0][:60] or 'no Content-Type'}")
    parser = MultiPartParser(request.headers, limited_body(request, MAX_REQUEST_BYTES), max_files=1,
                             max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES)
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise FormError(f"bad multipart form: {exc.message}", None) from None


class _UnsupportedRequest(InputError):
    """The request body is not a multipart form (415)."""

    code = "unsupported_content_type"


def parse_form(form: FormData, languages: tuple[str, ...]) -> tuple[UploadFile, TranscriptionForm]:
    """The upload and the fields that matter, or :class:`FormError` naming the bad field."""
    upload = form.get("file")
    if upload is None:
        raise FormError("no 'file' in the form: send the audio as the multipart part 'file'", "file")
    if not isinstance(upload, UploadFile):
        raise FormError("'file' must be a file part (with a filename), not a text field", "file")
    if not upload.size:
        raise FormError("the uploaded 'file' is empty (0 bytes)", "file")
    response_format = _text(form, "response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise FormError(f"response_format {response_format[:40]!r} is not supported; use one of "
                        f"{', '.join(RESPONSE_FORMATS)}", "response_format")
    given = [v for key in ("timestamp_granularities[]", "timestamp_granularities") for v in form.getlist(key)]
    granularities = set()
    for value in given:
        if not isinstance(value, str) or value not in GRANULARITIES:
            raise FormError(f"timestamp_granularities[] takes 'word' and 'segment', got {str(value)[:40]!r}",
                            "timestamp_granularities[]")
        granularities.add(value)
    stream_text = (_text(form, "stream") or "false").lower()
    if stream_text not in _TRUE + _FALSE:
        raise FormError(f"stream must be true or false, got {stream_text[:40]!r}", "stream")
    return upload, TranscriptionForm(
        response_format=cast(ResponseFormat, response_format),
        granularities=frozenset(granularities or {"segment"}),
        stream=stream_text in _TRUE,
        language=_language(_text(form, "language"), languages),
    )


def _text(form: FormData, key: str) -> str | None:
    value = form.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise FormError(f"'{key}' must be a text field, not a file", key)
    return value.strip() or None  # the SDK sends None as an empty field


def _language(value: str | None, languages: tuple[str, ...]) -> str | None:
    """An ISO-639-1 code the model knows (``en``; ``en-US`` is taken as ``en``), or ``None`` when not given."""
    if value is None:
        return None
    code = value.replace("_", "-").split("-")[0].lower()
    if code not in languages:
        raise FormError(f"language {value[:20]!r} is not one this model transcribes; use one of "
                        f"{', '.join(languages)} (ISO-639-1), or leave it out", "language")
    return code


# --- the answers ---------------------------------------------------------------------------------------------------
def transcription_body(result: TranscriptionResult, form: TranscriptionForm,
                       languages: tuple[str, ...]) -> Response:
    """The answer in the form's ``response_format`` (``stream`` aside)."""
    if form.response_format == "text":
        return PlainTextResponse(result.text)
    if form.response_format in ("srt", "vtt"):
        cues = cues_from_words(result.words, result.segments)
        if form.response_format == "srt":
            return PlainTextResponse(to_srt(cues))
        return PlainTextResponse(to_vtt(cues), media_type="text/vtt")
    usage = {"type": "duration", "seconds": round(result.duration_s, 3)}
    if form.response_format == "json":
        return JSONResponse({"text": result.text, "usage": usage})
    language = form.language or (languages[0] if len(languages) == 1 else None)
    body: dict[str, Any] = {"task": "transcribe", "language": LANGUAGE_NAMES.get(language or "", language or "unknown"),
                            "duration": round(result.duration_s, 3), "text": result.text, "usage": usage}
    if "segment" in form.granularities:
        # Parakeet has no Whisper windows, sampling temperature or per-segment log-probabilities: those fields
        # hold the values that mean "decoded greedily, nothing flagged" (seek 0, temperature 0, logprob 0).
        body["segments"] = [
            {"id": i, "seek": 0, "start": s.start, "end": s.end, "text": s.segment, "tokens": [],
             "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": _compression_ratio(s.segment),
             "no_speech_prob": 0.0}
            for i, s in enumerate(result.segments)
        ]
    if "word" in form.granularities:
        body["words"] = [{"word": w.word, "start": w.start, "end": w.end} for w in result.words]
    return JSONResponse(body)


def _compression_ratio(text: str) -> float:
    """Whisper's repetition measure: the text's bytes over their zlib-compressed size."""
    raw = text.encode("utf-8")
    return round(len(raw) / len(zlib.compress(raw)), 3) if raw else 0.0


def event_stream(result: TranscriptionResult) -> StreamingResponse:
    """``stream=true``: one ``transcript.text.delta`` per segment (their concatenation is the text), then
    ``transcript.text.done``, as server-sent events."""
    pieces = [s.segment if i == 0 else " " + s.segment for i, s in enumerate(result.segments)]
    if "".join(pieces) != result.text:  # segments are the text's words regrouped; if not, one delta says it all
        pieces = [result.text]

    async def events() -> AsyncIterator[str]:
        for piece in pieces or [""]:
            yield _sse({"type": "transcript.text.delta", "delta": piece})
        yield _sse({"type": "transcript.text.done", "text": result.text})

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _sse(event: dict[str, Any]) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


# --- the routes ----------------------------------------------------------------------------------------------------
def routes(ctx: FaceContext) -> list[BaseRoute]:
    """``POST /v1/audio/transcriptions``, ``GET /v1/models`` and ``GET /v1/models/{model}``."""
    info = ctx.engine.info()
    model_id, languages, created = info.model, info.languages, int(time.time())

    def model_object(name: str) -> dict[str, Any]:
        owner = model_id.split("/")[0] if "/" in model_id else "parakeet-worker"
        return {"id": name, "object": "model", "created": created, "owned_by": owner}

    transcriptions = with_request_id(lambda request: _transcriptions(request))

    async def _transcriptions(request: Request) -> Response:
        if request.method != "POST":
            return openai_error(405, "use POST with a multipart/form-data body", "method_not_allowed")
        refused = refusal(ctx, request)
        if refused is not None:
            hint = " (the OpenAI SDK's api_key)" if refused.status == 401 else ""
            return openai_error(refused.status, refused.message + hint, refused.code,
                                retry_after_s=refused.retry_after_s)
        batch = cast(BatchService, ctx.batch)  # refusal() answered 503 without one
        started = time.monotonic()
        form: FormData | None = None
        transcribing = False
        try:
            form = await read_form(request)
            upload, fields = parse_form(form, languages)
            transcribing = True
            result = await batch.transcribe_upload(upload.file)
        except ParakeetError as exc:
            if not transcribing:  # (the batch service counts what it refuses itself)
                batch.refused(exc.code, started)
            status = http_status(exc.code)
            retry = NOT_READY_RETRY_S if status == 503 else None
            return openai_error(status, str(exc), exc.code, getattr(exc, "param", None), retry_after_s=retry)
        except ClientDisconnect:  # the client went away during the upload: nobody to answer
            logger.info("the client disconnected during its upload")
            return Response(status_code=499)
        finally:
            if form is not None:
                await form.close()
        if fields.stream:
            return event_stream(result)
        return transcription_body(result, fields, languages)

    async def models(request: Request) -> Response:
        refused = refusal(ctx, request)
        if refused is not None and refused.status != 503:  # the model list is known while the model warms
            return openai_error(refused.status, refused.message, refused.code, retry_after_s=refused.retry_after_s)
        name = request.path_params.get("model")
        if name is None:
            return JSONResponse({"object": "list", "data": [model_object(model_id)]})
        return JSONResponse(model_object(name))  # any model name is accepted, and served by this model

    return [
        Route("/v1/audio/transcriptions", transcriptions, methods=["POST", "GET", "PUT", "PATCH", "DELETE"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", models, methods=["GET"]),
    ]


__all__ = ["MAX_REQUEST_BYTES", "FormError", "Refusal", "TranscriptionForm", "limited_body", "openai_error",
           "parse_form", "read_form", "refusal", "routes", "transcription_body"]
