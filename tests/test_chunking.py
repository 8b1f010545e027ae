"""Window planning and seam merging for chunked long-audio transcription (pure functions)."""

from __future__ import annotations

import random

import pytest

from parakeet_worker.engine.chunking import merge_seam, merge_windows, plan_windows
from parakeet_worker.transcript import SAMPLE_RATE_HZ, WordTiming


def _words(spec: list[tuple[str, float]], length: float = 0.3) -> list[WordTiming]:
    return [WordTiming(w, t, t + length) for w, t in spec]


def test_windows_cover_the_audio_with_the_requested_overlap() -> None:
    n = int(125.3 * SAMPLE_RATE_HZ)
    windows = plan_windows(n, chunk_s=30.0, overlap_s=4.0)
    assert windows[0].start_sample == 0 and windows[-1].end_sample == n
    for a, b in zip(windows, windows[1:]):
        assert a.end_sample - b.start_sample == 4 * SAMPLE_RATE_HZ
    assert all(w.end_sample - w.start_sample <= 30 * SAMPLE_RATE_HZ + 6 * SAMPLE_RATE_HZ for w in windows)


def test_a_short_tail_is_folded_into_the_last_window() -> None:
    windows = plan_windows(int(30.5 * SAMPLE_RATE_HZ), chunk_s=30.0, overlap_s=4.0)
    assert len(windows) == 1 and windows[0].end_sample == int(30.5 * SAMPLE_RATE_HZ)


@pytest.mark.parametrize(("chunk", "overlap"), [(0, 0), (10, 5), (10, -1)])
def test_invalid_window_settings_are_refused(chunk: float, overlap: float) -> None:
    with pytest.raises(ValueError, match="chunk_s"):
        plan_windows(SAMPLE_RATE_HZ * 60, chunk, overlap)


def test_seam_keeps_each_overlap_word_once() -> None:
    # overlap is 26..30 s; both windows heard "six seven eight" there, timings differ slightly
    left = _words([("five", 25.0), ("six", 26.2), ("seven", 27.1), ("eight", 28.3)])
    right = _words([("six", 26.25), ("seven", 27.0), ("eight", 28.4), ("nine", 30.5)])
    kept_left, kept_right = merge_seam(left, right, 26.0, 30.0)
    assert [w.word for w in kept_left + kept_right] == ["five", "six", "seven", "eight", "nine"]


def test_seam_prefers_the_complete_word_over_one_cut_at_a_window_edge() -> None:
    # the left window ends at 30 s in the middle of "thirty" and mishears it; the right one hears it whole
    left = _words([("turn", 26.5), ("on", 27.0), ("the", 27.5), ("light", 28.0), ("three", 29.7)])
    right = _words([("on", 27.05), ("the", 27.5), ("light", 28.1), ("thirty", 29.6), ("please", 30.4)])
    kept_left, kept_right = merge_seam(left, right, 26.0, 30.0)
    assert [w.word for w in kept_left + kept_right] == ["turn", "on", "the", "light", "thirty", "please"]


def test_seam_without_shared_words_cuts_at_the_overlap_middle() -> None:
    left = _words([("stop", 20.0)])
    right = _words([("go", 31.0)])
    kept_left, kept_right = merge_seam(left, right, 26.0, 30.0)
    assert [w.word for w in kept_left + kept_right] == ["stop", "go"]


def test_merge_windows_recovers_the_sequence_from_many_noisy_windows() -> None:
    rng = random.Random(3)
    truth = [(f"w{i}", 0.1 + i * 0.45) for i in range(400)]  # 180 s of words
    windows = plan_windows(int(181 * SAMPLE_RATE_HZ), chunk_s=30.0, overlap_s=5.0)
    per_window = []
    for w in windows:
        words = []
        for name, start in truth:
            if w.start_s <= start and start + 0.3 <= w.end_s:  # only words wholly inside the window are heard
                jitter = rng.uniform(-0.08, 0.08)
                words.append(WordTiming(name, start + jitter, start + 0.3 + jitter))
        per_window.append(words)
    merged = merge_windows(windows, per_window)
    assert [w.word for w in merged] == [name for name, _ in truth]


def test_a_spurious_match_far_apart_in_time_keeps_words_in_order() -> None:
    # "the" is heard by both windows but at different times: matching them must not reorder words
    left = _words([("set", 26.2), ("the", 28.9)])
    right = _words([("the", 26.4), ("timer", 27.0), ("now", 30.2)])
    kept_left, kept_right = merge_seam(left, right, 26.0, 30.0)
    starts = [w.start for w in kept_left + kept_right]
    assert starts == sorted(starts)
