"""Keep freed memory in the process instead of handing it back to the OS after every step (glibc).

XLA's CPU runtime allocates the step's temporary buffer (tens to hundreds of MB) at every execution
and frees it at the end. glibc serves allocations above 32 MB with a fresh ``mmap`` and unmaps them
on ``free``, so every step starts by page-faulting and zeroing all of it again; smaller chunks are
returned by trimming the heap. On the 2-core benchmark CPU keeping them made a 128 px step 11-14%
faster (``bench/bench_malloc.py``; no change at 256 px). :func:`keep_freed_memory` sets glibc's ``M_MMAP_MAX = 0`` (large blocks come
from the heap too) and ``M_TRIM_THRESHOLD`` to 1 GiB (freed memory stays for the next step), with
``mallopt``. It changes the allocator of the whole process, so the library never calls it on its
own: the ``segstyle`` command does, and programs that call :func:`segstyle_jax.api.stylize` in a
loop may. The cost: the process keeps its peak memory until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 1 << 30

_applied = False


def keep_freed_memory() -> bool:
    """Apply the settings above once per process; ``True`` if they are in effect (glibc only:
    elsewhere, e.g. macOS or musl, nothing changes and ``False`` is returned)."""
    global _applied
    if _applied:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return _applied


def is_applied() -> bool:
    """Whether :func:`keep_freed_memory` took effect in this process."""
    return _applied
