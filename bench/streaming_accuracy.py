"""Streaming recognition vs offline on the held-out clips: final WER, seam errors, final and step compute time.

    .venv/bin/python -m bench.streaming_accuracy                      # all held-out clips, default config
    .venv/bin/python -m bench.streaming_accuracy --chunk-s 0.48 --right-s 0.48 --left-s 4.0
    .venv/bin/python -m bench.streaming_accuracy --batches 1 8 16 --json

Accuracy: every clip is streamed as a live client would send it (20 ms frames, staggered starts so chunk
boundaries never line up, one batched ``step`` per chunk period over all ready streams, ``finalize`` at the
end) and scored against the reference, beside the offline transcript of the same clips, twice: with finals
decoded from the streamed chunks ("streamed", what the committed words of the partials amount to) and with the
final pass (one offline pass over each utterance at its end, the service's default up to ``--final-pass-max-s``).
"Seam" errors are the insertions and deletions of the streamed text measured against the offline text of the
same audio.

Final cost: each clip streamed alone up to its end, then the time of ``finalize`` — the streamed tail (its
[left | rest | padding] window) vs the final pass (a forward over the whole utterance) — by utterance length.

Compute: ``B`` streams of continuous speech (held-out clips back to back) in steady state (full left context),
one ``step`` over all ``B`` per chunk; median and p90 milliseconds per step, and the real-time factor
``chunk_s / step time`` per stream (how many such streams one step loop can hold in real time on this machine).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import machine_info, out, quiet_nemo
from parakeet_worker.transcript import SAMPLE_RATE_HZ

TICK_S = 0.02


def stream_staggered(streamer: Any, audios: list[np.ndarray], starts_s: list[float],
                     step_every_s: float | None = None) -> tuple[list[Any], list[int]]:
    """Live streams starting at ``starts_s``, fed in 20 ms frames on a virtual clock; every ``step_every_s``
    (default: the chunk period, the engine's cadence, so every live stream has a chunk ready each time) one
    batched step over all ready streams. Returns each stream's final :class:`streaming.StepResult` and the batch
    sizes of the steps."""
    piece = int(TICK_S * SAMPLE_RATE_HZ)
    ticks_per_step = max(1, round((step_every_s or streamer.config.chunk_s) / TICK_S))
    states = [streamer.new_stream(f"s{i}") for i in range(len(audios))]
    sent = [0] * len(audios)
    finals: dict[int, Any] = {}
    batches: list[int] = []
    tick = 0
    while len(finals) < len(audios):
        now = tick * TICK_S
        for i, (audio, state) in enumerate(zip(audios, states)):
            if now + 1e-9 < starts_s[i] or state.ended:
                continue
            if sent[i] < audio.shape[0]:
                streamer.accept(state, audio[sent[i] : sent[i] + piece])
                sent[i] += piece
            else:
                streamer.end(state)
        batch = [s for s in states if streamer.ready(s)] if tick % ticks_per_step == 0 else []
        if batch:
            batches.append(len(batch))
            for state, result in zip(batch, streamer.step(batch)):
                if result.final:
                    finals[states.index(state)] = result
        tick += 1
    return [finals[i] for i in range(len(audios))], batches


def final_times(streamer: Any, audios: list[np.ndarray]) -> list[float]:
    """Seconds ``finalize`` takes for each audio streamed alone (stepped as its chunks arrive) up to its end."""
    times = []
    for audio in audios:
        state = streamer.new_stream()
        for start in range(0, audio.shape[0], streamer.chunk_samples):
            streamer.accept(state, audio[start : start + streamer.chunk_samples])
            while streamer.ready(state):
                streamer.step([state])
        started = time.perf_counter()
        streamer.finalize([state])
        times.append(time.perf_counter() - started)
    return times


def step_times(streamer: Any, speech: np.ndarray, batch: int, steps: int) -> list[float]:
    """Seconds per batched step of ``batch`` streams (different audio each) in steady state: full left context,
    one chunk arriving per stream between steps."""
    chunk, right = streamer.chunk_samples, streamer.right_samples
    warmup = math.ceil(streamer.left_samples / chunk) + 1
    span = chunk + right + (warmup + steps) * chunk
    if speech.shape[0] < 2 * span:
        speech = np.tile(speech, math.ceil(2 * span / speech.shape[0]))
    streams = []
    for b in range(batch):
        start = (b * 104_729) % (speech.shape[0] - span)  # different speech in every stream
        audio = speech[start : start + span]
        state = streamer.new_stream(f"b{b}")
        streamer.accept(state, audio[: chunk + right])
        streams.append((state, audio))
    times: list[float] = []
    for k in range(warmup + steps):
        states = [s for s, _ in streams]
        started = time.perf_counter()
        streamer.step(states)
        if k >= warmup:
            times.append(time.perf_counter() - started)
        for state, audio in streams:
            streamer.accept(state, audio[state.received : state.received + chunk])
    return times


def main(argv: list[str] | None = None) -> int:
    from testmodel.heldout import HELDOUT_DIR, MODEL_PATH

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", default=str(MODEL_PATH))
    parser.add_argument("--heldout-dir", default=str(HELDOUT_DIR))
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    parser.add_argument("--left-s", type=float, default=4.0)
    parser.add_argument("--chunk-s", type=float, default=0.96)
    parser.add_argument("--right-s", type=float, default=0.96)
    parser.add_argument("--final-pad-s", type=float, default=0.32)
    parser.add_argument("--final-pass-max-s", type=float, default=20.0,
                        help="utterances up to this long get the offline final pass (the service's default)")
    parser.add_argument("--clips", type=int, default=0, help="use the first N held-out clips (0: all)")
    parser.add_argument("--stagger-s", type=float, default=0.37, help="start offset between streams")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 8], help="batch sizes to time")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per batch size")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)

    quiet_nemo()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from parakeet_worker.config import Settings
    from parakeet_worker.model import Recognizer, load_model
    from parakeet_worker.streaming import StreamingConfig, StreamingRecognizer
    from testmodel.heldout import load_heldout, wer

    loaded = load_model(Settings(model=args.model_path, dtype=args.dtype))
    recognizer = Recognizer(loaded)
    config = StreamingConfig(left_s=args.left_s, chunk_s=args.chunk_s, right_s=args.right_s,
                             final_pad_s=args.final_pad_s, final_pass_max_s=0.0)
    streamer = StreamingRecognizer(recognizer, config)  # finals from the streamed chunks
    passer = StreamingRecognizer(recognizer, replace(config, final_pass_max_s=args.final_pass_max_s))
    clips = load_heldout(Path(args.heldout_dir))
    if args.clips > 0:
        clips = clips[: args.clips]

    recognizer.transcribe([clips[0].audio])  # warm-up: first calls pay one-off costs
    stream_staggered(streamer, [clips[0].audio], [0.0])
    started = time.perf_counter()
    offline = [t.text for t in recognizer.transcribe([c.audio for c in clips])]
    offline_s = time.perf_counter() - started
    started = time.perf_counter()
    starts = [i * args.stagger_s for i in range(len(clips))]
    results, batches = stream_staggered(streamer, [c.audio for c in clips], starts)
    streamed = [r.committed_text for r in results]
    streamed_s = time.perf_counter() - started
    started = time.perf_counter()
    passed_results, _ = stream_staggered(passer, [c.audio for c in clips], starts)
    passed = [r.committed_text for r in passed_results]
    passed_s = time.perf_counter() - started
    passed_offline = sum(r.source == "offline" for r in passed_results)

    accuracy: dict[str, Any] = {}
    for split in ("all", "seen", "unseen"):
        idx = [i for i, c in enumerate(clips) if split == "all" or c.split == split]
        if not idx:
            continue
        refs = [clips[i].text for i in idx]
        off = wer([offline[i] for i in idx], refs)
        st = wer([streamed[i] for i in idx], refs)
        fp = wer([passed[i] for i in idx], refs)
        seam = wer([streamed[i] for i in idx], [offline[i] for i in idx])
        accuracy[split] = {"clips": len(idx), "words": st.words, "offline_wer": round(off.wer_percent, 2),
                           "streamed_wer": round(st.wer_percent, 2), "final_pass_wer": round(fp.wer_percent, 2),
                           "streamed_vs_offline": {"wer": round(seam.wer_percent, 2), "ins": seam.insertions,
                                                   "del": seam.deletions, "sub": seam.substitutions}}

    final_cost: dict[str, Any] = {}
    for lo, hi in ((0, 5), (5, 10), (10, 20)):
        group = [c for c in clips if lo < c.seconds <= hi]
        if group:
            tail, one_pass = (statistics.median(final_times(s, [c.audio for c in group])) for s in (streamer, passer))
            final_cost[f"{lo}-{hi} s"] = {"clips": len(group), "streamed_tail_ms": round(1000 * tail, 1),
                                          "final_pass_ms": round(1000 * one_pass, 1)}

    speech = np.concatenate([c.audio for c in clips])
    compute: dict[str, Any] = {}
    for batch in args.batches:
        times = step_times(streamer, speech, batch, args.steps)
        med = statistics.median(times)
        compute[str(batch)] = {"steps": len(times), "median_ms": round(1000 * med, 1),
                               "p90_ms": round(1000 * sorted(times)[int(0.9 * (len(times) - 1))], 1),
                               "per_stream_ms": round(1000 * med / batch, 1),
                               "realtime_streams": round(config.chunk_s * batch / med, 1)}

    report = {
        "machine": machine_info(), "model": loaded.source.name, "dtype": str(loaded.dtype).replace("torch.", ""),
        "config": {"left_s": config.left_s, "chunk_s": config.chunk_s, "right_s": config.right_s,
                   "final_pad_s": config.final_pad_s, "final_pass_max_s": args.final_pass_max_s},
        "audio_s": round(sum(c.seconds for c in clips), 1), "offline_s": round(offline_s, 2),
        "streamed_s": round(streamed_s, 2), "final_pass_s": round(passed_s, 2), "final_pass_clips": passed_offline,
        "largest_batch": max(batches), "accuracy": accuracy, "final_cost": final_cost, "step_compute": compute,
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    out(f"model {report['model']} ({report['dtype']}), {len(clips)} clips, {report['audio_s']} s of audio, "
          f"left/chunk/right {config.left_s}/{config.chunk_s}/{config.right_s} s, "
          f"threads {torch.get_num_threads()}")
    out("| split | clips | words | offline WER % | streamed finals WER % | final pass WER % | "
        "streamed vs offline: ins / del / sub |")
    out("|---|---|---|---|---|---|---|")
    for split, row in accuracy.items():
        s = row["streamed_vs_offline"]
        out(f"| {split} | {row['clips']} | {row['words']} | {row['offline_wer']} | {row['streamed_wer']} | "
            f"{row['final_pass_wer']} | {s['ins']} / {s['del']} / {s['sub']} |")
    out(f"offline pass {offline_s:.2f} s; streamed (all clips, largest batch {max(batches)}) {streamed_s:.2f} s; "
        f"with the final pass {passed_s:.2f} s ({passed_offline} of {len(clips)} finals offline)")
    out("| utterance | clips | finalize, streamed tail: median ms | finalize, final pass: median ms |")
    out("|---|---|---|---|")
    for span, row in final_cost.items():
        out(f"| {span} | {row['clips']} | {row['streamed_tail_ms']} | {row['final_pass_ms']} |")
    out("| batch | median ms/step | p90 ms/step | ms per stream | streams held in real time |")
    out("|---|---|---|---|---|")
    for batch, row in compute.items():
        out(f"| {batch} | {row['median_ms']} | {row['p90_ms']} | {row['per_stream_ms']} | "
              f"{row['realtime_streams']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
