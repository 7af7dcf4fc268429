"""Cache-free packed batches (training, scoring) are attended in one padded call; it must give
what attending each sequence on its own gives, values and gradients, on CPU (matmuls) and with
the fused kernel that CUDA uses."""

from __future__ import annotations

import pytest
import torch

from qwen_audio.config import TextConfig
from qwen_audio.model import qwen2
from qwen_audio.model.attention import AttentionBatch
from qwen_audio.model.qwen2 import Qwen2Attention, RotaryEmbedding, padded_causal_attention


def _attention(heads: int, kv_heads: int) -> Qwen2Attention:
    cfg = TextConfig(
        vocab_size=32,
        hidden_size=heads * 8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=8,
    )
    return Qwen2Attention(cfg)


def _run(attn, x, seq_lens, padded: bool, monkeypatch):
    if not padded:  # the per-sequence loop, as for batches too big for the padded path
        monkeypatch.setattr(qwen2, "PADDED_SCORES_LIMIT", 0)
    else:
        monkeypatch.setattr(qwen2, "PADDED_SCORES_LIMIT", 1 << 24)
    positions = torch.cat([torch.arange(n) for n in seq_lens])
    cos, sin = RotaryEmbedding(attn.head_dim, 10000.0)(positions, x.dtype)
    x = x.detach().requires_grad_(True)
    out = attn(x, cos, sin, AttentionBatch(list(seq_lens)), 0)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = [x.grad] + [p.grad.clone() for p in attn.parameters()]
    attn.zero_grad()
    return out.detach(), grads


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (3, 3), (6, 1)])
def test_padded_attention_equals_one_call_per_sequence(heads, kv_heads, monkeypatch):
    torch.manual_seed(heads)
    attn = _attention(heads, kv_heads)
    seq_lens = [7, 1, 12, 3]
    x = torch.randn(sum(seq_lens), attn.q_proj.in_features)
    want, want_grads = _run(attn, x, seq_lens, padded=False, monkeypatch=monkeypatch)
    got, got_grads = _run(attn, x, seq_lens, padded=True, monkeypatch=monkeypatch)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_both_padded_kernels_agree_and_keep_the_packed_order(fused):
    torch.manual_seed(0)
    seq_lens = [5, 9, 2]
    q, k, v = torch.randn(4, 16, 8), torch.randn(2, 16, 8), torch.randn(2, 16, 8)
    got = padded_causal_attention(q, k, v, AttentionBatch(seq_lens), fused=fused)
    start = 0
    for n in seq_lens:
        kk, vv = (t[:, start : start + n].repeat_interleave(2, 0) for t in (k, v))
        ref = torch.nn.functional.scaled_dot_product_attention(
            q[:, start : start + n], kk, vv, is_causal=True
        )
        torch.testing.assert_close(got[:, start : start + n], ref, rtol=1e-5, atol=1e-5)
        start += n


def test_padded_attention_declines_grids_over_the_limit(monkeypatch):
    monkeypatch.setattr(qwen2, "PADDED_SCORES_LIMIT", 2 * 4 * 9 * 9 - 1)
    q, k, v = torch.randn(4, 14, 8), torch.randn(4, 14, 8), torch.randn(4, 14, 8)
    assert padded_causal_attention(q, k, v, AttentionBatch([9, 5]), fused=False) is None
