"""Streaming recognition (:mod:`streaming`) with the trained test model.

The properties a live client would notice: chunk seams neither drop nor duplicate words (chunked decoding with
the carried decoder state is exactly one-shot decoding; with whole-clip windows streaming *is* offline), the
streamed final text is as accurate as offline, batching streams of different ages changes nothing, and the last
word survives a clip that ends right after speech. Those tests stream the final too (``final_pass_max_s=0``):
they judge the chunked algorithm. The final pass (an offline pass over the utterance at its end, the default) has
tests of its own at the end.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.streaming_accuracy import stream_staggered
from parakeet_worker.config import Settings
from parakeet_worker.errors import EngineOverloadedError, InputError
from parakeet_worker.model import Token
from parakeet_worker.serving.options import worker_options
from parakeet_worker.streaming import StreamBacklogError, StreamingConfig, StreamingRecognizer, stream_whole
from parakeet_worker.transcript import SAMPLE_RATE_HZ
from testmodel.evaluate import transcribe_all

TICK_S = 0.02  # clients send 20 ms frames


STREAMED_FINALS = {"final_pass_max_s": 0.0}  # finals decoded from the streamed chunks too
STREAMED_WER_GAP_POINTS = 1.5  # streamed finals vs offline, default window (see the test)


@pytest.fixture(scope="module")
def streamer(recognizer) -> StreamingRecognizer:
    return StreamingRecognizer(recognizer, StreamingConfig(**STREAMED_FINALS))


@pytest.fixture(scope="module")
def final_pass(recognizer) -> StreamingRecognizer:
    """The default configuration: finals are one offline pass over the utterance."""
    return StreamingRecognizer(recognizer)


def _spread(clips, count: int):
    """``count`` clips spread over the held-out set (both voice splits, all lengths), deterministically."""
    ordered = sorted(clips, key=lambda c: (c.split, c.name))
    step = len(ordered) / count
    return [ordered[int(i * step)] for i in range(count)]


def _trim_trailing_silence(audio: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > threshold * float(np.abs(audio).max()))
    return audio[: int(loud[-1]) + 1]


# --- configuration ------------------------------------------------------------------------------------------------
def test_config_must_fall_on_encoder_frames() -> None:
    with pytest.raises(ValueError, match="80 ms encoder frame.*0.96"):
        StreamingConfig(chunk_s=1.0)
    with pytest.raises(ValueError, match="left_s"):
        StreamingConfig(left_s=-0.08)
    with pytest.raises(ValueError, match="max_backlog_s"):
        StreamingConfig(right_s=4.0, max_backlog_s=2.0)
    assert StreamingConfig().frames(0.08) == (50, 12, 12)


# --- the decoder-level property -----------------------------------------------------------------------------------
def _decode_in_chunks(streamer, frames, lengths, chunk: int) -> list[list[Token]]:
    states: list = [None] * frames.shape[0]
    pieces: list[list[Token]] = [[] for _ in range(frames.shape[0])]
    for start in range(0, frames.shape[1], chunk):
        tokens, states = streamer.decode_frames(frames[:, start : start + chunk],
                                                (lengths - start).clamp(min=0, max=chunk), states)
        for row, new in zip(pieces, tokens):
            row.extend(new)
    return pieces


def test_chunked_decoding_with_carried_state_is_token_identical(streamer, recognizer, heldout_clips) -> None:
    clips = _spread(heldout_clips, 4)
    enc, enc_len = recognizer.encode([c.audio for c in clips])
    frames = enc.transpose(1, 2)
    whole, _ = streamer.decode_frames(frames, enc_len, [None] * len(clips))
    offline = recognizer.decode(enc, enc_len, timestamps=False)
    assert [streamer.tokenizer.ids_to_text([t.id for t in row]) for row in whole] == [h.text for h in offline]
    assert all(whole), "the test model decoded nothing"
    for chunk in (1, 5, 12):  # batched: token ids and start frames are identical
        pieces = _decode_in_chunks(streamer, frames, enc_len, chunk)
        assert [[(t.id, t.start) for t in row] for row in pieces] == [[(t.id, t.start) for t in row] for row in whole]
    # one stream: durations too (NeMo 3.0.0 records exact TDT durations only at batch size 1, see parakeet_worker/streaming/recognizer.py)
    one = frames[:1, : int(enc_len[0])]
    alone, _ = streamer.decode_frames(one, enc_len[:1], [None])
    for chunk in (1, 5, 12):
        assert _decode_in_chunks(streamer, one, enc_len[:1], chunk) == alone


# --- streaming against offline ------------------------------------------------------------------------------------
def test_window_covering_the_whole_clip_equals_offline(recognizer, heldout_clips) -> None:
    whole_clip = StreamingRecognizer(recognizer, StreamingConfig(left_s=24.0, chunk_s=0.96, right_s=24.0,
                                                                  final_pad_s=0.0, max_backlog_s=60.0,
                                                                  **STREAMED_FINALS))
    clips = sorted(_spread(heldout_clips, 6), key=lambda c: c.seconds)[2:4]  # two of middling length
    alone = recognizer.transcribe([clips[0].audio], timestamps=True)[0]
    live = stream_whole(whole_clip, clips[0].audio)  # pushed as a live client would
    assert live.done and live.committed_text == alone.text
    streamed_words = [(w.word, w.start, w.end) for w in live.words]
    offline_words = [(w.word, w.start, w.end) for w in alone.words]
    assert streamed_words == offline_words, [(a, b) for a, b in zip(streamed_words, offline_words) if a != b]
    offline = recognizer.transcribe([c.audio for c in clips], timestamps=True)
    states = [whole_clip.new_stream() for _ in clips]  # pushed at once, then finalised together
    for state, clip in zip(states, clips):
        whole_clip.accept(state, clip.audio)
    results = whole_clip.finalize(states)
    assert [r.committed_text for r in results] == [t.text for t in offline]
    for state, expected in zip(states, offline):  # same words starting on the same frames
        assert [(w.word, w.start) for w in state.words] == [(w.word, w.start) for w in expected.words]


def test_every_frame_a_seam_still_equals_offline(recognizer, heldout_clips) -> None:
    """Chunks of one encoder frame: a word dropped or repeated at any seam would show."""
    tiny = StreamingRecognizer(recognizer, StreamingConfig(left_s=4.0, chunk_s=0.08, right_s=4.0,
                                                            final_pad_s=0.0, max_backlog_s=10.0,
                                                            **STREAMED_FINALS))
    clip = min((c for c in heldout_clips if len(c.text.split()) >= 4), key=lambda c: c.seconds)
    assert stream_whole(tiny, clip.audio).committed_text == recognizer.transcribe([clip.audio])[0].text


def test_streamed_wer_is_within_a_point_and_a_half_of_offline(streamer, recognizer, heldout_clips, wer_of,
                                                                record_property) -> None:
    """Over the whole held-out set (80 clips, 1,488 words). The gap is the model's need for context beyond the
    window, not a pipeline loss (the seams are judged below and exactly by the tests above): for the committed
    (88-minute) model it is +1.07 points with the default 0.96 s right context, +0.74 with a 1.92 s chunk, +0.33
    with a 1.92 s right context and +1.54 with 0.48 s chunk and right context (bench.streaming_accuracy,
    docs/BENCHMARKS.md "Window trade-off"). Earlier models: the first stage +1.75, the 60-minute second stage +0.54.
    The limit is 1.5 points, up from 1.0 when the better-trained model came to lean more on right context."""
    clips = heldout_clips
    refs = [c.text for c in clips]
    offline = transcribe_all(recognizer, [c.audio for c in clips])
    starts = [0.37 * i for i in range(len(clips))]  # staggered, so chunk boundaries never line up
    results, batches = stream_staggered(streamer, [c.audio for c in clips], starts)
    streamed = [r.committed_text for r in results]
    off, st = wer_of(offline, refs), wer_of(streamed, refs)
    summary = (f"offline WER {off.wer_percent:.2f} %, streamed WER {st.wer_percent:.2f} % "
               f"({st.words} words, {len(clips)} clips, largest batch {max(batches)})")
    record_property("streaming_wer", summary)
    assert st.wer_percent <= off.wer_percent + STREAMED_WER_GAP_POINTS, summary
    # seams: against the offline text of the same audio, streaming neither repeats nor loses words
    drift = wer_of(streamed, offline)
    assert drift.insertions + drift.deletions <= max(2, drift.words // 50), (summary, drift)


def test_staggered_streams_batched_together_equal_each_alone(streamer, heldout_clips) -> None:
    clips = _spread(heldout_clips, 5)
    alone = [stream_whole(streamer, c.audio) for c in clips]
    together, batches = stream_staggered(streamer, [c.audio for c in clips], [0.0, 0.13, 0.5, 1.01, 2.3])
    assert max(batches) >= 3, "the streams were never batched together"
    assert [r.committed_text for r in together] == [r.committed_text for r in alone]


def test_words_come_once_in_order_with_absolute_times(streamer, heldout_clips) -> None:
    clip = max(heldout_clips, key=lambda c: c.seconds)
    state = streamer.new_stream(offset_s=100.0)
    words = []
    drafts = []
    piece = int(TICK_S * SAMPLE_RATE_HZ)
    for start in range(0, clip.audio.shape[0], piece):
        streamer.accept(state, clip.audio[start : start + piece])
        if streamer.ready(state):
            (r,) = streamer.step([state])
            words += r.new_words
            drafts.append(r.draft_text)
            assert r.committed_until_s <= r.audio_end_s
    (final,) = streamer.finalize([state])
    words += final.new_words
    assert final.final and final.draft_text == ""
    assert " ".join(w.word for w in words) == final.committed_text == " ".join(w.word for w in state.words)
    assert all(100.0 <= w.start <= w.end <= 100.0 + clip.seconds for w in words)
    assert [w.start for w in words] == sorted(w.start for w in words)
    assert any(drafts), "the right context never produced a draft"


def test_draft_never_changes_the_committed_result(recognizer, streamer, heldout_clips) -> None:
    no_draft = StreamingRecognizer(recognizer, StreamingConfig(draft=False, **STREAMED_FINALS))
    for clip in _spread(heldout_clips, 2):
        with_draft = stream_whole(streamer, clip.audio)
        without = stream_whole(no_draft, clip.audio)
        assert with_draft.words == without.words and with_draft.committed_text == without.committed_text


def test_finalize_recovers_the_last_word(streamer, recognizer, heldout_clips) -> None:
    """Clips cut right after the last word: what offline hears at the very end, the stream's flush keeps."""
    clips = [c for c in _spread(heldout_clips, 12) if len(c.text.split()) >= 2]
    trimmed = [_trim_trailing_silence(c.audio) for c in clips]
    offline = [t.text.split() for t in recognizer.transcribe(trimmed)]
    last = [c.text.split()[-1] for c in clips]
    judged = [i for i, (o, w) in enumerate(zip(offline, last)) if o and o[-1] == w]
    assert len(judged) >= 10, f"the committed model gets the last word offline in only {len(judged)} clips"
    streamed = {i: stream_whole(streamer, trimmed[i]).committed_text.split() for i in judged}
    missed = [(last[i], streamed[i][-3:]) for i in judged if not streamed[i] or streamed[i][-1] != last[i]]
    assert missed == []  # was <= 1 in 5 of at least 8 clips (issue 18: no longer needed; 11 judged, none missed)


# --- buffers and errors -------------------------------------------------------------------------------------------
def test_buffer_stays_bounded_on_a_long_stream(streamer) -> None:
    state = streamer.new_stream()
    capacity = state.audio.shape[0]
    rng = np.random.default_rng(0)
    piece = int(TICK_S * SAMPLE_RATE_HZ)
    for _ in range(int(30 / TICK_S)):
        streamer.accept(state, (rng.standard_normal(piece) * 0.01).astype(np.float32))
        if streamer.ready(state):
            streamer.step([state])
        assert state.pending_samples < streamer.chunk_samples + streamer.right_samples
    assert state.audio.shape[0] == capacity, "a stream stepped in time should never grow its buffer"


def test_backlog_is_refused_and_misuse_is_reported(streamer) -> None:
    state = streamer.new_stream()
    with pytest.raises(ValueError, match="not ready"):
        streamer.step([state])
    too_much = np.zeros(int((streamer.config.max_backlog_s + 1) * SAMPLE_RATE_HZ), np.float32)
    with pytest.raises(StreamBacklogError) as caught:
        streamer.accept(state, too_much)
    assert isinstance(caught.value, EngineOverloadedError)
    with pytest.raises(ValueError, match="mono"):
        streamer.accept(state, np.zeros((2, 100), np.float32))
    (empty,) = streamer.finalize([state])
    assert empty.final and empty.committed_text == " ".join(w.word for w in empty.new_words)
    with pytest.raises(ValueError, match="ended"):
        streamer.accept(state, np.zeros(10, np.float32))


def test_model_is_left_unchanged(recognizer, streamer, heldout_clips) -> None:
    model = recognizer.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stream_whole(streamer, heldout_clips[0].audio)
    assert not model.encoder.training and not model.decoder.training and not model.joint.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- the final pass -----------------------------------------------------------------------------------------------
def test_final_pass_is_the_offline_transcript_of_the_utterance(final_pass, recognizer, heldout_clips) -> None:
    clips = _spread(heldout_clips, 6)
    offline = recognizer.transcribe([c.audio for c in clips], timestamps=True)
    for clip in clips[:2]:  # alone, pushed as a live client would, 100 s into a session
        # (offline alone too: NeMo's batched TDT decoding records exact durations only at batch size 1)
        expected = recognizer.transcribe([clip.audio], timestamps=True)[0]
        state = final_pass.new_stream(offset_s=100.0)
        piece = int(TICK_S * SAMPLE_RATE_HZ)
        partial_words = []
        for start in range(0, clip.audio.shape[0], piece):
            final_pass.accept(state, clip.audio[start : start + piece])
            if final_pass.ready(state):
                partial_words = list(final_pass.step([state])[0].words)
        (final,) = final_pass.finalize([state])
        assert final.final and final.source == "offline" and final.committed_text == expected.text
        assert [w.word for w in final.words] == [w.word for w in expected.words]
        shifted = [t - 100.0 for w in final.words for t in (w.start, w.end)]
        assert shifted == pytest.approx([t for w in expected.words for t in (w.start, w.end)], abs=1e-3)
        assert final.new_words == final.words and not state.kept, "the kept audio is released"
        assert partial_words, "partials were streamed before the final"
    # streams of different ages finalising together: one batched pass, each the offline text of its own audio
    results, batches = stream_staggered(final_pass, [c.audio for c in clips], [0.37 * i for i in range(len(clips))])
    assert [r.committed_text for r in results] == [t.text for t in offline]
    assert all(r.source == "offline" for r in results) and max(batches) >= 3


def test_final_pass_brings_streamed_finals_to_offline_accuracy(final_pass, streamer, recognizer, heldout_clips,
                                                               wer_of, record_property) -> None:
    clips = _spread(heldout_clips, 24)
    refs = [c.text for c in clips]
    offline = wer_of([t.text for t in recognizer.transcribe([c.audio for c in clips])], refs)
    starts = [0.37 * i for i in range(len(clips))]
    chunked = wer_of([r.committed_text for r in stream_staggered(streamer, [c.audio for c in clips], starts)[0]], refs)
    passed = wer_of([r.committed_text for r in stream_staggered(final_pass, [c.audio for c in clips], starts)[0]], refs)
    record_property("final_pass_wer", f"offline {offline.wer_percent:.2f} %, streamed finals {chunked.wer_percent:.2f}"
                                      f" %, final pass {passed.wer_percent:.2f} % ({offline.words} words)")
    assert passed.wer_percent == pytest.approx(offline.wer_percent)


def test_an_early_final_pass_is_the_final_unless_discarded(final_pass, recognizer, heldout_clips) -> None:
    """early_pass_audio is what was kept so far (up to pass_end); kept with keep_early, finalize returns it as is
    (the caller judged the rest silent), and after discard_early the final is computed over the audio again,
    stopping at pass_end when one is set."""
    first, more = heldout_clips[1].audio, heldout_clips[2].audio
    kept_then = final_pass.new_stream()
    final_pass.accept(kept_then, first)
    assert final_pass.early_pass_audio(final_pass.new_stream(final_pass=False)) is None  # keeps no audio
    audio = final_pass.early_pass_audio(kept_then)
    assert audio is not None and np.array_equal(audio, first)
    final_pass.keep_early(kept_then, recognizer.transcribe([audio], timestamps=True)[0])
    final_pass.accept(kept_then, more)
    (early,) = final_pass.finalize([kept_then])
    assert early.source == "offline" and early.committed_text == recognizer.transcribe([first])[0].text.strip()
    assert early.audio_end_s == pytest.approx((first.shape[0] + more.shape[0]) / SAMPLE_RATE_HZ, abs=1e-3)
    assert final_pass.early_pass_audio(kept_then) is None  # ended: nothing to run
    went_on = final_pass.new_stream()
    final_pass.accept(went_on, first)
    final_pass.keep_early(went_on, recognizer.transcribe([first], timestamps=True)[0])
    final_pass.accept(went_on, more)
    final_pass.discard_early(went_on)
    (full,) = final_pass.finalize([went_on])
    assert full.committed_text == recognizer.transcribe([np.concatenate([first, more])])[0].text.strip()
    assert full.committed_text != early.committed_text
    cut = final_pass.new_stream()
    final_pass.accept(cut, np.concatenate([first, more]))
    cut.pass_end = first.shape[0]  # e.g. a pause the caller judged the end of the speech
    assert np.array_equal(final_pass.early_pass_audio(cut), first)
    (stopped,) = final_pass.finalize([cut])
    assert stopped.committed_text == early.committed_text  # the final pass stopped there too


def test_final_pass_is_skipped_when_asked_or_when_the_utterance_is_too_long(recognizer, heldout_clips) -> None:
    short = StreamingRecognizer(recognizer, StreamingConfig(final_pass_max_s=3.0))
    long_clip = next(c for c in heldout_clips if c.seconds > 6.0)
    state = short.new_stream()
    for start in range(0, long_clip.audio.shape[0], 16000):
        short.accept(state, long_clip.audio[start : start + 16000])
        while short.ready(state):
            short.step([state])
        assert sum(k.shape[0] for k in state.kept) <= 3.0 * SAMPLE_RATE_HZ, "audio kept past final_pass_max_s"
    assert not state.final_pass and not state.kept
    (final,) = short.finalize([state])
    assert final.source == "stream" and final.committed_text
    opted_out = short.new_stream(final_pass=False)
    short.accept(opted_out, heldout_clips[0].audio[: 2 * SAMPLE_RATE_HZ])
    assert not opted_out.kept
    assert short.finalize([opted_out])[0].source == "stream"
    assert not StreamingRecognizer(recognizer, StreamingConfig(**STREAMED_FINALS)).new_stream().final_pass
    with pytest.raises(ValueError, match="final_pass_max_s"):
        StreamingConfig(final_pass_max_s=-1.0)
    env = "PARAKEET_STREAM_FINAL_PASS_MAX_S"
    assert worker_options(Settings.from_env({env: "0"})).engine.streaming.final_pass_max_s == 0.0
    assert worker_options(Settings()).engine.streaming.final_pass_max_s == StreamingConfig().final_pass_max_s == 20.0
    with pytest.raises(InputError, match="final_pass_max_s"):
        worker_options(Settings.from_env({env: "-5"}))
