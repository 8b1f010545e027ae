"""Audio in: any common file, base64 or URL to 16 kHz mono float32, with limits and typed errors.

The public entry points; the code lives in :mod:`parakeet_worker.audio`.
"""

from parakeet_worker.audio import (
    AudioLimits,
    DecodedAudio,
    decode_bytes,
    decode_file,
    fetch_url,
    load_audio_input,
    load_base64,
    pcm16_to_float32,
    redact_url,
    resample,
)

__all__ = [
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
