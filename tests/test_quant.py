"""Weight-only int8: exact kernels, and output quality close to the unquantized model."""

from __future__ import annotations

import pytest
import torch
from qwen_audio.engine.quant import FUSED_MAX_ROWS, Int8Linear
from torch import nn

from qwen_audio import LLM, SamplingParams
from qwen_audio.model.kv_cache import AttentionBatch
from tests.conftest import noise_clip


@pytest.mark.parametrize("rows", [1, FUSED_MAX_ROWS, FUSED_MAX_ROWS + 1, 40])
def test_int8_linear_equals_its_dequantized_weights(rows):
    torch.manual_seed(0)
    lin = nn.Linear(96, 160, bias=True)
    q = Int8Linear(lin, torch.bfloat16)
    x = torch.randn(rows, 96, dtype=torch.bfloat16)
    dequant = q.weight.float() * q.scale.float()[:, None]
    expected = x.float() @ dequant.T + q.bias.float()
    torch.testing.assert_close(q(x).float(), expected, atol=0.05, rtol=0.02)
    # the weight error is within a step per row (half a step of rounding + the bf16 scale)
    step = q.scale.float()[:, None]
    assert ((dequant - lin.weight.detach()).abs() <= step).all()


def test_int8_model_quality_against_bf16(checkpoints):
    path = checkpoints("gqa3")
    conv = [
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio": (noise_clip(3.0, seed=2), 16000)},
                {"type": "text", "text": "What is it?"},
            ],
        }
    ]
    bf16 = LLM(path, dtype="bfloat16")
    int8 = LLM(path, dtype="bfloat16", quantize="int8")
    assert isinstance(int8.model.language_model.model.layers[0].mlp.up_proj, Int8Linear)
    prompt = bf16.renderer.render_chat(conv)
    ids = torch.tensor(prompt.token_ids)
    with torch.inference_mode():
        logits = []
        for llm in (bf16, int8):
            emb = llm.model.encode_audio(
                [c.features for c in prompt.audio_clips], [c.num_frames for c in prompt.audio_clips]
            )
            h = llm.model(ids, torch.arange(len(ids)), AttentionBatch.single(len(ids)), emb[0])
            logits.append(llm.model.logits(h))
    cosine = torch.nn.functional.cosine_similarity(logits[0], logits[1], dim=-1)
    # A random network with large weights amplifies rounding; real checkpoints do better
    # (see the README for the numbers on the benchmark model).
    assert cosine.mean() > 0.98 and cosine.min() > 0.95, cosine
    params = SamplingParams(temperature=0, max_tokens=8)
    a = bf16.chat(conv, params)[0].token_ids
    b = int8.chat(conv, params)[0].token_ids
    assert a[0] == b[0]
