"""silero-vad endpointing, batched over streams (vad.py), on held-out speech."""

from __future__ import annotations

import numpy as np
import pytest

from parakeet_worker.streaming.vad import (
    FRAME_SAMPLES,
    BatchedVad,
    EndpointConfig,
    VadUnavailableError,
    silero_model_path,
)


@pytest.fixture(scope="module")
def vad() -> BatchedVad:
    return BatchedVad()


def feed(vad: BatchedVad, stream, audio: np.ndarray, piece: int = 320) -> list[int]:
    """Feed in client-sized pieces; the sample positions at which an endpoint fired."""
    fired = []
    for i in range(0, len(audio), piece):
        vad.process([stream], [audio[i : i + piece]])
        if stream.endpoint:
            fired.append(i + piece)
            stream.reset_endpoint()
    return fired


def test_the_model_ships_in_the_package() -> None:
    assert silero_model_path().stat().st_size > 100_000


def test_speech_then_silence_ends_one_utterance(vad, heldout_clips) -> None:
    clip = heldout_clips[6].audio
    silence = np.zeros(16000, np.float32)
    stream = vad.new_stream(EndpointConfig(silence_s=0.5))
    fired = feed(vad, stream, np.concatenate([clip, silence, clip, silence]))
    assert len(fired) == 2
    assert len(clip) - 16000 < fired[0] <= len(clip) + 16000  # clips end with up to 0.8 s of silence
    assert 2 * len(clip) < fired[1] <= 2 * len(clip) + 2 * 16000


def test_a_low_threshold_still_ends_utterances(vad, heldout_clips) -> None:
    """Below a threshold of 0.16, ``threshold - 0.15`` alone would leave no probability "clearly silent": the
    silence level is floored (0.01, as silero's get_speech_timestamps does) so a pause still ends the utterance."""
    assert EndpointConfig(threshold=0.1).silent_below == 0.01 and EndpointConfig().silent_below == 0.35
    clip = heldout_clips[6].audio
    stream = vad.new_stream(EndpointConfig(threshold=0.05, silence_s=0.5))
    fired = feed(vad, stream, np.concatenate([clip, np.zeros(16000 * 2, np.float32)]))
    assert len(fired) == 1 and fired[0] <= len(clip) + 16000


def test_silence_and_noise_never_end_an_utterance(vad) -> None:
    rng = np.random.default_rng(0)
    stream = vad.new_stream()
    quiet = np.concatenate([np.zeros(16000 * 3, np.float32), (rng.standard_normal(16000 * 3) * 0.003).astype(np.float32)])
    assert feed(vad, stream, quiet) == [] and not stream.heard_speech


def test_batched_streams_equal_each_alone(vad, heldout_clips) -> None:
    audios = [np.concatenate([heldout_clips[i].audio, np.zeros(16000, np.float32)]) for i in (1, 6, 8)]
    alone = [feed(vad, vad.new_stream(), a) for a in audios]
    streams = [vad.new_stream() for _ in audios]
    fired: list[list[int]] = [[] for _ in audios]
    longest = max(len(a) for a in audios)
    for i in range(0, longest, 480):  # uneven piece sizes: streams reach frame boundaries at different times
        vad.process(streams, [a[i : i + 480] for a in audios])
        for k, s in enumerate(streams):
            if s.endpoint:
                fired[k].append(min(i + 480, len(audios[k])))
                s.reset_endpoint()
    assert [len(f) for f in fired] == [len(f) for f in alone] and all(len(f) == 1 for f in alone)
    for got, want in zip(fired, alone):
        assert abs(got[0] - want[0]) <= 480 + FRAME_SAMPLES


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="silence"):
        EndpointConfig(silence_s=0.01)
    with pytest.raises(ValueError, match="threshold"):
        EndpointConfig(threshold=1.5)


def test_missing_package_is_a_typed_error(monkeypatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(VadUnavailableError, match="pip install --no-deps silero-vad"):
        silero_model_path()


def test_a_pause_ends_at_the_same_sample_whatever_pieces_the_audio_came_in(vad, heldout_clips) -> None:
    """The final pass's cut (parakeet_worker.streaming.early_pass): pause_s into the silence after the last voiced frame, a function
    of the audio alone; none while the silence is shorter, or once voice follows."""
    rng = np.random.default_rng(3)
    quiet = (rng.standard_normal(16000) * 1e-3).astype(np.float32)
    speech = heldout_clips[1].audio
    audio = np.concatenate([speech, quiet])
    cuts = []
    for piece in (320, 1000, audio.shape[0]):
        stream = vad.new_stream()
        feed(vad, stream, audio, piece)
        cuts.append(stream.pause_end(audio.shape[0], 0.16))
    assert cuts[0] is not None and cuts == [cuts[0]] * 3
    assert cuts[0] % FRAME_SAMPLES == 0 and cuts[0] <= speech.shape[0] + int(0.16 * 16000) + FRAME_SAMPLES
    assert stream.pause_end(cuts[0] - FRAME_SAMPLES, 0.16) is None  # the pause was shorter then
    assert stream.pause_end(audio.shape[0], 0.8) == cuts[0] + int(0.64 * 16000)  # same run, longer pause
    feed(vad, stream, speech[:16000])  # voice again: the pause no longer reaches the end
    assert stream.pause_end(audio.shape[0] + 16000, 0.16) is None
    assert stream.pause_end(audio.shape[0], 0.16) == cuts[0]  # asked where it was, it is where it was
