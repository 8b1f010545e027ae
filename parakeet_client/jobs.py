"""RunPod's job API from the client's side: submit, poll, cancel; batch job inputs; the ready announcement of a
websocket job (docs/PROTOCOL.md, "Getting a session")."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from parakeet_client.errors import ServerError, UsageError
from parakeet_client.stream import build_ws_url

logger = logging.getLogger("client")

RUNPOD_API_BASE = "https://api.runpod.ai/v2"
RUN_BODY_LIMIT_BYTES = 10 * 1000 * 1000  # RunPod refuses larger request bodies on /run ...
RUNSYNC_BODY_LIMIT_BYTES = 20 * 1000 * 1000  # ... and on /runsync
HTTP_CONNECT_TIMEOUT_S = 10.0
HTTP_READ_TIMEOUT_S = 60.0
POLL_FIRST_S, POLL_MAX_S = 0.5, 3.0
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
URL_SCHEMES = ("http", "https", "s3")


@dataclass(frozen=True)
class JobApi:
    """RunPod's job API (``/run``, ``/runsync``, ``/status/<id>``, ``/cancel/<id>``) on an endpoint, or the
    SDK's local ``--rp_serve_api`` copy of it (``local``: POST-only, no cancel, no progress updates)."""

    base_url: str
    api_key: str | None = None
    local: bool = False

    @classmethod
    def endpoint(cls, endpoint_id: str, api_base: str = RUNPOD_API_BASE) -> JobApi:
        key = os.environ.get("RUNPOD_API_KEY", "").strip()
        if not key:
            raise UsageError("set RUNPOD_API_KEY to your RunPod API key (Settings > API Keys) to use --endpoint-id")
        if not endpoint_id or "/" in endpoint_id:
            raise UsageError(f"--endpoint-id must be the endpoint's id (as in api.runpod.ai/v2/<id>), got "
                             f"{endpoint_id!r}")
        return cls(f"{_http_base(api_base, '--api-base')}/{endpoint_id}", key)

    @classmethod
    def local_server(cls, api_url: str) -> JobApi:
        return cls(_http_base(api_url, "--api-url"), os.environ.get("RUNPOD_API_KEY") or None, local=True)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              read_timeout_s: float = HTTP_READ_TIMEOUT_S) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        logger.debug("%s %s", method, url)
        try:
            response = requests.request(method, url, json=body, headers=headers,
                                        timeout=(HTTP_CONNECT_TIMEOUT_S, read_timeout_s))
        except requests.ConnectionError as exc:
            reason = getattr(exc.args[0], "reason", exc) if exc.args else exc
            raise ServerError(f"could not reach {self.base_url} (is it running?): {reason}") from exc
        except requests.RequestException as exc:
            raise ServerError(f"{method} {url} failed: {exc}") from exc
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code >= 400:
            detail = data.get("error") or data.get("detail") if isinstance(data, dict) else None
            hint = {401: " (check RUNPOD_API_KEY)", 403: " (check RUNPOD_API_KEY)",
                    404: " (check the endpoint id / URL)",
                    413: " (the request is too large: send the audio by URL)"}.get(response.status_code, "")
            raise ServerError(f"{method} {url}: HTTP {response.status_code}{hint}: "
                              f"{detail or response.text[:300] or response.reason}")
        if not isinstance(data, dict):
            raise ServerError(f"{method} {url}: expected a JSON object, got {response.text[:300]!r}")
        return data

    def run(self, job_input: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/run", {"input": job_input})

    def runsync(self, job_input: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        return self._call("POST", "/runsync", {"input": job_input}, read_timeout_s=timeout_s)

    def status(self, job_id: str, read_timeout_s: float = HTTP_READ_TIMEOUT_S) -> dict[str, Any]:
        # the local server runs a /run job when its status is first asked for, and answers only POST
        return self._call("POST" if self.local else "GET", f"/status/{job_id}", {} if self.local else None,
                          read_timeout_s=read_timeout_s)

    def cancel(self, job_id: str) -> None:
        if self.local:
            return
        with contextlib.suppress(ServerError):
            self._call("POST", f"/cancel/{job_id}")
            logger.warning("cancelled job %s", job_id)

    def wait(self, job_id: str, timeout_s: float, on_status: Callable[[dict[str, Any]], bool | None],
             first: dict[str, Any] | None = None) -> dict[str, Any]:
        """Poll until the job ends; ``on_status`` sees every answer and may return True to stop waiting early."""
        deadline = time.monotonic() + timeout_s
        delay = POLL_FIRST_S
        status = first
        while True:
            if status is not None:
                if on_status(status) or status.get("status") in TERMINAL_STATES:
                    return status
                if time.monotonic() > deadline:
                    raise ServerError(f"job {job_id} is still {status.get('status')} after {timeout_s:.0f} s")
                time.sleep(delay)
                delay = min(POLL_MAX_S, delay * 1.5)
            status = self.status(job_id, read_timeout_s=max(HTTP_READ_TIMEOUT_S, deadline - time.monotonic()))


def _http_base(url: str, flag: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{flag} must be an http(s) URL such as http://127.0.0.1:8000, got {url!r}")
    return url.strip().rstrip("/")


def job_error(status: dict[str, Any]) -> str:
    """The reason a job failed, readable: the worker's own message, not the SDK's JSON wrapping of it."""
    error: Any = status.get("error")
    output = status.get("output")
    if not error and isinstance(output, dict):
        error = output.get("error")
    if isinstance(error, str):
        with contextlib.suppress(ValueError):
            decoded = json.loads(error)
            if isinstance(decoded, dict):
                error = decoded
    if isinstance(error, dict):  # an exception in the handler: {"error_type", "error_message", "error_traceback"}
        error = f"{error.get('error_type', 'error')}: {error.get('error_message', error)}"
    code = output.get("error_code") if isinstance(output, dict) else None
    return f"{error or 'no reason given'}" + (f" [{code}]" if code else "")


# --- batch jobs ----------------------------------------------------------------------------------------------------
def batch_input(source: str, *, timestamps: bool, output_format: str | None, chunk_long_audio: bool,
                chunk_duration: float | None) -> dict[str, Any]:
    """The job input for a local file (sent as base64) or a URL (fetched by the worker)."""
    job: dict[str, Any] = {}
    scheme = urlsplit(source).scheme.lower()
    if "://" in source:
        if scheme not in URL_SCHEMES:
            raise UsageError(f"the worker fetches http://, https:// and s3:// URLs, not {scheme}:// ({source})")
        job["audio_url"] = source
    else:
        path = Path(source)
        if not path.is_file():
            raise UsageError(f"no such file: {source}" if not path.exists() else f"not a file: {source}")
        data = path.read_bytes()
        if not data:
            raise UsageError(f"{source} is empty")
        job["audio_base64"] = base64.b64encode(data).decode("ascii")
    if timestamps:
        job["timestamps"] = True
    if output_format:
        job["output_format"] = output_format
    if chunk_long_audio:
        job["chunk_long_audio"] = True
    if chunk_duration is not None:
        if not chunk_long_audio:
            raise UsageError("--chunk-duration needs --chunk-long-audio")
        job["chunk_duration"] = chunk_duration
    return job


def warn_if_too_large(job_input: dict[str, Any], sync: bool) -> None:
    size = len(json.dumps({"input": job_input}))
    limit = RUNSYNC_BODY_LIMIT_BYTES if sync else RUN_BODY_LIMIT_BYTES
    if size > limit:
        logger.warning("the request is %.1f MB; RunPod refuses bodies over %d MB on %s: upload the file and pass "
                       "its URL instead (e.g. an S3 pre-signed URL)", size / 1e6, limit // 1_000_000,
                       "/runsync" if sync else "/run")


# --- websocket jobs ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SessionReady:
    """The ``status: ready`` progress update of an ``action: websocket`` job (docs/PROTOCOL.md)."""

    ws_url: str
    address: str  # "public": RunPod's public IP and mapped port; "internal": reachable only beside the worker
    protocol: str | None
    limits: dict[str, Any]
    raw: dict[str, Any]


def find_ready(status: dict[str, Any]) -> SessionReady | None:
    """The ready announcement in a ``/status`` (or ``/stream``) answer, or None while there is none yet."""
    candidates: list[Any] = [status.get("output")]
    candidates += [chunk.get("output") for chunk in status.get("stream") or [] if isinstance(chunk, dict)]
    flat: list[Any] = []
    for candidate in candidates:
        flat.extend(candidate if isinstance(candidate, list) else [candidate])
    for candidate in reversed(flat):
        if isinstance(candidate, str):
            try:
                candidate = json.loads(candidate)
            except ValueError:
                continue
        if isinstance(candidate, dict) and candidate.get("status") == "ready":
            return parse_ready(candidate)
    return None


def parse_ready(ready: dict[str, Any]) -> SessionReady:
    url = ready.get("ws_url")
    token = ready.get("token")
    if not url:
        host, port = ready.get("host"), ready.get("port")
        if not host or not port:
            raise ServerError(f"the session's ready message names no ws_url (nor host and port): {ready}")
        host = f"[{host}]" if ":" in str(host) and not str(host).startswith("[") else host  # IPv6
        url = f"ws://{host}:{port}/"
    try:
        url = build_ws_url(str(url), str(token) if token and "token=" not in str(url) else None)
    except UsageError as exc:
        raise ServerError(f"the session's ready message has an unusable ws_url: {exc}") from exc
    limits = ready.get("limits") if isinstance(ready.get("limits"), dict) else {}
    return SessionReady(url, str(ready.get("address", "unknown")), ready.get("protocol"), limits or {}, ready)
