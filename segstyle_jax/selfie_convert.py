"""Fetch MediaPipe's selfie segmentation model and convert it into segstyle_jax's weight format.

    segstyle fetch-models                      # fetch from PyPI, write weights/selfie_segmentation.npz
    segstyle fetch-models --source npm         # fetch from npm instead (npm pack, 4 MB)
    segstyle fetch-models --tflite FILE.tflite # convert a local copy (no network)
    segstyle fetch-models --check              # only verify the converted file

(``python tools/convert_selfie_model.py`` is the same command for a source checkout.)

Source: ``mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite`` (249,505 bytes,
Apache-2.0; ML Kit selfie segmentation, 256x256 RGB in [0, 1] -> person probability) from the
PyPI wheel ``mediapipe==0.10.14``. The model is taken, in this order, from ``--tflite``, from the
verified copy kept by an earlier run (see :func:`segstyle_jax.person.source_tflite_path`, outside
the checkout), from an installed ``mediapipe`` package (located, never imported), or from the wheel,
downloaded with ``python -m pip download --no-deps`` for one pinned platform (so any host fetches
the same 35.7 MB file) into a temporary folder; only the ``.tflite`` member is read from it. Its
sha256 must be :data:`TFLITE_SHA256`. If pip fails and ``npm`` is on the PATH, the npm package
``@mediapipe/selfie_segmentation@0.1.1675465747`` (4 MB, ``npm pack``) is the fallback: it ships
another build of the same model (249,024 bytes, sha256 :data:`NPM_TFLITE_SHA256`) whose weights
and graph convert to exactly the same file contents (same ``params_sha256`` and ``graph_sha256``).
``--source pypi|npm`` picks one.

The flatbuffer is read by the small, dependency-free reader below (only the parts of the TFLite
schema this model uses: tensors, buffers, operator codes, operators and their options). Float16
constants are widened to float32 (exact), kernels are stored in the project's HWIO layout, and the
operator graph, with every option that changes the numbers (padding, strides, dilations, fused
activations, depth multiplier, resize flags and sizes, transposed-conv output shape), is recorded
in the file's metadata; :mod:`segstyle_jax.person` runs that graph in JAX.

The converted file is written atomically to ``segstyle_jax.weights.cache_dir()`` (``weights/`` in a
checkout, git-ignored); the verified ``.tflite`` is kept outside the checkout for the reference
tests. Errors are printed as one line (exit status 2).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from segstyle_jax import person
from segstyle_jax.atomic import atomic_write
from segstyle_jax.weights import WeightsError

TFLITE_SHA256 = person.SOURCE_SHA256
TFLITE_SIZE = 249_505
NPM_TFLITE_SHA256 = person.NPM_SOURCE_SHA256
NPM_PACKAGE = "@mediapipe/selfie_segmentation@0.1.1675465747"
NPM_MEMBER = "package/selfie_segmentation.tflite"
WHEEL_REQUIREMENT = "mediapipe==0.10.14"
WHEEL_MEMBER = "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"
# One pinned wheel, whatever the host: mediapipe 0.10.14 has no wheel for every Python/platform.
WHEEL_PLATFORM_ARGS = ["--platform", "manylinux_2_17_x86_64", "--python-version", "3.11",
                       "--implementation", "cp", "--abi", "cp311", "--only-binary=:all:"]
WHEEL_SHA256 = "a807328339e7356fda0bb14df12fedbf1d33bdf81649c5f8666b0026b1cc30b4"  # informational
LICENSE = "Apache-2.0"

# ----------------------------------------------------------------------------------------------
# a minimal FlatBuffers / TFLite schema reader


class _Table:
    """One flatbuffer table: fields by their index in the schema (vtable slot)."""

    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos
        self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vtable_len = struct.unpack_from("<H", buf, self.vtable)[0]

    def _offset(self, field: int) -> int:
        slot = 4 + 2 * field
        return struct.unpack_from("<H", self.buf, self.vtable + slot)[0] if slot < self.vtable_len else 0

    def scalar(self, field: int, fmt: str, default=0):
        off = self._offset(field)
        return struct.unpack_from("<" + fmt, self.buf, self.pos + off)[0] if off else default

    def _target(self, field: int) -> int | None:
        off = self._offset(field)
        if not off:
            return None
        at = self.pos + off
        return at + struct.unpack_from("<I", self.buf, at)[0]

    def table(self, field: int) -> _Table | None:
        at = self._target(field)
        return None if at is None else _Table(self.buf, at)

    def string(self, field: int) -> str | None:
        at = self._target(field)
        if at is None:
            return None
        n = struct.unpack_from("<I", self.buf, at)[0]
        return self.buf[at + 4:at + 4 + n].decode("utf-8")

    def _vector(self, field: int) -> tuple[int, int]:
        at = self._target(field)
        if at is None:
            return 0, 0
        return at + 4, struct.unpack_from("<I", self.buf, at)[0]

    def tables(self, field: int) -> list[_Table]:
        start, n = self._vector(field)
        at = [start + 4 * i for i in range(n)]
        return [_Table(self.buf, a + struct.unpack_from("<I", self.buf, a)[0]) for a in at]

    def array(self, field: int, dtype) -> np.ndarray:
        start, n = self._vector(field)
        dtype = np.dtype(dtype).newbyteorder("<")
        if start + n * dtype.itemsize > len(self.buf):
            raise struct.error("vector runs past the end of the buffer")
        return np.frombuffer(self.buf, dtype, count=n, offset=start) if n else np.zeros(0, dtype)


# TFLite schema enums (tensorflow/lite/schema/schema.fbs)
_TENSOR_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}
_BUILTIN = {0: "ADD", 1: "AVERAGE_POOL_2D", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 6: "DEQUANTIZE", 14: "LOGISTIC",
            18: "MUL", 19: "RELU", 21: "RELU6", 23: "RESIZE_BILINEAR", 32: "CUSTOM", 117: "HARD_SWISH"}
_PADDING = {0: "SAME", 1: "VALID"}
_ACTIVATION = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH"}
# builtin_options union types
_OPT_CONV, _OPT_DEPTHWISE, _OPT_POOL, _OPT_ADD, _OPT_RESIZE_BILINEAR, _OPT_MUL = 1, 2, 5, 11, 15, 21
# TfLitePadding, as the custom op's raw options struct stores it
_TFLITE_C_PADDING = {1: "SAME", 2: "VALID"}


def read_tflite(data: bytes) -> dict:
    """Parse a ``.tflite`` flatbuffer -> ``{"description", "tensors", "operators", "inputs", "outputs"}``.

    ``tensors[i]`` is ``{"name", "shape", "dtype", "data"}`` (``data``: the constant's array or
    ``None``); ``operators[j]`` is ``{"op", "custom_code", "inputs", "outputs", "options",
    "options_type", "custom_options"}`` with ``options`` a :class:`_Table` or ``None``.
    """
    try:
        return _read_tflite(data)
    except WeightsError:
        raise
    except (struct.error, IndexError, UnicodeDecodeError, ValueError) as e:
        raise WeightsError(f"not a readable TFLite flatbuffer: {e}") from e


def _read_tflite(data: bytes) -> dict:
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise WeightsError("not a TFLite model (file identifier 'TFL3' missing)")
    model = _Table(data, struct.unpack_from("<I", data, 0)[0])
    opcodes = []
    for oc in model.tables(1):
        code = max(oc.scalar(0, "b", 0), oc.scalar(3, "i", 0))  # deprecated_builtin_code, builtin_code
        opcodes.append((_BUILTIN.get(code, f"BUILTIN_{code}"), oc.string(1)))
    buffers = []
    for b in model.tables(4):
        raw = b.array(0, np.uint8)
        offset, size = b.scalar(1, "Q", 0), b.scalar(2, "Q", 0)
        if not raw.size and offset > 1 and size:
            raw = np.frombuffer(data, np.uint8, count=size, offset=offset)
        buffers.append(raw)
    subgraphs = model.tables(2)
    if len(subgraphs) != 1:
        raise WeightsError(f"expected one subgraph, found {len(subgraphs)}")
    g = subgraphs[0]
    tensors = []
    for t in g.tables(0):
        shape = tuple(int(s) for s in t.array(0, np.int32))
        ttype = t.scalar(1, "b", 0)
        if ttype not in _TENSOR_TYPES:
            raise WeightsError(f"tensor {t.string(3)!r} has unsupported type {ttype}")
        dtype = np.dtype(_TENSOR_TYPES[ttype])
        raw = buffers[t.scalar(2, "I", 0)]
        value = None
        if raw.size:
            if raw.size != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
                raise WeightsError(f"tensor {t.string(3)!r}: {raw.size} bytes for shape {shape} of {dtype}")
            value = raw.view(dtype.newbyteorder("<")).reshape(shape).astype(dtype)
        if t.table(4) is not None and (t.table(4).array(0, np.float32).size or t.table(4).array(1, np.float32).size):
            raise WeightsError(f"tensor {t.string(3)!r} is quantized; only float models are supported")
        tensors.append({"name": t.string(3) or "", "shape": shape, "dtype": dtype, "data": value})
    operators = []
    for op in g.tables(3):
        name, custom = opcodes[op.scalar(0, "I", 0)]
        operators.append({
            "op": name, "custom_code": custom,
            "inputs": [int(i) for i in op.array(1, np.int32)],
            "outputs": [int(i) for i in op.array(2, np.int32)],
            "options_type": op.scalar(3, "B", 0), "options": op.table(4),
            "custom_options": bytes(op.array(5, np.uint8)),
        })
    return {"description": model.string(3), "tensors": tensors, "operators": operators,
            "inputs": [int(i) for i in g.array(1, np.int32)], "outputs": [int(i) for i in g.array(2, np.int32)]}


# ----------------------------------------------------------------------------------------------
# graph + weights -> the project's format


def _layer_name(tensor_name: str) -> str:
    """``"conv2d_3/Kernel"`` -> ``"conv2d_3"``."""
    return tensor_name.rsplit("/", 1)[0] if "/" in tensor_name else tensor_name


def convert_tflite(data: bytes, source: dict | None = None) -> tuple[dict, dict]:
    """``.tflite`` bytes -> ``(params, metadata)`` in :mod:`segstyle_jax.person`'s format."""
    model = read_tflite(data)
    tensors = model["tensors"]
    names: dict[int, str] = {}
    for i, t in enumerate(tensors):
        names[i] = t["name"] if sum(u["name"] == t["name"] for u in tensors) == 1 else f"{t['name']}#{i}"
    consts: dict[int, tuple[str, np.ndarray]] = {
        i: (t["name"], t["data"]) for i, t in enumerate(tensors) if t["data"] is not None}
    params: dict[str, dict[str, np.ndarray]] = {}
    graph: list[dict] = []
    source_dtypes: dict[str, str] = {}

    def const(i: int, what: str) -> tuple[str, np.ndarray]:
        if i not in consts:
            raise WeightsError(f"{what}: input tensor {names[i]!r} is not a constant")
        return consts[i]

    def activation(i: int, what: str) -> str:
        if i in consts:
            raise WeightsError(f"{what}: a constant operand ({names[i]!r}) is not supported")
        return names[i]

    def add_params(layer: str, kernel: np.ndarray, bias: np.ndarray, what: str) -> None:
        if layer in params:
            raise WeightsError(f"{what}: parameter layer {layer!r} appears twice")
        params[layer] = {"kernel": np.ascontiguousarray(kernel, np.float32), "bias": np.asarray(bias, np.float32)}

    for j, op in enumerate(model["operators"]):
        kind, opts, ins, outs = op["op"], op["options"], op["inputs"], op["outputs"]
        what = f"operator {j} ({kind if kind != 'CUSTOM' else op['custom_code']})"
        if len(outs) != 1:
            raise WeightsError(f"{what}: {len(outs)} outputs, expected 1")
        out = outs[0]
        node = {"op": kind, "output": names[out], "shape": list(tensors[out]["shape"])}
        if kind == "DEQUANTIZE":
            name, value = const(ins[0], what)
            if value.dtype != np.float16:
                raise WeightsError(f"{what}: dequantizes {value.dtype}, only float16 is supported")
            consts[out] = (name, value.astype(np.float32))  # exact widening
            source_dtypes[name] = "float16"
            continue
        transpose_conv = kind == "CUSTOM" and op["custom_code"] == "Convolution2DTransposeBias"
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D") or transpose_conv:
            if len(ins) != 3 or ins[2] < 0:
                raise WeightsError(f"{what}: expected input, kernel and bias")
            (kname, w), (_, b) = const(ins[1], what), const(ins[2], what)
            layer = _layer_name(kname)
            node.update(inputs=[activation(ins[0], what)], params=layer)
            if kind == "CONV_2D":
                o = _Conv2DOptions(opts)
                add_params(layer, w.transpose(1, 2, 3, 0), b, what)  # OHWI -> HWIO
                node.update(padding=o.padding, stride=o.stride, dilation=o.dilation, activation=o.activation)
            elif kind == "DEPTHWISE_CONV_2D":
                o = _DepthwiseOptions(opts)
                if w.shape[0] != 1:
                    raise WeightsError(f"{what}: depthwise kernel shape {w.shape}, expected [1, kh, kw, C*m]")
                add_params(layer, w.transpose(1, 2, 0, 3), b, what)  # [1,kh,kw,C*m] -> [kh,kw,1,C*m]
                node.update(padding=o.padding, stride=o.stride, dilation=o.dilation, activation=o.activation,
                            depth_multiplier=o.depth_multiplier)
            else:
                node["op"] = "TRANSPOSE_CONV_BIAS"
                if len(op["custom_options"]) < 12:
                    raise WeightsError(f"{what}: custom options too short ({len(op['custom_options'])} bytes)")
                pad, stride_w, stride_h = struct.unpack_from("<iii", op["custom_options"], 0)
                if pad not in _TFLITE_C_PADDING:
                    raise WeightsError(f"{what}: unknown padding {pad}")
                add_params(layer, w.transpose(1, 2, 3, 0), b, what)  # OHWI -> [kh, kw, in, out]
                node.update(padding=_TFLITE_C_PADDING[pad], stride=[stride_h, stride_w])
        elif kind in ("RELU", "RELU6", "LOGISTIC", "HARD_SWISH"):
            node["inputs"] = [activation(ins[0], what)]
        elif kind in ("ADD", "MUL"):
            act = _ACTIVATION.get(opts.scalar(0, "b", 0) if opts is not None else 0)
            if act is None:
                raise WeightsError(f"{what}: unsupported fused activation")
            node.update(inputs=[activation(ins[0], what), activation(ins[1], what)], activation=act)
        elif kind == "AVERAGE_POOL_2D":
            o = _Pool2DOptions(opts)
            node.update(inputs=[activation(ins[0], what)], padding=o.padding, stride=o.stride, window=o.window,
                        activation=o.activation)
        elif kind == "RESIZE_BILINEAR":
            _, size = const(ins[1], what)
            if opts is None or op["options_type"] != _OPT_RESIZE_BILINEAR:
                raise WeightsError(f"{what}: missing ResizeBilinearOptions")
            node.update(inputs=[activation(ins[0], what)], size=[int(s) for s in size],
                        align_corners=bool(opts.scalar(2, "B", 0)), half_pixel_centers=bool(opts.scalar(3, "B", 0)))
        else:
            raise WeightsError(f"{what}: unsupported operator")
        graph.append(node)

    if len(model["inputs"]) != 1 or len(model["outputs"]) != 1:
        raise WeightsError("expected one input and one output")
    inp, outp = model["inputs"][0], model["outputs"][0]
    spec = {"input": {"name": names[inp], "shape": list(tensors[inp]["shape"])},
            "output": {"name": names[outp], "shape": list(tensors[outp]["shape"])},
            "nodes": graph}
    src = dict(source or {})
    src.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data), description=model["description"],
               weights_dtype=sorted(set(source_dtypes.values())) or ["float32"])
    metadata = person.make_metadata(params, spec, src)
    return params, metadata


class _Conv2DOptions:
    def __init__(self, t: _Table | None):
        if t is None:
            raise WeightsError("CONV_2D without options")
        self.padding = _PADDING[t.scalar(0, "b", 0)]
        self.stride = [t.scalar(2, "i", 0), t.scalar(1, "i", 0)]          # [h, w]
        self.activation = _activation(t.scalar(3, "b", 0))
        self.dilation = [t.scalar(5, "i", 1), t.scalar(4, "i", 1)]        # [h, w]


class _DepthwiseOptions:
    def __init__(self, t: _Table | None):
        if t is None:
            raise WeightsError("DEPTHWISE_CONV_2D without options")
        self.padding = _PADDING[t.scalar(0, "b", 0)]
        self.stride = [t.scalar(2, "i", 0), t.scalar(1, "i", 0)]
        self.depth_multiplier = t.scalar(3, "i", 0)
        self.activation = _activation(t.scalar(4, "b", 0))
        self.dilation = [t.scalar(6, "i", 1), t.scalar(5, "i", 1)]


class _Pool2DOptions:
    def __init__(self, t: _Table | None):
        if t is None:
            raise WeightsError("AVERAGE_POOL_2D without options")
        self.padding = _PADDING[t.scalar(0, "b", 0)]
        self.stride = [t.scalar(2, "i", 0), t.scalar(1, "i", 0)]
        self.window = [t.scalar(4, "i", 0), t.scalar(3, "i", 0)]         # filter [h, w]
        self.activation = _activation(t.scalar(5, "b", 0))


def _activation(code: int) -> str:
    if code not in _ACTIVATION:
        raise WeightsError(f"unsupported fused activation {code}")
    return _ACTIVATION[code]


# ----------------------------------------------------------------------------------------------
# obtaining the .tflite


def _check_tflite(data: bytes, where: str, allowed: tuple[str, ...] = (TFLITE_SHA256, NPM_TFLITE_SHA256)) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest not in allowed:
        raise WeightsError(f"{where}: sha256 {digest} ({len(data)} bytes) is not the mediapipe 0.10.14 "
                           f"selfie_segmentation.tflite ({TFLITE_SHA256}, {TFLITE_SIZE} bytes)")
    return data


def _from_wheel(wheel: Path) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as z:
            return z.read(WHEEL_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise WeightsError(f"{wheel}: cannot read {WHEEL_MEMBER}: {e}") from e


def _installed_mediapipe() -> Path | None:
    spec = importlib.util.find_spec("mediapipe")  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "modules/selfie_segmentation/selfie_segmentation.tflite"
    return path if path.is_file() else None


def download_wheel(dest: Path, quiet: bool = True) -> Path:
    """``python -m pip download --no-deps mediapipe==0.10.14`` (pinned platform) into ``dest``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           *WHEEL_PLATFORM_ARGS, "-d", str(dest), WHEEL_REQUIREMENT]
    if quiet:
        cmd.append("--quiet")
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise WeightsError(f"pip download {WHEEL_REQUIREMENT} failed (exit {proc.returncode}): {tail[0]}")
    wheels = sorted(dest.glob("mediapipe-0.10.14-*.whl"))
    if not wheels:
        raise WeightsError(f"pip download {WHEEL_REQUIREMENT} left no wheel in {dest}")
    return wheels[0]


def download_npm(dest: Path) -> Path:
    """``npm pack @mediapipe/selfie_segmentation@0.1.1675465747`` into ``dest`` (the fallback source)."""
    npm = shutil.which("npm")
    if npm is None:
        raise WeightsError("npm is not installed (needed only for the npm fallback)")
    proc = subprocess.run([npm, "pack", NPM_PACKAGE, "--pack-destination", str(dest), "--silent"],
                          check=False, capture_output=True, text=True, cwd=dest)
    tarballs = sorted(dest.glob("*.tgz"))
    if proc.returncode != 0 or not tarballs:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise WeightsError(f"npm pack {NPM_PACKAGE} failed (exit {proc.returncode}): {tail[0]}")
    return tarballs[0]


def _from_npm_tarball(tgz: Path) -> bytes:
    try:
        with tarfile.open(tgz, "r:gz") as tar:
            member = tar.getmember(NPM_MEMBER)
            f = tar.extractfile(member) if member.isfile() else None
            if f is None:
                raise KeyError(NPM_MEMBER)
            return f.read()
    except (tarfile.TarError, KeyError, OSError) as e:
        raise WeightsError(f"{tgz}: cannot read {NPM_MEMBER}: {e}") from e


def obtain_tflite(tflite: str | Path | None = None, download: bool = True, source: str = "auto",
                  log=print) -> tuple[bytes, dict]:
    """The verified model bytes and a ``source`` record saying where they came from.

    ``source``: ``"auto"`` (local copies, then PyPI, then npm), ``"pypi"`` or ``"npm"`` (download
    from that registry only).
    """
    base = {"kind": f"pypi:{WHEEL_REQUIREMENT}", "file": WHEEL_MEMBER, "license": LICENSE,
            "model": "ML Kit selfie segmentation (MediaPipe), 256x256"}
    npm_base = dict(base, kind=f"npm:{NPM_PACKAGE}", file=NPM_MEMBER)

    def record(data: bytes, **extra) -> tuple[bytes, dict]:
        is_npm = hashlib.sha256(data).hexdigest() == NPM_TFLITE_SHA256
        return data, dict(npm_base if is_npm else base, **extra)

    if tflite is not None:
        path = Path(tflite)
        if not path.is_file():
            raise WeightsError(f"{path}: file not found")
        return record(_check_tflite(path.read_bytes(), str(path)), obtained_from=f"local file {path.name}")
    if source == "auto":
        kept = person.source_tflite_path()
        if kept.is_file():
            try:
                return record(_check_tflite(kept.read_bytes(), str(kept)), obtained_from="kept copy")
            except WeightsError as e:
                log(f"ignoring {kept}: {e}")
        installed = _installed_mediapipe()
        if installed is not None:
            try:
                return record(_check_tflite(installed.read_bytes(), str(installed), (TFLITE_SHA256,)),
                              obtained_from="installed mediapipe")
            except WeightsError as e:
                log(f"ignoring installed mediapipe: {e}")
    if not download:
        raise WeightsError("selfie_segmentation.tflite not found locally and downloading is disabled "
                           "(pass --tflite FILE)")
    errors = []
    if source in ("auto", "pypi"):
        with tempfile.TemporaryDirectory(prefix="segstyle_mediapipe_") as tmp:
            log(f"downloading {WHEEL_REQUIREMENT} (35.7 MB wheel) with pip to read {WHEEL_MEMBER} ...")
            try:
                wheel = download_wheel(Path(tmp))
                wheel_sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
                data = _check_tflite(_from_wheel(wheel), f"{wheel.name}:{WHEEL_MEMBER}", (TFLITE_SHA256,))
                return data, dict(base, obtained_from="pip download", wheel=wheel.name, wheel_sha256=wheel_sha)
            except WeightsError as e:
                if source == "pypi":
                    raise
                errors.append(str(e))
                log(f"PyPI failed ({e}); trying npm")
    with tempfile.TemporaryDirectory(prefix="segstyle_mediapipe_npm_") as tmp:
        log(f"downloading {NPM_PACKAGE} (4 MB) with npm pack to read {NPM_MEMBER} ...")
        try:
            tgz = download_npm(Path(tmp))
            data = _check_tflite(_from_npm_tarball(tgz), f"{tgz.name}:{NPM_MEMBER}", (NPM_TFLITE_SHA256,))
        except WeightsError as e:
            raise WeightsError("; ".join([*errors, str(e)])) from e
        return data, dict(npm_base, obtained_from="npm pack", tarball=tgz.name)


def keep_source(data: bytes) -> Path:
    """Keep the verified ``.tflite`` (outside the checkout) for the reference tests and later runs."""
    path = person.source_tflite_path()
    if path.is_file() and path.read_bytes() == data:
        return path
    with atomic_write(path) as f:
        f.write(data)
    return path


def convert(dst: str | Path | None = None, tflite: str | Path | None = None, download: bool = True,
            keep: bool = True, source: str = "auto", log=print) -> Path:
    """Obtain, verify and convert the model; returns the written weight file (read back and checked)."""
    data, source = obtain_tflite(tflite, download=download, source=source, log=log)
    if keep:
        kept = keep_source(data)
        log(f"kept the verified model at {kept}")
    params, metadata = convert_tflite(data, source)
    dst = Path(dst) if dst is not None else person.default_selfie_path()
    person.save_selfie_params(dst, params, metadata)
    person.load_selfie_params(dst)  # read back: format, graph, shapes and checksums
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tflite", help="convert this local selfie_segmentation.tflite (sha256-checked)")
    parser.add_argument("--out", help=f"output weight file (default: {person.default_selfie_path()})")
    parser.add_argument("--source", choices=("auto", "pypi", "npm"), default="auto",
                        help="auto: a local copy, else PyPI (pip download), else npm (npm pack); "
                             "pypi/npm: download from that registry")
    parser.add_argument("--no-download", action="store_true", help="never run pip/npm; fail if no local copy is found")
    parser.add_argument("--no-keep", action="store_true",
                        help=f"do not keep the verified .tflite at {person.source_tflite_path()}")
    parser.add_argument("--check", action="store_true", help="only verify an existing converted file")
    parser.add_argument("--force", action="store_true", help="convert even if a valid converted file exists")
    args = parser.parse_args(argv)
    dst = Path(args.out) if args.out else person.default_selfie_path()
    try:
        if args.check or (not args.force and args.tflite is None and args.source == "auto" and dst.is_file()):
            try:
                p = person.load_selfie_params(dst)
            except WeightsError:
                if args.check:
                    raise
            else:
                if args.check or person.source_tflite_path().is_file() or args.no_keep:
                    print(f"ok {dst}: {len(p.params)} layers, {len(p.graph['nodes'])} ops, "
                          f"source sha256 {p.metadata['source']['sha256'][:16]}... (use --force to reconvert)")
                    return 0
        dst = convert(dst, tflite=args.tflite, download=not args.no_download, keep=not args.no_keep,
                      source=args.source)
        p = person.load_selfie_params(dst)
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {dst}: {len(p.params)} layers, {len(p.graph['nodes'])} ops, "
          f"params sha256 {p.metadata['params_sha256'][:16]}...")
    return 0
