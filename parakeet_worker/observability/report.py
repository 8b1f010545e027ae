"""Summarise per-request metrics over a window: count, error rate and p50/p95/p99 of the timings.

Usage::

    python -m parakeet_worker.observability report /tmp/parakeet-metrics.jsonl --window 3600      # text
    python -m parakeet_worker.observability report /tmp/parakeet-metrics.jsonl --window 0 --json  # every record

reads the file and its rotated backups (``FILE.1`` ... ``FILE.N``) and prints count, error rate and
p50/p95/p99 of queue wait, inference time, RTFx and audio seconds for the records in the window.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from parakeet_worker.observability.metrics import RequestKind, RequestRecord

DEFAULT_WINDOW_S = 3600.0
PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class Distribution:
    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None
    max: float | None


@dataclass(frozen=True)
class Report:
    files: tuple[str, ...]
    window_s: float | None  # None: every record
    start: float | None
    end: float
    count: int
    errors: int
    error_rate: float
    error_codes: dict[str, int]
    by_kind: dict[str, int]
    audio_hours: float
    skipped_lines: int
    max_active_sessions: int | None
    mean_batch_size: float | None
    stats: dict[str, Distribution] = field(default_factory=dict)


REPORTED_FIELDS = ("queue_wait_s", "inference_s", "total_s", "rtfx", "audio_s")


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) over already sorted values."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = (len(sorted_values) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def distribution(values: Iterable[float]) -> Distribution:
    ordered = sorted(values)
    if not ordered:
        return Distribution(0, None, None, None, None, None)
    p50, p95, p99 = (round(percentile(ordered, p), 4) for p in PERCENTILES)
    return Distribution(len(ordered), p50, p95, p99, round(sum(ordered) / len(ordered), 4), round(ordered[-1], 4))


def metrics_files(path: str | os.PathLike[str]) -> list[Path]:
    """``path`` and its rotated backups, oldest first (``path.N`` ... ``path.1``, ``path``)."""
    base = Path(path)
    backups = []
    for candidate in base.parent.glob(base.name + ".*"):
        suffix = candidate.name[len(base.name) + 1:]
        if suffix.isdigit():
            backups.append((int(suffix), candidate))
    ordered = [p for _, p in sorted(backups, reverse=True)]
    if base.exists():
        ordered.append(base)
    return ordered


def read_records(paths: Iterable[Path]) -> tuple[list[RequestRecord], int]:
    """Every parseable record, and the number of lines that were not (a torn last line, foreign text)."""
    records: list[RequestRecord] = []
    skipped = 0
    for path in paths:
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    records.append(RequestRecord.from_dict(json.loads(line)))
                except (ValueError, TypeError, KeyError):
                    skipped += 1
    return records, skipped


def build_report(path: str | os.PathLike[str], *, window_s: float | None = DEFAULT_WINDOW_S,
                 end: float | None = None, kind: RequestKind | None = None) -> Report:
    """Summarise the records of the last ``window_s`` seconds before ``end`` (default: now; window None/0: all)."""
    files = metrics_files(path)
    if not files:
        raise FileNotFoundError(f"no metrics file at {path} (nor rotated backups)")
    records, skipped = read_records(files)
    end = time.time() if end is None else end
    window = window_s if window_s else None
    start = end - window if window is not None else None
    chosen = [r for r in records if (start is None or r.ts >= start) and r.ts <= end
              and (kind is None or r.kind == kind)]
    errors = [r for r in chosen if not r.ok]
    ok = [r for r in chosen if r.ok]
    stats = {name: distribution(v for r in ok if (v := getattr(r, name)) is not None) for name in REPORTED_FIELDS}
    sessions = [r.active_sessions for r in chosen if r.active_sessions is not None]
    batches = [r.batch_size for r in ok if r.batch_size is not None]
    return Report(
        files=tuple(str(f) for f in files), window_s=window, start=start, end=end, count=len(chosen),
        errors=len(errors), error_rate=round(len(errors) / len(chosen), 4) if chosen else 0.0,
        error_codes=dict(Counter(r.error_code or "" for r in errors).most_common()),
        by_kind=dict(Counter(r.kind for r in chosen)), audio_hours=round(sum(r.audio_s for r in ok) / 3600, 4),
        skipped_lines=skipped, max_active_sessions=max(sessions) if sessions else None,
        mean_batch_size=round(sum(batches) / len(batches), 2) if batches else None, stats=stats,
    )


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.3f}{unit}" if unit == " s" else f"{value:.1f}{unit}"


def format_report(report: Report) -> str:
    def when(ts: float) -> str:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    codes = ", ".join(f"{code or 'unknown'} {n}" for code, n in report.error_codes.items())
    span = f"last {report.window_s:g} s ({when(report.start)} .. {when(report.end)})" \
        if report.window_s is not None and report.start is not None else f"all records (until {when(report.end)})"
    lines = [
        f"metrics: {', '.join(report.files)}",
        f"window: {span}",
        f"requests: {report.count} ({', '.join(f'{k} {v}' for k, v in sorted(report.by_kind.items())) or 'none'}), "
        f"errors: {report.errors} ({report.error_rate:.1%})"
        + (f" [{codes}]" if report.errors else ""),
        f"audio: {report.audio_hours:.3f} h transcribed; mean batch size {_fmt(report.mean_batch_size)}; "
        f"max active sessions {report.max_active_sessions if report.max_active_sessions is not None else '-'}",
    ]
    if report.skipped_lines:
        lines.append(f"skipped {report.skipped_lines} unreadable line(s)")
    lines.append(f"{'':<14}{'n':>7}{'p50':>12}{'p95':>12}{'p99':>12}{'max':>12}")
    labels = {"queue_wait_s": ("queue wait", " s"), "inference_s": ("inference", " s"), "total_s": ("total", " s"),
              "rtfx": ("RTFx", "x"), "audio_s": ("audio", " s")}
    for name in REPORTED_FIELDS:
        d = report.stats[name]
        label, unit = labels[name]
        lines.append(f"{label:<14}{d.count:>7}" + "".join(f"{_fmt(v, unit):>12}" for v in (d.p50, d.p95, d.p99, d.max)))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parakeet_worker.observability",
                                     description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="summarise a metrics file (and its rotated backups) over a window")
    rep.add_argument("file", help="the metrics file (PARAKEET_METRICS_FILE)")
    rep.add_argument("--window", type=float, default=DEFAULT_WINDOW_S,
                     help="seconds before --end to include; 0 for every record (default %(default)g)")
    rep.add_argument("--end", type=float, default=None, help="unix time the window ends (default: now)")
    rep.add_argument("--kind", choices=("batch", "stream"), default=None, help="only this kind of request")
    rep.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)
    if args.window < 0:
        parser.error("--window must not be negative")
    try:
        report = build_report(args.file, window_s=args.window, end=args.end, kind=args.kind)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        sys.stderr.write(f"error: {exc}\n")  # the report command's own output, not a log line
        return 2
    sys.stdout.write((json.dumps(asdict(report), indent=2) if args.json else format_report(report)) + "\n")
    return 0
