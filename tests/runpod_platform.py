"""A local stand-in for the RunPod platform side of the serverless job API, as spoken by the runpod SDK 1.12.

Tests start :class:`FakeRunpodPlatform` on a localhost port, launch a real worker script with
:func:`run_worker` (which hands it the platform's environment), and so drive the SDK's real production job
loop (``runpod.serverless.start`` -> ``JobScaler``): long-poll job-take, batch job-take, job-done, job-stream,
per-job stop and heartbeat pings.

Wire format, as the SDK 1.12 uses it (``runpod/serverless/modules/rp_job.py``, ``rp_http.py``, ``rp_ping.py``,
``rp_scale.py``, ``rp_progress.py``). Every request carries ``Authorization: <RUNPOD_AI_API_KEY>``; every URL
keeps the query string of its environment variable, to which the SDK appends its own parameters.

- ``GET job-take/{worker}?...&job_in_progress=0|1``: long-poll for one job. 200 ``{"id": ..., "input": ...}``,
  or 204 when none came.
- ``GET job-take-batch/{worker}?...&batch_size=N&job_in_progress=0|1``: the same for up to N jobs, answered
  with a JSON list. The SDK uses it whenever it wants more than one job.
- ``GET job-stop/{worker}?...``: long-poll for stop signals. 200 ``{"jobsToStop": [id, ...]}`` or 204.
- ``POST job-done/{pod}/{job}?...&isStream=true|false``: a JSON body (labelled form-urlencoded). Either a
  progress update ``{"status": "IN_PROGRESS", "output": ...}`` or the final ``{"output": ...}`` /
  ``{"error": "..."}`` (``isStream=true`` on the final post of a generator handler).
- ``POST job-stream/{pod}/{job}?...&isStream=false``: one chunk of a generator handler, ``{"output": chunk}``.
- ``GET ping/{pod}?...&job_id=a,b&runpod_version=V``: the heartbeat, listing the in-progress job ids
  (``job_id`` absent when idle) every ``RUNPOD_PING_INTERVAL`` ms.

The SDK substitutes ``$ID`` with the worker id in the job-take URL only (the job-stop URL is derived from it);
the other URLs take ``$RUNPOD_POD_ID`` for the worker and ``$ID`` for the job.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent

LONG_POLL_HOLD_S = 1.0  # how long job-take / job-stop hold an empty poll open; bounds a worker's SIGTERM exit
PING_INTERVAL_MS = 1000  # the SDK floors this to whole seconds: below 1000 it pings in a tight loop
WORKER_STOP_TIMEOUT_S = 10.0
LOG_TAIL_CHARS = 4000

PostKind = Literal["progress", "result", "stream"]


class JobState(enum.StrEnum):
    """Where a job stands on the platform side."""

    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class Post:
    """One POST a worker made about a job (job-done or job-stream)."""

    kind: PostKind
    job_id: str
    payload: Any
    is_stream: bool | None
    pod_id: str
    request_id: str | None  # the X-Request-ID header
    at_s: float  # time.monotonic() on arrival


@dataclass(frozen=True)
class Ping:
    """One heartbeat GET."""

    pod_id: str
    job_ids: tuple[str, ...]
    runpod_version: str | None
    params: Mapping[str, str]
    at_s: float


@dataclass(frozen=True)
class TakeRequest:
    """One answered job-take poll (``batch_size`` is None for the single-job route)."""

    worker_id: str
    batch_size: int | None
    job_in_progress: bool
    job_ids: tuple[str, ...]
    at_s: float


@dataclass
class _Job:
    id: str
    input: Any
    state: JobState = JobState.QUEUED
    worker_id: str | None = None
    progress: list[Any] = field(default_factory=list)
    stream: list[Any] = field(default_factory=list)
    result: dict[str, Any] | None = None
    posts: list[Post] = field(default_factory=list)


@dataclass(frozen=True)
class _Reply:
    status: HTTPStatus
    body: Any = None  # JSON-serialisable; None sends no body
    on_send_failed: Callable[[], None] | None = None


class _PlatformHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    platform: FakeRunpodPlatform


class _PlatformRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as aiohttp and requests expect from the real API
    server: _PlatformHTTPServer

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self.server.platform._serve(self, "GET")

    def do_POST(self) -> None:  # noqa: N802
        self.server.platform._serve(self, "POST")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
        log.debug("fake platform: " + format, *args)


class FakeRunpodPlatform:
    """The platform's side of the serverless job API, on ``127.0.0.1`` with a free port.

    Jobs are queued with :meth:`submit`; a worker process takes them over the job-take long-poll, and
    everything it posts back (progress, stream chunks, the final result) is recorded per job id. All state is
    guarded by one condition variable, so the ``wait_for_*`` methods wake as soon as a request changes it.
    """

    def __init__(
        self,
        *,
        endpoint_id: str = "fake-endpoint",
        pod_id: str = "fake-pod",
        api_key: str = "fake-api-key",
        long_poll_hold_s: float = LONG_POLL_HOLD_S,
        ping_interval_ms: int = PING_INTERVAL_MS,
    ) -> None:
        self.endpoint_id = endpoint_id
        self.pod_id = pod_id
        self.api_key = api_key
        self.long_poll_hold_s = long_poll_hold_s
        self.ping_interval_ms = ping_interval_ms
        self._changed = threading.Condition()
        self._jobs: dict[str, _Job] = {}
        self._queue: deque[str] = deque()
        self._pending_stops: dict[str, list[str]] = {}  # worker id -> job ids to stop
        self._pings: list[Ping] = []
        self._takes: list[TakeRequest] = []
        self._polling_workers: list[str] = []  # worker ids in the order of their first job-take poll
        self._open_takes: dict[int, int] = {}  # job-take polls being held open: poll token -> jobs asked for
        self._poll_tokens = itertools.count()
        self._protocol_errors: list[str] = []
        self._closing = False
        self._server: _PlatformHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> FakeRunpodPlatform:
        """Bind a free localhost port and serve in a background thread."""
        server = _PlatformHTTPServer(("127.0.0.1", 0), _PlatformRequestHandler)
        server.platform = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fake-runpod-platform", daemon=True)
        self._thread.start()
        log.info("fake RunPod platform listening on %s", self.base_url)
        return self

    def stop(self) -> None:
        """Release held long-polls and stop serving."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeRunpodPlatform:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` of the running server."""
        if self._server is None:
            raise RuntimeError("FakeRunpodPlatform is not started: call start() or use it as a context manager")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def env(self, *, fitness_checks: bool = False, log_level: str = "INFO") -> dict[str, str]:
        """The environment a worker process needs to run the SDK's production loop against this server.

        ``fitness_checks=False`` sets the SDK's skip switches: its system check dials 8.8.8.8:53 and kills the
        worker when that fails, which it does in a sandbox.
        """
        api = f"{self.base_url}/v2/{self.endpoint_id}"
        query = "?gpu=FAKE+GPU"  # the SDK appends "&..." to these URLs, so each must already carry a query
        env = {
            "RUNPOD_WEBHOOK_GET_JOB": f"{api}/job-take/$ID{query}",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{api}/job-done/$RUNPOD_POD_ID/$ID{query}",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{api}/job-stream/$RUNPOD_POD_ID/$ID{query}",
            "RUNPOD_WEBHOOK_PING": f"{api}/ping/$RUNPOD_POD_ID{query}",
            "RUNPOD_PING_INTERVAL": str(self.ping_interval_ms),
            "RUNPOD_POD_ID": self.pod_id,
            "RUNPOD_POD_HOSTNAME": f"{self.pod_id}-host",
            "RUNPOD_ENDPOINT_ID": self.endpoint_id,
            "RUNPOD_AI_API_KEY": self.api_key,
            "RUNPOD_LOG_LEVEL": log_level,
        }
        if not fitness_checks:
            env["RUNPOD_SKIP_AUTO_SYSTEM_CHECKS"] = "true"
            env["RUNPOD_SKIP_GPU_CHECK"] = "true"
        return env

    # --- the caller's side --------------------------------------------------------------------------------------
    def submit(self, input: Any, job_id: str | None = None) -> str:  # noqa: A002 (the API's field name)
        """Queue a job (what ``/run`` does) and return its id."""
        return self.submit_many([input], [job_id] if job_id else None)[0]

    def submit_many(self, inputs: Sequence[Any], job_ids: Sequence[str] | None = None) -> list[str]:
        """Queue several jobs atomically, so one batch job-take poll can receive them all."""
        ids = list(job_ids) if job_ids else [f"job-{uuid.uuid4().hex[:12]}" for _ in inputs]
        if len(ids) != len(inputs):
            raise ValueError(f"{len(inputs)} inputs but {len(ids)} job ids")
        with self._changed:
            if reused := [job_id for job_id in ids if job_id in self._jobs] or len(set(ids)) != len(ids):
                raise ValueError(f"job ids must be new and distinct: {ids} (already submitted: {reused})")
            for job_id, job_input in zip(ids, inputs, strict=True):
                self._jobs[job_id] = _Job(id=job_id, input=job_input)
                self._queue.append(job_id)
            self._changed.notify_all()
        return ids

    def cancel(self, job_id: str) -> JobState:
        """Cancel a job (what ``/cancel`` does) and return the state it was in.

        A queued job is dropped from the queue. A running job is marked CANCELLED and its id is handed to the
        worker that holds it on that worker's next job-stop poll; the SDK then cancels the handler's task
        (``asyncio.CancelledError``) and posts nothing for the job. A finished job is left as it is.
        """
        with self._changed:
            job = self._job(job_id)
            previous = job.state
            if previous is JobState.QUEUED:
                self._queue.remove(job_id)
                job.state = JobState.CANCELLED
            elif previous is JobState.IN_PROGRESS:
                job.state = JobState.CANCELLED
                assert job.worker_id is not None
                self._pending_stops.setdefault(job.worker_id, []).append(job_id)
            self._changed.notify_all()
            return previous

    def state(self, job_id: str) -> JobState:
        """The job's current state."""
        with self._changed:
            return self._job(job_id).state

    def result(self, job_id: str) -> dict[str, Any] | None:
        """The final job-done payload, or None while there is none."""
        with self._changed:
            return self._job(job_id).result

    def wait_for_result(self, job_id: str, timeout: float) -> dict[str, Any]:
        """Block until the worker posts the job's final payload (``{"output": ...}`` or ``{"error": ...}``)."""
        with self._changed:
            job = self._job(job_id)
            self._wait(lambda: job.result is not None, timeout, f"a result for job {job_id}")
            assert job.result is not None
            return job.result

    def progress(self, job_id: str) -> list[Any]:
        """The ``output`` of each IN_PROGRESS update posted for the job while it ran, in arrival order.

        The SDK posts each update from a new thread, so updates sent back to back can arrive out of order and
        after the final result; late ones are left out here, as the platform drops them (:meth:`posts` has all).
        """
        with self._changed:
            return list(self._job(job_id).progress)

    def wait_for_progress(self, job_id: str, predicate: Callable[[list[Any]], bool], timeout: float) -> list[Any]:
        """Block until ``predicate(progress(job_id))`` holds; return that progress list."""
        with self._changed:
            job = self._job(job_id)
            self._wait(lambda: predicate(list(job.progress)), timeout, f"progress of job {job_id}")
            return list(job.progress)

    def wait_for_posts(self, job_id: str, predicate: Callable[[list[Post]], bool], timeout: float) -> list[Post]:
        """Block until ``predicate(posts(job_id))`` holds; return those posts."""
        with self._changed:
            job = self._job(job_id)
            self._wait(lambda: predicate(list(job.posts)), timeout, f"posts for job {job_id}")
            return list(job.posts)

    def stream_chunks(self, job_id: str) -> list[Any]:
        """The ``output`` of each job-stream post for the job, in arrival order."""
        with self._changed:
            return list(self._job(job_id).stream)

    def posts(self, job_id: str) -> list[Post]:
        """Every job-done / job-stream request made for the job, in arrival order."""
        with self._changed:
            return list(self._job(job_id).posts)

    def pings(self) -> list[Ping]:
        """Every heartbeat received so far."""
        with self._changed:
            return list(self._pings)

    def ping_count(self) -> int:
        """How many heartbeats have arrived."""
        with self._changed:
            return len(self._pings)

    def wait_for_ping(self, predicate: Callable[[Ping], bool], timeout: float) -> Ping:
        """Block until a heartbeat satisfying ``predicate`` arrives (earlier ones count) and return it."""
        with self._changed:
            self._wait(lambda: any(predicate(p) for p in self._pings), timeout, "a matching ping")
            return next(p for p in self._pings if predicate(p))

    def takes(self) -> list[TakeRequest]:
        """Every answered job-take poll, in order (empty polls included)."""
        with self._changed:
            return list(self._takes)

    def wait_for_worker(self, timeout: float) -> str:
        """Block until some worker has opened a job-take poll; return its worker id."""
        with self._changed:
            self._wait(lambda: bool(self._polling_workers), timeout, "a worker to poll job-take")
            return self._polling_workers[0]

    def wait_for_open_take(self, min_jobs: int, timeout: float) -> None:
        """Block until a job-take poll asking for at least ``min_jobs`` jobs is being held open, so that jobs
        submitted now (with :meth:`submit_many`) reach the worker in one answer."""
        with self._changed:
            self._wait(
                lambda: any(wanted >= min_jobs for wanted in self._open_takes.values()),
                timeout,
                f"a job-take poll asking for {min_jobs} or more jobs",
            )

    def protocol_errors(self) -> list[str]:
        """Requests the real platform would reject or that show a worker bug (wrong key, unknown route,
        malformed body, a post for a job that is not running, ...). Tests assert this stays empty."""
        with self._changed:
            return list(self._protocol_errors)

    # --- internals ----------------------------------------------------------------------------------------------
    def _job(self, job_id: str) -> _Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise KeyError(f"no job {job_id!r} was submitted to this platform") from None

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait on the condition (its lock held by the caller) until ``predicate`` holds."""
        if not self._changed.wait_for(predicate, timeout=timeout):
            states = {job_id: job.state.value for job_id, job in self._jobs.items()}
            raise TimeoutError(
                f"waited {timeout:.1f} s for {what}; jobs: {states}; pings: {len(self._pings)}; "
                f"job-take polls: {len(self._takes)}; protocol errors: {self._protocol_errors}"
            )

    def _error(self, message: str) -> None:
        log.warning("fake platform: %s", message)
        self._protocol_errors.append(message)

    def _serve(self, request: _PlatformRequestHandler, method: str) -> None:
        url = urlsplit(request.path)
        params = {key: values[-1] for key, values in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        body = b""
        if method == "POST":
            body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        auth = request.headers.get("Authorization")
        with self._changed:
            if auth != self.api_key:
                self._error(f"{method} {url.path}: Authorization {auth!r} is not the platform's api key")
                reply = _Reply(HTTPStatus.UNAUTHORIZED)
            else:
                reply = self._route(method, parts, params, body, request.headers.get("X-Request-ID"))
        self._send(request, reply)

    def _route(
        self, method: str, parts: list[str], params: dict[str, str], body: bytes, request_id: str | None
    ) -> _Reply:
        path = "/" + "/".join(parts)
        if len(parts) < 4 or parts[0] != "v2" or parts[1] != self.endpoint_id:
            self._error(f"{method} {path}: not a route of endpoint {self.endpoint_id}")
            return _Reply(HTTPStatus.NOT_FOUND)
        route, args = parts[2], parts[3:]
        if method == "GET" and route in ("job-take", "job-take-batch") and len(args) == 1:
            return self._take(args[0], route == "job-take-batch", params)
        if method == "GET" and route == "job-stop" and len(args) == 1:
            return self._stop_signals(args[0])
        if method == "GET" and route == "ping" and len(args) == 1:
            return self._ping(args[0], params)
        if method == "POST" and route in ("job-done", "job-stream") and len(args) == 2:
            return self._post(route, args[0], args[1], params, body, request_id)
        self._error(f"{method} {path}: unknown route")
        return _Reply(HTTPStatus.NOT_FOUND)

    def _take(self, worker_id: str, batch: bool, params: dict[str, str]) -> _Reply:
        batch_size = int(params.get("batch_size", "1")) if batch else None
        wanted = batch_size or 1
        if worker_id not in self._polling_workers:
            self._polling_workers.append(worker_id)
        token = next(self._poll_tokens)
        self._open_takes[token] = wanted
        self._changed.notify_all()
        try:
            self._changed.wait_for(lambda: bool(self._queue) or self._closing, timeout=self.long_poll_hold_s)
        finally:
            del self._open_takes[token]
        taken: list[_Job] = []
        while self._queue and len(taken) < wanted:
            job = self._jobs[self._queue.popleft()]
            job.state = JobState.IN_PROGRESS
            job.worker_id = worker_id
            taken.append(job)
        self._takes.append(
            TakeRequest(
                worker_id=worker_id,
                batch_size=batch_size,
                job_in_progress=params.get("job_in_progress") == "1",
                job_ids=tuple(job.id for job in taken),
                at_s=time.monotonic(),
            )
        )
        self._changed.notify_all()
        if not taken:
            return _Reply(HTTPStatus.NO_CONTENT)
        wire = [{"id": job.id, "input": job.input} for job in taken]

        def requeue() -> None:
            with self._changed:
                for job in reversed(taken):
                    if job.state is JobState.IN_PROGRESS:
                        job.state, job.worker_id = JobState.QUEUED, None
                        self._queue.appendleft(job.id)
                self._changed.notify_all()

        return _Reply(HTTPStatus.OK, wire if batch else wire[0], on_send_failed=requeue)

    def _stop_signals(self, worker_id: str) -> _Reply:
        self._changed.wait_for(
            lambda: bool(self._pending_stops.get(worker_id)) or self._closing, timeout=self.long_poll_hold_s
        )
        job_ids = self._pending_stops.pop(worker_id, [])
        if not job_ids:
            return _Reply(HTTPStatus.NO_CONTENT)

        def redeliver() -> None:
            with self._changed:
                self._pending_stops.setdefault(worker_id, [])[:0] = job_ids
                self._changed.notify_all()

        return _Reply(HTTPStatus.OK, {"jobsToStop": job_ids}, on_send_failed=redeliver)

    def _ping(self, pod_id: str, params: dict[str, str]) -> _Reply:
        job_ids = tuple(job_id for job_id in params.get("job_id", "").split(",") if job_id)
        self._pings.append(Ping(pod_id, job_ids, params.get("runpod_version"), params, time.monotonic()))
        if params.get("status") == "unhealthy":
            self._error(f"worker {pod_id} reported a failed fitness check: {params}")
        self._changed.notify_all()
        return _Reply(HTTPStatus.OK, {})

    def _post(
        self,
        route: str,
        pod_id: str,
        job_id: str,
        params: dict[str, str],
        body: bytes,
        request_id: str | None,
    ) -> _Reply:
        job = self._jobs.get(job_id)
        if job is None:
            self._error(f"POST {route} for unknown job {job_id!r}")
            return _Reply(HTTPStatus.NOT_FOUND)
        try:
            payload = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            self._error(f"POST {route} for job {job_id}: body is not JSON ({err}): {body[:200]!r}")
            return _Reply(HTTPStatus.BAD_REQUEST)
        if not isinstance(payload, dict):
            self._error(f"POST {route} for job {job_id}: body is not a JSON object: {payload!r}")
            return _Reply(HTTPStatus.BAD_REQUEST)
        is_stream = {"true": True, "false": False}.get(params.get("isStream", ""))
        kind: PostKind
        if route == "job-stream":
            kind = "stream"
        elif payload.get("status") == "IN_PROGRESS":
            kind = "progress"
        else:
            kind = "result"
        job.posts.append(Post(kind, job_id, payload, is_stream, pod_id, request_id, time.monotonic()))
        self._changed.notify_all()
        if job.state is not JobState.IN_PROGRESS:
            # The real platform discards these; a result for a cancelled job means the handler swallowed the
            # CancelledError. A progress update may trail the result (the SDK posts each from its own thread).
            if kind != "progress":
                self._error(f"{kind} posted for job {job_id} in state {job.state.value}: {payload!r}")
            return _Reply(HTTPStatus.OK, {})
        if kind == "stream":
            job.stream.append(payload.get("output"))
        elif kind == "progress":
            job.progress.append(payload.get("output"))
        else:
            job.result = payload
            job.state = JobState.FAILED if "error" in payload else JobState.COMPLETED
        return _Reply(HTTPStatus.OK, {})

    def _send(self, request: _PlatformRequestHandler, reply: _Reply) -> None:
        data = b"" if reply.body is None else json.dumps(reply.body).encode("utf-8")
        try:
            request.send_response(reply.status)
            if reply.body is not None:
                request.send_header("Content-Type", "application/json")
            if reply.status is not HTTPStatus.NO_CONTENT:  # a 204 carries no body and no length
                request.send_header("Content-Length", str(len(data)))
            request.end_headers()
            request.wfile.write(data)
            request.wfile.flush()
        except OSError as err:
            log.warning("fake platform: could not answer %s (%s)", request.path, err)
            if reply.on_send_failed is not None:
                reply.on_send_failed()


# --- worker processes ------------------------------------------------------------------------------------------
@dataclass
class WorkerProcess:
    """A worker launched by :func:`run_worker`: the process and its captured stdout+stderr."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        """Everything the worker has written so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, max_chars: int = LOG_TAIL_CHARS) -> str:
        """The end of the log, for assertion messages."""
        return self.log_text()[-max_chars:]

    def wait_for_log(self, text: str, timeout: float) -> None:
        """Block until ``text`` appears in the log; fail early if the worker exits first."""
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"worker exited ({self.process.returncode}) before logging {text!r}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:.1f} s for {text!r} in the worker log:\n{self.log_tail()}")
            time.sleep(0.05)

    def is_alive(self) -> bool:
        """Whether the worker's main process is still running."""
        return self.process.poll() is None

    def stop(self, timeout_s: float = WORKER_STOP_TIMEOUT_S) -> int:
        """SIGTERM the main process (as ``docker stop`` does), SIGKILL it after ``timeout_s``, then kill what
        is left of its process group (the SDK's heartbeat process). Returns the main process's exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("worker %d ignored SIGTERM for %.1f s; killing it", self.process.pid, timeout_s)
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session: only processes it started
        return self.process.returncode


@contextlib.contextmanager
def run_worker(
    script: str | Path,
    platform: FakeRunpodPlatform,
    extra_env: Mapping[str, str] | None = None,
    *,
    log_dir: Path | None = None,
    stop_timeout_s: float = WORKER_STOP_TIMEOUT_S,
) -> Iterator[WorkerProcess]:
    """Run ``python -u <script>`` (a path, or a module name for ``-m``) from the repository root with the
    platform's environment plus ``extra_env``; stop it on exit (see :meth:`WorkerProcess.stop`).

    Inherited ``RUNPOD_*`` variables are dropped so the worker sees only this platform.
    """
    target = Path(script)
    is_path = target.suffix == ".py" or (REPO_ROOT / target).exists()
    command = [sys.executable, "-u", str(target)] if is_path else [sys.executable, "-u", "-m", str(script)]
    env = {key: value for key, value in os.environ.items() if not key.startswith("RUNPOD_")}
    env.update(platform.env())
    env.update(extra_env or {})
    env["PYTHONUNBUFFERED"] = "1"
    directory = log_dir if log_dir is not None else Path(tempfile.mkdtemp(prefix="runpod-worker-"))
    log_path = directory / f"{target.stem}-{uuid.uuid4().hex[:8]}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = WorkerProcess(process, log_path)
    log.info("started worker %s (pid %d), log at %s", " ".join(command[2:]), process.pid, log_path)
    try:
        yield worker
    finally:
        code = worker.stop(stop_timeout_s)
        if code == 0:
            log.info("worker %d exited with code 0", process.pid)
        else:
            log.warning("worker %d exited with code %s; log tail:\n%s", process.pid, code, worker.log_tail())


def data_segment_bytes(pid: int) -> int:
    """A process's data segment now (``VmData``: heap and private writable mappings, what RLIMIT_DATA counts)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmData in /proc/{pid}/status")


@contextlib.contextmanager
def memory_headroom(pid: int, headroom_bytes: int) -> Iterator[int]:
    """Cap a running process's data segment (RLIMIT_DATA, soft) at what it holds now plus ``headroom_bytes``;
    restore the old cap on exit. Yields the cap.

    An allocation past the cap fails (``MemoryError`` in Python, ENOMEM in C) in that process alone, so a test of
    bounded memory fails instead of the machine running out. Measured from the process's own size, so it needs no
    guess of what torch and the model take. Processes it starts afterwards (ffmpeg) inherit the cap.
    """
    soft, hard = resource.prlimit(pid, resource.RLIMIT_DATA)
    cap = data_segment_bytes(pid) + headroom_bytes
    resource.prlimit(pid, resource.RLIMIT_DATA, (cap, hard))
    try:
        yield cap
    finally:
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(pid, resource.RLIMIT_DATA, (soft, hard))


WORKER_START_TIMEOUT_S = 420.0  # NeMo import + model load + warm-up of the real worker on a busy 2-core machine


@contextlib.contextmanager
def started_worker(
    script: str | Path, extra_env: Mapping[str, str], *, log_dir: Path,
    start_timeout_s: float = WORKER_START_TIMEOUT_S,
) -> Iterator[tuple[FakeRunpodPlatform, WorkerProcess]]:
    """A platform and a worker that has taken its first poll; on exit, the platform must have seen no protocol
    error. A worker that does not start fails with its log."""
    with FakeRunpodPlatform() as platform, run_worker(script, platform, extra_env, log_dir=log_dir) as proc:
        try:
            platform.wait_for_worker(start_timeout_s)
        except TimeoutError as err:
            raise AssertionError(f"{err}\n--- worker log ---\n{proc.log_tail()}") from err
        yield platform, proc
        assert not platform.protocol_errors(), platform.protocol_errors()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_api_server(
    extra_env: Mapping[str, str], log_path: Path, start_timeout_s: float = WORKER_START_TIMEOUT_S,
) -> Iterator[str]:
    """``rp_handler.py --rp_serve_api`` (the SDK's local /run, /runsync, /status) on a free port; yields its URL.

    No platform here: inherited ``RUNPOD_*`` variables are dropped."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")} | dict(extra_env)
    with log_path.open("w") as log_file:
        proc = subprocess.Popen([sys.executable, "-u", "rp_handler.py", "--rp_serve_api", "--rp_api_host",
                                 "127.0.0.1", "--rp_api_port", str(port)], cwd=REPO_ROOT, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
