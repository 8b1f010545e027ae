"""The result types every layer shares, free of torch: transcripts with word, segment and char timings.

Also the one definition of the engine's sample rate: everything the model sees is 16 kHz mono float32.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

SAMPLE_RATE_HZ = 16_000
SEGMENT_GAP_S = 0.8  # a pause this long also ends a segment (the test model has no punctuation)


@dataclass(frozen=True)
class WordTiming:
    word: str
    start: float
    end: float


@dataclass(frozen=True)
class TokenTiming:
    char: str
    start: float
    end: float


@dataclass(frozen=True)
class SegmentTiming:
    segment: str
    start: float
    end: float


@dataclass(frozen=True)
class Transcript:
    text: str
    duration_s: float
    words: tuple[WordTiming, ...] = ()
    segments: tuple[SegmentTiming, ...] = ()
    tokens: tuple[TokenTiming, ...] = ()
    has_timestamps: bool = False


def segments_from_words(words: Sequence[WordTiming]) -> tuple[SegmentTiming, ...]:
    """Segments end at sentence punctuation or at a pause of at least ``SEGMENT_GAP_S``."""
    segments: list[SegmentTiming] = []
    current: list[WordTiming] = []
    for word in words:
        if current and word.start - current[-1].end >= SEGMENT_GAP_S:
            segments.append(SegmentTiming(" ".join(w.word for w in current), current[0].start, current[-1].end))
            current = []
        current.append(word)
        if re.search(r"[.!?]$", word.word):
            segments.append(SegmentTiming(" ".join(w.word for w in current), current[0].start, current[-1].end))
            current = []
    if current:
        segments.append(SegmentTiming(" ".join(w.word for w in current), current[0].start, current[-1].end))
    return tuple(segments)
