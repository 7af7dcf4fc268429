"""The generation engine: schedule -> run -> postprocess, one step at a time.

Continuous batching: every step packs the prompts of newly admitted requests and the next token of
every running one into a single forward, so requests join and leave at step boundaries and a long
prompt never pads a short one. Memory is managed by admission control: a request is admitted only
when its worst case (prompt + max_tokens) fits the KV budget next to the running ones, after
evicting prefix-cache entries if needed, so the engine never runs out of memory mid-generation.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass

import psutil
import torch

from ..model.qwen2_audio import Qwen2AudioForConditionalGeneration
from .prefix_cache import AudioEmbeddingCache, PrefixCache
from .runner import ModelRunner
from .sequence import EngineRequest, Sequence, Status, StepOutput

log = logging.getLogger(__name__)


class ContextLengthError(ValueError):
    """The prompt does not fit the model's context (or the KV budget)."""


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = 32  # sequences decoded together at most
    # Prompt tokens prefilled in one step (at least one prompt). 2048 rows already saturate the
    # GEMMs on a CPU; more only raises the activation memory of the step.
    max_prefill_tokens: int = 2048
    kv_budget_bytes: int | None = None  # None: a share of free RAM (CPU) or GPU memory
    kv_budget_fraction: float = 0.25  # the share used when kv_budget_bytes is None
    enable_prefix_cache: bool = True
    block_size: int = 16  # prefix-cache granularity in tokens
    max_model_len: int | None = None  # None: the model's max_position_embeddings


# Reuse a cached prefix only when it covers at least 1/this of the prompt (see _attach_cache).
MIN_PREFIX_HIT_SHARE_INV = 4


def default_kv_budget(device: torch.device, fraction: float) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * fraction)
    return int(psutil.virtual_memory().available * fraction)


class LLMEngine:
    """Token ids and features in, token ids out. Thread-safe for add/abort against `step`."""

    def __init__(
        self,
        model: Qwen2AudioForConditionalGeneration,
        eos_token_ids: tuple[int, ...],
        config: EngineConfig | None = None,
    ) -> None:
        self.model = model
        self.config = config or EngineConfig()
        self.eos_token_ids = eos_token_ids
        self.audio_token_id = model.config.audio_token_index
        self.max_model_len = self.config.max_model_len or model.config.text.max_position_embeddings
        self.kv_budget = self.config.kv_budget_bytes or default_kv_budget(
            model.device, self.config.kv_budget_fraction
        )
        probe = model.new_cache(capacity=1)
        self.bytes_per_token = probe.bytes_per_token
        self.prefix_cache = PrefixCache(self.config.block_size)
        self.audio_cache = AudioEmbeddingCache()
        self.runner = ModelRunner(model, self.audio_cache)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.reserved = 0  # bytes promised to running sequences
        self._lock = threading.Lock()
        self._aborted: set[str] = set()

    # ---- requests -------------------------------------------------------------------------
    def add_request(self, req: EngineRequest) -> None:
        """Queue a request; raises ContextLengthError if it can never fit."""
        n = len(req.token_ids)
        if n + 1 > self.max_model_len:
            raise ContextLengthError(
                f"the prompt has {n} tokens (audio included) but the model's context is "
                f"{self.max_model_len}; shorten the audio or the conversation"
            )
        seq = Sequence(req, self.eos_token_ids, self.audio_token_id)
        seq.max_new = min(req.params.max_tokens, self.max_model_len - n)
        need = self._worst_case_bytes(seq)
        if need > self.kv_budget:
            raise ContextLengthError(
                f"the request needs {need / 2**20:.0f} MiB of KV cache (prompt {n} + "
                f"max_tokens {seq.max_new} tokens) but the budget is "
                f"{self.kv_budget / 2**20:.0f} MiB; lower max_tokens or raise the budget"
            )
        with self._lock:
            self.waiting.append(seq)

    def abort(self, request_id: str) -> None:
        """Stop a request at the next step boundary and free its memory."""
        with self._lock:
            self._aborted.add(request_id)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._aborted)

    def stats(self) -> dict:
        return {
            "waiting": len(self.waiting),
            "running": len(self.running),
            "kv_used_bytes": self.reserved + self.prefix_cache.nbytes + self.audio_cache.nbytes,
            "kv_budget_bytes": self.kv_budget,
            "prefix_cache_entries": len(self.prefix_cache.entries),
            "prefix_cache_hit_tokens": self.prefix_cache.hit_tokens,
        }

    # ---- the loop -------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        outputs = self._apply_aborts()
        prefills = self._admit()
        decodes = [s for s in self.running if s not in prefills]
        if not prefills and not decodes:
            return outputs
        for seq in prefills:
            self._attach_cache(seq)
        # Sampling runs on the CPU: one (vocab,) row per sequence is cheap to move from a GPU.
        logits = self.runner.execute(prefills, decodes).cpu()
        for row, seq in zip(logits, prefills + decodes):
            outputs.append(self._append_token(seq, row))
        return outputs

    def _worst_case_bytes(self, seq: Sequence) -> int:
        return (len(seq.prompt_ids) + seq.max_new) * self.bytes_per_token

    def _admit(self) -> list[Sequence]:
        admitted: list[Sequence] = []
        prefill_tokens = 0
        with self._lock:
            while self.waiting and len(self.running) < self.config.max_num_seqs:
                seq = self.waiting[0]
                n = len(seq.prompt_ids)
                if admitted and prefill_tokens + n > self.config.max_prefill_tokens:
                    break
                need = self._worst_case_bytes(seq)
                if not self._make_room(need):
                    break  # wait for running sequences to finish
                self.waiting.popleft()
                seq.reserved_bytes = need
                self.reserved += need
                seq.status = Status.RUNNING
                self.running.append(seq)
                admitted.append(seq)
                prefill_tokens += n
        return admitted

    def _make_room(self, need: int) -> bool:
        def used() -> int:
            return self.reserved + self.prefix_cache.nbytes + self.audio_cache.nbytes

        while used() + need > self.kv_budget:
            if not (self.prefix_cache.evict_one() or self.audio_cache.evict_one()):
                return False
        return True

    def _attach_cache(self, seq: Sequence) -> None:
        seq.cache = self.model.new_cache(capacity=len(seq.prompt_ids) + min(seq.max_new, 64))
        # Its buffer stays within what _admit reserved for it, so the budget bounds real memory.
        seq.cache.max_capacity = len(seq.prompt_ids) + seq.max_new
        if not self.config.enable_prefix_cache:
            return
        hashes = seq.block_hashes(self.config.block_size)
        # Keep at least one prompt token to compute: its logits give the first new token.
        cached, n = self.prefix_cache.lookup(hashes, len(seq.prompt_ids) - 1)
        # A prefill after a cached prefix needs an explicit offset-causal mask, which the fused
        # CPU attention runs ~1.7x slower than plain causal attention; a hit on a small part of
        # a long prompt (say the system prompt before a 30 s clip) is cheaper to recompute.
        if cached is not None and n * MIN_PREFIX_HIT_SHARE_INV >= len(seq.prompt_ids):
            seq.cache.copy_prefix_from(cached, n)
            seq.num_cached = seq.num_prefix_hit = n

    def _append_token(self, seq: Sequence, logits: torch.Tensor) -> StepOutput:
        n_gen = len(seq.output_ids)
        logits = seq.sampler.process(logits, seq.seen_ids(), n_gen)
        token = seq.sampler.sample(logits)
        seq.output_ids.append(token)
        reason = None
        if token in seq.sampler.eos.tolist() and n_gen + 1 >= seq.params.min_tokens:
            reason = "stop"
        elif len(seq.output_ids) >= seq.max_new:
            reason = "length"
        if reason:
            self._finish(seq, reason)
        return StepOutput(
            seq.request_id,
            [token],
            reason is not None,
            reason,
            len(seq.prompt_ids),
            seq.num_prefix_hit,
        )

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        with self._lock:
            if seq in self.running:
                self.running.remove(seq)
            self.reserved -= seq.reserved_bytes
            seq.reserved_bytes = 0
        cache, seq.cache = seq.cache, None
        if cache is not None and self.config.enable_prefix_cache and reason != "abort":
            # The cache holds every token but the last sampled one; keep its full blocks.
            hashes = seq.block_hashes(self.config.block_size, upto=cache.length)
            self.prefix_cache.insert(cache, hashes)

    def _apply_aborts(self) -> list[StepOutput]:
        with self._lock:
            aborted, self._aborted = self._aborted, set()
            if not aborted:
                return []
            waiting = [s for s in self.waiting if s.request_id in aborted]
            for s in waiting:
                self.waiting.remove(s)
            running = [s for s in self.running if s.request_id in aborted]
        outputs = []
        for seq in waiting + running:
            self._finish(seq, "abort")
            outputs.append(StepOutput(seq.request_id, [], True, "abort", len(seq.prompt_ids), 0))
        return outputs
