"""SRT and WebVTT from word timings: cues of at most a few seconds and two short lines of text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from parakeet_worker.transcript import SegmentTiming, WordTiming

MAX_CUE_S = 6.0
MAX_CUE_CHARS = 84
CUE_GAP_S = 0.8


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str


def cues_from_words(words: Sequence[WordTiming], segments: Sequence[SegmentTiming] = ()) -> list[Cue]:
    """Group words into cues, breaking at pauses, sentence ends, and the duration/length caps."""
    if not words:
        return [Cue(s.start, s.end, s.segment) for s in segments if s.segment]
    cues: list[Cue] = []
    current: list[WordTiming] = []

    def flush() -> None:
        if current:
            cues.append(Cue(current[0].start, max(current[-1].end, current[0].start + 0.2),
                            " ".join(w.word for w in current)))
            current.clear()

    for word in words:
        if current:
            text_len = sum(len(w.word) + 1 for w in current) + len(word.word)
            if (word.start - current[-1].end >= CUE_GAP_S or word.end - current[0].start > MAX_CUE_S
                    or text_len > MAX_CUE_CHARS):
                flush()
        current.append(word)
        if word.word.endswith((".", "!", "?")):
            flush()
    flush()
    return cues


def _clock(seconds: float, separator: str) -> str:
    millis = max(0, int(round(seconds * 1000)))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _wrap(text: str, width: int = MAX_CUE_CHARS // 2) -> str:
    if len(text) <= width:
        return text
    cut = text.rfind(" ", 0, len(text) // 2 + width // 4)
    return text if cut <= 0 else f"{text[:cut]}\n{text[cut + 1:]}"


def to_srt(cues: Sequence[Cue]) -> str:
    blocks = [f"{i}\n{_clock(c.start, ',')} --> {_clock(c.end, ',')}\n{_wrap(c.text)}\n" for i, c in enumerate(cues, 1)]
    return "\n".join(blocks)


def to_vtt(cues: Sequence[Cue]) -> str:
    blocks = [f"{_clock(c.start, '.')} --> {_clock(c.end, '.')}\n{_wrap(c.text)}\n" for c in cues]
    return "WEBVTT\n\n" + "\n".join(blocks)
