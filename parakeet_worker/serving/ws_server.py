"""The worker's server: the one HTTP/WebSocket app (every protocol face) on uvicorn, on one port.

One server per worker, shared by every websocket job and every face. It runs its own asyncio loop on its own thread
(so the RunPod SDK's loop and the server never wait on each other); the model work happens on the engine's worker
thread, where all live streams are batched into one forward per step. The asyncio side only moves bytes and messages.

Access is by token: a RunPod ``action: websocket`` job asks :meth:`StreamServer.grant` for a one-session token and
waits for that session's summary; standalone, a fixed token admits any number of sessions::

    python websocket_handler.py --port 8765 --token secret      # or no --token: one is generated and printed

This module is the server's life: listening (uvicorn on a socket it binds itself, so port 0 works and a port in use
is an ``OSError``; no signal handlers of uvicorn's: the worker owns SIGTERM), the one
:class:`~parakeet_worker.serving.faces.FaceContext`, the session registry of every face (the session limit, the
drain), the token check (grants looked up by digest, compared in constant time) with its per-address back-off,
grants, shutdown. ``await server.shutdown(grace_s)`` (or ``ServerThread.shutdown(grace_s)`` from another thread)
drains: new connections are refused (503), every live session of every face is ended its face's way
(``LiveSession.end(EndReason.SERVER_SHUTDOWN)``: the native protocol's ``server_shutdown``, the final of its
utterance in progress, ``stopped`` and a 1001 close), all within ``grace_s``; the late ones are abandoned, then
uvicorn stops. The engine is closed by its owner afterwards (``engine.close(grace_s)``), as batch jobs share it.
The routes are :mod:`~parakeet_worker.serving.app`'s; the native protocol's face is
:mod:`~parakeet_worker.serving.native_face`, one connection's protocol :mod:`~parakeet_worker.serving.ws_session`;
limits, grants and summaries :mod:`~parakeet_worker.serving.ws_grants`.

Given a ``grpc_port`` (the composition roots pass ``PARAKEET_GRPC_PORT``; 0 there means off, here it binds a free
port), the server also runs the Riva-compatible gRPC face (:mod:`~parakeet_worker.serving.grpc_server`) on the same
loop with the same context: its sessions count toward the limit and are drained like the others', and it stops
after them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import uvicorn

from parakeet_worker.config import Settings
from parakeet_worker.engine import ParakeetEngine
from parakeet_worker.observability import Metrics, current_context
from parakeet_worker.serving.app import FACES, FaceRoutes, build_app
from parakeet_worker.serving.batch import BatchService
from parakeet_worker.serving.faces import FaceContext, LiveSession, token_digest, tokens_equal
from parakeet_worker.serving.grpc_server import GrpcServer
from parakeet_worker.serving.protocol import PROTOCOL_VERSION, EndReason
from parakeet_worker.serving.ws_grants import Grant, RefusalGuard, ServerLimits, SessionSummary

logger = logging.getLogger("websocket_handler")

PING_INTERVAL_S = 20.0  # the server pings every this long ...
PING_TIMEOUT_S = 20.0  # ... and closes a connection that does not answer within this
CLOSE_TIMEOUT_S = 5  # uvicorn's stop: how long connections still open get to close
THREAD_CALL_TIMEOUT_S = 30.0  # ServerThread: starting or stopping the server on its loop
SHUTDOWN_GRACE_S = 20.0  # stop(): how long live sessions get for their last finals before their sockets close
LISTEN_BACKLOG = 2048
START_POLL_S = 0.005


class EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: the process that embeds the server owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening socket (``OSError`` when the address is taken or not ours; port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
    # Nagle off: asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, which create_server's (proto
    # 0) and the connections accepted from them are not; Linux copies the listener's setting to accepted sockets.
    # With Nagle on, a message written right after another (Realtime's committed, item.added, then the transcript)
    # waited for the client's ACK, riding on its next audio frame: ~18 ms (bench/faces.py).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


# --- the server -------------------------------------------------------------------------------------------------
class StreamServer:
    """The app on uvicorn, the registry of every face's live sessions (a
    :class:`~parakeet_worker.serving.faces.SessionRegistry`) and the grants (a
    :class:`~parakeet_worker.serving.ws_grants.GrantBook`). ``faces`` defaults to the app's :data:`FACES`."""

    def __init__(self, engine: ParakeetEngine, settings: Settings, limits: ServerLimits | None = None,
                 *, ready: Callable[[], bool] | None = None, metrics: Metrics | None = None,
                 faces: Sequence[FaceRoutes] | None = None, batch: BatchService | None = None,
                 grpc_port: int | None = None) -> None:
        self.engine = engine
        self.metrics = metrics or Metrics(None)
        self.settings = settings
        self.limits = limits or ServerLimits()
        self._ready = ready or (lambda: True)
        self._faces = tuple(faces) if faces is not None else FACES
        self._grants: dict[str, Grant] = {}  # by token_digest(token)
        self._sessions: dict[int, tuple[LiveSession, str]] = {}  # id -> (session, its face)
        self._draining = False
        self._refusals = RefusalGuard(self.limits.max_refusals, self.limits.refusal_window_s)
        self._uvicorn: EmbeddedUvicorn | None = None
        self._serving: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = settings.ws_port
        self.grpc_port = grpc_port  # None: no gRPC face; 0: a free port, set to the bound one once started
        self._grpc: GrpcServer | None = None
        # The one FaceContext of the worker: every face gets this one.
        self.ctx = FaceContext(engine=engine, settings=settings, metrics=self.metrics, limits=self.limits,
                               sessions=self, authorize=self.authorize, ready=self._ready, refused=self.refused,
                               batch=batch)

    # --- lifecycle ----------------------------------------------------------------------------------------------
    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen and serve on the running loop; returns once uvicorn accepts connections. ``sock``: a listening
        socket to serve instead of binding ``ws_host:ws_port`` (connections already queued on it are served)."""
        self.loop = asyncio.get_running_loop()
        sock = sock if sock is not None else listen_socket(self.settings.ws_host, self.settings.ws_port)
        config = uvicorn.Config(
            build_app(self.ctx, self._faces), ws="websockets-sansio", ws_max_size=self.limits.max_frame_bytes,
            ws_ping_interval=PING_INTERVAL_S, ws_ping_timeout=PING_TIMEOUT_S, log_config=None, lifespan="off",
            server_header=False, access_log=False, proxy_headers=False, timeout_graceful_shutdown=CLOSE_TIMEOUT_S)
        server = self._uvicorn = EmbeddedUvicorn(config)
        serving = self._serving = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")
        while not server.started:
            if serving.done():
                sock.close()
                serving.result()  # raises what stopped it
                raise RuntimeError("uvicorn stopped before it started serving")
            await asyncio.sleep(START_POLL_S)
        self.port = sock.getsockname()[1]
        logger.info("server listening on %s:%d (HTTP and WebSocket, %s)", self.settings.ws_host, self.port,
                    PROTOCOL_VERSION)
        if self.grpc_port is not None:
            grpc_server = GrpcServer(self.ctx, self.settings.ws_host, self.grpc_port)
            try:
                self.grpc_port = await grpc_server.start()
                self._grpc = grpc_server
            except OSError as exc:  # the WebSocket faces still serve; the log names the problem
                logger.error("the Riva gRPC face is off: %s", exc)
                self.grpc_port = None

    async def stop(self) -> None:
        await self.shutdown(SHUTDOWN_GRACE_S)

    async def shutdown(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Drain: refuse new sessions, end every live session of every face its face's way
        (``end(EndReason.SERVER_SHUTDOWN)``) — all at once, within ``grace_s`` — abandon the late ones, then stop
        uvicorn (it closes what is still open). Grants that never had a session resolve with ``server_shutdown``.
        Idempotent."""
        self._draining = True
        sessions = [session for session, _ in self._sessions.values()]
        if sessions:
            logger.info("shutting down: ending %d live sessions (grace %.0f s)", len(sessions), grace_s)
            ends = [asyncio.ensure_future(s.end(EndReason.SERVER_SHUTDOWN)) for s in sessions]
            _, late = await asyncio.wait(ends, timeout=grace_s)
            if late:
                logger.warning("%d sessions did not end within the %.0f s grace period; closing them", len(late),
                               grace_s)
                for task in late:
                    task.cancel()
                for session in sessions:
                    session.abandon()
        if self._grpc is not None:  # its sessions are over (or abandoned): RPCs still running are cancelled
            await self._grpc.stop()
        if self._uvicorn is not None and self._serving is not None:
            self._uvicorn.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._serving
        for grant in list(self._grants.values()):
            grant.end_unheard(EndReason.SERVER_SHUTDOWN)

    def shutdown_blocking(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """:meth:`shutdown` from any thread but the server's own (a signal handler, the RunPod worker's main)."""
        if self.loop is None:
            return
        call = asyncio.run_coroutine_threadsafe(self.shutdown(grace_s), self.loop)
        call.result(timeout=grace_s + CLOSE_TIMEOUT_S + THREAD_CALL_TIMEOUT_S)

    # --- the session registry of every face (on the server's loop) ----------------------------------------------
    def admit(self, session: LiveSession) -> str | None:
        if self._draining:
            return "this worker is shutting down and takes no new sessions; start another job"
        if len(self._sessions) >= self.limits.max_sessions:
            return f"server is busy ({self.limits.max_sessions} sessions); retry later"
        face = current_context().get("face") or str(getattr(session, "face", "unknown"))
        self._sessions[id(session)] = (session, face)
        self.metrics.session_opened(face)
        return None

    def leave(self, session: LiveSession) -> None:
        entry = self._sessions.pop(id(session), None)
        if entry is not None:
            self.metrics.session_closed(entry[1])

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    @property
    def draining(self) -> bool:
        return self._draining

    # --- tokens -------------------------------------------------------------------------------------------------
    def grant_for(self, token: str | None) -> Grant | None:
        """The live grant of ``token``: looked up by digest, compared in constant time."""
        if not token:
            return None
        grant = self._grants.get(token_digest(token))
        return grant if grant is not None and tokens_equal(grant.token, token) else None

    def authorize(self, token: str | None) -> bool:
        """Whether ``token`` is one the worker accepts now (a live grant's: a job's token, the standalone one)."""
        return self.grant_for(token) is not None

    def refused(self, address: str, why: str) -> float:
        """Record a refused handshake or request from ``address`` (logged at a bounded rate); returns the seconds
        the address must now wait before it is heard again (0: not blocked)."""
        self._refusals.refused(address, why)
        return self._refusals.blocked_for(address)

    def blocked_for(self, address: str) -> float:
        return self._refusals.blocked_for(address)

    def retire(self, grant: Grant) -> None:
        if not grant.multi_use:
            self._grants.pop(token_digest(grant.token), None)

    # --- grants (thread-safe entry points) ----------------------------------------------------------------------
    def grant(self, job_id: str | None, *, idle_timeout_s: float | None = None, max_session_s: float | None = None,
              token: str | None = None, multi_use: bool = False) -> Grant:
        limits = replace(self.limits, idle_timeout_s=idle_timeout_s or self.limits.idle_timeout_s,
                         max_session_s=max_session_s or self.limits.max_session_s)
        grant = Grant(token=token or secrets.token_urlsafe(24), job_id=job_id, limits=limits, multi_use=multi_use)
        self._grants[token_digest(grant.token)] = grant  # dict assignment is atomic; the loop only reads it
        if not multi_use and self.loop is not None:
            self.loop.call_soon_threadsafe(self._watch_unused, grant)
        return grant

    def revoke(self, grant: Grant, reason: str = EndReason.CANCELLED) -> None:
        """End the grant's sessions (e.g. its job was cancelled) and refuse its token from now on."""
        if self.loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._revoke(grant, EndReason(reason)), self.loop)

    async def _revoke(self, grant: Grant, reason: EndReason) -> None:
        self._grants.pop(token_digest(grant.token), None)
        await asyncio.gather(*(session.end(reason) for session in list(grant.sessions)))
        grant.end_unheard(reason)

    def _watch_unused(self, grant: Grant) -> None:
        def expire() -> None:
            if not grant.used and not grant.summary.done():
                self._grants.pop(token_digest(grant.token), None)
                grant.end_unheard(EndReason.NO_CLIENT)
        assert self.loop is not None
        self.loop.call_later(grant.limits.connect_timeout_s, expire)


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


def public_address(settings: Settings, port: int, *, grpc: bool = False) -> tuple[str, int, str]:
    """(host, port, which) a client should use: RunPod's public IP and mapped TCP port when set. ``grpc``: the
    gRPC port's (``RUNPOD_TCP_PORT_<grpc_port>``) instead of the WebSocket port's."""
    mapped = settings.runpod_grpc_tcp_port if grpc else settings.runpod_tcp_port
    if settings.runpod_public_ip and mapped:
        return settings.runpod_public_ip, mapped, "public"
    host = settings.ws_host if settings.ws_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return host, port, "internal"


__all__ = ["PROTOCOL_VERSION", "Grant", "ServerLimits", "ServerThread", "SessionSummary", "StreamServer",
           "public_address"]
