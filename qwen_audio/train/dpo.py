"""Direct preference optimisation on (chosen, rejected) answer pairs.

For each pair, with log-probabilities summed over the answer tokens, policy pi and frozen
reference ref (the base weights):

    loss = -log sigmoid(beta * ((pi(chosen) - ref(chosen)) - (pi(rejected) - ref(rejected))))

The reference of a LoRA run is the same model with its adapters switched off, so it costs no
memory; a full-finetuning run keeps a frozen copy of the starting weights. A packed batch holds
each pair as two consecutive sequences (chosen, then rejected) sharing one audio encoding.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .batching import PackedBatch
from .data import RowInfo
from .lora import adapters_disabled, has_lora


@dataclass(frozen=True)
class DPOOptions:
    beta: float = 0.1  # how far the policy may move from the reference (higher: less)


def sequence_logps(token_logps: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """(n,) per-token log-probabilities -> (num_seqs,) sums per sequence."""
    out = torch.zeros(batch.num_seqs, dtype=token_logps.dtype, device=token_logps.device)
    return out.index_add(0, batch.pred_seq, token_logps)


def make_reference(model: nn.Module, forward: Callable) -> Callable[[PackedBatch], torch.Tensor]:
    """The reference's token log-probabilities for a batch, computed without gradients.

    `forward(model, batch)` is the training forward. Call this before training starts: for a
    full-finetuning run it copies the weights as they are now.
    """
    if has_lora(model):

        def lora_reference(batch: PackedBatch) -> torch.Tensor:
            with torch.no_grad(), adapters_disabled(model):
                return forward(model, batch)

        return lora_reference
    frozen = copy.deepcopy(model).eval().requires_grad_(False)

    def frozen_reference(batch: PackedBatch) -> torch.Tensor:
        with torch.no_grad():
            return forward(frozen, batch)

    return frozen_reference


class DPOObjective:
    """Loss of a micro-batch of pairs, summed (the trainer divides by the pairs per step)."""

    def __init__(self, options: DPOOptions, reference: Callable[[PackedBatch], torch.Tensor]):
        self.beta = options.beta
        self.reference = reference

    @staticmethod
    def normalizer(rows: list[RowInfo]) -> float:
        return float(len(rows))

    def __call__(
        self, module: nn.Module, batch: PackedBatch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        policy = sequence_logps(module(batch), batch)
        ref = sequence_logps(self.reference(batch), batch)
        chosen = policy[0::2] - ref[0::2]
        rejected = policy[1::2] - ref[1::2]
        margin = self.beta * (chosen - rejected)  # (pairs,) the implicit reward margin
        loss = -F.logsigmoid(margin).sum()
        metrics = {
            "reward_margin": margin.detach().sum(),
            "reward_accuracy": (margin.detach() > 0).float().sum(),
        }
        return loss, metrics
