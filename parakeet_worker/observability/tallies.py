"""The worker's running totals since start, kept in memory for ``GET /metrics``: sessions, requests, audio,
queue wait and inference time, errors — each by the face (protocol) that served it.

:class:`Tallies` is fed by :class:`~parakeet_worker.observability.metrics.Metrics` (every finished request's
record, the app's requests and the session registry's opens and closes) and read as one consistent
:class:`TalliesSnapshot`. Thread-safe: records arrive from the engine's, the job loop's and the server's threads.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import Counter
from dataclasses import dataclass, field

# Histogram bucket upper bounds, seconds (the last, +Inf, is implied).
QUEUE_WAIT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
INFERENCE_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass(frozen=True)
class HistogramSnapshot:
    bounds: tuple[float, ...]  # upper bounds, ascending, without +Inf
    counts: tuple[int, ...]  # per bucket (not cumulative), len(bounds) + 1: the last is above every bound
    total: float  # sum of the observed values

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.bounds, tuple(self.counts), self.total)


@dataclass(frozen=True)
class TalliesSnapshot:
    sessions_active: dict[str, int]  # face -> live sessions
    sessions_opened: dict[str, int]  # face -> sessions admitted since start
    requests: dict[tuple[str, str, str], int]  # (face, route, HTTP status) -> requests answered
    finished: dict[tuple[str, str, str], int]  # (face, kind, "ok" | "error") -> finished records
    audio_seconds: dict[str, float]  # face -> audio seconds heard (batch files and sessions)
    errors: dict[tuple[str, str], int]  # (face, error code) -> finished requests that failed with it
    queue_wait: dict[str, HistogramSnapshot]  # face -> seconds waited for the engine
    inference: dict[str, HistogramSnapshot]  # face -> model seconds per request


class Tallies:
    """Running totals by face; every method is thread-safe and O(1)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: Counter[str] = Counter()
        self._opened: Counter[str] = Counter()
        self._requests: Counter[tuple[str, str, str]] = Counter()
        self._finished: Counter[tuple[str, str, str]] = Counter()
        self._audio: dict[str, float] = {}
        self._errors: Counter[tuple[str, str]] = Counter()
        self._queue_wait: dict[str, _Histogram] = {}
        self._inference: dict[str, _Histogram] = {}

    def session_opened(self, face: str) -> None:
        with self._lock:
            self._opened[face] += 1
            self._active[face] += 1

    def session_closed(self, face: str) -> None:
        with self._lock:
            self._active[face] = max(0, self._active[face] - 1)

    def request(self, face: str, route: str, status: int) -> None:
        with self._lock:
            self._requests[(face, route, str(status))] += 1

    def finished(self, face: str, kind: str, *, audio_s: float, queue_wait_s: float | None,
                 inference_s: float | None, error_code: str | None) -> None:
        with self._lock:
            self._finished[(face, kind, "ok" if error_code is None else "error")] += 1
            if math.isfinite(audio_s) and audio_s > 0:
                self._audio[face] = self._audio.get(face, 0.0) + audio_s
            if error_code is not None:
                self._errors[(face, error_code)] += 1
            if queue_wait_s is not None:
                self._queue_wait.setdefault(face, _Histogram(QUEUE_WAIT_BUCKETS_S)).observe(queue_wait_s)
            if inference_s is not None:
                self._inference.setdefault(face, _Histogram(INFERENCE_BUCKETS_S)).observe(inference_s)

    def active_sessions(self) -> int:
        with self._lock:
            return sum(self._active.values())

    def snapshot(self) -> TalliesSnapshot:
        with self._lock:
            return TalliesSnapshot(
                sessions_active=dict(self._active), sessions_opened=dict(self._opened),
                requests=dict(self._requests), finished=dict(self._finished), audio_seconds=dict(self._audio),
                errors=dict(self._errors), queue_wait={k: h.snapshot() for k, h in self._queue_wait.items()},
                inference={k: h.snapshot() for k, h in self._inference.items()})
