"""The same engine on CUDA (runs only where a GPU is present)."""

from __future__ import annotations

import pytest
import torch

from qwen_audio import LLM, SamplingParams
from tests.conftest import noise_clip

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CONVS = [
    [{"role": "user", "content": [{"type": "audio", "audio": (noise_clip(s, seed=i), 16000)}]}]
    for i, s in enumerate([1.5, 7.0, 29.9])
]


def test_cuda_float32_matches_cpu(checkpoints):
    path = checkpoints("gqa1")
    params = SamplingParams(temperature=0, max_tokens=16)
    cpu = [o.token_ids for o in LLM(path, dtype="float32").chat(CONVS, params)]
    gpu = [o.token_ids for o in LLM(path, dtype="float32", device="cuda").chat(CONVS, params)]
    assert gpu == cpu


def test_cuda_bf16_batches_and_streams(checkpoints):
    llm = LLM(checkpoints("mha"), dtype="bfloat16", device="cuda")
    assert llm.model.device.type == "cuda"
    params = SamplingParams(temperature=0, max_tokens=8)
    batched = [o.token_ids for o in llm.chat(CONVS, params)]
    singles = [llm.chat(c, params)[0].token_ids for c in CONVS]
    assert batched == singles
    deltas = list(llm.stream_chat(CONVS[0], params))
    assert sum((d.token_ids for d in deltas), []) == singles[0]
