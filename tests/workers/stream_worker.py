"""A tiny real RunPod worker with a generator handler, for the fake-platform streaming tests.

Input keys: ``chunks`` (a list, yielded one by one, ``gap_s`` apart) and ``raise`` (raised as ``ValueError``
after the chunks). The final output is the list of chunks (``return_aggregate_stream``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import runpod

DEFAULT_GAP_S = 0.05


async def handler(job: dict[str, Any]) -> AsyncIterator[Any]:
    """Yield each of ``job["input"]["chunks"]``."""
    job_input: dict[str, Any] = job["input"]
    for chunk in job_input.get("chunks", []):
        yield chunk
        await asyncio.sleep(float(job_input.get("gap_s", DEFAULT_GAP_S)))
    if "raise" in job_input:
        raise ValueError(job_input["raise"])


if __name__ == "__main__":
    # force: importing runpod already configured the root logger (runpod/serverless/utils/rp_upload.py).
    logging.basicConfig(level=logging.INFO, format="%(levelname)-7s| %(name)s | %(message)s", force=True)
    runpod.serverless.start({"handler": handler, "return_aggregate_stream": True})
