"""The OpenAI Realtime transcription face (``/v1/realtime?intent=transcription``) on a real uvicorn server over the
real engine and test model, driven by the openai SDK's Realtime client (GA events) and by raw `websockets`
clients (the beta dialect, bad traffic). Transcripts are compared with the native path's for the same audio."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import soxr
from openai import AsyncOpenAI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from parakeet_client import pcm16
from parakeet_worker.audio.live import LiveAudioDecoder, LiveEncoding
from parakeet_worker.engine.engine import ParakeetEngine
from parakeet_worker.serving import realtime_face
from parakeet_worker.serving.live_core import LiveStream
from parakeet_worker.serving.realtime_events import (
    RealtimeRequestError,
    SessionConfig,
    StablePrefix,
    Track,
    parse_session_update,
)
from parakeet_worker.serving.ws_grants import ServerLimits
from tests.faces_server import TOKEN, FacesServer, serve_faces
from tests.streams import speech_only, streamed_alone

FRAME_S = 0.02
DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"


@pytest.fixture(scope="module")
def engine(face_engine: ParakeetEngine) -> ParakeetEngine:
    return face_engine


@pytest.fixture(scope="module")
def server(engine) -> Iterator[FacesServer]:
    with serve_faces(engine, [realtime_face.routes]) as srv:
        yield srv


# --- audio helpers ----------------------------------------------------------------------------------------------
def mulaw(samples: np.ndarray) -> bytes:
    """G.711 µ-law encoding (ITU-T, bias 0x84) of float samples."""
    x = np.clip(samples * 32768.0, -32635, 32635).astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.abs(x) + 0x84
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def frames_of(audio16k: np.ndarray, encoding: LiveEncoding = "pcm16", rate: int = 24000) -> list[bytes]:
    """A 16 kHz clip as the client's 20 ms frames at ``rate`` in ``encoding``."""
    audio = soxr.resample(audio16k, 16000, rate) if rate != 16000 else audio16k
    step = int(rate * FRAME_S)
    encode = pcm16 if encoding == "pcm16" else mulaw
    return [encode(audio[i : i + step]) for i in range(0, len(audio), step)]


def heard(frames: list[bytes], encoding: LiveEncoding = "pcm16", rate: int = 24000) -> np.ndarray:
    """The 16 kHz audio the face gives the engine for these frames (then a commit)."""
    decoder = LiveAudioDecoder(encoding, rate)
    return np.concatenate([*(decoder.decode(f) for f in frames), decoder.flush()])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- clients ----------------------------------------------------------------------------------------------------
async def events_until(recv: Any, kind: str, count: int = 1, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Every event up to and including the ``count``-th of ``kind`` (``recv`` returns one event as a dict)."""
    seen: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while sum(e["type"] == kind for e in seen) < count:
        left = deadline - asyncio.get_running_loop().time()
        seen.append(await asyncio.wait_for(recv(), max(0.01, left)))
    return seen


def sdk_recv(conn: Any) -> Any:
    async def recv() -> dict[str, Any]:
        return dict(json.loads(await conn.recv_bytes()))
    return recv


def raw_recv(ws: ClientConnection) -> Any:
    async def recv() -> dict[str, Any]:
        return dict(json.loads(await ws.recv()))
    return recv


async def raw_session(server: FacesServer, *, beta: bool = False, token: str = TOKEN) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token}", **({"OpenAI-Beta": "realtime=v1"} if beta else {})}
    ws = await connect(f"{server.ws_url}/v1/realtime?intent=transcription", additional_headers=headers)
    created = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert created["type"] == ("transcription_session.created" if beta else "session.created")
    return ws


def items_of(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per item: its deltas joined, its completed transcript, and the kinds of events that named it, in order."""
    items: dict[str, dict[str, Any]] = {}
    for e in events:
        item_id = e.get("item_id") or (e.get("item") or {}).get("id")
        if item_id is None:
            continue
        item = items.setdefault(item_id, {"deltas": "", "transcript": None, "kinds": []})
        item["kinds"].append(e["type"])
        if e["type"] == DELTA:
            item["deltas"] += e["delta"]
        elif e["type"] == COMPLETED:
            item["transcript"] = e["transcript"]
    return items


def assert_append_only(item: dict[str, Any]) -> None:
    """The deltas concatenate to the transcript, unless the final revised a word they had sent (then they are no
    word-prefix of it): a final that kept every word sent is always completed by its deltas."""
    deltas, transcript = item["deltas"], item["transcript"]
    kept = transcript.startswith(deltas) and (not deltas or transcript[len(deltas):len(deltas) + 1] in ("", " "))
    assert deltas == transcript or not kept, (deltas, transcript)


GA_NO_VAD = {"type": "transcription", "audio": {"input": {
    "format": {"type": "audio/pcm", "rate": 24000}, "transcription": {"model": "gpt-4o-transcribe"},
    "turn_detection": None}}}


# --- the openai SDK ---------------------------------------------------------------------------------------------
async def test_sdk_commits_give_the_native_final_and_append_only_deltas(server, engine, heldout_clips) -> None:
    """The first utterance streams in real time (deltas while it is spoken), the second with ``delay: high``
    (its text comes whole, with the final)."""
    client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key=TOKEN)
    clips = [heldout_clips[1].audio, heldout_clips[11].audio]
    async with client.realtime.connect(model="gpt-4o-transcribe", extra_query={"intent": "transcription"}) as conn:
        created = await conn.recv()
        assert created.type == "session.created" and created.session.type == "transcription"
        assert created.session.audio.input.format.rate == 24000  # OpenAI's default: PCM16 at 24 kHz
        await conn.session.update(session=GA_NO_VAD)  # type: ignore[arg-type]
        updated = await conn.recv()
        assert updated.type == "session.updated" and updated.session.audio.input.turn_detection is None
        assert updated.session.audio.input.transcription.model == "gpt-4o-transcribe"  # any model is accepted
        for frame in frames_of(clips[0]):
            await conn.input_audio_buffer.append(audio=b64(frame))
            await asyncio.sleep(FRAME_S)
        before_commit = await events_until(sdk_recv(conn), DELTA, timeout=5.0)
        await conn.input_audio_buffer.commit()
        events = before_commit + await events_until(sdk_recv(conn), COMPLETED)
        await conn.session.update(session={"type": "transcription", "audio": {"input": {"transcription": {
            "model": "gpt-4o-transcribe", "delay": "high"}}}})
        for frame in frames_of(clips[1]):
            await conn.input_audio_buffer.append(audio=b64(frame))
        await conn.input_audio_buffer.commit()
        events += await events_until(sdk_recv(conn), COMPLETED)
    expected = [streamed_alone(engine, heard(frames_of(clip))) for clip in clips]
    committed = [e for e in events if e["type"] == "input_audio_buffer.committed"]
    completed = [e for e in events if e["type"] == COMPLETED]
    assert [c["transcript"] for c in completed] == expected and all(expected)
    assert [c["item_id"] for c in committed] == [c["item_id"] for c in completed]
    assert committed[0]["previous_item_id"] is None and committed[1]["previous_item_id"] == committed[0]["item_id"]
    assert all(c["usage"]["type"] == "duration" and c["usage"]["seconds"] > 0 for c in completed)
    assert not any(e["type"].startswith("input_audio_buffer.speech") for e in events), "no VAD events: client commits"
    first, second = items_of(events).values()
    for item in (first, second):
        assert_append_only(item)
        assert item["kinds"].index("input_audio_buffer.committed") < item["kinds"].index(COMPLETED)
    assert second["kinds"].count(DELTA) == 1 and second["deltas"] == second["transcript"]
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == len(ids)


async def test_sdk_server_vad_gives_speech_events_and_an_item_per_utterance(server, engine, heldout_clips) -> None:
    gap = np.zeros(int(1.5 * 16000), np.float32)
    first, second = heldout_clips[6].audio, heldout_clips[2].audio
    client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key=TOKEN)
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:  # no model argument
        assert (await conn.recv()).type == "session.created"
        await conn.session.update(session={"type": "transcription", "audio": {"input": {"turn_detection": {
            "type": "server_vad", "silence_duration_ms": 600, "prefix_padding_ms": 200, "threshold": 0.5}}}})
        updated = await conn.recv()
        assert updated.session.audio.input.turn_detection.silence_duration_ms == 600
        for frame in frames_of(np.concatenate([first, gap, second, gap])):
            await conn.input_audio_buffer.append(audio=b64(frame))
        events = await events_until(sdk_recv(conn), COMPLETED, count=2)
    kinds = [e["type"] for e in events]
    for kind in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                 "input_audio_buffer.committed", "conversation.item.added"):
        assert kinds.count(kind) == 2, (kind, kinds)
    items = items_of(events)
    assert len(items) == 2
    for item in items.values():
        order = [k for k in item["kinds"] if k != DELTA]
        assert order == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                         "input_audio_buffer.committed", "conversation.item.added", COMPLETED], order
        assert item["transcript"]
        assert_append_only(item)
    started = [e for e in events if e["type"] == "input_audio_buffer.speech_started"]
    stopped = [e for e in events if e["type"] == "input_audio_buffer.speech_stopped"]
    first_end_ms = len(first) / 16
    assert started[0]["audio_start_ms"] < stopped[0]["audio_end_ms"] <= first_end_ms + 1500
    assert stopped[0]["audio_end_ms"] <= started[1]["audio_start_ms"] < stopped[1]["audio_end_ms"]
    assert started[1]["audio_start_ms"] >= first_end_ms - 500, "the second utterance starts after the first"


PROMPT_S = 0.5  # a VAD event reaches the client this soon after the audio that decided it


async def test_sdk_speech_started_and_stopped_are_prompt_at_real_time_pace(server, heldout_clips,
                                                                          record_property) -> None:
    """Appends at real-time pace (20 ms each, as a microphone gives them): speech_started arrives within PROMPT_S
    of the speech onset and before any delta, its audio_start_ms the onset less prefix_padding_ms; speech_stopped
    arrives within PROMPT_S of the endpoint (silence_duration_ms into the pause), its audio_end_ms where the speech
    ended; then the item is committed and completed."""
    clip = speech_only(heldout_clips[6].audio)
    loud = np.nonzero(np.abs(clip) > 0.02)[0]
    onset_s, end_s = 1.0 + loud[0] / 16000, 1.0 + loud[-1] / 16000
    frames = frames_of(np.concatenate([np.zeros(16000, np.float32), clip, np.zeros(16000, np.float32)]))
    client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key=TOKEN)
    loop = asyncio.get_running_loop()
    arrived: list[tuple[float, dict[str, Any]]] = []
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        assert (await conn.recv()).type == "session.created"
        await conn.session.update(session={"type": "transcription", "audio": {"input": {"turn_detection": {
            "type": "server_vad", "silence_duration_ms": 500, "prefix_padding_ms": 300}}}})
        assert (await conn.recv()).type == "session.updated"
        started = loop.time()

        async def microphone() -> None:
            for k, frame in enumerate(frames):
                await asyncio.sleep(max(0.0, started + k * FRAME_S - loop.time()))
                await conn.input_audio_buffer.append(audio=b64(frame))

        sender = asyncio.create_task(microphone())
        recv = sdk_recv(conn)
        while not arrived or arrived[-1][1]["type"] != COMPLETED:
            event = await asyncio.wait_for(recv(), 60)
            arrived.append((loop.time() - started, event))
        await sender
    kinds = [e["type"] for _, e in arrived if e["type"] != DELTA]
    assert kinds == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                     "input_audio_buffer.committed", "conversation.item.added", COMPLETED], kinds
    (start_at, start), (stop_at, stop) = [(t, e) for t, e in arrived if e["type"].startswith("input_audio_buffer.sp")]
    record_property("speech_started_after_s", round(start_at - onset_s, 3))
    record_property("speech_stopped_after_s", round(stop_at - stop["audio_end_ms"] / 1000 - 0.5, 3))
    assert (start["audio_start_ms"] + 300) / 1000 == pytest.approx(onset_s, abs=0.2)
    assert start_at - onset_s < PROMPT_S, f"speech_started {start_at - onset_s:.2f} s after the speech began"
    deltas = [t for t, e in arrived if e["type"] == DELTA]
    assert deltas and start_at < deltas[0]
    assert stop["audio_end_ms"] / 1000 == pytest.approx(end_s, abs=0.25)
    assert stop_at - (stop["audio_end_ms"] / 1000 + 0.5) < PROMPT_S, "speech_stopped came late"
    assert start["item_id"] == stop["item_id"] == arrived[-1][1]["item_id"] and arrived[-1][1]["transcript"]


async def test_wrong_or_missing_keys_are_refused_with_401(server) -> None:
    client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="not-the-token")
    with pytest.raises(InvalidStatus) as refused:
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            await conn.recv()
    assert refused.value.response.status_code == 401
    body = json.loads(refused.value.response.body)
    assert body["error"]["code"] == "invalid_api_key"
    with pytest.raises(InvalidStatus) as anonymous:
        await connect(f"{server.ws_url}/v1/realtime?intent=transcription")
    assert anonymous.value.response.status_code == 401
    ws = await connect(f"{server.ws_url}/v1/realtime?intent=transcription&token={TOKEN}")  # ?token= works too
    assert json.loads(await ws.recv())["type"] == "session.created"
    await ws.close()
    ws = await connect(f"{server.ws_url}/v1/realtime", subprotocols=["realtime", f"openai-insecure-api-key.{TOKEN}"])
    assert ws.subprotocol == "realtime" and json.loads(await ws.recv())["type"] == "session.created"
    await ws.close()


# --- raw clients: the beta dialect, G.711, clear ----------------------------------------------------------------
async def test_beta_transcription_session_update_with_g711_ulaw(server, engine, heldout_clips) -> None:
    clip = heldout_clips[8].audio
    ws = await raw_session(server, beta=True)
    await ws.send(json.dumps({"type": "transcription_session.update", "event_id": "evt_1", "session": {
        "input_audio_format": "g711_ulaw", "input_audio_transcription": {"model": "whisper-1", "language": "en"},
        "turn_detection": None}}))
    updated = json.loads(await ws.recv())
    assert updated["type"] == "transcription_session.updated"
    assert updated["session"]["input_audio_format"] == "g711_ulaw" and updated["session"]["turn_detection"] is None
    frames = frames_of(clip, "mulaw", 8000)
    for frame in frames:
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(frame)}))
    await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
    events = await events_until(raw_recv(ws), COMPLETED)
    await ws.close()
    assert "conversation.item.created" in [e["type"] for e in events]  # the beta name of the new item
    (item,) = items_of(events).values()
    assert item["transcript"] == streamed_alone(engine, heard(frames, "mulaw", 8000)) and item["transcript"]
    assert_append_only(item)


async def test_clear_drops_the_uncommitted_audio(server, engine, heldout_clips) -> None:
    dropped, kept = heldout_clips[0].audio[: 16000 * 3], heldout_clips[8].audio
    ws = await raw_session(server)
    await ws.send(json.dumps({"type": "session.update", "session": GA_NO_VAD}))
    await events_until(raw_recv(ws), "session.updated")
    for frame in frames_of(dropped):
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(frame)}))
    await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
    await events_until(raw_recv(ws), "input_audio_buffer.cleared")
    frames = frames_of(kept)
    for frame in frames:
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(frame)}))
    await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
    events = await events_until(raw_recv(ws), COMPLETED)
    await asyncio.sleep(0.5)  # a late event of the cleared audio would arrive by now
    await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))  # nothing appended since: the buffer is empty
    after = json.loads(await asyncio.wait_for(ws.recv(), 10))
    await ws.close()
    completed = [e for e in events if e["type"] == COMPLETED]
    assert [c["transcript"] for c in completed] == [streamed_alone(engine, heard(frames))]
    assert after["type"] == "error" and after["error"]["code"] == "input_audio_buffer_commit_empty"


# --- bad traffic ------------------------------------------------------------------------------------------------
def _append(data: bytes | str) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "event_id": "evt_bad",
                       "audio": data if isinstance(data, str) else b64(data)})


def _update(session: Any, kind: str = "session.update") -> str:
    return json.dumps({"type": kind, "event_id": "evt_bad", "session": session})


BAD_EVENTS: list[tuple[str, str | bytes, str]] = [
    ("not json", "{not json", "invalid_json"),
    ("json array", "[1, 2]", "invalid_event"),
    ("no type", '{"audio": "AAAA"}', "invalid_event"),
    ("unknown event", '{"type": "input_audio_buffer.flush", "event_id": "evt_bad"}', "unknown_event"),
    ("conversation event", '{"type": "response.create", "event_id": "evt_bad"}', "unsupported_event"),
    ("binary frame", b"\x00\x01" * 160, "unsupported_frame"),
    ("audio not a string", json.dumps({"type": "input_audio_buffer.append", "audio": 7}), "invalid_value"),
    ("bad base64", _append("%%%not base64%%%"), "invalid_audio"),
    ("odd PCM16 bytes", _append(b"\x00" * 481), "invalid_audio"),
    ("oversized append", _append(b"\x00\x00" * 24000 * 6), "audio_too_large"),
    ("commit with nothing appended", '{"type": "input_audio_buffer.commit", "event_id": "evt_bad"}',
     "input_audio_buffer_commit_empty"),
    ("session not an object", _update("fast"), "invalid_value"),
    ("conversation session", _update({"type": "realtime"}), "unsupported_session_type"),
    ("unknown GA format", _update({"type": "transcription", "audio": {"input": {"format": {"type": "audio/opus"}}}}),
     "unsupported_format"),
    ("PCM rate out of range", _update({"type": "transcription", "audio": {"input": {"format": {
        "type": "audio/pcm", "rate": 96000}}}}), "unsupported_format"),
    ("unknown beta format", _update({"input_audio_format": "mp3"}, "transcription_session.update"),
     "unsupported_format"),
    ("silence too short", _update({"turn_detection": {"type": "server_vad", "silence_duration_ms": 20}},
                                  "transcription_session.update"), "invalid_value"),
    ("threshold out of range", _update({"type": "transcription", "audio": {"input": {"turn_detection": {
        "type": "server_vad", "threshold": 3}}}}), "invalid_value"),
    ("unknown turn detection", _update({"type": "transcription", "audio": {"input": {"turn_detection": {
        "type": "push_to_talk"}}}}), "invalid_value"),
    ("language not a string", _update({"type": "transcription", "audio": {"input": {"transcription": {
        "language": 5}}}}), "invalid_value"),
]


@pytest.mark.parametrize(("frame", "code"), [pytest.param(f, c, id=name) for name, f, c in BAD_EVENTS])
async def test_bad_events_get_the_error_event_and_the_session_goes_on(server, frame, code) -> None:
    ws = await raw_session(server)
    await ws.send(frame)
    error = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert error["type"] == "error" and error["error"]["code"] == code and error["error"]["message"]
    assert error["error"]["type"] in ("invalid_request_error", "server_error") and error["event_id"]
    if isinstance(frame, str) and '"evt_bad"' in frame:
        assert error["error"]["event_id"] == "evt_bad", "the error names the client event that caused it"
    await ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription"}}))
    updated = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert updated["type"] == "session.updated", "the session goes on after a recoverable error"
    assert updated["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}, "nothing changed"
    await ws.close()


async def test_bad_traffic_on_one_session_leaves_another_transcribing(server, engine, heldout_clips) -> None:
    good = await raw_session(server)
    await good.send(json.dumps({"type": "session.update", "session": GA_NO_VAD}))
    await events_until(raw_recv(good), "session.updated")
    bad = await raw_session(server)
    frames = frames_of(heldout_clips[4].audio)
    for k, frame in enumerate(frames):
        await good.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(frame)}))
        if k < len(BAD_EVENTS):
            await bad.send(BAD_EVENTS[k][1])
    await good.send(json.dumps({"type": "input_audio_buffer.commit"}))
    errors = await events_until(raw_recv(bad), "error", count=len(BAD_EVENTS))
    assert [e["error"]["code"] for e in errors] == [code for _, _, code in BAD_EVENTS]
    with pytest.raises(ConnectionClosed):  # a message over the frame limit ends that connection (1009) ...
        await bad.send(json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (1 << 20)}))
        await bad.recv()
    assert bad.close_code == 1009
    events = await events_until(raw_recv(good), COMPLETED)  # ... and the other session is served
    await good.close()
    assert events[-1]["transcript"] == streamed_alone(engine, heard(frames))


async def test_rate_limited_control_events_are_refused_with_one_notice(server) -> None:
    ws = await raw_session(server)
    for _ in range(60):  # past the burst of 40 control events
        await ws.send(json.dumps({"type": "session.update", "session": {}}))
    events = await events_until(raw_recv(ws), "error")
    await asyncio.sleep(0.3)
    await ws.close()
    assert events[-1]["error"]["code"] == "rate_limited"
    assert 30 <= sum(e["type"] == "session.updated" for e in events) < 60


# --- how sessions end -------------------------------------------------------------------------------------------
@pytest.fixture
async def own_server(engine, request) -> AsyncIterator[FacesServer]:
    limits = getattr(request, "param", ServerLimits())
    with serve_faces(engine, [realtime_face.routes], limits=limits) as srv:
        yield srv


async def test_shutdown_drain_completes_the_utterance_in_progress(own_server, engine, heldout_clips,
                                                                  monkeypatch) -> None:
    records: list[dict[str, Any]] = []

    def record(kind: str, **fields: Any) -> None:  # the session's metrics record, as the metrics file gets it
        records.append({"kind": kind, **fields})

    monkeypatch.setattr(own_server.ctx.metrics, "record", record)
    ws = await raw_session(own_server)
    await ws.send(json.dumps({"type": "session.update", "session": GA_NO_VAD}))
    await events_until(raw_recv(ws), "session.updated")
    frames = frames_of(heldout_clips[8].audio)
    for frame in frames:
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(frame)}))
    await asyncio.sleep(0.3)
    drain = asyncio.get_running_loop().run_in_executor(None, own_server.drain, 30.0)
    events = await events_until(raw_recv(ws), COMPLETED)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)
    await drain
    assert ws.close_code == 1001  # going away
    notice = next(e for e in events if e["type"] == "error")
    assert notice["error"]["code"] == "server_shutdown"
    kinds = [e["type"] for e in events]
    assert kinds.index("error") < kinds.index("input_audio_buffer.committed") < kinds.index(COMPLETED)
    assert events[-1]["transcript"] == streamed_alone(engine, heard(frames))
    await asyncio.sleep(0.2)
    (record,) = [r for r in records if r["kind"] == "stream"]
    assert record["audio_s"] == pytest.approx(len(heldout_clips[8].audio) / 16000, abs=0.03)
    assert record["session_id"].startswith("sess_") and record["error_code"] is None


@pytest.mark.parametrize("own_server", [replace(ServerLimits(), idle_timeout_s=1.0)], indirect=True)
async def test_idle_sessions_are_told_and_closed(own_server) -> None:
    ws = await raw_session(own_server)
    error = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert error["type"] == "error" and error["error"]["code"] == "idle_timeout"
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == 1000


@pytest.mark.parametrize("own_server", [replace(ServerLimits(), max_sessions=1)], indirect=True)
async def test_sessions_past_the_limit_are_refused_with_503(own_server) -> None:
    first = await raw_session(own_server)
    with pytest.raises(InvalidStatus) as refused:
        await raw_session(own_server)
    assert refused.value.response.status_code == 503
    assert json.loads(refused.value.response.body)["error"]["code"] == "server_busy"
    await first.close()


# --- the protocol's pieces, offline -----------------------------------------------------------------------------
def test_session_updates_map_onto_the_engine_stream() -> None:
    default = SessionConfig()
    assert default.stream_options().endpointing and default.stream_options().endpoint.silence_s == 0.5
    ga, dialect = parse_session_update({"type": "session.update", "session": GA_NO_VAD}, default)
    assert dialect == "ga" and not ga.stream_options().endpointing and ga.model == "gpt-4o-transcribe"
    beta, dialect = parse_session_update({"type": "transcription_session.update", "session": {
        "input_audio_format": "g711_alaw", "turn_detection": {"type": "server_vad", "threshold": 0.99,
                                                              "silence_duration_ms": 900}}}, ga)
    endpoint = beta.stream_options().endpoint
    assert dialect == "beta" and (beta.encoding, beta.rate) == ("alaw", 8000)
    assert endpoint.silence_s == 0.9 and endpoint.threshold == 0.95  # clamped into silero's usable range
    assert beta.model == "gpt-4o-transcribe", "fields not in the update keep their values"
    flat, dialect = parse_session_update({"type": "session.update", "session": {
        "turn_detection": {"type": "semantic_vad", "eagerness": "high"}}}, default)
    assert dialect == "beta" and flat.stream_options().endpoint.silence_s == 0.4
    with pytest.raises(RealtimeRequestError) as bad:
        parse_session_update({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 50}}}}}, default)
    assert bad.value.param == "session.audio.input.turn_detection.silence_duration_ms"


def test_stable_prefix_sends_only_words_that_held_and_the_final_rest() -> None:
    stable = StablePrefix(hold=2)
    partials = ["set the", "set the clock", "set the clock to", "set the block to five", "set the block to five now"]
    deltas = [stable.partial(p) for p in partials]
    assert deltas == ["", "set", " the", "", " block to"]  # "clock" changed before it held: it was never sent
    assert stable.final("set the block to five now please") == " five now please"
    assert "".join(deltas) + " five now please" == "set the block to five now please"
    assert not stable.revised
    revised = StablePrefix(hold=0)
    assert revised.partial("a b c") == "" and revised.partial("a b c") == "a b c"
    assert revised.final("a b see") == "" and revised.revised  # .completed carries the final text anyway
    whole = StablePrefix()
    assert whole.final("one two") == "one two" and whole.final("one two") == ""


def test_speech_events_announce_an_item_once_and_stop_only_a_started_one(engine) -> None:
    """The VAD's speech start announces the utterance's item once (audio_start_ms: session time of the onset less
    the prefix padding, not before the previous item's audio ended); a stop names only an item it started."""
    handle = engine.open_stream(lambda event: None, SessionConfig().stream_options())
    assert handle.options.vad_events and not SessionConfig(turn_detection=None).stream_options().vad_events
    track = Track(stream=LiveStream(handle), vad=True, prefix_ms=300, offset_ms=2000.0, last_end_s=1.0)
    started = track.speech(True, 0, 1.5)
    assert started is not None and started["type"] == "input_audio_buffer.speech_started"
    assert started["audio_start_ms"] == 2000 + 1500 - 300 and started["item_id"] == track.items[0].id
    assert track.speech(True, 0, 1.7) is None, "one speech_started per item"
    assert track.speech(True, 1, 1.1)["audio_start_ms"] == 2000 + 1000, "not before the previous item ended"
    assert track.speech(False, 2, 3.0) is None, "no item started: no speech_stopped"
    stopped = track.speech(False, 0, 3.0)
    assert stopped == {"type": "input_audio_buffer.speech_stopped", "item_id": track.items[0].id,
                       "audio_end_ms": 5000}
    assert track.speech(False, 0, 3.5) is None
    handle.abort()
