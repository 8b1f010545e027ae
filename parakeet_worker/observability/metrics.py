"""Per-request metrics: one JSON line per finished request, appended to a size-rotated file, and running totals.

:class:`Metrics` records kind (``batch`` or ``stream``), the face (protocol) that served it, audio seconds, queue
wait, inference time, RTFx, batch size, active sessions and error code. It is thread-safe and never raises into
the caller: a metrics failure is logged once and counted, the job goes on.
:mod:`parakeet_worker.observability.report` summarises the file. Whether or not there is a file, every record,
every request the app answers and every session the registry admits also feed the in-memory
:class:`~parakeet_worker.observability.tallies.Tallies` that ``GET /metrics`` exposes
(:mod:`~parakeet_worker.observability.prometheus`).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import math
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from parakeet_worker.observability.logs import current_context
from parakeet_worker.observability.tallies import Tallies

logger = logging.getLogger(__name__)

DEFAULT_METRICS_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_METRICS_BACKUPS = 5
RequestKind = Literal["batch", "stream"]
# The face label of a record whose face is not known (a RunPod job is a batch record from outside the app).
DEFAULT_FACE: dict[str, str] = {"batch": "job", "stream": "unknown"}


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
    face: str | None = None  # the protocol face that served it (native, openai, deepgram, ...); None: a RunPod job

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
            session_id=_opt_str(raw.get("session_id")), face=_opt_str(raw.get("face")),
        )


def _opt_float(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    # a JSON value: float() of a non-number raises, and read_records counts the line as unreadable
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None


def _opt_int(value: object) -> int | None:
    # a JSON value: int() of a non-number raises, and read_records counts the line as unreadable
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
        self.tallies = Tallies()
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
               session_id: str | None = None, face: str | None = None) -> RequestRecord | None:
        """Append one record; ``job_id`` / ``session_id`` / ``face`` default to the current :func:`log_context`
        (the app tags each request with its face).

        RTFx is ``audio_s / inference_s``. The record counts in :attr:`tallies` whether or not there is a file.
        Returns the record written, or ``None`` when metrics are off or the write failed (a failure is logged
        once as a warning; the caller is never interrupted).
        """
        try:
            context = current_context()
            rtfx = audio_s / inference_s if inference_s and inference_s > 0 and error_code is None else None
            rec = RequestRecord(
                ts=round(time.time(), 3), kind=kind, audio_s=_finite(audio_s) or 0.0,
                inference_s=_finite(inference_s), queue_wait_s=_finite(queue_wait_s), total_s=_finite(total_s),
                rtfx=_finite(rtfx, 2), batch_size=batch_size, active_sessions=active_sessions,
                error_code=error_code, job_id=job_id if job_id is not None else context.get("job_id"),
                session_id=session_id if session_id is not None else context.get("session_id"),
                face=face if face is not None else context.get("face"),
            )
            self._tally(rec)
            if self._handler is None:
                return None
            return self._write(rec)
        except Exception as exc:  # metrics must never fail a job: log once, count, go on
            self._warn_once(exc)
            return None

    def write(self, rec: RequestRecord) -> RequestRecord | None:
        """Append a ready-made record (never raises); it counts in :attr:`tallies` too."""
        try:
            self._tally(rec)
            if self._handler is None:
                return None
            return self._write(rec)
        except Exception as exc:  # see record()
            self._warn_once(exc)
            return None

    # --- the running totals (GET /metrics) ----------------------------------------------------------------------
    def request(self, face: str, route: str, status: int) -> None:
        """The app answered a request (a WebSocket handshake too: 101 accepted, or its refusal's status)."""
        self.tallies.request(face, route, status)

    def session_opened(self, face: str) -> None:
        self.tallies.session_opened(face)

    def session_closed(self, face: str) -> None:
        self.tallies.session_closed(face)

    def active_sessions(self) -> int:
        """Live sessions of every face (opened and not yet closed)."""
        return self.tallies.active_sessions()

    def _tally(self, rec: RequestRecord) -> None:
        self.tallies.finished(rec.face or DEFAULT_FACE[rec.kind], rec.kind, audio_s=rec.audio_s,
                              queue_wait_s=rec.queue_wait_s, inference_s=rec.inference_s, error_code=rec.error_code)

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
