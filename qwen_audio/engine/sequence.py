"""One request inside the engine: its prompt ids, audio features, cache and generated ids."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

import torch

from ..audio import AudioClip
from ..model.kv_cache import KVCache
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
        self.cache: KVCache | None = None
        self.num_cached = 0  # tokens whose keys/values are in `cache`
        self.num_prefix_hit = 0
        self.reserved_bytes = 0
        self.max_new = req.params.max_tokens  # the engine lowers it to fit the context
        self.eos_token_ids = () if req.params.ignore_eos else eos_token_ids
        self.sampler = RowSampler(req.params, self.eos_token_ids, "cpu")
        self.audio_positions = [i for i, t in enumerate(self.prompt_ids) if t == audio_token_id]
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

    def content_keys(self) -> list[bytes]:
        """A key per token that also tells audio clips apart (all clips share `<|AUDIO|>`)."""
        keys = [t.to_bytes(4, "little") for t in self.all_ids]
        pos = iter(self.audio_positions)
        for clip_hash, clip in zip(self.clip_hashes, self.clips):
            for offset in range(clip.num_tokens):
                keys[next(pos)] = clip_hash + offset.to_bytes(4, "little")
        return keys

    def block_hashes(self, block_size: int, upto: int | None = None) -> list[bytes]:
        """Chained hashes of the full blocks among the first `upto` tokens."""
        keys = self.content_keys()
        n = len(keys) if upto is None else min(upto, len(keys))
        hashes, prev = [], b""
        for start in range(0, n - block_size + 1, block_size):
            h = hashlib.blake2b(prev, digest_size=16)
            for k in keys[start : start + block_size]:
                h.update(k)
            prev = h.digest()
            hashes.append(prev)
        return hashes

    def seen_ids(self) -> torch.Tensor:
        return torch.tensor(self.all_ids, dtype=torch.long)
