"""Who may open a session, on what terms, and what is left when it ends: limits, grants and summaries."""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from parakeet_worker.serving.protocol import MAX_FRAME_AUDIO_S, MAX_FRAME_BYTES, EndReason

if TYPE_CHECKING:
    from parakeet_worker.serving.ws_session import Session


@dataclass(frozen=True)
class ServerLimits:
    max_sessions: int = 32
    idle_timeout_s: float = 30.0  # no audio and no message for this long ends the session
    max_session_s: float = 3600.0
    max_frame_bytes: int = MAX_FRAME_BYTES  # a WebSocket message larger than this closes the connection (1009)
    max_frame_audio_s: float = MAX_FRAME_AUDIO_S  # one binary frame may carry at most this much audio
    connect_timeout_s: float = 120.0  # a websocket job ends if no client connects within this


@dataclass(frozen=True)
class SessionSummary:
    session_id: str
    reason: str  # an EndReason
    audio_seconds: float
    utterances: int
    final_text: str
    duration_s: float

    @classmethod
    def without_session(cls, reason: EndReason) -> SessionSummary:
        """The summary of a grant that ends before (or without) its session: nothing was heard."""
        return cls("", reason, 0.0, 0, "", 0.0)


@dataclass
class Grant:
    """Permission for sessions under one token; ``summary`` resolves when its (single) session ends."""

    token: str
    job_id: str | None
    limits: ServerLimits
    multi_use: bool = False
    created: float = field(default_factory=time.monotonic)
    summary: concurrent.futures.Future[SessionSummary] = field(default_factory=concurrent.futures.Future)
    sessions: set[Session] = field(default_factory=set)
    used: bool = False

    def finish(self, summary: SessionSummary) -> None:
        if not self.multi_use and not self.summary.done():
            self.summary.set_result(summary)

    def end_unheard(self, reason: EndReason) -> None:
        """Resolve the summary for a grant whose session never ran (revoked, expired, shut down)."""
        if not self.summary.done():
            self.summary.set_result(SessionSummary.without_session(reason))
