"""RunPod load-balancing mode on the real worker process (``PARAKEET_RUNPOD_MODE=lb python rp_handler.py``):
``/ping`` 204 while the model loads then 200, ``POST /transcribe`` and the OpenAI route through it, ``/ping`` on
a separate ``PORT_HEALTH``, SIGTERM's clean exit, and the refusal to start without a token."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from testmodel.heldout import MODEL_PATH
from tests.runpod_platform import free_port

REPO = Path(__file__).resolve().parent.parent
CLIP = REPO / "tests" / "assets" / "audio" / "en_librispeech_2412-153948-0000.16k_mono_s16.wav"
TOKEN = "lb-test-token"
START_TIMEOUT_S = 180.0


@contextmanager
def lb_worker(tmp_path: Path, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    full.update(PARAKEET_MODEL=str(MODEL_PATH), PARAKEET_RUNPOD_MODE="lb", PARAKEET_WS_HOST="127.0.0.1",
                PARAKEET_CPU_THREADS="2", OMP_WAIT_POLICY="PASSIVE", PARAKEET_METRICS_FILE="off", **env)
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-u", "rp_handler.py"], cwd=REPO, env=full, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def ping_codes_until_ready(port: int, proc: subprocess.Popen[bytes], log: Path) -> tuple[list[int], float]:
    """Every distinct /ping answer in order until 200, and the seconds from now to it."""
    t0 = time.monotonic()
    seen: list[int] = []
    while time.monotonic() - t0 < START_TIMEOUT_S:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            code = httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code
        except httpx.TransportError:
            code = 0  # not listening yet (the interpreter is still importing)
        if not seen or seen[-1] != code:
            seen.append(code)
        if code == 200:
            return seen, time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"/ping never answered 200: {seen}\n{log.read_text()[-3000:]}")


def test_lb_worker_pings_204_then_200_and_serves_transcribe_and_openai(tmp_path: Path) -> None:
    port = free_port()
    with lb_worker(tmp_path, PORT=str(port), PARAKEET_API_TOKEN=TOKEN) as proc:
        codes, _ = ping_codes_until_ready(port, proc, tmp_path / "worker.log")
        assert codes[-2:] == [204, 200] and set(codes) <= {0, 204, 200}, codes
        body = {"input": {"audio_base64": base64.b64encode(CLIP.read_bytes()).decode(), "timestamps": True}}
        answer = httpx.post(f"http://127.0.0.1:{port}/transcribe", json=body,
                            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert answer.status_code == 200, answer.text
        job_text = answer.json()["text"]
        assert len(job_text.split()) >= 5
        refused = httpx.post(f"http://127.0.0.1:{port}/transcribe", json=body, timeout=60)
        assert refused.status_code == 401 and refused.json()["error_code"] == "unauthorized"
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=TOKEN)
        text = client.audio.transcriptions.create(model="parakeet", file=(CLIP.name, CLIP.read_bytes()),
                                                  response_format="text")
        assert text.strip() == job_text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (tmp_path / "worker.log").read_text()[-3000:]


def test_ping_on_its_own_port_and_loading_answers_on_the_main_one(tmp_path: Path) -> None:
    port, health = free_port(), free_port()
    with lb_worker(tmp_path, PORT=str(port), PORT_HEALTH=str(health), PARAKEET_API_TOKEN=TOKEN) as proc:
        codes, _ = ping_codes_until_ready(health, proc, tmp_path / "worker.log")
        assert codes[-1] == 200
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}
                         ).json()["object"] == "list"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_lb_mode_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    with lb_worker(tmp_path, PORT=str(free_port())) as proc:
        assert proc.wait(120) == 2
    assert "needs PARAKEET_API_TOKEN" in (tmp_path / "worker.log").read_text()


@pytest.mark.parametrize("value", ["queue", "lb"])
def test_the_mode_setting_is_parsed(value: str) -> None:
    from parakeet_worker.config import Settings

    assert Settings.from_env({"PARAKEET_RUNPOD_MODE": value.upper()}).runpod_mode == value
