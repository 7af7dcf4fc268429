"""Projected audio embeddings by clip hash, so a clip heard before is not encoded again."""

from __future__ import annotations

from collections import OrderedDict

import torch


class AudioEmbeddingCache:
    """At most `max_entries` clips, least recently used dropped first. (Keys and values of the
    audio tokens themselves live in the KV pool's prefix cache; this saves the encoder for a
    clip asked about again after a different system prompt or question.)"""

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
