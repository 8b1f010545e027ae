"""The Parakeet engine: the one owner of the model.

All inference runs on the engine's own worker thread, fed by a queue; callers get futures (``submit``) or await
them (``transcribe``) — nothing heavy ever runs on an asyncio loop. The worker collects requests for a few
milliseconds, buckets them by length and runs each bucket as one batch. Long audio either runs alone with local
attention (switched on for that pass and always switched back) or is cut into overlapping windows that are
batched like any other request and merged at the seams by timestamps (:mod:`chunking`).
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
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar

import numpy as np
import torch

from parakeet_worker.audio import DEFAULT_MAX_DURATION_S
from parakeet_worker.config import Settings
from parakeet_worker.engine.chunking import Window, merge_windows, plan_windows
from parakeet_worker.errors import (
    AudioTooLongError,
    EmptyAudioError,
    EngineClosedError,
    EngineOverloadedError,
    InputError,
)
from parakeet_worker.model import LoadedModel, Recognizer, chunked_subsampling, load_model
from parakeet_worker.streaming import (
    EventCallback,
    StreamHandle,
    StreamingConfig,
    StreamingRecognizer,
    StreamManager,
    StreamOptions,
)
from parakeet_worker.transcript import (
    SAMPLE_RATE_HZ,
    SegmentTiming,
    TokenTiming,
    Transcript,
    WordTiming,
    segments_from_words,
)

logger = logging.getLogger(__name__)

MODEL_CARD_FULL_ATTENTION_S = 24 * 60  # parakeet-tdt-0.6b-v3 model card: 24 min in one pass on an 80 GB A100
MODEL_CARD_GPU_BYTES = 80 * 1024**3
CPU_FULL_ATTENTION_S = 10 * 60  # on CPU the quadratic attention cost, not memory, is the limit
MIN_AUDIO_S = 0.1
LOCAL_ATTENTION_CONTEXT = (256, 256)
PARAKEET_V3_LANGUAGES = ("bg", "hr", "cs", "da", "nl", "en", "et", "fi", "fr", "de", "el", "hu", "it", "lv", "lt",
                         "mt", "pl", "pt", "ro", "sk", "sl", "es", "sv", "ru", "uk")

AttentionChoice = Literal["auto", "full", "local"]
ProgressCallback = Callable[[dict[str, object]], None]
_Timed = TypeVar("_Timed", WordTiming, TokenTiming)


@dataclass(frozen=True)
class EngineOptions:
    max_batch: int = 16
    batch_wait_ms: float = 5.0
    max_batch_audio_s: float = 480.0  # padded audio seconds in one forward pass
    full_attention_max_s: float | None = None  # None: from the model card, scaled by device memory
    max_audio_s: float = DEFAULT_MAX_DURATION_S  # the one limit on audio length, shared with the decoder
    default_chunk_s: float = 60.0
    default_overlap_s: float = 5.0
    max_queue: int = 1024
    # While streams are live, offline work runs in groups of at most this much padded audio between two
    # streaming rounds, so batch jobs cannot starve real-time sessions.
    stream_interleave_audio_s: float = 30.0
    max_stream_batch: int = 32
    # Seconds one streaming forward may take: more ready streams are split into several forwards, so a client's
    # finalize waits for at most one of them (0: one forward for all). See engine_streams.
    stream_step_budget_s: float = 0.05
    # Silence after speech after which a stream's final pass runs ahead of its end (engine_streams: early final
    # pass); 0: finals are computed when the utterance ends.
    stream_early_final_s: float = 0.16
    streaming: StreamingConfig = field(default_factory=StreamingConfig)


@dataclass(frozen=True)
class TranscribeOptions:
    timestamps: bool = False
    attention: AttentionChoice = "auto"  # "local" forces local attention; "full" refuses to switch
    chunked: bool = False
    chunk_s: float | None = None
    overlap_s: float | None = None


@dataclass(frozen=True)
class ChunkingInfo:
    chunk_s: float
    overlap_s: float
    windows: int


@dataclass(frozen=True)
class TranscriptionResult:
    text: str
    duration_s: float
    words: tuple[WordTiming, ...]
    segments: tuple[SegmentTiming, ...]
    tokens: tuple[TokenTiming, ...]
    has_timestamps: bool
    model: str
    device: str
    dtype: str
    attention: str  # "full" or "local[256,256]"
    chunking: ChunkingInfo | None
    processing_s: float
    queue_wait_s: float
    batch_size: int


@dataclass(frozen=True)
class EngineInfo:
    model: str
    source: str
    parameters: int
    device: str
    dtype: str
    languages: tuple[str, ...]
    sample_rate: int
    max_audio_s: float
    full_attention_max_s: float
    local_attention_context: tuple[int, int]
    max_batch: int
    load_seconds: float
    warmup_seconds: float


# --- work items ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Done:
    """What the worker thread hands back for one item."""

    transcript: Transcript
    queue_wait_s: float
    batch_size: int


@dataclass
class _BatchItem:
    audio: np.ndarray
    timestamps: bool
    owner: concurrent.futures.Future  # the caller's future: once cancelled, the item is skipped
    future: concurrent.futures.Future[_Done] = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def samples(self) -> int:
        return int(self.audio.shape[0])


@dataclass
class _ExclusiveItem:
    """Work that must run alone on the model (it changes the attention mode for its duration)."""

    run: Callable[[], Transcript]
    owner: concurrent.futures.Future
    future: concurrent.futures.Future[_Done] = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.monotonic)


_STOP = object()
_POKE = object()  # streaming work is waiting


def default_full_attention_max_s(device: torch.device) -> float:
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return MODEL_CARD_FULL_ATTENTION_S * min(1.0, total / MODEL_CARD_GPU_BYTES)
    return float(CPU_FULL_ATTENTION_S)


def _shift(items: tuple[_Timed, ...], offset_s: float) -> list[_Timed]:
    """Window-relative timings to absolute ones."""
    return [replace(x, start=round(x.start + offset_s, 3), end=round(x.end + offset_s, 3)) for x in items]


class ParakeetEngine:
    """Owns the model; thread-safe ``submit``/``transcribe``; call ``close()`` to stop the worker thread."""

    def __init__(self, loaded: LoadedModel, options: EngineOptions | None = None) -> None:
        self.options = options or EngineOptions()
        self.loaded = loaded
        self.recognizer = Recognizer(loaded)
        self.full_attention_max_s = self.options.full_attention_max_s or default_full_attention_max_s(loaded.device)
        encoder = loaded.model.encoder
        self._use_bias = bool(loaded.model.cfg.encoder.get("use_bias", True))
        if hasattr(encoder, "change_subsampling_conv_chunking_factor"):
            encoder.change_subsampling_conv_chunking_factor(1)  # auto-chunk the subsampling convs on long inputs
        # ...and run them in 60 s windows, so hours of audio do not need one multi-GB conv output (see module)
        chunked_subsampling.install(encoder)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=self.options.max_queue)
        self._closed = threading.Event()
        self._poke_pending = threading.Event()
        self.streamer = StreamingRecognizer(self.recognizer, self.options.streaming)
        self.streams = StreamManager(self.streamer, self._poke, max_stream_batch=self.options.max_stream_batch,
                                     step_budget_s=self.options.stream_step_budget_s,
                                     early_final_s=self.options.stream_early_final_s)
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

    def close(self, timeout: float = 30.0) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._queue.put(_STOP)
        self._thread.join(timeout)

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
            item = _BatchItem(audio, opts.timestamps, result)
            self._put(item)
            item.future.add_done_callback(lambda f: self._finish(result, f, opts, duration, started, "full", None))
        return result

    def open_stream(self, on_event: EventCallback, options: StreamOptions | None = None,
                    stream_id: str | None = None) -> StreamHandle:
        """A live stream served by this engine's worker thread (see :mod:`engine_streams`)."""
        if self._closed.is_set():
            raise EngineClosedError("the engine is shut down and accepts no more work")
        return self.streams.open(on_event, options, stream_id)

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

    def _finish(self, result: concurrent.futures.Future[TranscriptionResult], done: concurrent.futures.Future[_Done],
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
        def run() -> Transcript:
            with self.local_attention():
                return self.recognizer.transcribe([audio], timestamps=opts.timestamps)[0]

        item = _ExclusiveItem(run, result)
        self._put(item)
        label = f"local[{LOCAL_ATTENTION_CONTEXT[0]},{LOCAL_ATTENTION_CONTEXT[1]}]"
        item.future.add_done_callback(
            lambda f: self._finish(result, f, opts, audio.shape[0] / SAMPLE_RATE_HZ, started, label, None))

    def _submit_chunked(self, audio: np.ndarray, opts: TranscribeOptions,
                        result: concurrent.futures.Future[TranscriptionResult], started: float,
                        progress: ProgressCallback | None) -> None:
        chunk_s = opts.chunk_s or self.options.default_chunk_s
        overlap_s = self.options.default_overlap_s if opts.overlap_s is None else opts.overlap_s
        if chunk_s > self.full_attention_max_s:
            raise InputError(f"chunk_duration {chunk_s:.0f} s is above the full-attention limit "
                             f"{self.full_attention_max_s:.0f} s of this device")
        try:
            windows = plan_windows(audio.shape[0], chunk_s, overlap_s)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        items = [_BatchItem(audio[w.start_sample:w.end_sample], True, result) for w in windows]
        info = ChunkingInfo(chunk_s=chunk_s, overlap_s=overlap_s, windows=len(windows))
        remaining = [len(items)]
        lock = threading.Lock()

        def window_done(_: concurrent.futures.Future) -> None:
            with lock:
                remaining[0] -= 1
                left = remaining[0]
            if progress is not None:
                progress({"stage": "transcribing", "chunks_done": len(items) - left, "chunks_total": len(items)})
            if left:
                return
            if result.done():  # cancelled by the caller: the remaining windows were skipped
                return
            merged: concurrent.futures.Future[_Done] = concurrent.futures.Future()
            failed = next((i.future.exception() for i in items if i.future.exception() is not None), None)
            if failed is not None:
                merged.set_exception(failed)
            else:
                done = [i.future.result() for i in items]
                merged.set_result(_Done(self._merge(windows, [d.transcript for d in done]),
                                        queue_wait_s=done[0].queue_wait_s, batch_size=max(d.batch_size for d in done)))
            self._finish(result, merged, opts, audio.shape[0] / SAMPLE_RATE_HZ, started, "full", info)

        for item in items:
            self._put(item)
            item.future.add_done_callback(window_done)

    @staticmethod
    def _merge(windows: list[Window], transcripts: list[Transcript]) -> Transcript:
        absolute = [_shift(t.words, w.start_s) for w, t in zip(windows, transcripts)]
        words = merge_windows(windows, absolute)
        # Tokens follow the word decision: each window owns the time between the seams its words define.
        bounds = [0.0]
        for k in range(1, len(windows)):
            before = [w.end for w in words if w.end <= windows[k - 1].end_s and w.start < windows[k].start_s + 1e-9]
            after = [w.start for w in words if w.start >= windows[k].start_s]
            left_end = max(before or [windows[k].start_s])
            right_start = min([a for a in after if a >= left_end] or [windows[k - 1].end_s])
            bounds.append((left_end + right_start) / 2)
        bounds.append(float("inf"))
        tokens: list[TokenTiming] = []
        for k, (w, t) in enumerate(zip(windows, transcripts)):
            for tok in _shift(t.tokens, w.start_s):
                if bounds[k] <= (tok.start + tok.end) / 2 < bounds[k + 1]:
                    tokens.append(tok)
        duration = windows[-1].end_s
        return Transcript(text=" ".join(w.word for w in words), duration_s=duration, words=tuple(words),
                          segments=segments_from_words(words), tokens=tuple(tokens), has_timestamps=True)

    # --- attention mode -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def local_attention(self) -> Iterator[None]:
        """Local attention for the duration of the block; full attention is restored even when the block fails.

        Only the engine thread may use it (it changes the shared model)."""
        self._set_attention("rel_pos_local_attn", list(LOCAL_ATTENTION_CONTEXT))
        try:
            yield
        finally:
            self._set_attention("rel_pos", [-1, -1])

    def _set_attention(self, kind: str, context: list[int]) -> None:
        encoder = self.loaded.model.encoder
        encoder.change_attention_model(kind, context, update_config=False, device=self.loaded.device)
        # NeMo 3.0.0 builds the new attention modules with biases even on use_bias=False models (random values
        # that perturb every output), in float32 and in train mode: undo all three.
        for layer in encoder.layers:
            attn = layer.self_attn
            if not self._use_bias:
                for name in ("linear_q", "linear_k", "linear_v", "linear_out"):
                    lin = getattr(attn, name, None)
                    if lin is not None and lin.bias is not None:
                        lin.register_parameter("bias", None)
        encoder.to(device=self.loaded.device, dtype=self.loaded.dtype)
        for param in encoder.parameters():
            param.requires_grad_(False)
        self.loaded.model.eval()

    # --- the worker thread ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            first = self._queue.get()
            if first is _STOP:
                break
            items = [first]
            deadline = time.monotonic() + self.options.batch_wait_ms / 1000
            stop_after = False
            while len(items) < self.options.max_batch * 4 and first is not _POKE:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=timeout)
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop_after = True
                    break
                items.append(nxt)
            self._service_streams()
            batchable = [i for i in items if isinstance(i, _BatchItem)]
            for group in self._buckets(batchable):
                self._run_batch(group)
                self._service_streams()
            for item in items:
                if isinstance(item, _ExclusiveItem):
                    self._run_exclusive(item)
                    self._service_streams()
            if stop_after:
                break
        self.streams.close_all()
        self._fail_pending()

    def _service_streams(self) -> None:
        self._poke_pending.clear()
        try:
            more = self.streams.service()
        except Exception:  # never let streaming bookkeeping kill the worker
            logger.exception("streaming service failed")
            return
        if more:
            self._poke()

    def _buckets(self, items: list[_BatchItem]) -> list[list[_BatchItem]]:
        """Sort by length and cut into groups bounded by count and padded audio seconds."""
        cap_s = self.options.max_batch_audio_s
        if self.streams.active:
            cap_s = min(cap_s, self.options.stream_interleave_audio_s)
        cap = int(cap_s * SAMPLE_RATE_HZ)
        groups: list[list[_BatchItem]] = []
        current: list[_BatchItem] = []
        for item in sorted(items, key=lambda i: i.samples):
            padded = item.samples * (len(current) + 1)
            if current and (len(current) >= self.options.max_batch or padded > cap):
                groups.append(current)
                current = []
            current.append(item)
        if current:
            groups.append(current)
        return groups

    def _run_batch(self, group: list[_BatchItem]) -> None:
        for item in [i for i in group if i.owner.cancelled()]:
            item.future.cancel()
        group = [i for i in group if not i.future.cancelled()]
        if not group:
            return
        now = time.monotonic()
        timestamps = any(i.timestamps for i in group)
        try:
            transcripts = self.recognizer.transcribe([i.audio for i in group], timestamps=timestamps)
        except Exception as exc:  # a failed batch must not take the worker down; retry alone, then report
            if len(group) > 1:
                logger.warning("batch of %d failed (%s); retrying one by one", len(group), exc)
                for item in group:
                    self._run_batch([item])
                return
            logger.exception("inference failed")
            group[0].future.set_exception(exc)
            return
        for item, transcript in zip(group, transcripts):
            item.future.set_result(_Done(transcript, queue_wait_s=now - item.enqueued, batch_size=len(group)))

    def _run_exclusive(self, item: _ExclusiveItem) -> None:
        if item.owner.cancelled():
            item.future.cancel()
            return
        waited = time.monotonic() - item.enqueued
        self.streams.cancel_early_pass()  # it may change the model (attention mode) under a suspended pass
        try:
            transcript = item.run()
        except Exception as exc:  # reported to the caller; the worker goes on
            logger.exception("exclusive inference failed")
            item.future.set_exception(exc)
            return
        item.future.set_result(_Done(transcript, queue_wait_s=waited, batch_size=1))

    def _fail_pending(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _BatchItem | _ExclusiveItem) and not item.future.done():
                item.future.set_exception(EngineClosedError("the engine shut down before this request ran"))
