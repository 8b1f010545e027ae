"""Fixtures shared by every test: the committed test model, its held-out clips, and a WER helper."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from testmodel.heldout import MODEL_PATH, Clip, WerStats, load_heldout, wer

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
