"""Which rows each optimizer step uses, split over processes and accumulation steps, and packed.

One optimizer step consumes one global batch of `batch_size x grad_accum x processes` rows. The
rows of a step depend only on the seed and the step number (`plan_epoch`), and their split
(`micro_batches`) only on the global batch, so a resumed run continues with exactly the rows an
uninterrupted one would have used, and 2 processes see the micro-batches 1 process would see
with twice the accumulation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..audio import AudioError
from ..prompt import PromptError, PromptRenderer, RenderedPrompt
from .data import DataError, TrainData, render, rendered_bytes

log = logging.getLogger(__name__)

# ---- batching ------------------------------------------------------------------------------


def plan_epoch(
    lengths: Sequence[int], epoch: int, seed: int, global_batch: int, group: int = 32
) -> list[list[int]]:
    """The global batches (row indices) of one epoch, length-grouped.

    The rows are shuffled (seeded by seed and epoch), cut into windows of `group` global
    batches, sorted by length inside each window and cut into global batches, whose order is
    shuffled again; the batch with the longest row goes first, so memory trouble shows at once.
    A last incomplete global batch is dropped, so every step sees the same number of rows.
    """
    n = len(lengths)
    if n < global_batch:
        raise DataError(
            f"{n} usable row(s) but one step needs {global_batch} (batch size x gradient "
            "accumulation x processes); lower --batch-size or --grad-accum"
        )
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    window = global_batch * group
    batches = []
    for start in range(0, n, window):
        chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
        batches += [chunk[i : i + global_batch] for i in range(0, len(chunk), global_batch)]
    batches = [[int(i) for i in b] for b in batches if len(b) == global_batch]
    perm = rng.permutation(len(batches))
    batches = [batches[i] for i in perm]
    longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
    batches.insert(0, batches.pop(longest))
    return batches


def micro_batches(
    rows: list[int], lengths: Sequence[int], rank: int, world_size: int, accum: int
) -> list[list[int]]:
    """This process's `accum` micro-batches of a global batch.

    The rows are sorted by length and dealt round-robin over world_size x accum micro-batches,
    micro-batch j = g * world_size + rank going to this process at accumulation step g. The
    split depends only on the global batch, so 2 processes x 1 step see the same micro-batches
    as 1 process x 2 accumulation steps.
    """
    ordered = sorted(rows, key=lambda i: (-lengths[i], i))
    parts = world_size * accum
    return [ordered[g * world_size + rank :: parts] for g in range(accum)]


# ---- packing -------------------------------------------------------------------------------


@dataclass
class PackedBatch:
    """Sequences laid back to back for the training forward (no padding)."""

    input_ids: torch.Tensor  # (T,) int64
    positions: torch.Tensor  # (T,) int64, restarting at 0 for each sequence
    seq_lens: list[int]
    features: list[torch.Tensor]  # one (n_mels, F) per distinct clip
    num_frames: list[int]
    clip_index: list[int]  # for each clip in token order, its entry in `features`
    pred_rows: torch.Tensor  # (n,) rows whose logits predict a trained token
    targets: torch.Tensor  # (n,) the tokens they predict
    pred_seq: torch.Tensor  # (n,) which sequence each prediction belongs to
    clip_keys: list[bytes]  # one per entry of `features`: the clip's content hash

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens)

    def to(self, device: torch.device) -> PackedBatch:
        move = {
            k: getattr(self, k).to(device)
            for k in ("input_ids", "positions", "pred_rows", "targets", "pred_seq")
        }
        return PackedBatch(
            **move,
            seq_lens=self.seq_lens,
            features=[f.to(device) for f in self.features],
            num_frames=self.num_frames,
            clip_index=self.clip_index,
            clip_keys=self.clip_keys,
        )


def pack(prompts: list[RenderedPrompt]) -> PackedBatch:
    """Pack rendered sequences; a clip shared by several sequences (a DPO pair's audio) is
    encoded once."""
    ids: list[int] = []
    positions: list[int] = []
    pred_rows: list[int] = []
    targets: list[int] = []
    pred_seq: list[int] = []
    features: list[torch.Tensor] = []
    num_frames: list[int] = []
    clip_index: list[int] = []
    seen: dict[bytes, int] = {}
    for s, p in enumerate(prompts):
        offset = len(ids)
        n = len(p.token_ids)
        ids += p.token_ids
        positions += range(n)
        for t in range(1, n):
            if p.loss_mask[t]:
                pred_rows.append(offset + t - 1)  # the logits at t-1 predict token t
                targets.append(p.token_ids[t])
                pred_seq.append(s)
        for clip, key in zip(p.audio_clips, p.audio_hashes):
            if key not in seen:
                seen[key] = len(features)
                features.append(clip.features)
                num_frames.append(clip.num_frames)
            clip_index.append(seen[key])

    def long(x: list[int]) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.long)

    return PackedBatch(
        long(ids),
        long(positions),
        [len(p.token_ids) for p in prompts],
        features,
        num_frames,
        clip_index,
        long(pred_rows),
        long(targets),
        long(pred_seq),
        list(seen),
    )


# ---- the rows of each step ------------------------------------------------------------------


class StepBatches(torch.utils.data.Dataset):
    """Item `step`: this process's micro-batches of that step, rendered and packed.

    Rendered rows are kept in memory up to `cache_bytes` (audio features dominate), so small
    datasets decode each file once. The rows `data` kept from its check start the cache (it takes
    them over).
    """

    def __init__(
        self,
        data: TrainData,
        renderer: PromptRenderer,
        *,
        batch_size: int,
        grad_accum: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        cache_bytes: int = 0,
    ) -> None:
        self.data, self.renderer, self.seed = data, renderer, seed
        self.grad_accum, self.rank, self.world_size = grad_accum, rank, world_size
        self.global_batch = batch_size * grad_accum * world_size
        self.steps_per_epoch = len(plan_epoch(data.lengths, 0, seed, self.global_batch))
        self._plan: tuple[int, list[list[int]]] | None = None
        self._cache, data.rendered = data.rendered, {}
        self._cache_free = cache_bytes - sum(rendered_bytes(r) for r in self._cache.values())
        while self._cache_free < 0:  # a smaller budget than the check's: drop the surplus
            self._cache_free += rendered_bytes(self._cache.popitem()[1])

    def global_rows(self, step: int) -> list[int]:
        epoch, index = divmod(step, self.steps_per_epoch)
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, plan_epoch(self.data.lengths, epoch, self.seed, self.global_batch))
        return self._plan[1][index]

    def __len__(self) -> int:
        return 1 << 62  # indexed by step; the sampler gives the range

    def __getitem__(self, step: int) -> list[PackedBatch]:
        rows = self.global_rows(step)
        lengths = self.data.lengths
        parts = micro_batches(rows, lengths, self.rank, self.world_size, self.grad_accum)
        return [pack([p for i in part for p in self.render_row(i)]) for part in parts]

    def render_row(self, i: int) -> list[RenderedPrompt]:
        if i in self._cache:
            return self._cache[i]
        row = self.data.rows[i]
        try:
            out = [render(self.renderer, seq) for seq in row.sequences]
        except (AudioError, PromptError) as e:
            # Checked before training; only a file changed since then gets here. The row
            # becomes one token with nothing to learn, so every process still runs the step.
            log.warning("%s:%d: skipped during training: %s", self.data.path, row.line, e)
            eos = self.renderer.tokenizer.eos_token_id
            return [RenderedPrompt([eos], [], [], [False], 0)] * len(row.sequences)
        size = rendered_bytes(out)
        if size <= self._cache_free:
            self._cache[i] = out
            self._cache_free -= size
        return out
