"""The live-audio decoder every streaming face shares: G.711 tables against the standard's values, PCM16 at any
rate resampled as one stream, bad encodings and rates refused with the allowed values named."""

import numpy as np
import pytest

from parakeet_worker.audio.live import LiveAudioDecoder, g711_to_float32
from parakeet_worker.errors import AudioDecodeError, InputError

# (byte, 16-bit value) pairs from ITU-T G.711's expansion tables
MULAW = [(0x00, -32124), (0x0F, -16764), (0x7F, 0), (0x80, 32124), (0xFF, 0)]
ALAW = [(0x00, -5504), (0x2A, -32256), (0x55, -8), (0xAA, 32256), (0xD5, 8)]


@pytest.mark.parametrize(("encoding", "pairs"), [("mulaw", MULAW), ("alaw", ALAW)])
def test_g711_expands_to_the_standard_values(encoding, pairs):
    got = g711_to_float32(bytes(b for b, _ in pairs), encoding)
    assert [round(v * 32768) for v in got] == [value for _, value in pairs]


def test_pcm16_at_24k_in_small_frames_equals_the_whole_signal_resampled():
    t = np.arange(24000) / 24000
    pcm = (np.sin(2 * np.pi * 440 * t) * 12000).astype("<i2").tobytes()
    decoder = LiveAudioDecoder("pcm16", 24000)
    pieces = [decoder.decode(pcm[i:i + 960]) for i in range(0, len(pcm), 960)] + [decoder.flush()]
    streamed = np.concatenate(pieces)
    assert streamed.size == 16000
    assert decoder.seconds_in == pytest.approx(1.0)
    whole = LiveAudioDecoder("pcm16", 24000)
    reference = np.concatenate([whole.decode(pcm), whole.flush()])
    assert np.abs(streamed - reference).max() < 1e-4


def test_16k_pcm16_passes_through_unchanged():
    samples = np.array([0, 16384, -16384, 32767], dtype="<i2")
    decoder = LiveAudioDecoder("pcm16", 16000)
    assert decoder.decode(samples.tobytes()).tolist() == pytest.approx([0, 0.5, -0.5, 32767 / 32768])
    assert decoder.flush().size == 0


@pytest.mark.parametrize(("encoding", "rate", "named"), [("opus", 16000, "pcm16, mulaw, alaw"),
                                                         ("pcm16", 4000, "8000-48000 Hz"),
                                                         ("mulaw", 96000, "8000-48000 Hz")])
def test_bad_encoding_or_rate_is_refused_naming_what_is_allowed(encoding, rate, named):
    with pytest.raises(InputError, match=named):
        LiveAudioDecoder(encoding, rate)


def test_odd_pcm16_frame_is_a_typed_error():
    with pytest.raises(AudioDecodeError, match="even number of bytes"):
        LiveAudioDecoder("pcm16", 16000).decode(b"\x00\x01\x02")


def test_a_byte_stream_cut_inside_samples_decodes_as_the_whole():
    """decode_stream: a PCM16 sample split between two pieces (Deepgram frames, Riva requests cut anywhere) is
    carried to the next piece, so the pieces decode exactly as the whole does."""
    pcm = (np.arange(-500, 500, dtype="<i2") * 31).tobytes()
    whole = LiveAudioDecoder("pcm16", 16000).decode(pcm)
    decoder = LiveAudioDecoder("pcm16", 16000)
    cuts = [0, 1, 4, 7, 8, 333, 1001, len(pcm)]
    pieces = [decoder.decode_stream(pcm[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    assert np.array_equal(np.concatenate(pieces), whole)
