"""Client -> server messages: what a client sends, and how the server reads it (:func:`parse`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from parakeet_worker.serving.protocol.codes import (
    ACTION_ALIASES,
    CONFIG_KEYS,
    DEFAULT_SAMPLE_RATE_HZ,
    ENCODING,
    ENCODING_ALIASES,
    MAX_CHUNK_DURATION_S,
    MAX_ENDPOINT_SILENCE_MS,
    MAX_FRAME_AUDIO_S,
    MAX_LANGUAGE_CHARS,
    MAX_SAMPLE_RATE_HZ,
    MIN_ENDPOINT_SILENCE_MS,
    MIN_SAMPLE_RATE_HZ,
    PCM16_BYTES_PER_SAMPLE,
    START_KEYS,
    Action,
    ErrorCode,
    ProtocolError,
)
from parakeet_worker.serving.protocol.fields import is_number


@dataclass(frozen=True)
class Start:
    """``{"action": "start", ...}``. ``endpoint_silence_ms`` None: the server's default (the engine's endpoint
    configuration owns it); ``chunk_duration`` is accepted for seed clients and only echoed."""

    sample_rate: int = DEFAULT_SAMPLE_RATE_HZ
    timestamps: bool = False
    interim_results: bool = True
    endpointing: bool = True
    endpoint_silence_ms: int | float | None = None
    encoding: str = ENCODING
    language: str = "auto"
    final_pass: bool = True
    chunk_duration: float | None = None

    action: ClassVar[Action] = Action.START

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": "start", "sample_rate": self.sample_rate, "encoding": self.encoding,
                               "timestamps": self.timestamps, "interim_results": self.interim_results,
                               "endpointing": self.endpointing, "final_pass": self.final_pass,
                               "language": self.language}
        if self.endpoint_silence_ms is not None:
            out["endpoint_silence_ms"] = self.endpoint_silence_ms
        if self.chunk_duration is not None:
            out["chunk_duration"] = self.chunk_duration
        return out

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> Start:
        """Checks in the order (and with the messages) clients have always seen."""
        unknown = sorted(set(obj) - START_KEYS - {"type"})
        if unknown:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"unknown start option(s) {', '.join(unknown)}; accepted: "
                                                       f"{', '.join(sorted(START_KEYS - {'action'}))}")
        rate = obj.get("sample_rate", DEFAULT_SAMPLE_RATE_HZ)
        if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ:
            raise ProtocolError(ErrorCode.BAD_SAMPLE_RATE, f"sample_rate must be an integer from {MIN_SAMPLE_RATE_HZ} "
                                                           f"to {MAX_SAMPLE_RATE_HZ} Hz, got {rate!r}")
        encoding = obj.get("encoding", ENCODING)
        if encoding not in ENCODING_ALIASES:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"encoding {encoding!r} is not supported: send PCM16 "
                                                       f"little-endian mono ({ENCODING})")
        flags = {}
        for key, default in (("timestamps", False), ("interim_results", True), ("endpointing", True),
                             ("final_pass", True)):
            value = obj.get(key, default)
            if not isinstance(value, bool):
                raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{key} must be true or false, got {value!r}")
            flags[key] = value
        silence = obj.get("endpoint_silence_ms")
        if "endpoint_silence_ms" in obj and (silence is None or not is_number(silence)
                                    or not MIN_ENDPOINT_SILENCE_MS <= silence <= MAX_ENDPOINT_SILENCE_MS):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"endpoint_silence_ms must be a number from "
                                                       f"{MIN_ENDPOINT_SILENCE_MS} to {MAX_ENDPOINT_SILENCE_MS}, got "
                                                       f"{silence!r}")
        chunk = obj.get("chunk_duration")
        if chunk is not None and (not is_number(chunk) or not 0 < chunk <= MAX_CHUNK_DURATION_S):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"chunk_duration must be a number of seconds in "
                                                       f"(0, {MAX_CHUNK_DURATION_S:.0f}], got {chunk!r}")
        language = obj.get("language", "auto")
        if not isinstance(language, str) or len(language) > MAX_LANGUAGE_CHARS:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "language must be a short string such as \"en\" or \"auto\"")
        return cls(sample_rate=rate, encoding=encoding, endpoint_silence_ms=silence, chunk_duration=chunk,
                   language=language, **flags)


@dataclass(frozen=True)
class Config:
    """``{"action": "config", ...}``: change ``timestamps`` / ``interim_results`` of a started session."""

    timestamps: bool | None = None
    interim_results: bool | None = None

    action: ClassVar[Action] = Action.CONFIG

    def to_json(self) -> dict[str, Any]:
        return {"action": "config", **{k: v for k, v in asdict(self).items() if v is not None}}

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> Config:
        unknown = sorted(set(obj) - CONFIG_KEYS - {"type"})
        if unknown:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"config cannot change {', '.join(unknown)}; it can change: "
                                                       "timestamps, interim_results")
        for key in ("timestamps", "interim_results"):
            if key in obj and not isinstance(obj[key], bool):
                raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{key} must be true or false")
        return cls(timestamps=obj.get("timestamps"), interim_results=obj.get("interim_results"))


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()  # a ping field not given (null is a value the client may want echoed)


@dataclass(frozen=True)
class Ping:
    """``{"action": "ping"}`` (or ``keepalive``); ``id`` and ``timestamp``, when given, are echoed in ``pong``."""

    id: Any = ABSENT
    timestamp: Any = ABSENT

    action: ClassVar[Action] = Action.PING

    def echo(self) -> dict[str, Any]:
        return {k: v for k in ("id", "timestamp") if (v := getattr(self, k)) is not ABSENT}

    def to_json(self) -> dict[str, Any]:
        return {"action": "ping", **self.echo()}

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> Ping:
        return cls(id=obj.get("id", ABSENT), timestamp=obj.get("timestamp", ABSENT))


@dataclass(frozen=True)
class Stop:
    """``{"action": "stop"}``: flush, answer the remaining finals and ``stopped``, close with 1000."""

    action: ClassVar[Action] = Action.STOP

    def to_json(self) -> dict[str, Any]:
        return {"action": "stop"}


@dataclass(frozen=True)
class Finalize:
    """``{"action": "finalize"}``: end the current utterance now."""

    action: ClassVar[Action] = Action.FINALIZE

    def to_json(self) -> dict[str, Any]:
        return {"action": "finalize"}


@dataclass(frozen=True)
class InfoRequest:
    """``{"action": "info"}``: the model and server parameters."""

    action: ClassVar[Action] = Action.INFO

    def to_json(self) -> dict[str, Any]:
        return {"action": "info"}


ClientMessage = Start | Config | Ping | Stop | Finalize | InfoRequest


def loads(raw: str | bytes) -> dict[str, Any]:
    """A text frame as a JSON object (``bad_json``, ``bad_message`` otherwise)."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"text frames must be JSON objects: {exc.msg} at position "
                                                f"{exc.pos}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "a text frame must be a JSON object such as "
                                                   "{\"action\": \"start\"}")
    return obj


def action_of(obj: Mapping[str, Any]) -> Action:
    """The action a client message asks for, before its fields are read (the server checks state first)."""
    action = obj.get("action", obj.get("type"))
    if not isinstance(action, str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "missing \"action\" (start, stop, finalize, ping, info, config)")
    name = action.lower()
    if name in ACTION_ALIASES:
        return ACTION_ALIASES[name]
    try:
        return Action(name)
    except ValueError:
        raise ProtocolError(ErrorCode.UNKNOWN_ACTION, f"unknown action {action!r}: use start, stop, finalize, ping, "
                                                      "info or config") from None


_CLIENT_PARSERS: Mapping[Action, Callable[[Mapping[str, Any]], ClientMessage]] = {
    Action.START: Start.parse, Action.CONFIG: Config.parse, Action.PING: Ping.parse,
    Action.STOP: lambda obj: Stop(), Action.FINALIZE: lambda obj: Finalize(), Action.INFO: lambda obj: InfoRequest(),
}


def parse(obj: Any) -> ClientMessage:
    """One client message from its JSON object; :class:`ProtocolError` with the documented code if it is bad."""
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "a text frame must be a JSON object such as "
                                                   "{\"action\": \"start\"}")
    return _CLIENT_PARSERS[action_of(obj)](obj)


def check_audio_frame(data: bytes, sample_rate: int, max_frame_audio_s: float = MAX_FRAME_AUDIO_S) -> None:
    """A binary frame's bounds: whole PCM16 samples, at most ``max_frame_audio_s`` of audio."""
    if len(data) % PCM16_BYTES_PER_SAMPLE:
        raise ProtocolError(ErrorCode.BAD_AUDIO, f"a PCM16 frame must hold an even number of bytes, got {len(data)};"
                                                 " the frame was dropped")
    seconds = len(data) / PCM16_BYTES_PER_SAMPLE / sample_rate
    if seconds > max_frame_audio_s:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"one frame carried {seconds:.1f} s of audio; send at most "
                                                       f"{max_frame_audio_s:.0f} s per frame")
