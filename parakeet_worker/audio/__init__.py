"""Audio in: files, base64 and URLs decoded to 16 kHz mono float32, with limits, SSRF guard and typed errors."""

from parakeet_worker.audio.media import (
    DEFAULT_MAX_DURATION_S,
    AudioLimits,
    DecodedAudio,
    decode_bytes,
    decode_file,
    fetch_url,
    load_audio_input,
    load_base64,
    pcm16_to_float32,
    resample,
)

__all__ = ["AudioLimits", "DEFAULT_MAX_DURATION_S", "DecodedAudio", "decode_bytes", "decode_file", "fetch_url", "load_audio_input", "load_base64", "pcm16_to_float32", "resample"]
