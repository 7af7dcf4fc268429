"""Decode-only steps through the compiled decoder stack (kernels/decoder_stack.cpp).

A decoded token on a CPU spends most of its time reading weights, but around each layer's four
kernel products Python runs ~45 small PyTorch operations (norms, rotary positions, the KV write,
residuals). On a 24-layer model with tiny weights, where nothing else costs, a token took 4.9-6.7
ms through the Python layers and 1.2-2.0 ms this way (engine and sampling included): 3-4 ms of a
~35 ms 0.5B token on 2 cores, ~10% of its speed. `FusedDecode` hands a step in which
every sequence has one new token to `DecoderStack`, which runs those same operations in the same
order on the same ATen kernels from C++, all layers in one call, with the GIL released. Its
results are the Python loop's bits, so a sequence decodes the same whichever path a step takes.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import kernels as K
from .attention import AttentionBatch, PagedBatch, SDPABackend
from .packed import _NO_SCALES, PackedLinear, StackedLinears
from .qwen2 import Qwen2DecoderLayer, RMSNorm

_NO_BIAS = torch.empty(0)


class FusedDecode:
    """The decoder layers of one model as a `DecoderStack`; see `of` for when one exists."""

    def __init__(self, stack, linears: list[PackedLinear]) -> None:
        self.stack = stack
        # the activation dtypes for which every product takes any number of rows
        self.any_rows = {
            dtype
            for dtype in (torch.float32, torch.bfloat16)
            if all(linear.takes_any_rows(dtype) for linear in linears)
        }

    @classmethod
    def of(cls, layers: nn.ModuleList, module) -> FusedDecode | None:
        """The stack of `layers`, or None unless every product of every layer runs on the
        kernels (int8/int4 layers whose inputs do not make groups of 32 stay on PyTorch)."""
        if module is None or not hasattr(module, "DecoderStack") or not len(layers):
            return None
        specs = []
        for layer in layers:
            spec = _layer_spec(layer)
            if spec is None:
                return None
            specs.append(spec)
        attn = layers[0].self_attn
        isas = {linear.isa for layer in layers for linear in _linears(layer)}
        eps = {norm.eps for layer in layers for norm in _norms(layer)}
        if len(isas) != 1 or len(eps) != 1:
            return None
        stack = module.DecoderStack(
            attn.num_heads, attn.num_kv_heads, attn.head_dim, eps.pop(), isas.pop()
        )
        for spec in specs:
            stack.add_layer(*spec)
        return cls(stack, [linear for layer in layers for linear in _linears(layer)])

    def applies(self, x: torch.Tensor, batch: AttentionBatch) -> bool:
        """Whether this step is for the stack: inference on the CPU, one new token per
        sequence, and a number of rows every product of the Python path sends to the kernels."""
        paged = batch.paged
        if paged is None or paged.prefills or paged.decode is None or torch.is_grad_enabled():
            return False
        if paged.backend is not SDPABackend or x.device.type != "cpu":
            return False
        rows = x.shape[0]
        return rows <= K.MAX_ROWS or x.dtype in self.any_rows

    def __call__(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, paged: PagedBatch
    ) -> torch.Tensor:
        """(T, hidden) -> the last layer's (T, hidden), keys and values written into the pool."""
        d = paged.decode
        return self.stack.forward(x, cos, sin, paged.kv, paged.slots, d.tables, d.lengths)


def _linears(layer: Qwen2DecoderLayer) -> list[PackedLinear]:
    attn, mlp = layer.self_attn, layer.mlp
    return [*attn.qkv.layers, attn.o_proj, *mlp.gate_up.layers, mlp.down_proj]


def _norms(layer: Qwen2DecoderLayer) -> list[RMSNorm]:
    return [layer.input_layernorm, layer.post_attention_layernorm]


def _layer_spec(layer: nn.Module) -> tuple | None:
    """`DecoderStack.add_layer`'s arguments for a layer, or None if it cannot be fused."""
    if type(layer) is not Qwen2DecoderLayer:
        return None
    attn, mlp = layer.self_attn, layer.mlp
    if attn.decode_kernel is None or attn.qkv is None or mlp.gate_up is None:
        return None
    if not all(type(norm) is RMSNorm for norm in _norms(layer)):
        return None
    products = [attn.qkv, StackedLinears.of([attn.o_proj]), mlp.gate_up]
    products.append(StackedLinears.of([mlp.down_proj]))
    if any(p is None for p in products):
        return None
    spec: list = [layer.input_layernorm.weight, layer.post_attention_layernorm.weight]
    for product in products:
        first = product.layers[0]
        spec += [
            [linear.weight for linear in product.layers],
            [_NO_SCALES if linear.scales is None else linear.scales for linear in product.layers],
            first.kernel_format,
            first.format == "bf16" and first.isa == K.ISA_IDS["avx512_bf16"],
            _NO_BIAS if product.bias is None else product.bias,
        ]
    return tuple(spec)
