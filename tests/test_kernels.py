"""The bf16 decode kernel: same products as PyTorch's GEMM, used only where it applies."""

from __future__ import annotations

import pytest
import torch
from qwen_audio.engine.kernels import MAX_ROWS, GemvLinear, load_gemv
from torch import nn

from qwen_audio import LLM, SamplingParams
from tests.conftest import noise_clip

kernel = load_gemv()
needs_kernel = pytest.mark.skipif(kernel is None, reason="no AVX512-BF16 CPU or no C++ compiler")


@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 7, MAX_ROWS])
def test_gemv_equals_linear_to_bf16_rounding(rows):
    torch.manual_seed(rows)
    lin = nn.Linear(256, 96, bias=True).to(torch.bfloat16)
    fast = GemvLinear(lin, kernel)
    x = torch.randn(rows, 256, dtype=torch.bfloat16)
    with torch.inference_mode():
        got, ref = fast(x).float(), lin(x).float()
    # both round float32 sums to bf16 (product, then + bias): within two bf16 steps (2^-8
    # relative each) of the magnitude of what was summed
    with torch.no_grad():
        exact = x.float() @ lin.weight.float().T + lin.bias.float()
        scale = x.float().abs() @ lin.weight.float().abs().T + lin.bias.float().abs()
        step = scale * 2**-8
    assert ((got - exact).abs() <= 2 * step).all()
    assert ((ref - exact).abs() <= 2 * step).all()


@needs_kernel
def test_more_rows_and_training_use_the_gemm():
    lin = nn.Linear(64, 32).to(torch.bfloat16)
    fast = GemvLinear(lin, kernel)
    x = torch.randn(MAX_ROWS + 1, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), lin(x), rtol=0, atol=0)
    y = torch.randn(2, 64, dtype=torch.bfloat16)
    torch.testing.assert_close(fast(y), lin(y), rtol=0, atol=0)  # grad mode: plain GEMM


@needs_kernel
def test_bf16_model_uses_the_kernel_and_agrees(checkpoints, monkeypatch):
    path = checkpoints("mha")
    conv = [{"role": "user", "content": [{"type": "audio", "audio": (noise_clip(2.0), 16000)}]}]
    params = SamplingParams(temperature=0, max_tokens=8)
    fast = LLM(path, dtype="bfloat16")
    assert isinstance(fast.model.language_model.lm_head, GemvLinear)
    monkeypatch.setattr("qwen_audio.engine.kernels._module", None)
    plain = LLM(path, dtype="bfloat16")
    assert not isinstance(plain.model.language_model.lm_head, GemvLinear)
    a, b = fast.chat(conv, params)[0].token_ids, plain.chat(conv, params)[0].token_ids
    assert a[0] == b[0]
