"""Sampling options of one request, and how unset fields take the checkpoint's defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from .config import GenerationDefaults

DEFAULT_MAX_TOKENS = 256


@dataclass(frozen=True)
class SamplingParams:
    """What to generate. `None` means: the checkpoint's generation_config.json, else a default."""

    temperature: float | None = None  # 0 = greedy; default from generation_config, else 1.0
    top_p: float | None = None  # nucleus mass kept; 1.0 = off
    top_k: int | None = None  # keep the k most likely tokens; 0 or -1 = off
    repetition_penalty: float | None = None  # > 1 discourages tokens already in the sequence
    max_tokens: int | None = None  # new tokens at most (default 256)
    min_tokens: int = 0  # end-of-sequence tokens are masked until this many were generated
    stop: tuple[str, ...] = ()  # strings that end the answer; they are not included in the text
    stop_token_ids: tuple[int, ...] = ()  # extra ids that end the answer (besides the eos ids)
    ignore_eos: bool = False  # keep generating after eos (benchmarks)
    seed: int | None = None  # seeds this request's sampler; None = nondeterministic
    skip_special_tokens: bool = True
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop or ()))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids or ()))
        checks = [
            (
                self.temperature is None
                or (self.temperature >= 0 and math.isfinite(self.temperature)),
                "temperature must be >= 0",
            ),
            (self.top_p is None or 0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k is None or self.top_k >= -1, "top_k must be -1, 0 or positive"),
            (
                self.repetition_penalty is None or self.repetition_penalty > 0,
                "repetition_penalty must be > 0",
            ),
            (self.max_tokens is None or self.max_tokens >= 1, "max_tokens must be >= 1"),
            (self.min_tokens >= 0, "min_tokens must be >= 0"),
            (
                self.max_tokens is None or self.min_tokens <= self.max_tokens,
                "min_tokens must be <= max_tokens",
            ),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def resolve(self, defaults: GenerationDefaults) -> SamplingParams:
        """Fill every `None` from generation_config.json, then from plain defaults."""
        greedy_default = defaults.do_sample is False
        temperature = self.temperature
        if temperature is None:
            temperature = 0.0 if greedy_default else (defaults.temperature or 1.0)
        return replace(
            self,
            temperature=temperature,
            top_p=self.top_p if self.top_p is not None else (defaults.top_p or 1.0),
            top_k=self.top_k if self.top_k is not None else (defaults.top_k or 0),
            repetition_penalty=self.repetition_penalty
            if self.repetition_penalty is not None
            else (defaults.repetition_penalty or 1.0),
            max_tokens=self.max_tokens or defaults.max_new_tokens or DEFAULT_MAX_TOKENS,
        )
