"""OpenAI REST transcription and RunPod LB's ``/transcribe`` on a real uvicorn server over the real engine, driven by
the real ``openai`` SDK (sync and async) and by raw HTTP for the traffic no SDK sends."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from openai.types.audio import TranscriptionSegment, TranscriptionVerbose
from starlette.requests import Request

from parakeet_worker.config import Settings
from parakeet_worker.engine.engine import ParakeetEngine
from parakeet_worker.observability import Metrics
from parakeet_worker.observability.report import read_records
from parakeet_worker.serving import lb_routes, openai_rest
from parakeet_worker.serving.batch import BatchService
from tests.bad_inputs import silence_flac_b64
from tests.faces_server import TOKEN, FacesServer, serve_faces

ASSETS = Path(__file__).parent / "assets"
CLIPS = sorted((ASSETS / "heldout").glob("seen-0000[0-3].flac"))
MAX_AUDIO_S = 30.0  # this server's audio limit: the clips fit, a minute of audio does not


@pytest.fixture(scope="module")
def engine(face_engine: ParakeetEngine) -> ParakeetEngine:
    return face_engine


@pytest.fixture(scope="module")
def batch(engine, test_model_path, tmp_path_factory) -> Iterator[BatchService]:
    metrics = Metrics(tmp_path_factory.mktemp("metrics") / "requests.jsonl")
    service = BatchService(engine, Settings(model=str(test_model_path), max_audio_s=MAX_AUDIO_S), metrics=metrics)
    yield service
    service.close()


@pytest.fixture(scope="module")
def server(engine, batch) -> Iterator[FacesServer]:
    """The one server of this module: the OpenAI REST face and the LB routes over the shared batch service."""
    with serve_faces(engine, [openai_rest.routes, lb_routes.routes], batch=batch) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0)


def job(batch: BatchService, job_input: dict[str, Any]) -> dict[str, Any]:
    """The job path's output for ``job_input`` (what RunPod's handler returns for it)."""
    return asyncio.run(batch.transcribe_job(job_input))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def job_out(batch) -> dict[str, dict[str, Any]]:
    """Each clip's job output with timestamps and SRT, and with VTT."""
    out = {}
    for path in CLIPS:
        srt = job(batch, {"audio_base64": b64(path.read_bytes()), "timestamps": True, "output_format": "srt"})
        vtt = job(batch, {"audio_base64": b64(path.read_bytes()), "output_format": "vtt"})
        out[path.name] = {**srt, "vtt": vtt["vtt"]}
    return out


@pytest.fixture(scope="module")
def two_sentences(heldout_clips) -> bytes:
    """Two clips with 1.5 s of silence between them: two segments."""
    audio = np.concatenate([heldout_clips[1].audio, np.zeros(24_000, np.float32), heldout_clips[2].audio])
    buf = io.BytesIO()
    sf.write(buf, audio, 16_000, format="FLAC")
    return buf.getvalue()


def upload(path: Path) -> tuple[str, bytes]:
    return path.name, path.read_bytes()


def envelope(response: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> str:
    """Assert OpenAI's error envelope with ``status`` (and ``code``/``param``); its message."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return str(error["message"])


# --- the SDK, every response format ------------------------------------------------------------------------------
def test_json_text_srt_vtt_equal_the_job_path(client, job_out) -> None:
    for path in CLIPS:
        expected = job_out[path.name]
        got = client.audio.transcriptions.create(file=upload(path), model="parakeet-tdt-0.6b-v3")
        assert got.text == expected["text"] and got.text
        assert got.usage is not None and got.usage.type == "duration"
        assert got.usage.seconds == pytest.approx(expected["duration"], abs=0.01)
        for fmt in ("text", "srt", "vtt"):
            body = client.audio.transcriptions.create(file=upload(path), model="whisper-1", response_format=fmt)
            assert isinstance(body, str)
            assert body == (expected["text"] if fmt == "text" else expected[fmt]), fmt
        assert expected["vtt"].startswith("WEBVTT\n\n") and expected["srt"].startswith("1\n00:00:00")


def test_verbose_json_words_and_segments(client, job_out, two_sentences, batch) -> None:
    path = CLIPS[0]
    expected = job_out[path.name]
    both = client.audio.transcriptions.create(file=upload(path), model="whisper-1", response_format="verbose_json",
                                              timestamp_granularities=["word", "segment"])
    assert isinstance(both, TranscriptionVerbose)
    assert both.text == expected["text"] and both.language == "english"
    assert both.duration == pytest.approx(expected["duration"], abs=0.01)
    assert [(w.word, w.start, w.end) for w in both.words or []] == [
        (w["word"], w["start"], w["end"]) for w in expected["timestamps"]["word"]]
    starts = [w.start for w in both.words or []]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert all(0 <= w.start <= w.end <= both.duration for w in both.words or [])
    assert " ".join(w.word for w in both.words or []) == both.text
    assert both.segments and all(s.model_fields_set == set(TranscriptionSegment.model_fields) for s in both.segments)
    assert " ".join(s.text for s in both.segments) == both.text

    long = client.audio.transcriptions.create(file=("two.flac", two_sentences), model="x",
                                              response_format="verbose_json")
    assert long.words is None and long.segments is not None and len(long.segments) >= 2
    assert [s.id for s in long.segments] == list(range(len(long.segments)))
    assert all(a.end <= b.start for a, b in zip(long.segments, long.segments[1:]))
    assert all(s.temperature == 0.0 and s.tokens == [] and s.compression_ratio > 0 for s in long.segments)
    assert long.text == job(batch, {"audio_base64": b64(two_sentences)})["text"]
    words_only = client.audio.transcriptions.create(file=("two.flac", two_sentences), model="x",
                                                    response_format="verbose_json", timestamp_granularities=["word"])
    assert words_only.segments is None and words_only.words and words_only.words[-1].end <= words_only.duration


def test_stream_deltas_add_up_to_the_done_text(client, two_sentences) -> None:
    plain = client.audio.transcriptions.create(file=("two.flac", two_sentences), model="x").text
    events = list(client.audio.transcriptions.create(file=("two.flac", two_sentences), model="x", stream=True))
    kinds = [e.type for e in events]
    assert kinds[-1] == "transcript.text.done" and set(kinds[:-1]) == {"transcript.text.delta"}
    assert len(kinds) >= 3  # one delta per segment
    assert "".join(e.delta for e in events[:-1]) == events[-1].text == plain  # type: ignore[union-attr]


def test_the_async_client(server, job_out) -> None:
    async def run() -> tuple[list[str], str]:
        aclient = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0)
        texts = await asyncio.gather(*(aclient.audio.transcriptions.create(file=upload(p), model="m")
                                       for p in CLIPS))
        stream = await aclient.audio.transcriptions.create(file=upload(CLIPS[1]), model="m", stream=True)
        done = [e async for e in stream][-1]
        await aclient.close()
        return [t.text for t in texts], done.text  # type: ignore[union-attr]

    texts, streamed = asyncio.run(run())
    assert texts == [job_out[p.name]["text"] for p in CLIPS]
    assert streamed == job_out[CLIPS[1].name]["text"]


def test_models_and_any_model_name(client, job_out) -> None:
    listed = client.models.list()
    assert [m.id for m in listed.data] == ["parakeet-tdt-test"]
    assert listed.data[0].object == "model" and listed.data[0].created > 1_700_000_000
    assert client.models.retrieve("whisper-1").id == "whisper-1"
    text = client.audio.transcriptions.create(file=upload(CLIPS[2]), model="gpt-4o-transcribe").text
    assert text == job_out[CLIPS[2].name]["text"]


def test_unknown_and_ignored_fields(client, job_out) -> None:
    got = client.audio.transcriptions.create(
        file=upload(CLIPS[3]), model="whisper-1", language="en", prompt="numbers and times", temperature=0.7,
        include=["logprobs"], extra_body={"chunking_strategy": "auto", "hotwords": "seven", "x_custom": "1"})
    assert got.text == job_out[CLIPS[3].name]["text"]
    us = client.audio.transcriptions.create(file=upload(CLIPS[3]), model="m", language="en-US",
                                            response_format="verbose_json")
    assert us.language == "english" and us.text == got.text


# --- the SDK's errors ----------------------------------------------------------------------------------------------
def test_a_wrong_key_is_an_authentication_error(server) -> None:
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.audio.transcriptions.create(file=upload(CLIPS[0]), model="m")
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_undecodable_files_are_415_and_too_long_audio_is_422(client) -> None:
    for name, code in (("not_audio_png.wav", "audio_unsupported"), ("corrupt_random_after_magic.flac",
                                                                     "audio_corrupt")):
        with pytest.raises(openai.APIStatusError) as caught:
            client.audio.transcriptions.create(file=upload(ASSETS / "audio" / name), model="m")
        assert caught.value.status_code == 415 and caught.value.code == code, caught.value
    minute = base64.b64decode(silence_flac_b64(2 * MAX_AUDIO_S))
    with pytest.raises(openai.UnprocessableEntityError) as too_long:
        client.audio.transcriptions.create(file=("long.flac", minute), model="m")
    assert too_long.value.code == "audio_too_long" and f"{MAX_AUDIO_S:g} s" in too_long.value.message
    with pytest.raises(openai.BadRequestError) as bad_format:
        client.audio.transcriptions.create(file=upload(CLIPS[0]), model="m", response_format="diarized_json")
    assert bad_format.value.param == "response_format"


# --- bad traffic: each gets the envelope and its status; the server goes on ----------------------------------------
def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> bytes:
    out = b""
    for name, filename, body in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + body + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


FORM = "multipart/form-data; boundary=b0undary"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# name -> (headers, body, status, code, param)
BAD_REQUESTS: dict[str, tuple[dict[str, str], bytes, int, str | None, str | None]] = {
    "no file": ({**AUTH, "Content-Type": FORM}, _multipart([("model", None, b"whisper-1")]), 400, None, "file"),
    "empty file": ({**AUTH, "Content-Type": FORM}, _multipart([("file", "a.wav", b"")]), 400, None, "file"),
    "file as a text field": ({**AUTH, "Content-Type": FORM}, _multipart([("file", None, b"RIFF")]), 400, None,
                             "file"),
    "garbage bytes": ({**AUTH, "Content-Type": FORM},
                      _multipart([("file", "a.mp3", np.random.default_rng(7).bytes(20_000))]), 415, None, None),
    "bad response_format": ({**AUTH, "Content-Type": FORM}, _multipart(
        [("file", "a.flac", b"x"), ("response_format", None, b"xml")]), 400, "invalid_input", "response_format"),
    "bad granularity": ({**AUTH, "Content-Type": FORM}, _multipart(
        [("file", "a.flac", b"x"), ("timestamp_granularities[]", None, b"char")]), 400, None,
        "timestamp_granularities[]"),
    "bad stream value": ({**AUTH, "Content-Type": FORM}, _multipart(
        [("file", "a.flac", b"x"), ("stream", None, b"maybe")]), 400, None, "stream"),
    "unknown language": ({**AUTH, "Content-Type": FORM}, _multipart(
        [("file", "a.flac", b"x"), ("language", None, b"tlh")]), 400, None, "language"),
    "two files": ({**AUTH, "Content-Type": FORM}, _multipart([("file", "a.flac", b"x"), ("file", "b.flac", b"y")]),
                  400, "invalid_input", None),
    "too many fields": ({**AUTH, "Content-Type": FORM}, _multipart(
        [("file", "a.flac", b"x")] + [(f"f{i}", None, b"1") for i in range(100)]), 400, None, None),
    "oversize field": ({**AUTH, "Content-Type": FORM}, _multipart(
        [("file", "a.flac", b"x"), ("prompt", None, b"p" * 100_000)]), 400, None, None),
    "oversize upload": ({**AUTH, "Content-Type": FORM}, _multipart(
        [("file", "a.wav", bytes(openai_rest.MAX_REQUEST_BYTES + 1))]), 413, "audio_too_large", None),
    "wrong content-type": ({**AUTH, "Content-Type": "application/json"}, b'{"file": "x"}', 415,
                           "unsupported_content_type", None),
    "no content-type": (AUTH, b"RIFF....WAVE", 415, "unsupported_content_type", None),
    "malformed multipart": ({**AUTH, "Content-Type": FORM}, b"--b0undary\r\nno headers end here", 400, None,
                            None),
    "no boundary": ({**AUTH, "Content-Type": "multipart/form-data"}, b"--x\r\n\r\n--x--", 400, None, None),
    "missing token": ({"Content-Type": FORM}, _multipart([("file", "a.flac", b"x")]), 401, "invalid_api_key",
                      None),
    "wrong token": ({"Authorization": "Bearer nope", "Content-Type": FORM}, _multipart([("file", "a.flac", b"x")]),
                    401, "invalid_api_key", None),
    "wrong scheme": ({"Authorization": f"Basic {TOKEN}", "Content-Type": FORM},
                     _multipart([("file", "a.flac", b"x")]), 401, "invalid_api_key", None),
}


def test_there_are_at_least_ten_kinds_of_bad_request() -> None:
    assert len(BAD_REQUESTS) >= 10


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_requests_get_the_envelope_and_the_server_goes_on(server, client, job_out, name: str) -> None:
    headers, body, status, code, param = BAD_REQUESTS[name]
    with httpx.Client(base_url=server.url, timeout=60) as http:
        envelope(http.post("/v1/audio/transcriptions", headers=headers, content=body), status, code, param)
    assert client.audio.transcriptions.create(file=upload(CLIPS[0]), model="m").text == job_out[CLIPS[0].name]["text"]


def test_wrong_method_and_unready_or_blocked_callers(server) -> None:
    with httpx.Client(base_url=server.url, headers=AUTH) as http:
        envelope(http.get("/v1/audio/transcriptions"), 405, "method_not_allowed")

    def request(token: str | None) -> Request:
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        return Request({"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b"",
                        "client": ("192.0.2.1", 1234)})

    blocked = dataclasses.replace(server.ctx, refused=lambda address, why: 42.0)
    assert openai_rest.refusal(blocked, request(TOKEN)) is None
    assert openai_rest.refusal(blocked, request("guess")) == openai_rest.Refusal(
        429, "too many refused requests from this address; retry in 42 s", "rate_limit_exceeded", 42.0)
    loading = dataclasses.replace(server.ctx, ready=lambda: False)
    assert openai_rest.refusal(loading, request(TOKEN)).status == 503  # type: ignore[union-attr]
    assert openai_rest.refusal(loading, request(None)).status == 401  # type: ignore[union-attr]
    without_batch = dataclasses.replace(server.ctx, batch=None)
    assert openai_rest.refusal(without_batch, request(TOKEN)).code == "not_ready"  # type: ignore[union-attr]


# --- POST /transcribe ------------------------------------------------------------------------------------------------
def test_transcribe_route_answers_the_job_output(server, job_out) -> None:
    path = CLIPS[1]
    job_input = {"audio_base64": b64(path.read_bytes()), "timestamps": True, "output_format": "srt"}
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as http:
        out = http.post("/transcribe", json=job_input)
        assert out.status_code == 200 and out.headers["x-request-id"].startswith("req_")
        got = out.json()
        assert got["success"] and got["text"] == job_out[path.name]["text"]
        assert got["srt"] == job_out[path.name]["srt"] and got["timestamps"] == job_out[path.name]["timestamps"]
        wrapped = http.post("/transcribe", json={"input": {"audio_base64": job_input["audio_base64"]}}).json()
        assert wrapped["text"] == got["text"]
        info = http.post("/transcribe", json={"action": "info"}).json()
        assert info["success"] and info["model"] == "parakeet-tdt-test"
        many = http.post("/transcribe", json={"inputs": [{"audio_base64": job_input["audio_base64"]},
                                                         {"audio_base64": b64(b"not audio at all")}]}).json()
        assert [r["success"] for r in many["results"]] == [True, False]


@pytest.mark.parametrize(("body", "headers", "status", "code"), [
    (b'{"audio_url": "https://a/b.wav", "colour": "red"}', AUTH, 400, "invalid_input"),
    (b"{not json", AUTH, 400, "invalid_input"),
    (b'{"action": "websocket"}', AUTH, 400, "invalid_input"),
    (json.dumps({"audio_base64": b64((ASSETS / "audio" / "not_audio_png.wav").read_bytes())}).encode(), AUTH, 415,
     "audio_unsupported"),
    (json.dumps({"audio_base64": silence_flac_b64(2 * MAX_AUDIO_S)}).encode(), AUTH, 422, "audio_too_long"),
    (json.dumps({"inputs": [{"audio_base64": b64(b"junk junk")}]}).encode(), AUTH, 415, "audio_unsupported"),
    (json.dumps({"audio_url": "http://127.0.0.1/x.wav"}).encode(), AUTH, 400, "url_not_allowed"),
    (b"[" * 100_000, AUTH, 400, "invalid_input"),
    (b'{"audio_base64": "' + b"A" * lb_routes.MAX_BODY_BYTES + b'"}', AUTH, 413, "audio_too_large"),
    (b'{"audio_url": "https://a/b.wav"}', {}, 401, "unauthorized"),
    (b'{"audio_url": "https://a/b.wav"}', {"Authorization": "Bearer nope"}, 401, "unauthorized"),
], ids=["unknown key", "not json", "websocket action", "not audio", "too long", "all inputs failed",
        "private url", "deep json", "oversize", "no token", "wrong token"])
def test_transcribe_route_refusals(server, job_out, body: bytes, headers: dict[str, str], status: int,
                                   code: str) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        out = http.post("/transcribe", content=body, headers={**headers, "Content-Type": "application/json"})
        assert out.status_code == status, out.text[:300]
        got = out.json()
        assert got["error_code"] == code and got["error"] and got["success"] is False
        good = http.post("/transcribe", json={"audio_base64": b64(CLIPS[0].read_bytes())}, headers=AUTH).json()
        assert good["text"] == job_out[CLIPS[0].name]["text"]


def test_requests_are_counted_like_batch_jobs(server, client, batch) -> None:
    assert batch.metrics.path is not None
    before, _ = read_records([batch.metrics.path])
    client.audio.transcriptions.create(file=upload(CLIPS[0]), model="m")
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(file=upload(CLIPS[0]), model="m", response_format="xml")  # type: ignore[arg-type]
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as http:
        http.post("/transcribe", json={"audio_base64": b64(b"junk junk")})
    records, unreadable = read_records([batch.metrics.path])
    new = records[len(before):]
    assert unreadable == 0 and [r.kind for r in new] == ["batch"] * 3
    assert new[0].ok and new[0].audio_s == pytest.approx(12.106, abs=0.01) and new[0].job_id.startswith("req_")
    assert [r.error_code for r in new[1:]] == ["invalid_input", "audio_unsupported"]
