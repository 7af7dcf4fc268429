"""qwen-audio: a fast, complete toolkit for the Qwen2-Audio audio-language model."""

from .llm import LLM
from .outputs import Delta, RequestOutput
from .sampling import SamplingParams

__version__ = "0.1.0"
__all__ = ["LLM", "AsyncLLM", "SamplingParams", "RequestOutput", "Delta"]


def __getattr__(name: str):
    # The async front-end pulls in asyncio machinery; import it only when asked for.
    if name == "AsyncLLM":
        from .async_llm import AsyncLLM

        return AsyncLLM
    raise AttributeError(name)
