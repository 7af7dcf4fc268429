"""Run one engine step on the model: prompt chunks and decode tokens packed in one forward."""

from __future__ import annotations

import bisect
import time
from typing import NamedTuple

import torch

from ..model.attention import AttentionBatch, PagedBatch
from ..model.encoder import PartialEncoding
from ..model.qwen2_audio import Qwen2AudioForConditionalGeneration
from .audio_cache import AudioEmbeddingCache
from .kv_cache import KVPool
from .scheduler import Work
from .sequence import Sequence

# Clips are encoded in padded batches; a batch closes when padding would exceed this share.
MAX_ENCODER_PADDING = 0.25
# Mel frames per encoder batch: bounds the activation memory (two 30 s clips).
MAX_ENCODER_FRAMES = 6000


class _Encoding(NamedTuple):
    """A batch of clips part-way through the audio encoder, by clip hash."""

    keys: list[bytes]
    part: PartialEncoding


class ModelRunner:
    """`encoder_step_seconds`: while other sequences have tokens in a step, the audio encoder
    runs at most about this long in it (whole layers, at least one), and a prompt chunk stops
    before the first token of a clip still being encoded; the rest of the encoder runs in the
    next steps. A 30 s clip's encoder (0.25 s on the 0.5B benchmark checkpoint, seconds on the
    7B on a CPU) would otherwise stall every running stream for its whole length. None: each
    clip's encoder runs whole in the step that first needs it."""

    def __init__(
        self,
        model: Qwen2AudioForConditionalGeneration,
        pool: KVPool,
        audio_cache: AudioEmbeddingCache,
        encoder_step_seconds: float | None = None,
    ) -> None:
        self.model = model
        self.pool = pool
        self.audio_cache = audio_cache
        self.device = model.device
        self.encoder_step_seconds = encoder_step_seconds
        self._encoding: list[_Encoding] = []

    def execute(self, work: list[Work]) -> tuple[list[Sequence], torch.Tensor]:
        """Compute the scheduled tokens of every sequence, writing their keys/values.

        Returns the sequences whose last token was computed (a chunk that ends inside a prompt
        gives none) and their float32 logits (len, vocab) for the position after it. A chunk
        that reaches a clip still being encoded computes only the tokens before that clip.
        """
        work = [Work(seq, n) for (seq, _), n in zip(work, self._encode_audio(work)) if n > 0]
        if not work:
            vocab = self.model.config.text.vocab_size
            return [], torch.empty(0, vocab, device=self.device)
        ids: list[int] = []
        positions: list[int] = []
        audio_rows: list[int] = []
        audio_parts: list[torch.Tensor] = []
        for seq, n in work:
            start, end = seq.num_cached, seq.num_cached + n
            rows_before = len(ids)
            ids += seq.token_ids(start, end)
            positions += range(start, end)
            # A generated <|AUDIO|> id is plain text: only prompt positions can hold audio.
            a0 = bisect.bisect_left(seq.audio_positions, start)
            a1 = bisect.bisect_left(seq.audio_positions, end)
            if a1 > a0:
                audio_rows += [rows_before + p - start for p in seq.audio_positions[a0:a1]]
                audio_parts.append(_audio_slice(seq, a0, a1))
        seq_lens = [n for _, n in work]
        paged = PagedBatch(
            self.pool.kv,
            [seq.num_cached + n for seq, n in work],
            [seq.block_table for seq, _ in work],
        )
        batch = AttentionBatch(seq_lens, paged)
        is_audio = torch.zeros(len(ids), dtype=torch.bool)
        is_audio[audio_rows] = True
        hidden = self.model(
            torch.tensor(ids, device=self.device),
            torch.tensor(positions, device=self.device),
            batch,
            torch.cat(audio_parts) if audio_parts else None,
            is_audio.to(self.device),
        )
        done = []
        for i, (seq, n) in enumerate(work):
            seq.num_cached += n
            if seq.num_cached >= len(seq.prompt_ids):
                seq.audio_embeds = [None] * len(seq.clips)  # the prompt is in the pool now
            if seq.num_cached == seq.num_tokens:
                done.append(i)
        rows = batch.last_token_indices()[done].to(self.device)
        return [work[i].seq for i in done], self.model.logits(hidden[rows])

    def _encode_audio(self, work: list[Work]) -> list[int]:
        """Embeddings of the clips this step's chunks reach: cached ones, the rest encoded in
        batches. They stay on the sequence until its whole prompt is computed, so a prompt cut
        into chunks encodes each clip once. Returns how many of each work item's tokens can
        be computed this step (all of them, unless a clip is still being encoded)."""
        todo: dict[bytes, list[tuple[Sequence, int]]] = {}
        for seq, n in work:
            for j in _clips_in(seq, seq.num_cached, seq.num_cached + n):
                if seq.audio_embeds[j] is not None:
                    continue
                key = seq.clip_hashes[j]
                cached = self.audio_cache.get(key)
                if cached is not None:
                    seq.audio_embeds[j] = cached
                else:
                    todo.setdefault(key, []).append((seq, j))
        # clips nobody asks for any more (their request ended) are dropped
        self._encoding = [e for e in self._encoding if any(k in todo for k in e.keys)]
        started = {k for e in self._encoding for k in e.keys}
        clips = {k: users[0][0].clips[users[0][1]] for k, users in todo.items() if k not in started}
        keys = sorted(clips, key=lambda k: clips[k].num_frames)
        for group in _length_groups([clips[k].features.shape[1] for k in keys]):
            group_keys = [keys[g] for g in group]
            part = self.model.audio_tower.begin(
                [clips[k].features for k in group_keys], [clips[k].num_frames for k in group_keys]
            )
            self._encoding.append(_Encoding(group_keys, part))
        waiting = {seq for users in todo.values() for seq, _ in users}
        others = any(seq not in waiting for seq, _ in work)  # streams this step would stall
        self._run_encoder(todo, limited=others and self.encoder_step_seconds is not None)
        return [_computable(seq, n) for seq, n in work]

    def _run_encoder(self, todo: dict[bytes, list[tuple[Sequence, int]]], limited: bool) -> None:
        """Advance the clips being encoded, one layer at a time: all of them, or when `limited`
        until about encoder_step_seconds have passed (one layer at least). Finished clips go to
        the audio cache and to the sequences waiting for them."""
        tower = self.model.audio_tower
        deadline = time.perf_counter() + (self.encoder_step_seconds or 0.0)
        unfinished, ran = [], False
        for enc in self._encoding:
            part = enc.part
            while not tower.done(part) and not (limited and ran and time.perf_counter() > deadline):
                part = tower.advance(part)
                ran = True
            if not tower.done(part):
                unfinished.append(_Encoding(enc.keys, part))
                continue
            for key, emb in zip(enc.keys, self.model.project_audio(tower.end(part))):
                self.audio_cache.put(key, emb)
                for seq, j in todo.get(key, []):
                    seq.audio_embeds[j] = emb
        self._encoding = unfinished


def _computable(seq: Sequence, n: int) -> int:
    """Of the n tokens scheduled from seq.num_cached: those before its first clip without
    embeddings yet (all n when every clip they reach is ready)."""
    start, offset = seq.num_cached, 0
    for clip, emb in zip(seq.clips, seq.audio_embeds):
        first, offset = offset, offset + clip.num_tokens
        if emb is None and clip.num_tokens:
            a, b = seq.audio_positions[first], seq.audio_positions[offset - 1]
            if a < start + n and b >= start:  # the chunk reaches it (a prefix hit may end in it)
                return max(0, a - start)
    return n


def _clips_in(seq: Sequence, start: int, end: int) -> list[int]:
    """Indices of the clips with audio tokens at positions [start, end)."""
    a0 = bisect.bisect_left(seq.audio_positions, start)
    a1 = bisect.bisect_left(seq.audio_positions, end)
    found, offset = [], 0
    for j, clip in enumerate(seq.clips):
        if offset < a1 and offset + clip.num_tokens > a0:
            found.append(j)
        offset += clip.num_tokens
    return found


def _audio_slice(seq: Sequence, a0: int, a1: int) -> torch.Tensor:
    """Embeddings of the sequence's audio tokens a0..a1-1 (counted over all its clips)."""
    parts, offset = [], 0
    for clip, emb in zip(seq.clips, seq.audio_embeds):
        lo, hi = max(a0 - offset, 0), min(a1 - offset, clip.num_tokens)
        if lo < hi:
            parts.append(emb[lo:hi])
        offset += clip.num_tokens
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _length_groups(lengths: list[int]) -> list[list[int]]:
    """Split indices of ascending `lengths` into batches with little padding and bounded size."""
    groups: list[list[int]] = []
    for i, n in enumerate(lengths):
        if groups:
            g = groups[-1]
            total = sum(lengths[j] for j in g) + n
            small_padding = n * (len(g) + 1) <= total * (1 + MAX_ENCODER_PADDING)
            if small_padding and n * (len(g) + 1) <= MAX_ENCODER_FRAMES:
                g.append(i)
                continue
        groups.append([i])
    return groups
