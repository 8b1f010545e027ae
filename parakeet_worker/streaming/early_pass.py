"""Early final passes: a stream's final pass run ahead of its end, while its speaker pauses, in interruptible slices.

A final is by default one offline pass over the utterance (:mod:`.recognizer`, "final pass"), which on a CPU costs
more than the rest of a final. Once a stream's VAD has heard ``early_final_s`` of silence after speech, that pass
starts (batched over the streams that paused together) and its transcript is kept; when the utterance then ends —
the client's ``finalize``/``stop`` or the server's endpoint — with no voiced VAD frame since, the kept transcript
is the final and nothing is left to compute. Any voice after the pause discards it (the final is then computed at
the end as usual), so a final never misses speech the VAD heard; the price is the passes wasted on pauses the
speaker talks through. Streams with a final pass get the VAD for this even when server endpointing is off (it then
never cuts utterances).

The pass is speculative, so it must not hold the model while other clients wait: it runs on
:class:`.interruptible.InterruptibleRunner` in slices of at most ``step_budget_s`` between the streams' steps, and
stops at its next encoder layer or decoding step as soon as a final is waiting (one pass over a long utterance was
most of the finalize latency tail on a CPU: docs/BENCHMARKS.md, "Interruptible early passes, 0.16 s, and where
finals stop"). A final whose own pass is under way lets it finish. Every final pass — early or at the end — stops
``early_final_s`` into a trailing pause that lasts to the end of the audio (``VadStream.pause_end``), so a final is
the same text whether or not the early pass ran: it depends on the audio, not on timing or load.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from parakeet_worker.model import Transcriber, checkpoint_modules
from parakeet_worker.streaming.handle import LiveStream
from parakeet_worker.streaming.interruptible import InterruptibleRunner
from parakeet_worker.streaming.recognizer import StreamingRecognizer
from parakeet_worker.streaming.types import StreamState
from parakeet_worker.streaming.vad import VadStream
from parakeet_worker.transcript import SAMPLE_RATE_HZ, Transcript

logger = logging.getLogger(__name__)


def early_pass_due(vad: VadStream, speech_at_last_pass: int, early_final_s: float) -> bool:
    """The early final pass is due: speech since the last one, then ``early_final_s`` of clear silence."""
    return vad.quiet_run_s >= early_final_s - 1e-9 and vad.speech_frames != speech_at_last_pass


def early_pass_stale(vad: VadStream, voiced_at_pass: int) -> bool:
    """Any voice (a frame not clearly silent) since the early pass: the final must hear it."""
    return vad.voiced_frames != voiced_at_pass


@dataclass
class _Pending:
    """An early final pass in progress on the runner: for these streams (their states when it started and their
    voiced-frame counts at the pause), over ``audio_s`` seconds in all."""

    lives: list[LiveStream]
    states: list[StreamState]
    voiced: list[int]
    future: concurrent.futures.Future[list[Transcript]]
    audio_s: float
    compute_s: float = 0.0  # time spent running it (it runs in slices)


class EarlyPasses:
    """The early final passes of a :class:`.manager.StreamManager`; every method belongs to the engine's worker
    thread. ``lives`` returns the live streams; ``final_waiting`` says a client's final is queued."""

    def __init__(self, streamer: StreamingRecognizer, recognizer: Transcriber, *, early_final_s: float,
                 step_budget_s: float, lives: Callable[[], list[LiveStream]],
                 final_waiting: Callable[[], bool]) -> None:
        self.streamer = streamer
        self.early_final_s = early_final_s  # silence after which the final pass runs early (0: never)
        self.step_budget_s = step_budget_s
        # Its own recognizer (own decoding objects): a suspended pass keeps state in them (interruptible.py).
        self._recognizer = recognizer
        self._lives = lives
        self._final_waiting = final_waiting
        self._runner = InterruptibleRunner()
        self._runner.watch(checkpoint_modules(streamer.recognizer.model))
        self._pending: _Pending | None = None
        self._cost_s: float | None = None  # running estimate: seconds of pass per audio second
        self.run = 0  # early passes completed, one per stream

    @property
    def running(self) -> bool:
        """A pass has started and not ended (it may be suspended between slices)."""
        return self._pending is not None

    def run_slice(self) -> bool:
        """Early final passes, in slices of at most ``step_budget_s`` per call: the pass in progress goes on, and
        when it ends the next is started for the streams whose speaker has paused for ``early_final_s`` after
        speech heard since their last pass (batched in groups that fit the step budget by a running estimate of
        the pass's cost per second of audio). A pass stops at its next checkpoint as soon as a client's final is
        waiting or the slice is used: it never delays a final by more than one encoder layer or decoding step,
        and the streams step between slices. True when early work is left (the caller should come back soon)."""
        if self.early_final_s <= 0:
            return False
        started = time.monotonic()
        budget = self.step_budget_s if self.step_budget_s > 0 else float("inf")

        def yield_when() -> bool:
            return self._final_waiting() or time.monotonic() - started >= budget

        while True:
            if self._pending is None and not self._start():
                return False
            if not self._resume(yield_when) or yield_when():
                return True  # a pass is in progress or more may be due: the caller comes back soon

    def pass_end(self, live: LiveStream) -> int | None:
        """Where the stream's final pass stops (samples into its utterance): ``early_final_s`` into a pause that
        lasts to the end of the audio received, so trailing silence beyond that is not transcribed; None (all of
        it) without such a pause. A function of the audio alone: the early pass at the pause and the final at the
        end cut at the same sample, and the final does not depend on whether the early pass ran."""
        if live.vad is None or self.early_final_s <= 0 or not live.state.final_pass:
            return None
        heard = live.state.received - live.state.padding
        end = live.vad.pause_end(live.samples_before + heard, self.early_final_s)
        return end - live.samples_before if end is not None and end > live.samples_before else None

    def finish(self, lives: list[LiveStream] | None = None) -> None:
        """Run the pending pass to its end now (when it serves one of ``lives``, or any when None)."""
        pending = self._pending
        if pending is not None and (lives is None or any(lv is p for lv in lives for p in pending.lives)):
            self._resume(lambda: False)

    def cancel(self) -> None:
        """Drop the pending pass (before the engine changes the model, and at shutdown); those streams' finals are
        computed at the end."""
        if self._pending is not None:
            self._pending = None
            self._runner.cancel()

    def close(self) -> None:
        self.cancel()
        self._runner.close()

    # --- phases -----------------------------------------------------------------------------------------------------
    def _due(self) -> list[LiveStream]:
        return [lv for lv in self._lives() if lv.vad is not None
                and early_pass_due(lv.vad, lv.early_speech, self.early_final_s)
                and lv.state.final_pass and lv.state.kept and not lv.state.ended]

    def _group(self, paused: list[LiveStream]) -> list[LiveStream]:
        """The first paused stream, and as many after it as fit the step budget by the running cost estimate."""
        group, budget = [paused.pop(0)], self.step_budget_s
        if budget <= 0:
            return group + paused
        if self._cost_s is not None:
            spent = group[0].state.audio_s * self._cost_s
            while paused and spent + paused[0].state.audio_s * self._cost_s <= budget:
                spent += paused[0].state.audio_s * self._cost_s
                group.append(paused.pop(0))
        return group

    def _start(self) -> bool:
        """Submit the next pass (False when none is due). Its pauses count as taken from here on, whatever
        happens to the pass (a failure is not retried on every call)."""
        paused = self._due()
        if not paused:
            return False
        group = self._group(paused)
        for live in group:
            assert live.vad is not None  # _due keeps streams with a VAD only
            live.early_speech = live.vad.speech_frames
            live.early_voiced = live.vad.voiced_frames
            live.state.pass_end = self.pass_end(live)
        states = [lv.state for lv in group]
        audio = []
        for state in states:
            clip = self.streamer.early_pass_audio(state)
            assert clip is not None  # _due keeps streams that keep their audio and have not ended
            audio.append(clip)
        recognizer = self._recognizer
        future = self._runner.submit(lambda: recognizer.transcribe(audio, timestamps=True))
        self._pending = _Pending(group, states, [lv.early_voiced for lv in group], future,
                                 sum(a.shape[0] for a in audio) / SAMPLE_RATE_HZ)
        return True

    def _resume(self, yield_when: Callable[[], bool]) -> bool:
        """Run the pending pass until it ends (then keep its transcripts; True) or ``yield_when`` (False)."""
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
        self.run += len(transcripts)
        cost = pending.compute_s / max(pending.audio_s, 1e-3)
        self._cost_s = cost if self._cost_s is None else 0.8 * self._cost_s + 0.2 * cost
        for live, state, voiced, transcript in zip(pending.lives, pending.states, pending.voiced, transcripts):
            # Kept only for the utterance it was run for, and only if the speaker has not spoken since.
            if live.state is state and not live.handle.closed and not state.ended and live.vad is not None \
                    and not early_pass_stale(live.vad, voiced):
                self.streamer.keep_early(state, transcript)
        return True
