"""Validation of RunPod job inputs into frozen, typed requests.

Unknown keys, wrong types, out-of-range values and ambiguous audio sources are refused with an
:class:`errors.InputError` whose message names the key and what it accepts.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from parakeet_worker.audio import redact_url
from parakeet_worker.errors import InputError
from parakeet_worker.serving.ws_grants import ServerLimits

OutputFormat = Literal["json", "text", "srt", "vtt"]
OUTPUT_FORMATS: tuple[str, ...] = ("json", "text", "srt", "vtt")
ACTIONS = ("transcribe", "info", "websocket")
MAX_INPUTS = 64
MIN_CHUNK_S = 5.0
MAX_CHUNK_S = 3600.0
MAX_JOB_IDLE_S = 600.0  # a websocket job may ask for an idle timeout up to this, or up to the server's if longer

_AUDIO_KEYS = ("audio_base64", "audio_url", "audio")
_TRANSCRIBE_KEYS = {
    "action", *_AUDIO_KEYS, "inputs", "format", "timestamps", "timestamp", "output_format", "use_local_attention",
    "chunk_long_audio", "chunk_duration", "chunk_overlap",
}
_INPUT_ITEM_KEYS = {*_AUDIO_KEYS, "format"}


@dataclass(frozen=True)
class AudioSource:
    kind: Literal["base64", "url"]
    value: str
    format_hint: str | None = None

    def describe(self) -> str:
        return "base64 audio" if self.kind == "base64" else redact_url(self.value)


@dataclass(frozen=True)
class TranscribeRequest:
    sources: tuple[AudioSource, ...]
    multiple: bool  # given as `inputs: [...]`: the output is a list of results
    timestamps: bool = False
    output_format: OutputFormat = "json"
    use_local_attention: bool | None = None  # None: automatic (local above the full-attention limit)
    chunk_long_audio: bool = False
    chunk_duration_s: float | None = None
    chunk_overlap_s: float | None = None


@dataclass(frozen=True)
class InfoRequest:
    pass


@dataclass(frozen=True)
class WebsocketRequest:
    """``action: websocket``: open a real-time session for this job. ``None`` means the server's setting."""

    idle_timeout_s: float | None = None
    max_session_s: float | None = None


_WEBSOCKET_KEYS = {"action", "idle_timeout", "max_session_length", "max_duration"}


def _bool(raw: Mapping[str, Any], key: str) -> bool | None:
    if key not in raw or raw[key] is None:
        return None
    value = raw[key]
    if not isinstance(value, bool):
        raise InputError(f"'{key}' must be true or false, got {type(value).__name__} {value!r}")
    return value


def _seconds(raw: Mapping[str, Any], key: str, low: float, high: float) -> float | None:
    if key not in raw or raw[key] is None:
        return None
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"'{key}' must be a number of seconds, got {_shown(value)}")
    try:
        seconds = float(value)  # an int of hundreds of digits (JSON allows it) does not fit a float
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise InputError(f"'{key}' must be a finite number of seconds between {low:g} and {high:g}, "
                         f"got {_shown(value)}")
    if not low <= seconds <= high:
        raise InputError(f"'{key}' must be between {low:g} and {high:g} seconds, got {seconds:g}")
    return seconds


def _shown(value: object, max_chars: int = 40) -> str:
    """A value for an error message, cut short (a 400-digit number or a long string is not echoed whole)."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        text = f"an integer of over {sys.get_int_max_str_digits()} digits"
    return text if len(text) <= max_chars else f"{text[:max_chars]}... ({len(text)} characters)"


def _audio_source(item: Mapping[str, Any], where: str, format_hint: str | None) -> AudioSource:
    present = [k for k in _AUDIO_KEYS if item.get(k) not in (None, "")]
    if not present:
        raise InputError(f"{where}: no audio given: set one of 'audio_base64', 'audio_url' (alias 'audio') or 'inputs'")
    if len(present) > 1:
        raise InputError(f"{where}: give exactly one audio source, got {', '.join(present)}")
    key = present[0]
    value = item[key]
    if not isinstance(value, str):
        raise InputError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
    hint = item.get("format", format_hint)
    if hint is not None and (not isinstance(hint, str) or not hint.strip() or len(hint) > 32):
        raise InputError(f"{where}: 'format' must be a short string such as 'wav', 'mp3' or 'pcm_s16le', got {hint!r}")
    if key == "audio_base64":
        return AudioSource("base64", value, hint)
    return AudioSource("url", value.strip(), hint)


def parse_job_input(raw: object, *,
                    limits: ServerLimits | None = None) -> TranscribeRequest | InfoRequest | WebsocketRequest:
    """A typed request; a websocket job's timeouts are checked against the server's ``limits``."""
    limits = limits or ServerLimits()
    if not isinstance(raw, Mapping):
        raise InputError(f"the job 'input' must be a JSON object, got {type(raw).__name__}")
    action = raw.get("action", "transcribe")
    if action not in ACTIONS:
        raise InputError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
    if action == "websocket":
        unknown = sorted(set(raw) - _WEBSOCKET_KEYS)
        if unknown:
            raise InputError(f"unknown key(s) {', '.join(map(repr, unknown))} for action 'websocket'; accepted: "
                             "idle_timeout, max_session_length (alias max_duration)")
        if "max_session_length" in raw and "max_duration" in raw:
            raise InputError("give 'max_session_length' or its alias 'max_duration', not both")
        length_key = "max_duration" if "max_duration" in raw else "max_session_length"
        max_idle_s = max(MAX_JOB_IDLE_S, limits.idle_timeout_s)
        return WebsocketRequest(idle_timeout_s=_seconds(raw, "idle_timeout", 1.0, max_idle_s),
                                max_session_s=_seconds(raw, length_key, 1.0, limits.max_session_s))
    if action == "info":
        extra = sorted(set(raw) - {"action"})
        if extra:
            raise InputError(f"action 'info' takes no other keys, got {', '.join(extra)}")
        return InfoRequest()

    unknown = sorted(set(raw) - _TRANSCRIBE_KEYS)
    if unknown:
        raise InputError(f"unknown input key(s) {', '.join(map(repr, unknown))}; "
                         f"accepted: {', '.join(sorted(_TRANSCRIBE_KEYS))}")
    if "timestamps" in raw and "timestamp" in raw:
        raise InputError("give 'timestamps' or its alias 'timestamp', not both")
    timestamps = _bool(raw, "timestamps" if "timestamps" in raw else "timestamp") or False
    output_format = raw.get("output_format", "json")
    if output_format not in OUTPUT_FORMATS:
        raise InputError(f"'output_format' must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    format_hint = raw.get("format")

    if "inputs" in raw and raw["inputs"] is not None:
        if any(raw.get(k) not in (None, "") for k in _AUDIO_KEYS):
            raise InputError("give either 'inputs' or a single audio key ('audio_base64', 'audio_url', 'audio'), "
                             "not both")
        items = raw["inputs"]
        if not isinstance(items, list) or not items:
            raise InputError("'inputs' must be a non-empty list of objects with 'audio_base64' or 'audio_url'")
        if len(items) > MAX_INPUTS:
            raise InputError(f"'inputs' holds {len(items)} files; at most {MAX_INPUTS} per job")
        sources = []
        for i, item in enumerate(items):
            where = f"inputs[{i}]"
            if isinstance(item, str):
                item = {"audio_url": item}
            if not isinstance(item, Mapping):
                raise InputError(f"{where} must be an object or a URL string, got {type(item).__name__}")
            extra = sorted(set(item) - _INPUT_ITEM_KEYS)
            if extra:
                raise InputError(f"{where}: unknown key(s) {', '.join(map(repr, extra))}; "
                                 "accepted: audio_base64, audio_url, audio, format")
            sources.append(_audio_source(item, where, format_hint))
        multiple = True
    else:
        sources = [_audio_source(raw, "input", None)]
        multiple = False

    chunk = _bool(raw, "chunk_long_audio") or False
    chunk_s = _seconds(raw, "chunk_duration", MIN_CHUNK_S, MAX_CHUNK_S)
    overlap_s = _seconds(raw, "chunk_overlap", 0.0, MAX_CHUNK_S / 2)
    if not chunk and (chunk_s is not None or overlap_s is not None):
        raise InputError("'chunk_duration'/'chunk_overlap' need 'chunk_long_audio': true")
    if chunk_s is not None and overlap_s is not None and overlap_s >= chunk_s / 2:
        raise InputError(f"'chunk_overlap' ({overlap_s:g} s) must be less than half of "
                         f"'chunk_duration' ({chunk_s:g} s)")
    local = _bool(raw, "use_local_attention")
    if chunk and local:
        raise InputError("'chunk_long_audio' and 'use_local_attention' are two different long-audio modes: choose one")
    return TranscribeRequest(
        sources=tuple(sources), multiple=multiple, timestamps=timestamps, output_format=output_format,
        use_local_attention=local, chunk_long_audio=chunk, chunk_duration_s=chunk_s, chunk_overlap_s=overlap_s,
    )
