"""AsyncLLM: concurrent requests batch together, agree with LLM, and cancel cleanly."""

from __future__ import annotations

import asyncio

import pytest

from qwen_audio import LLM, SamplingParams
from qwen_audio.async_llm import AsyncLLM
from qwen_audio.engine.engine import ContextLengthError
from tests.conftest import noise_clip


def conv(seconds, seed, text):
    clip = noise_clip(seconds, seed=seed)
    return [
        {
            "role": "user",
            "content": [{"type": "audio", "audio": (clip, 16000)}, {"type": "text", "text": text}],
        }
    ]


def test_concurrent_streams_equal_sync_results(checkpoints):
    path = checkpoints("gqa1")
    params = SamplingParams(temperature=0.0, max_tokens=12)
    convs = [conv(1.0 + i, i, f"question {i}") for i in range(4)]
    expected = [o.token_ids for o in LLM(path, dtype="float32").chat(convs, params)]
    engine = AsyncLLM(path, dtype="float32")

    async def collect(c):
        ids = []
        async for d in engine.stream_chat(c, params):
            ids += d.token_ids
        return ids

    async def main():
        return await asyncio.gather(*(collect(c) for c in convs))

    try:
        assert asyncio.run(main()) == expected
    finally:
        engine.shutdown()


def test_closing_a_stream_aborts_and_frees_memory(checkpoints):
    engine = AsyncLLM(checkpoints("mha"), dtype="float32")
    params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)

    async def main():
        stream = engine.stream_chat(conv(2.0, 1, "go on"), params, request_id="gone")
        async for _ in stream:
            break  # the client disappears after the first delta
        await stream.aclose()
        for _ in range(100):
            if engine.stats()["running"] == 0:
                break
            await asyncio.sleep(0.02)
        return engine.stats()

    try:
        stats = asyncio.run(main())
        assert stats["running"] == 0 and stats["waiting"] == 0
    finally:
        engine.shutdown()


def test_context_error_is_raised_to_the_caller(checkpoints):
    engine = AsyncLLM(checkpoints("mha"), dtype="float32")
    engine.engine.max_model_len = 32

    async def main():
        async for _ in engine.stream_chat(conv(3.0, 1, "long"), SamplingParams(max_tokens=4)):
            pass

    try:
        with pytest.raises(ContextLengthError):
            asyncio.run(main())
    finally:
        engine.shutdown()
