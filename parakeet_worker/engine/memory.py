"""Giving freed memory back to the system after large work.

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


__all__ = ["HeapTrimmer"]
