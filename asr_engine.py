"""The Parakeet engine: one warmed model, batched batch jobs and live streams on one owner thread.

The public types; the engine itself lives in :mod:`parakeet_worker.engine`.
"""

from parakeet_worker.engine import EngineInfo, EngineOptions, ParakeetEngine, TranscribeOptions, TranscriptionResult
from parakeet_worker.transcript import SegmentTiming, TokenTiming, Transcript, WordTiming

__all__ = ["EngineInfo", "EngineOptions", "ParakeetEngine", "SegmentTiming", "TokenTiming", "TranscribeOptions",
           "Transcript", "TranscriptionResult", "WordTiming"]
