"""What the decoder's attention sees: a packed batch, and for inference the paged KV pool.

The decoder runs on *packed* batches: the new tokens of several sequences are laid back to back in
one (T, D) tensor, so a 30 s clip and a one-word follow-up share a step without padding. An
`AttentionBatch` says where each sequence starts. For inference it also carries a `PagedBatch`:
the engine's KV pool (fixed-size blocks of tokens) and the block table of every sequence. Each
layer writes its new keys/values into the pool through the batch and attends over the blocks, so
nothing about the cache is hidden in hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F


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


class PrefillChunk(NamedTuple):
    """One sequence with several new tokens: rows [start, start + n) of the packed batch."""

    start: int
    n: int
    table: torch.Tensor  # (blocks,) its block ids
    mask: torch.Tensor | None  # (n, blocks * block_size) when it has cached tokens, else None
    span: tuple[int, int] | None  # its pool slots [a, a + context) if its blocks are in order


class DecodeGroup(NamedTuple):
    """The sequences with one new token each, attended together in one call."""

    rows: torch.Tensor  # (Bd,) packed row of each one's token
    tables: torch.Tensor  # (Bd, blocks) block ids, short tables padded with their first block
    mask: torch.Tensor  # (Bd, 1, 1, blocks * block_size) True at the keys it may see
    contexts: list[int]  # tokens of each one, its new one included
    spans: list[tuple[int, int] | None]  # pool slots of each one whose blocks are in order
    lengths: torch.Tensor  # (Bd,) int64: `contexts` as a tensor, for the decode kernel


# The compiled paged decode attention: q (Bd, H, D) float32, one layer of the pool, the block
# tables (Bd, blocks) and contexts (Bd,) -> (Bd, H, D) float32 (kernels/cpu_kernels.cpp).
KernelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class SDPABackend:
    """Paged attention with torch's scaled_dot_product_attention, on CPU and CUDA.

    Pool layout per layer (2, kv_heads, num_blocks, block_size, head_dim): for one KV head a
    block is block_size contiguous rows, so a sequence whose blocks follow each other in the pool
    (usual: blocks are handed out lowest id first) is a plain (Hkv, T, D) view, and the others
    are gathered block by block into that layout. Every sequence with one new token is attended
    in a single call over its padded, masked keys; each prefill chunk in its own call (padding a
    512-token chunk's queries to a decode's would multiply the work). On a CPU with the compiled
    kernels, the decodes go to `decode_kernel` instead: one call for all of them that reads each
    sequence's blocks in place (gathering a scattered sequence copies every key and value of it
    per layer, and PyTorch's fused attention is slow with one 16-bit query). A fused paged kernel
    (FlashAttention / FlashInfer on CUDA) would do the same there; `write` is what any backend
    shares.
    """

    @staticmethod
    def write(kv_layer: torch.Tensor, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (Hkv, T, D) at the pool slots (T,) of kv_layer (2, Hkv, N, block, D)."""
        Hkv, N, bs, D = kv_layer.shape[1:]
        kv_layer[0].view(Hkv, N * bs, D).index_copy_(1, slots, k.to(kv_layer.dtype))
        kv_layer[1].view(Hkv, N * bs, D).index_copy_(1, slots, v.to(kv_layer.dtype))

    @staticmethod
    def attend(
        kv_layer: torch.Tensor,
        paged: PagedBatch,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        decode_kernel: KernelFn | None = None,
    ) -> torch.Tensor:
        """q (H, T, D) with the new k, v (Hkv, T, D) already written -> (H, T, D)."""
        H, T, D = q.shape
        Hkv = kv_layer.shape[1]
        out = torch.empty_like(q) if paged.prefills else q  # q: never written when all decode
        for c in paged.prefills:
            qi = q[:, c.start : c.start + c.n][None]  # (1, H, n, D)
            mask = c.mask
            if mask is None:  # no cached tokens: its keys are exactly the new ones
                ki, vi = k[:, c.start : c.start + c.n][None], v[:, c.start : c.start + c.n][None]
            elif c.span is not None:  # blocks in order: a view, and only the written slots
                ki, vi = (x[None] for x in _slots(kv_layer, *c.span))
                mask = mask[:, : c.span[1] - c.span[0]]
            else:
                ki, vi = _gather(kv_layer, c.table[None])  # (1, Hkv, L, D)
            ki, vi = ki.to(q.dtype), vi.to(q.dtype)  # a float16 pool under float32 compute
            out[:, c.start : c.start + c.n] = F.scaled_dot_product_attention(
                qi, ki, vi, attn_mask=mask, is_causal=mask is None, enable_gqa=H != Hkv
            )[0]
        d = paged.decode
        if d is None:
            return out
        Bd = d.rows.shape[0]
        if decode_kernel is not None and q.device.type == "cpu":
            qd = (q if Bd == T else q.index_select(1, d.rows)).transpose(0, 1)
            od = decode_kernel(qd.float().contiguous(), kv_layer, d.tables, d.lengths)
            od = od.transpose(0, 1).to(q.dtype)  # (H, Bd, D)
        else:
            # The query heads that share a KV head become rows of one query block, so no keys
            # or values are copied per head: (Bd, Hkv, H/Hkv, D).
            qd = q if Bd == T else q.index_select(1, d.rows)
            qd = qd.transpose(0, 1).reshape(Bd, Hkv, H // Hkv, D)
            if Bd == 1 and d.spans[0] is not None:  # as a plain cache: no copy, no mask
                kd, vd = (x[None].to(q.dtype) for x in _slots(kv_layer, *d.spans[0]))
                od = F.scaled_dot_product_attention(qd, kd, vd)
            else:
                kd, vd = (x.to(q.dtype) for x in _gather(kv_layer, d.tables))  # (Bd, Hkv, L, D)
                od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=d.mask)
            od = od.reshape(Bd, H, D).transpose(0, 1)  # (H, Bd, D)
        if Bd == T:  # decodes only: their rows are the whole batch, in order
            return od
        out.index_copy_(1, d.rows, od)
        return out


def _gather(kv_layer: torch.Tensor, tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of the blocks in `tables` (B, blocks) -> two (B, Hkv, blocks * bs, D)."""
    B, nb = tables.shape
    _, Hkv, _, bs, D = kv_layer.shape
    flat = tables.flatten()
    keys = kv_layer[0].index_select(1, flat).view(Hkv, B, nb * bs, D).transpose(0, 1)
    values = kv_layer[1].index_select(1, flat).view(Hkv, B, nb * bs, D).transpose(0, 1)
    return keys, values


def _slots(kv_layer: torch.Tensor, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of the consecutive pool slots [a, b) -> two (Hkv, b - a, D) views."""
    _, Hkv, N, bs, D = kv_layer.shape
    return kv_layer[0].view(Hkv, N * bs, D)[:, a:b], kv_layer[1].view(Hkv, N * bs, D)[:, a:b]


def _span(table: list[int], context: int, block_size: int) -> tuple[int, int] | None:
    """Pool slots [a, a + context) of a sequence whose blocks follow each other, else None."""
    first = table[0]
    if any(b != first + i for i, b in enumerate(table)):
        return None
    return first * block_size, first * block_size + context


@dataclass
class PagedBatch:
    """The KV pool of an inference step and where each sequence's tokens live in it.

    `kv` is (layers, 2, kv_heads, num_blocks, block_size, head_dim), owned by the engine; token p
    of a sequence lives in block `block_tables[i][p // block_size]` at offset p % block_size.
    """

    kv: torch.Tensor
    context_lens: list[int]  # tokens of each sequence after this step: cached + new
    block_tables: list[list[int]]
    backend: type[SDPABackend] = SDPABackend
    slots: torch.Tensor = field(init=False)  # (T,) pool slot of each new token
    prefills: list[PrefillChunk] = field(init=False)
    decode: DecodeGroup | None = field(init=False)

    @property
    def block_size(self) -> int:
        return self.kv.shape[4]

    def prepare(self, seq_lens: list[int]) -> None:
        """Index tensors for the whole step, built once (every layer uses them)."""
        bs, device = self.block_size, self.kv.device
        slots: list[int] = []
        self.prefills = []
        decodes: list[tuple[int, list[int], int]] = []  # (row, table, context)
        row = 0
        for n, ctx, table in zip(seq_lens, self.context_lens, self.block_tables):
            if len(table) * bs < ctx:
                raise ValueError(f"a block table of {len(table)} blocks cannot hold {ctx} tokens")
            slots += [table[p // bs] * bs + p % bs for p in range(ctx - n, ctx)]
            used = table[: -(-ctx // bs)]
            if n == 1:
                decodes.append((row, used, ctx))
            else:
                mask = None
                if ctx > n:  # cached tokens first: new token i sits at position ctx - n + i
                    rows = torch.arange(ctx - n, ctx, device=device)[:, None]
                    mask = torch.arange(len(used) * bs, device=device)[None, :] <= rows
                t = torch.tensor(used, device=device)
                self.prefills.append(PrefillChunk(row, n, t, mask, _span(used, ctx, bs)))
            row += n
        self.slots = torch.tensor(slots, dtype=torch.long, device=device)
        self.decode = None
        if decodes:
            nb = max(len(t) for _, t, _ in decodes)
            padded = [t + [t[0]] * (nb - len(t)) for _, t, _ in decodes]
            contexts = [c for _, _, c in decodes]
            ctx = torch.tensor(contexts, device=device)
            mask = torch.arange(nb * bs, device=device)[None, :] < ctx[:, None]
            self.decode = DecodeGroup(
                torch.tensor([r for r, _, _ in decodes], device=device),
                torch.tensor(padded, device=device),
                mask[:, None, None, :],
                contexts,
                [_span(t, c, bs) for _, t, c in decodes],
                ctx,
            )

    def attend(
        self,
        layer: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        decode_kernel: KernelFn | None = None,
    ) -> torch.Tensor:
        """Write this step's k, v (Hkv, T, D) for `layer`, attend q (H, T, D) -> (H, T, D)."""
        kv_layer = self.kv[layer]
        self.backend.write(kv_layer, self.slots, k, v)
        return self.backend.attend(kv_layer, self, q, k, v, decode_kernel)


@dataclass
class AttentionBatch:
    """How the packed tokens split into sequences.

    seq_lens[i] new tokens of sequence i follow those of sequence i-1. With `paged`, sequence i
    attends to its cached tokens plus its new ones, through the pool; without (training,
    scoring), each sequence attends causally within its own new tokens only.
    """

    seq_lens: list[int]
    paged: PagedBatch | None = None
    _padding: PaddedLayout | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.paged is not None:
            if len(self.paged.context_lens) != len(self.seq_lens):
                raise ValueError("one context length and block table per sequence is required")
            self.paged.prepare(self.seq_lens)

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
    def single(num_tokens: int) -> AttentionBatch:
        return AttentionBatch([num_tokens])
