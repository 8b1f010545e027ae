"""What every face (protocol adapter) of the worker's one HTTP/WebSocket app gets: :class:`FaceContext`.

The app (:mod:`parakeet_worker.serving.app`) serves several protocols on one port — the native protocol
(docs/PROTOCOL.md), OpenAI REST and Realtime, Deepgram live, the RunPod load-balancing routes. Each is a small
module exporting ``routes(ctx: FaceContext) -> list[starlette.routing.BaseRoute]``; all of them share one engine
(one model, one stream scheduler), one token check, one session registry (the session limit and the shutdown
drain count every face's live sessions) and one metrics object. A face never holds model state of its own.

Tokens: :func:`request_token` reads a request's token the same way on every face (``Authorization: Bearer``,
``?token=``, and ``Authorization: Token`` where a face allows it, as Deepgram's SDK sends it); the context's
``authorize`` compares it with the tokens the worker accepts, in constant time, and never logs it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from parakeet_worker.config import Settings
from parakeet_worker.engine import ParakeetEngine
from parakeet_worker.observability import Metrics
from parakeet_worker.serving.batch import BatchService
from parakeet_worker.serving.protocol import EndReason
from parakeet_worker.serving.ws_grants import ServerLimits


class LiveSession(Protocol):
    """A live session of any face, as the registry sees it."""

    async def end(self, reason: EndReason) -> None:
        """End the session the face's own way (its notice, the final of the utterance in progress, its close),
        e.g. for ``EndReason.SERVER_SHUTDOWN`` or ``EndReason.CANCELLED``. Idempotent."""

    def abandon(self) -> None:
        """Give up an ending that overran the shutdown grace period (the final it waited for is lost)."""


class SessionRegistry(Protocol):
    """The worker's live sessions across all faces (implemented by the app's server)."""

    def admit(self, session: LiveSession) -> str | None:
        """Register a new session. Returns ``None`` when admitted, else why not in words (the worker is at its
        session limit, or shutting down): the face refuses the connection with its protocol's overload answer."""

    def leave(self, session: LiveSession) -> None:
        """Unregister a session that has ended (idempotent)."""


def token_digest(token: str) -> str:
    """The key tokens are stored and looked up under: lookups by digest take the same time whatever the token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def tokens_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two tokens."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


def request_token(headers: Mapping[str, str], query: Mapping[str, str], *, token_scheme: bool = False) -> str | None:
    """The token a request carries: ``?token=`` first, then ``Authorization: Bearer <t>`` (and ``Token <t>``
    when ``token_scheme``, Deepgram's form). Header names are matched case-insensitively by Starlette's
    ``Headers``; pass ``request.headers`` and ``request.query_params``."""
    token = query.get("token")
    if token:
        return token
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" or (token_scheme and scheme.lower() == "token"):
        return value.strip() or None
    return None


@dataclass(frozen=True)
class FaceContext:
    engine: ParakeetEngine
    settings: Settings
    metrics: Metrics
    limits: ServerLimits
    sessions: SessionRegistry
    authorize: Callable[[str | None], bool]  # token -> admitted (constant time; never logs the token)
    ready: Callable[[], bool]  # the model is loaded and warmed
    refused: Callable[[str, str], float]  # (client address, why) -> seconds the address must now wait (back-off)
    # Batch transcription (uploads, job inputs) for the HTTP faces, shared with the queue handler's jobs; None:
    # this worker serves none, and the HTTP faces answer 503.
    batch: BatchService | None = None


__all__ = ["FaceContext", "LiveSession", "SessionRegistry", "request_token", "token_digest", "tokens_equal"]
