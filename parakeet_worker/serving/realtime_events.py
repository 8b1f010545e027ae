"""The OpenAI Realtime transcription protocol's data, apart from the socket: the session configuration (GA and
beta shapes) and its parsing, the server events, typed request errors, and :class:`StablePrefix`, which turns the
engine's revisable partials into append-only transcription deltas.

Shapes follow the openai SDK's types: ``openai.types.realtime.*`` (GA: ``session.update`` with
``session.type: "transcription"`` and ``audio.input.{format, transcription, turn_detection, noise_reduction}``)
and ``openai.types.beta.realtime.*`` (beta: ``transcription_session.update`` with flat ``input_audio_format``,
``input_audio_transcription``, ``turn_detection``). Used by :mod:`parakeet_worker.serving.realtime_face`.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from parakeet_worker.audio.live import MAX_LIVE_RATE_HZ, MIN_LIVE_RATE_HZ, LiveEncoding
from parakeet_worker.errors import ParakeetError
from parakeet_worker.serving.live_core import LiveStream
from parakeet_worker.serving.protocol import EndReason
from parakeet_worker.streaming import EndpointConfig, StreamHandle, StreamOptions

Dialect = Literal["ga", "beta"]
Event = dict[str, Any]

DEFAULT_PCM_RATE_HZ = 24000  # OpenAI's PCM16 rate
G711_RATE_HZ = 8000
DEFAULT_THRESHOLD = 0.5
DEFAULT_PREFIX_PADDING_MS = 300
DEFAULT_SILENCE_MS = 500  # OpenAI's server_vad default
MIN_SILENCE_MS, MAX_SILENCE_MS = 100, 10_000  # EndpointConfig's range
MIN_THRESHOLD, MAX_THRESHOLD = 0.05, 0.95  # silero-vad thresholds outside this are clamped (EndpointConfig's range)
# semantic_vad has no semantic model here: its eagerness picks the silence that ends a turn.
SEMANTIC_SILENCE_MS = {"low": 1200, "medium": 800, "auto": 800, "high": 400}
HOLD_WORDS = 1  # the last committed word of a partial is never sent as a delta (the likeliest to change)
# transcription.delay: at these, no delta is sent before the final (one delta per item, never revised).
FINAL_ONLY_DELAYS = frozenset({"high", "xhigh"})
_DELAYS = ("minimal", "low", "medium", "high", "xhigh")

_GA_FORMATS: dict[str, LiveEncoding] = {"audio/pcm": "pcm16", "audio/pcmu": "mulaw", "audio/pcma": "alaw"}
_BETA_FORMATS: dict[str, LiveEncoding] = {"pcm16": "pcm16", "g711_ulaw": "mulaw", "g711_alaw": "alaw"}
_GA_NAMES = {v: k for k, v in _GA_FORMATS.items()}
_BETA_NAMES = {v: k for k, v in _BETA_FORMATS.items()}
_BETA_KEYS = ("input_audio_format", "input_audio_transcription", "turn_detection", "input_audio_noise_reduction")
# Client events of the conversation API that a transcription session does not serve.
CONVERSATION_EVENTS = frozenset({
    "response.create", "response.cancel", "conversation.item.create", "conversation.item.delete",
    "conversation.item.retrieve", "conversation.item.truncate", "output_audio_buffer.clear",
})


class RealtimeRequestError(ParakeetError, ValueError):
    """A client event the server cannot honour, answered with the Realtime ``error`` event; the session goes on."""

    def __init__(self, message: str, *, code: str, param: str | None = None, event_id: str | None = None,
                 error_type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.code = code
        self.param = param
        self.event_id = event_id
        self.error_type = error_type

    def event(self) -> Event:
        return error_event(str(self), code=self.code, error_type=self.error_type, param=self.param,
                           event_id=self.event_id)


def error_event(message: str, *, code: str, error_type: str = "server_error", param: str | None = None,
                event_id: str | None = None) -> Event:
    return {"type": "error", "error": {"type": error_type, "code": code, "message": message, "param": param,
                                       "event_id": event_id}}


def _invalid(message: str, param: str, code: str = "invalid_value") -> RealtimeRequestError:
    return RealtimeRequestError(message, code=code, param=param)


@dataclass(frozen=True)
class TurnDetection:
    """``server_vad`` (or ``semantic_vad``, approximated by silence): our VAD ends utterances."""

    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float = DEFAULT_THRESHOLD
    prefix_padding_ms: int = DEFAULT_PREFIX_PADDING_MS  # reported speech starts are this much earlier
    silence_duration_ms: int = DEFAULT_SILENCE_MS
    eagerness: str | None = None  # semantic_vad only

    def endpoint(self) -> EndpointConfig:
        threshold = min(MAX_THRESHOLD, max(MIN_THRESHOLD, self.threshold))
        return EndpointConfig(threshold=threshold, silence_s=self.silence_duration_ms / 1000)

    def shape(self) -> Event:
        if self.type == "semantic_vad":
            return {"type": "semantic_vad", "eagerness": self.eagerness or "auto"}
        return {"type": "server_vad", "threshold": self.threshold, "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms}


@dataclass(frozen=True)
class SessionConfig:
    """A transcription session's effective configuration."""

    encoding: LiveEncoding = "pcm16"
    rate: int = DEFAULT_PCM_RATE_HZ
    turn_detection: TurnDetection | None = TurnDetection()  # None: the client commits
    model: str = ""  # any value is accepted and echoed; the worker's one model transcribes
    language: str | None = None  # echoed (the model's languages are fixed)
    prompt: str | None = None  # echoed, not used
    delay: str | None = None  # high | xhigh: deltas only at the final (else from the partials as they settle)
    noise_reduction: str | None = None  # near_field | far_field: echoed, not applied
    include: tuple[str, ...] = ()  # echoed; logprobs are not produced

    def stream_options(self) -> StreamOptions:
        if self.turn_detection is None:
            return StreamOptions(endpointing=False)
        return StreamOptions(endpointing=True, endpoint=self.turn_detection.endpoint(), vad_events=True)

    @property
    def interim_deltas(self) -> bool:
        return self.delay not in FINAL_ONLY_DELAYS

    def _transcription(self) -> Event:
        return {"model": self.model, "language": self.language, "prompt": self.prompt or ""}

    def _noise(self) -> Event | None:
        return {"type": self.noise_reduction} if self.noise_reduction else None

    def ga_session(self, session_id: str, expires_at: int) -> Event:
        fmt: Event = {"type": _GA_NAMES[self.encoding]}
        if self.encoding == "pcm16":
            fmt["rate"] = self.rate
        turn = self.turn_detection.shape() if self.turn_detection else None
        return {"id": session_id, "object": "realtime.transcription_session", "type": "transcription",
                "expires_at": expires_at, "include": list(self.include),
                "audio": {"input": {"format": fmt, "transcription": {**self._transcription(), "delay": self.delay},
                                    "noise_reduction": self._noise(), "turn_detection": turn}}}

    def beta_session(self, session_id: str, expires_at: int) -> Event:
        return {"id": session_id, "object": "realtime.transcription_session", "expires_at": expires_at,
                "modalities": ["text"], "input_audio_format": _BETA_NAMES[self.encoding],
                "input_audio_transcription": self._transcription(),
                "turn_detection": self.turn_detection.shape() if self.turn_detection else None,
                "input_audio_noise_reduction": self._noise(), "include": list(self.include) or None,
                "client_secret": None}


# --- parsing client events -----------------------------------------------------------------------------------
def parse_client_event(text: str) -> tuple[str, Event, str | None]:
    """A text message as (type, event, its event_id)."""
    try:
        event = json.loads(text)
    except (ValueError, RecursionError):
        raise RealtimeRequestError("the message is not valid JSON: send one JSON event object per message",
                                   code="invalid_json") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise RealtimeRequestError("an event must be a JSON object with a string `type`", code="invalid_event",
                                   param="type")
    event_id = event.get("event_id")
    return event["type"], event, event_id if isinstance(event_id, str) else None


def append_bytes(event: Event, max_bytes: int, max_audio_s: float) -> bytes:
    """The audio bytes of an ``input_audio_buffer.append`` (at most ``max_bytes``, ``max_audio_s`` of audio)."""
    audio = event.get("audio")
    if not isinstance(audio, str):
        raise RealtimeRequestError("`audio` must be a base64 string of audio in the session's format",
                                   code="invalid_value", param="audio")
    too_large = RealtimeRequestError(f"one append may carry at most {max_audio_s:g} s of audio: split it; this "
                                     "append was dropped", code="audio_too_large", param="audio")
    if len(audio) > (max_bytes + 2) // 3 * 4 + 4:
        raise too_large
    try:
        data = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        raise RealtimeRequestError("`audio` is not valid base64; this append was dropped", code="invalid_audio",
                                   param="audio") from None
    if len(data) > max_bytes:
        raise too_large
    return data


# --- parsing the session updates ------------------------------------------------------------------------------
def parse_session_update(event: Event, current: SessionConfig) -> tuple[SessionConfig, Dialect]:
    """The configuration after ``session.update`` / ``transcription_session.update`` and the dialect it spoke.
    Only the fields present change; a bad field raises :class:`RealtimeRequestError` and changes nothing."""
    session = event.get("session")
    if not isinstance(session, dict):
        raise _invalid("`session` must be an object with the session's fields", "session")
    if event["type"] == "transcription_session.update":
        return _parse_beta(session, current, "session"), "beta"
    kind = session.get("type")
    if kind is not None and kind != "transcription":
        raise RealtimeRequestError(
            f"session.type {kind!r} is not served here: this endpoint transcribes only; send "
            "session.type \"transcription\" (and connect with ?intent=transcription)",
            code="unsupported_session_type", param="session.type")
    if kind is None and "audio" not in session and any(k in session for k in _BETA_KEYS):
        return _parse_beta(session, current, "session"), "beta"  # the beta `session.update` (flat fields)
    return _parse_ga(session, current), "ga"


def _obj(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"`{param}` must be an object", param)
    return value


def _opt_str(value: Any, param: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _invalid(f"`{param}` must be a string", param)
    return value


def _parse_ga(session: dict[str, Any], current: SessionConfig) -> SessionConfig:
    config = _include(session, current, "session.include")
    inp = _obj(_obj(session.get("audio", {}), "session.audio").get("input", {}), "session.audio.input")
    if "format" in inp:
        fmt = _obj(inp["format"], "session.audio.input.format")
        encoding = _GA_FORMATS.get(fmt.get("type", "audio/pcm"))
        if encoding is None:
            raise _invalid(f"audio format {fmt.get('type')!r} is not supported: use audio/pcm (PCM16, 24 kHz), "
                           "audio/pcmu or audio/pcma", "session.audio.input.format.type", "unsupported_format")
        rate = G711_RATE_HZ
        if encoding == "pcm16":
            rate = _rate(fmt.get("rate", DEFAULT_PCM_RATE_HZ), "session.audio.input.format.rate")
        config = replace(config, encoding=encoding, rate=rate)
    if "turn_detection" in inp:
        config = replace(config, turn_detection=_turn(inp["turn_detection"], "session.audio.input.turn_detection"))
    if "transcription" in inp:
        config = _transcription(inp["transcription"], config, "session.audio.input.transcription")
    if "noise_reduction" in inp:
        config = _noise(inp["noise_reduction"], config, "session.audio.input.noise_reduction")
    return config


def _parse_beta(session: dict[str, Any], current: SessionConfig, prefix: str) -> SessionConfig:
    config = _include(session, current, f"{prefix}.include")
    if "input_audio_format" in session:
        name = session["input_audio_format"]
        encoding = _BETA_FORMATS.get(name) if isinstance(name, str) else None
        if encoding is None:
            raise _invalid(f"input_audio_format {name!r} is not supported: use pcm16 (24 kHz), g711_ulaw or "
                           "g711_alaw", f"{prefix}.input_audio_format", "unsupported_format")
        config = replace(config, encoding=encoding,
                         rate=DEFAULT_PCM_RATE_HZ if encoding == "pcm16" else G711_RATE_HZ)
    if "turn_detection" in session:
        config = replace(config, turn_detection=_turn(session["turn_detection"], f"{prefix}.turn_detection"))
    if "input_audio_transcription" in session:
        config = _transcription(session["input_audio_transcription"], config, f"{prefix}.input_audio_transcription")
    if "input_audio_noise_reduction" in session:
        config = _noise(session["input_audio_noise_reduction"], config, f"{prefix}.input_audio_noise_reduction")
    return config


def _rate(value: Any, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_LIVE_RATE_HZ <= value <= MAX_LIVE_RATE_HZ:
        raise _invalid(f"PCM rate {value!r} is not supported: use 24000 (OpenAI's rate; any integer "
                       f"{MIN_LIVE_RATE_HZ}-{MAX_LIVE_RATE_HZ} Hz is accepted)", param, "unsupported_format")
    return value


def _number(value: Any, param: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _invalid(f"`{param}` must be a number within {low:g}..{high:g}, got {value!r}", param)
    return float(value)


def _turn(value: Any, param: str) -> TurnDetection | None:
    if value is None:
        return None
    turn = _obj(value, param)
    kind = turn.get("type", "server_vad")
    if kind == "semantic_vad":
        eagerness = turn.get("eagerness") or "auto"
        if eagerness not in SEMANTIC_SILENCE_MS:
            raise _invalid(f"eagerness must be one of {', '.join(SEMANTIC_SILENCE_MS)}, got {eagerness!r}",
                           f"{param}.eagerness")
        return TurnDetection(type="semantic_vad", eagerness=eagerness,
                             silence_duration_ms=SEMANTIC_SILENCE_MS[eagerness])
    if kind != "server_vad":
        raise _invalid(f"turn_detection type {kind!r} is not supported: use server_vad, semantic_vad, or null "
                       "(the client commits)", f"{param}.type")
    threshold = turn.get("threshold")
    padding = turn.get("prefix_padding_ms")
    silence = turn.get("silence_duration_ms")
    return TurnDetection(
        threshold=DEFAULT_THRESHOLD if threshold is None else _number(threshold, f"{param}.threshold", 0.0, 1.0),
        prefix_padding_ms=DEFAULT_PREFIX_PADDING_MS if padding is None else int(
            _number(padding, f"{param}.prefix_padding_ms", 0, 10_000)),
        silence_duration_ms=DEFAULT_SILENCE_MS if silence is None else int(
            _number(silence, f"{param}.silence_duration_ms", MIN_SILENCE_MS, MAX_SILENCE_MS)))


def _transcription(value: Any, config: SessionConfig, param: str) -> SessionConfig:
    if value is None:
        return config  # "turn transcription off" has no meaning for a transcription-only server
    fields = _obj(value, param)
    model = _opt_str(fields.get("model"), f"{param}.model")
    delay = fields.get("delay")
    if delay is not None and delay not in _DELAYS:
        raise _invalid(f"delay must be one of {', '.join(_DELAYS)}, got {delay!r}", f"{param}.delay")
    return replace(config, model=model or config.model, delay=delay,
                   language=_opt_str(fields.get("language"), f"{param}.language"),
                   prompt=_opt_str(fields.get("prompt"), f"{param}.prompt"))


def _noise(value: Any, config: SessionConfig, param: str) -> SessionConfig:
    if value is None:
        return replace(config, noise_reduction=None)
    kind = _obj(value, param).get("type")
    if kind not in ("near_field", "far_field", None):
        raise _invalid(f"noise_reduction type {kind!r} is not one of near_field, far_field", f"{param}.type")
    return replace(config, noise_reduction=kind)


def _include(session: dict[str, Any], config: SessionConfig, param: str) -> SessionConfig:
    if "include" not in session:
        return config
    include = session["include"]
    if include is None:
        return replace(config, include=())
    if not isinstance(include, list) or not all(isinstance(i, str) for i in include):
        raise _invalid("`include` must be a list of strings", param)
    return replace(config, include=tuple(include))


# --- server events (the sender adds event_id) -------------------------------------------------------------------
def speech_started(item_id: str, audio_start_ms: int) -> Event:
    return {"type": "input_audio_buffer.speech_started", "item_id": item_id, "audio_start_ms": audio_start_ms}


def speech_stopped(item_id: str, audio_end_ms: int) -> Event:
    return {"type": "input_audio_buffer.speech_stopped", "item_id": item_id, "audio_end_ms": audio_end_ms}


def committed(item_id: str, previous_item_id: str | None) -> Event:
    return {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous_item_id}


def item_added(item_id: str, previous_item_id: str | None, dialect: Dialect) -> Event:
    """The user item a commit creates (GA ``conversation.item.added``, beta ``conversation.item.created``)."""
    item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "user", "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}]}
    kind = "conversation.item.added" if dialect == "ga" else "conversation.item.created"
    return {"type": kind, "previous_item_id": previous_item_id, "item": item}


def delta(item_id: str, text: str) -> Event:
    return {"type": "conversation.item.input_audio_transcription.delta", "item_id": item_id, "content_index": 0,
            "delta": text}


def completed(item_id: str, transcript: str, audio_s: float) -> Event:
    return {"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id,
            "content_index": 0, "transcript": transcript,
            "usage": {"type": "duration", "seconds": round(max(0.0, audio_s), 3)}}


def failed(item_id: str, code: str, message: str) -> Event:
    return {"type": "conversation.item.input_audio_transcription.failed", "item_id": item_id, "content_index": 0,
            "error": {"type": "server_error", "code": code, "message": message, "param": None}}


# --- the handshake -------------------------------------------------------------------------------------------
def subprotocol_token(offered: list[str]) -> tuple[str | None, str | None]:
    """Browser clients' auth: ``Sec-WebSocket-Protocol: realtime, openai-insecure-api-key.<key>`` ->
    (the subprotocol to accept, the key)."""
    offered = [p.strip() for p in offered]
    token = next((p.split(".", 1)[1] for p in offered if p.startswith("openai-insecure-api-key.")), None)
    return ("realtime" if "realtime" in offered else None), token


def denial_body(message: str, code: str) -> Event:
    """The body of a refused handshake, in OpenAI's error envelope."""
    return {"error": {"message": message, "type": "invalid_request_error", "code": code, "param": None}}


# --- append-only deltas over revisable partials -----------------------------------------------------------------
class StablePrefix:
    """One item's deltas: only words that stayed the same in two partials running, and not among the partial's
    last ``hold`` words, are sent; the final sends the rest. The deltas' concatenation is then the final
    transcript, unless the final revised a word already sent (``revised``; ``.completed`` carries the final).

    The face feeds it the partials' committed words (the streamed text, which only grows); what the final can
    still revise is the offline final pass disagreeing with them, whatever the hold (docs/OPENAI_REALTIME.md)."""

    def __init__(self, hold: int = HOLD_WORDS) -> None:
        self.hold = hold
        self.sent = ""  # the concatenation of the deltas sent so far
        self._sent_words: list[str] = []
        self._previous: list[str] = []
        self.revised = False

    def partial(self, text: str) -> str:
        """The delta this partial allows ("" when none)."""
        words = text.split()
        stable = 0
        for now, before in zip(words, self._previous):
            if now != before:
                break
            stable += 1
        self._previous = words
        stable = min(stable, len(words) - self.hold)
        known = len(self._sent_words)
        if stable <= known or words[:known] != self._sent_words:
            return ""  # nothing new is stable, or the partial moved away from what was sent: wait for the final
        new = words[known:stable]
        piece = (" " if self.sent else "") + " ".join(new)
        self._sent_words.extend(new)
        self.sent += piece
        return piece

    def final(self, transcript: str) -> str:
        """The last delta: the transcript after what was sent ("" when nothing is left, or when the final revised
        a word already sent — then ``revised`` is set)."""
        sent = self.sent
        if transcript.startswith(sent) and (len(transcript) == len(sent) or not sent
                                            or transcript[len(sent)] == " "):
            rest = transcript[len(sent):]
            self.sent = transcript
            return rest
        self.revised = True
        return ""


@dataclass(eq=False)
class Item:
    """One utterance as a conversation item."""

    id: str = field(default_factory=lambda: "item_" + uuid.uuid4().hex[:20])
    stable: StablePrefix = field(default_factory=StablePrefix)
    announced: bool = False  # an event named it (the client knows it)
    started: bool = False  # speech_started was sent
    stopped: bool = False  # ... and speech_stopped
    committed: bool = False


# Why the server ended a session, told as an ``error`` event before the close (a client's disconnect: nothing).
END_NOTICES: dict[EndReason, tuple[str, str]] = {
    EndReason.IDLE_TIMEOUT: ("idle_timeout", "no event for {idle:.0f} s; append audio to keep the session open"),
    EndReason.MAX_SESSION_LENGTH: ("session_expired", "the session reached its limit of {max:.0f} s"),
    EndReason.SERVER_SHUTDOWN: ("server_shutdown", "the worker is shutting down; reconnect to another worker"),
    EndReason.CANCELLED: ("session_cancelled", "the session was cancelled by the server"),
}


@dataclass(eq=False)
class Track:
    """One engine stream of the session (a ``clear`` or a new turn detection starts another)."""

    stream: LiveStream
    vad: bool  # our VAD ends utterances
    prefix_ms: int  # server_vad's prefix padding: reported speech starts are this much earlier
    offset_ms: float  # session audio before the stream's first sample
    items: dict[int, Item] = field(default_factory=dict)  # by engine utterance index, until completed
    next_utterance: int = 0  # the utterance after the last final
    commits: int = 0  # finalizes sent whose final has not come
    cut: int | None = None  # utterances from here on were cleared: their events are dropped
    last_end_s: float = 0.0  # where the last final's audio ended (stream seconds)

    @property
    def handle(self) -> StreamHandle:
        return self.stream.handle

    @property
    def open_utterance(self) -> int:
        return self.next_utterance + self.commits

    def item(self, utterance: int) -> Item:
        if utterance not in self.items:
            self.items[utterance] = Item()
        return self.items[utterance]

    def speech(self, started: bool, utterance: int, at_s: float) -> Event | None:
        """The event of a speech start or stop the VAD found at ``at_s`` (stream seconds), if any: a start announces
        the utterance's item (``audio_start_ms``: the onset less the prefix padding, not before the last item's
        audio ended); a stop is a started item's endpoint (its final follows; not an item a commit completed)."""
        at_ms = self.offset_ms + at_s * 1000
        if started:
            item = self.item(utterance)
            if item.started:
                return None
            item.started = item.announced = True
            return speech_started(item.id, int(max(self.offset_ms + self.last_end_s * 1000, at_ms - self.prefix_ms)))
        stopped = self.items.get(utterance)
        if stopped is None or not stopped.started or stopped.stopped:
            return None
        stopped.stopped = True
        return speech_stopped(stopped.id, int(at_ms))


__all__ = [
    "CONVERSATION_EVENTS", "DEFAULT_PCM_RATE_HZ", "END_NOTICES", "G711_RATE_HZ", "HOLD_WORDS", "Dialect", "Event",
    "Item", "RealtimeRequestError", "SessionConfig", "StablePrefix", "Track", "TurnDetection", "append_bytes",
    "committed", "completed", "delta", "denial_body", "error_event", "failed", "item_added", "parse_client_event",
    "parse_session_update", "speech_started", "speech_stopped", "subprotocol_token",
]
