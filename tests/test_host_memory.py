"""keep_freed_memory: with it, a freed large block stays in the process (also one a worker thread
allocated, whose arena cannot hold blocks above 64 MB); without it, glibc unmaps it."""

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
if sys.argv[2] == "thread":  # as XLA's worker threads allocate the step's buffers
    t = threading.Thread(target=alloc, args=(96,))
    t.start()
    t.join()
else:
    alloc(64)
print(applied, rss_mb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
@pytest.mark.parametrize("where", ["main", "thread"])
def test_freed_memory_is_kept_only_when_asked(where):
    kept = {}
    for mode in ("keep", "default"):
        out = subprocess.run([sys.executable, "-c", CODE, mode, where], capture_output=True, text=True, check=True)
        applied, grown = out.stdout.split()
        kept[mode] = (applied == "True", float(grown))
    if not kept["keep"][0]:
        pytest.skip("the C library has no mallopt (not glibc)")
    assert kept["keep"][1] > 48        # the block is still mapped after del
    assert kept["default"][1] < 16     # glibc gave it back (it was mmapped)
