"""glibc malloc settings for training the audio encoder on CPU.

A step that trains encoder layers allocates and frees hundreds of MB of activations and gradients.
By default glibc serves each block over its (adaptive) mmap threshold with a fresh mmap, unmaps it
when it is freed and trims the heap's free top, so every step faults the same pages in again and
the kernel zeroes them: in the demo recipe's encoder stage `top` showed half of the CPU time in
the kernel. With these settings it showed ~1%, and a step on 2,000 demo rows went from 0.66 to
0.64 s. With a frozen encoder they did not help (0.34 -> 0.35 s), so the trainer applies them only
when the encoder trains.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks under 32 MiB come from the heap
TRIM_THRESHOLD = 2**31 - 1  # return the heap's free top to the system only past ~2 GiB
TOP_PAD = 256 << 20  # grow the heap 256 MiB at a time


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed memory for reuse. Does nothing off glibc or when the user set
    any MALLOC_* variable (their settings win). Returns whether it changed anything."""
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (M_TOP_PAD, TOP_PAD),
    )
    ok = all(mallopt(param, value) == 1 for param, value in settings)
    if not ok:
        log.debug("glibc mallopt refused a setting; the allocator keeps its defaults")
    return ok
