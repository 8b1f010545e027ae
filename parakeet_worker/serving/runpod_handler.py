"""RunPod serverless worker: validate the job, decode the audio, run the shared engine, shape the output.

    python rp_handler.py                          # on RunPod (or with test_input.json locally)
    python rp_handler.py --rp_serve_api           # local /run, /runsync, /status API
    python rp_handler.py --test_input '{"input": {"audio_url": "https://..."}}'

The model is loaded and warmed before the SDK starts taking jobs. The handler is ``async``: audio decoding runs
in threads and inference on the engine's own thread, so several jobs share one engine (``PARAKEET_CONCURRENCY``)
and the SDK's event loop never blocks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import runpod

from parakeet_worker.audio import DecodedAudio, load_audio_input
from parakeet_worker.config import Settings
from parakeet_worker.engine import ParakeetEngine, TranscribeOptions, TranscriptionResult
from parakeet_worker.errors import ModelLoadError, ParakeetError
from parakeet_worker.observability import Metrics, log_context, setup_logging
from parakeet_worker.serving.job_input import (
    AudioSource,
    InfoRequest,
    TranscribeRequest,
    WebsocketRequest,
    parse_job_input,
)
from parakeet_worker.serving.options import WorkerOptions, worker_options
from parakeet_worker.serving.protocol import ENCODING, MAX_SAMPLE_RATE_HZ, MIN_SAMPLE_RATE_HZ, PROTOCOL_VERSION
from parakeet_worker.serving.subtitles import cues_from_words, to_srt, to_vtt
from parakeet_worker.serving.ws_server import ServerThread, StreamServer, public_address

logger = logging.getLogger("rp_handler")

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
    """The handler's state: the engine and the settings. ``handle`` is the RunPod handler."""

    def __init__(self, engine: ParakeetEngine, settings: Settings, streams: StreamServer | None = None,
                 metrics: Metrics | None = None, options: WorkerOptions | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.options = options or worker_options(settings)
        self.streams = streams  # the worker's WebSocket server (None: this worker serves batch jobs only)
        self.metrics = metrics or Metrics(None)

    def concurrency(self, current: int) -> int:
        return self.settings.concurrency

    def info(self) -> dict[str, Any]:
        info = asdict(self.engine.info())
        info["languages"] = list(info["languages"])
        info["local_attention_context"] = list(info["local_attention_context"])
        info["limits"] = {
            "max_audio_s": self.options.audio.max_duration_s, "full_attention_max_s": info.pop("full_attention_max_s"),
            "max_download_bytes": self.options.audio.max_bytes, "concurrency": self.settings.concurrency,
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
        if isinstance(request, WebsocketRequest):
            return await self._websocket(job, request)
        reporter = _Progress(job)
        with tempfile.TemporaryDirectory(prefix="job-") as work_dir:
            outcomes = await asyncio.gather(
                *(self._one(source, request, Path(work_dir), reporter) for source in request.sources),
                return_exceptions=True,
            )
        results: list[dict[str, Any]] = []
        for source, outcome in zip(request.sources, outcomes):
            if isinstance(outcome, ParakeetError):
                logger.info("job %s: %s failed: %s", job.get("id"), source.describe(), outcome)
                self.metrics.record("batch", audio_s=0.0, error_code=outcome.code, total_s=time.monotonic() - started)
                results.append(error_output(outcome))
            elif isinstance(outcome, BaseException):
                raise outcome  # a bug: let the SDK record the traceback
            else:
                results.append(outcome)
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
        out.update(success=True, ws_url=ready["ws_url"])
        return out

    async def _one(self, source: AudioSource, request: TranscribeRequest, work_dir: Path,
                   reporter: _Progress) -> dict[str, Any]:
        started = time.monotonic()
        audio: DecodedAudio = await asyncio.to_thread(
            load_audio_input, source.value, format_hint=source.format_hint, limits=self.options.audio,
            s3=self.settings.s3, work_dir=work_dir,
        )
        reporter.update({"stage": "transcribing", "audio_seconds": round(audio.duration_s, 3)})
        options = TranscribeOptions(
            timestamps=True,  # segments are always returned; word/char timestamps only when asked
            attention=_ATTENTION[request.use_local_attention], chunked=request.chunk_long_audio,
            chunk_s=request.chunk_duration_s, overlap_s=request.chunk_overlap_s,
        )
        result = await self.engine.transcribe(audio.samples, options, progress=reporter.update)
        self.metrics.record("batch", audio_s=result.duration_s, inference_s=result.processing_s - result.queue_wait_s,
                            queue_wait_s=result.queue_wait_s, total_s=time.monotonic() - started,
                            batch_size=result.batch_size,
                            active_sessions=self.streams.active_sessions if self.streams else None)
        return shape_result(result, request)


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
    try:
        streams = ServerThread(StreamServer(engine, settings, options.server, metrics=metrics)).start()
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
    service = TranscriptionService(engine, settings, streams, metrics, options)
    runpod.serverless.start({"handler": service.handle, "concurrency_modifier": service.concurrency})


if __name__ == "__main__":
    main()
