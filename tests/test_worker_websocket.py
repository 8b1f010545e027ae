"""The `action: websocket` job through the RunPod SDK's real production job loop (tests/runpod_platform.py speaks the
platform's wire format): the ready announcement, a session streamed by a real client, a batch job served beside
it, stop, idle timeout, cancel and bad input."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from parakeet_client import pcm16
from tests.runpod_platform import FakeRunpodPlatform, JobState, WorkerProcess, started_worker
from tests.test_worker import JOB_TIMEOUT_S, WORKER_ENV, flac_b64, result

ENV = {**WORKER_ENV, "PARAKEET_WS_HOST": "127.0.0.1", "PARAKEET_WS_PORT": "0"}


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> Iterator[tuple[FakeRunpodPlatform, WorkerProcess]]:
    with started_worker("rp_handler.py", ENV, log_dir=tmp_path_factory.mktemp("log")) as running:
        yield running


def ready_of(platform: FakeRunpodPlatform, job_id: str) -> dict:
    updates = platform.wait_for_progress(
        job_id, lambda p: any(isinstance(u, dict) and u.get("status") == "ready" for u in p), JOB_TIMEOUT_S)
    return next(u for u in updates if isinstance(u, dict) and u.get("status") == "ready")


async def stream_and_stop(ws_url: str, audio: np.ndarray, during=None) -> dict:
    async with connect(ws_url) as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"
        await ws.send(json.dumps({"action": "start", "sample_rate": 16000, "chunk_duration": 2.0,
                                  "timestamps": True}))
        assert json.loads(await ws.recv())["type"] == "started"
        for i in range(0, len(audio), 320):
            await ws.send(pcm16(audio[i : i + 320]))
        if during is not None:
            await asyncio.to_thread(during)
        await ws.send(json.dumps({"action": "stop"}))
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), JOB_TIMEOUT_S))
            if msg["type"] == "stopped":
                return msg


def test_websocket_job_announces_serves_a_session_and_returns_its_summary(worker, heldout_clips) -> None:
    platform, _ = worker
    job_id = platform.submit({"action": "websocket"})
    ready = ready_of(platform, job_id)
    assert ready["ws_url"].startswith("ws://127.0.0.1:") and ready["token"] in ready["ws_url"]
    assert ready["address"] == "internal" and ready["protocol"].startswith("parakeet-stream/")
    assert platform.state(job_id) == JobState.IN_PROGRESS
    batch_outputs = []

    def batch_job_meanwhile() -> None:  # the worker keeps serving batch jobs while the session is open
        batch_outputs.append(result(worker, platform.submit({"audio_base64": flac_b64(heldout_clips[2].audio)})))

    stopped = asyncio.run(stream_and_stop(ready["ws_url"], heldout_clips[1].audio, batch_job_meanwhile))
    assert batch_outputs[0]["output"]["success"]
    out = result(worker, job_id)["output"]
    assert out["success"] and out["reason"] == "stop"
    assert out["final_text"] == stopped["final_text"]
    assert out["audio_seconds"] == pytest.approx(len(heldout_clips[1].audio) / 16000, abs=0.02)


def test_idle_session_ends_its_job(worker) -> None:
    platform, _ = worker
    job_id = platform.submit({"action": "websocket", "idle_timeout": 2})
    ready = ready_of(platform, job_id)

    async def idle() -> list[dict]:
        async with connect(ready["ws_url"]) as ws:
            messages = []
            with pytest.raises(ConnectionClosed):
                while True:
                    messages.append(json.loads(await asyncio.wait_for(ws.recv(), 20)))
            return messages

    messages = asyncio.run(idle())
    assert [m["type"] for m in messages][-2:] == ["error", "stopped"] and messages[-2]["code"] == "idle_timeout"
    assert result(worker, job_id)["output"]["reason"] == "idle_timeout"


def test_cancelled_websocket_job_closes_its_session(worker, heldout_clips) -> None:
    platform, _ = worker
    job_id = platform.submit({"action": "websocket"})
    ready = ready_of(platform, job_id)

    async def cancelled() -> int | None:
        async with connect(ready["ws_url"]) as ws:
            await ws.recv()
            await ws.send(json.dumps({"action": "start", "sample_rate": 16000}))
            await ws.recv()
            await ws.send(pcm16(heldout_clips[0].audio[:16000]))
            assert await asyncio.to_thread(platform.cancel, job_id) == JobState.IN_PROGRESS
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 30)
            return ws.close_code

    assert asyncio.run(cancelled()) == 1001
    good = result(worker, platform.submit({"audio_base64": flac_b64(heldout_clips[3].audio)}))
    assert good["output"]["success"]
    assert platform.state(job_id) == JobState.CANCELLED


@pytest.mark.parametrize(("job_input", "needle"), [
    ({"action": "websocket", "sample_rate": 16000}, "unknown key"),
    ({"action": "websocket", "idle_timeout": -1}, "idle_timeout"),
    ({"action": "websocket", "max_session_length": 10**9}, "max_session_length"),
])
def test_bad_websocket_job_input_fails_with_its_reason(worker, job_input, needle) -> None:
    platform, _ = worker
    res = result(worker, platform.submit(job_input))  # the SDK fails the job: the reason is the job's error
    assert res["output"]["success"] is False and needle in res["error"]
