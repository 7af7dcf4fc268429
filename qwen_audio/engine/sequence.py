"""One request inside the engine: its prompt ids, audio features, block table and generated ids."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

import torch

from ..audio import AudioClip
from ..sampling import SamplingParams
from .sampler import RowSampler


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class EngineRequest:
    """What the engine needs: ids with `<|AUDIO|>` already expanded, and one clip per window."""

    request_id: str
    token_ids: list[int]
    audio_clips: list[AudioClip]
    audio_hashes: list[bytes]
    params: SamplingParams  # resolved: no None fields


@dataclass
class StepOutput:
    request_id: str
    new_token_ids: list[int]
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "abort" | None
    num_prompt_tokens: int
    num_cached_prompt_tokens: int  # prompt tokens whose keys/values came from the prefix cache
    error: str | None = None


class Sequence:
    def __init__(self, req: EngineRequest, eos_token_ids: tuple[int, ...], audio_token_id: int):
        self.request_id = req.request_id
        self.prompt_ids = list(req.token_ids)
        self.clips = req.audio_clips
        self.clip_hashes = req.audio_hashes
        self.params = req.params
        self.output_ids: list[int] = []
        self.status = Status.WAITING
        self.finish_reason: str | None = None
        self.block_table: list[int] = []  # KV pool blocks holding its tokens, in order
        self.num_cached = 0  # tokens whose keys/values are in the pool
        self.num_registered = 0  # of which in blocks registered in the prefix cache
        self.num_prefix_hit = 0  # prompt tokens found in the prefix cache when first admitted
        self.admitted = False  # admitted once (a preempted sequence is admitted again)
        self.audio_embeds: list[torch.Tensor | None] = [None] * len(req.audio_clips)
        self.max_new = req.params.max_tokens  # the engine lowers it to fit the context
        self.eos_token_ids = () if req.params.ignore_eos else eos_token_ids
        self.sampler = RowSampler(req.params, self.eos_token_ids, "cpu")
        self.audio_positions = [i for i, t in enumerate(self.prompt_ids) if t == audio_token_id]
        self._keys: list[bytes] | None = None  # content_keys(), computed on first use
        self._hashes: list[bytes] = []  # block_hash() of blocks 0, 1, ...
        self._hash_block_size = 0
        total = sum(c.num_tokens for c in self.clips)
        if total != len(self.audio_positions):
            raise ValueError(
                f"request {req.request_id}: {len(self.audio_positions)} audio tokens in the prompt "
                f"but the clips provide {total}"
            )

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    def token_ids(self, start: int, end: int) -> list[int]:
        """Ids of tokens [start, end) of prompt + output, without building the whole list."""
        p = len(self.prompt_ids)
        if start >= p:
            return self.output_ids[start - p : end - p]
        return self.prompt_ids[start:end] + self.output_ids[: max(end - p, 0)]

    def content_keys(self) -> list[bytes]:
        """A key per prompt token that also tells audio clips apart (all share `<|AUDIO|>`)."""
        keys = [t.to_bytes(4, "little") for t in self.prompt_ids]
        pos = iter(self.audio_positions)
        for clip_hash, clip in zip(self.clip_hashes, self.clips):
            for offset in range(clip.num_tokens):
                keys[next(pos)] = clip_hash + offset.to_bytes(4, "little")
        return keys

    def block_hash(self, i: int, block_size: int) -> bytes:
        """Chained hash of tokens [0, (i + 1) * block_size): the prefix-cache key of block i."""
        if self._hash_block_size != block_size:
            self._hashes, self._hash_block_size = [], block_size
        if self._keys is None:
            self._keys = self.content_keys()
        p = len(self.prompt_ids)
        while len(self._hashes) <= i:
            start = len(self._hashes) * block_size
            h = hashlib.blake2b(self._hashes[-1] if self._hashes else b"", digest_size=16)
            for t in range(start, start + block_size):
                h.update(self._keys[t] if t < p else self.output_ids[t - p].to_bytes(4, "little"))
            self._hashes.append(h.digest())
        return self._hashes[i]

    def seen_ids(self) -> torch.Tensor:
        return torch.tensor(self.all_ids, dtype=torch.long)
