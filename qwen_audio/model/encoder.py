"""The Whisper-style audio encoder of Qwen2-Audio (`audio_tower.*`).

The reference always runs 30 s (3000 mel frames -> 1500 conv frames) and masks the padding in
attention. We run only the frames a clip needs: a clip with L valid mel frames has
M = (L - 1) // 2 + 1 conv frames, and every conv frame below M reads mel frames below L + 2 only,
which `audio.prepare_audio` returns with the reference's values. Queries of valid frames never see
masked keys, so the outputs match while a 5 s clip costs a sixth of a 30 s one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AudioEncoderConfig


def conv_frames(num_mel_frames: int) -> int:
    """Conv2 (stride 2) output frames that hold real audio: M = (L - 1) // 2 + 1."""
    return (num_mel_frames - 1) // 2 + 1


def pooled_frames(num_mel_frames: int) -> int:
    """Audio embeddings after AvgPool1d(2): N = (M - 2) // 2 + 1."""
    return (conv_frames(num_mel_frames) - 2) // 2 + 1


class EncoderAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=True)
        self.k_proj = nn.Linear(dim, dim, bias=False)  # Whisper's keys carry no bias
        self.v_proj = nn.Linear(dim, dim, bias=True)
        self.out_proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        H = self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, hd)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, H, T, hd)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, C))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: AudioEncoderConfig) -> None:
        super().__init__()
        self.self_attn = EncoderAttention(cfg.d_model, cfg.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.d_model)
        self.fc1 = nn.Linear(cfg.d_model, cfg.encoder_ffn_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_dim, cfg.d_model)
        self.final_layer_norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), key_mask)
        h = self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))
        x = x + h
        if x.dtype == torch.float16:  # as the reference: keep fp16 activations finite
            bound = torch.finfo(torch.float16).max - 1000
            x = x.clamp(-bound, bound)
        return x


class AudioEncoder(nn.Module):
    def __init__(self, cfg: AudioEncoderConfig) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.d_model
        self.conv1 = nn.Conv1d(cfg.num_mel_bins, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(cfg.max_source_positions, d)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.layer_norm = nn.LayerNorm(d)
        self.gradient_checkpointing = False

    def forward(
        self, features: list[torch.Tensor], num_mel_frames: list[int]
    ) -> list[torch.Tensor]:
        """Encode clips of different lengths in one padded batch.

        features[i]: (n_mels, F_i) with F_i >= min(L_i + 2, 3000) frames; returns one
        (N_i, d_model) tensor per clip.
        """
        x, key_mask = self._embed(features, num_mel_frames)
        x = self._run_layers(x, key_mask, 0)
        return self._pool(x, num_mel_frames)

    def frame_states(
        self, features: list[torch.Tensor], num_mel_frames: list[int], num_layers: int
    ) -> list[torch.Tensor]:
        """The states after the first `num_layers` layers, one (M_i, d_model) tensor per clip:
        what a trainer with only the top layers trained can compute once and keep."""
        x, key_mask = self._embed(features, num_mel_frames)
        x = self._run_layers(x, key_mask, 0, num_layers)
        return [x[i, : conv_frames(n)] for i, n in enumerate(num_mel_frames)]

    def from_frame_states(
        self, states: list[torch.Tensor], num_mel_frames: list[int], first_layer: int
    ) -> list[torch.Tensor]:
        """The rest of `forward` from `frame_states(..., first_layer)`: the same outputs."""
        x = torch.nn.utils.rnn.pad_sequence(states, batch_first=True)  # (B, M, d)
        x = self._run_layers(x, self._key_mask([s.shape[0] for s in states], x.device), first_layer)
        return self._pool(x, num_mel_frames)

    def _embed(
        self, features: list[torch.Tensor], num_mel_frames: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Convolutions and positions: (B, M, d) conv frames and the key mask of the padding."""
        param = self.conv1.weight
        width = max(f.shape[1] for f in features)
        x = torch.zeros(len(features), features[0].shape[0], width, dtype=param.dtype)
        for i, f in enumerate(features):
            x[i, :, : f.shape[1]] = f  # zero padding, as the convolution's own padding
        x = x.to(param.device)  # (B, n_mels, F)
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))  # (B, d, ceil(F / 2))

        lengths = [conv_frames(n) for n in num_mel_frames]
        M = max(lengths)
        if M > self.config.max_source_positions:
            raise ValueError(f"audio window longer than the encoder's {M} positions")
        x = x[:, :, :M].transpose(1, 2) + self.embed_positions.weight[:M]  # (B, M, d)
        return x, self._key_mask(lengths, x.device)

    @staticmethod
    def _key_mask(lengths: list[int], device: torch.device) -> torch.Tensor | None:
        """(B, 1, 1, M) True at real frames, so padded keys are never attended; None if none."""
        M = max(lengths)
        if min(lengths) == M:
            return None
        valid = (
            torch.arange(M, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
        )
        return valid[:, None, None, :]

    def _run_layers(
        self, x: torch.Tensor, key_mask: torch.Tensor | None, start: int, stop: int | None = None
    ) -> torch.Tensor:
        for layer in self.layers[start:stop]:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, key_mask, use_reentrant=False)
            else:
                x = layer(x, key_mask)
        return x

    def _pool(self, x: torch.Tensor, num_mel_frames: list[int]) -> list[torch.Tensor]:
        x = F.avg_pool1d(x.transpose(1, 2), kernel_size=2, stride=2).transpose(1, 2)  # (B, M/2, d)
        x = self.layer_norm(x)
        return [x[i, : pooled_frames(n)] for i, n in enumerate(num_mel_frames)]
