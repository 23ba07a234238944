"""Compiled update steps kept for the rest of the process, for later :func:`segstyle_jax.stylize` calls.

Every scale of a :func:`~segstyle_jax.stylize` call needs its update step: the VGG variables put on
the device with their flipped and Winograd-transformed kernels, the step traced, lowered and
compiled, or with XLA's persistent cache (:mod:`segstyle_jax.compile_cache`) loaded. Even loaded,
that is 1.5-2 s of CPU per scale at 256 px on the 2-core benchmark CPU (README "Speed"). A later call
in the same process whose scale has the same shapes and settings (a notebook, a script stylizing a
folder of photos of one size) takes the compiled step from here and starts at once.

An entry holds the compiled program and the variables bound to it: the kernels, their flipped
copies and the Winograd transforms of its scale's plan (measured with the default VGG16: 76, 215 and
240 MB for steps at 64, 128 and 256 px, 260 MB for the three together: the steps share the arrays
they have in common, :mod:`segstyle_jax.device_variables`). Only the :data:`MAX_ENTRIES` most recently used are
kept; :func:`set_max_entries` changes that (0 turns the cache off) and :func:`clear` empties it.

The key is everything the program or its bound variables depend on (:func:`step_key`): the
:class:`~segstyle_jax.config.StepConfig`, the model's settings (architecture, taps, pooling,
preprocessing, convolution algorithm), the weights (by the ``params_sha256`` checksum their
metadata records, else by the identity of their ``params`` object), the shapes and dtypes of the
targets, loss weights and start image, the multipass batching choice and the JAX backend. Loss
weight *values* and target *values* are arguments of the step, not part of the key. Weights are
taken to be immutable once loaded: a caller who changes a loaded ``params`` array in place must
:func:`clear` the cache.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from typing import Any, Hashable

import jax

MAX_ENTRIES = 4

_lock = threading.Lock()
_entries: OrderedDict[Hashable, Any] = OrderedDict()
_max_entries = MAX_ENTRIES
_counts = {"hits": 0, "misses": 0}


class _Same:
    """Hashes and compares by identity, and keeps the object alive (so its ``id`` is not reused)."""

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _Same) and other.obj is self.obj


def weights_identity(weights) -> Hashable:
    """What identifies :class:`~segstyle_jax.weights.VGGWeights` in a key: the ``params_sha256`` its
    metadata records (the same for every load of one file), else the ``params`` object itself."""
    sha = (weights.metadata or {}).get("params_sha256")
    return ("params_sha256", sha) if sha else ("params object", _Same(weights.params))


def _shapes(tree) -> Hashable:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((tuple(leaf.shape), str(leaf.dtype)) for leaf in leaves)


def _canonical(config):
    """``config`` with the settings its optimizer ignores at their defaults: ``lbfgs_memory`` for
    Adam, ``learning_rate`` for both L-BFGS (:func:`segstyle_jax.engine.make_optimizer`), so that
    changing one of them does not miss the cache."""
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    ignored = ("lbfgs_memory",) if config.optimizer == "adam" else ("learning_rate",)
    return dataclasses.replace(config, **{name: defaults[name] for name in ignored})


def step_key(config, model, weights_id: Hashable, targets, loss_weights, start_shape, batch_passes) -> Hashable:
    """The cache key of one scale's step: ``config`` (:class:`~segstyle_jax.config.StepConfig`; the
    settings its optimizer ignores do not count), ``model`` (:class:`~segstyle_jax.vgg.VGG`),
    ``weights_id`` (:func:`weights_identity`), ``targets`` and ``loss_weights`` (arrays or shape
    structs: only shapes and dtypes count), the start image's shape and ``batch_passes``
    (``True``/``False``/``None``)."""
    settings = (model.arch, tuple(model.taps), model.pooling, tuple(model.mean), tuple(model.std), model.conv)
    return (_canonical(config), settings, weights_id, _shapes(targets), _shapes(loss_weights), tuple(start_shape),
            batch_passes, jax.default_backend())


def get(key: Hashable):
    """The entry stored under ``key`` (now the most recently used), or ``None``."""
    with _lock:
        entry = _entries.get(key)
        if entry is None:
            _counts["misses"] += 1
            return None
        _entries.move_to_end(key)
        _counts["hits"] += 1
        return entry


def put(key: Hashable, entry) -> None:
    """Store ``entry`` under ``key``, dropping the least recently used beyond the limit."""
    with _lock:
        if _max_entries <= 0:
            return
        _entries[key] = entry
        _entries.move_to_end(key)
        while len(_entries) > _max_entries:
            _entries.popitem(last=False)


def clear() -> None:
    """Drop every entry (their device memory is freed once nothing else holds them) and zero the
    hit and miss counts."""
    with _lock:
        _entries.clear()
        _counts.update(hits=0, misses=0)


def set_max_entries(n: int) -> None:
    """Keep at most ``n`` compiled steps (``0``: none, the cache is off); drops the oldest beyond it."""
    global _max_entries
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"the step cache's size must be an int >= 0, got {n!r}")
    with _lock:
        _max_entries = n
        while len(_entries) > n:
            _entries.popitem(last=False)


def stats() -> dict:
    """``{"entries", "max_entries", "hits", "misses"}``, the counts since the last :func:`clear`."""
    with _lock:
        return {"entries": len(_entries), "max_entries": _max_entries, **_counts}
