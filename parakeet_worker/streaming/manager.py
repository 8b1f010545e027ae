"""Live streams on the engine's worker thread: audio inboxes, endpointing, batched streaming steps.

The asyncio side (the WebSocket server) only calls :class:`StreamHandle` methods, which append to an inbox under a
lock and poke the engine; everything that touches the model or a stream's decoder state runs in
:meth:`StreamManager.service`, called by the engine's worker thread between batch-job groups. Results leave
through each stream's ``on_event`` callback, called on the worker thread (it must only hand the event over, e.g.
with ``loop.call_soon_threadsafe``).

Per service call: drain inboxes → VAD over the new audio (all streams batched) → finals for the streams that hit an
endpoint or asked for one (one batched flush) → a slice of early final pass (for the streams whose speaker just
paused) → partial steps for every stream with a chunk ready (one batched forward per round); when the last call
left streams with a chunk ready (the CPU is saturated), their steps come before any early pass.

Early final pass: a final is by default one offline pass over the utterance (streaming.py, "final pass"), which
on a CPU costs more than the rest of a final. Once a stream's VAD has heard ``early_final_s`` of silence after
speech, that pass starts (batched over the streams that paused together) and its transcript is kept; when
the utterance then ends — the client's ``finalize``/``stop`` or the server's endpoint — with no voiced VAD frame
since, the kept transcript is the final and nothing is left to compute. Any voice after the pause discards it (the
final is then computed at the end as usual), so a final never misses speech the VAD heard; the price is the passes
wasted on pauses the speaker talks through. Streams with a final pass get the VAD for this even when server
endpointing is off (it then never cuts utterances). The pass is speculative, so it must not hold the model while
other clients wait: it runs on :class:`interruptible.InterruptibleRunner` in slices of at most ``step_budget_s``
between the streams' steps, and stops at its next encoder layer or decoding step as soon as a final is waiting (on
2 cores one pass over a 10-20 s utterance takes 150-350 ms, which was most of the finalize latency tail; measured
in docs/BENCHMARKS.md). A final whose own pass is under way lets it finish. Every final pass — early or at the end —
stops ``early_final_s`` into a trailing pause that lasts to the end of the audio (``VadStream.pause_end``), so a
final is the same text whether or not the early pass ran: it depends on the audio, not on timing or load.

Steps are cut into groups whose forward fits ``step_budget_s`` (from a running estimate of the seconds one window
costs), and a client's ``finalize``/``stop`` waiting in an inbox ends the round early: a final waits for at most
one group's forward, not for every stream's step. On a GPU one forward holds every stream well inside the budget;
on a few CPU cores the budget splits them, which costs little throughput there (CPU cost grows with the batch).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from parakeet_worker.errors import EngineClosedError
from parakeet_worker.model import Recognizer
from parakeet_worker.streaming.interruptible import InterruptibleRunner, checkpoint_modules
from parakeet_worker.streaming.recognizer import StepResult, StreamBacklogError, StreamingRecognizer, StreamState
from parakeet_worker.streaming.vad import BatchedVad, EndpointConfig, VadStream, VadUnavailableError
from parakeet_worker.transcript import SAMPLE_RATE_HZ, Transcript

logger = logging.getLogger(__name__)

EventKind = Literal["partial", "final", "closed", "error"]
FinalReason = Literal["endpoint", "finalize", "stop"]


def early_pass_due(vad: VadStream, speech_at_last_pass: int, early_final_s: float) -> bool:
    """The early final pass is due: speech since the last one, then ``early_final_s`` of clear silence."""
    return vad.quiet_run_s >= early_final_s - 1e-9 and vad.speech_frames != speech_at_last_pass


def early_pass_stale(vad: VadStream, voiced_at_pass: int) -> bool:
    """Any voice (a frame not clearly silent) since the early pass: the final must hear it."""
    return vad.voiced_frames != voiced_at_pass


@dataclass(frozen=True)
class StreamOptions:
    endpointing: bool = True  # server VAD ends utterances on silence
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    final_pass: bool = True  # finals are one offline pass over the utterance (may revise committed partial words)


@dataclass(frozen=True)
class StreamEvent:
    stream_id: str
    kind: EventKind
    utterance: int  # 0-based index of the utterance the event belongs to
    result: StepResult | None = None  # partial/final: the utterance's text, words and audio offsets
    reason: str = ""  # final: endpoint | finalize | stop; closed: stop | abort | engine_closed | error
    error: Exception | None = None
    emitted_at: float = field(default_factory=time.monotonic)


EventCallback = Callable[[StreamEvent], None]


class StreamHandle:
    """The thread-safe face of one live stream. Audio is float32 mono 16 kHz."""

    def __init__(self, manager: StreamManager, stream_id: str, options: StreamOptions) -> None:
        self._manager = manager
        self.stream_id = stream_id
        self.options = options
        self._lock = threading.Lock()
        self._inbox: list[np.ndarray] = []
        self._inbox_samples = 0
        self._finalize_at: list[int] = []  # inbox sample positions where the client asked for a final
        self._stop = False
        self._abort = False
        self.closed = False
        self.received_samples = 0
        self.last_push = time.monotonic()

    def push(self, audio: np.ndarray) -> None:
        """Queue samples; raises :class:`StreamBacklogError` when the engine is too far behind this stream."""
        if self.closed or self._stop or self._abort:
            raise EngineClosedError(f"stream {self.stream_id} is closed")
        samples = np.ascontiguousarray(audio, dtype=np.float32)
        with self._lock:
            if self._inbox_samples + self._manager.pending_samples(self) + samples.shape[0] > \
                    self._manager.max_backlog_samples:
                raise StreamBacklogError(
                    f"stream {self.stream_id} holds more than {self._manager.max_backlog_samples / SAMPLE_RATE_HZ:.0f}"
                    " s of audio not yet transcribed: the server is overloaded or audio is sent faster than real "
                    "time; slow down")
            self._inbox.append(samples)
            self._inbox_samples += samples.shape[0]
            self.received_samples += samples.shape[0]
            self.last_push = time.monotonic()
        self._manager.poke()

    @property
    def final_waiting(self) -> bool:
        """A finalize or stop is queued (read without the lock: a stale answer only delays it by one group)."""
        return bool(self._finalize_at) or self._stop or self._abort

    def finalize(self) -> None:
        """End the current utterance now: its final comes back with reason ``finalize``; the stream goes on."""
        with self._lock:
            self._finalize_at.append(self._inbox_samples)
        self._manager.poke()

    def stop(self) -> None:
        """Flush (final with reason ``stop``) and close; a ``closed`` event follows."""
        with self._lock:
            self._stop = True
        self._manager.poke()

    def abort(self) -> None:
        """Close without flushing (the client went away)."""
        with self._lock:
            self._abort = True
        self._manager.poke()

    @property
    def received_s(self) -> float:
        return self.received_samples / SAMPLE_RATE_HZ

    def _take(self) -> tuple[np.ndarray, list[int], bool, bool]:
        """The queued audio, the positions in it where finals were asked for (in order), stop, abort."""
        with self._lock:
            audio = np.concatenate(self._inbox) if self._inbox else np.zeros(0, np.float32)
            self._inbox = []
            self._inbox_samples = 0
            finalize_at, self._finalize_at = self._finalize_at, []
            return audio, finalize_at, self._stop, self._abort


@dataclass
class _EarlyPass:
    """An early final pass in progress on the runner: for these streams (their states when it started and their
    voiced-frame counts at the pause), over ``audio_s`` seconds in all."""
    lives: list[_Live]
    states: list[StreamState]
    voiced: list[int]
    future: concurrent.futures.Future[list[Transcript]]
    audio_s: float
    compute_s: float = 0.0  # time spent running it (it runs in slices)


@dataclass
class _Live:
    handle: StreamHandle
    on_event: EventCallback
    state: StreamState
    vad: VadStream | None
    endpointing: bool  # the VAD ends utterances (else it only times early final passes, or is None)
    utterance: int = 0
    samples_before: int = 0  # samples of the earlier (finished) utterances
    early_speech: int = 0  # the VAD's speech-frame count when the stream's last early final pass ran ...
    early_voiced: int = 0  # ... and its voiced-frame count (any voice since discards the pass)
    last_step: float = 0.0  # monotonic time of its last step: the longest-waiting streams step first


class StreamManager:
    """Owned by the engine: registry of live streams and the per-iteration streaming work."""

    def __init__(self, streamer: StreamingRecognizer, poke: Callable[[], None], max_stream_batch: int = 32,
                 step_budget_s: float = 0.05, early_final_s: float = 0.16) -> None:
        self.streamer = streamer
        self.poke = poke
        self.max_stream_batch = max_stream_batch
        self.step_budget_s = step_budget_s  # 0: no budget, every ready stream (up to max_stream_batch) in one forward
        self.early_final_s = early_final_s  # silence after which the final pass runs early (0: never)
        self._window_cost_s: float | None = None  # running estimate: seconds of forward per stream window
        self._pass_cost_s: float | None = None  # running estimate: seconds of early final pass per audio second
        self.max_backlog_samples = streamer.max_backlog_samples
        self._lock = threading.Lock()
        self._live: dict[str, _Live] = {}
        self._ids = itertools.count(1)
        self._vad: BatchedVad | None = None
        # Early final passes run interruptibly, with their own decoding objects (see interruptible.py).
        self._pass_recognizer = Recognizer(streamer.recognizer.loaded)
        self._runner = InterruptibleRunner()
        self._runner.watch(checkpoint_modules(streamer.recognizer.model))
        self._pending: _EarlyPass | None = None
        self._behind = False  # the last service call left streams with a chunk ready (the CPU is saturated)
        self.steps = 0
        self.step_seconds = 0.0
        self.early_passes = 0  # early final passes run ...
        self.early_used = 0  # ... and those that became a final

    # --- any thread -----------------------------------------------------------------------------------------------
    def open(self, on_event: EventCallback, options: StreamOptions | None = None,
             stream_id: str | None = None) -> StreamHandle:
        opts = options or StreamOptions()
        sid = stream_id or f"s{next(self._ids)}"
        state = self.streamer.new_stream(sid, final_pass=opts.final_pass)
        early = self.early_final_s > 0 and state.final_pass
        if (opts.endpointing or early) and self._vad is None:
            try:
                self._vad = BatchedVad()  # loads silero's ONNX model once (a few ms); raises when it is missing
            except VadUnavailableError:
                if opts.endpointing:
                    raise
                early = False  # no VAD: finals are computed at the end, as without early passes
        handle = StreamHandle(self, sid, opts)
        vad = self._vad.new_stream(opts.endpoint) if (opts.endpointing or early) and self._vad else None
        live = _Live(handle=handle, on_event=on_event, state=state, vad=vad, endpointing=opts.endpointing)
        with self._lock:
            if sid in self._live:
                raise ValueError(f"a stream with id {sid!r} is already open")
            self._live[sid] = live
        return handle

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._live)

    def pending_samples(self, handle: StreamHandle) -> int:
        live = self._live.get(handle.stream_id)
        return live.state.pending_samples if live is not None else 0

    # --- the engine's worker thread -------------------------------------------------------------------------------
    def service(self, max_rounds: int = 4) -> bool:
        """Do the streaming work that is due. Returns True when more is ready (the caller should come back soon)."""
        with self._lock:
            lives = list(self._live.values())
        if not lives:
            self.cancel_early_pass()  # its streams are gone
            return False
        # Each stream's new audio, cut where the VAD ended an utterance: segment k of every stream is accepted in
        # round k, and the streams whose segment ends an utterance are flushed together before the next round.
        segments: dict[int, list[tuple[np.ndarray, str | None]]] = {}
        takes = []
        for live in lives:
            audio, finalize_at, stop, abort = live.handle._take()
            if abort:
                self._close(live, "abort")
                continue
            takes.append((live, audio, finalize_at, stop))
        with_vad = [(lv, a) for lv, a, _, _ in takes if lv.vad is not None and a.size]
        cuts: dict[int, list[int]] = {}
        if with_vad:
            assert self._vad is not None
            found = self._vad.process([lv.vad for lv, _ in with_vad], [a for _, a in with_vad])  # type: ignore[misc]
            cuts = {id(lv): c for (lv, _), c in zip(with_vad, found) if lv.endpointing}
            for live, _ in with_vad:  # voice after an early final pass: the final must hear it
                if live.state.early is not None and early_pass_stale(live.vad, live.early_voiced):  # type: ignore[arg-type]
                    self.streamer.discard_early(live.state)
        for live, audio, finalize_at, stop in takes:
            # Utterance ends in audio order: VAD endpoints and client finalizes (each at the position in the audio
            # where it was asked), then stop after everything.
            ends = sorted([(c, 1, "endpoint") for c in cuts.get(id(live), [])] + [(f, 0, "finalize") for f in finalize_at])
            parts: list[tuple[np.ndarray, str | None]] = []
            start = 0
            for position, _, reason in ends:
                if reason == "endpoint" and parts and parts[-1][1] == "finalize" and position == start:
                    continue  # the client's finalize already ended this utterance here
                parts.append((audio[start:position], reason))
                start = position
            if start < audio.shape[0] or stop or not parts:
                parts.append((audio[start:], "stop" if stop else None))
            segments[id(live)] = parts
        rounds = max((len(p) for p in segments.values()), default=0)
        for r in range(rounds):
            finals: list[tuple[_Live, str]] = []
            for live, *_ in takes:
                parts = segments[id(live)]
                if r >= len(parts) or live.handle.closed:
                    continue
                audio, ends = parts[r]
                if audio.size:
                    try:
                        self.streamer.accept(live.state, audio)
                    except StreamBacklogError as exc:  # push() checks too; this is the last line of defence
                        self._emit(live, StreamEvent(live.handle.stream_id, "error", live.utterance, error=exc))
                if ends is not None:
                    finals.append((live, ends))
            if finals:
                self._flush(finals)
        if self._behind:  # the last call left streams with a chunk ready: their partials come first
            self._behind = self._steps(max_rounds)
            if self._behind or self._final_waiting():
                return True
            return self._early_finals()
        # Otherwise a slice of early final pass first: a paused speaker's finalize usually follows within a few
        # hundred ms and needs that pass done, where a partial can wait one slice.
        early_more = self._early_finals()
        if self._final_waiting():
            return True
        self._behind = self._steps(max_rounds)
        return self._behind or early_more

    def _steps(self, max_rounds: int) -> bool:
        """Partial steps for the streams with a chunk ready, longest-waiting first, in groups that fit the step
        budget; stops before any group when a client's final is waiting. True when streams are left ready."""
        for _ in range(max_rounds):
            with self._lock:
                ready = [lv for lv in self._live.values() if not lv.state.ended and self.streamer.ready(lv.state)]
            if not ready:
                return False
            ready.sort(key=lambda lv: lv.last_step)  # a round cut short by a final resumes with who was skipped
            size = self.group_size()
            for start in range(0, len(ready), size):
                if self._final_waiting():
                    return True  # serve the final first; the remaining streams step on the next call
                self._step(ready[start : start + size])
        with self._lock:
            return any(self.streamer.ready(lv.state) for lv in self._live.values() if not lv.state.ended)

    def _early_finals(self) -> bool:
        """Early final passes, in slices of at most ``step_budget_s`` per call: the pass in progress goes on, and
        when it ends the next is started for the streams whose speaker has paused for ``early_final_s`` after
        speech heard since their last pass (batched in groups that fit the step budget by a running estimate of
        the pass's cost per second of audio). A pass runs on :class:`InterruptibleRunner` and stops at its next
        checkpoint as soon as a client's final is waiting or the slice is used: it never delays a final by more
        than one encoder layer or decoding step, and the streams step between slices. True when early work is
        left (the caller should come back soon)."""
        if self.early_final_s <= 0:
            return False
        started = time.monotonic()
        budget = self.step_budget_s if self.step_budget_s > 0 else float("inf")

        def yield_when() -> bool:
            return self._final_waiting() or time.monotonic() - started >= budget

        while True:
            if self._pending is None and not self._start_early_pass():
                return False
            if not self._resume_pending(yield_when) or yield_when():
                return True  # a pass is in progress or more may be due: the caller comes back soon

    def _start_early_pass(self) -> bool:
        """Submit the next early pass (False when none is due). Its pauses count as taken from here on, whatever
        happens to the pass (a failure is not retried on every call)."""
        with self._lock:
            paused = [lv for lv in self._live.values() if lv.vad is not None
                      and early_pass_due(lv.vad, lv.early_speech, self.early_final_s)
                      and lv.state.final_pass and lv.state.kept and not lv.state.ended]
        if not paused:
            return False
        group, budget = [paused.pop(0)], self.step_budget_s
        if budget <= 0:
            group += paused
        elif self._pass_cost_s is not None:
            spent = group[0].state.audio_s * self._pass_cost_s
            while paused and spent + paused[0].state.audio_s * self._pass_cost_s <= budget:
                spent += paused[0].state.audio_s * self._pass_cost_s
                group.append(paused.pop(0))
        for live in group:
            live.early_speech = live.vad.speech_frames  # type: ignore[union-attr]
            live.early_voiced = live.vad.voiced_frames  # type: ignore[union-attr]
            live.state.pass_end = self._pass_end(live)
        states = [lv.state for lv in group]
        audio = [self.streamer.early_pass_audio(state) for state in states]
        recognizer = self._pass_recognizer
        future = self._runner.submit(lambda: recognizer.transcribe(audio, timestamps=True))  # type: ignore[arg-type]
        self._pending = _EarlyPass(group, states, [lv.early_voiced for lv in group], future,
                                   sum(a.shape[0] for a in audio) / SAMPLE_RATE_HZ)  # type: ignore[union-attr]
        return True

    def _resume_pending(self, yield_when: Callable[[], bool]) -> bool:
        """Run the pending early pass until it ends (then keep its transcripts; True) or ``yield_when`` (False)."""
        pending = self._pending
        assert pending is not None
        started = time.monotonic()
        ended = self._runner.resume(yield_when)
        pending.compute_s += time.monotonic() - started
        if not ended:
            return False
        self._pending = None
        try:
            transcripts = pending.future.result()
        except Exception:  # not fatal: these finals will be computed at the end
            logger.exception("early final pass failed for %d streams", len(pending.lives))
            return True
        self.early_passes += len(transcripts)
        cost = pending.compute_s / max(pending.audio_s, 1e-3)
        self._pass_cost_s = cost if self._pass_cost_s is None else 0.8 * self._pass_cost_s + 0.2 * cost
        for live, state, voiced, transcript in zip(pending.lives, pending.states, pending.voiced, transcripts):
            # Kept only for the utterance it was run for, and only if the speaker has not spoken since.
            if live.state is state and not live.handle.closed and not state.ended \
                    and not early_pass_stale(live.vad, voiced):  # type: ignore[arg-type]
                self.streamer.keep_early(state, transcript)
        return True

    def _pass_end(self, live: _Live) -> int | None:
        """Where the stream's final pass stops (samples into its utterance): ``early_final_s`` into a pause that
        lasts to the end of the audio received, so trailing silence beyond that is not transcribed; None (all of
        it) without such a pause. A function of the audio alone: the early pass at the pause and the final at the
        end cut at the same sample, and the final does not depend on whether the early pass ran."""
        if live.vad is None or self.early_final_s <= 0 or not live.state.final_pass:
            return None
        heard = live.state.received - live.state.padding
        end = live.vad.pause_end(live.samples_before + heard, self.early_final_s)
        return end - live.samples_before if end is not None and end > live.samples_before else None

    @property
    def early_pass_running(self) -> bool:
        """An early final pass has started and not ended (it may be suspended between slices)."""
        return self._pending is not None

    def finish_early_pass(self, lives: list[_Live] | None = None) -> None:
        """Run the pending early pass to its end now (when it serves one of ``lives``, or any when None)."""
        pending = self._pending
        if pending is not None and (lives is None or any(lv is p for lv in lives for p in pending.lives)):
            self._resume_pending(lambda: False)

    def cancel_early_pass(self) -> None:
        """Drop the pending early pass (before the engine changes the model, and at shutdown); those streams'
        finals are computed at the end."""
        if self._pending is not None:
            self._pending = None
            self._runner.cancel()

    def group_size(self) -> int:
        """Streams per forward: as many as fit the step budget by the running cost estimate."""
        if self.step_budget_s <= 0 or self._window_cost_s is None:
            return self.max_stream_batch
        return max(1, min(self.max_stream_batch, int(self.step_budget_s / self._window_cost_s)))

    def _final_waiting(self) -> bool:
        with self._lock:
            return any(lv.handle.final_waiting for lv in self._live.values())

    def close_all(self) -> None:
        self.cancel_early_pass()
        self._runner.close()
        with self._lock:
            lives = list(self._live.values())
        for live in lives:
            self._close(live, "engine_closed")

    def _step(self, group: list[_Live]) -> None:
        started = time.monotonic()
        try:
            results = self.streamer.step([lv.state for lv in group])
        except Exception as exc:  # the streams in this batch cannot go on; the engine and other streams do
            logger.exception("streaming step failed for %d streams", len(group))
            for live in group:
                self._emit(live, StreamEvent(live.handle.stream_id, "error", live.utterance, error=exc))
                self._close(live, "error")
            return
        finished = time.monotonic()
        elapsed = finished - started
        for live in group:
            live.last_step = finished
        self.steps += 1
        self.step_seconds += elapsed
        cost = elapsed / len(group)
        self._window_cost_s = cost if self._window_cost_s is None else 0.8 * self._window_cost_s + 0.2 * cost
        for live, result in zip(group, results):
            self._emit(live, StreamEvent(live.handle.stream_id, "partial", live.utterance,
                                         result=self._absolute(live, result)))

    def _flush(self, finals: list[tuple[_Live, str]]) -> None:
        # A stream that received no audio has nothing to decode: its final is empty (the model is not asked to
        # transcribe the flush padding alone, where a model may hallucinate a word).
        # Likewise when the VAD heard no speech since the last endpoint: nothing but silence is left to decode.
        work = [lv for lv, reason in finals if lv.state.received > 0
                and (reason == "endpoint" or not lv.endpointing or lv.vad is None or lv.vad.heard_speech
                     or lv.state.words)]
        self.finish_early_pass(work)  # one of them has its final pass in progress: it ends now, then serves
        for live in work:
            live.state.pass_end = self._pass_end(live)
        self.early_used += sum(1 for lv in work if lv.state.early is not None)
        try:
            done = dict(zip((id(lv) for lv in work), self.streamer.finalize([lv.state for lv in work])))
            results = [done[id(lv)] if id(lv) in done else self.streamer.snapshot(lv.state) for lv, _ in finals]
        except Exception as exc:
            logger.exception("final flush failed for %d streams", len(work))
            for live, _ in finals:
                self._emit(live, StreamEvent(live.handle.stream_id, "error", live.utterance, error=exc))
                self._close(live, "error")
            return
        for (live, reason), result in zip(finals, results):
            if reason == "finalize" or result.committed_text:  # nothing heard: no empty final, unless asked
                self._emit(live, StreamEvent(live.handle.stream_id, "final", live.utterance,
                                             result=self._absolute(live, result), reason=reason))
                live.utterance += 1
            if reason == "stop":
                self._close(live, "stop")
                continue
            # The next utterance starts where this one's audio ended (the flush padding is not real audio).
            live.samples_before += live.state.received - live.state.padding
            live.state = self.streamer.new_stream(live.handle.stream_id, offset_s=live.samples_before / SAMPLE_RATE_HZ,
                                                  final_pass=live.handle.options.final_pass)
            if live.vad is not None:
                live.vad.reset_endpoint()
                live.early_speech = live.vad.speech_frames  # that speech was the finished utterance's

    @staticmethod
    def _absolute(live: _Live, result: StepResult) -> StepResult:
        return result  # the stream state's offset already makes times absolute

    def _close(self, live: _Live, reason: str) -> None:
        with self._lock:
            if self._live.pop(live.handle.stream_id, None) is None:
                return
        live.handle.closed = True
        self._emit(live, StreamEvent(live.handle.stream_id, "closed", live.utterance, reason=reason))

    @staticmethod
    def _emit(live: _Live, event: StreamEvent) -> None:
        try:
            live.on_event(event)
        except Exception:  # a consumer's bug must not stop the engine
            logger.exception("stream %s: event callback failed", live.handle.stream_id)
