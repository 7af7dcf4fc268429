"""Weight formats for CPU inference: 16-bit floats as stored, or int8 / int4 groups.

Decoding one token is bound by reading the weights, so the weights stay in memory in their
stored precision (bf16/fp16, never widened to float32) or quantized: int8 is 8.5 bits a weight
and int4 4.5 bits, one fp16 scale per group of 32 consecutive inputs (llama.cpp's Q8_0 and Q4_0
layouts, so the bytes read per token match its files). The functions here are the reference in
plain PyTorch; `kernels/cpu_kernels.cpp` reads the same layouts.

    int8  q (N, K) int8,   scale (N, K/32) fp16:  w = q * scale,        q in [-127, 127]
    int4  q (N, K/2) uint8, scale (N, K/32) fp16: w = (nibble - 8) * scale, nibble in [0, 15];
          in each group of 32 weights byte j holds weight j (low nibble) and weight j + 16 (high)
"""

from __future__ import annotations

import torch

GROUP = 32
METHODS = ("int8", "int4")


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) weight -> int8 (N, K) and fp16 scales (N, K/32): symmetric, absmax per group."""
    N, K = w.shape
    g = w.detach().float().reshape(N, K // GROUP, GROUP)
    scale = (g.abs().amax(dim=-1) / 127.0).to(torch.float16)  # rounded first: q uses it as stored
    s = scale.float()[..., None]
    q = torch.where(s > 0, torch.round(g / s.clamp(min=1e-30)), 0.0).clamp(-127, 127)
    return q.to(torch.int8).reshape(N, K), scale


def quantize_int4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) weight -> packed uint8 (N, K/2) and fp16 scales (N, K/32).

    As Q4_0: the scale maps the group's largest-magnitude weight to -8 exactly, so that extreme
    is represented without error and the other side keeps 7 steps.
    """
    N, K = w.shape
    g = w.detach().float().reshape(N, K // GROUP, GROUP)
    extreme = g.gather(-1, g.abs().argmax(dim=-1, keepdim=True))  # (N, G, 1), signed
    scale = (extreme / -8.0).to(torch.float16)
    s = scale.float()
    nib = torch.where(s != 0, torch.round(g / torch.where(s != 0, s, 1.0)) + 8, 8.0)
    nib = nib.clamp(0, 15).to(torch.uint8)  # (N, G, 32)
    packed = nib[..., : GROUP // 2] | (nib[..., GROUP // 2 :] << 4)  # (N, G, 16)
    return packed.reshape(N, K // 2), scale.reshape(N, K // GROUP)


def dequantize(method: str, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 (N, K) weight that a quantized one stands for."""
    N = q.shape[0]
    if method == "int8":
        K = q.shape[1]
        vals = q.float().reshape(N, K // GROUP, GROUP)
    elif method == "int4":
        K = q.shape[1] * 2
        b = q.reshape(N, K // GROUP, GROUP // 2)
        vals = torch.cat([b & 0x0F, b >> 4], dim=-1).float() - 8.0  # (N, G, 32)
    else:
        raise ValueError(f"unknown quantization {method!r}; supported: {', '.join(METHODS)}")
    return (vals * scale.float()[..., None]).reshape(N, K)


def quantize(method: str, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if method == "int8":
        return quantize_int8(w)
    if method == "int4":
        return quantize_int4(w)
    raise ValueError(f"unknown quantization {method!r}; supported: {', '.join(METHODS)}")


def bits_per_weight(method: str) -> float:
    """Storage per weight, scales included (8.5 and 4.5 bits)."""
    return {"int8": 8.0, "int4": 4.0}[method] + 16.0 / GROUP


# x86 decode layout of int4 weights, "x16": 16 output rows interleaved (made at load time for
# the kernels, never stored in files). Per block of 16 rows and group of 32 inputs: 256 bytes of
# nibbles in 4 chunks of 64, where chunk j holds, at byte 4r + i, row r's weights 4j + i (low
# nibble) and 16 + 4j + i (high nibble), i.e. the row-major group's bytes 4j..4j+3; and, in a
# second array, the 16 rows' fp16 scales. A 32-bit lane is then one row's 4 consecutive weights:
# one vector register multiplies 16 rows (AVX-512) or 8 (AVX2, half a chunk) by the same 4
# inputs, broadcast, and the rows' sums land in one register. N is padded to a multiple of 16
# with zero weights.
X16_ROWS = 16


def interleave_int4(q: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-major int4 (N, K/2) + fp16 scales (N, K/32) -> x16 nibbles (ceil(N/16), K/32 * 256)
    and scales (ceil(N/16), K/32 * 16)."""
    N, half = q.shape
    groups = half * 2 // GROUP
    pad = -N % X16_ROWS
    if pad:
        q = torch.cat([q, torch.full((pad, half), 0x88, dtype=torch.uint8)])
        scale = torch.cat([scale, torch.zeros(pad, groups, dtype=torch.float16)])
    blocks = (N + pad) // X16_ROWS
    # nibble bytes as int32 words (4 bytes = one row's chunk j): (b, r, g, j) -> (b, g, j, r)
    words = q.contiguous().view(torch.int32).view(blocks, X16_ROWS, groups, 4)
    nibbles = words.permute(0, 2, 3, 1).contiguous().view(torch.uint8)
    scales = scale.contiguous().view(blocks, X16_ROWS, groups).transpose(1, 2).contiguous()
    return nibbles.view(blocks, groups * 256), scales.view(blocks, groups * X16_ROWS)


def deinterleave_int4(
    nibbles: torch.Tensor, scales: torch.Tensor, N: int, K: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of `interleave_int4`: row-major (N, K/2) uint8 and (N, K/32) fp16 scales."""
    blocks, groups = nibbles.shape[0], K // GROUP
    words = nibbles.contiguous().view(torch.int32).view(blocks, groups, 4, X16_ROWS)
    q = words.permute(0, 3, 1, 2).contiguous().view(torch.uint8)
    s = scales.view(blocks, groups, X16_ROWS).transpose(1, 2).reshape(blocks * X16_ROWS, groups)
    return q.reshape(blocks * X16_ROWS, K // 2)[:N].contiguous(), s[:N].contiguous()
