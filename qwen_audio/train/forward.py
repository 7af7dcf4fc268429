"""The training forward: a packed batch -> the log-probability of every trained token.

It is the inference forward (`encode_audio`, the packed decoder, `logits`) evaluated only at
the rows that predict a trained token, so the (tokens x vocab) logits of a long prompt are
never built. The audio encoder runs without gradients unless part of it is trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model.kv_cache import AttentionBatch
from .batching import PackedBatch
from .data import RowInfo


def token_logprobs(model: nn.Module, batch: PackedBatch) -> torch.Tensor:
    """Log-probability of every trained token of a packed batch: (n,) float32."""
    audio = None
    if batch.features:
        audio_params = (*model.audio_tower.parameters(), *model.multi_modal_projector.parameters())
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in audio_params)
        with torch.set_grad_enabled(needs_grad):
            clips = model.encode_audio(batch.features, batch.num_frames)  # [(N_i, hidden)]
        audio = torch.cat([clips[i] for i in batch.clip_index])  # (A, hidden)
    hidden = model(batch.input_ids, batch.positions, AttentionBatch(batch.seq_lens), audio)
    logits = model.logits(hidden[batch.pred_rows])  # (n, vocab) float32, trained rows only
    return -F.cross_entropy(logits, batch.targets, reduction="none")


class TrainForward(nn.Module):
    """The model with `token_logprobs` as its forward, for DDP / FSDP to wrap."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        return token_logprobs(self.model, batch)


class SFTObjective:
    """Negative log-likelihood of the trained tokens, summed over a micro-batch."""

    @staticmethod
    def normalizer(rows: list[RowInfo]) -> float:
        return float(sum(r.num_targets for r in rows))

    def __call__(self, module: nn.Module, batch: PackedBatch):
        return -module(batch).sum(), {}
