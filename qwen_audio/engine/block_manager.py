"""Which block of the KV pool holds which tokens: block tables, reference counts, prefix cache.

A sequence gets blocks as its tokens arrive, never its worst case up front. A block is
registered in the prefix cache as soon as it is full, under a chained hash of everything up to
its end (audio tokens by the hash of their clip), so a later or concurrent sequence that starts
the same way shares it, reference-counted and without a copy. A block nobody references any more
keeps its contents and its hash until the space is needed: then the least recently released goes
first.
"""

from __future__ import annotations

from collections import OrderedDict

from .kv_cache import KVPool
from .sequence import Sequence


class Block:
    __slots__ = ("id", "ref_count", "hash")

    def __init__(self, block_id: int) -> None:
        self.id = block_id
        self.ref_count = 0
        self.hash: bytes | None = None  # set once the block is full and registered


class BlockManager:
    def __init__(self, pool: KVPool, enable_prefix_cache: bool = True) -> None:
        self.pool = pool
        self.block_size = pool.block_size
        self.enable_prefix_cache = enable_prefix_cache
        self.blocks = [Block(i) for i in range(pool.num_blocks)]
        self.free_ids: list[int] = list(range(pool.num_blocks - 1, -1, -1))  # a stack, lowest first
        # Unreferenced blocks that still hold a registered prefix, least recently released first.
        self.cached: OrderedDict[int, None] = OrderedDict()
        self.by_hash: dict[bytes, int] = {}
        self._zeroed = [False] * pool.num_blocks
        self.queried_tokens = 0  # prompt tokens looked up at admission
        self.hit_tokens = 0  # of which found in the cache

    # ---- counts ---------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now (cached-but-unreferenced ones included)."""
        return len(self.free_ids) + len(self.cached)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- admission ------------------------------------------------------------------------
    def lookup(self, seq: Sequence) -> list[int]:
        """Blocks holding the longest cached prefix of `seq`, at most all its tokens but the last
        (whose logits give the next token, so it must be computed)."""
        if not self.enable_prefix_cache:
            return []
        hits = []
        for i in range((seq.num_tokens - 1) // self.block_size):
            block_id = self.by_hash.get(seq.block_hash(i, self.block_size))
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def can_admit(self, hits: list[int], num_tokens: int, reserve: int = 0) -> bool:
        """Whether `hits` plus new blocks for `num_tokens` tokens fit, `reserve` blocks spared."""
        need = self.blocks_for(num_tokens) - len(hits)
        taken = sum(1 for b in hits if self.blocks[b].ref_count == 0)  # now counted as free
        return self.num_free - taken - need >= reserve

    def admit(self, seq: Sequence, hits: list[int]) -> None:
        """Give `seq` the cached blocks `hits`; its computation starts after them."""
        for block_id in hits:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.cached[block_id]
            block.ref_count += 1
        seq.block_table = list(hits)
        seq.num_cached = seq.num_registered = len(hits) * self.block_size

    # ---- growth ---------------------------------------------------------------------------
    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_for(num_tokens) - len(seq.block_table) <= self.num_free

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        """Add blocks until the table holds `num_tokens` tokens."""
        while len(seq.block_table) * self.block_size < num_tokens:
            seq.block_table.append(self._take())

    def register(self, seq: Sequence) -> None:
        """Put the blocks that `seq` has filled since the last call into the prefix cache."""
        if not self.enable_prefix_cache:
            return
        bs = self.block_size
        for i in range(seq.num_registered // bs, seq.num_cached // bs):
            block = self.blocks[seq.block_table[i]]
            h = seq.block_hash(i, bs)
            if block.hash is None and h not in self.by_hash:
                block.hash = h
                self.by_hash[h] = block.id
        seq.num_registered = seq.num_cached // bs * bs

    def free(self, seq: Sequence) -> None:
        """Release every block of `seq` (its filled blocks stay cached until needed)."""
        # Last block first: it is evicted before the blocks of the prefix it extends.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                if block.hash is not None:
                    self.cached[block_id] = None
                else:
                    self.free_ids.append(block_id)
        seq.block_table = []
        seq.num_cached = seq.num_registered = 0

    def _take(self) -> int:
        if self.free_ids:
            block_id = self.free_ids.pop()
        elif self.cached:
            block_id, _ = self.cached.popitem(last=False)  # least recently released
            block = self.blocks[block_id]
            del self.by_hash[block.hash]
            block.hash = None
        else:
            raise RuntimeError("the KV pool is out of blocks (the scheduler should have checked)")
        if not self._zeroed[block_id]:
            self.pool.zero_block(block_id)
            self._zeroed[block_id] = True
        self.blocks[block_id].ref_count = 1
        return block_id

    def clear_cache(self) -> None:
        """Forget every cached prefix that no sequence uses."""
        for block_id in self.cached:
            block = self.blocks[block_id]
            del self.by_hash[block.hash]
            block.hash = None
            self.free_ids.append(block_id)
        self.cached.clear()
