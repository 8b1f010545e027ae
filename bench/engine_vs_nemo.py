"""Our engine against NeMo's own ``model.transcribe()`` on identical inputs, in one process.

    .venv/bin/python -m bench.engine_vs_nemo                          # committed test model, held-out clips
    .venv/bin/python -m bench.engine_vs_nemo --model full             # full-size random v3 architecture, bf16
    .venv/bin/python -m bench.engine_vs_nemo --model full --dtype float32
    .venv/bin/python -m bench.engine_vs_nemo --json                   # machine-readable output only

What is compared
----------------
* Engine: ``ParakeetEngine(load_model(Settings(model=..., dtype=...)), EngineOptions(max_batch=B))``; every input
  is submitted at once (as concurrent requests would arrive) and the run ends when the last future resolves, so
  the engine's dynamic batching and length bucketing apply.
* NeMo: a second, separately restored copy of the same ``.nemo`` (``copy.deepcopy`` fails on NeMo models),
  ``model.transcribe(list_of_float32_arrays, batch_size=B, verbose=False)`` with every other argument at NeMo's
  default (``num_workers=0``, in-memory arrays so no temporary manifest), followed by ``model.eval()`` (NeMo
  leaves the sub-modules in train mode).
* ``--nemo-precision`` picks how the NeMo copy runs when ``--dtype`` is not float32:
  ``same`` (default) casts it exactly like the engine (encoder/decoder/joint in ``--dtype``, preprocessor in
  float32) and casts the mel features to ``--dtype`` at the encoder input with a forward pre-hook — the one
  line NeMo's ``transcribe()`` is missing to run such a model at all ("Input type (float) and bias type
  (c10::BFloat16) should be the same"); the arithmetic is then identical, so the ratio measures the pipelines.
  ``autocast`` keeps NeMo's copy in float32 and wraps ``transcribe()`` in ``torch.autocast`` (what a NeMo user
  would do); ``fp32`` runs it in plain float32. With those two the transcripts may legitimately differ.
* Both are warmed up, then timed ``--repeats`` times in alternating order; medians are reported. Throughput ratio
  = engine audio-seconds per second / NeMo's (= NeMo median wall / engine median wall); > 1 means the engine
  is faster.
* A light instrumentation (one ``perf_counter`` pair per batch) splits each side's time into features+encoder,
  TDT decoding and the rest, and records the batches each side formed (padding overhead).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bench.common import hwm_mib, machine_info, out, quiet_nemo, rss_mib
from parakeet_worker.transcript import SAMPLE_RATE_HZ

if TYPE_CHECKING:
    from parakeet_worker.engine import BucketLimits, BucketPolicy
NEMO_MIN_PAD_S = 1.0  # TranscriptionTensorDataset pads shorter inputs to 1 s (both sides); the engine does not


@dataclass
class Input:
    name: str
    audio: np.ndarray
    text: str | None  # reference transcript, where known

    @property
    def seconds(self) -> float:
        return self.audio.shape[0] / SAMPLE_RATE_HZ


@dataclass
class Timing:
    wall_s: float
    encode_s: float
    decode_s: float
    batches: list[list[int]] = field(default_factory=list)  # sample counts per batch, as each side formed them

    @property
    def other_s(self) -> float:
        return max(0.0, self.wall_s - self.encode_s - self.decode_s)


class _Clock:
    """Accumulates time spent inside wrapped callables."""

    def __init__(self) -> None:
        self.encode_s = 0.0
        self.decode_s = 0.0
        self.batches: list[list[int]] = []

    def reset(self) -> None:
        self.encode_s = self.decode_s = 0.0
        self.batches = []

    def timed(self, fn: Callable[..., Any], slot: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                setattr(self, slot, getattr(self, slot) + time.perf_counter() - started)

        return wrapper


# --- inputs ----------------------------------------------------------------------------------------------------
def test_inputs(heldout_dir: Path, minutes: float, seed: int) -> list[Input]:
    """Held-out clips in a seeded random order (reshuffled per cycle) until at least ``minutes`` of audio."""
    from testmodel.heldout import load_heldout

    clips = load_heldout(heldout_dir)
    rng = random.Random(seed)
    out: list[Input] = []
    total = 0.0
    cycle = 0
    while total < minutes * 60 or not out:
        for clip in rng.sample(clips, len(clips)):
            out.append(Input(f"{clip.name}#{cycle}", clip.audio, clip.text))
            total += clip.seconds
            if total >= minutes * 60:
                break
        cycle += 1
    return out


def full_inputs(heldout_dir: Path, count: int, min_s: float, max_s: float, seed: int) -> list[Input]:
    """``count`` clips of ``min_s``..``max_s`` seconds cut from concatenated held-out speech (noise if absent)."""
    rng = np.random.default_rng(seed)
    lengths = rng.uniform(min_s, max_s, count)
    need = float(lengths.sum()) + 1.0
    source = "noise"
    if (heldout_dir / "manifest.tsv").is_file():
        from testmodel.heldout import build_long_audio, load_heldout

        speech = build_long_audio(load_heldout(heldout_dir), need / 60).audio
        source = "speech"
    else:
        speech = (rng.standard_normal(int(need * SAMPLE_RATE_HZ)) * 0.05).astype(np.float32)
    out: list[Input] = []
    pos = 0
    for k, seconds in enumerate(lengths):
        n = int(seconds * SAMPLE_RATE_HZ)
        out.append(Input(f"{source}-{k:02d}-{seconds:.1f}s", np.ascontiguousarray(speech[pos:pos + n]), None))
        pos += n
    return out


# --- models ------------------------------------------------------------------------------------------------------
def build_full_nemo(work_dir: Path) -> Path:
    """Build the full parakeet-tdt-0.6b-v3 architecture with random weights and save it as a ``.nemo``."""
    from parakeet_worker.model import release_host_memory
    from testmodel.architecture import build_full_size_random

    path = work_dir / "parakeet-tdt-0.6b-v3-random.nemo"
    if path.is_file():
        return path
    torch.manual_seed(0)
    model = build_full_size_random(work_dir)
    model.save_to(str(path))
    del model
    release_host_memory()
    return path


def load_reference(path: Path, device: torch.device, dtype: torch.dtype, precision: str) -> Any:
    """A second, separately restored copy for NeMo's ``transcribe()``."""
    from nemo.collections.asr.models import ASRModel

    from parakeet_worker.model import release_host_memory

    model = ASRModel.restore_from(restore_path=str(path), map_location=device)
    model.eval()
    if precision == "same" and dtype != torch.float32:
        for module in (model.encoder, model.decoder, model.joint):
            module.to(device=device, dtype=dtype)
        model.preprocessor.to(device=device, dtype=torch.float32)

        def cast_features(_module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if "audio_signal" in kwargs:
                kwargs["audio_signal"] = kwargs["audio_signal"].to(dtype)
            elif args:
                args = (args[0].to(dtype), *args[1:])
            return args, kwargs

        model.encoder.register_forward_pre_hook(cast_features, with_kwargs=True)
    release_host_memory()
    return model


# --- runs ----------------------------------------------------------------------------------------------------------
def instrument_recognizer(rec: Any, clock: _Clock) -> None:
    """Time the engine's recognizer (handed to the engine with ``recognizer=``): encode, decode, batch shapes."""
    rec.encode = clock.timed(rec.encode, "encode_s")
    rec.decode = clock.timed(rec.decode, "decode_s")
    original = rec.transcribe

    def transcribe(audio: list[np.ndarray], timestamps: bool = False) -> Any:
        clock.batches.append([int(a.shape[0]) for a in audio])
        return original(audio, timestamps=timestamps)

    rec.transcribe = transcribe


def instrument_nemo(model: Any, clock: _Clock) -> None:
    forward = model.forward

    def timed_forward(*args: Any, **kwargs: Any) -> Any:
        signal = kwargs.get("input_signal_length")
        if signal is not None:
            clock.batches.append([int(x) for x in signal.tolist()])
        return clock.timed(forward, "encode_s")(*args, **kwargs)

    model.forward = timed_forward
    model.decoding.rnnt_decoder_predictions_tensor = clock.timed(model.decoding.rnnt_decoder_predictions_tensor,
                                                                 "decode_s")


def padding_aware_buckets(max_padding: float) -> BucketPolicy:
    """A proposed bucketing policy (the engine's ``bucketing=`` hook): as the stock one (sorted by length, bounded
    by count and padded samples), and also start a new group when padding would exceed ``max_padding`` of the real
    audio in the group. Used with ``--max-padding`` only; the engine's default is untouched."""

    def buckets(lengths: Sequence[int], limits: BucketLimits) -> list[list[int]]:
        groups: list[list[int]] = []
        current: list[int] = []
        real = 0
        for index in sorted(range(len(lengths)), key=lengths.__getitem__):
            samples = lengths[index]
            padded = samples * (len(current) + 1)
            if current and (len(current) >= limits.max_batch or padded > limits.max_padded_samples
                            or padded > (real + samples) * (1 + max_padding)):
                groups.append(current)
                current, real = [], 0
            current.append(index)
            real += samples
        if current:
            groups.append(current)
        return groups

    return buckets


def run_engine(engine: Any, inputs: list[Input], clock: _Clock) -> tuple[Timing, list[str]]:
    clock.reset()
    started = time.perf_counter()
    futures = [engine.submit(x.audio) for x in inputs]
    texts = [f.result().text for f in futures]
    wall = time.perf_counter() - started
    return Timing(wall, clock.encode_s, clock.decode_s, clock.batches), texts


def run_nemo(model: Any, inputs: list[Input], batch_size: int, autocast: torch.dtype | None,
             device: torch.device, clock: _Clock) -> tuple[Timing, list[str]]:
    ctx = torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    clock.reset()
    started = time.perf_counter()
    with ctx:
        hyps = model.transcribe([x.audio for x in inputs], batch_size=batch_size, verbose=False)
    wall = time.perf_counter() - started
    model.eval()  # NeMo 3.0.0 leaves encoder/decoder/joint in train mode after transcribe()
    texts = [h.text if hasattr(h, "text") else str(h) for h in hyps]
    return Timing(wall, clock.encode_s, clock.decode_s, clock.batches), texts


def padding_overhead(batches: list[list[int]]) -> float:
    """Padded samples / real samples - 1 over all batches (0 = no padding)."""
    real = sum(sum(b) for b in batches)
    padded = sum(max(b) * len(b) for b in batches if b)
    return padded / real - 1 if real else 0.0


@contextlib.contextmanager
def _work_dir(path: str | None) -> Iterator[Path]:
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-full-") as tmp:
            yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    from testmodel.heldout import HELDOUT_DIR, MODEL_PATH

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("test", "full"), default="test",
                        help="test: the committed test model; full: the full-size v3 architecture, random weights")
    parser.add_argument("--model-path", help="a .nemo to use instead (test), or a prebuilt full-size random .nemo")
    parser.add_argument("--work-dir", help="where --model full saves its .nemo (kept; reused when present); "
                                           "default: a temporary directory, deleted afterwards")
    parser.add_argument("--heldout-dir", default=str(HELDOUT_DIR))
    parser.add_argument("--dtype", choices=("float32", "bfloat16"),
                        help="engine dtype (default: float32 for test, bfloat16 for full)")
    parser.add_argument("--nemo-precision", choices=("same", "autocast", "fp32"), default="same",
                        help="how NeMo's copy runs when --dtype is not float32 (see the module docstring)")
    parser.add_argument("--batch-size", type=int, default=16, help="engine max_batch and NeMo batch_size")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--minutes", type=float, default=6.0, help="test: minutes of audio (clips cycled)")
    parser.add_argument("--clips", type=int, default=8, help="full: number of clips")
    parser.add_argument("--min-s", type=float, default=5.0, help="full: shortest clip")
    parser.add_argument("--max-s", type=float, default=20.0, help="full: longest clip")
    parser.add_argument("--repeats", type=int, help="timed runs per side (default: 5 test, 3 full)")
    parser.add_argument("--max-padding", type=float,
                        help="try the proposed padding-aware bucketing on the engine: a batch's padded samples may "
                             "exceed its real samples by at most this fraction (e.g. 0.15); default: stock engine")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)

    quiet_nemo()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dtype_name = args.dtype or ("float32" if args.model == "test" else "bfloat16")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    repeats = args.repeats or (5 if args.model == "test" else 3)
    heldout_dir = Path(args.heldout_dir)
    log = (lambda *a: out(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: out(*a, flush=True))

    from parakeet_worker.config import Settings
    from parakeet_worker.engine import EngineOptions, ParakeetEngine
    from parakeet_worker.model import Recognizer, load_model

    with _work_dir(args.work_dir) as work_dir:
        t0 = time.monotonic()
        if args.model == "test":
            model_path = Path(args.model_path) if args.model_path else MODEL_PATH
            inputs = test_inputs(heldout_dir, args.minutes, args.seed)
            how_loaded = "parakeet_worker.model.load_model on the committed .nemo"
        else:
            model_path = Path(args.model_path) if args.model_path else build_full_nemo(work_dir)
            inputs = full_inputs(heldout_dir, args.clips, args.min_s, args.max_s, args.seed)
            how_loaded = ("testmodel.architecture.build_full_size_random -> save_to(.nemo) -> "
                          "parakeet_worker.model.load_model (engine) and ASRModel.restore_from (NeMo)")
        build_s = time.monotonic() - t0
        audio_s = sum(x.seconds for x in inputs)
        log(f"model {model_path} ({args.model}), {len(inputs)} inputs, {audio_s:.1f} s of audio, "
            f"dtype {dtype_name}, NeMo precision {args.nemo_precision}, batch {args.batch_size}, "
            f"{torch.get_num_threads()} threads")

        t0 = time.monotonic()
        loaded = load_model(Settings(model=str(model_path), dtype=dtype_name, warmup=False))
        engine_load_s = time.monotonic() - t0
        device = loaded.device
        t0 = time.monotonic()
        reference = load_reference(model_path, device, dtype, args.nemo_precision)
        nemo_load_s = time.monotonic() - t0
        autocast = dtype if (args.nemo_precision == "autocast" and dtype != torch.float32) else None
        nemo_dtype = (dtype_name if args.nemo_precision == "same" else
                      f"float32+autocast({dtype_name})" if autocast is not None else "float32")
        log(f"loaded: engine copy {engine_load_s:.1f} s, NeMo copy {nemo_load_s:.1f} s (model build {build_s:.1f} s); "
            f"RSS {rss_mib():.0f} MiB")

        eng_clock, nemo_clock = _Clock(), _Clock()
        recognizer = Recognizer(loaded)
        instrument_recognizer(recognizer, eng_clock)
        bucketing = None if args.max_padding is None else padding_aware_buckets(args.max_padding)
        engine = ParakeetEngine(loaded, EngineOptions(max_batch=args.batch_size, batch_wait_ms=args.batch_wait_ms),
                                recognizer=recognizer, bucketing=bucketing)
        try:
            instrument_nemo(reference, nemo_clock)

            t0 = time.monotonic()
            engine.warmup()
            warm = inputs[: min(args.batch_size, 4)]  # kernels and allocator warmed on both sides
            run_engine(engine, warm, eng_clock)
            run_nemo(reference, warm, args.batch_size, autocast, device, nemo_clock)
            log(f"warm-up {time.monotonic() - t0:.1f} s")

            eng_runs: list[Timing] = []
            nemo_runs: list[Timing] = []
            eng_texts: list[list[str]] = []
            nemo_texts: list[list[str]] = []
            for rep in range(repeats):
                order = ("engine", "nemo") if rep % 2 == 0 else ("nemo", "engine")
                for side in order:
                    if side == "engine":
                        timing, texts = run_engine(engine, inputs, eng_clock)
                        eng_runs.append(timing)
                        eng_texts.append(texts)
                    else:
                        timing, texts = run_nemo(reference, inputs, args.batch_size, autocast, device, nemo_clock)
                        nemo_runs.append(timing)
                        nemo_texts.append(texts)
                    log(f"  repeat {rep + 1}/{repeats} {side:6s} {timing.wall_s:8.2f} s  "
                        f"(RTFx {audio_s / timing.wall_s:7.1f})")
        finally:
            engine.close()

    def summary(runs: list[Timing]) -> dict[str, Any]:
        wall = statistics.median(r.wall_s for r in runs)
        return {
            "wall_s_median": round(wall, 3),
            "wall_s_all": [round(r.wall_s, 3) for r in runs],
            "rtfx": round(audio_s / wall, 2),
            "audio_s_per_s": round(audio_s / wall, 2),
            "encode_s_median": round(statistics.median(r.encode_s for r in runs), 3),
            "decode_s_median": round(statistics.median(r.decode_s for r in runs), 3),
            "other_s_median": round(statistics.median(r.other_s for r in runs), 3),
            "batches": len(runs[-1].batches),
            "mean_batch_size": round(sum(len(b) for b in runs[-1].batches) / max(1, len(runs[-1].batches)), 2),
            "padding_overhead_percent": round(100 * padding_overhead(runs[-1].batches), 1),
        }

    eng_sum, nemo_sum = summary(eng_runs), summary(nemo_runs)
    final_e, final_n = eng_texts[-1], nemo_texts[-1]
    differing = [i for i, (a, b) in enumerate(zip(final_e, final_n)) if a != b]
    result: dict[str, Any] = {
        "benchmark": "engine_vs_nemo",
        "model": args.model,
        "model_path": str(model_path),
        "how_loaded": how_loaded,
        "dtype_engine": dtype_name,
        "dtype_nemo": nemo_dtype,
        "device": str(device),
        "batch_size": args.batch_size,
        "batch_wait_ms": args.batch_wait_ms,
        "engine_bucketing": ("stock" if args.max_padding is None else
                             f"padding-aware (max padding {args.max_padding:g}, proposed; not the engine's default)"),
        "repeats": repeats,
        "inputs": len(inputs),
        "audio_s": round(audio_s, 2),
        "inputs_under_1s": sum(1 for x in inputs if x.seconds < NEMO_MIN_PAD_S),
        "shortest_s": round(min(x.seconds for x in inputs), 2),
        "longest_s": round(max(x.seconds for x in inputs), 2),
        "engine": eng_sum,
        "nemo": nemo_sum,
        "throughput_ratio": round(nemo_sum["wall_s_median"] / eng_sum["wall_s_median"], 3),
        "transcripts_identical": not differing,
        "differing_files": len(differing),
        "differing_examples": [
            {"input": inputs[i].name, "engine": final_e[i], "nemo": final_n[i]} for i in differing[:5]
        ],
        "engine_deterministic_across_repeats": all(t == eng_texts[0] for t in eng_texts),
        "nemo_deterministic_across_repeats": all(t == nemo_texts[0] for t in nemo_texts),
        "empty_transcripts": {"engine": sum(1 for t in final_e if not t), "nemo": sum(1 for t in final_n if not t)},
        "load_s": {"build": round(build_s, 1), "engine_copy": round(engine_load_s, 1), "nemo_copy": round(nemo_load_s, 1)},
        "peak_rss_mib": round(hwm_mib()),
        "machine": machine_info(),
    }
    if all(x.text is not None for x in inputs):
        from testmodel.heldout import wer

        refs = [x.text or "" for x in inputs]
        result["wer_percent"] = {"engine": round(wer(final_e, refs).wer_percent, 2),
                                 "nemo": round(wer(final_n, refs).wer_percent, 2)}

    if args.json:
        out(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


def print_table(r: dict[str, Any]) -> None:
    e, n = r["engine"], r["nemo"]
    m = r["machine"]
    out()
    out(f"engine vs NeMo transcribe() - model {r['model']} ({Path(r['model_path']).name}), device {r['device']}, "
          f"{m['torch_threads']} threads, {m['cpu']}")
    out(f"engine bucketing: {r['engine_bucketing']}")
    out(f"inputs: {r['inputs']} files, {r['audio_s']:.1f} s of audio ({r['shortest_s']}-{r['longest_s']} s), "
          f"batch size {r['batch_size']}, {r['repeats']} timed repeats (alternating order), medians")
    rows = [
        ("", "engine", "NeMo transcribe()"),
        ("dtype", r["dtype_engine"], r["dtype_nemo"]),
        ("wall time (median)", f"{e['wall_s_median']:.2f} s", f"{n['wall_s_median']:.2f} s"),
        ("RTFx", f"{e['rtfx']:.1f}", f"{n['rtfx']:.1f}"),
        ("  features+encoder", f"{e['encode_s_median']:.2f} s", f"{n['encode_s_median']:.2f} s"),
        ("  TDT decoding", f"{e['decode_s_median']:.2f} s", f"{n['decode_s_median']:.2f} s"),
        ("  other", f"{e['other_s_median']:.2f} s", f"{n['other_s_median']:.2f} s"),
        ("batches (mean size)", f"{e['batches']} ({e['mean_batch_size']})", f"{n['batches']} ({n['mean_batch_size']})"),
        ("padding overhead", f"{e['padding_overhead_percent']} %", f"{n['padding_overhead_percent']} %"),
        ("all walls", " ".join(f"{w:.2f}" for w in e["wall_s_all"]), " ".join(f"{w:.2f}" for w in n["wall_s_all"])),
    ]
    if "wer_percent" in r:
        rows.append(("WER vs reference", f"{r['wer_percent']['engine']} %", f"{r['wer_percent']['nemo']} %"))
    rows.append(("empty transcripts", str(r["empty_transcripts"]["engine"]), str(r["empty_transcripts"]["nemo"])))
    for a, b, c in rows:
        out(f"  {a:22s} {b:>26s} {c:>26s}")
    same = "yes" if r["transcripts_identical"] else f"NO ({r['differing_files']} of {r['inputs']} differ)"
    out(f"transcripts identical: {same}")
    for ex in r["differing_examples"]:
        out(f"  {ex['input']}: engine={ex['engine']!r} nemo={ex['nemo']!r}")
    out(f"throughput ratio (engine / NeMo): {r['throughput_ratio']:.3f}")
    out(f"peak RSS of the process (both copies loaded): {r['peak_rss_mib']} MiB")


if __name__ == "__main__":
    raise SystemExit(main())
