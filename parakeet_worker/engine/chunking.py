"""Chunked transcription of long audio: window planning and seam merging by timestamps.

Windows of ``chunk_s`` overlap by ``overlap_s``. Each window is transcribed with word timestamps; at each seam
the words both windows heard inside the overlap are aligned (as word sequences, ``difflib``), and the cut is
made in the middle of the agreeing run: the left window keeps the words before it, the right window the words
from it on. Words cut in half at a window's edge lie inside the overlap and disagree with the other window's
complete version, so they fall outside the agreeing run and are dropped in favour of the complete one. When the
windows share no word in the overlap (silence, or nothing matched), the cut falls at the overlap's midpoint by
word centre. Either way each word of the audio is emitted once, and words stay in time order.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from parakeet_worker.transcript import SAMPLE_RATE_HZ, TokenTiming, Transcript, WordTiming, segments_from_words

_Timed = TypeVar("_Timed", WordTiming, TokenTiming)


@dataclass(frozen=True)
class Window:
    index: int
    start_sample: int
    end_sample: int

    @property
    def start_s(self) -> float:
        return self.start_sample / SAMPLE_RATE_HZ

    @property
    def end_s(self) -> float:
        return self.end_sample / SAMPLE_RATE_HZ


def plan_windows(n_samples: int, chunk_s: float, overlap_s: float) -> list[Window]:
    """Windows covering ``n_samples``; the last one is stretched rather than leaving a sliver shorter than the overlap."""
    if chunk_s <= 0 or overlap_s < 0 or overlap_s >= chunk_s / 2:
        raise ValueError(f"need chunk_s > 0 and 0 <= overlap_s < chunk_s / 2, got chunk_s={chunk_s}, overlap_s={overlap_s}")
    chunk = int(chunk_s * SAMPLE_RATE_HZ)
    step = chunk - int(overlap_s * SAMPLE_RATE_HZ)
    windows: list[Window] = []
    start = 0
    while True:
        end = min(start + chunk, n_samples)
        if n_samples - end < int(overlap_s * SAMPLE_RATE_HZ) + SAMPLE_RATE_HZ:  # a tiny tail joins this window
            end = n_samples
        windows.append(Window(len(windows), start, end))
        if end >= n_samples:
            return windows
        start += step


def _norm(word: str) -> str:
    return "".join(ch for ch in word.lower() if ch.isalnum())


def _centre(w: WordTiming) -> float:
    return (w.start + w.end) / 2


def merge_seam(left: Sequence[WordTiming], right: Sequence[WordTiming], overlap_start: float,
               overlap_end: float) -> tuple[list[WordTiming], list[WordTiming]]:
    """Split two neighbouring windows' words (absolute times) at their seam; returns (left kept, right kept)."""
    li = [i for i, w in enumerate(left) if _centre(w) >= overlap_start]
    ri = [i for i, w in enumerate(right) if _centre(w) <= overlap_end]
    a = [_norm(left[i].word) for i in li]
    b = [_norm(right[i].word) for i in ri]
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    blocks = [m for m in matcher.get_matching_blocks() if m.size > 0]
    if blocks:
        best = max(blocks, key=lambda m: m.size)
        mid = best.size // 2
        cut_left = li[best.a + mid]  # first left word NOT kept
        cut_right = ri[best.b + mid]  # first right word kept
        kept_left, kept_right = list(left[:cut_left]), list(right[cut_right:])
    else:
        middle = (overlap_start + overlap_end) / 2
        kept_left = [w for w in left if _centre(w) < middle]
        kept_right = [w for w in right if _centre(w) >= middle]
    # A word match far apart in time (a common word heard twice) must not put words out of order.
    if kept_left:
        last = _centre(kept_left[-1])
        kept_right = [w for w in kept_right if _centre(w) > last]
    return kept_left, kept_right


def merge_windows(windows: Sequence[Window], words: Sequence[Sequence[WordTiming]]) -> list[WordTiming]:
    """Merge per-window words (absolute times, in window order) into one sequence without seam duplicates."""
    if len(windows) != len(words):
        raise ValueError("one word list per window is required")
    if not windows:
        return []
    merged: list[WordTiming] = list(words[0])
    for k in range(1, len(windows)):
        overlap_start, overlap_end = windows[k].start_s, windows[k - 1].end_s
        # only the part of `merged` that can reach into this overlap takes part in the seam decision
        head = [w for w in merged if _centre(w) < overlap_start]
        tail = merged[len(head):]
        kept_left, kept_right = merge_seam(tail, words[k], overlap_start, overlap_end)
        merged = head + kept_left + kept_right
    return merged


def shift(items: Sequence[_Timed], offset_s: float) -> list[_Timed]:
    """Window-relative timings to absolute ones."""
    return [replace(x, start=round(x.start + offset_s, 3), end=round(x.end + offset_s, 3)) for x in items]


def merge_transcripts(windows: list[Window], transcripts: list[Transcript]) -> Transcript:
    """One transcript from the windows' (with timestamps): words merged at the seams (:func:`merge_windows`), and
    tokens following the word decision — each window owns the time between the seams its words define."""
    absolute = [shift(t.words, w.start_s) for w, t in zip(windows, transcripts)]
    words = merge_windows(windows, absolute)
    bounds = [0.0]
    for k in range(1, len(windows)):
        before = [w.end for w in words if w.end <= windows[k - 1].end_s and w.start < windows[k].start_s + 1e-9]
        after = [w.start for w in words if w.start >= windows[k].start_s]
        left_end = max(before or [windows[k].start_s])
        right_start = min([a for a in after if a >= left_end] or [windows[k - 1].end_s])
        bounds.append((left_end + right_start) / 2)
    bounds.append(float("inf"))
    tokens: list[TokenTiming] = []
    for k, (w, t) in enumerate(zip(windows, transcripts)):
        for tok in shift(t.tokens, w.start_s):
            if bounds[k] <= (tok.start + tok.end) / 2 < bounds[k + 1]:
                tokens.append(tok)
    duration = windows[-1].end_s
    return Transcript(text=" ".join(w.word for w in words), duration_s=duration, words=tuple(words),
                      segments=segments_from_words(words), tokens=tuple(tokens), has_timestamps=True)
