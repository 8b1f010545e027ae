"""The RunPod SDK's log lines through our logging: its level, our redaction, our format and job ids.

The SDK (``runpod`` 1.12, ``runpod/serverless/modules/rp_logger.py``) does not use :mod:`logging`: its
``RunPodLogger`` singleton ``print()``\\ s every line to stdout, at DEBUG unless ``RUNPOD_LOG_LEVEL`` (or
``RUNPOD_DEBUG_LEVEL``) says otherwise, and at DEBUG it prints every job's output (transcripts) and every progress
update (a ``websocket`` job's ``ws_url`` and ``token``). A filter on our handlers cannot see a ``print``, so
:func:`route_runpod_logs` replaces the logger's ``log`` method with one that hands each line to the
``runpod.sdk`` logger (with the job id as ``job_id``) after the SDK's own level check, and sets that level to
INFO unless the operator chose one. This module is the one place that reaches inside the SDK's logger.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

SDK_LOGGER_NAME = "runpod.sdk"
SDK_LOGGER_MODULE = "runpod.serverless.modules.rp_logger"
SDK_LEVEL_VARS = ("RUNPOD_LOG_LEVEL", "RUNPOD_DEBUG_LEVEL")  # the SDK reads the first that is set
QUIET_SDK_LEVEL = "INFO"  # job started/finished and queue sizes; no job inputs, outputs or progress payloads
TRACE_LEVEL = 5  # the SDK's TRACE sits below DEBUG

# The SDK's level names -> logging levels ("TIP" is printed whatever the level, as the SDK does).
_LEVELS = {"TRACE": TRACE_LEVEL, "DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
           "ERROR": logging.ERROR, "TIP": logging.INFO}


def _log_through_logging(self: Any, message: Any, message_level: str = "INFO", job_id: str | None = None) -> None:
    """``RunPodLogger.log`` as a :mod:`logging` call: same level semantics, our handler's format and masking."""
    module = sys.modules[SDK_LOGGER_MODULE]
    order: list[str] = module.LOG_LEVELS
    if self.level == "NOTSET":
        return
    if message_level in order and order.index(self.level) > order.index(message_level):
        return
    text = str(message)
    batch_id = module._batch_id.get() if hasattr(module, "_batch_id") else None
    if batch_id:
        text = f"[batchId={batch_id}] {text}"
    logging.getLogger(SDK_LOGGER_NAME).log(_LEVELS.get(message_level, logging.INFO), "%s", text,
                                           extra={"job_id": job_id} if job_id else None)


def route_runpod_logs(environ: Mapping[str, str]) -> bool:
    """Send the SDK's lines through :mod:`logging` at INFO (or the level the environment names); False when the
    SDK is not imported in this process (the standalone server), where there is nothing to route."""
    module = sys.modules.get(SDK_LOGGER_MODULE)
    if module is None:
        return False
    sdk_logger = module.RunPodLogger()
    if not any(environ.get(var) for var in SDK_LEVEL_VARS):
        sdk_logger.level = QUIET_SDK_LEVEL  # set_level would announce itself; the attribute is what it sets
    module.RunPodLogger.log = _log_through_logging
    # The SDK's own level decides what is written: its logger must not be cut again by the root's level.
    logging.getLogger(SDK_LOGGER_NAME).setLevel(TRACE_LEVEL)
    return True
