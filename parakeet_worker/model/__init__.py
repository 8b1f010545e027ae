"""The loaded Parakeet model: loading from every source, offline recognition, and NeMo-internal touches."""

from parakeet_worker.model.loader import (
    LoadedModel,
    load_model,
    release_host_memory,
    resolve_model_source,
)
from parakeet_worker.model.recognizer import (
    Recognizer,
    native_rnn_kernels,
)

__all__ = ["LoadedModel", "Recognizer", "load_model", "native_rnn_kernels", "release_host_memory", "resolve_model_source"]
