"""Server -> client messages: what the server sends (``to_json``), and how a client reads it (:func:`parse_server`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Self

from parakeet_worker.serving.protocol.codes import (
    ENCODING,
    MAX_SAMPLE_RATE_HZ,
    MIN_SAMPLE_RATE_HZ,
    PROTOCOL_VERSION,
    ErrorCode,
    FinalReason,
    ProtocolError,
)
from parakeet_worker.serving.protocol.fields import Fields, is_number
from parakeet_worker.transcript import WordTiming


@dataclass(frozen=True, kw_only=True)
class ServerMessage:
    """Every server message carries ``type`` and the session's ``seq`` (one more per message; None before the
    session numbers it)."""

    type: ClassVar[str]
    seq: int | None = None

    def _body(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _parse(cls, f: Fields, seq: int | None) -> Self:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        out = {"type": self.type, **self._body()}
        if self.seq is not None:
            out["seq"] = self.seq
        return out


@dataclass(frozen=True, kw_only=True)
class Limits:
    idle_timeout_s: float
    max_session_s: float
    max_frame_bytes: int
    max_frame_audio_s: float


@dataclass(frozen=True, kw_only=True)
class Welcome(ServerMessage):
    type: ClassVar[str] = "welcome"
    session_id: str
    model: str
    chunk_duration: float
    right_context: float
    left_context: float
    limits: Limits
    protocol: str = PROTOCOL_VERSION
    sample_rates: tuple[int, int] = (MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ)
    encoding: str = ENCODING

    def _body(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "session_id": self.session_id, "model": self.model,
                "sample_rates": list(self.sample_rates), "encoding": self.encoding,
                "chunk_duration": self.chunk_duration, "right_context": self.right_context,
                "left_context": self.left_context, "limits": asdict(self.limits)}

    @classmethod
    def _parse(cls, f: Fields, seq: int | None) -> Welcome:
        rates = f.obj.get("sample_rates")
        if not (isinstance(rates, list) and len(rates) == 2 and all(is_number(r) for r in rates)):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"welcome: sample_rates must be [min, max], got {rates!r}")
        lim = Fields(f.mapping("limits"), "welcome.limits")
        return cls(seq=seq, protocol=f.text("protocol"), session_id=f.text("session_id"), model=f.text("model"),
                   sample_rates=(int(rates[0]), int(rates[1])), encoding=f.text("encoding"),
                   chunk_duration=f.number("chunk_duration"), right_context=f.number("right_context"),
                   left_context=f.number("left_context"),
                   limits=Limits(idle_timeout_s=lim.number("idle_timeout_s"), max_session_s=lim.number("max_session_s"),
                                 max_frame_bytes=lim.integer("max_frame_bytes"),
                                 max_frame_audio_s=lim.number("max_frame_audio_s")))


@dataclass(frozen=True, kw_only=True)
class SessionSettings:
    """A started session's effective settings (echoed in ``started``, and in ``config_updated`` after a change)."""

    sample_rate: int
    timestamps: bool
    interim_results: bool
    endpointing: bool
    endpoint_silence_ms: int
    language: str
    final_pass: bool  # false also when the server has final passes off

    @classmethod
    def _parse(cls, f: Fields) -> SessionSettings:
        return cls(sample_rate=f.integer("sample_rate"), timestamps=f.flag("timestamps"),
                   interim_results=f.flag("interim_results"), endpointing=f.flag("endpointing"),
                   endpoint_silence_ms=f.integer("endpoint_silence_ms"), language=f.text("language"),
                   final_pass=f.flag("final_pass"))


@dataclass(frozen=True, kw_only=True)
class Started(ServerMessage):
    type: ClassVar[str] = "started"
    session_id: str
    settings: SessionSettings
    chunk_duration: float
    left_context: float
    right_context: float
    final_pass_max_s: float
    early_final_s: float  # 0 when off or without a final pass
    requested_chunk_duration: float | None = None
    encoding: str = ENCODING
    protocol: str = PROTOCOL_VERSION

    def _body(self) -> dict[str, Any]:
        return {"session_id": self.session_id, **asdict(self.settings), "encoding": self.encoding,
                "chunk_duration": self.chunk_duration, "left_context": self.left_context,
                "right_context": self.right_context, "final_pass_max_s": self.final_pass_max_s,
                "early_final_s": self.early_final_s, "requested_chunk_duration": self.requested_chunk_duration,
                "protocol": self.protocol}

    @classmethod
    def _parse(cls, f: Fields, seq: int | None) -> Started:
        return cls(seq=seq, session_id=f.text("session_id"), settings=SessionSettings._parse(f),
                   encoding=f.text("encoding"), chunk_duration=f.number("chunk_duration"),
                   left_context=f.number("left_context"), right_context=f.number("right_context"),
                   final_pass_max_s=f.number("final_pass_max_s"), early_final_s=f.number("early_final_s"),
                   requested_chunk_duration=f.opt_number("requested_chunk_duration"), protocol=f.text("protocol"))


@dataclass(frozen=True, kw_only=True)
class ConfigUpdated(ServerMessage):
    type: ClassVar[str] = "config_updated"
    settings: SessionSettings

    def _body(self) -> dict[str, Any]:
        return asdict(self.settings)

    @classmethod
    def _parse(cls, f: Fields, seq: int | None) -> ConfigUpdated:
        return cls(seq=seq, settings=SessionSettings._parse(f))


@dataclass(frozen=True, kw_only=True)
class Transcription(ServerMessage):
    """A partial (``is_final`` false: may change) or the utterance's final. ``final_reason`` and ``final_source``
    are set on finals only; ``words`` only with ``timestamps``."""

    type: ClassVar[str] = "transcription"
    text: str
    is_final: bool
    accumulated_text: str
    utterance: int
    committed_text: str
    draft_text: str
    audio_start: float
    audio_end: float
    committed_until: float
    latency_ms: float
    final_reason: str | None = None
    final_source: str | None = None
    words: tuple[WordTiming, ...] | None = None

    @property
    def from_finalize(self) -> bool:
        return self.final_reason == FinalReason.FINALIZE

    @property
    def speech_final(self) -> bool:
        return self.final_reason == FinalReason.ENDPOINT

    @property
    def reached_s(self) -> float:
        """How far into the session's audio this result reaches."""
        return max(self.audio_end, self.committed_until)

    def _body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "text": self.text, "is_final": self.is_final, "accumulated_text": self.accumulated_text,
            "utterance": self.utterance, "committed_text": self.committed_text, "draft_text": self.draft_text,
            "audio_start": self.audio_start, "audio_end": self.audio_end, "committed_until": self.committed_until,
            "latency_ms": self.latency_ms,
        }
        if self.is_final:
            out.update(final_reason=self.final_reason, from_finalize=self.from_finalize,
                       speech_final=self.speech_final, final_source=self.final_source)
        if self.words is not None:
            out["words"] = [{"word": w.word, "start": w.start, "end": w.end} for w in self.words]
        return out

    @classmethod
    def _parse(cls, f: Fields, seq: int | None) -> Transcription:
        is_final = f.flag("is_final")
        words = f.obj.get("words")
        if words is not None:
            if not isinstance(words, list) or not all(isinstance(w, dict) for w in words):
                raise ProtocolError(ErrorCode.BAD_MESSAGE, "transcription: words must be a list of objects")
            timed = [Fields(w, "transcription.words") for w in words]
            words = tuple(WordTiming(w.text("word"), w.number("start"), w.number("end")) for w in timed)
        return cls(seq=seq, text=f.text("text"), is_final=is_final, accumulated_text=f.text("accumulated_text"),
                   utterance=f.integer("utterance"), committed_text=f.text("committed_text"),
                   draft_text=f.text("draft_text"), audio_start=f.number("audio_start"), audio_end=f.number("audio_end"),
                   committed_until=f.number("committed_until"), latency_ms=f.number("latency_ms"),
                   final_reason=f.opt_text("final_reason") if is_final else None,
                   final_source=f.opt_text("final_source") if is_final else None, words=words)


@dataclass(frozen=True, kw_only=True)
class Error(ServerMessage):
    type: ClassVar[str] = "error"
    code: str
    message: str

    def _body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def of(cls, exc: ProtocolError) -> Error:
        return cls(code=exc.code, message=str(exc))

    @classmethod
    def _parse(cls, f: Fields, seq: int | None) -> Error:
        return cls(seq=seq, code=f.text("code"), message=f.text("message"))


@dataclass(frozen=True, kw_only=True)
class Stopped(ServerMessage):
    type: ClassVar[str] = "stopped"
    reason: str
    final_text: str
    audio_seconds: float
    utterances: int
    error_code: str | None = None  # set when the session lost something, e.g. ``final_unavailable``

    def _body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"reason": self.reason, "final_text": self.final_text,
                                "audio_seconds": self.audio_seconds, "utterances": self.utterances}
        if self.error_code is not None:
            body["error_code"] = self.error_code
        return body

    @classmethod
    def _parse(cls, f: Fields, seq: int | None) -> Stopped:
        return cls(seq=seq, reason=f.text("reason"), final_text=f.text("final_text"),
                   audio_seconds=f.number("audio_seconds"), utterances=f.integer("utterances"),
                   error_code=f.opt_text("error_code"))


@dataclass(frozen=True, kw_only=True)
class Pong(ServerMessage):
    type: ClassVar[str] = "pong"
    server_time: float
    echo: Mapping[str, Any] = field(default_factory=dict)  # the ping's ``id`` / ``timestamp``, as given

    def _body(self) -> dict[str, Any]:
        return {"server_time": self.server_time, **self.echo}

    @classmethod
    def _parse(cls, f: Fields, seq: int | None) -> Pong:
        return cls(seq=seq, server_time=f.number("server_time"),
                   echo={k: f.obj[k] for k in ("id", "timestamp") if k in f.obj})


@dataclass(frozen=True, kw_only=True)
class Info(ServerMessage):
    """The answer to ``info``: the engine's description (model, device, dtype, limits, ...) as it reports it."""

    type: ClassVar[str] = "info"
    engine: Mapping[str, Any]
    active_sessions: int
    protocol: str = PROTOCOL_VERSION

    def _body(self) -> dict[str, Any]:
        return {**self.engine, "protocol": self.protocol, "active_sessions": self.active_sessions}

    @classmethod
    def _parse(cls, f: Fields, seq: int | None) -> Info:
        engine = {k: v for k, v in f.obj.items() if k not in ("type", "seq", "protocol", "active_sessions")}
        return cls(seq=seq, engine=engine, protocol=f.text("protocol"), active_sessions=f.integer("active_sessions"))


@dataclass(frozen=True)
class UnknownMessage:
    """A message type this client does not know (a newer server's extension): kept whole, to ignore or print."""

    type: str
    fields: Mapping[str, Any]

    @property
    def seq(self) -> int | None:
        seq = self.fields.get("seq")
        return seq if isinstance(seq, int) else None

    def to_json(self) -> dict[str, Any]:
        return dict(self.fields)


SERVER_MESSAGES: Mapping[str, type[ServerMessage]] = {
    cls.type: cls for cls in (Welcome, Started, ConfigUpdated, Transcription, Error, Stopped, Pong, Info)
}


def parse_server(obj: Any) -> ServerMessage | UnknownMessage:
    """One server message from its JSON object; unknown types become :class:`UnknownMessage`; a known type with
    missing or mistyped fields raises :class:`ProtocolError` (``bad_message``)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"a server message is a JSON object with a \"type\", got {obj!r:.200}")
    kind = SERVER_MESSAGES.get(obj["type"])
    seq = obj.get("seq")
    if seq is not None and not (is_number(seq) and float(seq).is_integer()):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"seq must be an integer, got {seq!r}")
    if kind is None:
        return UnknownMessage(type=obj["type"], fields=dict(obj))
    return kind._parse(Fields(obj, obj["type"]), int(seq) if seq is not None else None)


# --- the RunPod side: a websocket job's ready announcement ----------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Ready:
    """The progress update an ``action: websocket`` job posts: everything a client needs to connect."""

    ws_url: str
    host: str
    port: int
    address: str  # "public": RunPod's public IP and mapped port; "internal": reachable only beside the worker
    token: str
    idle_timeout_s: float
    max_session_s: float
    connect_timeout_s: float
    protocol: str = PROTOCOL_VERSION
    sample_rates: tuple[int, int] = (MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ)
    encoding: str = ENCODING
    grpc_target: str | None = None  # "host:port" of the Riva gRPC face (the same token); None: it is off

    def to_json(self) -> dict[str, Any]:
        grpc = {} if self.grpc_target is None else {"grpc_target": self.grpc_target}
        return {"status": "ready", "ws_url": self.ws_url, "host": self.host, "port": self.port,
                "address": self.address, "token": self.token, "protocol": self.protocol, **grpc,
                "sample_rates": list(self.sample_rates), "encoding": self.encoding,
                "limits": {"idle_timeout_s": self.idle_timeout_s, "max_session_s": self.max_session_s,
                           "connect_timeout_s": self.connect_timeout_s}}
