"""The real-time WebSocket server: PCM16 in, partial and final transcripts out (protocol: docs/PROTOCOL.md).

One server per worker, shared by every websocket job. It runs its own asyncio loop on its own thread (so the RunPod
SDK's loop and the server never wait on each other); the model work happens on the engine's worker thread, where
all live streams are batched into one forward per step. The asyncio side only moves bytes and messages.

Access is by token: a RunPod ``action: websocket`` job asks :meth:`StreamServer.grant` for a one-session token and
waits for that session's summary; standalone, a fixed token admits any number of sessions::

    python websocket_handler.py --port 8765 --token secret      # or no --token: one is generated and printed

This module is the server's life: listening, health endpoints, the handshake's token check (with a per-address
back-off on refusals), grants, shutdown. ``await server.shutdown(grace_s)`` (or ``ServerThread.shutdown(grace_s)``
from another thread) drains: new connections are refused (503), every live session is told (``server_shutdown``),
gets the final of its utterance in progress, ``stopped`` and a 1001 close, all within ``grace_s``; the engine is
closed by its owner afterwards (``engine.close(grace_s)``), as batch jobs share it.
One connection's protocol is :mod:`~parakeet_worker.serving.ws_session`; limits, grants and summaries are
:mod:`~parakeet_worker.serving.ws_grants`; the messages themselves :mod:`~parakeet_worker.serving.protocol`.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from parakeet_worker.config import Settings
from parakeet_worker.engine import ParakeetEngine
from parakeet_worker.observability import Metrics, log_context
from parakeet_worker.serving import protocol as proto
from parakeet_worker.serving.protocol import PROTOCOL_VERSION, EndReason, ErrorCode
from parakeet_worker.serving.ws_grants import Grant, RefusalGuard, ServerLimits, SessionSummary
from parakeet_worker.serving.ws_session import Session

logger = logging.getLogger("websocket_handler")

PING_INTERVAL_S = 20.0  # the server pings every this long ...
PING_TIMEOUT_S = 20.0  # ... and closes a connection that does not answer within this
CLOSE_TIMEOUT_S = 5.0
THREAD_CALL_TIMEOUT_S = 30.0  # ServerThread: starting or stopping the server on its loop
SHUTDOWN_GRACE_S = 20.0  # stop(): how long live sessions get for their last finals before their sockets close


# --- the server -------------------------------------------------------------------------------------------------
class StreamServer:
    def __init__(self, engine: ParakeetEngine, settings: Settings, limits: ServerLimits | None = None,
                 *, ready: Callable[[], bool] | None = None, metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.metrics = metrics or Metrics(None)
        self.settings = settings
        self.limits = limits or ServerLimits()
        self._ready = ready or (lambda: True)
        self._grants: dict[str, Grant] = {}
        self._sessions: set[Session] = set()
        self._server: Server | None = None
        self._draining = False
        self._refusals = RefusalGuard(self.limits.max_refusals, self.limits.refusal_window_s)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = settings.ws_port

    # --- lifecycle ----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._server = await serve(
            self._connection, self.settings.ws_host, self.settings.ws_port, process_request=self._process_request,
            max_size=self.limits.max_frame_bytes, ping_interval=PING_INTERVAL_S, ping_timeout=PING_TIMEOUT_S,
            close_timeout=CLOSE_TIMEOUT_S, server_header=f"parakeet-worker ({PROTOCOL_VERSION})",
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        logger.info("WebSocket server listening on %s:%d", self.settings.ws_host, self.port)

    async def stop(self) -> None:
        await self.shutdown(SHUTDOWN_GRACE_S)

    async def shutdown(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Drain: refuse new connections, end every live session with ``server_shutdown`` (its final, ``stopped``,
        close 1001) — all at once, within ``grace_s`` — then close what is left and stop listening. Grants that
        never had a session resolve with ``server_shutdown``. Idempotent."""
        self._draining = True
        sessions = list(self._sessions)
        if sessions:
            logger.info("shutting down: ending %d live sessions (grace %.0f s)", len(sessions), grace_s)
            notice = proto.Error(code=ErrorCode.SERVER_SHUTDOWN,
                                 message="the worker is shutting down: the utterance in progress gets its final, "
                                         "then the session stops; reconnect to another worker")
            ends = [asyncio.ensure_future(s.end(EndReason.SERVER_SHUTDOWN, notice)) for s in sessions]
            _, late = await asyncio.wait(ends, timeout=grace_s)
            if late:
                logger.warning("%d sessions did not end within the %.0f s grace period; closing them", len(late),
                               grace_s)
                for task in late:
                    task.cancel()
                for session in sessions:
                    session.abandon()
        if self._server is not None:
            self._server.close()  # closes what is still open with 1001
            await self._server.wait_closed()
        for grant in list(self._grants.values()):
            grant.end_unheard(EndReason.SERVER_SHUTDOWN)

    def shutdown_blocking(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """:meth:`shutdown` from any thread but the server's own (a signal handler, the RunPod worker's main)."""
        if self.loop is None:
            return
        call = asyncio.run_coroutine_threadsafe(self.shutdown(grace_s), self.loop)
        call.result(timeout=grace_s + CLOSE_TIMEOUT_S + THREAD_CALL_TIMEOUT_S)

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    # --- grants (thread-safe entry points) ----------------------------------------------------------------------
    def grant(self, job_id: str | None, *, idle_timeout_s: float | None = None, max_session_s: float | None = None,
              token: str | None = None, multi_use: bool = False) -> Grant:
        limits = replace(self.limits, idle_timeout_s=idle_timeout_s or self.limits.idle_timeout_s,
                         max_session_s=max_session_s or self.limits.max_session_s)
        grant = Grant(token=token or secrets.token_urlsafe(24), job_id=job_id, limits=limits, multi_use=multi_use)
        self._grants[grant.token] = grant  # dict assignment is atomic; the loop only reads it
        if not multi_use and self.loop is not None:
            self.loop.call_soon_threadsafe(self._watch_unused, grant)
        return grant

    def revoke(self, grant: Grant, reason: str = EndReason.CANCELLED) -> None:
        """End the grant's sessions (e.g. its job was cancelled) and refuse its token from now on."""
        if self.loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._revoke(grant, EndReason(reason)), self.loop)

    async def _revoke(self, grant: Grant, reason: EndReason) -> None:
        self._grants.pop(grant.token, None)
        notice = proto.Error(code=ErrorCode.CANCELLED,
                             message="the session's job was cancelled: the utterance in progress gets its final, "
                                     "then the session stops")
        await asyncio.gather(*(session.end(reason, notice) for session in list(grant.sessions)))
        grant.end_unheard(reason)

    def _watch_unused(self, grant: Grant) -> None:
        def expire() -> None:
            if not grant.used and not grant.summary.done():
                self._grants.pop(grant.token, None)
                grant.end_unheard(EndReason.NO_CLIENT)
        assert self.loop is not None
        self.loop.call_later(grant.limits.connect_timeout_s, expire)

    # --- HTTP side: health endpoints and the handshake's token check ------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return _http(http.HTTPStatus.OK, {"status": "alive"})
        if path == "/readyz":
            if self._ready():
                return _http(http.HTTPStatus.OK, {"status": "ready", "sessions": self.active_sessions})
            return _http(http.HTTPStatus.SERVICE_UNAVAILABLE, {"status": "loading"})
        if self._draining:
            return _http(http.HTTPStatus.SERVICE_UNAVAILABLE,
                         {"error": "this worker is shutting down and takes no new sessions; start another job"})
        address = _address_of(connection)
        wait_s = self._refusals.blocked_for(address)
        if wait_s > 0:
            return _http(http.HTTPStatus.TOO_MANY_REQUESTS,
                         {"error": f"too many refused connections from this address; retry in {wait_s:.0f} s"},
                         retry_after_s=wait_s)
        token = _token_of(request)
        grant = self._grants.get(token or "")
        if grant is None:
            self._refusals.refused(address, f"{'no' if not token else 'an unknown'} token")
            return _http(http.HTTPStatus.UNAUTHORIZED,
                         {"error": "missing or invalid token: pass ?token=<token from the job's ready message>"})
        if grant.used and not grant.multi_use:
            return _http(http.HTTPStatus.CONFLICT, {"error": "this token's session is already in use or over"})
        if self.active_sessions >= self.limits.max_sessions:
            return _http(http.HTTPStatus.SERVICE_UNAVAILABLE,
                         {"error": f"server is busy ({self.limits.max_sessions} sessions); retry later"})
        grant.used = True
        # handed to _connection on the connection itself: websockets offers no other per-handshake state
        connection.grant = grant  # type: ignore[attr-defined]  # websockets' connection has no slot for it
        return None

    async def _connection(self, ws: ServerConnection) -> None:
        grant: Grant = ws.grant  # type: ignore[attr-defined]  # set by _process_request at the handshake
        session = Session(self.engine, ws, grant, metrics=self.metrics, active_sessions=lambda: self.active_sessions)
        self._sessions.add(session)
        grant.sessions.add(session)
        try:
            with log_context(session_id=session.id, job_id=grant.job_id):
                await session.run()
        finally:
            self._sessions.discard(session)
            grant.sessions.discard(session)
            if not grant.multi_use:
                self._grants.pop(grant.token, None)
            grant.finish(session.summary())


def _token_of(request: Request) -> str | None:
    query = parse_qs(urlsplit(request.path).query)
    if query.get("token"):
        return query["token"][0]
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return None


def _address_of(connection: ServerConnection) -> str:
    remote = connection.remote_address
    return str(remote[0]) if isinstance(remote, tuple) and remote else str(remote)


def _http(status: http.HTTPStatus, body: dict[str, Any], retry_after_s: float | None = None) -> Response:
    data = json.dumps(body).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                       ("Connection", "close")])
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(retry_after_s)))
    return Response(status.value, status.phrase, headers, data)


# --- running it -------------------------------------------------------------------------------------------------
class ServerThread:
    """Runs a :class:`StreamServer` on its own event loop in a daemon thread (the RunPod worker's way)."""

    def __init__(self, server: StreamServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ws-server", daemon=True)

    def start(self) -> StreamServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout=THREAD_CALL_TIMEOUT_S)
        return self.server

    def stop(self) -> None:
        self.shutdown(SHUTDOWN_GRACE_S)

    def shutdown(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """:meth:`StreamServer.shutdown` from any thread (e.g. a SIGTERM handler), then the server's loop stops.
        Returns within about ``grace_s`` plus the sockets' close timeout."""
        try:
            self.server.shutdown_blocking(grace_s)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


def public_address(settings: Settings, port: int) -> tuple[str, int, str]:
    """(host, port, which) a client should use: RunPod's public IP and mapped TCP port when set."""
    if settings.runpod_public_ip and settings.runpod_tcp_port:
        return settings.runpod_public_ip, settings.runpod_tcp_port, "public"
    host = settings.ws_host if settings.ws_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return host, port, "internal"


__all__ = ["PROTOCOL_VERSION", "Grant", "ServerLimits", "ServerThread", "SessionSummary", "StreamServer",
           "public_address"]
