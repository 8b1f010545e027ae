"""Greedy TDT decoding on CPU with oneDNN's LSTM (PyTorch's default) vs PyTorch's native LSTM kernel.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m bench.decoder_kernels
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m bench.decoder_kernels --full-size --work-dir /tmp/full

The label-looping TDT decoder steps its prediction network (an LSTM) one label at a time: thousands of
``batch x 1-step`` LSTM calls per minute of audio. oneDNN's RNN primitive is built for long sequences and large
batches and costs more per such call than PyTorch's native kernel, so
:func:`parakeet_worker.model.native_rnn_kernels` turns oneDNN off around decoding (never around the encoder, whose
convolutions are faster with it; measured below too).

Encodes held-out speech once per shape, then times the same decoding both ways in this process (median of
``--repeats``) and checks the tokens are identical. Prints one row per (batch, frames) with the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import machine_info, out, quiet_nemo
from parakeet_worker.model import native_rnn_kernels
from parakeet_worker.transcript import SAMPLE_RATE_HZ


def paired_ms(first: Callable[[], object], second: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median milliseconds of each, timed in alternation so that machine noise hits both alike."""
    first(), second()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, bucket in ((first, times[0]), (second, times[1])):
            started = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - started)
    return round(statistics.median(times[0]) * 1000, 1), round(statistics.median(times[1]) * 1000, 1)


def decode_onednn(computer: Any, enc: torch.Tensor, enc_len: torch.Tensor) -> list[list[int]]:
    """NeMo's label-looping computer as is (oneDNN's LSTM: torch's default on CPU); token ids per row."""
    with torch.inference_mode():
        hyps = computer(enc, enc_len, None)[0]
    return [row[:n] for row, n in zip(hyps.transcript.tolist(), hyps.current_lengths.tolist())]


def decode_native(streamer: Any, enc: torch.Tensor, enc_len: torch.Tensor) -> list[list[int]]:
    """The service's decoding (streaming.decode_frames: native LSTM kernel); token ids per row."""
    tokens, _ = streamer.decode_frames(enc, enc_len, [None] * enc.shape[0])
    return [[t.id for t in row] for row in tokens]


def encode_native(recognizer: Any, window: np.ndarray) -> object:
    with native_rnn_kernels(torch.device("cpu")):
        return recognizer.encode([window])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true", help="the 627 M architecture with random weights")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the full-size .nemo is built/reused")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--frames", type=int, nargs="*", default=[12, 74, 250],
                        help="encoder frames decoded per row (12 = one 0.96 s chunk, 74 = a 5.92 s window)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    quiet_nemo()
    torch.set_num_threads(args.threads)

    from parakeet_worker.config import Settings
    from parakeet_worker.model import Recognizer, load_model
    from parakeet_worker.streaming import StreamingRecognizer
    from testmodel.heldout import MODEL_PATH, load_heldout

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        model_path = MODEL_PATH
        if args.full_size:
            from bench.engine_vs_nemo import build_full_nemo

            work = args.work_dir or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            model_path = build_full_nemo(work)
        recognizer = Recognizer(load_model(replace(Settings(), model=str(model_path), dtype="float32")))
    streamer = StreamingRecognizer(recognizer)
    speech = np.concatenate([c.audio for c in load_heldout()])
    rows = []
    for frames in args.frames:
        seconds = frames * recognizer.frame_s
        window = speech[: int(round(seconds * SAMPLE_RATE_HZ))]
        # Encoder, both ways (one row), so the choice to keep oneDNN there is measured too.
        encode_ms = paired_ms(partial(recognizer.encode, [window]), partial(encode_native, recognizer, window),
                              max(3, args.repeats // 2))
        for batch in args.batches:
            enc, enc_len = recognizer.encode([window] * batch)
            enc = enc.transpose(1, 2).contiguous()
            enc_len = enc_len.clamp(max=frames)
            onednn = partial(decode_onednn, streamer.decoder.computer, enc, enc_len)
            native = partial(decode_native, streamer, enc, enc_len)
            same = onednn() == native()
            ms_onednn, ms_native = paired_ms(onednn, native, args.repeats)
            row = {"batch": batch, "frames": frames, "audio_s": round(seconds, 2),
                   "decode_ms_onednn": ms_onednn, "decode_ms_native": ms_native,
                   "decode_speedup": round(ms_onednn / ms_native, 2), "same_tokens": same,
                   "encode1_ms_onednn": encode_ms[0], "encode1_ms_native": encode_ms[1]}
            rows.append(row)
            if not args.json:
                out(json.dumps(row))
    report = {"machine": machine_info(), "model": "full-size random" if args.full_size else "test model",
              "threads": args.threads, "rows": rows}
    out(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
