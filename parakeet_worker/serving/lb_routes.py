"""RunPod load-balancing mode's job route: ``POST /transcribe``.

The body is a batch job's ``input`` object (the README's "Job input"; ``{"input": {...}}`` as in test_input.json is
taken too) and the answer is the job's output object, as a queue endpoint's ``/runsync`` would hold it in
``output``. A refused request answers 4xx/5xx with ``{"error", "error_code", "success": false}``: 400 bad input,
401 no or wrong token (``Authorization: Bearer``), 413 over :data:`MAX_BODY_BYTES`, 415/422 audio that cannot be
transcribed, 429 an address that keeps sending wrong tokens, 503 not ready or overloaded. Audio URLs are fetched
behind the same guard as queue jobs' (no private addresses unless ``PARAKEET_ALLOW_PRIVATE_URLS``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any, cast

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from parakeet_worker.errors import InputError, ParakeetError
from parakeet_worker.serving.batch import BatchService, error_output, http_status
from parakeet_worker.serving.faces import FaceContext
from parakeet_worker.serving.openai_rest import MAX_REQUEST_BYTES, limited_body, refusal, with_request_id

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = MAX_REQUEST_BYTES
"""Largest body: RunPod load-balancing endpoints' 30 MB payload (about 22 MB of audio as base64)."""


def _error(status: int, message: str, code: str, retry_after_s: float | None = None) -> JSONResponse:
    headers = {"Retry-After": str(math.ceil(retry_after_s))} if retry_after_s else None
    return JSONResponse(error_output(message, code), status, headers=headers)


async def _job_input(request: Request) -> object:
    """The JSON body, read at most :data:`MAX_BODY_BYTES`, parsed off the event loop."""
    body = bytearray()
    async for chunk in limited_body(request, MAX_BODY_BYTES):
        body += chunk
    try:
        raw = await asyncio.to_thread(json.loads, bytes(body))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"the body is not JSON ({exc}); send the job's input object, e.g. "
                         '{"audio_url": "https://..."}') from None
    except RecursionError:
        raise InputError("the body's JSON is nested too deeply") from None
    if isinstance(raw, dict) and set(raw) == {"input"} and isinstance(raw["input"], dict):
        return raw["input"]  # a whole job as in test_input.json: its input
    return raw


def routes(ctx: FaceContext) -> list[BaseRoute]:
    """``POST /transcribe``."""

    transcribe = with_request_id(lambda request: _transcribe(request))

    async def _transcribe(request: Request) -> Response:
        refused = refusal(ctx, request)
        if refused is not None:
            return _error(refused.status, refused.message, "unauthorized" if refused.status == 401 else refused.code,
                          refused.retry_after_s)
        batch = cast(BatchService, ctx.batch)  # refusal() answered 503 without one
        started = time.monotonic()
        try:
            job_input = await _job_input(request)
        except ParakeetError as exc:
            batch.refused(exc.code, started)
            return _error(http_status(exc.code), str(exc), exc.code)
        except ClientDisconnect:
            logger.info("the client disconnected while sending its job")
            return Response(status_code=499)
        try:
            output = await batch.transcribe_job(job_input)
        except ParakeetError as exc:
            status = http_status(exc.code)
            return JSONResponse(error_output(exc), status, headers={"Retry-After": "5"} if status == 503 else None)
        if output.get("success") is False:  # every input of an `inputs` list failed: the first one's status
            first: dict[str, Any] = output["results"][0]
            return JSONResponse({**output, "error_code": first["error_code"]}, http_status(first["error_code"]))
        return JSONResponse(output)

    return [Route("/transcribe", transcribe, methods=["POST"])]


__all__ = ["MAX_BODY_BYTES", "routes"]
