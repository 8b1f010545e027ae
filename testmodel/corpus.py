"""Synthetic English speech corpus for the test model, spoken by espeak-ng.

The corpus is small on purpose (a closed vocabulary of ~190 words) but covers what the service's tests need:
utterances from 1 to 20 seconds, several accents and voice variants, speaking rates, pitch, leading and
trailing silence, light noise and gain. Voices and sentences are split so that the held-out evaluation set has
sentences never used in training, spoken both by voices seen in training and by voices never seen.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

logger = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16_000
ESPEAK_RATE_HZ = 22_050
MIN_UTTERANCE_S = 1.0
MAX_UTTERANCE_S = 20.0

NUMBERS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand"
).split()
VERBS = (
    "turn open close start stop play pause go move set call send show find check read write bring take put "
    "give make cancel repeat save delete wait"
).split()
MODIFIERS = (
    "on off up down left right back forward next last first second third new old big small hot cold fast "
    "slow loud quiet red green blue yellow white black"
).split()
NOUNS = (
    "light lights door window music radio kitchen room house car phone message email timer alarm clock "
    "minute minutes hour hours day week morning evening night today tomorrow temperature volume screen "
    "camera garage garden table chair water coffee book list file picture song video meeting office report"
).split()
FUNCTION_WORDS = (
    "the a to of and or in at for with from by is are was be it this that these my your our their his her "
    "we you they i me he she not no yes please can will would should do does did have has what where when "
    "how why which who there here then now all some every about after before"
).split()

CONNECTORS = (["and"], ["then"], ["or"], ["and", "then"], ["after", "that"])

VOCABULARY: tuple[str, ...] = tuple(dict.fromkeys(NUMBERS + VERBS + MODIFIERS + NOUNS + FUNCTION_WORDS))

# Accents are espeak-ng's English voices; variants change the speaker (formants, breathiness, pitch range).
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
# The "seen voices" of the evaluation set (and of the dev set that draws the training curve).
TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f5", "klatt", "klatt2", "Andy", "Annie")
# Training also speaks through these: more speakers per step is what makes voices never heard generalise.
# (espeak-ng's robotic, whispering and croaking variants are left out.)
EXTRA_TRAIN_VARIANTS = (
    "m8", "klatt3", "klatt5", "klatt6", "Alex", "Andrea", "AnxiousAndy", "Denis", "Diogo", "Gene", "Gene2",
    "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen", "RicishayMax", "Storm",
    "Tweaky", "adam", "anika", "announcer", "antonio", "aunty", "belinda", "benjamin", "boris", "caleb", "ed",
    "edward", "edward2", "grandma", "grandpa", "gustave", "iven", "iven2", "iven3", "iven4", "john", "kaukovalta",
    "linda", "max", "marcelo", "michel", "miguel", "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert",
    "sandro", "shelby", "steph", "steph2", "steph3", "travis", "victor", "zac",
)
SEEN_VOICE_WEIGHT = 3
# Never used in training: the "unseen voices" of the evaluation set.
UNSEEN_VARIANTS = ("m6", "f4", "klatt4", "Alicia", "david")
# Training audio is resampled as if espeak-ng had written it at 22050 Hz x warp: warp > 1 raises formants and
# pitch and speeds speech up (a shorter vocal tract), < 1 the opposite. Quantised so resampling stays cheap.
TRAIN_WARP_RANGE = (0.92, 1.08)
WARP_STEP_HZ = 50


@dataclass(frozen=True)
class Voice:
    accent: str
    variant: str

    @property
    def espeak_name(self) -> str:
        return f"{self.accent}+{self.variant}"


@dataclass(frozen=True)
class UtteranceSpec:
    """Everything needed to render one utterance deterministically."""

    uid: str
    text: str
    voice: Voice
    words_per_minute: int
    pitch: int
    lead_silence_s: float
    trail_silence_s: float
    noise_dbfs: float
    gain_db: float
    seed: int
    warp: float = 1.0  # source-rate scale applied when resampling to 16 kHz (1.0: none)


def seen_voices() -> list[Voice]:
    return [Voice(a, v) for a in ACCENTS for v in TRAIN_VARIANTS]


def training_voices() -> list[Voice]:
    """Every voice training speaks through, to draw from uniformly: the seen voices of the evaluation set, listed
    ``SEEN_VOICE_WEIGHT`` times (so they still speak ~40 % of the corpus), and the extra variants."""
    seen = [Voice(a, v) for a in ACCENTS for v in TRAIN_VARIANTS]
    return seen * SEEN_VOICE_WEIGHT + [Voice(a, v) for a in ACCENTS for v in EXTRA_TRAIN_VARIANTS]


def unseen_voices() -> list[Voice]:
    return [Voice(a, v) for a in ACCENTS for v in UNSEEN_VARIANTS]


def _number_phrase(rng: random.Random) -> list[str]:
    kind = rng.random()
    if kind < 0.4:
        return [rng.choice(NUMBERS[:20])]
    if kind < 0.7:
        return [rng.choice(NUMBERS[20:28]), rng.choice(NUMBERS[1:10])]
    if kind < 0.85:
        return [rng.choice(NUMBERS[1:10]), "hundred"] + ([] if rng.random() < 0.5 else ["and", rng.choice(NUMBERS[1:20])])
    return [rng.choice(NUMBERS[1:10]) for _ in range(rng.randint(3, 6))]


def _noun_phrase(rng: random.Random) -> list[str]:
    det = rng.choice(["the", "a", "my", "your", "our", "their", "his", "her", "this", "that", "every", "some"])
    words = [det]
    if rng.random() < 0.4:
        words.append(rng.choice(MODIFIERS[12:]))
    words.append(rng.choice(NOUNS))
    return words


def _clause(rng: random.Random) -> list[str]:
    kind = rng.randrange(8)
    if kind == 0:
        return [rng.choice(VERBS), rng.choice(["on", "off", "up", "down"]), *_noun_phrase(rng)]
    if kind == 1:
        return ["set", *_noun_phrase(rng), "to", *_number_phrase(rng)]
    if kind == 2:
        return ["please", rng.choice(VERBS), *_noun_phrase(rng), rng.choice(["in", "at", "from", "with"]), *_noun_phrase(rng)]
    if kind == 3:
        return [rng.choice(["what", "where", "when", "how", "why", "which"]), rng.choice(["is", "was", "are", "does", "did"]),
                *_noun_phrase(rng), rng.choice(["now", "today", "there", "here", "tomorrow"])]
    if kind == 4:
        return [rng.choice(["we", "you", "they", "i", "he", "she"]), rng.choice(["can", "will", "would", "should", "do", "did"]),
                rng.choice(["not", "now", "then", "all"]), rng.choice(VERBS), *_noun_phrase(rng)]
    if kind == 5:
        return ["wait", *_number_phrase(rng), rng.choice(["minutes", "hours", "minute", "hour"]),
                rng.choice(["before", "after"]), "the", rng.choice(NOUNS)]
    if kind == 6:
        return [rng.choice(["yes", "no", "now", "then"]), rng.choice(VERBS), rng.choice(MODIFIERS), *_noun_phrase(rng)]
    return [rng.choice(VOCABULARY) for _ in range(rng.randint(2, 7))]


def make_sentence(rng: random.Random, n_words: int) -> str:
    """A sentence of about ``n_words`` words: grammar-like clauses, or (one time in four) random vocabulary."""
    if rng.random() < 0.25:
        return " ".join(rng.choice(VOCABULARY) for _ in range(n_words))
    words: list[str] = []
    while len(words) < n_words:
        if words and rng.random() < 0.5:
            words.extend(rng.choice(CONNECTORS))
        words.extend(_clause(rng))
    return " ".join(words[: max(n_words, 1)])


def _distinct(count: int, exclude: Iterable[str], draw: Callable[[], str]) -> list[str]:
    """``count`` distinct results of ``draw()`` that are not in ``exclude``, in the order drawn."""
    taken = set(exclude)
    out: list[str] = []
    while len(out) < count:
        sentence = draw()
        if sentence not in taken:
            taken.add(sentence)
            out.append(sentence)
    return out


def make_sentences(rng: random.Random, count: int, exclude: Iterable[str] = ()) -> list[str]:
    """``count`` distinct sentences whose lengths spread over 1..60 words (about 1..20 s of speech)."""

    def draw() -> str:
        r = rng.random()
        n_words = rng.randint(1, 6) if r < 0.3 else rng.randint(7, 24) if r < 0.8 else rng.randint(25, 60)
        return make_sentence(rng, n_words)

    return _distinct(count, exclude, draw)


# The bootstrap vocabulary: 46 frequent words (numbers, verbs, nouns) spoken 1-5 at a time, in random order. A
# transducer trained from scratch finds its acoustic alignment on such short, grammar-free utterances within a few
# hundred steps; on the full 1-20 s grammar corpus it did not within 1,300 (see docs/TEST_MODEL.md).
BOOTSTRAP_WORDS: tuple[str, ...] = tuple(NUMBERS[:20] + VERBS[:13] + NOUNS[:13])


def make_bootstrap_sentences(rng: random.Random, count: int, exclude: Iterable[str] = ()) -> list[str]:
    return _distinct(count, exclude, lambda: " ".join(rng.choice(BOOTSTRAP_WORDS) for _ in range(rng.randint(1, 5))))


# Digit strings and short commands: the words voice-agent tests use. The held-out sets of them are spoken by the
# unseen voices at speaking rates outside training's 130-210 words/minute.
DIGITS: tuple[str, ...] = tuple(NUMBERS[:10])
SINGLE_COMMANDS: tuple[str, ...] = ("yes", "no", "stop", "cancel", "pause", "play", "wait", "repeat", "next",
                                    "please", "go", "start", "close", "open", "save", "delete")
TRAIN_WPM = (130, 210)
UNSEEN_WPM = ((108, 124), (216, 236))


def make_digit_sentences(rng: random.Random, count: int, exclude: Iterable[str] = ()) -> list[str]:
    """``count`` distinct strings of 3-10 digits, spoken one by one ("two zero nine six six five")."""
    return _distinct(count, exclude, lambda: " ".join(rng.choice(DIGITS) for _ in range(rng.randint(3, 10))))


def make_command_sentences(rng: random.Random, count: int, exclude: Iterable[str] = ()) -> list[str]:
    """``count`` distinct short commands of 1-6 words: single words ("stop", "yes") and the corpus's command
    clauses ("turn off the lights", "set my timer to ten", "pause the music")."""

    def draw() -> str:
        kind = rng.random()
        if kind < 0.2:
            words = [rng.choice(SINGLE_COMMANDS)]
        elif kind < 0.45:
            words = [rng.choice(VERBS), rng.choice(["on", "off", "up", "down"]), *_noun_phrase(rng)]
        elif kind < 0.6:
            words = ["set", *_noun_phrase(rng), "to", *_number_phrase(rng)[:2]]
        elif kind < 0.8:
            words = [rng.choice(VERBS), *_noun_phrase(rng)]
        else:
            words = [rng.choice(["yes", "no", "now", "please"]), rng.choice(VERBS), *_noun_phrase(rng)]
        return " ".join(words[:6])

    return _distinct(count, exclude, draw)


def make_specs(rng: random.Random, sentences: list[str], voices: list[Voice], prefix: str,
               warp_range: tuple[float, float] | None = None,
               wpm_ranges: tuple[tuple[int, int], ...] = (TRAIN_WPM,)) -> list[UtteranceSpec]:
    """One spec per sentence. Without ``warp_range`` no warp is drawn (and the generator is not consumed for it);
    with one speaking-rate range (the default, training's) none is drawn to pick it."""
    specs = []
    for i, text in enumerate(sentences):
        warp = 1.0
        if warp_range is not None:
            lo, hi = (round(ESPEAK_RATE_HZ * w / WARP_STEP_HZ) for w in warp_range)
            warp = rng.randint(lo, hi) * WARP_STEP_HZ / ESPEAK_RATE_HZ
        wpm_range = wpm_ranges[0] if len(wpm_ranges) == 1 else rng.choice(wpm_ranges)
        specs.append(
            UtteranceSpec(
                uid=f"{prefix}-{i:05d}",
                text=text,
                voice=rng.choice(voices),
                words_per_minute=rng.randint(*wpm_range),
                pitch=rng.randint(25, 75),
                lead_silence_s=rng.uniform(0.05, 0.8),
                trail_silence_s=rng.uniform(0.05, 0.8),
                noise_dbfs=rng.uniform(-70.0, -45.0),
                gain_db=rng.uniform(-12.0, 3.0),
                seed=rng.randrange(2**31),
                warp=warp,
            )
        )
    return specs


def render(spec: UtteranceSpec, workdir: Path) -> np.ndarray:
    """Speak one utterance with espeak-ng and apply silence, gain and noise; float32 mono 16 kHz."""
    wav = workdir / f"{spec.uid}.wav"
    subprocess.run(
        ["espeak-ng", "-v", spec.voice.espeak_name, "-s", str(spec.words_per_minute), "-p", str(spec.pitch),
         "-w", str(wav), spec.text],
        check=True,
        capture_output=True,
    )
    speech, rate = sf.read(wav, dtype="float32")
    wav.unlink()
    if rate != ESPEAK_RATE_HZ:
        raise RuntimeError(f"espeak-ng wrote {rate} Hz audio, expected {ESPEAK_RATE_HZ} Hz")
    source_hz = round(ESPEAK_RATE_HZ * spec.warp / WARP_STEP_HZ) * WARP_STEP_HZ
    g = math.gcd(source_hz, SAMPLE_RATE_HZ)
    speech = resample_poly(speech, SAMPLE_RATE_HZ // g, source_hz // g).astype(np.float32)  # -> 16000 Hz
    rng = np.random.default_rng(spec.seed)
    lead = np.zeros(int(spec.lead_silence_s * SAMPLE_RATE_HZ), np.float32)
    trail = np.zeros(int(spec.trail_silence_s * SAMPLE_RATE_HZ), np.float32)
    audio = np.concatenate([lead, speech, trail])
    peak = float(np.max(np.abs(audio))) or 1.0
    audio = audio / peak * 0.7 * 10 ** (spec.gain_db / 20)
    audio += rng.standard_normal(audio.shape[0]).astype(np.float32) * 10 ** (spec.noise_dbfs / 20)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def render_all(specs: list[UtteranceSpec], workers: int = 2) -> Iterator[tuple[UtteranceSpec, np.ndarray]]:
    """Render utterances in parallel (espeak-ng runs as subprocesses), in order."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed: `apt-get install espeak-ng` (scripts/setup.sh --recipe does it)")
    with tempfile.TemporaryDirectory(prefix="espeak-") as tmp, ThreadPoolExecutor(workers) as pool:
        yield from zip(specs, pool.map(lambda s: render(s, Path(tmp)), specs))
