"""The memory of a model's weights: freed heap pages handed back to the OS while a model is
built weight by weight, and the weights the decode kernels stream kept in huge pages."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import mmap
import warnings

import torch


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (musl, macOS, Windows)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def return_freed_memory() -> None:
    """Hand the heap pages freed so far back to the OS. Quantizing while reading frees a wide
    temporary per weight (and repacking int4 for the AVX2 kernels the stored copy), and glibc
    keeps most of those pages for later allocations, which the process's RSS counts: loading the
    7B as int4 ended at 5.7 GiB resident, 4.7 GiB of it in use (measured with malloc_trim after
    the load). Trimming after each weight keeps the peak near what is in use, for about a
    millisecond a weight."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


HUGE_PAGE = 2 << 20
ARENA_CHUNK = 256 << 20  # one anonymous mapping holds the weights made until it is full


class HugePageArena:
    """New weight tensors in 2 MiB pages where Linux gives them (transparent huge pages, asked
    for with MADV_HUGEPAGE before the memory is first touched), for the weights the decode
    kernels stream once per token. In 4 KiB pages such a read misses the TLB every 4 KiB: on a
    Sapphire Rapids VM (2 cores), int4 blocks of the 7B's shapes streamed one input row at 24
    GB/s in 4 KiB pages and 31.8 in 2 MiB ones (a float32 sum read 27). llama.cpp's
    memory-mapped file is in the page cache's large folios there. Elsewhere (no THP, not Linux)
    the tensors are ordinary ones.

    Tensors are carved in order from chunks of ARENA_CHUNK bytes; each one keeps its chunk
    mapped, so a chunk goes back to the OS when the last of its tensors is freed. An arena
    lives while one model is built: the chunk it was filling is not kept for the next model.
    Only the pages written count in RSS: the unused end of the last chunk costs address space.
    """

    def __init__(self) -> None:
        self._chunk: torch.Tensor | None = None  # bytes of the current mapping
        self._used = 0

    @staticmethod
    def available() -> bool:
        return hasattr(mmap, "MADV_HUGEPAGE")

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor of `shape` and `dtype`, 64-byte aligned, in the arena
        (small ones, under a huge page, and everything where there is no THP: torch.empty)."""
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < HUGE_PAGE or not self.available():
            return torch.empty(shape, dtype=dtype)
        if self._chunk is None or self._used + nbytes > self._chunk.numel():
            try:
                self._chunk = self._new_chunk(max(ARENA_CHUNK, nbytes))
            except OSError:  # no address space or mapping left (ulimit -v, overcommit off)
                return torch.empty(shape, dtype=dtype)
            self._used = (-self._chunk.data_ptr()) % HUGE_PAGE  # start on a huge page
        start = self._used
        self._used = -(-(start + nbytes) // 64) * 64
        return self._chunk[start : start + nbytes].view(dtype).view(shape)

    @staticmethod
    def _new_chunk(nbytes: int) -> torch.Tensor:
        # one huge page more than asked: room to start on a 2 MiB boundary
        # private: a shared anonymous mapping is shmem, whose THP setting is usually "never"
        mapping = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            mapping.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # THP compiled out: 4 KiB pages, as torch.empty would give
            pass
        with warnings.catch_warnings():  # "non-writable buffer": an anonymous mapping is writable
            warnings.simplefilter("ignore")
            return torch.frombuffer(mapping, dtype=torch.uint8)
