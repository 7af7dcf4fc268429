"""Our own CPU kernels: built on first use, cached, picked per CPU at run time.

Decoding is bound by reading the weights once per token. `cpu_kernels.cpp` multiplies up to 16
float32 rows by weights kept as bf16, fp16, int8 or int4 (groups of 32 with an fp16 scale),
dequantizing in registers (on x86-64, int8/int4 by int8-rounded inputs, for any number of rows),
turns row ranges into float32 tiles for the prefill GEMM, and attends decode tokens through the
engine's paged KV pool; `decoder_stack.cpp` runs a decode-only step of every decoder layer in
one call (model/fused_decode.py). One
build holds every instruction set (AVX2+FMA+F16C, AVX-512, AVX512-BF16 on x86-64; NEON on
ARM64); the best one the CPU has is used, or a lower one named by `QWEN_AUDIO_ISA` (avx2,
avx2_vnni, avx512, avx512_bf16, neon, none), so the AVX2 path is tested on AVX-512 machines too.

The build uses the system C++ compiler through `torch.utils.cpp_extension` the first time a
model is loaded (about a minute, once; cached under ~/.cache/qwen_audio). Without a compiler, on
other CPUs, or with QWEN_AUDIO_KERNELS=0, everything runs on PyTorch's own kernels (logged).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import sys
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # Windows: no flock; torch's own lock file still serialises builds
    fcntl = None

log = logging.getLogger(__name__)

MAX_ROWS = 16  # the decode kernels take up to 16 rows; more rows go to the tiled GEMM
GROUP = 32  # weights per scale in the int8/int4 formats
ISA_IDS = {"none": 0, "avx2": 1, "avx512": 2, "avx512_bf16": 3, "neon": 4, "avx2_vnni": 5}
ISA_ORDER = ["none", "avx2", "avx2_vnni", "avx512", "avx512_bf16"]  # x86-64, lowest first
# avx2_vnni: AVX2 plus AVX-VNNI (Alder Lake and later, Zen 5), for int8/int4 in 8-row blocks;
# AVX-512 CPUs use their own VNNI instead, and many of them (Zen 4, Ice Lake) lack the 256-bit one
NEEDS_FLAG = {"avx2_vnni": "avx_vnni"}
FORMAT_IDS = {"bf16": 0, "fp16": 1, "int8": 2, "int4": 3}
# int8 / int4 in blocks of 8 rows (model.quant.to_row_blocks), for the AVX2 kernels
BLOCKS8_FORMAT_IDS = {"int4": 4, "int8": 5}
_DIR = Path(__file__).parent
_SOURCES = [_DIR / "cpu_kernels.cpp", _DIR / "decoder_stack.cpp"]
_module = None
_tried = False


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def detected_isa() -> str:
    """The best instruction set of this CPU that the kernels have, before QWEN_AUDIO_ISA."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return "neon"  # every ARM64 CPU has Advanced SIMD
    if machine not in ("x86_64", "amd64"):
        return "none"
    flags = cpu_flags()
    if not flags:  # no /proc/cpuinfo (macOS, Windows): ask PyTorch's dispatcher
        cap = torch.backends.cpu.get_cpu_capability()
        return {"AVX512": "avx512", "AVX2": "avx2"}.get(cap, "none")
    if not {"avx2", "fma", "f16c"} <= flags:
        return "none"
    if not {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "avx2_vnni" if "avx_vnni" in flags else "avx2"
    return "avx512_bf16" if "avx512_bf16" in flags else "avx512"


def selected_isa() -> str:
    """`detected_isa()`, lowered to QWEN_AUDIO_ISA when that names a lower one."""
    best = detected_isa()
    forced = os.environ.get("QWEN_AUDIO_ISA", "").strip().lower()
    if not forced:
        return best
    if forced not in ISA_IDS:
        raise ValueError(f"QWEN_AUDIO_ISA={forced!r}: expected one of {', '.join(ISA_IDS)}")
    if forced == "none" or best == "none":
        return "none"
    if best == "neon" or forced == "neon":
        return best if forced == best else "none"
    if not _has_its_flag(forced, cpu_flags()):
        forced = "avx2"  # an AVX-512 CPU without AVX-VNNI: the plain AVX2 kernels
    return forced if ISA_ORDER.index(forced) <= ISA_ORDER.index(best) else best


def usable_isas() -> list[str]:
    """Every instruction set this CPU can run with the kernels (for tests), best last."""
    best = detected_isa()
    if best in ("none", "neon"):
        return [] if best == "none" else ["neon"]
    flags = cpu_flags()
    return [isa for isa in ISA_ORDER[1 : ISA_ORDER.index(best) + 1] if _has_its_flag(isa, flags)]


def int_row_kernels_isa() -> str | None:
    """An AVX-512 instruction set of this CPU whose int8/int4 products can take the stored row
    layout (AVX-512 VNNI), where model/int_layout.py chooses between rows and blocks; None
    where the blocks are the only int8/int4 layout (AVX2, AVX-512 without VNNI) or there are
    no kernels. For tests and benchmarks."""
    module = load_kernels()
    avx512 = [isa for isa in usable_isas() if isa.startswith("avx512")]
    if module is None or not avx512 or module.prefers_row_blocks(ISA_IDS[avx512[-1]]):
        return None
    return avx512[-1]


def _has_its_flag(isa: str, flags: set[str]) -> bool:
    """Whether the CPU has the flag an instruction set below its best one needs beyond it."""
    return isa not in NEEDS_FLAG or NEEDS_FLAG[isa] in flags


def _sources_hash() -> str:
    """A digest of the kernel sources (the .cpp files and their headers)."""
    digest = hashlib.sha1()
    for source in sorted(_DIR.glob("*.h")) + _SOURCES:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:12]


def build_directory() -> Path:
    """Where the compiled kernels are cached: one folder per torch version, machine and source.

    The sources' digest in the name keeps two versions of the package (an upgrade, two checkouts)
    from rebuilding over each other's cache at every load.
    """
    tag = f"{torch.__version__.replace('+', '_')}-{platform.machine()}-{_sources_hash()}"
    return Path.home() / ".cache" / "qwen_audio" / "kernels" / tag


@contextlib.contextmanager
def _build_lock(build: Path):
    """One build at a time, by a lock the OS releases when its process dies.

    torch's own lock is a plain file (`build/lock`) that an interrupted build leaves behind, and
    every later load then waits on it forever. Whoever holds our flock is the only one who can be
    building, so a `lock` file found while holding it is stale and is removed.
    """
    if fcntl is None:
        yield
        return
    with open(build / "qwen_audio.flock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            (build / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_kernels():
    """The compiled kernel module, or None where it cannot be used (the reason is logged)."""
    global _module, _tried
    if _tried:
        return _module
    _tried = True
    if os.environ.get("QWEN_AUDIO_KERNELS", "1") == "0":
        log.info("QWEN_AUDIO_KERNELS=0: using PyTorch's kernels")
        return None
    if selected_isa() == "none":
        log.warning(
            "no kernels for this CPU (%s; AVX2+FMA+F16C, AVX-512 or NEON needed): "
            "using PyTorch's kernels",
            platform.machine(),
        )
        return None
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        log.warning("no C++ compiler found: using PyTorch's kernels (slower decoding)")
        return None
    from torch.utils.cpp_extension import load

    build = build_directory()
    build.mkdir(parents=True, exist_ok=True)
    first = not any(build.glob("*.so"))
    if first:
        print("building qwen-audio's CPU kernels (once, about a minute)...", file=sys.stderr)
    try:
        with _build_lock(build):
            _module = load(
                name="qwen_audio_cpu_kernels",
                sources=[str(source) for source in _SOURCES],
                # -fopenmp: at::parallel_for is an OpenMP pragma in a header, serial without it;
                # the runtime resolves to the libgomp.so.1 that torch has already loaded
                extra_cflags=["-O3", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                extra_include_paths=[str(_DIR)],
                build_directory=str(build),
                verbose=False,
            )
    except Exception as err:  # a broken toolchain must not stop the model from running
        log.warning("could not build the CPU kernels (%s); using PyTorch's kernels", err)
        _module = None
    return _module
