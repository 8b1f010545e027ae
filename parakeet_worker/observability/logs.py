"""Structured logs: JSON lines on RunPod, readable text locally, each record tagged with its job/session id and
stripped of secrets and transcripts.

:func:`setup_logging` writes one JSON object per line on RunPod (detected from ``RUNPOD_POD_ID`` /
``RUNPOD_ENDPOINT_ID``) and readable text locally. Every record carries the ``job_id`` / ``session_id`` of the
:func:`log_context` it was logged in (a ``contextvars`` context, so it follows ``asyncio`` tasks and
``asyncio.to_thread``; a thread of its own, such as the engine's, starts without one). Every record also passes
:class:`RedactFilter` (tokens, credentials, signatures and, unless ``PARAKEET_LOG_TRANSCRIPTS=1``, transcripts
are masked; :mod:`~parakeet_worker.observability.redact`), and the RunPod SDK's own lines, which it prints
itself, are routed through the same handler (:mod:`~parakeet_worker.observability.sdk_logs`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from parakeet_worker.config import Settings
from parakeet_worker.errors import InputError
from parakeet_worker.observability.redact import Redactor, secret_values
from parakeet_worker.observability.sdk_logs import route_runpod_logs

CONTEXT_KEYS = ("job_id", "session_id")
PLATFORM_ENV_VARS = ("RUNPOD_POD_ID", "RUNPOD_ENDPOINT_ID")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# A log line is not a data dump: longer messages (a 3-hour job's output at the SDK's DEBUG level) keep their start
# and end, as the SDK's own logger does at 4096 characters.
MAX_MESSAGE_CHARS = 8192

# The one redactor of the process: setup_logging configures it, add_log_secret extends it; every handler that
# setup_logging installs (and the handlers other libraries attached before) share it.
_redactor = Redactor()

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
    """The keys the enclosing :func:`log_context` blocks set (metrics records take their ids from it)."""
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


def add_log_secret(value: str) -> None:
    """Mask ``value`` verbatim in every later log line (a token the process generated or was given)."""
    _redactor.add_secret(value)


def redact(text: str) -> str:
    """``text`` as the logs would show it (for messages written elsewhere than the log, e.g. an error file)."""
    return _redactor.redact(text)


def _truncated(text: str) -> str:
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    half = MAX_MESSAGE_CHARS // 2
    return f"{text[:half]} ...[{len(text) - MAX_MESSAGE_CHARS} characters left out]... {text[-half:]}"


class RedactFilter(logging.Filter):
    """Masks secrets (and transcripts, unless the redactor keeps them) in a record's message, traceback, stack and
    string extras, before any formatter sees it; the record is changed in place, so every handler gets the masked
    text. Never raises: a record whose arguments do not fit its format is logged as its masked parts."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_parakeet_redacted", False):  # a record reaching a second handler
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):
            message = f"{record.msg} (arguments: {record.args!r})"
        record.msg, record.args = _truncated(self.redactor.redact(message)), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor.redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _RESERVED and isinstance(value, str):
                setattr(record, key, self.redactor.redact(value))
        setattr(record, "_parakeet_redacted", True)  # noqa: B010 - not a LogRecord field mypy knows
        return True


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
        if record.exc_text:  # RedactFilter leaves the redacted traceback here
            out["exc"] = record.exc_text
        elif record.exc_info:
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


def _keeps_transcripts(environ: Mapping[str, str]) -> bool:
    """``PARAKEET_LOG_TRANSCRIPTS`` as the settings read it; an invalid environment keeps them out (the worker
    then stops at its own ``Settings.from_env`` with the message naming the variable)."""
    try:
        return Settings.from_env(environ).log_transcripts
    except InputError:
        return False


def setup_logging(json_lines: bool | None = None, *, level: int = logging.INFO, stream: TextIO | None = None,
                  environ: Mapping[str, str] | None = None, log_transcripts: bool | None = None) -> logging.Handler:
    """Route every logger through one handler: JSON lines on the platform (or ``json_lines=True``), else text;
    every record masked by :class:`RedactFilter` (transcripts kept only with ``log_transcripts``, by default
    ``PARAKEET_LOG_TRANSCRIPTS``), the RunPod SDK's prints included (its level INFO unless ``RUNPOD_LOG_LEVEL`` /
    ``RUNPOD_DEBUG_LEVEL`` ask otherwise).

    ``force=True`` replaces what was there before, in particular the root handler ``import runpod`` installs.
    Returns the handler (tests read what it wrote).
    """
    env = os.environ if environ is None else environ
    if json_lines is None:
        json_lines = on_platform(env)
    _redactor.keep_transcripts = _keeps_transcripts(env) if log_transcripts is None else log_transcripts
    for secret in secret_values(env):
        _redactor.add_secret(secret)
    redact_filter = RedactFilter(_redactor)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(redact_filter)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Libraries that attached handlers of their own (NeMo's logger) write past the root handler: mask theirs too.
    for other in list(logging.root.manager.loggerDict.values()):
        for own in other.handlers if isinstance(other, logging.Logger) else ():
            if not any(isinstance(f, RedactFilter) for f in own.filters):
                own.addFilter(redact_filter)
    # uvicorn's line per connection ('"WebSocket /?token=…" [accepted]') repeats what the sessions log: warnings only
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    route_runpod_logs(env)
    return handler
