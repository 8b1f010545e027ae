"""The soak's clients (bench/soak.py): real-time streams, batch jobs, connection churn and a hostile client, each
an asyncio loop against the real worker through the local RunPod platform stand-in and the native WebSocket
protocol. They record what happened; bench/soak.py judges it."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from client import pcm16
from tests.bad_inputs import BAD_AUDIO_INPUTS, BAD_JOB_INPUTS
from tests.runpod_platform import FakeRunpodPlatform

SAMPLE_RATE_HZ = 16_000
FRAME_S = 0.02  # a real-time client's frame
FRAME_SAMPLES = int(FRAME_S * SAMPLE_RATE_HZ)
CLIENT_VAD_WAIT_S = 0.2  # a "finalize" utterance: the client's own VAD fires this long after speech ends
FINALIZE_GAP_S = 1.2  # pause after an utterance the client finalizes
ENDPOINT_GAP_S = 1.6  # pause after an utterance the server's VAD ends (its endpoint: 0.6 s of silence)
GAP_NOISE_DBFS = -60.0  # pauses carry a microphone's noise floor, not digital zeros
READY_TIMEOUT_S = 60.0
SESSION_END_TIMEOUT_S = 120.0  # stop -> stopped, whatever the load
JOB_TIMEOUT_S = 600.0  # a 10-minute file on 2 busy cores
# The hostile client connects from an address of its own (all of 127/8 is loopback on Linux), as a real one
# would: a per-address back-off on its guessed tokens must not hold back the honest clients on 127.0.0.1.
HOSTILE_ADDRESS = "127.0.0.2"
HUGE_FRAME_CLOSE_CODE = 1009
# Damaged files whose intact part decodes: transcribing that part (as libsndfile reads it) is reported, not failed.
DAMAGED_AUDIO = ("truncated_flac",)  # docs/PROTOCOL.md: a message larger than 1 MiB


@dataclass
class StreamSession:
    """One live session of a real-time stream: what was sent and what came back."""

    stream: int
    audio: np.ndarray  # float32 as sent (PCM16-exact)
    finalize_at: list[int] = field(default_factory=list)  # samples sent before each finalize
    finals: list[dict[str, Any]] = field(default_factory=list)  # {"utterance", "text", "reason", "from_finalize"}
    finalize_latency_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stopped: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None  # the websocket job's output
    failure: str | None = None  # why the session did not end with `stopped`


@dataclass
class Tally:
    """Everything the clients saw, shared by the loops (one event loop: no locking)."""

    sessions: list[StreamSession] = field(default_factory=list)
    batch: list[dict[str, Any]] = field(default_factory=list)  # {"kind", "ok", "seconds", "error", "text"}
    churn: Counter[str] = field(default_factory=Counter)
    hostile: Counter[str] = field(default_factory=Counter)
    hostile_unexpected: list[str] = field(default_factory=list)
    accepted_damaged: list[str] = field(default_factory=list)  # damaged audio transcribed without a word said


def _noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    return (rng.standard_normal(int(seconds * SAMPLE_RATE_HZ)) * 10 ** (GAP_NOISE_DBFS / 20)).astype(np.float32)


def as_sent(audio: np.ndarray) -> np.ndarray:
    """The float32 audio the server decodes from our PCM16 frames."""
    return np.frombuffer(pcm16(audio), dtype="<i2").astype(np.float32) / 32768.0


def sent_pcm(audio: np.ndarray) -> bytes:
    """The PCM16 frame that the server decodes back to exactly ``audio`` (:func:`as_sent` samples, multiples of
    1/32768). Not ``pcm16`` again: it scales by 32767 and truncates, so re-encoding would send nearly every sample
    one step off the audio the judge transcribes, and that can move a VAD frame or change a word."""
    return np.round(np.asarray(audio, np.float64) * 32768.0).astype("<i2").tobytes()


def session_plan(clips: list[Any], seconds: float, rng: random.Random) -> tuple[np.ndarray, list[int]]:
    """Utterances (held-out clips) with pauses, about ``seconds`` long; returns the audio and the sample positions
    after which the client sends ``finalize`` (half the utterances; the server's endpointing ends the others)."""
    noise = np.random.default_rng(rng.randrange(1 << 30))
    parts: list[np.ndarray] = [_noise(0.4, noise)]
    finalize_after: list[int] = []
    total = parts[0].shape[0]
    while total < seconds * SAMPLE_RATE_HZ:
        clip = rng.choice(clips).audio
        parts.append(clip)
        total += clip.shape[0]
        finalize = rng.random() < 0.5
        if finalize:
            finalize_after.append(total + int(CLIENT_VAD_WAIT_S * SAMPLE_RATE_HZ))
        gap = _noise(FINALIZE_GAP_S if finalize else ENDPOINT_GAP_S, noise)
        parts.append(gap)
        total += gap.shape[0]
    return as_sent(np.concatenate(parts)), finalize_after


async def _ready(platform: FakeRunpodPlatform, job_input: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    job_id = platform.submit(job_input)
    updates = await asyncio.to_thread(
        platform.wait_for_progress, job_id,
        lambda p: any(isinstance(u, dict) and u.get("status") == "ready" for u in p), READY_TIMEOUT_S)
    return job_id, next(u for u in updates if isinstance(u, dict) and u.get("status") == "ready")


async def _job_output(platform: FakeRunpodPlatform, job_id: str, timeout_s: float) -> dict[str, Any]:
    return await asyncio.to_thread(platform.wait_for_result, job_id, timeout_s)


def _abort(ws: ClientConnection) -> None:
    """Drop the connection as a crashed client or a dead network does: no close frame."""
    ws.transport.abort()


# --- real-time streams ---------------------------------------------------------------------------------------------
async def run_stream_session(platform: FakeRunpodPlatform, session: StreamSession) -> None:
    """One websocket job: stream ``session.audio`` in real time with finalizes, then stop; record everything."""
    try:
        job_id, ready = await _ready(platform, {"action": "websocket"})
    except TimeoutError as exc:
        session.failure = f"no ready announcement: {exc}"
        return
    finalize_sent: list[float] = []
    try:
        async with connect(ready["ws_url"], max_size=None) as ws:
            await ws.recv()  # welcome
            await ws.send(json.dumps({"action": "start", "sample_rate": SAMPLE_RATE_HZ}))

            async def receive() -> None:
                while True:
                    msg = json.loads(await ws.recv())
                    if msg["type"] == "error":
                        session.errors.append(msg.get("code", "?"))
                    elif msg["type"] == "stopped":
                        session.stopped = msg
                        return
                    elif msg["type"] == "transcription" and msg["is_final"]:
                        session.finals.append({"utterance": msg["utterance"], "text": msg["text"],
                                               "audio_end": msg.get("audio_end"),
                                               "reason": msg.get("final_reason"),
                                               "from_finalize": msg.get("from_finalize")})
                        if msg.get("from_finalize") and finalize_sent:
                            session.finalize_latency_s.append(time.monotonic() - finalize_sent.pop(0))

            receiver = asyncio.create_task(receive())
            pending = list(session.finalize_at)
            t0 = time.monotonic()
            for k, start in enumerate(range(0, session.audio.shape[0], FRAME_SAMPLES)):
                await asyncio.sleep(max(0.0, t0 + k * FRAME_S - time.monotonic()))  # absolute schedule
                await ws.send(sent_pcm(session.audio[start : start + FRAME_SAMPLES]))
                sent = min(start + FRAME_SAMPLES, session.audio.shape[0])
                if pending and sent >= pending[0]:
                    session.finalize_at[len(session.finalize_at) - len(pending)] = sent  # where it applies
                    pending.pop(0)
                    finalize_sent.append(time.monotonic())
                    await ws.send(json.dumps({"action": "finalize"}))
            await ws.send(json.dumps({"action": "stop"}))
            await asyncio.wait_for(receiver, SESSION_END_TIMEOUT_S)
    except (ConnectionClosed, InvalidStatus, OSError, TimeoutError) as exc:
        session.failure = f"{type(exc).__name__}: {exc}"
    try:
        session.summary = (await _job_output(platform, job_id, SESSION_END_TIMEOUT_S)).get("output")
    except TimeoutError:
        session.failure = session.failure or "the websocket job did not finish after its session"


async def stream_loop(platform: FakeRunpodPlatform, index: int, clips: list[Any], deadline: float,
                      session_s: float, tally: Tally, rng: random.Random) -> None:
    await asyncio.sleep(rng.uniform(0, 1.0))  # chunk boundaries of the streams do not line up
    while time.monotonic() < deadline:
        seconds = min(session_s, max(5.0, deadline - time.monotonic()))
        audio, finalize_at = session_plan(clips, seconds, rng)
        session = StreamSession(stream=index, audio=audio, finalize_at=finalize_at)
        tally.sessions.append(session)
        await run_stream_session(platform, session)


# --- batch jobs ----------------------------------------------------------------------------------------------------
def _transcribed(out: dict[str, Any]) -> bool:
    """A good job's output: a transcript (for ``inputs``, one per file)."""
    if "results" in out:
        return bool(out["results"]) and all(r.get("success") and r.get("text") for r in out["results"])
    return bool(out.get("success") and out.get("text"))


async def batch_loop(platform: FakeRunpodPlatform, jobs: list[tuple[str, dict[str, Any]]], deadline: float,
                     tally: Tally) -> None:
    """Submit ``jobs`` (kind, input) round-robin, one at a time, until the deadline."""
    k = 0
    while time.monotonic() < deadline:
        kind, job_input = jobs[k % len(jobs)]
        k += 1
        started = time.monotonic()
        row: dict[str, Any] = {"kind": kind}
        try:
            res = await _job_output(platform, platform.submit(job_input), JOB_TIMEOUT_S)
            out = res.get("output") or {}
            row.update(ok=_transcribed(out), error=res.get("error") or out.get("error"), text=out.get("text"))
        except TimeoutError:
            row.update(ok=False, error="timed out")
        row["seconds"] = round(time.monotonic() - started, 2)
        tally.batch.append(row)


# --- connection churn ----------------------------------------------------------------------------------------------
async def churn_loop(platform: FakeRunpodPlatform, clips: list[Any], deadline: float, tally: Tally,
                     rng: random.Random) -> None:
    """Sessions that end badly: dropped before start, mid-utterance, right after a finalize; each job must end."""
    while time.monotonic() < deadline:
        how = rng.choice(["before_start", "mid_utterance", "after_finalize", "closed_politely"])
        try:
            job_id, ready = await _ready(platform, {"action": "websocket"})
            async with connect(ready["ws_url"]) as ws:
                await ws.recv()
                if how != "before_start":
                    await ws.send(json.dumps({"action": "start", "sample_rate": SAMPLE_RATE_HZ}))
                    audio = rng.choice(clips).audio[: int(rng.uniform(0.5, 3.0) * SAMPLE_RATE_HZ)]
                    for i in range(0, audio.shape[0], FRAME_SAMPLES * 5):
                        await ws.send(pcm16(audio[i : i + FRAME_SAMPLES * 5]))
                        await asyncio.sleep(FRAME_S * 5)
                    if how == "after_finalize":
                        await ws.send(json.dumps({"action": "finalize"}))
                if how == "closed_politely":
                    await ws.close()
                else:
                    _abort(ws)
            await _job_output(platform, job_id, SESSION_END_TIMEOUT_S)
            tally.churn[how] += 1
        except TimeoutError:
            tally.churn["stuck"] += 1  # a job that never ended holds a worker slot forever
        except (ConnectionClosed, InvalidStatus, OSError) as exc:
            tally.churn[f"client_error:{type(exc).__name__}"] += 1


# --- the hostile client --------------------------------------------------------------------------------------------
def _bad_audio_jobs(clip_flac: bytes) -> list[tuple[str, dict[str, Any]]]:
    truncated = clip_flac[: len(clip_flac) // 3]
    garbage_riff = b"RIFF\xff\xff\xff\xffWAVEfmt " + bytes(random.Random(3).getrandbits(8) for _ in range(4000))
    return [
        ("truncated_flac", {"audio_base64": base64.b64encode(truncated).decode()}),
        ("garbage_riff", {"audio_base64": base64.b64encode(garbage_riff).decode()}),
        ("bad_url_with_credentials", {"audio_url": "http://user:pa55@127.0.0.1:9/x.wav?X-Amz-Signature=abc"}),
        *((f"job_input:{name}", value) for name, value, _ in BAD_JOB_INPUTS[::4]),
        *((f"audio:{name}", value) for name, value, _ in BAD_AUDIO_INPUTS if "url" not in name),
    ]


async def _hostile_session(platform: FakeRunpodPlatform, tally: Tally) -> int:
    """One websocket job abused: bad JSON, an unknown action, a bad start, odd binary, then a frame over 1 MiB.
    Returns the server's port (for the wrong-token attempts)."""
    job_id, ready = await _ready(platform, {"action": "websocket"})
    async with connect(ready["ws_url"], max_size=None, local_addr=(HOSTILE_ADDRESS, 0)) as ws:
        await ws.recv()
        for text in ("{not json", json.dumps({"action": "dance"}), json.dumps({"action": "start", "sample_rate": 3})):
            await ws.send(text)
            reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
            tally.hostile["ws_bad_message_answered" if reply["type"] == "error" else "ws_bad_message_unanswered"] += 1
        await ws.send(json.dumps({"action": "start", "sample_rate": SAMPLE_RATE_HZ}))
        await ws.send(b"\x01")  # half a sample
        await ws.send(b"\x00" * (2 * 1024 * 1024))  # over the 1 MiB message limit
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 30)
        except ConnectionClosed:
            pass
        code = ws.close_code
    tally.hostile[f"ws_huge_frame_close_{code}"] += 1
    if code != HUGE_FRAME_CLOSE_CODE:
        tally.hostile_unexpected.append(f"a frame over 1 MiB closed the session with {code}, not 1009")
    await _job_output(platform, job_id, SESSION_END_TIMEOUT_S)
    return int(ready["port"])


async def hostile_loop(platform: FakeRunpodPlatform, clip_flac: bytes, deadline: float, tally: Tally) -> None:
    """Bad inputs in a loop: batch jobs that must fail with an error, abusive sessions, guessed tokens."""
    jobs = _bad_audio_jobs(clip_flac)
    port: int | None = None
    k = 0
    while time.monotonic() < deadline:
        if k % 5 == 0:
            try:
                port = await _hostile_session(platform, tally)
            except InvalidStatus as exc:  # its guessed tokens got its address throttled: its own session too
                tally.hostile[f"own_session_refused_http_{exc.response.status_code}"] += 1
            except (TimeoutError, ConnectionClosed, OSError) as exc:
                tally.hostile_unexpected.append(f"abusive session: {type(exc).__name__}: {exc}")
        kind, job_input = jobs[k % len(jobs)]
        k += 1
        try:
            res = await _job_output(platform, platform.submit(job_input), 120.0)
            out = res.get("output") or {}
            if kind in DAMAGED_AUDIO and out.get("success"):  # decodable in part: a finding, not a fault
                tally.accepted_damaged.append(f"{kind}: transcribed {out.get('duration')} s")
                tally.hostile[f"{kind}_accepted"] += 1
            elif out.get("success") or not (res.get("error") or out.get("error")):
                tally.hostile_unexpected.append(f"{kind}: accepted ({str(out)[:200]})")
            else:
                tally.hostile["bad_job_refused"] += 1
        except TimeoutError:
            tally.hostile_unexpected.append(f"{kind}: no answer in 120 s")
        if port is not None:
            try:
                async with connect(f"ws://127.0.0.1:{port}/?token=guessed-{k}", local_addr=(HOSTILE_ADDRESS, 0)):
                    tally.hostile_unexpected.append("a guessed token was accepted")
            except InvalidStatus as exc:
                tally.hostile[f"wrong_token_http_{exc.response.status_code}"] += 1
            except (OSError, ConnectionClosed) as exc:
                tally.hostile[f"wrong_token_{type(exc).__name__}"] += 1
