"""A vectorised PyTorch TDT (token-and-duration transducer) loss that runs on CPU.

NeMo 3.0.0 only implements the TDT loss for CUDA (``loss_name: tdt`` raises on CPU, and its pure-PyTorch
reference ``TDTLossPytorch`` hard-codes ``.cuda()`` and loops over every (t, u) cell in Python). This module
computes the same quantity with a loop over frames only: each frame's lattice row is a vector over label
positions, and the duration-0 transitions inside a row (a label emitted without advancing time) are resolved
with one ``logcumsumexp``. Gradients come from autograd.

Definitions follow the TDT paper and NeMo's reference: label logits and duration logits are normalised
separately (``log_softmax``), ``sigma`` is subtracted from the label log-probabilities (logit
under-normalisation), blank may not have duration 0, and the lattice ends with a blank that lands exactly on
the last frame.
"""

from __future__ import annotations

import torch


class TDTLossCPU(torch.nn.Module):
    """Per-utterance negative log-likelihood of a TDT lattice, shaped like NeMo's inner RNN-T loss objects.

    It is a drop-in for ``model.loss._loss`` inside a stock ``EncDecRNNTBPEModel``: NeMo's ``RNNTLoss`` wrapper
    calls it as ``_loss(acts=..., labels=..., act_lens=..., label_lens=...)`` with ``reduction`` set to None
    and reduces the per-utterance values itself.
    """

    def __init__(self, blank: int, durations: list[int], sigma: float = 0.0) -> None:
        super().__init__()
        if not durations or min(durations) < 0:
            raise ValueError(f"durations must be non-negative integers, got {durations}")
        if max(durations) == 0:
            raise ValueError("durations need at least one value above 0, or the lattice can never advance in time")
        self.blank = blank
        self.durations = list(durations)
        self.sigma = sigma
        self.reduction: str | None = None

    def forward(
        self, acts: torch.Tensor, labels: torch.Tensor, act_lens: torch.Tensor, label_lens: torch.Tensor
    ) -> torch.Tensor:
        """``acts``: (B, T, U+1, V+1+D) joint logits; returns the (B,) losses ``-log P(labels | audio)``."""
        n_dur = len(self.durations)
        batch, max_t, max_u1, _ = acts.shape
        acts = acts.float()
        label_lp = torch.log_softmax(acts[..., :-n_dur], dim=-1) - self.sigma
        dur_lp = torch.log_softmax(acts[..., -n_dur:], dim=-1)

        blank_lp = label_lp[..., self.blank]  # (B, T, U+1)
        max_u = max_u1 - 1
        safe_labels = labels[:, :max_u].long().clamp(0, label_lp.shape[-1] - 1)
        emit_lp = torch.gather(label_lp[:, :, :max_u, :], 3, safe_labels[:, None, :, None].expand(batch, max_t, max_u, 1))
        emit_lp = emit_lp.squeeze(3)  # (B, T, U): log P(label u+1 | t, u)

        emit0_n = self.durations.index(0) if 0 in self.durations else None
        moves = tuple((n, d) for n, d in enumerate(self.durations) if d > 0)
        log_likelihood = _TDTLattice.apply(blank_lp, emit_lp, dur_lp, act_lens.long(), label_lens.long(), moves, emit0_n)
        return -log_likelihood


def _alphas(blank_lp: torch.Tensor, emit_lp: torch.Tensor, dur_lp: torch.Tensor,
            moves: tuple[tuple[int, int], ...], emit0_n: int | None) -> torch.Tensor:
    """Forward variables ``alpha[b, t, u]``: log-probability of reaching frame t having emitted u labels."""
    batch, max_t, max_u1 = blank_lp.shape
    neg_inf_col = torch.full((batch, 1), float("-inf"), dtype=blank_lp.dtype)
    chain = None
    if emit0_n is not None:  # row-internal duration-0 emissions: C[t, u] = sum_{j<u} emit0[t, j]
        emit0 = emit_lp + dur_lp[:, :, : max_u1 - 1, emit0_n]
        chain = torch.cat([torch.zeros(batch, max_t, 1, dtype=blank_lp.dtype), torch.cumsum(emit0, dim=2)], dim=2)
    alpha = torch.empty(batch, max_t, max_u1, dtype=blank_lp.dtype)
    for t in range(max_t):
        if t == 0:
            base = torch.full((batch, max_u1), float("-inf"), dtype=blank_lp.dtype)
            base[:, 0] = 0.0
        else:
            terms = []
            for n, d in moves:
                if t - d < 0:
                    continue
                prev = alpha[:, t - d]
                terms.append(prev + blank_lp[:, t - d] + dur_lp[:, t - d, :, n])
                emit = prev[:, :-1] + emit_lp[:, t - d] + dur_lp[:, t - d, :-1, n]
                terms.append(torch.cat([neg_inf_col, emit], dim=1))
            base = torch.logsumexp(torch.stack(terms), dim=0)
        if chain is not None:
            c = chain[:, t]
            alpha[:, t] = c + torch.logcumsumexp(base - c, dim=1)
        else:
            alpha[:, t] = base
    return alpha


class _TDTLattice(torch.autograd.Function):
    """``log P(labels | audio)`` per utterance from the lattice's log-weights, with an alpha-beta backward.

    Inputs: ``blank_lp`` (B, T, U+1), ``emit_lp`` (B, T, U) (log-prob of label u+1 at (t, u)), ``dur_lp``
    (B, T, U+1, D); gradients are the posterior occupancies of the transitions each weight sits on.
    """

    @staticmethod
    def forward(ctx, blank_lp, emit_lp, dur_lp, act_lens, label_lens, moves, emit0_n):  # noqa: D102
        alpha = _alphas(blank_lp, emit_lp, dur_lp, moves, emit0_n)
        batch = blank_lp.shape[0]
        b_idx = torch.arange(batch)
        finals = []
        for n, d in moves:
            t_end = act_lens - d
            t_safe = t_end.clamp(min=0)
            term = alpha[b_idx, t_safe, label_lens] + blank_lp[b_idx, t_safe, label_lens] + dur_lp[b_idx, t_safe, label_lens, n]
            finals.append(torch.where(t_end >= 0, term, torch.full_like(term, float("-inf"))))
        log_likelihood = torch.logsumexp(torch.stack(finals), dim=0)
        ctx.save_for_backward(blank_lp, emit_lp, dur_lp, act_lens, label_lens, alpha, log_likelihood)
        ctx.moves, ctx.emit0_n = moves, emit0_n
        return log_likelihood

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        blank_lp, emit_lp, dur_lp, act_lens, label_lens, alpha, log_likelihood = ctx.saved_tensors
        moves, emit0_n = ctx.moves, ctx.emit0_n
        batch, max_t, max_u1 = blank_lp.shape
        max_d = max(d for _, d in moves)
        dtype = blank_lp.dtype
        neg_inf = float("-inf")
        t_grid = torch.arange(max_t + max_d)[None, :, None]
        u_grid = torch.arange(max_u1)[None, None, :]
        # beta[b, t, u]: log-probability of finishing from state (t, u); rows t >= T_b are not states (-inf).
        # Extended by max_d rows so every destination t + d indexes in range. The final blank lands on (T_b, U_b):
        # a separate terminal array, reachable by blank transitions only.
        beta = torch.full((batch, max_t + max_d, max_u1), neg_inf, dtype=dtype)
        terminal = torch.where((t_grid == act_lens[:, None, None]) & (u_grid == label_lens[:, None, None]),
                               torch.zeros((), dtype=dtype), torch.full((), neg_inf, dtype=dtype))
        valid_row = torch.arange(max_t)[None, :] < act_lens[:, None]  # (B, T)
        neg_inf_col = torch.full((batch, 1), neg_inf, dtype=dtype)
        chain = None
        if emit0_n is not None:
            emit0 = emit_lp + dur_lp[:, :, :-1, emit0_n]
            chain = torch.cat([torch.zeros(batch, max_t, 1, dtype=dtype), torch.cumsum(emit0, dim=2)], dim=2)
        for t in range(max_t - 1, -1, -1):
            terms = []
            for n, d in moves:
                dst = torch.logaddexp(beta[:, t + d], terminal[:, t + d])
                terms.append(blank_lp[:, t] + dur_lp[:, t, :, n] + dst)
                emit = emit_lp[:, t] + dur_lp[:, t, :-1, n] + beta[:, t + d, 1:]
                terms.append(torch.cat([emit, neg_inf_col], dim=1))
            base = torch.logsumexp(torch.stack(terms), dim=0)
            if chain is not None:  # beta[t, u] = logsumexp_{k >= u} (C[k] - C[u] + base[k])
                c = chain[:, t]
                row = torch.flip(torch.logcumsumexp(torch.flip(base + c, dims=[1]), dim=1), dims=[1]) - c
            else:
                row = base
            beta[:, t] = torch.where(valid_row[:, t, None], row, torch.full_like(row, neg_inf))

        scale = grad_out[:, None, None]
        log_p = log_likelihood[:, None, None]
        grad_blank = torch.zeros_like(blank_lp)
        grad_emit = torch.zeros_like(emit_lp)
        grad_dur = torch.zeros_like(dur_lp)
        for n, d in moves:
            dst_blank = torch.logaddexp(beta[:, d : d + max_t], terminal[:, d : d + max_t])
            post_blank = torch.exp(alpha + blank_lp + dur_lp[..., n] + dst_blank - log_p)
            post_emit = torch.exp(alpha[:, :, :-1] + emit_lp + dur_lp[:, :, :-1, n] + beta[:, d : d + max_t, 1:] - log_p)
            grad_blank += post_blank
            grad_emit += post_emit
            grad_dur[..., n] += post_blank
            grad_dur[:, :, :-1, n] += post_emit
        if emit0_n is not None:
            post_emit0 = torch.exp(alpha[:, :, :-1] + emit_lp + dur_lp[:, :, :-1, emit0_n] + beta[:, :max_t, 1:] - log_p)
            grad_emit += post_emit0
            grad_dur[:, :, :-1, emit0_n] += post_emit0
        return grad_blank * scale, grad_emit * scale, grad_dur * scale[..., None], None, None, None, None
