"""Audio sources for a stream: a decoded file (sent paced or as fast as the server keeps up) or the microphone."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from parakeet_client.errors import UsageError
from parakeet_worker.audio import decode_file, resample
from parakeet_worker.errors import ParakeetError
from parakeet_worker.transcript import SAMPLE_RATE_HZ

logger = logging.getLogger("client")


def pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] as 16-bit little-endian PCM bytes."""
    data: bytes = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    return data


class AudioSource(Protocol):
    @property
    def sample_rate(self) -> int: ...

    @property
    def live(self) -> bool:
        """Frames arrive at real-time pace by themselves (a microphone): no pacing needed."""
        ...

    def describe(self) -> str: ...
    def frames(self, frame_samples: int) -> AsyncGenerator[np.ndarray, None]: ...


@dataclass(frozen=True)
class FileAudio:
    """A decoded file (float32 mono), at the rate it will be sent."""

    path: Path
    samples: np.ndarray
    sample_rate: int
    live: bool = False

    @classmethod
    def load(cls, path: str, sample_rate: int = SAMPLE_RATE_HZ) -> FileAudio:
        file = Path(path)
        if not file.exists():
            raise UsageError(f"no such file: {path}")
        if not file.is_file():
            raise UsageError(f"not a file: {path}")
        try:
            decoded = decode_file(file)
        except ParakeetError as exc:
            raise UsageError(f"cannot read {path} as audio: {exc}") from exc
        samples = resample(decoded.samples, decoded.sample_rate, sample_rate)
        logger.debug("decoded %s (%s): %.2f s, sent at %d Hz", path, decoded.source_format, decoded.duration_s,
                     sample_rate)
        return cls(file, samples, sample_rate)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate

    def describe(self) -> str:
        return f"{self.path.name} ({self.duration_s:.2f} s)"

    async def frames(self, frame_samples: int) -> AsyncGenerator[np.ndarray, None]:
        for start in range(0, len(self.samples), frame_samples):
            yield self.samples[start:start + frame_samples]


class MicAudio:
    """The default input device through ``sounddevice`` (PortAudio), until Ctrl+C or ``seconds``."""

    live = True

    def __init__(self, sample_rate: int, seconds: float | None = None) -> None:
        try:
            import sounddevice
        except (ImportError, OSError) as exc:  # OSError: the package is there but the PortAudio library is not
            raise UsageError("--mic needs the sounddevice package and PortAudio: `pip install sounddevice` "
                             f"(and on Debian/Ubuntu `apt-get install libportaudio2`); {exc}") from exc
        self._sd = sounddevice
        self.sample_rate = sample_rate
        self.seconds = seconds

    def describe(self) -> str:
        return "microphone" + (f" ({self.seconds:.0f} s)" if self.seconds else " (Ctrl+C to stop)")

    async def frames(self, frame_samples: int) -> AsyncGenerator[np.ndarray, None]:
        loop = asyncio.get_running_loop()
        blocks: asyncio.Queue[np.ndarray] = asyncio.Queue()

        def captured(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            if status:
                logger.warning("microphone: %s", status)
            loop.call_soon_threadsafe(blocks.put_nowait, indata[:, 0].copy())

        sent = 0
        limit = int(self.seconds * self.sample_rate) if self.seconds else None
        with self._sd.InputStream(samplerate=self.sample_rate, channels=1, dtype="float32",
                                  blocksize=frame_samples, callback=captured):
            while limit is None or sent < limit:
                block = await blocks.get()
                sent += len(block)
                yield block
