"""Engine behaviour: continuous batching, memory budget, prefix cache, aborts."""

from __future__ import annotations

import pytest

from qwen_audio import LLM, SamplingParams
from qwen_audio.engine.engine import ContextLengthError, EngineConfig
from qwen_audio.engine.sequence import EngineRequest
from tests.conftest import noise_clip


def conv(seconds: float, seed: int, text: str = "What is it?") -> list[dict]:
    content = [{"type": "audio", "audio": (noise_clip(seconds, seed=seed), 16000)}]
    return [{"role": "user", "content": content + [{"type": "text", "text": text}]}]


def request(llm: LLM, rid: str, c: list[dict], max_tokens: int) -> EngineRequest:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    req, _ = llm.make_request(llm.renderer.render_chat(c), params, rid)
    return req


def run_until_done(engine, ids: set[str]) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {i: [] for i in ids}
    done: set[str] = set()
    while done != ids:
        for out in engine.step():
            tokens[out.request_id] += out.new_token_ids
            if out.finished:
                done.add(out.request_id)
    return tokens


def test_requests_join_a_running_batch_and_match_solo_runs(checkpoints):
    path = checkpoints("gqa1")
    llm = LLM(path, dtype="float32", engine_config=EngineConfig(enable_prefix_cache=False))
    engine = llm.engine
    engine.add_request(request(llm, "a", conv(2.0, 1), 10))
    for _ in range(3):
        engine.step()  # "a" is decoding when "b" arrives
    engine.add_request(request(llm, "b", conv(6.0, 2), 6))
    steps_with_both = 0
    tokens = {"a": [], "b": []}
    done = set()
    while len(done) < 2:
        outs = engine.step()
        if {o.request_id for o in outs} == {"a", "b"}:
            steps_with_both += 1
        for o in outs:
            tokens[o.request_id] += o.new_token_ids
            done |= {o.request_id} if o.finished else set()
    assert steps_with_both >= 1  # b was prefilled while a kept decoding
    solo = LLM(path, dtype="float32")
    p = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    assert tokens["b"] == solo.chat(conv(6.0, 2), p)[0].token_ids


def test_kv_budget_bounds_the_pool_and_preempts_instead_of_failing(checkpoints):
    """Blocks are taken as tokens arrive: more requests run at once than their worst cases
    would allow, and when the pool runs out the newest are preempted and computed again later,
    with the same tokens as alone."""
    path = checkpoints("mha")
    probe = LLM(path, dtype="float32", engine_config=EngineConfig(enable_prefix_cache=False))
    max_tokens = 80
    prompt_len = len(probe.renderer.render_chat(conv(1.0, 0)).token_ids)
    block_bytes = probe.engine.pool.block_bytes
    bs = probe.engine.config.block_size
    blocks_per_request = -(-(prompt_len + max_tokens) // bs)
    budget = int(blocks_per_request * 2.5) * block_bytes  # two worst cases and a half
    config = EngineConfig(kv_budget_bytes=budget, enable_prefix_cache=False)
    llm = LLM(path, dtype="float32", engine_config=config)
    engine = llm.engine
    assert engine.pool.nbytes <= budget
    ids = {f"r{i}" for i in range(5)}
    for i, rid in enumerate(sorted(ids)):
        engine.add_request(request(llm, rid, conv(1.0, i), max_tokens))
    most_running = 0
    tokens = {i: [] for i in ids}
    done = set()
    while done != ids:
        for o in engine.step():
            assert o.finish_reason != "abort"
            tokens[o.request_id] += o.new_token_ids
            if o.finished:
                done.add(o.request_id)
        most_running = max(most_running, len(engine.running))
        assert engine.blocks.num_used <= engine.blocks.num_blocks
    assert most_running >= 3  # worst-case reservation would have allowed 2
    assert engine.stats()["preemptions"] > 0
    assert engine.stats()["kv_blocks_used"] == 0
    p = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    for i in (0, 4):  # the first admitted, and one preempted at least once
        assert tokens[f"r{i}"] == probe.chat(conv(1.0, i), p)[0].token_ids


def test_request_larger_than_the_budget_is_refused(checkpoints):
    llm = LLM(checkpoints("mha"), dtype="float32", engine_config=EngineConfig(kv_budget_bytes=4096))
    with pytest.raises(ContextLengthError, match="KV cache"):
        llm.chat(conv(1.0, 0), SamplingParams(max_tokens=8))


def test_abort_frees_memory_at_once(checkpoints):
    llm = LLM(checkpoints("mha"), dtype="float32")
    engine = llm.engine
    engine.add_request(request(llm, "x", conv(1.0, 0), 100))
    engine.step()
    assert engine.blocks.num_used > 0
    engine.abort("x")
    outs = engine.step()
    assert [(o.request_id, o.finish_reason) for o in outs] == [("x", "abort")]
    assert engine.blocks.num_used == 0 and not engine.running


def test_prefix_cache_skips_earlier_turns_with_the_same_answer(checkpoints):
    path = checkpoints("gqa3")
    llm = LLM(path, dtype="float32")
    params = SamplingParams(temperature=0, max_tokens=6)
    turn1 = conv(4.0, 3, "first question")
    a1 = llm.chat(turn1, params)[0]
    turn2 = turn1 + [
        {"role": "assistant", "content": a1.text},
        {"role": "user", "content": [{"type": "audio", "audio": (noise_clip(2.0, 4), 16000)}]},
    ]
    a2 = llm.chat(turn2, params)[0]
    turn1_len = len(llm.renderer.render_chat(turn1).token_ids)
    assert a2.cached_tokens >= turn1_len - llm.engine.config.block_size
    # the same answer as without the cache
    uncached = LLM(path, dtype="float32", engine_config=EngineConfig(enable_prefix_cache=False))
    assert uncached.chat(turn2, params)[0].token_ids == a2.token_ids
    # finished requests hold no block, but their full blocks stay cached for later requests
    stats = llm.engine.stats()
    assert stats["kv_blocks_used"] == 0 and stats["kv_blocks_cached"] > 0
    assert stats["prefix_cache_hit_tokens"] == a2.cached_tokens


def test_batch_of_mixed_lengths_is_packed_without_padding(checkpoints):
    """Sixteen requests of 0.5-30 s in one call equal their one-by-one answers."""
    path = checkpoints("mha")
    llm = LLM(path, dtype="float32", engine_config=EngineConfig(enable_prefix_cache=False))
    convs = [conv(0.5 + i * 1.9, 40 + i) for i in range(16)]
    p = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    batched = [o.token_ids for o in llm.chat(convs, p)]
    singles = [llm.chat(c, p)[0].token_ids for c in convs[::5]]
    assert batched[::5] == singles
