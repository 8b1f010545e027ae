"""What one audio input may cost (bytes, seconds of audio, time to fetch and decode), and what it decodes to."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parakeet_worker.errors import AudioTooLongError

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB
DEFAULT_MAX_DURATION_S = 3 * 3600 + 60  # the model card's 3 hours with local attention, plus a margin
DEFAULT_DOWNLOAD_TIMEOUT_S = 60.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_DECODE_TIMEOUT_S = 600.0

MIN_SAMPLE_RATE_HZ = 1000
"""Lowest sample rate accepted from a header or a raw-PCM hint: below it a tiny file declares hours of audio."""
MAX_SAMPLE_RATE_HZ = 384_000
"""Highest sample rate accepted (the fastest common converters); above it a header is corrupt or hostile."""
MAX_CHANNELS = 64
"""Most channels accepted (mic arrays, 22.2 and higher-order ambisonics fit); more is a corrupt or hostile header."""
MAX_ABS_SAMPLE = 1e6
"""Largest float sample magnitude accepted: far beyond full scale (1.0), and still far from overflowing the
model's power spectrum in float32; larger values are corruption, not audio."""
NORMALISE_ABOVE_PEAK = 2.0
"""Float audio peaking above this (+6 dBFS, well past codec overshoot) is scaled to peak 1.0: such files are
float samples stored at integer scale (±32768), and the rest of the worker expects full scale to be 1.0."""


@dataclass(frozen=True)
class AudioLimits:
    """Byte, duration and time limits for loading one input. Override with ``dataclasses.replace``."""

    max_bytes: int = DEFAULT_MAX_BYTES
    """Largest payload accepted: decoded base64, download body or file size."""
    max_duration_s: float = DEFAULT_MAX_DURATION_S
    """Longest decoded audio accepted; decoding stops as soon as it is passed."""
    download_timeout_s: float = DEFAULT_DOWNLOAD_TIMEOUT_S
    """Deadline for a whole download (connect, redirects and body)."""
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    """Deadline for opening one connection (never beyond ``download_timeout_s``)."""
    decode_timeout_s: float = DEFAULT_DECODE_TIMEOUT_S
    """Deadline for one ffmpeg decode."""
    allow_private_urls: bool = False
    """Allow URLs whose host is loopback, private, link-local or otherwise non-public (tests, private clusters)."""

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_duration_s", "download_timeout_s", "connect_timeout_s", "decode_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"AudioLimits.{name} must be > 0, got {getattr(self, name)!r}")


DEFAULT_LIMITS = AudioLimits()


@dataclass(frozen=True, eq=False)
class DecodedAudio:
    """Float32 mono samples at :data:`~parakeet_worker.transcript.SAMPLE_RATE_HZ` and the container they came from."""

    samples: np.ndarray
    sample_rate: int
    source_format: str
    """Detected container ("wav", "flac", "ogg", "mp3", "mp4", "webm", ...) or "pcm_s16le" for raw input."""

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


def too_long_error(limits: AudioLimits, declared_s: float | None = None) -> AudioTooLongError:
    """The error for audio past ``limits.max_duration_s``: raised where the decoded length first passes it, or
    before decoding when an exact header (``declared_s``) already says so."""
    declared = f" (its header declares {declared_s:.0f} s)" if declared_s is not None else ""
    return AudioTooLongError(
        f"the audio is longer than the {limits.max_duration_s:g} s limit (max_duration_s){declared}; "
        "split it or raise the limit"
    )
