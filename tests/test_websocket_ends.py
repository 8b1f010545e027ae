"""Hostile and heavy use of the WebSocket server (issue 14), on a real localhost socket with the real engine and test
model: every way the server ends a session keeps the protocol's promise (final, ``stopped``, close with a reason),
a final that cannot be produced is announced, one client's flood of control messages does not delay another
session, frames dropped for backlog are not counted, and token guessing is backed off per address."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from dataclasses import replace

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from parakeet_client import pcm16
from parakeet_worker.config import Settings
from parakeet_worker.engine.engine import EngineOptions, ParakeetEngine
from parakeet_worker.serving.ws_server import ServerLimits, StreamServer
from tests.streams import streamed_alone
from tests.test_websocket import engine, recv, run_to_stop, send_audio, server, started, url  # noqa: F401

SETTINGS = replace(Settings(), ws_host="127.0.0.1", ws_port=0)
FRAME = 320  # 20 ms at 16 kHz


async def own_server(eng: ParakeetEngine, limits: ServerLimits) -> StreamServer:
    srv = StreamServer(eng, SETTINGS, limits)
    await srv.start()
    return srv


async def open_session(srv: StreamServer, token: str) -> ClientConnection:
    ws = await connect(f"ws://127.0.0.1:{srv.port}/?token={token}")
    assert (await recv(ws))["type"] == "welcome"
    await ws.send(json.dumps({"action": "start", "sample_rate": 16000, "endpointing": False}))
    assert (await recv(ws))["type"] == "started"
    return ws


async def keep_sending(ws: ClientConnection, audio: np.ndarray, for_s: float | None = None) -> None:
    """Real-time 20 ms frames, the clip over and over, until the socket closes (or ``for_s`` seconds)."""
    started_at = time.monotonic()
    with contextlib.suppress(ConnectionClosed):
        k = 0
        while for_s is None or time.monotonic() - started_at < for_s:
            start = (k * FRAME) % (len(audio) - FRAME)
            await ws.send(pcm16(audio[start : start + FRAME]))
            k += 1
            await asyncio.sleep(FRAME / 16000)


async def until_closed(ws: ClientConnection, timeout: float = 60.0) -> list[dict]:
    messages = []
    with contextlib.suppress(ConnectionClosed):
        while True:
            messages.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
    return messages


# --- every way the server ends a session (item 3; shutdown: item 4) ------------------------------------------------
ENDS = {  # way -> (limits, close code)
    "max_session_length": (ServerLimits(max_session_s=4.0), 1000),
    "idle_timeout": (ServerLimits(idle_timeout_s=1.5), 1000),
    "cancelled": (ServerLimits(), 1001),
    "server_shutdown": (ServerLimits(), 1001),
}


@pytest.mark.parametrize("way", list(ENDS))
async def test_a_session_the_server_ends_gets_its_final_then_stopped_then_a_close_with_the_reason(
        engine, heldout_clips, way) -> None:  # noqa: F811
    limits, close_code = ENDS[way]
    srv = await own_server(engine, limits)
    grant = srv.grant(f"job-{way}")
    try:
        ws = await open_session(srv, grant.token)
        # Still sending when the server ends it (idle: the client went quiet mid-utterance after 2 s of speech).
        sender = asyncio.create_task(keep_sending(ws, heldout_clips[1].audio,
                                                  for_s=2.0 if way == "idle_timeout" else None))
        if way in ("cancelled", "server_shutdown"):
            await asyncio.sleep(3.0)
            if way == "cancelled":
                srv.revoke(grant)
            else:
                asyncio.create_task(srv.shutdown(20.0))
        messages = await until_closed(ws)
        sender.cancel()
        summary = await asyncio.wait_for(asyncio.wrap_future(grant.summary), 10)
    finally:
        await srv.shutdown(5.0)
    kinds = [(m["type"], m.get("code") or m.get("is_final")) for m in messages if m["type"] != "transcription"
             or m["is_final"]]
    assert kinds == [("error", way), ("transcription", True), ("stopped", None)], messages
    final = next(m for m in messages if m["type"] == "transcription" and m["is_final"])
    stopped = messages[-1]
    assert final["text"] and final["final_reason"] == "stop"
    assert stopped["reason"] == way and stopped["final_text"] == final["text"] and stopped["utterances"] == 1
    assert "error_code" not in stopped
    assert ws.close_code == close_code and ws.close_reason == way
    assert summary.reason == way and summary.final_text == final["text"] and summary.error_code is None


async def test_new_connections_are_refused_while_the_server_drains(engine, heldout_clips) -> None:  # noqa: F811
    srv = await own_server(engine, ServerLimits())
    srv.grant(None, token="drain", multi_use=True)
    ws = await open_session(srv, "drain")
    sender = asyncio.create_task(keep_sending(ws, heldout_clips[1].audio))
    await asyncio.sleep(1.0)
    shutdown = asyncio.create_task(srv.shutdown(20.0))
    await asyncio.sleep(0)
    with pytest.raises((InvalidStatus, OSError)) as err:
        await connect(f"ws://127.0.0.1:{srv.port}/?token=drain")
    if isinstance(err.value, InvalidStatus):
        assert err.value.response.status_code == 503
    messages = await until_closed(ws)
    sender.cancel()
    await asyncio.wait_for(shutdown, 30)
    assert messages[-1]["type"] == "stopped" and messages[-1]["reason"] == "server_shutdown"
    assert ws.close_code == 1001


async def test_a_final_the_engine_cannot_produce_is_announced_never_dropped(loaded_test_model,
                                                                             heldout_clips) -> None:
    """The engine goes away under a live stream: its ``stop`` is answered with ``final_unavailable`` (an error,
    and ``stopped.error_code``, and the job summary), not with an empty final_text and success."""
    eng = ParakeetEngine(loaded_test_model, EngineOptions(full_attention_max_s=900))
    srv = await own_server(eng, ServerLimits())
    grant = srv.grant("job-lost")
    try:
        ws = await open_session(srv, grant.token)
        await send_audio(ws, heldout_clips[1].audio[: 16000 * 2])
        await asyncio.to_thread(eng.close, 0.0)
        messages, stopped = await run_to_stop(ws)
        summary = await asyncio.wait_for(asyncio.wrap_future(grant.summary), 10)
    finally:
        await srv.shutdown(5.0)
    errors = [m["code"] for m in messages if m["type"] == "error"]
    assert "final_unavailable" in errors
    assert stopped["error_code"] == "final_unavailable" and summary.error_code == "final_unavailable"


# --- a flood of control messages (item 2) -----------------------------------------------------------------------------
async def test_a_finalize_flood_does_not_delay_another_sessions_stop(server, engine, heldout_clips) -> None:  # noqa: F811
    """One client sends thousands of ``finalize`` (each after a frame of speech) in about a second; it is refused
    (``rate_limited``) past its limits, and another session's stop still returns its transcript promptly."""
    clip = heldout_clips[1].audio
    speech = heldout_clips[3].audio
    flooder = await started(server, endpointing=False)  # every finalize is a final pass over its audio
    honest = await started(server, endpointing=False)

    async def flood() -> None:
        for k in range(2000):
            start = (k * FRAME) % (len(speech) - FRAME)
            await flooder.send(pcm16(speech[start : start + FRAME]))
            await flooder.send(json.dumps({"action": "finalize"}))

    flooding = asyncio.create_task(flood())
    await send_audio(honest, clip, realtime=True)
    await flooding
    asked = time.monotonic()
    _, stopped = await run_to_stop(honest)
    waited = time.monotonic() - asked
    assert stopped["final_text"] == streamed_alone(engine, clip) and "error_code" not in stopped
    assert waited < 5.0, f"the honest session's stop took {waited:.1f} s beside the flood"
    flood_messages, flood_stopped = await run_to_stop(flooder)  # a stop is honoured even past the limit
    codes = {m.get("code") for m in flood_messages if m["type"] == "error"}
    assert "rate_limited" in codes and flood_stopped["reason"] == "stop"


# --- backlog (item 9) -------------------------------------------------------------------------------------------------
async def test_frames_dropped_for_backlog_are_refused_as_stream_backlog_and_not_counted(server, heldout_clips) -> None:  # noqa: F811
    """Audio sent far faster than real time: past 30 s not yet transcribed, frames are dropped with the
    documented ``stream_backlog`` code, and ``audio_seconds`` counts only the audio the server kept."""
    ws = await started(server, endpointing=False)
    clip = np.tile(heldout_clips[1].audio, 2)[: 16000 * 5]
    frames = 12
    for _ in range(frames):  # 60 s in twelve 5 s frames, at once
        await ws.send(pcm16(clip))
    messages, stopped = await run_to_stop(ws)
    backlog = [m for m in messages if m["type"] == "error" and m["code"] == "stream_backlog"]
    assert backlog and not [m for m in messages if m["type"] == "error" and m["code"] == "overloaded"]
    dropped_s = sum(float(re.search(r"dropped: (\d+\.\d+) s", m["message"]).group(1)) for m in backlog)
    assert dropped_s >= 5.0
    assert stopped["audio_seconds"] == pytest.approx(5.0 * frames - dropped_s, abs=0.01)
    assert stopped["audio_seconds"] <= 30.0 + 5.0  # at most the backlog limit was kept (and one frame decoded)


# --- token guessing (item 9) ------------------------------------------------------------------------------------------
async def test_token_guessing_is_backed_off_per_address_and_logged_at_a_bounded_rate(engine, caplog) -> None:  # noqa: F811
    srv = await own_server(engine, ServerLimits(max_refusals=5, refusal_window_s=30.0))
    srv.grant(None, token="right", multi_use=True)
    statuses = []
    try:
        with caplog.at_level(logging.WARNING, logger="websocket_handler"):
            for k in range(30):
                with pytest.raises(InvalidStatus) as err:
                    await connect(f"ws://127.0.0.1:{srv.port}/?token=guess-{k}")
                statuses.append(err.value.response.status_code)
            with pytest.raises(InvalidStatus) as err:  # blocked: even the right token waits out the back-off
                await connect(f"ws://127.0.0.1:{srv.port}/?token=right")
    finally:
        await srv.shutdown(5.0)
    assert statuses == [401] * 5 + [429] * 25
    assert err.value.response.status_code == 429 and int(err.value.response.headers["Retry-After"]) >= 1
    refusals = [r for r in caplog.records if "refused a connection" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
    assert "right" not in " ".join(r.getMessage() for r in caplog.records)
