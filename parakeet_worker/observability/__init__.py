"""Logs (JSON lines on RunPod, each line with its job/session id) and per-request metrics with a report."""

from parakeet_worker.observability.metrics import (
    Metrics,
    RequestRecord,
    build_report,
    format_report,
    log_context,
    on_platform,
    setup_logging,
)

__all__ = ["Metrics", "RequestRecord", "build_report", "format_report", "log_context", "on_platform", "setup_logging"]
