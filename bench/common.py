"""Helpers shared by the benchmarks: machine description, quiet NeMo logging, memory readings."""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch


def out(*parts: object, file: TextIO | None = None, flush: bool = True) -> None:
    """Write one report line (to stdout unless ``file``): the benchmarks' output is their report, not a log."""
    stream = file if file is not None else sys.stdout
    stream.write(" ".join(str(p) for p in parts) + "\n")
    if flush:
        stream.flush()


def quiet_nemo() -> None:
    """NeMo logs every restore and transcribe at INFO; the benchmarks print their own summary."""
    logging.getLogger("nemo_logger").setLevel(logging.ERROR)
    try:
        from nemo.utils import logging as nemo_logging

        nemo_logging.setLevel(logging.ERROR)
    except ImportError:  # pragma: no cover - NeMo is a hard dependency of the project
        pass


def machine_info() -> dict[str, object]:
    cpu = "unknown"
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    mem_gib = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 1024**2
    except OSError:
        pass
    try:
        import nemo

        nemo_version = nemo.__version__
    except ImportError:  # pragma: no cover
        nemo_version = "missing"
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "memory_gib": round(mem_gib, 1),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],  # other work on the machine skews timings
        "gpu": cuda,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "nemo": nemo_version,
    }


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_mib() -> float:
    return _status_kib("VmRSS") / 1024


def hwm_mib() -> float:
    """Peak resident set size of this process so far (VmHWM)."""
    return _status_kib("VmHWM") / 1024


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class RssSampler:
    """Samples VmRSS every ``interval_s`` in a daemon thread, to show memory over a run stays bounded."""

    interval_s: float = 0.5
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MiB)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0

    def __enter__(self) -> RssSampler:
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.samples.append((time.monotonic() - self._t0, rss_mib()))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - self._t0, rss_mib()))
            self._stop.wait(self.interval_s)

    @property
    def peak_mib(self) -> float:
        return max((m for _, m in self.samples), default=0.0)

    def timeline(self, points: int = 10) -> list[tuple[float, float]]:
        """About ``points`` (time, max RSS in that slice) pairs over the run."""
        if not self.samples:
            return []
        end = self.samples[-1][0] or 1e-9
        out: list[tuple[float, float]] = []
        for k in range(points):
            lo, hi = end * k / points, end * (k + 1) / points
            inside = [m for t, m in self.samples if lo <= t <= hi]
            if inside:
                out.append((round(hi, 1), round(max(inside), 0)))
        return out
