"""Every place the service reaches inside NeMo's ASR model, gathered so a NeMo upgrade is checked in one file.

* decoding objects built from the model's own decoding config (never reconfigured per request), and the
  label-looping greedy computer inside one;
* the CPU oneDNN switch around the TDT prediction network's LSTM;
* the encoder's attention mode (local attention for long audio): both sets of modules built once, switched by
  reference and always restored (:class:`AttentionSwitch`);
* the encoder prepared for hours of audio: its convolutional subsampling in windows (:mod:`.chunked_subsampling`),
  its full attention over long inputs in query blocks (:mod:`.blocked_attention`);
* the modules where an inference can be suspended (checkpoints of :mod:`parakeet_worker.streaming.interruptible`).
"""

from __future__ import annotations

import contextlib
import copy
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import open_dict

from parakeet_worker.model import blocked_attention, chunked_subsampling
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
    blocked_attention.install(encoder)


@contextlib.contextmanager
def local_attention(loaded: LoadedModel) -> Iterator[None]:
    """Local attention for the duration of the block; the mode before it is restored even when the block fails.

    It changes the shared model: only the thread that computes may use it. A suspended interruptible job carries
    its mode across hand-overs (:func:`attention_switch` is one of the runner's carried states), so the worker
    thread runs its own inference in full attention while a local-attention job is suspended."""
    switch = attention_switch(loaded)
    before = switch.mode
    switch.set(LOCAL_MODE)
    try:
        yield
    finally:
        switch.set(before)


FULL_MODE, LOCAL_MODE = "full", "local"


@dataclass(frozen=True)
class _AttentionModules:
    """What NeMo's ``change_attention_model`` replaces: the positional encoding, the mode names, each layer's
    attention module."""

    pos_enc: torch.nn.Module
    kind: str
    context: list[int]
    layers: tuple[tuple[torch.nn.Module, torch.nn.Module, str], ...]  # (layer, its self_attn, its mode name)


class AttentionSwitch:
    """Full and local attention of one encoder, both built once: switching is a swap of module references (tens of
    microseconds), so an interruptible job can carry its mode across every hand-over. The local modules share the
    full ones' weights (NeMo's ``change_attention_model`` copies them: 1/3 of the encoder again)."""

    def __init__(self, loaded: LoadedModel) -> None:
        self._loaded = loaded
        self._modes: dict[str, _AttentionModules] = {FULL_MODE: self._capture()}
        self._max_len: dict[str, int] = {}
        self.mode = FULL_MODE

    def set(self, mode: str) -> None:
        if mode == self.mode:
            return
        if mode not in self._modes:
            self._build_local()
        wanted = self._modes[mode]
        encoder = self._loaded.model.encoder
        # Each mode's positional encoding grows on its own (to ``max_audio_length``, which the encoder raises
        # for longer inputs): keep that length with the encoding it describes.
        self._max_len[self.mode] = int(encoder.max_audio_length)
        encoder.max_audio_length = self._max_len.get(mode, encoder.max_audio_length)
        encoder.pos_enc = wanted.pos_enc
        encoder.self_attention_model = wanted.kind
        encoder.att_context_size = list(wanted.context)
        for layer, attn, kind in wanted.layers:
            layer.self_attn = attn
            layer.self_attention_model = kind
        self.mode = mode

    def _capture(self) -> _AttentionModules:
        encoder = self._loaded.model.encoder
        layers = tuple((layer, layer.self_attn, str(layer.self_attention_model)) for layer in encoder.layers)
        return _AttentionModules(encoder.pos_enc, str(encoder.self_attention_model), list(encoder.att_context_size),
                                 layers)

    def _build_local(self) -> None:
        full = self._modes[FULL_MODE]
        self._max_len[FULL_MODE] = int(self._loaded.model.encoder.max_audio_length)
        _set_attention(self._loaded, "rel_pos_local_attn", list(LOCAL_ATTENTION_CONTEXT))
        local = self._capture()
        for (_, full_attn, _), (_, local_attn, _) in zip(full.layers, local.layers):
            _share_parameters(full_attn, local_attn)
        self._modes[LOCAL_MODE] = local
        self.mode = LOCAL_MODE
        self.set(FULL_MODE)  # the original modules, untouched


_SWITCHES: weakref.WeakKeyDictionary[torch.nn.Module, AttentionSwitch] = weakref.WeakKeyDictionary()
_SWITCHES_LOCK = threading.Lock()


def attention_switch(loaded: LoadedModel) -> AttentionSwitch:
    """The one :class:`AttentionSwitch` of this model's encoder."""
    with _SWITCHES_LOCK:
        switch = _SWITCHES.get(loaded.model.encoder)
        if switch is None:
            switch = _SWITCHES[loaded.model.encoder] = AttentionSwitch(loaded)
        return switch


def _share_parameters(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Point ``target``'s parameters at ``source``'s of the same name (same shapes: NeMo copied them)."""
    for name, param in source.named_parameters():
        owner_path, _, leaf = name.rpartition(".")
        owner = target.get_submodule(owner_path) if owner_path else target
        current = getattr(owner, leaf, None)
        if isinstance(current, torch.Tensor) and current.shape == param.shape:
            setattr(owner, leaf, param)


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
    every conformer layer, every block of a long full-attention pass (:mod:`.blocked_attention`), every LSTM of the
    prediction network (called once per decoding step)."""
    encoder = model.encoder
    found: list[torch.nn.Module] = [m for m in encoder.pre_encode.modules()
                                    if isinstance(m, torch.nn.Conv1d | torch.nn.Conv2d)]
    found.extend(encoder.layers)
    found.extend(m for m in encoder.modules() if isinstance(m, blocked_attention.AttentionBlockCheckpoint))
    found.extend(m for m in model.decoder.modules() if isinstance(m, torch.nn.LSTM))
    return found
