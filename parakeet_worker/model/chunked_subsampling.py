"""Run the encoder's convolutional subsampling in time chunks, so hours of audio need bounded memory.

NeMo's ``ConvSubsampling`` (dw_striding x8) runs its first full conv2d over the whole input at once: for a 3-hour
recording that is one (1, C, 540k, 64) tensor of many GB, and its ``subsampling_conv_chunking_factor`` only splits
to dodge the 2**31 indexing limit, not to save memory (docs/BENCHMARKS.md, "Long audio: 3 hours"). The
convolutions are local in time, so the same output can be computed window by window: each window of
``chunk_frames`` feature frames is run with ``margin_frames`` of real neighbouring frames on both sides (more
than the stack's receptive field), and only the window's own output frames are kept. Interior frames are then
the same as the one-pass result up to float rounding; the conformer layers after it (local attention for long
inputs) are linear in length anyway.

:class:`ChunkedSubsampling` wraps the model's ``encoder.pre_encode`` once, when the engine takes the model
(:func:`.nemo_internals.prepare_for_long_audio`); short inputs (every streaming window and every ordinary
request) go through the original module untouched.
"""

from __future__ import annotations

from typing import Any

import torch

DEFAULT_CHUNK_FRAMES = 6000  # 60 s of 10 ms feature frames per window
DEFAULT_MARGIN_FRAMES = 64  # 0.64 s each side; the dw_striding x8 stack looks at most ~15 frames away


class ChunkedSubsampling(torch.nn.Module):
    """A drop-in for ``ConformerEncoder.pre_encode``: ``forward(x, lengths)`` with ``x`` (B, T, features)."""

    def __init__(self, inner: torch.nn.Module, chunk_frames: int = DEFAULT_CHUNK_FRAMES,
                 margin_frames: int = DEFAULT_MARGIN_FRAMES) -> None:
        super().__init__()
        factor = int(getattr(inner, "subsampling_factor", 0) or 0)
        if factor < 1:
            raise ValueError(f"{type(inner).__name__} has no subsampling_factor; cannot chunk it")
        if chunk_frames % factor or margin_frames % factor or chunk_frames <= 0 or margin_frames < 0:
            raise ValueError(f"chunk_frames and margin_frames must be non-negative multiples of the subsampling "
                             f"factor {factor} (chunk_frames > 0), got {chunk_frames} and {margin_frames}")
        self.inner = inner
        self.factor = factor
        self.chunk_frames = chunk_frames
        self.margin_frames = margin_frames
        self.train(inner.training)  # a new Module starts in train mode: follow the one it wraps (eval when served)

    def __getattr__(self, name: str) -> Any:  # NeMo reads attributes of pre_encode (e.g. for streaming caches)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = x.shape[1]
        if total <= self.chunk_frames + 2 * self.margin_frames:
            return self.inner(x=x, lengths=lengths)
        out_lengths = self._out_lengths(lengths).to(lengths.dtype)
        pieces = []
        for start in range(0, total, self.chunk_frames):
            lo = max(0, start - self.margin_frames)
            hi = min(total, start + self.chunk_frames + self.margin_frames)
            piece_lengths = (lengths - lo).clamp(min=0, max=hi - lo)
            # a row already over in this window still needs one valid frame for NeMo's masks; its frames here
            # lie past its length and are masked by the encoder
            piece_lengths = piece_lengths.clamp(min=1)
            y, _ = self.inner(x=x[:, lo:hi], lengths=piece_lengths)
            first = (start - lo) // self.factor
            count = (min(start + self.chunk_frames, total) - start + self.factor - 1) // self.factor
            pieces.append(y[:, first : first + count])
        out = torch.cat(pieces, dim=1)
        return out[:, : int(self._out_lengths(torch.tensor([total]))[0])], out_lengths

    def _out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        from nemo.collections.asr.parts.submodules.subsampling import calc_length

        inner = self.inner
        return calc_length(lengths, all_paddings=inner._left_padding + inner._right_padding,
                           kernel_size=inner._kernel_size, stride=inner._stride, ceil_mode=inner._ceil_mode,
                           repeat_num=inner._sampling_num)


def install(encoder: torch.nn.Module, chunk_frames: int = DEFAULT_CHUNK_FRAMES,
            margin_frames: int = DEFAULT_MARGIN_FRAMES) -> bool:
    """Wrap ``encoder.pre_encode`` (once; a second call changes nothing). False when the encoder has no
    convolutional subsampling to wrap."""
    pre = getattr(encoder, "pre_encode", None)
    if isinstance(pre, ChunkedSubsampling):
        return True
    if pre is None or not hasattr(pre, "subsampling_factor") or not hasattr(pre, "_sampling_num"):
        return False
    encoder.pre_encode = ChunkedSubsampling(pre, chunk_frames, margin_frames)
    return True
