"""How much decoded audio the worker's batch jobs may hold, and how many inputs of one job load at once.

Decoded audio is float32 mono 16 kHz: 64 000 bytes per second, 230 MB per hour. One input is bounded by
``PARAKEET_MAX_AUDIO_S`` while it decodes; a job of many inputs (and several jobs at once) is bounded here:

- every input reserves its decode limit (the longest it may decode to) from the job's budget and the worker's
  before it is fetched and decoded, shrinks the reservation to what it really decoded, and gives it back as
  soon as its transcript is done or it is refused;
- an input that does not fit waits: for the job's own budget as long as the job's earlier inputs are in work
  (they always finish), for the worker's at most ``budget_wait_s``, then it is refused with ``overloaded``;
- an input that could never fit (its decode limit is the job budget and it decodes past it) is refused with
  ``audio_budget_exceeded``.

So the decoded audio the worker holds is at most ``worker_audio_budget_s`` of samples, whatever the requests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from parakeet_worker.audio import DEFAULT_MAX_DURATION_S
from parakeet_worker.errors import EngineOverloadedError, ParakeetError
from parakeet_worker.transcript import SAMPLE_RATE_HZ

logger = logging.getLogger(__name__)

BYTES_PER_AUDIO_S = 4 * SAMPLE_RATE_HZ  # float32 mono 16 kHz
# The share of the machine's memory that decoded batch audio may hold. The rest is the model, its working
# memory for the forward passes (local attention over 3 hours: ~10 GB on CPU with the test model), the
# streams, and the decoders' own transient copies (a block being resampled, the final concatenation).
WORKER_MEMORY_SHARE = 0.25
DEFAULT_JOB_AUDIO_BUDGET_S = 4.0 * DEFAULT_MAX_DURATION_S  # four inputs of the longest accepted length at once
DEFAULT_BUDGET_WAIT_S = 120.0
DEFAULT_JOB_DECODE_CONCURRENCY = 4
DEFAULT_SHUTDOWN_GRACE_S = 25.0  # within RunPod's and Docker's usual 30 s between SIGTERM and SIGKILL
_CGROUP_LIMIT_FILES = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


class AudioBudgetExceededError(ParakeetError, ValueError):
    """One input decodes to more audio than a job may hold at once (``PARAKEET_JOB_AUDIO_BUDGET_S``)."""

    code = "audio_budget_exceeded"


def machine_memory_bytes() -> int:
    """The memory this process may use: the container's limit (cgroup v2 or v1) when set, else physical RAM."""
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for path in _CGROUP_LIMIT_FILES:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < physical:  # "max" or a huge v1 value mean no limit
            return int(text)
    return physical


def default_worker_audio_budget_s() -> float:
    """``WORKER_MEMORY_SHARE`` of the machine's memory, in seconds of decoded audio (24 GB: 26 hours)."""
    return round(machine_memory_bytes() * WORKER_MEMORY_SHARE / BYTES_PER_AUDIO_S)


@dataclass(frozen=True)
class JobLimits:
    """What batch jobs may hold and run at once. Override with ``dataclasses.replace``."""

    job_audio_budget_s: float = DEFAULT_JOB_AUDIO_BUDGET_S
    """Decoded audio one job holds at once (inputs decoding count at their decode limit)."""
    worker_audio_budget_s: float = field(default_factory=default_worker_audio_budget_s)
    """Decoded audio all jobs hold at once; default: a quarter of the machine's (or container's) memory."""
    budget_wait_s: float = DEFAULT_BUDGET_WAIT_S
    """Longest an input waits for the worker's budget before it is refused with ``overloaded``."""
    job_decode_concurrency: int = DEFAULT_JOB_DECODE_CONCURRENCY
    """Inputs of one job downloading or decoding at once (the pool has this many threads per concurrent job)."""
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S
    """After SIGTERM, in-flight batch jobs have this long to finish before they fail with ``server_shutdown``."""

    def __post_init__(self) -> None:
        for name in ("job_audio_budget_s", "worker_audio_budget_s", "budget_wait_s", "shutdown_grace_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"JobLimits.{name} must be > 0, got {getattr(self, name)!r}")
        if self.job_decode_concurrency < 1:
            raise ValueError(f"JobLimits.job_decode_concurrency must be >= 1, got {self.job_decode_concurrency!r}")


class _Waiter:
    __slots__ = ("amount", "future", "loop", "granted")

    def __init__(self, amount: int, future: asyncio.Future[None], loop: asyncio.AbstractEventLoop) -> None:
        self.amount = amount
        self.future = future
        self.loop = loop
        self.granted = False


def _ms(seconds: float) -> int:
    return math.ceil(seconds * 1000)


class AudioBudget:
    """Seconds of decoded audio, reserved first come first served; safe from any thread and any event loop.

    Strict FIFO: a large reservation at the head is not starved by smaller ones behind it. Counted in whole
    milliseconds, so that reserving, shrinking and releasing add up exactly (floats drift: a budget left a
    femtosecond short would never grant a full-size reservation again).
    """

    def __init__(self, capacity_s: float, name: str) -> None:
        self.capacity_s = capacity_s
        self.name = name
        self._capacity = _ms(capacity_s)
        self._used = 0
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()

    @property
    def used_s(self) -> float:
        with self._lock:
            return self._used / 1000

    async def acquire(self, seconds: float, timeout_s: float | None) -> None:
        """Reserve ``seconds`` (at most the capacity); wait up to ``timeout_s`` (None: as long as it takes).

        Raises :class:`TimeoutError` when the wait runs out; a cancelled wait reserves nothing.
        """
        amount = min(_ms(seconds), self._capacity)
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._waiters and self._used + amount <= self._capacity:
                self._used += amount
                return
            waiter = _Waiter(amount, loop.create_future(), loop)
            self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), timeout_s)
        except BaseException:  # timed out or cancelled: give back what was granted meanwhile, or leave the queue
            with self._lock:
                if waiter.granted:
                    self._used -= amount
                else:
                    self._waiters.remove(waiter)
                self._grant_locked()
            raise

    def release(self, seconds: float) -> None:
        self._release(min(_ms(seconds), self._capacity))

    def _release(self, amount: int) -> None:
        with self._lock:
            self._used = max(0, self._used - amount)
            self._grant_locked()

    def _grant_locked(self) -> None:
        while self._waiters and self._used + self._waiters[0].amount <= self._capacity:
            waiter = self._waiters.popleft()
            waiter.granted = True
            self._used += waiter.amount
            try:
                waiter.loop.call_soon_threadsafe(_resolve, waiter.future)
            except RuntimeError:  # its event loop is closed: nobody is waiting any more
                self._used -= waiter.amount


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Reservation:
    """One input's share of its job's budget and the worker's; ``shrink`` it once decoded, ``release`` it once done.

    Idempotent: releasing twice gives back once.
    """

    def __init__(self, budgets: tuple[AudioBudget, ...], seconds: float) -> None:
        self._budgets = budgets
        self._held = [min(_ms(seconds), budget._capacity) for budget in budgets]  # what each granted

    @property
    def seconds(self) -> float:
        return max(self._held, default=0) / 1000

    def shrink(self, to_s: float) -> None:
        to = _ms(to_s)
        for i, budget in enumerate(self._budgets):
            if to < self._held[i]:
                budget._release(self._held[i] - to)
                self._held[i] = to

    def release(self) -> None:
        self.shrink(0.0)

    def hand_over(self) -> Reservation:
        """A reservation of what this one holds, which is left holding nothing (for a later release elsewhere)."""
        other = Reservation((), 0.0)
        other._budgets, other._held = self._budgets, self._held
        self._held = [0] * len(self._budgets)
        return other


async def reserve(job: AudioBudget, worker: AudioBudget, seconds: float, *, wait_s: float) -> Reservation:
    """Reserve ``seconds`` from the job's budget (waiting for the job's own inputs to finish) and then from the
    worker's (waiting at most ``wait_s``, else :class:`EngineOverloadedError`)."""
    await job.acquire(seconds, None)
    started = time.monotonic()
    try:
        await worker.acquire(seconds, wait_s)
    except TimeoutError:
        job.release(seconds)
        logger.warning("an input waited %.0f s for the worker's audio budget (%.0f of %.0f s held); refused",
                       time.monotonic() - started, worker.used_s, worker.capacity_s)
        raise EngineOverloadedError(
            f"the worker holds its whole decoded-audio budget ({worker.capacity_s:g} s, "
            f"PARAKEET_WORKER_AUDIO_BUDGET_S) for other jobs and none came free within {wait_s:g} s; "
            "retry later or on another worker"
        ) from None
    except BaseException:
        job.release(seconds)
        raise
    return Reservation((job, worker), seconds)
