"""The int8/int4 block kernels on a 7B decoder layer's shapes: decode products with a few input
rows, and prompt products (bf16 rows) on this CPU's path against dequantized tiles + PyTorch.

Decoding several sequences at once multiplies a few input rows by every weight; the table gives
GB/s of weights per number of rows (the weights in huge pages, as the engine holds them, and
`--layers` of them: one 7B layer in int4, 114 MB, can sit in a large L3). Prompts are compute
bound; where AMX is usable they go to `amx_prompt_linear`, which dequantizes each
weight tile in cache, and the table sets it beside the path it replaced (bf16 tiles written out
whole for `torch.mm`):

    python benchmarks/block_kernels.py                       # int4 and int8, both tables
    python benchmarks/block_kernels.py --formats int8 --rows 1,16 --prompt-rows 160,800

On a Sapphire Rapids VM (2 cores): int4 1 / 4 / 8 / 16 rows 29.8 / 25.3 / 17.9 / 10.6 GB/s,
int8 33.4 / 29.7 / 26.1 / 17.1; prompts of 160 rows, 22016 x 4096 int8, 15.7 ms on AMX against
26.9 through tiles (4096 x 11008: 8.0 against 15.3).
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from qwen_audio import kernels as K
from qwen_audio.model import quant
from qwen_audio.model.heap import HugePageArena

# q/k/v, o, gate/up, down of one 7B decoder layer (out, in)
LAYER = [(12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008)]


def best_seconds(run, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def blocks(module, fmt: str, shapes, arena: HugePageArena):
    """[(blocks, scales)] of random weights, in 8-row blocks made in `arena`."""
    made = []
    for n, k in shapes:
        q, s = module.quantize(torch.randn(n, k) * 0.02, K.FORMAT_IDS[fmt], K.ISA_IDS["avx2"])
        made.append(quant.to_row_blocks(q, s, arena.empty))
    return made


def through_every_weight(module, made, inputs, fmt_id: int, isa_id: int) -> None:
    for (w, s), x in zip(made, inputs):
        module.linear_many(x, [w], [s], fmt_id, isa_id)


def through_tiles(module, x, w, s, fmt_id: int, isa_id: int, tile, out) -> None:
    """x @ w^T as PackedLinear did before AMX: 32 MiB bf16 tiles for torch.mm."""
    n, k = out.shape[1], x.shape[1]
    step = tile.numel() // k
    for n0 in range(0, n, step):
        n1 = min(n, n0 + step)
        part = module.dequantize(w, s, fmt_id, isa_id, n0, n1, True, tile)
        torch.mm(x, part.T, out=out[:, n0:n1])


def decode_rates(module, isa: str, fmt: str, made, shapes, rows: list[int]) -> str:
    nbytes = sum(w.numel() + s.numel() * 2 for w, s in made)
    fmt_id, isa_id = K.BLOCKS8_FORMAT_IDS[fmt], K.ISA_IDS[isa]
    cells = []
    for m in rows:
        inputs = [torch.randn(m, k) for _, k in shapes]
        run = partial(through_every_weight, module, made, inputs, fmt_id, isa_id)
        cells.append(f"{m} rows {nbytes / best_seconds(run) / 1e9:.1f}")
    return f"{fmt} decode products, GB/s of weights: " + ", ".join(cells)


def prompt_times(module, isa: str, fmt: str, made, shapes, rows: int) -> list[str]:
    fmt_id, isa_id = K.BLOCKS8_FORMAT_IDS[fmt], K.ISA_IDS[isa]
    amx = module.amx_usable(isa_id)
    tile = torch.empty(1 << 24, dtype=torch.bfloat16)  # as PackedLinear's 32 MiB tiles
    lines = []
    for (w, s), (n, k) in zip(made, shapes):
        x = torch.randn(rows, k).bfloat16()
        out = torch.empty(rows, n, dtype=torch.bfloat16)
        tiles_s = best_seconds(partial(through_tiles, module, x, w, s, fmt_id, isa_id, tile, out))
        line = f"{fmt} {n} x {k}, {rows} bf16 rows: tiles + torch.mm {tiles_s * 1e3:.1f} ms"
        if amx:
            amx_s = best_seconds(partial(module.amx_prompt_linear, x, w, s, fmt_id))
            flops = 2 * rows * n * k / amx_s / 1e12
            line += f", AMX {amx_s * 1e3:.1f} ms ({flops:.2f} TFLOP/s)"
        lines.append(line)
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--formats", default="int4,int8")
    p.add_argument("--rows", default="1,4,8,16", help="decode input rows")
    p.add_argument("--prompt-rows", default="160", help="prompt rows ('' skips prompts)")
    p.add_argument(
        "--layers", type=int, default=6, help="7B layers' worth of weights to decode through"
    )
    args = p.parse_args()
    module, isa = K.load_kernels(), K.selected_isa()
    if module is None or not module.int_inputs_path(K.FORMAT_IDS["int4"], K.ISA_IDS[isa], 4096):
        raise SystemExit("no x86-64 int8/int4 kernels here")
    print(f"kernels {isa}; AMX prompts: {module.amx_usable(K.ISA_IDS[isa])}")
    arena = HugePageArena()
    shapes = LAYER * args.layers  # more than the caches hold (one layer may fit in L3)
    for fmt in args.formats.split(","):
        made = blocks(module, fmt, shapes, arena)
        rows = [int(r) for r in args.rows.split(",")]
        print(decode_rates(module, isa, fmt, made, shapes, rows))
        for prompt_rows in filter(None, args.prompt_rows.split(",")):
            lines = prompt_times(module, isa, fmt, made[: len(LAYER)], LAYER, int(prompt_rows))
            print("\n".join(lines))
        del made


if __name__ == "__main__":
    main()
