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


# Each group's scale: the candidate with the least squared error, over the group's extreme
# divided by these (the first one is Q4_0's: the extreme becomes -8 exactly). Beyond -8 the
# extreme clamps to -8 but the other weights get finer steps; short of it the extreme rounds
# toward -7 and the far side keeps more range. Ties keep the earlier candidate.
INT4_DIVISORS = (-8.0, -9.0, -8.75, -8.5, -8.25, -7.75, -7.25, -7.0)


def _int4_levels(g: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Levels in [-8, 7] of float32 groups (..., 32) under fp16 scales (..., 1): round half to
    even of g times the scale's float32 reciprocal (0 where the scale is 0)."""
    s = scale.float()
    inv = torch.where(s != 0, 1.0 / torch.where(s != 0, s, 1.0), 0.0)
    return torch.round(g * inv).clamp(-8, 7)


def _squared_error(g: torch.Tensor, levels: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Sum over each group (..., 32) of (g - level * scale)^2, in float64, in a fixed order that
    the C++ quantizer repeats, so both pick the same candidate: the float32 differences (level *
    scale is exact in float32) squared exactly in float64, added in 8 lanes (lane j % 8, j rising)
    and the lanes pairwise."""
    d = (g - levels * scale.float()).double()
    sq = (d * d).reshape(*d.shape[:-1], GROUP // 8, 8)  # (..., 4, 8)
    lanes = sq[..., 0, :]
    for i in range(1, GROUP // 8):
        lanes = lanes + sq[..., i, :]
    while lanes.shape[-1] > 1:  # ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7))
        lanes = lanes[..., 0::2] + lanes[..., 1::2]
    return lanes[..., 0]


def quantize_int4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) weight -> packed uint8 (N, K/2) and fp16 scales (N, K/32).

    Q4_0's layout, with each group's scale chosen for the least squared error among
    `INT4_DIVISORS` (Q4_0's own, the extreme mapped to -8, among them): on Gaussian weights the
    RMS error drops ~5% below Q4_0's.
    """
    N, K = w.shape
    g = w.detach().float().reshape(N, K // GROUP, GROUP)
    extreme = g.gather(-1, g.abs().argmax(dim=-1, keepdim=True))  # (N, G, 1), signed
    best_scale, best_err = None, None
    for divisor in INT4_DIVISORS:
        scale = (extreme / divisor).to(torch.float16)  # rounded first: the levels use it as stored
        err = _squared_error(g, _int4_levels(g, scale), scale)  # (N, G)
        if best_scale is None:
            best_scale, best_err = scale, err
        else:
            better = err < best_err
            best_scale = torch.where(better[..., None], scale, best_scale)
            best_err = torch.where(better, err, best_err)
    nib = (_int4_levels(g, best_scale) + 8).to(torch.uint8)  # (N, G, 32)
    packed = nib[..., : GROUP // 2] | (nib[..., GROUP // 2 :] << 4)  # (N, G, 16)
    return packed.reshape(N, K // 2), best_scale.reshape(N, K // GROUP)


def to_row_blocks(
    q: torch.Tensor, scale: torch.Tensor, empty=torch.empty
) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 (N, K) or int4 (N, K/2) and its scales (N, K/32) -> the same bytes in blocks of 8
    rows, the layout the AVX2 kernels multiply fastest (`kernels/row_blocks_body.h`). In a
    block, group g's bytes come as runs of 32 (4 for int4, 8 for int8): run j is bytes
    4j..4j+3 of each of the 8 rows; the scales come group by group, 8 each. Shapes stay; N must
    be a multiple of 8. `empty(shape, dtype)` makes the new tensors (heap.HugePageArena's)."""
    N, width = q.shape
    G = scale.shape[1]
    words = width // G // 4  # 4-byte words of a row's group
    blocks = empty((N, width), dtype=q.dtype)
    blocks.view(N // 8, G, words, 8, 4).copy_(
        q.reshape(N // 8, 8, G, words, 4).permute(0, 2, 3, 1, 4)
    )
    block_scales = empty((N, G), dtype=scale.dtype)
    block_scales.view(N // 8, G, 8).copy_(scale.reshape(N // 8, 8, G).permute(0, 2, 1))
    return blocks, block_scales


def from_row_blocks(q: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of `to_row_blocks`: the row layout back."""
    N, width = q.shape
    G = scale.shape[1]
    words = width // G // 4
    rows = q.reshape(N // 8, G, words, 8, 4).permute(0, 3, 1, 2, 4).reshape(N, width)
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
