"""The engine: one owner thread holds the model and batches offline requests, chunked and long audio, and live streams."""

from parakeet_worker.engine.chunking import (
    merge_windows,
    plan_windows,
)
from parakeet_worker.engine.engine import (
    EngineInfo,
    EngineOptions,
    ParakeetEngine,
    TranscribeOptions,
    TranscriptionResult,
)

__all__ = ["EngineInfo", "EngineOptions", "ParakeetEngine", "TranscribeOptions", "TranscriptionResult", "merge_windows", "plan_windows"]
