"""Soak: the real worker under mixed hostile and heavy use for D minutes (issue 14's "Done when").

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m bench.soak --minutes 10 --out soak.json
    .venv/bin/python -m bench.soak --minutes 2            # a short run; bench/test_soak_ci.py is the 60 s check

``rp_handler.py`` runs the RunPod SDK's real job loop against the local platform stand-in
(tests/runpod_platform.py) with the committed test model, and at once, until the deadline:

- ``--streams`` (6) real-time streams, each a chain of ``websocket`` jobs of ``--session-s`` of speech: held-out
  clips with pauses, 20 ms PCM16 frames on an absolute real-time schedule, server endpointing on; half the
  utterances are ended by the client's ``finalize`` 200 ms after the speech (its own VAD), the others by the
  server's endpoint; ``stop`` at the end of each session;
- batch jobs of mixed lengths, two at a time: a 10-minute file (``--long-minutes``) and a 4-minute file by URL,
  a 1-minute file in chunks, short clips (base64, timestamps, subtitles, several ``inputs``);
- connection churn: sessions dropped without a close frame before ``start``, mid-utterance and right after a
  ``finalize``, or closed politely; every such job must still end;
- a hostile client, from an address of its own: bad job inputs and bad audio files, bad JSON, unknown actions,
  a bad ``start``, half a sample, a frame over 1 MiB, guessed tokens.

Judged afterwards, with the worker stopped:

- **lost finals**: every utterance's final must equal its transcript when streamed alone
  (``tests/streams.py``'s ``streamed_alone``, on the utterance's audio exactly as the server cut it: the
  client's finalize positions and the server VAD's endpoints, found by running the same VAD over the same audio);
  each expected non-empty final missing or different counts;
- **failed good jobs** (batch jobs without a transcript, streams whose session did not end with ``stopped``);
- finalize -> final latency (p50 / p95 / p99 / max);
- the worker's RSS at ``--rss-baseline-s`` (minute 2 by default) and at the end, and its growth in percent; a
  watchdog kills the worker above ``--max-rss-mib`` so a leak fails the run, not the machine;
- the worker alive at the end, and its exit code on SIGTERM.

The report is JSON (``--out``), with the machine, the settings and per-session details of any lost final.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import difflib
import io
import json
import os
import random
import signal
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from bench.common import machine_info, out, quiet_nemo
from bench.soak_clients import (
    JOB_TIMEOUT_S,
    SAMPLE_RATE_HZ,
    StreamSession,
    Tally,
    batch_loop,
    churn_loop,
    hostile_loop,
    stream_loop,
)
from testmodel.heldout import MODEL_PATH, build_long_audio, load_heldout
from tests.runpod_platform import FakeRunpodPlatform, run_worker

RSS_SAMPLE_S = 2.0
WORKER_START_TIMEOUT_S = 420.0
DRAIN_TIMEOUT_S = JOB_TIMEOUT_S + 60.0  # the 10-minute file may have started just before the deadline


@dataclass(frozen=True)
class SoakConfig:
    duration_s: float = 600.0
    streams: int = 6
    session_s: float = 60.0  # audio per websocket session before its stop
    long_minutes: float = 10.0
    threads: int = 2
    max_rss_mib: float = 12_000.0  # the watchdog's limit for the worker
    rss_baseline_s: float | None = None  # default: minute 2, or a third of a shorter run
    seed: int = 14
    batch: bool = True  # the batch loops, the churn and the hostile client can be left out (a calibration run:
    churn: bool = True  # with streams alone the worker is idle enough that no final may differ from its reference)
    hostile: bool = True
    worker_env: dict[str, str] = field(default_factory=dict)  # extra settings for the worker

    @property
    def baseline_s(self) -> float:
        return self.rss_baseline_s if self.rss_baseline_s is not None else min(120.0, self.duration_s / 3)


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's signature)
        pass


def _flac(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, SAMPLE_RATE_HZ, format="FLAC")
    return buf.getvalue()


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def _sample_rss(pid: int, t0: float, stop: asyncio.Event, samples: list[tuple[float, float]],
                      max_rss_mib: float, killed: list[float]) -> None:
    """VmRSS of the worker every RSS_SAMPLE_S; above ``max_rss_mib`` the worker is killed (its memory, not the
    machine's, is what a leak should exhaust)."""
    while not stop.is_set():
        rss = _rss_mib(pid)
        if rss is not None:
            samples.append((round(time.monotonic() - t0, 1), round(rss, 1)))
            if rss > max_rss_mib and not killed:
                killed.append(rss)
                os.killpg(pid, signal.SIGKILL)
        try:
            await asyncio.wait_for(stop.wait(), RSS_SAMPLE_S)
        except TimeoutError:
            pass


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if values else None


def _batch_jobs(clips: list[Any], base_url: str, long_minutes: float) -> tuple[list[tuple[str, dict[str, Any]]],
                                                                              list[tuple[str, dict[str, Any]]]]:
    """(long jobs, short jobs); the long list starts with the long file, the stressor of item 2."""
    one_minute = base64.b64encode(_flac(build_long_audio(clips, minutes=1, seed=3).audio)).decode()
    short = [base64.b64encode(_flac(c.audio)).decode() for c in clips[:6]]
    long_jobs = [
        (f"{long_minutes:g}min_url", {"audio_url": f"{base_url}/long.flac"}),
        ("4min_url_timestamps", {"audio_url": f"{base_url}/four.flac", "timestamps": True}),
        ("1min_base64_chunked", {"audio_base64": one_minute, "chunk_long_audio": True, "chunk_duration": 20}),
    ]
    short_jobs = [
        ("clip_timestamps", {"audio_base64": short[0], "timestamps": True}),
        ("clip_srt", {"audio_base64": short[1], "output_format": "srt"}),
        ("clip_text", {"audio_base64": short[2], "output_format": "text"}),
        ("three_inputs", {"inputs": [{"audio_base64": b} for b in short[3:6]]}),
    ]
    return long_jobs, short_jobs


async def _load(platform: FakeRunpodPlatform, config: SoakConfig, clips: list[Any], base_url: str, pid: int,
                tally: Tally, rss: list[tuple[float, float]], killed: list[float]) -> dict[str, Any]:
    rng = random.Random(config.seed)
    t0 = time.monotonic()
    deadline = t0 + config.duration_s
    long_jobs, short_jobs = _batch_jobs(clips, base_url, config.long_minutes)
    stop_sampling = asyncio.Event()
    sampler = asyncio.create_task(_sample_rss(pid, t0, stop_sampling, rss, config.max_rss_mib, killed))
    tasks = [asyncio.create_task(stream_loop(platform, i, clips, deadline, config.session_s, tally,
                                             random.Random(rng.randrange(1 << 30)))) for i in range(config.streams)]
    churn_rng = random.Random(rng.randrange(1 << 30))
    if config.batch:
        tasks += [asyncio.create_task(batch_loop(platform, jobs, deadline, tally)) for jobs in (long_jobs, short_jobs)]
    if config.churn:
        tasks.append(asyncio.create_task(churn_loop(platform, clips, deadline, tally, churn_rng)))
    if config.hostile:
        tasks.append(asyncio.create_task(hostile_loop(platform, _flac(clips[0].audio), deadline, tally)))
    done, pending = await asyncio.wait(tasks, timeout=config.duration_s + DRAIN_TIMEOUT_S)
    for task in pending:
        task.cancel()
    crashed = [repr(t.exception()) for t in done if t.exception() is not None]
    stop_sampling.set()
    await sampler
    return {"load_s": round(time.monotonic() - t0, 1), "clients_unfinished": len(pending), "clients_crashed": crashed}


def _expected_finals(engine: Any, vad: Any, session: StreamSession) -> list[tuple[float, float, str, str, bool]]:
    """The finals a session should have got, as (start s, end s, how it ends, text, optional): its audio cut where the
    server cut it (the client's finalizes; the endpoints of the session's VAD, run over the same audio), each
    utterance streamed alone on a recognizer of its own, its final pass stopped where the session's VAD puts it
    (``EarlyPasses.pass_end``), and not decoded where the server does not decode it (a finalize or stop with no
    speech heard since the last endpoint and no word committed: ``StreamManager._has_speech_to_decode``).

    A finalize or stop of a part in which the VAD heard no speech is decoded by the server only if a partial step
    had committed a word before it (noise the model reads as a word), which depends on whether a step ran before the
    request, i.e. on load: such a final is ``optional`` — expected if it comes, not lost if it does not."""
    from parakeet_worker.model import Recognizer
    from parakeet_worker.streaming import StreamingRecognizer
    from parakeet_worker.streaming.manager import utterance_parts
    from parakeet_worker.streaming.vad import EndpointConfig

    audio = session.audio
    cuts = vad.new_stream(EndpointConfig())
    endpoints: list[int] = []
    previous = 0
    for i, bound in enumerate([*session.finalize_at, audio.shape[0]]):
        endpoints += [previous + c for c in vad.process([cuts], [audio[previous:bound]])[0]]
        if i < len(session.finalize_at):  # the server restarts the endpointer at each finalize
            cuts.restart_endpointer()
        previous = bound
    parts = utterance_parts(audio, endpoints, list(session.finalize_at), stop=True)
    streamer = StreamingRecognizer(Recognizer(engine.loaded), engine.options.streaming)
    early_final_s = engine.stream_geometry.early_final_s
    session_vad = vad.new_stream(EndpointConfig())  # the session's VAD, fed up to each utterance's end
    out: list[tuple[float, float, str, str, bool]] = []
    start = 0
    for part, reason in parts:
        end = start + part.shape[0]
        vad.process([session_vad], [audio[start:end]])
        state = streamer.new_stream()
        streamer.accept(state, part)
        pause = session_vad.pause_end(end, early_final_s) if early_final_s > 0 else None
        state.pass_end = pause - start if pause is not None and pause > start else None
        while streamer.ready(state):
            streamer.step([state])
        certain = reason == "endpoint" or session_vad.heard_speech
        decoded = part.size > 0 and (certain or bool(state.words))
        text = streamer.finalize([state])[0].committed_text if decoded else ""
        if reason == "endpoint":
            session_vad.reset_endpoint()
        elif reason == "finalize":
            session_vad.restart_endpointer()
        out.append((start / SAMPLE_RATE_HZ, end / SAMPLE_RATE_HZ, str(reason), text, not certain))
        start = end
    return out


def _judge_streams(sessions: list[StreamSession], worker_env: dict[str, str]) -> dict[str, Any]:
    from parakeet_worker.config import Settings
    from parakeet_worker.engine import ParakeetEngine
    from parakeet_worker.serving.options import worker_options
    from parakeet_worker.streaming import BatchedVad

    settings = Settings.from_env({**worker_env, "PARAKEET_WARMUP": "0"})
    engine = ParakeetEngine.from_settings(settings, worker_options(settings).engine)
    vad = BatchedVad()
    lost = wrong = expected_n = received_n = failed = text_mismatch = optional_n = optional_skipped = 0
    details: list[dict[str, Any]] = []
    errors: Counter[str] = Counter()
    stopped_codes: Counter[str] = Counter()
    try:
        for s in sessions:
            parts = _expected_finals(engine, vad, s)
            wanted = [(text, optional) for *_, text, optional in parts if text]
            expected = [text for text, _ in wanted]
            received = [f["text"] for f in s.finals if f["text"]]
            blocks = difflib.SequenceMatcher(None, expected, received, autojunk=False).get_matching_blocks()
            hit = {b.a + i for b in blocks for i in range(b.size)}
            matched = len(hit)
            missing = sum(1 for i, (_, optional) in enumerate(wanted) if i not in hit and not optional)
            optional_missing = sum(1 for i, (_, optional) in enumerate(wanted) if i not in hit and optional)
            expected_n, received_n = expected_n + len(expected) - optional_missing, received_n + len(received)
            optional_n += sum(optional for _, optional in wanted)
            optional_skipped += optional_missing
            lost, wrong = lost + missing, wrong + len(received) - matched
            errors.update(s.errors)
            if s.stopped is not None and s.stopped.get("error_code"):  # the server says the session lost something
                stopped_codes[s.stopped["error_code"]] += 1
            ok_end = s.stopped is not None and s.failure is None
            failed += not ok_end
            joined = " ".join(received)
            mismatch = s.stopped is not None and (s.stopped.get("final_text") != joined or (
                s.summary is not None and s.summary.get("final_text") != s.stopped.get("final_text")))
            text_mismatch += mismatch
            if missing or matched < len(received) or not ok_end or mismatch:
                details.append({"stream": s.stream, "audio_s": round(s.audio.shape[0] / SAMPLE_RATE_HZ, 2),
                                "failure": s.failure, "errors": s.errors,
                                "expected": [(round(a, 2), round(b, 2), r, t, o) for a, b, r, t, o in parts],
                                "received": [(f["utterance"], f["reason"], f["audio_end"], f["text"])
                                             for f in s.finals],
                                "finalize_at_s": [round(x / SAMPLE_RATE_HZ, 2) for x in s.finalize_at],
                                "stopped": None if s.stopped is None else {
                                    k: s.stopped.get(k) for k in ("reason", "final_text", "utterances", "error_code")}})
    finally:
        engine.close()
    latencies = [x for s in sessions for x in s.finalize_latency_s]
    return {
        "sessions": len(sessions), "sessions_failed": failed, "finals_expected": expected_n,
        "finals_received": received_n, "lost_finals": lost, "wrong_finals": wrong,
        "optional_finals": optional_n, "optional_finals_not_sent": optional_skipped,
        "final_text_mismatches": text_mismatch, "error_codes": dict(errors),
        "stopped_error_codes": dict(stopped_codes),
        "finalize_to_final_ms": {"count": len(latencies), **{
            name: None if v is None else round(v * 1000, 1)
            for name, v in (("p50", _pct(latencies, 50)), ("p95", _pct(latencies, 95)), ("p99", _pct(latencies, 99)),
                            ("max", max(latencies) if latencies else None))}},
        "details": details[:20],
    }


def _rss_report(rss: list[tuple[float, float]], baseline_s: float, killed: list[float]) -> dict[str, Any]:
    if not rss:
        return {"samples": 0}
    baseline = next((mib for t, mib in rss if t >= baseline_s), rss[-1][1])
    end = rss[-1][1]
    step = max(1, len(rss) // 60)
    # RSS swings by a gigabyte with what is in flight (a 10-minute file's decode and forward): one sample at minute 2
    # against one at the end measures the load of those two moments. The growth that tells a leak from a working
    # set is the median of the minute from the baseline against the median of the last minute.
    last_t = rss[-1][0]
    first_window = [m for t, m in rss if baseline_s <= t < baseline_s + 60] or [baseline]
    last_window = [m for t, m in rss if t > last_t - 60 and t >= baseline_s] or [end]
    first_med, last_med = statistics.median(first_window), statistics.median(last_window)
    return {"baseline_at_s": baseline_s, "baseline_mib": baseline, "end_mib": end, "peak_mib": max(m for _, m in rss),
            "growth_pct": round((end - baseline) / baseline * 100, 2),
            "median_first_minute_mib": round(first_med, 1), "median_last_minute_mib": round(last_med, 1),
            "median_growth_pct": round((last_med - first_med) / first_med * 100, 2),
            "killed_at_mib": killed[0] if killed else None, "series": rss[::step]}


def run_soak(config: SoakConfig, log_dir: Path | None = None) -> dict[str, Any]:
    """Run the soak and return its report (see the module docstring)."""
    clips = load_heldout()
    tally = Tally()
    rss: list[tuple[float, float]] = []
    killed: list[float] = []
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        root = Path(tmp)
        www = root / "www"
        www.mkdir()
        sf.write(www / "long.flac", build_long_audio(clips, minutes=config.long_minutes).audio, SAMPLE_RATE_HZ)
        sf.write(www / "four.flac", build_long_audio(clips, minutes=4, seed=5).audio, SAMPLE_RATE_HZ)
        files = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietFiles, directory=str(www)))
        threading.Thread(target=files.serve_forever, daemon=True).start()
        env = {"PARAKEET_MODEL": str(MODEL_PATH), "PARAKEET_ALLOW_PRIVATE_URLS": "1", "PARAKEET_CONCURRENCY": "32",
               "PARAKEET_CPU_THREADS": str(config.threads), "PARAKEET_WS_HOST": "127.0.0.1", "PARAKEET_WS_PORT": "0",
               "OMP_WAIT_POLICY": "PASSIVE", "PARAKEET_METRICS_FILE": str(root / "metrics.jsonl"),
               **config.worker_env}
        logs = log_dir or root
        with FakeRunpodPlatform() as platform, run_worker("rp_handler.py", platform, env, log_dir=logs) as proc:
            try:
                platform.wait_for_worker(WORKER_START_TIMEOUT_S)
            except TimeoutError as exc:
                raise RuntimeError(f"the worker did not start: {exc}\n{proc.log_tail()}") from exc
            load = asyncio.run(_load(platform, config, clips, f"http://127.0.0.1:{files.server_address[1]}",
                                     proc.process.pid, tally, rss, killed))
            alive = proc.is_alive()
            exit_code = proc.stop()
            protocol_errors = platform.protocol_errors()
            log_tail = proc.log_tail(3000)
        files.shutdown()
    quiet_nemo()
    streams = _judge_streams(tally.sessions, env)
    batch_failed = [r for r in tally.batch if not r["ok"]]
    by_kind: dict[str, dict[str, Any]] = {}
    for row in tally.batch:
        entry = by_kind.setdefault(row["kind"], {"jobs": 0, "failed": 0, "seconds": []})
        entry["jobs"] += 1
        entry["failed"] += not row["ok"]
        entry["seconds"].append(row["seconds"])
    for entry in by_kind.values():
        entry["p50_s"], entry["max_s"] = _pct(entry["seconds"], 50), max(entry["seconds"])
        del entry["seconds"]
    report = {
        "machine": machine_info(), "config": asdict(config), **load,
        "worker_alive_at_end": alive, "worker_exit_code_on_sigterm": exit_code,
        "platform_protocol_errors": protocol_errors,
        "lost_finals": streams["lost_finals"],
        "failed_good_jobs": len(batch_failed) + streams["sessions_failed"],
        "finalize_p99_ms": streams["finalize_to_final_ms"]["p99"],
        "rss": _rss_report(rss, config.baseline_s, killed),
        "streams": streams,
        "batch": {"jobs": len(tally.batch), "failed": len(batch_failed), "by_kind": by_kind,
                  "failures": [{k: r.get(k) for k in ("kind", "error", "seconds")} for r in batch_failed][:20]},
        "churn": dict(tally.churn), "hostile": dict(tally.hostile), "hostile_unexpected": tally.hostile_unexpected,
        "hostile_accepted_damaged_audio": tally.accepted_damaged,
    }
    if not alive or killed:
        report["worker_log_tail"] = log_tail
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--streams", type=int, default=6)
    parser.add_argument("--session-s", type=float, default=60.0, help="audio per websocket session")
    parser.add_argument("--long-minutes", type=float, default=10.0, help="the long batch file")
    parser.add_argument("--threads", type=int, default=2, help="the worker's PARAKEET_CPU_THREADS")
    parser.add_argument("--max-rss-mib", type=float, default=12_000.0, help="kill the worker above this RSS")
    parser.add_argument("--rss-baseline-s", type=float, default=None, help="default: minute 2 (or a third)")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--no-batch", action="store_true", help="leave the batch jobs out")
    parser.add_argument("--no-churn", action="store_true", help="leave the connection churn out")
    parser.add_argument("--no-hostile", action="store_true", help="leave the hostile client out")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    args = parser.parse_args(argv)
    config = SoakConfig(duration_s=args.minutes * 60, streams=args.streams, session_s=args.session_s,
                        long_minutes=args.long_minutes, threads=args.threads, max_rss_mib=args.max_rss_mib,
                        rss_baseline_s=args.rss_baseline_s, seed=args.seed, batch=not args.no_batch,
                        churn=not args.no_churn, hostile=not args.no_hostile)
    report = run_soak(config)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text)
    rss = report["rss"]
    out(json.dumps({k: report[k] for k in ("lost_finals", "failed_good_jobs", "finalize_p99_ms",
                                             "worker_alive_at_end")}
                   | {"rss_baseline_mib": rss.get("baseline_mib"), "rss_end_mib": rss.get("end_mib"),
                      "rss_growth_pct": rss.get("growth_pct")}))
    if not args.out:
        out(text)
    ok = report["lost_finals"] == 0 and report["failed_good_jobs"] == 0 and report["worker_alive_at_end"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
