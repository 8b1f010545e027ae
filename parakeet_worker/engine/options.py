"""The engine's options and result types: what a caller sets, and what every response echoes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from parakeet_worker.audio import DEFAULT_MAX_DURATION_S
from parakeet_worker.streaming import StreamingConfig
from parakeet_worker.transcript import SegmentTiming, TokenTiming, WordTiming

MODEL_CARD_FULL_ATTENTION_S = 24 * 60  # parakeet-tdt-0.6b-v3 model card: 24 min in one pass on an 80 GB A100
MODEL_CARD_GPU_BYTES = 80 * 1024**3
CPU_FULL_ATTENTION_S = 10 * 60  # on CPU the quadratic attention cost, not memory, is the limit
MIN_AUDIO_S = 0.1
PARAKEET_V3_LANGUAGES = ("bg", "hr", "cs", "da", "nl", "en", "et", "fi", "fr", "de", "el", "hu", "it", "lv", "lt",
                         "mt", "pl", "pt", "ro", "sk", "sl", "es", "sv", "ru", "uk")

AttentionChoice = Literal["auto", "full", "local"]
ProgressCallback = Callable[[dict[str, object]], None]


@dataclass(frozen=True)
class EngineOptions:
    max_batch: int = 16
    batch_wait_ms: float = 5.0
    max_batch_audio_s: float = 480.0  # padded audio seconds in one forward pass
    full_attention_max_s: float | None = None  # None: from the model card, scaled by device memory
    max_audio_s: float = DEFAULT_MAX_DURATION_S  # the one limit on audio length, shared with the decoder
    default_chunk_s: float = 60.0
    default_overlap_s: float = 5.0
    max_queue: int = 1024
    # While streams are live, offline work runs in groups of at most this much padded audio between two
    # streaming rounds, so batch jobs cannot starve real-time sessions.
    stream_interleave_audio_s: float = 30.0
    # While streams wait, a batch forward (whatever its length or attention mode) hands the model back to them
    # after at most this long, at its next encoder layer or decoder step; at once when a stream's final waits.
    batch_slice_s: float = 0.2
    max_stream_batch: int = 32
    # Seconds one streaming forward may take: more ready streams are split into several forwards, so a client's
    # finalize waits for at most one of them (0: one forward for all). See parakeet_worker.streaming.manager.
    stream_step_budget_s: float = 0.05
    # Silence after speech after which a stream's final pass runs ahead of its end
    # (parakeet_worker.streaming.early_pass); 0: finals are computed when the utterance ends.
    stream_early_final_s: float = 0.16
    streaming: StreamingConfig = field(default_factory=StreamingConfig)


@dataclass(frozen=True)
class TranscribeOptions:
    timestamps: bool = False
    attention: AttentionChoice = "auto"  # "local" forces local attention; "full" refuses to switch
    chunked: bool = False
    chunk_s: float | None = None
    overlap_s: float | None = None


@dataclass(frozen=True)
class ChunkingInfo:
    chunk_s: float
    overlap_s: float
    windows: int


@dataclass(frozen=True)
class TranscriptionResult:
    text: str
    duration_s: float
    words: tuple[WordTiming, ...]
    segments: tuple[SegmentTiming, ...]
    tokens: tuple[TokenTiming, ...]
    has_timestamps: bool
    model: str
    device: str
    dtype: str
    attention: str  # "full" or "local[256,256]"
    chunking: ChunkingInfo | None
    processing_s: float
    queue_wait_s: float
    batch_size: int


@dataclass(frozen=True)
class EngineInfo:
    model: str
    source: str
    parameters: int
    device: str
    dtype: str
    languages: tuple[str, ...]
    sample_rate: int
    max_audio_s: float
    full_attention_max_s: float
    local_attention_context: tuple[int, int]
    max_batch: int
    load_seconds: float
    warmup_seconds: float


def default_full_attention_max_s(device: torch.device) -> float:
    """The longest audio for full attention: the model card's figure scaled by GPU memory, or a CPU time bound."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return MODEL_CARD_FULL_ATTENTION_S * min(1.0, total / MODEL_CARD_GPU_BYTES)
    return float(CPU_FULL_ATTENTION_S)
