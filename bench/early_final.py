"""The early final pass (parakeet_worker.streaming.early_pass): how early it can run, what the final transcribes, what it costs.

    .venv/bin/python -m bench.early_final
    .venv/bin/python -m bench.early_final --speech path/to/real/*.wav --early-s 0.16 0.32 0.48

Accuracy (held-out clips): each clip followed by a pause with a -60 dBFS noise floor, the client's ``finalize``
taken 200 ms after the clip ends (as bench.streaming_sessions sends it). The engine's final pass stops
``early_s`` into the pause that reaches the finalize (``VadStream.pause_end``, as the stream scheduler cuts it — the
early pass at the pause covers exactly that audio, so the final is the same whether or not it ran); that final is
scored against the reference beside the transcript of all the audio up to the finalize (what a final without the
cut would be), and the two against each other (less trailing silence can flip uncertain words).

Cost (real speech, ``--speech``): early passes per minute of audio against utterance ends (the endpointer's
600 ms silence) — passes beyond the utterance ends are wasted on pauses the speaker talked through.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.common import machine_info, out, quiet_nemo
from parakeet_worker.transcript import SAMPLE_RATE_HZ

PIECE = 320  # 20 ms
CLIENT_VAD_WAIT_S = 0.2
REPO_SPEECH = ("tests/assets/audio/en_librispeech_2412-153948-0000.16k_mono_s16.wav",
               "tests/assets/audio/en_ljspeech_LJ001-0002.wav")


def final_cut(vad: object, audio: np.ndarray, until: int, early_s: float) -> int | None:
    """Where the final pass for a final at ``until`` stops (None: it covers all the audio), the VAD fed in 20 ms
    pieces as a live client sends them."""
    stream = vad.new_stream()  # type: ignore[attr-defined]
    for pos in range(0, until, PIECE):
        vad.process([stream], [audio[pos : min(pos + PIECE, until)]])  # type: ignore[attr-defined]
    return stream.pause_end(until, early_s)  # type: ignore[attr-defined, no-any-return]


def pass_counts(vad: object, audio: np.ndarray, early_s: float) -> tuple[int, int]:
    """(early passes, utterance ends) over ``audio`` streamed in 20 ms pieces."""
    from parakeet_worker.streaming import early_pass_due

    stream = vad.new_stream()  # type: ignore[attr-defined]
    passes = ends = speech_at = 0
    for pos in range(0, audio.shape[0], PIECE):
        ends += len(vad.process([stream], [audio[pos : pos + PIECE]])[0])  # type: ignore[attr-defined]
        if early_pass_due(stream, speech_at, early_s):
            passes, speech_at = passes + 1, stream.speech_frames
    return passes, ends


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--early-s", type=float, nargs="*", default=[0.16, 0.32, 0.48])
    parser.add_argument("--speech", type=Path, nargs="*", default=[Path(p) for p in REPO_SPEECH],
                        help="real speech files for the cost part (any format parakeet_worker.audio decodes)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    quiet_nemo()

    from parakeet_worker.audio import decode_file
    from parakeet_worker.config import Settings
    from parakeet_worker.model import Recognizer, load_model
    from parakeet_worker.streaming import BatchedVad
    from testmodel.heldout import MODEL_PATH, load_heldout, wer

    vad = BatchedVad()
    recognizer = Recognizer(load_model(Settings(model=str(MODEL_PATH))))
    clips = load_heldout()
    rng = np.random.default_rng(0)
    padded = [np.concatenate([c.audio, (rng.standard_normal(int(1.2 * SAMPLE_RATE_HZ)) * 1e-3).astype(np.float32)])
              for c in clips]
    cuts = [c.audio.shape[0] + int(CLIENT_VAD_WAIT_S * SAMPLE_RATE_HZ) for c in clips]
    at_finalize = [t.text for t in recognizer.transcribe([a[:cut] for a, cut in zip(padded, cuts)])]
    refs = [c.text for c in clips]
    rows = []
    for early_s in args.early_s:
        points = [final_cut(vad, a, cut, early_s) for a, cut in zip(padded, cuts)]
        early = [t.text for t in recognizer.transcribe([a[: p or cut] for a, p, cut in zip(padded, points, cuts)])]
        lead = [(cut - p) / SAMPLE_RATE_HZ for p, cut in zip(points, cuts) if p is not None]  # the pass is due at the cut
        passes = ends = 0
        minutes = 0.0
        for path in args.speech:
            audio = decode_file(path).samples
            p, e = pass_counts(vad, audio, early_s)
            passes, ends, minutes = passes + p, ends + e, minutes + audio.shape[0] / SAMPLE_RATE_HZ / 60
        row = {
            "early_s": early_s, "clips": len(clips),
            "clips_cut_at_a_pause": len(lead),
            "pause_before_finalize_s_median": round(float(np.median(lead)), 3) if lead else None,
            "wer_final_pct": round(wer(early, refs).wer_percent, 2),
            "wer_all_audio_pct": round(wer(at_finalize, refs).wer_percent, 2),
            "final_vs_all_audio_pct": round(wer(early, at_finalize).wer_percent, 2),
            "speech_minutes": round(minutes, 2), "early_passes_per_min": round(passes / max(minutes, 1e-9), 1),
            "utterance_ends_per_min": round(ends / max(minutes, 1e-9), 1),
        }
        rows.append(row)
        if not args.json:
            out(json.dumps(row))
    out(json.dumps({"machine": machine_info(), "speech": [str(p) for p in args.speech], "rows": rows},
                   indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
