"""Which tokens the next step computes: admission, chunked prefill, preemption.

Every running sequence gets its next token computed each step; prompts (and sequences resuming
after a preemption) are computed in chunks, at most `max_prefill_tokens` prompt tokens per step
in all (`prefill_tokens_while_decoding` while some sequence decodes), so a 30 s clip arriving
never stalls the running streams for its whole prefill. Blocks
are taken as tokens arrive; when the pool runs out, the newest sequences are preempted: their
blocks are released (the full ones stay in the prefix cache) and they wait at the head of the
queue to be computed again, so a running request never fails for lack of memory.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from .block_manager import BlockManager
from .sequence import Sequence, Status


class SchedulerConfig(NamedTuple):
    max_num_seqs: int  # sequences running together at most
    max_prefill_tokens: int  # prompt tokens computed in one step at most
    # ... while some sequence decodes: smaller chunks keep its inter-token gaps short
    prefill_tokens_while_decoding: int | None = None


class Work(NamedTuple):
    seq: Sequence
    num_tokens: int  # tokens to compute this step, from seq.num_cached on


class Scheduler:
    def __init__(self, config: SchedulerConfig, blocks: BlockManager) -> None:
        self.config = config
        self.blocks = blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order: the newest last
        self.num_preemptions = 0

    def schedule(self) -> list[Work]:
        """The work of the next step (also when that means preempting some sequences)."""
        work: list[Work] = []
        budget = self.config.max_prefill_tokens
        decoding = any(s.num_tokens - s.num_cached == 1 for s in self.running)
        if decoding and self.config.prefill_tokens_while_decoding:
            budget = min(budget, self.config.prefill_tokens_while_decoding)
        preempted = False
        for seq in list(self.running):
            if seq.status is not Status.RUNNING:
                continue  # preempted earlier in this loop
            remaining = seq.num_tokens - seq.num_cached
            n = 1 if remaining == 1 else min(remaining, budget)
            if n == 0:
                continue  # a prompt chunk; no prompt budget left this step
            while not self.blocks.can_grow(seq, seq.num_cached + n):
                preempted = True
                victim = self.running[-1]
                self.preempt(victim)
                if victim is seq:
                    break
            if seq.status is not Status.RUNNING:
                break  # it was the newest: every older one is scheduled
            self.blocks.grow(seq, seq.num_cached + n)
            work.append(Work(seq, n))
            if remaining > 1:
                budget -= n
        if not preempted:
            work += self._admit(budget)
        return work

    def _admit(self, budget: int) -> list[Work]:
        work = []
        bs = self.blocks.block_size
        computing = self._blocks_being_computed()
        for seq in list(self.waiting):
            if budget <= 0 or len(self.running) >= self.config.max_num_seqs:
                break
            hits = self.blocks.lookup(seq)
            start = len(hits) * bs
            if start + bs < seq.num_tokens and seq.block_hash(len(hits), bs) in computing:
                # A running prompt is computing this sequence's next block (the same system
                # prompt or clip, sent together): wait a step and share it rather than
                # computing it twice.
                continue
            n = min(seq.num_tokens - start, budget)
            # One block spared per running sequence, so their next tokens do not preempt at once.
            if not self.blocks.can_admit(hits, start + n, reserve=len(self.running)):
                break
            self.waiting.remove(seq)
            self.blocks.admit(seq, hits)
            if not seq.admitted:
                seq.admitted = True
                seq.num_prefix_hit = start
                self.blocks.queried_tokens += len(seq.prompt_ids)
                self.blocks.hit_tokens += start
            self.blocks.grow(seq, start + n)
            seq.status = Status.RUNNING
            self.running.append(seq)
            work.append(Work(seq, n))
            if seq.num_tokens - start > 1:  # not a lone last token (a decode)
                budget -= n
            computing |= self._next_blocks(seq, start + n)
        return work

    def _blocks_being_computed(self) -> set[bytes]:
        """Hashes of the full blocks that running prompts have yet to compute or finish."""
        found: set[bytes] = set()
        for seq in self.running:
            found |= self._next_blocks(seq, seq.num_cached)
        return found

    def _next_blocks(self, seq: Sequence, computed: int) -> set[bytes]:
        """The hash of the block holding token `computed` onwards, if it is a full prompt block
        (one is enough: a sequence waiting on it waits on the rest too)."""
        if not self.blocks.enable_prefix_cache:
            return set()
        bs = self.blocks.block_size
        i = computed // bs
        if (i + 1) * bs > seq.num_tokens - 1:
            return set()
        return {seq.block_hash(i, bs)}

    def preempt(self, seq: Sequence) -> None:
        """Release `seq`'s blocks; it waits first in line to be computed again."""
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        """Remove `seq` (running or waiting) and release its blocks at once."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq)
        seq.status = Status.FINISHED
