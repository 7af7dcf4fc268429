"""The training forward: a packed batch -> the log-probability of every trained token.

It is the inference forward (`encode_audio`, the packed decoder, `logits`) evaluated only at
the rows that predict a trained token, so the (tokens x vocab) logits of a long prompt are
never built. The audio encoder runs without gradients unless part of it is trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model.attention import AttentionBatch
from .batching import PackedBatch
from .data import RowInfo


class EncoderCache:
    """The frozen part of the audio encoder's output for every clip seen so far, keyed by the
    clip's content hash: each clip goes through it once per run instead of once per row and
    epoch (`--cache-encoder`).

    With `trained_top_layers` = 0 the whole encoder is frozen and its output is kept (about 25 x
    d_model floats per second of audio). With N > 0 the top N layers are trained: the cache keeps
    the states entering them (50 x d_model floats per second) and runs those layers every step.
    Valid only while the frozen layers do not change.
    """

    def __init__(self, trained_top_layers: int = 0) -> None:
        self.trained_top_layers = trained_top_layers
        self._outputs: dict[bytes, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._outputs)

    def encode(self, tower: nn.Module, batch: PackedBatch) -> list[torch.Tensor]:
        """The encoder output of every clip of the batch: [(N_i, d_model)], in `features` order."""
        first_trained = len(tower.layers) - self.trained_top_layers
        missing = [i for i, key in enumerate(batch.clip_keys) if key not in self._outputs]
        if missing:
            features = [batch.features[i] for i in missing]
            frames = [batch.num_frames[i] for i in missing]
            with torch.no_grad():
                if self.trained_top_layers:
                    encoded = tower.frame_states(features, frames, first_trained)
                else:
                    encoded = tower(features, frames)
            for i, out in zip(missing, encoded):
                self._outputs[batch.clip_keys[i]] = out
        kept = [self._outputs[key] for key in batch.clip_keys]
        if not self.trained_top_layers:
            return kept
        return tower.from_frame_states(kept, batch.num_frames, first_trained)


def token_logprobs(
    model: nn.Module, batch: PackedBatch, encoder_cache: EncoderCache | None = None
) -> torch.Tensor:
    """Log-probability of every trained token of a packed batch: (n,) float32."""
    audio = None
    if batch.features:
        if encoder_cache is not None:
            encoded = encoder_cache.encode(model.audio_tower, batch)  # [(N_i, d_model)]
            projected = model.multi_modal_projector(torch.cat(encoded))  # (sum N, hidden)
            clips = list(projected.split([e.shape[0] for e in encoded]))
        else:
            params = (*model.audio_tower.parameters(), *model.multi_modal_projector.parameters())
            needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in params)
            with torch.set_grad_enabled(needs_grad):
                clips = model.encode_audio(batch.features, batch.num_frames)  # [(N_i, hidden)]
        audio = torch.cat([clips[i] for i in batch.clip_index])  # (A, hidden)
    hidden = model(batch.input_ids, batch.positions, AttentionBatch(batch.seq_lens), audio)
    logits = model.logits(hidden[batch.pred_rows])  # (n, vocab) float32, trained rows only
    return -F.cross_entropy(logits, batch.targets, reduction="none")


class TrainForward(nn.Module):
    """The model with `token_logprobs` as its forward, for DDP / FSDP to wrap."""

    def __init__(self, model: nn.Module, encoder_cache: EncoderCache | None = None) -> None:
        super().__init__()
        self.model = model
        self.encoder_cache = encoder_cache

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        return token_logprobs(self.model, batch, self.encoder_cache)


class SFTObjective:
    """Negative log-likelihood of the trained tokens, summed over a micro-batch."""

    @staticmethod
    def normalizer(rows: list[RowInfo]) -> float:
        return float(sum(r.num_targets for r in rows))

    def __call__(self, module: nn.Module, batch: PackedBatch):
        return -module(batch).sum(), {}
