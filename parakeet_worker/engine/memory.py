"""Keeping the worker's memory flat: fewer malloc arenas, and freed memory given back after large work.

glibc gives each thread that allocates its own arena (up to 8 per core), and every arena keeps the freed memory of
its peaks: with the load pool's, the asyncio executors' and the engine's threads all decoding and transcribing, a
10-minute soak's RSS climbed from a 1.5 GB median in minute 2 to a 2.2-2.3 GB plateau. :func:`limit_malloc_arenas`
(``mallopt(M_ARENA_MAX, 2)`` at start-up, what ``MALLOC_ARENA_MAX=2`` does) kept it at 1.5 GB from minute 2 to
minute 10 (+0.2 %, docs/BENCHMARKS.md) with no failed job and no lost final.

glibc's allocator keeps freed heap memory (per thread arena) for reuse instead of returning it, so after a long
file's decode and forward a worker's RSS stays near its peak: over a 10-minute soak it drifted up 28.7 % from minute
2 to minute 10 (docs/BENCHMARKS.md). ``malloc_trim(0)`` returns the free pages of every arena. It walks the heap
(milliseconds), so :class:`HeapTrimmer` calls it only after at least ``after_audio_s`` of batch audio has been
served since the last trim, and at most once per ``min_interval_s``. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


M_ARENA_MAX = -8  # glibc's mallopt parameter number
DEFAULT_MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = DEFAULT_MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (call first thing in the worker's main, before its threads start); an explicit
    ``MALLOC_ARENA_MAX`` in the environment wins. True when the cap was set here."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))


class HeapTrimmer:
    """Counts batch audio served and trims the heap once enough has passed (call from one thread)."""

    def __init__(self, after_audio_s: float = 60.0, min_interval_s: float = 10.0) -> None:
        self.after_audio_s = after_audio_s
        self.min_interval_s = min_interval_s
        self._trim = _glibc_malloc_trim()
        self._pending_s = 0.0
        self._last = float("-inf")
        self.trims = 0

    def served(self, audio_s: float) -> None:
        self._pending_s += audio_s

    def maybe_trim(self) -> bool:
        """Trim if due (True when it did)."""
        now = time.monotonic()
        if self._trim is None or self._pending_s < self.after_audio_s or now - self._last < self.min_interval_s:
            return False
        self._trim(0)
        self._pending_s = 0.0
        self._last = time.monotonic()
        self.trims += 1
        logger.debug("returned free heap memory to the system after large work (%.1f ms)",
                     (self._last - now) * 1000)
        return True


__all__ = ["HeapTrimmer", "limit_malloc_arenas"]
