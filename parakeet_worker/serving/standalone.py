"""The WebSocket server without RunPod: ``python websocket_handler.py --port 8765 --token secret``.

No ``--token``: one is generated and logged. Clients connect to ``ws://HOST:PORT/?token=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import signal
from dataclasses import replace

from parakeet_worker.config import Settings
from parakeet_worker.engine import ParakeetEngine
from parakeet_worker.observability import setup_logging
from parakeet_worker.serving.options import worker_options
from parakeet_worker.serving.ws_server import StreamServer, public_address

logger = logging.getLogger("websocket_handler")


async def _serve_standalone(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    settings = replace(settings, ws_host=args.host, ws_port=args.port)
    options = worker_options(settings)
    engine = await asyncio.to_thread(ParakeetEngine.from_settings, settings, options.engine)
    server = StreamServer(engine, settings, options.server)
    await server.start()
    token = args.token or secrets.token_urlsafe(18)
    server.grant(None, token=token, multi_use=True)
    host, port, _ = public_address(settings, server.port)
    logger.info("ready: ws://%s:%d/?token=%s", host, port, token)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Standalone real-time transcription server (no RunPod needed).")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default=None, help="the token clients pass as ?token=...; default: generated")
    args = parser.parse_args()
    setup_logging()
    asyncio.run(_serve_standalone(args))


if __name__ == "__main__":
    main()
