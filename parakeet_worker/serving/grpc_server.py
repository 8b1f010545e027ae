"""The worker's gRPC port: a ``grpc.aio`` server on the StreamServer's event loop, serving NVIDIA Riva's ASR service
(:mod:`~parakeet_worker.serving.riva_face`) and the standard health check, over the same
:class:`~parakeet_worker.serving.faces.FaceContext` as the HTTP/WebSocket app (one engine, one token check, one
session registry). :class:`~parakeet_worker.serving.ws_server.StreamServer` starts it beside uvicorn when it is given
a gRPC port (``PARAKEET_GRPC_PORT``, standalone ``--grpc-port``) and stops it after its sessions drained.

Plaintext HTTP/2 (h2c), as Riva clients use it with ``use_ssl=False``; on RunPod the port is exposed as a TCP port.
"""

from __future__ import annotations

import logging

import grpc
from riva.client.proto import health_pb2, health_pb2_grpc

from parakeet_worker.serving import riva_face
from parakeet_worker.serving.faces import FaceContext

logger = logging.getLogger(__name__)

# Recognize takes a whole file in one message: up to this many bytes (a 30-minute 16 kHz PCM16 WAV is 58 MB).
# Streaming chunks are held to the live limits on top (ServerLimits.max_frame_audio_s).
MAX_MESSAGE_BYTES = 64 << 20
KEEPALIVE_TIME_MS = 30_000  # the server pings an idle connection every this long ...
KEEPALIVE_TIMEOUT_MS = 20_000  # ... and drops it when the ping is not answered within this
STOP_GRACE_S = 5.0  # stop(): RPCs still running (sessions already drained) get this long before they are cancelled


class _Health(health_pb2_grpc.HealthServicer):  # the generated, untyped base
    """``grpc.health.v1.Health/Check``: SERVING once the model is ready."""

    def __init__(self, ctx: FaceContext) -> None:
        self.ctx = ctx

    async def Check(self, request: health_pb2.HealthCheckRequest,  # noqa: N802 (the proto's name)
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        status = health_pb2.HealthCheckResponse.SERVING if self.ctx.ready() else \
            health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)


class GrpcServer:
    """The Riva face (and health) on ``host:port``; port 0 binds a free port (see :attr:`port` once started)."""

    def __init__(self, ctx: FaceContext, host: str, port: int) -> None:
        self.ctx = ctx
        self.host = host
        self.port = port
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Listen and serve on the running loop; returns the bound port. ``OSError`` when the port is taken."""
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a second listener sharing it
        ])
        riva_face.add_to_server(self.ctx, server)
        health_pb2_grpc.add_HealthServicer_to_server(_Health(self.ctx), server)
        host = f"[{self.host}]" if ":" in self.host else self.host
        try:
            bound = server.add_insecure_port(f"{host}:{self.port}")
        except RuntimeError as exc:  # grpc's way of saying the address cannot be bound
            raise OSError(f"gRPC could not listen on {host}:{self.port} ({exc}); choose a free port with "
                          "PARAKEET_GRPC_PORT (0 turns gRPC off)") from None
        if not bound:
            raise OSError(f"gRPC could not listen on {host}:{self.port}; choose a free port with PARAKEET_GRPC_PORT")
        await server.start()
        self._server, self.port = server, bound
        logger.info("gRPC listening on %s:%d (Riva ASR, h2c)", self.host, bound)
        return int(bound)

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop listening; RPCs still open get ``grace_s``, then are cancelled. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace_s)


__all__ = ["MAX_MESSAGE_BYTES", "GrpcServer"]
