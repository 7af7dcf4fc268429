"""The KV pool: one preallocated tensor of fixed-size blocks, sized by the memory budget.

Every running sequence owns a list of blocks (its block table, see `block_manager.py`); a block
holds `block_size` consecutive tokens' keys and values for every layer. Because the pool is
allocated once, the budget is a real bound: nothing grows, nothing is copied, and a block freed by
one sequence is reused by the next.
"""

from __future__ import annotations

import torch

from ..config import TextConfig


class KVPool:
    """Layout (layers, 2, kv_heads, num_blocks, block_size, head_dim): for one layer and KV head
    a block is block_size contiguous rows of head_dim, so a sequence in consecutive blocks is a
    plain (kv_heads, tokens, head_dim) view, what attention kernels take, and gathering the
    others copies whole blocks."""

    def __init__(
        self,
        cfg: TextConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        shape = (
            cfg.num_hidden_layers,
            2,
            cfg.num_key_value_heads,
            num_blocks,
            block_size,
            cfg.head_dim,
        )
        # torch.empty: on a CPU the pages are touched (resident) only when blocks are first used;
        # `zero_block` clears a block once before its first use (see `BlockManager`), because
        # attention masks the unwritten tail of a block, and 0 x NaN garbage would still be NaN.
        self.kv = torch.empty(shape, dtype=dtype, device=device)

    @staticmethod
    def bytes_per_block(cfg: TextConfig, block_size: int, dtype: torch.dtype) -> int:
        per_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim
        return per_token * block_size * torch.empty((), dtype=dtype).element_size()

    @classmethod
    def from_budget(
        cls,
        cfg: TextConfig,
        budget_bytes: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device | str,
        max_tokens: int | None = None,
    ) -> KVPool:
        """As many blocks as fit `budget_bytes`, and no more than `max_tokens` need."""
        num_blocks = budget_bytes // cls.bytes_per_block(cfg, block_size, dtype)
        if max_tokens is not None:
            num_blocks = min(num_blocks, -(-max_tokens // block_size))
        return cls(cfg, max(num_blocks, 1), block_size, dtype, device)

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    @property
    def block_bytes(self) -> int:
        return self.nbytes // self.num_blocks

    def zero_block(self, block_id: int) -> None:
        self.kv[:, :, :, block_id].zero_()
