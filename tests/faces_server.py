"""A set of faces served on a real socket for their tests: the worker's own server (StreamServer: the app on
uvicorn, its token check, session registry and shutdown drain) on 127.0.0.1, an ephemeral port, its own thread; with
``grpc=True`` also its gRPC port (the Riva face) on another ephemeral port."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

from parakeet_worker.config import Settings
from parakeet_worker.engine import ParakeetEngine
from parakeet_worker.observability import Metrics
from parakeet_worker.serving.app import FaceRoutes
from parakeet_worker.serving.batch import BatchService
from parakeet_worker.serving.faces import FaceContext
from parakeet_worker.serving.ws_grants import ServerLimits
from parakeet_worker.serving.ws_server import ServerThread, StreamServer

TOKEN = "face-test-token"


@dataclass
class FacesServer:
    url: str  # http://127.0.0.1:PORT
    ws_url: str  # ws://127.0.0.1:PORT
    ctx: FaceContext
    server: StreamServer
    loop: asyncio.AbstractEventLoop
    grpc_target: str | None = None  # 127.0.0.1:PORT of the gRPC face (serve_faces(..., grpc=True))

    def drain(self, grace_s: float = 10.0) -> None:
        """Shut the server down as SIGTERM does (every live session ended its face's way), from the test's thread."""
        self.server.shutdown_blocking(grace_s)


@contextmanager
def serve_faces(engine: ParakeetEngine, faces: Sequence[FaceRoutes], *, settings: Settings | None = None,
                limits: ServerLimits | None = None, token: str = TOKEN, metrics: Metrics | None = None,
                batch: BatchService | None = None, grpc: bool = False) -> Iterator[FacesServer]:
    """Serve ``faces`` over ``engine`` until the block ends; ``token`` admits any number of sessions."""
    settings = replace(settings or Settings(), ws_host="127.0.0.1", ws_port=0)
    server = StreamServer(engine, settings, limits or ServerLimits(), metrics=metrics, faces=faces, batch=batch,
                          grpc_port=0 if grpc else None)
    thread = ServerThread(server)
    thread.start()
    try:
        server.grant(None, token=token, multi_use=True)
        assert server.loop is not None
        if grpc:
            assert server.grpc_port is not None, "the gRPC face did not start (see the log)"
        yield FacesServer(f"http://127.0.0.1:{server.port}", f"ws://127.0.0.1:{server.port}", server.ctx, server,
                          server.loop, f"127.0.0.1:{server.grpc_port}" if grpc else None)
    finally:
        thread.shutdown(5.0)
