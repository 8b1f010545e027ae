"""Who may open a session, on what terms, and what is left when it ends: limits, grants, summaries, the
per-address back-off on refused handshakes (:class:`RefusalGuard`), and what the native face needs of the server
that holds them (:class:`GrantBook`)."""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from parakeet_worker.serving.protocol import MAX_FRAME_AUDIO_S, MAX_FRAME_BYTES, EndReason

if TYPE_CHECKING:
    from parakeet_worker.serving.faces import LiveSession

logger = logging.getLogger("websocket_handler")


@dataclass(frozen=True)
class ServerLimits:
    max_sessions: int = 32
    idle_timeout_s: float = 30.0  # no audio and no message for this long ends the session
    max_session_s: float = 3600.0
    max_frame_bytes: int = MAX_FRAME_BYTES  # a WebSocket message larger than this closes the connection (1009)
    max_frame_audio_s: float = MAX_FRAME_AUDIO_S  # one binary frame may carry at most this much audio
    connect_timeout_s: float = 120.0  # a websocket job ends if no client connects within this
    # Token guessing: an address refused this many times within the window is answered 429 until the window
    # has passed since its last refusal (even with a valid token).
    max_refusals: int = 10
    refusal_window_s: float = 60.0


@dataclass(frozen=True)
class SessionSummary:
    session_id: str
    reason: str  # an EndReason
    audio_seconds: float
    utterances: int
    final_text: str
    duration_s: float
    error_code: str | None = None  # what the session lost, e.g. ``final_unavailable`` (docs/PROTOCOL.md)

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
    sessions: set[LiveSession] = field(default_factory=set)  # live now, of any face (cancelling the job ends them)
    used: bool = False

    def finish(self, summary: SessionSummary) -> None:
        if not self.multi_use and not self.summary.done():
            self.summary.set_result(summary)

    def end_unheard(self, reason: EndReason) -> None:
        """Resolve the summary for a grant whose session never ran (revoked, expired, shut down)."""
        if not self.summary.done():
            self.summary.set_result(SessionSummary.without_session(reason))


@dataclass
class _Refusals:
    count: int = 0
    window_start: float = 0.0
    last: float = 0.0
    logged_at: float = float("-inf")
    unlogged: int = 0


class RefusalGuard:
    """Per-address memory of refused handshakes (bad or missing token): past ``max_refusals`` within
    ``window_s`` the address is blocked until ``window_s`` after its last refusal, and refusals are logged at most
    once per window per address (with how many were not), so guessing costs the guesser, not the log. Bounded:
    the ``max_addresses`` least recently refused addresses are kept. Used on the server's loop only."""

    def __init__(self, max_refusals: int, window_s: float, max_addresses: int = 4096) -> None:
        self.max_refusals = max_refusals
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._seen: OrderedDict[str, _Refusals] = OrderedDict()

    def blocked_for(self, address: str, now: float | None = None) -> float:
        """Seconds ``address`` must still wait (0: not blocked)."""
        now = time.monotonic() if now is None else now
        entry = self._seen.get(address)
        if entry is None or entry.count < self.max_refusals:
            return 0.0
        left = entry.last + self.window_s - now
        if left <= 0:
            del self._seen[address]
            return 0.0
        return left

    def refused(self, address: str, why: str, now: float | None = None) -> None:
        """Record one refusal of ``address`` (and log it, rate-bounded)."""
        now = time.monotonic() if now is None else now
        entry = self._seen.pop(address, None) or _Refusals(window_start=now)
        if now - entry.window_start > self.window_s and entry.count < self.max_refusals:
            entry = _Refusals(window_start=now, logged_at=entry.logged_at, unlogged=entry.unlogged)
        entry.count += 1
        entry.last = now
        self._seen[address] = entry
        while len(self._seen) > self.max_addresses:
            self._seen.popitem(last=False)
        if now - entry.logged_at >= self.window_s:
            more = f" ({entry.unlogged} more refusals from it not logged)" if entry.unlogged else ""
            logger.warning("refused a connection from %s: %s; %d refusals in %.0f s%s", address, why, entry.count,
                           self.window_s, more)
            entry.logged_at = now
            entry.unlogged = 0
        else:
            entry.unlogged += 1


@runtime_checkable
class GrantBook(Protocol):
    """The server's grants as the native face sees them (the app's server implements it beside
    :class:`~parakeet_worker.serving.faces.SessionRegistry`). Used on the server's loop only."""

    @property
    def draining(self) -> bool:
        """The server is shutting down: new sessions are refused (503)."""

    @property
    def active_sessions(self) -> int:
        """Live sessions of every face."""

    def grant_for(self, token: str | None) -> Grant | None:
        """The live grant of ``token`` (compared in constant time), or ``None``."""

    def blocked_for(self, address: str) -> float:
        """Seconds ``address`` must still wait after too many refused handshakes (0: not blocked)."""

    def retire(self, grant: Grant) -> None:
        """The grant's session is over: a single-use grant's token is refused from now on."""


def grant_book(sessions: object, face: str) -> GrantBook:
    """A face's session registry as the server's grants (the faces that read tokens' grants need the server's
    registry, not any :class:`~parakeet_worker.serving.faces.SessionRegistry`); a TypeError names the face."""
    if not isinstance(sessions, GrantBook):
        raise TypeError(f"the {face} face needs the server's grants: its FaceContext.sessions must be a GrantBook "
                        "(parakeet_worker.serving.ws_server.StreamServer is one)")
    return sessions

