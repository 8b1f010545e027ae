"""Voice activity detection for server endpointing: silero-vad's ONNX model, batched over streams.

The model ships inside the ``silero-vad`` package (installed with ``--no-deps``: its Python helpers import
torchaudio, which has no build for our pinned torch; we only need the ONNX file and onnxruntime). We feed it
ourselves so that many streams run as one batch per 32 ms frame, each stream carrying its own recurrent state.

An :class:`Endpointer` turns frame probabilities into utterance boundaries: speech starts after
``min_speech_s`` above ``threshold``; the utterance ends once ``silence_s`` of frames stayed below
``threshold - 0.15`` (hysteresis, as silero's own iterator does; :attr:`EndpointConfig.silent_below`). A stream
that asked for speech events also keeps :class:`SpeechTurns`: where its speech starts and stops, found on the same
frames at no extra model cost.
"""

from __future__ import annotations

import bisect
import importlib.util
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from parakeet_worker.errors import ParakeetError
from parakeet_worker.transcript import SAMPLE_RATE_HZ

logger = logging.getLogger(__name__)

FRAME_SAMPLES = 512  # silero-vad's frame at 16 kHz (32 ms)
CONTEXT_SAMPLES = 64  # samples of the previous frame the model sees in front of each frame
FRAME_S = FRAME_SAMPLES / SAMPLE_RATE_HZ
_VOICED_KEPT = 2048  # voiced frame indices remembered per stream (at least 65 s of voice; finals look back 20 s)


class VadUnavailableError(ParakeetError):
    code = "vad_unavailable"


def silero_model_path() -> Path:
    """The ONNX file inside the installed silero-vad package (found without importing the package)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or spec.origin is None:
        raise VadUnavailableError("silero-vad is not installed: `pip install --no-deps silero-vad==6.2.0` "
                                  "(scripts/setup.sh does it), or start streams with endpointing off")
    path = Path(spec.origin).parent / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise VadUnavailableError(f"silero-vad's model file is missing at {path}; reinstall silero-vad")
    return path


@dataclass(frozen=True)
class EndpointConfig:
    threshold: float = 0.5
    silence_s: float = 0.6  # silence after speech that ends an utterance
    min_speech_s: float = 0.096  # speech shorter than this does not open an utterance

    @property
    def silent_below(self) -> float:
        """A frame below this probability is clearly silent (counts toward ``silence_s``): ``threshold - 0.15``,
        the hysteresis of silero's own iterator, and at least 0.01 as in its ``get_speech_timestamps`` (below a
        threshold of 0.16 the difference alone would be 0 or negative: no frame would ever be silent and an
        utterance would never end)."""
        return max(self.threshold - 0.15, 0.01)

    def __post_init__(self) -> None:
        if not 0.05 <= self.threshold <= 0.95:
            raise ValueError(f"VAD threshold must be within 0.05..0.95, got {self.threshold}")
        if not 0.1 <= self.silence_s <= 10.0:
            raise ValueError(f"endpoint silence must be within 0.1..10 s, got {self.silence_s}")


@dataclass(frozen=True)
class TurnChange:
    """A speech turn started (or stopped) at ``frame``; the VAD found it once ``judged`` frames were judged."""

    started: bool
    frame: int  # speech start: the first frame of the speech run; stop: the first frame after the speech
    judged: int  # frames judged when it was found: the change is known from sample judged * FRAME_SAMPLES on

    @property
    def at_s(self) -> float:
        """Where the change happened, in seconds from the stream's first sample."""
        return self.frame * FRAME_S

    @property
    def found_at(self) -> int:
        """The stream sample up to which the VAD had judged the audio when it found the change."""
        return self.judged * FRAME_SAMPLES


@dataclass
class SpeechTurns:
    """Where a stream's speech starts and stops, for its speech events (kept only by streams that ask for them).

    A turn starts where the endpointer's speech run began, on the frame where that run reaches ``min_speech_s``;
    it stops where the speech ended, on the frame where the clearly silent frames after it reach ``stop_s`` (None:
    on the endpointer's endpoint, so a stop and an endpoint fall on the same frame). One change per transition."""

    stop_s: float | None = None
    talking: bool = False
    last_speech: int = -1  # the latest frame at or above threshold
    quiet: int = 0  # clearly silent frames since it
    found: list[TurnChange] = field(default_factory=list)  # changes not yet taken by the scheduler, in order

    def advance(self, s: VadStream, prob: float, ended: bool) -> None:
        """One frame (already counted in ``s.frames``), after the endpointer's update; ``ended``: it ended an
        utterance."""
        cfg = s.config
        if prob >= cfg.threshold:
            self.last_speech, self.quiet = s.frames - 1, 0
            if not self.talking and s.speech_run_s >= cfg.min_speech_s:
                self.talking = True
                self.found.append(TurnChange(True, s.frames - round(s.speech_run_s / FRAME_S), s.frames))
            return
        if prob < cfg.silent_below:
            self.quiet += 1
        if self.talking and (ended if self.stop_s is None else self.quiet * FRAME_S >= self.stop_s - 1e-9):
            self.talking = False
            self.found.append(TurnChange(False, self.last_speech + 1, s.frames))


@dataclass
class VadStream:
    """One stream's VAD state: the model's recurrent state, unconsumed samples and the endpointer's counters."""

    config: EndpointConfig
    state: np.ndarray = field(default_factory=lambda: np.zeros((2, 1, 128), np.float32), repr=False)
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT_SAMPLES, np.float32), repr=False)
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)
    in_speech: bool = False
    speech_run_s: float = 0.0
    silence_run_s: float = 0.0
    heard_speech: bool = False  # speech since the last endpoint (the utterance now open has some)
    # Counters for the engine's early final pass (parakeet_worker.streaming.early_pass), independent of the endpointer's state:
    speech_frames: int = 0  # frames at or above threshold, ever
    voiced_frames: int = 0  # frames not clearly silent (probability >= threshold - 0.15), ever: grows on any voice
    frames: int = 0  # frames judged, ever (frame k covers the stream's samples k * 512 ... (k + 1) * 512)
    voiced_at: list[int] = field(default_factory=list, repr=False)  # the latest voiced frames' indices, ascending
    endpoint: bool = False  # set when an utterance just ended; the caller clears it with reset_endpoint()
    # (frames judged, heard_speech) after each change of heard_speech, ascending: its value at an earlier position
    # (a fast sender's inbox may hold several utterances; the VAD runs over all of it before the first is flushed)
    heard_changes: list[tuple[int, bool]] = field(default_factory=list, repr=False)
    turns: SpeechTurns | None = None  # speech starts and stops, for a stream that asked for speech events

    @property
    def quiet_run_s(self) -> float:
        """Clearly silent audio since the last frame that was not (the latest voiced frame is always kept)."""
        return (self.frames - (self.voiced_at[-1] + 1 if self.voiced_at else 0)) * FRAME_S

    def reset_endpoint(self) -> None:
        self.endpoint = False

    def restart_endpointer(self) -> None:
        """The utterance was ended by the client (a finalize): the next one starts afresh, so the silence heard
        before the finalize does not count toward the next utterance's endpoint (it fired on the next turn's
        leading silence: a final made of 0.1 s of it), and no speech has been heard in it yet. ``heard_speech_at``
        at the finalize's own position still answers for the utterance it ended (the change counts from the next
        frame)."""
        self.in_speech = False
        self.speech_run_s = 0.0
        self.silence_run_s = 0.0
        if self.heard_speech:
            self.heard_speech = False
            self.heard_changes.append((self.frames + 1, False))
            if len(self.heard_changes) > 2 * _VOICED_KEPT:
                del self.heard_changes[:-_VOICED_KEPT]

    def heard_speech_at(self, before_sample: int) -> bool:
        """``heard_speech`` as it was once the frames wholly before ``before_sample`` (counted from the stream's
        first sample) were judged — a function of the audio alone, however far past it the VAD has run since."""
        judged = min(before_sample // FRAME_SAMPLES, self.frames)
        i = bisect.bisect_right(self.heard_changes, (judged, True))  # changes made by frame ``judged``
        if i:
            return self.heard_changes[i - 1][1]
        # Before the oldest change remembered (or none yet): the value that change replaced.
        return not self.heard_changes[0][1] if self.heard_changes else self.heard_speech

    def _set_heard(self, heard: bool) -> None:
        if heard != self.heard_speech:
            self.heard_speech = heard
            self.heard_changes.append((self.frames, heard))
            if len(self.heard_changes) > 2 * _VOICED_KEPT:
                del self.heard_changes[:-_VOICED_KEPT]

    def pause_end(self, before_sample: int, pause_s: float) -> int | None:
        """Where a pause ends that is still on at ``before_sample`` (counted from the stream's first sample): the
        sample at which the clearly silent run that reaches it had lasted ``pause_s`` — a function of the audio
        alone, whatever pieces it came in. None when that run is shorter (voice within ``pause_s`` of it), or
        reaches back further than the frames remembered."""
        judged = min(before_sample // FRAME_SAMPLES, self.frames)  # frames wholly before it (the rest: unjudged)
        i = bisect.bisect_left(self.voiced_at, judged)  # voiced frames before ``judged``: voiced_at[:i]
        if i == 0 and len(self.voiced_at) >= _VOICED_KEPT:
            return None  # the run may start before the oldest voiced frame remembered
        quiet_from = self.voiced_at[i - 1] + 1 if i else 0
        end = quiet_from + math.ceil(pause_s / FRAME_S - 1e-9)
        return end * FRAME_SAMPLES if end <= judged else None


class BatchedVad:
    """Runs silero-vad over many streams at once (one ONNX call per 32 ms frame index, all streams batched)."""

    def __init__(self, threads: int = 1) -> None:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = threads
        self._session = onnxruntime.InferenceSession(str(silero_model_path()), sess_options=opts,
                                                     providers=["CPUExecutionProvider"])
        self._sr = np.array(SAMPLE_RATE_HZ, dtype=np.int64)

    def new_stream(self, config: EndpointConfig | None = None, turns: SpeechTurns | None = None) -> VadStream:
        return VadStream(config=config or EndpointConfig(), turns=turns)

    def process(self, streams: Sequence[VadStream], audio: Sequence[np.ndarray]) -> list[list[int]]:
        """Append each stream's new samples (float32, 16 kHz) and advance its endpointer frame by frame.

        Returns, per stream, the positions in its new samples where an utterance ended (the end of the frame
        that completed the silence): a fast sender's one push may hold several utterances.
        """
        frames: list[np.ndarray] = []
        carried: list[int] = []
        for s, a in zip(streams, audio):
            carried.append(s.pending.shape[0])
            s.pending = np.concatenate([s.pending, np.asarray(a, np.float32)]) if a.size else s.pending
            n = s.pending.shape[0] // FRAME_SAMPLES
            frames.append(s.pending[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES))
            s.pending = s.pending[n * FRAME_SAMPLES :].copy()
        cuts: list[list[int]] = [[] for _ in streams]
        depth = max((f.shape[0] for f in frames), default=0)
        for k in range(depth):
            rows = [i for i, f in enumerate(frames) if f.shape[0] > k]
            x = np.stack([np.concatenate([streams[i].context, frames[i][k]]) for i in rows])
            state = np.concatenate([streams[i].state for i in rows], axis=1)
            prob, state_n = self._session.run(None, {"input": x, "state": state, "sr": self._sr})
            for j, i in enumerate(rows):
                s = streams[i]
                s.state = state_n[:, j : j + 1, :].copy()
                s.context = frames[i][k][-CONTEXT_SAMPLES:].copy()
                if self._advance(s, float(prob[j, 0])):
                    cuts[i].append(min(max(0, (k + 1) * FRAME_SAMPLES - carried[i]), audio[i].shape[0]))
        return cuts

    @staticmethod
    def _advance(s: VadStream, prob: float) -> bool:
        """One frame's probability into the endpointer; True when it ended an utterance."""
        cfg = s.config
        s.frames += 1
        if prob >= cfg.silent_below:
            s.voiced_frames += 1
            s.voiced_at.append(s.frames - 1)
            if len(s.voiced_at) > 2 * _VOICED_KEPT:
                del s.voiced_at[:-_VOICED_KEPT]
        ended = False
        if prob >= cfg.threshold:
            s.speech_frames += 1
            s.speech_run_s += FRAME_S
            s.silence_run_s = 0.0
            if not s.in_speech and s.speech_run_s >= cfg.min_speech_s:
                s.in_speech = True
                s._set_heard(True)
        elif prob < cfg.silent_below or not s.in_speech:
            s.speech_run_s = 0.0
            if s.in_speech:
                s.silence_run_s += FRAME_S
                if s.silence_run_s >= cfg.silence_s:
                    s.in_speech = False
                    s.silence_run_s = 0.0
                    s.endpoint = True
                    s._set_heard(False)
                    ended = True
        if s.turns is not None:
            s.turns.advance(s, prob, ended)
        return ended
