"""The RunPod handler in-process: real engine with the test model, real decoding, a real local HTTP server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
import re
import threading
import time
import tracemalloc
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from parakeet_worker.config import Settings
from parakeet_worker.engine.engine import EngineOptions, ParakeetEngine
from parakeet_worker.serving.budget import JobLimits
from parakeet_worker.serving.options import worker_options
from parakeet_worker.serving.runpod_handler import TranscriptionService
from tests.bad_inputs import BAD_AUDIO_INPUTS, BAD_JOB_INPUTS, silence_flac_b64

AUDIO = Path(__file__).parent / "assets" / "audio"
FORMATS = sorted(p.name for p in AUDIO.glob("en_librispeech_2412-153948-0000.*"))
# Each broken or odd file from ../shared/audio/edge: None = transcribed (possibly to ""), else the error's words.
EDGE_FILES: dict[str, str | None] = {
    "corrupt_middle.mp3": None,
    "corrupt_random_after_magic.flac": "corrupt",
    "mp3_content_named.wav": None,
    "not_audio_png.wav": "PNG image",
    "not_audio_text.wav": "not audio",
    "raw_pcm_s16le_16k_no_header.raw": "pcm_s16le",
    "silence_5s_16k.wav": None,
    "truncated_30pct.wav": None,
    "truncated_50pct.mp3": None,
    "truncated_after_header_claims_data.wav": "holds 0",
    "truncated_inside_header_32bytes.wav": "",
    "very_short_0.1s.wav": None,
    "wav_header_zero_samples.wav": "",
    "zero_length.wav": "no audio given",  # empty file -> empty base64 string: an input error
}


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def flac_b64(audio: np.ndarray) -> str:
    buf = io.BytesIO()
    sf.write(buf, audio, 16_000, format="FLAC")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def service(loaded_test_model, test_model_path) -> Iterator[TranscriptionService]:
    settings = Settings(model=str(test_model_path), allow_private_urls=True, download_timeout_s=10)
    engine = ParakeetEngine(loaded_test_model, EngineOptions(batch_wait_ms=10))
    yield TranscriptionService(engine, settings)
    engine.close()


@pytest.fixture(scope="module")
def http_root(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("www")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(root)))
    # A class attribute on purpose: the server builds a handler per request. Quiet, not a test subject.
    SimpleHTTPRequestHandler.log_message = lambda *a: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


@pytest.fixture(scope="module")
def offline_text(recognizer, heldout_clips):
    """What the offline recognizer says for each held-out clip: the handler must say the same."""
    return {c.name: t.text for c, t in zip(heldout_clips, recognizer.transcribe([c.audio for c in heldout_clips]))}


@pytest.fixture
def good_job(heldout_clips, offline_text):
    clip = heldout_clips[0]
    return {"input": {"audio_base64": flac_b64(clip.audio)}}, offline_text[clip.name]


async def assert_still_serving(service: TranscriptionService, good_job) -> None:
    job, text = good_job
    out = await service.handle(job)
    assert out["success"], out
    assert out["text"] == text


async def test_heldout_clips_through_the_handler(service, heldout_clips, offline_text) -> None:
    clips = heldout_clips[::5]
    hyps = []
    for clip in clips:
        out = await service.handle({"id": None, "input": {"audio_base64": flac_b64(clip.audio)}})
        assert out["success"] and out["duration"] == pytest.approx(clip.seconds, abs=0.01)
        assert out["model"] == "parakeet-tdt-test" and out["attention"] == "full" and out["rtfx"] > 1
        assert " ".join(s["text"] for s in out["segments"]) == out["text"]
        hyps.append(out["text"])
    assert hyps == [offline_text[c.name] for c in clips]


@pytest.mark.parametrize("name", FORMATS)
async def test_every_format_decodes_and_transcribes(service, name: str) -> None:
    out = await service.handle({"input": {"audio_base64": b64(AUDIO / name)}})
    assert out["success"], out
    assert out["duration"] == pytest.approx(11.66, abs=0.08)


@pytest.mark.parametrize("name", sorted(EDGE_FILES))
async def test_broken_files_get_clear_errors_and_the_worker_goes_on(service, good_job, name: str) -> None:
    out = await service.handle({"input": {"audio_base64": b64(AUDIO / name)}})
    expected = EDGE_FILES[name]
    if expected is None:
        assert out["success"], out
        assert out["duration"] > 0
    else:
        assert out["success"] is False and out["error_code"].startswith(("audio_", "invalid_input")), out
        assert expected.lower() in out["error"].lower()
    await assert_still_serving(service, good_job)


@pytest.mark.parametrize(("raw", "fragment"), [(r, f) for _, r, f in BAD_JOB_INPUTS + BAD_AUDIO_INPUTS],
                         ids=[n for n, _, _ in BAD_JOB_INPUTS + BAD_AUDIO_INPUTS])
async def test_bad_job_inputs_fail_cleanly_and_the_next_job_succeeds(service, good_job, raw, fragment) -> None:
    out = await service.handle({"input": raw})
    assert out["success"] is False and out["error"], out
    assert fragment in out["error"]
    await assert_still_serving(service, good_job)


def test_there_are_at_least_forty_bad_inputs() -> None:
    assert len(BAD_JOB_INPUTS) + len(BAD_AUDIO_INPUTS) >= 40


async def test_timestamps_srt_and_vtt(service, heldout_clips) -> None:
    clip = max(heldout_clips, key=lambda c: c.seconds)
    out = await service.handle({"input": {"audio_base64": flac_b64(clip.audio), "timestamps": True,
                                          "output_format": "srt"}})
    ts = out["timestamps"]
    assert set(ts) == {"word", "segment", "char"}
    assert " ".join(w["word"] for w in ts["word"]) == out["text"]
    assert all(set(w) == {"start", "end", "word"} for w in ts["word"])
    assert all(set(s) == {"start", "end", "segment"} for s in ts["segment"])
    assert all(set(c) == {"start", "end", "char"} for c in ts["char"])
    assert re.match(r"1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n", out["srt"])
    vtt = await service.handle({"input": {"audio_base64": flac_b64(clip.audio), "output_format": "vtt"}})
    assert vtt["vtt"].startswith("WEBVTT\n\n") and "timestamps" not in vtt
    text = await service.handle({"input": {"audio_base64": flac_b64(clip.audio), "output_format": "text"}})
    assert text["text"] == out["text"] and "segments" not in text


async def test_several_inputs_in_one_job_keep_the_good_ones(service, heldout_clips, offline_text) -> None:
    clips = heldout_clips[:3]
    job = {"inputs": [{"audio_base64": flac_b64(c.audio)} for c in clips]
           + [{"audio_base64": b64(AUDIO / "not_audio_text.wav")}]}
    out = await service.handle({"input": job})
    assert out["success"] and len(out["results"]) == 4
    assert [r["success"] for r in out["results"]] == [True, True, True, False]
    assert [r["text"] for r in out["results"][:3]] == [offline_text[c.name] for c in clips]
    bad = await service.handle({"input": {"inputs": [{"audio_base64": b64(AUDIO / "not_audio_png.wav")}]}})
    assert bad["success"] is False and bad["error"].startswith("all 1 inputs failed")


async def test_audio_by_url_and_refused_private_url(service, heldout_clips, http_root, offline_text) -> None:
    base, root = http_root
    clip = heldout_clips[2]
    sf.write(root / "clip.flac", clip.audio, 16_000)
    out = await service.handle({"input": {"audio_url": f"{base}/clip.flac?X-Amz-Signature=abc"}})
    assert out["success"] and out["text"] == offline_text[clip.name]
    missing = await service.handle({"input": {"audio": f"{base}/nope.wav"}})
    assert missing["success"] is False and "404" in missing["error"]
    strict = TranscriptionService(service.engine, Settings(model="x.nemo"))
    refused = await strict.handle({"input": {"audio_url": f"{base}/clip.flac"}})
    assert refused["success"] is False and refused["error_code"] == "url_not_allowed"


async def test_info_action(service) -> None:
    info = await service.handle({"input": {"action": "info"}})
    assert info["success"] and info["model"] == "parakeet-tdt-test" and info["languages"] == ["en"]
    assert info["parameters"] > 1_000_000 and info["device"] == "cpu"
    assert info["limits"]["max_audio_s"] >= 3 * 3600 and info["limits"]["full_attention_max_s"] > 0


# --- load under pressure: the audio budget, the load pool ------------------------------------------------------
@contextlib.contextmanager
def service_with(engine: ParakeetEngine, *, max_audio_s: float, concurrency: int = 4,
                 **jobs: float) -> Iterator[TranscriptionService]:
    """A service over the shared engine with its own audio limit and job limits (its own budget and pool)."""
    settings = Settings(model="x.nemo", allow_private_urls=True, download_timeout_s=30, max_audio_s=max_audio_s,
                        concurrency=concurrency)
    # (the keyword values are floats here; JobLimits' one int field is never passed)
    options = dataclasses.replace(worker_options(settings), jobs=JobLimits(**jobs))  # type: ignore[arg-type]
    service = TranscriptionService(engine, settings, options=options)
    try:
        yield service
    finally:
        service.close()


class SlowFiles:
    """An HTTP server on a real socket whose answers wait for ``release()``; it counts requests in flight."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.started = 0
        self.in_flight = 0
        self.most_in_flight = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                with owner.lock:
                    owner.started += 1
                    owner.in_flight += 1
                    owner.most_in_flight = max(owner.most_in_flight, owner.in_flight)
                try:
                    owner.gate.wait(60)
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(owner.body)))
                    self.end_headers()
                    self.wfile.write(owner.body)
                finally:
                    with owner.lock:
                        owner.in_flight -= 1

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    async def wait_started(self, n: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.started < n:
            assert time.monotonic() < deadline, f"only {self.started} of {n} requests reached the server"
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_files(heldout_clips) -> Iterator[SlowFiles]:
    buf = io.BytesIO()
    sf.write(buf, heldout_clips[1].audio, 16_000, format="FLAC")
    files = SlowFiles(buf.getvalue())
    yield files
    files.close()


async def test_refused_inputs_release_their_audio_at_once(service) -> None:
    """24 tiny inputs each decoding past the limit: what is held at once is a few inputs' audio, not all 24 (a kept
    exception's traceback holds the frames holding the audio decoded so far)."""
    limit_s, inputs = 120.0, 24
    job = {"inputs": [{"audio_base64": silence_flac_b64(limit_s + 30)} for _ in range(inputs)]}
    with service_with(service.engine, max_audio_s=limit_s) as svc:
        tracemalloc.start()
        try:
            out = await svc.handle({"input": job})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert svc.audio_budget.used_s == 0.0
    assert [r["error_code"] for r in out["results"]] == ["audio_too_long"] * inputs, out["results"][0]
    per_input = limit_s * 64_000
    assert peak < 10 * per_input, f"{peak / 1e6:.0f} MB traced at peak; one refused input is {per_input / 1e6:.1f} MB"


async def test_a_job_holds_at_most_its_audio_budget(service, heldout_clips, offline_text) -> None:
    """Inputs beyond the job's budget wait for its earlier ones; one longer than the budget is refused."""
    clips = heldout_clips[:3]
    job = {"inputs": [{"audio_base64": silence_flac_b64(45)}] + [{"audio_base64": flac_b64(c.audio)} for c in clips]}
    with service_with(service.engine, max_audio_s=600, job_audio_budget_s=30) as svc:
        out = await svc.handle({"input": job})
        assert svc.audio_budget.used_s == 0.0
    first = out["results"][0]
    assert first["error_code"] == "audio_budget_exceeded" and "PARAKEET_JOB_AUDIO_BUDGET_S" in first["error"]
    assert [r["text"] for r in out["results"][1:]] == [offline_text[c.name] for c in clips]


async def test_an_input_waits_for_the_worker_budget_then_is_refused_with_overloaded(service, slow_files,
                                                                                     good_job) -> None:
    with service_with(service.engine, max_audio_s=60, job_audio_budget_s=60, worker_audio_budget_s=60,
                      budget_wait_s=1.0) as svc:
        holder = asyncio.create_task(svc.handle({"input": {"audio_url": f"{slow_files.url}/a.flac"}}))
        await slow_files.wait_started(1)  # its reservation (60 s: the whole worker budget) is held
        started = time.monotonic()
        refused = await svc.handle(good_job[0])
        assert refused["error_code"] == "overloaded" and "PARAKEET_WORKER_AUDIO_BUDGET_S" in refused["error"]
        assert 0.9 < time.monotonic() - started < 10
        slow_files.gate.set()
        assert (await holder)["success"]
        await assert_still_serving(svc, good_job)
        assert svc.audio_budget.used_s == 0.0


async def test_slow_urls_of_one_job_do_not_hold_up_another(service, slow_files, good_job) -> None:
    """One job of 8 URLs that do not answer fills its own share of the load pool (4 at once); another job's input
    is decoded and transcribed meanwhile."""
    with service_with(service.engine, max_audio_s=600) as svc:
        slow = asyncio.create_task(svc.handle({"input": {"inputs": [f"{slow_files.url}/{i}.flac" for i in range(8)]}}))
        await slow_files.wait_started(4)
        await assert_still_serving(svc, good_job)
        assert not slow.done() and slow_files.most_in_flight == 4
        slow_files.gate.set()
        out = await asyncio.wait_for(slow, 60)
    assert [r["success"] for r in out["results"]] == [True] * 8 and slow_files.started == 8
