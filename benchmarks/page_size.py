"""One-row decode products from memory, weights in 4 KiB pages against huge pages.

Decoding streams every weight once per token. In 4 KiB pages that read misses the TLB every
4 KiB; `model/heap.py`'s HugePageArena asks for 2 MiB pages instead. This times the kernels the
engine uses, on the 7B's layer shapes (a few layers' worth, far larger than the caches), with
the same weights in ordinary tensors and in the arena, alternating, next to a float32 sum's
read rate:

    python benchmarks/page_size.py                  # int4, int8 and bf16
    python benchmarks/page_size.py --formats int4 --layers 3 --rounds 5

On a Sapphire Rapids VM (2 cores, `--layers 3 --rounds 2`; a float32 sum read 22-23 GB/s):
int4 23.6-24.1 against 30.0-30.3 GB/s, int8 25.7-26.4 against 30.8-31.0, bf16 23.8-25.0
against 29.8-31.6.
"""

from __future__ import annotations

import argparse
import time

import torch

from qwen_audio import kernels as K
from qwen_audio.model import int_layout, quant
from qwen_audio.model.heap import HugePageArena

# q/k/v, o, gate/up, down of one 7B decoder layer (out, in)
LAYER = [(12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008)]
NO_SCALES = torch.empty(0, dtype=torch.float16)


def weights(module, isa: str, fmt: str, shapes, arena: HugePageArena | None):
    """[(weight, scales, kernel format)] as the engine holds them: int8/int4 in 8-row blocks
    where this CPU takes them (as PackedLinear.use_kernels decides), bf16 as stored."""
    made = []
    empty = torch.empty if arena is None else arena.empty
    for n, k in shapes:
        w = torch.randn(n, k) * 0.02
        if fmt == "bf16":
            stored = empty((n, k), dtype=torch.bfloat16)
            stored.copy_(w)
            made.append((stored, NO_SCALES, K.FORMAT_IDS["bf16"]))
            continue
        q, s = module.quantize(w, K.FORMAT_IDS[fmt], K.ISA_IDS[isa])
        if int_layout.prefers_row_blocks(module, isa, fmt):
            made.append((*quant.to_row_blocks(q, s, empty), K.BLOCKS8_FORMAT_IDS[fmt]))
        else:
            rows_q, rows_s = empty(tuple(q.shape), dtype=q.dtype), empty(s.shape, dtype=s.dtype)
            rows_q.copy_(q)
            rows_s.copy_(s)
            made.append((rows_q, rows_s, K.FORMAT_IDS[fmt]))
    return made


def stream(module, isa: str, fmt: str, made, inputs) -> float:
    """Seconds for one row through every weight."""
    start = time.perf_counter()
    for (w, s, kernel_format), x in zip(made, inputs):
        if fmt == "bf16" and isa == "avx512_bf16":
            module.linear_bf16_native_many(x.bfloat16(), [w])
        else:
            module.linear_many(x, [w], [s], kernel_format, K.ISA_IDS[isa])
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--formats", default="int4,int8,bf16")
    p.add_argument("--layers", type=int, default=4, help="7B layers' worth of weights")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    module, isa = K.load_kernels(), K.selected_isa()
    if module is None:
        raise SystemExit("no CPU kernels here")
    shapes = LAYER * args.layers
    sum_buffer = torch.ones(1 << 28)  # 1 GiB of float32
    print(f"kernels {isa}; huge pages available: {HugePageArena.available()}")
    for fmt in args.formats.split(","):
        small = weights(module, isa, fmt, shapes, None)
        huge = weights(module, isa, fmt, shapes, HugePageArena())
        nbytes = sum(w.numel() * w.element_size() + s.numel() * 2 for w, s, _ in small)
        inputs = [torch.randn(1, k) for _, k in shapes]
        for r in range(args.rounds):
            start = time.perf_counter()
            sum_buffer.sum()
            read = sum_buffer.numel() * 4 / (time.perf_counter() - start) / 1e9
            small_s = stream(module, isa, fmt, small, inputs)
            huge_s = stream(module, isa, fmt, huge, inputs)
            print(
                f"{fmt} round {r + 1}: float32 sum {read:.1f} GB/s; one row from "
                f"4 KiB pages {nbytes / small_s / 1e9:.1f} GB/s, "
                f"huge pages {nbytes / huge_s / 1e9:.1f} GB/s ({nbytes / 1e9:.2f} GB)"
            )


if __name__ == "__main__":
    main()
