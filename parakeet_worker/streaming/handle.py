"""The thread-safe face of a live stream (:class:`StreamHandle`), its options and events, and the record the
scheduler keeps for each live stream.

The asyncio side (the WebSocket server) only calls :class:`StreamHandle` methods, which append to an inbox under a
lock and poke the engine; results come back as :class:`StreamEvent` through the stream's ``on_event`` callback,
called on the engine's worker thread (it must only hand the event over, e.g. with ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from parakeet_worker.errors import EngineClosedError
from parakeet_worker.streaming.types import FinalizeLimitError, StepResult, StreamBacklogError, StreamState
from parakeet_worker.streaming.vad import EndpointConfig, VadStream
from parakeet_worker.transcript import SAMPLE_RATE_HZ

if TYPE_CHECKING:
    from parakeet_worker.streaming.manager import StreamManager

logger = logging.getLogger(__name__)

EventKind = Literal["partial", "final", "closed", "error", "speech_start", "speech_stop"]
MAX_QUEUED_FINALIZE = 4  # finalize requests a stream may have waiting for the scheduler; more are refused
FinalReason = Literal["endpoint", "finalize", "stop"]


@dataclass(frozen=True)
class StreamOptions:
    endpointing: bool = True  # server VAD ends utterances on silence
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    final_pass: bool = True  # finals are one offline pass over the utterance (may revise committed partial words)
    # speech_start / speech_stop events from the VAD (its threshold and min_speech_s are ``endpoint``'s), and a
    # final for every utterance that had a speech_start, empty or not:
    vad_events: bool = False
    speech_stop_s: float | None = None  # clear silence after speech that is a speech_stop (None: the endpoint's)

    def __post_init__(self) -> None:
        if self.speech_stop_s is not None and not 0 < self.speech_stop_s <= 60:
            raise ValueError(f"speech_stop_s must be within 0..60 s, got {self.speech_stop_s}")


@dataclass(frozen=True)
class StreamEvent:
    stream_id: str
    kind: EventKind
    utterance: int  # 0-based index of the utterance the event belongs to
    result: StepResult | None = None  # partial/final: the utterance's text, words and audio offsets
    reason: str = ""  # final: endpoint | finalize | stop; closed: stop | abort | engine_closed | error
    error: Exception | None = None
    # speech_start: where the speech began; speech_stop: where it ended (the pause began). Seconds from the
    # stream's first sample, on the VAD's 32 ms frames; the event itself comes once the VAD has judged the frame
    # that decided it (speech_start: min_speech_s into the speech; speech_stop: the stop silence into the pause).
    at_s: float | None = None
    emitted_at: float = field(default_factory=time.monotonic)


EventCallback = Callable[[StreamEvent], None]


@dataclass(frozen=True)
class Inbox:
    """What a handle had queued when the scheduler took it."""

    audio: np.ndarray
    finalize_at: list[int]  # positions in ``audio`` where the client asked for a final, in order
    stop: bool
    abort: bool


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

    def push(self, audio: np.ndarray) -> None:
        """Queue samples; raises :class:`StreamBacklogError` when the engine is too far behind this stream."""
        if self.closed or self._stop or self._abort:
            raise EngineClosedError(f"stream {self.stream_id} is closed")
        samples = np.ascontiguousarray(audio, dtype=np.float32)
        limit = self._manager.max_backlog_samples
        with self._lock:
            if self._inbox_samples + self._manager.pending_samples(self) + samples.shape[0] > limit:
                raise StreamBacklogError(
                    f"stream {self.stream_id} holds more than {limit / SAMPLE_RATE_HZ:.0f} s of audio not yet "
                    "transcribed: the server is overloaded or audio is sent faster than real time; slow down")
            self._inbox.append(samples)
            self._inbox_samples += samples.shape[0]
        self._manager.poke()

    @property
    def final_waiting(self) -> bool:
        """A finalize or stop is queued (read without the lock: a stale answer only delays it by one group)."""
        return bool(self._finalize_at) or self._stop or self._abort

    def finalize(self) -> None:
        """End the current utterance now: its final comes back with reason ``finalize``; the stream goes on.
        Raises :class:`FinalizeLimitError` while ``MAX_QUEUED_FINALIZE`` requests are still waiting."""
        with self._lock:
            if len(self._finalize_at) >= MAX_QUEUED_FINALIZE:
                raise FinalizeLimitError(
                    f"stream {self.stream_id} already has {MAX_QUEUED_FINALIZE} finalize requests waiting; wait "
                    "for their finals before asking for another")
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

    def _take(self) -> Inbox:
        """Empty the inbox (the scheduler's side)."""
        with self._lock:
            audio = np.concatenate(self._inbox) if self._inbox else np.zeros(0, np.float32)
            self._inbox = []
            self._inbox_samples = 0
            finalize_at, self._finalize_at = self._finalize_at, []
            return Inbox(audio, finalize_at, self._stop, self._abort)


@dataclass(eq=False)
class LiveStream:
    """The scheduler's record of one live stream."""

    handle: StreamHandle
    on_event: EventCallback
    state: StreamState
    vad: VadStream | None
    endpointing: bool  # the VAD ends utterances (else it only times early final passes, or is None)
    utterance: int = 0
    samples_before: int = 0  # samples of the earlier (finished) utterances
    early_speech: int = 0  # the VAD's speech-frame count when the stream's last early final pass ran ...
    early_voiced: int = 0  # ... and its voiced-frame count (any voice since discards the pass)
    spoke: int = -1  # the latest utterance that had a speech_start event (it gets a final, even an empty one)
    last_step: float = 0.0  # monotonic time of its last step: the longest-waiting streams step first

    @property
    def stream_id(self) -> str:
        return self.handle.stream_id

    def emit(self, event: StreamEvent) -> None:
        """Hand ``event`` to the consumer; a consumer's bug must not stop the engine."""
        try:
            self.on_event(event)
        except Exception:
            logger.exception("stream %s: event callback failed", self.stream_id)
