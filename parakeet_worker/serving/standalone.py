"""The WebSocket server without RunPod: ``python websocket_handler.py --port 8765 --token secret``.

Clients connect to ``ws://HOST:PORT/?token=...`` (every face of the app on the same port, with the same token:
``GET /healthz``, ``/readyz`` and ``/metrics`` need none); Riva clients to ``HOST:GRPC_PORT`` (``--grpc-port``, default
50051, 0 = off) with the metadata ``authorization: Bearer <token>``. The token is ``--token``, else ``PARAKEET_API_TOKEN``,
else a generated one. It never reaches the log (stderr): given, the operator knows it already and the log says
``token=<redacted>``; generated, its URL is written once to stdout, the command's output, where a script can read it (``url=$(... | head -n1)``) and a log shipper
collecting stderr does not. Stdout rather than a redacted log line alone, because a generated token nobody can read
would make the server unusable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import signal
import sys
from dataclasses import replace

from parakeet_worker.config import Settings
from parakeet_worker.engine import ParakeetEngine, limit_malloc_arenas
from parakeet_worker.observability import add_log_secret, setup_logging
from parakeet_worker.serving.batch import BatchService
from parakeet_worker.serving.options import worker_options
from parakeet_worker.serving.ws_server import StreamServer, public_address

logger = logging.getLogger("websocket_handler")


def standalone_token(flag: str | None, settings: Settings) -> tuple[str, str | None]:
    """(token, where it came from): ``--token``, else ``PARAKEET_API_TOKEN``, else generated (``None``)."""
    if flag:
        return flag, "--token"
    if settings.api_token:
        return settings.api_token, "PARAKEET_API_TOKEN"
    return secrets.token_urlsafe(18), None


async def _serve_standalone(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    grpc_port = settings.grpc_port if args.grpc_port is None else args.grpc_port
    settings = replace(settings, ws_host=args.host, ws_port=args.port, grpc_port=grpc_port)
    options = worker_options(settings)
    engine = await asyncio.to_thread(ParakeetEngine.from_settings, settings, options.engine)
    batch = BatchService(engine, settings, options=options)  # the OpenAI REST face's uploads
    server = StreamServer(engine, settings, options.server, batch=batch, grpc_port=settings.grpc_port or None)
    await server.start()
    token, source = standalone_token(args.token, settings)
    add_log_secret(token)  # whatever logs it later (a library's debug line, a traceback): masked
    server.grant(None, token=token, multi_use=True)
    host, port, _ = public_address(settings, server.port)
    url = f"ws://{host}:{port}/?token={token}"
    if source is not None:
        logger.info("ready: %s (the token given with %s)", url, source)  # masked by the log's redaction
    else:
        sys.stdout.write(url + "\n")  # the command's output, not a log line: the one place the token appears
        sys.stdout.flush()
        logger.info("ready: %s (a generated token: the full URL is on stdout; pass --token to choose one)", url)
    if server.grpc_port is not None:
        grpc_host, grpc_port, _ = public_address(settings, server.grpc_port, grpc=True)
        logger.info("Riva gRPC: server=%s:%d, use_ssl=False, metadata authorization: Bearer <the token>",
                    grpc_host, grpc_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    batch.close()
    engine.close()


def main() -> None:
    limit_malloc_arenas()  # before the server's threads allocate: keeps RSS flat under load (engine/memory.py)
    parser = argparse.ArgumentParser(description="Standalone real-time transcription server (no RunPod needed).")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default=None, help="the token clients pass as ?token=... or Authorization: Bearer; "
                                                      "default: PARAKEET_API_TOKEN, else generated")
    parser.add_argument("--grpc-port", type=int, default=None,
                        help="the Riva-compatible gRPC port (default: PARAKEET_GRPC_PORT, else 50051; 0 = off)")
    args = parser.parse_args()
    setup_logging()
    asyncio.run(_serve_standalone(args))


if __name__ == "__main__":
    main()
