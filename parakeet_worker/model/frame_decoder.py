"""TDT greedy decoding of encoder frames that continues each row's decoder state: the decoding half of streaming.

NeMo's label-looping computer decodes a batch of encoder frames from given decoder states and returns the states
after them; decoding chunk after chunk with the carried state is token-identical to decoding the frames at once.
:class:`FrameDecoder` owns its own decoding object (the model's config, greedy batched, with token durations), so
its computer — and any CUDA-graph buffers — is never shared with the offline path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from parakeet_worker.model.nemo_internals import build_decoding, label_looping_computer, native_rnn_kernels


@dataclass(frozen=True)
class Token:
    """A decoded token: vocabulary id and its span in absolute encoder frames (``end`` = start + TDT duration)."""

    id: int
    start: int
    end: int


class FrameDecoder:
    """Decode encoder frames with carried decoder states; not thread-safe (one owner thread)."""

    def __init__(self, model: Any) -> None:
        self.computer = label_looping_computer(build_decoding(model, timestamps=True, greedy_batch=True))

    @torch.inference_mode()
    def decode(self, encoded: torch.Tensor, lengths: torch.Tensor,
               decoder_states: Sequence[Any | None]) -> tuple[list[list[Token]], list[Any]]:
        """TDT-decode ``encoded`` (B, T, D) frames continuing each row's decoder state (None: a fresh stream).

        Returns the new tokens of each row (frames counted from the row's first decoded frame) and each row's
        decoder state after them. The given states are not modified.
        """
        batch = encoded.shape[0]
        if encoded.shape[1] == 0:  # NeMo needs at least one frame of storage; lengths of 0 decode nothing
            encoded = encoded.new_zeros(batch, 1, encoded.shape[2])
        prev = None
        if any(s is not None for s in decoder_states):
            prev = self.computer.merge_to_batched_state(list(decoder_states))
        with native_rnn_kernels(encoded.device):
            hyps, state = self.computer(encoded, lengths, prev)
        items = self.computer.split_batched_state(state)[:batch]  # CUDA graphs may pad the batch
        counts = hyps.current_lengths[:batch].tolist()
        ids = hyps.transcript[:batch].tolist()
        starts = hyps.timestamps[:batch].tolist()
        durations = hyps.token_durations[:batch].tolist() if hyps.token_durations is not None else None
        tokens: list[list[Token]] = []
        for b in range(batch):
            row = []
            for k in range(counts[b]):
                end = starts[b][k] + (durations[b][k] if durations is not None else 1)
                row.append(Token(int(ids[b][k]), int(starts[b][k]), int(end)))
            tokens.append(row)
        return tokens, items
