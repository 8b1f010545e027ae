"""Structured logs: JSON lines on RunPod, readable text locally, each record tagged with its job/session id.

:func:`setup_logging` writes one JSON object per line on RunPod (detected from ``RUNPOD_POD_ID`` /
``RUNPOD_ENDPOINT_ID``) and readable text locally. Every record carries the ``job_id`` / ``session_id`` of the
:func:`log_context` it was logged in (a ``contextvars`` context, so it follows ``asyncio`` tasks and
``asyncio.to_thread``; a thread of its own, such as the engine's, starts without one).
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

CONTEXT_KEYS = ("job_id", "session_id")
PLATFORM_ENV_VARS = ("RUNPOD_POD_ID", "RUNPOD_ENDPOINT_ID")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

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
