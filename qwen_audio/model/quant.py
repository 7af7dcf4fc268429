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


def to_row_blocks(q: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int4 (N, K/2) and its scales (N, K/32) -> the same bytes in blocks of 8 rows, the layout
    the AVX2 kernels multiply fastest (`kernels/cpu_kernels.cpp`, q4x8_block). In a block,
    group g's bytes come as 4 runs of 32: run j is bytes 4j..4j+3 of each of the 8 rows; the
    scales come group by group, 8 each. Shapes stay; N must be a multiple of 8."""
    N, half = q.shape
    G = scale.shape[1]
    blocks = q.reshape(N // 8, 8, G, 4, 4).permute(0, 2, 3, 1, 4).reshape(N, half)
    return blocks, scale.reshape(N // 8, 8, G).permute(0, 2, 1).reshape(N, G)


def from_row_blocks(q: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of `to_row_blocks`: the int4 row layout back."""
    N, half = q.shape
    G = scale.shape[1]
    rows = q.reshape(N // 8, G, 4, 8, 4).permute(0, 3, 1, 2, 4).reshape(N, half)
    return rows, scale.reshape(N // 8, G, 8).permute(0, 2, 1).reshape(N, G)


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
