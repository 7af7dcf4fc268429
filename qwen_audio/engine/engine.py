"""The generation engine: schedule -> run -> postprocess, one step at a time.

Continuous batching: every step packs the prompt chunks of admitted requests and the next token
of every running one into a single forward, so requests join and leave at step boundaries and a
long prompt never pads a short one. Memory is one pool of fixed-size KV blocks sized by the
budget (`kv_cache.py`); blocks are handed out as tokens arrive and shared between sequences with
the same prefix (`block_manager.py`); the scheduler chunks prompts and preempts the newest
sequences when the pool runs out (`scheduler.py`); the runner does the forward (`runner.py`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import psutil
import torch

from ..model.qwen2_audio import Qwen2AudioForConditionalGeneration
from .audio_cache import AudioEmbeddingCache
from .block_manager import BlockManager
from .kv_cache import KVPool
from .runner import ModelRunner
from .scheduler import Scheduler, SchedulerConfig
from .sequence import EngineRequest, Sequence, StepOutput

log = logging.getLogger(__name__)


class ContextLengthError(ValueError):
    """The prompt does not fit the model's context (or the KV budget)."""


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = 64  # sequences decoded together at most
    # Prompt tokens computed in one step at most (longer prompts are cut into chunks that share
    # steps with the running decodes). 512 rows keep the GEMMs efficient on a CPU while a step
    # with a chunk stays a few decode steps long.
    max_prefill_tokens: int = 512
    # The same while other sequences decode: their inter-token gap is a step, and a step with a
    # 512-token chunk is ~10x a decode step on the 0.5B benchmark checkpoint (128: ~2x).
    prefill_tokens_while_decoding: int | None = 128
    kv_budget_bytes: int | None = None  # None: a share of free RAM (CPU) or GPU memory
    kv_budget_fraction: float = 0.25  # the share used when kv_budget_bytes is None
    enable_prefix_cache: bool = True
    block_size: int = 16  # tokens per KV block (the prefix cache's granularity too)
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    kv_dtype: torch.dtype | None = None  # None: `kv_cache_dtype(model)`
    # While other streams decode, a step runs the audio encoder for about this long at most
    # (whole layers; a clip's encoder spreads over steps); None: whole clips in one step.
    encoder_step_seconds: float | None = 0.1


def kv_cache_dtype(model: Qwen2AudioForConditionalGeneration) -> torch.dtype:
    """The KV pool's dtype: the model's, except float16 for a CPU model that computes in float32
    over weights kept at 16 bits or fewer, with the compiled decode attention (AVX2 and ARM CPUs
    without native bf16). A decoded token reads every cached key and value: float32 doubles
    those bytes (0.8 GB a token for a 7B after a 30 s clip) for precision the bf16 checkpoint
    never had. float16, not bf16: three more mantissa bits, converted in hardware on every CPU
    the kernels run on, and llama.cpp's default cache type."""
    if model.dtype != torch.float32 or model.device.type != "cpu":
        return model.dtype
    from ..model.packed import PackedLinear
    from ..model.qwen2 import Qwen2Attention

    decoder = model.language_model
    packed = any(isinstance(m, PackedLinear) for m in decoder.modules())
    kernel = all(
        m.decode_kernel is not None for m in decoder.modules() if isinstance(m, Qwen2Attention)
    )
    return torch.float16 if packed and kernel else model.dtype


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
        # Never more blocks than max_num_seqs sequences of the full context can use.
        self.pool = KVPool.from_budget(
            model.config.text,
            self.kv_budget,
            self.config.block_size,
            self.config.kv_dtype or kv_cache_dtype(model),
            model.device,
            max_tokens=self.config.max_num_seqs * self.max_model_len,
        )
        self.blocks = BlockManager(self.pool, self.config.enable_prefix_cache)
        self.scheduler = Scheduler(
            SchedulerConfig(
                self.config.max_num_seqs,
                self.config.max_prefill_tokens,
                self.config.prefill_tokens_while_decoding,
            ),
            self.blocks,
        )
        self.audio_cache = AudioEmbeddingCache()
        self.runner = ModelRunner(
            model, self.pool, self.audio_cache, self.config.encoder_step_seconds
        )
        self._lock = threading.Lock()
        self._aborted: set[str] = set()
        self._pending: list[Sequence] = []  # added since the last step

    @property
    def waiting(self):
        return self.scheduler.waiting

    @property
    def running(self) -> list[Sequence]:
        return self.scheduler.running

    @property
    def pool_tokens(self) -> int:
        return self.pool.num_blocks * self.pool.block_size

    # ---- requests -------------------------------------------------------------------------
    def add_request(self, req: EngineRequest) -> None:
        """Queue a request; raises ContextLengthError if it can never fit."""
        n = len(req.token_ids)
        if n + 1 > self.max_model_len:
            raise ContextLengthError(
                f"the prompt has {n} tokens (audio included) but the model's context is "
                f"{self.max_model_len}; shorten the audio or the conversation"
            )
        if n + 1 > self.pool_tokens:
            raise ContextLengthError(
                f"the prompt has {n} tokens but the KV cache holds {self.pool_tokens} "
                f"({self.pool.nbytes / 2**20:.1f} MiB budget); raise the budget or shorten it"
            )
        seq = Sequence(req, self.eos_token_ids, self.audio_token_id)
        # Alone in the pool a sequence always fits: it can be preempted, never starved.
        seq.max_new = min(req.params.max_tokens, self.max_model_len - n, self.pool_tokens - n)
        with self._lock:
            self._pending.append(seq)

    def abort(self, request_id: str) -> None:
        """Stop a request at the next step boundary and free its memory."""
        with self._lock:
            self._aborted.add(request_id)

    def has_work(self) -> bool:
        return bool(self._pending or self.waiting or self.running or self._aborted)

    def stats(self) -> dict:
        b = self.blocks
        return {
            "waiting": len(self.waiting) + len(self._pending),
            "running": len(self.running),
            "kv_used_bytes": b.num_used * self.pool.block_bytes,
            "kv_budget_bytes": self.kv_budget,
            "kv_pool_bytes": self.pool.nbytes,
            "kv_blocks_total": b.num_blocks,
            "kv_blocks_used": b.num_used,
            "kv_blocks_free": b.num_free,
            "kv_blocks_cached": len(b.by_hash),  # blocks holding a registered prefix
            "preemptions": self.scheduler.num_preemptions,
            "prefix_cache_queried_tokens": b.queried_tokens,
            "prefix_cache_hit_tokens": b.hit_tokens,
            "prefix_cache_hit_rate": b.hit_tokens / b.queried_tokens if b.queried_tokens else 0.0,
        }

    # ---- the loop -------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        outputs = self._apply_aborts()
        work = self.scheduler.schedule()
        if not work:
            return outputs
        seqs, logits = self.runner.execute(work)
        for seq, _ in work:
            self.blocks.register(seq)
        # Sampling runs on the CPU: one (vocab,) row per sequence is cheap to move from a GPU.
        for row, seq in zip(logits.cpu(), seqs):
            outputs.append(self._append_token(seq, row))
        return outputs

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
        """Release the blocks at once; the full ones stay in the prefix cache whatever the
        reason (a stop string ends a request through an abort, and its prefix is good)."""
        self.scheduler.finish(seq)
        seq.finish_reason = reason

    def _apply_aborts(self) -> list[StepOutput]:
        with self._lock:
            aborted, self._aborted = self._aborted, set()
            pending, self._pending = self._pending, []
        self.scheduler.waiting.extend(pending)
        if not aborted:
            return []
        outputs = []
        for seq in list(self.waiting) + list(self.running):
            if seq.request_id in aborted:
                self._finish(seq, "abort")
                outputs.append(
                    StepOutput(seq.request_id, [], True, "abort", len(seq.prompt_ids), 0)
                )
        return outputs
