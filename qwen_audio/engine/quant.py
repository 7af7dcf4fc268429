"""Weight-only int8 quantization: swap `nn.Linear` modules, nothing else changes.

Decoding one token is bound by reading the weights, so storing them as int8 with one bf16 scale
per output row halves the bytes per step. For a handful of rows (decode) the fused
`_weight_int8pack_mm` kernel reads int8 directly; for many rows (prefill) the product is compute
bound and that kernel is slower than dequantising once and running the bf16 GEMM, so we do that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Row counts up to this use the fused int8 kernel (measured on AVX512 CPUs: it wins below ~16).
FUSED_MAX_ROWS = 8


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0  # (out,) symmetric per row
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("weight", q)
        self.register_buffer("scale", scale.to(compute_dtype))
        bias = linear.bias.detach().to(compute_dtype) if linear.bias is not None else None
        self.register_buffer("bias", bias)
        self.compute_dtype = compute_dtype
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(self.compute_dtype)
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] <= FUSED_MAX_ROWS and x.device.type == "cpu":
            y = torch._weight_int8pack_mm(flat, self.weight, self.scale)
        else:
            y = F.linear(flat, self.weight.to(self.compute_dtype)) * self.scale
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 per-row scales"


def quantize_model(model: nn.Module, method: str, *, include_encoder: bool = False) -> nn.Module:
    """Replace the decoder's linear layers (and the head) by int8 ones, in place."""
    if method != "int8":
        raise ValueError(f"unknown quantization {method!r}; supported: int8")
    compute = model.dtype if model.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    roots = [model.language_model]
    if include_encoder:
        roots += [model.audio_tower, model.multi_modal_projector]
    for root in roots:
        for module in list(root.modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, child_name, Int8Linear(child, compute))
    return model
