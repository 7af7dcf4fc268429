"""Per-sequence KV cache and the description of a packed batch.

The decoder runs on *packed* batches: the new tokens of several sequences are laid back to back in
one (T, D) tensor, so a 30 s clip and a one-word follow-up share a step without padding. An
`AttentionBatch` says where each sequence starts and holds its cache; the model reserves room,
writes the new keys/values and advances the cache length itself, so nothing is hidden in hooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch


class KVCache:
    """Keys and values of one sequence for every layer, in one growable buffer.

    Layout (layers, 2, kv_heads, capacity, head_dim): a layer's keys are a (kv_heads, T, head_dim)
    view, which is what scaled_dot_product_attention takes without a copy.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        capacity: int = 0,
    ) -> None:
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        self.length = 0
        # Growth never passes this many tokens (the engine sets what its memory budget reserved
        # for the sequence); None: no bound.
        self.max_capacity: int | None = None
        self.buffer = self._alloc(capacity)

    def _alloc(self, capacity: int) -> torch.Tensor:
        shape = (self.num_layers, 2, self.num_kv_heads, capacity, self.head_dim)
        return torch.empty(shape, dtype=self.dtype, device=self.device)

    @property
    def capacity(self) -> int:
        return self.buffer.shape[3]

    @property
    def bytes_per_token(self) -> int:
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * self.buffer.element_size()

    @property
    def nbytes(self) -> int:
        return self.buffer.numel() * self.buffer.element_size()

    def reserve(self, new_tokens: int) -> None:
        """Make room for `new_tokens` more; grows by at least 1.5x so appends stay amortised O(1),
        but not past `max_capacity` unless `new_tokens` themselves need it."""
        need = self.length + new_tokens
        if need <= self.capacity:
            return
        size = max(need, self.capacity * 3 // 2, 16)
        if self.max_capacity is not None:
            size = max(need, min(size, self.max_capacity))
        grown = self._alloc(size)
        grown[:, :, :, : self.length] = self.buffer[:, :, :, : self.length]
        self.buffer = grown

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Store k, v (kv_heads, t, head_dim) after the committed tokens; return all keys/values."""
        t = k.shape[1]
        end = self.length + t
        self.buffer[layer, 0, :, self.length : end] = k
        self.buffer[layer, 1, :, self.length : end] = v
        return self.buffer[layer, 0, :, :end], self.buffer[layer, 1, :, :end]

    def advance(self, t: int) -> None:
        self.length += t

    def truncate(self, length: int) -> None:
        """Forget everything after `length` tokens (used to roll back or to reuse a prefix)."""
        self.length = min(self.length, length)

    def copy_prefix_from(self, other: KVCache, length: int) -> None:
        """Start this cache with the first `length` tokens of `other` (prefix reuse)."""
        self.length = 0
        self.reserve(length)
        self.buffer[:, :, :, :length] = other.buffer[:, :, :, :length]
        self.length = length

    def compact(self) -> None:
        """Drop spare capacity (for caches kept around by a prefix cache)."""
        if self.capacity != self.length:
            self.buffer = self.buffer[:, :, :, : self.length].clone()


class PaddedLayout(NamedTuple):
    """Where B packed sequences (rows of one (T, ...) tensor, one after the other) sit on a
    right-padded (B x M = longest) grid: the decoder's cache-free attention and the audio
    encoder's attention both use it."""

    gather: torch.Tensor  # (B * M,) packed row of each grid cell; padding cells read row 0
    keep: torch.Tensor  # (T,) grid cell of each packed row
    valid: torch.Tensor  # (B, M) True at the cells that hold a packed row

    @classmethod
    def of(cls, lengths: list[int], device: torch.device) -> PaddedLayout:
        lens = torch.tensor(lengths, device=device)
        pos = torch.arange(max(lengths), device=device)[None, :]
        valid = pos < lens[:, None]
        starts = (lens.cumsum(0) - lens)[:, None]
        gather = torch.where(valid, starts + pos, torch.zeros_like(pos)).flatten()
        keep = valid.flatten().nonzero().flatten()
        return cls(gather, keep, valid)


@dataclass
class AttentionBatch:
    """How the packed tokens split into sequences.

    seq_lens[i] new tokens of sequence i follow those of sequence i-1. With `caches`, sequence i
    attends to its cached tokens plus its new ones; without (training, scoring), each sequence
    attends causally within its own new tokens only.
    """

    seq_lens: list[int]
    caches: list[KVCache] | None = None
    _padding: PaddedLayout | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.caches is not None and len(self.caches) != len(self.seq_lens):
            raise ValueError("one cache per sequence is required")

    @property
    def num_tokens(self) -> int:
        return sum(self.seq_lens)

    def last_token_indices(self) -> torch.Tensor:
        """Row of each sequence's last new token in the packed tensor (where logits are needed)."""
        ends = torch.tensor(self.seq_lens).cumsum(0)
        return ends - 1

    def padded_layout(self, device: torch.device) -> PaddedLayout:
        """Where the packed tokens go on a right-padded (sequences x longest) grid. Computed
        once per batch, as every layer uses it."""
        if self._padding is None or self._padding.gather.device != device:
            self._padding = PaddedLayout.of(self.seq_lens, device)
        return self._padding

    @staticmethod
    def single(num_tokens: int, cache: KVCache | None = None) -> AttentionBatch:
        return AttentionBatch([num_tokens], None if cache is None else [cache])
