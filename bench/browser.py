"""The browser page in a real browser (issue 17's "Numbers"), and the drivers tests/test_browser.py uses.

    .venv/bin/python -m bench.browser                          # 3 runs, the committed test model
    .venv/bin/python -m bench.browser --runs 5 --screenshot docs/browser.png

Headless Chromium (Debian's ``chromium`` and ``chromium-driver``, installed by ``bash scripts/setup.sh``; Selenium
is pointed at both, so Selenium Manager never runs and nothing is downloaded) opens the page the worker serves at
``/`` with a fake microphone that plays a WAV once (``--use-file-for-fake-audio-capture=<wav>%noloop``): two
held-out clips with a pause between them and silence after, so the server's endpointing gives two finals, at
48 kHz (the AudioContext's usual rate, so Chrome plays it unresampled). The same PCM16 at 48 kHz also goes through
a native-protocol client paced in real time. The page's audio is not bit-identical to the file: Chrome's capture
and the AudioContext run on different clocks and the bridge between them adds or drops a few milliseconds, which
can change a word or two of the small test model's transcript; compare texts with a tolerance.

- First partial: from the page's ``mic-open`` mark (the fake device started) to its ``first-partial`` mark,
  against the budget chunk + right context + 300 ms.
- Finals: the page's ``final`` marks from ``mic-open`` against the native client's finals from its first frame,
  utterance by utterance (page - native), and whether their texts are the same.

The server is the worker's own app (every face) in this process over the engine, on an ephemeral port.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
import wave
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine_info, out

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SETUP_HINT = ("run `bash scripts/setup.sh`: it installs Debian's chromium and chromium-driver, and selenium "
              "(requirements-dev.txt) into .venv")
SAMPLE_RATE_HZ = 16_000  # the held-out clips'
MIC_RATE_HZ = 48_000  # the fake microphone's WAV and the native client's frames
FRAME_S = 0.02  # the page's frame (app.js FRAME_MS); the native client sends the same
PAUSE_S = 1.5  # between the two clips: longer than the default endpoint_silence_ms (600)
TAIL_S = 2.5  # silence after the second clip: its endpoint, then nothing
FIRST_PARTIAL_SLACK_S = 0.3  # the budget: chunk + right context + 300 ms
POLL_S = 0.05
SCREENSHOT_SIZE = (720, 860)  # docs/browser.png: the live part of the page, a final and a partial


class BrowserMissing(RuntimeError):
    """Chromium, its driver or Selenium is not installed here."""


@dataclass(frozen=True)
class LiveRun:
    partials: tuple[str, ...]  # the partial line's distinct texts, in order (polled)
    finals: tuple[str, ...]
    final_s: tuple[float, ...]  # each final on the page, seconds from mic-open
    first_partial_s: float  # first partial on the page, seconds from mic-open
    state: str  # the status line's words at the end


@dataclass(frozen=True)
class NativeRun:
    finals: tuple[str, ...]
    final_s: tuple[float, ...]  # each final received, seconds from the first frame sent


def mic_audio(clips: Sequence[np.ndarray]) -> np.ndarray:
    """The fake microphone's audio at :data:`MIC_RATE_HZ`: the 16 kHz clips with :data:`PAUSE_S` between them and
    :data:`TAIL_S` after."""
    import soxr

    pause = np.zeros(int(PAUSE_S * SAMPLE_RATE_HZ), np.float32)
    pieces: list[np.ndarray] = []
    for clip in clips:
        pieces += [clip.astype(np.float32), pause]
    pieces[-1] = np.zeros(int(TAIL_S * SAMPLE_RATE_HZ), np.float32)
    return soxr.resample(np.concatenate(pieces), SAMPLE_RATE_HZ, MIC_RATE_HZ).astype(np.float32)


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def write_wav(path: Path, audio: np.ndarray, rate: int = MIC_RATE_HZ) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm16(audio))
    return path


def launch(audio: Path | None = None, *, fake_ui: bool = True, size: tuple[int, int] = (1000, 1400)) -> Any:
    """Headless Chromium under Selenium; ``audio``: the WAV the fake microphone plays once; ``fake_ui``: every
    media permission prompt is accepted (without it the page's permission is what the test sets)."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package")
    if missing:
        raise BrowserMissing(f"{', '.join(missing)} not installed: {SETUP_HINT}")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required",
                     f"--window-size={size[0]},{size[1]}"):
        options.add_argument(argument)
    if fake_ui:
        options.add_argument("--use-fake-ui-for-media-stream")
    if audio is not None:
        options.add_argument(f"--use-file-for-fake-audio-capture={audio}%noloop")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@contextmanager
def browser(audio: Path | None = None, *, fake_ui: bool = True) -> Iterator[Any]:
    driver = launch(audio, fake_ui=fake_ui)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: Any) -> list[dict[str, Any]]:
    """The browser log's errors since the last call (the log is emptied by reading it)."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


_SNAPSHOT = """
const partial = document.getElementById("partial");
const committed = partial.querySelector(".committed").textContent;
const finals = document.querySelectorAll("#finals li").length;
const state = document.getElementById("state");
const error = document.getElementById("live-error");
return [partial.textContent, committed, finals, state.dataset.state, state.textContent,
        error.hidden ? "" : error.textContent];
"""


def wait_for(driver: Any, script: str, timeout_s: float, what: str) -> Any:
    """Poll ``script`` until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(POLL_S)
    raise TimeoutError(f"the page did not show {what} within {timeout_s:.0f} s")


def run_live(driver: Any, url: str, token: str, finals: int, timeout_s: float = 90.0,
             shots: Path | None = None) -> LiveRun:
    """Open the page with ``?token=``, start the microphone, wait for ``finals`` finals, then stop. ``shots``: a
    folder for screenshots of the first partial (``live-partial.png``), of a final with the next utterance's
    committed and draft words (``live-captions.png``) and of the stopped session (``live-stopped.png``)."""
    driver.get(f"{url}/?token={token}")
    driver.find_element("id", "start").click()
    partials: list[str] = []
    pending = {"live-partial.png": 0, "live-captions.png": 1} if shots is not None else {}
    deadline = time.monotonic() + timeout_s
    while True:
        partial, committed, count, state, words, error = driver.execute_script(_SNAPSHOT)
        if partial and (not partials or partials[-1] != partial):
            partials.append(partial)
            for name, after in list(pending.items()):
                if count >= after and (after == 0 or committed not in ("", partial)) and shots is not None:
                    driver.save_screenshot(str(shots / name))
                    del pending[name]
        if error or state == "error":
            raise RuntimeError(f"the page reports: {words} {error}")
        if count >= finals:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} of {finals} finals on the page within {timeout_s:.0f} s ({state}: {words})")
        time.sleep(POLL_S)
    for name in pending if shots is not None else ():  # never seen as wished: the page as it is now
        driver.save_screenshot(str(shots / name))
    driver.find_element("id", "stop").click()
    wait_for(driver, "return document.getElementById('state').dataset.state === 'stopped'", 30.0, "stopped")
    if shots is not None:
        driver.save_screenshot(str(shots / "live-stopped.png"))
    marks = driver.execute_script(
        "return performance.getEntriesByType('mark').map(m => [m.name, m.startTime, m.detail])")
    start_ms = next(t for name, t, _ in marks if name == "mic-open")
    first_ms = next(t for name, t, _ in marks if name == "first-partial")
    final_marks = [(t, detail) for name, t, detail in marks if name == "final"]
    state_words = driver.find_element("id", "state").text
    return LiveRun(tuple(partials), tuple(d["text"] for _, d in final_marks),
                   tuple((t - start_ms) / 1000 for t, _ in final_marks), (first_ms - start_ms) / 1000, state_words)


def run_native(ws_url: str, token: str, audio: np.ndarray, *, rate: int = MIC_RATE_HZ, realtime: bool = True,
               timeout_s: float = 90.0) -> NativeRun:
    """The same audio through the native protocol (PCM16 at ``rate``, :data:`FRAME_S` frames, in real time or as
    fast as it goes), endpointing on as the page has it; its finals and when each arrived. In real time each frame
    is sent when a microphone would have recorded all of it (frame ``i`` at ``(i + 1) * FRAME_S``), as the page's
    are."""
    from websockets.sync.client import connect

    data = pcm16(audio)
    step = int(FRAME_S * rate) * 2
    finals: list[str] = []
    final_s: list[float] = []
    with connect(f"{ws_url}/?token={token}", max_size=None, open_timeout=30) as ws:
        assert json.loads(ws.recv(timeout_s))["type"] == "welcome"
        ws.send(json.dumps({"action": "start", "sample_rate": rate, "interim_results": True}))
        assert json.loads(ws.recv(timeout_s))["type"] == "started"
        start = time.monotonic()

        def send() -> None:
            for i, offset in enumerate(range(0, len(data), step)):
                if realtime:
                    time.sleep(max(0.0, start + (i + 1) * FRAME_S - time.monotonic()))
                ws.send(data[offset:offset + step])
            ws.send(json.dumps({"action": "stop"}))

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        while True:
            message = json.loads(ws.recv(timeout_s))
            if message["type"] == "transcription" and message["is_final"] and message["text"]:
                finals.append(message["text"])
                final_s.append(time.monotonic() - start)
            elif message["type"] == "error":
                raise RuntimeError(f"native session error: {message}")
            elif message["type"] == "stopped":
                break
        sender.join()
    return NativeRun(tuple(finals), tuple(final_s))


def word_agreement(reference: Sequence[str], hypothesis: Sequence[str]) -> float:
    """The share of the reference's words (all texts joined) that the hypothesis has in aligned place."""
    import jiwer

    ref, hyp = " ".join(reference), " ".join(hypothesis)
    if not ref.split():
        return 1.0 if not hyp.split() else 0.0
    counts = jiwer.process_words(ref, hyp)
    return counts.hits / len(ref.split())


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="page runs and native runs, alternated")
    parser.add_argument("--clips", nargs=2, default=["seen-00001.flac", "seen-00002.flac"], help="held-out clips")
    parser.add_argument("--screenshot", type=Path, help="write the first run's live-captions screenshot here")
    args = parser.parse_args(argv)

    import soundfile as sf

    from bench.common import quiet_nemo
    from parakeet_worker.config import Settings
    from parakeet_worker.engine.engine import EngineOptions, ParakeetEngine
    from parakeet_worker.model.loader import load_model
    from parakeet_worker.observability import Metrics
    from parakeet_worker.serving.app import FACES
    from parakeet_worker.serving.batch import BatchService
    from testmodel.heldout import HELDOUT_DIR, MODEL_PATH
    from tests.faces_server import TOKEN, serve_faces

    quiet_nemo()
    audio = mic_audio([sf.read(HELDOUT_DIR / name, dtype="float32")[0] for name in args.clips])
    settings = Settings(model=str(MODEL_PATH))
    engine = ParakeetEngine(load_model(settings), EngineOptions(batch_wait_ms=5))
    batch = BatchService(engine, settings, metrics=Metrics(None))
    geometry = engine.stream_geometry
    budget_s = geometry.chunk_s + geometry.right_s + FIRST_PARTIAL_SLACK_S
    pages: list[LiveRun] = []
    natives: list[NativeRun] = []
    try:
        with tempfile.TemporaryDirectory() as tmp, serve_faces(engine, FACES, batch=batch) as server:
            wav = write_wav(Path(tmp) / "mic.wav", audio)
            run_native(server.ws_url, TOKEN, audio, realtime=False)  # warm-up
            for run in range(args.runs):
                shots = Path(tmp) if run == 0 and args.screenshot is not None else None
                with browser(wav) as driver:
                    if shots is not None:
                        driver.set_window_size(*SCREENSHOT_SIZE)
                    pages.append(run_live(driver, server.url, TOKEN, finals=len(args.clips), shots=shots))
                if shots is not None:
                    shutil.copyfile(shots / "live-captions.png", args.screenshot)
                natives.append(run_native(server.ws_url, TOKEN, audio))
    finally:
        batch.close()
        engine.close()

    out(f"# bench.browser: {machine_info()}")
    out(f"audio: {', '.join(args.clips)} at {MIC_RATE_HZ} Hz, {PAUSE_S} s pause, {TAIL_S} s tail "
        f"({audio.shape[0] / MIC_RATE_HZ:.1f} s); frames {FRAME_S * 1000:.0f} ms; runs: {args.runs}")
    firsts = [page.first_partial_s for page in pages]
    out(f"first partial on the page from mic-open: median {statistics.median(firsts) * 1000:.0f} ms, max "
        f"{max(firsts) * 1000:.0f} ms; budget chunk {geometry.chunk_s} + right {geometry.right_s} + "
        f"{FIRST_PARTIAL_SLACK_S} s = {budget_s * 1000:.0f} ms: {'within' if max(firsts) <= budget_s else 'OVER'}")
    pairs = list(zip(pages, natives, strict=True))
    deltas = [p - n for page, native in pairs for p, n in zip(page.final_s, native.final_s, strict=False)]
    out(f"finals on the page - native client's (same audio, per utterance, n={len(deltas)}): median "
        f"{statistics.median(deltas) * 1000:+.0f} ms, p90 {_percentile(deltas, 0.9) * 1000:+.0f} ms, max "
        f"{max(deltas) * 1000:+.0f} ms; target <= +100 ms: {'within' if max(deltas) <= 0.1 else 'OVER'}")
    agreement = [word_agreement(native.finals, page.finals) for page, native in pairs]
    out(f"final texts identical to the native client's: {sum(p.finals == n.finals for p, n in pairs)} of "
        f"{len(pairs)} runs; native words on the page: min {min(agreement):.0%}")
    for page, native in pairs:
        out("  page", " | ".join(f"{t:.3f}s" for t in page.final_s), "  native",
            " | ".join(f"{t:.3f}s" for t in native.final_s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
