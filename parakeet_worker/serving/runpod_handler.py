"""RunPod serverless worker: validate the job, decode the audio, run the shared engine, shape the output.

    python rp_handler.py                          # on RunPod (or with test_input.json locally)
    python rp_handler.py --rp_serve_api           # local /run, /runsync, /status API
    python rp_handler.py --test_input '{"input": {"audio_url": "https://..."}}'

The model is loaded and warmed before the SDK starts taking jobs. The handler is ``async``: downloads and
decoding run on a pool of their own (a few inputs of each job at once, so one job of many slow URLs cannot
hold the others up) and inference on the engine's own thread, so several jobs share one engine
(``PARAKEET_CONCURRENCY``) and the SDK's event loop never blocks. The decoded audio jobs hold is bounded by
:mod:`~parakeet_worker.serving.budget`. On SIGTERM the worker drains (see :meth:`TranscriptionService.drain`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import runpod

from parakeet_worker.audio import DecodedAudio, load_audio_input
from parakeet_worker.config import Settings
from parakeet_worker.engine import ParakeetEngine, TranscribeOptions, TranscriptionResult
from parakeet_worker.errors import AudioTooLongError, ModelLoadError, ParakeetError
from parakeet_worker.observability import Metrics, log_context, setup_logging
from parakeet_worker.serving.budget import AudioBudget, AudioBudgetExceededError, Reservation, reserve
from parakeet_worker.serving.job_input import (
    AudioSource,
    InfoRequest,
    TranscribeRequest,
    WebsocketRequest,
    parse_job_input,
)
from parakeet_worker.serving.load_pool import LoadPool
from parakeet_worker.serving.options import WorkerOptions, worker_options
from parakeet_worker.serving.protocol import ENCODING, MAX_SAMPLE_RATE_HZ, MIN_SAMPLE_RATE_HZ, PROTOCOL_VERSION
from parakeet_worker.serving.subtitles import cues_from_words, to_srt, to_vtt
from parakeet_worker.serving.ws_server import ServerThread, StreamServer, public_address

logger = logging.getLogger("rp_handler")

SHUTDOWN_CODE = "server_shutdown"
_SHUTDOWN_MESSAGE = ("the worker is shutting down (RunPod scaled it down) and the job could not finish within the "
                     "shutdown grace period; submit it again and another worker takes it")

WORKER_VERSION = "0.4.0"
PROGRESS_INTERVAL_S = 2.0
# The job's `use_local_attention` (unset, true, false) as the engine's attention choice.
_ATTENTION: dict[bool | None, Literal["auto", "local", "full"]] = {None: "auto", True: "local", False: "full"}


def error_output(exc: ParakeetError | str, code: str | None = None) -> dict[str, Any]:
    """The job output for a user mistake: the job is FAILED with a readable reason; the worker keeps serving."""
    if isinstance(exc, ParakeetError):
        return {"error": str(exc), "error_code": exc.code, "success": False}
    return {"error": exc, "error_code": code or "error", "success": False}


def shape_result(result: TranscriptionResult, request: TranscribeRequest) -> dict[str, Any]:
    out: dict[str, Any] = {"text": result.text}
    if request.output_format != "text":
        out["segments"] = [{"id": i, "start": s.start, "end": s.end, "text": s.segment}
                           for i, s in enumerate(result.segments)]
    if request.timestamps:
        out["timestamps"] = {
            "word": [{"start": w.start, "end": w.end, "word": w.word} for w in result.words],
            "segment": [{"start": s.start, "end": s.end, "segment": s.segment} for s in result.segments],
            "char": [{"start": t.start, "end": t.end, "char": t.char} for t in result.tokens],
        }
    if request.output_format in ("srt", "vtt"):
        cues = cues_from_words(result.words, result.segments)
        out[request.output_format] = to_srt(cues) if request.output_format == "srt" else to_vtt(cues)
    out.update(
        duration=round(result.duration_s, 3),
        processing_time=round(result.processing_s, 3),
        rtfx=round(result.duration_s / result.processing_s, 1) if result.processing_s > 0 else None,
        model=result.model, device=result.device, dtype=result.dtype, attention=result.attention,
        chunking=asdict(result.chunking) if result.chunking else None,
        success=True,
    )
    return out


class TranscriptionService:
    """The handler's state: the engine, the settings, the audio budget and the load pool. ``handle`` is the
    RunPod handler."""

    def __init__(self, engine: ParakeetEngine, settings: Settings, streams: StreamServer | None = None,
                 metrics: Metrics | None = None, options: WorkerOptions | None = None,
                 stop_streams: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.options = options or worker_options(settings)
        self.streams = streams  # the worker's WebSocket server (None: this worker serves batch jobs only)
        # Ends every live session (each is told server_shutdown, gets its final and `stopped`, closes 1001), so
        # that websocket jobs return their summaries; blocking, called once, on its own thread by the drain.
        self.stop_streams = stop_streams
        self.metrics = metrics or Metrics(None)
        self.limits = self.options.jobs
        self.audio_budget = AudioBudget(self.limits.worker_audio_budget_s, "worker")
        # Downloads and decodes on threads of their own, enough for every concurrent job's share: a job of
        # slow URLs fills its own share, never the threads other jobs (or the event loop's default executor) need.
        self._pool = LoadPool(settings.concurrency * self.limits.job_decode_concurrency)
        self._work: set[asyncio.Task[dict[str, Any]]] = set()  # the jobs in flight, for the drain
        self._draining = False
        self._sigterm_chained = False

    def concurrency(self, current: int) -> int:
        self._chain_sigterm()
        return self.settings.concurrency

    def info(self) -> dict[str, Any]:
        info = asdict(self.engine.info())
        info["languages"] = list(info["languages"])
        info["local_attention_context"] = list(info["local_attention_context"])
        info["limits"] = {
            "max_audio_s": self.options.audio.max_duration_s, "full_attention_max_s": info.pop("full_attention_max_s"),
            "max_download_bytes": self.options.audio.max_bytes, "concurrency": self.settings.concurrency,
            "job_audio_budget_s": self.limits.job_audio_budget_s,
            "worker_audio_budget_s": self.limits.worker_audio_budget_s,
            "runpod_payload_mb": {"run": 10, "runsync": 20},
        }
        info["worker_version"] = WORKER_VERSION
        info["success"] = True
        return info

    async def handle(self, job: dict[str, Any]) -> dict[str, Any]:
        """The RunPod handler; every log line and metrics record of the job carries its id."""
        with log_context(job_id=job.get("id")):
            return await self._handle(job)

    async def _handle(self, job: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        try:
            request = parse_job_input(job.get("input"), limits=self.options.server)
        except ParakeetError as exc:
            logger.info("job %s refused: %s", job.get("id"), exc)
            self.metrics.record("batch", audio_s=0.0, error_code=exc.code, total_s=time.monotonic() - started)
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
        reporter = _Progress(job)
        job_budget = AudioBudget(min(self.limits.job_audio_budget_s, self.audio_budget.capacity_s), "job")
        slots = asyncio.Semaphore(self.limits.job_decode_concurrency)
        with tempfile.TemporaryDirectory(prefix="job-") as work_dir:
            try:
                # Each input's outcome is a plain dict (its result or its error): no exception, whose traceback
                # would hold the frames that hold its decoded audio, outlives the input.
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(self._one(source, request, Path(work_dir), reporter, job_budget, slots))
                             for source in request.sources]
            except BaseExceptionGroup as failed:  # a bug in one input (the others were cancelled): let the SDK
                raise failed.exceptions[0] from None  # record its traceback
        results = [task.result() for task in tasks]
        if not request.multiple:
            return results[0]
        ok = sum(1 for r in results if r["success"])
        summary: dict[str, Any] = {"results": results, "success": ok > 0,
                                   "processing_time": round(time.monotonic() - started, 3)}
        if ok == 0:
            summary["error"] = f"all {len(results)} inputs failed; first: {results[0]['error']}"
        return summary

    async def _websocket(self, job: dict[str, Any], request: WebsocketRequest) -> dict[str, Any]:
        """Grant one real-time session, announce how to reach it, and stay IN_PROGRESS until it ends."""
        if self.streams is None:
            return error_output("this worker's WebSocket server is not running (its port could not be opened: "
                                "see the worker log and PARAKEET_WS_PORT)", "websocket_unavailable")
        grant = self.streams.grant(job.get("id"), idle_timeout_s=request.idle_timeout_s,
                                   max_session_s=request.max_session_s)
        host, port, which = public_address(self.settings, self.streams.port)
        logger.info("job %s: websocket session offered at %s:%d (%s address)", job.get("id"), host, port, which)
        ready = {
            "status": "ready", "ws_url": f"ws://{host}:{port}/?token={grant.token}", "host": host, "port": port,
            "address": which, "token": grant.token, "protocol": PROTOCOL_VERSION,
            "sample_rates": [MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ], "encoding": ENCODING,
            "limits": {"idle_timeout_s": grant.limits.idle_timeout_s, "max_session_s": grant.limits.max_session_s,
                       "connect_timeout_s": grant.limits.connect_timeout_s},
        }
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

    async def _one(self, source: AudioSource, request: TranscribeRequest, work_dir: Path, reporter: _Progress,
                   job_budget: AudioBudget, slots: asyncio.Semaphore) -> dict[str, Any]:
        """One input's result, or its error as a dict; its audio is given back to the budgets as it ends."""
        started = time.monotonic()
        reservation = None
        try:
            # The longest this input may decode to: the per-input limit, or a job budget smaller than it.
            limit_s = min(self.options.audio.max_duration_s, job_budget.capacity_s)
            async with slots:
                reservation = await reserve(job_budget, self.audio_budget, limit_s, wait_s=self.limits.budget_wait_s)
                audio = await self._load(source, work_dir, limit_s, reservation)
            reservation.shrink(audio.duration_s)
            reporter.update({"stage": "transcribing", "audio_seconds": round(audio.duration_s, 3)})
            options = TranscribeOptions(
                timestamps=True,  # segments are always returned; word/char timestamps only when asked
                attention=_ATTENTION[request.use_local_attention], chunked=request.chunk_long_audio,
                chunk_s=request.chunk_duration_s, overlap_s=request.chunk_overlap_s,
            )
            result = await self.engine.transcribe(audio.samples, options, progress=reporter.update)
        except ParakeetError as exc:
            _forget_frames(exc)  # the decoder's frames in its traceback hold the audio decoded so far
            logger.info("%s failed: %s", source.describe(), exc)
            self.metrics.record("batch", audio_s=0.0, error_code=exc.code, total_s=time.monotonic() - started)
            return error_output(exc)
        finally:
            if reservation is not None:
                reservation.release()
        self.metrics.record("batch", audio_s=result.duration_s, inference_s=result.processing_s - result.queue_wait_s,
                            queue_wait_s=result.queue_wait_s, total_s=time.monotonic() - started,
                            batch_size=result.batch_size,
                            active_sessions=self.streams.active_sessions if self.streams else None)
        return shape_result(result, request)

    async def _load(self, source: AudioSource, work_dir: Path, limit_s: float, reservation: Reservation) -> DecodedAudio:
        """Download and decode on the load pool, stopping at ``limit_s`` seconds of audio."""
        limits = self.options.audio
        if limit_s < limits.max_duration_s:
            limits = dataclasses.replace(limits, max_duration_s=limit_s)
        loading = self._pool.submit(load_audio_input, source.value, format_hint=source.format_hint, limits=limits,
                                    s3=self.settings.s3, work_dir=work_dir)
        try:
            return await asyncio.wrap_future(loading)
        except asyncio.CancelledError:
            if not loading.done():  # still decoding: its audio is held until the thread returns
                held = reservation.hand_over()  # the caller's release gives back nothing; the thread's end does
                loading.add_done_callback(lambda _: held.release())
            raise
        except AudioTooLongError:
            if limits is self.options.audio:
                raise
            raise AudioBudgetExceededError(
                f"the audio is longer than the {limit_s:g} s a job may hold at once (PARAKEET_JOB_AUDIO_BUDGET_S); "
                "send it in a job of its own with a larger budget, or split it"
            ) from None

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
        self._pool.shutdown()


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


def _forget_frames(exc: BaseException) -> None:
    """Drop the frames an exception and the ones chained to it hold (their locals: decoded blocks, buffers), so
    they are freed now rather than when the exception object is (reference cycles through the futures delay
    that until a garbage collection)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if current.__traceback__ is not None:
            traceback.clear_frames(current.__traceback__)
            current.__traceback__ = None
        current = current.__cause__ or current.__context__


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
    setup_logging()  # JSON lines on RunPod, text locally (replaces the root handler `import runpod` installs)
    settings = Settings.from_env()
    if settings.log_format != "auto":
        setup_logging(json_lines=settings.log_format == "json")
    logger.info("parakeet worker %s starting (runpod %s); RunPod environment: %s", WORKER_VERSION,
                runpod.__version__, _runpod_environment() or "none (running locally)")
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
    server_thread = ServerThread(StreamServer(engine, settings, options.server, metrics=metrics))
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
    info = engine.info()
    logger.info("ready: %s (%s, %s parameters) on %s/%s, load %.1f s, warm-up %.2f s", info.model, info.source,
                f"{info.parameters:,}", info.device, info.dtype, info.load_seconds, info.warmup_seconds)
    grace_s = options.jobs.shutdown_grace_s
    stop_streams = _once(lambda: server_thread.shutdown(grace_s)) if streams is not None else None
    service = TranscriptionService(engine, settings, streams, metrics, options, stop_streams=stop_streams)
    try:
        runpod.serverless.start({"handler": service.handle, "concurrency_modifier": service.concurrency})
    finally:
        service.close()
        if stop_streams is not None:
            stop_streams()
        engine.close()
    logger.info("worker stopped")


if __name__ == "__main__":
    main()
