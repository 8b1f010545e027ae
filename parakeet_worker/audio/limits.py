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


def too_long_error(limits: AudioLimits) -> AudioTooLongError:
    """The error for audio past ``limits.max_duration_s``, raised wherever the decoded length first passes it."""
    return AudioTooLongError(
        f"the audio is longer than the {limits.max_duration_s:g} s limit (max_duration_s); "
        "split it or raise the limit"
    )
