"""From engine token ids to user-facing text: detokenising, stop strings, results."""

from __future__ import annotations

from dataclasses import dataclass, field

from .engine.sequence import StepOutput
from .tokenizer import IncrementalDecoder, Tokenizer


@dataclass
class RequestOutput:
    """The finished answer to one prompt or conversation."""

    request_id: str
    text: str
    token_ids: list[int]  # generated ids, the final eos included when there is one
    finish_reason: str  # "stop" (eos or a stop string) | "length" (max_tokens) | "abort"
    prompt_tokens: int = 0  # audio tokens included
    audio_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the prefix cache

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class Delta:
    """A streamed piece of an answer; `finish_reason` is set on the last one."""

    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    prompt_tokens: int = 0
    audio_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass
class OutputBuilder:
    """Accumulates one request's output; holds back text that might begin a stop string."""

    request_id: str
    tokenizer: Tokenizer
    stop: tuple[str, ...]
    skip_special_tokens: bool = True
    audio_tokens: int = 0
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of `text` already streamed
    finish_reason: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0

    def __post_init__(self) -> None:
        self._decoder = IncrementalDecoder(self.tokenizer, self.skip_special_tokens)
        self._holdback = max((len(s) for s in self.stop), default=1) - 1

    def push(self, out: StepOutput) -> Delta:
        """Add an engine step; returns the delta to stream (may be empty text)."""
        self.prompt_tokens = out.num_prompt_tokens
        self.cached_tokens = out.num_cached_prompt_tokens
        new_ids = []
        for token in out.new_token_ids:
            if self.finish_reason is not None:
                break
            new_ids.append(token)
            self.token_ids.append(token)
            self.text += self._decoder.push(token)
            if self._check_stop():
                break
        if out.finished and self.finish_reason is None:
            self.text += self._decoder.flush()
            self._check_stop()
            if self.finish_reason is None:
                self.finish_reason = out.finish_reason
        done = self.finish_reason is not None
        end = len(self.text) if done else max(self.emitted, len(self.text) - self._holdback)
        delta = Delta(
            self.request_id,
            self.text[self.emitted : end],
            new_ids,
            self.finish_reason,
            self.prompt_tokens,
            self.audio_tokens,
            len(self.token_ids),
            self.cached_tokens,
        )
        self.emitted = end
        return delta

    def _check_stop(self) -> bool:
        if not self.stop:
            return False
        # Only the tail can hold a new match: search from where a stop string could start.
        window = max(0, self.emitted - self._holdback - 1)
        hits = [(i, s) for s in self.stop if (i := self.text.find(s, window)) != -1]
        if not hits:
            return False
        self.text = self.text[: min(i for i, _ in hits)]
        self.finish_reason = "stop"
        return True

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def result(self) -> RequestOutput:
        return RequestOutput(
            self.request_id,
            self.text,
            list(self.token_ids),
            self.finish_reason or "abort",
            self.prompt_tokens,
            self.audio_tokens,
            self.cached_tokens,
        )
