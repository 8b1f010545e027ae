"""The `action: websocket` job through the RunPod SDK's real production job loop (tests/runpod_platform.py speaks the
platform's wire format): the ready announcement, a session streamed by a real client, a batch job served beside
it, stop, idle timeout, cancel and bad input."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from parakeet_client import pcm16
from testmodel.heldout import MODEL_PATH
from tests.runpod_platform import FakeRunpodPlatform, JobState, WorkerProcess, started_worker
from tests.test_worker import JOB_TIMEOUT_S, WORKER_ENV, flac_b64, result

REPO = Path(__file__).resolve().parent.parent

ENV = {**WORKER_ENV, "PARAKEET_WS_HOST": "127.0.0.1", "PARAKEET_WS_PORT": "0", "PARAKEET_GRPC_PORT": "0"}


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


# --- SIGTERM drains the standalone server (issue 14, item 4) ---------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(port: int, proc: subprocess.Popen, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the standalone server exited during start-up"
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        time.sleep(0.5)
    raise AssertionError("the standalone server did not become ready")


def test_sigterm_drains_the_standalone_server_while_a_client_streams(heldout_clips, tmp_path) -> None:
    """``python websocket_handler.py`` and SIGTERM while a client streams: the session is told
    ``server_shutdown``, gets the final of its utterance in progress, ``stopped``, a 1001 close with the reason,
    and the process exits on its own, promptly."""
    port = _free_port()
    env = {**os.environ, "PARAKEET_MODEL": str(MODEL_PATH), "OMP_WAIT_POLICY": "PASSIVE",
           "PARAKEET_CPU_THREADS": "2"}
    log = (tmp_path / "standalone.log").open("w")
    proc = subprocess.Popen([sys.executable, "websocket_handler.py", "--port", str(port), "--token", "sig"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(port, proc)

        async def session() -> tuple[list[dict], int | None, str | None, float]:
            async with connect(f"ws://127.0.0.1:{port}/?token=sig") as ws:
                assert json.loads(await ws.recv())["type"] == "welcome"
                await ws.send(json.dumps({"action": "start", "sample_rate": 16000, "endpointing": False}))
                assert json.loads(await ws.recv())["type"] == "started"
                audio = heldout_clips[1].audio

                async def sending() -> None:
                    with contextlib.suppress(ConnectionClosed):
                        for k in range(10_000):
                            start = (k * 320) % (len(audio) - 320)
                            await ws.send(pcm16(audio[start : start + 320]))
                            await asyncio.sleep(0.02)

                sender = asyncio.create_task(sending())
                await asyncio.sleep(3.0)
                proc.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                messages = []
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        messages.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
                sender.cancel()
                return messages, ws.close_code, ws.close_reason, signalled

        messages, code, reason, signalled = asyncio.run(session())
        rc = proc.wait(timeout=60)
        exited_after = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    ends = [(m["type"], m.get("code") or m.get("is_final")) for m in messages
            if m["type"] != "transcription" or m["is_final"]]
    assert ends == [("error", "server_shutdown"), ("transcription", True), ("stopped", None)], messages
    final = next(m for m in messages if m["type"] == "transcription" and m["is_final"])
    assert final["text"] and messages[-1]["reason"] == "server_shutdown"
    assert messages[-1]["final_text"] == final["text"]
    assert code == 1001 and reason == "server_shutdown"
    assert rc == 0 and exited_after < 30.0, (rc, exited_after, (tmp_path / "standalone.log").read_text()[-2000:])
