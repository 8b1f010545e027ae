"""Logs (JSON lines on RunPod, each line with its job/session id) and per-request metrics with a report.

- :mod:`~parakeet_worker.observability.logs`: :func:`setup_logging`, :func:`log_context`, :func:`on_platform`,
  :func:`add_log_secret` and :func:`redact` (every record is masked by :mod:`~parakeet_worker.observability.redact`;
  the RunPod SDK's prints are routed through it by :mod:`~parakeet_worker.observability.sdk_logs`).
- :mod:`~parakeet_worker.observability.metrics`: :class:`Metrics` writes one :class:`RequestRecord` per request
  and keeps the running totals (:mod:`~parakeet_worker.observability.tallies`) that ``GET /metrics`` serves in
  Prometheus' format (:mod:`~parakeet_worker.observability.prometheus`).
- :mod:`~parakeet_worker.observability.report`: :func:`build_report` / :func:`format_report` over a window, and
  the CLI ``python -m parakeet_worker.observability report FILE``.
"""

from parakeet_worker.observability.logs import (
    add_log_secret,
    current_context,
    log_context,
    on_platform,
    redact,
    setup_logging,
)
from parakeet_worker.observability.metrics import Metrics, RequestRecord
from parakeet_worker.observability.redact import Redactor
from parakeet_worker.observability.report import build_report, format_report, metrics_files, percentile

__all__ = [
    "Metrics",
    "Redactor",
    "RequestRecord",
    "add_log_secret",
    "build_report",
    "current_context",
    "format_report",
    "log_context",
    "metrics_files",
    "on_platform",
    "percentile",
    "redact",
    "setup_logging",
]
