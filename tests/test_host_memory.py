"""keep_freed_memory: with it, a freed large block stays in the process (also one a worker thread
allocated, whose arena cannot hold blocks above 64 MB, when the process's steps are large and all
threads share one heap); without it, glibc unmaps it."""

import subprocess
import sys

import pytest

CODE = """
import os, sys, threading
from segstyle_jax import host_memory
step_pixels = None if sys.argv[3] == "unknown" else int(sys.argv[3])
applied = host_memory.keep_freed_memory(step_pixels) if sys.argv[1] == "keep" else False
assert host_memory.is_applied() == applied
assert host_memory.one_arena() == (applied and host_memory.uses_one_arena(step_pixels))
import numpy as np
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
def alloc(mb):
    a = np.ones(mb << 20, np.uint8)
    del a
before = rss_mb()
if sys.argv[2] == "thread":  # as XLA's worker threads allocate the step's buffers
    t = threading.Thread(target=alloc, args=(96,))
    t.start()
    t.join()
else:
    alloc(64)
print(applied, rss_mb() - before)
"""


def freed_block_kept(mode: str, where: str, step_pixels: str = "unknown") -> tuple[bool, float]:
    """In a fresh process: ``(keep_freed_memory applied, MB still mapped after a large block was freed)``."""
    out = subprocess.run([sys.executable, "-c", CODE, mode, where, step_pixels], capture_output=True, text=True,
                         check=True)
    applied, grown = out.stdout.split()
    return applied == "True", float(grown)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
@pytest.mark.parametrize("where", ["main", "thread"])
def test_freed_memory_is_kept_only_when_asked(where):
    kept = {mode: freed_block_kept(mode, where) for mode in ("keep", "default")}
    if not kept["keep"][0]:
        pytest.skip("the C library has no mallopt (not glibc)")
    assert kept["keep"][1] > 48        # the block is still mapped after del
    assert kept["default"][1] < 16     # glibc gave it back (it was mmapped)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_small_steps_keep_per_thread_arenas():
    from segstyle_jax import host_memory

    small = str(host_memory.ONE_ARENA_PIXELS)  # 256 x 256: the largest that keeps per-thread arenas
    assert not host_memory.uses_one_arena(host_memory.ONE_ARENA_PIXELS)
    assert host_memory.uses_one_arena(host_memory.ONE_ARENA_PIXELS + 1) and host_memory.uses_one_arena(None)
    applied, main_kept = freed_block_kept("keep", "main", small)
    if not applied:
        pytest.skip("the C library has no mallopt (not glibc)")
    _, thread_kept = freed_block_kept("keep", "thread", small)
    _, thread_kept_large = freed_block_kept("keep", "thread", str(host_memory.ONE_ARENA_PIXELS + 1))
    assert main_kept > 48            # the main heap keeps it either way
    assert thread_kept < 16          # a worker thread's own arena cannot hold 96 MB: mmapped, given back
    assert thread_kept_large > 48    # with one heap for all threads it stays


PRELUDE = """
import os
from segstyle_jax import host_memory
import numpy as np
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
def kept_after_free():  # MB still mapped after a 64 MB block was freed
    before = rss_mb()
    a = np.ones(64 << 20, np.uint8)
    del a
    return rss_mb() - before
"""


def run_script(body: str) -> list[str]:
    """Run PRELUDE + body in a fresh Python -> its printed words (skips where mallopt is missing)."""
    out = subprocess.run([sys.executable, "-c", PRELUDE + body], capture_output=True, text=True)
    if "no mallopt" in out.stderr:
        pytest.skip("the C library has no mallopt (not glibc)")
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_release_freed_memory_gives_the_kept_memory_back():
    kept, after = map(float, run_script("""
assert not host_memory.release_freed_memory()  # nothing to do before keep_freed_memory
if not host_memory.keep_freed_memory():
    raise SystemExit("no mallopt")
before = rss_mb()
kept = kept_after_free()
assert host_memory.release_freed_memory()
print(kept, rss_mb() - before)
"""))
    assert kept > 48 and after < 16


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_before_step_keeps_blocks_only_for_steps_that_leave_room():
    small, kept_small, large, kept_large, unknown = run_script("""
assert host_memory.before_step(1, 100) is None  # keep_freed_memory not in effect: nothing changes
if not host_memory.keep_freed_memory():
    raise SystemExit("no mallopt")
GiB = 2 ** 30
small = host_memory.before_step(1 * GiB, 16 * GiB)
kept_small = kept_after_free()
large = host_memory.before_step(8 * GiB, 16 * GiB)
kept_large = kept_after_free()
unknown = host_memory.before_step(None, 16 * GiB)
print(small, kept_small, large, kept_large, unknown)
""")
    assert (small, large, unknown) == ("True", "False", "None")
    assert float(kept_small) > 48   # a small step's blocks stay on the heap
    assert float(kept_large) < 16   # a large step's are mmapped and unmapped when freed


@pytest.mark.parametrize("platforms,installed,on_cpu", [
    ("cpu", ["jax-cuda13-plugin"], True),           # asked for the CPU: the plugin does not matter
    ("cuda,cpu", [], False),                        # an accelerator first
    ("", ["numpy", "jax", "jaxlib"], True),         # nothing set, no plugin: JAX runs on the CPU
    ("", ["jax", "jax_cuda12_plugin"], False),      # a CUDA plugin: JAX picks the GPU
    ("", ["jax-rocm7-pjrt"], False),
    ("", ["libtpu"], False),
])
def test_steps_run_on_cpu_is_decided_without_starting_jax(platforms, installed, on_cpu):
    from segstyle_jax import host_memory

    assert host_memory.steps_run_on_cpu(platforms, installed) is on_cpu


def test_this_environment_runs_its_steps_where_jax_does():
    import jax

    from segstyle_jax import host_memory

    assert host_memory.steps_run_on_cpu() == (jax.default_backend() == "cpu")
