"""Batched offline recognition with a loaded Parakeet-TDT model: arrays in, typed transcripts out.

This is the arithmetic only (features -> encoder -> TDT greedy decoding -> timestamps), synchronous and not
thread-safe: :mod:`asr_engine` owns the one instance and calls it from its worker thread.

It deliberately does not use ``model.transcribe()``: that call leaves the encoder/decoder/joint in train mode
and keeps timestamp settings from earlier calls (NeMo 3.0.0 traps, see docs). Instead two decoding objects
are built once from the model's own decoding config, one without and one with timestamps, and neither is ever
reconfigured per request.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from omegaconf import open_dict

from parakeet_worker.model.loader import LoadedModel
from parakeet_worker.transcript import SAMPLE_RATE_HZ, TokenTiming, Transcript, WordTiming, segments_from_words

logger = logging.getLogger(__name__)

@contextmanager
def native_rnn_kernels(device: torch.device) -> Iterator[None]:
    """On CPU, run the block with oneDNN (mkldnn) off, so the TDT prediction network's LSTM uses PyTorch's native
    kernel. Greedy TDT decoding calls the LSTM one label at a time (batch x 1 step), and oneDNN's RNN primitive costs
    far more per such call than the native one (it re-packs the weights each time): on 2 cores, decoding one
    5.92 s window alone takes 141 -> 91 ms with the test model and 259 -> 105 ms with the full-size one, same
    tokens (docs/BENCHMARKS.md, "Decoder kernels"). The encoder keeps
    oneDNN, where its convolutions are twice as fast. The flag is process-wide, so this belongs on the engine's one
    compute thread; it is restored on exit. No-op on other devices."""
    if device.type != "cpu" or not torch.backends.mkldnn.enabled:
        yield
        return
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = True


class Recognizer:
    """Owns the model's inference path; call only from one thread at a time."""

    def __init__(self, loaded: LoadedModel) -> None:
        from nemo.collections.asr.parts.submodules.rnnt_decoding import RNNTBPEDecoding

        self.loaded = loaded
        self.model = loaded.model
        self.device = loaded.device
        self.dtype = loaded.dtype
        pre_cfg = self.model.cfg.preprocessor
        self.window_stride_s = float(pre_cfg.window_stride)
        self.subsampling_factor = int(self.model.encoder.subsampling_factor)
        self.frame_s = self.window_stride_s * self.subsampling_factor

        def decoding(timestamps: bool) -> Any:
            cfg = copy.deepcopy(self.model.cfg.decoding)
            with open_dict(cfg):
                cfg.compute_timestamps = timestamps
                cfg.preserve_alignments = False
            return RNNTBPEDecoding(
                decoding_cfg=cfg, decoder=self.model.decoder, joint=self.model.joint, tokenizer=self.model.tokenizer
            )

        self._decoding_plain = decoding(False)
        self._decoding_timestamps = decoding(True)

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
