"""Regenerate the committed test model and its held-out evaluation set.

    .venv/bin/python -m testmodel.make && .venv/bin/python -m testmodel.make --finetune   # ~2 h on 2 cores; espeak-ng
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
SHORT_DIR = "heldout_short"  # digit strings and short commands, unseen voices at unseen speaking rates
MANIFEST = "manifest.tsv"
CURVE_FILE = "training_curve.tsv"
FINETUNE_CURVE_FILE = "training_curve_finetune.tsv"  # the second stage's curve (the first stage's stays)
DEFAULT_SEED = 20261121
DEFAULT_TRAIN_UTTERANCES = 9000
DEFAULT_HELDOUT_PER_SPLIT = 50
DEFAULT_DEV_UTTERANCES = 40
DEFAULT_BOOTSTRAP_UTTERANCES = 6000
DEFAULT_SHORT_PER_SET = 30  # held-out digit strings, and as many short commands
DEFAULT_EXTRA_UTTERANCES = 2000  # training digit strings and short commands (half each), with --cut-variety
MIN_SHORT_S = 0.4  # a held-out "stop" at 230 words/minute is shorter than the corpus's 1 s minimum
# The second stage of the recipe (issue 18), ``--finetune``: the first stage's model trained on, with cut-point variety,
# 78 voice variants with formant/tempo warps, and digit strings and short commands, at a lower peak rate.
FINETUNE = {"more_voices": True, "cut_variety": True, "extra_utterances": DEFAULT_EXTRA_UTTERANCES,
            "bootstrap_steps": 0, "curriculum_steps": 0, "lr": 1e-3, "warmup_steps": 100, "steps": 4000,
            "minutes": 88.0}


def _to_int16(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)


@dataclass(frozen=True)
class CorpusPlan:
    train: list[corpus.UtteranceSpec]
    dev: list[corpus.UtteranceSpec]  # held-out sentences, seen voices: the training curve
    seen: list[corpus.UtteranceSpec]  # committed: held-out sentences, seen voices
    unseen: list[corpus.UtteranceSpec]  # committed: held-out sentences, voices never used in training
    bootstrap: list[corpus.UtteranceSpec]  # short grammar-free utterances of 46 words: the first training phase
    digits: list[corpus.UtteranceSpec]  # committed: digit strings, unseen voices, unseen speaking rates
    commands: list[corpus.UtteranceSpec]  # committed: short commands, unseen voices, unseen speaking rates
    extras: list[corpus.UtteranceSpec]  # training digit strings and short commands (empty unless asked for)


def plan_corpus(seed: int = DEFAULT_SEED, train_utterances: int = DEFAULT_TRAIN_UTTERANCES,
                heldout_per_split: int = DEFAULT_HELDOUT_PER_SPLIT, dev_utterances: int = DEFAULT_DEV_UTTERANCES,
                bootstrap_utterances: int = DEFAULT_BOOTSTRAP_UTTERANCES, more_voices: bool = False,
                short_per_set: int = DEFAULT_SHORT_PER_SET, extra_utterances: int = 0) -> CorpusPlan:
    """Every utterance of the recipe, deterministically from the seed (cheap: no audio is rendered).

    Held-out sentences are drawn first and excluded from training by exact text. ``more_voices``: training
    sentences (not the bootstrap's) are spoken by 78 voice variants with formant/tempo warps instead of the 14 of
    the seen-voice evaluation set; the held-out and dev sets are the same either way. The short held-out sets and
    the ``extra_utterances`` (training digit strings and commands) come from generators of their own, so they
    change nothing else.
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
    short_rng = random.Random(seed + 2)
    digit_sentences = corpus.make_digit_sentences(short_rng, short_per_set)
    command_sentences = corpus.make_command_sentences(short_rng, short_per_set, exclude=held_sentences)
    specs_digits = corpus.make_specs(short_rng, digit_sentences, unseen, "digits", wpm_ranges=corpus.UNSEEN_WPM)
    specs_commands = corpus.make_specs(short_rng, command_sentences, unseen, "commands",
                                       wpm_ranges=corpus.UNSEEN_WPM)
    extra_rng = random.Random(seed + 3)
    held_short = set(digit_sentences) | set(command_sentences) | set(held_sentences)
    extra_sentences = (corpus.make_digit_sentences(extra_rng, extra_utterances // 2, exclude=held_short)
                       + corpus.make_command_sentences(extra_rng, extra_utterances - extra_utterances // 2,
                                                       exclude=held_short))
    voices = corpus.training_voices() if more_voices else seen
    specs_extra = corpus.make_specs(extra_rng, extra_sentences, voices, "extra",
                                    warp_range=corpus.TRAIN_WARP_RANGE if more_voices else None)
    return CorpusPlan(train=specs_train, dev=specs_dev, seen=specs_seen, unseen=specs_unseen, bootstrap=specs_boot,
                      digits=specs_digits, commands=specs_commands, extras=specs_extra)


def speech_span(spec: corpus.UtteranceSpec, samples: int) -> tuple[int, int]:
    """Where espeak-ng's speech lies in a rendered utterance: inside the silences ``corpus.render`` added."""
    lead = int(spec.lead_silence_s * corpus.SAMPLE_RATE_HZ)
    trail = int(spec.trail_silence_s * corpus.SAMPLE_RATE_HZ)
    return lead, samples - trail


def write_heldout(directory: Path, sets: list[tuple[str, list[tuple[corpus.UtteranceSpec, np.ndarray]]]]) -> int:
    """Write FLAC clips and ``manifest.tsv`` (file, split, voice, seconds, text); returns the number of clips."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.flac"):
        old.unlink()
    rows = ["file\tsplit\tvoice\tseconds\ttext"]
    for split, rendered in sets:
        for spec, audio in rendered:
            name = f"{spec.uid}.flac"
            sf.write(directory / name, audio, corpus.SAMPLE_RATE_HZ, subtype="PCM_16")
            rows.append(f"{name}\t{split}\t{spec.voice.espeak_name}\t{audio.shape[0] / corpus.SAMPLE_RATE_HZ:.3f}"
                        f"\t{spec.text}")
    (directory / MANIFEST).write_text("\n".join(rows) + "\n")
    return len(rows) - 1


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
                        help="train on 78 voice variants with formant/tempo warps (see docs/TEST_MODEL.md)")
    parser.add_argument("--cut-variety", action="store_true",
                        help="redraw every example's leading/trailing silence each time it is drawn (issue 18)")
    parser.add_argument("--extra-utterances", type=int, default=0,
                        help=f"training digit strings and short commands (the fine-tune uses "
                             f"{DEFAULT_EXTRA_UTTERANCES})")
    parser.add_argument("--minutes", type=float, default=TrainOptions.max_minutes, help="training time budget")
    parser.add_argument("--short-per-set", type=int, default=DEFAULT_SHORT_PER_SET)
    parser.add_argument("--finetune", action="store_true",
                        help="the recipe's second stage: continue the model in --out with " + ", ".join(
                            f"{k.replace('_', '-')}={v}" for k, v in FINETUNE.items()))
    args = parser.parse_args()
    if args.finetune:
        for key, value in FINETUNE.items():
            setattr(args, key, value)
        args.resume = args.resume or args.out / MODEL_FILE
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    plan = plan_corpus(args.seed, args.train_utterances, args.heldout_per_split, args.dev_utterances,
                       args.bootstrap_utterances, more_voices=args.more_voices, short_per_set=args.short_per_set,
                       extra_utterances=args.extra_utterances)
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

        def render(specs: list[corpus.UtteranceSpec], min_s: float = corpus.MIN_UTTERANCE_S
                   ) -> list[tuple[corpus.UtteranceSpec, np.ndarray]]:
            kept = []
            for spec, audio in corpus.render_all(specs, workers=args.threads):
                seconds = audio.shape[0] / corpus.SAMPLE_RATE_HZ
                if min_s <= seconds <= corpus.MAX_UTTERANCE_S:
                    kept.append((spec, _to_int16(audio)))
            return kept

        boot_set = render(plan.bootstrap) if args.bootstrap_steps > 0 else []
        train_set = render(specs_train) + render(plan.extras)
        dev_set = render(specs_dev)
        hours = sum(a.shape[0] for _, a in train_set) / corpus.SAMPLE_RATE_HZ / 3600
        logger.info("rendered %d training utterances (%.1f h) in %.1f min", len(train_set), hours,
                    (time.monotonic() - started) / 60)
        examples = [Example(a, model.tokenizer.text_to_ids(s.text), speech_span(s, a.shape[0])) for s, a in train_set]
        bootstrap = [Example(a, model.tokenizer.text_to_ids(s.text), speech_span(s, a.shape[0])) for s, a in boot_set]
        dev_clips = [(a, s.text) for s, a in dev_set]

        opts = replace(TrainOptions(), steps=args.steps, batch_audio_s=args.batch_audio_s, seed=args.seed,
                       lr=args.lr, warmup_steps=args.warmup_steps, curriculum_steps=args.curriculum_steps,
                       bootstrap_steps=args.bootstrap_steps, max_minutes=args.minutes, cut_variety=args.cut_variety)
        curve = train(model, examples, opts, evaluate=lambda step: dev_wer(model, dev_clips), bootstrap=bootstrap)

        out: Path = args.out
        out.mkdir(parents=True, exist_ok=True)
        model.eval()
        model.save_to(str(out / MODEL_FILE))
        logger.info("saved %s (%.1f MB)", out / MODEL_FILE, (out / MODEL_FILE).stat().st_size / 1e6)

    with (out / (FINETUNE_CURVE_FILE if args.resume is not None else CURVE_FILE)).open("w") as f:
        f.write("step\tminutes\tdev_wer_percent\n")
        for step, minutes, wer in curve:
            f.write(f"{step}\t{minutes:.1f}\t{wer:.2f}\n")

    if args.resume is None:  # a fine-tune keeps the committed held-out set (the plan would render the same clips)
        write_heldout(out / HELDOUT_DIR, [("seen", render(specs_seen)), ("unseen", render(specs_unseen))])
    n_short = write_heldout(out / SHORT_DIR, [("digits", render(plan.digits, MIN_SHORT_S)),
                                              ("commands", render(plan.commands, MIN_SHORT_S))])
    logger.info("recipe finished in %.1f min (%d short held-out clips)", (time.monotonic() - started) / 60, n_short)


if __name__ == "__main__":
    main()
