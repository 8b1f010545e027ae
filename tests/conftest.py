"""Fixtures shared by every test: the committed test model, its held-out clips, and a WER helper.

Also the markers (registered in pyproject.toml) of what a test needs beyond Python and the repository's files:
``model`` (loads the committed test model, in this process or in a worker it starts), ``socket`` (real sockets on
localhost), ``worker`` (starts the real worker process), ``image`` (lints the image or builds a venv the way it
does). Most follow from the fixtures a test uses, so a new test is marked by what it asks for; the table below is
the one place that knows which fixture needs what. ``bash scripts/test.sh --fast`` runs the tests with none.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from testmodel.heldout import MODEL_PATH, Clip, WerStats, load_heldout, wer

# Fixture -> markers, wherever the fixture is used (directly or through another fixture).
_FIXTURE_MARKS: dict[str, tuple[str, ...]] = {
    "loaded_test_model": ("model",),  # and every fixture built on it: recognizer, engines, servers over an engine
    "http_root": ("socket",),  # test_handler: files served over HTTP on localhost
    "ws_url": ("socket",),  # test_client: the WebSocket server over the engine
    "local_api": ("socket", "worker", "model"),  # test_client: rp_handler.py --rp_serve_api
    "endpoint": ("socket", "worker", "model"),  # test_client: the worker behind the local RunPod platform
}
# Fixture names that mean a server only in their own module: (module, fixture) -> markers.
_MODULE_FIXTURE_MARKS: dict[tuple[str, str], tuple[str, ...]] = {
    ("test_audio_utils", "server"): ("socket",),  # the HTTP/S3 stand-in on localhost
    ("test_handler", "slow_files"): ("socket",),  # a slow HTTP server on localhost
}
# Whole modules, and single tests that open a socket without a fixture.
_MODULE_MARKS: dict[str, tuple[str, ...]] = {
    "test_websocket": ("socket",),
    "test_websocket_ends": ("socket", "model"),
    "test_app": ("socket", "model"),  # the app on uvicorn over the real engine
    "test_worker_websocket": ("socket", "worker", "model"),
    "test_log_secrets": ("socket", "worker", "model"),  # the real worker and the standalone server, their output
    "test_soak": ("socket", "worker", "model"),  # a minute of mixed hostile load on the real worker
    "test_openai_rest": ("socket", "model"),  # the OpenAI REST face, driven by the openai SDK
    "test_openai_realtime": ("socket", "model"),  # the OpenAI Realtime face, driven by the openai SDK
    "test_deepgram": ("socket", "model"),  # the Deepgram live face, driven by deepgram-sdk
    "test_riva": ("socket", "model"),  # the Riva gRPC face, driven by nvidia-riva-client
    "test_browser": ("socket", "model"),  # the browser page in headless Chromium (Selenium) against the app
    "test_lb": ("socket", "worker", "model"),  # the worker in RunPod load-balancing mode
    "test_pipecat": ("socket", "model"),  # Pipecat pipelines (.venv-pipecat) against the Deepgram and Realtime faces
}
_TEST_MARKS: dict[tuple[str, str], tuple[str, ...]] = {
    ("test_audio_utils", "test_https_certificate_is_verified"): ("socket",),
    ("test_audio_utils", "test_connection_refused_is_a_download_error"): ("socket",),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if isinstance(item, pytest.Function) else ""
        marks = set(_MODULE_MARKS.get(module, ()))
        marks.update(_TEST_MARKS.get((module, getattr(item, "originalname", item.name)), ()))
        for name in getattr(item, "fixturenames", ()):
            marks.update(_FIXTURE_MARKS.get(name, ()))
            marks.update(_MODULE_FIXTURE_MARKS.get((module, name), ()))
        present = {mark.name for mark in item.iter_markers()}
        for mark in sorted(marks - present):
            item.add_marker(mark)


# Tests run beside each other on 2 cores; one intra-op thread per process keeps timings stable.
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def test_model_path() -> Path:
    """The trained Parakeet-architecture test model (see docs/TEST_MODEL.md)."""
    assert MODEL_PATH.is_file(), f"{MODEL_PATH} is missing: regenerate it with `python -m testmodel.make`"
    return MODEL_PATH


@pytest.fixture(scope="session")
def heldout_clips() -> list[Clip]:
    """Held-out clips (sentences never used in training), each with `split` "seen" or "unseen" voices."""
    return load_heldout()


@pytest.fixture(scope="session")
def wer_of() -> Callable[[list[str], list[str]], WerStats]:
    """`wer_of(hypotheses, references)` -> corpus-level WER statistics (percent, S/D/I counts)."""
    return wer


@pytest.fixture(scope="session")
def loaded_test_model(test_model_path: Path):
    """The test model loaded once through the service's own loading code."""
    from parakeet_worker.config import Settings
    from parakeet_worker.model.loader import load_model

    return load_model(Settings(model=str(test_model_path)))


@pytest.fixture(scope="session")
def recognizer(loaded_test_model):
    from parakeet_worker.model.recognizer import Recognizer

    return Recognizer(loaded_test_model)


@pytest.fixture(scope="module")
def face_engine(loaded_test_model):
    """One engine per face test module (the faces' tests share a server on it): a short batch wait, and full
    attention up to 15 minutes so a long upload is one forward as on the GPU."""
    from parakeet_worker.engine.engine import EngineOptions, ParakeetEngine

    engine = ParakeetEngine(loaded_test_model, EngineOptions(batch_wait_ms=5, full_attention_max_s=900))
    yield engine
    engine.close()
