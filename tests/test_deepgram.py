"""The Deepgram live face (/v1/listen) on a real uvicorn server over the real engine and test model, driven by
Deepgram's own Python SDK (deepgram-sdk 7.x) with a custom environment, as a Deepgram user would point it at us.

Every server message is parsed the way the SDK parses it and also validated strictly against the SDK's models
(every field they require is present and typed). Transcripts are compared with the native path's: the same audio
streamed alone through the engine (tests/streams.py)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import soxr
from deepgram import DeepgramClient, DeepgramClientEnvironment
from deepgram.core.api_error import ApiError
from deepgram.core.unchecked_base_model import construct_type
from deepgram.listen.v1.socket_client import V1SocketClient, V1SocketClientResponse
from deepgram.listen.v1.types import (
    ListenV1Configure,
    ListenV1ConfigureFailure,
    ListenV1Error,
    ListenV1Metadata,
    ListenV1Results,
    ListenV1SpeechStarted,
    ListenV1UtteranceEnd,
)
from pydantic import TypeAdapter
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from parakeet_client import pcm16
from parakeet_worker.audio.live import LiveAudioDecoder, LiveEncoding
from parakeet_worker.engine.engine import ParakeetEngine
from parakeet_worker.observability import Metrics
from parakeet_worker.serving import deepgram_face
from parakeet_worker.serving.deepgram_messages import (
    ListenOptions,
    parse_listen_params,
    plain_word,
)
from parakeet_worker.serving.deepgram_messages import results as dg_results
from parakeet_worker.serving.ws_grants import ServerLimits
from parakeet_worker.transcript import WordTiming
from tests.faces_server import TOKEN, FacesServer, serve_faces
from tests.streams import speech_only, streamed_alone

FRAME_S = 0.02
# What Pipecat's DeepgramSTTService sends by default (guides/interfaces.md §4.1): none of it may be refused.
PIPECAT = {"model": "nova-3-general", "language": "en", "detect_entities": "false", "diarize": "false",
           "dictation": "false", "interim_results": "true", "numerals": "false", "profanity_filter": "true",
           "punctuate": "true", "smart_format": "false", "encoding": "linear16", "channels": 1,
           "multichannel": "false", "sample_rate": 16000}
STRICT = TypeAdapter(V1SocketClientResponse)


@pytest.fixture(scope="module")
def engine(face_engine: ParakeetEngine) -> ParakeetEngine:
    return face_engine


@pytest.fixture(scope="module")
def server(engine) -> Iterator[FacesServer]:
    with serve_faces(engine, [deepgram_face.routes]) as srv:
        yield srv


def sdk(server: FacesServer, **auth: str) -> DeepgramClient:
    environment = DeepgramClientEnvironment(base=server.url, production=server.ws_url, agent=server.ws_url,
                                            agent_rest=server.url)
    return DeepgramClient(environment=environment, **(auth or {"api_key": TOKEN}))


def receive(conn: V1SocketClient, timeout: float = 60.0) -> Any:
    """The next server message, parsed as the SDK parses it (``construct_type`` over its response union) after a
    strict validation against the same models. The SDK's own ``recv()`` has no timeout, hence ``_websocket``."""
    obj = json.loads(conn._websocket.recv(timeout=timeout))
    strict = STRICT.validate_python(obj)
    parsed = construct_type(type_=V1SocketClientResponse, object_=obj)
    assert type(parsed) is type(strict), obj
    return parsed


def until(conn: V1SocketClient, kind: type, timeout: float = 60.0) -> tuple[list[Any], Any]:
    """Messages up to the first of ``kind`` (returned apart)."""
    before = []
    while not isinstance(message := receive(conn, timeout), kind):
        before.append(message)
    return before, message


def until_closed(conn: V1SocketClient, timeout: float = 60.0) -> tuple[list[Any], int | None, str | None]:
    messages = []
    try:
        while True:
            messages.append(receive(conn, timeout))
    except ConnectionClosed:
        pass
    return messages, conn._websocket.close_code, conn._websocket.close_reason


def send(conn: V1SocketClient, data: bytes, bytes_per_s: int, frame_bytes: int | None = None,
         realtime: bool = False) -> None:
    step = frame_bytes or int(bytes_per_s * FRAME_S)
    for i in range(0, len(data), step):
        conn.send_media(data[i : i + step])
        if realtime:
            time.sleep(step / bytes_per_s)


def text_of(result: ListenV1Results) -> str:
    return result.channel.alternatives[0].transcript


def decoded(data: bytes, encoding: LiveEncoding, rate: int) -> np.ndarray:
    """The 16 kHz samples the face pushes for ``data`` (its decoder is chunking-invariant)."""
    decoder = LiveAudioDecoder(encoding, rate)
    return np.concatenate([decoder.decode(data), decoder.flush()])


def mulaw(samples: np.ndarray) -> bytes:
    """G.711 mu-law encoding (the inverse of the worker's table)."""
    value = np.clip(np.round(samples * 32768.0), -32635, 32635).astype(np.int32)
    sign = (value < 0).astype(np.int32) << 7
    magnitude = np.abs(value) + 0x84
    exponent = np.clip(np.floor(np.log2(magnitude)).astype(np.int32) - 7, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


# --- a session as Pipecat runs it -------------------------------------------------------------------------------
def test_interims_finals_and_metadata_through_the_sdk(server, engine, heldout_clips) -> None:
    clip = heldout_clips[1].audio  # 6.7 s: several streaming steps
    pcm = pcm16(clip)
    with sdk(server).listen.v1.connect(**PIPECAT, endpointing="false") as conn:
        send(conn, pcm, 32000, realtime=True)
        conn.send_close_stream()
        messages, code, reason = until_closed(conn)
    expected = streamed_alone(engine, clip)
    results = [m for m in messages if isinstance(m, ListenV1Results)]
    interims = [r for r in results if not r.is_final]
    (final,) = [r for r in results if r.is_final]
    assert any(text_of(r) for r in interims), "interims carry the hypothesis while audio streams"
    assert text_of(final) == expected and expected
    assert final.speech_final is False and final.from_finalize is False  # CloseStream's flush, no endpoint
    words = final.channel.alternatives[0].words
    assert [w.punctuated_word for w in words] == expected.split() == [w.word for w in words]
    assert all(0 <= w.start <= w.end <= len(clip) / 16000 + 0.01 for w in words)
    assert final.start == 0 and final.duration == pytest.approx(len(clip) / 16000, abs=0.02)
    assert [r.start for r in interims] == [0.0] * len(interims)
    assert [r.duration for r in interims] == sorted(r.duration for r in interims)
    assert final.channel_index == [0, 1] and final.metadata.model_info.name == engine.info().model
    assert {r.metadata.request_id for r in results} == {messages[-1].request_id}
    assert not [m for m in messages if isinstance(m, ListenV1SpeechStarted | ListenV1UtteranceEnd)], "not asked for"
    meta = messages[-1]
    assert isinstance(meta, ListenV1Metadata) and meta.channels == 1
    assert meta.duration == pytest.approx(len(clip) / 16000, abs=0.01)
    assert meta.sha256 == hashlib.sha256(pcm).hexdigest()
    assert (code, reason) == (1000, "")


def test_finalize_is_answered_with_from_finalize_and_the_session_goes_on(server, engine, heldout_clips) -> None:
    first, second = heldout_clips[2].audio, heldout_clips[4].audio
    with sdk(server).listen.v1.connect(**{**PIPECAT, "interim_results": "false"}, endpointing="false") as conn:
        send(conn, pcm16(first), 32000)
        conn.send_finalize()
        _, one = until(conn, ListenV1Results)
        conn.send_finalize()  # nothing new: Deepgram still answers, with an empty final
        _, empty = until(conn, ListenV1Results)
        send(conn, pcm16(second), 32000)
        conn.send_finalize()
        _, two = until(conn, ListenV1Results)
        conn.send_close_stream()
        rest, code, _ = until_closed(conn)
    assert all(r.is_final and r.from_finalize and not r.speech_final for r in (one, empty, two))
    assert text_of(one) == streamed_alone(engine, first) and text_of(empty) == ""
    assert text_of(two) == streamed_alone(engine, second)
    offset = len(first) / 16000
    assert one.start == 0 and one.duration == pytest.approx(offset, abs=0.02)
    assert empty.start == pytest.approx(offset, abs=0.02) and empty.duration == pytest.approx(0, abs=0.02)
    assert two.start == pytest.approx(offset, abs=0.02), "windows tile the stream"
    assert min(w.start for w in two.channel.alternatives[0].words) >= offset - 0.05
    assert [type(m) for m in rest] == [ListenV1Metadata] and code == 1000  # nothing left for CloseStream


@pytest.mark.parametrize(("encoding", "rate"), [("linear16", 48000), ("mulaw", 8000), ("linear16", 16000)])
def test_other_encodings_and_rates_and_samples_split_across_frames(server, engine, heldout_clips, encoding,
                                                                   rate) -> None:
    clip = soxr.resample(heldout_clips[4].audio, 16000, rate) if rate != 16000 else heldout_clips[4].audio
    data = pcm16(clip) if encoding == "linear16" else mulaw(clip)
    width = 2 if encoding == "linear16" else 1
    frame = int(rate * FRAME_S) * width + (1 if encoding == "linear16" else 0)  # odd: samples straddle frames
    with sdk(server).listen.v1.connect(**{**PIPECAT, "encoding": encoding, "sample_rate": rate,
                                          "interim_results": "false"}, endpointing="false") as conn:
        send(conn, data, rate * width, frame_bytes=frame)
        conn.send_close_stream()
        messages, code, _ = until_closed(conn)
    (final,) = [m for m in messages if isinstance(m, ListenV1Results)]
    expected = streamed_alone(engine, decoded(data, "pcm16" if encoding == "linear16" else "mulaw", rate))
    assert text_of(final) == expected and expected
    assert messages[-1].duration == pytest.approx(len(data) / width / rate, abs=0.01) and code == 1000


# --- endpointing, SpeechStarted, UtteranceEnd -------------------------------------------------------------------
def test_endpoints_give_speech_final_with_speech_started_and_utterance_end(server, heldout_clips) -> None:
    a, b = speech_only(heldout_clips[6].audio), speech_only(heldout_clips[2].audio)
    short_gap, long_gap = np.zeros(int(1.5 * 16000), np.float32), np.zeros(3 * 16000, np.float32)
    audio = np.concatenate([a, short_gap, b, long_gap])
    with sdk(server).listen.v1.connect(**PIPECAT, endpointing=300, vad_events="true", utterance_end_ms=1000) as conn:
        send(conn, pcm16(audio), 32000)
        messages: list[Any] = []
        while sum(isinstance(m, ListenV1UtteranceEnd) for m in messages) < 2:
            messages.append(receive(conn))
        conn.send_close_stream()
        messages += until_closed(conn)[0]
    kinds = [type(m).__name__.removeprefix("ListenV1") for m in messages]
    finals = [m for m in messages if isinstance(m, ListenV1Results) and m.is_final and text_of(m)]
    assert len(finals) == 2 and all(f.speech_final and not f.from_finalize for f in finals)
    first_end = len(a) / 16000
    assert first_end - 1.0 < finals[0].start + finals[0].duration <= first_end + 1.5, "cut in the silence"
    ends = [m for m in messages if isinstance(m, ListenV1UtteranceEnd)]
    starts = [m for m in messages if isinstance(m, ListenV1SpeechStarted)]
    assert len(starts) == 2 and starts[0].timestamp < first_end <= starts[1].timestamp < first_end + 2.5
    for final, end in zip(finals, ends):
        last_word = final.channel.alternatives[0].words[-1]
        assert last_word.end - 0.2 <= end.last_word_end <= final.start + final.duration, (final, end)
    # in order: each utterance's SpeechStarted before its results, its UtteranceEnd before the next one's speech
    first_text = next(i for i, m in enumerate(messages) if isinstance(m, ListenV1Results) and text_of(m))
    assert kinds.index("SpeechStarted") < first_text
    assert messages.index(finals[0]) < messages.index(ends[0]) < messages.index(starts[1])
    assert messages.index(starts[1]) < messages.index(finals[1]) < messages.index(ends[1])


PROMPT_S = 0.5  # a VAD event reaches the client this soon after the audio that decided it


def test_speech_started_and_utterance_end_are_prompt_at_real_time_pace(server, heldout_clips,
                                                                      record_property) -> None:
    """Audio sent as a microphone would (20 ms frames in real time): SpeechStarted names the speech onset and
    arrives within PROMPT_S of it, before any interim with text; UtteranceEnd arrives within PROMPT_S of
    utterance_end_ms of silence after the speech, naming where the speech ended."""
    clip = speech_only(heldout_clips[6].audio)
    audio = np.concatenate([np.zeros(16000, np.float32), clip, np.zeros(int(1.6 * 16000), np.float32)])
    loud = np.nonzero(np.abs(clip) > 0.02)[0]
    onset_s, end_s = 1.0 + loud[0] / 16000, 1.0 + loud[-1] / 16000
    data, arrived = pcm16(audio), []
    with sdk(server).listen.v1.connect(**PIPECAT, vad_events="true", utterance_end_ms=1000, endpointing=300) as conn:
        started = time.monotonic()

        def microphone() -> None:
            for i in range(0, len(data), 640):
                time.sleep(max(0.0, started + i / 32000 - time.monotonic()))
                conn.send_media(data[i : i + 640])

        sender = threading.Thread(target=microphone)
        sender.start()
        while not any(isinstance(m, ListenV1UtteranceEnd) for _, m in arrived):
            message = receive(conn)
            arrived.append((time.monotonic() - started, message))
        sender.join(30)
        conn.send_close_stream()
        until_closed(conn)
    messages = [m for _, m in arrived]
    (start_at, start), = [(t, m) for t, m in arrived if isinstance(m, ListenV1SpeechStarted)]
    (end_at, end), = [(t, m) for t, m in arrived if isinstance(m, ListenV1UtteranceEnd)]
    record_property("speech_started_after_s", round(start_at - onset_s, 3))
    record_property("utterance_end_after_s", round(end_at - end.last_word_end - 1.0, 3))
    assert start.timestamp == pytest.approx(onset_s, abs=0.2)
    assert start_at - onset_s < PROMPT_S, f"SpeechStarted {start_at - onset_s:.2f} s after the speech began"
    first_text = next(i for i, m in enumerate(messages) if isinstance(m, ListenV1Results) and text_of(m))
    assert messages.index(start) < first_text
    assert end.last_word_end == pytest.approx(end_s, abs=0.25)
    assert end_at - (end.last_word_end + 1.0) < PROMPT_S, "UtteranceEnd came late"
    final = next(m for m in messages if isinstance(m, ListenV1Results) and m.is_final)
    assert final.speech_final and messages.index(final) < messages.index(end)  # endpointing=300 comes first


# --- the handshake: tokens and query parameters -------------------------------------------------------------------
def _refusal(server: FacesServer, query: str, headers: dict[str, str] | None = None) -> tuple[int, dict, Any]:
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(f"{server.ws_url}/v1/listen?{query}", additional_headers=headers or {}, open_timeout=10)
    response = refused.value.response
    return response.status_code, json.loads(response.body), response.headers


def test_missing_or_wrong_tokens_are_refused_at_the_handshake(server) -> None:
    # deepgram-sdk 7.17 means to raise ApiError(401), but under websockets 15 its compat shim catches the legacy
    # exception class and the sync client's InvalidStatus comes through as it is
    with pytest.raises((ApiError, InvalidStatus)) as refused, sdk(server, api_key="wrong").listen.v1.connect(**PIPECAT):
        pass
    error = refused.value
    assert (error.status_code if isinstance(error, ApiError) else error.response.status_code) == 401
    for headers in ({}, {"Authorization": "Token wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        status, body, response_headers = _refusal(server, "encoding=linear16&sample_rate=16000", headers)
        assert status == 401 and body["err_code"] == "INVALID_AUTH" and body["request_id"]
        assert response_headers["dg-error"] == body["err_msg"] and TOKEN not in json.dumps(body)


@pytest.mark.parametrize("auth", ["bearer", "query", "subprotocol"])
def test_every_way_deepgram_clients_send_the_token_is_accepted(server, auth) -> None:
    if auth == "bearer":  # the SDK's access_token= (temporary tokens)
        with sdk(server, access_token=TOKEN).listen.v1.connect(**PIPECAT) as conn:
            conn.send_close_stream()
            assert isinstance(until_closed(conn)[0][-1], ListenV1Metadata)
        return
    query = "encoding=linear16&sample_rate=16000" + (f"&token={TOKEN}" if auth == "query" else "")
    subprotocols = ["token", TOKEN] if auth == "subprotocol" else None  # a browser's Sec-WebSocket-Protocol
    with ws_connect(f"{server.ws_url}/v1/listen?{query}", subprotocols=subprotocols, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "CloseStream"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "Metadata"


@pytest.mark.parametrize(("query", "named"), [
    ("encoding=opus&sample_rate=48000", "encoding"),
    ("encoding=linear16&sample_rate=16000&channels=2", "channels"),
    ("encoding=linear16&sample_rate=1", "sample_rate"),
    ("encoding=linear16&sample_rate=fast", "sample_rate"),
    ("encoding=linear16", "sample_rate"),
    ("sample_rate=16000", "encoding"),
    ("encoding=linear16&sample_rate=16000&interim_results=maybe", "interim_results"),
    ("encoding=linear16&sample_rate=16000&endpointing=-5", "endpointing"),
    ("encoding=linear16&sample_rate=16000&utterance_end_ms=0", "utterance_end_ms"),
])
def test_parameters_that_cannot_be_honoured_are_refused_with_400(server, query, named) -> None:
    status, body, headers = _refusal(server, query, {"Authorization": f"Token {TOKEN}"})
    assert status == 400 and body["err_code"] == "INVALID_QUERY_PARAMETER" and named in body["err_msg"]
    assert headers["dg-error"] == body["err_msg"] and headers["dg-request-id"] == body["request_id"]


def test_unknown_and_unsupported_feature_parameters_are_accepted(server) -> None:
    extra = {"keyterm": ["alpha", "beta"], "tag": "x", "redact": "pci", "diarize_model": "v1", "version": "latest"}
    with sdk(server).listen.v1.connect(**PIPECAT, **extra, endpointing=10,
                                       request_options={"additional_query_parameters": {"no_such": "1"}}) as conn:
        conn.send_keep_alive()
        conn.send_close_stream()
        messages, code, _ = until_closed(conn)
    assert [type(m) for m in messages] == [ListenV1Metadata] and code == 1000


# --- bad traffic: Deepgram's error shape, and the other sessions go on -----------------------------------------------
BAD_TEXT = [
    "not json at all",
    "[1, 2]",
    '{"type": "Nope"}',
    '{"kind": "KeepAlive"}',
    '{"type": 5}',
    json.dumps({"type": "KeepAlive", "pad": "x" * 5000}),
]


def test_bad_traffic_gets_deepgram_errors_and_other_sessions_go_on(server, engine, heldout_clips) -> None:
    clip = heldout_clips[1].audio
    other: dict[str, str] = {}

    def neighbour() -> None:
        with sdk(server).listen.v1.connect(**{**PIPECAT, "interim_results": "false"}, endpointing="false") as conn:
            send(conn, pcm16(clip), 32000, realtime=True)
            conn.send_finalize()
            other["text"] = text_of(until(conn, ListenV1Results)[1])
            conn.send_close_stream()
            until_closed(conn)

    thread = threading.Thread(target=neighbour)
    thread.start()
    errors: list[ListenV1Error] = []
    with sdk(server).listen.v1.connect(**{**PIPECAT, "interim_results": "false"}, endpointing="false") as conn:
        for raw in BAD_TEXT:  # 1-6: malformed or unknown text messages
            conn._websocket.send(raw)
            errors.append(until(conn, ListenV1Error)[1])
            assert errors[-1].variant == "SchemaError" and errors[-1].message == raw[:256]
        conn.send_media(pcm16(np.zeros(6 * 16000, np.float32)))  # 7: one frame over the 5 s of audio a frame may hold
        errors.append(until(conn, ListenV1Error)[1])
        assert errors[-1].code == "frame_too_large"
        conn.send_configure(ListenV1Configure(keyterms=["parakeet"]))  # (answered as Deepgram does: a failure)
        assert until(conn, ListenV1ConfigureFailure)[1].code == "CONFIGURE_KEYTERMS_NOT_SUPPORTED"
        for _ in range(60):  # 8: a flood of control messages (past the per-session rate limit)
            conn.send_keep_alive()
        errors.append(until(conn, ListenV1Error)[1])
        assert errors[-1].variant == "RateLimited"
        time.sleep(2.5)  # the bucket refills: the session goes on as before
        send(conn, pcm16(heldout_clips[4].audio), 32000)
        conn.send_finalize()
        _, final = until(conn, ListenV1Results)
        assert final.from_finalize and text_of(final) == streamed_alone(engine, heldout_clips[4].audio)
        send(conn, pcm16(heldout_clips[3].audio), 32000)
        conn.send_close_stream()  # its final pass takes a while: the next frame arrives while the stream closes
        conn.send_media(pcm16(heldout_clips[5].audio))  # 9: audio after CloseStream
        messages, code, _ = until_closed(conn)
    late = [m for m in messages if isinstance(m, ListenV1Error)]
    assert [m.code for m in late] == ["stopped"] and isinstance(messages[-1], ListenV1Metadata) and code == 1000
    (last,) = [m for m in messages if isinstance(m, ListenV1Results)]
    assert text_of(last) == streamed_alone(engine, heldout_clips[3].audio), "what came after was not heard"
    errors += late
    with sdk(server).listen.v1.connect(**PIPECAT) as conn:  # 10: a message over the server's size limit
        conn.send_media(bytes(server.ctx.limits.max_frame_bytes + 2))
        _, code, _ = until_closed(conn)
    assert code == 1009
    thread.join(60)
    assert other["text"] == streamed_alone(engine, clip), "the neighbouring session was not disturbed"
    assert all(e.type == "Error" and e.description for e in errors) and len(errors) == 9


# --- the ends: drain at shutdown, idle (NET-0001), metrics -------------------------------------------------------------
@pytest.fixture
def small_server(engine, tmp_path) -> Iterator[FacesServer]:
    """A server of its own (its sessions are drained or left idle) whose metrics go to a real file."""
    path = tmp_path / "metrics.jsonl"
    with serve_faces(engine, [deepgram_face.routes], limits=ServerLimits(idle_timeout_s=2.0),
                     metrics=Metrics(path)) as srv:
        yield srv


def _metrics(server: FacesServer) -> list[dict]:
    path = server.ctx.metrics.path
    assert path is not None
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_shutdown_drain_gives_the_final_then_metadata_then_going_away(small_server, engine, heldout_clips) -> None:
    clip = heldout_clips[2].audio
    with sdk(small_server).listen.v1.connect(**{**PIPECAT, "interim_results": "false"}, endpointing="false") as conn:
        send(conn, pcm16(clip), 32000)
        conn.send_configure(ListenV1Configure(features={"numerals": True}))  # its answer: all audio is in
        until(conn, ListenV1ConfigureFailure)
        small_server.drain()
        messages, code, reason = until_closed(conn)
    assert [type(m) for m in messages] == [ListenV1Results, ListenV1Metadata]
    assert text_of(messages[0]) == streamed_alone(engine, clip) and messages[0].is_final
    assert (code, reason) == (1001, "server_shutdown")
    (record,) = _metrics(small_server)
    assert record["kind"] == "stream" and record.get("error_code") is None
    assert record["audio_s"] == pytest.approx(len(clip) / 16000, abs=0.01)


def test_idle_sessions_close_like_deepgram_and_keepalive_keeps_them_open(small_server, heldout_clips) -> None:
    with sdk(small_server).listen.v1.connect(**PIPECAT) as conn:
        for _ in range(6):  # 3 s of KeepAlive, past the 2 s idle window
            conn.send_keep_alive()
            time.sleep(0.5)
        send(conn, pcm16(heldout_clips[3].audio), 32000)
        started = time.monotonic()
        messages, code, reason = until_closed(conn)
    assert 2.0 <= time.monotonic() - started < 5.0
    finals = [m for m in messages if isinstance(m, ListenV1Results) and m.is_final]
    assert len(finals) == 1 and text_of(finals[0]), "the utterance in progress gets its final"
    assert isinstance(messages[-1], ListenV1Metadata)
    assert code == 1011 and reason is not None and reason.startswith("NET-0001")
    assert [r["kind"] for r in _metrics(small_server)] == ["stream"]


# --- the pure parts: query parameters, words -------------------------------------------------------------------
def test_query_parameters_map_onto_the_session_options() -> None:
    options = parse_listen_params({"encoding": "mulaw", "sample_rate": "8000", "interim_results": "TRUE",
                                   "endpointing": "10", "utterance_end_ms": "1000", "vad_events": "true",
                                   "model": "nova-3-general", "smart_format": "true"})
    assert options == ListenOptions(encoding="mulaw", sample_rate=8000, interim_results=True, endpointing=True,
                                    endpoint_silence_ms=100, utterance_end_ms=1000, vad_events=True,
                                    model="nova-3-general")
    base = {"encoding": "linear16", "sample_rate": "16000"}
    assert parse_listen_params(base).endpoint_silence_ms == 600 and not parse_listen_params(base).interim_results
    assert parse_listen_params({**base, "endpointing": "false"}).endpointing is False
    assert parse_listen_params({**base, "endpointing": "25000"}).endpoint_silence_ms == 10_000
    assert parse_listen_params({**base, "channels": "1", "multichannel": "false"}).bytes_per_sample == 2


def test_words_have_deepgram_plain_and_punctuated_forms() -> None:
    assert [plain_word(w) for w in ("Hello,", "Don't.", "(New)", "—")] == ["hello", "don't", "new", "—"]
    results = json.loads(dg_results(transcript="Hi there.", words=[WordTiming("Hi", 0.1, 0.3),
                                                                    WordTiming("there.", 0.4, 0.7)],
                                    start=0.0, end=1.0, is_final=True, speech_final=True, from_finalize=False,
                                    metadata={"request_id": "r", "model_info": {}, "model_uuid": "u"}))
    words = results["channel"]["alternatives"][0]["words"]
    assert [(w["word"], w["punctuated_word"]) for w in words] == [("hi", "Hi"), ("there", "there.")]
