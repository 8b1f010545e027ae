"""The Parakeet engine: the one owner of the model.

All inference runs on the engine's own worker thread, fed by a queue; callers get futures (``submit``) or await
them (``transcribe``) — nothing heavy ever runs on an asyncio loop. The worker collects requests for a few
milliseconds, buckets them by length (:mod:`.batching`) and runs each bucket as one batch, and serves live streams
(:class:`parakeet_worker.streaming.StreamManager`) between groups. Long audio either runs alone with local
attention or is cut into overlapping windows batched like any other request (:mod:`.long_audio`).

Every batch forward — a group, or a whole file under local attention — runs as the job of an
:class:`~parakeet_worker.streaming.InterruptibleRunner`: it hands the model back to the worker thread at every
encoder layer and decoder step once a stream's final is waiting or it has held the model for ``batch_slice_s``
while streams wait, so live streams are served between slices whatever the file's length or attention mode (the
job's attention mode is carried across the hand-overs). ``close(grace_s)`` lets queued work finish within the
grace period and fails what is left with ``engine_closed``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from parakeet_worker.config import Settings
from parakeet_worker.engine.batching import (
    BatchItem,
    BucketLimits,
    BucketPolicy,
    Done,
    ExclusiveItem,
    bucket_by_length,
)
from parakeet_worker.engine.long_audio import ChunkedJob, local_attention_item
from parakeet_worker.engine.memory import HeapTrimmer
from parakeet_worker.engine.options import (
    MIN_AUDIO_S,
    PARAKEET_V3_LANGUAGES,
    ChunkingInfo,
    EngineInfo,
    EngineOptions,
    ProgressCallback,
    TranscribeOptions,
    TranscriptionResult,
    default_full_attention_max_s,
)
from parakeet_worker.errors import (
    AudioTooLongError,
    EmptyAudioError,
    EngineClosedError,
    EngineOverloadedError,
    InputError,
)
from parakeet_worker.model import (
    LOCAL_ATTENTION_CONTEXT,
    LOCAL_ATTENTION_LABEL,
    LoadedModel,
    Recognizer,
    Transcriber,
    attention_switch,
    checkpoint_modules,
    load_model,
    local_attention,
    prepare_for_long_audio,
)
from parakeet_worker.streaming import (
    CarriedState,
    EventCallback,
    InterruptibleRunner,
    StreamGeometry,
    StreamHandle,
    StreamingRecognizer,
    StreamManager,
    StreamOptions,
    StreamStats,
)
from parakeet_worker.transcript import SAMPLE_RATE_HZ, Transcript

logger = logging.getLogger(__name__)

_STOP = object()
_POKE = object()  # streaming work is waiting
CLOSE_JOIN_MARGIN_S = 5.0  # close(): how long past its grace period to wait for the worker thread


class ParakeetEngine:
    """Owns the model; thread-safe ``submit``/``transcribe``/``open_stream``; call ``close()`` to stop the worker.

    Parts a test or benchmark may replace: ``recognizer`` (batch passes; default: one on ``loaded``; the streams
    have one of their own), ``early_pass_recognizer`` (the streams' early final passes; default: one of their
    own) and ``bucketing`` (how queued requests are grouped into batches; default :func:`.batching.bucket_by_length`)."""

    def __init__(self, loaded: LoadedModel, options: EngineOptions | None = None, *,
                 recognizer: Recognizer | None = None, early_pass_recognizer: Transcriber | None = None,
                 bucketing: BucketPolicy | None = None) -> None:
        self.options = options or EngineOptions()
        self.loaded = loaded
        self._recognizer = recognizer or Recognizer(loaded)
        self._bucketing = bucketing or bucket_by_length
        self.full_attention_max_s = self.options.full_attention_max_s or default_full_attention_max_s(loaded.device)
        prepare_for_long_audio(loaded.model.encoder)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=self.options.max_queue)
        self._closed = threading.Event()
        self._poke_pending = threading.Event()
        # The streams' own decoding objects: a batch pass suspended halfway (see _interruptibly) keeps its
        # decoder's state in the batch recognizer's while the streams decode between its slices.
        self._streamer = StreamingRecognizer(Recognizer(loaded), self.options.streaming)
        self._streams = StreamManager(self._streamer, self._poke, max_stream_batch=self.options.max_stream_batch,
                                      step_budget_s=self.options.stream_step_budget_s,
                                      early_final_s=self.options.stream_early_final_s,
                                      early_pass_recognizer=early_pass_recognizer)
        switch = attention_switch(loaded)
        self._heap = HeapTrimmer()
        self._batch_runner = InterruptibleRunner("parakeet-batch", carried=[CarriedState(lambda: switch.mode,
                                                                                         switch.set)])
        self._batch_runner.watch(checkpoint_modules(loaded.model))
        self._slice_started = 0.0
        self._close_deadline: float | None = None  # set by close(): work still running after it is failed
        self.warmup_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="parakeet-engine", daemon=True)
        self._thread.start()

    # --- construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: Settings, options: EngineOptions | None = None) -> ParakeetEngine:
        if settings.cpu_threads > 0:
            torch.set_num_threads(settings.cpu_threads)
        engine = cls(load_model(settings), options)
        if settings.warmup:
            engine.warmup()
        return engine

    def warmup(self) -> float:
        """One short inference (plain and with timestamps) so the first real request pays no start-up cost."""
        started = time.monotonic()
        rng = np.random.default_rng(0)
        audio = (rng.standard_normal(SAMPLE_RATE_HZ * 2) * 0.01).astype(np.float32)
        self.submit(audio, TranscribeOptions()).result()
        self.submit(audio, TranscribeOptions(timestamps=True)).result()
        self.warmup_seconds = time.monotonic() - started
        logger.info("engine warm-up took %.2f s", self.warmup_seconds)
        return self.warmup_seconds

    def info(self) -> EngineInfo:
        model = self.loaded.model
        name = self.loaded.source.name
        languages = PARAKEET_V3_LANGUAGES if "parakeet-tdt-0.6b-v3" in name else ("en",)
        return EngineInfo(
            model=name, source=self.loaded.source.kind, parameters=sum(p.numel() for p in model.parameters()),
            device=str(self.loaded.device), dtype=str(self.loaded.dtype).replace("torch.", ""), languages=languages,
            sample_rate=SAMPLE_RATE_HZ, max_audio_s=self.options.max_audio_s,
            full_attention_max_s=self.full_attention_max_s, local_attention_context=LOCAL_ATTENTION_CONTEXT,
            max_batch=self.options.max_batch, load_seconds=self.loaded.load_seconds,
            warmup_seconds=self.warmup_seconds,
        )

    def close(self, grace_s: float = 30.0) -> None:
        """Stop accepting work; what is queued or running may finish within ``grace_s``, what is left then fails
        with :class:`EngineClosedError`; live streams are closed (``engine_closed``). Returns within about
        ``grace_s`` plus one checkpoint's compute."""
        if self._closed.is_set():
            return
        self._close_deadline = time.monotonic() + grace_s
        self._closed.set()
        self._queue.put(_STOP)
        self._thread.join(grace_s + CLOSE_JOIN_MARGIN_S)
        if self._thread.is_alive():
            logger.warning("the engine's worker did not stop within %.0f s of its grace period", CLOSE_JOIN_MARGIN_S)

    # --- public API -------------------------------------------------------------------------------------------
    async def transcribe(self, audio: np.ndarray, options: TranscribeOptions | None = None,
                         progress: ProgressCallback | None = None) -> TranscriptionResult:
        return await asyncio.wrap_future(self.submit(audio, options, progress))

    def submit(self, audio: np.ndarray, options: TranscribeOptions | None = None,
               progress: ProgressCallback | None = None) -> concurrent.futures.Future[TranscriptionResult]:
        """Queue ``audio`` (float32 mono 16 kHz); the future resolves to a :class:`TranscriptionResult`."""
        opts = options or TranscribeOptions()
        duration = audio.shape[0] / SAMPLE_RATE_HZ
        self._check(audio, duration, opts)
        started = time.monotonic()
        # Left PENDING so that cancelling it (an asyncio caller cancelled) works: queued work for it is skipped.
        result: concurrent.futures.Future[TranscriptionResult] = concurrent.futures.Future()
        if opts.chunked:
            self._submit_chunked(audio, opts, result, started, progress)
        elif opts.attention == "local" or (opts.attention == "auto" and duration > self.full_attention_max_s):
            self._submit_local(audio, opts, result, started)
        else:
            item = BatchItem(audio, opts.timestamps, result)
            self._put(item)
            item.future.add_done_callback(lambda f: self._finish(result, f, opts, duration, started, "full", None))
        return result

    def open_stream(self, on_event: EventCallback, options: StreamOptions | None = None,
                    stream_id: str | None = None) -> StreamHandle:
        """A live stream served by this engine's worker thread (see :mod:`parakeet_worker.streaming.manager`)."""
        if self._closed.is_set():
            raise EngineClosedError("the engine is shut down and accepts no more work")
        return self._streams.open(on_event, options, stream_id)

    @property
    def stream_geometry(self) -> StreamGeometry:
        """The streaming window and final-pass settings every stream of this engine gets."""
        return self._streams.geometry()

    def stream_stats(self) -> StreamStats:
        """A snapshot of the live streams and the streaming work done so far."""
        return self._streams.stats()

    def _poke(self) -> None:
        """Wake the worker thread for streaming work (at most one wake-up queued at a time)."""
        if self._poke_pending.is_set():
            return
        self._poke_pending.set()
        try:
            self._queue.put_nowait(_POKE)
        except queue.Full:  # the worker is busy anyway and services streams between groups
            pass

    # --- request paths ----------------------------------------------------------------------------------------
    def _check(self, audio: np.ndarray, duration: float, opts: TranscribeOptions) -> None:
        if self._closed.is_set():
            raise EngineClosedError("the engine is shut down and accepts no more work")
        if audio.ndim != 1 or audio.dtype != np.float32:
            raise InputError(f"audio must be a 1-D float32 array at 16 kHz, got shape {audio.shape} {audio.dtype}")
        if duration < MIN_AUDIO_S:
            raise EmptyAudioError(f"audio is {duration:.3f} s long; at least {MIN_AUDIO_S} s is needed")
        if duration > self.options.max_audio_s:
            raise AudioTooLongError(f"audio is {duration / 60:.1f} min long; the limit is "
                                    f"{self.options.max_audio_s / 60:.0f} min (PARAKEET_MAX_AUDIO_S)")
        if opts.attention == "full" and not opts.chunked and duration > self.full_attention_max_s:
            raise AudioTooLongError(
                f"audio is {duration / 60:.1f} min long, above the {self.full_attention_max_s / 60:.1f} min "
                "full-attention limit of this device; allow local attention or use chunk_long_audio")

    def _put(self, item: object) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            raise EngineOverloadedError(
                f"the engine queue is full ({self.options.max_queue} items); retry later") from None

    def _finish(self, result: concurrent.futures.Future[TranscriptionResult], done: concurrent.futures.Future[Done],
                opts: TranscribeOptions, duration: float, started: float, attention: str,
                chunking: ChunkingInfo | None) -> None:
        if result.done() or done.cancelled():
            return
        error = done.exception()
        if error is not None:
            result.set_exception(error)
            return
        outcome = done.result()
        transcript = outcome.transcript
        words = transcript.words
        result.set_result(TranscriptionResult(
            text=transcript.text, duration_s=duration, words=words if opts.timestamps else (),
            segments=transcript.segments if opts.timestamps else (),
            tokens=transcript.tokens if opts.timestamps else (), has_timestamps=opts.timestamps,
            model=self.loaded.source.name, device=str(self.loaded.device),
            dtype=str(self.loaded.dtype).replace("torch.", ""), attention=attention, chunking=chunking,
            processing_s=time.monotonic() - started, queue_wait_s=outcome.queue_wait_s,
            batch_size=outcome.batch_size,
        ))

    def _submit_local(self, audio: np.ndarray, opts: TranscribeOptions,
                      result: concurrent.futures.Future[TranscriptionResult], started: float) -> None:
        item = local_attention_item(self.loaded, self._recognizer, audio, opts.timestamps, result)
        self._put(item)
        duration = audio.shape[0] / SAMPLE_RATE_HZ
        item.future.add_done_callback(
            lambda f: self._finish(result, f, opts, duration, started, LOCAL_ATTENTION_LABEL, None))

    def _submit_chunked(self, audio: np.ndarray, opts: TranscribeOptions,
                        result: concurrent.futures.Future[TranscriptionResult], started: float,
                        progress: ProgressCallback | None) -> None:
        chunk_s = opts.chunk_s or self.options.default_chunk_s
        overlap_s = self.options.default_overlap_s if opts.overlap_s is None else opts.overlap_s
        job = ChunkedJob(audio, chunk_s, overlap_s, self.full_attention_max_s, result, progress)
        duration = audio.shape[0] / SAMPLE_RATE_HZ
        job.start(self._put, lambda merged: self._finish(result, merged, opts, duration, started, "full", job.info))

    @contextlib.contextmanager
    def local_attention(self) -> Iterator[None]:
        """Local attention for the duration of the block; full attention is restored even when the block fails.

        Only the engine thread may use it while the engine works (it changes the shared model)."""
        with local_attention(self.loaded):
            yield

    # --- the worker thread ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            first = self._queue.get()
            if first is _STOP:
                break
            items, stop_after = self._collect(first)
            self._serve(items)
            if self._queue.empty():  # an idle moment: give the memory of large work back to the system
                self._heap.maybe_trim()
            if stop_after:
                break
        self._streams.close_all()
        self._batch_runner.close()
        self._fail_pending()

    def _collect(self, first: object) -> tuple[list[object], bool]:
        """``first`` and what else arrives within ``batch_wait_ms`` (nothing more after a poke: streams wait);
        True when a stop arrived meanwhile."""
        items = [first]
        deadline = time.monotonic() + self.options.batch_wait_ms / 1000
        while len(items) < self.options.max_batch * 4 and first is not _POKE:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            try:
                nxt = self._queue.get(timeout=timeout)
            except queue.Empty:
                break
            if nxt is _STOP:
                return items, True
            items.append(nxt)
        return items, False

    def _serve(self, items: list[object]) -> None:
        """The batches of ``items`` by bucket, then the exclusive items, with the streams served before each."""
        self._service_streams()
        batchable = [i for i in items if isinstance(i, BatchItem)]
        for group in self._buckets(batchable):
            if self._past_grace(group):
                continue
            self._run_batch(group)
            self._service_streams()
        for item in items:
            if isinstance(item, ExclusiveItem) and not self._past_grace([item]):
                self._run_exclusive(item)
                self._service_streams()

    def _past_grace(self, items: list[BatchItem] | list[ExclusiveItem]) -> bool:
        """After close()'s grace period: fail ``items`` (True)."""
        if self._close_deadline is None or time.monotonic() < self._close_deadline:
            return False
        for item in items:
            if not item.future.done():
                item.future.set_exception(_closed_before_done())
        return True

    def _interruptibly(self, compute: Callable[[], list[Transcript]]) -> list[Transcript]:
        """Run ``compute`` (a batch forward) as the batch runner's job, serving the streams whenever it hands the
        model back; raises what ``compute`` raises, or :class:`EngineClosedError` past close()'s grace period."""
        future = self._batch_runner.submit(compute)
        self._slice_started = time.monotonic()
        while not self._batch_runner.resume(self._batch_should_yield):
            if self._close_deadline is not None and time.monotonic() >= self._close_deadline:
                self._batch_runner.cancel()
                break
            self._service_streams()
            self._slice_started = time.monotonic()
        if future.cancelled():
            raise _closed_before_done()
        result: list[Transcript] = future.result()
        return result

    def _batch_should_yield(self) -> bool:
        """On the batch job's thread, at every checkpoint: hand the model back when streaming work waits and the
        slice is used up or a final is waiting (cheap checks first: this runs at every decoder step), or when
        close()'s grace period is over."""
        if self._close_deadline is not None and time.monotonic() >= self._close_deadline:
            return True
        if not self._poke_pending.is_set():
            return False
        return (time.monotonic() - self._slice_started >= self.options.batch_slice_s
                or self._streams.final_waiting())

    def _service_streams(self) -> None:
        self._poke_pending.clear()
        try:
            more = self._streams.service()
        except Exception:  # never let streaming bookkeeping kill the worker
            logger.exception("streaming service failed")
            return
        if more:
            self._poke()

    def _buckets(self, items: list[BatchItem]) -> list[list[BatchItem]]:
        """Groups of items for one forward each, by the bucketing policy; while streams are live, a group holds
        less padded audio so the streams are served between groups."""
        cap_s = self.options.max_batch_audio_s
        if self._streams.active:
            cap_s = min(cap_s, self.options.stream_interleave_audio_s)
        limits = BucketLimits(max_batch=self.options.max_batch, max_padded_samples=int(cap_s * SAMPLE_RATE_HZ))
        return [[items[i] for i in group] for group in self._bucketing([i.samples for i in items], limits)]

    def _run_batch(self, group: list[BatchItem]) -> None:
        for item in [i for i in group if i.owner.cancelled()]:
            item.future.cancel()
        group = [i for i in group if not i.future.cancelled()]
        if not group:
            return
        now = time.monotonic()
        timestamps = any(i.timestamps for i in group)
        try:
            transcripts = self._interruptibly(
                lambda: self._recognizer.transcribe([i.audio for i in group], timestamps=timestamps))
        except EngineClosedError as exc:
            for item in group:
                item.future.set_exception(exc)
            return
        except Exception as exc:  # a failed batch must not take the worker down; retry alone, then report
            if len(group) > 1:
                logger.warning("batch of %d failed (%s); retrying one by one", len(group), exc)
                for item in group:
                    self._run_batch([item])
                return
            logger.exception("inference failed")
            group[0].future.set_exception(exc)
            return
        self._heap.served(sum(i.audio.shape[0] for i in group) / SAMPLE_RATE_HZ)
        for item, transcript in zip(group, transcripts):
            item.future.set_result(Done(transcript, queue_wait_s=now - item.enqueued, batch_size=len(group)))

    def _run_exclusive(self, item: ExclusiveItem) -> None:
        if item.owner.cancelled():
            item.future.cancel()
            return
        waited = time.monotonic() - item.enqueued
        try:
            transcript = self._interruptibly(lambda: [item.run()])[0]
        except EngineClosedError as exc:
            item.future.set_exception(exc)
            return
        except Exception as exc:  # reported to the caller; the worker goes on
            logger.exception("exclusive inference failed")
            item.future.set_exception(exc)
            return
        self._heap.served(transcript.duration_s)
        item.future.set_result(Done(transcript, queue_wait_s=waited, batch_size=1))

    def _fail_pending(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, BatchItem | ExclusiveItem) and not item.future.done():
                item.future.set_exception(EngineClosedError("the engine shut down before this request ran"))


def _closed_before_done() -> EngineClosedError:
    return EngineClosedError("the worker shut down before this request finished (its grace period ended); "
                             "send it again to another worker")
