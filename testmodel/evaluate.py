"""Measure the committed test model on the committed held-out set and write the results into docs/TEST_MODEL.md.

    .venv/bin/python -m testmodel.evaluate            # prints the table
    .venv/bin/python -m testmodel.evaluate --write    # also replaces the results block in docs/TEST_MODEL.md

The model is loaded through the service's own loading code (:func:`parakeet_worker.model.load_model`) and run through
its offline recognizer, so the numbers are those the service produces.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path

import torch

from parakeet_worker.config import Settings
from parakeet_worker.model import Recognizer, load_model
from testmodel.heldout import ASSETS, MODEL_PATH, Clip, LongClip, WerStats, concatenate, load_heldout, wer
from testmodel.robustness import Robustness, measure

logger = logging.getLogger("testmodel.evaluate")

DOC = Path(__file__).resolve().parent.parent / "docs" / "TEST_MODEL.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
SEEN, UNSEEN, LONG = "seen voices, 1–20 s", "unseen voices, 1–20 s", "60 s concatenations (pauses 0.4–1.5 s)"
GOAL_WER = {SEEN: 5.0, UNSEEN: 7.0}  # issue 2's goals for the held-out clips
ROBUST_ALL, ROBUST_SUBSET = "all 80 held-out clips", "first 10 clips of each split"
GOAL_ROBUST_PERCENT = 97.0  # issue 18: clips whose transcript survives every cut-point variant
SUBSET_PER_SPLIT = 10


def robustness_subset(clips: list[Clip]) -> list[Clip]:
    """The fast test's clips: the first :data:`SUBSET_PER_SPLIT` of each split."""
    return [c for split in ("seen", "unseen") for c in [c for c in clips if c.split == split][:SUBSET_PER_SPLIT]]


def documented_robust(label: str) -> tuple[int, ...]:
    """The robustness row ``label`` as ``--write`` last wrote it: robust clips, then clips unchanged per variant."""
    found = re.search(rf"^\| {re.escape(label)} \| \d+ \| (\d+) \| [\d.]+ \|([\d |]+)\|$", DOC.read_text(), re.M)
    if not found:
        raise LookupError(f"docs/TEST_MODEL.md has no '{label}' robustness row: run `python -m testmodel.evaluate "
                          "--write`")
    return (int(found.group(1)), *(int(n) for n in found.group(2).split("|")))


def robustness_of(recognizer: Recognizer, clips: list[Clip]) -> Robustness:
    return measure(lambda batch: transcribe_all(recognizer, batch), [(c.name, c.audio) for c in clips])


def robustness_lines(full: Robustness, subset: Robustness) -> list[str]:
    variants = list(full.same_by_variant)
    lines = ["Cut-point robustness (`testmodel/robustness.py`): clips whose transcript is exactly the rendered clip's "
             f"under every variant (goal ≥ {GOAL_ROBUST_PERCENT:.0f} %), and per variant the clips unchanged:", "",
             "| clips | n | robust | robust % | " + " | ".join(variants) + " |",
             "|---|---|---|---|" + "---|" * len(variants)]
    for label, r in ((ROBUST_ALL, full), (ROBUST_SUBSET, subset)):
        lines.append(f"| {label} | {r.clips} | {r.robust} | {r.robust_percent:.1f} | "
                     + " | ".join(str(r.same_by_variant[v]) for v in variants) + " |")
    return lines


def documented_wer(label: str) -> float:
    """The WER % of the results row ``label`` as ``--write`` last wrote it into docs/TEST_MODEL.md."""
    found = re.search(rf"^\| {re.escape(label)} \| \d+ \| [\d.]+ \| \d+ \| ([\d.]+) \|", DOC.read_text(), re.M)
    if not found:
        raise LookupError(f"docs/TEST_MODEL.md has no '{label}' row: run `python -m testmodel.evaluate --write`")
    return float(found.group(1))


def transcribe_all(recognizer: Recognizer, audio: list, batch_size: int = 8) -> list[str]:
    texts: list[str] = []
    for i in range(0, len(audio), batch_size):
        texts += [t.text for t in recognizer.transcribe(audio[i : i + batch_size])]
    return texts


def score(recognizer: Recognizer, clips: list[Clip]) -> WerStats:
    return wer(transcribe_all(recognizer, [c.audio for c in clips]), [c.text for c in clips])


def score_long(recognizer: Recognizer, longs: list[LongClip]) -> WerStats:
    return wer(transcribe_all(recognizer, [c.audio for c in longs], batch_size=1), [c.text for c in longs])


def row(label: str, n: int, seconds: float, stats: WerStats) -> str:
    return (f"| {label} | {n} | {seconds / 60:.1f} | {stats.words} | {stats.wer_percent:.2f} | "
            f"{stats.substitutions} / {stats.deletions} / {stats.insertions} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(MODEL_PATH))
    parser.add_argument("--write", action="store_true", help="rewrite the results block of docs/TEST_MODEL.md")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)

    loaded = load_model(Settings(model=args.model))
    recognizer = Recognizer(loaded)
    clips = load_heldout()
    started = time.monotonic()
    lines = [
        f"Model `{Path(args.model).name}` ({sum(p.numel() for p in loaded.model.parameters()):,} parameters), "
        f"{loaded.dtype} on {loaded.device}, greedy TDT decoding, full attention, one pass per file.",
        "",
        "| held-out set | files | minutes | words | WER % | sub / del / ins |",
        "|---|---|---|---|---|---|",
    ]
    for split, label in (("seen", SEEN), ("unseen", UNSEEN)):
        part = [c for c in clips if c.split == split]
        lines.append(row(label, len(part), sum(c.seconds for c in part), score(recognizer, part)))
    for lo, hi in ((0, 5), (5, 10), (10, 21)):
        part = [c for c in clips if lo <= c.seconds < hi]
        lines.append(row(f"all voices, {lo}–{min(hi, 20)} s", len(part), sum(c.seconds for c in part), score(recognizer, part)))
    longs = concatenate(clips, target_s=60.0)
    lines.append(row(LONG, len(longs),
                     sum(c.audio.shape[0] for c in longs) / 16_000, score_long(recognizer, longs)))
    lines.append("")
    lines += robustness_lines(robustness_of(recognizer, clips), robustness_of(recognizer, robustness_subset(clips)))
    lines.append("")
    lines.append(f"Measured by `python -m testmodel.evaluate --write` in {time.monotonic() - started:.0f} s "
                 f"on {torch.get_num_threads()} CPU threads.")
    curve_file = ASSETS / "training_curve.tsv"
    if curve_file.exists():
        lines += ["", "Training curve (dev set: 40 held-out sentences, seen voices):", "",
                  "| step | minutes | dev WER % |", "|---|---|---|"]
        for line in curve_file.read_text().strip().splitlines()[1:]:
            step, minutes, dev = line.split("\t")
            lines.append(f"| {step} | {minutes} | {dev} |")
    block = "\n".join(lines)
    sys.stdout.write(block + "\n")  # this script's output is the report
    if args.write:
        text = DOC.read_text()
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        DOC.write_text(f"{head}{START}\n{block}\n{END}{tail}")
        logger.info("wrote results into %s", DOC)


if __name__ == "__main__":
    main()
