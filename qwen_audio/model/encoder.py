"""The Whisper-style audio encoder of Qwen2-Audio (`audio_tower.*`).

The reference always runs 30 s (3000 mel frames -> 1500 conv frames) and masks the padding in
attention. We run only the frames a clip needs: a clip with L valid mel frames has
M = (L - 1) // 2 + 1 conv frames, and every conv frame below M reads mel frames below L + 2 only,
which `audio.prepare_audio` returns with the reference's values. Queries of valid frames never see
masked keys, so the outputs match while a 5 s clip costs a sixth of a 30 s one.

Clips of a batch are packed: the frames of all clips are rows of one (T, d) tensor, so the
linear layers, which are most of the work, never compute padding (in a training batch of 1-12 s
clips half of a padded grid is padding). Only attention moves the frames onto a (clips x longest)
grid, with the padded keys masked.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AudioEncoderConfig
from .attention import PaddedLayout


def conv_frames(num_mel_frames: int) -> int:
    """Conv2 (stride 2) output frames that hold real audio: M = (L - 1) // 2 + 1."""
    return (num_mel_frames - 1) // 2 + 1


def pooled_frames(num_mel_frames: int) -> int:
    """Audio embeddings after AvgPool1d(2): N = (M - 2) // 2 + 1."""
    return (conv_frames(num_mel_frames) - 2) // 2 + 1


class PartialEncoding(NamedTuple):
    """Clips part-way through the encoder: their packed frame states after `next_layer` layers
    (see `AudioEncoder.begin`)."""

    states: torch.Tensor  # (T, d_model) packed frames
    layout: FrameLayout
    num_mel_frames: list[int]
    next_layer: int


class FrameLayout(NamedTuple):
    """The clips of a packed batch of frames and, when they differ in length, their padded grid."""

    lengths: list[int]  # frames of each clip, in packing order
    grid: PaddedLayout | None  # None when no clip is padded: the packed rows are the grid

    @classmethod
    def of(cls, lengths: list[int], device: torch.device) -> FrameLayout:
        padded = min(lengths) < max(lengths)
        return cls(lengths, PaddedLayout.of(lengths, device) if padded else None)

    @property
    def key_mask(self) -> torch.Tensor | None:
        """(B, 1, 1, M): True at real frames; None when none is padded."""
        return None if self.grid is None else self.grid.valid[:, None, None, :]

    def to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """(T, C) packed -> (B, M, C)."""
        B, M = len(self.lengths), max(self.lengths)
        if self.grid is None:
            return x.reshape(B, M, x.shape[-1])
        # index_select, not x[index]: its backward (index_add) is the fast one on CPU
        return x.index_select(0, self.grid.gather).view(B, M, x.shape[-1])

    def to_packed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, M, C) grid -> (T, C) packed; padded cells are dropped."""
        x = x.reshape(-1, x.shape[-1])
        return x if self.grid is None else x.index_select(0, self.grid.keep)


def grid_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: FrameLayout, num_heads: int
) -> torch.Tensor:
    """The fused kernel on a (clips x longest) grid with the padded keys masked: packed (T, C)
    queries, keys and values -> (T, C)."""
    C = q.shape[-1]

    def heads(t: torch.Tensor) -> torch.Tensor:  # (T, C) -> (B, H, M, hd)
        grid = layout.to_grid(t)
        return grid.view(*grid.shape[:2], num_heads, C // num_heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=layout.key_mask)
    B, _, M, _ = out.shape
    return layout.to_packed(out.transpose(1, 2).reshape(B, M, C))


def per_clip_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: FrameLayout, num_heads: int
) -> torch.Tensor:
    """Clip by clip with matmuls, used when attention is differentiated on CPU: the fused
    kernel's backward is slow at these sizes (29% of a demo step with 4 encoder layers trained),
    and a padded grid of 1-12 s clips is mostly padding (its cost grows with the longest clip
    squared). Packed (T, C) queries, keys and values -> (T, C)."""
    T, C = q.shape

    def heads(t: torch.Tensor) -> list[torch.Tensor]:  # (T, C) -> [(H, M_i, hd)]
        return t.view(T, num_heads, C // num_heads).transpose(0, 1).split(layout.lengths, dim=1)

    outs = []
    for qi, ki, vi in zip(heads(q), heads(k), heads(v)):
        scores = (qi * qi.shape[-1] ** -0.5) @ ki.transpose(-1, -2)  # (H, M_i, M_i)
        outs.append(torch.softmax(scores, dim=-1, dtype=torch.float32).to(vi.dtype) @ vi)
    return torch.cat(outs, dim=1).transpose(0, 1).reshape(T, C)


class EncoderAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=True)
        self.k_proj = nn.Linear(dim, dim, bias=False)  # Whisper's keys carry no bias
        self.v_proj = nn.Linear(dim, dim, bias=True)
        self.out_proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor, layout: FrameLayout) -> torch.Tensor:
        """x: (T, C) packed frames -> (T, C)."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        backward = any(t.requires_grad for t in (q, k, v))  # only under autograd
        attend = per_clip_attention if backward and not x.is_cuda else grid_attention
        return self.out_proj(attend(q, k, v, layout, self.num_heads))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: AudioEncoderConfig) -> None:
        super().__init__()
        self.self_attn = EncoderAttention(cfg.d_model, cfg.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.d_model)
        self.fc1 = nn.Linear(cfg.d_model, cfg.encoder_ffn_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_dim, cfg.d_model)
        self.final_layer_norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor, layout: FrameLayout) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), layout)
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
        """Encode clips of different lengths in one batch.

        features[i]: (n_mels, F_i) with F_i >= min(L_i + 2, 3000) frames; returns one
        (N_i, d_model) tensor per clip.
        """
        x, layout = self._embed(features, num_mel_frames)
        x = self._run_layers(x, layout, 0)
        return self._pool(x, layout, num_mel_frames)

    # The same computation a few layers at a time (`begin`, `advance` until `done`, `end`), so
    # an engine can spread a 30 s clip's encoder over several steps while other streams decode.
    # The same tensors go through the same layers: the outputs are `forward`'s, bit for bit.
    def begin(self, features: list[torch.Tensor], num_mel_frames: list[int]) -> PartialEncoding:
        x, layout = self._embed(features, num_mel_frames)
        return PartialEncoding(x, layout, list(num_mel_frames), 0)

    def advance(self, part: PartialEncoding, num_layers: int = 1) -> PartialEncoding:
        stop = min(part.next_layer + num_layers, len(self.layers))
        x = self._run_layers(part.states, part.layout, part.next_layer, stop)
        return PartialEncoding(x, part.layout, part.num_mel_frames, stop)

    def done(self, part: PartialEncoding) -> bool:
        return part.next_layer >= len(self.layers)

    def end(self, part: PartialEncoding) -> list[torch.Tensor]:
        if not self.done(part):
            raise ValueError("the clips have encoder layers left to run")
        return self._pool(part.states, part.layout, part.num_mel_frames)

    def frame_states(
        self, features: list[torch.Tensor], num_mel_frames: list[int], num_layers: int
    ) -> list[torch.Tensor]:
        """The states after the first `num_layers` layers, one (M_i, d_model) tensor per clip:
        what a trainer with only the top layers trained can compute once and keep."""
        x, layout = self._embed(features, num_mel_frames)
        x = self._run_layers(x, layout, 0, num_layers)
        return list(x.split(layout.lengths))

    def from_frame_states(
        self, states: list[torch.Tensor], num_mel_frames: list[int], first_layer: int
    ) -> list[torch.Tensor]:
        """The rest of `forward` from `frame_states(..., first_layer)`: the same outputs."""
        x = torch.cat(states)
        layout = FrameLayout.of([s.shape[0] for s in states], x.device)
        x = self._run_layers(x, layout, first_layer)
        return self._pool(x, layout, num_mel_frames)

    def _embed(
        self, features: list[torch.Tensor], num_mel_frames: list[int]
    ) -> tuple[torch.Tensor, FrameLayout]:
        """Convolutions and positions: the packed (T, d) frames of every clip and their layout."""
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
        layout = FrameLayout.of(lengths, x.device)
        return layout.to_packed(x), layout

    def _run_layers(
        self, x: torch.Tensor, layout: FrameLayout, start: int, stop: int | None = None
    ) -> torch.Tensor:
        for layer in self.layers[start:stop]:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, layout, use_reentrant=False)
            else:
                x = layer(x, layout)
        return x

    def _pool(
        self, x: torch.Tensor, layout: FrameLayout, num_mel_frames: list[int]
    ) -> list[torch.Tensor]:
        x = layout.to_grid(x)  # (B, M, d); padded frames never reach a clip's pooled frames
        x = F.avg_pool1d(x.transpose(1, 2), kernel_size=2, stride=2).transpose(1, 2)  # (B, M/2, d)
        x = self.layer_norm(x)
        return [x[i, : pooled_frames(n)] for i, n in enumerate(num_mel_frames)]
