"""Sample arithmetic: PCM16 bytes to float32, resampling, and the bounded mono 16 kHz sink decoders feed."""

from __future__ import annotations

import numpy as np
import soxr

from parakeet_worker.audio.limits import AudioLimits, too_long_error
from parakeet_worker.errors import AudioDecodeError
from parakeet_worker.transcript import SAMPLE_RATE_HZ


def pcm16_to_float32(buf: bytes) -> np.ndarray:
    """Convert 16-bit little-endian PCM bytes to float32 samples in [-1, 1)."""
    if len(buf) % 2:
        raise AudioDecodeError(f"16-bit PCM needs an even number of bytes, got {len(buf)}")
    return np.frombuffer(buf, dtype="<i2").astype(np.float32) / np.float32(32768.0)


def resample(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample a 1-D signal with soxr (high quality). Returns float32; a copy-free cast when the rates match.

    For a stream cut into chunks use one ``soxr.ResampleStream`` instead, so chunk edges leave no artifacts.
    """
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"resample expects a 1-D array, got shape {x.shape}")
    if from_rate == to_rate or x.size == 0:
        return x
    return np.asarray(soxr.resample(x, from_rate, to_rate, quality="HQ"), dtype=np.float32)


class MonoSink:
    """Collects decoded blocks: averages channels, resamples to 16 kHz as a stream, enforces the duration cap.

    Resampling block by block keeps memory bounded and lets decoding stop as soon as the limit is passed.
    """

    def __init__(self, in_rate: int, limits: AudioLimits) -> None:
        if in_rate <= 0:
            raise AudioDecodeError(f"the audio declares an invalid sample rate ({in_rate} Hz)")
        self._limits = limits
        self._max_samples = int(limits.max_duration_s * SAMPLE_RATE_HZ)
        self._stream = (
            None if in_rate == SAMPLE_RATE_HZ else soxr.ResampleStream(in_rate, SAMPLE_RATE_HZ, 1, "float32")
        )
        self._parts: list[np.ndarray] = []
        self._count = 0

    def add(self, block: np.ndarray) -> None:
        """Add a (frames, channels) float32 block."""
        mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
        self._push(np.ascontiguousarray(mono, dtype=np.float32), last=False)

    def finish(self) -> np.ndarray:
        if self._stream is not None:
            self._push(np.zeros(0, dtype=np.float32), last=True)
        if not self._parts:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self._parts)

    def _push(self, mono: np.ndarray, *, last: bool) -> None:
        out = mono if self._stream is None else self._stream.resample_chunk(mono, last=last)
        if out.size:
            self._parts.append(out)
            self._count += out.size
        if self._count > self._max_samples:
            raise too_long_error(self._limits)
