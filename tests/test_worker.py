"""rp_handler.py as RunPod runs it: the SDK's real production job loop against the local platform stand-in,
the SDK's local API server (--rp_serve_api) and --test_input."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import soundfile as sf

from testmodel.heldout import MODEL_PATH, build_long_audio
from tests.bad_inputs import silence_flac_b64
from tests.runpod_platform import (
    FakeRunpodPlatform,
    JobState,
    WorkerProcess,
    data_segment_bytes,
    local_api_server,
    memory_headroom,
    started_worker,
)

# Every test starts rp_handler.py, which loads (or tries to load) the test model and opens its ports.
pytestmark = [pytest.mark.worker, pytest.mark.model, pytest.mark.socket]

REPO = Path(__file__).resolve().parent.parent
JOB_TIMEOUT_S = 60.0
MAX_AUDIO_S = 600  # the longest input, and each input's decode limit
WORKER_ENV = {"PARAKEET_MODEL": str(MODEL_PATH), "PARAKEET_ALLOW_PRIVATE_URLS": "1", "PARAKEET_CONCURRENCY": "3",
              "PARAKEET_CPU_THREADS": "2", "PARAKEET_WS_PORT": "0", "PARAKEET_GRPC_PORT": "0", "PARAKEET_MAX_AUDIO_S": str(MAX_AUDIO_S),
              "PARAKEET_JOB_AUDIO_BUDGET_S": str(2 * MAX_AUDIO_S)}
# What the worker may allocate beyond its size once warm, in the memory-capped test: a regression that holds
# every refused input's audio (64 x 38 MB) passes it; the bounded job (two inputs decoding at once) stays far below.
MEMORY_HEADROOM_BYTES = 1 << 30


def flac_b64(audio) -> str:
    buf = io.BytesIO()
    sf.write(buf, audio, 16_000, format="FLAC")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def files(tmp_path_factory, heldout_clips) -> Iterator[str]:
    """A local HTTP server with a 4-minute file (long enough for progress updates and a cancel)."""
    root = tmp_path_factory.mktemp("www")
    sf.write(root / "long.flac", build_long_audio(heldout_clips, minutes=4).audio, 16_000)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(root)))
    # A class attribute on purpose: the server builds a handler per request. Quiet, not a test subject.
    SimpleHTTPRequestHandler.log_message = lambda *a: None  # type: ignore[method-assign]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> Iterator[tuple[FakeRunpodPlatform, WorkerProcess]]:
    with started_worker("rp_handler.py", WORKER_ENV, log_dir=tmp_path_factory.mktemp("log")) as running:
        yield running


def result(worker, job_id: str, timeout: float = JOB_TIMEOUT_S) -> dict:
    platform, proc = worker
    try:
        return platform.wait_for_result(job_id, timeout)
    except TimeoutError as err:
        raise AssertionError(f"{err}\n--- worker log ---\n{proc.log_tail()}") from err


def test_job_through_the_production_loop(worker, heldout_clips, recognizer) -> None:
    platform, _ = worker
    clip = heldout_clips[3]
    out = result(worker, platform.submit({"audio_base64": flac_b64(clip.audio), "timestamps": True}))["output"]
    assert out["success"] and out["text"] == recognizer.transcribe([clip.audio])[0].text
    assert out["timestamps"]["word"] and out["segments"]


def test_bad_job_fails_with_its_reason_and_the_worker_goes_on(worker, heldout_clips) -> None:
    platform, _ = worker
    bad = result(worker, platform.submit({"audio_url": "https://x.test/a.wav", "languge": "en"}))
    assert "unknown input key" in bad["error"] and bad["output"]["success"] is False
    good = result(worker, platform.submit({"audio_base64": flac_b64(heldout_clips[0].audio)}))
    assert good["output"]["success"]


def test_long_job_reports_progress_while_short_jobs_run_beside_it(worker, files, heldout_clips) -> None:
    platform, _ = worker
    long_id = platform.submit({"audio_url": f"{files}/long.flac", "chunk_long_audio": True, "chunk_duration": 20})
    platform.wait_for_progress(long_id, lambda p: any(u.get("stage") == "transcribing" for u in p), JOB_TIMEOUT_S)
    short_id = platform.submit({"audio_base64": flac_b64(heldout_clips[1].audio)})
    short = result(worker, short_id)
    assert short["output"]["success"]
    assert platform.state(long_id) in (JobState.IN_PROGRESS, JobState.COMPLETED)
    long = result(worker, long_id)["output"]
    assert long["success"] and long["duration"] >= 240 and long["chunking"]["windows"] >= 12
    # (per-chunk counts are throttled to one update per 2 s, so how many arrive depends on speed; the engine's
    # chunk progress is checked exactly in tests/test_engine.py)
    assert platform.progress(long_id)[0]["stage"] == "transcribing"


def test_cancelled_job_stops_and_the_worker_takes_the_next(worker, files, heldout_clips) -> None:
    platform, _ = worker
    long_id = platform.submit({"audio_url": f"{files}/long.flac", "use_local_attention": True})
    platform.wait_for_progress(long_id, lambda p: bool(p), JOB_TIMEOUT_S)
    assert platform.cancel(long_id) == JobState.IN_PROGRESS
    good = result(worker, platform.submit({"audio_base64": flac_b64(heldout_clips[0].audio)}))
    assert good["output"]["success"]
    assert platform.state(long_id) == JobState.CANCELLED and platform.result(long_id) is None


def test_unloadable_model_exits_with_instructions(tmp_path) -> None:
    env = {**os.environ, "PARAKEET_MODEL": str(tmp_path / "missing.nemo")}
    done = subprocess.run([sys.executable, "rp_handler.py"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "does not exist" in done.stderr and "tests/assets/parakeet-tdt-test.nemo" in done.stderr


def _post(url: str, payload: dict, timeout: float = JOB_TIMEOUT_S) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=JOB_TIMEOUT_S) as response:
        return json.loads(response.read())


def test_local_api_server_run_status_and_runsync(tmp_path, heldout_clips, recognizer) -> None:
    with local_api_server(WORKER_ENV, tmp_path / "api.log") as api:
        clip = heldout_clips[4]
        sync = _post(f"{api}/runsync", {"input": {"audio_base64": flac_b64(clip.audio)}})
        assert sync["status"] == "COMPLETED" and sync["output"]["text"] == recognizer.transcribe([clip.audio])[0].text
        job = _post(f"{api}/run", {"input": {"audio_base64": flac_b64(clip.audio)}})
        status = _post(f"{api}/status/{job['id']}", {})
        assert status["status"] == "COMPLETED" and status["output"]["text"] == sync["output"]["text"]
        failed = _post(f"{api}/runsync", {"input": {"output_format": "pdf", "audio": "https://x.test/a"}})
        assert failed["status"] == "FAILED" and "output_format" in failed["error"]


def test_test_input_flag_and_test_input_json(tmp_path, heldout_clips) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")} | WORKER_ENV
    clip = heldout_clips[5]
    job = json.dumps({"input": {"audio_base64": flac_b64(clip.audio), "output_format": "vtt"}})
    done = subprocess.run([sys.executable, "rp_handler.py", "--test_input", job], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    # the SDK logs the output dict; the transcript in it (the subtitle file too) is redacted unless the operator
    # asks for transcripts in logs, so the key is what shows that the job made a VTT (its content: test_handler)
    assert "'vtt': " in done.stdout + done.stderr and "'success': True" in done.stdout + done.stderr
    # with no flag the SDK reads test_input.json from the working directory (the repo's own file)
    done = subprocess.run([sys.executable, "rp_handler.py"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "'success': True" in output and "'timestamps': {'word'" in output  # the SDK prints the output dict


def test_64_inputs_of_long_silence_under_a_memory_cap(worker, heldout_clips) -> None:
    """A 1 MB request of 64 inputs each decoding past the limit: each gets its error, the worker's memory stays
    within its cap (a regression fails with MemoryError in the worker, not the machine), and it serves on."""
    platform, proc = worker
    pid = proc.process.pid
    too_long = silence_flac_b64(MAX_AUDIO_S + 60)
    with memory_headroom(pid, MEMORY_HEADROOM_BYTES) as cap:
        job = platform.submit({"inputs": [{"audio_base64": too_long}] * 64})
        refused = result(worker, job, timeout=300)
        codes = [r.get("error_code") for r in refused["output"]["results"]]
        assert codes == ["audio_too_long"] * 64, (codes, refused.get("error"))
        assert refused["output"]["success"] is False and f"{MAX_AUDIO_S} s" in refused["error"]
        # each input reserves its decode limit (600 s) of the job's budget (1200 s) while it decodes: two at once
        valid = result(worker, platform.submit({"inputs": [{"audio_base64": silence_flac_b64(30)}] * 3
                                                + [{"audio_base64": flac_b64(heldout_clips[0].audio)}]}), timeout=300)
        assert "output" in valid and [r["success"] for r in valid["output"]["results"]] == [True] * 4, valid
        assert data_segment_bytes(pid) < cap
    good = result(worker, platform.submit({"audio_base64": flac_b64(heldout_clips[0].audio)}))
    assert good["output"]["success"] and proc.is_alive()


@pytest.mark.parametrize("number", [10**400, float("inf")], ids=["400 digits", "infinity"])
def test_a_number_too_large_for_a_float_fails_the_job_with_invalid_input(worker, number) -> None:
    platform, _ = worker
    out = result(worker, platform.submit({"audio_url": "https://x.test/a.wav", "chunk_long_audio": True,
                                          "chunk_duration": number}))
    assert out["output"]["error_code"] == "invalid_input", out
    assert "'chunk_duration'" in out["error"] and "Traceback" not in out["error"] and len(out["error"]) < 300


class _NeverAnswers(BaseHTTPRequestHandler):
    """Takes the request and holds it (up to a minute): a download that is still in flight at SIGTERM."""

    requests = threading.Semaphore(0)

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        type(self).requests.release()
        time.sleep(60)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


def test_sigterm_fails_a_job_still_running_after_the_grace_period_and_the_worker_exits(tmp_path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NeverAnswers)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = WORKER_ENV | {"PARAKEET_SHUTDOWN_GRACE_S": "3", "PARAKEET_DOWNLOAD_TIMEOUT_S": "300"}
    try:
        with started_worker("rp_handler.py", env, log_dir=tmp_path) as (platform, proc):
            stuck = platform.submit({"audio_url": f"http://127.0.0.1:{server.server_address[1]}/a.flac"})
            assert _NeverAnswers.requests.acquire(timeout=JOB_TIMEOUT_S), proc.log_tail()
            signalled = time.monotonic()
            proc.process.send_signal(signal.SIGTERM)
            try:
                code = proc.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"the worker did not exit 30 s after SIGTERM:\n{proc.log_tail()}") from None
            assert code == 0 and time.monotonic() - signalled < 3 + 15, proc.log_tail()
            out = platform.result(stuck)
            assert out is not None and out["output"]["error_code"] == "server_shutdown", (out, proc.log_tail())
    finally:
        server.shutdown()
        server.server_close()
