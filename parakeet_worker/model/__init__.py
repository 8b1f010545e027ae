"""The loaded Parakeet model: loading from every source, offline recognition, frame decoding for streaming, and
every NeMo-internal touch (:mod:`.nemo_internals`)."""

from parakeet_worker.model.chunked_subsampling import ChunkedSubsampling
from parakeet_worker.model.frame_decoder import FrameDecoder, Token
from parakeet_worker.model.loader import (
    LoadedModel,
    load_model,
    release_host_memory,
    resolve_model_source,
)
from parakeet_worker.model.nemo_internals import (
    LOCAL_ATTENTION_CONTEXT,
    LOCAL_ATTENTION_LABEL,
    AttentionSwitch,
    attention_switch,
    build_decoding,
    checkpoint_modules,
    label_looping_computer,
    local_attention,
    native_rnn_kernels,
    prepare_for_long_audio,
)
from parakeet_worker.model.recognizer import Recognizer, Transcriber

__all__ = ["LOCAL_ATTENTION_CONTEXT", "LOCAL_ATTENTION_LABEL", "AttentionSwitch", "ChunkedSubsampling",
           "FrameDecoder", "LoadedModel", "Recognizer", "Token", "Transcriber", "attention_switch", "build_decoding",
           "checkpoint_modules", "label_looping_computer", "load_model", "local_attention", "native_rnn_kernels",
           "prepare_for_long_audio", "release_host_memory", "resolve_model_source"]
