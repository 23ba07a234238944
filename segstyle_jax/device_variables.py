"""The VGG variables an update step takes, on the device, shared by the steps built from the same weights.

:func:`segstyle_jax.engine.make_update_fn` binds to its step the layers' kernels and biases, the
flipped kernels of the input gradient and the Winograd transforms of the layers that run by
Winograd at the step's size (:func:`segstyle_jax.vgg.prepared_variables`). A coarse-to-fine run
builds one step per scale, and :mod:`segstyle_jax.step_cache` keeps them; most of those arrays are
the same at every scale (the kernels and flipped kernels always, the ``F(2x2)`` transforms of the
deep layers from 64 to 256 px). :func:`device_variables` computes each on the host and puts it on
the device once, and hands the same device array to every step built while one that holds it is
alive.

The memo holds weak references to the device arrays (a device array is freed when the last step
holding it goes), keyed by the identity of the host array they came from, and forgets a host array
when it is garbage collected. Host weights are taken to be immutable: a caller who changes a loaded
array in place must build new arrays (or :func:`segstyle_jax.step_cache.clear` and drop old steps).
"""

from __future__ import annotations

import threading
import weakref
from typing import Callable

import jax
import numpy as np

from segstyle_jax import winograd

# re-entrant: a garbage collection inside a locked section may run _forget on this thread
_lock = threading.RLock()
_memo: dict[tuple[int, str], dict[str, weakref.ref]] = {}
_watched: set[int] = set()  # ids of the host arrays a finalizer watches


def _forget(host_id: int) -> None:
    with _lock:
        for key in [k for k in _memo if k[0] == host_id]:
            del _memo[key]
        _watched.discard(host_id)


def _shared(host: np.ndarray, what: str, make: Callable[[np.ndarray], dict]) -> dict:
    """``jax.device_put(make(host))`` (a dict of host arrays), or the device arrays an earlier call
    with this live ``host`` array and ``what`` made, if all of them are still alive."""
    key = (id(host), what)
    with _lock:
        refs = _memo.get(key)
        arrays = {name: ref() for name, ref in refs.items()} if refs else None
    if arrays and all(a is not None for a in arrays.values()):
        return arrays
    arrays = jax.device_put(make(host))
    with _lock:
        _memo[key] = {name: weakref.ref(a) for name, a in arrays.items()}
        if id(host) not in _watched:
            _watched.add(id(host))
            weakref.finalize(host, _forget, id(host))
    return arrays


def device_variables(params: dict, plan: dict[str, str]) -> dict:
    """``{"params": params, "prepared": vgg.prepared_variables(params, plan)}`` on the device, each
    array shared with the steps built before from the same host arrays (module docstring).

    ``params``: ``{layer: {"kernel": [3, 3, c_in, c_out], "bias": [c_out]}}``, NumPy float32;
    ``plan``: ``{conv layer: algorithm}`` (:func:`segstyle_jax.vgg.conv_algorithms`)."""
    out: dict = {"params": {}, "prepared": {}}
    for name, p in params.items():
        out["params"][name] = {k: _shared(a, "value", lambda a: {"value": a})["value"] for k, a in p.items()}
        if not name.startswith("conv"):
            continue
        prepared = dict(_shared(p["kernel"], "flipped",
                                lambda k: {"kernel_flipped": winograd.prepared_kernels(k, None)["kernel_flipped"]}))
        tile = winograd.TILE.get(plan.get(name, "direct"))
        if tile is not None:
            prepared.update(_shared(p["kernel"], f"winograd{tile}",
                                    lambda k: {n: v for n, v in winograd.prepared_kernels(k, tile).items()
                                               if n != "kernel_flipped"}))
        out["prepared"][name] = prepared
    return out
