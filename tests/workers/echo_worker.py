"""A tiny real RunPod worker for the fake-platform tests: it echoes its input and misbehaves on request.

Input keys (all optional): ``echo`` (returned as is), ``progress`` (a list of updates sent with
``progress_update``, ``progress_gap_s`` apart), ``sleep`` (seconds), ``error`` (returned as ``{"error": ...}``),
``raise`` (raised as ``ValueError``). Environment: ``ECHO_CONCURRENCY`` (jobs held at once, default 1).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import runpod

log = logging.getLogger("echo_worker")

CONCURRENCY = int(os.environ.get("ECHO_CONCURRENCY", "1"))
DEFAULT_PROGRESS_GAP_S = 0.2


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """Echo ``job["input"]["echo"]`` after doing whatever else the input asks for."""
    job_input: dict[str, Any] = job["input"]
    started_at_s = time.time()
    try:
        for update in job_input.get("progress", []):
            runpod.serverless.progress_update(job, update)
            # Each update is posted from its own thread, so only a gap keeps them in order on the wire.
            await asyncio.sleep(float(job_input.get("progress_gap_s", DEFAULT_PROGRESS_GAP_S)))
        await asyncio.sleep(float(job_input.get("sleep", 0.0)))
    except asyncio.CancelledError:
        log.info("echo_worker: job %s cancelled", job["id"])
        raise
    if "raise" in job_input:
        raise ValueError(job_input["raise"])
    if "error" in job_input:
        return {"error": job_input["error"]}
    return {
        "job_id": job["id"],
        "echo": job_input.get("echo"),
        "started_at_s": started_at_s,
        "finished_at_s": time.time(),
    }


def concurrency_modifier(current: int) -> int:
    """Hold ``ECHO_CONCURRENCY`` jobs at once, whatever the SDK's current value."""
    del current
    return CONCURRENCY


if __name__ == "__main__":
    # force: importing runpod already configured the root logger (runpod/serverless/utils/rp_upload.py).
    logging.basicConfig(level=logging.INFO, format="%(levelname)-7s| %(name)s | %(message)s", force=True)
    runpod.serverless.start({"handler": handler, "concurrency_modifier": concurrency_modifier})
