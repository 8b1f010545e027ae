"""The native streaming protocol's face (docs/PROTOCOL.md): the WebSocket at ``/``.

The handshake is checked before it is accepted, in this order, each refusal an HTTP answer with a JSON
``{"error": ...}`` body: the worker is shutting down (503); the client's address was refused too often lately
(429 with ``Retry-After``, whatever token it sends); no or an unknown token (401: ``?token=`` or
``Authorization: Bearer``; each counts toward that back-off); a single-use token whose session is used (409); the
worker is at its session limit (503). An accepted connection is one :class:`~parakeet_worker.serving.ws_session.
Session`, which this module connects to Starlette's WebSocket (:class:`StarletteConnection`). Tokens are the
server's grants (a ``websocket`` job's single-use token, the standalone token), which this face reads through
the server's :class:`~parakeet_worker.serving.ws_grants.GrantBook`. :func:`check_handshake` is those checks alone,
for any request: the browser page's access probe (:mod:`~parakeet_worker.serving.page_face`) answers with them,
since a browser's WebSocket cannot read a refused handshake's answer.

A plain ``GET /`` (no WebSocket upgrade) is the browser page's (:mod:`~parakeet_worker.serving.page_face`).
"""

from __future__ import annotations

import contextlib
import logging

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from parakeet_worker.observability import log_context
from parakeet_worker.serving.faces import FaceContext, request_token
from parakeet_worker.serving.ws_grants import Grant, GrantBook, grant_book
from parakeet_worker.serving.ws_session import ConnectionGone, Session

logger = logging.getLogger("websocket_handler")

class StarletteConnection:
    """A :class:`~parakeet_worker.serving.ws_session.Connection` over Starlette's (uvicorn's) WebSocket."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self._gone = False

    @property
    def remote_address(self) -> str:
        return _address_of(self.websocket)

    async def receive(self) -> str | bytes | None:
        if self._gone:
            return None
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            self._gone = True
            return None
        text: str | None = message.get("text")
        if text is not None:
            return text
        data: bytes | None = message.get("bytes")
        return data if data is not None else b""

    async def send_text(self, text: str) -> None:
        try:
            await self.websocket.send_text(text)
        except (WebSocketDisconnect, WebSocketDisconnected) as exc:
            raise ConnectionGone(str(exc)) from None

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected):
            await self.websocket.close(code, reason)


def _address_of(connection: HTTPConnection) -> str:
    return connection.client.host if connection.client is not None else "unknown"


def _refusal(status: int, error: str, retry_after_s: float | None = None) -> JSONResponse:
    headers = {"Retry-After": str(max(1, round(retry_after_s)))} if retry_after_s is not None else None
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def routes(ctx: FaceContext) -> list[BaseRoute]:
    """The native protocol's route: the WebSocket at ``/``."""
    grants = grant_book(ctx.sessions, "native")

    async def native(websocket: WebSocket) -> None:
        refusal = check_handshake(ctx, grants, websocket)
        if isinstance(refusal, JSONResponse):
            await websocket.send_denial_response(refusal)
            return
        grant = refusal
        session = Session(ctx.engine, StarletteConnection(websocket), grant, metrics=ctx.metrics,
                          active_sessions=lambda: grants.active_sessions)
        busy = ctx.sessions.admit(session)
        if busy is not None:
            await websocket.send_denial_response(_refusal(503, busy))
            return
        grant.used = True
        grant.sessions.add(session)
        try:
            await websocket.accept()
            with log_context(session_id=session.id, job_id=grant.job_id):
                await session.run()
        finally:
            ctx.sessions.leave(session)
            grant.sessions.discard(session)
            grants.retire(grant)
            grant.finish(session.summary())

    return [WebSocketRoute("/", native, name="native")]


def check_handshake(ctx: FaceContext, grants: GrantBook, connection: HTTPConnection) -> JSONResponse | Grant:
    """The handshake's checks (the module's docstring): the grant that admits it, or the refusal to answer."""
    if grants.draining:
        return _refusal(503, "this worker is shutting down and takes no new sessions; start another job")
    address = _address_of(connection)
    wait_s = grants.blocked_for(address)
    if wait_s > 0:
        return _refusal(429, f"too many refused connections from this address; retry in {wait_s:.0f} s", wait_s)
    token = request_token(connection.headers, connection.query_params)
    grant = grants.grant_for(token)
    if grant is None:
        ctx.refused(address, f"{'no' if not token else 'an unknown'} token")
        return _refusal(401, "missing or invalid token: pass ?token=<token from the job's ready message>")
    if grant.used and not grant.multi_use:
        return _refusal(409, "this token's session is already in use or over")
    return grant
