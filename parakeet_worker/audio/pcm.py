"""Sample arithmetic: PCM16 bytes to float32, resampling, and the bounded mono 16 kHz sink decoders feed."""

from __future__ import annotations

import numpy as np
import soxr

from parakeet_worker.audio.limits import (
    MAX_ABS_SAMPLE,
    MAX_CHANNELS,
    MAX_SAMPLE_RATE_HZ,
    MIN_SAMPLE_RATE_HZ,
    NORMALISE_ABOVE_PEAK,
    AudioLimits,
    too_long_error,
)
from parakeet_worker.errors import AudioDecodeError, UnsupportedFormatError
from parakeet_worker.transcript import SAMPLE_RATE_HZ

DECODE_BLOCK_S = 4
"""Seconds of audio a decoder reads per block."""
MAX_BLOCK_BYTES = 4 << 20
"""Most float32 bytes per block, whatever the rate and channel count a header declares."""


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

    Resampling block by block keeps memory bounded and lets decoding stop as soon as the limit is passed. Headers
    are not trusted: the rate and channel count are checked here, before any block is read, and every block's
    values are checked as it arrives (NaN, infinity or magnitudes no audio has stop decoding at once). On any
    refusal the blocks collected so far are dropped before the error is raised, so an error a caller keeps
    (with its traceback) does not keep up to ``max_duration_s`` of decoded audio alive.
    """

    def __init__(self, in_rate: int, channels: int, limits: AudioLimits) -> None:
        if not MIN_SAMPLE_RATE_HZ <= in_rate <= MAX_SAMPLE_RATE_HZ:
            raise AudioDecodeError(
                f"the audio declares a sample rate of {in_rate} Hz; audio must be {MIN_SAMPLE_RATE_HZ} to "
                f"{MAX_SAMPLE_RATE_HZ} Hz (the header is corrupt); re-encode it, e.g. at 16000 Hz"
            )
        if not 1 <= channels <= MAX_CHANNELS:
            raise UnsupportedFormatError(
                f"the audio declares {channels} channels; at most {MAX_CHANNELS} are accepted "
                "(downmix it to mono or stereo)"
            )
        self._limits = limits
        self._max_samples = int(limits.max_duration_s * SAMPLE_RATE_HZ)
        self._stream = None if in_rate == SAMPLE_RATE_HZ else soxr.ResampleStream(in_rate, SAMPLE_RATE_HZ, 1, "float32")
        self._parts: list[np.ndarray] = []
        self._count = 0
        self._peak = 0.0
        # Frames a decoder reads per block: a few seconds, never more than MAX_BLOCK_BYTES of float32.
        self.block_frames = max(1, min(in_rate * DECODE_BLOCK_S, MAX_BLOCK_BYTES // (4 * channels)))

    def add(self, block: np.ndarray) -> None:
        """Add a (frames, channels) float32 block."""
        if block.size:
            peak = float(np.max(np.abs(block)))
            if not peak <= MAX_ABS_SAMPLE:  # also true for NaN
                self._parts.clear()
                if not np.isfinite(peak):
                    raise AudioDecodeError("the audio contains NaN or infinite sample values (the file is corrupt)")
                raise AudioDecodeError(
                    f"the audio contains sample values up to {peak:.3g}, far outside the [-1, 1] range of audio "
                    "(the file is corrupt or not audio)"
                )
        mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
        self._push(np.ascontiguousarray(mono, dtype=np.float32), last=False)

    def finish(self) -> np.ndarray:
        """All samples as one array; float audio stored at integer scale is scaled back to peak 1.0."""
        if self._stream is not None:
            self._push(np.zeros(0, dtype=np.float32), last=True)
        if not self._parts:
            return np.zeros(0, dtype=np.float32)
        out = np.empty(self._count, dtype=np.float32)
        # Copy from the last block back, dropping each once copied: `out`'s pages are touched only as blocks are
        # freed, so the peak stays near one copy of the audio instead of two.
        end = self._count
        while self._parts:
            part = self._parts.pop()
            out[end - part.size : end] = part
            end -= part.size
        if self._peak > NORMALISE_ABOVE_PEAK:
            out *= np.float32(1.0 / self._peak)
        return out

    def _push(self, mono: np.ndarray, *, last: bool) -> None:
        out = mono if self._stream is None else self._stream.resample_chunk(mono, last=last)
        if out.size:
            self._parts.append(out)
            self._count += out.size
            self._peak = max(self._peak, float(np.max(np.abs(out))))
        if self._count > self._max_samples:
            self._parts.clear()  # before raising: the error must not keep the audio alive
            raise too_long_error(self._limits)
