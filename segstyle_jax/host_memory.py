"""Keep freed memory in the process instead of handing it back to the OS after every step (glibc),
and run CPU steps on the thread that calls them.

XLA's CPU runtime allocates the step's temporary buffer (tens of MB to GBs) at every execution and
frees it at the end. glibc gives such a block back to the OS when it is freed, in three ways, so every
step starts by page-faulting and zeroing all of it again (about 2.5 GB/s on the 2-core benchmark CPU,
a fifth of its copy bandwidth): blocks above 32 MB come from a fresh ``mmap``; a thread's own arena
(every thread but the main one allocates from an arena of its own) cannot hold a block above 64 MB at
all, so those are mmapped whatever the thresholds say; and the top of the heap is trimmed once it
passes the trim threshold. :func:`keep_freed_memory` closes them: ``mallopt`` with ``M_MMAP_MAX = 0``
(large blocks come from the heap) and ``M_TRIM_THRESHOLD = -1`` (never trim: freed memory stays for
the next step; a 2 GiB threshold still let a 512 px multipass step with K = 2, whose heap top passes
2 GiB, fault its 1.2 GB temp buffer in again every time), and JAX's asynchronous CPU dispatch off
(``jax_cpu_enable_async_dispatch``): with it on, the step runs on one of XLA's worker threads, which
allocates the temp buffer from its arena, so a buffer above 64 MB (a 256 px step's: 124 MB) was
mmapped and faulted in at every step; with it off, the step runs on the thread that calls it, the
main thread, whose heap has no size limit. The steps got faster with it, by more than the page
faults (``python bench/bench_malloc.py --configs 128:2:locality 128:4:multipass 256:2:locality
512:2:locality --rounds 2 --steps 12 --warmup 5``: fresh processes, JAX alone, the 2-core Xeon; s/step,
the median of 2 runs; "before": what this module set until then, one heap above 256² pixels x images):

======================================  =====  ======  ========  ===========  ================
step, XLA's temp buffer                 glibc  arenas  one heap  both (this)  before
======================================  =====  ======  ========  ===========  ================
128², K = 2, locality, 34 MB            0.085  0.076   0.094     0.077        0.076 (arenas)
128², K = 4, multipass, 126 MB          0.274  0.262   0.262     0.235        0.262 (arenas)
256², K = 2, locality, 124 MB           0.280  0.281   0.282     0.252        0.281 (arenas)
512², K = 2, locality, 504 MB           1.074  1.046   1.011     0.958        1.011 (one heap)
======================================  =====  ======  ========  ===========  ================

("arenas": the ``mallopt`` settings alone, glibc's per-thread arenas; "one heap": the same and all
threads on the main heap; "both": the ``mallopt`` settings and synchronous dispatch.)

One heap for all threads (``M_ARENA_MAX = 1``) was the way before: it kept a worker thread's large
buffer too, but XLA's threads, which allocate and free throughout a step, then wait for each other on
the heap's one lock (128 px: 24% slower than per-thread arenas; with synchronous dispatch too, still
0.261 / 0.279 / 1.031 s in the rows above). Synchronous dispatch changes nothing else here: the engine
reads every step's loss before the next step anyway, and XLA releases the GIL while a step runs, so
the next scale's setup still runs beside the steps on another thread.

What it keeps is whatever was freed, so memory that setup used once (XLA compiling a large step,
the targets' forward passes) stays mapped next to the step's own buffers, which cannot always reuse
it. Trimming after setup does not undo it (malloc_trim gave back 0.5 of 3.4 GiB): what matters is
that setup's large blocks were never kept. So :func:`segstyle_jax.api.stylize` gives large blocks back
while it sets up (:func:`keep_large_blocks`) and keeps them only for the steps, through
:func:`before_step`, and only for steps that need at most a quarter of the available memory;
larger steps (2048 px: tens of seconds each, where faulting the buffers in is a small part) run
with large blocks mmapped as by default. Measured at 2048 px, blended, K = 2: peak RSS 15.8 GiB
when setup kept its blocks, 9.1 with it, 9.7 with glibc's defaults (``bench/bench_memory.py``).

It changes the allocator of the whole process and how JAX's CPU client dispatches, which is fixed
when the client starts, so call it first, before any JAX computation. It is for steps that run on
the CPU (:func:`steps_run_on_cpu`): on a GPU the step's buffers live in device memory, and the
earlier one heap for all threads made XLA's multithreaded GPU compiler crawl (measured on an H200:
``segstyle demo --size 256 --steps 50`` finished in 60 s without these settings and had not finished
its first of four approaches after 75 s with them). The library never calls it on its own
(``stylize`` only switches ``M_MMAP_MAX``, as above, where it is in effect): the ``segstyle``
command does, and programs that call :func:`segstyle_jax.api.stylize` may. The cost: the process
keeps the peak of its heap until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8  # (one heap for all threads: measured, not used; module docstring)
_NEVER = -1  # for M_TRIM_THRESHOLD: never trim (mallopt(3))

_applied = False
_libc = None  # the C library, loaded by keep_freed_memory once it has a mallopt


# distributions whose presence makes JAX run on an accelerator by default (its PJRT plugins)
_ACCELERATOR_PLUGINS = ("jax-cuda", "jax-rocm", "libtpu")


def steps_run_on_cpu(platforms: str | None = None, installed: list[str] | None = None) -> bool:
    """Whether JAX will run this process's steps on the CPU, decided without starting JAX (which
    :func:`keep_freed_memory` must come before): yes when ``platforms`` (default: ``JAX_PLATFORMS``,
    else ``jax.config.jax_platforms``) names ``cpu`` first; when it names another platform first, no;
    when it is unset, yes unless an accelerator plugin of JAX (``jax-cuda*``, ``jax-rocm*``, ``libtpu``)
    is among the ``installed`` distribution names (default: this environment's). A plugin installed
    on a machine without the accelerator makes this say no, and the steps then run without
    :func:`keep_freed_memory` (a few percent slower on CPU, nothing worse)."""
    if platforms is None:
        platforms = os.environ.get("JAX_PLATFORMS", "")
        if not platforms:
            import jax  # importing starts no backend

            platforms = jax.config.jax_platforms or ""
    first = platforms.split(",")[0].strip().lower()
    if first:
        return first == "cpu"
    if installed is None:
        installed = [d.metadata["Name"] or "" for d in importlib.metadata.distributions()]
    names = [n.lower().replace("_", "-") for n in installed]
    return not any(n.startswith(_ACCELERATOR_PLUGINS) for n in names)


def keep_freed_memory() -> bool:
    """Apply the settings above once per process; ``True`` if they are in effect (glibc only:
    elsewhere, e.g. macOS or musl, nothing changes and ``False`` is returned). A second call
    changes nothing."""
    global _applied, _libc
    if _applied:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all(mallopt(option, value) for option, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER)))
    if _applied:
        import jax  # importing starts no backend; the CPU client reads this when it starts

        jax.config.update("jax_cpu_enable_async_dispatch", False)
        _libc = libc
    return _applied


def keep_freed_memory_for_cpu_steps() -> bool:
    """:func:`keep_freed_memory` when this process's steps run on the CPU (:func:`steps_run_on_cpu`),
    else nothing (on a GPU the settings have nothing to keep, and the earlier one heap slowed XLA's
    compiler: module docstring); ``True`` if the settings are in effect. What the ``segstyle`` command
    and the benchmarks call first."""
    return keep_freed_memory() if steps_run_on_cpu() else False


def release_freed_memory() -> bool:
    """When :func:`keep_freed_memory` is in effect, give the heap's free memory back to the OS now
    (glibc's ``malloc_trim(0)``) and return ``True``; otherwise do nothing (glibc trims by itself)
    and return ``False``. Cheap: it walks the heap once (milliseconds for GBs)."""
    if not _applied:
        return False
    _libc.malloc_trim(0)
    return True


LARGE_STEP_FRACTION = 0.25  # a step needing more than this share of the available memory is large
_GLIBC_MMAP_MAX = 65536     # glibc's default M_MMAP_MAX (mallopt(3))


def keep_large_blocks(keep: bool) -> bool:
    """When :func:`keep_freed_memory` is in effect, set ``M_MMAP_MAX`` to 0 (``keep``: large blocks
    come from the heap and stay there when freed, as :func:`keep_freed_memory` set it) or back to
    glibc's default (each large block mmapped, and unmapped when freed); return whether it was
    set (``False``: nothing changed)."""
    if not _applied:
        return False
    return bool(_libc.mallopt(_M_MMAP_MAX, 0 if keep else _GLIBC_MMAP_MAX))


def before_step(need_bytes: int | None, available_bytes: int | None) -> bool | None:
    """Ready the allocator for steps that need ``need_bytes`` (XLA's estimate) when
    ``available_bytes`` are available: :func:`release_freed_memory`, then
    :func:`keep_large_blocks` if ``need <= LARGE_STEP_FRACTION * available``, else large blocks
    are given back when freed (the peak stays near the step's own). Returns whether large blocks
    are kept, or ``None`` when :func:`keep_freed_memory` is not in effect (nothing changes) or a
    size is unknown (only the release is done)."""
    if not release_freed_memory() or need_bytes is None or available_bytes is None:
        return None
    keep = need_bytes <= LARGE_STEP_FRACTION * available_bytes
    keep_large_blocks(keep)
    return keep


def is_applied() -> bool:
    """Whether :func:`keep_freed_memory` took effect in this process."""
    return _applied
