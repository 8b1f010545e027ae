"""Live audio in: one stream's encoded frames (PCM16, G.711 µ-law or A-law, any rate 8-48 kHz) to float32 mono
16 kHz, resampled as one stream so frame edges leave no artefacts. Every streaming face uses this one decoder."""

from __future__ import annotations

from typing import Literal

import numpy as np
import soxr

from parakeet_worker.audio.pcm import pcm16_to_float32
from parakeet_worker.errors import InputError
from parakeet_worker.transcript import SAMPLE_RATE_HZ

LiveEncoding = Literal["pcm16", "mulaw", "alaw"]
LIVE_ENCODINGS: tuple[LiveEncoding, ...] = ("pcm16", "mulaw", "alaw")
MIN_LIVE_RATE_HZ = 8000
MAX_LIVE_RATE_HZ = 48000


def _mulaw_table() -> np.ndarray:
    # ITU-T G.711 µ-law expansion (bias 0x84), as 16-bit values scaled to [-1, 1)
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return (np.where(sign, -magnitude, magnitude) / 32768.0).astype(np.float32)


def _alaw_table() -> np.ndarray:
    # ITU-T G.711 A-law expansion (even bits inverted), as 16-bit values scaled to [-1, 1)
    a = np.arange(256, dtype=np.int32) ^ 0x55
    sign = a & 0x80
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return (np.where(sign, magnitude, -magnitude) / 32768.0).astype(np.float32)


_MULAW = _mulaw_table()
_ALAW = _alaw_table()


def g711_to_float32(data: bytes, encoding: Literal["mulaw", "alaw"]) -> np.ndarray:
    """Expand G.711 bytes (one sample per byte) to float32 samples in [-1, 1)."""
    table = _MULAW if encoding == "mulaw" else _ALAW
    return table[np.frombuffer(data, dtype=np.uint8)]


class LiveAudioDecoder:
    """Decodes one live stream's frames to float32 mono 16 kHz; :meth:`flush` returns the resampler's tail."""

    def __init__(self, encoding: LiveEncoding, sample_rate: int) -> None:
        if encoding not in LIVE_ENCODINGS:
            raise InputError(f"unsupported live audio encoding {encoding!r}: use one of {', '.join(LIVE_ENCODINGS)}")
        if not MIN_LIVE_RATE_HZ <= sample_rate <= MAX_LIVE_RATE_HZ:
            raise InputError(f"sample rate {sample_rate} Hz is out of range: live audio must be "
                             f"{MIN_LIVE_RATE_HZ}-{MAX_LIVE_RATE_HZ} Hz")
        self.encoding: LiveEncoding = encoding
        self.sample_rate = sample_rate
        self.bytes_per_sample = 2 if encoding == "pcm16" else 1
        self.samples_in = 0  # at the client's rate
        self._resampler = (None if sample_rate == SAMPLE_RATE_HZ else
                           soxr.ResampleStream(sample_rate, SAMPLE_RATE_HZ, 1, dtype="float32", quality="HQ"))
        self._carry = b""  # decode_stream: a PCM16 sample's first byte, completed by the next piece

    def decode_stream(self, data: bytes) -> np.ndarray:
        """:meth:`decode` of a byte stream cut anywhere (Deepgram's frames, Riva's requests): a PCM16 sample split
        between two pieces is carried over and decoded with the next one."""
        if self.encoding == "pcm16":
            if self._carry:
                data, self._carry = self._carry + data, b""
            if len(data) % 2:
                data, self._carry = data[:-1], data[-1:]
        return self.decode(data)

    @property
    def seconds_in(self) -> float:
        return self.samples_in / self.sample_rate

    def decode(self, data: bytes) -> np.ndarray:
        """One frame's samples at 16 kHz (may be empty while the resampler fills). PCM16 frames must have an even
        number of bytes (an AudioDecodeError says so)."""
        if self.encoding == "pcm16":
            samples = pcm16_to_float32(data)
        else:
            samples = g711_to_float32(data, self.encoding)
        self.samples_in += samples.size
        if self._resampler is None:
            return samples
        return np.asarray(self._resampler.resample_chunk(samples), dtype=np.float32)

    def flush(self) -> np.ndarray:
        """The resampler's remaining samples (call once, at the end of the stream or before a finalize)."""
        if self._resampler is None:
            return np.zeros(0, dtype=np.float32)
        tail = np.asarray(self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True), dtype=np.float32)
        self._resampler.clear()
        return tail


__all__ = ["LIVE_ENCODINGS", "LiveAudioDecoder", "LiveEncoding", "g711_to_float32"]
