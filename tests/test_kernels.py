"""The CPU kernels against PyTorch, on every instruction set this CPU can run, random and odd
shapes, every weight format; and the run-time choice of the instruction set."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from torch import nn

from qwen_audio import kernels as K
from qwen_audio.model import quant
from qwen_audio.model.packed import PackedLinear

module = K.load_kernels()
ISAS = K.usable_isas() if module is not None else []


def _why_no_kernels() -> str:
    """The one cause, in the order load_kernels checks them."""
    if os.environ.get("QWEN_AUDIO_KERNELS", "1") == "0":
        return "QWEN_AUDIO_KERNELS=0 turns them off"
    if K.selected_isa() == "none":
        return "this CPU has none of AVX2+FMA+F16C, AVX-512 or NEON"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler (install g++, or set CXX)"
    return "their build failed (the warning from qwen_audio.kernels says why)"


needs_kernels = pytest.mark.skipif(
    module is None, reason=f"CPU kernels unavailable: {_why_no_kernels()}"
)
FORMATS = ["bf16", "fp16", "int8", "int4"]


def packed(fmt: str, n: int, k: int, seed: int, bias: bool = False) -> PackedLinear:
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.normal_(0, 0.05)
    return PackedLinear.from_linear(lin, fmt, torch.float32)


def reference_weight(p: PackedLinear) -> torch.Tensor:
    if p.format in quant.METHODS:
        return quant.dequantize(p.format, *p.stored_weight()).double()
    return p.weight.double()


def assert_products_close(
    y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, int8_inputs: bool = False
) -> None:
    """float32 accumulation in another order: within 1e-5 of the magnitude that was summed.

    `int8_inputs`: the kernel rounded each group of 32 inputs to int8 (AVX2's int8/int4 path),
    which moves each input by at most half its group's step, max|x| / 127 / 2."""
    exact = x.double() @ w.T
    scale = x.double().abs() @ w.abs().T
    bound = 1e-5 * scale + 1e-7
    if int8_inputs:
        M, Kin = x.shape
        step = x.double().abs().reshape(M, Kin // 32, 32).amax(-1) / 127  # (M, G)
        w_sums = w.abs().reshape(w.shape[0], Kin // 32, 32).sum(-1)  # (N, G)
        bound = bound + (0.5 + 1e-6) * step @ w_sums.T
    assert ((y.double() - exact).abs() <= bound).all()


def rounds_inputs(isa: str, fmt: str) -> bool:
    """x86-64 multiplies int8/int4 weights by int8-rounded inputs (NEON widens to float32)."""
    return isa in ("avx2", "avx2_vnni", "avx512", "avx512_bf16") and fmt in ("int8", "int4")


@needs_kernels
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 9, 16, 17, 70])
def test_decode_kernel_equals_pytorch(isa, fmt, rows):
    """Up to 16 rows on every path; more where int8/int4 weights meet int8-rounded inputs
    (x86-64), which take prefills too."""
    if rows > 16 and not rounds_inputs(isa, fmt):
        pytest.skip("more than 16 rows go to the tiled GEMM on this path")
    # odd outputs, across the 16-row weight chunks; 1, 3, 6 and 16 groups (every tail of the 2-
    # and 4-group loops)
    for n, k in [(37, 96), (64, 32), (33, 192), (129, 4096 // 8)]:
        p = packed(fmt, n, k, seed=rows + n)
        x = torch.randn(rows, k)
        scales = p.scales if p.scales is not None else _empty()
        y = module.linear(x, p.weight, scales, _fmt(p), _isa(isa))
        assert y.shape == (rows, n)
        assert_products_close(y, x, reference_weight(p), rounds_inputs(isa, fmt))
        # each row's sums do not depend on the other rows: batched == single, bit for bit
        for i in range(rows):
            one = module.linear(x[i : i + 1], p.weight, scales, _fmt(p), _isa(isa))
            assert torch.equal(one[0], y[i])


@needs_kernels
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rows", [1, 5, 40])
def test_stacked_weights_give_each_weights_own_bits(isa, fmt, rows):
    """q/k/v (or gate/up) in one call: the columns of each weight are exactly its own call's."""
    if rows > 16 and not rounds_inputs(isa, fmt):
        pytest.skip("more than 16 rows go to the tiled GEMM on this path")
    layers = [packed(fmt, n, 96, seed=n) for n in (64, 17, 33)]
    x = torch.randn(rows, 96)
    scales = [_empty() if p.scales is None else p.scales for p in layers]
    weights = [p.weight for p in layers]
    got = module.linear_many(x, weights, scales, _fmt(layers[0]), _isa(isa))
    alone = [module.linear(x, w, s, _fmt(layers[0]), _isa(isa)) for w, s in zip(weights, scales)]
    assert torch.equal(got, torch.cat(alone, dim=1))
    if isa == "avx512_bf16" and fmt == "bf16" and rows <= 16:  # bf16 in, bf16 out
        xb = x.bfloat16()
        got = module.linear_bf16_native_many(xb, weights)
        alone = [module.linear_bf16_native(xb, w) for w in weights]
        assert torch.equal(got, torch.cat(alone, dim=1))
    with pytest.raises(RuntimeError, match="same inputs"):
        other = packed(fmt, 8, 64, seed=0)
        extra = _empty() if other.scales is None else other.scales
        module.linear_many(x, [weights[0], other.weight], [scales[0], extra], _fmt(other), 1)


@needs_kernels
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_dequantize_kernel_is_exact(isa, fmt):
    p = packed(fmt, 45, 160, seed=3)
    scales = p.scales if p.scales is not None else _empty()
    full = module.dequantize(p.weight, scales, _fmt(p), _isa(isa), 0, 45)
    assert torch.equal(full.double(), reference_weight(p))
    part = module.dequantize(p.weight, scales, _fmt(p), _isa(isa), 7, 30)
    assert torch.equal(part, full[7:30])


@needs_kernels
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", ["bf16", "fp16", "int8", "int4", "int8x8", "int4x8"])
def test_bf16_tiles_round_as_pytorch(isa, fmt):
    """The bf16 GEMM's tiles come out of the kernel in bf16: the float32 values rounded to
    nearest even, as .to(torch.bfloat16) rounds them, ties and row ranges inside blocks too."""
    p = packed(fmt.removesuffix("x8"), 48, 160, seed=5)
    weight, scales = p.weight, p.scales if p.scales is not None else _empty()
    if fmt == "fp16":  # values with a bit below bf16's precision set: halfway cases for rounding
        weight = (weight.float() + torch.randn(48, 160) * 1e-4).half()
    format = _fmt(p)
    if fmt.endswith("x8"):
        weight, scales = quant.to_row_blocks(weight, scales)
        format = K.BLOCKS8_FORMAT_IDS[p.format]
    for n0, n1 in [(0, 48), (5, 29)]:
        wide = module.dequantize(weight, scales, format, _isa(isa), n0, n1)
        narrow = module.dequantize(weight, scales, format, _isa(isa), n0, n1, True)
        assert narrow.dtype == torch.bfloat16
        assert torch.equal(narrow.view(torch.int16), wide.to(torch.bfloat16).view(torch.int16))
    ties = torch.tensor([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, -(1.0 + 2.0**-8)] * 32)  # exact halves
    tie_weight = ties.reshape(3, 32).to(torch.float16)
    got = module.dequantize(tie_weight, _empty(), K.FORMAT_IDS["fp16"], _isa(isa), 0, 3, True)
    assert torch.equal(
        got.view(torch.int16), tie_weight.float().to(torch.bfloat16).view(torch.int16)
    )


@needs_kernels
def test_kernel_rejects_bad_shapes():
    sixteen = packed("bf16", 8, 64, seed=0)
    with pytest.raises(RuntimeError, match="1 to 16 input rows"):
        module.linear(torch.randn(17, 64), sixteen.weight, _empty(), 0, _isa(ISAS[0]))
    p = packed("int8", 8, 64, seed=0)
    with pytest.raises(RuntimeError, match="float32"):
        module.linear(torch.randn(1, 32), p.weight, p.scales, 2, _isa(ISAS[0]))
    with pytest.raises(RuntimeError, match="scales"):
        module.linear(torch.randn(1, 64), p.weight, _empty(), 2, _isa(ISAS[0]))


@needs_kernels
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("outputs", [300, 304])  # 304: whole 8-row blocks where AVX2 repacks
def test_packed_linear_paths_agree(isa, fmt, outputs):
    """Decode kernel (<= 16 rows), tiled GEMM (more rows, or autograd on), and plain PyTorch."""
    p = packed(fmt, outputs, 256, seed=5, bias=True)
    plain = packed(fmt, outputs, 256, seed=5, bias=True)  # same weights, no kernels attached
    assert p.use_kernels(module, isa)
    w = reference_weight(p)
    for rows in (1, 16, 17, 70):
        x = torch.randn(rows, 256)
        with torch.inference_mode():
            got, ref = p(x), plain(x)
        int8_inputs = rows <= 16 or p.int_inputs_any_rows  # float32 rows: the int path
        assert_products_close(got - p.bias, x, w, int8_inputs and rounds_inputs(isa, fmt))
        assert_products_close(ref - p.bias, x, w)
    x = torch.randn(2, 256)  # autograd on: the tiled GEMM, same dequantized weights as PyTorch's
    torch.testing.assert_close(p(x), plain(x), rtol=0, atol=0)


@pytest.mark.parametrize(("fmt", "words"), [("int4", 4), ("int8", 8)])
def test_row_blocks_are_a_permutation_of_the_rows(fmt, words):
    """Run j of group g in block b holds bytes 4j..4j+3 of each of the block's 8 rows."""
    p = packed(fmt, 24, 96, seed=9)
    q, s = p.weight, p.scales
    blocks, block_scales = quant.to_row_blocks(q, s)
    assert blocks.shape == q.shape and block_scales.shape == s.shape
    groups, group_bytes = 96 // 32, 4 * words
    for b, g, j, c in [(0, 0, 0, 0), (1, 2, words - 1, 7), (2, 1, 2, 5)]:
        start = ((b * groups + g) * words + j) * 32 + c * 4
        got = blocks.reshape(-1)[start : start + 4]
        first = g * group_bytes + 4 * j
        assert torch.equal(got, q[b * 8 + c, first : first + 4])
        assert block_scales.reshape(-1)[(b * groups + g) * 8 + c] == s[b * 8 + c, g]
    back = quant.from_row_blocks(blocks, block_scales)
    assert torch.equal(back[0], q) and torch.equal(back[1], s)


X86_ISAS = [isa for isa in ISAS if isa != "neon"]


@needs_kernels
@pytest.mark.parametrize("isa", X86_ISAS)
@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("rows", [1, 2, 4, 5, 6, 7, 13, 16, 40])
def test_row_blocks_kernel_equals_pytorch(isa, fmt, rows):
    """int8/int4 in 8-row blocks: products within the int8-rounding bound, batched == single
    bit for bit, stacked weights each their own bits; 1, 3, 5 and 128 groups, 8 to 136 outputs."""
    blocks8 = K.BLOCKS8_FORMAT_IDS[fmt]
    for n, k in [(8, 32), (40, 96), (136, 160), (16, 4096)]:
        p = packed(fmt, n, k, seed=rows + n)
        blocks, scales = quant.to_row_blocks(p.weight, p.scales)
        x = torch.randn(rows, k)
        y = module.linear(x, blocks, scales, blocks8, _isa(isa))
        assert_products_close(y, x, reference_weight(p), int8_inputs=True)
        for i in range(rows):
            one = module.linear(x[i : i + 1], blocks, scales, blocks8, _isa(isa))
            assert torch.equal(one[0], y[i])
    layers = [packed(fmt, n, 64, seed=n) for n in (64, 16, 24)]
    stacked = [quant.to_row_blocks(p.weight, p.scales) for p in layers]
    x = torch.randn(rows, 64)
    got = module.linear_many(x, [w for w, _ in stacked], [s for _, s in stacked], blocks8, 1)
    alone = [module.linear(x, w, s, blocks8, 1) for w, s in stacked]
    assert torch.equal(got, torch.cat(alone, dim=1))


VNNI_ISAS = [isa for isa in ("avx2_vnni", "avx512", "avx512_bf16") if isa in ISAS]


@needs_kernels
@pytest.mark.skipif(not VNNI_ISAS, reason="needs a CPU with AVX-VNNI or AVX-512")
@pytest.mark.parametrize("vnni_isa", VNNI_ISAS)
@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("rows", [1, 3, 6, 9, 20])
@pytest.mark.parametrize("outputs", [64, 72])  # 72: a lone block after AVX-512's pairs
def test_row_blocks_with_vnni_give_the_avx2_bits(vnni_isa, fmt, rows, outputs):
    """AVX-VNNI's and AVX512-VNNI's `vpdpbusd` (on AVX-512 CPUs that have it; pairs of blocks in
    512-bit registers there, int8's sign taken off as an offset): the integer sums are exact
    with any of them, so the float results are the same."""
    p = packed(fmt, outputs, 352, seed=rows)
    blocks, scales = quant.to_row_blocks(p.weight, p.scales)
    x = torch.randn(rows, 352) * 3
    blocks8 = K.BLOCKS8_FORMAT_IDS[fmt]
    plain = module.linear(x, blocks, scales, blocks8, _isa("avx2"))
    vnni = module.linear(x, blocks, scales, blocks8, _isa(vnni_isa))
    assert torch.equal(plain, vnni)


@needs_kernels
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_row_blocks_reject_what_they_cannot_take(fmt):
    blocks8 = K.BLOCKS8_FORMAT_IDS[fmt]
    p = packed(fmt, 12, 64, seed=1)  # 12 rows: not whole blocks of 8
    with pytest.raises(RuntimeError, match="multiple of 8"):
        module.linear(torch.randn(1, 64), p.weight, p.scales, blocks8, _isa(ISAS[0]))


@needs_kernels
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_dequantizing_row_blocks_gives_the_rows_values(fmt):
    """The bf16 GEMM's tiles of a weight in blocks (int8 prompts where bf16 is native): any row
    range, starting and ending inside blocks, equals the row layout's dequantized values."""
    p = packed(fmt, 48, 160, seed=3)
    blocks, scales = quant.to_row_blocks(p.weight, p.scales)
    rows = module.dequantize(p.weight, p.scales, K.FORMAT_IDS[fmt], _isa(ISAS[-1]), 0, 48)
    for n0, n1 in [(0, 48), (5, 29), (8, 16), (47, 48)]:
        got = module.dequantize(blocks, scales, K.BLOCKS8_FORMAT_IDS[fmt], _isa(ISAS[-1]), n0, n1)
        assert torch.equal(got, rows[n0:n1])


@needs_kernels
@pytest.mark.skipif("avx2" not in ISAS, reason="the AVX2 kernels do not run on this CPU")
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_packed_layers_take_row_blocks_on_avx2_and_save_rows(fmt):
    """On AVX2 an int8/int4 layer with whole blocks of 8 rows is repacked for the kernels, and
    its state_dict still holds the stored row layout (what `qwen-audio quantize` writes)."""
    p = packed(fmt, 48, 96, seed=2, bias=True)
    stored = (p.weight.clone(), p.scales.clone())
    assert p.use_kernels(module, "avx2") and p.layout == "blocks8"
    state = p.state_dict()
    assert torch.equal(state["weight"], stored[0]) and torch.equal(state["scales"], stored[1])
    odd = packed(fmt, 44, 96, seed=2)
    assert odd.use_kernels(module, "avx2") and odd.layout == "rows"  # 44 rows: kept as stored
    x = torch.randn(3, 96)
    with torch.inference_mode():
        y = p(x)
    w = quant.dequantize(fmt, *stored).double()
    assert_products_close(y - p.bias, x, w, int8_inputs=True)
    # rows that start and end inside blocks, as the autograd path's tiles ask for them
    assert torch.equal(p.dequantized(5, 29).double(), w[5:29])


AMX = module is not None and "avx512_bf16" in ISAS and module.amx_usable(K.ISA_IDS["avx512_bf16"])
needs_amx = pytest.mark.skipif(not AMX, reason="needs a CPU with AMX-BF16 (Linux)")


@needs_amx
@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("rows", [1, 17, 32, 45, 100])
def test_amx_prompts_equal_the_gemm_over_dequantized_weights(fmt, rows):
    """bf16 rows times int8/int4 blocks on AMX: the bf16 weights the tile path makes, float32
    sums (to float32 rounding of the exact product, then bf16's), and each row the same bits
    whatever other rows come with it (batched == single); 1, 3 and 128 groups, 32 to 160
    outputs (several passes of 32)."""
    blocks8 = K.BLOCKS8_FORMAT_IDS[fmt]
    for n, k in [(32, 32), (64, 96), (160, 4096)]:
        p = packed(fmt, n, k, seed=rows + n)
        blocks, scales = quant.to_row_blocks(p.weight, p.scales)
        x = (torch.randn(rows, k) * 2).bfloat16()
        y = module.amx_prompt_linear(x, blocks, scales, blocks8)
        assert y.dtype == torch.bfloat16 and y.shape == (rows, n)
        w = reference_weight(p).bfloat16().double()  # the tile path's bf16 weights
        exact = x.double() @ w.T
        bound = 2e-6 * (x.double().abs() @ w.abs().T) + 2.0**-8 * exact.abs() + 1e-30
        assert ((y.double() - exact).abs() <= bound).all()
        for i in (0, rows // 2, rows - 1):
            assert torch.equal(
                module.amx_prompt_linear(x[i : i + 1], blocks, scales, blocks8)[0], y[i]
            )


@needs_amx
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_packed_layers_send_bf16_prompts_to_amx(fmt, monkeypatch):
    """A layer in blocks with AMX: bf16 prompts (more than 16 rows) take amx_prompt_linear,
    whose bias is added as on every path; decoded rows and float32 rows keep their paths, and
    a lower instruction set (QWEN_AUDIO_ISA=avx512) turns AMX off."""
    monkeypatch.setenv("QWEN_AUDIO_INT4_PROMPTS", "gemm")  # int4's measured choice, fixed
    p = packed(fmt, 64, 128, seed=3, bias=True)
    assert p.use_kernels(module, "avx512_bf16") and p.layout == "blocks8" and p.amx_prompts
    x = torch.randn(40, 128).bfloat16()
    with torch.inference_mode():
        y = p(x)
        # decoded rows (16 or fewer) and float32 rows go to the int8-input kernels
        assert p.takes_kernel_rows(x[:16]) and p.takes_kernel_rows(x.float())
        assert not p.takes_kernel_rows(x)
    direct = module.amx_prompt_linear(x, p.weight, p.scales, p.kernel_format)
    assert torch.equal(y, direct + p.bias)  # the bias in its own dtype, as on every path
    lower = packed(fmt, 64, 128, seed=3)
    assert lower.use_kernels(module, "avx512") and not lower.amx_prompts
    odd = packed(fmt, 72, 128, seed=3)  # 72 outputs: not whole passes of 32
    assert odd.use_kernels(module, "avx512_bf16") and not odd.amx_prompts


def _scattered_pool(kv_heads, contexts, block_size, head_dim, dtype):
    """A layer of a KV pool whose sequences' blocks are scattered, and their block tables, the
    short rows padded with their first block as the engine pads them."""
    counts = [-(-c // block_size) for c in contexts]
    num_blocks = sum(counts) + 3
    pool = torch.randn(2, kv_heads, num_blocks, block_size, head_dim).to(dtype)
    ids, tables = torch.randperm(num_blocks).tolist(), []
    for n in counts:
        row, ids = ids[:n], ids[n:]
        tables.append(row + [row[0]] * (max(counts) - n))
    return pool, torch.tensor(tables)


@needs_kernels
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    ("heads", "kv_heads", "contexts", "block_size", "head_dim", "dtype"),
    [
        (32, 32, [50], 16, 128, torch.bfloat16),
        (14, 2, [7, 1, 30], 4, 64, torch.float32),
        (12, 4, [300, 17], 32, 16, torch.float16),
        (6, 3, [1, 9], 8, 48, torch.bfloat16),
    ],
)
def test_paged_decode_attention_kernel(isa, heads, kv_heads, contexts, block_size, head_dim, dtype):
    """One new token per sequence against its keys and values, read in place from scattered
    blocks of the pool (GQA, padded tables), as float64 attention over the same keys."""
    torch.manual_seed(sum(contexts))
    pool, tables = _scattered_pool(kv_heads, contexts, block_size, head_dim, dtype)
    q = torch.randn(len(contexts), heads, head_dim)
    lengths = torch.tensor(contexts)
    got = module.paged_decode_attention(q, pool, tables, lengths, head_dim**-0.5, _isa(isa))
    for b, context in enumerate(contexts):
        k, v = (plane[:, tables[b]].reshape(kv_heads, -1, head_dim)[:, :context] for plane in pool)
        kd, vd = (t.double().repeat_interleave(heads // kv_heads, 0) for t in (k, v))
        scores = (q[b].double()[:, None] @ kd.transpose(1, 2)) * head_dim**-0.5
        want = (torch.softmax(scores, dim=-1) @ vd)[:, 0]
        torch.testing.assert_close(got[b].double(), want, rtol=0, atol=1e-5)
        alone = module.paged_decode_attention(
            q[b : b + 1], pool, tables[b : b + 1], lengths[b : b + 1], head_dim**-0.5, _isa(isa)
        )
        torch.testing.assert_close(alone[0], got[b], rtol=0, atol=0)  # batched == single


@needs_kernels
def test_paged_decode_attention_kernel_rejects_bad_input():
    pool, tables = _scattered_pool(2, [5, 3], 4, 32, torch.float32)
    q, lengths, isa = torch.randn(2, 4, 32), torch.tensor([5, 3]), _isa(ISAS[0])
    with pytest.raises(RuntimeError, match="multiple of the kv heads"):
        module.paged_decode_attention(torch.randn(2, 3, 32), pool, tables, lengths, 1.0, isa)
    with pytest.raises(RuntimeError, match="multiple of 16"):
        narrow = pool[..., :24].contiguous()
        module.paged_decode_attention(q[..., :24].contiguous(), narrow, tables, lengths, 1.0, isa)
    with pytest.raises(RuntimeError, match="more blocks than its table"):
        module.paged_decode_attention(q, pool, tables, torch.tensor([5, 9]), 1.0, isa)
    with pytest.raises(RuntimeError, match="outside the pool"):
        module.paged_decode_attention(q, pool, tables + 100, lengths, 1.0, isa)
    with pytest.raises(RuntimeError, match="contiguous"):
        module.paged_decode_attention(q, pool.transpose(3, 4), tables, lengths, 1.0, isa)


@needs_kernels
@pytest.mark.parametrize("fmt", FORMATS)
def test_packed_linear_takes_zero_rows(fmt):
    """A chunked prefill step that needs no logits asks the head for zero rows."""
    p = packed(fmt, 40, 64, seed=3)
    assert p.use_kernels(module, K.selected_isa())
    for dtype in (torch.float32, torch.bfloat16):
        with torch.inference_mode():
            assert p(torch.empty(0, 64, dtype=dtype)).shape == (0, 40)


def test_tiles_cover_every_output_row(monkeypatch):
    monkeypatch.setattr("qwen_audio.model.packed.TILE_FLOATS", 64 * 40)  # 40-row tiles of 64
    p = packed("int4", 130, 64, seed=9)
    x = torch.randn(20, 64)
    with torch.inference_mode():
        assert_products_close(p(x), x, reference_weight(p))


@needs_kernels
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_kernel_tiles_share_one_buffer(monkeypatch, fmt):
    """Prefill tiles dequantized by the kernels, float32 and bf16, all written into one reused
    buffer: each tile's product is taken before the next tile overwrites it, the last, shorter
    tile included; with autograd on, each tile is a tensor of its own (the backward pass keeps
    them)."""
    monkeypatch.setattr("qwen_audio.model.packed.TILE_FLOATS", 64 * 40)  # 40-row tiles of 64
    monkeypatch.setattr("qwen_audio.model.packed.BF16_TILE_ELEMENTS", 64 * 24)  # 24-row ones
    p = packed(fmt, 136, 64, seed=9)
    assert p.use_kernels(module, K.selected_isa())
    w = reference_weight(p)
    x = torch.randn(40, 64)
    with torch.inference_mode():
        assert_products_close(p._tiled_matmul(x), x, w)
        got = p._tiled_matmul(x.bfloat16()).double()
    want = x.bfloat16().double() @ w.bfloat16().double().T
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2 * want.abs().max().item())
    weight = torch.nn.Parameter(torch.zeros(136))
    y = p._tiled_matmul(x.requires_grad_()) * weight  # tiles saved for the input's gradient
    y.sum().backward()
    assert_products_close(x.grad[None], torch.ones(1, 136) * weight.detach()[None], w.T)


@pytest.mark.parametrize(
    ("machine", "flags", "expected"),
    [
        ("x86_64", {"avx2", "fma", "f16c"}, "avx2"),
        ("x86_64", {"avx2", "fma", "f16c", "avx_vnni"}, "avx2_vnni"),  # Alder Lake and later
        ("x86_64", {"avx2", "fma"}, "none"),  # no F16C
        (
            "x86_64",
            {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"},
            "avx512",
        ),
        (
            "x86_64",
            {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"},
            "avx512_bf16",
        ),
        ("aarch64", {"asimd"}, "neon"),
        ("riscv64", set(), "none"),
    ],
)
def test_detected_isa_follows_the_cpu_flags(monkeypatch, machine, flags, expected):
    monkeypatch.setattr(K.platform, "machine", lambda: machine)
    monkeypatch.setattr(K, "cpu_flags", lambda: flags)
    assert K.detected_isa() == expected


def test_environment_forces_a_lower_instruction_set(monkeypatch):
    monkeypatch.setattr(K, "detected_isa", lambda: "avx512_bf16")
    for forced, got in [
        ("avx2", "avx2"),
        ("avx512", "avx512"),
        ("none", "none"),
        ("", "avx512_bf16"),
    ]:
        monkeypatch.setenv("QWEN_AUDIO_ISA", forced)
        assert K.selected_isa() == got
    monkeypatch.setattr(K, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})  # no AVX-VNNI
    monkeypatch.setenv("QWEN_AUDIO_ISA", "avx2_vnni")
    assert K.selected_isa() == "avx2"  # as Zen 4: AVX-512 VNNI, but not the 256-bit one
    monkeypatch.setattr(K, "cpu_flags", lambda: {"avx512f", "avx512_bf16", "avx_vnni"})
    assert K.selected_isa() == "avx2_vnni"
    monkeypatch.setattr(K, "detected_isa", lambda: "avx2")
    monkeypatch.setenv("QWEN_AUDIO_ISA", "avx512")  # never raised above what the CPU has
    assert K.selected_isa() == "avx2"
    monkeypatch.setenv("QWEN_AUDIO_ISA", "sse9")
    with pytest.raises(ValueError, match="QWEN_AUDIO_ISA"):
        K.selected_isa()


def _fmt(p: PackedLinear) -> int:
    return K.FORMAT_IDS[p.format]


def _isa(name: str) -> int:
    return K.ISA_IDS[name]


def _empty() -> torch.Tensor:
    return torch.empty(0, dtype=torch.float16)


@pytest.mark.skipif("avx512_bf16" not in ISAS, reason="needs a CPU with AVX512-BF16")
@pytest.mark.parametrize("rows", [1, 2, 7, 16])
def test_native_bf16_kernel_rounds_like_the_gemm(rows):
    torch.manual_seed(rows)
    w = (torch.randn(96, 256) * 0.05).bfloat16()
    x = torch.randn(rows, 256).bfloat16()
    got = module.linear_bf16_native(x, w).float()
    exact = x.float() @ w.float().T
    step = (x.float().abs() @ w.float().abs().T) * 2**-8  # one bf16 rounding of the sum
    assert ((got - exact).abs() <= step).all()


def test_without_a_compiler_everything_runs_on_pytorch(monkeypatch, checkpoints, caplog):
    monkeypatch.setattr(K, "_module", None)
    monkeypatch.setattr(K, "_tried", False)
    monkeypatch.setattr(K.shutil, "which", lambda name: None)
    with caplog.at_level("WARNING"):
        assert K.load_kernels() is None
    assert "no C++ compiler" in caplog.text
    from qwen_audio import LLM, SamplingParams
    from tests.conftest import noise_clip

    llm = LLM(checkpoints("mha", save_dtype=torch.bfloat16), quantize="int4")
    assert llm.checkpoint.kernels is None
    conv = [{"role": "user", "content": [{"type": "audio", "audio": (noise_clip(1.0), 16000)}]}]
    assert len(llm.chat(conv, SamplingParams(temperature=0, max_tokens=3))[0].token_ids) == 3


@needs_kernels
def test_a_build_lock_left_by_an_interrupted_build_does_not_hang_the_next_load():
    """torch's build lock is a plain file that a killed build leaves behind; the next load must
    see that nobody holds our OS-level lock and go on instead of waiting forever."""
    import os
    import subprocess
    import sys

    stale = K.build_directory() / "lock"
    stale.touch()  # what a build killed mid-way leaves
    code = "from qwen_audio import kernels as K; assert K.load_kernels() is not None"
    proc = subprocess.run(
        [sys.executable, "-c", code], timeout=300, capture_output=True, text=True, env=os.environ
    )
    assert proc.returncode == 0, proc.stderr
    assert not stale.exists()


@pytest.mark.skipif(
    K.selected_isa() == "none"
    or shutil.which(os.environ.get("CXX", "c++")) is None
    or os.environ.get("QWEN_AUDIO_KERNELS", "1") == "0",
    reason=f"CPU kernels not expected here: {_why_no_kernels()}",
)
def test_the_kernels_build_wherever_a_compiler_and_a_supported_cpu_are():
    """A broken build falls back to PyTorch at run time (logged), but here it must fail loudly:
    otherwise every kernel test above would be skipped and a broken kernel would go unseen."""
    assert module is not None, "the kernel build failed: see the warning from qwen_audio.kernels"


@needs_kernels
def test_kernel_calls_let_other_python_threads_run():
    """The products release the GIL, as PyTorch's operators do: while one thread multiplies, the
    server's event loop (here: a thread that counts) keeps running."""
    import threading

    weight = torch.zeros(8192, 8192, dtype=torch.bfloat16)  # 128 MiB: each call takes a while
    x = torch.ones(16, 8192)
    isa = K.ISA_IDS[K.selected_isa()]
    started, finished = threading.Event(), threading.Event()
    ticks = 0

    def multiply():
        started.set()
        for _ in range(4):
            module.linear_many(x, [weight], [_empty()], K.FORMAT_IDS["bf16"], isa)
        finished.set()

    worker = threading.Thread(target=multiply)
    worker.start()
    started.wait()
    while not finished.is_set():
        finished.wait(0.001)
        ticks += 1
    worker.join()
    # holding the GIL, the calls would let this loop run only between them (a few ticks)
    assert ticks > 20, ticks


def _counted_measurements(monkeypatch, tmp_path, timer: str, override: str) -> list:
    """int_layout with an empty cache in tmp_path, no `override` variable set, and the calls
    of its `timer` counted in the list returned."""
    from qwen_audio.model import int_layout

    monkeypatch.setattr(K, "build_directory", lambda: tmp_path)
    monkeypatch.setattr(int_layout, "_decided", {})
    monkeypatch.delenv(override, raising=False)
    calls = []
    real = getattr(int_layout, timer)

    def timed(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(int_layout, timer, timed)
    return calls


@needs_kernels
@pytest.mark.skipif(K.int_row_kernels_isa() is None, reason="needs AVX-512 VNNI")
def test_int_layout_is_measured_once_and_kept(monkeypatch, tmp_path):
    """Where both layouts have kernels, the choice is measured once per instruction set and
    format, written beside the kernels, and read back; QWEN_AUDIO_INT_LAYOUT overrides it."""
    from qwen_audio.model import int_layout

    isa = K.int_row_kernels_isa()
    calls = _counted_measurements(monkeypatch, tmp_path, "_time_both", "QWEN_AUDIO_INT_LAYOUT")
    first = int_layout.prefers_row_blocks(module, isa, "int4")
    assert isinstance(first, bool) and len(calls) == 1
    assert int_layout.prefers_row_blocks(module, isa, "int4") == first and len(calls) == 1
    monkeypatch.setattr(int_layout, "_decided", {})  # a new process: read from the file
    assert int_layout.prefers_row_blocks(module, isa, "int4") == first and len(calls) == 1
    saved = (tmp_path / "int_layout.json").read_text()
    assert f'"{isa}:int4": {str(first).lower()}' in saved
    for forced, blocks in (("rows", False), ("blocks8", True)):
        monkeypatch.setenv("QWEN_AUDIO_INT_LAYOUT", forced)
        assert int_layout.prefers_row_blocks(module, isa, "int8") is blocks
    monkeypatch.setenv("QWEN_AUDIO_INT_LAYOUT", "columns")
    with pytest.raises(ValueError, match="QWEN_AUDIO_INT_LAYOUT"):
        int_layout.prefers_row_blocks(module, isa, "int8")
    if "avx2" in ISAS:  # the AVX2 kernels take blocks only: no measurement, no override
        assert int_layout.prefers_row_blocks(module, "avx2", "int4") is True


@needs_kernels
@pytest.mark.skipif("avx512_bf16" not in ISAS, reason="needs native bf16 (AVX512-BF16)")
def test_int4_prompt_path_is_measured_once_and_kept(monkeypatch, tmp_path):
    """Where bf16 is native, whether int4 bf16 prompts go to the GEMM is measured once, kept
    beside the kernels and read back; QWEN_AUDIO_INT4_PROMPTS overrides it; elsewhere the
    kernels take them, unmeasured."""
    from qwen_audio.model import int_layout

    timer, override = "_time_prompt_paths", "QWEN_AUDIO_INT4_PROMPTS"
    calls = _counted_measurements(monkeypatch, tmp_path, timer, override)
    first = int_layout.int4_prompts_on_gemm(module, "avx512_bf16")
    assert isinstance(first, bool) and len(calls) == 1
    monkeypatch.setattr(int_layout, "_decided", {})  # a new process: read from the file
    assert int_layout.int4_prompts_on_gemm(module, "avx512_bf16") == first and len(calls) == 1
    saved = (tmp_path / "int_layout.json").read_text()
    assert f'"avx512_bf16:int4:bf16-prompts-on-gemm": {str(first).lower()}' in saved
    assert int_layout.int4_prompts_on_gemm(module, "avx512") is False and len(calls) == 1
    for forced, gemm in (("kernels", False), ("gemm", True)):
        monkeypatch.setenv("QWEN_AUDIO_INT4_PROMPTS", forced)
        assert int_layout.int4_prompts_on_gemm(module, "avx512_bf16") is gemm
    monkeypatch.setenv("QWEN_AUDIO_INT4_PROMPTS", "amx")
    with pytest.raises(ValueError, match="QWEN_AUDIO_INT4_PROMPTS"):
        int_layout.int4_prompts_on_gemm(module, "avx512_bf16")
