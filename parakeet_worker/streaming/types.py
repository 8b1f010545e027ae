"""The data types of streaming recognition: window geometry, per-stream state, step results, and the scheduler's
geometry and statistics as the engine reports them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from parakeet_worker.errors import EngineOverloadedError
from parakeet_worker.model import Token
from parakeet_worker.transcript import SAMPLE_RATE_HZ, Transcript, WordTiming

ENCODER_FRAME_S = 0.08  # Parakeet: 10 ms feature hop x 8 subsampling
_EPS = 1e-6


class StreamBacklogError(EngineOverloadedError):
    """A stream holds more undecoded audio than allowed: the engine is not keeping up (or the client sends audio
    much faster than real time). The caller should slow down or be refused."""

    code = "stream_backlog"
    dropped_s: float = 0.0  # seconds of audio refused with it (not transcribed, not counted as heard)


class FinalizeLimitError(EngineOverloadedError):
    """A stream already has as many ``finalize`` requests queued as allowed; this one is refused, so one client
    cannot queue unbounded final passes ahead of other streams."""

    code = "rate_limited"


def _frames(seconds: float, frame_s: float, name: str) -> int:
    count = seconds / frame_s
    if abs(count - round(count)) > _EPS:
        raise ValueError(
            f"{name}={seconds} s is not a multiple of the {frame_s * 1000:.0f} ms encoder frame; chunk and context "
            f"boundaries must fall on encoder frames so chunks tile the encoder output exactly "
            f"(use e.g. {round(count) * frame_s:.2f} s)"
        )
    return int(round(count))


@dataclass(frozen=True)
class StreamingConfig:
    """Window geometry and limits of streaming recognition (seconds).

    ``left_s``, ``chunk_s`` and ``right_s`` must be multiples of the 80 ms encoder frame. Latency of committed
    text is ``chunk_s + right_s`` plus compute; the draft shows the right context's words a chunk earlier.
    """

    left_s: float = 4.0  # audio before the chunk the encoder sees (context only, never decoded again)
    chunk_s: float = 0.96  # audio decoded and committed per step
    right_s: float = 0.96  # lookahead after the chunk: context for the encoder, and the draft
    final_pad_s: float = 0.32  # silence appended by end(): gives the last word frames to be emitted in
    draft: bool = True  # decode the right context into a draft each step
    max_backlog_s: float = 30.0  # undecoded audio a stream may hold before accept() refuses more
    final_pass_max_s: float = 20.0  # finals of utterances up to this long are one offline pass (0: never)

    def __post_init__(self) -> None:
        if self.chunk_s <= 0:
            raise ValueError(f"chunk_s must be positive, got {self.chunk_s}")
        for name in ("left_s", "right_s", "final_pad_s", "final_pass_max_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        self.frames(ENCODER_FRAME_S)
        if self.max_backlog_s < self.chunk_s + self.right_s + self.final_pad_s:
            raise ValueError(
                f"max_backlog_s={self.max_backlog_s} must hold at least chunk_s + right_s + final_pad_s "
                f"({self.chunk_s + self.right_s + self.final_pad_s:.2f} s), or no stream could ever become ready"
            )

    def frames(self, frame_s: float) -> tuple[int, int, int]:
        """(left, chunk, right) in encoder frames of ``frame_s`` seconds; ValueError if they do not divide."""
        return (_frames(self.left_s, frame_s, "left_s"), _frames(self.chunk_s, frame_s, "chunk_s"),
                _frames(self.right_s, frame_s, "right_s"))

    @property
    def window_s(self) -> float:
        return self.left_s + self.chunk_s + self.right_s


@dataclass(frozen=True)
class StepResult:
    """What one step (or the final flush) produced for one stream. Times are absolute audio seconds."""

    stream_id: str
    committed_text: str  # every committed word so far; only ever grows
    new_words: tuple[WordTiming, ...]  # words committed by this step
    draft_text: str  # the open last word plus the right context's lookahead; may change
    committed_until_s: float  # audio up to here is decoded and committed
    audio_end_s: float  # end of the audio this step looked at (chunk + right context)
    final: bool  # the stream is finished; draft_text is empty and committed_text is the transcript
    words: tuple[WordTiming, ...] = ()  # every committed word of the stream (for a final: the transcript's)
    source: Literal["stream", "offline"] = "stream"  # "offline": a final from the offline pass over the utterance

    @property
    def text(self) -> str:
        """Committed text followed by the draft: what a partial transcript shows."""
        return " ".join(t for t in (self.committed_text, self.draft_text) if t)


@dataclass(eq=False)
class StreamState:
    """One live audio stream. Create with :meth:`StreamingRecognizer.new_stream`; mutated only by it.

    Audio is kept from ``left context`` before the next chunk to the newest sample, in a buffer that is compacted
    in place: it holds one window (left + chunk + right + final padding) while the stream is stepped in time and
    grows, up to ``left_s + max_backlog_s + final_pad_s``, only while steps fall behind. Sample positions are
    absolute (counted from the stream's first sample).
    """

    stream_id: str
    offset_s: float  # absolute time of the stream's first sample (e.g. after an earlier finalised utterance)
    audio: np.ndarray = field(repr=False)  # float32 storage; valid samples are audio[:audio_len]
    audio_start: int = 0  # absolute sample index of audio[0]
    audio_len: int = 0
    received: int = 0  # samples accepted so far, including the final padding
    padding: int = 0  # silence appended by end()
    consumed: int = 0  # absolute sample index where the next chunk starts; everything before it is committed
    ended: bool = False  # no more audio will come
    done: bool = False  # the tail is decoded too
    decoder_state: Any = field(default=None, repr=False)  # NeMo LabelLoopingStateItem after the last chunk
    words: list[WordTiming] = field(default_factory=list)  # committed, complete words
    committed_text: str = ""
    open_word: list[Token] = field(default_factory=list)  # committed tokens of the word not yet closed
    draft: list[Token] = field(default_factory=list)  # tokens decoded from the right context at the last step
    steps: int = 0
    final_pass: bool = True  # keep the utterance's audio for an offline final pass
    kept: list[np.ndarray] = field(default_factory=list, repr=False)  # the real audio so far, while final_pass
    early: Transcript | None = field(default=None, repr=False)  # an early final pass (see keep_early)
    pass_end: int | None = None  # the final pass stops this many samples into the kept audio (None: at its end)

    @property
    def pending_samples(self) -> int:
        """Audio received but not yet committed."""
        return self.received - self.consumed

    @property
    def audio_s(self) -> float:
        """Seconds of real audio received (the final padding excluded)."""
        return (self.received - self.padding) / SAMPLE_RATE_HZ


@dataclass(frozen=True)
class StreamGeometry:
    """What a streaming client sees of the engine's configuration (seconds)."""

    left_s: float  # context before each chunk
    chunk_s: float  # audio committed per step
    right_s: float  # lookahead after the chunk (the draft)
    final_pass_max_s: float  # finals of utterances up to this long are one offline pass (0: never)
    early_final_s: float  # silence after speech after which the final pass runs early (0: never)


@dataclass(frozen=True)
class StreamStats:
    """A snapshot of the stream scheduler's counters since the engine started."""

    active: int  # live streams
    steps: int  # batched streaming forwards
    step_seconds: float  # time spent in them
    early_passes_run: int  # early final passes completed (one per stream in a pass)
    early_passes_used: int  # ... and those that became a final
    final_passes: int  # offline final passes computed when an utterance ended (no early pass to use)
