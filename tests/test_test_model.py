"""The committed test model: Parakeet-TDT topology, loaded by the service's loader, and accurate enough that
later tests can assert real transcripts."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from testmodel import corpus
from testmodel.evaluate import (
    COMMANDS,
    DIGITS,
    LONG,
    ROBUST_SUBSET,
    SUBSET_PER_SPLIT,
    documented_robust,
    documented_streamed,
    documented_wer,
    robustness_of,
    robustness_subset,
    streamed_vs_batch,
)
from testmodel.heldout import HELDOUT_DIR, SHORT_DIR, concatenate, load_heldout
from testmodel.make import plan_corpus
from testmodel.robustness import LEADING_S, TRAILING_S, speech_bounds, variants
from testmodel.train import Example, recut

DOC = Path(__file__).resolve().parent.parent / "docs" / "TEST_MODEL.md"


def _transcribe(recognizer, audio, batch_size=8):
    texts = []
    for i in range(0, len(audio), batch_size):
        texts += [t.text for t in recognizer.transcribe(audio[i : i + batch_size])]
    return texts


def test_model_has_parakeet_tdt_topology(loaded_test_model, test_model_path: Path) -> None:
    from nemo.collections.asr.models import EncDecRNNTBPEModel

    model = loaded_test_model.model
    cfg = model.cfg
    assert loaded_test_model.source.kind == "nemo_file"
    assert isinstance(model, EncDecRNNTBPEModel)
    assert cfg.encoder.subsampling == "dw_striding" and cfg.encoder.subsampling_factor == 8
    assert cfg.encoder.self_attention_model == "rel_pos" and not cfg.encoder.use_bias
    assert cfg.preprocessor.features == 128
    assert cfg.decoder.prednet.pred_rnn_layers == 2
    assert cfg.joint.num_extra_outputs == 5
    assert cfg.decoding.model_type == "tdt" and list(cfg.decoding.durations) == [0, 1, 2, 3, 4]
    assert cfg.loss.loss_name == "tdt"
    assert cfg.tokenizer.type == "bpe"
    assert test_model_path.stat().st_size <= 20 * 1024 * 1024
    assert not any(m.training for m in model.modules()), "a module was left in train mode after loading"


def test_heldout_set_is_really_held_out(heldout_clips) -> None:
    plan = plan_corpus()
    training_texts = {s.text for s in plan.train}
    assert {c.split for c in heldout_clips} == {"seen", "unseen"}
    assert not [c.text for c in heldout_clips if c.text in training_texts]
    for clip in heldout_clips:
        variant = clip.voice.split("+")[1]
        assert variant in (corpus.TRAIN_VARIANTS if clip.split == "seen" else corpus.UNSEEN_VARIANTS)
        assert corpus.MIN_UTTERANCE_S <= clip.seconds <= corpus.MAX_UTTERANCE_S
    assert max(c.seconds for c in heldout_clips) > 15 and min(c.seconds for c in heldout_clips) < 3
    assert len([c for c in heldout_clips if c.split == "seen"]) == len([c for c in heldout_clips if c.split == "unseen"]) == 40
    assert sum(p.stat().st_size for p in HELDOUT_DIR.iterdir()) <= 10 * 1024 * 1024
    # the --more-voices experiment changes only the training utterances, and never speaks through an unseen voice
    diverse = plan_corpus(more_voices=True)
    assert (diverse.seen, diverse.unseen, diverse.dev, diverse.bootstrap) == (plan.seen, plan.unseen, plan.dev, plan.bootstrap)
    assert not {s.voice.variant for s in diverse.train} & set(corpus.UNSEEN_VARIANTS)
    lo, hi = corpus.TRAIN_WARP_RANGE
    assert all(lo - 0.01 <= s.warp <= hi + 0.01 for s in diverse.train) and len({s.warp for s in diverse.train}) > 50
    assert all(s.warp == 1.0 for s in plan.train)


SEEN_GOAL_PERCENT = 5.0  # issue 18
STREAMED_GOAL = 0.95  # issue 18: streamed finals equal to the batch transcript


@pytest.mark.parametrize("split", ["seen", "unseen"])
def test_heldout_wer_is_the_documented_one(recognizer, heldout_clips, wer_of, split: str) -> None:
    """The per-split WER in docs/TEST_MODEL.md is what this model measures.

    The issue's goals are seen <= 5 %, unseen <= 7 %: the committed model meets the first (2.85 %), asserted
    here, not yet the second (7.55 %, see the docs' Status); assert it too the day a model meets it.
    """
    clips = [c for c in heldout_clips if c.split == split]
    stats = wer_of(_transcribe(recognizer, [c.audio for c in clips]), [c.text for c in clips])
    assert stats.words > 400
    label = "seen voices" if split == "seen" else "unseen voices"
    found = re.search(rf"\| {label}, 1–20 s \| \d+ \| [\d.]+ \| \d+ \| ([\d.]+) \|", DOC.read_text())
    assert found, f"docs/TEST_MODEL.md has no '{label}' row: run `python -m testmodel.evaluate --write`"
    assert stats.wer_percent == pytest.approx(float(found.group(1)), abs=0.01)
    if split == "seen":
        assert stats.wer_percent <= SEEN_GOAL_PERCENT, "issue 18's goal for seen voices, met since the 88-min stage"


def test_sixty_second_offline_reference_matches_docs(recognizer, heldout_clips, wer_of) -> None:
    """The 60 s figure in docs/TEST_MODEL.md is what the code measures (it is the reference for chunking)."""
    longs = concatenate(heldout_clips, target_s=60.0)
    assert all(55 <= c.audio.shape[0] / 16_000 <= 85 for c in longs)
    stats = wer_of(_transcribe(recognizer, [c.audio for c in longs], batch_size=1), [c.text for c in longs])
    assert stats.wer_percent == pytest.approx(documented_wer(LONG), abs=0.5)


def test_transcription_is_deterministic_and_leaves_eval_mode(recognizer, heldout_clips) -> None:
    audio = [c.audio for c in heldout_clips[:4]]
    first = [t.text for t in recognizer.transcribe(audio)]
    second = [t.text for t in recognizer.transcribe(audio)]
    assert first == second
    assert not any(m.training for m in recognizer.model.modules())


def test_cut_point_variants_put_the_silence_where_they_say() -> None:
    """The robustness variants move only where the audio starts and ends: trailing silence after the last voiced
    sample and leading silence before the first are what each variant's name says (to a 10-ms frame), the words
    are the rendered clip's samples, and the zeros variant is the clip plus 1 s of digital zeros."""
    rng = np.random.default_rng(3)
    floor = (rng.standard_normal(16000) * 0.001).astype(np.float32)
    tone = (0.3 * np.sin(np.arange(16000) * 2 * np.pi * 220 / 16000)).astype(np.float32)
    clip = np.concatenate([floor[:4000], tone, floor[:8000]])  # 0.25 s, 1 s voiced, 0.5 s
    assert speech_bounds(clip) == (4000, 20000)
    cut = variants(clip)
    for seconds in TRAILING_S:
        audio = cut[f"trail {seconds:g} s"]
        assert len(audio) - speech_bounds(audio)[1] == round(seconds * 16000)
        assert np.array_equal(audio[:20000], clip[:20000])
    for seconds in LEADING_S:
        audio = cut[f"lead {seconds:g} s"]
        assert speech_bounds(audio)[0] == round(seconds * 16000)
        assert np.array_equal(audio[round(seconds * 16000):], clip[4000:])
    zeros = cut["+1 s zeros"]
    assert np.array_equal(zeros[: len(clip)], clip) and not zeros[len(clip):].any() and len(zeros) == len(clip) + 16000


def test_cut_point_robustness_on_a_subset_is_the_documented_one(recognizer, heldout_clips) -> None:
    """How many held-out clips keep their transcript under every cut-point variant (issue 18's goal: >= 97 %).
    The committed model does NOT meet it (docs/TEST_MODEL.md, Status): this asserts the documented figure for the
    subset, so a model or pipeline change that moves it is seen; when a model meets the goal, assert the goal."""
    robustness = robustness_of(recognizer, robustness_subset(heldout_clips))
    assert robustness.clips == 2 * SUBSET_PER_SPLIT
    measured = (robustness.robust, *robustness.same_by_variant.values())
    assert measured == documented_robust(ROBUST_SUBSET), robustness.changed


def test_short_heldout_sets_are_unseen_voices_at_unseen_rates() -> None:
    """Digit strings and short commands (issue 18): spoken by voices and at speaking rates training never used,
    drawn from generators of their own (the rest of the plan is unchanged), and not spoken again by the training
    extras of the fine-tune."""
    plan, tuned = plan_corpus(), plan_corpus(more_voices=True, extra_utterances=200)
    assert (tuned.seen, tuned.unseen, tuned.dev, tuned.digits, tuned.commands) == (
        plan.seen, plan.unseen, plan.dev, plan.digits, plan.commands)
    assert not plan.extras and len(tuned.extras) == 200
    for spec in plan.digits + plan.commands:
        assert spec.voice.variant in corpus.UNSEEN_VARIANTS
        assert not corpus.TRAIN_WPM[0] <= spec.words_per_minute <= corpus.TRAIN_WPM[1]
    assert all(set(s.text.split()) <= set(corpus.DIGITS) for s in plan.digits)
    assert max(len(s.text.split()) for s in plan.commands) <= 6
    held = {s.text for s in plan.digits + plan.commands}
    assert not [s.text for s in tuned.extras if s.text in held]
    assert not {s.voice.variant for s in tuned.extras} & set(corpus.UNSEEN_VARIANTS)
    assert all(corpus.TRAIN_WPM[0] <= s.words_per_minute <= corpus.TRAIN_WPM[1] for s in tuned.train + tuned.extras)
    clips = load_heldout(SHORT_DIR)
    assert {c.split for c in clips} == {"digits", "commands"}
    assert [c.text for c in clips] == [s.text for s in plan.digits + plan.commands if any(
        c.name == f"{s.uid}.flac" for c in clips)]
    assert len(clips) >= 55 and sum(p.stat().st_size for p in SHORT_DIR.iterdir()) <= 4 * 1024 * 1024


def test_recut_redraws_only_the_silence_around_the_speech() -> None:
    """Cut-point variety in training: the speech samples are kept exactly; leading silence 0-1 s, trailing
    0-1.5 s plus, at times, up to 1.5 s of digital zeros; the silence is the clip's floor or digital zeros."""
    rng = np.random.default_rng(5)
    floor = (rng.standard_normal(48000) * 40).astype(np.int16)
    speech = (np.sin(np.arange(16000) * 0.07) * 9000).astype(np.int16)
    speech[0] = speech[-1] = 9000  # the speech's first and last samples, to find it again
    audio = np.concatenate([floor[:4000], speech, floor[4000:12000]])
    example = Example(audio, [1], (4000, 20000))
    leads, tails, zeros_after = [], [], 0
    for _ in range(200):
        out = recut(example, rng)
        loud = np.flatnonzero(out == 9000)
        start, end = int(loud[0]), int(loud[-1]) + 1
        assert np.array_equal(out[start:end], speech)
        leads.append(start / 16000)
        tails.append((len(out) - end) / 16000)
        zeros_after += bool(len(out) - end > 3200 and not out[-3200:].any())
        assert np.abs(out[:start]).max(initial=0) < 400 and np.abs(out[end:]).max(initial=0) < 400
    assert min(leads) == 0.0 and 0.9 < max(leads) <= 1.0
    assert min(tails) < 0.1 and 1.5 < max(tails) <= 3.0
    assert 20 < zeros_after < 120
    assert np.array_equal(recut(Example(audio, [1]), rng), audio), "an example without a speech span is kept"


@pytest.mark.parametrize(("split", "label"), [("digits", DIGITS), ("commands", COMMANDS)])
def test_short_heldout_wer_is_the_documented_one(recognizer, wer_of, split: str, label: str) -> None:
    """Digit strings and short commands from unseen voices at unseen rates: the documented WER (issue 18's goal
    for digits is <= 5 %; docs/TEST_MODEL.md says whether the committed model meets it)."""
    clips = [c for c in load_heldout(SHORT_DIR) if c.split == split]
    stats = wer_of(_transcribe(recognizer, [c.audio for c in clips]), [c.text for c in clips])
    assert stats.words > 90
    assert stats.wer_percent == pytest.approx(documented_wer(label), abs=0.01)


def test_streamed_finals_equal_batch_transcripts_as_documented(recognizer, heldout_clips) -> None:
    """Each subset clip streamed alone (then a pause) through the service's streaming recognizer: its final is the
    clip's batch transcript on the documented number of clips (issue 18's goal: >= 95 % of all held-out clips)."""
    result = streamed_vs_batch(recognizer, robustness_subset(heldout_clips))
    assert result.clips == 2 * SUBSET_PER_SPLIT
    assert result.same == documented_streamed(ROBUST_SUBSET), result.changed
    assert result.same >= STREAMED_GOAL * result.clips, "issue 18's goal, met since the 88-min stage"
