"""Live WebSocket sessions against the real server: latency, lag, capacity, streamed-vs-offline accuracy.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m bench.streaming_sessions --sessions 8   # as scripts/serve.sh runs
    .venv/bin/python -m bench.streaming_sessions --capacity 2 4 6 8 12 16        # sessions held at real time
    .venv/bin/python -m bench.streaming_sessions --full-size --capacity 1 2 3 4 6 --seconds 30
    .venv/bin/python -m bench.streaming_sessions --chunk-s 0.48 --right-s 0.48 --sessions 8   # trade-off rows

Each client is a real WebSocket client on localhost speaking docs/PROTOCOL.md. It sends 20 ms PCM16 frames on an
absolute real-time schedule (frame k leaves at t0 + k * 20 ms, never sleep-after-send), starting at a random
offset so chunk boundaries of different clients do not line up. Its audio is held-out clips separated by 1.2 s
of silence; 200 ms after each clip's speech ends it sends ``finalize`` (as a voice agent does when its own VAD
fires) and measures the time to the final marked ``from_finalize``. Server endpointing is off so the finalize
latency is measured alone. The clients run in a child process (``--clients in-process`` puts them on an event
loop beside the server, as the first figures in docs/BENCHMARKS.md were taken): on 2 cores they still take CPU
time from the server, but no longer its interpreter lock.

Reported per run: first-partial time (from the first frame sent), finalize → final latency, partial lag (arrival
time minus the wall time at which the audio the partial covers was sent), backlog errors, and the WER of the
session's finals against the offline transcripts of the same utterance audio (each cut where its finalize
applied, as the server received it) and against the reference text. A run "holds"
when its p95 partial lag stays under ``--max-lag-s`` and no audio was refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import random
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from websockets.asyncio.client import connect

from bench.common import machine_info, out, quiet_nemo
from client import pcm16
from parakeet_worker.audio import pcm16_to_float32
from parakeet_worker.engine import EngineOptions, ParakeetEngine
from parakeet_worker.streaming import StreamingConfig
from parakeet_worker.transcript import SAMPLE_RATE_HZ

FRAME_S = 0.02
GAP_S = 1.2
CLIENT_VAD_WAIT_S = 0.2
GAP_NOISE_DBFS = -60.0


def as_received(audio: np.ndarray) -> np.ndarray:
    """What the server decodes from the client's PCM16 frames (as sent below)."""
    return pcm16_to_float32(pcm16(audio))


def utterance_segments(audio: np.ndarray, speech_ends: list[float]) -> list[np.ndarray]:
    """The audio of each utterance exactly as the server cuts it: a finalize applies at the position of the
    audio sent before it, i.e. after the first 20 ms frame that reaches speech end + the client's VAD wait."""
    step = int(FRAME_S * SAMPLE_RATE_HZ)
    cuts = []
    for end in speech_ends:
        target = (end + CLIENT_VAD_WAIT_S) * SAMPLE_RATE_HZ
        sent = -(-int(np.ceil(target - 1e-6)) // step) * step  # first frame boundary at or after the target
        if sent <= len(audio):
            cuts.append(sent)
    bounds = [0, *cuts, len(audio)]
    return [audio[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


@dataclass
class ClientResult:
    first_partial_s: float | None = None
    finalize_latency_s: list[float] = field(default_factory=list)
    lags_s: list[float] = field(default_factory=list)
    finals: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))], 4)


def session_audio(clips: list[Any], seconds: float, rng: random.Random) -> tuple[np.ndarray, list[float], list[Any]]:
    """Clips separated by pauses up to ``seconds``; returns audio, end-of-speech times, the clips used.

    Pauses carry a microphone-like noise floor (as the clips' own silences do), not digital zeros."""
    parts, ends, used, t = [], [], [], 0.0
    noise = np.random.default_rng(rng.randrange(1 << 30))
    while t < seconds:
        clip = rng.choice(clips)
        gap = (noise.standard_normal(int(GAP_S * SAMPLE_RATE_HZ)) * 10 ** (GAP_NOISE_DBFS / 20)).astype(np.float32)
        parts += [clip.audio, gap]
        t += len(clip.audio) / SAMPLE_RATE_HZ
        ends.append(t)
        t += GAP_S
        used.append(clip)
    return np.concatenate(parts), ends, used


async def run_client(url: str, audio: np.ndarray, speech_ends: list[float], delay: float) -> ClientResult:
    await asyncio.sleep(delay)
    res = ClientResult()
    async with connect(url, max_size=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"action": "start", "sample_rate": SAMPLE_RATE_HZ, "endpointing": False}))
        await ws.recv()
        t0 = time.monotonic()
        finalize_sent: list[float] = []

        async def receiver() -> None:
            while True:
                msg = json.loads(await ws.recv())
                now = time.monotonic()
                if msg["type"] == "error":
                    res.errors.append(msg["code"])
                elif msg["type"] == "stopped":
                    return
                elif msg["type"] == "transcription":
                    if msg["is_final"]:
                        res.finals.append(msg["text"])
                        if msg.get("from_finalize") and finalize_sent:
                            res.finalize_latency_s.append(now - finalize_sent.pop(0))
                    else:
                        if res.first_partial_s is None:
                            res.first_partial_s = now - t0
                        res.lags_s.append(now - (t0 + msg["audio_end"]))

        recv_task = asyncio.create_task(receiver())
        step = int(FRAME_S * SAMPLE_RATE_HZ)
        pending_ends = list(speech_ends)
        for k, start in enumerate(range(0, len(audio), step)):
            due = t0 + k * FRAME_S
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await ws.send(pcm16(audio[start : start + step]))
            sent_s = (start + step) / SAMPLE_RATE_HZ
            if pending_ends and sent_s >= pending_ends[0] + CLIENT_VAD_WAIT_S:
                pending_ends.pop(0)
                finalize_sent.append(time.monotonic())
                await ws.send(json.dumps({"action": "finalize"}))
        await ws.send(json.dumps({"action": "stop"}))
        await asyncio.wait_for(recv_task, 120)
    return res


async def run_clients(url: str, plans: list[tuple[np.ndarray, list[float], float]]) -> list[ClientResult]:
    return list(await asyncio.gather(*(run_client(url, audio, ends, delay) for audio, ends, delay in plans)))


def run_clients_blocking(url: str, plans: list[tuple[np.ndarray, list[float], float]]) -> list[ClientResult]:
    """The clients on their own event loop (in whichever process calls this)."""
    return asyncio.run(run_clients(url, plans))


def run_sessions(server: Any, sessions: int, seconds: float, clips: list[Any], seed: int, clients_process: bool
                 ) -> tuple[list[ClientResult], list[tuple[list[Any], list[np.ndarray]]]]:
    """``sessions`` staggered clients against ``server``; with ``clients_process`` they run in a child process
    (their Python then competes with the server for the cores but not for its interpreter lock, as remote
    clients would not compete at all), otherwise on an event loop in this process."""
    rng = random.Random(seed)
    url = f"ws://127.0.0.1:{server.port}/?token=bench"
    audio_plans = [session_audio(clips, seconds, rng) for _ in range(sessions)]
    plans = [(audio, ends, rng.uniform(0, 1.0)) for audio, ends, _ in audio_plans]
    if clients_process:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = pool.submit(run_clients_blocking, url, plans).result()
    else:
        results = run_clients_blocking(url, plans)
    return results, [(used, utterance_segments(a, e)) for a, e, used in audio_plans]


def summarize(results: list[ClientResult], used: list[list[Any]], offline: list[str], wer_fn: Any,
              max_lag_s: float) -> dict[str, Any]:
    """``offline``: per session, the offline transcripts of the same utterance audio the session streamed."""
    lags = [x for r in results for x in r.lags_s]
    fin = [x for r in results for x in r.finalize_latency_s]
    firsts = [r.first_partial_s for r in results if r.first_partial_s is not None]
    errors = [e for r in results for e in r.errors]
    hyp = [" ".join(r.finals) for r in results]
    off = offline
    ref = [" ".join(c.text for c in u) for u in used]
    p95 = pct(lags, 0.95)
    return {
        "first_partial_s": {"p50": pct(firsts, 0.5), "max": max(firsts) if firsts else None},
        "finalize_to_final_ms": {k: None if v is None else round(v * 1000, 1)
                                 for k, v in (("p50", pct(fin, 0.5)), ("p95", pct(fin, 0.95)),
                                              ("p99", pct(fin, 0.99)), ("max", max(fin) if fin else None))},
        "finalizes": len(fin),
        "partial_lag_s": {"p50": pct(lags, 0.5), "p95": p95, "max": max(lags) if lags else None},
        "errors": sorted(set(errors)), "error_count": len(errors),
        "wer_vs_offline_pct": round(wer_fn(hyp, off).wer_percent, 2),
        "wer_vs_reference_pct": round(wer_fn(hyp, ref).wer_percent, 2),
        "offline_wer_vs_reference_pct": round(wer_fn(off, ref).wer_percent, 2),
        "held": bool(p95 is not None and p95 <= max_lag_s and not errors),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="*", default=[8])
    parser.add_argument("--capacity", type=int, nargs="*", default=None, help="session counts to try (stops at "
                        "the first that does not hold)")
    parser.add_argument("--seconds", type=float, default=40.0, help="audio per session")
    parser.add_argument("--full-size", action="store_true", help="the 627 M architecture with random weights")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--left-s", type=float, default=4.0)
    parser.add_argument("--chunk-s", type=float, default=0.96)
    parser.add_argument("--right-s", type=float, default=0.96)
    parser.add_argument("--final-pass-max-s", type=float, default=StreamingConfig.final_pass_max_s,
                        help="offline final pass for utterances up to this long (0: streamed finals)")
    parser.add_argument("--early-final-s", type=float, default=EngineOptions.stream_early_final_s,
                        help="pause after which the final pass runs early (0: finals computed at the end)")
    parser.add_argument("--step-budget-ms", type=float, default=None,
                        help="longest streaming forward (0: every session in one forward; default: the engine's)")
    parser.add_argument("--max-lag-s", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", choices=["process", "in-process"], default="process",
                        help="run the clients in a child process (default: the server's interpreter is its own) or "
                        "on an event loop in the server's process (their Python then shares its interpreter lock)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    quiet_nemo()
    torch.set_num_threads(args.threads)

    from parakeet_worker.config import Settings
    from parakeet_worker.model import Recognizer, load_model
    from parakeet_worker.serving.ws_server import ServerLimits, ServerThread, StreamServer
    from testmodel.heldout import MODEL_PATH, load_heldout, wer

    clips = load_heldout()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        model_path = MODEL_PATH
        if args.full_size:
            from bench.engine_vs_nemo import build_full_nemo

            model_path = build_full_nemo(Path(tmp))
        settings = replace(Settings(), model=str(model_path), dtype=args.dtype, ws_host="127.0.0.1", ws_port=0)
        loaded = load_model(settings)
        config = StreamingConfig(left_s=args.left_s, chunk_s=args.chunk_s, right_s=args.right_s,
                                 final_pass_max_s=args.final_pass_max_s)
        if args.step_budget_ms is None:
            args.step_budget_ms = EngineOptions().stream_step_budget_s * 1000
        engine = ParakeetEngine(loaded, EngineOptions(streaming=config,
                                                      stream_step_budget_s=args.step_budget_ms / 1000,
                                                      stream_early_final_s=args.early_final_s))
        engine.warmup()
        offline_recognizer = Recognizer(loaded)  # the reference transcripts, computed between runs
        server = ServerThread(StreamServer(engine, settings, ServerLimits(max_sessions=256,
                                                                          idle_timeout_s=120))).start()
        server.grant(None, token="bench", multi_use=True)
        counts = args.capacity or args.sessions
        rows = []
        for n in counts:
            before = engine.stream_stats()
            results, plans = run_sessions(server, n, args.seconds, clips, args.seed + n, args.clients == "process")
            used = [u for u, _ in plans]
            offline = [" ".join(t.text for t in offline_recognizer.transcribe(
                [as_received(seg) for seg in segs]) if t.text)
                for _, segs in plans]
            row = {"sessions": n, **summarize(results, used, offline, wer, args.max_lag_s)}
            after = engine.stream_stats()
            steps = after.steps - before.steps
            row["engine_steps"] = steps
            row["ms_per_step"] = round((after.step_seconds - before.step_seconds) / max(1, steps) * 1000, 1)
            row["early_final_passes"] = after.early_passes_run - before.early_passes_run
            row["early_finals_used"] = after.early_passes_used - before.early_passes_used
            rows.append(row)
            if not args.json:
                out(json.dumps(row))
            if args.capacity and not row["held"]:
                break
        engine.close()
    report = {"machine": machine_info(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
              "clients": args.clients, "model": "full-size random" if args.full_size else "test model",
              "dtype": str(loaded.dtype).replace("torch.", ""),
              "config": asdict(config), "step_budget_ms": args.step_budget_ms,
              "early_final_s": args.early_final_s, "seconds_per_session": args.seconds, "rows": rows,
              "sessions_held": max([r["sessions"] for r in rows if r["held"]], default=0)}
    out(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
