"""The two paths for long audio: one pass under local attention (alone on the model), or overlapping windows.

Local attention changes the shared model, so that request runs as an :class:`.batching.ExclusiveItem` with the mode
switched for its duration and always switched back (:func:`parakeet_worker.model.local_attention`). Chunked audio
becomes one :class:`.batching.BatchItem` per window, batched like any other request, and merged at the seams by
timestamps (:mod:`.chunking`) once the last window is done.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable

import numpy as np

from parakeet_worker.engine.batching import BatchItem, Done, ExclusiveItem
from parakeet_worker.engine.chunking import Window, merge_transcripts, plan_windows
from parakeet_worker.engine.options import ChunkingInfo, ProgressCallback
from parakeet_worker.errors import InputError
from parakeet_worker.model import LoadedModel, Recognizer, local_attention
from parakeet_worker.transcript import Transcript


def local_attention_item(loaded: LoadedModel, recognizer: Recognizer, audio: np.ndarray, timestamps: bool,
                         owner: concurrent.futures.Future) -> ExclusiveItem:
    """One pass over ``audio`` under local attention, to run alone on the engine's worker thread."""

    def run() -> Transcript:
        with local_attention(loaded):
            return recognizer.transcribe([audio], timestamps=timestamps)[0]

    return ExclusiveItem(run, owner)


class ChunkedJob:
    """The windows of one chunked request: they run as ordinary batch items; when the last one is done the merged
    transcript (or the first failure) goes to ``finish``. Progress is reported after every window."""

    def __init__(self, audio: np.ndarray, chunk_s: float, overlap_s: float, full_attention_max_s: float,
                 owner: concurrent.futures.Future, progress: ProgressCallback | None) -> None:
        if chunk_s > full_attention_max_s:
            raise InputError(f"chunk_duration {chunk_s:.0f} s is above the full-attention limit "
                             f"{full_attention_max_s:.0f} s of this device")
        try:
            self.windows: list[Window] = plan_windows(audio.shape[0], chunk_s, overlap_s)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        self.items = [BatchItem(audio[w.start_sample:w.end_sample], True, owner) for w in self.windows]
        self.info = ChunkingInfo(chunk_s=chunk_s, overlap_s=overlap_s, windows=len(self.windows))
        self._owner = owner
        self._progress = progress
        self._remaining = len(self.items)
        self._lock = threading.Lock()

    def start(self, put: Callable[[BatchItem], None], finish: Callable[[concurrent.futures.Future[Done]], None]) -> None:
        """Queue every window with ``put``; ``finish`` gets the merged outcome."""
        for item in self.items:
            put(item)
            item.future.add_done_callback(lambda _: self._window_done(finish))

    def _window_done(self, finish: Callable[[concurrent.futures.Future[Done]], None]) -> None:
        with self._lock:
            self._remaining -= 1
            left = self._remaining
        total = len(self.items)
        if self._progress is not None:
            self._progress({"stage": "transcribing", "chunks_done": total - left, "chunks_total": total})
        if left or self._owner.done():  # not the last window, or cancelled by the caller (the rest were skipped)
            return
        finish(self._merged())

    def _merged(self) -> concurrent.futures.Future[Done]:
        merged: concurrent.futures.Future[Done] = concurrent.futures.Future()
        failed = next((i.future.exception() for i in self.items if i.future.exception() is not None), None)
        if failed is not None:
            merged.set_exception(failed)
            return merged
        done = [i.future.result() for i in self.items]
        merged.set_result(Done(merge_transcripts(self.windows, [d.transcript for d in done]),
                               queue_wait_s=done[0].queue_wait_s, batch_size=max(d.batch_size for d in done)))
        return merged
