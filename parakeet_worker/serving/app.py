"""The worker's one HTTP/WebSocket application: every protocol face over the same engine, on one port.

:func:`build_app` composes the worker's own routes — ``GET /healthz`` (alive), ``GET /readyz`` (model loaded
and warmed; 503 while loading) and ``GET /metrics`` (Prometheus text: :mod:`~parakeet_worker.observability.
prometheus`) — with each face's routes (``routes(ctx) -> list[BaseRoute]``, see
:mod:`~parakeet_worker.serving.faces`). :data:`FACES` is the one list of the faces the worker serves. The server
that runs the app on uvicorn is :class:`~parakeet_worker.serving.ws_server.StreamServer`.

Every request is tagged with the face whose route it matched (its module's name: ``native_face`` ->
``native``): the tag is in the :func:`~parakeet_worker.observability.log_context` of everything the request
does (its log lines, its metrics records, the sessions it opens), and the request counts in ``/metrics`` under
that face, its route and the status it was answered with (a WebSocket handshake: 101 when accepted).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parakeet_worker.observability import Metrics, log_context
from parakeet_worker.observability.prometheus import exposition, metrics_registry
from parakeet_worker.serving import deepgram_face, native_face, openai_rest, page_face, realtime_face
from parakeet_worker.serving.faces import FaceContext

FaceRoutes = Callable[[FaceContext], list[BaseRoute]]

# The faces the worker serves, in routing order (a path two faces both claim goes to the first).
FACES: tuple[FaceRoutes, ...] = (native_face.routes, page_face.routes, openai_rest.routes, realtime_face.routes,
                                 deepgram_face.routes)

WORKER_FACE = "worker"  # the label of the worker's own routes (/healthz, /readyz, /metrics)
UNMATCHED = ("none", "unmatched")  # (face, route) labels of a request no route matched


def face_label(face: FaceRoutes) -> str:
    """A face's name in logs and metrics: its module's (``parakeet_worker.serving.deepgram_face`` -> ``deepgram``)."""
    return face.__module__.rsplit(".", 1)[-1].removesuffix("_face")


def build_app(ctx: FaceContext, faces: Sequence[FaceRoutes] = FACES) -> Starlette:
    """The app: the worker's routes, then each face's, behind the middleware that tags and counts requests."""
    registry = metrics_registry(ctx.metrics)  # this app's own: servers in one process never share one

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        if ctx.ready():
            return JSONResponse({"status": "ready", "sessions": ctx.metrics.active_sessions()})
        return JSONResponse({"status": "loading"}, status_code=503)

    async def metrics(request: Request) -> Response:
        body, content_type = exposition(registry, request.headers.get("accept"))
        return Response(body, media_type=content_type)

    labelled: list[tuple[BaseRoute, str]] = [
        (Route("/healthz", healthz, methods=["GET"]), WORKER_FACE),
        (Route("/readyz", readyz, methods=["GET"]), WORKER_FACE),
        (Route("/metrics", metrics, methods=["GET"]), WORKER_FACE),
    ]
    for face in faces:
        label = face_label(face)
        labelled.extend((route, label) for route in face(ctx))
    return Starlette(routes=[route for route, _ in labelled],
                     middleware=[Middleware(FaceTags, metrics=ctx.metrics, labelled=labelled)])


def _status(message: Message) -> int | None:
    """The status a response's first message answers with (None: not a response's start)."""
    kind = message["type"]
    if kind in ("http.response.start", "websocket.http.response.start"):
        return int(message["status"])
    if kind == "websocket.accept":
        return 101
    if kind == "websocket.close":  # a close before the accept refuses the handshake (uvicorn answers 403)
        return 403
    return None


class FaceTags:
    """ASGI middleware: the face of the route a request matches goes into its log context, and the request is
    counted (face, route, status) once it is answered."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, labelled: Sequence[tuple[BaseRoute, str]]) -> None:
        self.app = app
        self.metrics = metrics
        self.labelled = labelled

    def _match(self, scope: Scope) -> tuple[str, str]:
        for route, face in self.labelled:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return face, str(getattr(route, "path", "") or "?")
        return UNMATCHED

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        face, route = self._match(scope)
        answered = False

        async def counted(message: Message) -> None:
            nonlocal answered
            if not answered:
                status = _status(message)
                if status is not None:
                    answered = True
                    self.metrics.request(face, route, status)
            await send(message)

        with log_context(face=face):
            try:
                await self.app(scope, receive, counted)
            finally:
                if not answered:  # failed before answering: the server answers 500 (or drops the connection)
                    self.metrics.request(face, route, 500)
