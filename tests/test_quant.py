"""int8/int4 weight groups: the layout, the rounding bounds, model quality against float32, and
quantized checkpoints that load as written."""

from __future__ import annotations

import pytest
import torch

from qwen_audio import LLM, SamplingParams
from qwen_audio import kernels as K
from qwen_audio.engine.engine import EngineConfig
from qwen_audio.loading import load_checkpoint, save_quantized
from qwen_audio.model import quant
from qwen_audio.model.attention import AttentionBatch
from qwen_audio.model.packed import PackedLinear
from tests.conftest import noise_clip


def test_int4_layout_low_nibble_first_then_the_second_half():
    w = torch.arange(-8, 8, dtype=torch.float32).repeat(2)[None, :]  # one group of 32
    w[0, 0] = -8.0  # the extreme: scale = -8 / -8 = 1
    q, s = quant.quantize_int4(w)
    assert s.item() == 1.0
    assert q.shape == (1, 16)
    nib = w[0].long() + 8
    assert q[0].tolist() == [int(nib[j] | (nib[j + 16] << 4)) for j in range(16)]
    assert torch.equal(quant.dequantize("int4", q, s), w)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_rounding_error_is_within_one_step_per_group(method):
    torch.manual_seed(0)
    w = torch.randn(64, 256) * 0.03
    w[3, :32] = 0.0  # an all-zero group must stay zero, not divide by zero
    q, s = quant.quantize(method, w)
    deq = quant.dequantize(method, q, s)
    step = s.float().abs().repeat_interleave(quant.GROUP, dim=1)
    # int8: half a step of rounding. int4: a scale of extreme / -9 clamps the extreme to -8 (one
    # step off) and a weight as large on the far side to +7 (two); the search only picks such a
    # scale where the group's squared error is smaller for it
    bound = step * (0.5 if method == "int8" else 2.0) + 1e-7
    assert ((deq - w).abs() <= bound).all()
    assert (deq[3, :32] == 0).all()
    assert quant.bits_per_weight(method) == {"int8": 8.5, "int4": 4.5}[method]


def _q4_0_squared_error(w: torch.Tensor) -> torch.Tensor:
    """Per-group squared error (N, K/32) of plain Q4_0 (the extreme mapped to -8), in float64."""
    g = w.double().reshape(w.shape[0], -1, quant.GROUP)
    extreme = g.gather(-1, g.abs().argmax(dim=-1, keepdim=True))
    s = (extreme.float() / -8.0).half().double()
    levels = torch.where(s != 0, torch.round(g / torch.where(s != 0, s, 1.0)), 0.0).clamp(-8, 7)
    return ((g - levels * s) ** 2).sum(-1)


def test_int4_scale_search_is_never_worse_than_q4_0_per_group():
    torch.manual_seed(3)
    w = torch.randn(200, 512) * 0.02
    w[0, :32] = 0.0
    w[1, :32] = 0.125  # all equal: extreme / -8 (exact in fp16) represents them, nothing beats it
    w[2, :32] = torch.linspace(-0.05, 0.05, 32)
    w[3, 32:64] = torch.randn(32) * 1e-6  # subnormal fp16 scales
    q, s = quant.quantize_int4(w)
    new = ((quant.dequantize("int4", q, s).double() - w.double()) ** 2).reshape(200, -1, 32).sum(-1)
    old = _q4_0_squared_error(w)
    # the float64 error here and the search's (float32 differences) may differ in the last bits
    assert (new <= old * (1 + 1e-6) + 1e-30).all()
    assert new[0, 0] == 0 and new[1, 0] == 0
    assert s[1, 0].item() == 0.125 / -8
    # on Gaussian groups the search lowers the squared error by ~10% (RMS ~5%), not by chance
    assert new.sum() < 0.93 * old.sum()
    assert (new < old * (1 - 1e-3)).float().mean() > 0.5


def _prefill_logits(llm, conv):
    prompt = llm.renderer.render_chat(conv)
    ids = torch.tensor(prompt.token_ids)
    clips = prompt.audio_clips
    with torch.inference_mode():
        emb = llm.model.encode_audio([c.features for c in clips], [c.num_frames for c in clips])
        h = llm.model(ids, torch.arange(len(ids)), AttentionBatch.single(len(ids)), emb[0])
        return llm.model.logits(h)


def _conv(seed=2):
    audio = {"type": "audio", "audio": (noise_clip(3.0, seed=seed), 16000)}
    return [{"role": "user", "content": [audio, {"type": "text", "text": "What is it?"}]}]


@pytest.mark.parametrize(("method", "mean", "low"), [("int8", 0.999, 0.995), ("int4", 0.98, 0.95)])
def test_quantized_model_quality_against_float32(checkpoints, method, mean, low):
    # init_std 0.02 (a real checkpoint's scale); the default 0.3 makes every rounding explode
    path = checkpoints("gqa3", init_std=0.02)
    ref = LLM(path, dtype="float32")
    q = LLM(path, quantize=method)
    layer = q.model.language_model.model.layers[0].mlp.up_proj
    assert isinstance(layer, PackedLinear) and layer.format == method
    cosine = torch.nn.functional.cosine_similarity(
        _prefill_logits(ref, _conv()), _prefill_logits(q, _conv()), dim=-1
    )
    assert cosine.mean() > mean and cosine.min() > low, cosine


def test_float32_compute_over_packed_weights_caches_in_float16(checkpoints):
    """Where the CPU has no native bf16 (AVX2, ARM) the model computes in float32 over int8/int4/
    bf16 weights; its KV pool is float16 there, half the bytes each decoded token reads. Greedy
    answers match a float32 pool's, and batched equals single."""
    if K.load_kernels() is None:
        pytest.skip("no compiled kernels here: the pool stays float32")
    path = checkpoints("gqa3", init_std=0.02)
    llm = LLM(path, dtype="float32", quantize="int8")
    assert llm.engine.pool.kv.dtype == torch.float16
    wide = LLM(
        path, dtype="float32", quantize="int8", engine_config=EngineConfig(kv_dtype=torch.float32)
    )
    assert wide.engine.pool.kv.dtype == torch.float32
    assert LLM(path, dtype="float32").engine.pool.kv.dtype == torch.float32  # float32 weights
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    convs = [_conv(seed) for seed in (1, 2, 3)]
    batched = [out.token_ids for out in llm.chat(convs, params)]
    assert batched == [llm.chat([conv], params)[0].token_ids for conv in convs]
    assert batched == [out.token_ids for out in wide.chat(convs, params)]


@pytest.mark.skipif(
    K.load_kernels() is None or "avx2" not in K.usable_isas(), reason="needs the AVX2 kernels"
)
@pytest.mark.parametrize("method", ["int8", "int4"])
def test_row_blocks_on_avx2_answer_batched_as_single(checkpoints, monkeypatch, method):
    """AVX2 (forced here) repacks int8/int4 layers in blocks of 8 rows: greedy answers batched
    equal single ones, and the logits are the row layout's up to float32 summation order."""
    path = checkpoints("gqa3", init_std=0.02)
    monkeypatch.setenv("QWEN_AUDIO_ISA", "avx2")
    llm = LLM(path, quantize=method)
    layers = [m for m in llm.model.modules() if isinstance(m, PackedLinear)]
    packed = [m for m in layers if m.format == method]
    assert packed and {m.layout for m in packed if m.out_features % 8 == 0} == {"blocks8"}
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    convs = [_conv(seed) for seed in (1, 2, 3)]
    batched = [out.token_ids for out in llm.chat(convs, params)]
    assert batched == [llm.chat([conv], params)[0].token_ids for conv in convs]
    if K.int_row_kernels_isa():  # the same int8-rounded inputs on the row layout
        monkeypatch.setenv("QWEN_AUDIO_ISA", "avx512")
        monkeypatch.setenv("QWEN_AUDIO_INT_LAYOUT", "rows")  # else measured: blocks on a Zen 4
        rows = LLM(path, quantize=method)
        assert {m.layout for m in rows.model.modules() if isinstance(m, PackedLinear)} == {"rows"}
        a, b = _prefill_logits(llm, _conv()), _prefill_logits(rows, _conv())
        cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        assert cosine.min() > 0.9999, cosine.min()  # int4 itself is ~0.98 away from float32


@pytest.mark.skipif(
    K.int_row_kernels_isa() is None,
    reason="needs AVX-512 VNNI, where both layouts have kernels",
)
@pytest.mark.parametrize("method", ["int8", "int4"])
def test_row_blocks_where_avx512_vnni_could_take_rows(checkpoints, monkeypatch, method):
    """On an AVX-512 CPU the layout is measured (model/int_layout.py) or named by
    QWEN_AUDIO_INT_LAYOUT. In blocks, int4 takes any number of rows on the kernels whatever the
    activations' dtype (bf16 where native) unless the bf16 GEMM is faster for prompts
    (QWEN_AUDIO_INT4_PROMPTS, else measured), int8 a bf16 prompt on the GEMM over dequantized
    blocks. Greedy answers batched equal single ones, and the logits are the row layout's up to
    float32 summation order."""
    path = checkpoints("gqa3", init_std=0.02)
    monkeypatch.setenv("QWEN_AUDIO_INT_LAYOUT", "blocks8")
    monkeypatch.setenv("QWEN_AUDIO_INT4_PROMPTS", "kernels")
    llm = LLM(path, quantize=method)
    packed = [m for m in llm.model.modules() if isinstance(m, PackedLinear) and m.format == method]
    assert packed and {m.layout for m in packed if m.out_features % 8 == 0} == {"blocks8"}
    prompt_rows = torch.zeros(40, packed[0].in_features, dtype=llm.model.dtype)
    with torch.inference_mode():  # a bf16 prompt: int4 on the kernels, int8 on the GEMM
        taken = packed[0].takes_kernel_rows(prompt_rows)
        assert taken == (method == "int4" or llm.model.dtype == torch.float32)
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    convs = [_conv(seed) for seed in (1, 2, 3)]
    batched = [out.token_ids for out in llm.chat(convs, params)]
    assert batched == [llm.chat([conv], params)[0].token_ids for conv in convs]
    monkeypatch.setenv("QWEN_AUDIO_INT_LAYOUT", "rows")
    rows = LLM(path, quantize=method)
    assert {m.layout for m in rows.model.modules() if isinstance(m, PackedLinear)} == {"rows"}
    a, b = _prefill_logits(llm, _conv()), _prefill_logits(rows, _conv())
    assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.999


@pytest.mark.skipif(
    K.int_row_kernels_isa() != "avx512_bf16", reason="needs AVX-512 VNNI and native bf16"
)
def test_int4_bf16_prompts_on_the_gemm(checkpoints, monkeypatch):
    """Where the bf16 GEMM wins (AMX), int4 blocks send bf16 prompts to it over bf16 tiles
    and keep decoding (up to 16 rows) on the kernels; the answers batched equal single ones,
    and the prompt's logits are the kernels' path's up to its int8-rounded inputs."""
    path = checkpoints("gqa3", init_std=0.02)
    monkeypatch.setenv("QWEN_AUDIO_INT_LAYOUT", "blocks8")
    monkeypatch.setenv("QWEN_AUDIO_INT4_PROMPTS", "gemm")
    llm = LLM(path, quantize="int4", dtype="bfloat16")
    packed = [m for m in llm.model.modules() if isinstance(m, PackedLinear) and m.format == "int4"]
    with torch.inference_mode():
        assert not packed[0].takes_kernel_rows(torch.zeros(40, packed[0].in_features).bfloat16())
        assert packed[0].takes_kernel_rows(torch.zeros(16, packed[0].in_features).bfloat16())
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    convs = [_conv(seed) for seed in (1, 2, 3)]
    batched = [out.token_ids for out in llm.chat(convs, params)]
    assert batched == [llm.chat([conv], params)[0].token_ids for conv in convs]
    monkeypatch.setenv("QWEN_AUDIO_INT4_PROMPTS", "kernels")
    kernels = LLM(path, quantize="int4", dtype="bfloat16")
    a, b = _prefill_logits(llm, _conv()), _prefill_logits(kernels, _conv())
    assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.999


def test_layers_whose_inputs_do_not_make_groups_stay_unquantized(checkpoints):
    llm = LLM(checkpoints("gqa1"), quantize="int8")  # hidden size 60: not a multiple of 32
    lm = llm.model.language_model
    mlp = lm.model.layers[0].mlp
    assert isinstance(mlp.down_proj, PackedLinear) and mlp.down_proj.format == "int8"  # 96 wide
    # a float32 checkpoint: the 60-wide layers keep their float32 weights
    assert type(mlp.up_proj) is torch.nn.Linear and mlp.up_proj.weight.dtype == torch.float32
    out = llm.chat(_conv(), SamplingParams(temperature=0, max_tokens=4))[0]
    assert len(out.token_ids) == 4


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_saved_quantized_checkpoint_loads_as_written(checkpoints, tmp_path, method):
    path = checkpoints("mha", init_std=0.02)
    at_load = load_checkpoint(path, quantize=method)
    out = save_quantized(at_load, tmp_path / "q")
    reloaded = load_checkpoint(out)
    assert reloaded.precision.quantize == method
    a, b = at_load.model.state_dict(), reloaded.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key].to(b[key].dtype), b[key]), key
    params = SamplingParams(temperature=0, max_tokens=8)
    x = LLM.__new__(LLM)  # the same engine over each loaded checkpoint
    tokens = []
    for ckpt in (at_load, reloaded):
        from qwen_audio.engine.engine import LLMEngine

        x.checkpoint, x.tokenizer, x.renderer, x.model = (
            ckpt,
            ckpt.tokenizer,
            ckpt.renderer,
            ckpt.model,
        )
        x.engine = LLMEngine(ckpt.model, ckpt.eos_token_ids, None)
        tokens.append(x.chat(_conv(5), params)[0].token_ids)
    assert tokens[0] == tokens[1]
    with pytest.raises(Exception, match="already quantized"):
        load_checkpoint(out, quantize="int8" if method == "int4" else "int4")


def _isas_here() -> list[str]:
    """The quantizer's two ways through its int4 scale search where this CPU has AVX2 (every
    x86-64 set the kernels select, avx2_vnni among them, takes the AVX2 way)."""
    if not K.detected_isa().startswith("avx"):
        return ["none"]
    return ["none"] + [isa for isa in ("avx2", "avx2_vnni") if isa in K.usable_isas()]


@pytest.mark.skipif(K.load_kernels() is None, reason="kernels unavailable on this machine")
@pytest.mark.parametrize("isa", _isas_here())
@pytest.mark.parametrize("method", ["int8", "int4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(70, 320), (1, 32), (3, 96)])
def test_compiled_quantizer_gives_the_reference_bytes(method, dtype, isa, shape):
    torch.manual_seed(1)
    w = (torch.randn(*shape) * 0.04).to(dtype)
    w[-1, -32:] = 0.0  # a zero group
    if shape[0] > 2:
        w[0, :32] = -0.0  # negative zeros: the extreme is the first, as torch's argmax
        w[1, :32] = 0.02  # all equal
    if shape[0] > 6:
        w[5, 32:64] = 0.0
        w[6, :32] = torch.tensor([0.5, -0.5] * 16, dtype=dtype)  # a tie in magnitude: first wins
        w[4, 64:96] = torch.randn(32).to(dtype) * 1e-6  # subnormal fp16 scales
        w[4, 96:128] = torch.randn(32).to(dtype) * 30  # large weights
    q_ref, s_ref = quant.quantize(method, w)
    q, s = K.load_kernels().quantize(w, K.FORMAT_IDS[method], K.ISA_IDS[isa])
    assert torch.equal(q, q_ref)
    assert torch.equal(s.view(torch.int16), s_ref.view(torch.int16))  # bits: -0.0 is not 0.0


@pytest.mark.skipif(K.load_kernels() is None, reason="kernels unavailable on this machine")
@pytest.mark.parametrize("isa", _isas_here())
def test_compiled_int4_search_matches_on_many_random_groups(isa):
    """Near-ties between candidates are where a different summation order would pick another
    scale: 20,000 groups of several spreads, every byte equal."""
    torch.manual_seed(7)
    spread = torch.rand(625, 1, 1) * 0.1
    w = (torch.randn(625, 32, 32) * spread).reshape(625, 1024)
    w[::50] = torch.randint(-3, 4, (13, 1024)).float() * 0.01  # few distinct values: exact ties
    q_ref, s_ref = quant.quantize("int4", w)
    q, s = K.load_kernels().quantize(w, K.FORMAT_IDS["int4"], K.ISA_IDS[isa])
    assert torch.equal(q, q_ref)
    assert torch.equal(s.view(torch.int16), s_ref.view(torch.int16))


@pytest.mark.parametrize("read_bytes", [64 << 20, 3000])
def test_quantizing_after_loading_equals_quantizing_while_reading(
    checkpoints, monkeypatch, read_bytes
):
    """With an adapter to merge, the weights are quantized after loading (pack_model); without,
    while reading, in blocks of rows (3000 bytes: a few rows a block, with a short last one).
    Both give the same bytes."""
    monkeypatch.setattr("qwen_audio.model.loader.QUANTIZE_READ_BYTES", read_bytes)
    from qwen_audio import precision
    from qwen_audio.loading import pack_model

    path = checkpoints("mha", init_std=0.02)
    read = load_checkpoint(path, quantize="int4")
    plain = load_checkpoint(path, for_training=True)
    pack_model(plain.model, read.precision)
    a, b = read.model.state_dict(), plain.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key].to(a[key].dtype)), key
    assert read.precision == precision.Precision(torch.float32, torch.float32, "int4")
