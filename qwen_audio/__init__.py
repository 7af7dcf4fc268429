"""qwen-audio: a fast, complete toolkit for the Qwen2-Audio audio-language model."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["LLM", "AsyncLLM", "SamplingParams", "RequestOutput", "Delta"]

# Imported on first use: `import qwen_audio` (and the CLI's --help) must not pay for torch.
_LAZY = {
    "LLM": ".llm",
    "AsyncLLM": ".async_llm",
    "SamplingParams": ".sampling",
    "RequestOutput": ".outputs",
    "Delta": ".outputs",
}

if TYPE_CHECKING:
    from .async_llm import AsyncLLM
    from .llm import LLM
    from .outputs import Delta, RequestOutput
    from .sampling import SamplingParams


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'qwen_audio' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
