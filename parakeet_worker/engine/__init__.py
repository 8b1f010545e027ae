"""The engine: one owner thread holds the model and batches offline requests, chunked and long audio, and live
streams."""

from parakeet_worker.engine.batching import BucketLimits, BucketPolicy, bucket_by_length
from parakeet_worker.engine.chunking import merge_transcripts, merge_windows, plan_windows
from parakeet_worker.engine.engine import ParakeetEngine
from parakeet_worker.engine.memory import limit_malloc_arenas
from parakeet_worker.engine.options import (
    ChunkingInfo,
    EngineInfo,
    EngineOptions,
    TranscribeOptions,
    TranscriptionResult,
)

__all__ = ["BucketLimits", "BucketPolicy", "ChunkingInfo", "EngineInfo", "EngineOptions", "ParakeetEngine",
           "TranscribeOptions", "TranscriptionResult", "bucket_by_length", "merge_transcripts", "merge_windows",
           "limit_malloc_arenas", "plan_windows"]
