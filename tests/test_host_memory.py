"""keep_freed_memory: with it, a freed large block stays in the process, and a jitted CPU
computation whose temp buffer is above 64 MB (more than a worker thread's arena can hold) runs
without faulting that buffer in again at every call; without it, glibc unmaps both."""

import subprocess
import sys

import pytest

CODE = """
import os, sys, threading
from segstyle_jax import host_memory
applied = host_memory.keep_freed_memory() if sys.argv[1] == "keep" else False
assert host_memory.is_applied() == applied
import numpy as np
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
def alloc(mb):
    a = np.ones(mb << 20, np.uint8)
    del a
before = rss_mb()
if sys.argv[2] == "thread":  # a thread's own arena cannot hold 96 MB: mmapped whatever the settings
    t = threading.Thread(target=alloc, args=(96,))
    t.start()
    t.join()
else:
    alloc(64)
print(applied, rss_mb() - before)
"""


def freed_block_kept(mode: str, where: str) -> tuple[bool, float]:
    """In a fresh process: ``(keep_freed_memory applied, MB still mapped after a large block was freed)``."""
    out = subprocess.run([sys.executable, "-c", CODE, mode, where], capture_output=True, text=True, check=True)
    applied, grown = out.stdout.split()
    return applied == "True", float(grown)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_freed_memory_is_kept_only_when_asked():
    kept = {mode: freed_block_kept(mode, "main") for mode in ("keep", "default")}
    if not kept["keep"][0]:
        pytest.skip("the C library has no mallopt (not glibc)")
    assert kept["keep"][1] > 48        # the block is still mapped after del
    assert kept["default"][1] < 16     # glibc gave it back (it was mmapped)
    _, thread_kept = freed_block_kept("keep", "thread")
    assert thread_kept < 16            # what the settings cannot keep: so the steps run on the main thread


STEP = """
import resource, sys
from segstyle_jax import host_memory
applied = host_memory.keep_freed_memory() if sys.argv[1] != "default" else False
import jax, jax.numpy as jnp
assert jax.config.read("jax_cpu_enable_async_dispatch") == (not applied)
if sys.argv[1] == "mallopt-only":  # the malloc settings with JAX's asynchronous dispatch back on
    jax.config.update("jax_cpu_enable_async_dispatch", True)
def g(x, w):  # a temp buffer above 64 MB: a = [4096, 4096] float32 is kept for the two products
    a = jnp.sin(x) * 2 + 1
    return (a @ w).sum() + (a.T @ (jnp.cos(x) @ w)).sum()
f = jax.jit(g)
x, w = jnp.ones((4096, 4096), jnp.float32), jnp.ones((4096, 64), jnp.float32)
temp_mb = f.lower(x, w).compile().memory_analysis().temp_size_in_bytes / 2 ** 20
faults = []
for _ in range(9):  # the heap settles within the first 1-3 calls (kept: later calls fault nothing)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, w).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, temp_mb, sorted(faults[4:])[2])  # the median of calls 5-9
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc")
def test_a_large_temp_buffer_is_kept_between_calls_only_when_asked():
    runs = {}
    for mode in ("keep", "default", "mallopt-only"):
        out = subprocess.run([sys.executable, "-c", STEP, mode], capture_output=True, text=True, check=True)
        applied, temp_mb, faults = out.stdout.split()
        runs[mode] = (applied == "True", float(temp_mb), float(faults))
    if not runs["keep"][0]:
        pytest.skip("the C library has no mallopt (not glibc)")
    pages = runs["keep"][1] * 2 ** 20 / 4096
    assert runs["keep"][1] > 96                     # more than a thread's arena holds
    assert runs["default"][2] > pages / 2           # faulted in again at every call
    assert runs["mallopt-only"][2] > pages / 2      # a worker thread's arena cannot keep it
    assert runs["keep"][2] < pages / 10             # kept: few faults (measured 0-9 of 33024 pages)


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
