"""Compiled update steps on disk, found without tracing: what a run at a size seen before loads.

XLA's persistent cache (:mod:`segstyle_jax.compile_cache`) is keyed by the lowered program, so a
hit still traces the step in Python and lowers it: 1.2-1.9 s of one core per scale at 64-256 px on
the 2-core benchmark CPU, which in a coarse-to-fine run happens while the scale before steps, and
slows those steps down. This store keys a compiled step by what the program is made from instead,
and keeps it serialized (``jax.experimental.serialize_executable``): a hit reads one file (about
1 MB) and loads the executable (0.15 s at 64 px), with nothing traced.

The key (:func:`step_key`, a SHA-256) covers everything the program depends on:

* the step's recipe (:attr:`segstyle_jax.engine.BoundStep.program_key`, set by
  :func:`segstyle_jax.engine.make_update_fn` when the optimizer comes from the config): the whole
  :class:`~segstyle_jax.config.StepConfig`, the VGG model's settings and each layer's convolution
  algorithm;
* the arguments' tree structure and every leaf's shape, dtype and weak type (state, targets, loss
  weights and the bound VGG variables: their values are arguments, not constants);
* the environment: the source of every module of this package (a digest of the files, so that
  any change to the code is a miss), the versions of jax, jaxlib, flax, optax and numpy, JAX's
  ``jax_enable_x64`` and ``jax_default_matmul_precision``, the backend and device kind, the host
  CPU's model and instruction-set flags (XLA compiles for the features of the CPU it runs on),
  ``XLA_FLAGS`` and the compile options (:func:`segstyle_jax.engine.compiler_options`).

Only a step compiled in this process is stored: an executable XLA's cache loaded serializes
without all of its functions (jax 0.10.2 on the CPU: the stored copy failed on its first run with
``NOT_FOUND: Function subtract_multiply_fusion.1 not found``), so a step already in XLA's cache is
stored the next time it is compiled, e.g. when a new jax or jaxlib misses that cache; until then it
is traced and loaded from XLA's cache as before. Steps with an optimizer passed in (no recipe) are
never stored, nor steps whose program makes custom calls (:func:`calls_out`: a stored one crashed
a fresh process). Files are written atomically
(:mod:`segstyle_jax.atomic`); one that cannot be read or loaded is a miss, compiled again and
overwritten. CPU only: the steps it stores were measured here; on a GPU JAX's cache alone is used
(not measured there). It lives in the ``steps`` folder of the compile cache's directory and is on
whenever that cache is (:func:`directory`). Nothing is evicted, as in XLA's cache (a step that
changed code no longer finds stays on disk): delete the folder to reclaim the space.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import pickle
import platform
import threading
import warnings
from pathlib import Path

import jax
import numpy as np

from segstyle_jax import atomic, compile_cache

SUBDIR = "steps"
_VERSIONED = ("jax", "jaxlib", "flax", "optax", "numpy")
_lock = threading.Lock()
_counts = {"loaded": 0, "stored": 0, "unreadable": 0, "refused": 0}
_source_digest: str | None = None


def directory() -> Path | None:
    """Where steps are stored: ``<compile cache>/steps`` when :mod:`segstyle_jax.compile_cache` is
    enabled (by its :func:`~segstyle_jax.compile_cache.enable`, which watches what XLA's cache
    loads) and the steps run on the CPU, else ``None`` (the store is off)."""
    cache = compile_cache.enabled_dir()
    if cache is None or not compile_cache.observes_loads() or jax.default_backend() != "cpu":
        return None
    return cache / SUBDIR


def source_digest() -> str:
    """SHA-256 of this package's Python sources (every ``*.py`` file, by name and content): any
    change to the code makes every stored step a miss. Computed once per process."""
    global _source_digest
    if _source_digest is None:
        h = hashlib.sha256()
        for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        _source_digest = h.hexdigest()
    return _source_digest


def _versions() -> tuple:
    out = []
    for name in _VERSIONED:
        try:
            out.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            out.append((name, None))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _host_cpu() -> str:
    """The CPU's model and instruction-set flags (Linux ``/proc/cpuinfo``; ``platform`` elsewhere):
    XLA compiles CPU code for the features of the machine it runs on, and a cache folder may be
    shared between machines."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _leaf(x) -> tuple:
    dtype = getattr(x, "dtype", None)
    return tuple(np.shape(x)), str(np.dtype(np.result_type(x) if dtype is None else dtype)), \
        bool(getattr(x, "weak_type", False))


def _signature(args) -> tuple:
    """The arguments' tree structure and each leaf's ``(shape, dtype, weak_type)``."""
    leaves, tree = jax.tree.flatten(args)
    return str(tree), tuple(_leaf(x) for x in leaves)


def step_key(program_key, args, compile_options: dict) -> str:
    """The store's key (hex SHA-256) of the step made by ``program_key`` for ``args`` (every
    argument of the program, bound ones included) and ``compile_options``: module docstring."""
    device = jax.devices()[0]
    parts = (program_key, _signature(args), source_digest(), _versions(), bool(jax.config.jax_enable_x64),
             str(jax.config.jax_default_matmul_precision), device.platform,
             getattr(device, "device_kind", ""), _host_cpu(), os.environ.get("XLA_FLAGS", ""), sorted(compile_options.items()))
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def load(key: str):
    """The compiled step stored under ``key`` (a ``jax.stages.Compiled``), or ``None``: store off,
    no such file, or one that cannot be read or loaded (a warning; it is compiled again)."""
    folder = directory()
    if folder is None:
        return None
    path = folder / f"{key}.step"
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        warnings.warn(f"cannot read the stored step {path}: {e}; compiling it again", stacklevel=2)
        return None
    try:
        from jax.experimental import serialize_executable

        payload, in_tree, out_tree = pickle.loads(blob)
        compiled = serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
    except Exception as e:  # a file cut short or from an incompatible build
        with _lock:
            _counts["unreadable"] += 1
        warnings.warn(f"cannot load the stored step {path} ({type(e).__name__}: {e}); compiling it again",
                      stacklevel=2)
        return None
    with _lock:
        _counts["loaded"] += 1
    return compiled


def calls_out(compiled) -> bool:
    """Whether ``compiled``'s program makes a custom call (``custom_call_target`` in its HLO): a
    function outside XLA's code that the process registers, e.g. jaxlib's LAPACK kernels, whose
    pointers are set only when such an operation is lowered. Loaded into a fresh process, a stored
    step with one crashed (a segmentation fault, jax 0.10.2 on the CPU, ``lapack_strsm_ffi``), so
    such steps are not stored."""
    try:
        return "custom_call_target=" in compiled.as_text()
    except Exception:  # no text: assume the worst
        return True


def store(key: str, compiled) -> bool:
    """Write ``compiled`` (a ``jax.stages.Compiled``) under ``key``, atomically; ``True`` if it was
    written (``False``: store off, a program that makes custom calls (:func:`calls_out`), or the
    executable or the folder refused: nothing half-written)."""
    folder = directory()
    if folder is None:
        return False
    if calls_out(compiled):
        with _lock:
            _counts["refused"] += 1
        return False
    try:
        from jax.experimental import serialize_executable

        blob = pickle.dumps(serialize_executable.serialize(compiled))
        with atomic.atomic_write(folder / f"{key}.step") as f:
            f.write(blob)
    except Exception as e:  # serialization unsupported, disk full, read-only folder
        warnings.warn(f"cannot store the compiled step in {folder} ({type(e).__name__}: {e})", stacklevel=2)
        return False
    with _lock:
        _counts["stored"] += 1
    return True


def counts() -> dict:
    """What the store did in this process: ``loaded``, ``stored``, ``unreadable`` (files that
    could not be loaded and were compiled again) and ``refused`` (steps not stored because they make
    custom calls: :func:`calls_out`)."""
    with _lock:
        return dict(_counts)


def reset_counts() -> None:
    """Zero :func:`counts` (for tests)."""
    with _lock:
        _counts.update(loaded=0, stored=0, unreadable=0, refused=0)
