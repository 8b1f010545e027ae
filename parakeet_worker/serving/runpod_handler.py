"""RunPod serverless worker: validate the job, decode the audio, run the shared engine, shape the output.

    python rp_handler.py                          # on RunPod (or with test_input.json locally)
    python rp_handler.py --rp_serve_api           # local /run, /runsync, /status API
    python rp_handler.py --test_input '{"input": {"audio_url": "https://..."}}'

The model is loaded and warmed before the SDK starts taking jobs. The handler is ``async``; a transcription job's
work is :class:`~parakeet_worker.serving.batch.BatchService`'s (decoding on its load pool, inference on the
engine's own thread, the decoded audio bounded by :mod:`~parakeet_worker.serving.budget`), so several jobs share
one engine (``PARAKEET_CONCURRENCY``) and the SDK's event loop never blocks. This module adds what is RunPod's:
progress updates, ``websocket`` jobs, and the drain on SIGTERM (see :meth:`TranscriptionService.drain`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from types import FrameType
from typing import Any

import runpod

from parakeet_worker.config import Settings
from parakeet_worker.engine import ParakeetEngine, limit_malloc_arenas
from parakeet_worker.errors import ModelLoadError, ParakeetError
from parakeet_worker.observability import Metrics, log_context, setup_logging
from parakeet_worker.serving import lb
from parakeet_worker.serving.batch import WORKER_VERSION, BatchService, error_output, job_output
from parakeet_worker.serving.budget import AudioBudget
from parakeet_worker.serving.job_input import InfoRequest, TranscribeRequest, WebsocketRequest
from parakeet_worker.serving.options import WorkerOptions, worker_options
from parakeet_worker.serving.protocol import Ready
from parakeet_worker.serving.ws_server import ServerThread, StreamServer, public_address

logger = logging.getLogger("rp_handler")

SHUTDOWN_CODE = "server_shutdown"
_SHUTDOWN_MESSAGE = ("the worker is shutting down (RunPod scaled it down) and the job could not finish within the "
                     "shutdown grace period; submit it again and another worker takes it")

PROGRESS_INTERVAL_S = 2.0


class TranscriptionService:
    """The handler's state: the batch service (engine, audio budget, load pool), the WebSocket server, the jobs in
    flight. ``handle`` is the RunPod handler."""

    def __init__(self, engine: ParakeetEngine, settings: Settings, streams: StreamServer | None = None,
                 metrics: Metrics | None = None, options: WorkerOptions | None = None,
                 stop_streams: Callable[[], None] | None = None, batch: BatchService | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.options = options or worker_options(settings)
        self.streams = streams  # the worker's WebSocket server (None: this worker serves batch jobs only)
        # Ends every live session (each is told server_shutdown, gets its final and `stopped`, closes 1001), so
        # that websocket jobs return their summaries; blocking, called once, on its own thread by the drain.
        self.stop_streams = stop_streams
        self.metrics = metrics or Metrics(None)
        self.limits = self.options.jobs
        # The worker's one batch service, shared with its HTTP faces when they run (given), else its own.
        self._owns_batch = batch is None
        self.batch = batch or BatchService(
            engine, settings, options=self.options, metrics=self.metrics,
            active_sessions=lambda: self.streams.active_sessions if self.streams else None)
        self._work: set[asyncio.Task[dict[str, Any]]] = set()  # the jobs in flight, for the drain
        self._draining = False
        self._sigterm_chained = False

    @property
    def audio_budget(self) -> AudioBudget:
        """The decoded audio all batch work holds at once (the batch service's)."""
        return self.batch.audio_budget

    def concurrency(self, current: int) -> int:
        self._chain_sigterm()
        return self.settings.concurrency

    def info(self) -> dict[str, Any]:
        return self.batch.info()

    async def handle(self, job: dict[str, Any]) -> dict[str, Any]:
        """The RunPod handler; every log line and metrics record of the job carries its id."""
        with log_context(job_id=job.get("id")):
            return await self._handle(job)

    async def _handle(self, job: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        try:
            request = self.batch.parse(job.get("input"), started)
        except ParakeetError as exc:
            return error_output(exc)
        if isinstance(request, InfoRequest):
            return self.info()
        if self._draining:  # taken before the SIGTERM, not started: refused so that the worker can exit
            return error_output(_SHUTDOWN_MESSAGE, SHUTDOWN_CODE)
        # The job's work runs as a task of its own that the drain can stop without the SDK's task being cancelled.
        if isinstance(request, WebsocketRequest):
            work = asyncio.ensure_future(self._websocket(job, request))
        else:
            work = asyncio.ensure_future(self._transcribe(job, request, started))
        self._work.add(work)
        try:
            return await work
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._draining and task is not None and task.cancelling() == 0:  # stopped by the drain, not the SDK
                logger.warning("job %s failed: the shutdown grace of %g s ran out", job.get("id"),
                               self.limits.shutdown_grace_s)
                return error_output(_SHUTDOWN_MESSAGE, SHUTDOWN_CODE)
            raise
        finally:
            self._work.discard(work)

    async def _transcribe(self, job: dict[str, Any], request: TranscribeRequest, started: float) -> dict[str, Any]:
        outcomes = await self.batch.transcribe(request, progress=_Progress(job).update)
        return job_output(request, outcomes, started)

    def _grpc_target(self) -> str | None:
        """``"host:port"`` of the Riva gRPC face (the job's token goes in its ``authorization`` metadata), or None
        when it is off."""
        if self.streams is None or self.streams.grpc_port is None:
            return None
        host, port, _ = public_address(self.settings, self.streams.grpc_port, grpc=True)
        return f"{host}:{port}"

    async def _websocket(self, job: dict[str, Any], request: WebsocketRequest) -> dict[str, Any]:
        """Grant one real-time session, announce how to reach it, and stay IN_PROGRESS until it ends."""
        if self.streams is None:
            return error_output("this worker's WebSocket server is not running (its port could not be opened: "
                                "see the worker log and PARAKEET_WS_PORT)", "websocket_unavailable")
        grant = self.streams.grant(job.get("id"), idle_timeout_s=request.idle_timeout_s,
                                   max_session_s=request.max_session_s)
        host, port, which = public_address(self.settings, self.streams.port)
        logger.info("job %s: websocket session offered at %s:%d (%s address)", job.get("id"), host, port, which)
        ready = Ready(ws_url=f"ws://{host}:{port}/?token={grant.token}", host=host, port=port, address=which,
                      token=grant.token, idle_timeout_s=grant.limits.idle_timeout_s,
                      max_session_s=grant.limits.max_session_s, connect_timeout_s=grant.limits.connect_timeout_s,
                      grpc_target=self._grpc_target()).to_json()
        if "id" in job:
            runpod.serverless.progress_update(job, ready)
        try:
            summary = await asyncio.wrap_future(grant.summary)
        except asyncio.CancelledError:  # the platform cancelled the job: close its session, then let it go
            self.streams.revoke(grant, "cancelled")
            raise
        out = asdict(summary)
        out.update(success=summary.error_code is None, ws_url=ready["ws_url"])
        if summary.error_code is not None:  # the session's last final could not be produced: never a quiet success
            out["error"] = f"the session ended without its last final ({summary.error_code}); see docs/PROTOCOL.md"
        return out

    # --- shutdown ---------------------------------------------------------------------------------------------
    def _chain_sigterm(self) -> None:
        """Put :meth:`drain` in front of the SDK's SIGTERM handler.

        The SDK installs its own handler (stop taking jobs, then wait for every job in flight, however long) just
        before it starts its loop, replacing any installed earlier; its first concurrency query, on the main
        thread inside that loop, is the first moment ours can wrap it.
        """
        if self._sigterm_chained or threading.current_thread() is not threading.main_thread():
            return
        self._sigterm_chained = True
        loop = asyncio.get_running_loop()
        sdk_handler = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            if callable(sdk_handler):
                sdk_handler(signum, frame)  # the SDK stops taking jobs and exits once the jobs in flight end
            loop.call_soon_threadsafe(self.drain)

        signal.signal(signal.SIGTERM, on_sigterm)

    def drain(self) -> None:
        """On the SDK's loop: tell the live streams, and fail the jobs still running after the grace period."""
        if self._draining:
            return
        self._draining = True
        grace_s = self.limits.shutdown_grace_s
        logger.info("SIGTERM: draining %d job(s) in flight; those still running in %g s fail with %s",
                    len(self._work), grace_s, SHUTDOWN_CODE)
        loop = asyncio.get_running_loop()
        if self.stop_streams is not None:
            loop.run_in_executor(None, self.stop_streams)
        loop.call_later(grace_s, self._stop_work)

    def _stop_work(self) -> None:
        for work in list(self._work):
            work.cancel()

    def close(self) -> None:
        """After the SDK's loop ended: no more loads (a download still in flight dies with the process)."""
        if self._owns_batch:
            self.batch.close()


def _once(action: Callable[[], None]) -> Callable[[], None]:
    """``action``, run by the first call only (the drain and the exit path may both stop the stream server)."""
    lock = threading.Lock()
    done = False

    def run() -> None:
        nonlocal done
        with lock:
            if done:
                return
            done = True
        action()

    return run


class _Progress:
    """Throttled ``progress_update`` (the SDK posts each update from its own thread, so any thread may call)."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.last = 0.0

    def update(self, payload: dict[str, Any]) -> None:
        # Each SDK update is posted from its own thread and may overtake the one before, or the job's result:
        # spacing them out keeps their order, and the last one is never forced out right before the result.
        now = time.monotonic()
        if now - self.last < PROGRESS_INTERVAL_S:
            return
        self.last = now
        if "id" in self.job:
            runpod.serverless.progress_update(self.job, payload)


def _runpod_environment() -> dict[str, str]:
    """The RUNPOD_* variables the platform set (secrets masked), for the start-up log."""
    secret = ("KEY", "SECRET", "TOKEN", "PASSWORD")
    return {k: ("***" if any(w in k for w in secret) else v) for k, v in sorted(os.environ.items())
            if k.startswith("RUNPOD_")}


def main() -> None:
    limit_malloc_arenas()  # before the worker's threads allocate: keeps RSS flat under load (engine/memory.py)
    setup_logging()  # JSON lines on RunPod, text locally (replaces the root handler `import runpod` installs)
    settings = Settings.from_env()
    if settings.log_format != "auto":
        setup_logging(json_lines=settings.log_format == "json")
    logger.info("parakeet worker %s starting (runpod %s, %s mode); RunPod environment: %s", WORKER_VERSION,
                runpod.__version__, settings.runpod_mode, _runpod_environment() or "none (running locally)")
    if settings.runpod_mode == "lb":  # a load-balancing endpoint: the app on $PORT, no job loop
        lb.main(settings)
    metrics = Metrics(settings.metrics_path())
    options = worker_options(settings)
    try:
        engine = ParakeetEngine.from_settings(settings, options.engine)
    except ModelLoadError as exc:
        logger.error("%s", exc)
        sys.exit(2)
    except Exception as exc:  # the fitness check: the model loaded but cannot run (CUDA mismatch, out of memory, ...)
        logger.exception("the model loaded but its warm-up inference failed (%s: %s); check that the image's CUDA "
                         "build matches the host driver (docs/DEPLOY.md, Troubleshooting) or set PARAKEET_DEVICE=cpu "
                         "to confirm the model itself works", type(exc).__name__, exc)
        sys.exit(3)
    streams: StreamServer | None = None
    # One batch service for RunPod's jobs and the HTTP faces (OpenAI REST): one load pool, one audio budget.
    batch = BatchService(engine, settings, options=options, metrics=metrics,
                         active_sessions=lambda: streams.active_sessions if streams else None)
    server_thread = ServerThread(StreamServer(engine, settings, options.server, metrics=metrics, batch=batch,
                                              grpc_port=settings.grpc_port or None))
    try:
        streams = server_thread.start()
    except OSError as exc:  # batch jobs still work; websocket jobs get an error naming the problem
        logger.error("WebSocket server could not listen on %s:%d (%s); websocket jobs will fail until "
                     "PARAKEET_WS_PORT names a free port", settings.ws_host, settings.ws_port, exc)
    if streams is not None:
        host, port, which = public_address(settings, streams.port)
        logger.info("WebSocket sessions will be announced at %s:%d (%s address; RUNPOD_PUBLIC_IP=%r, "
                    "RUNPOD_TCP_PORT_%d=%r)", host, port, which, settings.runpod_public_ip or None,
                    settings.ws_port, settings.runpod_tcp_port or None)
        if streams.grpc_port is not None:
            host, port, which = public_address(settings, streams.grpc_port, grpc=True)
            logger.info("the Riva gRPC face will be announced at %s:%d (%s address; RUNPOD_TCP_PORT_%d=%r)", host,
                        port, which, settings.grpc_port, settings.runpod_grpc_tcp_port or None)
    info = engine.info()
    logger.info("ready: %s (%s, %s parameters) on %s/%s, load %.1f s, warm-up %.2f s", info.model, info.source,
                f"{info.parameters:,}", info.device, info.dtype, info.load_seconds, info.warmup_seconds)
    grace_s = options.jobs.shutdown_grace_s
    stop_streams = _once(lambda: server_thread.shutdown(grace_s)) if streams is not None else None
    service = TranscriptionService(engine, settings, streams, metrics, options, stop_streams=stop_streams,
                                   batch=batch)
    try:
        runpod.serverless.start({"handler": service.handle, "concurrency_modifier": service.concurrency})
    finally:
        service.close()
        if stop_streams is not None:
            stop_streams()
        batch.close()
        engine.close()
    logger.info("worker stopped")


if __name__ == "__main__":
    main()
