"""HeapTrimmer: malloc_trim after large work returns freed heap pages to the system (glibc), rate-limited."""

import ctypes
import sys

import pytest

from parakeet_worker.engine.memory import HeapTrimmer


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator is the subject")
def test_trim_after_large_work_returns_freed_small_blocks_to_the_system():
    trimmer = HeapTrimmer(after_audio_s=60.0, min_interval_s=0.0)
    assert not trimmer.maybe_trim(), "nothing served yet: no trim"
    # 200 MB in 64 KiB blocks (below the mmap threshold: they live on the heap), all but the last freed; the last
    # one pins the heap's top so free() alone cannot shrink it
    blocks = [ctypes.create_string_buffer(64 << 10) for _ in range(3200)]
    keep = blocks[-1]
    del blocks
    before = _rss_kib()
    trimmer.served(30.0)
    assert not trimmer.maybe_trim(), "30 s of audio is below the 60 s threshold"
    trimmer.served(30.0)
    assert trimmer.maybe_trim()
    after = _rss_kib()
    assert trimmer.trims == 1
    assert before - after > 100_000, f"RSS {before} -> {after} KiB: the freed 200 MB stayed with the process"
    assert keep.raw[:1] == b"\x00"


def test_trims_are_rate_limited():
    trimmer = HeapTrimmer(after_audio_s=1.0, min_interval_s=3600.0)
    trimmer.served(5.0)
    first = trimmer.maybe_trim()
    trimmer.served(5.0)
    assert not trimmer.maybe_trim()
    assert trimmer.trims == int(first)
