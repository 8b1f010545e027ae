"""The Riva face (``nvidia.riva.asr.RivaSpeechRecognition`` on the worker's gRPC port) over the real engine and test
model, driven by NVIDIA's own client (``nvidia-riva-client``: ``riva.client.ASRService`` over an insecure channel,
the token in the ``authorization`` metadata), as Pipecat's ``NvidiaSTTService`` and NVIDIA's scripts call it.

Transcripts are compared with the native path's: the same audio streamed alone through the engine
(tests/streams.py), and the batch path's for ``Recognize``."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import riva.client
import soxr
from riva.client.proto import riva_asr_pb2 as rasr

from parakeet_client import pcm16
from parakeet_worker.audio.live import LiveAudioDecoder
from parakeet_worker.config import Settings
from parakeet_worker.engine.engine import ParakeetEngine
from parakeet_worker.errors import InputError
from parakeet_worker.observability import Metrics
from parakeet_worker.serving import riva_messages as rm
from parakeet_worker.serving.batch import BatchService
from parakeet_worker.serving.riva_face import file_bytes
from parakeet_worker.serving.ws_grants import ServerLimits
from parakeet_worker.serving.ws_server import public_address
from parakeet_worker.streaming import StepResult
from tests.faces_server import TOKEN, FacesServer, serve_faces
from tests.streams import speech_only, streamed_alone

HELDOUT = Path(__file__).parent / "assets" / "heldout"
MAX_SESSIONS = 3
CHUNK_S = 0.1  # what NVIDIA's file-streaming client and Pipecat send per request
RPC_TIMEOUT_S = 120.0
# stop_history long enough that no pause inside a held-out sentence ends it: one utterance, one final
ONE_UTTERANCE_MS = 3000


@pytest.fixture(scope="module")
def engine(face_engine: ParakeetEngine) -> ParakeetEngine:
    return face_engine


@pytest.fixture(scope="module")
def batch(engine, test_model_path) -> Iterator[BatchService]:
    service = BatchService(engine, Settings(model=str(test_model_path)), metrics=Metrics(None))
    yield service
    service.close()


@pytest.fixture(scope="module")
def server(engine, batch) -> Iterator[FacesServer]:
    with serve_faces(engine, [], batch=batch, grpc=True, limits=ServerLimits(max_sessions=MAX_SESSIONS)) as srv:
        yield srv


def asr(server: FacesServer, token: str | None = TOKEN) -> riva.client.ASRService:
    """NVIDIA's client as Pipecat builds it for ``server="host:port", use_ssl=False`` (plus the token)."""
    metadata = [["authorization", f"Bearer {token}"]] if token else None
    assert server.grpc_target is not None
    return riva.client.ASRService(riva.client.Auth(None, False, server.grpc_target, metadata))


def streaming_config(rate: int = 16000, *, interim: bool = True, stop_history_ms: int = ONE_UTTERANCE_MS,
                     words: bool = False, encoding: int = riva.client.AudioEncoding.LINEAR_PCM,
                     ) -> rasr.StreamingRecognitionConfig:
    """Pipecat's NvidiaSTTService config (guides/interfaces.md §2.1), at ``rate`` with ``stop_history_ms``."""
    config = rasr.StreamingRecognitionConfig(
        config=riva.client.RecognitionConfig(
            encoding=encoding, language_code="en-US", model="", max_alternatives=1, profanity_filter=False,
            enable_automatic_punctuation=True, verbatim_transcripts=True, sample_rate_hertz=rate,
            audio_channel_count=1, enable_word_time_offsets=words),
        interim_results=interim)
    riva.client.add_endpoint_parameters_to_config(config, -1, -1.0, stop_history_ms, -1, -1.0, -1.0)
    return config


def chunks(data: bytes, rate: int, width: int = 2) -> list[bytes]:
    step = int(rate * CHUNK_S) * width
    return [data[i : i + step] for i in range(0, len(data), step)]


def paced(parts: list[bytes], rate: int, width: int = 2) -> Iterator[bytes]:
    """The chunks at real-time pace, as a microphone (or Pipecat's transport) hands them over."""
    for part in parts:
        time.sleep(len(part) / width / rate)
        yield part


def heard(pcm: bytes, rate: int) -> np.ndarray:
    """The 16 kHz audio the face gives the engine for ``pcm`` at ``rate`` (flushed at the end)."""
    decoder = LiveAudioDecoder("pcm16", rate)
    return np.concatenate([decoder.decode(pcm), decoder.flush()])


def finals_of(responses: list[rasr.StreamingRecognizeResponse]) -> list[rasr.StreamingRecognitionResult]:
    return [r for resp in responses for r in resp.results if r.is_final]


def interims_of(responses: list[rasr.StreamingRecognizeResponse]) -> list[rasr.StreamingRecognitionResult]:
    return [r for resp in responses for r in resp.results if not r.is_final]


def text(result: rasr.StreamingRecognitionResult | rasr.SpeechRecognitionResult) -> str:
    return result.alternatives[0].transcript


class Conversation:
    """A StreamingRecognize RPC whose requests the test sends one at a time (a queue-fed request iterator, as
    Pipecat's audio queue is), and whose responses a thread collects."""

    def __init__(self, server: FacesServer, config: rasr.StreamingRecognitionConfig | None,
                 token: str | None = TOKEN) -> None:
        self.requests: queue.Queue[rasr.StreamingRecognizeRequest | None] = queue.Queue()
        if config is not None:
            self.requests.put(rasr.StreamingRecognizeRequest(streaming_config=config))
        self.responses: list[rasr.StreamingRecognizeResponse] = []
        self.error: grpc.RpcError | None = None
        self.arrived = threading.Condition()
        service = asr(server, token)
        self.call = service.stub.StreamingRecognize(iter(self.requests.get, None), timeout=RPC_TIMEOUT_S,
                                                    metadata=service.auth.get_auth_metadata())
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                with self.arrived:
                    self.responses.append(response)
                    self.arrived.notify_all()
        except grpc.RpcError as exc:
            self.error = exc
        with self.arrived:
            self.arrived.notify_all()

    def send(self, audio: bytes = b"", **runtime: str) -> None:
        self.requests.put(rasr.StreamingRecognizeRequest(audio_content=audio, runtime_config=runtime))

    def wait_finals(self, count: int, timeout: float = 60.0) -> list[rasr.StreamingRecognitionResult]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(finals_of(self.responses)) < count and self.thread.is_alive():
                assert self.arrived.wait(max(0.0, deadline - time.monotonic())), "no final in time"
        return finals_of(self.responses)

    def close(self, timeout: float = 60.0) -> grpc.StatusCode:
        """Half-close; the RPC's status once it ended."""
        self.requests.put(None)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the RPC did not end"
        return self.error.code() if self.error is not None else grpc.StatusCode.OK


# --- pure mappings ------------------------------------------------------------------------------------------------
def test_endpointing_config_maps_onto_the_vad_silence_window() -> None:
    def mapped(**fields: float) -> tuple[float, float]:
        config = rasr.RecognitionConfig(endpointing_config=rasr.EndpointingConfig(**fields))
        endpoint = rm.endpoint_config(config)
        return round(endpoint.silence_s, 3), round(endpoint.min_speech_s, 3)

    default = rm.endpoint_config(rasr.RecognitionConfig())
    assert mapped(stop_history=320) == (0.32, round(default.min_speech_s, 3))  # Pipecat's default
    assert mapped(stop_history=800, stop_threshold=0.5) == (0.4, round(default.min_speech_s, 3))
    assert mapped(stop_history=40)[0] == 0.1 and mapped(stop_history=60_000)[0] == 10.0  # the endpointer's bounds
    assert mapped(start_history=300, start_threshold=0.5)[1] == 0.15
    assert mapped(stop_history=-1) == (default.silence_s, default.min_speech_s)  # -1: the default
    with pytest.raises(rm.RivaConfigError, match="stop_threshold"):
        mapped(stop_history=320, stop_threshold=1.5)


def test_interim_stability_is_the_committed_share_and_raw_audio_becomes_a_wav() -> None:
    step = StepResult(stream_id="s", committed_text="to be or", new_words=(), draft_text="not", committed_until_s=1.0,
                      audio_end_s=1.5, final=False)
    response = rm.interim(step, audio_processed_s=1.5, language="en-US")
    (result,) = response.results
    assert text(result) == "to be or not" and not result.is_final and result.stability == pytest.approx(0.75)
    pcm = pcm16(np.linspace(-0.5, 0.5, 8000, dtype=np.float32))
    wav = file_bytes(pcm, rasr.RecognitionConfig(sample_rate_hertz=8000))
    assert wav[:4] == b"RIFF" and wav.endswith(pcm) and file_bytes(wav, rasr.RecognitionConfig()) is wav
    with pytest.raises(rm.RivaConfigError, match="sample_rate_hertz"):
        file_bytes(pcm, rasr.RecognitionConfig(sample_rate_hertz=4000))


# --- Recognize and the model configs ------------------------------------------------------------------------------
def test_offline_recognize_of_a_wav_file_and_of_raw_pcm_gives_the_batch_transcript(server, batch,
                                                                                   heldout_clips) -> None:
    clip = heldout_clips[1]
    wav = (HELDOUT / clip.name).read_bytes()
    expected = asyncio.run_coroutine_threadsafe(batch.transcribe_upload(wav), server.loop).result(60)
    # Pipecat's NvidiaSegmentedSTTService and NVIDIA's transcribe_file_offline.py: the file, no encoding, no rate
    response = asr(server).offline_recognize(wav, riva.client.RecognitionConfig(
        language_code="en-US", max_alternatives=1, enable_automatic_punctuation=True, enable_word_time_offsets=True))
    assert response.results and " ".join(text(r) for r in response.results) == expected.text.strip()
    words = [w for r in response.results for w in r.alternatives[0].words]
    assert [w.word for w in words] == [w.word for w in expected.words]
    assert all(0 <= w.start_time <= w.end_time <= clip.seconds * 1000 + 10 for w in words)
    assert response.results[-1].audio_processed == pytest.approx(clip.seconds, abs=0.05)
    raw = riva.client.RecognitionConfig(encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=16000,
                                        language_code="en-US")
    raw_response = asr(server).offline_recognize(pcm16(clip.audio), raw)
    assert " ".join(text(r) for r in raw_response.results) == expected.text.strip()


def test_model_configs_name_the_online_and_offline_services(server, engine) -> None:
    response = asr(server).stub.GetRivaSpeechRecognitionConfig(
        rasr.RivaSpeechRecognitionConfigRequest(), metadata=[("authorization", f"Bearer {TOKEN}")], timeout=30)
    kinds = {c.parameters["type"]: c for c in response.model_config}
    assert set(kinds) == {"online", "offline"}
    assert all(c.parameters["language_code"] == "en-US" and engine.info().model in c.model_name
               for c in kinds.values())


# --- StreamingRecognize -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [16000, 48000])
def test_streaming_gives_interims_then_one_final_with_the_native_text_and_words(server, engine, heldout_clips,
                                                                               rate) -> None:
    clip = heldout_clips[1].audio  # 6.7 s: several streaming steps
    pcm = pcm16(soxr.resample(clip, 16000, rate) if rate != 16000 else clip)
    responses = list(asr(server).streaming_response_generator(paced(chunks(pcm, rate), rate),
                                                              streaming_config(rate, words=True)))
    expected = streamed_alone(engine, heard(pcm, rate))
    (final,) = finals_of(responses)
    interims = interims_of(responses)
    assert expected and text(final) == expected, "the half-close flushes the one final: the native path's text"
    assert any(text(r) for r in interims) and all(0 < r.stability <= 1 for r in interims)
    assert [w.word for w in final.alternatives[0].words] == expected.split()
    assert all(0 <= w.start_time <= w.end_time <= len(clip) / 16 + 10 for w in final.alternatives[0].words)
    processed = [r.audio_processed for r in [*interims, final]]
    assert processed == sorted(processed) and final.audio_processed == pytest.approx(len(clip) / 16000, abs=0.5)


def test_force_eou_finalizes_at_once_and_the_stream_goes_on(server, engine, heldout_clips) -> None:
    first, second = speech_only(heldout_clips[2].audio), speech_only(heldout_clips[4].audio)
    talk = Conversation(server, streaming_config(interim=False))
    for chunk in chunks(pcm16(first), 16000):
        talk.send(chunk)
    talk.send(force_eou="true")  # built from the package's messages: runtime_config, as NVIDIA's clients send it
    (one,) = talk.wait_finals(1)
    for chunk in chunks(pcm16(second), 16000):
        talk.send(chunk)
    talk.send(chunks(pcm16(second), 16000)[0][:0], force_eou="true")
    _, two = talk.wait_finals(2)
    assert talk.close() is grpc.StatusCode.OK
    assert text(one) == streamed_alone(engine, first) and text(two) == streamed_alone(engine, second)
    assert len(finals_of(talk.responses)) == 2, "nothing left for the half-close"


def test_server_endpointing_at_pipecats_stop_history_ends_the_utterance(server, heldout_clips) -> None:
    clip = speech_only(heldout_clips[6].audio)
    talk = Conversation(server, streaming_config(stop_history_ms=320))
    for chunk in chunks(pcm16(np.concatenate([clip, np.zeros(16000, np.float32)])), 16000):
        talk.send(chunk)
    (final,) = talk.wait_finals(1)  # before the half-close: the server's VAD ended it
    assert text(final) and talk.close() is grpc.StatusCode.OK
    assert len(finals_of(talk.responses)) == 1


def test_keep_alive_silence_yields_no_final_and_no_interim_text(server) -> None:
    silence = bytes(int(16000 * 0.1) * 2)  # Pipecat's keep-alive: 100 ms of zero PCM16
    responses = list(asr(server).streaming_response_generator([silence] * 30, streaming_config(stop_history_ms=320)))
    assert not finals_of(responses) and not [r for r in interims_of(responses) if text(r)]


# --- refusals and bad traffic ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("token", [None, "wrong"])
def test_every_rpc_without_the_token_is_unauthenticated(server, token) -> None:
    service = asr(server, token)
    calls = [
        lambda: list(service.streaming_response_generator([b"\0\0"], streaming_config())),
        lambda: service.offline_recognize(b"RIFF", riva.client.RecognitionConfig()),
        lambda: service.stub.GetRivaSpeechRecognitionConfig(rasr.RivaSpeechRecognitionConfigRequest(),
                                                             metadata=service.auth.get_auth_metadata()),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED and TOKEN not in refused.value.details()


def _refused(server: FacesServer, requests: list[rasr.StreamingRecognizeRequest]) -> grpc.RpcError:
    service = asr(server)
    with pytest.raises(grpc.RpcError) as refused:
        list(service.stub.StreamingRecognize(iter(requests), metadata=service.auth.get_auth_metadata(), timeout=60))
    return refused.value


def test_bad_traffic_is_refused_with_its_status_and_other_streams_go_on(server, engine, heldout_clips) -> None:
    clip = heldout_clips[4].audio
    neighbour = Conversation(server, streaming_config(interim=False))
    audio = rasr.StreamingRecognizeRequest(audio_content=bytes(3200))
    config = rasr.StreamingRecognizeRequest(streaming_config=streaming_config())
    bad = {
        "audio first": [audio, config],
        "nothing at all": [],
        "FLAC streaming": [rasr.StreamingRecognizeRequest(streaming_config=streaming_config(
            encoding=riva.client.AudioEncoding.FLAC))],
        "4 kHz": [rasr.StreamingRecognizeRequest(streaming_config=streaming_config(4000))],
        "96 kHz": [rasr.StreamingRecognizeRequest(streaming_config=streaming_config(96000))],
        "a second config": [config, audio, config],
        "a 6 s chunk": [config, rasr.StreamingRecognizeRequest(audio_content=bytes(6 * 32000))],
    }
    stereo = streaming_config()
    stereo.config.audio_channel_count = 2
    bad["stereo"] = [rasr.StreamingRecognizeRequest(streaming_config=stereo)]
    for name, requests in bad.items():
        error = _refused(server, requests)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (name, error)
        assert error.details(), name
    # not audio at all, where a file or raw audio was expected
    with pytest.raises(grpc.RpcError) as not_audio:
        asr(server).offline_recognize(b"%PDF-1.7 " + bytes(100), riva.client.RecognitionConfig(
            encoding=riva.client.AudioEncoding.FLAC))
    assert not_audio.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    # a client that cancels its RPC mid-stream: its session is released
    cancelled = Conversation(server, streaming_config())
    for chunk in chunks(pcm16(clip), 16000)[:10]:
        cancelled.send(chunk)
    time.sleep(0.5)
    cancelled.call.cancel()
    assert cancelled.close() is grpc.StatusCode.CANCELLED
    # more streams than the session limit: RESOURCE_EXHAUSTED, and the held ones are unaffected
    held = [Conversation(server, streaming_config()) for _ in range(MAX_SESSIONS - 1)]
    time.sleep(1.0)
    over = _refused(server, [config, audio])
    assert over.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "busy" in over.details()
    assert all(h.close() is grpc.StatusCode.OK for h in held)
    for chunk in chunks(pcm16(clip), 16000):
        neighbour.send(chunk)
    assert neighbour.close() is grpc.StatusCode.OK
    (final,) = finals_of(neighbour.responses)
    assert text(final) == streamed_alone(engine, clip)
    deadline = time.monotonic() + 10
    while server.server.active_sessions and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.server.active_sessions == 0, "every refused, cancelled or ended stream left the registry"


def test_shutdown_sends_the_final_then_unavailable(engine, heldout_clips) -> None:
    clip = speech_only(heldout_clips[2].audio)
    with serve_faces(engine, [], grpc=True) as srv:
        talk = Conversation(srv, streaming_config(interim=False))
        for chunk in chunks(pcm16(clip), 16000):
            talk.send(chunk)
        time.sleep(0.5)
        srv.drain(10.0)
        status = talk.close()
    (final,) = finals_of(talk.responses)
    assert text(final) == streamed_alone(engine, clip)
    assert status is grpc.StatusCode.UNAVAILABLE and "shutting down" in (talk.error.details() if talk.error else "")


def test_a_websocket_jobs_token_opens_one_stream_and_cancelling_the_job_ends_it(server, engine,
                                                                               heldout_clips) -> None:
    """A ``websocket`` job's single-use token works on the gRPC face too: the job's summary is that stream's, a
    second stream with the token is refused, and cancelling the job ends the stream (its final first)."""
    clip = speech_only(heldout_clips[2].audio)
    grant = server.server.grant("job-riva")
    talk = Conversation(server, streaming_config(interim=False), token=grant.token)
    for chunk in chunks(pcm16(clip), 16000):
        talk.send(chunk)
    deadline = time.monotonic() + 30
    while not grant.used and time.monotonic() < deadline:
        time.sleep(0.05)
    second = Conversation(server, streaming_config(interim=False), token=grant.token)
    assert second.close() is grpc.StatusCode.FAILED_PRECONDITION
    time.sleep(0.5)
    server.server.revoke(grant)
    summary = grant.summary.result(timeout=60)
    status = talk.close()
    (final,) = finals_of(talk.responses)
    assert text(final) == streamed_alone(engine, clip)
    assert status is grpc.StatusCode.CANCELLED
    assert summary.reason == "cancelled" and summary.final_text == text(final) and summary.utterances == 1


def test_the_grpc_port_setting_and_its_public_address() -> None:
    settings = Settings.from_env({"RUNPOD_PUBLIC_IP": "203.0.113.7", "RUNPOD_TCP_PORT_50051": "40124",
                                  "RUNPOD_TCP_PORT_8765": "40123"})
    assert settings.grpc_port == 50051 and settings.runpod_grpc_tcp_port == 40124
    assert public_address(settings, 50051, grpc=True) == ("203.0.113.7", 40124, "public")
    assert public_address(settings, 8765) == ("203.0.113.7", 40123, "public")
    moved = Settings.from_env({"PARAKEET_GRPC_PORT": "6000", "RUNPOD_TCP_PORT_6000": "41000"})
    assert moved.runpod_grpc_tcp_port == 41000
    assert public_address(moved, 6000, grpc=True) == ("127.0.0.1", 6000, "internal"), "no public IP: internal"
    assert Settings.from_env({"PARAKEET_GRPC_PORT": "0"}).grpc_port == 0
    with pytest.raises(InputError, match="PARAKEET_GRPC_PORT"):
        Settings.from_env({"PARAKEET_GRPC_PORT": "70000"})
