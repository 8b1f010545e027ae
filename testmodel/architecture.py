"""Parakeet-TDT model configurations: the real 0.6b-v3 topology, and the same topology scaled down for tests.

Both build a stock ``nemo.collections.asr.models.EncDecRNNTBPEModel`` (FastConformer encoder with dw_striding x8
subsampling, LSTM prediction net, TDT joint with durations [0, 1, 2, 3, 4], SentencePiece BPE tokenizer), so the
service loads and runs them through exactly the code path of the real checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
from omegaconf import DictConfig, OmegaConf

logger = logging.getLogger(__name__)

TDT_DURATIONS = [0, 1, 2, 3, 4]
SAMPLE_RATE_HZ = 16_000


@dataclass(frozen=True)
class Dimensions:
    d_model: int
    n_layers: int
    n_heads: int
    subsampling_channels: int
    pred_hidden: int
    joint_hidden: int
    vocab_size: int


# parakeet-tdt-0.6b-v3 (627,008,134 parameters with an 8192-token vocabulary).
FULL_SIZE = Dimensions(d_model=1024, n_layers=24, n_heads=8, subsampling_channels=256, pred_hidden=640,
                       joint_hidden=640, vocab_size=8192)
# The committed test model: same topology, small enough to train on 2 CPU cores in well under an hour.
TEST_SIZE = Dimensions(d_model=144, n_layers=4, n_heads=4, subsampling_channels=96, pred_hidden=160,
                       joint_hidden=160, vocab_size=128)


def train_tokenizer(sentences: list[str], out_dir: Path, vocab_size: int) -> Path:
    """Train a SentencePiece BPE tokenizer in NeMo's layout (``tokenizer.model`` + ``vocab.txt``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text_file = out_dir / "text.txt"
    text_file.write_text("\n".join(sentences) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(text_file), model_prefix=str(out_dir / "tokenizer"), vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, bos_id=-1, eos_id=-1, hard_vocab_limit=False, num_threads=2,
        minloglevel=2,
    )
    text_file.unlink()
    processor = spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    (out_dir / "vocab.txt").write_text("\n".join(pieces) + "\n")
    return out_dir


def model_config(dims: Dimensions, tokenizer_dir: Path, *, dropout: float = 0.1) -> DictConfig:
    """The model section of a Parakeet-TDT config with the given dimensions."""
    cfg = {
        "sample_rate": SAMPLE_RATE_HZ,
        "tokenizer": {"dir": str(tokenizer_dir), "type": "bpe"},
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": SAMPLE_RATE_HZ, "normalize": "per_feature", "window_size": 0.025, "window_stride": 0.01,
            "window": "hann", "features": 128, "n_fft": 512, "log": True, "frame_splicing": 1, "dither": 1e-5,
            "pad_to": 0, "pad_value": 0.0,
        },
        "spec_augment": {
            "_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
            "freq_masks": 2, "time_masks": 2, "freq_width": 27, "time_width": 0.05,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": 128, "feat_out": -1, "n_layers": dims.n_layers, "d_model": dims.d_model,
            "subsampling": "dw_striding", "subsampling_factor": 8, "subsampling_conv_channels": dims.subsampling_channels,
            "causal_downsampling": False, "ff_expansion_factor": 4, "self_attention_model": "rel_pos",
            "n_heads": dims.n_heads, "att_context_size": [-1, -1], "att_context_style": "regular", "xscaling": False,
            "untie_biases": True, "pos_emb_max_len": 5000, "conv_kernel_size": 9, "conv_norm_type": "batch_norm",
            "conv_context_size": None, "dropout": dropout, "dropout_pre_encoder": dropout, "dropout_emb": 0.0,
            "dropout_att": dropout, "use_bias": False,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder",
            "normalization_mode": None, "random_state_sampling": False, "blank_as_pad": True,
            "prednet": {"pred_hidden": dims.pred_hidden, "pred_rnn_layers": 2, "t_max": None, "dropout": dropout},
        },
        "joint": {
            "_target_": "nemo.collections.asr.modules.RNNTJoint",
            "log_softmax": None, "preserve_memory": False, "fuse_loss_wer": False, "fused_batch_size": 4,
            "jointnet": {"joint_hidden": dims.joint_hidden, "activation": "relu", "dropout": dropout},
            "num_extra_outputs": len(TDT_DURATIONS),
        },
        "decoding": {
            "strategy": "greedy_batch", "model_type": "tdt", "durations": TDT_DURATIONS,
            "greedy": {"max_symbols": 10},
        },
        "loss": {
            "loss_name": "tdt",
            "tdt_kwargs": {"fastemit_lambda": 0.0, "clamp": -1.0, "durations": TDT_DURATIONS, "sigma": 0.02,
                           "omega": 0.0},
        },
        "model_defaults": {
            "enc_hidden": dims.d_model, "pred_hidden": dims.pred_hidden, "joint_hidden": dims.joint_hidden,
            "tdt_durations": TDT_DURATIONS, "num_tdt_durations": len(TDT_DURATIONS),
        },
        "optim": {"name": "adamw", "lr": 1e-3},
    }
    return OmegaConf.create(cfg)


def build_model(dims: Dimensions, tokenizer_dir: Path, *, dropout: float = 0.1):  # -> EncDecRNNTBPEModel
    """A stock NeMo Parakeet-TDT model with random weights."""
    from nemo.collections.asr.models import EncDecRNNTBPEModel

    model = EncDecRNNTBPEModel(cfg=model_config(dims, tokenizer_dir, dropout=dropout))
    logger.info("built EncDecRNNTBPEModel with %s parameters", f"{sum(p.numel() for p in model.parameters()):,}")
    return model


def build_full_size_random(work_dir: Path):  # -> EncDecRNNTBPEModel
    """The full parakeet-tdt-0.6b-v3 architecture with random weights (627 M parameters), for benchmarks.

    Its tokenizer is trained on throw-away text, so token ids mean nothing, but every tensor shape and the
    compute per second of audio are those of the real model.
    """
    words = [f"w{i}x{j}" for i in range(400) for j in range(30)]
    lines = [" ".join(words[k:k + 20]) for k in range(0, len(words), 20)]
    tokenizer_dir = train_tokenizer(lines, work_dir / "tokenizer-full", FULL_SIZE.vocab_size)
    return build_model(FULL_SIZE, tokenizer_dir, dropout=0.0)
