"""Decode-only steps through the compiled decoder stack (model/fused_decode.py) give the bits of
the Python layer loop: the hidden states and every key and value written into the pool, on each
instruction set this CPU runs, for 16-bit and int8/int4 weights, GQA, and a pool whose blocks are
scattered. Steps with a prompt chunk, or more rows than the kernels take, stay on the loop."""

from __future__ import annotations

import pytest
import torch

from qwen_audio import kernels as K
from qwen_audio.loading import load_checkpoint
from qwen_audio.model.attention import AttentionBatch, PagedBatch

pytestmark = pytest.mark.skipif(K.load_kernels() is None, reason="needs the compiled CPU kernels")

BLOCK = 4


def _step(model, kv, ids, positions, contexts, tables, seq_lens):
    batch = AttentionBatch(seq_lens, PagedBatch(kv, contexts, tables))
    return model(torch.tensor(ids), torch.tensor(positions), batch), batch


def _prefilled(model, kv_dtype, prompt_lens, tables):
    """A pool holding each sequence's prompt, written by the Python path."""
    text = model.config.text
    kv = torch.zeros(
        text.num_hidden_layers,
        2,
        text.num_key_value_heads,
        64,
        BLOCK,
        text.head_dim,
        dtype=kv_dtype,
    )
    gen = torch.Generator().manual_seed(0)
    ids, positions = [], []
    for n in prompt_lens:
        ids += torch.randint(0, 400, (n,), generator=gen).tolist()
        positions += range(n)
    _step(model, kv, ids, positions, prompt_lens, tables, prompt_lens)
    return kv


def _both_paths(model, kv, prompt_lens, tables):
    """One decode step (a token per sequence) through the fused stack and through the loop."""
    lm = model.language_model.model
    fused = lm.fused_decode
    ids = [7 + 13 * i for i in range(len(prompt_lens))]
    contexts = [n + 1 for n in prompt_lens]
    args = (ids, prompt_lens, contexts, tables, [1] * len(prompt_lens))
    kv_fused, kv_loop = kv.clone(), kv.clone()
    hidden_fused, batch = _step(model, kv_fused, *args)
    assert fused.applies(hidden_fused, batch)
    try:
        lm.fused_decode = None
        hidden_loop, _ = _step(model, kv_loop, *args)
    finally:
        lm.fused_decode = fused
    return (hidden_fused, kv_fused), (hidden_loop, kv_loop)


def _tables(prompt_lens):
    """Block tables with room for one more token, interleaved across sequences."""
    need = [-(-(n + 1) // BLOCK) for n in prompt_lens]
    tables = [[] for _ in prompt_lens]
    block = 63
    for round_ in range(max(need)):
        for i, n in enumerate(need):
            if round_ < n:
                tables[i].append(block)
                block -= 1
    return tables


@pytest.mark.parametrize("isa", K.usable_isas())
@pytest.mark.parametrize("method", [None, "int8", "int4"])
@pytest.mark.parametrize("shape", ["mha", "gqa3"])
def test_fused_decode_gives_the_layer_loops_bits(checkpoints, monkeypatch, isa, method, shape):
    monkeypatch.setenv("QWEN_AUDIO_ISA", isa)
    ckpt = load_checkpoint(checkpoints(shape, init_std=0.02), dtype="bfloat16", quantize=method)
    model = ckpt.model
    assert model.language_model.model.fused_decode is not None
    prompt_lens = [5, 11, 3]
    tables = _tables(prompt_lens)
    with torch.inference_mode():
        kv = _prefilled(model, _kv_dtype(model), prompt_lens, tables)
        (h1, kv1), (h2, kv2) = _both_paths(model, kv, prompt_lens, tables)
    assert torch.equal(h1, h2)
    assert torch.equal(kv1, kv2)
    assert not torch.equal(kv1, kv)  # the step wrote its keys and values


def _kv_dtype(model) -> torch.dtype:
    return torch.float16 if model.dtype == torch.float32 else model.dtype


@pytest.mark.parametrize("method", [None, "int8"])
def test_steps_the_stack_does_not_take_run_the_layer_loop(checkpoints, method):
    """A prompt chunk in the step, or more rows than the kernels take (17 with 16-bit
    weights), or autograd: the Python layers run; int8 on x86-64 takes any number of float32
    rows."""
    ckpt = load_checkpoint(checkpoints("mha", init_std=0.02), dtype="bfloat16", quantize=method)
    fused = ckpt.model.language_model.model.fused_decode
    x = torch.zeros(17, 64, dtype=ckpt.model.dtype)
    kv = torch.zeros(2, 2, 4, 64, BLOCK, 16)
    decodes = AttentionBatch([1] * 17, PagedBatch(kv, [3] * 17, [[i] for i in range(17)]))
    down = ckpt.model.language_model.model.layers[0].mlp.down_proj
    # int8 on x86-64 takes any number of float32 rows (bf16 ones go to the GEMM)
    many = method == "int8" and K.selected_isa() != "neon" and x.dtype == torch.float32
    assert many == down.takes_any_rows(x.dtype)
    with torch.inference_mode():
        assert fused.applies(x, decodes) == many
        assert fused.applies(
            x[:16], AttentionBatch([1] * 16, PagedBatch(kv, [3] * 16, [[i] for i in range(16)]))
        )
        mixed = AttentionBatch([3, 1], PagedBatch(kv, [3, 5], [[0], [1, 2]]))
        assert not fused.applies(x[:4], mixed)
        assert not fused.applies(x[:1], AttentionBatch([1]))  # no pool: training, scoring
    assert not fused.applies(x[:1], AttentionBatch([1], PagedBatch(kv, [3], [[0]])))  # grad on


def test_many_int8_decodes_take_the_stack_with_float32_activations(checkpoints, monkeypatch):
    """20 sequences decoding together (past the 16-row limit of the float kernels) with int8
    weights and float32 activations: still one call, still the loop's bits."""
    if "avx2" not in K.usable_isas():
        pytest.skip("needs the x86-64 int8-input kernels")
    monkeypatch.setenv("QWEN_AUDIO_ISA", "avx2")
    ckpt = load_checkpoint(checkpoints("gqa3", init_std=0.02), dtype="bfloat16", quantize="int8")
    model = ckpt.model
    assert model.dtype == torch.float32
    prompt_lens = [2 + i % 7 for i in range(20)]
    tables = _tables(prompt_lens)
    with torch.inference_mode():
        kv = _prefilled(model, torch.float16, prompt_lens, tables)
        (h1, kv1), (h2, kv2) = _both_paths(model, kv, prompt_lens, tables)
    assert torch.equal(h1, h2) and torch.equal(kv1, kv2)
