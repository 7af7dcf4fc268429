"""Our own CPU kernels, compiled on first use and cached.

`gemv_bf16` multiplies a few bf16 rows by a bf16 weight matrix at memory speed on CPUs with
AVX512-BF16; decoding is bound by reading the weights, and the general GEMM path streams them at
about half the speed (measured: 34 vs 15 GB/s on one core of the benchmark machine). It is built
with the system C++ compiler through `torch.utils.cpp_extension` the first time a bf16 model is
loaded on such a CPU (about a minute, once; cached under ~/.cache/qwen_audio). Without a compiler
or without AVX512-BF16, or with QWEN_AUDIO_KERNELS=0, everything runs on PyTorch's own kernels.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..quant import Int8Linear

log = logging.getLogger(__name__)

MAX_ROWS = 16  # the kernel handles up to 16 rows (a decode batch); more go to the GEMM path
_SOURCE = Path(__file__).with_name("gemv_bf16.cpp")
_module = None
_tried = False


def cpu_supports_bf16_dot() -> bool:
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def load_gemv():
    """The compiled kernel module, or None where it cannot be used."""
    global _module, _tried
    if _tried:
        return _module
    _tried = True
    if os.environ.get("QWEN_AUDIO_KERNELS", "1") == "0" or not cpu_supports_bf16_dot():
        return None
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        log.warning("no C++ compiler found: using PyTorch's bf16 GEMM for decoding")
        return None
    from torch.utils.cpp_extension import load

    build = Path.home() / ".cache" / "qwen_audio" / "kernels" / torch.__version__.replace("+", "_")
    build.mkdir(parents=True, exist_ok=True)
    try:
        _module = load(
            name="qwen_audio_gemv_bf16",
            sources=[str(_SOURCE)],
            extra_cflags=["-O3", "-mavx512f", "-mavx512bw", "-mavx512bf16", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            build_directory=str(build),
            verbose=False,
        )
    except Exception as err:  # a broken toolchain must not stop the model from running
        log.warning("could not build the bf16 decode kernel (%s); using PyTorch's GEMM", err)
        _module = None
    return _module


class GemvLinear(nn.Module):
    """An `nn.Linear` (same weight and bias) that decodes through `gemv_bf16`."""

    def __init__(self, linear: nn.Linear, kernel) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.kernel = kernel
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows > MAX_ROWS or x.dtype != torch.bfloat16 or torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        y = self.kernel.gemv_bf16(x.reshape(rows, self.in_features), self.weight)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def use_decode_kernels(model: nn.Module) -> bool:
    """Swap the decoder's bf16 linear layers for `GemvLinear`; False if the kernel is unusable."""
    if model.dtype != torch.bfloat16 or model.device.type != "cpu":
        return False
    lm = model.language_model
    linears = [m for m in lm.modules() if isinstance(m, nn.Linear)]
    if not linears or any(m.in_features % 32 for m in linears):
        return False
    kernel = load_gemv()
    if kernel is None:
        return False
    for module in list(lm.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and not isinstance(child, Int8Linear):
                setattr(module, name, GemvLinear(child, kernel))
    return True
