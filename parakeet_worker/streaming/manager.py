"""The stream scheduler: live streams on the engine's worker thread — audio inboxes, endpointing, batched steps.

Everything that touches the model or a stream's decoder state runs in :meth:`StreamManager.service`, called by the
engine's worker thread between batch-job groups; the asyncio side only calls :class:`.handle.StreamHandle` methods.

One service call, in phases: take every stream's inbox → VAD over the new audio (all streams batched) → accept the
audio utterance by utterance, with one batched flush of the finals after each (streams that hit an endpoint or
asked for a final; the speech starts and stops the VAD found go out before it, to the streams that asked) → a
slice of early final pass (:mod:`.early_pass`, for the streams whose speaker just paused) → partial steps for
every stream with a chunk ready (one batched forward per group); when the last call left streams with a chunk
ready (the CPU is saturated), their steps come before any early pass.

Steps are cut into groups whose forward fits ``step_budget_s`` (from a running estimate of the seconds one window
costs), and a client's ``finalize``/``stop`` waiting in an inbox ends the round early: a final waits for at most
one group's forward, not for every stream's step. On a GPU one forward holds every stream well inside the budget;
on a few CPU cores the budget splits them, which costs little throughput there (CPU cost grows with the batch).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from parakeet_worker.model import Recognizer, Transcriber
from parakeet_worker.streaming.early_pass import EarlyPasses, early_pass_stale
from parakeet_worker.streaming.handle import (
    EventCallback,
    FinalReason,
    Inbox,
    LiveStream,
    StreamEvent,
    StreamHandle,
    StreamOptions,
)
from parakeet_worker.streaming.recognizer import StreamingRecognizer
from parakeet_worker.streaming.types import StepResult, StreamBacklogError, StreamGeometry, StreamStats
from parakeet_worker.streaming.vad import FRAME_SAMPLES, BatchedVad, SpeechTurns, VadStream, VadUnavailableError
from parakeet_worker.transcript import SAMPLE_RATE_HZ

logger = logging.getLogger(__name__)

Part = tuple[np.ndarray, FinalReason | None]  # audio of one utterance, and how it ends (None: it goes on)


def _vad_pieces(inbox: Inbox) -> list[tuple[int, int, bool]]:
    """(start, end, ends at a finalize) of an inbox's audio cut at its finalizes."""
    pieces: list[tuple[int, int, bool]] = []
    start = 0
    for at in sorted(set(inbox.finalize_at)):
        at = min(max(at, 0), inbox.audio.shape[0])
        pieces.append((start, at, True))
        start = at
    if start < inbox.audio.shape[0] or not pieces:
        pieces.append((start, inbox.audio.shape[0], False))
    return pieces


def utterance_parts(audio: np.ndarray, endpoints: list[int], finalize_at: list[int], stop: bool) -> list[Part]:
    """A stream's new audio cut where its utterances end, in audio order: VAD endpoints and client finalizes (each
    at the position in the audio where it was asked), then stop after everything. A finalize and an endpoint at the
    same position end one utterance."""
    ends = sorted([(c, 1, "endpoint") for c in endpoints] + [(f, 0, "finalize") for f in finalize_at])
    parts: list[Part] = []
    start = 0
    for position, _, reason in ends:
        if reason == "endpoint" and parts and parts[-1][1] == "finalize" and position == start:
            continue  # the client's finalize already ended this utterance here
        parts.append((audio[start:position], "endpoint" if reason == "endpoint" else "finalize"))
        start = position
    if start < audio.shape[0] or stop or not parts:
        parts.append((audio[start:], "stop" if stop else None))
    return parts


def _turn_bounds(live: LiveStream, parts: list[Part]) -> list[int]:
    """Where each of the stream's new parts ends, counted like the VAD's frames: in samples from the stream's
    first sample (the VAD has just taken all of the new audio)."""
    assert live.vad is not None
    bound = live.vad.frames * FRAME_SAMPLES + live.vad.pending.shape[0] - sum(a.shape[0] for a, _ in parts)
    bounds = []
    for audio, _ in parts:
        bound += audio.shape[0]
        bounds.append(bound)
    return bounds


class StreamManager:
    """Owned by the engine: registry of live streams and the per-iteration streaming work.

    ``early_pass_recognizer`` runs the early final passes (default: a :class:`Recognizer` of its own on the
    streamer's model); a test may inject one that fails."""

    def __init__(self, streamer: StreamingRecognizer, poke: Callable[[], None], max_stream_batch: int = 32,
                 step_budget_s: float = 0.05, early_final_s: float = 0.16,
                 early_pass_recognizer: Transcriber | None = None) -> None:
        self.streamer = streamer
        self.poke = poke
        self.max_stream_batch = max_stream_batch
        self.step_budget_s = step_budget_s  # 0: no budget, every ready stream (up to max_stream_batch) in one forward
        self.max_backlog_samples = streamer.max_backlog_samples
        self._window_cost_s: float | None = None  # running estimate: seconds of forward per stream window
        self._lock = threading.Lock()
        self._live: dict[str, LiveStream] = {}
        self._ids = itertools.count(1)
        self._vad: BatchedVad | None = None
        self._early = EarlyPasses(streamer, early_pass_recognizer or Recognizer(streamer.recognizer.loaded),
                                  early_final_s=early_final_s, step_budget_s=step_budget_s, lives=self._lives,
                                  final_waiting=self._final_waiting)
        self._behind = False  # the last service call left streams with a chunk ready (the CPU is saturated)
        self._steps_run = 0
        self._step_seconds = 0.0
        self._early_used = 0  # early final passes that became a final

    # --- any thread -------------------------------------------------------------------------------------------------
    def open(self, on_event: EventCallback, options: StreamOptions | None = None,
             stream_id: str | None = None) -> StreamHandle:
        opts = options or StreamOptions()
        sid = stream_id or f"s{next(self._ids)}"
        state = self.streamer.new_stream(sid, final_pass=opts.final_pass)
        early = self.early_final_s > 0 and state.final_pass
        needed = opts.endpointing or opts.vad_events  # these need a VAD; early passes use one when there is one
        if (needed or early) and self._vad is None:
            try:
                self._vad = BatchedVad()  # loads silero's ONNX model once (a few ms); raises when it is missing
            except VadUnavailableError:
                if needed:
                    raise
                early = False  # no VAD: finals are computed at the end, as without early passes
        handle = StreamHandle(self, sid, opts)
        turns = SpeechTurns(stop_s=opts.speech_stop_s) if opts.vad_events else None
        vad = self._vad.new_stream(opts.endpoint, turns) if (needed or early) and self._vad else None
        live = LiveStream(handle=handle, on_event=on_event, state=state, vad=vad, endpointing=opts.endpointing)
        with self._lock:
            if sid in self._live:
                raise ValueError(f"a stream with id {sid!r} is already open")
            self._live[sid] = live
        return handle

    @property
    def early_final_s(self) -> float:
        """Silence after speech after which a stream's final pass runs early (0: never)."""
        return self._early.early_final_s

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._live)

    def pending_samples(self, handle: StreamHandle) -> int:
        live = self._live.get(handle.stream_id)
        return live.state.pending_samples if live is not None else 0

    def geometry(self) -> StreamGeometry:
        cfg = self.streamer.config
        return StreamGeometry(left_s=cfg.left_s, chunk_s=cfg.chunk_s, right_s=cfg.right_s,
                              final_pass_max_s=cfg.final_pass_max_s, early_final_s=self.early_final_s)

    def stats(self) -> StreamStats:
        return StreamStats(active=self.active, steps=self._steps_run, step_seconds=self._step_seconds,
                           early_passes_run=self._early.run, early_passes_used=self._early_used,
                           final_passes=self.streamer.final_passes)

    def final_waiting(self) -> bool:
        """A stream has a ``finalize`` or ``stop`` queued (any thread)."""
        return self._final_waiting()

    def group_size(self) -> int:
        """Streams per forward: as many as fit the step budget by the running cost estimate."""
        if self.step_budget_s <= 0 or self._window_cost_s is None:
            return self.max_stream_batch
        return max(1, min(self.max_stream_batch, int(self.step_budget_s / self._window_cost_s)))

    # --- the engine's worker thread -----------------------------------------------------------------------------------
    def service(self, max_rounds: int = 4) -> bool:
        """Do the streaming work that is due. Returns True when more is ready (the caller should come back soon)."""
        lives = self._lives()
        if not lives:
            self._early.cancel()  # its streams are gone
            return False
        taken = self._take_inboxes(lives)
        endpoints = self._detect_endpoints(taken)
        self._accept_utterances([(live, utterance_parts(inbox.audio, endpoints.get(id(live), []),
                                                        inbox.finalize_at, inbox.stop)) for live, inbox in taken])
        return self._compute(max_rounds)

    @property
    def early_pass_running(self) -> bool:
        """An early final pass has started and not ended (it may be suspended between slices)."""
        return self._early.running

    def cancel_early_pass(self) -> None:
        """Drop the pending early pass (before the engine changes the model, and at shutdown); those streams'
        finals are computed at the end."""
        self._early.cancel()

    def close_all(self) -> None:
        self._early.close()
        for live in self._lives():
            self._close(live, "engine_closed")

    # --- service phases -----------------------------------------------------------------------------------------------
    def _take_inboxes(self, lives: list[LiveStream]) -> list[tuple[LiveStream, Inbox]]:
        """Every stream's queued audio and requests; aborted streams close here."""
        taken = []
        for live in lives:
            inbox = live.handle._take()
            if inbox.abort:
                self._close(live, "abort")
                continue
            taken.append((live, inbox))
        return taken

    def _detect_endpoints(self, taken: list[tuple[LiveStream, Inbox]]) -> dict[int, list[int]]:
        """The VAD over the new audio of every stream that has one (one batch): where utterances end, for streams
        with endpointing (keyed by ``id(live)``); voice after an early final pass discards the pass."""
        with_vad: list[tuple[LiveStream, Inbox, VadStream]] = []
        for live, inbox in taken:
            if live.vad is not None and (inbox.audio.size or inbox.finalize_at):
                with_vad.append((live, inbox, live.vad))
        if not with_vad:
            return {}
        assert self._vad is not None  # a stream has a VadStream only once the BatchedVad exists
        # The VAD runs piece by piece between a stream's finalizes (one batch per piece index; most inboxes hold
        # one piece): at each finalize the endpointer restarts where the client ended the utterance.
        pieces = [_vad_pieces(inbox) for _, inbox, _ in with_vad]
        found: list[list[int]] = [[] for _ in with_vad]
        for k in range(max(len(p) for p in pieces)):
            rows = [i for i, p in enumerate(pieces) if k < len(p)]
            cuts = self._vad.process([with_vad[i][2] for i in rows],
                                     [with_vad[i][1].audio[pieces[i][k][0]:pieces[i][k][1]] for i in rows])
            for i, piece_cuts in zip(rows, cuts):
                start, _, at_finalize = pieces[i][k]
                found[i].extend(start + c for c in piece_cuts)
                if at_finalize:
                    with_vad[i][2].restart_endpointer()
        for live, _, _ in with_vad:  # voice after an early final pass: the final must hear it
            if live.state.early is not None and live.vad is not None and early_pass_stale(live.vad, live.early_voiced):
                self.streamer.discard_early(live.state)
        return {id(live): cuts for (live, _, _), cuts in zip(with_vad, found) if live.endpointing}

    def _accept_utterances(self, parts: list[tuple[LiveStream, list[Part]]]) -> None:
        """Part k of every stream is accepted in round k, and the streams whose part ends an utterance are flushed
        together before the next round. The speech events the VAD found in a part go out before that flush (so
        they name the utterance they belong to, and a speech_stop precedes its endpoint's final)."""
        rounds = max((len(p) for _, p in parts), default=0)
        speaking = [(live, p, _turn_bounds(live, p)) for live, p in parts
                    if live.vad is not None and live.vad.turns is not None and live.vad.turns.found]
        for r in range(rounds):
            for live, stream_parts, bounds in speaking:
                if r < len(stream_parts) and not live.handle.closed:
                    self._speech_events(live, bounds[r] if r + 1 < len(stream_parts) else None)
            finals: list[tuple[LiveStream, FinalReason]] = []
            for live, stream_parts in parts:
                if r >= len(stream_parts) or live.handle.closed:
                    continue
                audio, ends = stream_parts[r]
                if audio.size:
                    try:
                        self.streamer.accept(live.state, audio)
                    except StreamBacklogError as exc:  # push() checks too; this is the last line of defence
                        exc.dropped_s = audio.shape[0] / SAMPLE_RATE_HZ
                        live.emit(StreamEvent(live.stream_id, "error", live.utterance, error=exc))
                if ends is not None:
                    finals.append((live, ends))
            if finals:
                self._flush(finals)

    def _compute(self, max_rounds: int) -> bool:
        """Partial steps and early final passes, in the order the load calls for; True when more is ready."""
        if self._behind:  # the last call left streams with a chunk ready: their partials come first
            self._behind = self._steps(max_rounds)
            if self._behind or self._final_waiting():
                return True
            return self._early.run_slice()
        # Otherwise a slice of early final pass first: a paused speaker's finalize usually follows within a few
        # hundred ms and needs that pass done, where a partial can wait one slice.
        early_more = self._early.run_slice()
        if self._final_waiting():
            return True
        self._behind = self._steps(max_rounds)
        return self._behind or early_more

    def _steps(self, max_rounds: int) -> bool:
        """Partial steps for the streams with a chunk ready, longest-waiting first, in groups that fit the step
        budget; stops before any group when a client's final is waiting. True when streams are left ready."""
        for _ in range(max_rounds):
            ready = self._ready()
            if not ready:
                return False
            ready.sort(key=lambda lv: lv.last_step)  # a round cut short by a final resumes with who was skipped
            size = self.group_size()
            for start in range(0, len(ready), size):
                if self._final_waiting():
                    return True  # serve the final first; the remaining streams step on the next call
                self._step(ready[start : start + size])
        return bool(self._ready())

    def _step(self, group: list[LiveStream]) -> None:
        started = time.monotonic()
        try:
            results = self.streamer.step([lv.state for lv in group])
        except Exception as exc:  # the streams in this batch cannot go on; the engine and other streams do
            logger.exception("streaming step failed for %d streams", len(group))
            self._fail(group, exc)
            return
        finished = time.monotonic()
        elapsed = finished - started
        for live in group:
            live.last_step = finished
        self._steps_run += 1
        self._step_seconds += elapsed
        cost = elapsed / len(group)
        self._window_cost_s = cost if self._window_cost_s is None else 0.8 * self._window_cost_s + 0.2 * cost
        for live, result in zip(group, results):
            live.emit(StreamEvent(live.stream_id, "partial", live.utterance, result=result))

    def _flush(self, finals: list[tuple[LiveStream, FinalReason]]) -> None:
        """The finals of these streams' utterances (one batched flush); each stream then starts its next utterance
        or, on stop, closes."""
        work = [live for live, reason in finals if self._has_speech_to_decode(live, reason)]
        self._early.finish(work)  # one of them has its final pass in progress: it ends now, then serves
        for live in work:
            live.state.pass_end = self._early.pass_end(live)
        self._early_used += sum(1 for lv in work if lv.state.early is not None)
        try:
            done = dict(zip((id(lv) for lv in work), self.streamer.finalize([lv.state for lv in work])))
            results = [done[id(lv)] if id(lv) in done else self.streamer.snapshot(lv.state) for lv, _ in finals]
        except Exception as exc:
            logger.exception("final flush failed for %d streams", len(work))
            self._fail([live for live, _ in finals], exc)
            return
        for (live, reason), result in zip(finals, results):
            self._end_utterance(live, reason, result)

    @staticmethod
    def _has_speech_to_decode(live: LiveStream, reason: FinalReason) -> bool:
        """A stream that received no audio has nothing to decode: its final is empty (the model is not asked to
        transcribe the flush padding alone, where a model may hallucinate a word). Likewise when the VAD heard no
        speech since the last endpoint: nothing but silence is left to decode. The VAD is asked as of the
        utterance's end: it may have run further, over the later utterances of the same inbox."""
        if live.state.received <= 0:
            return False
        if reason == "endpoint" or not live.endpointing or live.vad is None or live.state.words:
            return True
        return live.vad.heard_speech_at(live.samples_before + live.state.received - live.state.padding)

    @staticmethod
    def _speech_events(live: LiveStream, until: int | None) -> None:
        """The speech starts and stops the VAD found in the stream's audio up to sample ``until`` (None: all)."""
        assert live.vad is not None and live.vad.turns is not None
        found = live.vad.turns.found
        taken = len(found) if until is None else sum(1 for change in found if change.found_at <= until)
        for change in found[:taken]:
            if change.started:
                live.spoke = live.utterance
            live.emit(StreamEvent(live.stream_id, "speech_start" if change.started else "speech_stop",
                                  live.utterance, at_s=change.at_s))
        del found[:taken]

    def _end_utterance(self, live: LiveStream, reason: FinalReason, result: StepResult) -> None:
        # Nothing heard: no empty final, unless asked for (a finalize) or announced (a speech_start event).
        if reason == "finalize" or result.committed_text or live.spoke == live.utterance:
            live.emit(StreamEvent(live.stream_id, "final", live.utterance, result=result, reason=reason))
            live.utterance += 1
        if reason == "stop":
            self._close(live, "stop")
            return
        # The next utterance starts where this one's audio ended (the flush padding is not real audio).
        live.samples_before += live.state.received - live.state.padding
        live.state = self.streamer.new_stream(live.stream_id, offset_s=live.samples_before / SAMPLE_RATE_HZ,
                                              final_pass=live.handle.options.final_pass)
        if live.vad is not None:
            live.vad.reset_endpoint()
            live.early_speech = live.vad.speech_frames  # that speech was the finished utterance's

    # --- bookkeeping ------------------------------------------------------------------------------------------------
    def _lives(self) -> list[LiveStream]:
        with self._lock:
            return list(self._live.values())

    def _ready(self) -> list[LiveStream]:
        with self._lock:
            return [lv for lv in self._live.values() if not lv.state.ended and self.streamer.ready(lv.state)]

    def _final_waiting(self) -> bool:
        with self._lock:
            return any(lv.handle.final_waiting for lv in self._live.values())

    def _fail(self, lives: list[LiveStream], error: Exception) -> None:
        for live in lives:
            live.emit(StreamEvent(live.stream_id, "error", live.utterance, error=error))
            self._close(live, "error")

    def _close(self, live: LiveStream, reason: str) -> None:
        with self._lock:
            if self._live.pop(live.stream_id, None) is None:
                return
        live.handle.closed = True
        live.emit(StreamEvent(live.stream_id, "closed", live.utterance, reason=reason))
