"""Command-line client for the Parakeet worker: live streaming, batch jobs and RunPod websocket sessions.

    python client.py stream speech.wav --url "ws://127.0.0.1:8765/?token=secret"
    python client.py batch speech.flac --api-url http://127.0.0.1:8000 --sync
    python client.py session speech.wav --endpoint-id abc123

``python client.py --help`` lists every command and option. Exit codes: 0 done, 1 the server or the job failed
(the reason is printed on stderr), 2 a usage error. The client lives in the :mod:`parakeet_client` package; the
streaming protocol is described in docs/PROTOCOL.md.
"""

import sys

from parakeet_client import (
    FileAudio,
    JobApi,
    ServerError,
    StreamClient,
    StreamOptions,
    UsageError,
    build_ws_url,
    main,
    pcm16,
    stream_once,
)

__all__ = ["FileAudio", "JobApi", "ServerError", "StreamClient", "StreamOptions", "UsageError", "build_ws_url",
           "main", "pcm16", "stream_once"]

if __name__ == "__main__":
    sys.exit(main())
