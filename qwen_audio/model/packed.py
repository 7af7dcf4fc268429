"""`PackedLinear`: an inference `nn.Linear` whose weight stays bf16/fp16 or int8/int4 in memory.

Few rows (decoding, up to 16) go to the weight-streaming kernels, which read every weight byte
once and accumulate in float32. Many rows (prefill, the encoder) are compute bound: where the CPU
multiplies bf16 natively the weight is dequantized one tile of output rows at a time for the bf16
GEMM, so no more than one tile is ever held wide. int8/int4 weights stay on the kernels' int8-input
products for any number of rows with float32 activations (AVX2, AVX-512 without BF16), and int4
with bf16 ones once repacked in blocks of 8 rows (int_layout.py), unless the bf16 GEMM is faster
for prompts there (AMX: measured). On the 7B's shapes, 2 cores, int4
blocks ran at 440-515 GFLOP/s with AVX2 on a Zen 5 VM, where dequantizing for the float32 GEMM
reached ~180, and at 415-460 with AVX512-VNNI on a Zen 4, where a 7B int4 prompt prefilled at
29.8 tok/s in blocks against 22.5 through the bf16 GEMM. Without the kernels every path runs in
plain PyTorch on the same formats.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels as K
from . import int_layout, quant
from .heap import HugePageArena, return_freed_memory

TILE_FLOATS = 1 << 20  # one dequantized tile: 4 MiB of float32, about an L2 cache or two
QUANTIZE_CHUNK_FLOATS = 1 << 25  # rows quantized at once: 128 MiB of float32 temporaries
# bf16 tiles feed the native bf16 GEMM (AMX on Sapphire Rapids), which ran faster the more
# output rows one call had: 7B shapes, 128 prompt rows, int4 weights, 2 cores: 550-590
# GFLOP/s with 2 MiB tiles, 660-710 with 8 MiB, ~800 with 32 MiB (in a reused buffer)
BF16_TILE_ELEMENTS = 1 << 24
_threads_tiles = threading.local()


def _tile_buffer(elements: int, dtype: torch.dtype) -> torch.Tensor:
    """This thread's buffer for dequantized tiles of `dtype`, at least `elements` long:
    reused, because a new tile of many MiB costs its page faults at every product (a 32 MiB
    tile: 8192 of them)."""
    if not hasattr(_threads_tiles, "buffers"):
        _threads_tiles.buffers = {}
    buffer = _threads_tiles.buffers.get(dtype)
    if buffer is None or buffer.numel() < elements:
        buffer = torch.empty(elements, dtype=dtype)
        _threads_tiles.buffers[dtype] = buffer
    return buffer


def quantize_in_chunks(format: str, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`quant.quantize`, by the compiled kernel where there is one (the same bytes without
    PyTorch's float32 temporaries), else over blocks of rows: a 156k-row head never becomes
    float32 at once."""
    module = K.load_kernels() if w.device.type == "cpu" else None
    if module is not None and w.shape[1] % quant.GROUP == 0:
        q, s = module.quantize(w, K.FORMAT_IDS[format], K.ISA_IDS[K.selected_isa()])
        return q, s
    # int4's scale search holds float64 errors of every candidate's levels: a quarter the rows
    floats = QUANTIZE_CHUNK_FLOATS // (4 if format == "int4" else 1)
    rows = max(1, floats // w.shape[1])
    parts = [quant.quantize(format, w[i : i + rows]) for i in range(0, w.shape[0], rows)]
    if len(parts) == 1:
        return parts[0]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


class PackedLinear(nn.Module):
    """y = x @ W^T + b with W in `format`: bf16, fp16 (as stored), int8 or int4 (grouped)."""

    def __init__(
        self,
        format: str,
        weight: torch.Tensor,
        scales: torch.Tensor | None,
        bias: torch.Tensor | None,
        in_features: int,
        out_features: int,
    ) -> None:
        super().__init__()
        if format not in K.FORMAT_IDS:
            raise ValueError(f"unknown weight format {format!r}")
        self.format = format
        self.in_features, self.out_features = in_features, out_features
        # buffers, not parameters: inference only, and state_dict() shows the packed tensors
        self.register_buffer("weight", weight)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)
        self.kernels = None
        self.isa = 0
        # int8/int4 on the int8-input kernels, which take any number of rows (takes_any_rows)
        self.int_inputs_any_rows = False
        # int4 in blocks: bf16 prompts on those kernels, not the bf16 GEMM (int_layout.py)
        self.bf16_prompts_on_kernels = False
        # int8/int4 in blocks: bf16 prompts' GEMM on AMX, dequantizing in cache (use_kernels)
        self.amx_prompts = False
        # int8/int4: "rows" as stored, or "blocks8" (quant.to_row_blocks) once the kernels
        # that multiply that layout are attached; state_dict() always gives the rows
        self.layout = "rows"

    @classmethod
    def from_linear(cls, linear: nn.Linear, format: str, bias_dtype: torch.dtype) -> PackedLinear:
        """Pack a linear layer's weight: 16-bit weights are kept as they are (no copy)."""
        w = linear.weight.detach()
        bias = None if linear.bias is None else linear.bias.detach().to(bias_dtype)
        if format in quant.METHODS:
            q, s = quantize_in_chunks(format, w)
            return cls(format, q, s, bias, linear.in_features, linear.out_features)
        want = _SIXTEEN[format]
        return cls(format, w.to(want), None, bias, linear.in_features, linear.out_features)

    def use_kernels(self, module, isa: str, arena: HugePageArena | None = None) -> bool:
        """Route this layer through the compiled kernels; False if its shape does not fit them.
        Weights repacked for them are made in `arena` (huge pages) when given."""
        if module is None or self.in_features % K.GROUP or self.weight.device.type != "cpu":
            return False
        self.kernels, self.isa = module, K.ISA_IDS[isa]
        fmt = K.FORMAT_IDS[self.format]
        self.int_inputs_any_rows = module.int_inputs_path(fmt, self.isa, self.in_features)
        if (
            self.format in K.BLOCKS8_FORMAT_IDS
            and self.layout == "rows"
            and self.int_inputs_any_rows
            and self.out_features % 8 == 0
            and int_layout.prefers_row_blocks(module, isa, self.format)
        ):
            empty = torch.empty if arena is None else arena.empty
            self.weight, self.scales = quant.to_row_blocks(self.weight, self.scales, empty)
            self.layout = "blocks8"
            return_freed_memory()  # the stored copy, else kept by glibc (7B int4: +0.76 GiB)
        # bf16 prompts' GEMM on AMX (`amx_prompt_linear`): the tile unit multiplies bf16 as
        # PyTorch's GEMM does, but each weight tile is dequantized in cache where it is used,
        # not written out whole and read back. 7B shapes, 160 rows, 2 Sapphire Rapids cores:
        # 15-17 against 25-28 ms (22016 x 4096), 8.5-9.4 against 15-16 (4096 x 11008).
        self.amx_prompts = (
            self.layout == "blocks8" and self.out_features % 32 == 0 and module.amx_usable(self.isa)
        )
        self.bf16_prompts_on_kernels = (
            self.layout == "blocks8"
            and self.format == "int4"
            and not int_layout.int4_prompts_on_gemm(module, isa)
        )
        return True

    @property
    def kernel_format(self) -> int:
        """The kernels' id of this layer's weight layout."""
        if self.layout == "blocks8":
            return K.BLOCKS8_FORMAT_IDS[self.format]
        return K.FORMAT_IDS[self.format]

    def stored_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight and its scales in the stored (row) layout."""
        if self.layout == "blocks8":
            return quant.from_row_blocks(self.weight, self.scales)
        return self.weight, self.scales

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.layout == "blocks8":  # checkpoints keep the portable row layout
            destination[prefix + "weight"], destination[prefix + "scales"] = self.stored_weight()

    def takes_kernel_rows(self, flat: torch.Tensor) -> bool:
        """Whether these (rows, in_features) inputs go to the weight-streaming kernels."""
        rows = flat.shape[0]
        if self.kernels is None or rows == 0 or torch.is_grad_enabled():
            return False
        return rows <= K.MAX_ROWS or self.takes_any_rows(flat.dtype)

    def takes_any_rows(self, dtype: torch.dtype) -> bool:
        """Whether the kernels multiply any number of rows of `dtype`: int8/int4 on x86-64, for
        float32 rows, and for bf16 rows int4 in 8-row blocks unless the bf16 GEMM is faster
        here (AMX: int_layout.int4_prompts_on_gemm). Their inputs are rounded to int8 per group
        of 32, as a decoded token's always are. int4 prompts gain speed that way without AMX
        (Zen 4, 7B: 29.8 against 22.5 tok/s through the bf16 GEMM's dequantized tiles) at no
        cost in its quality; int8, the choice for quality, keeps a bf16 prompt's inputs on the
        GEMM (its logits cosine 0.99903 against 0.99891 with rounded inputs, for 7% speed)."""
        if not self.int_inputs_any_rows:
            return False
        if dtype == torch.float32:
            return True
        return dtype == torch.bfloat16 and self.bf16_prompts_on_kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] == 0:  # a prefill chunk that needs no logits: nothing to dequantize
            return x.new_empty(*x.shape[:-1], self.out_features)
        if self.takes_kernel_rows(flat):
            y = self._decode(flat)
        elif self.format == "bf16" and flat.dtype == torch.bfloat16:
            # the native bf16 GEMM reads the bf16 weight directly, its bias fused as nn.Linear's
            y = F.linear(flat, self.weight, self.bias)
            return y.reshape(*x.shape[:-1], self.out_features)
        else:
            y = self._tiled_matmul(flat)
        y = y.to(dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def _decode(self, flat: torch.Tensor) -> torch.Tensor:
        return _kernel_product([self], flat)

    def _tiled_matmul(self, flat: torch.Tensor) -> torch.Tensor:
        compute = flat.dtype if flat.dtype in (torch.float32, torch.bfloat16) else torch.float32
        flat = flat.to(compute)
        if compute == torch.bfloat16 and self.amx_prompts and not torch.is_grad_enabled():
            return self.kernels.amx_prompt_linear(
                flat, self.weight, self.scales, self.kernel_format
            )
        N = self.out_features
        elements = TILE_FLOATS if compute == torch.float32 else BF16_TILE_ELEMENTS
        tile = max(16, elements // self.in_features)
        starts = range(0, N, tile)
        if torch.is_grad_enabled():  # autograd keeps every tile, and mm(out=...) has no grad
            tiles = [self.dequantized(n0, min(N, n0 + tile), compute) for n0 in starts]
            return torch.cat([flat @ w.T for w in tiles], dim=1)
        into = None
        if self.kernels is not None:
            into = _tile_buffer(min(tile, N) * self.in_features, compute)
        if tile >= N:
            return flat @ self.dequantized(0, N, compute, into).T
        out = torch.empty(flat.shape[0], N, dtype=compute, device=flat.device)
        for n0 in starts:
            n1 = min(N, n0 + tile)
            torch.mm(flat, self.dequantized(n0, n1, compute, into).T, out=out[:, n0:n1])
        return out

    def dequantized(
        self,
        n0: int,
        n1: int,
        dtype: torch.dtype = torch.float32,
        into: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Output rows [n0, n1) of the weight in float32, or in bf16 rounded from those
        (the kernels write bf16 tiles directly: no float32 tile to write, read and convert),
        in the kernels' case written into `into` when given (see `_tile_buffer`)."""
        if self.kernels is not None:
            scales = self.scales if self.scales is not None else _NO_SCALES
            bf16 = dtype == torch.bfloat16
            tile = self.kernels.dequantize(
                self.weight, scales, self.kernel_format, self.isa, n0, n1, bf16, into
            )
            return tile.to(dtype)
        if self.format in quant.METHODS:
            w = quant.dequantize(self.format, self.weight[n0:n1], self.scales[n0:n1])
            return w.to(dtype)
        return self.weight[n0:n1].to(dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, format={self.format}"


_NO_SCALES = torch.empty(0, dtype=torch.float16)


def _kernel_product(layers: list[PackedLinear], flat: torch.Tensor) -> torch.Tensor:
    """flat (rows, in) times the weights of `layers` (one format, the same inputs), their
    outputs side by side, through the compiled kernels; no bias."""
    first = layers[0]
    weights = [layer.weight for layer in layers]
    if first.format == "bf16" and flat.dtype == torch.bfloat16 and first.isa == 3:
        return first.kernels.linear_bf16_native_many(flat, weights)  # native bf16 dot products
    scales = [_NO_SCALES if layer.scales is None else layer.scales for layer in layers]
    fmt = first.kernel_format
    return first.kernels.linear_many(flat.float().contiguous(), weights, scales, fmt, first.isa)


class StackedLinears:
    """PackedLinear layers of one input (q/k/v, gate/up) multiplied in one kernel call when they
    go to the kernels: the input is rounded once and the thread pool woken once, not per layer
    (on a 7B, 7 calls a layer become 3; on the 0.5B, whose decode is mostly such overhead, more
    so). Each output row is computed exactly as its own layer would, so results are the same
    bits. Not a module: the layers stay where the checkpoint's names put them."""

    def __init__(self, layers: list[PackedLinear]) -> None:
        self.layers = layers
        self.sizes = [layer.out_features for layer in layers]
        biases = [layer.bias for layer in layers]
        self.bias = None
        if any(b is not None for b in biases):
            self.bias = torch.cat(
                [torch.zeros(n) if b is None else b for b, n in zip(biases, self.sizes)]
            ).to(next(b for b in biases if b is not None).dtype)

    @classmethod
    def of(cls, layers: list[nn.Module]) -> StackedLinears | None:
        """The stack of `layers`, or None unless all are PackedLinear on the kernels alike."""
        first = layers[0]
        if not all(isinstance(layer, PackedLinear) for layer in layers) or first.kernels is None:
            return None

        def kind(layer: PackedLinear) -> tuple:
            return (
                layer.kernel_format,
                layer.in_features,
                layer.isa,
                layer.kernels,
                layer.int_inputs_any_rows,
                layer.bf16_prompts_on_kernels,
            )

        alike = all(kind(layer) == kind(first) for layer in layers)
        return cls(layers) if alike else None

    def applies(self, x: torch.Tensor) -> bool:
        return self.layers[0].takes_kernel_rows(x.reshape(-1, self.layers[0].in_features))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., sum of the layers' outputs), side by side."""
        dtype = x.dtype
        y = _kernel_product(self.layers, x.reshape(-1, self.layers[0].in_features)).to(dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], sum(self.sizes))


def empty_packed(linear: nn.Linear, format: str, bias_dtype: torch.dtype) -> PackedLinear:
    """A PackedLinear on the meta device with `format`'s shapes, to load a packed file into."""
    N, Kin = linear.out_features, linear.in_features
    with torch.device("meta"):
        if format == "int8":
            w, s = torch.empty(N, Kin, dtype=torch.int8), torch.empty(N, Kin // quant.GROUP)
        elif format == "int4":
            w, s = torch.empty(N, Kin // 2, dtype=torch.uint8), torch.empty(N, Kin // quant.GROUP)
        else:
            w, s = torch.empty(N, Kin, dtype=_SIXTEEN[format]), None
        s = None if s is None else s.to(torch.float16)
        bias = None if linear.bias is None else torch.empty(N, dtype=bias_dtype)
    return PackedLinear(format, w, s, bias, Kin, N)


def replace_linears(model: nn.Module, make) -> None:
    """Swap each module `name` for `make(name, module)` where that returns a module."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            new = make(full, child)
            if new is not None:
                setattr(module, child_name, new)


def attach_kernels(model: nn.Module) -> str | None:
    """Route every PackedLinear through the compiled kernels; the instruction set, or None."""
    layers = [m for m in model.modules() if isinstance(m, PackedLinear)]
    if not layers:
        return None
    module = K.load_kernels()
    if module is None:
        return None
    isa = K.selected_isa()
    arena = HugePageArena()  # the blocks this model's int8/int4 layers are repacked into
    used = [layer.use_kernels(module, isa, arena) for layer in layers]
    if not any(used):
        return None
    from .fused_decode import FusedDecode
    from .qwen2 import Qwen2Attention, Qwen2MLP, Qwen2Model

    def decode_attention(q, kv_layer, tables, contexts):
        scale = q.shape[-1] ** -0.5
        return module.paged_decode_attention(q, kv_layer, tables, contexts, scale, K.ISA_IDS[isa])

    for module_ in model.modules():
        if isinstance(module_, Qwen2Attention):
            if module_.head_dim % 16 == 0:
                module_.decode_kernel = decode_attention
            module_.qkv = StackedLinears.of([module_.q_proj, module_.k_proj, module_.v_proj])
        if isinstance(module_, Qwen2MLP):
            module_.gate_up = StackedLinears.of([module_.gate_proj, module_.up_proj])
    for module_ in model.modules():
        if isinstance(module_, Qwen2Model):
            module_.fused_decode = FusedDecode.of(module_.layers, module)
    return isa


_SIXTEEN = {"bf16": torch.bfloat16, "fp16": torch.float16}
