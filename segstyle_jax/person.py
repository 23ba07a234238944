"""Person / background segmentation with a real pretrained model, offline at run time.

The model is MediaPipe's (ML Kit) selfie segmentation network, ``selfie_segmentation.tflite``
(Apache-2.0) from the PyPI wheel ``mediapipe==0.10.14``: a small MobileNetV3-like encoder-decoder,
input ``[1, 256, 256, 3]`` RGB in ``[0, 1]``, output ``[1, 256, 256, 1]`` person probability.

* **Weights.** ``segstyle fetch-models`` (:mod:`segstyle_jax.selfie_convert`; run once; it fetches the wheel with pip,
  falling back to the npm package ``@mediapipe/selfie_segmentation``)
  checks the model's sha256 (:data:`SOURCE_SHA256`), converts it into a weight file at
  :func:`default_selfie_path` (``weights/selfie_segmentation.npz`` in a checkout) and keeps the
  verified ``.tflite`` at :func:`source_tflite_path` (outside the checkout) for the reference
  tests. Nothing is downloaded at run time: :func:`load_selfie_params` reads only that file and,
  if it is missing, raises :class:`~segstyle_jax.weights.WeightsError` naming that one command.
* **File format.** A NumPy ``.npz`` read with ``allow_pickle=False``: ``"<layer>/kernel"`` (float32,
  HWIO; depthwise kernels ``[kh, kw, 1, C*m]``; the transposed convolution's ``[kh, kw, in, out]``)
  and ``"<layer>/bias"``, plus ``"__metadata__"`` (UTF-8 JSON as uint8): ``format``,
  ``format_version``, ``arch``, ``layout``, ``graph`` (the operator list, see below),
  ``graph_sha256``, ``source`` (where the numbers came from, with the ``.tflite``'s sha256) and
  ``params_sha256`` (:func:`segstyle_jax.weights.params_sha256`); both checksums are verified on load.
* **The network** is the model's own operator graph, recorded by the converter with every option
  that changes the numbers and run by :func:`selfie_forward` in ``jax.numpy``/``lax`` with TFLite's
  semantics: NHWC; SAME padding puts the odd extra row/column at the bottom/right; fused
  activations; depthwise ``depth_multiplier``; average pooling that counts only real pixels;
  ``RESIZE_BILINEAR`` with the stored ``align_corners``/``half_pixel_centers`` flags; MediaPipe's
  ``Convolution2DTransposeBias`` (output ``in*stride`` for SAME, ``(in-1)*stride+k`` for VALID).
  Every operator's output shape is checked against the shape stored in the model.
* **Pre/post-processing** (:func:`segment_person`): the image (anything
  :func:`segstyle_jax.images.load_image` accepts) is stretched to 256x256 (bilinear,
  antialiased when shrinking; no letterbox), the jitted network runs, and the
  probability map is resized back to the image size (bilinear).

:func:`person_segmentation` turns that into a ``("background", "person")``
:class:`~segstyle_jax.masks.Segmentation` and warns (:class:`PersonSegmentationWarning`) when the
person covers less than 2% or more than 90% of the image. The model is a *selfie* model: it
answers "person" for non-person photos too (measured on scikit-image's photos at threshold 0.5:
``astronaut`` 54.6%, correctly the astronaut and her helmet; ``coffee`` 18.6%, the cup;
``chelsea`` 92.5%, the cat and most of the frame, which warns), so look at the mask, or pass your
own segmentation.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from segstyle_jax.masks import Segmentation
from segstyle_jax.weights import WeightsError, cache_dir, params_sha256, read_archive, write_archive

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SOURCE_SHA256",
    "NPM_SOURCE_SHA256",
    "CONVERT_COMMAND",
    "LABELS",
    "SelfieParams",
    "PersonSegmentation",
    "PersonSegmentationWarning",
    "default_selfie_path",
    "source_tflite_path",
    "make_metadata",
    "save_selfie_params",
    "load_selfie_params",
    "selfie_forward",
    "run_network",
    "prepare_input",
    "segment_person",
    "person_segmentation",
]

FORMAT = "segstyle_jax.selfie_segmentation"
FORMAT_VERSION = 1
ARCH = "mediapipe_selfie_segmentation"
#: sha256 of ``mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite`` in mediapipe 0.10.14.
SOURCE_SHA256 = "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c"
#: sha256 of ``package/selfie_segmentation.tflite`` in npm ``@mediapipe/selfie_segmentation@0.1.1675465747``:
#: another build of the same model (identical weights and graph; the converter's fallback source).
NPM_SOURCE_SHA256 = "8d13b7fae74af625c641226813616a2117bd6bca19eb3b75574621fc08557f27"
DEFAULT_NAME = "selfie_segmentation.npz"
SOURCE_NAME = "selfie_segmentation.tflite"
CONVERT_COMMAND = "segstyle fetch-models"
LABELS = ("background", "person")
#: Person fractions outside this range trigger :class:`PersonSegmentationWarning`.
PLAUSIBLE_FRACTION = (0.02, 0.90)

_ACTIVATIONS = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1", "TANH")
_UNARY = ("RELU", "RELU6", "LOGISTIC", "HARD_SWISH")
_NODE_FIELDS = {
    "CONV_2D": ("padding", "stride", "dilation", "activation", "params"),
    "DEPTHWISE_CONV_2D": ("padding", "stride", "dilation", "activation", "depth_multiplier", "params"),
    "TRANSPOSE_CONV_BIAS": ("padding", "stride", "params"),
    "AVERAGE_POOL_2D": ("padding", "stride", "window", "activation"),
    "RESIZE_BILINEAR": ("size", "align_corners", "half_pixel_centers"),
    "ADD": ("activation",),
    "MUL": ("activation",),
    **{op: () for op in _UNARY},
}


class PersonSegmentationWarning(UserWarning):
    """The person mask covers an implausible part of the image; check it or give a mask."""


# ----------------------------------------------------------------------------------------------
# locations


def default_selfie_path() -> Path:
    """``cache_dir()/selfie_segmentation.npz`` (``weights/`` in a checkout)."""
    return cache_dir() / DEFAULT_NAME


def source_tflite_path() -> Path:
    """Where the converter keeps the verified ``.tflite``: never inside the checkout.

    ``$SEGSTYLE_JAX_SOURCES``, else ``$XDG_CACHE_HOME/segstyle_jax/sources``, else
    ``~/.cache/segstyle_jax/sources``; the file is ``selfie_segmentation.tflite``.
    """
    if os.environ.get("SEGSTYLE_JAX_SOURCES"):
        return Path(os.environ["SEGSTYLE_JAX_SOURCES"]) / SOURCE_NAME
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "segstyle_jax" / "sources" / SOURCE_NAME


# ----------------------------------------------------------------------------------------------
# the weight file


@dataclass(eq=False)
class SelfieParams:
    """A loaded model: ``params`` ``{layer: {"kernel", "bias"}}`` (numpy) and ``metadata``."""

    params: dict[str, dict[str, np.ndarray]]
    metadata: dict[str, Any]
    _device: Any = field(default=None, repr=False)

    @property
    def graph(self) -> dict:
        return self.metadata["graph"]

    @property
    def input_hw(self) -> tuple[int, int]:
        shape = self.graph["input"]["shape"]
        return int(shape[1]), int(shape[2])

    def device_params(self):
        """The parameters as jax arrays (transferred once; ``jax.device_put``, since ``jnp.asarray``
        compiles a conversion per array shape, about a second each on a GPU)."""
        if self._device is None:
            self._device = jax.device_put(self.params)
        return self._device


def graph_sha256(graph: Mapping) -> str:
    return hashlib.sha256(json.dumps(graph, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def make_metadata(params, graph: dict, source: dict) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": ARCH,
        "layout": "HWIO",
        "preprocessing": {"input": "RGB in [0, 1], NHWC, stretched to the input size (bilinear)",
                          "output": "person probability in [0, 1]"},
        "layers": sorted(params),
        "graph": graph,
        "graph_sha256": graph_sha256(graph),
        "source": source,
        "params_sha256": params_sha256(params),
    }


def save_selfie_params(path: str | os.PathLike, params, metadata: dict) -> Path:
    """Validate, then write ``params`` and ``metadata`` atomically."""
    check_model(params, metadata, str(path))
    return write_archive(path, params, metadata)


def _missing_message(path: Path) -> str:
    return (f"{path}: the person segmentation model is not converted yet. Run once "
            f"(it fetches mediapipe==0.10.14 from PyPI with pip): {CONVERT_COMMAND}  "
            f"(offline, from a local copy: {CONVERT_COMMAND} --tflite selfie_segmentation.tflite)")


def load_selfie_params(path: str | os.PathLike | None = None) -> SelfieParams:
    """Read a converted model, verifying format, checksums, the graph and every shape.

    ``path=None`` reads :func:`default_selfie_path`, which must have been converted from the
    known ``.tflite`` (:data:`SOURCE_SHA256`, or the npm build :data:`NPM_SOURCE_SHA256`). Nothing
    is converted or downloaded here: a missing file is a :class:`WeightsError` that names the
    command to run.
    """
    default = path is None
    path = default_selfie_path() if default else Path(path)
    if not path.is_file():
        raise WeightsError(_missing_message(path) if default else f"{path}: weight file not found")

    def validate(params, metadata):
        if not isinstance(metadata.get("graph"), dict) or graph_sha256(metadata["graph"]) != metadata.get("graph_sha256"):
            raise WeightsError(f"{path}: graph checksum mismatch (file altered or corrupt)")
        check_model(params, metadata, str(path))

    params, metadata = read_archive(path, FORMAT, FORMAT_VERSION, validate)
    if default and metadata.get("source", {}).get("sha256") not in (SOURCE_SHA256, NPM_SOURCE_SHA256):
        raise WeightsError(f"{path}: was not converted from the known selfie_segmentation.tflite "
                           f"({SOURCE_SHA256[:16]}...); delete it and run {CONVERT_COMMAND}")
    return SelfieParams(params=params, metadata=metadata)


def check_model(params, metadata: dict, where: str) -> None:
    """Raise :class:`WeightsError` unless the graph uses known operators with their options, every
    parameter layer is used exactly once, and the graph traces with every recorded shape."""
    graph = metadata.get("graph")
    problems = []
    try:
        nodes = graph["nodes"]
        inp, out = graph["input"], graph["output"]
        in_shape = tuple(int(s) for s in inp["shape"])
        out_shape = tuple(int(s) for s in out["shape"])
    except (TypeError, KeyError, ValueError) as e:
        raise WeightsError(f"{where}: malformed graph: {e}") from e
    if len(in_shape) != 4 or in_shape[3] != 3 or len(out_shape) != 4 or out_shape[3] != 1:
        problems.append(f"input {in_shape} / output {out_shape} are not [n, h, w, 3] / [n, h, w, 1]")
    used = []
    for i, node in enumerate(nodes):
        op = node.get("op") if isinstance(node, dict) else None
        if op not in _NODE_FIELDS:
            problems.append(f"node {i}: unsupported operator {op!r}")
            continue
        missing = [f for f in ("inputs", "output", "shape", *_NODE_FIELDS[op]) if f not in node]
        if missing:
            problems.append(f"node {i} ({op}): missing {', '.join(missing)}")
            continue
        if node.get("activation", "NONE") not in _ACTIVATIONS:
            problems.append(f"node {i} ({op}): unknown activation {node['activation']!r}")
        if node.get("padding", "SAME") not in ("SAME", "VALID"):
            problems.append(f"node {i} ({op}): unknown padding {node['padding']!r}")
        if "params" in node:
            used.append(node["params"])
            if node["params"] not in params or set(params[node["params"]]) != {"kernel", "bias"}:
                problems.append(f"node {i} ({op}): parameters {node['params']!r} missing or incomplete")
    unused = sorted(set(params) - set(used))
    if unused:
        problems.append(f"unused parameter layers: {', '.join(unused)}")
    twice = sorted({u for u in used if used.count(u) > 1})
    if twice:
        problems.append(f"parameter layers used twice: {', '.join(twice)}")
    if problems:
        raise WeightsError(f"{where}: not a valid {ARCH} model: " + "; ".join(problems))
    try:
        shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.float32), dict(params))
        got = jax.eval_shape(partial(selfie_forward, graph=graph), shapes,
                             jax.ShapeDtypeStruct(in_shape, jnp.float32))
    except (WeightsError, TypeError, ValueError, KeyError, IndexError) as e:
        raise WeightsError(f"{where}: the graph does not run: {e}") from e
    if tuple(got.shape) != out_shape:
        raise WeightsError(f"{where}: the graph outputs {tuple(got.shape)}, expected {out_shape}")


# ----------------------------------------------------------------------------------------------
# the network, with TFLite's semantics


def _activation(x, name: str):
    if name == "NONE":
        return x
    if name == "RELU":
        return jnp.maximum(x, 0.0)
    if name == "RELU6":
        return jnp.clip(x, 0.0, 6.0)
    if name == "RELU_N1_TO_1":
        return jnp.clip(x, -1.0, 1.0)
    if name == "TANH":
        return jnp.tanh(x)
    raise WeightsError(f"unknown activation {name!r}")


def _padding(padding: str, size: int, k: int, stride: int, dilation: int = 1) -> tuple[int, tuple[int, int]]:
    """TFLite output size and (before, after) padding of one spatial dim; SAME puts the extra at the end."""
    eff = (k - 1) * dilation + 1
    if padding == "VALID":
        return (size - eff) // stride + 1, (0, 0)
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return out, (total // 2, total - total // 2)


def _conv(x, kernel, bias, node, groups: int = 1):
    kh, kw = kernel.shape[:2]
    (sh, sw), (dh, dw) = node["stride"], node["dilation"]
    _, ph = _padding(node["padding"], x.shape[1], kh, sh, dh)
    _, pw = _padding(node["padding"], x.shape[2], kw, sw, dw)
    y = lax.conv_general_dilated(x, kernel, (sh, sw), (ph, pw), rhs_dilation=(dh, dw),
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
                                 precision=lax.Precision.HIGHEST)
    return _activation(y + bias, node["activation"])


def _depthwise(x, kernel, bias, node):
    c = x.shape[-1]
    if kernel.shape[2] != 1 or kernel.shape[3] != c * node["depth_multiplier"]:
        raise WeightsError(f"{node['output']}: depthwise kernel {kernel.shape} for {c} channels x "
                           f"multiplier {node['depth_multiplier']}")
    # TFLite output channel c*m + j reads input channel c: the same grouping as feature_group_count=c.
    return _conv(x, kernel, bias, node, groups=c)


def _transpose_conv(x, kernel, bias, node):
    """MediaPipe's Convolution2DTransposeBias: ``out[y*s + ky - pad] += x[y] * w[ky]`` (per axis) + bias."""
    kh, kw = kernel.shape[:2]
    (sh, sw), pads = node["stride"], []
    for size, k, s in ((x.shape[1], kh, sh), (x.shape[2], kw, sw)):
        out = size * s if node["padding"] == "SAME" else (size - 1) * s + k
        before = max((size - 1) * s + k - out, 0) // 2
        after = (size - 1) * s + k - out - before
        pads.append((k - 1 - before, k - 1 - after))
    y = lax.conv_general_dilated(x, kernel[::-1, ::-1], (1, 1), pads, lhs_dilation=(sh, sw),
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=lax.Precision.HIGHEST)
    return y + bias


def _average_pool(x, node):
    (fh, fw), (sh, sw) = node["window"], node["stride"]
    _, ph = _padding(node["padding"], x.shape[1], fh, sh)
    _, pw = _padding(node["padding"], x.shape[2], fw, sw)
    dims, strides, pads = (1, fh, fw, 1), (1, sh, sw, 1), ((0, 0), ph, pw, (0, 0))
    total = lax.reduce_window(x, 0.0, lax.add, dims, strides, pads)
    count = lax.reduce_window(jnp.ones((1, *x.shape[1:3], 1), x.dtype), 0.0, lax.add, dims, strides, pads)
    return _activation(total / count, node["activation"])  # padded pixels are not counted, as in TFLite


def _resize_axis(in_size: int, out_size: int, align_corners: bool, half_pixel: bool):
    """TFLite's ComputeInterpolationValues for one axis -> (lower, upper, weight of upper), float32 math."""
    if align_corners and out_size > 1:
        scale = np.float32(in_size - 1) / np.float32(out_size - 1)
    else:
        scale = np.float32(in_size) / np.float32(out_size)
    o = np.arange(out_size, dtype=np.float32)
    src = (o + np.float32(0.5)) * scale - np.float32(0.5) if half_pixel else o * scale
    lower = np.maximum(np.floor(src), 0).astype(np.int32)
    upper = np.minimum(np.ceil(src), in_size - 1).astype(np.int32)
    return lower, upper, (src - lower).astype(np.float32)


def _resize_bilinear(x, node):
    (oh, ow), ac, hp = node["size"], node["align_corners"], node["half_pixel_centers"]
    y0, y1, wy = _resize_axis(x.shape[1], oh, ac, hp)
    x0, x1, wx = _resize_axis(x.shape[2], ow, ac, hp)
    wy, wx = wy[None, :, None, None], wx[None, None, :, None]
    top, bottom = x[:, y0], x[:, y1]
    t = top[:, :, x0] * (1 - wx) + top[:, :, x1] * wx
    b = bottom[:, :, x0] * (1 - wx) + bottom[:, :, x1] * wx
    return t * (1 - wy) + b * wy


def selfie_forward(params, x, graph: Mapping):
    """Run the recorded graph on ``x`` ``[n, h, w, 3]`` (RGB in [0, 1]) -> ``[n, h, w, 1]`` probabilities.

    ``graph`` is static (the file's metadata); ``params`` may be traced.
    """
    values = {graph["input"]["name"]: x}
    for node in graph["nodes"]:
        op = node["op"]
        args = [values[name] for name in node["inputs"]]
        p = params.get(node["params"]) if "params" in node else None
        if op == "CONV_2D":
            y = _conv(args[0], p["kernel"], p["bias"], node)
        elif op == "DEPTHWISE_CONV_2D":
            y = _depthwise(args[0], p["kernel"], p["bias"], node)
        elif op == "TRANSPOSE_CONV_BIAS":
            y = _transpose_conv(args[0], p["kernel"], p["bias"], node)
        elif op == "AVERAGE_POOL_2D":
            y = _average_pool(args[0], node)
        elif op == "RESIZE_BILINEAR":
            y = _resize_bilinear(args[0], node)
        elif op == "ADD":
            y = _activation(args[0] + args[1], node["activation"])
        elif op == "MUL":
            y = _activation(args[0] * args[1], node["activation"])
        elif op == "RELU":
            y = jnp.maximum(args[0], 0.0)
        elif op == "RELU6":
            y = jnp.clip(args[0], 0.0, 6.0)
        elif op == "LOGISTIC":
            y = jax.nn.sigmoid(args[0])
        elif op == "HARD_SWISH":
            y = args[0] * jnp.clip(args[0] + 3.0, 0.0, 6.0) / 6.0
        else:
            raise WeightsError(f"unsupported operator {op!r}")
        if tuple(y.shape[1:]) != tuple(node["shape"][1:]):
            raise WeightsError(f"{op} -> {node['output']!r}: computed shape {tuple(y.shape)}, "
                               f"the model says {tuple(node['shape'])}")
        values[node["output"]] = y
    return values[graph["output"]["name"]]


_JITTED: dict[str, Any] = {}


def _jitted(graph: Mapping):
    key = graph_sha256(graph)
    if key not in _JITTED:
        _JITTED[key] = jax.jit(partial(selfie_forward, graph=graph))
    return _JITTED[key]


def run_network(x, params: SelfieParams | None = None) -> np.ndarray:
    """The jitted network on ``x`` ``[n, 256, 256, 3]`` (or one ``[256, 256, 3]``) -> ``[n, 256, 256]``."""
    model = _resolve(params)
    x = np.asarray(x, np.float32)
    single = x.ndim == 3
    if single:
        x = x[None]
    want = model.input_hw
    if x.ndim != 4 or tuple(x.shape[1:]) != (*want, 3):
        raise ValueError(f"network input must be [n, {want[0]}, {want[1]}, 3]; got {tuple(x.shape)}")
    y = np.asarray(_jitted(model.graph)(model.device_params(), x))[..., 0]
    return y[0] if single else y


# ----------------------------------------------------------------------------------------------
# the public functions

_DEFAULT: dict[tuple, SelfieParams] = {}


def _resolve(params) -> SelfieParams:
    if isinstance(params, SelfieParams):
        return params
    if params is not None:
        return load_selfie_params(params)
    path = default_selfie_path()
    stat = path.stat() if path.is_file() else None
    key = (str(path), stat.st_mtime_ns, stat.st_size) if stat else None
    if key is None or key not in _DEFAULT:
        loaded = load_selfie_params(None)
        _DEFAULT.clear()
        _DEFAULT[key] = loaded
    return _DEFAULT[key]


def prepare_input(image, hw: tuple[int, int] = (256, 256)) -> np.ndarray:
    """An image (path, PIL image or array; see :func:`segstyle_jax.images.load_image`) ->
    ``[h, w, 3]`` float32 stretched to ``hw`` (bilinear, antialiased when shrinking)."""
    from segstyle_jax.images import load_image

    img = load_image(image)
    if img.shape[:2] == tuple(hw):
        return img
    return np.clip(np.asarray(_resize_linear(img, (*hw, 3)), np.float32), 0.0, 1.0)


@partial(jax.jit, static_argnums=(1,))
def _resize_linear(x, shape):
    """``jax.image.resize`` (linear, antialiased) as one compiled program: run op by op it compiled
    a program per operation (about a second each on a GPU)."""
    return jax.image.resize(x, shape, method="linear", antialias=True)


def segment_person(image, params: SelfieParams | str | os.PathLike | None = None) -> np.ndarray:
    """Person probability ``[h, w]`` float32 in [0, 1] at the image's own size.

    ``params``: a :class:`SelfieParams`, a converted file, or ``None`` for the default file
    (:func:`load_selfie_params`; missing -> :class:`WeightsError` naming the convert command).
    """
    from segstyle_jax.images import load_image

    model = _resolve(params)
    img = load_image(image)
    prob = run_network(prepare_input(img, model.input_hw), model)
    h, w = img.shape[:2]
    if (h, w) != prob.shape:
        prob = np.asarray(_resize_linear(prob, (h, w)))
    return np.clip(prob, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True, eq=False)
class PersonSegmentation(Segmentation):
    """A ``("background", "person")`` :class:`Segmentation` with the model's output kept alongside.

    ``probability``: ``[h, w]`` person probability; ``threshold``: the cut used for the masks
    (``None``: soft masks ``[1 - p, p]``). ``person_fraction``: mean of the person mask.
    """

    probability: np.ndarray | None = None
    threshold: float | None = 0.5

    @property
    def person_fraction(self) -> float:
        return float(self.masks[LABELS.index("person")].mean())


def person_segmentation(image, threshold: float | None = 0.5,
                        params: SelfieParams | str | os.PathLike | None = None,
                        warn: bool = True) -> PersonSegmentation:
    """Segment ``image`` into ``("background", "person")`` with the selfie segmentation model.

    ``threshold``: a pixel is "person" where the probability is ``>= threshold`` (one-hot masks);
    ``None`` keeps the soft masks ``[1 - p, p]``. Both labels are always present, even if a mask is
    empty. With ``warn``, a person fraction below 2% or above 90% raises a
    :class:`PersonSegmentationWarning` (the model may have missed the person, or taken the
    background for one).
    """
    if threshold is not None and not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must be in (0, 1) or None; got {threshold}")
    prob = segment_person(image, params)
    person = prob if threshold is None else (prob >= float(threshold)).astype(np.float32)
    seg = PersonSegmentation(masks=np.stack([1.0 - person, person]), labels=LABELS, probability=prob,
                             threshold=None if threshold is None else float(threshold))
    lo, hi = PLAUSIBLE_FRACTION
    fraction = seg.person_fraction
    if warn and not lo <= fraction <= hi:
        warnings.warn(
            f"person segmentation: the person covers {fraction:.1%} of the image, outside the plausible "
            f"{lo:.0%}-{hi:.0%}; the model may have missed the person or mistaken the background for one. "
            f"Check the mask (e.g. save seg.masks[1]) or give your own segmentation instead: a label map or "
            f"soft masks (segstyle_jax.masks.from_label_map / from_soft_masks / load_segmentation), or mask "
            f"PNGs with the CLI's --segments.", PersonSegmentationWarning, stacklevel=2)
    return seg
