"""Full (``rel_pos``) self-attention over long inputs, one block of query frames at a time.

NeMo's ``RelPositionMultiHeadAttention`` computes the scores of every query frame against every key frame in one
matmul, plus a (time x 2 time) positional score tensor: for a 10-minute file (7,500 encoder frames) one layer's
attention is a single operation of seconds on a CPU that nothing can interrupt — live streams on the same model
waited for it (issue 14) — and tensors of GB. Softmax is per query row, so the rows can be computed in blocks with
the same result up to float rounding; between blocks an :class:`AttentionBlockCheckpoint` is called, a no-op
module where an interruptible pass (:mod:`parakeet_worker.streaming.interruptible`) may hand the model back.

Only inference inputs longer than ``BLOCKED_MIN_FRAMES`` take this path; every streaming window and every ordinary
request goes through NeMo's own forward untouched. Installed once per encoder by
:func:`.nemo_internals.prepare_for_long_audio`.
"""

from __future__ import annotations

from typing import Any

import torch

BLOCKED_MIN_FRAMES = 2048  # encoder frames (80 ms): inputs up to 164 s keep NeMo's one-matmul attention
BLOCK_FRAMES = 256  # query frames per block: a fraction of a second of compute on a CPU for a 10-minute input


class AttentionBlockCheckpoint(torch.nn.Module):
    """Called between query blocks; a forward pre-hook on it is a checkpoint."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def install(encoder: torch.nn.Module) -> int:
    """Give each full-attention layer of ``encoder`` the blocked path for long inputs (once). Returns how many
    layers have it."""
    from nemo.collections.asr.parts.submodules.multi_head_attention import RelPositionMultiHeadAttention

    count = 0
    for layer in getattr(encoder, "layers", []):
        attn = layer.self_attn
        if isinstance(getattr(attn, "block_checkpoint", None), AttentionBlockCheckpoint):
            count += 1
            continue
        if type(attn) is not RelPositionMultiHeadAttention:  # local attention (Longformer) is linear already
            continue
        attn.add_module("block_checkpoint", AttentionBlockCheckpoint().train(attn.training))
        attn.forward = _blocked_forward_of(attn, attn.forward)
        count += 1
    return count


def _blocked_forward_of(attn: Any, original: Any) -> Any:
    def forward(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                pos_emb: torch.Tensor | None = None, cache: torch.Tensor | None = None) -> Any:
        long_self_attention = (cache is None and not attn.training and pos_emb is not None
                               and query.shape[1] > BLOCKED_MIN_FRAMES and query.shape == key.shape
                               and not torch.is_autocast_enabled())
        if not long_self_attention:
            return original(query, key, value, mask, pos_emb, cache)
        return blocked_attention(attn, query, key, value, mask, pos_emb)

    return forward


def blocked_attention(attn: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      mask: torch.Tensor | None, pos_emb: torch.Tensor, block: int = BLOCK_FRAMES) -> torch.Tensor:
    """NeMo's ``RelPositionMultiHeadAttention.forward`` (eval, no cache), ``block`` query frames at a time."""
    from nemo.collections.asr.parts.submodules.multi_head_attention import INF_VAL

    q, k, v = attn.forward_qkv(query, key, value)  # (batch, head, time, d_k)
    q = q.transpose(1, 2)
    batch, heads, time_k, d_k = k.shape
    p = attn.linear_pos(pos_emb).view(pos_emb.size(0), -1, heads, d_k).transpose(1, 2)  # (., head, 2T-1, d_k)
    q_u = (q + attn.pos_bias_u).transpose(1, 2)
    q_v = (q + attn.pos_bias_v).transpose(1, 2)
    k_t = k.transpose(-2, -1)
    outs = []
    for start in range(0, q_u.shape[2], block):
        stop = min(q_u.shape[2], start + block)
        n = stop - start
        attn.block_checkpoint(q_u)
        matrix_ac = torch.matmul(q_u[:, :, start:stop], k_t)  # (batch, head, n, T)
        # Row i of the whole matrix reads positional column (T-1-i)+j (NeMo's rel_shift); for this block's rows
        # that is the window [T-stop, 2T-1-start) of the positions, shifted one column left per row.
        raw = torch.matmul(q_v[:, :, start:stop], p[:, :, time_k - stop : 2 * time_k - 1 - start].transpose(-2, -1))
        raw = raw.contiguous()
        width = raw.shape[-1]  # n + T - 1
        matrix_bd = raw.as_strided((raw.shape[0], heads, n, time_k), (heads * n * width, n * width, width - 1, 1),
                                   raw.storage_offset() + n - 1)
        scores = (matrix_ac + matrix_bd) / attn.s_d_k
        if mask is not None:
            rows = mask[:, start:stop].unsqueeze(1)
            probs = torch.softmax(scores.masked_fill(rows, -INF_VAL), dim=-1).masked_fill(rows, 0.0)
        else:
            probs = torch.softmax(scores, dim=-1)
        outs.append(torch.matmul(probs, v))  # (batch, head, n, d_k)
    x = torch.cat(outs, dim=2).transpose(1, 2).reshape(batch, -1, heads * d_k)
    out: torch.Tensor = attn.linear_out(x)
    return out
