"""Which layout int8/int4 weights take on this CPU: the stored rows, or blocks of 8 rows; and
where a bf16 prompt meets int4 blocks, whether it goes to the int8-input kernels or the GEMM.

Where the int8-input products run on the AVX2 kernels (AVX2 CPUs; AVX-512 without VNNI) the
blocks are always faster (`quant.to_row_blocks`). Where AVX-512 VNNI is present, the row kernels
use it, and which layout wins depends on the core: on a Zen 4 (AVX-512 on 256-bit units) the
blocks, with AVX512-VNNI's 256-bit `vpdpbusd`, multiplied 4 input rows at 25 GB/s against 10 and
64 rows at 415-460 against 180 GFLOP/s (7B shapes, int4, 2 threads). So there the
choice is measured once per CPU, instruction set and format, on a weight that stays in cache
with 8 input rows, and kept beside the compiled kernels. `QWEN_AUDIO_INT_LAYOUT=rows|blocks8`
overrides it.

A bf16 prompt (more than 16 rows) times int4 blocks ran on the int8-input kernels on that Zen 4
at 29.8 tok/s against 22.5 through the bf16 GEMM's dequantized tiles. With AMX (Sapphire Rapids)
the GEMM is far ahead: 7B shapes, 2 cores, 128 rows ~800 against ~420 GFLOP/s, 800 rows
1.6-1.7 TFLOP/s against ~400 (and our own AMX GEMM over the blocks, `amx_prompt_linear`, more
so). So where bf16 is native that choice is measured as well (128 rows of a 4096 x 4096 weight,
each way, the GEMM as PackedLinear runs it here) and kept in the same file;
`QWEN_AUDIO_INT4_PROMPTS=kernels|gemm` overrides it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from functools import partial

import torch

from .. import kernels as K
from . import quant

log = logging.getLogger(__name__)

LAYOUTS = ("rows", "blocks8")
PROMPT_PATHS = ("kernels", "gemm")
# The blocks must win by this much to be chosen: a measurement at the edge of noise keeps rows.
MARGIN = 0.9
_decided: dict[str, bool] = {}


def prefers_row_blocks(module, isa: str, format: str) -> bool:
    """Whether `format` weights go in 8-row blocks here (with `module`'s kernels on `isa`)."""
    isa_id = K.ISA_IDS[isa]
    if module.prefers_row_blocks(isa_id):
        return True  # the AVX2 kernels multiply int8/int4 here: the blocks, always
    if not module.int_inputs_path(K.FORMAT_IDS[format], isa_id, 4096):
        return False  # no block kernels for this instruction set (NEON)
    forced = _override("QWEN_AUDIO_INT_LAYOUT", LAYOUTS)
    if forced:
        return forced == "blocks8"
    key = f"{isa}:{format}"
    if key not in _decided:
        _decided[key] = _cached_or_measured(key, lambda: _blocks_win(module, isa, format))
    return _decided[key]


def int4_prompts_on_gemm(module, isa: str) -> bool:
    """Whether bf16 prompts times int4 weights in 8-row blocks go to the bf16 GEMM over
    dequantized tiles (True) or stay on the int8-input kernels. Measured only where bf16 is
    native (AVX512-BF16): elsewhere PyTorch's bf16 GEMM is emulated, and the kernels win."""
    forced = _override("QWEN_AUDIO_INT4_PROMPTS", PROMPT_PATHS)
    if forced:
        return forced == "gemm"
    if isa != "avx512_bf16":
        return False
    key = f"{isa}:int4:bf16-prompts-on-gemm"
    if key not in _decided:
        _decided[key] = _cached_or_measured(key, lambda: _gemm_wins(module, isa))
    return _decided[key]


def _override(variable: str, choices: tuple[str, ...]) -> str | None:
    """The choice an environment variable names (None when unset); a ValueError for another."""
    forced = os.environ.get(variable, "").strip().lower()
    if forced and forced not in choices:
        raise ValueError(f"{variable}={forced!r}: expected {' or '.join(choices)}")
    return forced or None


def _cached_or_measured(key: str, measure) -> bool:
    path = K.build_directory() / "int_layout.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), bool):
        return known[key]
    known[key] = measure()
    try:  # whole or not at all: another process may be reading it (a half file = measure again)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}")
        partial.write_text(json.dumps(known, indent=1))
        os.replace(partial, path)
    except OSError:  # a read-only cache: measured again next time
        pass
    return known[key]


def _blocks_win(module, isa: str, format: str) -> bool:
    rows_s, blocks_s = _time_both(module, isa, format)
    blocks = blocks_s < MARGIN * rows_s
    log.info(
        "%s %s weights: 8 input rows in %.0f us in rows, %.0f us in blocks of 8: %s",
        *(isa, format, rows_s * 1e6, blocks_s * 1e6, "blocks" if blocks else "rows"),
    )
    return blocks


def _gemm_wins(module, isa: str) -> bool:
    kernels_s, gemm_s = _time_prompt_paths(module, isa)
    gemm = gemm_s < MARGIN * kernels_s
    log.info(
        "%s int4 weights, 128 bf16 prompt rows: %.1f ms on the kernels, %.1f ms on the GEMM: %s",
        *(isa, kernels_s * 1e3, gemm_s * 1e3, "GEMM" if gemm else "kernels"),
    )
    return gemm


def _best_of_alternating(runs, repeats: int) -> list[float]:
    """Best-of seconds of each function, run in turns, so a busy moment costs all alike."""
    best = [float("inf")] * len(runs)
    for _ in range(repeats):
        for i, run in enumerate(runs):
            start = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def _time_both(module, isa: str, format: str) -> tuple[float, float]:
    """Best-of seconds of one 8-row product with a 1024 x 4096 weight in each layout."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(1024, 4096, generator=gen)
    q, s = module.quantize(weight, K.FORMAT_IDS[format], K.ISA_IDS["avx2"])
    qb, sb = quant.to_row_blocks(q, s)
    x = torch.randn(8, 4096, generator=gen)
    isa_id = K.ISA_IDS[isa]
    layouts = [(q, s, K.FORMAT_IDS[format]), (qb, sb, K.BLOCKS8_FORMAT_IDS[format])]
    runs = [partial(module.linear_many, x, [w], [sc], fmt, isa_id) for w, sc, fmt in layouts]
    rows_s, blocks_s = _best_of_alternating(runs, 15)
    return rows_s, blocks_s


def _time_prompt_paths(module, isa: str) -> tuple[float, float]:
    """Best-of seconds of 128 bf16 rows times a 4096 x 4096 int4 weight in blocks: on the
    int8-input kernels, and as the GEMM over the weight dequantized to bf16 (as
    PackedLinear._tiled_matmul does it: on AMX, else in one tile for PyTorch's GEMM)."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(4096, 4096, generator=gen)
    q, s = module.quantize(weight, K.FORMAT_IDS["int4"], K.ISA_IDS["avx2"])
    qb, sb = quant.to_row_blocks(q, s)
    x = torch.randn(128, 4096, generator=gen).bfloat16()
    fmt, isa_id = K.BLOCKS8_FORMAT_IDS["int4"], K.ISA_IDS[isa]
    tile = torch.empty(4096 * 4096, dtype=torch.bfloat16)

    def on_kernels():
        module.linear_many(x.float(), [qb], [sb], fmt, isa_id).bfloat16()

    amx = module.amx_usable(isa_id)

    def on_gemm():  # as PackedLinear._tiled_matmul: on AMX where it can
        if amx:
            module.amx_prompt_linear(x, qb, sb, fmt)
        else:
            x @ module.dequantize(qb, sb, fmt, isa_id, 0, 4096, True, tile).T

    kernels_s, gemm_s = _best_of_alternating([on_kernels, on_gemm], 5)
    return kernels_s, gemm_s
