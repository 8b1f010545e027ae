"""Cut-point robustness of a model: does a clip's transcript survive where the audio is cut?

The service's pipelines cut audio where the model never saw it cut: the streaming final pass ends 0.16 s into a
pause, a client's finalize ends an utterance wherever the client likes, a chunk seam or a VAD endpoint leaves
more or less silence before and after the words. A test that compares a pipeline's transcript with the offline
transcript of "the same words" judges the pipeline only if the model gives the same words whatever the silence
around them. This module measures that: for each held-out clip, the transcript of the clip as rendered against
the transcripts of its variants —

- trailing silence trimmed (or extended) to 0.1 / 0.16 / 0.3 / 1.0 s after the last voiced sample,
- leading silence 0 / 0.3 / 1.0 s before the first,
- 1 s of digital zeros appended to the clip as rendered.

Silence is the clip's own noise floor (its rendered leading/trailing samples, repeated where more is needed), so a
variant differs from the rendering only in where the audio starts and ends. A clip is *robust* when every variant
gives exactly the rendered clip's transcript.

    .venv/bin/python -m testmodel.evaluate     # prints the robustness table with the WER table
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE_HZ = 16_000
TRAILING_S = (0.1, 0.16, 0.3, 1.0)
LEADING_S = (0.0, 0.3, 1.0)
ZEROS_S = 1.0
FRAME = 160  # 10 ms: the voiced-frame grid of speech_bounds
VOICED_RMS = 0.01  # a 10-ms frame above -40 dBFS RMS is voiced (the renders' noise floors are -70..-45 dBFS)


def speech_bounds(audio: np.ndarray) -> tuple[int, int]:
    """(first, last + 1) sample of the clip's voiced 10-ms frames; the whole clip when none is voiced."""
    frames = audio[: len(audio) // FRAME * FRAME].reshape(-1, FRAME)
    voiced = np.flatnonzero(np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) > VOICED_RMS)
    if voiced.size == 0:
        return 0, len(audio)
    return int(voiced[0] * FRAME), int(min(len(audio), (voiced[-1] + 1) * FRAME))


def _silence(floor: np.ndarray, samples: int) -> np.ndarray:
    """``samples`` of the clip's own noise floor (``floor`` repeated), digital zeros if it has none."""
    if samples <= 0:
        return np.zeros(0, np.float32)
    if floor.size == 0:
        return np.zeros(samples, np.float32)
    return np.resize(floor, samples).astype(np.float32)


def variants(audio: np.ndarray) -> dict[str, np.ndarray]:
    """The cut-point variants of one clip, by name (``trail 0.16 s``, ``lead 1.0 s``, ``+1 s zeros``)."""
    start, end = speech_bounds(audio)
    lead_floor, trail_floor = audio[:start], audio[end:]
    speech = audio[start:end]
    out: dict[str, np.ndarray] = {}
    for seconds in TRAILING_S:
        samples = round(seconds * SAMPLE_RATE_HZ)
        out[f"trail {seconds:g} s"] = np.concatenate([audio[:end], _silence(trail_floor, samples)])
    for seconds in LEADING_S:
        samples = round(seconds * SAMPLE_RATE_HZ)
        out[f"lead {seconds:g} s"] = np.concatenate([_silence(lead_floor[::-1], samples)[::-1], speech,
                                                     audio[end:]])
    out[f"+{ZEROS_S:g} s zeros"] = np.concatenate([audio, np.zeros(round(ZEROS_S * SAMPLE_RATE_HZ), np.float32)])
    return out


@dataclass(frozen=True)
class Robustness:
    clips: int
    robust: int  # clips whose every variant gives the rendered clip's transcript
    same_by_variant: dict[str, int]  # per variant: clips whose transcript equals the rendered one
    changed: tuple[tuple[str, str, str, str], ...]  # (clip, variant, rendered transcript, variant transcript)

    @property
    def robust_percent(self) -> float:
        return 100.0 * self.robust / self.clips if self.clips else 0.0


def measure(transcribe: Callable[[list[np.ndarray]], list[str]], clips: Sequence[tuple[str, np.ndarray]]
            ) -> Robustness:
    """Transcribe every clip as rendered and each of its variants (``transcribe`` takes a batch of 16 kHz float32
    arrays), and compare."""
    names = list(variants(np.zeros(SAMPLE_RATE_HZ, np.float32)))
    same = dict.fromkeys(names, 0)
    changed: list[tuple[str, str, str, str]] = []
    robust = 0
    for name, audio in clips:
        cut = variants(audio)
        texts = transcribe([audio, *cut.values()])
        rendered, rest = texts[0], texts[1:]
        ok = True
        for variant, text in zip(cut, rest, strict=True):
            if text == rendered:
                same[variant] += 1
            else:
                ok = False
                changed.append((name, variant, rendered, text))
        robust += ok
    return Robustness(len(clips), robust, same, tuple(changed))


__all__ = ["LEADING_S", "TRAILING_S", "ZEROS_S", "Robustness", "measure", "speech_bounds", "variants"]
