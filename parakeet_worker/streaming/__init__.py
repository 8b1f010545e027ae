"""Streaming recognition: the cache-free window recognizer, the stream scheduler, server VAD, interruptible final passes."""

from parakeet_worker.streaming.interruptible import (
    InterruptibleRunner,
)
from parakeet_worker.streaming.manager import (
    EventCallback,
    StreamEvent,
    StreamHandle,
    StreamManager,
    StreamOptions,
)
from parakeet_worker.streaming.recognizer import (
    StreamBacklogError,
    StreamingConfig,
    StreamingRecognizer,
)
from parakeet_worker.streaming.vad import (
    BatchedVad,
    EndpointConfig,
    VadUnavailableError,
)

__all__ = ["BatchedVad", "EndpointConfig", "EventCallback", "InterruptibleRunner", "StreamBacklogError", "StreamEvent", "StreamHandle", "StreamManager", "StreamOptions", "StreamingConfig", "StreamingRecognizer", "VadUnavailableError"]
