"""The Qwen2 decoder: RMSNorm, rotary positions, grouped-query attention, SiLU-gated MLP.

Module names follow the hub checkpoint (`language_model.model.layers.0.self_attn.q_proj`, ...), so
loading is a 1:1 name map. Inputs are packed token rows (T, D) with explicit positions; see
`attention.AttentionBatch`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import TextConfig
from .attention import AttentionBatch


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 and scale in the model dtype, exactly as the reference does
        # (x * rsqrt(mean(x^2) + eps): PyTorch's fused op gives the same bits in one call, where
        # spelling it out was five, 65 times per decoded token of a 7B).
        dtype = x.dtype
        h = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * h.to(dtype)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # (T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, D)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on x (H, T, D) with cos/sin (T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


# Above this many attention scores (B x H x M x M), the CPU path attends cache-free sequences one
# at a time again: its matmuls keep the scores for the backward, the fused kernel does not.
PADDED_SCORES_LIMIT = 1 << 24


def padded_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: AttentionBatch, fused: bool
) -> torch.Tensor | None:
    """Causal attention of all the (cache-free) sequences of a batch in one call, on a
    right-padded (B, M) grid: q (H, T, D), k and v (Hkv, T, D) -> (H, T, D); None when the
    matmul path's scores would exceed PADDED_SCORES_LIMIT.

    Training and scoring pack many short sequences, and one fused attention call per sequence is
    slow on CPU for short inputs, its backward most (one padded call takes a demo-model training
    step from 0.39 to 0.29 s on 2 cores). With right padding a token's causal window holds only
    tokens of its own sequence, so the causal mask is the only mask; the padded rows are dropped.
    `fused`: the fused kernel on the grid (CUDA), else matmuls and a float32 softmax (CPU).
    """
    H, T, D = q.shape
    Hkv = k.shape[0]
    B, M = len(batch.seq_lens), max(batch.seq_lens)
    if not fused and B * H * M * M > PADDED_SCORES_LIMIT:
        return None

    layout = batch.padded_layout(q.device)

    def grid(x: torch.Tensor) -> torch.Tensor:  # (heads, T, D) -> (B, heads, M, D)
        # index_select, not x[:, index]: its backward (index_add) is the fast one on CPU
        return x.index_select(1, layout.gather).view(x.shape[0], B, M, D).transpose(0, 1)

    qp, kp, vp = grid(q), grid(k), grid(v)
    if fused:
        out = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=H != Hkv)
    else:
        G = H // Hkv  # query heads per KV head: a broadcast dimension, so no KV copy per head
        scores = (qp * D**-0.5).view(B, Hkv, G, M, D) @ kp[:, :, None].transpose(-1, -2)
        causal = torch.ones(M, M, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(vp.dtype)
        out = (probs @ vp[:, :, None]).view(B, H, M, D)
    return out.transpose(0, 1).reshape(H, B * M, D).index_select(1, layout.keep)  # (H, T, D)


class Qwen2Attention(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=False)
        # attention.KernelFn: the CPU kernels' paged decode attention, and q/k/v as one
        # packed.StackedLinears, both set by `packed.attach_kernels`; None: PyTorch's
        self.decode_kernel = None
        self.qkv = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        batch: AttentionBatch,
        layer_idx: int,
    ) -> torch.Tensor:
        T = x.shape[0]
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        if self.qkv is not None and self.qkv.applies(x):
            # one kernel call, and the keys rotated with the queries: their heads sit side by side
            qkv = self.qkv(x).view(T, H + 2 * Hkv, D).transpose(0, 1)
            qk = apply_rotary(qkv[: H + Hkv], cos, sin)
            q, k, v = qk[:H], qk[H:], qkv[H + Hkv :]  # (H, T, D), (Hkv, T, D), (Hkv, T, D)
        else:
            q = self.q_proj(x).view(T, H, D).transpose(0, 1)  # (H, T, D)
            k = self.k_proj(x).view(T, Hkv, D).transpose(0, 1)  # (Hkv, T, D)
            v = self.v_proj(x).view(T, Hkv, D).transpose(0, 1)  # (Hkv, T, D)
            q = apply_rotary(q, cos, sin)
            k = apply_rotary(k, cos, sin)

        if batch.paged is not None:  # inference: write into the KV pool, attend through it
            out = batch.paged.attend(layer_idx, q, k, v, self.decode_kernel)  # (H, T, D)
            return self.o_proj(out.transpose(0, 1).reshape(T, H * D))
        if len(batch.seq_lens) > 1:
            out = padded_causal_attention(q, k, v, batch, fused=q.is_cuda)
            if out is not None:
                return self.o_proj(out.transpose(0, 1).reshape(T, H * D))
        outputs = []
        start = 0
        for n in batch.seq_lens:
            qi, ki, vi = q[:, start : start + n], k[:, start : start + n], v[:, start : start + n]
            # SDPA gets 4-D inputs: for 3-D ones the CPU dispatcher skips the fused kernel and
            # runs the unfused math path (4x slower on a 30 s clip).
            out = F.scaled_dot_product_attention(
                qi[None], ki[None], vi[None], is_causal=True, enable_gqa=H != Hkv
            )[0]  # (H, n, D)
            outputs.append(out)
            start += n
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)  # (H, T, D)
        return self.o_proj(out.transpose(0, 1).reshape(T, H * D))


class Qwen2MLP(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.gate_up = None  # packed.StackedLinears, set by `packed.attach_kernels`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None and self.gate_up.applies(x):
            gate, up = self.gate_up(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen2DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.self_attn = Qwen2Attention(cfg)
        self.mlp = Qwen2MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, batch: AttentionBatch, layer_idx: int) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, batch, layer_idx)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Model(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Qwen2DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        self.gradient_checkpointing = False
        # fused_decode.FusedDecode: decode-only steps through the compiled layer stack, set by
        # `packed.attach_kernels`; None: every step runs the layers below
        self.fused_decode = None

    def forward(
        self, inputs_embeds: torch.Tensor, positions: torch.Tensor, batch: AttentionBatch
    ) -> torch.Tensor:
        """(T, D) packed embeddings -> (T, D) final hidden states; writes the batch's KV pool."""
        if batch.num_tokens != inputs_embeds.shape[0]:
            raise ValueError("AttentionBatch.seq_lens does not add up to the number of tokens")
        cos, sin = self.rotary_emb(positions, inputs_embeds.dtype)
        x = inputs_embeds
        if self.fused_decode is not None and self.fused_decode.applies(x, batch):
            return self.norm(self.fused_decode(x, cos, sin, batch.paged))
        for i, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, cos, sin, batch, i, use_reentrant=False)
            else:
                x = layer(x, cos, sin, batch, i)
        return self.norm(x)


class Qwen2ForCausalLM(nn.Module):
    """`language_model.*` in the checkpoint: the decoder stack plus the output head."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = Qwen2Model(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, inputs_embeds, positions, batch: AttentionBatch) -> torch.Tensor:
        return self.model(inputs_embeds, positions, batch)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits in float32 for the rows the caller needs (never the whole prefill)."""
        return self.lm_head(hidden).float()
