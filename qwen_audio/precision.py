"""Which precision a checkpoint runs in: decided by the device, the CPU's features and memory.

Two dtypes matter on a CPU. The *weights* stay in memory in their stored precision (bf16/fp16,
memory-mapped, never widened) or quantized (int8/int4 groups). The *activations* run in bf16
only where the CPU multiplies bf16 natively (AVX512-BF16/AMX); elsewhere PyTorch emulates bf16
math at a fraction of float32's speed, so activations, norms and biases run in float32 while
the weights stay 16-bit (widening a 16-bit float is exact, so this equals a float32 model with
the same weights). `auto` never picks what cannot fit: when nothing fits, the error says how
much each option needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil
import torch

from . import kernels
from .config import CheckpointError, ModelConfig

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
QUANTIZE_METHODS = ("int8", "int4")
# Headroom beyond the weights: activations, the KV cache of a 30 s request on a 7B model
# (780 tokens x 1 MiB in float32) and the allocator's slack.
RUNTIME_RESERVE = 2 << 30


@dataclass(frozen=True)
class Precision:
    weights: torch.dtype  # linear layers and the embedding table, when not quantized
    compute: torch.dtype  # activations, norms, biases, the KV cache
    quantize: str | None = None  # the decoder's linear layers and head: "int8" or "int4"
    # CPU: 16-bit linear layers go through our weight-streaming kernels even when activations
    # share their dtype (PyTorch's bf16 GEMV reads weights at a third of the speed of ours).
    stream_16bit: bool = False

    @property
    def packed(self) -> bool:
        """Whether linear layers are PackedLinear: quantized, 16-bit next to wider activations,
        or 16-bit streamed by the CPU kernels."""
        return self.quantize is not None or self.weights != self.compute or self.stream_16bit

    @property
    def encoder_quantize(self) -> str | None:
        """The encoder's linear layers: int8 under either method (a small share of the bytes,
        and the audio features it makes feed every later token)."""
        return None if self.quantize is None else "int8"

    def describe(self) -> str:
        w = self.quantize or _name(self.weights)
        return f"weights {w}, activations {_name(self.compute)}"


def _name(dtype: torch.dtype) -> str:
    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]


def cpu_has_native_bf16() -> bool:
    """bf16 matrix math in hardware (AVX512-BF16 or AMX), the case where bf16 compute is fast."""
    flags = kernels.cpu_flags()
    return bool(flags & {"avx512_bf16", "amx_bf16"}) and kernels.selected_isa() == "avx512_bf16"


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype | None:
    """None for `auto`."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return None if dtype == "auto" else dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of auto, float32, bfloat16, float16; got {dtype!r}")
    return DTYPES[dtype]


def plan(
    dtype: str | torch.dtype,
    quantize: str | None,
    device: torch.device,
    config: ModelConfig,
    stored: torch.dtype,
    *,
    prequantized: str | None = None,
    available: int | None = None,
    name: str = "the model",
) -> Precision:
    """The precision to load in; raises CheckpointError (before any weight is read) when the
    requested one cannot fit in memory, naming what each option needs."""
    if quantize is not None and quantize not in QUANTIZE_METHODS:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_METHODS)}; got {quantize!r}")
    if prequantized is not None:
        if quantize not in (None, prequantized):
            raise CheckpointError(
                f"{name} is already quantized to {prequantized}; cannot load it as {quantize}"
            )
        quantize = prequantized
    requested = parse_dtype(dtype)
    if device.type == "cuda":
        w = requested or (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        return Precision(w, w, quantize)

    native = cpu_has_native_bf16()
    sixteen = stored if stored in (torch.bfloat16, torch.float16) else torch.bfloat16
    if requested is None and stored == torch.float32 and not native and quantize is None:
        choice = Precision(torch.float32, torch.float32)
        if not _fits(config, choice, available):  # float32 as stored is too big: keep 16 bits
            choice = Precision(torch.bfloat16, torch.float32, stream_16bit=True)
    elif requested == torch.float32 and stored in (torch.bfloat16, torch.float16) and not quantize:
        # float32 math on 16-bit weights: widening them is exact, so keeping them as stored
        # computes the same products with half the memory
        choice = Precision(stored, torch.float32, stream_16bit=True)
    else:
        if requested is not None:
            weights = requested
        elif quantize is not None:
            weights = stored  # quantized from the stored values, not from a rounded copy
        else:
            weights = torch.bfloat16 if native and stored == torch.float32 else sixteen
        compute = torch.bfloat16 if weights == torch.bfloat16 and native else torch.float32
        choice = Precision(weights, compute, quantize, stream_16bit=weights.itemsize == 2)
    if not _fits(config, choice, available):
        raise CheckpointError(_too_big_message(config, choice, available, name, native))
    return choice


def _fits(config: ModelConfig, precision: Precision, available: int | None) -> bool:
    free = psutil.virtual_memory().available if available is None else available
    return estimate_bytes(config, precision) + RUNTIME_RESERVE <= free


def _too_big_message(
    config: ModelConfig, choice: Precision, available: int | None, name: str, native: bool
) -> str:
    free = psutil.virtual_memory().available if available is None else available
    compute = torch.bfloat16 if native else torch.float32
    options = [
        ("bfloat16", Precision(torch.bfloat16, compute)),
        ("--quantize int8", Precision(torch.bfloat16, compute, "int8")),
        ("--quantize int4", Precision(torch.bfloat16, compute, "int4")),
    ]
    needs = ", ".join(f"{label} {_gib(estimate_bytes(config, p))}" for label, p in options)
    fitting = [label for label, p in options if _fits(config, p, free)]
    hint = f"use {fitting[0]}" if fitting else "no option fits this machine"
    return (
        f"{name} needs about {_gib(estimate_bytes(config, choice))} in {choice.describe()}, "
        f"plus {_gib(RUNTIME_RESERVE)} to run, but only {_gib(free)} of memory is available "
        f"(weights alone: {needs}); {hint}"
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def estimate_bytes(config: ModelConfig, precision: Precision) -> int:
    """Bytes the weights take in memory in `precision` (what loading will hold)."""
    t, a = config.text, config.audio
    D, F_, V = t.hidden_size, t.intermediate_size, t.vocab_size
    kv = t.num_key_value_heads * t.head_dim
    q = t.num_attention_heads * t.head_dim
    decoder_linear = t.num_hidden_layers * (D * q + 2 * D * kv + q * D + 3 * D * F_)
    head = D * V  # stored separately even when tied, once quantized
    d, ff = a.d_model, a.encoder_ffn_dim
    encoder_linear = a.encoder_layers * (4 * d * d + 2 * d * ff) + d * D  # + the projector
    other = a.num_mel_bins * d * 3 + d * d * 3 + a.max_source_positions * d  # convs, positions
    other += (t.num_hidden_layers * 2 + 1) * D + a.encoder_layers * 8 * d  # norms, biases

    def linear_bytes(n: int, method: str | None) -> float:
        if method is None:
            return n * precision.weights.itemsize
        return n * (8.5 if method == "int8" else 4.5) / 8

    total = linear_bytes(decoder_linear + head, precision.quantize)
    total += linear_bytes(encoder_linear, precision.encoder_quantize)
    total += D * V * precision.weights.itemsize  # the embedding table stays 16-bit
    if t.tie_word_embeddings and precision.quantize is None:
        total -= linear_bytes(head, None)  # a tied 16-bit head shares the table
    total += other * precision.compute.itemsize
    return int(total)
