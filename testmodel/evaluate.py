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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from parakeet_worker.config import Settings
from parakeet_worker.engine.options import EngineOptions
from parakeet_worker.model import Recognizer, load_model
from parakeet_worker.streaming import BatchedVad, StreamingRecognizer
from testmodel.heldout import (
    ASSETS,
    MODEL_PATH,
    SAMPLE_RATE_HZ,
    SHORT_DIR,
    Clip,
    LongClip,
    WerStats,
    concatenate,
    load_heldout,
    wer,
)
from testmodel.robustness import Robustness, measure, speech_bounds

logger = logging.getLogger("testmodel.evaluate")

DOC = Path(__file__).resolve().parent.parent / "docs" / "TEST_MODEL.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
SEEN, UNSEEN, LONG = "seen voices, 1–20 s", "unseen voices, 1–20 s", "60 s concatenations (pauses 0.4–1.5 s)"
DIGITS, COMMANDS = "digit strings, unseen voices and rates", "short commands, unseen voices and rates"
GOAL_WER = {SEEN: 5.0, UNSEEN: 7.0, DIGITS: 5.0}  # issue 2's goals for the held-out clips, issue 18's for digits
ROBUST_ALL, ROBUST_SUBSET = "all held-out clips", "first 10 clips of each split"
GOAL_ROBUST_PERCENT = 97.0  # issue 18: clips whose transcript survives every cut-point variant
GOAL_STREAMED_PERCENT = 95.0  # issue 18: clips whose streamed final is exactly their batch transcript
STREAMED_PAUSE_S = 0.5  # the pause after each streamed clip (its own noise floor): the final pass cuts 0.16 s into it
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


def documented_streamed(label: str) -> int:
    """Clips of the streamed-vs-batch row ``label`` whose streamed final was the batch transcript, as last written."""
    found = re.search(rf"^\| {re.escape(label)} \| \d+ \| (\d+) \| [\d.]+ \|$", DOC.read_text(), re.M)
    if not found:
        raise LookupError(f"docs/TEST_MODEL.md has no '{label}' streamed-vs-batch row: run `python -m "
                          "testmodel.evaluate --write`")
    return int(found.group(1))


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


def pause_end(audio: np.ndarray, early_final_s: float) -> int | None:
    """Where the engine's final pass stops in ``audio`` heard as one utterance: ``early_final_s`` into a trailing
    pause the VAD judges clearly silent (``EarlyPasses.pass_end``), or None (all of it)."""
    vad = BatchedVad()
    heard = vad.new_stream()
    vad.process([heard], [audio])
    return heard.pause_end(audio.shape[0], early_final_s)


def streamed_final(streamer: StreamingRecognizer, audio: np.ndarray, early_final_s: float) -> str:
    """The final of ``audio`` streamed alone through ``streamer`` (a fresh stream, stepped as soon as each chunk is
    ready), its final pass stopping where the engine's would (:func:`pause_end`)."""
    state = streamer.new_stream()
    streamer.accept(state, audio)
    state.pass_end = pause_end(audio, early_final_s)
    while streamer.ready(state):
        streamer.step([state])
    return streamer.finalize([state])[0].committed_text


def with_pause(audio: np.ndarray, seconds: float = STREAMED_PAUSE_S) -> np.ndarray:
    """The clip followed by ``seconds`` more of its own trailing noise floor (a speaker pausing after it)."""
    floor = audio[speech_bounds(audio)[1]:]
    samples = round(seconds * SAMPLE_RATE_HZ)
    pause = np.resize(floor, samples) if floor.size else np.zeros(samples)
    return np.concatenate([audio, pause.astype(np.float32)])


@dataclass(frozen=True)
class StreamedVsBatch:
    clips: int
    same: int  # clips whose streamed final is exactly the batch transcript of the clip
    changed: tuple[tuple[str, str, str], ...]  # (clip, batch transcript, streamed final)

    @property
    def same_percent(self) -> float:
        return 100.0 * self.same / self.clips if self.clips else 0.0


def streamed_vs_batch(recognizer: Recognizer, clips: list[Clip]) -> StreamedVsBatch:
    """Each clip streamed alone (followed by a pause, default streaming options) against its batch transcript."""
    options = EngineOptions()
    streamer = StreamingRecognizer(recognizer, options.streaming)
    batch = transcribe_all(recognizer, [c.audio for c in clips])
    changed = []
    for clip, expected in zip(clips, batch, strict=True):
        streamed = streamed_final(streamer, with_pause(clip.audio), options.stream_early_final_s)
        if streamed != expected:
            changed.append((clip.name, expected, streamed))
    return StreamedVsBatch(len(clips), len(clips) - len(changed), tuple(changed))


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
    short = load_heldout(SHORT_DIR) if (SHORT_DIR / "manifest.tsv").exists() else []
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
    for split, label in (("digits", DIGITS), ("commands", COMMANDS)):
        part = [c for c in short if c.split == split]
        if part:
            lines.append(row(label, len(part), sum(c.seconds for c in part), score(recognizer, part)))
    for lo, hi in ((0, 5), (5, 10), (10, 21)):
        part = [c for c in clips if lo <= c.seconds < hi]
        lines.append(row(f"all voices, {lo}–{min(hi, 20)} s", len(part), sum(c.seconds for c in part), score(recognizer, part)))
    longs = concatenate(clips, target_s=60.0)
    lines.append(row(LONG, len(longs),
                     sum(c.audio.shape[0] for c in longs) / 16_000, score_long(recognizer, longs)))
    lines.append("")
    lines += robustness_lines(robustness_of(recognizer, clips + short),
                              robustness_of(recognizer, robustness_subset(clips)))
    lines.append("")
    streamed = streamed_vs_batch(recognizer, clips + short)
    streamed_subset = streamed_vs_batch(recognizer, robustness_subset(clips))
    lines += [f"Streamed final vs batch transcript (each clip streamed alone with {STREAMED_PAUSE_S:g} s of its noise "
              "floor after it, default streaming options, the final pass cut where the engine cuts it; goal ≥ "
              f"{GOAL_STREAMED_PERCENT:.0f} % exact):", "",
              "| clips | n | streamed final = batch transcript | % |", "|---|---|---|---|"]
    lines += [f"| {label} | {r.clips} | {r.same} | {r.same_percent:.1f} |"
              for label, r in ((ROBUST_ALL, streamed), (ROBUST_SUBSET, streamed_subset))]
    lines.append("")
    for name, expected, got in streamed.changed:
        logger.info("streamed final differs on %s: batch %r, streamed %r", name, expected, got)
    lines.append(f"Measured by `python -m testmodel.evaluate --write` in {time.monotonic() - started:.0f} s "
                 f"on {torch.get_num_threads()} CPU threads.")
    for name, title in (("training_curve.tsv", "Training curve, first stage"),
                        ("training_curve_finetune.tsv", "Training curve, second stage (`--finetune`)")):
        curve_file = ASSETS / name
        if curve_file.exists():
            lines += ["", f"{title} (dev set: 40 held-out sentences, seen voices, as rendered):", "",
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
