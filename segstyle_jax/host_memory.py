"""Keep freed memory in the process instead of handing it back to the OS after every step (glibc).

XLA's CPU runtime allocates the step's temporary buffer (tens of MB to GBs) at every execution, from
one of its worker threads, and frees it at the end. glibc gives such a block back to the OS when it
is freed, in three ways, so every step starts by page-faulting and zeroing all of it again (about
2.5 GB/s on the 2-core benchmark CPU, a fifth of its copy bandwidth): blocks above 32 MB come from a
fresh ``mmap``; a worker thread's arena cannot hold a block above 64 MB at all, so those are
mmapped whatever the thresholds say; and the top of the heap is trimmed once it passes the trim
threshold. :func:`keep_freed_memory` closes them with ``mallopt``: ``M_MMAP_MAX = 0`` (large
blocks come from the heap), ``M_TRIM_THRESHOLD = -1`` (never trim: freed memory stays for the next
step; a 2 GiB threshold still let a 512 px multipass step with K = 2, whose heap top passes 2 GiB,
fault its 1.2 GB temp buffer in again every time) and, for processes whose largest step is large
(``step_pixels`` above :data:`ONE_ARENA_PIXELS`), ``M_ARENA_MAX = 1``: every thread allocates from
the main heap, which has no size limit, so a worker thread's temp buffer above 64 MB is kept too.
One heap has one lock, though, and XLA's worker threads allocate and free throughout a step: at
128 px they wait for each other on it (measured on the 2-core Xeon, fresh processes, JAX alone,
locality K = 2, the median step of each run: 83-90 ms with one heap against 65-69 ms with glibc's
per-thread arenas and 72-79 ms with glibc's defaults), while at 512 px the kept 480 MB temp buffer
wins (860-880 ms against 922-932 and 927-989; 1024 px: 3656 against 3910 ms) and at 256 px they
are even (234-247, 236-247, 237-240 ms); PyTorch's step did not care. So small steps keep the
per-thread arenas and only large ones get one heap (docs/speed-notes.md has the tables). Page
faults per step (``bench/bench_malloc.py``, glibc's defaults against the mode chosen): 8652 -> 123
at 128 px (per-thread arenas), 31257 -> 0 at 256 px with one heap, 126596 -> 4134 at 512 px.

What it keeps is whatever was freed, so memory that setup used once (XLA compiling a large step,
the targets' forward passes) stays mapped next to the step's own buffers, which cannot always reuse
it, and one heap for everything fragments: at 2048 px with K = 2 the peak RSS of a one-step run rose
from 9.4 GiB (glibc's defaults) to 20.3 (multipass) and to 22.4 of the machine's 23 (locality).
Trimming after setup does not undo it (malloc_trim gave back 0.5 of 3.4 GiB): what matters is that
setup's large blocks were never kept. So :func:`segstyle_jax.api.stylize` gives large blocks back
while it sets up (:func:`keep_large_blocks`) and keeps them only for the steps, through
:func:`before_step`, and only for steps that need at most a quarter of the available memory;
larger steps (2048 px: tens of seconds each, where faulting the buffers in is a small part) run
with large blocks mmapped as by default. Measured at 2048 px, blended, K = 2: peak RSS 15.8 GiB
when setup kept its blocks, 9.1 now, 9.7 with glibc's defaults (``bench/bench_memory.py``).

It changes the allocator of the whole process, and ``M_ARENA_MAX`` only binds threads that have not
allocated yet, so call it first, before any JAX computation, with the size of the largest step the
process will run. It is for steps that run on the CPU (:func:`steps_run_on_cpu`): on a GPU the
step's buffers live in device memory, and one heap for all threads made XLA's multithreaded GPU
compiler crawl (measured on an H200: ``segstyle demo --size 256 --steps 50`` finished in 60 s
without these settings and had not finished its first of four approaches after 75 s with them; the
person model's one program alone took over 30 s to compile). The library never calls it on its own
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
_M_ARENA_MAX = -8
_NEVER = -1  # for M_TRIM_THRESHOLD: never trim (mallopt(3))

ONE_ARENA_PIXELS = 256 * 256  # steps above this many pixels (x images) run with one heap, see above

_applied = False
_one_arena = False
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


def keep_freed_memory(step_pixels: int | None = None) -> bool:
    """Apply the settings above once per process; ``True`` if they are in effect (glibc only:
    elsewhere, e.g. macOS or musl, nothing changes and ``False`` is returned).

    ``step_pixels``: pixels x images of the largest step the process will run (``h * w``, times
    ``K`` for a batched multipass); above :data:`ONE_ARENA_PIXELS`, or ``None`` (unknown), all
    threads share one heap (``M_ARENA_MAX = 1``), else they keep glibc's per-thread arenas
    (:func:`one_arena` tells which). A second call changes nothing."""
    global _applied, _one_arena, _libc
    if _applied:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    one = uses_one_arena(step_pixels)
    settings = [(_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER)] + ([(_M_ARENA_MAX, 1)] if one else [])
    _applied = all(mallopt(option, value) for option, value in settings)
    _one_arena = one and _applied
    _libc = libc if _applied else None
    return _applied


def keep_freed_memory_for_cpu_steps(step_pixels: int | None = None) -> bool:
    """:func:`keep_freed_memory` when this process's steps run on the CPU (:func:`steps_run_on_cpu`),
    else nothing (on a GPU the settings only slowed XLA's compiler, module docstring); ``True`` if
    the settings are in effect. What the ``segstyle`` command and the benchmarks call first."""
    return keep_freed_memory(step_pixels) if steps_run_on_cpu() else False


def uses_one_arena(step_pixels: int | None) -> bool:
    """Whether :func:`keep_freed_memory` gives a process whose largest step has ``step_pixels``
    pixels (x images; ``None``: unknown) one heap for all threads: above :data:`ONE_ARENA_PIXELS`."""
    return step_pixels is None or step_pixels > ONE_ARENA_PIXELS


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


def one_arena() -> bool:
    """Whether :func:`keep_freed_memory` took effect with one heap for all threads (``M_ARENA_MAX = 1``)."""
    return _one_arena
