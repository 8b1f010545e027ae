"""The worker thread's work items and how batchable requests are grouped into forward passes.

A bucketing policy takes the requests' lengths (samples) and the limits of one forward and returns groups of
indices; the engine runs each group as one batch. The stock policy sorts by length, so a batch pads little, and
cuts groups by count and padded audio. A benchmark may pass another policy to the engine (``bucketing=``).
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from parakeet_worker.transcript import Transcript


@dataclass(frozen=True)
class BucketLimits:
    """The bounds of one forward pass."""

    max_batch: int  # requests
    max_padded_samples: int  # longest request x batch size


BucketPolicy = Callable[[Sequence[int], BucketLimits], list[list[int]]]


def bucket_by_length(lengths: Sequence[int], limits: BucketLimits) -> list[list[int]]:
    """Indices sorted by length and cut into groups bounded by count and padded samples."""
    groups: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        padded = lengths[index] * (len(current) + 1)
        if current and (len(current) >= limits.max_batch or padded > limits.max_padded_samples):
            groups.append(current)
            current = []
        current.append(index)
    if current:
        groups.append(current)
    return groups


@dataclass(frozen=True)
class Done:
    """What the worker thread hands back for one item."""

    transcript: Transcript
    queue_wait_s: float
    batch_size: int


@dataclass
class BatchItem:
    """Audio to transcribe in a batch with others."""

    audio: np.ndarray
    timestamps: bool
    owner: concurrent.futures.Future  # the caller's future: once cancelled, the item is skipped
    future: concurrent.futures.Future[Done] = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def samples(self) -> int:
        return int(self.audio.shape[0])


@dataclass
class ExclusiveItem:
    """Work that must run alone on the model (it changes the attention mode for its duration)."""

    run: Callable[[], Transcript]
    owner: concurrent.futures.Future
    future: concurrent.futures.Future[Done] = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.monotonic)
