"""The paged KV pool: attention through block tables, the block manager's sharing and eviction,
chunked prefill, prefix sharing between concurrent requests."""

from __future__ import annotations

import pytest
import torch

from qwen_audio import LLM, SamplingParams
from qwen_audio.config import TextConfig
from qwen_audio.engine.block_manager import BlockManager
from qwen_audio.engine.engine import EngineConfig
from qwen_audio.engine.kv_cache import KVPool
from qwen_audio.engine.sequence import EngineRequest, Sequence
from qwen_audio.model.attention import AttentionBatch, PagedBatch
from qwen_audio.model.qwen2 import Qwen2Attention, RotaryEmbedding
from tests.conftest import noise_clip
from tests.test_engine import conv, request, run_until_done

# ---- attention through block tables -----------------------------------------------------------


@pytest.mark.parametrize(
    "tables",
    [[[5, 2, 11], [0, 7, 3], [9, 14]], [[0, 1, 2], [3, 4, 5], [6, 7]]],
    ids=["shuffled", "consecutive"],
)
def test_paged_attention_equals_attending_each_whole_sequence(tables):
    """One step mixing a decode, a chunk after cached tokens and a fresh prompt, through
    block tables in a pool full of NaN garbage, gives what plain causal attention over each
    whole sequence gives; so does a step with a lone decode."""
    torch.manual_seed(0)
    cfg = TextConfig(
        vocab_size=32,
        hidden_size=48,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=8,
    )
    attn = Qwen2Attention(cfg).eval()
    rope = RotaryEmbedding(cfg.head_dim, 10000.0)
    bs = 4
    pool = KVPool(cfg, num_blocks=16, block_size=bs, dtype=torch.float32)
    pool.kv.fill_(float("nan"))
    lengths = [9, 12, 6]  # whole sequences
    cached = [8, 7, 0]  # tokens already in the pool before the step
    for table in tables:
        for b in table:
            pool.zero_block(b)
    xs = [torch.randn(n, cfg.hidden_size) for n in lengths]

    def run(parts, ctx, seq_tables):
        x = torch.cat(parts)
        positions = torch.cat([torch.arange(c - len(p), c) for p, c in zip(parts, ctx)])
        cos, sin = rope(positions, x.dtype)
        paged = PagedBatch(pool.kv, ctx, seq_tables)
        return attn(x, cos, sin, AttentionBatch([len(p) for p in parts], paged), 0)

    with torch.no_grad():
        warm = [i for i in range(3) if cached[i]]
        # the cached tokens, written by an earlier step
        run(
            [xs[i][: cached[i]] for i in warm], [cached[i] for i in warm], [tables[i] for i in warm]
        )
        out = run([x[c:] for x, c in zip(xs, cached)], lengths, tables)
        starts = torch.tensor([0] + [n - c for n, c in zip(lengths, cached)]).cumsum(0)
        for i, x in enumerate(xs):
            cos, sin = rope(torch.arange(len(x)), x.dtype)
            whole = attn(x, cos, sin, AttentionBatch([len(x)]), 0)
            got = out[starts[i] : starts[i + 1]]
            torch.testing.assert_close(got, whole[cached[i] :], rtol=1e-5, atol=1e-5)
        # the first sequence alone, one token further (its 10th, in its third block)
        x = torch.cat([xs[0], torch.randn(1, cfg.hidden_size)])
        out = run([x[-1:]], [len(x)], [tables[0]])
        cos, sin = rope(torch.arange(len(x)), x.dtype)
        whole = attn(x, cos, sin, AttentionBatch([len(x)]), 0)
        torch.testing.assert_close(out, whole[-1:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_decode_kernel_through_the_pool_equals_sdpa(dtype):
    """On a CPU the compiled kernel attends every decode in one call, reading the blocks in
    place, whether they are in order, shuffled or a single one."""
    from qwen_audio import kernels as K

    module = K.load_kernels()
    if module is None:
        pytest.skip("no compiled kernels here")
    isa = K.ISA_IDS[K.selected_isa()]
    torch.manual_seed(1)
    H, Hkv, D, bs = 8, 2, 32, 4
    cfg = TextConfig(
        vocab_size=8, hidden_size=H * D, num_hidden_layers=1, num_attention_heads=H,
        num_key_value_heads=Hkv, head_dim=D,
    )  # fmt: skip
    pool = KVPool(cfg, num_blocks=12, block_size=bs, dtype=dtype)
    pool.kv.normal_()
    tables, contexts = [[3, 4, 5], [9, 1], [7]], [11, 6, 2]  # in order, shuffled, one block
    q = torch.randn(H, 3, D, dtype=dtype)
    k, v = torch.randn(2, Hkv, 3, D, dtype=dtype)
    paged = PagedBatch(pool.kv, contexts, tables)
    paged.prepare([1, 1, 1])

    def kernel(q2, kv_layer, block_tables, lengths):
        return module.paged_decode_attention(q2, kv_layer, block_tables, lengths, D**-0.5, isa)

    with_kernel = paged.attend(0, q, k, v, kernel)
    with_sdpa = paged.attend(0, q, k, v, None)
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(with_kernel, with_sdpa, rtol=tolerance, atol=tolerance)


# ---- block manager ----------------------------------------------------------------------------


def _seq(rid: str, ids: list[int]) -> Sequence:
    params = SamplingParams(temperature=0, max_tokens=4)
    return Sequence(EngineRequest(rid, ids, [], [], params), (0,), audio_token_id=-1)


def _manager(num_blocks: int, bs: int = 4) -> BlockManager:
    cfg = TextConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=1)
    return BlockManager(KVPool(cfg, num_blocks, bs, torch.float32))


def _compute(bm: BlockManager, seq: Sequence, n: int) -> None:
    """What a step does for the block manager: room for n more tokens, then registration."""
    bm.grow(seq, seq.num_cached + n)
    seq.num_cached += n
    bm.register(seq)


def test_full_blocks_are_shared_while_in_use_and_kept_after():
    bm = _manager(8)
    a = _seq("a", list(range(10)))
    bm.admit(a, bm.lookup(a))
    _compute(bm, a, 10)  # blocks [0-3] [4-7] full, [8, 9] partial
    assert len(bm.by_hash) == 2 and bm.num_used == 3
    b = _seq("b", list(range(8)) + [42, 43, 44])  # same first two blocks, still in use by a
    hits = bm.lookup(b)
    assert hits == a.block_table[:2]
    bm.admit(b, hits)
    assert b.num_cached == 8 and bm.num_used == 3  # shared, not copied
    _compute(bm, b, 3)
    assert bm.blocks[hits[0]].ref_count == 2
    bm.free(a)
    bm.free(b)
    assert bm.num_used == 0 and len(bm.cached) == 2  # the two full blocks stay cached
    c = _seq("c", list(range(9)))
    assert bm.lookup(c) == hits  # found after their sequences ended


def test_a_prompt_never_hits_its_own_last_token():
    bm = _manager(8)
    a = _seq("a", list(range(8)))
    bm.admit(a, [])
    _compute(bm, a, 8)
    bm.free(a)
    again = _seq("again", list(range(8)))
    assert len(bm.lookup(again)) == 1  # 7 tokens at most: one full block


def test_unreferenced_blocks_are_evicted_least_recently_released_first():
    bm = _manager(4)
    old, new = _seq("old", [1] * 8), _seq("new", [2] * 8)
    for s in (old, new):
        bm.admit(s, [])
        _compute(bm, s, 8)
    bm.free(old)
    bm.free(new)
    assert bm.num_free == 4 and len(bm.by_hash) == 4
    big = _seq("big", [3] * 12)
    assert bm.can_admit([], 12)
    bm.admit(big, [])
    _compute(bm, big, 12)  # three blocks: both of old's and new's last block go
    assert bm.lookup(_seq("x", [1] * 9)) == []
    assert len(bm.lookup(_seq("y", [2] * 9))) == 1  # new's first block survived


# ---- the engine ---------------------------------------------------------------------------------


def two_clip_conv() -> list[dict]:
    content = [
        {"type": "audio", "audio": (noise_clip(1.5, 7), 16000)},
        {"type": "text", "text": "and"},
        {"type": "audio", "audio": (noise_clip(2.5, 8), 16000)},
        {"type": "text", "text": "compare them"},
    ]
    return [{"role": "user", "content": content}]


def test_chunked_prefill_equals_one_prefill_and_encodes_each_clip_once(checkpoints):
    path = checkpoints("gqa1")
    p = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    whole = LLM(path, dtype="float32", engine_config=EngineConfig(enable_prefix_cache=False))
    expected = whole.chat(two_clip_conv(), p)[0].token_ids
    # 7 tokens a step: chunks end inside blocks and inside clips
    config = EngineConfig(max_prefill_tokens=7, enable_prefix_cache=False)
    llm = LLM(path, dtype="float32", engine_config=config)
    encoded = []
    begin = llm.model.audio_tower.begin
    llm.model.audio_tower.begin = lambda feats, frames: (
        encoded.append(len(feats)) or begin(feats, frames)
    )
    llm.engine.audio_cache.max_entries = 0  # only the sequence's own copy may avoid re-encoding
    assert llm.chat(two_clip_conv(), p)[0].token_ids == expected
    assert sum(encoded) == 2


def test_running_streams_get_a_token_every_step_while_a_long_prompt_is_chunked(checkpoints):
    path = checkpoints("gqa1")
    llm = LLM(path, dtype="float32", engine_config=EngineConfig(max_prefill_tokens=16))
    engine = llm.engine
    engine.add_request(request(llm, "a", conv(1.0, 1), 40))
    engine.step()
    while engine.running[0].num_cached < engine.running[0].num_tokens - 1:
        engine.step()  # a's own prompt, chunk by chunk
    engine.add_request(request(llm, "b", conv(8.0, 2), 3))
    steps = 0
    while not any(s.request_id == "b" and s.output_ids for s in engine.running):
        outs = engine.step()
        steps += 1
        assert "a" in {o.request_id for o in outs}
    assert steps >= 4  # b's prompt took several steps, a decoded through all of them
    run_until_done(engine, {"a", "b"})


def test_prompt_chunks_shrink_while_other_sequences_decode(checkpoints):
    path = checkpoints("gqa1")
    config = EngineConfig(max_prefill_tokens=64, prefill_tokens_while_decoding=16)
    llm = LLM(path, dtype="float32", engine_config=config)
    engine = llm.engine
    engine.add_request(request(llm, "a", conv(2.0, 1), 20))
    engine.step()
    assert engine.running[0].num_cached == 64  # alone: the whole budget
    while not engine.running[0].output_ids:
        engine.step()
    engine.add_request(request(llm, "b", conv(2.0, 2), 3))
    engine.step()
    b = next(s for s in engine.running if s.request_id == "b")
    assert b.num_cached - b.num_prefix_hit == 16  # a decodes: small chunks (after its hits)
    run_until_done(engine, {"a", "b"})


def test_a_clips_encoder_spreads_over_steps_while_streams_decode(checkpoints):
    """With a zero encoder budget a step runs one encoder layer while others decode: the clip
    takes several steps, the running stream gets a token in every one, and the answer is the
    one of an engine that encodes whole clips."""
    path = checkpoints("gqa1")
    staged = LLM(path, dtype="float32", engine_config=EngineConfig(encoder_step_seconds=0.0))
    whole = LLM(path, dtype="float32", engine_config=EngineConfig(encoder_step_seconds=None))
    layers = len(staged.model.audio_tower.layers)
    answers = []
    for llm in (staged, whole):
        engine = llm.engine
        engine.add_request(request(llm, "a", conv(1.0, 1), 40))
        while not engine.running or not engine.running[0].output_ids:
            engine.step()  # a's prompt
        engine.add_request(request(llm, "b", conv(8.0, 2), 3))
        steps, tokens = 0, {"a": [], "b": []}
        while not tokens["b"]:
            outs = engine.step()
            steps += 1
            assert "a" in {o.request_id for o in outs}, steps  # a was not stalled
            for o in outs:
                tokens[o.request_id] += o.new_token_ids
        rest = run_until_done(engine, {"a", "b"})
        answers.append({k: tokens[k] + rest[k] for k in tokens})
        if llm is staged:
            assert steps >= layers >= 2  # one layer a step (b's prompt joins the last)
    assert answers[0] == answers[1]


def test_staged_encoder_gives_forwards_bits(checkpoints):
    llm = LLM(checkpoints("gqa1"), dtype="float32")
    tower = llm.model.audio_tower
    feats = [torch.randn(tower.config.num_mel_bins, n) for n in (300, 122, 300)]
    frames = [298, 120, 250]
    with torch.inference_mode():
        want = tower(feats, frames)
        part = tower.begin(feats, frames)
        with pytest.raises(ValueError, match="layers left"):
            tower.end(part)
        while not tower.done(part):
            part = tower.advance(part)
        for got, expected in zip(tower.end(part), want):
            assert torch.equal(got, expected)


def test_concurrent_requests_share_the_prefix_being_computed(checkpoints):
    """The same clip asked four questions, sent together: the shared part is computed once,
    and the answers are those of an engine without the cache."""
    path = checkpoints("gqa1")
    clip = noise_clip(3.0, 11)
    questions = ["what is it?", "how long?", "is it loud?", "who speaks?"]
    convs = [
        [{"role": "user", "content": [{"type": "audio", "audio": (clip, 16000)}, q]}]
        for q in ({"type": "text", "text": t} for t in questions)
    ]
    p = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    # 100 tokens a step: the first prompt's second chunk shares a step with the others' first
    config = EngineConfig(max_prefill_tokens=100)
    llm = LLM(path, dtype="float32", engine_config=config)
    got = [o.token_ids for o in llm.chat(convs, p)]
    plain = LLM(path, dtype="float32", engine_config=EngineConfig(enable_prefix_cache=False))
    assert got == [o.token_ids for o in plain.chat(convs, p)]
    stats = llm.engine.stats()
    prompt = len(llm.renderer.render_chat(convs[0]).token_ids)
    computed = stats["prefix_cache_queried_tokens"] - stats["prefix_cache_hit_tokens"]
    # one whole prompt, then for each other one its question and the block that starts it (205
    # here; 237 when the others do not wait for the first one's blocks)
    assert computed <= prompt + 3 * (llm.engine.config.block_size + 10)


def test_a_request_ended_early_keeps_its_blocks_cached(checkpoints):
    """A stop string ends a request through an abort: its prefix is still good to reuse."""
    llm = LLM(checkpoints("gqa1"), dtype="float32")
    engine = llm.engine
    engine.add_request(request(llm, "x", conv(2.0, 5), 50))
    while not (engine.running and len(engine.running[0].output_ids) >= 3):
        engine.step()
    engine.abort("x")
    engine.step()
    assert engine.blocks.num_used == 0 and engine.stats()["kv_blocks_cached"] > 0
    engine.add_request(request(llm, "y", conv(2.0, 5), 2))
    run_until_done(engine, {"y"})
    prompt = len(llm.renderer.render_chat(conv(2.0, 5)).token_ids)
    assert engine.stats()["prefix_cache_hit_tokens"] >= prompt - engine.config.block_size


def test_metrics_show_blocks_preemptions_and_prefix_hits(checkpoints):
    from qwen_audio.server.metrics import Metrics

    llm = LLM(checkpoints("gqa1"), dtype="float32")
    p = SamplingParams(temperature=0, max_tokens=2)
    llm.chat(conv(1.0, 3), p)
    llm.chat(conv(1.0, 3), p)  # the second time from the cache
    stats = llm.engine.stats()
    assert stats["prefix_cache_hit_rate"] > 0.4
    text = Metrics("m").render(stats)
    blocks = stats["kv_blocks_total"]
    for needle in (
        f"qwen_audio_kv_cache_blocks_free {blocks}",
        "qwen_audio_kv_cache_blocks_used 0",
        "# TYPE qwen_audio_engine_preemptions_total counter",
        "qwen_audio_engine_preemptions_total 0",
        f"qwen_audio_prefix_cache_hit_tokens_total {stats['prefix_cache_hit_tokens']}",
        f"qwen_audio_prefix_cache_hit_rate {stats['prefix_cache_hit_rate']}",
    ):
        assert needle in text
