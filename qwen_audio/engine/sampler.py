"""Turn last-position logits into next tokens, one row per sequence.

The order of the logit transforms is the reference's (transformers `generate`): repetition
penalty, min-tokens eos mask, then temperature, top-k and top-p, then a draw. Greedy rows
(temperature 0) skip the warpers and take the argmax, so they match the reference exactly.
"""

from __future__ import annotations

import torch

from ..sampling import SamplingParams


class RowSampler:
    """Sampling state of one sequence: its params, eos ids and its own random generator."""

    def __init__(self, params: SamplingParams, eos_token_ids: tuple[int, ...], device) -> None:
        self.params = params
        self.eos = torch.tensor(sorted(set(eos_token_ids) | set(params.stop_token_ids)))
        self.generator = None
        if params.temperature and params.seed is not None:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(params.seed)
        elif params.temperature:
            self.generator = torch.Generator(device=device)
            self.generator.seed()

    def process(self, logits: torch.Tensor, seen: torch.Tensor, num_generated: int):
        """Apply penalties and masks to one (vocab,) row of float32 logits, in place."""
        p = self.params
        if p.repetition_penalty != 1.0 and seen.numel():
            scores = logits.gather(0, seen)
            scores = torch.where(
                scores < 0, scores * p.repetition_penalty, scores / p.repetition_penalty
            )
            logits.scatter_(0, seen, scores)
        if num_generated < p.min_tokens and self.eos.numel():
            logits[self.eos.to(logits.device)] = -float("inf")
        return logits

    def sample(self, logits: torch.Tensor) -> int:
        p = self.params
        if not p.temperature:
            return int(logits.argmax())
        logits = logits / p.temperature
        if p.top_k and p.top_k > 0 and p.top_k < logits.numel():
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, -float("inf"))
        if p.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=False)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            drop = cumulative <= (1 - p.top_p)
            drop[-1] = False  # always keep the most likely token
            logits = logits.masked_fill(drop.scatter(0, order, drop), -float("inf"))
        probs = logits.softmax(-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
