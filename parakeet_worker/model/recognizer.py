"""Batched offline recognition with a loaded Parakeet-TDT model: arrays in, typed transcripts out.

This is the arithmetic only (features -> encoder -> TDT greedy decoding -> timestamps), synchronous and not
thread-safe: the engine (:mod:`parakeet_worker.engine`) owns the one instance and calls it from its worker thread.

It deliberately does not use ``model.transcribe()``: that call leaves the encoder/decoder/joint in train mode
and keeps timestamp settings from earlier calls (NeMo 3.0.0 traps, tests/test_engine.py). Instead two decoding
objects are built once from the model's own decoding config, one without and one with timestamps, and neither is
ever reconfigured per request.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np
import torch

from parakeet_worker.model.loader import LoadedModel
from parakeet_worker.model.nemo_internals import build_decoding, native_rnn_kernels
from parakeet_worker.transcript import SAMPLE_RATE_HZ, TokenTiming, Transcript, WordTiming, segments_from_words

logger = logging.getLogger(__name__)


class Transcriber(Protocol):
    """What runs offline passes: :class:`Recognizer`, or a stand-in a test injects (e.g. one that fails)."""

    def transcribe(self, audio: list[np.ndarray], timestamps: bool = False) -> list[Transcript]: ...


class Recognizer:
    """Owns the model's inference path; call only from one thread at a time."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.device = loaded.device
        self.dtype = loaded.dtype
        pre_cfg = self.model.cfg.preprocessor
        self.window_stride_s = float(pre_cfg.window_stride)
        self.subsampling_factor = int(self.model.encoder.subsampling_factor)
        self.frame_s = self.window_stride_s * self.subsampling_factor
        self._decoding_plain = build_decoding(self.model, timestamps=False)
        self._decoding_timestamps = build_decoding(self.model, timestamps=True)

    @torch.inference_mode()
    def encode(self, audio: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad a batch of float32 16 kHz arrays and run features + encoder; returns (B, D, T) and lengths."""
        lengths = torch.tensor([a.shape[0] for a in audio], dtype=torch.long)
        batch = torch.zeros(len(audio), int(lengths.max()), dtype=torch.float32)
        for i, a in enumerate(audio):
            batch[i, : a.shape[0]] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        batch, lengths = batch.to(self.device), lengths.to(self.device)
        feats, feat_len = self.model.preprocessor(input_signal=batch, length=lengths)
        enc, enc_len = self.model.encoder(audio_signal=feats.to(self.dtype), length=feat_len)
        return enc, enc_len

    @torch.inference_mode()
    def decode(self, enc: torch.Tensor, enc_len: torch.Tensor, timestamps: bool) -> list[Any]:
        decoding = self._decoding_timestamps if timestamps else self._decoding_plain
        # Without return_hypotheses=True NeMo rebuilds bare Hypothesis(score, y_sequence, text) objects and the
        # timestamps it has just computed are dropped.
        with native_rnn_kernels(self.device):
            return decoding.rnnt_decoder_predictions_tensor(encoder_output=enc, encoded_lengths=enc_len,
                                                            return_hypotheses=True)

    def transcribe(self, audio: list[np.ndarray], timestamps: bool = False) -> list[Transcript]:
        if not audio:
            return []
        enc, enc_len = self.encode(audio)
        hyps = self.decode(enc, enc_len, timestamps)
        return [self.to_transcript(h, a.shape[0] / SAMPLE_RATE_HZ, timestamps) for h, a in zip(hyps, audio)]

    def to_transcript(self, hyp: Any, duration_s: float, timestamps: bool, offset_s: float = 0.0) -> Transcript:
        text = hyp.text if isinstance(hyp.text, str) else ""
        if not timestamps:
            return Transcript(text=text, duration_s=duration_s)
        stamps = hyp.timestamp if isinstance(hyp.timestamp, dict) else {}

        def seconds(item: dict[str, Any]) -> tuple[float, float]:
            start = offset_s + float(item["start_offset"]) * self.frame_s
            end = offset_s + float(item["end_offset"]) * self.frame_s
            return round(start, 3), round(max(end, start), 3)

        words = tuple(WordTiming(w["word"], *seconds(w)) for w in stamps.get("word", []))
        segments = segments_from_words(words)
        tokens = tuple(TokenTiming("".join(c["char"]) if isinstance(c["char"], list) else c["char"], *seconds(c))
                       for c in stamps.get("char", []))
        return Transcript(text=text, duration_s=duration_s, words=words, segments=segments, tokens=tokens,
                          has_timestamps=True)
