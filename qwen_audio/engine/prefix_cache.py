"""Keys/values of finished sequences, reusable by any later request that starts the same way.

A voice chat's third turn starts with the whole first and second turn, audios included, so its
prefill only computes the new user turn. Blocks of `block_size` tokens are keyed by a chained hash
of their content (audio tokens by the hash of their samples), so a hit means the whole prefix up to
that block is identical. Entries are evicted least-recently-used under the engine's memory budget.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..model.kv_cache import KVCache


@dataclass
class PrefixEntry:
    cache: KVCache
    block_hashes: list[bytes]

    @property
    def nbytes(self) -> int:
        return self.cache.nbytes


class PrefixCache:
    def __init__(self, block_size: int = 16) -> None:
        self.block_size = block_size
        self.entries: OrderedDict[int, PrefixEntry] = OrderedDict()
        self.index: dict[bytes, int] = {}  # block hash -> id of an entry holding that prefix
        self._ids = itertools.count()
        self.hits = 0
        self.hit_tokens = 0

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    def lookup(self, block_hashes: list[bytes], max_tokens: int) -> tuple[KVCache | None, int]:
        """The cache holding the longest cached prefix (at most `max_tokens`) and its length."""
        best, matched = None, 0
        for i, h in enumerate(block_hashes):
            entry_id = self.index.get(h)
            if entry_id is None or (i + 1) * self.block_size > max_tokens:
                break
            best, matched = entry_id, (i + 1) * self.block_size
        if best is None:
            return None, 0
        self.entries.move_to_end(best)
        self.hits += 1
        self.hit_tokens += matched
        return self.entries[best].cache, matched

    def insert(self, cache: KVCache, block_hashes: list[bytes]) -> None:
        """Keep `cache` (its first len(block_hashes) blocks are valid) for later requests."""
        if not block_hashes:
            return
        cache.truncate(len(block_hashes) * self.block_size)
        cache.compact()
        # Older entries that end inside this prefix are now redundant.
        redundant = set()
        for h in block_hashes:
            old = self.index.get(h)
            if old is not None and self.entries[old].block_hashes[-1] == h:
                redundant.add(old)
        entry_id = next(self._ids)
        self.entries[entry_id] = PrefixEntry(cache, block_hashes)
        for h in block_hashes:
            self.index[h] = entry_id
        for old in redundant:
            self._drop(old)

    def evict_one(self) -> int:
        """Drop the least recently used entry; returns the bytes freed (0 if empty)."""
        if not self.entries:
            return 0
        entry_id = next(iter(self.entries))
        return self._drop(entry_id)

    def _drop(self, entry_id: int) -> int:
        entry = self.entries.pop(entry_id)
        for h in entry.block_hashes:
            if self.index.get(h) == entry_id:
                del self.index[h]
        return entry.nbytes

    def clear(self) -> None:
        self.entries.clear()
        self.index.clear()


class AudioEmbeddingCache:
    """Projected audio embeddings by clip hash, so a clip heard before is not encoded again."""

    def __init__(self, max_entries: int = 64) -> None:
        self.max_entries = max_entries
        self.entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.entries.values())

    def get(self, key: bytes) -> torch.Tensor | None:
        value = self.entries.get(key)
        if value is not None:
            self.entries.move_to_end(key)
        return value

    def put(self, key: bytes, value: torch.Tensor) -> None:
        self.entries[key] = value
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)

    def evict_one(self) -> int:
        if not self.entries:
            return 0
        _, value = self.entries.popitem(last=False)
        return value.numel() * value.element_size()
