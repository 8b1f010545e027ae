"""The clients of bench/faces.py: one real-time session on each live face, ended utterance by utterance by the client
(native ``finalize``, Deepgram ``Finalize``, Realtime ``input_audio_buffer.commit`` with ``turn_detection: null``),
and the HTTP clients of the REST-vs-job comparison. Each speaks its protocol over a real socket, as its documents
(docs/PROTOCOL.md, docs/DEEPGRAM.md, docs/OPENAI_REALTIME.md, docs/OPENAI.md) describe it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
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
FACE_NAMES = ("native", "deepgram", "realtime")


@dataclass(frozen=True)
class SessionPlan:
    """What one session sends: PCM16 16 kHz bytes, after which frame each utterance is ended, the start delay."""

    pcm: bytes
    end_after_frames: tuple[int, ...]  # the utterance ends right after this many frames have been sent
    delay_s: float


@dataclass
class SessionResult:
    face: str
    session: int
    latency_s: list[float] = field(default_factory=list)  # end of utterance sent -> its final, in order
    finals: list[str] = field(default_factory=list)  # the final of each ended utterance, in order
    errors: list[str] = field(default_factory=list)
    failure: str | None = None  # why the session did not end cleanly


class FaceClient:
    """One live face as a client sees it: connect, send audio, end an utterance, end the session; ``read`` turns
    a server message into a final's text (``None``: not a final of an ended utterance)."""

    name = ""
    has_last_message = True  # the server ends the session with a message of its own (``done``)

    def __init__(self, ws_base: str, token: str) -> None:
        self.ws_base = ws_base
        self.token = token
        self.ws: ClientConnection | None = None
        self.ended = 0  # utterances ended by the client
        self.answered = 0  # their finals received

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

    def read(self, message: dict[str, Any], result: SessionResult) -> str | None:
        raise NotImplementedError

    def done(self, message: dict[str, Any]) -> bool:
        """The server's last message of the session."""
        raise NotImplementedError

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
        self.ws = await connect(f"{self.ws_base}/?token={self.token}", max_size=None)
        await self._expect("welcome")
        await self.socket.send(json.dumps({"action": "start", "sample_rate": SAMPLE_RATE_HZ, "endpointing": False}))
        await self._expect("started")

    async def end_utterance(self) -> None:
        await self.socket.send(json.dumps({"action": "finalize"}))

    async def end_session(self) -> None:
        await self.socket.send(json.dumps({"action": "stop"}))

    def read(self, message: dict[str, Any], result: SessionResult) -> str | None:
        if message["type"] == "error":
            result.errors.append(str(message.get("code")))
        elif message["type"] == "transcription" and message["is_final"] and message.get("from_finalize"):
            return str(message["text"])
        return None

    def done(self, message: dict[str, Any]) -> bool:
        return bool(message["type"] == "stopped")


class DeepgramClient(FaceClient):
    name = "deepgram"
    QUERY = ("model=nova-3-general&encoding=linear16&sample_rate=16000&channels=1&interim_results=true"
             "&endpointing=false")

    async def connect(self) -> None:
        self.ws = await connect(f"{self.ws_base}/v1/listen?{self.QUERY}", max_size=None,
                                additional_headers={"Authorization": f"Token {self.token}"})

    async def end_utterance(self) -> None:
        await self.socket.send(json.dumps({"type": "Finalize"}))

    async def end_session(self) -> None:
        await self.socket.send(json.dumps({"type": "CloseStream"}))

    def read(self, message: dict[str, Any], result: SessionResult) -> str | None:
        if message["type"] == "Error":
            result.errors.append(str(message.get("variant") or message.get("code")))
        elif message["type"] == "Results" and message["is_final"] and message.get("from_finalize"):
            return str(message["channel"]["alternatives"][0]["transcript"])
        return None

    def done(self, message: dict[str, Any]) -> bool:
        return bool(message["type"] == "Metadata")


class RealtimeClient(FaceClient):
    name = "realtime"
    has_last_message = False
    SESSION = {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": SAMPLE_RATE_HZ}, "turn_detection": None}}}}

    async def connect(self) -> None:
        self.ws = await connect(f"{self.ws_base}/v1/realtime?intent=transcription", max_size=None,
                                additional_headers={"Authorization": f"Bearer {self.token}"})
        await self._expect("session.created")
        await self.socket.send(json.dumps(self.SESSION))
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
        elif kind == "conversation.item.input_audio_transcription.failed":
            result.errors.append("transcription_failed")
        elif kind == "conversation.item.input_audio_transcription.completed":
            return str(message["transcript"])
        return None

    def done(self, message: dict[str, Any]) -> bool:
        return False  # the session is over once every commit is answered


CLIENTS: dict[str, type[FaceClient]] = {c.name: c for c in (NativeClient, DeepgramClient, RealtimeClient)}


async def run_session(face: str, session: int, plan: SessionPlan, ws_base: str, token: str) -> SessionResult:
    """Stream ``plan`` at real-time pace through ``face``: frame k leaves at t0 + k * 20 ms (an absolute
    schedule), each utterance is ended right after its last frame, and the time from sending that end to its
    final is measured."""
    result = SessionResult(face, session)
    client = CLIENTS[face](ws_base, token)
    await asyncio.sleep(plan.delay_s)
    ended_at: list[float] = []
    receiver: asyncio.Task[None] | None = None
    try:
        await client.connect()

        async def receive() -> None:
            while True:
                message = json.loads(await client.socket.recv())
                now = time.monotonic()
                text = client.read(message, result)
                if text is not None and ended_at:
                    result.latency_s.append(now - ended_at.pop(0))
                    result.finals.append(text)
                    client.answered += 1
                if client.done(message):
                    return

        receiver = asyncio.create_task(receive())
        ends = list(plan.end_after_frames)
        t0 = time.monotonic()
        for k, start in enumerate(range(0, len(plan.pcm), FRAME_BYTES)):
            await asyncio.sleep(max(0.0, t0 + k * FRAME_S - time.monotonic()))
            if receiver.done():  # the connection broke: its error is raised below
                break
            await client.send_audio(plan.pcm[start : start + FRAME_BYTES])
            if ends and k + 1 >= ends[0]:
                ends.pop(0)
                ended_at.append(time.monotonic())
                client.ended += 1
                await client.end_utterance()
        await client.end_session()
        if not client.has_last_message:
            deadline = time.monotonic() + SESSION_END_TIMEOUT_S
            while client.answered < client.ended and not receiver.done() and time.monotonic() < deadline:
                await asyncio.sleep(ANSWER_POLL_S)
            if receiver.done():
                receiver.result()
            if client.answered < client.ended:
                raise TimeoutError(f"{client.ended - client.answered} commits unanswered")
        else:
            await asyncio.wait_for(receiver, SESSION_END_TIMEOUT_S)
    except Exception as exc:  # a benchmark records what broke a session and goes on with the others
        result.failure = f"{type(exc).__name__}: {exc}"
    finally:
        if receiver is not None and not receiver.done():
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await receiver
        if client.ws is not None:
            await client.ws.close()
    return result


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
