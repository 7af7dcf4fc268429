"""Run one engine step on the model: packed prefill chunks and decode tokens in one forward."""

from __future__ import annotations

import torch

from ..model.kv_cache import AttentionBatch
from ..model.qwen2_audio import Qwen2AudioForConditionalGeneration
from .prefix_cache import AudioEmbeddingCache
from .sequence import Sequence

# Clips are encoded in padded batches; a batch closes when padding would exceed this share.
MAX_ENCODER_PADDING = 0.25
# Mel frames per encoder batch: bounds the activation memory (two 30 s clips).
MAX_ENCODER_FRAMES = 6000


class ModelRunner:
    def __init__(
        self, model: Qwen2AudioForConditionalGeneration, audio_cache: AudioEmbeddingCache
    ) -> None:
        self.model = model
        self.audio_cache = audio_cache
        self.device = model.device

    def execute(self, prefills: list[Sequence], decodes: list[Sequence]) -> torch.Tensor:
        """Prefill the uncached prompt part of `prefills`, feed the last token of `decodes`.

        Returns float32 logits (len(prefills) + len(decodes), vocab), one row per sequence, for the
        position after its last token.
        """
        seqs = prefills + decodes
        ids: list[int] = []
        positions: list[int] = []
        seq_lens: list[int] = []
        is_audio: list[bool] = []
        audio_parts: list[torch.Tensor] = []
        table = self.audio_table(prefills)
        for seq in prefills:
            start = seq.num_cached
            ids += seq.prompt_ids[start:]
            positions += range(start, len(seq.prompt_ids))
            seq_lens.append(len(seq.prompt_ids) - start)
            audio_at = set(seq.audio_positions)
            is_audio += [p in audio_at for p in range(start, len(seq.prompt_ids))]
            audio_parts += self._audio_rows(seq, start, table)
        for seq in decodes:
            ids.append(seq.output_ids[-1])
            positions.append(seq.num_tokens - 1)
            seq_lens.append(1)
            is_audio.append(False)  # a generated <|AUDIO|> id is plain text
        batch = AttentionBatch(seq_lens, [s.cache for s in seqs])
        audio = torch.cat(audio_parts) if audio_parts else None
        hidden = self.model(
            torch.tensor(ids, device=self.device),
            torch.tensor(positions, device=self.device),
            batch,
            audio,
            torch.tensor(is_audio, device=self.device),
        )
        for seq, n in zip(seqs, seq_lens):
            seq.num_cached += n
        return self.model.logits(hidden[batch.last_token_indices().to(self.device)])

    def _audio_rows(
        self, seq: Sequence, start: int, table: dict[bytes, torch.Tensor]
    ) -> list[torch.Tensor]:
        """Embeddings of the audio tokens of `seq` at positions >= start, in order."""
        rows = []
        for clip_hash, offset, _clip in self._needed_clips(seq, start):
            skip = sum(1 for p in seq.audio_positions if p < start)  # audio tokens cached
            rows.append(table[clip_hash][max(skip - offset, 0) :])
        return rows

    @staticmethod
    def _needed_clips(seq: Sequence, start: int):
        """(hash, first audio-token index, clip) of the clips not fully inside the cached prefix."""
        skip = sum(1 for p in seq.audio_positions if p < start)
        offset = 0
        for clip, key in zip(seq.clips, seq.clip_hashes):
            if offset + clip.num_tokens > skip:
                yield key, offset, clip
            offset += clip.num_tokens

    def audio_table(self, seqs: list[Sequence]) -> dict[bytes, torch.Tensor]:
        """Embeddings of every clip these prefills need: cached ones, the rest encoded in batches."""
        table: dict[bytes, torch.Tensor] = {}
        todo: dict[bytes, object] = {}
        for seq in seqs:
            for key, _, clip in self._needed_clips(seq, seq.num_cached):
                cached = self.audio_cache.get(key)
                if cached is not None:
                    table[key] = cached
                else:
                    todo[key] = clip
        keys = sorted(todo, key=lambda k: todo[k].num_frames)
        for group in _length_groups([todo[k].features.shape[1] for k in keys]):
            batch_keys = [keys[g] for g in group]
            embs = self.model.encode_audio(
                [todo[k].features for k in batch_keys], [todo[k].num_frames for k in batch_keys]
            )
            for k, e in zip(batch_keys, embs):
                table[k] = e
                self.audio_cache.put(k, e)
        return table


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
