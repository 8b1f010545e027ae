"""Riva's ASR messages (``nvidia.riva.asr``) as the worker reads and writes them: the streaming config to typed
settings, engine results to ``StreamingRecognitionResult`` / ``SpeechRecognitionResult``, and the model configs.

The generated messages come from the published ``nvidia-riva-client`` wheel (``riva.client.proto``), not a vendored
proto. What the face honours and how Riva's fields map onto the engine is docs/RIVA.md; in short:

- ``encoding`` LINEAR_PCM (or unset), MULAW, ALAW at any ``sample_rate_hertz`` from 8 to 48 kHz; mono only;
- ``endpointing_config``: Riva declares the end of an utterance when ``stop_threshold`` of the last ``stop_history``
  ms of the acoustic model's output is blank. The worker's endpointer (silero VAD) ends an utterance after a run of
  silent frames, so the silence window is ``stop_history x stop_threshold`` (``stop_threshold`` unset: 1), clamped
  to the endpointer's 0.1-10 s; likewise speech opens an utterance after ``start_history x start_threshold`` ms of
  voice. ``*_eou`` (Riva's two-pass end of utterance) are accepted and not used: the engine's final pass plays
  that part;
- ``custom_configuration`` and the other recognition fields are accepted; unknown keys are ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from riva.client.proto import riva_asr_pb2 as rasr
from riva.client.proto import riva_audio_pb2 as raudio

from parakeet_worker.audio.live import MAX_LIVE_RATE_HZ, MIN_LIVE_RATE_HZ, LiveEncoding
from parakeet_worker.engine import TranscriptionResult
from parakeet_worker.errors import InputError
from parakeet_worker.streaming import EndpointConfig, StepResult
from parakeet_worker.transcript import SAMPLE_RATE_HZ, WordTiming

logger = logging.getLogger(__name__)

LANGUAGE = "en-US"  # what the model transcribes; other language codes are accepted and logged
CHANNEL_TAG = 1  # Riva numbers the channels of a result from 1
_ENCODINGS: dict[int, LiveEncoding] = {
    raudio.ENCODING_UNSPECIFIED: "pcm16", raudio.LINEAR_PCM: "pcm16", raudio.MULAW: "mulaw", raudio.ALAW: "alaw",
}
_MIN_SILENCE_S, _MAX_SILENCE_S = 0.1, 10.0  # the endpointer's bounds (EndpointConfig)
MAX_START_SPEECH_S = 2.0  # start_history x start_threshold above this is clamped: longer would drop short answers


class RivaConfigError(InputError):
    """A Riva request the worker cannot honour (answered ``INVALID_ARGUMENT`` with this message)."""

    code = "invalid_config"


@dataclass(frozen=True)
class StreamSettings:
    """What a ``StreamingRecognitionConfig`` asks for, as the session uses it."""

    encoding: LiveEncoding
    sample_rate: int
    interim_results: bool
    word_offsets: bool
    language: str
    endpoint: EndpointConfig

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding == "pcm16" else 1


def encoding_of(config: rasr.RecognitionConfig) -> LiveEncoding:
    """The live decoder's encoding for ``config.encoding`` (unset means LINEAR_PCM, as Riva reads it)."""
    encoding = _ENCODINGS.get(config.encoding)
    if encoding is None:
        name = raudio.AudioEncoding.Name(config.encoding) if config.encoding in raudio.AudioEncoding.values() \
            else str(config.encoding)
        raise RivaConfigError(f"encoding {name} is not supported for streaming: send LINEAR_PCM (16-bit), MULAW or "
                              "ALAW audio")
    return encoding


def _check_common(config: rasr.RecognitionConfig) -> str:
    if config.audio_channel_count > 1:
        raise RivaConfigError(f"audio_channel_count {config.audio_channel_count}: only mono audio is supported; "
                              "send one channel (audio_channel_count 1)")
    language = config.language_code or LANGUAGE
    if language.lower() not in ("en-us", "en", "en-gb", "multi"):
        logger.info("riva: language_code %r requested; the model transcribes English", language[:16])
    return language


def endpoint_config(config: rasr.RecognitionConfig) -> EndpointConfig:
    """The endpointer's settings for ``config.endpointing_config`` (the module's docstring says how)."""
    default = EndpointConfig()  # the worker's own endpointing (0.6 s of silence) when the client sends none
    if not config.HasField("endpointing_config"):
        return default
    ec = config.endpointing_config
    for name in ("start_threshold", "stop_threshold", "stop_threshold_eou"):
        if ec.HasField(name) and getattr(ec, name) > 1.0:
            raise RivaConfigError(f"endpointing_config.{name} is {getattr(ec, name)}: it is a fraction of the "
                                  "window, from 0.0 to 1.0 (or -1 for the default)")
    silence_s = default.silence_s
    if ec.HasField("stop_history") and ec.stop_history > 0:
        fraction = ec.stop_threshold if ec.HasField("stop_threshold") and ec.stop_threshold > 0 else 1.0
        silence_s = min(_MAX_SILENCE_S, max(_MIN_SILENCE_S, ec.stop_history * fraction / 1000))
    min_speech_s = default.min_speech_s
    if ec.HasField("start_history") and ec.start_history > 0:
        fraction = ec.start_threshold if ec.HasField("start_threshold") and ec.start_threshold > 0 else 1.0
        min_speech_s = min(MAX_START_SPEECH_S, ec.start_history * fraction / 1000)
    return EndpointConfig(silence_s=silence_s, min_speech_s=min_speech_s)


def stream_settings(streaming: rasr.StreamingRecognitionConfig) -> StreamSettings:
    """The first request's ``streaming_config`` as settings; :class:`RivaConfigError` names what cannot be
    honoured."""
    config = streaming.config
    encoding = encoding_of(config)
    rate = config.sample_rate_hertz or SAMPLE_RATE_HZ
    if not MIN_LIVE_RATE_HZ <= rate <= MAX_LIVE_RATE_HZ:
        raise RivaConfigError(f"sample_rate_hertz {config.sample_rate_hertz} is out of range: streaming audio must "
                              f"be {MIN_LIVE_RATE_HZ}-{MAX_LIVE_RATE_HZ} Hz")
    language = _check_common(config)
    return StreamSettings(encoding=encoding, sample_rate=rate, interim_results=streaming.interim_results,
                          word_offsets=config.enable_word_time_offsets, language=language,
                          endpoint=endpoint_config(config))


def force_eou(request: rasr.StreamingRecognizeRequest) -> bool:
    """The request asks to end the utterance now (``runtime_config["force_eou"] == "true"``)."""
    return request.runtime_config.get("force_eou", "").strip().lower() == "true"


# --- responses --------------------------------------------------------------------------------------------------
def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def word_infos(words: Sequence[WordTiming], language: str) -> list[rasr.WordInfo]:
    return [rasr.WordInfo(word=w.word, start_time=_ms(w.start), end_time=_ms(w.end), language_code=language)
            for w in words]


def stability(result: StepResult) -> float:
    """How settled an interim is: the share of its words already committed (they no longer change until the final
    pass), at least 0.01 (0.0 means "not set" in Riva's messages)."""
    committed = len(result.committed_text.split())
    total = committed + len(result.draft_text.split())
    return max(0.01, round(committed / total, 3)) if total else 0.01


def interim(result: StepResult, *, audio_processed_s: float, language: str) -> rasr.StreamingRecognizeResponse:
    """An interim: the whole current-utterance hypothesis (committed text and draft), ``is_final`` false."""
    alternative = rasr.SpeechRecognitionAlternative(transcript=result.text, language_code=[language])
    return rasr.StreamingRecognizeResponse(results=[rasr.StreamingRecognitionResult(
        alternatives=[alternative], is_final=False, stability=stability(result), channel_tag=CHANNEL_TAG,
        audio_processed=audio_processed_s)])


def final(result: StepResult, *, audio_processed_s: float, language: str,
          word_offsets: bool) -> rasr.StreamingRecognizeResponse:
    """The utterance's final (``is_final``; its words in ms from the stream's start when asked for)."""
    alternative = rasr.SpeechRecognitionAlternative(
        transcript=result.committed_text, language_code=[language],
        words=word_infos(result.words, language) if word_offsets else [])
    return rasr.StreamingRecognizeResponse(results=[rasr.StreamingRecognitionResult(
        alternatives=[alternative], is_final=True, stability=1.0, channel_tag=CHANNEL_TAG,
        audio_processed=audio_processed_s)])


def offline_results(result: TranscriptionResult, *, language: str,
                    word_offsets: bool) -> rasr.RecognizeResponse:
    """``Recognize``'s answer: one result per segment of the transcript (its words when asked for); each result's
    ``audio_processed`` is where its segment ends, the last one's the whole audio's length."""
    results = []
    segments = result.segments
    for i, segment in enumerate(segments):
        end = segments[i + 1].start if i + 1 < len(segments) else float("inf")
        words = [w for w in result.words if segment.start <= w.start < end] if word_offsets else []
        alternative = rasr.SpeechRecognitionAlternative(transcript=segment.segment.strip(), language_code=[language],
                                                        words=word_infos(words, language))
        processed = result.duration_s if i + 1 == len(segments) else min(segment.end, result.duration_s)
        results.append(rasr.SpeechRecognitionResult(alternatives=[alternative], channel_tag=CHANNEL_TAG,
                                                    audio_processed=processed))
    if not results and result.text.strip():
        results.append(rasr.SpeechRecognitionResult(
            alternatives=[rasr.SpeechRecognitionAlternative(transcript=result.text.strip(), language_code=[language],
                                                            words=word_infos(result.words, language)
                                                            if word_offsets else [])],
            channel_tag=CHANNEL_TAG, audio_processed=result.duration_s))
    return rasr.RecognizeResponse(results=results)


def model_configs(model: str, sample_rate: int = SAMPLE_RATE_HZ) -> rasr.RivaSpeechRecognitionConfigResponse:
    """``GetRivaSpeechRecognitionConfig``: the one model, once as the streaming (online) and once as the offline
    service, with the ``type`` and ``language_code`` NVIDIA's clients read."""
    configs = [rasr.RivaSpeechRecognitionConfigResponse.Config(
        model_name=f"{model}-{kind}", parameters={"type": kind, "language_code": LANGUAGE,
                                                  "sample_rate": str(sample_rate), "model": model,
                                                  "streaming": str(kind == "online").lower()})
        for kind in ("online", "offline")]
    return rasr.RivaSpeechRecognitionConfigResponse(model_config=configs)


__all__ = ["LANGUAGE", "RivaConfigError", "StreamSettings", "encoding_of", "endpoint_config", "final", "force_eou",
           "interim", "model_configs", "offline_results", "stream_settings", "word_infos"]
