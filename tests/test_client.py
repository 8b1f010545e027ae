"""client.py as a person runs it (a subprocess), against the real servers with the committed test model:

- ``stream``: the WebSocket server (`websocket_handler.StreamServer` over the real engine) on a localhost port;
- ``batch``: the worker's local API (``rp_handler.py --rp_serve_api``), and RunPod's public job API;
- ``session``: RunPod's public job API (``/run``, ``/status``, ``/cancel``; :class:`PublicApi` below) in front of
  the platform stand-in (tests/runpod_platform.py), which drives the real worker through the SDK's production loop,
  so the worker's own websocket job announces the session the client then streams to.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pty
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from parakeet_client import build_ws_url, describe_status, find_ready, job_error, main, parse_ready
from parakeet_worker.config import Settings
from parakeet_worker.engine.engine import EngineOptions, ParakeetEngine
from parakeet_worker.serving.ws_server import ServerLimits, ServerThread, StreamServer
from testmodel.heldout import HELDOUT_DIR, MODEL_PATH
from tests.runpod_platform import FakeRunpodPlatform, JobState, free_port, local_api_server, started_worker

REPO = Path(__file__).resolve().parent.parent
CLIENT = [sys.executable, str(REPO / "client.py")]
TOKEN = "client-test-token"
API_KEY = "client-test-api-key"
CLIP = HELDOUT_DIR / "seen-00000.flac"  # 12.1 s
SHORT_CLIP = HELDOUT_DIR / "seen-00003.flac"  # 1.7 s
MID_CLIP = HELDOUT_DIR / "seen-00002.flac"  # 6.8 s
RUN_TIMEOUT_S = 120.0
WORKER_ENV = {"PARAKEET_MODEL": str(MODEL_PATH), "PARAKEET_ALLOW_PRIVATE_URLS": "1", "PARAKEET_CONCURRENCY": "3",
              "PARAKEET_CPU_THREADS": "1", "PARAKEET_WS_HOST": "127.0.0.1", "PARAKEET_WS_PORT": "0", "PARAKEET_GRPC_PORT": "0"}


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def client(*args: str | Path, env: dict[str, str] | None = None, timeout: float = RUN_TIMEOUT_S) -> Run:
    done = subprocess.run([*CLIENT, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    return Run(done.returncode, done.stdout, done.stderr)


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


# --- the servers ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ws_url(loaded_test_model) -> Iterator[str]:
    """The standalone WebSocket server over the real engine, admitting any number of sessions with TOKEN."""
    engine = ParakeetEngine(loaded_test_model, EngineOptions(batch_wait_ms=5, full_attention_max_s=900))
    settings = replace(Settings(), ws_host="127.0.0.1", ws_port=0)
    thread = ServerThread(StreamServer(engine, settings, ServerLimits(max_sessions=4, idle_timeout_s=30.0)))
    server = thread.start()
    server.grant(None, token=TOKEN, multi_use=True)
    yield f"ws://127.0.0.1:{server.port}/"
    thread.stop()
    engine.close()


@pytest.fixture(scope="module")
def local_api(tmp_path_factory) -> Iterator[str]:
    """``rp_handler.py --rp_serve_api`` (the SDK's local /run, /runsync, /status) on a free port."""
    with local_api_server(WORKER_ENV, tmp_path_factory.mktemp("api") / "api.log") as url:
        yield url


@pytest.fixture(scope="module")
def direct_text(local_api) -> str:
    """What the worker returns for CLIP when asked directly (no client.py)."""
    answer = requests.post(f"{local_api}/runsync", json={"input": {"audio_base64": b64(CLIP)}}, timeout=120).json()
    assert answer["status"] == "COMPLETED" and answer["output"]["text"], answer
    return answer["output"]["text"]


class PublicApi:
    """RunPod's public job API for one endpoint (``POST /v2/<id>/run``, ``GET /v2/<id>/status/<job>``,
    ``POST /v2/<id>/cancel/<job>``, ``Authorization: Bearer <key>``) over :class:`FakeRunpodPlatform`'s jobs.
    ``/status`` answers as RunPod does: ``IN_QUEUE``; ``IN_PROGRESS`` with the latest progress update as
    ``output``; ``COMPLETED`` with ``output``; ``FAILED`` with ``error`` (and the handler's ``output``)."""

    STATES = {JobState.QUEUED: "IN_QUEUE", JobState.IN_PROGRESS: "IN_PROGRESS", JobState.COMPLETED: "COMPLETED",
              JobState.FAILED: "FAILED", JobState.CANCELLED: "CANCELLED"}

    def __init__(self, platform: FakeRunpodPlatform, api_key: str) -> None:
        self.platform = platform
        self.api_key = api_key
        self.requests: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                api._serve(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                api._serve(self, "POST")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v2"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _serve(self, request: BaseHTTPRequestHandler, method: str) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0)) if method == "POST" else b""
        self.requests.append(f"{method} {request.path}")
        status, answer = self._route(method, request.path.strip("/").split("/"), body,
                                     request.headers.get("Authorization"))
        data = json.dumps(answer).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def _route(self, method: str, parts: list[str], body: bytes, auth: str | None) -> tuple[int, Any]:
        if auth != f"Bearer {self.api_key}":
            return HTTPStatus.UNAUTHORIZED, {"error": "Unauthorized"}
        if len(parts) < 3 or parts[0] != "v2" or parts[1] != self.platform.endpoint_id:
            return HTTPStatus.NOT_FOUND, {"error": "not found"}
        route, args = parts[2], parts[3:]
        if method == "POST" and route == "run" and not args:
            job_id = self.platform.submit(json.loads(body)["input"])
            return HTTPStatus.OK, {"id": job_id, "status": "IN_QUEUE"}
        if method == "GET" and route == "status" and len(args) == 1:
            return HTTPStatus.OK, self.status(args[0])
        if method == "POST" and route == "cancel" and len(args) == 1:
            self.platform.cancel(args[0])
            return HTTPStatus.OK, {"id": args[0], "status": "CANCELLED"}
        return HTTPStatus.NOT_FOUND, {"error": f"no route {method} /{'/'.join(parts)}"}

    def status(self, job_id: str) -> dict[str, Any]:
        state = self.platform.state(job_id)
        answer: dict[str, Any] = {"id": job_id, "status": self.STATES[state]}
        if state is JobState.IN_PROGRESS and (progress := self.platform.progress(job_id)):
            answer["output"] = progress[-1]
        elif state in (JobState.COMPLETED, JobState.FAILED):
            answer.update(self.platform.result(job_id) or {})
        return answer


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory) -> Iterator[tuple[PublicApi, dict[str, str]]]:
    """The real worker (with its WebSocket server) behind RunPod's job API; yields the API and the client's env."""
    with started_worker("rp_handler.py", WORKER_ENV, log_dir=tmp_path_factory.mktemp("log")) as (platform, _):
        api = PublicApi(platform, API_KEY)
        try:
            yield api, {"RUNPOD_API_KEY": API_KEY, "RUNPOD_API_BASE": api.base}
        finally:
            api.close()


# --- stream ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def streamed(ws_url) -> Run:
    """CLIP streamed as fast as the server keeps up, with machine output."""
    return client("stream", CLIP, "--url", ws_url, "--token", TOKEN, "--fast", "--json")


def test_stream_json_gives_every_server_message_and_a_stopped_summary(streamed) -> None:
    assert streamed.code == 0, streamed.stderr
    messages = streamed.json_lines()
    kinds = [m["type"] for m in messages]
    assert kinds[:2] == ["welcome", "started"] and kinds[-1] == "stopped" and "error" not in kinds
    assert messages[1]["sample_rate"] == 16000 and messages[1]["endpointing"] is True
    finals = [m for m in messages if m["type"] == "transcription" and m["is_final"]]
    stopped = messages[-1]
    assert finals and stopped["reason"] == "stop" and stopped["final_text"]
    assert stopped["final_text"] == " ".join(f["text"] for f in finals if f["text"])
    assert stopped["utterances"] == len(finals)
    assert stopped["audio_seconds"] == pytest.approx(12.106, abs=0.03)  # every frame arrived, none was dropped
    seqs = [m["seq"] for m in messages]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_stream_without_a_terminal_prints_the_finals_as_plain_lines(ws_url, streamed) -> None:
    run = client("stream", CLIP, "--url", f"{ws_url}?token={TOKEN}", "--fast")
    assert run.code == 0, run.stderr
    assert "\r" not in run.stdout and "\x1b" not in run.stdout, "no in-place updates when stdout is not a TTY"
    final_text = streamed.json_lines()[-1]["final_text"]
    assert " ".join(run.stdout.split("\n")).split() == final_text.split()
    assert "stopped (stop)" in run.stderr and "12.1" in run.stderr


def test_stream_resamples_finalizes_on_a_timer_and_times_words(ws_url) -> None:
    run = client("stream", CLIP, "--url", ws_url, "--token", TOKEN, "--fast", "--json", "--sample-rate", "8000",
                 "--no-endpointing", "--finalize-after-s", "5", "--timestamps")
    assert run.code == 0, run.stderr
    messages = run.json_lines()
    started = next(m for m in messages if m["type"] == "started")
    assert started["sample_rate"] == 8000 and started["endpointing"] is False and started["timestamps"] is True
    finals = [m for m in messages if m["type"] == "transcription" and m["is_final"]]
    assert [f["final_reason"] for f in finals] == ["finalize", "finalize", "stop"]
    assert all(f["from_finalize"] for f in finals[:2])
    words = [w for f in finals for w in f["words"]]
    assert words and [w["start"] for w in words] == sorted(w["start"] for w in words)
    assert messages[-1]["type"] == "stopped" and messages[-1]["audio_seconds"] == pytest.approx(12.106, abs=0.03)


def test_stream_paces_a_file_in_real_time(ws_url) -> None:
    proc = subprocess.Popen([*CLIENT, "stream", str(SHORT_CLIP), "--url", ws_url, "--token", TOKEN, "--json"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    arrivals: dict[str, float] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        arrivals.setdefault(json.loads(line)["type"], time.monotonic())
    assert proc.wait(timeout=RUN_TIMEOUT_S) == 0, proc.stderr.read() if proc.stderr else ""
    assert arrivals["stopped"] - arrivals["started"] >= 1.6  # the clip is 1.69 s, its last frame leaves at 1.69 s


def test_stream_on_a_terminal_updates_partials_in_place(ws_url) -> None:
    # Paced in real time (6.8 s): sent with --fast, the stop can reach the engine before any chunk was stepped,
    # and the engine then serves the final first, with no partials to draw.
    leader, follower = pty.openpty()
    proc = subprocess.Popen([*CLIENT, "stream", str(MID_CLIP), "--url", ws_url, "--token", TOKEN],
                            cwd=REPO, stdout=follower, stderr=subprocess.PIPE, env={**os.environ, "NO_COLOR": ""})
    os.close(follower)
    screen = b""
    with contextlib.suppress(OSError):  # EIO once the client has exited and closed its end
        while chunk := os.read(leader, 65536):
            screen += chunk
    os.close(leader)
    assert proc.wait(timeout=RUN_TIMEOUT_S) == 0
    text = screen.decode()
    assert text.count("\r\x1b[2K") >= 2, "partials are drawn and cleared in place"
    assert "\x1b[2m" in text, "the draft part of a partial is dimmed"
    last_line = text.replace("\r\n", "\n").rsplit("\x1b[2K", 1)[-1].strip()
    assert last_line and "\x1b" not in last_line, "the screen ends with the final, partials cleared"


def test_stream_refused_token_and_closed_port_fail_with_the_reason(ws_url, capsys) -> None:
    assert main(["stream", str(SHORT_CLIP), "--url", ws_url, "--token", "wrong", "--fast"]) == 1
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "token" in err and "wrong" not in err, "the reason, without echoing the token"
    assert main(["stream", str(SHORT_CLIP), "--url", f"ws://127.0.0.1:{free_port()}/", "--fast"]) == 1
    assert "could not connect" in capsys.readouterr().err


def test_usage_errors_exit_2_with_a_readable_message(tmp_path, capsys, monkeypatch) -> None:
    missing = client("stream", tmp_path / "nope.wav", "--url", "ws://127.0.0.1:9/")  # the real exit status
    assert missing.code == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "notes.txt").write_text("not audio")
    monkeypatch.delenv("PARAKEET_WS_URL", raising=False)
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    cases = [
        (["stream", str(SHORT_CLIP), "--url", "http://127.0.0.1:9/"], "ws://"),
        (["stream", str(tmp_path / "notes.txt"), "--url", "ws://127.0.0.1:9/"], "cannot read"),
        (["stream", str(SHORT_CLIP), "--url", "ws://127.0.0.1:9/", "--sample-rate", "96000"], "--sample-rate"),
        (["stream", str(SHORT_CLIP)], "--url"),
        (["stream", "--url", "ws://127.0.0.1:9/"], "audio file"),
        (["batch", str(tmp_path / "nope.flac"), "--api-url", "http://127.0.0.1:9"], "no such file"),
        (["batch", "ftp://example.com/a.wav", "--api-url", "http://127.0.0.1:9"], "ftp://"),
        (["batch", str(SHORT_CLIP), "--api-url", "127.0.0.1:9"], "--api-url"),
        (["batch", str(SHORT_CLIP), "--endpoint-id", "abc"], "RUNPOD_API_KEY"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, (argv, err)
    with pytest.raises(SystemExit) as exc:  # argparse's own usage errors exit 2 too
        main(["batch", str(SHORT_CLIP)])
    assert exc.value.code == 2 and "--endpoint-id" in capsys.readouterr().err


# --- batch -----------------------------------------------------------------------------------------------------------
def test_batch_runsync_on_the_local_api_returns_what_the_worker_returns(local_api, direct_text) -> None:
    run = client("batch", CLIP, "--api-url", local_api, "--sync", "--json")
    assert run.code == 0, run.stderr
    [answer] = run.json_lines()
    assert answer["status"] == "COMPLETED" and answer["output"]["text"] == direct_text


def test_batch_run_and_status_on_the_local_api(local_api, direct_text) -> None:
    run = client("batch", CLIP, "--api-url", local_api, "--timestamps")
    assert run.code == 0, run.stderr
    segments = run.stdout.splitlines()
    assert segments and all(line.startswith("[00:") for line in segments)
    assert " ".join(line.split("] ", 1)[1] for line in segments) == direct_text
    assert "s of audio in" in run.stderr  # the stats line


def test_batch_writes_srt_to_a_file(local_api, tmp_path) -> None:
    out = tmp_path / "clip.srt"
    run = client("batch", CLIP, "--api-url", local_api, "--output-format", "srt", "-o", out)
    assert run.code == 0, run.stderr
    srt = out.read_text()
    assert srt.startswith("1\n") and " --> " in srt and run.stdout == ""


def test_batch_failed_job_exits_1_with_the_workers_reason(local_api) -> None:
    run = client("batch", CLIP, "--api-url", local_api, "--sync", "--chunk-long-audio", "--chunk-duration", "1")
    assert run.code == 1 and "chunk_duration" in run.stderr


def test_batch_through_the_endpoint_api_polls_status(endpoint, direct_text) -> None:
    api, env = endpoint
    run = client("batch", CLIP, "--endpoint-id", api.platform.endpoint_id, "--json", env=env)
    assert run.code == 0, run.stderr
    [answer] = run.json_lines()
    assert answer["status"] == "COMPLETED" and answer["output"]["text"] == direct_text
    assert any(r.startswith("GET /v2/fake-endpoint/status/") for r in api.requests)
    bad = client("batch", CLIP, "--endpoint-id", api.platform.endpoint_id, "--output-format", "text",
                 "--chunk-duration", "1", "--chunk-long-audio", env=env)
    assert bad.code == 1 and "chunk_duration" in bad.stderr and "[invalid_input]" in bad.stderr
    wrong_key = client("batch", CLIP, "--endpoint-id", api.platform.endpoint_id, env={**env, "RUNPOD_API_KEY": "x"})
    assert wrong_key.code == 1 and "401" in wrong_key.stderr and "RUNPOD_API_KEY" in wrong_key.stderr


# --- session ---------------------------------------------------------------------------------------------------------
def test_session_starts_a_websocket_job_streams_and_prints_its_summary(endpoint) -> None:
    api, env = endpoint
    run = client("session", MID_CLIP, "--endpoint-id", api.platform.endpoint_id, "--fast", "--json", env=env)
    assert run.code == 0, run.stderr
    lines = run.json_lines()
    ready, final = lines[0], lines[-1]
    assert ready["type"] == "job" and ready["output"]["status"] == "ready" and "token" in ready["output"]["ws_url"]
    kinds = [m["type"] for m in lines[1:-1]]
    assert kinds[:2] == ["welcome", "started"] and kinds[-1] == "stopped"
    stopped = lines[-2]
    assert stopped["final_text"] == " ".join(m["text"] for m in lines if m.get("is_final") and m["text"])
    assert final["type"] == "job" and final["status"] == "COMPLETED"
    summary = final["output"]
    assert summary["reason"] == "stop" and summary["final_text"] == stopped["final_text"] and summary["success"]
    assert summary["audio_seconds"] == pytest.approx(6.761, abs=0.03)
    assert api.platform.state(final["id"]) is JobState.COMPLETED


def test_session_human_output(endpoint) -> None:
    api, env = endpoint
    run = client("session", SHORT_CLIP, "--endpoint-id", api.platform.endpoint_id, "--fast", env=env)
    assert run.code == 0, run.stderr
    assert "session ready at ws://127.0.0.1:" in run.stderr and "token=***" in run.stderr
    assert "completed: stop" in run.stderr and "internal address" in run.stderr  # no public IP in this test


# --- session parts -----------------------------------------------------------------------------------------------------
def test_ready_message_is_found_in_any_status_shape() -> None:
    ready = {"status": "ready", "ws_url": "ws://203.0.113.7:40123/?token=abc", "address": "public",
             "protocol": "parakeet-stream/1", "limits": {"idle_timeout_s": 30.0}}
    assert find_ready({"status": "IN_QUEUE"}) is None
    assert find_ready({"status": "IN_PROGRESS", "output": {"stage": "loading"}}) is None
    for shape in (ready, [{"stage": "x"}, ready], json.dumps(ready)):
        found = find_ready({"status": "IN_PROGRESS", "output": shape})
        assert found is not None and found.ws_url == ready["ws_url"] and found.address == "public"
    streamed = find_ready({"status": "IN_PROGRESS", "stream": [{"output": ready}]})
    assert streamed is not None and streamed.limits == {"idle_timeout_s": 30.0}


def test_ready_message_without_ws_url_builds_one_from_host_port_and_token() -> None:
    found = parse_ready({"status": "ready", "host": "203.0.113.7", "port": 40123, "token": "t/k n"})
    assert found.ws_url == "ws://203.0.113.7:40123/?token=t%2Fk+n"
    assert parse_ready({"status": "ready", "host": "::1", "port": 8765, "token": "t"}).ws_url == "ws://[::1]:8765/?token=t"
    with pytest.raises(Exception, match="names no ws_url"):
        parse_ready({"status": "ready", "token": "t"})


def test_ws_url_token_handling() -> None:
    assert build_ws_url("ws://h:1", "abc") == "ws://h:1/?token=abc"
    assert build_ws_url("ws://h:1/?token=old&x=1", "new") == "ws://h:1/?x=1&token=new"
    assert build_ws_url("wss://h/path?token=keep") == "wss://h/path?token=keep"
    with pytest.raises(Exception, match="ws:// or wss://"):
        build_ws_url("https://h:1/")


def test_job_error_unwraps_handler_exceptions_and_worker_errors() -> None:
    sdk = {"status": "FAILED", "error": json.dumps({"error_type": "<class 'KeyError'>", "error_message": "'x'"})}
    assert job_error(sdk) == "<class 'KeyError'>: 'x'"
    worker = {"status": "FAILED", "error": "bad key", "output": {"error": "bad key", "error_code": "invalid_input"}}
    assert job_error(worker) == "bad key [invalid_input]"
    assert describe_status({"id": "j", "status": "IN_PROGRESS", "output": {"stage": "transcribing",
                                                                          "chunks_done": 3, "chunks_total": 12}}) \
        == "job j: transcribing, window 3/12"
