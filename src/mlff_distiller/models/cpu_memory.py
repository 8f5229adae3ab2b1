"""Keep freed CPU memory inside the process (glibc malloc settings) for fast repeated inference.

By default glibc serves every allocation above ~128 KiB-32 MiB with a fresh ``mmap`` and trims
the heap when large blocks are freed, so each model call page-faults all of its large tensors
anew: on a CPU the kernel time of those faults can equal the compute (measured in
``benchmarks/forces.py --retain-memory``: 2-3x faster for batches of 16 molecules of 50-100
atoms, no change for single small molecules). Calling :func:`retain_freed_cpu_memory` once per
process makes malloc reuse freed memory instead; the price is that the process keeps its peak
memory. Process-wide, so it is opt-in: for MD and evaluation runs, not inside library code.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1  # mallopt parameters from glibc's malloc.h
_M_MMAP_MAX = -4


def retain_freed_cpu_memory() -> bool:
    """Tell glibc malloc never to ``mmap`` blocks nor to trim the heap. True if applied.

    Returns False (and changes nothing) where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
