"""Logs (JSON lines on RunPod, each line with its job/session id) and per-request metrics with a report.

- :mod:`~parakeet_worker.observability.logs`: :func:`setup_logging`, :func:`log_context`, :func:`on_platform`.
- :mod:`~parakeet_worker.observability.metrics`: :class:`Metrics` writes one :class:`RequestRecord` per request.
- :mod:`~parakeet_worker.observability.report`: :func:`build_report` / :func:`format_report` over a window, and
  the CLI ``python -m parakeet_worker.observability report FILE``.
"""

from parakeet_worker.observability.logs import log_context, on_platform, setup_logging
from parakeet_worker.observability.metrics import Metrics, RequestRecord
from parakeet_worker.observability.report import build_report, format_report, metrics_files, percentile

__all__ = [
    "Metrics",
    "RequestRecord",
    "build_report",
    "format_report",
    "log_context",
    "metrics_files",
    "on_platform",
    "percentile",
    "setup_logging",
]
