"""Which layout int8/int4 weights take on this CPU: the stored rows, or blocks of 8 rows.

Where the int8-input products run on the AVX2 kernels (AVX2 CPUs; AVX-512 without VNNI) the
blocks are always faster (`quant.to_row_blocks`). Where AVX-512 VNNI is present, the row kernels
use it, and which layout wins depends on the core: on a Zen 4 (AVX-512 on 256-bit units) the
blocks, with AVX512-VNNI's 256-bit `vpdpbusd`, multiplied 4 input rows at 25 GB/s against 10 and
64 rows at 415-460 against 180 GFLOP/s (7B shapes, int4, 2 threads). So there the
choice is measured once per CPU, instruction set and format, on a weight that stays in cache
with 8 input rows, and kept beside the compiled kernels. `QWEN_AUDIO_INT_LAYOUT=rows|blocks8`
overrides it.
"""

from __future__ import annotations

import json
import logging
import os
import time

import torch

from .. import kernels as K
from . import quant

log = logging.getLogger(__name__)

LAYOUTS = ("rows", "blocks8")
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
    forced = os.environ.get("QWEN_AUDIO_INT_LAYOUT", "").strip().lower()
    if forced:
        if forced not in LAYOUTS:
            raise ValueError(f"QWEN_AUDIO_INT_LAYOUT={forced!r}: expected rows or blocks8")
        return forced == "blocks8"
    key = f"{isa}:{format}"
    if key not in _decided:
        _decided[key] = _cached_or_measured(module, isa, format, key)
    return _decided[key]


def _cached_or_measured(module, isa: str, format: str, key: str) -> bool:
    path = K.build_directory() / "int_layout.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), bool):
        return known[key]
    rows_s, blocks_s = _time_both(module, isa, format)
    blocks = blocks_s < MARGIN * rows_s
    log.info(
        "%s %s weights: 8 input rows in %.0f us in rows, %.0f us in blocks of 8: %s",
        isa,
        format,
        rows_s * 1e6,
        blocks_s * 1e6,
        "blocks" if blocks else "rows",
    )
    known[key] = blocks
    try:  # whole or not at all: another process may be reading it (a half file = measure again)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}")
        partial.write_text(json.dumps(known, indent=1))
        os.replace(partial, path)
    except OSError:  # a read-only cache: measured again next time
        pass
    return blocks


def _time_both(module, isa: str, format: str) -> tuple[float, float]:
    """Best-of seconds of one 8-row product with a 1024 x 4096 weight in each layout."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(1024, 4096, generator=gen)
    q, s = module.quantize(weight, K.FORMAT_IDS[format], K.ISA_IDS["avx2"])
    qb, sb = quant.to_row_blocks(q, s)
    x = torch.randn(8, 4096, generator=gen)
    isa_id = K.ISA_IDS[isa]
    variants = [(q, s, K.FORMAT_IDS[format]), (qb, sb, K.BLOCKS8_FORMAT_IDS[format])]
    best = [float("inf"), float("inf")]
    for _ in range(15):  # alternating, so a busy moment costs both alike
        for i, (w, scales, fmt) in enumerate(variants):
            start = time.perf_counter()
            module.linear_many(x, [w], [scales], fmt, isa_id)
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]
