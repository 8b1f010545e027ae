"""The faces side by side (issue 15's "Numbers"): finalize latency per live face, REST vs job throughput, LB start.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m bench.faces --sessions 8 --out faces.json      # all three parts
    .venv/bin/python -m bench.faces latency --sessions 8 --seconds 40 --cycles 2
    .venv/bin/python -m bench.faces latency --faces native,riva --end endpoint --sessions 8 --cycles 2
    .venv/bin/python -m bench.faces rest --rest-clients 4 --rounds 4
    .venv/bin/python -m bench.faces lb_start --lb-runs 3

Every part runs the real worker as its own process with the committed test model and the worker's default options
(``PARAKEET_CPU_THREADS=--threads``, ``OMP_WAIT_POLICY=PASSIVE``, metrics file off); the clients are this process.

- ``latency``: the standalone server (``websocket_handler.py --token``, its gRPC port on ``--grpc-port``) and
  ``--sessions`` real-time sessions at once, in rounds: in round r session s speaks face ``(s + r) % len(faces)`` of
  ``--faces`` (default native / Deepgram / Realtime; ``riva`` is the gRPC face), so each round mixes the faces and,
  over a cycle of one round per face, every session's audio (held-out clips and 1.2 s pauses, the same PCM16 bytes
  at 16 kHz on every face, the same start offset) goes once through each face. ``--end client`` (default): 200 ms
  after each clip's speech the client ends the utterance — native ``finalize``, Deepgram ``Finalize``
  (``endpointing=false``), Realtime ``input_audio_buffer.commit`` (``turn_detection: null``), Riva
  ``runtime_config={"force_eou": "true"}`` (``stop_history`` at its 10 s maximum) — and measures the time to its
  final (the ``from_finalize`` final; ``.completed``; the ``is_final`` result). ``--end endpoint``: the client never
  ends an utterance; the server's VAD does, with a 320 ms silence window on every face (native ``endpointing:
  true, endpoint_silence_ms: 320``, Deepgram ``endpointing=320``, Realtime ``server_vad`` with ``silence_duration_ms:
  320``, Riva ``endpointing_config.stop_history=320``), and the latency runs from sending the frame that holds the
  clip's last voiced sample (|x| > 0.02) to the final; finals are assigned to utterances by when they arrive
  (bench/faces_clients.py ``match_finals``), and an utterance without a final or a final left over is counted, not
  shifted onto the next. Reported per face: p50/p95/p99/max and the missing / extra finals; per other face: its
  p50 and p95 less native's, and the same-utterance differences (face - native on the same audio in the same
  cycle); whether the finals of each utterance are identical on every face. Target: within 10 ms (p50) and 20 ms
  (p95) of native.
- ``rest``: one worker process as ``rp_handler.py`` builds it (engine, one batch service, the app with every face,
  the RunPod SDK's local API ``/runsync``), plus a token on its app; the held-out clips (their FLAC files) through
  ``POST /v1/audio/transcriptions`` and through ``/runsync`` (``audio_base64``), ``--rest-clients`` concurrent
  clients, each path in turn (ABBA order) after one warm-up pass each. Reported: audio seconds per second of each
  path, the ratio REST / job (target >= 0.9) and whether every clip's transcript is identical on both.
- ``lb_start``: ``PARAKEET_RUNPOD_MODE=lb python rp_handler.py`` started ``--lb-runs`` times; from the process's
  start, the first ``/ping`` answer (204: loading) and the first 200 (ready), polled every 20 ms; medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import machine_info, out
from bench.faces_clients import (
    FACE_NAMES,
    FRAME_S,
    SAMPLE_RATE_HZ,
    PassResult,
    ServerTarget,
    SessionPlan,
    SessionResult,
    Upload,
    job_body,
    run_session,
    transcribe_all,
)
from bench.faces_riva import CLIENTS
from testmodel.heldout import HELDOUT_DIR, MODEL_PATH, load_heldout

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-faces-token"
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.02  # /ping and readiness polling
CLIENT_VAD_WAIT_S = 0.2  # the client ends an utterance this long after its speech (its own VAD)
ENDPOINT_MS = 320  # --end endpoint: the server VAD's silence window on every face (Pipecat's Riva stop_history)
VOICED_ABOVE = 0.02  # a sample louder than this is speech (where a clip's speech begins and ends)
TARGET_P50_MS, TARGET_P95_MS = 10.0, 20.0  # a face's finalize latency over native's
TARGET_REST_RATIO = 0.9


# --- worker processes -------------------------------------------------------------------------------------------
def worker_env(threads: int, **extra: str) -> dict[str, str]:
    """The worker's environment: the test model, default options, no platform variables inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "PARAKEET_"))}
    env.update(PARAKEET_MODEL=str(MODEL_PATH), PARAKEET_CPU_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE",
               PARAKEET_METRICS_FILE="off", PARAKEET_WS_HOST="127.0.0.1", PARAKEET_API_TOKEN=TOKEN, **extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def worker_process(args: list[str], env: Mapping[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -u ARGS`` in the repository, its output in ``log_path``; SIGTERM (then SIGKILL) at the end."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-u", *args], cwd=REPO, env=dict(env), stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT_S)


def _log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def wait_until(check: Callable[[], bool], proc: subprocess.Popen[bytes], log_path: Path, what: str) -> float:
    """Poll ``check`` every POLL_S until true; the seconds it took. Fails with the worker's log if it exits."""
    t0 = time.monotonic()
    while not check():
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited ({proc.returncode}) before {what}:\n{_log_tail(log_path)}")
        if time.monotonic() - t0 > START_TIMEOUT_S:
            raise RuntimeError(f"no {what} within {START_TIMEOUT_S:.0f} s:\n{_log_tail(log_path)}")
        time.sleep(POLL_S)
    return time.monotonic() - t0


def http_status(url: str) -> int:
    """The status of ``GET url``; 0 when nothing answers."""
    try:
        return httpx.get(url, timeout=2.0).status_code
    except httpx.TransportError:
        return 0


def _ms(values_s: list[float], q: float) -> float | None:
    return round(float(np.percentile(values_s, q)) * 1000, 1) if values_s else None


def _ms_stats(values_s: list[float]) -> dict[str, Any]:
    return {"count": len(values_s), "p50": _ms(values_s, 50), "p95": _ms(values_s, 95), "p99": _ms(values_s, 99),
            "max": _ms(values_s, 100)}


# --- part 1: finalize latency per face ----------------------------------------------------------------------------
def voiced_frames(clip: np.ndarray, offset: int) -> tuple[int, int]:
    """The frames (0-based, of the session) holding the first and the last voiced sample of a clip that starts at
    sample ``offset``."""
    voiced = np.nonzero(np.abs(clip) > VOICED_ABOVE)[0]
    step = int(FRAME_S * SAMPLE_RATE_HZ)
    return (offset + int(voiced[0])) // step, (offset + int(voiced[-1])) // step


def session_plans(clips: list[Any], sessions: int, seconds: float, seed: int) -> list[SessionPlan]:
    """One plan per session (as bench/streaming_sessions.py builds its sessions): held-out clips separated by
    1.2 s pauses with a noise floor, as PCM16 bytes, each utterance ended 200 ms after its speech (client-ended),
    with the frames where each clip's speech begins and ends (server-endpointed)."""
    import random

    from bench.streaming_sessions import GAP_S, session_audio
    from client import pcm16

    rng = random.Random(seed)
    plans = []
    for _ in range(sessions):
        audio, speech_ends, used = session_audio(clips, seconds, rng)
        frames = math.ceil(audio.shape[0] / (FRAME_S * SAMPLE_RATE_HZ))
        ends = tuple(n for n in (math.ceil((end + CLIENT_VAD_WAIT_S) / FRAME_S - 1e-6) for end in speech_ends)
                     if n <= frames)
        offsets = np.cumsum([0] + [len(c.audio) + int(GAP_S * SAMPLE_RATE_HZ) for c in used])
        assert offsets[-1] == audio.shape[0], "the clips and pauses tile the session's audio"
        voiced = [voiced_frames(c.audio, int(offset)) for c, offset in zip(used, offsets)]
        plans.append(SessionPlan(pcm=pcm16(audio), end_after_frames=ends, delay_s=rng.uniform(0.0, 1.0),
                                 speech_start_frames=tuple(a for a, _ in voiced),
                                 speech_end_frames=tuple(b for _, b in voiced)))
    return plans


async def _latency_rounds(target: ServerTarget, plans: list[SessionPlan], faces: tuple[str, ...], cycles: int,
                          endpoint_ms: int | None, progress: Callable[[str], None]
                          ) -> list[tuple[int, list[SessionResult]]]:
    rounds = []
    for cycle in range(cycles):
        for r in range(len(faces)):
            spoken = [faces[(s + r) % len(faces)] for s in range(len(plans))]
            results = await asyncio.gather(*(run_session(CLIENTS[face](target, endpoint_ms), s, plan)
                                             for s, (face, plan) in enumerate(zip(spoken, plans))))
            rounds.append((cycle, list(results)))
            progress(f"latency: cycle {cycle + 1}/{cycles}, round {r + 1}/{len(faces)} done")
    return rounds


def latency_summary(rounds: list[tuple[int, list[SessionResult]]], face_names: tuple[str, ...] = FACE_NAMES
                    ) -> dict[str, Any]:
    """Per face, the latency distribution and the utterances without a final (finals left over); per other face,
    its distance from native (of the percentiles, and paired on the same utterance); whether the finals of the same
    utterance are identical across faces."""
    by_face: dict[str, list[float]] = {face: [] for face in face_names}
    utterances: dict[tuple[int, int, int], dict[str, tuple[float, str]]] = {}
    errors: dict[str, list[str]] = {face: [] for face in face_names}
    counts = {face: {"missing_finals": 0, "extra_finals": 0, "empty_finals": 0} for face in face_names}
    failures: list[str] = []
    for cycle, results in rounds:
        for res in results:
            by_face[res.face] += res.latency_s
            errors[res.face] += res.errors
            counts[res.face]["missing_finals"] += res.missing
            counts[res.face]["extra_finals"] += res.extra
            counts[res.face]["empty_finals"] += res.empty
            if res.failure:
                failures.append(f"{res.face} session {res.session}: {res.failure}")
            for j, latency, text in zip(res.utterances, res.latency_s, res.finals):
                utterances.setdefault((cycle, res.session, j), {})[res.face] = (latency, text)
    faces: dict[str, Any] = {face: {**_ms_stats(v), "errors": sorted(set(errors[face])),
                                    "error_count": len(errors[face]), **counts[face]} for face, v in by_face.items()}
    versus: dict[str, Any] = {}
    for face in (f for f in face_names if f != "native" and "native" in face_names):
        native = faces["native"]
        diffs = [u[face][0] - u["native"][0] for u in utterances.values() if face in u and "native" in u]
        p50, p95 = (None if faces[face][q] is None or native[q] is None else round(faces[face][q] - native[q], 1)
                    for q in ("p50", "p95"))
        versus[face] = {"p50_minus_native_ms": p50, "p95_minus_native_ms": p95,
                        "paired_diff_ms": {"count": len(diffs), "p50": _ms(diffs, 50), "p95": _ms(diffs, 95),
                                           "mean": round(statistics.fmean(diffs) * 1000, 1) if diffs else None},
                        "meets_target": p50 is not None and p95 is not None and p50 <= TARGET_P50_MS
                        and p95 <= TARGET_P95_MS}
    complete = [u for u in utterances.values() if len(u) == len(face_names)]
    differing = [{face: u[face][1] for face in face_names} for u in complete
                 if len({u[face][1] for face in face_names}) > 1]
    return {"faces": faces, "versus_native": versus,
            "target_ms": {"p50": TARGET_P50_MS, "p95": TARGET_P95_MS},
            "finals": {"utterances_on_all_faces": len(complete), "identical": len(complete) - len(differing),
                       "differing_examples": differing[:5]},
            "session_failures": failures}


def run_latency(args: argparse.Namespace, clips: list[Any], tmp: Path, progress: Callable[[str], None]
                ) -> dict[str, Any]:
    plans = session_plans(clips, args.sessions, args.seconds, args.seed)
    faces: tuple[str, ...] = tuple(args.faces)
    endpoint_ms = ENDPOINT_MS if args.end == "endpoint" else None
    port, grpc_port = free_port(), free_port()
    log_path = tmp / "standalone.log"
    command = ["websocket_handler.py", "--host", "127.0.0.1", "--port", str(port), "--grpc-port", str(grpc_port),
               "--token", TOKEN]
    with worker_process(command, worker_env(args.threads), log_path) as proc:
        start_s = wait_until(lambda: http_status(f"http://127.0.0.1:{port}/readyz") == 200 and _listening(grpc_port),
                             proc, log_path, "/readyz 200 and the gRPC port listening")
        progress(f"latency: standalone server ready in {start_s:.1f} s")
        target = ServerTarget(f"ws://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", TOKEN)
        rounds = asyncio.run(_latency_rounds(target, plans, faces, args.cycles, endpoint_ms, progress))
    spoken = sum(len(p.speech_end_frames) for p in plans)
    return {"sessions": args.sessions, "seconds_per_session": args.seconds, "cycles": args.cycles,
            "rounds": len(rounds), "faces_compared": list(faces), "end": args.end,
            "endpoint_silence_ms": endpoint_ms,
            "utterances_per_cycle": sum(len(p.end_after_frames) for p in plans) if endpoint_ms is None else spoken,
            **latency_summary(rounds, faces)}


# --- part 2: REST vs job throughput -------------------------------------------------------------------------------
def serve_job_api(api_port: int) -> None:
    """The worker process of the ``rest`` part: what ``rp_handler.py``'s ``main`` builds (the engine, one batch
    service shared by the jobs and the app's HTTP faces, the app with every face on ``PARAKEET_WS_PORT``), with
    ``PARAKEET_API_TOKEN`` admitted on the app as the standalone server admits it, and the jobs served by the RunPod
    SDK's local API (``--rp_serve_api``: ``/runsync``) on ``api_port``."""
    import runpod

    from parakeet_worker.config import Settings
    from parakeet_worker.engine import ParakeetEngine
    from parakeet_worker.observability import setup_logging
    from parakeet_worker.serving.batch import BatchService
    from parakeet_worker.serving.options import worker_options
    from parakeet_worker.serving.runpod_handler import TranscriptionService
    from parakeet_worker.serving.ws_server import ServerThread, StreamServer

    setup_logging()
    settings = Settings.from_env()
    options = worker_options(settings)
    engine = ParakeetEngine.from_settings(settings, options.engine)
    batch = BatchService(engine, settings, options=options)
    thread = ServerThread(StreamServer(engine, settings, options.server, batch=batch))
    streams = thread.start()
    streams.grant(None, token=settings.api_token, multi_use=True)
    service = TranscriptionService(engine, settings, streams, options=options, batch=batch)
    sys.argv = [sys.argv[0], "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(api_port)]
    try:
        runpod.serverless.start({"handler": service.handle, "concurrency_modifier": service.concurrency})
    finally:
        thread.shutdown(STOP_TIMEOUT_S)
        batch.close()
        engine.close()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def rest_summary(passes: list[PassResult], uploads: list[Upload]) -> dict[str, Any]:
    audio_s = sum(u.seconds for u in uploads)
    paths: dict[str, Any] = {}
    for path in ("job", "rest"):
        mine = [p for p in passes if p.path == path]
        wall = sum(p.wall_s for p in mine)
        requests = [x for p in mine for x in p.request_s]
        paths[path] = {"passes": len(mine), "wall_s": round(wall, 2),
                       "audio_s_per_s": round(audio_s * len(mine) / wall, 2) if wall else None,
                       "clips_per_s": round(len(uploads) * len(mine) / wall, 2) if wall else None,
                       "per_pass_audio_s_per_s": [round(audio_s / p.wall_s, 2) for p in mine],
                       "request_ms": _ms_stats(requests), "failures": [f for p in mine for f in p.failures][:10]}
    job, rest = paths["job"]["audio_s_per_s"], paths["rest"]["audio_s_per_s"]
    ratio = round(rest / job, 3) if job and rest else None
    differing = [u.name for u in uploads if len({p.texts.get(u.name) for p in passes}) > 1]
    return {**paths, "ratio_rest_over_job": ratio, "target_ratio": TARGET_REST_RATIO,
            "meets_target": ratio is not None and ratio >= TARGET_REST_RATIO,
            "transcripts_identical": not differing and all(len(p.texts) == len(uploads) for p in passes),
            "clips_with_differing_transcripts": differing[:10]}


def run_rest(args: argparse.Namespace, clips: list[Any], tmp: Path, progress: Callable[[str], None]
             ) -> dict[str, Any]:
    chosen = clips[: args.clips] if args.clips else clips
    uploads = [Upload(c.name, (HELDOUT_DIR / c.name).read_bytes(), c.seconds) for c in chosen]
    bodies = [job_body(u) for u in uploads]
    ws_port, api_port = free_port(), free_port()
    log_path = tmp / "job-api-worker.log"
    env = worker_env(args.threads, PARAKEET_WS_PORT=str(ws_port))
    with worker_process(["-m", "bench.faces", "--serve-job-api", str(api_port)], env, log_path) as proc:
        wait_until(lambda: http_status(f"http://127.0.0.1:{ws_port}/readyz") == 200 and _listening(api_port), proc,
                   log_path, "the app ready and /runsync listening")
        bases = {"rest": f"http://127.0.0.1:{ws_port}", "job": f"http://127.0.0.1:{api_port}"}

        def one_pass(path: str, subset: list[Upload], subset_bodies: list[bytes]) -> PassResult:
            return asyncio.run(transcribe_all(path, subset, subset_bodies, bases[path], TOKEN, args.rest_clients))

        warm = min(len(uploads), 2 * args.rest_clients)
        for path in ("job", "rest"):
            one_pass(path, uploads[:warm], bodies[:warm])
        passes = []
        for r in range(args.rounds):
            for path in (("job", "rest") if r % 2 == 0 else ("rest", "job")):
                passes.append(one_pass(path, uploads, bodies))
                progress(f"rest: round {r + 1}/{args.rounds}, {path} pass in {passes[-1].wall_s:.1f} s")
    return {"clips": len(uploads), "audio_s": round(sum(u.seconds for u in uploads), 1),
            "clients": args.rest_clients, "rounds": args.rounds, **rest_summary(passes, uploads)}


# --- part 3: load-balancing start ---------------------------------------------------------------------------------
def lb_start_once(args: argparse.Namespace, log_path: Path) -> dict[str, Any]:
    """One start of the load-balancing worker: seconds from the process's start to its first ``/ping`` answer (and
    that answer's status) and to the first 200; then SIGTERM and its exit code."""
    port = free_port()
    env = worker_env(args.threads, PARAKEET_RUNPOD_MODE="lb", PORT=str(port))
    first: list[tuple[float, int]] = []
    t0 = time.monotonic()
    with worker_process(["rp_handler.py"], env, log_path) as proc:
        def ready() -> bool:
            code = http_status(f"http://127.0.0.1:{port}/ping")
            if code and not first:
                first.append((time.monotonic() - t0, code))
            return code == 200

        wait_until(ready, proc, log_path, "/ping 200")
        ready_s = time.monotonic() - t0
        proc.send_signal(signal.SIGTERM)
        exit_code = proc.wait(STOP_TIMEOUT_S)
    return {"first_ping_s": round(first[0][0], 3), "first_ping_status": first[0][1], "ping_200_s": round(ready_s, 3),
            "exit_code_on_sigterm": exit_code}


def run_lb_start(args: argparse.Namespace, tmp: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    runs = []
    for i in range(args.lb_runs):
        runs.append(lb_start_once(args, tmp / f"lb-{i}.log"))
        progress(f"lb_start: run {i + 1}/{args.lb_runs}: /ping 200 after {runs[-1]['ping_200_s']:.2f} s")
    first_204 = [r["first_ping_s"] for r in runs if r["first_ping_status"] == 204]
    return {"runs": runs, "median_ping_200_s": round(statistics.median(r["ping_200_s"] for r in runs), 3),
            "median_first_204_s": round(statistics.median(first_204), 3) if first_204 else None,
            "poll_interval_s": POLL_S}


# --- the command ----------------------------------------------------------------------------------------------------
PARTS = ("latency", "rest", "lb_start")


def failed(report: Mapping[str, Any]) -> bool:
    """Something broke (not: a target missed): a session that did not end cleanly, a failed request or start."""
    latency, rest, lb = report.get("latency"), report.get("rest"), report.get("lb_start")
    return bool((latency and latency["session_failures"])
                or (rest and (rest["job"]["failures"] or rest["rest"]["failures"]))
                or (lb and any(r["exit_code_on_sigterm"] != 0 for r in lb["runs"])))


def _faces(value: str) -> tuple[str, ...]:
    faces = tuple(dict.fromkeys(f.strip() for f in value.split(",") if f.strip()))
    unknown = sorted(set(faces) - set(CLIENTS))
    if not faces or unknown:
        raise argparse.ArgumentTypeError(f"{value!r}: name one or more faces, comma-separated, of "
                                         f"{', '.join(CLIENTS)}")
    return faces


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", default=list(PARTS), help=f"which parts to run: {', '.join(PARTS)} "
                        "(default: all)")
    parser.add_argument("--sessions", type=int, default=8, help="latency: real-time sessions at once")
    parser.add_argument("--seconds", type=float, default=40.0, help="latency: audio per session")
    parser.add_argument("--cycles", type=int, default=1, help="latency: cycles of one round per face")
    parser.add_argument("--faces", type=_faces, default=FACE_NAMES, help="latency: the live faces compared, "
                        f"comma-separated, of {', '.join(CLIENTS)} (default: {','.join(FACE_NAMES)})")
    parser.add_argument("--end", choices=("client", "endpoint"), default="client", help="latency: who ends the "
                        f"utterances: the client (finalize and its kin) or the server's VAD ({ENDPOINT_MS} ms)")
    parser.add_argument("--clips", type=int, default=0, help="rest: the first N held-out clips (0: all)")
    parser.add_argument("--rest-clients", type=int, default=4, help="rest: concurrent clients")
    parser.add_argument("--rounds", type=int, default=4, help="rest: passes of each path (ABBA order)")
    parser.add_argument("--lb-runs", type=int, default=3, help="lb_start: worker starts")
    parser.add_argument("--threads", type=int, default=2, help="the worker's PARAKEET_CPU_THREADS")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="the report as one JSON line, no progress lines")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    parser.add_argument("--serve-job-api", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}: choose from {', '.join(PARTS)}")
    if args.serve_job_api is not None:
        serve_job_api(args.serve_job_api)
        return 0

    def progress(line: str) -> None:
        if not args.json:
            out(line, file=sys.stderr)

    clips = load_heldout()
    report: dict[str, Any] = {"machine": machine_info(), "worker_threads": args.threads,
                              "omp_wait_policy": "PASSIVE", "model": "test model", "parts": list(args.parts)}
    with tempfile.TemporaryDirectory(prefix="bench-faces-") as name:
        tmp = Path(name)
        if "latency" in args.parts:
            report["latency"] = run_latency(args, clips, tmp, progress)
        if "rest" in args.parts:
            report["rest"] = run_rest(args, clips, tmp, progress)
        if "lb_start" in args.parts:
            report["lb_start"] = run_lb_start(args, tmp, progress)
    text = json.dumps(report, indent=None if args.json else 2)
    if args.out:
        args.out.write_text(text + "\n")
    out(text)
    return 1 if failed(report) else 0


if __name__ == "__main__":
    raise SystemExit(main())
