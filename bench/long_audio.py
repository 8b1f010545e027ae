"""One synthetic long recording through the engine in each long-audio mode: time, memory, WER, completion.

    .venv/bin/python -m bench.long_audio --minutes 10                 # validate (local + chunked)
    .venv/bin/python -m bench.long_audio                              # the 3-hour case (default --minutes 180)
    .venv/bin/python -m bench.long_audio --minutes 10 --mode local chunked full
    .venv/bin/python -m bench.long_audio --json

The recording is ``testmodel.heldout.build_long_audio``: the held-out clips cycled with 0.4-1.5 s pauses, so the
reference text is known. Modes (each submitted alone to one engine, in the order given):

* ``local``   - ``TranscribeOptions(attention="local")``: one pass with local attention [256, 256];
* ``chunked`` - ``TranscribeOptions(chunked=True)``: overlapping windows (default 60 s, 5 s overlap), batched,
  merged at the seams by word timestamps;
* ``full``    - ``TranscribeOptions(attention="full")``: one pass with full attention; refused by the engine above
  its full-attention limit (10 min on CPU), which this benchmark reports as "skipped" rather than forcing.

Memory: VmHWM (peak RSS) is reset before each mode where the kernel allows (/proc/self/clear_refs), and RSS is
also sampled in a thread every ``--sample-s`` seconds; the per-mode timeline shows whether it stays bounded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import RssSampler, hwm_mib, machine_info, out, quiet_nemo, reset_hwm, rss_mib
from parakeet_worker.transcript import SAMPLE_RATE_HZ


def main(argv: list[str] | None = None) -> int:
    from testmodel.heldout import HELDOUT_DIR, MODEL_PATH

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=180.0, help="length of the synthetic recording")
    parser.add_argument("--mode", nargs="+", choices=("local", "chunked", "full"), default=["local", "chunked"])
    parser.add_argument("--model-path", default=str(MODEL_PATH))
    parser.add_argument("--heldout-dir", default=str(HELDOUT_DIR))
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="auto: the service default (bf16 on CUDA / CPUs with bf16, else float32)")
    parser.add_argument("--chunk-s", type=float, default=60.0)
    parser.add_argument("--overlap-s", type=float, default=5.0)
    parser.add_argument("--full-attention-max-s", type=float, default=0.0,
                        help="engine full-attention limit (0: the engine's default for the device)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--sample-s", type=float, default=0.5, help="RSS sampling interval")
    parser.add_argument("--estimate-for", type=float, default=180.0,
                        help="also print the time this would take for a recording of this many minutes")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)

    quiet_nemo()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    log = (lambda *a: out(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: out(*a, flush=True))

    from parakeet_worker.audio import DEFAULT_MAX_DURATION_S as MAX_AUDIO_S
    from parakeet_worker.config import Settings
    from parakeet_worker.engine import EngineOptions, ParakeetEngine, TranscribeOptions
    from parakeet_worker.model import load_model
    from testmodel.heldout import build_long_audio, load_heldout, wer

    rss_start = rss_mib()
    t0 = time.monotonic()
    clips = load_heldout(Path(args.heldout_dir))
    long = build_long_audio(clips, args.minutes)
    audio = long.audio
    duration = audio.shape[0] / SAMPLE_RATE_HZ
    ref_words = len(long.text.split())
    log(f"built {duration / 60:.1f} min of audio from {len(long.parts)} clips ({ref_words} reference words, "
        f"{audio.nbytes / 2**20:.0f} MiB as float32) in {time.monotonic() - t0:.1f} s")

    t0 = time.monotonic()
    loaded = load_model(Settings(model=args.model_path, dtype=args.dtype, warmup=False))
    options = EngineOptions(max_audio_s=max(MAX_AUDIO_S, duration + 60), default_chunk_s=args.chunk_s,
                            default_overlap_s=args.overlap_s, full_attention_max_s=args.full_attention_max_s or None)
    engine = ParakeetEngine(loaded, options)
    engine.warmup()
    rss_loaded = rss_mib()
    log(f"model {Path(args.model_path).name} on {loaded.device} in {str(loaded.dtype).replace('torch.', '')}, "
        f"loaded + warmed up in {time.monotonic() - t0:.1f} s; RSS {rss_loaded:.0f} MiB "
        f"(before: {rss_start:.0f} MiB); full-attention limit {engine.full_attention_max_s:.0f} s")

    runs: list[dict[str, Any]] = []
    try:
        for mode in args.mode:
            run: dict[str, Any] = {"mode": mode}
            runs.append(run)
            if mode == "full" and duration > engine.full_attention_max_s:
                run.update(completed=False, skipped=(
                    f"{duration / 60:.1f} min is above the engine's full-attention limit of "
                    f"{engine.full_attention_max_s / 60:.1f} min on this device (raise --full-attention-max-s "
                    "to force it; attention memory and time grow quadratically)"))
                log(f"[{mode}] skipped: {run['skipped']}")
                continue
            opts = {"local": TranscribeOptions(attention="local"),
                    "chunked": TranscribeOptions(chunked=True, chunk_s=args.chunk_s, overlap_s=args.overlap_s),
                    "full": TranscribeOptions(attention="full")}[mode]
            last_report = [0.0]
            started = time.monotonic()

            def progress(info: dict[str, object], mode: str = mode, started: float = started,
                         last_report: list[float] = last_report) -> None:
                now = time.monotonic()
                if now - last_report[0] >= 30 or info.get("chunks_done") == info.get("chunks_total"):
                    last_report[0] = now
                    log(f"[{mode}] {info.get('chunks_done')}/{info.get('chunks_total')} windows after "
                        f"{now - started:.0f} s; RSS {rss_mib():.0f} MiB")

            hwm_reset = reset_hwm()
            rss_before = rss_mib()
            log(f"[{mode}] started; RSS {rss_before:.0f} MiB")
            started = time.monotonic()
            try:
                with RssSampler(args.sample_s) as sampler:
                    result = engine.submit(audio, opts, progress=progress).result()
            except Exception as exc:  # report, keep going with the next mode
                run.update(completed=False, error=f"{type(exc).__name__}: {exc}",
                           wall_s=round(time.monotonic() - started, 1))
                log(f"[{mode}] FAILED after {run['wall_s']} s: {run['error']}")
                continue
            wall = time.monotonic() - started
            stats = wer([result.text], [long.text])
            hyp_words = len(result.text.split())
            run.update(
                completed=True,
                wall_s=round(wall, 1),
                rtfx=round(duration / wall, 1),
                attention=result.attention,
                windows=result.chunking.windows if result.chunking else None,
                wer_percent=round(stats.wer_percent, 2),
                substitutions=stats.substitutions, deletions=stats.deletions, insertions=stats.insertions,
                words_hyp=hyp_words,
                words_ref=ref_words,
                wpm_hyp=round(hyp_words / (duration / 60), 1),
                wpm_ref=round(ref_words / (duration / 60), 1),
                rss_before_mib=round(rss_before),
                rss_peak_sampled_mib=round(sampler.peak_mib),
                vmhwm_mib=round(hwm_mib()) if hwm_reset else None,
                rss_after_mib=round(rss_mib()),
                rss_growth_mib=round(sampler.peak_mib - rss_before),
                rss_timeline=sampler.timeline(12),
                estimate_s_for=(args.estimate_for, round(wall * args.estimate_for * 60 / duration)),
            )
            log(f"[{mode}] done in {wall:.1f} s (RTFx {duration / wall:.1f}), WER {stats.wer_percent:.2f} %, "
                f"peak RSS {sampler.peak_mib:.0f} MiB (+{sampler.peak_mib - rss_before:.0f})")
    finally:
        engine.close()

    result_json = {
        "benchmark": "long_audio",
        "model_path": args.model_path,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).replace("torch.", ""),
        "minutes": round(duration / 60, 2),
        "audio_mib": round(audio.nbytes / 2**20),
        "clips": len(long.parts),
        "chunk_s": args.chunk_s,
        "overlap_s": args.overlap_s,
        "full_attention_max_s": engine.full_attention_max_s,
        "rss_start_mib": round(rss_start),
        "rss_loaded_mib": round(rss_loaded),
        "process_peak_rss_mib": round(hwm_mib()),
        "runs": runs,
        "machine": machine_info(),
    }
    if args.json:
        out(json.dumps(result_json, indent=2))
    else:
        print_table(result_json)
    return 0 if all(r.get("completed") or r.get("skipped") for r in runs) else 1


def print_table(r: dict[str, Any]) -> None:
    m = r["machine"]
    out()
    out(f"long audio - {Path(r['model_path']).name} on {r['device']} ({r['dtype']}), {m['torch_threads']} threads, "
          f"{m['cpu']}")
    out(f"input: {r['minutes']:.1f} min ({r['clips']} held-out clips with pauses, {r['audio_mib']} MiB float32); "
          f"RSS at start {r['rss_start_mib']} MiB, after load {r['rss_loaded_mib']} MiB")
    header = ("mode", "done", "wall s", "RTFx", "WER %", "wpm hyp/ref", "RSS before", "RSS peak", "growth", "VmHWM")
    out("  " + " ".join(f"{h:>11s}" for h in header))
    for run in r["runs"]:
        if not run.get("completed"):
            out(f"  {run['mode']:>11s} {'no':>11s}  {run.get('skipped') or run.get('error')}")
            continue
        cells = (run["mode"], "yes", f"{run['wall_s']:.1f}", f"{run['rtfx']:.1f}", f"{run['wer_percent']:.2f}",
                 f"{run['wpm_hyp']:.0f}/{run['wpm_ref']:.0f}", f"{run['rss_before_mib']}", f"{run['rss_peak_sampled_mib']}",
                 f"+{run['rss_growth_mib']}", str(run["vmhwm_mib"]))
        out("  " + " ".join(f"{c:>11s}" for c in cells))
    for run in r["runs"]:
        if run.get("completed"):
            extra = f", {run['windows']} windows" if run.get("windows") else ""
            minutes, seconds = run["estimate_s_for"]
            out(f"  {run['mode']}: attention {run['attention']}{extra}; S/D/I {run['substitutions']}/"
                  f"{run['deletions']}/{run['insertions']}; estimated {seconds / 60:.1f} min for {minutes:.0f} min "
                  f"of audio")
            out("    RSS timeline (s: MiB): " + ", ".join(f"{t:g}: {mb:.0f}" for t, mb in run["rss_timeline"]))
    out(f"process peak RSS (VmHWM, whole run): {r['process_peak_rss_mib']} MiB")


if __name__ == "__main__":
    raise SystemExit(main())
