"""No secrets and no user data in the logs (issue 14, item 8): the real worker, with the RunPod SDK at its most
verbose, serves a websocket job, a transcription and bad URLs carrying credentials; the standalone server serves a
stream with a given token and starts with a generated one. Everything each process wrote (stdout and stderr, the
SDK's lines included) is searched for the token, the password, the signature, the S3 keys and the transcripts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from parakeet_client import pcm16
from testmodel.heldout import MODEL_PATH
from tests.runpod_platform import free_port, started_worker
from tests.test_worker import JOB_TIMEOUT_S, WORKER_ENV, flac_b64, result

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "hunter2-Pa55word"
SIGNATURE = "5f1c0ffee0ddba11deadbeef0123456789abcdef"
S3_ACCESS_KEY = "AKIAZQ3EXAMPLEKEY777"
S3_SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYsecretKEY"
STANDALONE_START_S = 300.0
REFUSED = (401, 403, 429)  # a wrong token: unauthorized, or throttled once guesses pile up


def transcript_fragments(text: str) -> list[str]:
    """What a leaked transcript would show: the whole text and every run of three of its words (single common
    words such as "the" appear in ordinary log lines, three in a row of a transcript do not)."""
    words = text.split()
    return [text, *(" ".join(words[i : i + 3]) for i in range(max(0, len(words) - 2)))]


def assert_nothing_leaked(output: str, secrets: list[str], transcripts: list[str]) -> None:
    leaked = [s for s in secrets if s and s in output]
    leaked += [f for t in transcripts if t for f in transcript_fragments(t) if f in output]
    assert not leaked, f"found in the process output: {leaked}"


async def stream_clip(ws_url: str, audio) -> dict:
    """Stream ``audio`` in one session and return the ``stopped`` message."""
    async with connect(ws_url) as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"
        await ws.send(json.dumps({"action": "start", "sample_rate": 16000, "timestamps": True}))
        assert json.loads(await ws.recv())["type"] == "started"
        for i in range(0, len(audio), 1600):
            await ws.send(pcm16(audio[i : i + 1600]))
        await ws.send(json.dumps({"action": "stop"}))
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), JOB_TIMEOUT_S))
            if msg["type"] == "stopped":
                return msg


async def refused(ws_url: str) -> int:
    with pytest.raises(InvalidStatus) as refusal:
        async with connect(ws_url):
            pass
    return refusal.value.response.status_code


def test_the_workers_output_holds_no_token_credential_signature_or_transcript(tmp_path: Path, heldout_clips) -> None:
    closed_port = free_port()
    env = {**WORKER_ENV, "PARAKEET_WS_HOST": "127.0.0.1", "RUNPOD_LOG_LEVEL": "DEBUG",  # the SDK at its loudest
           "S3_ACCESS_KEY": S3_ACCESS_KEY, "S3_SECRET_KEY": S3_SECRET_KEY,
           "S3_ENDPOINT": f"http://127.0.0.1:{closed_port}", "PARAKEET_DOWNLOAD_TIMEOUT_S": "20"}
    with started_worker("rp_handler.py", env, log_dir=tmp_path) as (platform, proc):
        job_id = platform.submit({"action": "websocket"})
        updates = platform.wait_for_progress(
            job_id, lambda p: any(isinstance(u, dict) and u.get("status") == "ready" for u in p), JOB_TIMEOUT_S)
        ready = next(u for u in updates if isinstance(u, dict) and u.get("status") == "ready")
        stopped = asyncio.run(stream_clip(ready["ws_url"], heldout_clips[1].audio))
        wrong = ready["ws_url"].replace(ready["token"], "not-the-token-" + ready["token"][:4])
        assert asyncio.run(refused(wrong)) in REFUSED
        summary = result((platform, proc), job_id)["output"]
        batch = result((platform, proc), platform.submit(
            {"audio_base64": flac_b64(heldout_clips[3].audio), "timestamps": True, "output_format": "srt"}))["output"]
        bad_urls = [
            f"http://alice:{PASSWORD}@127.0.0.1:{closed_port}/a.wav?X-Amz-Credential={S3_ACCESS_KEY}%2F20260101"
            f"&X-Amz-Signature={SIGNATURE}",
            f"http://bob:{PASSWORD}@[::1:bad/a.wav",  # malformed
            "s3://bucket/key.wav",  # signed with the S3 keys, to an endpoint that refuses the connection
        ]
        failed = [result((platform, proc), platform.submit({"audio_url": url}), timeout=120.0) for url in bad_urls]
        assert proc.is_alive()
    assert stopped["final_text"] and summary["final_text"] == stopped["final_text"]
    assert batch["success"] and batch["text"] and batch["segments"]
    assert all(not (f.get("output") or {}).get("success") for f in failed), failed
    output = proc.log_text()
    assert_nothing_leaked(
        output,
        secrets=[ready["token"], PASSWORD, SIGNATURE, S3_ACCESS_KEY, S3_SECRET_KEY, platform.api_key],
        transcripts=[stopped["final_text"], batch["text"], *(s["text"] for s in batch["segments"])],
    )
    assert "Handler output" in output and "<redacted>" in output  # the SDK's debug lines are there, masked


@contextlib.contextmanager
def standalone(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path, int]]:
    """``websocket_handler.py`` on a free port, its stdout and stderr in files; stopped with SIGTERM."""
    port = free_port()
    out, err = tmp_path / f"stdout-{port}.txt", tmp_path / f"stderr-{port}.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "PARAKEET_"))}
    env.update(PARAKEET_MODEL=str(MODEL_PATH), PARAKEET_CPU_THREADS="2", OMP_WAIT_POLICY="PASSIVE")
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-u", "websocket_handler.py", "--host", "127.0.0.1", "--port",
                                 str(port), *args], cwd=REPO, env=env, stdout=stdout, stderr=stderr)
    try:
        deadline = time.monotonic() + STANDALONE_START_S
        while "ready:" not in err.read_text(errors="replace"):
            assert proc.poll() is None, err.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the standalone server did not start"
            time.sleep(0.2)
        yield proc, out, err, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_the_standalone_servers_output_holds_no_token_or_transcript(tmp_path: Path, heldout_clips) -> None:
    token = "operator-chosen-token-9Qx7"
    with standalone(tmp_path, "--token", token) as (_, out, err, port):
        stopped = asyncio.run(stream_clip(f"ws://127.0.0.1:{port}/?token={token}", heldout_clips[2].audio))
        assert asyncio.run(refused(f"ws://127.0.0.1:{port}/?token=guess-{token}")) in REFUSED
    assert stopped["final_text"]
    output = out.read_text(errors="replace") + err.read_text(errors="replace")
    assert_nothing_leaked(output, secrets=[token], transcripts=[stopped["final_text"]])
    assert "ready: ws://127.0.0.1:" in output and "token=<redacted>" in output

    with standalone(tmp_path) as (_, out, err, port):  # a generated token: shown once, on stdout, not in the log
        url = next(line for line in out.read_text().splitlines() if line.startswith("ws://"))
        assert url.startswith(f"ws://127.0.0.1:{port}/?token=")
        generated = url.split("token=", 1)[1]
        assert len(generated) >= 16

        async def ping() -> str:
            async with connect(url) as ws:
                await ws.recv()
                await ws.send(json.dumps({"action": "ping", "id": 1}))
                return json.loads(await ws.recv())["type"]

        assert asyncio.run(ping()) == "pong"  # the URL on stdout works
    log = err.read_text(errors="replace")
    assert "generated token" in log and generated not in log
    assert out.read_text().count(generated) == 1
