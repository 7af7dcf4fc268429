"""The precision a checkpoint loads in: CPU features, the stored dtype and memory decide, and a
model that cannot fit is refused before any weight is read, with what each option needs."""

from __future__ import annotations

import json

import pytest
import torch

from qwen_audio import precision as prec
from qwen_audio.bench.checkpoint import SHAPE_7B
from qwen_audio.config import CheckpointError, ModelConfig
from tests.fixtures.checkpoints import _config_dict

CPU = torch.device("cpu")
GiB = 2**30


@pytest.fixture
def config_7b(tmp_path):
    special = {"endoftext": 0, "im_end": 1, "audio": 2}
    (tmp_path / "config.json").write_text(json.dumps(_config_dict(SHAPE_7B, 2, "v4", special)))
    return ModelConfig.from_dir(tmp_path)


def plan(config, stored, *, native=False, free=64 * GiB, dtype="auto", quantize=None, **kw):
    prec_native = prec.cpu_has_native_bf16
    prec.cpu_has_native_bf16 = lambda: native
    try:
        return prec.plan(dtype, quantize, CPU, config, stored, available=free, **kw)
    finally:
        prec.cpu_has_native_bf16 = prec_native


def test_sizes_of_the_7b_model(config_7b):
    bf16 = prec.estimate_bytes(config_7b, prec.Precision(torch.bfloat16, torch.float32))
    int8 = prec.estimate_bytes(config_7b, prec.Precision(torch.bfloat16, torch.float32, "int8"))
    int4 = prec.estimate_bytes(config_7b, prec.Precision(torch.bfloat16, torch.float32, "int4"))
    assert 15.4 * GiB < bf16 < 15.8 * GiB  # the hub checkpoint: 15.6 GiB of bf16
    assert 8.5 * GiB < int8 < 9.2 * GiB
    assert 5.2 * GiB < int4 < 5.8 * GiB


@pytest.mark.parametrize(
    ("stored", "native", "weights", "compute"),
    [
        (torch.bfloat16, False, torch.bfloat16, torch.float32),  # AVX2: bf16 kept, float32 math
        (torch.float16, False, torch.float16, torch.float32),
        (torch.bfloat16, True, torch.bfloat16, torch.bfloat16),  # AVX512-BF16 / AMX
        (torch.float16, True, torch.float16, torch.float32),  # fp16 is never rounded to bf16
        (torch.float32, True, torch.bfloat16, torch.bfloat16),
        (torch.float32, False, torch.float32, torch.float32),
    ],
)
def test_auto_keeps_the_stored_precision_and_computes_natively(
    config_7b, stored, native, weights, compute
):
    p = plan(config_7b, stored, native=native)
    assert (p.weights, p.compute, p.quantize) == (weights, compute, None)
    # 16-bit weights always go through the streaming kernels on a CPU, float32 ones never
    assert p.packed == (weights != torch.float32)


def test_float32_on_16_bit_weights_keeps_them_16_bit(config_7b):
    p = plan(config_7b, torch.bfloat16, dtype="float32", native=True)
    assert (p.weights, p.compute) == (torch.bfloat16, torch.float32)


def test_auto_never_picks_what_cannot_fit(config_7b):
    # a float32 7B (31 GiB) on a 24 GiB machine: bf16 weights with float32 activations
    p = plan(config_7b, torch.float32, free=22 * GiB)
    assert (p.weights, p.compute) == (torch.bfloat16, torch.float32)


def test_nothing_fits_names_every_option(config_7b):
    with pytest.raises(CheckpointError) as err:
        plan(config_7b, torch.bfloat16, free=12 * GiB, name="Qwen2-Audio-7B")
    msg = str(err.value)
    assert "Qwen2-Audio-7B needs about 15.7 GiB" in msg
    assert "--quantize int8 8.9 GiB" in msg and "--quantize int4 5.6 GiB" in msg
    assert "use --quantize int8" in msg
    with pytest.raises(CheckpointError, match="no option fits"):
        plan(config_7b, torch.bfloat16, free=4 * GiB)
    p = plan(config_7b, torch.bfloat16, free=12 * GiB, quantize="int8")
    assert p.quantize == "int8" and p.encoder_quantize == "int8"


def test_quantized_checkpoints_keep_their_method(config_7b):
    assert plan(config_7b, torch.bfloat16, prequantized="int4").quantize == "int4"
    with pytest.raises(CheckpointError, match="already quantized to int4"):
        plan(config_7b, torch.bfloat16, prequantized="int4", quantize="int8")
    with pytest.raises(ValueError, match="quantize must be one of"):
        plan(config_7b, torch.bfloat16, quantize="int3")
