"""The browser page (GET /, docs/BROWSER.md) in a real headless Chromium driven by Selenium, against the worker's
app (every face) on a real socket over the real engine and test model.

The fake microphone plays two held-out clips once (bench/browser.py builds the audio and drives the page); the
page's finals are compared with a native-protocol client's on the same audio. Screenshots of every state go to
``$PYTEST_ARTIFACTS/browser`` (else a temporary folder); the browser's console is read after every test and must
hold no error but the HTTP refusals a test provokes on purpose. Chromium and its driver come from the system
(``bash scripts/setup.sh``): without them these tests fail, they are not skipped.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from bench.browser import (
    BrowserMissing,
    console_errors,
    launch,
    mic_audio,
    run_live,
    run_native,
    wait_for,
    word_agreement,
    write_wav,
)
from parakeet_worker.config import Settings
from parakeet_worker.engine.engine import ParakeetEngine
from parakeet_worker.observability import Metrics
from parakeet_worker.serving.app import FACES
from parakeet_worker.serving.batch import BatchService
from parakeet_worker.serving.page_face import STATIC_TYPES
from parakeet_worker.serving.ws_grants import ServerLimits
from tests.faces_server import TOKEN, FacesServer, serve_faces

MIC_CLIPS = ("seen-00001.flac", "seen-00002.flac")
FILE_CLIP = Path(__file__).parent / "assets" / "heldout" / "seen-00000.flac"
FIRST_PARTIAL_SLACK_S = 0.3  # the budget: chunk + right context + 300 ms from the fake device's start
# The page's audio is the file's within a few ms of clock slip (bench/browser.py). With the 88-minute test model
# 5 runs agreed on 1.0, 1.0, 1.0, 0.956, 0.956: two words differ, the second clip's first two, where the model is
# sensitive to where the audio starts (docs/TEST_MODEL.md). Was 0.8 for the earlier models.
MIN_WORD_AGREEMENT = 0.9


@pytest.fixture(scope="module")
def batch(face_engine: ParakeetEngine, test_model_path: Path) -> Iterator[BatchService]:
    service = BatchService(face_engine, Settings(model=str(test_model_path)), metrics=Metrics(None))
    yield service
    service.close()


@pytest.fixture(scope="module")
def server(face_engine: ParakeetEngine, batch: BatchService) -> Iterator[FacesServer]:
    with serve_faces(face_engine, FACES, batch=batch) as running:
        yield running


@pytest.fixture(scope="module")
def mic(heldout_clips, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The fake microphone's WAV and its audio (48 kHz)."""
    by_name = {clip.name: clip.audio for clip in heldout_clips}
    audio = mic_audio([by_name[name] for name in MIC_CLIPS])
    return write_wav(tmp_path_factory.mktemp("mic") / "mic.wav", audio), audio


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    root = os.environ.get("PYTEST_ARTIFACTS")
    folder = Path(root) / "browser" if root else tmp_path_factory.mktemp("browser-shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _launch(audio: Path | None, *, fake_ui: bool = True) -> Any:
    try:
        return launch(audio, fake_ui=fake_ui)
    except BrowserMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def chromium(mic) -> Iterator[Any]:
    driver = _launch(mic[0])
    yield driver
    driver.quit()


@pytest.fixture
def allowed_errors() -> list[str]:
    """Patterns of console errors a test provokes on purpose (the HTTP refusals it asks for)."""
    return []


@pytest.fixture
def driver(chromium, allowed_errors) -> Iterator[Any]:
    """The module's browser; after the test its console must hold no error but those the test allowed."""
    console_errors(chromium)  # empty the log
    yield chromium
    errors = [e for e in console_errors(chromium)
              if not any(re.search(pattern, e["message"]) for pattern in allowed_errors)]
    assert errors == [], f"console errors: {errors}"


def refusal_logged(path: str, status: int) -> str:
    """The console line Chromium writes for an HTTP refusal the page receives (not a script error)."""
    return rf"{re.escape(path)} - Failed to load resource: the server responded with a status of {status}\b"


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.execute_script(f"return document.getElementById('{element_id}').textContent"))


# --- the page and its files over plain HTTP ----------------------------------------------------------------------
def test_the_page_and_its_files_are_served_with_their_types_and_cache_validators(server) -> None:
    with httpx.Client(base_url=server.url) as http:
        page = http.get("/")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-cache" and page.headers["x-content-type-options"] == "nosniff"
        assert 'src="/static/app.js"' in page.text and 'aria-live="polite"' in page.text
        for name, kind in STATIC_TYPES.items():
            asset = http.get(f"/static/{name}")
            assert (asset.status_code, asset.headers["content-type"]) == (200, kind)
            again = http.get(f"/static/{name}", headers={"If-None-Match": asset.headers["etag"]})
            assert again.status_code == 304 and again.content == b""
        assert http.get("/static/pcm-worklet.js").headers["content-type"].startswith("text/javascript")
        assert http.get("/static/missing.js").status_code == 404
        assert http.get("/static/..%2Fpage_face.py").status_code == 404


def test_the_access_probe_answers_as_the_handshake_would(face_engine, batch) -> None:
    limits = ServerLimits(max_sessions=1, max_refusals=3)
    with serve_faces(face_engine, FACES, batch=batch, limits=limits) as srv, httpx.Client(base_url=srv.url) as http:
        ok = http.get("/page/access", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.headers["cache-control"] == "no-store"
        assert ok.json() == {"status": "ok", "ready": True, "sessions": 0, "max_sessions": 1,
                             "model": face_engine.info().model}
        with connect(f"{srv.ws_url}/?token={TOKEN}"):  # the one session the limit allows
            busy = http.get("/page/access", params={"token": TOKEN})
            assert busy.status_code == 503 and "busy" in busy.json()["error"]
        assert http.get("/page/access", params={"token": "wrong"}).status_code == 401
        assert http.get("/page/access").status_code == 401
        # each refusal counts toward the address's back-off, as a refused handshake does: no free token oracle
        assert http.get("/page/access", params={"token": "wrong"}).status_code == 401
        blocked = http.get("/page/access", params={"token": TOKEN})
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0


# --- the page in the browser -------------------------------------------------------------------------------------
def test_live_captions_from_the_microphone_match_the_native_protocol(driver, server, mic, shots,
                                                                    heldout_clips) -> None:
    wav, audio = mic
    native = run_native(server.ws_url, TOKEN, audio, realtime=False)
    assert len(native.finals) == len(MIC_CLIPS), native.finals

    page = run_live(driver, server.url, TOKEN, finals=len(MIC_CLIPS), shots=shots)

    assert len(page.partials) >= 3, f"partials did not change in place: {page.partials}"
    assert len(page.finals) == len(MIC_CLIPS), page.finals
    agreement = word_agreement(native.finals, page.finals)
    assert agreement >= MIN_WORD_AGREEMENT, (native.finals, page.finals)
    items = driver.execute_script(
        "return [...document.querySelectorAll('#finals li')].map(li => [li.querySelector('time').textContent, "
        "li.querySelector('span').textContent])")
    assert [text for _, text in items] == list(page.finals)
    assert all(re.fullmatch(r"\d+:\d\d\.\d–\d+:\d\d\.\d", when) for when, _ in items), items
    # Partials come while the first clip is spoken, not only at its end (the latency budget, chunk + right
    # context + 300 ms, is measured by bench.browser, not asserted in a timed test; here only the order).
    first_clip_s = next(c.seconds for c in heldout_clips if c.name == MIC_CLIPS[0])
    assert page.first_partial_s < first_clip_s, f"first partial at {page.first_partial_s:.3f} s"
    assert page.state.startswith("Stopped: 2 utterance(s)")
    # the token came from the address and stays in this tab only
    assert "token" not in driver.current_url
    stored = driver.execute_script("return [sessionStorage.getItem('parakeet-token'), localStorage.length, "
                                   "document.cookie]")
    assert stored == [TOKEN, 0, ""]


def test_committed_and_draft_words_look_different_and_the_page_fits_a_phone(driver, server, shots) -> None:
    driver.get(f"{server.url}/?token={TOKEN}")
    styles = driver.execute_script(
        "const s = (q) => getComputedStyle(document.querySelector(q));"
        "return [s('#partial .committed').fontStyle, s('#partial .draft').fontStyle, "
        "s('#partial .committed').color !== s('#partial .draft').color];")
    assert styles == ["normal", "italic", True]
    try:
        driver.set_window_size(360, 800)
        fits = driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        driver.save_screenshot(str(shots / "phone-360.png"))
    finally:
        driver.set_window_size(1000, 1400)
    assert fits, "the page scrolls sideways at 360 px"
    unlabelled = driver.execute_script(
        "return [...document.querySelectorAll('input, progress, [role=meter]')].filter(e => !(e.labels && "
        "e.labels.length) && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby')).map(e => e.id)")
    assert unlabelled == []
    driver.find_element("id", "token").click()
    driver.switch_to.active_element.send_keys("\t")
    assert driver.switch_to.active_element.get_attribute("id") == "start"  # the keyboard reaches the controls


def test_a_file_is_transcribed_with_segments_and_subtitle_links(driver, server, shots) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
        def answer(response_format: str) -> httpx.Response:
            with FILE_CLIP.open("rb") as f:
                return http.post("/v1/audio/transcriptions", files={"file": (FILE_CLIP.name, f)},
                                 data={"model": "x", "response_format": response_format,
                                       "timestamp_granularities[]": ["word", "segment"]})
        verbose, srt, vtt = answer("verbose_json").json(), answer("srt").text, answer("vtt").text

    driver.get(f"{server.url}/?token={TOKEN}")
    driver.find_element("id", "file").send_keys(str(FILE_CLIP))
    wait_for(driver, "return !document.getElementById('file-result').hidden", 60, "the file's transcript")
    driver.save_screenshot(str(shots / "file.png"))

    assert text_of(driver, "file-text") == verbose["text"]
    segments = driver.execute_script(
        "return [...document.querySelectorAll('#segments li')].map(li => li.querySelector('span').textContent)")
    assert segments == [s["text"] for s in verbose["segments"]] and segments
    assert "transcribed" in text_of(driver, "file-state") and not driver.find_element("id", "upload").is_displayed()
    links = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const get = (id) => fetch(document.getElementById(id).href).then(r => r.text());"
        "Promise.all([get('srt-link'), get('vtt-link')]).then(done);")
    assert links == [srt, vtt]  # the page's subtitles equal the worker's own srt/vtt answers
    assert driver.find_element("id", "srt-link").get_attribute("download") == "seen-00000.srt"


def test_a_wrong_token_is_refused_in_words(driver, allowed_errors, server, shots) -> None:
    allowed_errors += [refusal_logged("/page/access", 401), refusal_logged("/v1/audio/transcriptions", 401)]
    driver.get(f"{server.url}/?token=not-the-token")
    driver.find_element("id", "start").click()
    words = wait_for(driver, "const e = document.getElementById('live-error'); return !e.hidden && e.textContent",
                     20, "the refusal")
    driver.save_screenshot(str(shots / "wrong-token.png"))
    assert words.startswith("Token refused")
    assert not driver.find_element("id", "start").get_attribute("disabled")  # ready to try again
    driver.find_element("id", "file").send_keys(str(FILE_CLIP))
    words = wait_for(driver, "const e = document.getElementById('file-error'); return !e.hidden && e.textContent",
                     20, "the file's refusal")
    assert words.startswith("Token refused")


def test_a_full_worker_is_reported_as_overloaded(driver, allowed_errors, face_engine, batch, shots) -> None:
    allowed_errors.append(refusal_logged("/page/access", 503))
    with serve_faces(face_engine, FACES, batch=batch, limits=ServerLimits(max_sessions=1)) as srv, \
            connect(f"{srv.ws_url}/?token={TOKEN}"):
        driver.get(f"{srv.url}/?token={TOKEN}")
        driver.find_element("id", "start").click()
        words = wait_for(driver, "const e = document.getElementById('live-error'); return !e.hidden && "
                         "e.textContent", 20, "the refusal")
        driver.save_screenshot(str(shots / "overloaded.png"))
    assert words.startswith("Server overloaded") and "busy" in words


def test_a_denied_microphone_is_reported_in_words(server, shots) -> None:
    denied = _launch(None, fake_ui=False)
    try:
        denied.get(f"{server.url}/?token={TOKEN}")
        denied.execute_cdp_cmd("Browser.setPermission", {"permission": {"name": "microphone"}, "setting": "denied",
                                                         "origin": server.url})
        denied.find_element("id", "start").click()
        words = wait_for(denied, "const e = document.getElementById('live-error'); return !e.hidden && "
                         "e.textContent", 20, "the microphone's refusal")
        denied.save_screenshot(str(shots / "microphone-denied.png"))
        assert words.startswith("Microphone denied")
        time.sleep(0.2)
        assert server.server.active_sessions == 0  # no session was opened for nothing
        assert console_errors(denied) == []
    finally:
        denied.quit()
