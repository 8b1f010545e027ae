"""RunPod load-balancing mode: the worker's app on RunPod's ``PORT``, ``/ping`` for RunPod's health checks.

``PARAKEET_RUNPOD_MODE=lb python rp_handler.py`` (the image's same ``CMD``) serves every face
(:data:`~parakeet_worker.serving.app.FACES`) plus ``POST /transcribe`` (a batch job's input object in, its output
object out) on ``$PORT`` (default 80), and ``GET /ping`` on ``$PORT_HEALTH`` (default: the same port): **204 while
the model loads and warms, 200 when ready** — RunPod routes requests to a worker only after its first 200.

The port is bound before the model loads, so RunPod's checks get 204 (not a refused connection) from the start: a
small loading app answers on it (``/ping`` 204, anything else 503 ``loading``), then the worker's app takes over the
same listening socket (connections queued meanwhile are served, none refused). Auth: ``PARAKEET_API_TOKEN`` is
required (the worker refuses to start without it): clients send it as ``Authorization: Bearer`` or ``?token=``
(use ``?token=`` if RunPod's gateway keeps the ``Authorization`` header for its own API key). Every request arrives
from RunPod's proxy, so the per-address back-off on refused tokens is off in this mode (it would block everyone).
SIGTERM drains like the queue worker: live sessions get their finals, requests in flight finish within
``PARAKEET_SHUTDOWN_GRACE_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from dataclasses import dataclass, replace

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from parakeet_worker.config import Settings
from parakeet_worker.engine import ParakeetEngine
from parakeet_worker.errors import ModelLoadError
from parakeet_worker.observability import Metrics, add_log_secret
from parakeet_worker.serving import lb_routes
from parakeet_worker.serving.app import FACES
from parakeet_worker.serving.batch import BatchService
from parakeet_worker.serving.faces import FaceContext
from parakeet_worker.serving.options import worker_options
from parakeet_worker.serving.ws_server import EmbeddedUvicorn, StreamServer, listen_socket

logger = logging.getLogger("parakeet_worker.lb")

PING_PATH = "/ping"
NO_REFUSAL_BACKOFF = 1 << 30  # refusals an address may have before the back-off: never (all come from the proxy)


def routes(ctx: FaceContext) -> list[BaseRoute]:
    """``GET /ping`` on the worker's app: 200 ready, 204 still loading (RunPod's health check)."""
    async def ping(request: Request) -> Response:
        return Response(status_code=200 if ctx.ready() else 204)

    return [Route(PING_PATH, ping, methods=["GET"])]


@dataclass
class _State:
    ready: bool = False


def _health_app(state: _State, *, loading_only: bool) -> Starlette:
    """``/ping`` from ``state``; with ``loading_only`` (the main port before the app takes it) every other path is
    503 ``loading``."""
    async def ping(request: Request) -> Response:
        return Response(status_code=200 if state.ready else 204)

    async def loading(request: Request) -> Response:
        return JSONResponse({"error": "the model is still loading; retry when /ping answers 200",
                             "error_code": "loading"}, status_code=503, headers={"Retry-After": "5"})

    app = Starlette(routes=[Route(PING_PATH, ping, methods=["GET"])])
    if loading_only:
        app.add_route("/{path:path}", loading, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    return app


async def _serve_small(app: Starlette, sock: socket.socket) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    server = EmbeddedUvicorn(uvicorn.Config(app, log_config=None, lifespan="off", access_log=False,
                                            server_header=False, proxy_headers=False))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="lb-health")
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the health server stopped before it started")
        await asyncio.sleep(0.01)
    return server, task


async def _stop_small(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    with contextlib.suppress(Exception):
        await task


async def serve(settings: Settings) -> int:
    """Run the load-balancing worker until SIGTERM/SIGINT; the process's exit status."""
    if not settings.api_token:
        logger.error("load-balancing mode needs PARAKEET_API_TOKEN: set it (a RunPod secret) and send it as "
                     "`Authorization: Bearer <token>` or `?token=<token>`")
        return 2
    add_log_secret(settings.api_token)
    options = worker_options(settings)
    port = settings.lb_port
    health_port = settings.lb_health_port or port
    state = _State()
    main_sock = listen_socket(settings.ws_host, port)
    # the loading app serves a duplicate of the socket: closing it on hand-over leaves the listening socket open
    loading = await _serve_small(_health_app(state, loading_only=True), main_sock.dup())
    health = None
    if health_port != port:
        health = await _serve_small(_health_app(state, loading_only=False), listen_socket(settings.ws_host, health_port))
    logger.info("load-balancing mode: /ping answers 204 on port %d while the model loads", health_port)
    try:
        engine = await asyncio.to_thread(ParakeetEngine.from_settings, settings, options.engine)
    except ModelLoadError as exc:
        logger.error("%s", exc)
        return 2
    except Exception as exc:  # loaded but cannot run (CUDA mismatch, out of memory, ...): same words as queue mode
        logger.exception("the model loaded but its warm-up inference failed (%s: %s); check that the image's CUDA "
                         "build matches the host driver (docs/DEPLOY.md, Troubleshooting)", type(exc).__name__, exc)
        return 3
    finally:
        await _stop_small(*loading)
    metrics = Metrics(settings.metrics_path())
    batch = BatchService(engine, settings, options=options, metrics=metrics)
    limits = replace(options.server, max_refusals=NO_REFUSAL_BACKOFF)
    server = StreamServer(engine, replace(settings, ws_port=port), limits, metrics=metrics, batch=batch,
                          ready=lambda: state.ready, faces=(*FACES, lb_routes.routes, routes))
    try:
        await server.start(sock=main_sock)
        server.grant(None, token=settings.api_token, multi_use=True)
        state.ready = True
        info = engine.info()
        logger.info("ready: %s on %s/%s, serving on port %d (/ping 200)", info.model, info.device, info.dtype,
                    server.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        logger.info("stopping: draining live sessions and requests (grace %.0f s)", options.jobs.shutdown_grace_s)
        state.ready = False
        await server.shutdown(options.jobs.shutdown_grace_s)
    finally:
        if health is not None:
            await _stop_small(*health)
        batch.close()
        await asyncio.to_thread(engine.close)
    logger.info("worker stopped")
    return 0


def main(settings: Settings) -> None:
    sys.exit(asyncio.run(serve(settings)))


__all__ = ["PING_PATH", "main", "routes", "serve"]
