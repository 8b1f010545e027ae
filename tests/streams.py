"""Reference transcripts for the streaming tests: what one stream gives when it is alone on the model."""

from __future__ import annotations

import numpy as np

from asr_engine import ParakeetEngine
from streaming import StreamingRecognizer


def streamed_alone(engine: ParakeetEngine, audio: np.ndarray) -> str:
    """The final text of ``audio`` streamed through a fresh stream of the engine's geometry, on its own
    recognizer (not the engine's worker thread), stepped as soon as each chunk is ready."""
    streamer = StreamingRecognizer(engine.recognizer, engine.streamer.config)
    state = streamer.new_stream()
    streamer.accept(state, audio)
    while streamer.ready(state):
        streamer.step([state])
    return streamer.finalize([state])[0].committed_text
