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

        neg_inf = torch.tensor(float("-inf"), dtype=acts.dtype)
        zero_col = torch.zeros(batch, max_t, 1, dtype=acts.dtype)
        # Row-internal duration-0 emissions: cumulative log-prob along u, C[t, u] = sum_{j<u} emit0[t, j].
        if 0 in self.durations:
            emit0 = emit_lp + dur_lp[:, :, :max_u, self.durations.index(0)]
            chain = torch.cat([zero_col, torch.cumsum(emit0, dim=2)], dim=2)  # (B, T, U+1)
        else:
            chain = None

        moves = [(n, d) for n, d in enumerate(self.durations) if d > 0]
        alphas: list[torch.Tensor] = []
        for t in range(max_t):
            if t == 0:
                base = torch.full((batch, max_u1), float("-inf"), dtype=acts.dtype)
                base[:, 0] = 0.0
            else:
                terms = []
                for n, d in moves:
                    if t - d < 0:
                        continue
                    prev = alphas[t - d]
                    terms.append(prev + blank_lp[:, t - d] + dur_lp[:, t - d, :, n])
                    emit = prev[:, :-1] + emit_lp[:, t - d] + dur_lp[:, t - d, :max_u, n]
                    terms.append(torch.cat([neg_inf.expand(batch, 1), emit], dim=1))
                base = torch.logsumexp(torch.stack(terms), dim=0)
            if chain is not None:
                c = chain[:, t]
                row = c + torch.logcumsumexp(base - c, dim=1)
            else:
                row = base
            alphas.append(row)
        alpha = torch.stack(alphas, dim=1)  # (B, T, U+1)

        act_lens = act_lens.long()
        label_lens = label_lens.long()
        b_idx = torch.arange(batch)
        finals = []
        for n, d in moves:
            t_end = act_lens - d
            valid = t_end >= 0
            t_safe = t_end.clamp(min=0)
            term = (
                alpha[b_idx, t_safe, label_lens]
                + blank_lp[b_idx, t_safe, label_lens]
                + dur_lp[b_idx, t_safe, label_lens, n]
            )
            finals.append(torch.where(valid, term, neg_inf))
        log_likelihood = torch.logsumexp(torch.stack(finals), dim=0)
        return -log_likelihood
