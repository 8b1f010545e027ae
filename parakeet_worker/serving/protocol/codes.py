"""The protocol's version, bounds and names: actions, error codes, close codes, end reasons (docs/PROTOCOL.md)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum, StrEnum

from parakeet_worker.errors import ParakeetError
from parakeet_worker.transcript import SAMPLE_RATE_HZ

PROTOCOL_VERSION = "parakeet-stream/1"

# --- bounds -------------------------------------------------------------------------------------------------------
# One session's control messages (text frames): a token bucket of this rate and burst; more are refused
# (``rate_limited``) so one client cannot hold the engine's and the loop's time that other sessions need.
MAX_CONTROL_RATE_PER_S = 20.0
MAX_CONTROL_BURST = 40
MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ = 8_000, 48_000
DEFAULT_SAMPLE_RATE_HZ = SAMPLE_RATE_HZ  # what the engine runs at: no resampling
ENCODING = "pcm_s16le"
ENCODING_ALIASES = frozenset({"pcm_s16le", "linear16", "pcm16"})  # accepted in ``start``; all mean ENCODING
MIN_ENDPOINT_SILENCE_MS, MAX_ENDPOINT_SILENCE_MS = 100, 10_000
MAX_CHUNK_DURATION_S = 30.0  # ``chunk_duration`` is accepted for seed clients in (0, this] and only echoed
MAX_LANGUAGE_CHARS = 16
MAX_FRAME_BYTES = 1 << 20  # a WebSocket message larger than this closes the connection (1009)
MAX_FRAME_AUDIO_S = 5.0  # one binary frame may carry at most this much audio
PCM16_BYTES_PER_SAMPLE = 2

START_KEYS = frozenset({"action", "sample_rate", "chunk_duration", "timestamps", "interim_results", "endpointing",
                        "endpoint_silence_ms", "encoding", "language", "final_pass"})
CONFIG_KEYS = frozenset({"action", "timestamps", "interim_results"})


class Action(StrEnum):
    """What a client's text frame asks for (``"action"``, or ``"type"`` as some clients send it)."""

    START = "start"
    STOP = "stop"
    FINALIZE = "finalize"
    PING = "ping"
    INFO = "info"
    CONFIG = "config"


ACTION_ALIASES: Mapping[str, Action] = {"keepalive": Action.PING}


class ErrorCode(StrEnum):
    """``code`` of an ``error`` message. An engine failure on a stream carries the engine error's own ``code``
    (:mod:`parakeet_worker.errors`), ``engine_error`` when it has none."""

    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_ACTION = "unknown_action"
    NOT_STARTED = "not_started"
    ALREADY_STARTED = "already_started"
    BAD_SAMPLE_RATE = "bad_sample_rate"
    BAD_AUDIO = "bad_audio"
    FRAME_TOO_LARGE = "frame_too_large"
    OVERLOADED = "overloaded"
    STOPPED = "stopped"
    IDLE_TIMEOUT = "idle_timeout"
    MAX_SESSION_LENGTH = "max_session_length"
    ENGINE_ERROR = "engine_error"
    ENGINE_CLOSED = "engine_closed"
    # The server ends the session (each followed by the utterance's final, ``stopped`` and the close).
    SERVER_SHUTDOWN = "server_shutdown"
    CANCELLED = "cancelled"
    # A final the server could not produce (``stopped`` then carries this code in ``error_code``): never silent.
    FINAL_UNAVAILABLE = "final_unavailable"
    STREAM_BACKLOG = "stream_backlog"  # the stream is too far behind: the frame was dropped and not counted
    RATE_LIMITED = "rate_limited"  # too many control messages or queued finals: the message was refused


class CloseCode(IntEnum):
    """WebSocket close codes the server uses (RFC 6455)."""

    NORMAL = 1000  # after ``stopped``: the client stopped, or the session hit its idle or length limit
    GOING_AWAY = 1001  # the worker ends the session: job cancelled, shutdown
    MESSAGE_TOO_BIG = 1009  # a message over MAX_FRAME_BYTES (sent by the websockets library)
    INTERNAL_ERROR = 1011  # a bug in the server (sent by the websockets library)


class EndReason(StrEnum):
    """Why a session ended: ``stopped.reason`` and the websocket job's summary."""

    STOP = "stop"
    DISCONNECT = "disconnect"
    IDLE_TIMEOUT = "idle_timeout"
    MAX_SESSION_LENGTH = "max_session_length"
    CANCELLED = "cancelled"
    NO_CLIENT = "no_client"
    SERVER_SHUTDOWN = "server_shutdown"

    @property
    def close_code(self) -> CloseCode:
        """The code the server closes with when it ends a session for this reason."""
        normal = (EndReason.STOP, EndReason.IDLE_TIMEOUT, EndReason.MAX_SESSION_LENGTH)
        return CloseCode.NORMAL if self in normal else CloseCode.GOING_AWAY


class FinalReason(StrEnum):
    ENDPOINT = "endpoint"  # server VAD
    FINALIZE = "finalize"  # the client asked
    STOP = "stop"


class FinalSource(StrEnum):
    OFFLINE = "offline"  # one full-context pass over the utterance
    STREAM = "stream"  # the streamed chunks


class ProtocolError(ParakeetError, ValueError):
    """A message that breaks the protocol, answered with ``{"type": "error", "code", "message"}``; the session
    goes on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- reading JSON objects -----------------------------------------------------------------------------------------
