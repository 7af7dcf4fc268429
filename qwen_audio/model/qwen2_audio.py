"""Qwen2-Audio: audio encoder -> linear projector -> Qwen2 decoder.

Submodule names equal the hub checkpoint's key prefixes (`audio_tower`, `multi_modal_projector`,
`language_model`). This module only computes; weights come from `loader.py`, sampling lives in
`engine/`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .attention import AttentionBatch
from .encoder import AudioEncoder
from .qwen2 import Qwen2ForCausalLM


class MultiModalProjector(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(cfg.audio.d_model, cfg.text.hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class Qwen2AudioForConditionalGeneration(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.audio_tower = AudioEncoder(config.audio)
        self.multi_modal_projector = MultiModalProjector(config)
        self.language_model = Qwen2ForCausalLM(config.text)

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype (the norms'): the weights may be 16-bit or packed below it."""
        return self.language_model.model.norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.language_model.model.embed_tokens.weight.device

    def encode_audio(
        self, features: list[torch.Tensor], num_mel_frames: list[int]
    ) -> list[torch.Tensor]:
        """Mel features of several clips -> one (N_i, hidden) embedding tensor per clip."""
        if not features:
            return []
        return self.project_audio(self.audio_tower(features, num_mel_frames))

    def project_audio(self, encoded: list[torch.Tensor]) -> list[torch.Tensor]:
        """The audio tower's (N_i, d_model) outputs -> (N_i, hidden) embeddings."""
        lengths = [e.shape[0] for e in encoded]
        projected = self.multi_modal_projector(torch.cat(encoded))  # (sum N, hidden)
        return list(projected.split(lengths))

    def embed(
        self,
        input_ids: torch.Tensor,
        audio_embeds: torch.Tensor | None,
        audio_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings (T, hidden) with the audio rows replaced, in order, by audio.

        `audio_mask` marks the rows that hold audio; by default every `<|AUDIO|>` id does. The
        engine passes it explicitly, because a generated `<|AUDIO|>` token is ordinary text to
        the model (the reference embeds it as a token too).
        """
        x = self.language_model.model.embed_tokens(input_ids).to(self.dtype)  # table may be 16-bit
        if audio_mask is None:
            audio_mask = input_ids == self.config.audio_token_index
        count = int(audio_mask.sum())
        given = 0 if audio_embeds is None else audio_embeds.shape[0]
        if count != given:
            raise ValueError(
                f"{count} audio position(s) in the input but {given} audio embedding(s)"
            )
        if count:
            x = x.masked_scatter(audio_mask[:, None], audio_embeds.to(x.dtype))
        return x

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        batch: AttentionBatch,
        audio_embeds: torch.Tensor | None = None,
        audio_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Packed ids (T,) -> final hidden states (T, hidden); use `logits` on the rows needed."""
        x = self.embed(input_ids, audio_embeds, audio_mask)
        return self.language_model(x, positions, batch)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.language_model.logits(hidden)
