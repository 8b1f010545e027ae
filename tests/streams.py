"""Reference transcripts for the streaming tests: what one stream gives when it is alone on the model (the
same reference ``python -m testmodel.evaluate`` compares batch transcripts with)."""

from __future__ import annotations

import numpy as np

from parakeet_worker.engine import ParakeetEngine
from parakeet_worker.model import Recognizer
from parakeet_worker.streaming import EndpointConfig, StreamingRecognizer, StreamManager, StreamOptions
from testmodel import evaluate


def pause_end(engine: ParakeetEngine, audio: np.ndarray) -> int | None:
    """Where the engine's final pass stops in ``audio`` heard as one utterance: ``early_final_s`` into a trailing
    pause the VAD judges clearly silent (``EarlyPasses.pass_end``), or None (all of it)."""
    return evaluate.pause_end(audio, engine.stream_geometry.early_final_s)


def streamed_alone(engine: ParakeetEngine, audio: np.ndarray) -> str:
    """The final text of ``audio`` streamed through a fresh stream of the engine's geometry, on a recognizer of
    its own (not the engine's worker thread), stepped as soon as each chunk is ready; its final pass stops where
    the engine's would."""
    streamer = StreamingRecognizer(Recognizer(engine.loaded), engine.options.streaming)
    return evaluate.streamed_final(streamer, audio, engine.stream_geometry.early_final_s)


def endpointed_finals(engine: ParakeetEngine, audio: np.ndarray, endpoint: EndpointConfig) -> list[str]:
    """The final texts of ``audio`` sent as one connection with server endpointing ``endpoint``, through a stream
    manager of the engine's geometry on a recognizer of its own: each utterance is the audio the engine's own stream
    decodes for it (it begins where the previous utterance ended, pause included), so a face is compared with the
    native path on exactly the same cuts. The whole audio goes in one push; the manager judges it as it would arriving
    in real time (tests/test_engine_streams.py)."""
    manager = StreamManager(StreamingRecognizer(Recognizer(engine.loaded), engine.options.streaming),
                            poke=lambda: None)
    events = []
    try:
        handle = manager.open(events.append, StreamOptions(endpointing=True, endpoint=endpoint))
        handle.push(audio)
        handle.stop()
        while manager.active:
            manager.service()
    finally:
        manager.close_all()
    assert not [e for e in events if e.kind == "error"], events
    return [e.result.committed_text for e in events if e.kind == "final"]


def speech_only(audio: np.ndarray) -> np.ndarray:
    """The clip up to 0.1 s after its last loud sample. Tests that follow a clip with digital silence use it: with
    the clip's own quiet tail, an utterance that starts in that tail after an endpoint can be heard as a word by
    the test model (the 88-minute one heard "temperature" in one; docs/TEST_MODEL.md), which is the model's, not
    the face's."""
    return audio[: int(np.nonzero(np.abs(audio) > 0.02)[0][-1]) + 1600]
