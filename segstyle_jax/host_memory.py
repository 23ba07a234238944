"""Keep freed memory in the process instead of handing it back to the OS after every step (glibc).

XLA's CPU runtime allocates the step's temporary buffer (tens of MB to GBs) at every execution, from
one of its worker threads, and frees it at the end. glibc gives such a block back to the OS when it
is freed, in three ways, so every step starts by page-faulting and zeroing all of it again (about
2.5 GB/s on the 2-core benchmark CPU, a fifth of its copy bandwidth): blocks above 32 MB come from a
fresh ``mmap``; a worker thread's arena cannot hold a block above 64 MB at all, so those are
mmapped whatever the thresholds say; and the top of the heap is trimmed once it passes the trim
threshold. :func:`keep_freed_memory` closes all three with ``mallopt``: ``M_MMAP_MAX = 0`` (large
blocks come from the heap), ``M_ARENA_MAX = 1`` (every thread allocates from the main heap, which
has no size limit) and ``M_TRIM_THRESHOLD = -1`` (never trim: freed memory stays for the next step;
a 2 GiB threshold still let a 512 px multipass step with K = 2, whose heap top passes 2 GiB, fault
its 1.2 GB temp buffer in again every time). Measured on that CPU (``bench/bench_malloc.py``, fresh
processes): no page faults left in a step up to 512 px; README "Speed" has the step times.

It changes the allocator of the whole process, and ``M_ARENA_MAX`` only binds threads that have not
allocated yet, so call it first, before any JAX computation. The library never calls it on its own:
the ``segstyle`` command does, and programs that call :func:`segstyle_jax.api.stylize` may. The
cost: the process keeps its peak memory until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER = -1  # for M_TRIM_THRESHOLD: never trim (mallopt(3))

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
    _applied = all(mallopt(option, value) for option, value in
                   ((_M_MMAP_MAX, 0), (_M_ARENA_MAX, 1), (_M_TRIM_THRESHOLD, _NEVER)))
    return _applied


def is_applied() -> bool:
    """Whether :func:`keep_freed_memory` took effect in this process."""
    return _applied
