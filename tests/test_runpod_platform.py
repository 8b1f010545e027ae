"""The runpod SDK's real production job loop, driven by real worker processes against the fake platform.

Each worker is a subprocess running ``runpod.serverless.start`` with the platform's environment, so these tests
check what RunPod would see: results, errors, progress, stream chunks, pings, concurrency, cancel and SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from tests.runpod_platform import (
    FakeRunpodPlatform,
    JobState,
    WorkerProcess,
    data_segment_bytes,
    memory_headroom,
    run_worker,
)

# Worker processes (echo and generator handlers, no model) against the platform stand-in on a localhost port.
pytestmark = [pytest.mark.worker, pytest.mark.socket]

ECHO_WORKER = "tests/workers/echo_worker.py"
STREAM_WORKER = "tests/workers/stream_worker.py"
WORKER_START_TIMEOUT_S = 30.0  # importing runpod takes ~3 s on a loaded 2-core machine
JOB_TIMEOUT_S = 10.0
SLEEP_JOB_S = 1.0


@dataclass
class Harness:
    """A platform with one worker attached."""

    platform: FakeRunpodPlatform
    worker: WorkerProcess

    def result(self, job_id: str, timeout: float = JOB_TIMEOUT_S) -> dict[str, Any]:
        """The job's final payload; on timeout, fail with the worker's log."""
        try:
            return self.platform.wait_for_result(job_id, timeout)
        except TimeoutError as err:
            raise AssertionError(f"{err}\n--- worker log ---\n{self.worker.log_tail()}") from err

    def output(self, job_id: str) -> Any:
        """The output of a job that must succeed."""
        result = self.result(job_id)
        assert set(result) == {"output"}, result
        return result["output"]


@contextlib.contextmanager
def _harness(script: str, log_dir: Path, extra_env: dict[str, str] | None = None) -> Iterator[Harness]:
    with FakeRunpodPlatform() as platform, run_worker(script, platform, extra_env, log_dir=log_dir) as worker:
        try:
            platform.wait_for_worker(WORKER_START_TIMEOUT_S)
        except TimeoutError as err:
            raise AssertionError(f"{err}\n--- worker log ---\n{worker.log_tail()}") from err
        yield Harness(platform, worker)
        errors = platform.protocol_errors()
        assert not errors, f"{errors}\n--- worker log ---\n{worker.log_tail()}"


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """One echo worker holding up to 3 jobs at once, shared by the tests that leave it idle."""
    with _harness(ECHO_WORKER, tmp_path_factory.mktemp("echo"), {"ECHO_CONCURRENCY": "3"}) as harness:
        yield harness


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """One worker whose handler is an async generator, with ``return_aggregate_stream``."""
    with _harness(STREAM_WORKER, tmp_path_factory.mktemp("stream")) as harness:
        yield harness


# --- the fake itself, without a worker ---------------------------------------------------------------------------
def _get(url: str, api_key: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": api_key})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            body = response.read()
            return response.status, json.loads(body) if body else None
    except urllib.error.HTTPError as err:
        return err.code, None


def test_fake_serves_the_job_take_wire_format() -> None:
    with FakeRunpodPlatform(long_poll_hold_s=0.1) as platform:
        take = platform.env()["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", "w1")
        job_id = platform.submit({"x": 1})
        dropped = platform.submit({"x": 2})
        assert platform.cancel(dropped) is JobState.QUEUED

        assert _get(take + "&job_in_progress=0", platform.api_key) == (200, {"id": job_id, "input": {"x": 1}})
        assert _get(take + "&job_in_progress=1", platform.api_key) == (204, None)  # the cancelled one is gone
        assert platform.state(job_id) is JobState.IN_PROGRESS
        assert platform.state(dropped) is JobState.CANCELLED
        assert platform.protocol_errors() == []

        assert _get(take + "&job_in_progress=0", "wrong-key")[0] == 401
        assert len(platform.protocol_errors()) == 1


# --- results and errors ------------------------------------------------------------------------------------------
def test_output_arrives_under_the_job_id(echo: Harness) -> None:
    job_id = echo.platform.submit({"echo": {"text": "hello", "n": [1, 2]}})

    output = echo.output(job_id)

    assert output["job_id"] == job_id
    assert output["echo"] == {"text": "hello", "n": [1, 2]}
    assert echo.platform.state(job_id) is JobState.COMPLETED
    [post] = echo.platform.posts(job_id)
    assert (post.kind, post.is_stream, post.pod_id, post.request_id) == ("result", False, "fake-pod", job_id)


def test_error_return_fails_the_job_and_the_next_job_succeeds(echo: Harness) -> None:
    failed = echo.platform.submit({"error": "audio is missing"})
    assert echo.result(failed) == {"error": "audio is missing"}
    assert echo.platform.state(failed) is JobState.FAILED

    following = echo.platform.submit({"echo": "next"})
    assert echo.output(following)["echo"] == "next"


def test_handler_exception_is_reported_and_the_worker_keeps_serving(echo: Harness) -> None:
    failed = echo.platform.submit({"raise": "boom"})

    result = echo.result(failed)

    assert set(result) == {"error"}
    error = json.loads(result["error"])  # the SDK sends a JSON string, not an object
    assert error["error_type"] == "<class 'ValueError'>"
    assert error["error_message"] == "boom"
    assert "Traceback" in error["error_traceback"]
    assert error["worker_id"] == "fake-pod"
    assert echo.platform.state(failed) is JobState.FAILED
    following = echo.platform.submit({"echo": "still here"})
    assert echo.output(following)["echo"] == "still here"


def test_progress_updates_arrive_in_order_as_in_progress(echo: Harness) -> None:
    # The SDK posts each update from a new thread: only updates sent well apart arrive in order.
    updates = [{"step": step} for step in range(3)]
    job_id = echo.platform.submit({"progress": updates, "progress_gap_s": 0.5})

    echo.output(job_id)
    posts = echo.platform.wait_for_posts(
        job_id, lambda posts: sum(post.kind == "progress" for post in posts) == len(updates), JOB_TIMEOUT_S
    )

    assert [post.payload for post in posts if post.kind == "progress"] == [
        {"status": "IN_PROGRESS", "output": update} for update in updates
    ]


# --- concurrency, heartbeat, cancel ------------------------------------------------------------------------------
def test_three_jobs_run_concurrently(echo: Harness) -> None:
    # The SDK counts a just-taken job twice until it starts, so right after a job it polls for fewer jobs than
    # it has free slots; wait for a poll that asks for all 3.
    echo.platform.wait_for_open_take(3, JOB_TIMEOUT_S)
    started = time.monotonic()
    job_ids = echo.platform.submit_many([{"sleep": SLEEP_JOB_S, "echo": n} for n in range(3)])

    outputs = [echo.output(job_id) for job_id in job_ids]
    elapsed_s = time.monotonic() - started

    assert [output["echo"] for output in outputs] == [0, 1, 2]
    assert elapsed_s < 2.75 * SLEEP_JOB_S, f"3 jobs of {SLEEP_JOB_S} s took {elapsed_s:.2f} s"
    assert max(o["started_at_s"] for o in outputs) < min(o["finished_at_s"] for o in outputs)  # all overlapped
    assert any(take.job_ids == tuple(job_ids) for take in echo.platform.takes())  # one batch answer held all 3


def test_pings_name_the_pod_and_its_running_jobs(echo: Harness) -> None:
    job_id = echo.platform.submit({"sleep": 2.5 * SLEEP_JOB_S})

    ping = echo.platform.wait_for_ping(lambda ping: job_id in ping.job_ids, JOB_TIMEOUT_S)
    echo.output(job_id)
    done_s = time.monotonic()
    echo.platform.wait_for_ping(lambda ping: ping.at_s > done_s and job_id not in ping.job_ids, JOB_TIMEOUT_S)

    assert ping.pod_id == "fake-pod"
    assert ping.runpod_version == version("runpod")
    assert echo.platform.ping_count() >= 2


def test_cancel_stops_the_running_handler(echo: Harness) -> None:
    job_id = echo.platform.submit({"progress": [{"started": True}], "sleep": 30.0})
    echo.platform.wait_for_progress(job_id, bool, JOB_TIMEOUT_S)

    assert echo.platform.cancel(job_id) is JobState.IN_PROGRESS
    echo.worker.wait_for_log(f"job {job_id} cancelled", JOB_TIMEOUT_S)  # the handler saw CancelledError
    cancelled_s = time.monotonic()
    echo.platform.wait_for_ping(  # the SDK no longer counts it as in progress
        lambda ping: ping.at_s > cancelled_s and job_id not in ping.job_ids, JOB_TIMEOUT_S
    )

    assert echo.platform.state(job_id) is JobState.CANCELLED
    assert echo.platform.result(job_id) is None  # the SDK posts nothing for a stopped job
    assert [post.kind for post in echo.platform.posts(job_id)] == ["progress"]
    following = echo.platform.submit({"echo": "after cancel"})
    assert echo.output(following)["echo"] == "after cancel"


def test_sigterm_finishes_the_running_job_and_takes_no_more(tmp_path: Path) -> None:
    with _harness(ECHO_WORKER, tmp_path) as harness:
        running = harness.platform.submit({"progress": [{"started": True}], "sleep": 1.5 * SLEEP_JOB_S})
        harness.platform.wait_for_progress(running, bool, JOB_TIMEOUT_S)

        harness.worker.process.send_signal(signal.SIGTERM)
        waiting = harness.platform.submit({"echo": "too late"})

        assert harness.output(running)["job_id"] == running
        assert harness.worker.process.wait(timeout=JOB_TIMEOUT_S) == 0
        assert harness.platform.state(waiting) is JobState.QUEUED


# --- generator handlers ------------------------------------------------------------------------------------------
def test_generator_chunks_stream_in_order_and_aggregate(stream: Harness) -> None:
    chunks = ["a", {"b": 2}, 3]
    job_id = stream.platform.submit({"chunks": chunks})

    assert stream.output(job_id) == chunks  # return_aggregate_stream=True
    assert stream.platform.stream_chunks(job_id) == chunks
    posts = stream.platform.posts(job_id)
    assert [post.kind for post in posts] == ["stream"] * 3 + ["result"]
    assert posts[-1].is_stream is True


def test_generator_exception_fails_the_job_after_its_chunks(stream: Harness) -> None:
    job_id = stream.platform.submit({"chunks": ["a"], "raise": "boom"})

    result = stream.result(job_id)

    assert set(result) == {"error"}
    assert result["error"].startswith("handler: boom")  # a plain string here, unlike run_job's JSON
    assert stream.platform.stream_chunks(job_id) == ["a"]
    assert stream.platform.state(job_id) is JobState.FAILED


_ALLOCATOR = """
import sys
for line in sys.stdin:
    try:
        block = bytearray(int(line) << 20)
        print("ok", flush=True)
        del block
    except MemoryError:
        print("MemoryError", flush=True)
"""


def test_memory_headroom_caps_a_running_process_and_restores_its_limit() -> None:
    """What the memory-bounded worker tests rely on: past the cap an allocation fails in that process alone."""
    proc = subprocess.Popen([sys.executable, "-c", _ALLOCATOR], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdin is not None and proc.stdout is not None

    def allocate(mb: int) -> str:
        proc.stdin.write(f"{mb}\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    try:
        assert allocate(1) == "ok" and data_segment_bytes(proc.pid) > 0
        with memory_headroom(proc.pid, 64 << 20):
            assert allocate(16) == "ok"
            assert allocate(256) == "MemoryError"
        assert allocate(256) == "ok"
    finally:
        proc.kill()
        proc.wait()
