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
    # int8: half a step of rounding; int4: the far side of the extreme may clamp, one step
    bound = step * (0.5 if method == "int8" else 1.0) + 1e-7
    assert ((deq - w).abs() <= bound).all()
    assert (deq[3, :32] == 0).all()
    assert quant.bits_per_weight(method) == {"int8": 8.5, "int4": 4.5}[method]


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


@pytest.mark.skipif(K.load_kernels() is None, reason="kernels unavailable on this machine")
@pytest.mark.parametrize("method", ["int8", "int4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_compiled_quantizer_gives_the_reference_bytes(method, dtype):
    torch.manual_seed(1)
    w = (torch.randn(70, 320) * 0.04).to(dtype)
    w[5, 32:64] = 0.0
    w[6, :32] = torch.tensor([0.5, -0.5] * 16, dtype=dtype)  # a tie in magnitude: first wins
    q_ref, s_ref = quant.quantize(method, w)
    q, s = K.load_kernels().quantize(w, K.FORMAT_IDS[method])
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)


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
