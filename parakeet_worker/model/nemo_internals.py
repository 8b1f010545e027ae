"""Every place the service reaches inside NeMo's ASR model, gathered so a NeMo upgrade is checked in one file.

* decoding objects built from the model's own decoding config (never reconfigured per request), and the
  label-looping greedy computer inside one;
* the CPU oneDNN switch around the TDT prediction network's LSTM;
* the encoder's attention mode (local attention for long audio), switched and always restored;
* the encoder's convolutional subsampling prepared for hours of audio (:mod:`.chunked_subsampling`);
* the modules where an inference can be suspended (checkpoints of :mod:`parakeet_worker.streaming.interruptible`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from omegaconf import open_dict

from parakeet_worker.model import chunked_subsampling
from parakeet_worker.model.loader import LoadedModel

LOCAL_ATTENTION_CONTEXT = (256, 256)  # frames left and right of each frame under local attention
LOCAL_ATTENTION_LABEL = f"local[{LOCAL_ATTENTION_CONTEXT[0]},{LOCAL_ATTENTION_CONTEXT[1]}]"


# --- decoding ---------------------------------------------------------------------------------------------------
def build_decoding(model: Any, *, timestamps: bool, greedy_batch: bool = False) -> Any:
    """A fresh ``RNNTBPEDecoding`` from the model's decoding config, with or without timestamps (token durations).

    ``greedy_batch`` forces NeMo's batched greedy strategy (the one with a label-looping computer)."""
    from nemo.collections.asr.parts.submodules.rnnt_decoding import RNNTBPEDecoding

    cfg = copy.deepcopy(model.cfg.decoding)
    with open_dict(cfg):
        if greedy_batch:
            cfg.strategy = "greedy_batch"
        cfg.compute_timestamps = timestamps
        cfg.preserve_alignments = False
    return RNNTBPEDecoding(decoding_cfg=cfg, decoder=model.decoder, joint=model.joint, tokenizer=model.tokenizer)


def label_looping_computer(decoding: Any) -> Any:
    """The label-looping greedy computer inside a decoding object (it decodes frames continuing a decoder state);
    ValueError when the model's decoding has none."""
    computer = getattr(decoding.decoding, "decoding_computer", None)
    if computer is None:
        raise ValueError("streaming needs NeMo's label-looping greedy decoder (a TDT or RNN-T model with "
                         "blank_as_pad); this model's decoding config does not provide one")
    return computer


@contextlib.contextmanager
def native_rnn_kernels(device: torch.device) -> Iterator[None]:
    """On CPU, run the block with oneDNN (mkldnn) off, so the TDT prediction network's LSTM uses PyTorch's native
    kernel. Greedy TDT decoding calls the LSTM one label at a time (batch x 1 step), and oneDNN's RNN primitive
    costs far more per such call than the native one (it re-packs the weights each time), with the same tokens
    (docs/BENCHMARKS.md, "Decoder kernels"). The encoder keeps oneDNN, where its convolutions are faster. The flag
    is process-wide, so this belongs on the engine's one compute thread; it is restored on exit. No-op on other
    devices."""
    if device.type != "cpu" or not torch.backends.mkldnn.enabled:
        yield
        return
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = True


# --- the encoder ----------------------------------------------------------------------------------------------------
def prepare_for_long_audio(encoder: torch.nn.Module) -> None:
    """Let the encoder take hours of audio: NeMo auto-chunks its subsampling convolutions on long inputs, and
    :mod:`.chunked_subsampling` runs them in 60 s windows so no multi-GB conv output is needed. Idempotent."""
    if hasattr(encoder, "change_subsampling_conv_chunking_factor"):
        encoder.change_subsampling_conv_chunking_factor(1)
    chunked_subsampling.install(encoder)


@contextlib.contextmanager
def local_attention(loaded: LoadedModel) -> Iterator[None]:
    """Local attention for the duration of the block; full attention is restored even when the block fails.

    It changes the shared model: only the thread that owns the model may use it, with no other inference
    suspended meanwhile."""
    _set_attention(loaded, "rel_pos_local_attn", list(LOCAL_ATTENTION_CONTEXT))
    try:
        yield
    finally:
        _set_attention(loaded, "rel_pos", [-1, -1])


def _set_attention(loaded: LoadedModel, kind: str, context: list[int]) -> None:
    model = loaded.model
    encoder = model.encoder
    encoder.change_attention_model(kind, context, update_config=False, device=loaded.device)
    # NeMo 3.0.0 builds the new attention modules with biases even on use_bias=False models (random values
    # that perturb every output), in float32 and in train mode: undo all three.
    if not bool(model.cfg.encoder.get("use_bias", True)):
        for layer in encoder.layers:
            for name in ("linear_q", "linear_k", "linear_v", "linear_out"):
                lin = getattr(layer.self_attn, name, None)
                if lin is not None and lin.bias is not None:
                    lin.register_parameter("bias", None)
    encoder.to(device=loaded.device, dtype=loaded.dtype)
    for param in encoder.parameters():
        param.requires_grad_(False)
    model.eval()


# --- checkpoints ----------------------------------------------------------------------------------------------------
def checkpoint_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Where a NeMo FastConformer-TDT model's inference can stop: every convolution of the encoder's subsampling,
    every conformer layer, every LSTM of the prediction network (called once per decoding step)."""
    encoder = model.encoder
    found: list[torch.nn.Module] = [m for m in encoder.pre_encode.modules()
                                    if isinstance(m, torch.nn.Conv1d | torch.nn.Conv2d)]
    found.extend(encoder.layers)
    found.extend(m for m in model.decoder.modules() if isinstance(m, torch.nn.LSTM))
    return found
