"""The committed held-out evaluation set: loading clips, building long concatenations, scoring WER."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np
import soundfile as sf

SAMPLE_RATE_HZ = 16_000
ASSETS = Path(__file__).resolve().parent.parent / "tests" / "assets"
MODEL_PATH = ASSETS / "parakeet-tdt-test.nemo"
HELDOUT_DIR = ASSETS / "heldout"
SHORT_DIR = ASSETS / "heldout_short"  # digit strings and short commands, unseen voices at unseen speaking rates


@dataclass(frozen=True)
class Clip:
    name: str
    split: str  # "seen" (voices used in training) or "unseen" (voices never used); "digits", "commands" (SHORT_DIR)
    voice: str
    text: str
    audio: np.ndarray  # float32 mono 16 kHz

    @property
    def seconds(self) -> float:
        return self.audio.shape[0] / SAMPLE_RATE_HZ


@dataclass(frozen=True)
class LongClip:
    audio: np.ndarray
    text: str
    parts: tuple[str, ...]  # names of the clips it is made of


@dataclass(frozen=True)
class WerStats:
    wer_percent: float
    words: int
    substitutions: int
    deletions: int
    insertions: int


def load_heldout(directory: Path = HELDOUT_DIR) -> list[Clip]:
    rows = (directory / "manifest.tsv").read_text().strip().splitlines()[1:]
    clips = []
    for row in rows:
        name, split, voice, _seconds, text = row.split("\t")
        audio, rate = sf.read(directory / name, dtype="float32")
        if rate != SAMPLE_RATE_HZ:
            raise ValueError(f"{name}: expected {SAMPLE_RATE_HZ} Hz, found {rate} Hz")
        clips.append(Clip(name, split, voice, text, audio))
    return clips


def concatenate(clips: list[Clip], target_s: float = 60.0, seed: int = 7,
                pause_s: tuple[float, float] = (0.4, 1.5)) -> list[LongClip]:
    """Group clips (in a seeded random order) into files of about ``target_s`` seconds with silent pauses."""
    rng = random.Random(seed)
    order = list(clips)
    rng.shuffle(order)
    out: list[LongClip] = []
    pieces: list[np.ndarray] = []
    group: list[Clip] = []
    total = 0.0
    for clip in order:
        pause = np.zeros(int(rng.uniform(*pause_s) * SAMPLE_RATE_HZ), np.float32)
        pieces += [clip.audio, pause]
        group.append(clip)
        total += clip.seconds + pause.shape[0] / SAMPLE_RATE_HZ
        if total >= target_s:
            out.append(LongClip(np.concatenate(pieces), " ".join(c.text for c in group), tuple(c.name for c in group)))
            pieces, group, total = [], [], 0.0
    return out


def build_long_audio(clips: list[Clip], minutes: float, seed: int = 11) -> LongClip:
    """One file of at least ``minutes`` built by cycling through the held-out clips with pauses between them."""
    rng = random.Random(seed)
    pieces: list[np.ndarray] = []
    texts: list[str] = []
    names: list[str] = []
    total = 0
    target = int(minutes * 60 * SAMPLE_RATE_HZ)
    while total < target:
        clip = clips[len(names) % len(clips)]
        pause = np.zeros(int(rng.uniform(0.4, 1.5) * SAMPLE_RATE_HZ), np.float32)
        pieces += [clip.audio, pause]
        texts.append(clip.text)
        names.append(clip.name)
        total += clip.audio.shape[0] + pause.shape[0]
    return LongClip(np.concatenate(pieces), " ".join(texts), tuple(names))


def wer(hypotheses: list[str], references: list[str]) -> WerStats:
    """Corpus-level WER over pairs (lower-cased; the vocabulary has no punctuation)."""
    out = jiwer.process_words([r.lower() for r in references], [h.lower() for h in hypotheses])
    words = out.hits + out.substitutions + out.deletions
    return WerStats(100.0 * out.wer, words, out.substitutions, out.deletions, out.insertions)
