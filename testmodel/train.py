"""Train a stock NeMo Parakeet-TDT model on CPU with the vectorised TDT loss.

A plain PyTorch loop over NeMo's own modules (the same calls as ``EncDecRNNTModel.training_step``: encoder
forward with SpecAugment, prediction net, joint, ``model.loss``), with the CUDA-only TDT loss object replaced by
:class:`testmodel.tdt_loss.TDTLossCPU`. Batches are bucketed by duration so little compute goes to padding.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from testmodel.tdt_loss import TDTLossCPU

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    steps: int = 2600
    batch_audio_s: float = 64.0  # padded seconds of audio per batch
    max_batch_items: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-3
    warmup_steps: int = 200
    grad_clip: float = 1.0
    eval_every: int = 100
    seed: int = 1234
    # Curriculum: the first steps see only short utterances, where the transducer finds its alignments quickly
    # (without it, a run on 1-20 s utterances sat at 100 % dev WER for 400+ steps).
    # Bootstrap: the first steps train on short grammar-free utterances of a 46-word vocabulary (the same tokenizer),
    # where the encoder finds its acoustic alignment quickly; the full corpus then builds on it.
    bootstrap_steps: int = 550
    curriculum_steps: int = 200
    curriculum_max_s: float = 5.0
    # Auxiliary CTC loss on the encoder (a training-only linear head, discarded afterwards), weighted as in
    # NeMo's hybrid TDT-CTC models: it makes the encoder's frames predictive of tokens early, which is what the
    # transducer needs to leave its blank-only plateau (two runs without it stayed near 100 % dev WER for 500 steps).
    ctc_weight: float = 0.0
    max_minutes: float = 50.0  # safety net: stop (and say so) rather than overrun the recipe's time budget


@dataclass
class Example:
    audio: np.ndarray  # int16 mono 16 kHz
    tokens: list[int]

    @property
    def seconds(self) -> float:
        return self.audio.shape[0] / 16_000


def install_cpu_tdt_loss(model) -> None:  # model: EncDecRNNTBPEModel
    """Swap NeMo's CUDA-only TDT loss for the CPU implementation, keeping NeMo's loss wrapper and reduction."""
    inner = model.loss._loss
    model.loss._loss = TDTLossCPU(blank=inner.blank, durations=list(inner.durations), sigma=float(inner.sigma))


def make_batches(examples: list[Example], opts: TrainOptions, rng: random.Random,
                 max_seconds: float = float("inf")) -> list[list[int]]:
    """Bucket by duration: sorted runs of similar length, capped by padded seconds and item count."""
    pool = [i for i in range(len(examples)) if examples[i].seconds <= max_seconds]
    order = sorted(pool, key=lambda i: examples[i].seconds + rng.random() * 0.3)
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = max([examples[j].seconds for j in current] + [examples[i].seconds])
        if current and (longest * (len(current) + 1) > opts.batch_audio_s or len(current) >= opts.max_batch_items):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def collate(examples: list[Example], idx: list[int]) -> tuple[torch.Tensor, ...]:
    items = [examples[i] for i in idx]
    n_samples = max(e.audio.shape[0] for e in items)
    n_tokens = max(len(e.tokens) for e in items)
    audio = torch.zeros(len(items), n_samples)
    tokens = torch.zeros(len(items), n_tokens, dtype=torch.long)
    for k, e in enumerate(items):
        audio[k, : e.audio.shape[0]] = torch.from_numpy(e.audio.astype(np.float32) / 32768.0)
        tokens[k, : len(e.tokens)] = torch.tensor(e.tokens)
    audio_len = torch.tensor([e.audio.shape[0] for e in items])
    token_len = torch.tensor([len(e.tokens) for e in items])
    return audio, audio_len, tokens, token_len


def lr_at(step: int, opts: TrainOptions, budget_used: float = 0.0) -> float:
    """Linear warm-up, then a cosine decay to 2 % of the peak that ends at the last step or when the time budget
    is spent, whichever comes first (``budget_used``: fraction of ``max_minutes`` elapsed).

    Annealing by the clock matters here: a run cut by the budget halfway through a step-based cosine would stop
    at half the peak learning rate and never get the annealing phase, where most of the final WER gain is made.
    """
    if step < opts.warmup_steps:
        return opts.lr * (step + 1) / opts.warmup_steps
    progress = max((step - opts.warmup_steps) / max(1, opts.steps - opts.warmup_steps), budget_used)
    return opts.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train(
    model,
    examples: list[Example],
    opts: TrainOptions,
    evaluate: Callable[[int], float] | None = None,
    bootstrap: list[Example] | None = None,
) -> list[tuple[int, float, float]]:
    """Train in place; returns the curve as (step, minutes elapsed, dev WER %) rows."""
    torch.manual_seed(opts.seed)
    rng = random.Random(opts.seed)
    install_cpu_tdt_loss(model)
    blank = model.loss._loss.blank
    ctc_head = torch.nn.Linear(model.cfg.encoder.d_model, blank + 1)
    params = [p for p in model.parameters() if p.requires_grad] + list(ctc_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=opts.lr, betas=(0.9, 0.98), weight_decay=opts.weight_decay)
    curve: list[tuple[int, float, float]] = []
    batches: list[list[int]] = []
    short_batches: list[list[int]] = []
    boot_batches: list[list[int]] = []
    boot = bootstrap or []
    start = time.monotonic()
    running = 0.0
    model.train()
    for step in range(opts.steps):
        source = examples
        if step < opts.bootstrap_steps and boot:
            if not boot_batches:
                boot_batches = make_batches(boot, opts, rng)
            batch, source = boot_batches.pop(), boot
        elif step < opts.bootstrap_steps + opts.curriculum_steps:
            if not short_batches:
                short_batches = make_batches(examples, opts, rng, opts.curriculum_max_s)
            batch = short_batches.pop()
        else:
            if not batches:
                batches = make_batches(examples, opts, rng)
            batch = batches.pop()
        audio, audio_len, tokens, token_len = collate(source, batch)
        budget_used = (time.monotonic() - start) / 60 / opts.max_minutes
        lr = lr_at(step, opts, budget_used)
        for group in optimizer.param_groups:
            group["lr"] = lr
        encoded, encoded_len = model.forward(input_signal=audio, input_signal_length=audio_len)
        decoder_out, target_len, _ = model.decoder(targets=tokens, target_length=token_len)
        joint = model.joint(encoder_outputs=encoded, decoder_outputs=decoder_out)
        tdt = model.loss(log_probs=joint, targets=tokens, input_lengths=encoded_len, target_lengths=target_len)
        ctc = torch.zeros(())
        if opts.ctc_weight > 0:
            ctc_log_probs = torch.log_softmax(ctc_head(encoded.transpose(1, 2)), dim=-1).transpose(0, 1)
            ctc = torch.nn.functional.ctc_loss(ctc_log_probs, tokens, encoded_len, token_len, blank=blank,
                                               reduction="sum", zero_infinity=True) / tokens.shape[0]
        loss = (1 - opts.ctc_weight) * tdt + opts.ctc_weight * ctc
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
        optimizer.step()
        running = 0.98 * running + 0.02 * tdt.item() if step else tdt.item()
        if step % 25 == 0:
            logger.info("step %d/%d TDT loss %.3f (CTC %.3f) lr %.2e %.1f min", step, opts.steps, running, ctc.item(),
                        lr, (time.monotonic() - start) / 60)
        if evaluate is not None and ((step + 1) % opts.eval_every == 0 or step + 1 == opts.steps):
            wer = evaluate(step + 1)
            model.train()
            minutes = (time.monotonic() - start) / 60
            curve.append((step + 1, minutes, wer))
            logger.info("WER curve: step %d, %.1f min, dev WER %.2f %%", step + 1, minutes, wer)
        if (time.monotonic() - start) / 60 > opts.max_minutes:
            logger.warning("stopping at step %d of %d: the %.0f-minute training budget is spent", step + 1,
                           opts.steps, opts.max_minutes)
            if evaluate is not None and (not curve or curve[-1][0] != step + 1):
                curve.append((step + 1, (time.monotonic() - start) / 60, evaluate(step + 1)))
            break
    model.eval()
    return curve
