"""The clients of bench/faces.py: one real-time session on each live face, and the HTTP clients of the REST-vs-job
comparison. Each speaks its protocol over a real socket, as its documents (docs/PROTOCOL.md, docs/DEEPGRAM.md,
docs/OPENAI_REALTIME.md, docs/RIVA.md, docs/OPENAI.md) describe it; the Riva client is bench/faces_riva.py.

A session's utterances end one of two ways (``FaceClient.endpoint_ms``):

- ``None``: the client ends each one (native ``finalize``, Deepgram ``Finalize`` with ``endpointing=false``,
  Realtime ``input_audio_buffer.commit`` with ``turn_detection: null``, Riva ``runtime_config["force_eou"]``) and
  pairs each final with its oldest unanswered end;
- a number of ms: the server's VAD ends them with that silence window on every face (native
  ``endpoint_silence_ms``, Deepgram ``endpointing=``, Realtime ``server_vad`` ``silence_duration_ms``, Riva
  ``endpointing_config.stop_history``); every final is kept with its arrival time and :func:`match_finals` assigns
  them to the utterances once the session is over, counting the utterances without one and the finals left over.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

SAMPLE_RATE_HZ = 16_000
FRAME_S = 0.02  # a real-time client's frame
FRAME_BYTES = int(FRAME_S * SAMPLE_RATE_HZ) * 2  # PCM16
SESSION_END_TIMEOUT_S = 120.0
HANDSHAKE_TIMEOUT_S = 30.0
ANSWER_POLL_S = 0.01  # how often a Realtime client checks that every commit is answered (not a timing)
FACE_NAMES = ("native", "deepgram", "realtime")  # the faces `bench.faces latency` compares by default
VAD_THRESHOLD = 0.5  # silero's speech probability threshold: the endpointer's default, sent where a face takes one


@dataclass(frozen=True)
class ServerTarget:
    """Where the faces listen: the WebSocket base URL, the gRPC ``host:port``, and the token."""

    ws_base: str
    grpc_target: str
    token: str


@dataclass(frozen=True)
class SessionPlan:
    """What one session sends: PCM16 16 kHz bytes, after which frame each utterance is ended, the start delay, and
    where each utterance's speech begins and ends (the frames holding its first and last voiced sample)."""

    pcm: bytes
    end_after_frames: tuple[int, ...]  # the utterance ends right after this many frames have been sent
    delay_s: float
    speech_start_frames: tuple[int, ...] = ()  # 0-based frame index, one per utterance
    speech_end_frames: tuple[int, ...] = ()


@dataclass
class SessionResult:
    face: str
    session: int
    latency_s: list[float] = field(default_factory=list)  # utterance end -> its final, in order
    finals: list[str] = field(default_factory=list)  # the final of each answered utterance, in order
    utterances: list[int] = field(default_factory=list)  # the plan's utterance index of each latency and final
    errors: list[str] = field(default_factory=list)
    failure: str | None = None  # why the session did not end cleanly
    missing: int = 0  # utterances ended (by the client or the server's VAD) that got no final
    extra: int = 0  # finals no utterance accounts for (server endpointing: a pause inside a clip split it)
    empty: int = 0  # finals without text under server endpointing (not matched to an utterance)


@dataclass(frozen=True)
class Matched:
    """Finals assigned to utterances: per utterance its latency (``None``: no final) and its text."""

    latency_s: tuple[float | None, ...]
    texts: tuple[str, ...]
    extra: int
    empty: int


def match_finals(arrivals: Sequence[tuple[float, str]], starts_s: Sequence[float], ends_s: Sequence[float],
                 window_s: float) -> Matched:
    """Assign the finals of a server-endpointed session (``(arrival time, text)``, in order) to its utterances.

    ``starts_s`` / ``ends_s``: when the frame holding each utterance's first / last voiced sample was sent;
    ``window_s``: the silence that ends an utterance. No final of an utterance's audio can arrive before
    ``window_s`` after its first voiced frame, so utterance j owns the finals arriving from then (from the start
    for the first) until that moment of utterance j + 1 (to the end for the last). The first of them at or after
    its speech end was sent is its final, the latency their difference; every other is extra (before: a pause
    inside the clip split it; after: a second final). Its text is all of them joined, so the same speech compares
    across faces. Finals without text are counted apart and assigned to nothing."""
    bounds = [-math.inf, *(start + window_s for start in starts_s[1:]), math.inf]
    spoken = [(t, text.strip()) for t, text in arrivals if text.strip()]
    latency: list[float | None] = []
    texts: list[str] = []
    extra = 0
    for j, end in enumerate(ends_s):
        mine = [(t, text) for t, text in spoken if bounds[j] <= t < bounds[j + 1]]
        after = [t for t, _ in mine if t >= end]
        latency.append(after[0] - end if after else None)
        extra += len(mine) - (1 if after else 0)
        texts.append(" ".join(text for _, text in mine))
    return Matched(tuple(latency), tuple(texts), extra, len(arrivals) - len(spoken))


class FaceClient:
    """One live face as a client sees it: connect, send audio, end an utterance, end the session; ``read`` turns
    a server message into a final's text (``None``: not a final this session counts). ``endpoint_ms``: ``None``
    when the client ends the utterances, else the server VAD's silence window."""

    name = ""
    has_last_message = True  # the server ends the session with a message of its own (or the RPC's status)

    def __init__(self, target: ServerTarget, endpoint_ms: int | None = None) -> None:
        self.target = target
        self.endpoint_ms = endpoint_ms
        self.ws: ClientConnection | None = None
        self.ended = 0  # utterances ended by the client
        self.answered = 0  # finals received (client-ended: those paired with an end)

    @property
    def socket(self) -> ClientConnection:
        assert self.ws is not None, "connect() first"
        return self.ws

    async def connect(self) -> None:
        raise NotImplementedError

    async def send_audio(self, frame: bytes) -> None:
        await self.socket.send(frame)

    async def end_utterance(self) -> None:
        raise NotImplementedError

    async def end_session(self) -> None:
        raise NotImplementedError

    async def messages(self) -> AsyncIterator[Any]:
        """The server's messages as they come (a closed socket raises)."""
        while True:
            yield json.loads(await self.socket.recv())

    def read(self, message: Any, result: SessionResult) -> str | None:
        raise NotImplementedError

    def done(self, message: Any) -> bool:
        """The server's last message of the session."""
        raise NotImplementedError

    def settled(self) -> bool:
        """Every answer the session waits for has come (clients whose server sends no last message)."""
        return self.answered >= self.ended

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def _expect(self, kind: str) -> None:
        while True:
            message = json.loads(await asyncio.wait_for(self.socket.recv(), HANDSHAKE_TIMEOUT_S))
            if message.get("type") == kind:
                return
            if message.get("type") in ("error", "Error"):
                raise RuntimeError(f"{self.name}: {message}")


class NativeClient(FaceClient):
    name = "native"

    async def connect(self) -> None:
        self.ws = await connect(f"{self.target.ws_base}/?token={self.target.token}", max_size=None)
        await self._expect("welcome")
        start: dict[str, Any] = {"action": "start", "sample_rate": SAMPLE_RATE_HZ, "endpointing": False}
        if self.endpoint_ms is not None:
            start.update(endpointing=True, endpoint_silence_ms=self.endpoint_ms)
        await self.socket.send(json.dumps(start))
        await self._expect("started")

    async def end_utterance(self) -> None:
        await self.socket.send(json.dumps({"action": "finalize"}))

    async def end_session(self) -> None:
        await self.socket.send(json.dumps({"action": "stop"}))

    def read(self, message: dict[str, Any], result: SessionResult) -> str | None:
        if message["type"] == "error":
            result.errors.append(str(message.get("code")))
        elif message["type"] == "transcription" and message["is_final"] and (
                self.endpoint_ms is not None or message.get("from_finalize")):
            return str(message["text"])
        return None

    def done(self, message: dict[str, Any]) -> bool:
        return bool(message["type"] == "stopped")


class DeepgramClient(FaceClient):
    name = "deepgram"
    QUERY = "model=nova-3-general&encoding=linear16&sample_rate=16000&channels=1&interim_results=true"

    async def connect(self) -> None:
        endpointing = "false" if self.endpoint_ms is None else str(self.endpoint_ms)
        self.ws = await connect(f"{self.target.ws_base}/v1/listen?{self.QUERY}&endpointing={endpointing}",
                                max_size=None, additional_headers={"Authorization": f"Token {self.target.token}"})

    async def end_utterance(self) -> None:
        await self.socket.send(json.dumps({"type": "Finalize"}))

    async def end_session(self) -> None:
        await self.socket.send(json.dumps({"type": "CloseStream"}))

    def read(self, message: dict[str, Any], result: SessionResult) -> str | None:
        if message["type"] == "Error":
            result.errors.append(str(message.get("variant") or message.get("code")))
        elif message["type"] == "Results" and message["is_final"] and (
                self.endpoint_ms is not None or message.get("from_finalize")):
            return str(message["channel"]["alternatives"][0]["transcript"])
        return None

    def done(self, message: dict[str, Any]) -> bool:
        return bool(message["type"] == "Metadata")


class RealtimeClient(FaceClient):
    name = "realtime"
    has_last_message = False

    def __init__(self, target: ServerTarget, endpoint_ms: int | None = None) -> None:
        super().__init__(target, endpoint_ms)
        self.turns = 0  # server VAD: speech_started events
        self.committed = 0  # server VAD: items the server committed
        self.failed = 0  # items whose transcription failed

    def session(self) -> dict[str, Any]:
        turn = None if self.endpoint_ms is None else {
            "type": "server_vad", "threshold": VAD_THRESHOLD, "prefix_padding_ms": 300,
            "silence_duration_ms": self.endpoint_ms}
        return {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": SAMPLE_RATE_HZ}, "turn_detection": turn}}}}

    async def connect(self) -> None:
        self.ws = await connect(f"{self.target.ws_base}/v1/realtime?intent=transcription", max_size=None,
                                additional_headers={"Authorization": f"Bearer {self.target.token}"})
        await self._expect("session.created")
        await self.socket.send(json.dumps(self.session()))
        await self._expect("session.updated")

    async def send_audio(self, frame: bytes) -> None:
        await self.socket.send(json.dumps({"type": "input_audio_buffer.append",
                                           "audio": base64.b64encode(frame).decode()}))

    async def end_utterance(self) -> None:
        await self.socket.send(json.dumps({"type": "input_audio_buffer.commit"}))

    async def end_session(self) -> None:
        """No end message in the protocol: the client closes once every committed item has its transcript."""

    def read(self, message: dict[str, Any], result: SessionResult) -> str | None:
        kind = message["type"]
        if kind == "error":
            result.errors.append(str(message.get("error", {}).get("code")))
        elif kind == "input_audio_buffer.speech_started":
            self.turns += 1
        elif kind == "input_audio_buffer.committed":
            self.committed += 1
        elif kind == "conversation.item.input_audio_transcription.failed":
            result.errors.append("transcription_failed")
            self.failed += 1
        elif kind == "conversation.item.input_audio_transcription.completed":
            return str(message["transcript"])
        return None

    def done(self, message: dict[str, Any]) -> bool:
        return False  # the session is over once every commit is answered

    def settled(self) -> bool:
        if self.endpoint_ms is None:
            return super().settled()
        return self.turns <= self.committed and self.answered + self.failed >= self.committed


async def run_session(client: FaceClient, session: int, plan: SessionPlan) -> SessionResult:
    """Stream ``plan`` at real-time pace through ``client``'s face: frame k leaves at t0 + k * 20 ms (an absolute
    schedule). Client-ended: each utterance is ended right after its last frame, and the time from sending that
    end to its final is measured. Server-endpointed: the time from sending the frame that holds an utterance's last
    voiced sample to its final (:func:`match_finals`)."""
    result = SessionResult(client.name, session)
    await asyncio.sleep(plan.delay_s)
    ended_at: list[float] = []
    arrivals: list[tuple[float, str]] = []  # server-endpointed: every final, with its arrival time
    sent_at: list[float] = []  # when each frame was sent
    receiver: asyncio.Task[None] | None = None
    try:
        await client.connect()

        async def receive() -> None:
            async for message in client.messages():
                now = time.monotonic()
                text = client.read(message, result)
                if text is not None and client.endpoint_ms is not None:
                    arrivals.append((now, text))
                    client.answered += 1
                elif text is not None and ended_at:
                    result.utterances.append(len(result.latency_s))
                    result.latency_s.append(now - ended_at.pop(0))
                    result.finals.append(text)
                    client.answered += 1
                elif text is not None:
                    result.extra += 1
                if client.done(message):
                    return

        receiver = asyncio.create_task(receive())
        ends = list(plan.end_after_frames) if client.endpoint_ms is None else []
        t0 = time.monotonic()
        for k, start in enumerate(range(0, len(plan.pcm), FRAME_BYTES)):
            await asyncio.sleep(max(0.0, t0 + k * FRAME_S - time.monotonic()))
            if receiver.done():  # the connection broke: its error is raised below
                break
            await client.send_audio(plan.pcm[start : start + FRAME_BYTES])
            sent_at.append(time.monotonic())
            if ends and k + 1 >= ends[0]:
                ends.pop(0)
                ended_at.append(time.monotonic())
                client.ended += 1
                await client.end_utterance()
        await client.end_session()
        if not client.has_last_message:
            deadline = time.monotonic() + SESSION_END_TIMEOUT_S
            while not client.settled() and not receiver.done() and time.monotonic() < deadline:
                await asyncio.sleep(ANSWER_POLL_S)
            if receiver.done():
                receiver.result()
            if not client.settled():
                raise TimeoutError(f"{client.name}: items unanswered at the end")
        else:
            await asyncio.wait_for(receiver, SESSION_END_TIMEOUT_S)
    except Exception as exc:  # a benchmark records what broke a session and goes on with the others
        result.failure = f"{type(exc).__name__}: {exc}"
    finally:
        if receiver is not None and not receiver.done():
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await receiver
        await client.close()
    if client.endpoint_ms is None:
        result.missing = client.ended - len(result.latency_s)
    else:
        _assign(result, plan, arrivals, sent_at, client.endpoint_ms / 1000)
    return result


def _assign(result: SessionResult, plan: SessionPlan, arrivals: list[tuple[float, str]], sent_at: list[float],
            window_s: float) -> None:
    """The server-endpointed session's finals onto the utterances whose speech was sent in full."""
    spoken = [(a, b) for a, b in zip(plan.speech_start_frames, plan.speech_end_frames) if b < len(sent_at)]
    matched = match_finals(arrivals, [sent_at[a] for a, _ in spoken], [sent_at[b] for _, b in spoken], window_s)
    for j, (latency, text) in enumerate(zip(matched.latency_s, matched.texts)):
        if latency is not None:
            result.utterances.append(j)
            result.latency_s.append(latency)
            result.finals.append(text)
    result.missing = matched.latency_s.count(None)
    result.extra, result.empty = matched.extra, matched.empty


# --- REST and job requests --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes  # the clip's file as it is on disk
    seconds: float


@dataclass(frozen=True)
class PassResult:
    path: str  # "rest" or "job"
    wall_s: float
    texts: dict[str, str]  # clip name -> transcript
    request_s: list[float]
    failures: list[str]


async def _rest_request(http: httpx.AsyncClient, base: str, token: str, upload: Upload) -> str:
    answer = await http.post(f"{base}/v1/audio/transcriptions", headers={"Authorization": f"Bearer {token}"},
                             data={"model": "parakeet", "response_format": "json"},
                             files={"file": (upload.name, upload.data, "audio/flac")})
    answer.raise_for_status()
    return str(answer.json()["text"])


async def _job_request(http: httpx.AsyncClient, base: str, body: bytes) -> str:
    answer = await http.post(f"{base}/runsync", content=body, headers={"Content-Type": "application/json"})
    answer.raise_for_status()
    reply = answer.json()
    if reply.get("status") != "COMPLETED":
        raise RuntimeError(f"job {reply.get('status')}: {reply.get('error')}")
    return str(reply["output"]["text"])


def job_body(upload: Upload) -> bytes:
    """The ``/runsync`` body of a clip: a batch job with the file as base64 (built once, before any timing)."""
    return json.dumps({"input": {"audio_base64": base64.b64encode(upload.data).decode()}}).encode()


async def transcribe_all(path: str, uploads: list[Upload], bodies: list[bytes], base: str, token: str,
                         clients: int, timeout_s: float = 600.0) -> PassResult:
    """Every upload once through ``path`` (``rest``: ``POST /v1/audio/transcriptions`` at ``base``; ``job``:
    ``POST /runsync`` at ``base``) by ``clients`` concurrent clients, each sending its next request when its last
    one is answered."""
    texts: dict[str, str] = {}
    request_s: list[float] = []
    failures: list[str] = []
    queue = list(range(len(uploads)))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as http:
        async def worker() -> None:
            while queue:
                i = queue.pop(0)
                started = time.monotonic()
                try:
                    if path == "rest":
                        text = await _rest_request(http, base, token, uploads[i])
                    else:
                        text = await _job_request(http, base, bodies[i])
                except (httpx.HTTPError, RuntimeError, KeyError) as exc:
                    failures.append(f"{uploads[i].name}: {type(exc).__name__}: {exc}")
                    continue
                request_s.append(time.monotonic() - started)
                texts[uploads[i].name] = text

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall_s = time.monotonic() - t0
    return PassResult(path, wall_s, texts, request_s, failures)
