"""The native real-time WebSocket protocol, ``parakeet-stream/1`` (docs/PROTOCOL.md), as types.

Both ends use it: the server reads client messages with :func:`parse` and builds its answers as
:class:`ServerMessage` dataclasses; the client builds :class:`Start` and friends and reads the server's answers with
:func:`parse_server`. ``to_json()`` returns the JSON object (a dict ready for ``json.dumps``) exactly as it goes
over the wire, keys in wire order.

Torch-free and light on purpose (standard library, :mod:`parakeet_worker.errors`, :mod:`parakeet_worker.transcript`):
the command-line client imports it.
"""

from parakeet_worker.serving.protocol.client_messages import (
    ABSENT,
    ClientMessage,
    Config,
    Finalize,
    InfoRequest,
    Ping,
    Start,
    Stop,
    action_of,
    check_audio_frame,
    loads,
    parse,
)
from parakeet_worker.serving.protocol.codes import (
    ACTION_ALIASES,
    CONFIG_KEYS,
    DEFAULT_SAMPLE_RATE_HZ,
    ENCODING,
    ENCODING_ALIASES,
    MAX_CHUNK_DURATION_S,
    MAX_CONTROL_BURST,
    MAX_CONTROL_RATE_PER_S,
    MAX_ENDPOINT_SILENCE_MS,
    MAX_FRAME_AUDIO_S,
    MAX_FRAME_BYTES,
    MAX_LANGUAGE_CHARS,
    MAX_SAMPLE_RATE_HZ,
    MIN_ENDPOINT_SILENCE_MS,
    MIN_SAMPLE_RATE_HZ,
    PCM16_BYTES_PER_SAMPLE,
    PROTOCOL_VERSION,
    START_KEYS,
    Action,
    CloseCode,
    EndReason,
    ErrorCode,
    FinalReason,
    FinalSource,
    ProtocolError,
)
from parakeet_worker.serving.protocol.server_messages import (
    SERVER_MESSAGES,
    ConfigUpdated,
    Error,
    Info,
    Limits,
    Pong,
    Ready,
    ServerMessage,
    SessionSettings,
    Started,
    Stopped,
    Transcription,
    UnknownMessage,
    Welcome,
    parse_server,
)

__all__ = [
    "ABSENT", "ACTION_ALIASES", "CONFIG_KEYS", "DEFAULT_SAMPLE_RATE_HZ", "ENCODING", "ENCODING_ALIASES",
    "MAX_CHUNK_DURATION_S", "MAX_CONTROL_BURST", "MAX_CONTROL_RATE_PER_S", "MAX_ENDPOINT_SILENCE_MS",
    "MAX_FRAME_AUDIO_S", "MAX_FRAME_BYTES", "MAX_LANGUAGE_CHARS", "MAX_SAMPLE_RATE_HZ",
    "MIN_ENDPOINT_SILENCE_MS", "MIN_SAMPLE_RATE_HZ", "PCM16_BYTES_PER_SAMPLE",
    "PROTOCOL_VERSION", "SERVER_MESSAGES", "START_KEYS", "Action", "ClientMessage", "CloseCode", "Config",
    "ConfigUpdated", "EndReason", "Error", "ErrorCode", "FinalReason", "FinalSource", "Finalize", "Info",
    "InfoRequest", "Limits", "Ping", "Pong", "ProtocolError", "Ready", "ServerMessage", "SessionSettings", "Start",
    "Started", "Stop", "Stopped", "Transcription", "UnknownMessage", "Welcome", "action_of", "check_audio_frame",
    "loads", "parse", "parse_server",
]
