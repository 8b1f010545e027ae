"""Regenerate the committed test model and its held-out evaluation set.

    .venv/bin/python -m testmodel.make          # ~58 min on 2 cores; needs espeak-ng
    .venv/bin/python -m testmodel.evaluate      # measures WER, rewrites the results in docs/TEST_MODEL.md

Writes ``tests/assets/parakeet-tdt-test.nemo``, ``tests/assets/heldout/`` (FLAC clips + ``manifest.tsv``) and
``tests/assets/training_curve.tsv``. Everything is seeded; see docs/TEST_MODEL.md.
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from testmodel import architecture, corpus
from testmodel.train import Example, TrainOptions, train

logger = logging.getLogger("testmodel.make")

ASSETS = Path(__file__).resolve().parent.parent / "tests" / "assets"
MODEL_FILE = "parakeet-tdt-test.nemo"
HELDOUT_DIR = "heldout"
MANIFEST = "manifest.tsv"
CURVE_FILE = "training_curve.tsv"
DEFAULT_SEED = 20261121
DEFAULT_TRAIN_UTTERANCES = 9000
DEFAULT_HELDOUT_PER_SPLIT = 50
DEFAULT_DEV_UTTERANCES = 40
DEFAULT_BOOTSTRAP_UTTERANCES = 6000


def _to_int16(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)


@dataclass(frozen=True)
class CorpusPlan:
    train: list[corpus.UtteranceSpec]
    dev: list[corpus.UtteranceSpec]  # held-out sentences, seen voices: the training curve
    seen: list[corpus.UtteranceSpec]  # committed: held-out sentences, seen voices
    unseen: list[corpus.UtteranceSpec]  # committed: held-out sentences, voices never used in training
    bootstrap: list[corpus.UtteranceSpec]  # short grammar-free utterances of 46 words: the first training phase


def plan_corpus(seed: int = DEFAULT_SEED, train_utterances: int = DEFAULT_TRAIN_UTTERANCES,
                heldout_per_split: int = DEFAULT_HELDOUT_PER_SPLIT, dev_utterances: int = DEFAULT_DEV_UTTERANCES,
                bootstrap_utterances: int = DEFAULT_BOOTSTRAP_UTTERANCES, more_voices: bool = False) -> CorpusPlan:
    """Every utterance of the recipe, deterministically from the seed (cheap: no audio is rendered).

    Held-out sentences are drawn first and excluded from training by exact text. ``more_voices``: training
    sentences (not the bootstrap's) are spoken by 78 voice variants with formant/tempo warps instead of the 14 of
    the seen-voice evaluation set; the held-out and dev sets are the same either way.
    """
    rng = random.Random(seed)
    held_sentences = corpus.make_sentences(rng, 2 * heldout_per_split + dev_utterances)
    train_sentences = corpus.make_sentences(rng, train_utterances, exclude=held_sentences)
    seen, unseen = corpus.seen_voices(), corpus.unseen_voices()
    k = heldout_per_split
    specs_seen = corpus.make_specs(rng, held_sentences[:k], seen, "seen")
    specs_unseen = corpus.make_specs(rng, held_sentences[k : 2 * k], unseen, "unseen")
    specs_dev = corpus.make_specs(rng, held_sentences[2 * k :], seen, "dev")
    if more_voices:  # the experiment of docs/TEST_MODEL.md "Status": not the committed model's recipe
        specs_train = corpus.make_specs(rng, train_sentences, corpus.training_voices(), "train",
                                        warp_range=corpus.TRAIN_WARP_RANGE)
    else:
        specs_train = corpus.make_specs(rng, train_sentences, seen, "train")
    # Drawn last, from their own generator, so the plan of every other utterance is unchanged.
    boot_rng = random.Random(seed + 1)
    boot_sentences = corpus.make_bootstrap_sentences(boot_rng, bootstrap_utterances, exclude=held_sentences)
    specs_boot = corpus.make_specs(boot_rng, boot_sentences, seen, "boot")
    return CorpusPlan(train=specs_train, dev=specs_dev, seen=specs_seen, unseen=specs_unseen, bootstrap=specs_boot)


def dev_wer(model, clips: list[tuple[np.ndarray, str]], batch_size: int = 16) -> float:
    """Greedy-decoding WER (%) of ``model`` on in-memory clips, without touching training-mode flags for good."""
    from nemo.collections.asr.metrics.wer import word_error_rate

    model.eval()
    hyps: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(clips), batch_size):
            chunk = clips[start : start + batch_size]
            n = max(a.shape[0] for a, _ in chunk)
            audio = torch.zeros(len(chunk), n)
            for k, (a, _) in enumerate(chunk):
                audio[k, : a.shape[0]] = torch.from_numpy(a.astype(np.float32) / 32768.0)
            lengths = torch.tensor([a.shape[0] for a, _ in chunk])
            enc, enc_len = model.forward(input_signal=audio, input_signal_length=lengths)
            out = model.decoding.rnnt_decoder_predictions_tensor(encoder_output=enc, encoded_lengths=enc_len)
            hyps.extend(h.text for h in out)
    return 100.0 * word_error_rate(hypotheses=hyps, references=[t for _, t in clips])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ASSETS, help="where the model and held-out set are written")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--train-utterances", type=int, default=DEFAULT_TRAIN_UTTERANCES)
    parser.add_argument("--heldout-per-split", type=int, default=DEFAULT_HELDOUT_PER_SPLIT)
    parser.add_argument("--dev-utterances", type=int, default=DEFAULT_DEV_UTTERANCES)
    parser.add_argument("--steps", type=int, default=TrainOptions.steps)
    parser.add_argument("--batch-audio-s", type=float, default=TrainOptions.batch_audio_s)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", type=Path, default=None,
                        help="continue training this .nemo (same corpus and tokenizer) instead of a fresh model")
    parser.add_argument("--lr", type=float, default=TrainOptions.lr)
    parser.add_argument("--warmup-steps", type=int, default=TrainOptions.warmup_steps)
    parser.add_argument("--curriculum-steps", type=int, default=TrainOptions.curriculum_steps)
    parser.add_argument("--bootstrap-steps", type=int, default=TrainOptions.bootstrap_steps)
    parser.add_argument("--bootstrap-utterances", type=int, default=DEFAULT_BOOTSTRAP_UTTERANCES)
    parser.add_argument("--more-voices", action="store_true",
                        help="train on 78 voice variants with formant/tempo warps (an experiment, see docs)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    plan = plan_corpus(args.seed, args.train_utterances, args.heldout_per_split, args.dev_utterances,
                       args.bootstrap_utterances, more_voices=args.more_voices)
    train_sentences = [s.text for s in plan.train]
    specs_seen, specs_unseen, specs_dev, specs_train = plan.seen, plan.unseen, plan.dev, plan.train

    with tempfile.TemporaryDirectory(prefix="testmodel-") as tmp:
        if args.resume is not None:
            from nemo.collections.asr.models import EncDecRNNTBPEModel

            model = EncDecRNNTBPEModel.restore_from(str(args.resume), map_location="cpu")
            logger.info("continuing training of %s", args.resume)
        else:
            tokenizer_dir = architecture.train_tokenizer(train_sentences, Path(tmp) / "tokenizer",
                                                         architecture.TEST_SIZE.vocab_size)
            model = architecture.build_model(architecture.TEST_SIZE, tokenizer_dir, dropout=0.0)

        def render(specs: list[corpus.UtteranceSpec]) -> list[tuple[corpus.UtteranceSpec, np.ndarray]]:
            kept = []
            for spec, audio in corpus.render_all(specs, workers=args.threads):
                seconds = audio.shape[0] / corpus.SAMPLE_RATE_HZ
                if corpus.MIN_UTTERANCE_S <= seconds <= corpus.MAX_UTTERANCE_S:
                    kept.append((spec, _to_int16(audio)))
            return kept

        boot_set = render(plan.bootstrap) if args.bootstrap_steps > 0 else []
        train_set = render(specs_train)
        dev_set = render(specs_dev)
        hours = sum(a.shape[0] for _, a in train_set) / corpus.SAMPLE_RATE_HZ / 3600
        logger.info("rendered %d training utterances (%.1f h) in %.1f min", len(train_set), hours,
                    (time.monotonic() - started) / 60)
        examples = [Example(a, model.tokenizer.text_to_ids(s.text)) for s, a in train_set]
        bootstrap = [Example(a, model.tokenizer.text_to_ids(s.text)) for s, a in boot_set]
        dev_clips = [(a, s.text) for s, a in dev_set]

        opts = replace(TrainOptions(), steps=args.steps, batch_audio_s=args.batch_audio_s, seed=args.seed,
                       lr=args.lr, warmup_steps=args.warmup_steps, curriculum_steps=args.curriculum_steps,
                       bootstrap_steps=args.bootstrap_steps)
        curve = train(model, examples, opts, evaluate=lambda step: dev_wer(model, dev_clips), bootstrap=bootstrap)

        out: Path = args.out
        out.mkdir(parents=True, exist_ok=True)
        model.eval()
        model.save_to(str(out / MODEL_FILE))
        logger.info("saved %s (%.1f MB)", out / MODEL_FILE, (out / MODEL_FILE).stat().st_size / 1e6)

    with (out / CURVE_FILE).open("w") as f:
        f.write("step\tminutes\tdev_wer_percent\n")
        for step, minutes, wer in curve:
            f.write(f"{step}\t{minutes:.1f}\t{wer:.2f}\n")

    held_dir = out / HELDOUT_DIR
    held_dir.mkdir(exist_ok=True)
    for old in held_dir.glob("*.flac"):
        old.unlink()
    rows = ["file\tsplit\tvoice\tseconds\ttext"]
    for split, specs in (("seen", specs_seen), ("unseen", specs_unseen)):
        for spec, audio in render(specs):
            name = f"{spec.uid}.flac"
            sf.write(held_dir / name, audio, corpus.SAMPLE_RATE_HZ, subtype="PCM_16")
            rows.append(f"{name}\t{split}\t{spec.voice.espeak_name}\t{audio.shape[0] / corpus.SAMPLE_RATE_HZ:.3f}\t{spec.text}")
    (held_dir / MANIFEST).write_text("\n".join(rows) + "\n")
    logger.info("recipe finished in %.1f min (%d held-out clips)", (time.monotonic() - started) / 60, len(rows) - 1)


if __name__ == "__main__":
    main()
