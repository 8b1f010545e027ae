"""Batch transcription as a service: a RunPod job's input, or an uploaded file, to a transcript, under the worker's
limits. RunPod's queue handler (:mod:`~parakeet_worker.serving.runpod_handler`) and the HTTP faces (OpenAI REST,
the load-balancing ``/transcribe``) share one :class:`BatchService`, so they share its limits:

- decoding runs on the service's :class:`~parakeet_worker.serving.load_pool.LoadPool` (a few inputs of each job at
  once, so one job of many slow URLs cannot hold the others up), inference on the engine's own thread;
- every input reserves its decode limit from its job's audio budget and the worker's before it is decoded
  (:mod:`~parakeet_worker.serving.budget`), and gives it back as soon as its transcript is done or it is refused;
- uploads are decoded from their bytes only: no URL in them is ever fetched.

Errors a caller can cause are typed (:class:`~parakeet_worker.errors.ParakeetError` and its subclasses);
:func:`http_status` maps their codes to the HTTP faces' status codes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, Literal

from parakeet_worker.audio import AudioLimits, DecodedAudio, decode_bytes, load_audio_input
from parakeet_worker.config import Settings
from parakeet_worker.engine import ParakeetEngine, TranscribeOptions, TranscriptionResult
from parakeet_worker.engine.options import ProgressCallback
from parakeet_worker.errors import AudioTooLongError, InputError, ParakeetError
from parakeet_worker.observability import Metrics
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
from parakeet_worker.serving.subtitles import cues_from_words, to_srt, to_vtt

logger = logging.getLogger(__name__)

WORKER_VERSION = "0.4.0"
# The job's `use_local_attention` (unset, true, false) as the engine's attention choice.
_ATTENTION: dict[bool | None, Literal["auto", "local", "full"]] = {None: "auto", True: "local", False: "full"}
# The HTTP status of each error code, for the HTTP faces (a code not listed is a bad request: 400).
_HTTP_STATUS = {
    "invalid_input": 400, "url_not_allowed": 400, "download_failed": 400,
    "audio_too_large": 413,
    "audio_corrupt": 415, "audio_unsupported": 415, "audio_error": 415, "unsupported_content_type": 415,
    "audio_empty": 422, "audio_too_long": 422, "audio_budget_exceeded": 422,
    "overloaded": 503, "engine_closed": 503, "model_unavailable": 503, "server_shutdown": 503, "not_ready": 503,
}  # fmt: skip
Outcome = dict[str, Any] | ParakeetError  # one input's shaped result, or why it was refused


def http_status(code: str) -> int:
    """The HTTP status the HTTP faces answer an error ``code`` with: 400 bad input, 413 too large, 415 not
    decodable audio, 422 audio that decodes but cannot be transcribed (too long, empty), 503 the worker cannot
    take it now."""
    return _HTTP_STATUS.get(code, 400)


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


def job_output(request: TranscribeRequest, outcomes: list[Outcome], started: float) -> dict[str, Any]:
    """A job's output object from its inputs' outcomes: one input's result (or its error), or a summary of many."""
    results = [error_output(o) if isinstance(o, ParakeetError) else o for o in outcomes]
    if not request.multiple:
        return results[0]
    ok = sum(1 for r in results if r["success"])
    summary: dict[str, Any] = {"results": results, "success": ok > 0,
                               "processing_time": round(time.monotonic() - started, 3)}
    if ok == 0:
        summary["error"] = f"all {len(results)} inputs failed; first: {results[0]['error']}"
    return summary


class BatchService:
    """The engine, the worker's audio budget and its load pool, and the limits every batch request is held to."""

    def __init__(self, engine: ParakeetEngine, settings: Settings, *, options: WorkerOptions | None = None,
                 metrics: Metrics | None = None, active_sessions: Callable[[], int | None] | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.options = options or worker_options(settings)
        self.metrics = metrics or Metrics(None)
        self.limits = self.options.jobs
        self.audio_budget = AudioBudget(self.limits.worker_audio_budget_s, "worker")
        self._active_sessions = active_sessions or (lambda: None)
        # Downloads and decodes on threads of their own, enough for every concurrent job's share: a job of
        # slow URLs fills its own share, never the threads other jobs (or the event loop's default executor) need.
        self._pool = LoadPool(settings.concurrency * self.limits.job_decode_concurrency)

    # --- job inputs -------------------------------------------------------------------------------------------
    def parse(self, job_input: object, started: float) -> TranscribeRequest | InfoRequest | WebsocketRequest:
        """A job's input as a typed request; a refused one is counted in the metrics (``started``: when the job
        began, ``time.monotonic()``) and raised as :class:`~parakeet_worker.errors.InputError`."""
        try:
            return parse_job_input(job_input, limits=self.options.server)
        except ParakeetError as exc:
            logger.info("job input refused: %s", exc)
            self.refused(exc.code, started)
            raise

    def refused(self, code: str, started: float) -> None:
        """Count a request refused before any audio was decoded (bad input), as a failed batch request."""
        self.metrics.record("batch", audio_s=0.0, error_code=code, total_s=time.monotonic() - started)

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

    async def transcribe_job(self, job_input: object) -> dict[str, Any]:
        """A batch job's input object to its output object, as RunPod's handler would return it.

        Raises the typed error of a bad input, and of a single audio input that cannot be transcribed; the inputs
        of an ``inputs`` list fail one by one inside the summary, as in the job output. ``action: websocket`` is
        refused: its session is announced through a queue job's progress updates, which this call has none of.
        """
        started = time.monotonic()
        request = self.parse(job_input, started)
        if isinstance(request, InfoRequest):
            return self.info()
        if isinstance(request, WebsocketRequest):
            self.refused(InputError.code, started)
            raise InputError("action 'websocket' opens a session through a queue job; here, connect to the "
                             "worker's WebSocket faces directly (/, /v1/realtime, /v1/listen) with your token")
        outcomes = await self.transcribe(request)
        if not request.multiple and isinstance(outcomes[0], ParakeetError):
            raise outcomes[0]
        return job_output(request, outcomes, started)

    async def transcribe(self, request: TranscribeRequest, *,
                         progress: ProgressCallback | None = None) -> list[Outcome]:
        """Each input's outcome, in order: its shaped result, or its typed error (without its traceback)."""
        job_budget = AudioBudget(min(self.limits.job_audio_budget_s, self.audio_budget.capacity_s), "job")
        slots = asyncio.Semaphore(self.limits.job_decode_concurrency)
        with tempfile.TemporaryDirectory(prefix="job-") as work_dir:
            try:
                # An error keeps no traceback (whose frames would hold its decoded audio) past its input.
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(self._one(source, request, Path(work_dir), progress, job_budget,
                                                         slots)) for source in request.sources]
            except BaseExceptionGroup as failed:  # a bug in one input (the others were cancelled): let the caller
                raise failed.exceptions[0] from None  # (the SDK) record its traceback
        return [task.result() for task in tasks]

    async def _one(self, source: AudioSource, request: TranscribeRequest, work_dir: Path,
                   progress: ProgressCallback | None, job_budget: AudioBudget, slots: asyncio.Semaphore) -> Outcome:
        """One input's result, or its error; its audio is given back to the budgets as it ends."""
        started = time.monotonic()
        reservation = None
        try:
            # The longest this input may decode to: the per-input limit, or a job budget smaller than it.
            limit_s = min(self.options.audio.max_duration_s, job_budget.capacity_s)
            async with slots:
                reservation = await reserve(job_budget, self.audio_budget, limit_s, wait_s=self.limits.budget_wait_s)
                load = functools.partial(load_audio_input, source.value, format_hint=source.format_hint,
                                         s3=self.settings.s3, work_dir=work_dir)
                audio = await self._load(load, limit_s, reservation)
            reservation.shrink(audio.duration_s)
            if progress is not None:
                progress({"stage": "transcribing", "audio_seconds": round(audio.duration_s, 3)})
            options = TranscribeOptions(
                timestamps=True,  # segments are always returned; word/char timestamps only when asked
                attention=_ATTENTION[request.use_local_attention], chunked=request.chunk_long_audio,
                chunk_s=request.chunk_duration_s, overlap_s=request.chunk_overlap_s,
            )
            result = await self.engine.transcribe(audio.samples, options, progress=progress)
        except ParakeetError as exc:
            _forget_frames(exc)  # the decoder's frames in its traceback hold the audio decoded so far
            logger.info("%s failed: %s", source.describe(), exc)
            self.metrics.record("batch", audio_s=0.0, error_code=exc.code, total_s=time.monotonic() - started)
            return exc
        finally:
            if reservation is not None:
                reservation.release()
        self._record(result, started)
        return shape_result(result, request)

    # --- uploads ----------------------------------------------------------------------------------------------
    async def transcribe_upload(self, data: bytes | IO[bytes]) -> TranscriptionResult:
        """An uploaded file (its bytes, or a file object read from the start) to a transcript with word and segment
        timings, under the same limits as a one-input job: the upload's decode limit is reserved from the worker's
        audio budget first, the bytes are read and decoded on the load pool (never fetched from anywhere), then
        transcribed. Raises the typed error of audio that cannot be transcribed."""
        started = time.monotonic()
        job_budget = AudioBudget(min(self.limits.job_audio_budget_s, self.audio_budget.capacity_s), "request")
        reservation = None
        try:
            limit_s = min(self.options.audio.max_duration_s, job_budget.capacity_s)
            reservation = await reserve(job_budget, self.audio_budget, limit_s, wait_s=self.limits.budget_wait_s)
            audio = await self._load(functools.partial(_decode_upload, data), limit_s, reservation)
            reservation.shrink(audio.duration_s)
            result = await self.engine.transcribe(audio.samples, TranscribeOptions(timestamps=True))
        except ParakeetError as exc:
            _forget_frames(exc)
            logger.info("upload failed: %s", exc)
            self.metrics.record("batch", audio_s=0.0, error_code=exc.code, total_s=time.monotonic() - started)
            raise
        finally:
            if reservation is not None:
                reservation.release()
        self._record(result, started)
        return result

    # --- shared -----------------------------------------------------------------------------------------------
    async def _load(self, load: Callable[..., DecodedAudio], limit_s: float, reservation: Reservation) -> DecodedAudio:
        """``load(limits=...)`` on the load pool, stopping at ``limit_s`` seconds of audio."""
        limits = self.options.audio
        if limit_s < limits.max_duration_s:
            limits = dataclasses.replace(limits, max_duration_s=limit_s)
        loading = self._pool.submit(load, limits=limits)
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

    def _record(self, result: TranscriptionResult, started: float) -> None:
        self.metrics.record("batch", audio_s=result.duration_s, inference_s=result.processing_s - result.queue_wait_s,
                            queue_wait_s=result.queue_wait_s, total_s=time.monotonic() - started,
                            batch_size=result.batch_size, active_sessions=self._active_sessions())

    def close(self) -> None:
        """No more loads (a download still in flight dies with the process)."""
        self._pool.shutdown()


def _decode_upload(data: bytes | IO[bytes], *, limits: AudioLimits) -> DecodedAudio:
    """On a load-pool thread: the upload's bytes (read from its file here, off the event loop) to samples."""
    if not isinstance(data, bytes):
        data.seek(0)
        data = data.read(limits.max_bytes + 1)
    return decode_bytes(data, limits=limits)


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


__all__ = ["WORKER_VERSION", "BatchService", "Outcome", "error_output", "http_status", "job_output", "shape_result"]
