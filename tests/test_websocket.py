"""The WebSocket server on a real localhost socket with the real engine and test model: the protocol, bad traffic,
limits and churn. Clients are `websockets` clients speaking the documented protocol (docs/PROTOCOL.md)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import resource
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace

import numpy as np
import pytest
import soxr
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from parakeet_client import pcm16
from parakeet_worker.config import Settings
from parakeet_worker.engine.engine import EngineOptions, ParakeetEngine
from parakeet_worker.serving.ws_server import ServerLimits, StreamServer
from tests.bad_inputs import BAD_CLIENT_TEXT
from tests.streams import streamed_alone

TOKEN = "test-token"
FRAME_S = 0.02


@pytest.fixture(scope="module")
def engine(loaded_test_model):
    eng = ParakeetEngine(loaded_test_model, EngineOptions(batch_wait_ms=5, full_attention_max_s=900))
    yield eng
    eng.close()


@pytest.fixture
async def server(engine) -> AsyncIterator[StreamServer]:
    settings = replace(Settings(), ws_host="127.0.0.1", ws_port=0)
    srv = StreamServer(engine, settings, ServerLimits(max_sessions=4, idle_timeout_s=30.0))
    await srv.start()
    srv.grant(None, token=TOKEN, multi_use=True)
    yield srv
    await srv.stop()


def url(server: StreamServer, token: str | None = TOKEN) -> str:
    return f"ws://127.0.0.1:{server.port}/" + (f"?token={token}" if token is not None else "")


async def recv(ws: ClientConnection, timeout: float = 30.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def expect(ws: ClientConnection, kind: str, timeout: float = 30.0) -> dict:
    """Next message of ``kind`` (transcriptions in between are skipped)."""
    while True:
        msg = await recv(ws, timeout)
        if msg["type"] == kind:
            return msg
        assert msg["type"] == "transcription", f"expected {kind}, got {msg}"


async def started(server: StreamServer, **start) -> ClientConnection:
    ws = await connect(url(server))
    assert (await recv(ws))["type"] == "welcome"
    await ws.send(json.dumps({"action": "start", "sample_rate": 16000, **start}))
    assert (await recv(ws))["type"] == "started"
    return ws


async def send_audio(ws: ClientConnection, audio: np.ndarray, rate: int = 16000, realtime: bool = False) -> None:
    step = int(rate * FRAME_S)
    for i in range(0, len(audio), step):
        await ws.send(pcm16(audio[i : i + step]))
        if realtime:
            await asyncio.sleep(FRAME_S)


async def run_to_stop(ws: ClientConnection) -> tuple[list[dict], dict]:
    await ws.send(json.dumps({"action": "stop"}))
    messages = []
    while True:
        msg = await recv(ws, 60)
        if msg["type"] == "stopped":
            return messages, msg
        messages.append(msg)


# --- the seed workers' client flow ----------------------------------------------------------------------------------
async def test_seed_client_flow_gives_the_streaming_transcript(server, engine, heldout_clips) -> None:
    clip = heldout_clips[1]  # 6.7 s: several streaming steps
    ws = await connect(url(server))
    welcome = await recv(ws)
    assert welcome["type"] == "welcome" and welcome["protocol"].startswith("parakeet-stream/")
    await ws.send(json.dumps({"action": "start", "sample_rate": 16000, "chunk_duration": 2.0, "timestamps": True,
                              "endpointing": False}))
    start = await recv(ws)
    assert start["type"] == "started" and start["sample_rate"] == 16000 and start["timestamps"] is True
    assert start["requested_chunk_duration"] == 2.0 and start["chunk_duration"] == engine.stream_geometry.chunk_s
    await send_audio(ws, clip.audio, realtime=True)
    messages, stopped = await run_to_stop(ws)
    expected = streamed_alone(engine, clip.audio)
    finals = [m for m in messages if m["type"] == "transcription" and m["is_final"]]
    assert stopped["final_text"] == expected and expected
    assert len(finals) == 1 and finals[0]["text"] == expected and finals[0]["final_reason"] == "stop"
    assert [w["word"] for w in finals[0]["words"]] == expected.split()
    partials = [m for m in messages if m["type"] == "transcription" and not m["is_final"]]
    assert partials, "partials are sent while audio streams"
    seqs = [m["seq"] for m in [start, *messages, stopped]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    ends = [m["committed_until"] for m in partials]
    assert ends == sorted(ends)
    for earlier, later in zip(partials, partials[1:]):  # a partial's committed part is a prefix of later partials
        assert later["committed_text"].startswith(earlier["committed_text"])
    assert finals[0]["final_source"] == "offline" and start["final_pass"] is True  # the final: one offline pass
    assert start["early_final_s"] == engine.stream_geometry.early_final_s == 0.16
    assert stopped["audio_seconds"] == pytest.approx(len(clip.audio) / 16000, abs=0.02)
    await ws.wait_closed()
    assert ws.close_code == 1000


async def test_streamed_finals_keep_every_committed_word(server, engine, heldout_clips) -> None:
    """``"final_pass": false``: the final comes from the streamed chunks, so committed words are never revised."""
    clip = max(heldout_clips[:8], key=lambda c: c.seconds)
    ws = await connect(url(server))
    assert (await recv(ws))["type"] == "welcome"
    await ws.send(json.dumps({"action": "start", "sample_rate": 16000, "endpointing": False, "final_pass": False}))
    start = await recv(ws)
    assert start["final_pass"] is False and start["early_final_s"] == 0.0  # no final pass: nothing to run early
    await send_audio(ws, clip.audio, realtime=True)
    messages, stopped = await run_to_stop(ws)
    (final,) = [m for m in messages if m["type"] == "transcription" and m["is_final"]]
    committed = [m["committed_text"] for m in messages if m["type"] == "transcription" and not m["is_final"]]
    assert final["final_source"] == "stream" and any(committed) and final["text"]
    assert all(final["text"].startswith(c) for c in committed), (final["text"], committed)


async def test_finalize_answers_with_a_final_marked_as_such_and_the_session_goes_on(server, heldout_clips) -> None:
    ws = await started(server, endpointing=False, timestamps=True)
    first, second = heldout_clips[1].audio, heldout_clips[2].audio
    await send_audio(ws, first)
    await ws.send(json.dumps({"action": "finalize"}))
    final = await expect(ws, "transcription")
    while not final["is_final"]:
        final = await expect(ws, "transcription")
    assert final["from_finalize"] is True and final["utterance"] == 0
    await send_audio(ws, second)
    messages, stopped = await run_to_stop(ws)
    finals = [m for m in messages if m.get("is_final")]
    assert [f["utterance"] for f in finals] == [1]
    offset = len(first) / 16000
    if finals[0]["words"]:
        assert finals[0]["words"][0]["start"] >= offset - 0.5, "the second utterance's times continue the first's"
    assert stopped["utterances"] == 2
    assert stopped["final_text"] == " ".join(t for t in (final["text"], finals[0]["text"]) if t)


async def test_other_sample_rates_are_resampled(server, heldout_clips) -> None:
    clip = heldout_clips[4].audio
    for rate in (8000, 44100, 48000):
        audio = soxr.resample(clip, 16000, rate)
        ws = await started(server, sample_rate=rate, endpointing=False)
        await send_audio(ws, audio, rate)
        _, stopped = await run_to_stop(ws)
        assert stopped["audio_seconds"] == pytest.approx(len(clip) / 16000, abs=0.03)
        assert stopped["final_text"], f"{rate} Hz audio produced no transcript"


async def test_server_endpointing_ends_utterances_on_silence(server, heldout_clips) -> None:
    gap = np.zeros(int(1.5 * 16000), np.float32)
    audio = np.concatenate([heldout_clips[6].audio, gap, heldout_clips[2].audio, gap])
    ws = await started(server, endpointing=True, endpoint_silence_ms=600)
    await send_audio(ws, audio, realtime=False)
    endpoint_finals = []
    deadline = asyncio.get_running_loop().time() + 60
    while len(endpoint_finals) < 2 and asyncio.get_running_loop().time() < deadline:
        msg = await expect(ws, "transcription")
        if msg["is_final"]:
            assert msg["speech_final"] is True and msg["final_reason"] == "endpoint"
            endpoint_finals.append(msg)
    assert len(endpoint_finals) == 2, "two utterances separated by 1.5 s of silence give two finals"
    first_end = len(heldout_clips[6].audio) / 16000
    assert first_end - 1.0 < endpoint_finals[0]["audio_end"] <= first_end + 1.5, "cut in the silence after speech"
    assert endpoint_finals[1]["audio_start"] >= endpoint_finals[0]["audio_end"] - 0.01, "utterances do not overlap"
    _, stopped = await run_to_stop(ws)
    assert stopped["utterances"] == 2


async def test_staggered_sessions_give_the_same_text_as_each_alone(server, engine, heldout_clips) -> None:
    clips = [heldout_clips[i].audio for i in (8, 10, 11)]

    async def one(audio: np.ndarray, delay: float) -> str:
        await asyncio.sleep(delay)
        ws = await started(server, endpointing=False)
        await send_audio(ws, audio, realtime=True)
        _, stopped = await run_to_stop(ws)
        return stopped["final_text"]

    texts = await asyncio.gather(*(one(a, 0.13 * k) for k, a in enumerate(clips)))
    assert texts == [streamed_alone(engine, a) for a in clips]


async def test_control_messages(server, engine) -> None:
    ws = await connect(url(server))
    await recv(ws)
    await ws.send(json.dumps({"action": "ping", "id": 7}))
    pong = await recv(ws)
    assert pong["type"] == "pong" and pong["id"] == 7
    await ws.send(json.dumps({"action": "info"}))
    info = await recv(ws)
    assert info["type"] == "info" and info["model"] == engine.info().model and info["sample_rate"] == 16000
    await ws.send(json.dumps({"action": "start", "sample_rate": 16000}))
    await recv(ws)
    await ws.send(json.dumps({"action": "config", "timestamps": True, "interim_results": False}))
    updated = await recv(ws)
    assert updated["type"] == "config_updated" and updated["timestamps"] is True
    assert updated["interim_results"] is False
    await ws.close()


# --- health endpoints and the handshake -------------------------------------------------------------------------
def _get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def test_health_endpoints(server) -> None:
    assert await asyncio.to_thread(_get, server.port, "/healthz") == (200, {"status": "alive"})
    status, body = await asyncio.to_thread(_get, server.port, "/readyz")
    assert status == 200 and body["status"] == "ready"


@pytest.mark.parametrize("token", [None, "wrong", ""])
async def test_connections_without_a_valid_token_are_refused(server, token) -> None:
    with pytest.raises(InvalidStatus) as err:
        await connect(url(server, token))
    assert err.value.response.status_code == 401


async def test_single_use_tokens_admit_one_session(server) -> None:
    grant = server.grant("job-1")
    ws = await connect(url(server, grant.token))
    await recv(ws)
    with pytest.raises(InvalidStatus) as err:
        await connect(url(server, grant.token))
    assert err.value.response.status_code == 409
    await ws.send(json.dumps({"action": "stop"}))
    assert (await recv(ws))["type"] == "stopped"
    summary = await asyncio.wait_for(asyncio.wrap_future(grant.summary), 10)
    assert summary.reason == "stop"


async def test_sessions_past_the_limit_are_refused_with_503(server) -> None:
    open_ = [await connect(url(server)) for _ in range(server.limits.max_sessions)]
    with pytest.raises(InvalidStatus) as err:
        await connect(url(server))
    assert err.value.response.status_code == 503
    for ws in open_:
        await ws.close()


async def test_revoked_grant_closes_its_session(server) -> None:
    grant = server.grant("job-2")
    ws = await connect(url(server, grant.token))
    await recv(ws)
    server.revoke(grant, "cancelled")
    summary = await asyncio.wait_for(asyncio.wrap_future(grant.summary), 10)
    assert summary.reason == "cancelled"
    with pytest.raises(ConnectionClosed):
        while True:
            await recv(ws, 10)


async def test_idle_sessions_are_ended(engine) -> None:
    settings = replace(Settings(), ws_host="127.0.0.1", ws_port=0)
    srv = StreamServer(engine, settings, ServerLimits(idle_timeout_s=1.0))
    await srv.start()
    grant = srv.grant("job-idle")
    try:
        ws = await connect(f"ws://127.0.0.1:{srv.port}/?token={grant.token}")
        await recv(ws)
        await ws.send(json.dumps({"action": "start", "sample_rate": 16000}))
        await recv(ws)
        error = await recv(ws, 10)
        assert error["type"] == "error" and error["code"] == "idle_timeout"
        assert (await recv(ws, 10))["type"] == "stopped"
        summary = await asyncio.wait_for(asyncio.wrap_future(grant.summary), 10)
        assert summary.reason == "idle_timeout"
    finally:
        await srv.stop()


# --- bad traffic ------------------------------------------------------------------------------------------------
# The protocol's bad frames, plus those that depend on the session's state (before `start`, a `config` is
# answered not_started whatever its fields, so its field errors are checked offline in test_protocol).
BAD_TEXT = [
    *((frame, code) for frame, code in BAD_CLIENT_TEXT if '"config"' not in frame),
    ('{"action": "finalize"}', 'not_started'),
    ('{"action": "config", "timestamps": true}', 'not_started'),
]


async def assert_alive(ws: ClientConnection) -> None:
    await ws.send(json.dumps({"action": "ping", "id": "alive"}))
    assert (await expect(ws, "pong"))["id"] == "alive"


@pytest.mark.parametrize(("frame", "code"), BAD_TEXT)
async def test_bad_text_frames_get_typed_errors_and_the_session_goes_on(server, frame, code) -> None:
    ws = await connect(url(server))
    await recv(ws)
    await ws.send(frame)
    error = await recv(ws)
    assert error["type"] == "error" and error["code"] == code and error["message"]
    await assert_alive(ws)
    await ws.close()


async def test_bad_binary_and_sequence_errors(server) -> None:
    ws = await connect(url(server))
    await recv(ws)
    await ws.send(b"\x00\x01" * 160)
    assert (await recv(ws))["code"] == "not_started"
    await ws.send(json.dumps({"action": "start", "sample_rate": 16000}))
    await recv(ws)
    await ws.send(json.dumps({"action": "start", "sample_rate": 16000}))
    assert (await recv(ws))["code"] == "already_started"
    await ws.send(b"\x00" * 321)
    assert (await recv(ws))["code"] == "bad_audio"
    await ws.send(b"\x00\x00" * (16000 * 6))
    assert (await recv(ws))["code"] == "frame_too_large"
    await ws.send(json.dumps({"action": "config", "sample_rate": 8000}))
    assert (await recv(ws))["code"] == "bad_message"
    await assert_alive(ws)
    await ws.close()


async def test_oversized_message_closes_with_1009_and_others_go_on(server, heldout_clips) -> None:
    other = await started(server, endpointing=False)
    ws = await connect(url(server))
    await recv(ws)
    with contextlib.suppress(ConnectionClosed):
        await ws.send(b"\x00" * (server.limits.max_frame_bytes + 2))
        await recv(ws)
    await ws.wait_closed()
    assert ws.close_code == 1009
    await send_audio(other, heldout_clips[3].audio)
    _, stopped = await run_to_stop(other)
    assert stopped["final_text"]


# --- churn ------------------------------------------------------------------------------------------------------
def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def test_churn_leaves_nothing_behind(server, engine, heldout_clips) -> None:
    audio = heldout_clips[0].audio[: 16000 * 3]

    async def cycle(k: int) -> None:
        ws = await connect(url(server))
        await recv(ws)
        await ws.send(json.dumps({"action": "start", "sample_rate": 16000, "endpointing": k % 2 == 0}))
        await recv(ws)
        await send_audio(ws, audio[: 16000 * (1 + k % 3)])
        if k % 3 == 0:
            ws.transport.abort()  # abrupt drop: no close frame
        elif k % 3 == 1:
            await ws.close()
        else:
            await run_to_stop(ws)

    for k in range(20):  # warm the allocator and every code path first
        await cycle(k)
    await asyncio.sleep(0.5)
    gc.collect()
    before = _rss_kb()
    tasks_before = len(asyncio.all_tasks())
    for k in range(200):
        await cycle(k)
    for _ in range(100):
        if server.active_sessions == 0 and engine.stream_stats().active == 0:
            break
        await asyncio.sleep(0.1)
    gc.collect()
    assert server.active_sessions == 0 and engine.stream_stats().active == 0
    assert len(asyncio.all_tasks()) <= tasks_before
    growth = (_rss_kb() - before) / before
    assert growth < 0.05, f"RSS grew {growth:.1%} over 200 sessions"
