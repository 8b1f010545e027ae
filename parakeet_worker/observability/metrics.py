"""Structured logs and per-request metrics for the worker, and a report over a window of metrics.

Logs: :func:`setup_logging` writes one JSON object per line on RunPod (detected from ``RUNPOD_POD_ID`` /
``RUNPOD_ENDPOINT_ID``) and readable text locally. Every record carries the ``job_id`` / ``session_id`` of the
:func:`log_context` it was logged in (a ``contextvars`` context, so it follows ``asyncio`` tasks and
``asyncio.to_thread``; a thread of its own, such as the engine's, starts without one).

Metrics: :class:`Metrics` appends one JSON line per request (kind ``batch`` or ``stream``, audio seconds, queue
wait, inference time, RTFx, batch size, active sessions, error code) to a size-rotated file. It is thread-safe
and never raises into the caller: a metrics failure is logged once and counted, the job goes on.

Report::

    python -m observability report /tmp/parakeet-metrics.jsonl --window 3600        # text
    python -m observability report /tmp/parakeet-metrics.jsonl --window 0 --json    # every record, as JSON

reads the file and its rotated backups (``FILE.1`` ... ``FILE.N``) and prints count, error rate and
p50/p95/p99 of queue wait, inference time, RTFx and audio seconds for the records in the window.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import logging.handlers
import math
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

logger = logging.getLogger(__name__)

CONTEXT_KEYS = ("job_id", "session_id")
PLATFORM_ENV_VARS = ("RUNPOD_POD_ID", "RUNPOD_ENDPOINT_ID")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEFAULT_METRICS_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_METRICS_BACKUPS = 5
DEFAULT_WINDOW_S = 3600.0
PERCENTILES = (50, 95, 99)
RequestKind = Literal["batch", "stream"]

# ---------------------------------------------------------------------------------------------------- logging

_context: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("parakeet_log_context", default=())


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Attach ``job_id`` / ``session_id`` (or other keys) to every record logged inside the block.

    Nested blocks add to (and may override) the outer one; ``None`` values are ignored.
    """
    merged = dict(_context.get())
    merged.update({k: str(v) for k, v in fields.items() if v is not None})
    token = _context.set(tuple(merged.items()))
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, str]:
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Copies the current :func:`log_context` onto each record (``record.job_id``, ``record.session_id``).

    Attached to handlers, so it sees records from every logger, ``runpod``'s and NeMo's included. A value passed
    explicitly with ``extra={"job_id": ...}`` wins over the context.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        context = dict(_context.get())
        for key in CONTEXT_KEYS:
            if getattr(record, key, None) is None:
                setattr(record, key, context.pop(key, None))
            else:
                context.pop(key, None)
        for key, value in context.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, context, extras.

    ``message``, ``level`` and ``requestId`` (the job id) are the keys the RunPod SDK's own JSON log lines use, so
    the platform's log view attributes our lines to the request as it does the SDK's.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            out["requestId"] = job_id
        for key, value in record.__dict__.items():
            if key in _RESERVED or key.startswith("_") or value is None:
                continue
            out[key] = value if isinstance(value, str | int | float | bool) else repr(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=repr)


class TextFormatter(logging.Formatter):
    """The usual ``time LEVEL logger: message``, followed by ``[job=... session=...]`` when in a context."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        tags = " ".join(f"{key.removesuffix('_id')}={getattr(record, key)}" for key in CONTEXT_KEYS
                        if getattr(record, key, None) is not None)
        if not tags:
            return text
        first, sep, rest = text.partition("\n")  # keep a traceback below the tagged first line
        return f"{first} [{tags}]{sep}{rest}"


def on_platform(environ: Mapping[str, str] | None = None) -> bool:
    """True inside a RunPod worker (the platform sets ``RUNPOD_POD_ID`` and ``RUNPOD_ENDPOINT_ID``)."""
    env = os.environ if environ is None else environ
    return any(env.get(name) for name in PLATFORM_ENV_VARS)


def setup_logging(json_lines: bool | None = None, *, level: int = logging.INFO, stream: TextIO | None = None,
                  environ: Mapping[str, str] | None = None) -> logging.Handler:
    """Route every logger through one handler: JSON lines on the platform (or ``json_lines=True``), else text.

    ``force=True`` replaces what was there before, in particular the root handler ``import runpod`` installs.
    Returns the handler (tests read what it wrote).
    """
    if json_lines is None:
        json_lines = on_platform(environ)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    handler.addFilter(ContextFilter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    return handler


# ---------------------------------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class RequestRecord:
    """One finished request: a batch job's file, or one streaming session."""

    ts: float  # unix time the request finished
    kind: RequestKind
    audio_s: float
    inference_s: float | None = None  # model time (without queue wait)
    queue_wait_s: float | None = None
    total_s: float | None = None  # end to end, decoding and download included
    rtfx: float | None = None  # audio seconds per inference second
    batch_size: int | None = None
    active_sessions: int | None = None
    error_code: str | None = None  # None: succeeded
    job_id: str | None = None
    session_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, separators=(",", ":"))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RequestRecord:
        kind = raw.get("kind")
        if kind not in ("batch", "stream"):
            raise ValueError(f"kind must be batch or stream, got {kind!r}")
        return cls(
            ts=float(raw["ts"]), kind=kind, audio_s=float(raw.get("audio_s", 0.0)),
            inference_s=_opt_float(raw.get("inference_s")), queue_wait_s=_opt_float(raw.get("queue_wait_s")),
            total_s=_opt_float(raw.get("total_s")), rtfx=_opt_float(raw.get("rtfx")),
            batch_size=_opt_int(raw.get("batch_size")), active_sessions=_opt_int(raw.get("active_sessions")),
            error_code=_opt_str(raw.get("error_code")), job_id=_opt_str(raw.get("job_id")),
            session_id=_opt_str(raw.get("session_id")),
        )


def _opt_float(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None


def _opt_int(value: object) -> int | None:
    return None if value is None or isinstance(value, bool) else int(value)  # type: ignore[call-overload]


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _finite(value: float | None, digits: int = 4) -> float | None:
    if value is None:
        return None
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


class _MetricsFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating file whose write errors are counted instead of printed with a traceback."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True)
        self.setFormatter(logging.Formatter("%(message)s"))
        self.failures = 0
        self.last_error: BaseException | None = None

    def handleError(self, record: logging.LogRecord) -> None:
        self.failures += 1
        self.last_error = sys.exc_info()[1]


class Metrics:
    """Per-request records appended as JSON lines to ``path`` (rotated at ``max_bytes``, ``backups`` kept).

    ``Metrics(None)`` records nothing. Safe to call from any thread; :meth:`record` never raises.
    """

    def __init__(self, path: str | os.PathLike[str] | None, *, max_bytes: int = DEFAULT_METRICS_MAX_BYTES,
                 backups: int = DEFAULT_METRICS_BACKUPS) -> None:
        self.path = Path(path) if path is not None else None
        self._handler: _MetricsFileHandler | None = None
        self._lock = threading.Lock()
        self._warned = False
        self.written = 0
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handler = _MetricsFileHandler(self.path, max_bytes, backups)
        except OSError as exc:
            logger.warning("metrics disabled: cannot write %s (%s)", self.path, exc)
            self._handler = None

    @property
    def enabled(self) -> bool:
        return self._handler is not None

    @property
    def failures(self) -> int:
        return self._handler.failures if self._handler is not None else 0

    def record(self, kind: RequestKind, *, audio_s: float, inference_s: float | None = None,
               queue_wait_s: float | None = None, total_s: float | None = None, batch_size: int | None = None,
               active_sessions: int | None = None, error_code: str | None = None, job_id: str | None = None,
               session_id: str | None = None) -> RequestRecord | None:
        """Append one record; ``job_id`` / ``session_id`` default to the current :func:`log_context`.

        RTFx is ``audio_s / inference_s``. Returns the record written, or ``None`` when metrics are off or the
        write failed (a failure is logged once as a warning; the caller is never interrupted).
        """
        if self._handler is None:
            return None
        try:
            context = dict(_context.get())
            rtfx = audio_s / inference_s if inference_s and inference_s > 0 and error_code is None else None
            rec = RequestRecord(
                ts=round(time.time(), 3), kind=kind, audio_s=_finite(audio_s) or 0.0,
                inference_s=_finite(inference_s), queue_wait_s=_finite(queue_wait_s), total_s=_finite(total_s),
                rtfx=_finite(rtfx, 2), batch_size=batch_size, active_sessions=active_sessions,
                error_code=error_code, job_id=job_id if job_id is not None else context.get("job_id"),
                session_id=session_id if session_id is not None else context.get("session_id"),
            )
            return self._write(rec)
        except Exception as exc:  # metrics must never fail a job: log once, count, go on
            self._warn_once(exc)
            return None

    def write(self, rec: RequestRecord) -> RequestRecord | None:
        """Append a ready-made record (never raises)."""
        if self._handler is None:
            return None
        try:
            return self._write(rec)
        except Exception as exc:  # see record()
            self._warn_once(exc)
            return None

    def _write(self, rec: RequestRecord) -> RequestRecord | None:
        assert self._handler is not None
        failures = self._handler.failures
        entry = logging.LogRecord("parakeet.metrics", logging.INFO, __file__, 0, rec.to_json(), None, None)
        self._handler.handle(entry)  # takes the handler's lock: rotation and write are atomic per record
        if self._handler.failures != failures:
            self._warn_once(self._handler.last_error)
            return None
        with self._lock:
            self.written += 1
        return rec

    def _warn_once(self, exc: BaseException | None) -> None:
        with self._lock:
            if self._warned:
                return
            self._warned = True
        logger.warning("metrics: could not write to %s (%s: %s); further failures are counted, not logged",
                       self.path, type(exc).__name__, exc)

    def close(self) -> None:
        if self._handler is not None:
            self._handler.close()


# ---------------------------------------------------------------------------------------------------- report


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
    parser = argparse.ArgumentParser(prog="python -m parakeet_worker.observability", description=__doc__.split("\n\n")[0])
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


if __name__ == "__main__":
    sys.exit(main())
