"""OpenMP thread teams: in a process with an engine thread, only that thread computes in parallel.

libgomp (the OpenMP runtime of PyTorch's Linux wheels) gives every thread that runs a parallel
torch op its own team of worker threads, kept until that thread exits. When the process holds
more such threads than there are CPUs, libgomp makes every idle worker go to sleep after 100
spins instead of ~3 ms of spinning, and each of the hundreds of small parallel regions of an
engine step then waits for a futex wake-up. `AsyncLLM` runs into exactly that: the model is
loaded on the caller's thread (a team), the engine steps on its own thread (a second team) and
requests are prepared on a pool (feature extraction: a third). Measured on a 2-core VM with the
demo model, the 80 segments of a 10-minute file: 2.5 s of engine steps on AsyncLLM's thread
against 1.8 s with the engine's team alone (the same steps as `LLM` on one thread).

So `AsyncLLM` gives back the loading thread's team once the model is loaded (`release_team`) and
runs its preparation threads serially (`serial_in_this_thread`): their work is per request and
small, and the engine thread keeps every core. Both are no-ops where torch does not run on a
libgomp that this process has loaded (macOS, other OpenMP runtimes).
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

log = logging.getLogger(__name__)

OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: release the threads, keep the runtime usable


@functools.cache
def _libgomp() -> ctypes.CDLL | None:
    """The libgomp this process has loaded (torch's copy), or None."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return None
    try:
        paths = {line.split()[-1] for line in maps.read_text().splitlines() if "libgomp" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)  # already loaded: the same library, not a second copy
            lib.omp_set_num_threads.argtypes = [ctypes.c_int]
            lib.omp_pause_resource_all.argtypes = [ctypes.c_int]
            return lib
        except (OSError, AttributeError):
            continue
    return None


def serial_in_this_thread() -> bool:
    """Torch ops of the calling thread run on it alone: it never starts a team. Other threads
    keep their thread counts (OpenMP's count is per thread). True when it took effect; never
    raises (it is a thread pool's initializer: an error there would break the pool)."""
    try:
        import torch

        torch.get_num_threads()  # torch's own per-thread set-up first, or it would undo this
        lib = _libgomp()
        if lib is None:
            return False
        lib.omp_set_num_threads(1)
        return torch.get_num_threads() == 1
    except Exception:  # a speed-up only: the thread computes as before
        log.warning("could not make this thread's torch ops serial", exc_info=True)
        return False


def release_team() -> bool:
    """Ends the calling thread's team of worker threads (a later parallel op starts a new one).
    True when libgomp accepted it; never raises."""
    try:
        lib = _libgomp()
        return lib is not None and lib.omp_pause_resource_all(OMP_PAUSE_SOFT) == 0
    except Exception:
        log.warning("could not release this thread's OpenMP team", exc_info=True)
        return False
