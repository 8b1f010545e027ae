"""Job input validation: every bad input gets an error naming the problem; good inputs become typed requests."""

from __future__ import annotations

import json

import pytest

from parakeet_worker.errors import InputError
from parakeet_worker.serving.job_input import InfoRequest, TranscribeRequest, WebsocketRequest, parse_job_input
from parakeet_worker.serving.ws_grants import ServerLimits
from tests.bad_inputs import BAD_JOB_INPUTS


@pytest.mark.parametrize(("raw", "fragment"), [(r, f) for _, r, f in BAD_JOB_INPUTS],
                         ids=[name for name, _, _ in BAD_JOB_INPUTS])
def test_bad_input_is_refused_with_a_clear_message(raw: object, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        parse_job_input(raw)
    assert fragment in str(info.value)


def test_catalogue_is_large_enough() -> None:
    assert len(BAD_JOB_INPUTS) >= 35


def test_single_url_with_every_option() -> None:
    request = parse_job_input({
        "audio": "https://bucket.s3.amazonaws.com/a.mp3?X-Amz-Signature=abc", "format": "mp3", "timestamp": True,
        "output_format": "vtt", "chunk_long_audio": True, "chunk_duration": 30, "chunk_overlap": 4,
    })
    assert isinstance(request, TranscribeRequest)
    assert request.sources[0].kind == "url" and request.sources[0].format_hint == "mp3"
    assert request.sources[0].describe() == "https://bucket.s3.amazonaws.com/a.mp3"  # no signature in logs
    assert request.timestamps and request.output_format == "vtt" and not request.multiple
    assert (request.chunk_long_audio, request.chunk_duration_s, request.chunk_overlap_s) == (True, 30.0, 4.0)


def test_inputs_list_mixes_urls_and_base64_with_a_shared_format_hint() -> None:
    request = parse_job_input({"inputs": ["https://x.test/a.wav", {"audio_base64": "AAAA", "format": "pcm_s16le"}],
                               "format": "wav"})
    assert isinstance(request, TranscribeRequest) and request.multiple
    assert [(s.kind, s.format_hint) for s in request.sources] == [("url", "wav"), ("base64", "pcm_s16le")]


def test_info_and_websocket_actions() -> None:
    assert isinstance(parse_job_input({"action": "info"}), InfoRequest)
    assert parse_job_input({"action": "websocket"}) == WebsocketRequest()
    request = parse_job_input({"action": "websocket", "idle_timeout": 5, "max_duration": 60},
                              limits=ServerLimits(max_session_s=600))
    assert request == WebsocketRequest(idle_timeout_s=5.0, max_session_s=60.0)
    for bad, needle in (({"action": "websocket", "max_session_s": 60}, "unknown key"),
                        ({"action": "websocket", "max_session_length": 601}, "max_session_length"),
                        ({"action": "websocket", "idle_timeout": 0}, "idle_timeout"),
                        ({"action": "websocket", "max_duration": 5, "max_session_length": 5}, "not both")):
        with pytest.raises(InputError, match=needle):
            parse_job_input(bad, limits=ServerLimits(max_session_s=600))


def test_websocket_timeouts_are_bounded_by_the_server_limits() -> None:
    """A job may ask for up to 10 minutes of idle time, or for the server's own idle timeout if that is longer."""
    assert parse_job_input({"action": "websocket", "idle_timeout": 600}).idle_timeout_s == 600.0
    with pytest.raises(InputError, match="'idle_timeout' must be between 1 and 600 seconds"):
        parse_job_input({"action": "websocket", "idle_timeout": 601})
    patient = ServerLimits(idle_timeout_s=900.0, max_session_s=7200.0)
    request = parse_job_input({"action": "websocket", "idle_timeout": 900, "max_session_length": 7200}, limits=patient)
    assert request == WebsocketRequest(idle_timeout_s=900.0, max_session_s=7200.0)
    with pytest.raises(InputError, match="'max_session_length' must be between 1 and 3600 seconds"):
        parse_job_input({"action": "websocket", "max_session_length": 7200})


def test_use_local_attention_false_means_full_attention_only() -> None:
    request = parse_job_input({"audio_url": "https://x.test/a.wav", "use_local_attention": False})
    assert isinstance(request, TranscribeRequest) and request.use_local_attention is False


@pytest.mark.parametrize("key", ["chunk_duration", "chunk_overlap"])
@pytest.mark.parametrize("number", [json.loads("1e999"), 10**400, -(10**400)], ids=["1e999", "400 digits", "-400 digits"])
def test_a_number_too_large_for_a_float_is_an_input_error_naming_the_key(key: str, number: object) -> None:
    with pytest.raises(InputError, match=f"'{key}'") as info:
        parse_job_input({"audio_url": "https://x.test/a.wav", "chunk_long_audio": True, key: number})
    assert len(str(info.value)) < 300  # the 400 digits are not echoed whole


def test_a_huge_websocket_timeout_is_an_input_error_naming_the_key() -> None:
    with pytest.raises(InputError, match="'idle_timeout'"):
        parse_job_input({"action": "websocket", "idle_timeout": 10**400})
