"""Structured logs, per-request metrics and the report command: real log records, real files, the real CLI."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from parakeet_worker.observability import (
    Metrics,
    RequestRecord,
    build_report,
    format_report,
    log_context,
    metrics_files,
    on_platform,
    percentile,
    setup_logging,
)
from parakeet_worker.observability.prometheus import exposition, metrics_registry

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


# ---------------------------------------------------------------------------------------------------- logging


def test_platform_is_detected_from_runpod_variables() -> None:
    assert on_platform({"RUNPOD_POD_ID": "abc123"}) and on_platform({"RUNPOD_ENDPOINT_ID": "ep"})
    assert not on_platform({}) and not on_platform({"RUNPOD_POD_ID": ""})


def test_on_the_platform_each_record_is_one_json_object_with_the_job(tmp_path: Path) -> None:
    stream = io.StringIO()
    setup_logging(stream=stream, environ={"RUNPOD_POD_ID": "pod-1", "RUNPOD_ENDPOINT_ID": "ep-1"})
    log = logging.getLogger("rp_handler")
    log.info("before any job")
    with log_context(job_id="job-42"):
        log.info("decoded %d files", 3, extra={"audio_s": 12.5})
        with log_context(session_id="sess-7"):
            logging.getLogger("websocket_handler").warning("session\nopened")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("handler bug")
    log.info("after the job")
    records = [json.loads(line) for line in _lines(stream)]  # every line parses on its own
    assert len(records) == 5
    first, decoded, opened, bug, after = records
    assert first["message"] == "before any job" and "job_id" not in first and first["level"] == "INFO"
    assert decoded["message"] == "decoded 3 files" and decoded["job_id"] == "job-42" and decoded["audio_s"] == 12.5
    assert decoded["requestId"] == "job-42" and "requestId" not in first  # the key RunPod's own log lines use
    assert decoded["logger"] == "rp_handler" and decoded["ts"].endswith("+00:00")
    assert opened == opened | {"job_id": "job-42", "session_id": "sess-7", "message": "session\nopened",
                               "level": "WARNING", "logger": "websocket_handler"}
    assert bug["level"] == "ERROR" and "ValueError: boom" in bug["exc"] and bug["job_id"] == "job-42"
    assert "job_id" not in after and "session_id" not in after


def test_locally_records_are_readable_text_tagged_with_the_job() -> None:
    stream = io.StringIO()
    setup_logging(stream=stream, environ={})
    with log_context(job_id="job-1", session_id="s-9"):
        logging.getLogger("asr_engine").info("ready: %s", "model")
    logging.getLogger("asr_engine").info("no job here")
    tagged, plain = _lines(stream)
    assert tagged.endswith("INFO asr_engine: ready: model [job=job-1 session=s-9]")
    assert plain.endswith("INFO asr_engine: no job here")
    assert not tagged.startswith("{")


def test_setup_replaces_the_handler_runpod_installs() -> None:
    import runpod  # noqa: F401 - importing it is what installs its handler

    logging.basicConfig(level=logging.DEBUG, format="%(message)s")  # whatever was configured before
    stream = io.StringIO()
    handler = setup_logging(json_lines=True, stream=stream)
    root = logging.getLogger()
    assert root.handlers == [handler] and root.level == logging.INFO
    logging.getLogger("runpod").info("from the sdk's logger")
    logging.getLogger("x").debug("below the level")
    assert [json.loads(line)["message"] for line in _lines(stream)] == ["from the sdk's logger"]


def test_context_follows_asyncio_tasks_and_to_thread_but_not_plain_threads() -> None:
    stream = io.StringIO()
    setup_logging(json_lines=True, stream=stream)
    log = logging.getLogger("ctx")

    async def job(job_id: str) -> None:
        with log_context(job_id=job_id):
            await asyncio.sleep(0.01)  # interleave the two jobs
            await asyncio.to_thread(log.info, "in a worker thread")
            log.info("on the loop")

    async def main() -> None:
        await asyncio.gather(job("a"), job("b"))
        with log_context(job_id="c"):
            thread = threading.Thread(target=log.info, args=("own thread",))
            thread.start()
            thread.join()

    asyncio.run(main())
    seen = [(r["message"], r.get("job_id")) for r in map(json.loads, _lines(stream))]
    assert sorted(seen[:4]) == [("in a worker thread", "a"), ("in a worker thread", "b"),
                                ("on the loop", "a"), ("on the loop", "b")]
    assert seen[4] == ("own thread", None)  # a thread of its own starts without the caller's context


# ---------------------------------------------------------------------------------------------------- metrics


def test_metrics_are_json_lines_with_rtfx_and_the_context_ids(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "metrics.jsonl"
    metrics = Metrics(path)
    with log_context(job_id="job-1"):
        ok = metrics.record("batch", audio_s=30.0, inference_s=0.25, queue_wait_s=0.004, total_s=0.4, batch_size=3)
    failed = metrics.record("batch", audio_s=0.0, error_code="audio_corrupt", job_id="job-2", total_s=0.01)
    stream = metrics.record("stream", audio_s=61.2, inference_s=1.7, session_id="s-1", active_sessions=5)
    metrics.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 3 and metrics.written == 3
    assert rows[0] == {"ts": rows[0]["ts"], "kind": "batch", "audio_s": 30.0, "inference_s": 0.25,
                       "queue_wait_s": 0.004, "total_s": 0.4, "rtfx": 120.0, "batch_size": 3, "job_id": "job-1"}
    assert rows[1]["error_code"] == "audio_corrupt" and "rtfx" not in rows[1] and rows[1]["job_id"] == "job-2"
    assert rows[2]["session_id"] == "s-1" and rows[2]["active_sessions"] == 5 and rows[2]["rtfx"] == 36.0
    assert ok is not None and failed is not None and stream is not None and not failed.ok
    assert [RequestRecord.from_dict(r) for r in rows] == [ok, failed, stream]


def test_metrics_from_many_threads_rotate_without_losing_or_tearing_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    metrics = Metrics(path, max_bytes=8_000, backups=500)
    threads_n, per_thread = 8, 150

    def worker(n: int) -> None:
        for i in range(per_thread):
            metrics.record("stream" if n % 2 else "batch", audio_s=float(i), inference_s=0.01 + i / 1000,
                           queue_wait_s=0.001, batch_size=n + 1, job_id=f"t{n}-{i}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    metrics.close()
    files = metrics_files(path)
    assert len(files) > 5 and all(f.stat().st_size <= 8_000 for f in files)  # it rotated
    ids = [json.loads(line)["job_id"] for f in files for line in f.read_text().splitlines()]  # no torn line
    assert sorted(ids) == sorted(f"t{n}-{i}" for n in range(threads_n) for i in range(per_thread))
    assert metrics.written == threads_n * per_thread and metrics.failures == 0

    small = Metrics(tmp_path / "small.jsonl", max_bytes=2_000, backups=2)
    for i in range(200):
        small.record("batch", audio_s=1.0, inference_s=0.1, job_id=str(i))
    small.close()
    assert [f.name for f in metrics_files(tmp_path / "small.jsonl")] == ["small.jsonl.2", "small.jsonl.1",
                                                                        "small.jsonl"]


def test_metrics_never_raise_into_the_caller(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unwritable = Metrics(blocker / "metrics.jsonl")  # its directory cannot be created
    assert not unwritable.enabled and unwritable.record("batch", audio_s=1.0) is None

    directory = tmp_path / "is-a-dir"
    directory.mkdir()
    broken = Metrics(directory)  # opening it for append fails at the first write
    with caplog.at_level(logging.WARNING, logger="parakeet_worker.observability.metrics"):
        assert broken.record("batch", audio_s=1.0, inference_s=0.1) is None
        assert broken.record("batch", audio_s=2.0, inference_s=0.1) is None
    assert broken.failures == 2 and broken.written == 0
    warnings = [r for r in caplog.records if "could not write" in r.getMessage()]
    assert len(warnings) == 1  # logged once, then only counted

    odd = Metrics(tmp_path / "odd.jsonl")
    assert odd.record("batch", audio_s="not a number", inference_s=0.1) is None  # type: ignore[arg-type]
    rec = odd.record("batch", audio_s=float("nan"), inference_s=float("inf"), queue_wait_s=float("-inf"))
    odd.close()
    assert rec is not None and rec.audio_s == 0.0 and rec.inference_s is None and rec.rtfx is None
    json.loads((tmp_path / "odd.jsonl").read_text())  # still strict JSON (no NaN/Infinity tokens)

    assert Metrics(None).record("batch", audio_s=1.0) is None and not Metrics(None).enabled


def test_metrics_keep_running_totals_by_face_that_prometheus_reads(tmp_path: Path) -> None:
    metrics = Metrics(tmp_path / "metrics.jsonl")
    metrics.record("batch", audio_s=30.0, inference_s=0.2, queue_wait_s=0.003)  # a RunPod job: no face
    with log_context(face="openai_rest"):  # the app tags each request with the face that serves it
        tagged = metrics.record("batch", audio_s=5.0, inference_s=0.04, queue_wait_s=0.2)
        metrics.record("batch", audio_s=0.0, error_code="audio_corrupt")
    Metrics(None).record("stream", audio_s=99.0, face="native")  # another object's totals are its own
    metrics.record("stream", audio_s=12.5, face="native")
    for face in ("native", "native", "deepgram"):
        metrics.session_opened(face)
    metrics.session_closed("native")
    metrics.request("native", "/", 101)
    metrics.request("native", "/", 401)
    metrics.request("native", "/", 401)
    metrics.close()
    assert tagged is not None and tagged.face == "openai_rest" and metrics.active_sessions() == 2
    assert "face" not in json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])

    body, content_type = exposition(metrics_registry(metrics), None)
    assert content_type.startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body.decode()) for s in family.samples}

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    assert value("parakeet_sessions_active", face="native") == 1 and value("parakeet_sessions_active",
                                                                          face="deepgram") == 1
    assert value("parakeet_sessions_opened_total", face="native") == 2
    assert value("parakeet_requests_total", face="native", route="/", status="401") == 2
    assert value("parakeet_audio_seconds_total", face="job") == 30.0
    assert value("parakeet_audio_seconds_total", face="openai_rest") == 5.0
    assert value("parakeet_audio_seconds_total", face="native") == 12.5
    assert value("parakeet_errors_total", face="openai_rest", code="audio_corrupt") == 1
    assert value("parakeet_finished_total", face="openai_rest", kind="batch", outcome="ok") == 1
    assert value("parakeet_finished_total", face="openai_rest", kind="batch", outcome="error") == 1
    # histograms: cumulative buckets (queue wait 0.2 s is above 0.1 and within 0.25), count and sum
    assert value("parakeet_queue_wait_seconds_bucket", face="openai_rest", le="0.1") == 0
    assert value("parakeet_queue_wait_seconds_bucket", face="openai_rest", le="0.25") == 1
    assert value("parakeet_queue_wait_seconds_bucket", face="job", le="0.005") == 1
    assert value("parakeet_inference_seconds_count", face="job") == 1
    assert value("parakeet_inference_seconds_sum", face="openai_rest") == pytest.approx(0.04)
    assert value("parakeet_inference_seconds_bucket", face="openai_rest", le="+Inf") == 1

    openmetrics, kind = exposition(metrics_registry(metrics), "application/openmetrics-text; version=1.0.0")
    assert kind.startswith("application/openmetrics-text") and openmetrics.rstrip().endswith(b"# EOF")


# ---------------------------------------------------------------------------------------------------- report


def _write(path: Path, records: list[RequestRecord], garbage: str = "") -> None:
    path.write_text("".join(r.to_json() + "\n" for r in records) + garbage)


def _fixture_files(tmp_path: Path) -> tuple[Path, list[RequestRecord]]:
    """60 records over 2 hours: the older hour in a rotated backup, 10 % errors, known distributions."""
    end = 1_800_000_000.0
    rng = np.random.default_rng(5)
    records = []
    for i in range(60):
        ts = end - 7200 + i * 120 + 60
        error = "audio_corrupt" if i % 10 == 3 else None
        inference = float(rng.uniform(0.05, 2.0))
        records.append(RequestRecord(
            ts=ts, kind="stream" if i % 4 == 0 else "batch", audio_s=float(10 + i), inference_s=inference,
            queue_wait_s=float(rng.uniform(0, 0.05)), total_s=inference + 0.1,
            rtfx=None if error else round((10 + i) / inference, 2), batch_size=1 + i % 4, active_sessions=i % 7,
            error_code=error, job_id=f"j{i}"))
    path = tmp_path / "metrics.jsonl"
    _write(tmp_path / "metrics.jsonl.1", records[:30], garbage="{not json\n")
    _write(path, records[30:], garbage='{"ts": 1, "kind": "batch"')  # a torn last line
    return path, records


def test_report_summarises_a_window_across_rotated_files(tmp_path: Path) -> None:
    path, records = _fixture_files(tmp_path)
    end = 1_800_000_000.0
    last_hour = [r for r in records if r.ts >= end - 3600]
    report = build_report(path, window_s=3600, end=end)
    assert report.count == len(last_hour) == 30 and report.files[0].endswith("metrics.jsonl.1")
    assert report.errors == sum(1 for r in last_hour if r.error_code) == 3 and report.error_rate == 0.1
    assert report.error_codes == {"audio_corrupt": 3} and report.skipped_lines == 2
    ok = [r for r in last_hour if r.ok]
    for name in ("queue_wait_s", "inference_s", "rtfx", "audio_s", "total_s"):
        values = [getattr(r, name) for r in ok]
        dist = report.stats[name]
        assert dist.count == len(ok)
        for pct, got in zip((50, 95, 99), (dist.p50, dist.p95, dist.p99)):
            assert got == pytest.approx(float(np.percentile(values, pct)), abs=1e-3), (name, pct)
    assert report.audio_hours == pytest.approx(sum(r.audio_s for r in ok) / 3600, abs=1e-4)
    assert report.max_active_sessions == max(r.active_sessions for r in last_hour)
    assert report.by_kind == {"batch": sum(r.kind == "batch" for r in last_hour),
                              "stream": sum(r.kind == "stream" for r in last_hour)}

    everything = build_report(path, window_s=0, end=end)
    assert everything.count == 60 and everything.errors == 6
    streams = build_report(path, window_s=0, end=end, kind="stream")
    assert streams.count == 15 and set(streams.by_kind) == {"stream"}
    text = format_report(report)
    assert "requests: 30 (batch 23, stream 7), errors: 3 (10.0%) [audio_corrupt 3]" in text
    assert "skipped 2 unreadable line(s)" in text
    assert any(line.startswith("RTFx") for line in text.splitlines())


def test_percentile_interpolates_like_numpy() -> None:
    values = sorted(np.random.default_rng(1).exponential(size=97).tolist())
    for pct in (0, 1, 50, 95, 99, 100):
        assert percentile(values, pct) == pytest.approx(float(np.percentile(values, pct)))
    assert percentile([4.0], 99) == 4.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_report_command_prints_text_and_json(tmp_path: Path) -> None:
    path, _ = _fixture_files(tmp_path)
    base = [sys.executable, "-m", "parakeet_worker.observability", "report", str(path), "--end", "1800000000"]
    as_json = subprocess.run([*base, "--window", "3600", "--json"], cwd=REPO, capture_output=True, text=True,
                             timeout=60)
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["count"] == 30 and report["error_rate"] == 0.1 and set(report["stats"]["rtfx"]) >= {"p50", "p99"}
    as_text = subprocess.run([*base, "--window", "0"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert as_text.returncode == 0 and "requests: 60" in as_text.stdout and "p95" in as_text.stdout
    missing = subprocess.run([sys.executable, "-m", "parakeet_worker.observability", "report", str(tmp_path / "none.jsonl")],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no metrics file" in missing.stderr


# ---------------------------------------------------------------------------------------------------- redaction

TOKEN = "tok_Zx81-secretSessionToken"
TRANSCRIPT = "the quick brown fox"


def test_redactor_masks_tokens_credentials_signatures_and_transcripts() -> None:
    from parakeet_worker.observability import Redactor

    redactor = Redactor(secrets=["S3SECRETvalue/abc+123"])
    lines = {
        f"Progress Update: {{'status': 'ready', 'ws_url': 'ws://1.2.3.4:8765/?token={TOKEN}', 'token': '{TOKEN}'}}":
            (TOKEN,),
        f'{{"ws_url": "ws://h:1/?a=1&token={TOKEN}", "token": "{TOKEN}"}}': (TOKEN,),
        f"Handler output: {{'text': '{TRANSCRIPT}', 'segments': [{{'id': 0, 'text': \"fox's den\"}}], "
        f"'timestamps': {{'word': [{{'word': 'quick'}}], 'char': [{{'char': 'q'}}]}}, 'srt': '1\\n{TRANSCRIPT}'}}":
            (TRANSCRIPT, "fox's den", "'quick'", "'q'"),
        f"summary {{'reason': 'stop', 'final_text': '{TRANSCRIPT}', 'accumulated_text': '{TRANSCRIPT}'}}": (TRANSCRIPT,),
        "fetch http://alice:hunter2-Pass@files.test/a.wav failed": ("alice", "hunter2-Pass"),
        "https://b.s3.amazonaws.com/k.wav?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F2024"
        "&X-Amz-Signature=0123456789abcdef": ("AKIAIOSFODNN7EXAMPLE", "0123456789abcdef"),
        "headers {'Authorization': 'AWS4-HMAC-SHA256 Credential=x/y, Signature=feedbeef99'}": ("feedbeef99",),
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig": ("eyJhbGciOiJIUzI1NiJ9",),
        "token=abc123def password: pw-12345 S3SECRETvalue/abc+123": ("abc123def", "pw-12345", "S3SECRETvalue"),
        f'error "{{\\"text\\": \\"{TRANSCRIPT}\\", \\"token\\": \\"{TOKEN}\\"}}"': (TRANSCRIPT, TOKEN),
    }
    for line, secrets in lines.items():
        masked = redactor.redact(line)
        assert "<redacted>" in masked, line
        for secret in secrets:
            assert secret not in masked, (secret, masked)
    harmless = "job j-1 refused: 'output_format' must be one of json, text; OMP_WAIT_POLICY=PASSIVE; no token given"
    assert redactor.redact(harmless) == harmless  # ordinary words, keys and values stay readable
    keeping = Redactor(keep_transcripts=True)
    kept = keeping.redact(f"{{'text': '{TRANSCRIPT}', 'ws_url': 'ws://h/?token={TOKEN}'}}")
    assert TRANSCRIPT in kept and TOKEN not in kept  # the debug setting lets transcripts in, never secrets


def test_every_record_is_masked_before_it_is_written() -> None:
    stream = io.StringIO()
    setup_logging(json_lines=True, stream=stream, environ={"S3_SECRET_KEY": "wJalrXUtnFEMI/K7MDENG", "HOME": "/root"},
                  log_transcripts=False)
    log = logging.getLogger("anything")
    log.info("ready %s", {"ws_url": f"ws://h:1/?token={TOKEN}", "token": TOKEN})  # in the arguments
    log.warning("result", extra={"detail": f"{{'text': '{TRANSCRIPT}'}}"})  # in an extra
    try:
        raise ValueError("could not fetch http://bob:pa55word@h/x.wav with key wJalrXUtnFEMI/K7MDENG")
    except ValueError:
        log.exception("bug")  # in the traceback
    log.info("bad %d format", "not a number")  # arguments that do not fit: logged, masked, never raised
    written = stream.getvalue()
    for secret in (TOKEN, TRANSCRIPT, "pa55word", "wJalrXUtnFEMI/K7MDENG"):
        assert secret not in written, secret
    records = [json.loads(line) for line in _lines(stream)]
    assert len(records) == 4 and "<redacted>" in records[2]["exc"] and "ValueError" in records[2]["exc"]

    text_stream = io.StringIO()
    setup_logging(json_lines=False, stream=text_stream, environ={}, log_transcripts=True)
    log.info("final %s", {"text": TRANSCRIPT, "token": TOKEN})
    assert TRANSCRIPT in text_stream.getvalue() and TOKEN not in text_stream.getvalue()
    setup_logging(json_lines=False, stream=io.StringIO(), environ={"PARAKEET_LOG_TRANSCRIPTS": "1"})
    from parakeet_worker.observability.logs import _redactor

    assert _redactor.keep_transcripts  # the setting, read from the environment when not passed
    setup_logging(json_lines=False, stream=io.StringIO(), environ={"PARAKEET_LOG_TRANSCRIPTS": "maybe"})
    assert not _redactor.keep_transcripts  # an invalid value keeps them out (Settings.from_env reports it)


_SDK_SCRIPT = """
import runpod
from runpod.serverless.modules.rp_logger import RunPodLogger
from parakeet_worker.observability import setup_logging
setup_logging(json_lines=False)
log = RunPodLogger()
log.debug("Sending Progress Update: {'ws_url': 'ws://h:1/?token=%(token)s', 'token': '%(token)s'}", "job-9")
log.info("Handler output: {'text': '%(text)s'}", "job-9")
log.error("Captured Handler Exception", "job-9")
"""


@pytest.mark.parametrize("sdk_level", [None, "DEBUG"])
def test_the_runpod_sdks_own_lines_are_quiet_routed_and_masked(sdk_level: str | None) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "PARAKEET_"))}
    if sdk_level:
        env["RUNPOD_LOG_LEVEL"] = sdk_level  # the operator asked for the SDK's debug lines: masked all the same
    script = _SDK_SCRIPT % {"token": TOKEN, "text": TRANSCRIPT}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert TOKEN not in output and TRANSCRIPT not in output, output
    assert "INFO runpod.sdk: Handler output: {'text': '<redacted>'} [job=job-9]" in done.stderr
    assert "ERROR runpod.sdk: Captured Handler Exception [job=job-9]" in done.stderr
    assert ("Sending Progress Update" in done.stderr) is (sdk_level == "DEBUG")  # INFO unless asked
    assert not done.stdout.strip()  # nothing printed past the log handler
