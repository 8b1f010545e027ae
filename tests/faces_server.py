"""A face's routes served on a real socket for its tests: uvicorn on 127.0.0.1, an ephemeral port, a thread.

Until the worker's app (parakeet_worker/serving/app.py) serves every face, each face's tests use this: a real
uvicorn server over a real engine, with the FaceContext a face gets in production (its token check, session
registry and metrics are simple stand-ins here, replaced by the app's own when it lands).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from parakeet_worker.config import Settings
from parakeet_worker.engine import ParakeetEngine
from parakeet_worker.observability import Metrics
from parakeet_worker.serving.faces import FaceContext, LiveSession, tokens_equal
from parakeet_worker.serving.protocol import EndReason
from parakeet_worker.serving.ws_grants import ServerLimits

TOKEN = "face-test-token"


@dataclass
class Registry:
    """Live sessions of the test server: a session limit and a drain, like the app's registry."""

    limit: int = 8
    draining: bool = False
    live: set[Any] = field(default_factory=set)

    def admit(self, session: LiveSession) -> str | None:
        if self.draining:
            return "the worker is shutting down"
        if len(self.live) >= self.limit:
            return f"server is busy ({self.limit} sessions); retry later"
        self.live.add(session)
        return None

    def leave(self, session: LiveSession) -> None:
        self.live.discard(session)

    async def drain(self, grace_s: float = 10.0) -> None:
        self.draining = True
        ends = [asyncio.ensure_future(s.end(EndReason.SERVER_SHUTDOWN)) for s in list(self.live)]
        if ends:
            _, late = await asyncio.wait(ends, timeout=grace_s)
            for session in list(self.live):
                if late:
                    session.abandon()


@dataclass
class FacesServer:
    url: str  # http://127.0.0.1:PORT
    ws_url: str  # ws://127.0.0.1:PORT
    ctx: FaceContext
    registry: Registry
    loop: asyncio.AbstractEventLoop

    def drain(self, grace_s: float = 10.0) -> None:
        """End every live session as a shutdown does (from the test's thread)."""
        asyncio.run_coroutine_threadsafe(self.registry.drain(grace_s), self.loop).result(grace_s + 5)


@contextmanager
def serve_faces(engine: ParakeetEngine, faces: list[Callable[[FaceContext], list[BaseRoute]]], *,
                settings: Settings | None = None, limits: ServerLimits | None = None, token: str = TOKEN,
                **ctx_fields: Any) -> Iterator[FacesServer]:
    """Serve ``faces`` over ``engine`` until the block ends. Extra keyword arguments become FaceContext fields."""
    registry = Registry(limit=(limits or ServerLimits()).max_sessions)
    ctx = FaceContext(engine=engine, settings=settings or Settings(), metrics=Metrics(None),
                      limits=limits or ServerLimits(), sessions=registry,
                      authorize=lambda t: t is not None and tokens_equal(t, token), ready=lambda: True,
                      refused=lambda address, why: 0.0, **ctx_fields)
    app = Starlette(routes=[route for face in faces for route in face(ctx)])
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off", ws="websockets-sansio",
                            ws_max_size=ctx.limits.max_frame_bytes)
    server = uvicorn.Server(config)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield FacesServer(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", ctx, registry, loop)
    finally:
        if registry.live:
            asyncio.run_coroutine_threadsafe(registry.drain(5.0), loop).result(10)
        server.should_exit = True
        thread.join(15)
