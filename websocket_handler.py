"""The worker's HTTP/WebSocket server (the native protocol: docs/PROTOCOL.md; /healthz, /readyz, /metrics),
standalone without RunPod::

    python websocket_handler.py --port 8765 --token secret      # or PARAKEET_API_TOKEN, else one is generated

On RunPod the worker (``rp_handler.py``) runs the same server beside its job loop. The server lives in
:mod:`parakeet_worker.serving.ws_server`, its routes in :mod:`parakeet_worker.serving.app`.
"""

from parakeet_worker.serving.protocol import PROTOCOL_VERSION
from parakeet_worker.serving.standalone import main
from parakeet_worker.serving.ws_grants import ServerLimits
from parakeet_worker.serving.ws_server import ServerThread, StreamServer

__all__ = ["PROTOCOL_VERSION", "ServerLimits", "ServerThread", "StreamServer", "main"]

if __name__ == "__main__":
    main()
