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


def test_preparation_runs_on_the_bounded_pool(checkpoints):
    # decoding, features and tokenizing of concurrent requests: at most prepare_workers at once,
    # never on the event loop's thread
    import threading
    import time

    engine = AsyncLLM(checkpoints("mha"), dtype="float32", prepare_workers=2)
    render = engine.renderer.render_chat
    seen = {"now": 0, "most": 0, "threads": set()}
    lock = threading.Lock()

    def counting_render(messages):
        with lock:
            seen["now"] += 1
            seen["most"] = max(seen["most"], seen["now"])
            seen["threads"].add(threading.current_thread().name)
        time.sleep(0.05)  # long enough for the others to pile up
        try:
            return render(messages)
        finally:
            with lock:
                seen["now"] -= 1

    engine.renderer.render_chat = counting_render
    params = SamplingParams(temperature=0.0, max_tokens=2)

    async def one(i):
        async for _ in engine.stream_chat(conv(0.5, i, "hi"), params):
            pass

    async def main():
        await asyncio.gather(*(one(i) for i in range(6)))

    try:
        asyncio.run(main())
    finally:
        engine.shutdown()
    assert seen["most"] == 2
    assert all(name.startswith("qwen-audio-prepare") for name in seen["threads"])


def test_preparation_threads_compute_serially(checkpoints):
    # only the engine thread keeps an OpenMP team (qwen_audio.openmp): with the loading
    # thread's team and a team per preparation thread, every engine step waits on sleeping
    # workers (the server's steps took 1.4x longer on 2 cores)
    import torch

    from qwen_audio import openmp

    if openmp._libgomp() is None:
        pytest.skip("torch does not run on a libgomp loaded in this process")
    before = torch.get_num_threads()
    engine = AsyncLLM(checkpoints("mha"), dtype="float32", prepare_workers=2)
    try:
        threads = asyncio.run(engine.run_prepare(torch.get_num_threads))
    finally:
        engine.shutdown()
    assert threads == 1
    assert torch.get_num_threads() == before  # the caller's threads are its own


def test_a_steps_deltas_reach_the_event_loop_in_one_call(checkpoints):
    # the engine thread wakes the event loop once per step, not once per sequence
    engine = AsyncLLM(checkpoints("gqa1"), dtype="float32")
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    step, steps = engine.engine.step, []

    def counting_step():
        outputs = step()
        if outputs:
            steps.append(len(outputs))
        return outputs

    engine.engine.step = counting_step
    wakeups = []

    async def main():
        prompts = await asyncio.gather(*(engine.prepare_chat(conv(0.5, i, "hi")) for i in range(4)))
        loop = asyncio.get_running_loop()
        call = loop.call_soon_threadsafe

        def counting_call(fn, *args):
            wakeups.append(fn)
            return call(fn, *args)

        loop.call_soon_threadsafe = counting_call  # from here on, only the engine thread calls

        async def one(p):
            return [d async for d in engine.stream_prompt(p, params)]

        return await asyncio.gather(*(one(p) for p in prompts))

    try:
        streams = asyncio.run(main())
    finally:
        engine.shutdown()
    assert all(len(deltas) == 8 for deltas in streams)
    assert sum(steps) >= 32 and len(wakeups) == len(steps) < sum(steps)
