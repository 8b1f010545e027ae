"""Deepgram live (``/v1/listen``) on the wire: the query parameters a session honours, the client's control
messages, and the server messages built the way Deepgram's SDK models declare them (docs/DEEPGRAM.md).

Everything here is pure: the face (:mod:`parakeet_worker.serving.deepgram_face`) owns the socket and the stream.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from parakeet_worker.audio.live import MAX_LIVE_RATE_HZ, MIN_LIVE_RATE_HZ, LiveEncoding
from parakeet_worker.errors import InputError
from parakeet_worker.streaming import EndpointConfig
from parakeet_worker.transcript import WordTiming

# Deepgram's ``encoding`` names -> the live decoder's; anything else (opus, flac, containers) is refused.
ENCODINGS: Mapping[str, LiveEncoding] = {"linear16": "pcm16", "mulaw": "mulaw", "alaw": "alaw"}
DEFAULT_ENDPOINT_MS = round(EndpointConfig().silence_s * 1000)  # when ``endpointing`` is absent (Deepgram: 10 ms)
MIN_ENDPOINT_MS, MAX_ENDPOINT_MS = 100, 10_000  # the server VAD's silence window; values outside are clamped
MIN_UTTERANCE_END_MS, MAX_UTTERANCE_END_MS = 1, 60_000
MAX_TEXT_MESSAGE_CHARS = 4096  # a control message is a few dozen bytes; longer text frames are not parsed
MAX_ECHO_CHARS = 256  # how much of an unparseable message an Error echoes back
MODEL_ARCH = "parakeet-tdt"
MODEL_VERSION = "parakeet-worker"
RESULTS_CHANNEL_INDEX = (0, 1)  # channel 0 of 1, as Deepgram writes it
SPEECH_STARTED_CHANNEL = (0,)
_WORD_EDGE_PUNCTUATION = "\"'`.,;:!?()[]{}<>«»“”‘’…-–—"


class ListenParamError(InputError):
    """A ``/v1/listen`` query parameter the worker cannot honour: the handshake is refused with HTTP 400."""

    code = "INVALID_QUERY_PARAMETER"


class ClientMessageError(InputError):
    """A client text frame that is not one of Deepgram's control messages (answered with a ``SchemaError``)."""

    code = "bad_message"


class Control(StrEnum):
    """The client's control messages (``{"type": ...}``)."""

    KEEP_ALIVE = "KeepAlive"
    FINALIZE = "Finalize"
    CLOSE_STREAM = "CloseStream"
    CONFIGURE = "Configure"


@dataclass(frozen=True)
class ListenOptions:
    """What a session honours of its query string (the other Deepgram parameters are accepted and ignored)."""

    encoding: LiveEncoding
    sample_rate: int
    interim_results: bool = False
    endpointing: bool = True  # ``endpointing=false``: no server endpointing, finals on Finalize/CloseStream only
    endpoint_silence_ms: int = DEFAULT_ENDPOINT_MS
    utterance_end_ms: int | None = None  # ``UtteranceEnd`` after this much silence after speech (the VAD's)
    vad_events: bool = False  # ``SpeechStarted`` messages (the VAD's speech starts)
    model: str = ""  # what the client asked for; echoed in the log only

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding == "pcm16" else 1


def _flag(query: Mapping[str, str], name: str, default: bool) -> bool:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise ListenParamError(f"{name}={raw!r} is not a boolean: use {name}=true or {name}=false")


def _integer(query: Mapping[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw.strip())
    except ValueError:
        raise ListenParamError(f"{name}={raw!r} is not an integer") from None


def parse_listen_params(query: Mapping[str, str]) -> ListenOptions:
    """The options of a ``/v1/listen`` query string; :class:`ListenParamError` names the parameter to fix."""
    raw_encoding = (query.get("encoding") or "").strip().lower()
    if not raw_encoding:
        raise ListenParamError("encoding is required: this server takes raw audio only, encoding=linear16 (or "
                               "mulaw, alaw) with sample_rate; containerized audio is not supported live")
    encoding = ENCODINGS.get(raw_encoding)
    if encoding is None:
        raise ListenParamError(f"encoding={raw_encoding!r} is not supported: use linear16, mulaw or alaw")
    sample_rate = _integer(query, "sample_rate")
    if sample_rate is None:
        raise ListenParamError(f"sample_rate is required with encoding={raw_encoding}: the rate of the audio "
                               f"you send, {MIN_LIVE_RATE_HZ}-{MAX_LIVE_RATE_HZ} Hz")
    if not MIN_LIVE_RATE_HZ <= sample_rate <= MAX_LIVE_RATE_HZ:
        raise ListenParamError(f"sample_rate={sample_rate} is out of range: use {MIN_LIVE_RATE_HZ}-"
                               f"{MAX_LIVE_RATE_HZ} Hz")
    channels = _integer(query, "channels")
    if channels is not None and channels != 1:
        raise ListenParamError(f"channels={channels} is not supported: send mono audio with channels=1")
    raw_endpointing = (query.get("endpointing") or "").strip().lower()
    endpointing, silence_ms = True, DEFAULT_ENDPOINT_MS
    if raw_endpointing == "false":
        endpointing = False
    elif raw_endpointing not in ("", "true"):
        value = _integer(query, "endpointing")
        assert value is not None
        if value < 0:
            raise ListenParamError(f"endpointing={value} is negative: give the silence in ms, or endpointing=false")
        silence_ms = min(max(value, MIN_ENDPOINT_MS), MAX_ENDPOINT_MS)
    utterance_end_ms = _integer(query, "utterance_end_ms")
    if utterance_end_ms is not None and not MIN_UTTERANCE_END_MS <= utterance_end_ms <= MAX_UTTERANCE_END_MS:
        raise ListenParamError(f"utterance_end_ms={utterance_end_ms} is out of range: use "
                               f"{MIN_UTTERANCE_END_MS}-{MAX_UTTERANCE_END_MS} (1000 is usual)")
    return ListenOptions(encoding=encoding, sample_rate=sample_rate,
                         interim_results=_flag(query, "interim_results", False), endpointing=endpointing,
                         endpoint_silence_ms=silence_ms, utterance_end_ms=utterance_end_ms,
                         vad_events=_flag(query, "vad_events", False), model=(query.get("model") or "")[:64])


def parse_control(raw: str) -> tuple[Control, dict[str, Any]]:
    """The control message of a text frame; :class:`ClientMessageError` says what is wrong with it."""
    if len(raw) > MAX_TEXT_MESSAGE_CHARS:
        raise ClientMessageError(f"a text message of {len(raw)} characters is too long for a control message "
                                 f"(at most {MAX_TEXT_MESSAGE_CHARS}); send audio as binary frames")
    try:
        obj = json.loads(raw)
    except ValueError:
        raise ClientMessageError("the text message is not JSON: send {\"type\": \"KeepAlive\" | \"Finalize\" | "
                                 "\"CloseStream\"}, and audio as binary frames") from None
    if not isinstance(obj, dict):
        raise ClientMessageError("a control message must be a JSON object with a \"type\"")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ClientMessageError("the control message has no string \"type\": use KeepAlive, Finalize or CloseStream")
    try:
        return Control(kind), obj
    except ValueError:
        raise ClientMessageError(f"unknown message type {kind[:40]!r}: use KeepAlive, Finalize or "
                                 "CloseStream") from None


# --- server messages ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelInfo:
    """The model a session's results name (``metadata.model_info`` and ``model_uuid``)."""

    name: str
    version: str = MODEL_VERSION
    arch: str = MODEL_ARCH

    @property
    def uuid(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"parakeet-worker:{self.name}"))

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "arch": self.arch}


def results_metadata(request_id: str, model: ModelInfo) -> dict[str, Any]:
    """``Results.metadata``: the same for every result of a session, built once."""
    return {"request_id": request_id, "model_info": model.to_json(), "model_uuid": model.uuid}


def plain_word(punctuated: str) -> str:
    """Deepgram's ``word``: lower case, without the punctuation around it (``punctuated_word`` keeps both)."""
    stripped = punctuated.strip(_WORD_EDGE_PUNCTUATION)
    return (stripped or punctuated).lower()


def word_json(word: WordTiming) -> dict[str, Any]:
    return {"word": plain_word(word.word), "start": round(word.start, 3), "end": round(word.end, 3),
            "confidence": 1.0, "punctuated_word": word.word}


def results(*, transcript: str, words: Sequence[WordTiming], start: float, end: float, is_final: bool,
            speech_final: bool, from_finalize: bool, metadata: Mapping[str, Any]) -> str:
    """A ``Results`` message (encoded): one window ``start``..``end`` seconds from the stream's start."""
    start = round(max(0.0, start), 3)
    return json.dumps({
        "type": "Results", "channel_index": list(RESULTS_CHANNEL_INDEX), "duration": round(max(0.0, end - start), 3),
        "start": start, "is_final": is_final, "speech_final": speech_final, "from_finalize": from_finalize,
        "channel": {"alternatives": [{"transcript": transcript, "confidence": 1.0 if transcript else 0.0,
                                      "words": [word_json(w) for w in words]}]},
        "metadata": metadata,
    })


def speech_started(timestamp: float) -> str:
    """``SpeechStarted``: the VAD heard speech begin at ``timestamp`` seconds from the stream's start."""
    return json.dumps({"type": "SpeechStarted", "channel": list(SPEECH_STARTED_CHANNEL),
                       "timestamp": round(max(0.0, timestamp), 3)})


def utterance_end(last_word_end: float) -> str:
    """``UtteranceEnd``: ``utterance_end_ms`` of silence followed the speech that ended at ``last_word_end``."""
    return json.dumps({"type": "UtteranceEnd", "channel": list(RESULTS_CHANNEL_INDEX),
                       "last_word_end": round(last_word_end, 3)})


def metadata(*, request_id: str, sha256: str, created: str, duration: float, model: ModelInfo) -> str:
    """The ``Metadata`` message that ends every session."""
    return json.dumps({"type": "Metadata", "transaction_key": "deprecated", "request_id": request_id,
                       "sha256": sha256, "created": created, "duration": round(duration, 3), "channels": 1,
                       "models": [model.uuid], "model_info": {model.uuid: model.to_json()}})


def error(variant: str, description: str, *, code: str | None = None, message: str | None = None) -> str:
    """An ``Error`` message: ``variant`` is the category (``SchemaError`` for a text message that could not be
    parsed, whose text is echoed in ``message``), ``code`` the worker's own error code."""
    body: dict[str, Any] = {"type": "Error", "variant": variant, "description": description}
    if code is not None:
        body["code"] = code
    if message is not None:
        body["message"] = message[:MAX_ECHO_CHARS]
    return json.dumps(body)


def configure_failure(request_id: str, keyterms: bool) -> str:
    """The answer to ``Configure``: nothing can be reconfigured mid-stream here."""
    if keyterms:
        code, why = "CONFIGURE_KEYTERMS_NOT_SUPPORTED", "keyterms are not supported by this model"
    else:
        code, why = "CONFIGURE_INTERNAL_ERROR", "formatting features cannot be changed: Parakeet's output is fixed"
    return json.dumps({"type": "ConfigureFailure", "request_id": request_id, "code": code, "description": why})


def handshake_error(err_code: str, err_msg: str, request_id: str) -> dict[str, str]:
    """The JSON body of a refused handshake, as Deepgram's API answers it (also in the ``dg-error`` header)."""
    return {"err_code": err_code, "err_msg": err_msg, "request_id": request_id}


__all__ = [
    "ENCODINGS", "ClientMessageError", "Control", "ListenOptions", "ListenParamError", "ModelInfo",
    "configure_failure", "error", "handshake_error", "metadata", "parse_control", "parse_listen_params",
    "plain_word", "results", "results_metadata", "speech_started", "utterance_end",
]
