"""Command-line client for the Parakeet worker: live streaming, batch jobs and RunPod websocket sessions.

    # real-time streaming to a WebSocket server (standalone `python websocket_handler.py`, or a session's ws_url)
    python client.py stream speech.wav --url "ws://127.0.0.1:8765/?token=secret"
    python client.py stream speech.wav --url ws://127.0.0.1:8765 --token secret --fast --json
    python client.py stream --mic --url ws://127.0.0.1:8765 --token secret          # needs `pip install sounddevice`

    # a batch job through a RunPod endpoint (API key from RUNPOD_API_KEY) or a local `--rp_serve_api` server
    python client.py batch speech.flac --endpoint-id abc123 --timestamps
    python client.py batch https://example.com/talk.mp3 --endpoint-id abc123 --output-format srt -o talk.srt
    python client.py batch speech.flac --api-url http://127.0.0.1:8000 --sync

    # a real-time session on a RunPod endpoint: start an `action: websocket` job, wait for `ready`, stream, stop
    python client.py session speech.wav --endpoint-id abc123

The modules: :mod:`~parakeet_client.audio` (files and the microphone as PCM16 frames), :mod:`~parakeet_client.stream`
(one WebSocket session, read through :mod:`parakeet_worker.serving.protocol`), :mod:`~parakeet_client.jobs` (RunPod's
job API), :mod:`~parakeet_client.render` (what is shown), :mod:`~parakeet_client.cli` (the command line).
Torch-free: it shares only the protocol, the result types and audio decoding with the worker.
"""

from parakeet_client.audio import AudioSource, FileAudio, MicAudio, pcm16
from parakeet_client.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, build_parser, main
from parakeet_client.errors import ServerError, UsageError
from parakeet_client.jobs import (
    JobApi,
    SessionReady,
    batch_input,
    find_ready,
    job_error,
    parse_ready,
)
from parakeet_client.render import HumanSink, JsonSink, Sink, StatusLine, describe_status, output_stats, render_output
from parakeet_client.stream import StreamClient, StreamOptions, StreamOutcome, build_ws_url, redact, stream_once

__all__ = [
    "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "AudioSource", "FileAudio", "HumanSink", "JobApi",
    "JsonSink", "MicAudio", "ServerError", "SessionReady", "Sink", "StatusLine", "StreamClient", "StreamOptions",
    "StreamOutcome", "UsageError", "batch_input", "build_parser", "build_ws_url", "describe_status", "find_ready",
    "job_error", "main", "output_stats", "parse_ready", "pcm16", "redact", "render_output", "stream_once",
]
