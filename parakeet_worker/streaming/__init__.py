"""Streaming recognition: the cache-free window recognizer, the stream scheduler and its early final passes,
server VAD, interruptible passes."""

from parakeet_worker.streaming.early_pass import early_pass_due, early_pass_stale
from parakeet_worker.streaming.handle import (
    EventCallback,
    StreamEvent,
    StreamHandle,
    StreamOptions,
)
from parakeet_worker.streaming.interruptible import CarriedState, InterruptibleRunner
from parakeet_worker.streaming.manager import StreamManager, utterance_parts
from parakeet_worker.streaming.recognizer import StreamingRecognizer, stream_whole
from parakeet_worker.streaming.types import (
    ENCODER_FRAME_S,
    FinalizeLimitError,
    StepResult,
    StreamBacklogError,
    StreamGeometry,
    StreamingConfig,
    StreamState,
    StreamStats,
)
from parakeet_worker.streaming.vad import (
    BatchedVad,
    EndpointConfig,
    VadStream,
    VadUnavailableError,
)

__all__ = ["ENCODER_FRAME_S", "BatchedVad", "CarriedState", "EndpointConfig", "EventCallback", "FinalizeLimitError",
           "InterruptibleRunner", "StepResult", "StreamBacklogError", "StreamEvent", "StreamGeometry", "StreamHandle",
           "StreamManager", "StreamOptions", "StreamState", "StreamStats", "StreamingConfig", "StreamingRecognizer",
           "VadStream", "VadUnavailableError", "early_pass_due", "early_pass_stale", "stream_whole",
           "utterance_parts"]
