"""The worker's memory: malloc arenas capped at start-up, and malloc_trim after large work returning freed heap pages
to the system (glibc), rate-limited."""

import ctypes
import os
import re
import subprocess
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


ARENA_PROBE = """
import ctypes, sys, threading
from parakeet_worker.engine import limit_malloc_arenas
if sys.argv[1] == "capped":
    assert limit_malloc_arenas(2)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
gate = threading.Barrier(12)
def work():
    gate.wait()  # all threads allocate at once: each wants an arena of its own
    blocks = [libc.malloc(4096) for _ in range(200)]
    gate.wait()
    for b in blocks:
        libc.free(b)
threads = [threading.Thread(target=work) for _ in range(12)]
[t.start() for t in threads]
[t.join() for t in threads]
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
fp = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, fp)
libc.fclose(fp)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator is the subject")
@pytest.mark.parametrize(("mode", "most"), [("capped", 2), ("default", None)])
def test_the_worker_caps_malloc_arenas(tmp_path, mode, most):
    out = tmp_path / "malloc.xml"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    subprocess.run([sys.executable, "-c", ARENA_PROBE, mode, str(out)], check=True, env=env, timeout=120)
    arenas = len(re.findall(r"<heap nr=", out.read_text()))
    if most is not None:
        assert arenas <= most, f"{arenas} arenas with the cap"
    else:
        assert arenas > 2, f"only {arenas} arenas without the cap: the probe cannot tell the cap's effect"
