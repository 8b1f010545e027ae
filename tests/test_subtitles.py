"""SRT/WebVTT output is valid and readable."""

from __future__ import annotations

import re

from parakeet_worker.serving.subtitles import MAX_CUE_S, cues_from_words, to_srt, to_vtt
from parakeet_worker.transcript import SegmentTiming, WordTiming

WORDS = [WordTiming(w, 0.5 + i * 0.4, 0.8 + i * 0.4) for i, w in enumerate("turn on the kitchen lights".split())]
WORDS += [WordTiming(w, 5.0 + i * 0.4, 5.3 + i * 0.4)
          for i, w in enumerate(("set the timer to ten minutes " * 4).split())]
WORDS += [WordTiming("stop", 3725.25, 3725.6)]  # past one hour


def test_cues_break_at_pauses_and_stay_short() -> None:
    cues = cues_from_words(WORDS)
    assert cues[0].text == "turn on the kitchen lights"
    assert all(c.end - c.start <= MAX_CUE_S + 0.5 for c in cues)
    assert " ".join(c.text for c in cues) == " ".join(w.word for w in WORDS)


def test_srt_is_numbered_with_comma_milliseconds() -> None:
    srt = to_srt(cues_from_words(WORDS))
    blocks = srt.strip().split("\n\n")
    assert blocks[0].splitlines()[:2] == ["1", "00:00:00,500 --> 00:00:02,400"]
    for n, block in enumerate(blocks, 1):
        lines = block.splitlines()
        assert lines[0] == str(n)
        assert re.fullmatch(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}", lines[1])
        assert 1 <= len(lines[2:]) <= 2
    assert "01:02:05,250 --> 01:02:05,600" in srt


def test_vtt_has_header_and_dot_milliseconds() -> None:
    vtt = to_vtt(cues_from_words(WORDS))
    assert vtt.startswith("WEBVTT\n\n")
    times = re.findall(r"^(\d\d:\d\d:\d\d\.\d{3}) --> (\d\d:\d\d:\d\d\.\d{3})$", vtt, flags=re.M)
    assert len(times) == len(cues_from_words(WORDS)) and times[0] == ("00:00:00.500", "00:00:02.400")


def test_segments_are_used_when_there_are_no_word_timings() -> None:
    cues = cues_from_words([], [SegmentTiming("hello there", 1.0, 2.0)])
    assert to_srt(cues) == "1\n00:00:01,000 --> 00:00:02,000\nhello there\n"
