"""A catalogue of bad job inputs, each with a fragment its error message must contain."""

from __future__ import annotations

import base64
import io
import struct
from pathlib import Path

import numpy as np
import soundfile as sf

GOOD_B64 = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAgD4AAAB9AAACABAAZGF0YQAAAAA="  # valid WAV header, zero samples

BAD_JOB_INPUTS: list[tuple[str, object, str]] = [
    ("input not an object", "hello", "must be a JSON object"),
    ("input a list", [1, 2], "must be a JSON object"),
    ("input null", None, "must be a JSON object"),
    ("no audio", {}, "no audio given"),
    ("empty audio_url", {"audio_url": ""}, "no audio given"),
    ("unknown key", {"audio_url": "https://x.test/a.wav", "languag": "en"}, "unknown input key"),
    ("two unknown keys", {"audio": "https://x.test/a.wav", "foo": 1, "bar": 2}, "'bar', 'foo'"),
    ("two sources", {"audio_url": "https://x.test/a.wav", "audio_base64": GOOD_B64}, "exactly one audio source"),
    ("audio and alias", {"audio_url": "https://x.test/a.wav", "audio": "https://x.test/b.wav"}, "exactly one"),
    ("inputs plus single", {"inputs": [{"audio_url": "https://x.test/a.wav"}], "audio_url": "https://x.test/b.wav"}, "not both"),
    ("inputs empty", {"inputs": []}, "non-empty list"),
    ("inputs not list", {"inputs": "https://x.test/a.wav"}, "non-empty list"),
    ("inputs item number", {"inputs": [42]}, "inputs[0] must be an object"),
    ("inputs item unknown key", {"inputs": [{"audio_url": "https://x.test/a.wav", "lang": "en"}]}, "inputs[0]: unknown key"),
    ("inputs item no audio", {"inputs": [{"format": "wav"}]}, "inputs[0]: no audio given"),
    ("too many inputs", {"inputs": ["https://x.test/a.wav"] * 65}, "at most 64"),
    ("audio_url not string", {"audio_url": 123}, "must be a string"),
    ("audio_base64 not string", {"audio_base64": ["abc"]}, "must be a string"),
    ("unknown action", {"action": "translate", "audio_url": "https://x.test/a.wav"}, "unknown action"),
    ("info with extra", {"action": "info", "audio_url": "https://x.test/a.wav"}, "takes no other keys"),
    ("timestamps string", {"audio_url": "https://x.test/a.wav", "timestamps": "yes"}, "'timestamps' must be true or false"),
    ("timestamp alias number", {"audio_url": "https://x.test/a.wav", "timestamp": 1}, "'timestamp' must be true or false"),
    ("both timestamp keys", {"audio_url": "https://x.test/a.wav", "timestamps": True, "timestamp": True}, "not both"),
    ("bad output format", {"audio_url": "https://x.test/a.wav", "output_format": "docx"}, "'output_format' must be one of"),
    ("output format case", {"audio_url": "https://x.test/a.wav", "output_format": "SRT"}, "'output_format' must be one of"),
    ("local attention string", {"audio_url": "https://x.test/a.wav", "use_local_attention": "true"}, "must be true or false"),
    ("chunk flag number", {"audio_url": "https://x.test/a.wav", "chunk_long_audio": 1}, "must be true or false"),
    ("chunk duration without flag", {"audio_url": "https://x.test/a.wav", "chunk_duration": 30}, "need 'chunk_long_audio'"),
    ("chunk duration string", {"audio_url": "https://x.test/a.wav", "chunk_long_audio": True, "chunk_duration": "30"}, "number of seconds"),
    ("chunk duration too small", {"audio_url": "https://x.test/a.wav", "chunk_long_audio": True, "chunk_duration": 1}, "between 5 and 3600"),
    ("chunk duration too big", {"audio_url": "https://x.test/a.wav", "chunk_long_audio": True, "chunk_duration": 1e6}, "between 5 and 3600"),
    ("chunk duration nan", {"audio_url": "https://x.test/a.wav", "chunk_long_audio": True, "chunk_duration": float("nan")}, "number of seconds"),
    ("chunk overlap negative", {"audio_url": "https://x.test/a.wav", "chunk_long_audio": True, "chunk_overlap": -1}, "between 0 and"),
    ("chunk overlap too large", {"audio_url": "https://x.test/a.wav", "chunk_long_audio": True, "chunk_duration": 20, "chunk_overlap": 10}, "less than half"),
    ("chunk and local", {"audio_url": "https://x.test/a.wav", "chunk_long_audio": True, "use_local_attention": True}, "choose one"),
    ("format hint number", {"audio_url": "https://x.test/a.wav", "format": 7}, "'format' must be a short string"),
    ("format hint empty", {"audio_url": "https://x.test/a.wav", "format": " "}, "'format' must be a short string"),
    ("bool as chunk duration", {"audio_url": "https://x.test/a.wav", "chunk_long_audio": True, "chunk_duration": True}, "number of seconds"),
]



def _wav_b64(rate: int, channels: int, data: bytes, *, float32: bool = False) -> str:
    """Base64 of a WAV file with whatever header a hostile client writes."""
    width = 4 if float32 else 2
    fmt = struct.pack("<HHIIHH", 3 if float32 else 1, channels, rate, rate * channels * width, channels * width,
                      8 * width)  # fmt: skip
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return base64.b64encode(b"RIFF" + struct.pack("<I", len(body)) + body).decode()


_LOCAL_MP3 = Path(__file__).parent / "assets" / "audio" / "en_librispeech_2412-153948-0000.mp3"
# An HLS playlist naming a local file, behind an empty ID3v2.4 tag: sniffed as MP3, and ffmpeg must not follow it.
_PLAYLIST_BEHIND_ID3 = base64.b64encode(
    b"ID3\x04\x00\x00\x00\x00\x00\x10" + b"\0" * 16
    + f"#EXTM3U\n#EXT-X-TARGETDURATION:20\n#EXTINF:12,\n{_LOCAL_MP3}\n#EXT-X-ENDLIST\n".encode()
).decode()  # fmt: skip

# Inputs that pass validation but fail while fetching or decoding the audio.
BAD_AUDIO_INPUTS: list[tuple[str, dict, str]] = [
    ("invalid base64", {"audio_base64": "this is not base64!!"}, "base64"),
    ("base64 of text", {"audio_base64": base64.b64encode(b"hello world, not audio at all" * 20).decode()}, "not audio"),
    ("zero-sample wav", {"audio_base64": GOOD_B64}, ""),
    ("ftp url", {"audio_url": "ftp://example.com/a.wav"}, "ftp"),
    ("file url", {"audio_url": "file:///etc/passwd"}, "file"),
    ("loopback url refused", {"audio_url": "http://127.0.0.1:9/a.wav"}, "127.0.0.1"),
    ("link-local url refused", {"audio_url": "http://169.254.169.254/latest/meta-data"}, "169.254.169.254"),
    ("raw pcm without hint", {"audio_base64": base64.b64encode(bytes(range(256)) * 200).decode()}, "pcm_s16le"),
    ("malformed ipv6 url", {"audio_url": "http://[::1/x"}, "not a valid IPv6 address"),
    ("url port out of range", {"audio_url": "https://x.test:99999/a.wav"}, "port is not a number"),
    ("s3 url with credentials", {"audio_url": "s3://AKIA:hunter2@bucket/key.wav"}, "cannot fetch s3://bucket/key.wav"),
    ("1 Hz wav", {"audio_base64": _wav_b64(1, 1, bytes(8000))}, "sample rate of 1 Hz"),
    ("1000-channel wav", {"audio_base64": _wav_b64(16000, 1000, bytes(2000 * 160))}, "1000 channels"),
    ("huge float samples", {"audio_base64": _wav_b64(16000, 1, struct.pack("<f", 1e30) * 1600, float32=True)},
     "far outside"),
    ("playlist behind id3", {"audio_base64": _PLAYLIST_BEHIND_ID3}, "mp3 data could not be decoded"),
]


def silence_flac_b64(seconds: float) -> str:
    """A few kB of FLAC that decode to ``seconds`` of silence (64 kB per second), its length not stated.

    The header's sample count is zeroed, as a streaming encoder leaves it ("unknown"): a decoder cannot refuse it
    from the header and decodes it until the limit, which is what a hostile request makes the worker hold.
    """
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * 16_000), np.float32), 16_000, format="FLAC")
    data = bytearray(buf.getvalue())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO first: its 36-bit sample count ends at byte 26
    data[21] &= 0xF0
    data[22:26] = bytes(4)
    return base64.b64encode(bytes(data)).decode()


# Text frames a client may send that the native protocol refuses, with the error code it answers (docs/PROTOCOL.md).
# Parsed offline by tests/test_protocol.py and sent over a real socket by tests/test_websocket.py.
BAD_CLIENT_TEXT: list[tuple[str, str]] = [
    ('not json', 'bad_json'),
    ('', 'bad_json'),
    ('[1, 2]', 'bad_message'),
    ('"start"', 'bad_message'),
    ('{}', 'bad_message'),
    ('{"action": 5}', 'bad_message'),
    ('{"action": "dance"}', 'unknown_action'),
    ('{"action": "start", "sample_rate": 4000}', 'bad_sample_rate'),
    ('{"action": "start", "sample_rate": "16000"}', 'bad_sample_rate'),
    ('{"action": "start", "sample_rate": 96000}', 'bad_sample_rate'),
    ('{"action": "start", "sample_rate": true}', 'bad_sample_rate'),
    ('{"action": "start", "volume": 3}', 'bad_message'),
    ('{"action": "start", "encoding": "opus"}', 'bad_message'),
    ('{"action": "start", "timestamps": "yes"}', 'bad_message'),
    ('{"action": "start", "final_pass": "no"}', 'bad_message'),
    ('{"action": "start", "endpoint_silence_ms": 5}', 'bad_message'),
    ('{"action": "start", "endpoint_silence_ms": null}', 'bad_message'),
    ('{"action": "start", "chunk_duration": -1}', 'bad_message'),
    ('{"action": "start", "chunk_duration": 31}', 'bad_message'),
    ('{"action": "start", "language": 12}', 'bad_message'),
    ('{"action": "start", "language": "a-very-long-language"}', 'bad_message'),
    ('{"action": "config", "sample_rate": 8000}', 'bad_message'),
    ('{"action": "config", "timestamps": 1}', 'bad_message'),
]
