"""One job input to samples: an http(s)/s3 URL is fetched, a data URI or plain base64 is decoded in memory."""

from __future__ import annotations

import base64
import binascii
import os
import re
import tempfile

from parakeet_worker.audio.decode import decode_bytes, decode_source
from parakeet_worker.audio.fetch import fetch_url
from parakeet_worker.audio.limits import DEFAULT_LIMITS, AudioLimits, DecodedAudio
from parakeet_worker.config import S3Credentials
from parakeet_worker.errors import AudioTooLargeError, InputError

_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_URLSAFE_TO_STD = str.maketrans("-_", "+/")


def load_base64(
    text: str,
    *,
    format_hint: str | None = None,
    sample_rate: int | None = None,
    limits: AudioLimits = DEFAULT_LIMITS,
) -> DecodedAudio:
    """Decode base64 audio, plain or as a data URI (``data:audio/wav;base64,...``)."""
    return decode_bytes(_base64_payload(text, limits), format_hint=format_hint, sample_rate=sample_rate, limits=limits)


def load_audio_input(
    source: str,
    *,
    format_hint: str | None = None,
    sample_rate: int | None = None,
    limits: AudioLimits = DEFAULT_LIMITS,
    s3: S3Credentials | None = None,
    work_dir: str | os.PathLike[str] | None = None,
) -> DecodedAudio:
    """Decode one job input: an http(s) or s3 URL, a data URI, or plain base64.

    Downloads and decoder temp files live in a temp folder under ``work_dir`` (default: the system temp dir)
    that is removed before this returns or raises.
    """
    if not isinstance(source, str) or not source.strip():
        raise InputError("the audio input is empty; pass an http(s) or s3 URL, or base64-encoded audio")
    text = source.strip()
    with tempfile.TemporaryDirectory(prefix="audio-", dir=work_dir) as tmp:
        if _SCHEME_RE.match(text) and not text[:5].lower() == "data:":
            path = fetch_url(text, tmp, limits=limits, s3=s3)
            return decode_source(path, format_hint=format_hint, sample_rate=sample_rate, limits=limits, tmp_dir=tmp)
        payload = _base64_payload(text, limits)
        return decode_source(payload, format_hint=format_hint, sample_rate=sample_rate, limits=limits, tmp_dir=tmp)


def _base64_payload(text: str, limits: AudioLimits) -> bytes:
    """The decoded bytes of plain, URL-safe or data-URI base64, refused early when it cannot fit the byte limit."""
    if text[:5].lower() == "data:":
        text = _data_uri_payload(text)
    max_chars = 4 * -(-limits.max_bytes // 3)
    if len(text) > max_chars * 1.05 + 1024:  # room for line breaks; checked exactly below
        raise AudioTooLargeError(f"the base64 audio is over the {limits.max_bytes} byte limit (max_bytes)")
    compact = "".join(text.split())
    if len(compact) > max_chars:
        raise AudioTooLargeError(f"the base64 audio is over the {limits.max_bytes} byte limit (max_bytes)")
    if "-" in compact or "_" in compact:
        compact = compact.translate(_URLSAFE_TO_STD)
    missing = -len(compact) % 4
    if missing == 3:
        raise InputError(
            f"the audio is not valid base64 (nor an http(s)/s3 URL): {len(compact)} characters cannot be base64"
        )
    try:
        data = base64.b64decode(compact + "=" * missing, validate=True)
    except (binascii.Error, ValueError) as exc:
        bad = next((ch for ch in compact if not (ch.isascii() and (ch.isalnum() or ch in "+/="))), None)
        reason = f"it contains the character {bad!r}" if bad is not None else str(exc)
        raise InputError(f"the audio is not valid base64 (nor an http(s)/s3 URL): {reason}") from exc
    if len(data) > limits.max_bytes:
        raise AudioTooLargeError(f"the audio is {len(data)} bytes, over the {limits.max_bytes} byte limit (max_bytes)")
    return data


def _data_uri_payload(uri: str) -> str:
    header, comma, payload = uri.partition(",")
    if not comma:
        raise InputError("the data URI has no ',' before its payload (expected data:audio/wav;base64,...)")
    params = [p.strip().lower() for p in header[5:].split(";")[1:]]
    if "base64" not in params:
        raise InputError("the data URI is not base64-encoded; use data:<type>;base64,<payload>")
    return payload
