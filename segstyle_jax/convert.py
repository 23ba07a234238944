"""Conversion of torchvision VGG ``state_dict``s to the project's weight format.

torchvision stores ``vgg.features[N]`` convolutions as ``features.N.weight`` in OIHW
``[c_out, c_in, 3, 3]`` and ``features.N.bias``; Flax wants HWIO ``[3, 3, c_in, c_out]``.
:func:`torch_kernel_to_hwio` is the one place where that transpose happens.
The architecture (vgg16 or vgg19) is inferred from which feature indices hold convolutions.
``classifier.*`` entries are ignored; any other unexpected or missing entry is an error naming it.
PyTorch itself is only needed to read ``.pth`` files (:func:`read_torch_file`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from segstyle_jax import vgg
from segstyle_jax.weights import WeightsError, check_params, file_sha256, make_metadata, save_weights

_FEATURE_KEY = re.compile(r"^(?:module\.)?features\.(\d+)\.(weight|bias)$")


def torch_kernel_to_hwio(weight: np.ndarray) -> np.ndarray:
    """OIHW ``[c_out, c_in, kh, kw]`` (PyTorch) -> HWIO ``[kh, kw, c_in, c_out]`` (Flax)."""
    return np.ascontiguousarray(np.transpose(np.asarray(weight, np.float32), (2, 3, 1, 0)))


def infer_arch(state_dict: Mapping[str, Any], where: str = "state_dict") -> str:
    """``'vgg16'`` or ``'vgg19'`` from the feature indices that hold convolution weights."""
    indices = {int(m.group(1)) for k in state_dict if (m := _FEATURE_KEY.match(k)) and m.group(2) == "weight"}
    if not indices:
        raise WeightsError(f"{where}: no 'features.N.weight' entries; not a torchvision VGG state_dict")
    for arch in vgg.ARCHITECTURES:
        if indices == set(vgg.torchvision_feature_indices(arch).values()):
            return arch
    # Name the closest architecture's differences to make the error useful.
    best = min(vgg.ARCHITECTURES, key=lambda a: len(indices ^ set(vgg.torchvision_feature_indices(a).values())))
    want = set(vgg.torchvision_feature_indices(best).values())
    raise WeightsError(
        f"{where}: convolutions at features {sorted(indices)} match neither vgg16 nor vgg19 "
        f"(closest {best}: missing features {sorted(want - indices)}, unexpected {sorted(indices - want)})")


def params_from_torch_state_dict(state_dict: Mapping[str, Any], arch: str | None = None,
                                 where: str = "state_dict") -> tuple[str, dict]:
    """torchvision VGG ``state_dict`` (tensors or arrays) -> ``(arch, params)`` in HWIO layout."""
    arch = arch or infer_arch(state_dict, where)
    index = vgg.torchvision_feature_indices(arch)
    by_index = {i: name for name, i in index.items()}
    params: dict[str, dict[str, np.ndarray]] = {}
    unexpected = []
    for key, value in state_dict.items():
        m = _FEATURE_KEY.match(key)
        if m is None:
            if not re.match(r"^(?:module\.)?classifier\.", key):
                unexpected.append(key)
            continue
        name = by_index.get(int(m.group(1)))
        if name is None:
            unexpected.append(key)
            continue
        array = _to_numpy(value)
        leaf = "kernel" if m.group(2) == "weight" else "bias"
        if leaf == "kernel":
            if array.ndim != 4:
                raise WeightsError(f"{where}: {key} has shape {array.shape}, expected a 4-d OIHW kernel")
            array = torch_kernel_to_hwio(array)
        params.setdefault(name, {})[leaf] = np.asarray(array, np.float32)
    if unexpected:
        raise WeightsError(f"{where}: unexpected keys for {arch}: {', '.join(unexpected)}")
    missing = [f"features.{i}.{leaf}" for name, i in index.items() for leaf, ours in (("weight", "kernel"), ("bias", "bias"))
               if ours not in params.get(name, {})]
    if missing:
        raise WeightsError(f"{where}: missing keys for {arch}: {', '.join(missing)}")
    check_params(params, arch, where)
    return arch, params


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def read_torch_file(path: str | os.PathLike, allow_unsafe_pickle: bool = False) -> Mapping[str, Any]:
    """Read a ``.pth`` file into a state_dict.

    Accepts a plain state_dict, a checkpoint dict holding one under ``state_dict``/``model``/
    ``model_state_dict``, or (only with ``allow_unsafe_pickle``, since it runs arbitrary pickle
    code) a whole pickled model. Reading uses ``torch.load(..., weights_only=True)`` otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: file not found")
    try:
        import torch
    except ImportError as e:
        raise WeightsError("reading PyTorch files needs torch: pip install torch==2.13.0") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_unsafe_pickle)
    except Exception as e:  # torch raises many types for corrupt or unsafe files
        hint = "" if allow_unsafe_pickle else " (a whole pickled model needs --allow-unsafe-pickle)"
        raise WeightsError(f"{path}: cannot read as a PyTorch weights file{hint}: {str(e).splitlines()[0]}") from e
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                return inner
            if hasattr(inner, "state_dict"):
                return inner.state_dict()
        return obj
    raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state_dict or model")


def convert_torch_file(src: str | os.PathLike, dst: str | os.PathLike, arch: str | None = None,
                       allow_unsafe_pickle: bool = False) -> Path:
    """Convert a torchvision VGG ``.pth`` file into the project's format at ``dst`` (atomic write)."""
    state_dict = read_torch_file(src, allow_unsafe_pickle)
    arch, params = params_from_torch_state_dict(state_dict, arch, where=str(src))
    source = {"kind": "torchvision state_dict", "file": Path(src).name, "sha256": file_sha256(src)}
    return save_weights(dst, params, make_metadata(arch, params, source))
