"""Audio in: bytes, files, base64 and http(s)/s3 URLs to float32 mono 16 kHz samples, with limits and typed errors.

This is the only layer that touches codecs, files and the network; everything downstream takes arrays.

- :mod:`~parakeet_worker.audio.limits`: :class:`AudioLimits` (what one input may cost) and :class:`DecodedAudio`.
- :mod:`~parakeet_worker.audio.pcm`: PCM16 to float32, resampling, the bounded mono 16 kHz sink.
- :mod:`~parakeet_worker.audio.sniff`: the container from the first bytes; what non-audio data is.
- :mod:`~parakeet_worker.audio.decode`: libsndfile and ffmpeg decoding, damaged input, the raw-PCM hint.
- :mod:`~parakeet_worker.audio.fetch`: http(s) downloads behind the SSRF guard, and S3.
- :mod:`~parakeet_worker.audio.load`: one job input (URL, data URI or base64) to samples.

All functions are synchronous and may block (subprocess, network): run them in a worker thread from async code.
Temp files are removed on success and on error.
"""

from parakeet_worker.audio.decode import decode_bytes, decode_file
from parakeet_worker.audio.fetch import fetch_url, redact_url
from parakeet_worker.audio.limits import DEFAULT_MAX_DURATION_S, AudioLimits, DecodedAudio
from parakeet_worker.audio.load import load_audio_input, load_base64
from parakeet_worker.audio.pcm import pcm16_to_float32, resample

__all__ = [
    "DEFAULT_MAX_DURATION_S",
    "AudioLimits",
    "DecodedAudio",
    "decode_bytes",
    "decode_file",
    "fetch_url",
    "load_audio_input",
    "load_base64",
    "pcm16_to_float32",
    "redact_url",
    "resample",
]
