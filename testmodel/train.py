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
    # Cut-point variety (issue 18): each time an example is drawn, its silences are redrawn (see ``recut``), so the
    # model learns that where a client, a VAD or a final pass cuts the audio does not change the words.
    cut_variety: bool = False


SAMPLE_RATE_HZ = 16_000


@dataclass
class Example:
    audio: np.ndarray  # int16 mono 16 kHz
    tokens: list[int]
    speech: tuple[int, int] | None = None  # first and last + 1 sample of the rendered speech (without the padding)

    @property
    def seconds(self) -> float:
        return self.audio.shape[0] / SAMPLE_RATE_HZ


def _floor(audio: np.ndarray, start: int, end: int) -> float:
    """RMS of the example's rendered silence (its noise floor), in int16 units."""
    edges = np.concatenate([audio[:start], audio[end:]]).astype(np.float64)
    return float(np.sqrt(np.mean(edges**2))) if edges.size else 0.0


def recut(example: Example, rng: np.random.Generator) -> np.ndarray:
    """The example's speech with freshly drawn silences, as the service's pipelines cut audio:

    - leading: none (a VAD or a client that starts on the first word) one time in five, else 0-1 s;
    - trailing: 0-0.4 s (a final pass 0.16 s into a pause, a finalize on the last word) or 0.4-1.5 s;
    - silence as the clip's own noise floor (fresh noise of its level) or, one time in five, digital zeros;
    - one time in four, 0.2-1.5 s of digital zeros appended after the trailing silence (a client padding).
    """
    if example.speech is None:
        return example.audio
    start, end = example.speech
    floor = _floor(example.audio, start, end)

    def silence(seconds: float) -> np.ndarray:
        n = int(seconds * SAMPLE_RATE_HZ)
        if floor == 0.0 or rng.random() < 0.2:
            return np.zeros(n, np.float64)
        return rng.standard_normal(n) * floor

    lead = 0.0 if rng.random() < 0.2 else rng.uniform(0.0, 1.0)
    trail = rng.uniform(0.0, 0.4) if rng.random() < 0.5 else rng.uniform(0.4, 1.5)
    parts = [silence(lead), example.audio[start:end].astype(np.float64), silence(trail)]
    if rng.random() < 0.25:
        parts.append(np.zeros(int(rng.uniform(0.2, 1.5) * SAMPLE_RATE_HZ)))
    return np.clip(np.round(np.concatenate(parts)), -32768, 32767).astype(np.int16)


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


def collate(examples: list[Example], idx: list[int],
            cut_rng: np.random.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """A padded batch; with ``cut_rng`` every example's silences are redrawn (:func:`recut`)."""
    items = [examples[i] for i in idx]
    waves = [recut(e, cut_rng) if cut_rng is not None else e.audio for e in items]
    n_samples = max(w.shape[0] for w in waves)
    n_tokens = max(len(e.tokens) for e in items)
    audio = torch.zeros(len(items), n_samples)
    tokens = torch.zeros(len(items), n_tokens, dtype=torch.long)
    for k, (e, w) in enumerate(zip(items, waves, strict=True)):
        audio[k, : w.shape[0]] = torch.from_numpy(w.astype(np.float32) / 32768.0)
        tokens[k, : len(e.tokens)] = torch.tensor(e.tokens)
    audio_len = torch.tensor([w.shape[0] for w in waves])
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
    cut_rng = np.random.default_rng(opts.seed) if opts.cut_variety else None
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
        audio, audio_len, tokens, token_len = collate(source, batch, cut_rng)
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
