"""The CPU TDT loss used to train the test model agrees with NeMo's own reference implementation."""

from __future__ import annotations

import pytest
import torch
from nemo.collections.asr.losses.rnnt_pytorch import TDTLossPytorch

from testmodel.tdt_loss import TDTLossCPU

DURATIONS = [0, 1, 2, 3, 4]


def _random_case(seed: int, batch: int, max_t: int, max_u: int, vocab: int):
    gen = torch.Generator().manual_seed(seed)
    acts = torch.randn(batch, max_t, max_u + 1, vocab + 1 + len(DURATIONS), generator=gen, dtype=torch.float64)
    labels = torch.randint(0, vocab, (batch, max_u), generator=gen)
    act_lens = torch.randint(max(max_u // 2, 2), max_t + 1, (batch,), generator=gen)
    act_lens[0] = max_t
    label_lens = torch.randint(1, max_u + 1, (batch,), generator=gen)
    label_lens[0] = max_u
    return acts, labels, act_lens, label_lens


def _nemo_reference(monkeypatch: pytest.MonkeyPatch, sigma: float, acts, labels, act_lens, label_lens):
    # NeMo's reference hard-codes `.cuda()`; on this CPU-only machine make that a no-op for the call.
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    ref = TDTLossPytorch(blank=acts.shape[-1] - len(DURATIONS) - 1, durations=DURATIONS, reduction="none", sigma=sigma)
    return ref(acts=acts, labels=labels, act_lens=act_lens, label_lens=label_lens)


@pytest.mark.parametrize(("seed", "sigma"), [(0, 0.0), (1, 0.02), (2, 0.05)])
def test_value_and_gradient_match_nemo_reference(monkeypatch: pytest.MonkeyPatch, seed: int, sigma: float) -> None:
    acts, labels, act_lens, label_lens = _random_case(seed, batch=3, max_t=11, max_u=4, vocab=6)
    blank = acts.shape[-1] - len(DURATIONS) - 1

    ours_in = acts.clone().float().requires_grad_(True)
    ours = TDTLossCPU(blank=blank, durations=DURATIONS, sigma=sigma)(ours_in, labels, act_lens, label_lens)
    ours.sum().backward()

    ref_in = acts.clone().float().requires_grad_(True)
    ref = _nemo_reference(monkeypatch, sigma, ref_in, labels, act_lens, label_lens)
    ref.sum().backward()

    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert ours_in.grad is not None and ref_in.grad is not None
    assert ref_in.grad.abs().max() > 1e-3  # the comparison below is about real gradients
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-5, atol=1e-5)


def test_plugs_into_nemo_rnnt_loss_wrapper() -> None:
    """NeMo's RNNTLoss wrapper (which a stock model calls) accepts it as its inner loss and reduces per batch."""
    from nemo.collections.asr.losses.rnnt import RNNTLoss

    wrapper = RNNTLoss(num_classes=6, reduction="mean_batch", loss_name="tdt", loss_kwargs={"durations": DURATIONS})
    wrapper._loss = TDTLossCPU(blank=6, durations=DURATIONS, sigma=0.0)
    acts, labels, act_lens, label_lens = _random_case(3, batch=2, max_t=9, max_u=3, vocab=6)
    loss = wrapper(log_probs=acts.float(), targets=labels, input_lengths=act_lens, target_lengths=label_lens)
    per_utt = TDTLossCPU(blank=6, durations=DURATIONS)(acts.float(), labels, act_lens, label_lens)
    assert loss.ndim == 0
    torch.testing.assert_close(loss, per_utt.mean())


def test_rejects_durations_that_cannot_advance() -> None:
    with pytest.raises(ValueError, match="at least one value above 0"):
        TDTLossCPU(blank=0, durations=[0])
