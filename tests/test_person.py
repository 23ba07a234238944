"""Person segmentation: the JAX port of MediaPipe's selfie segmentation against the reference runtime.

Needs the converted model (``segstyle fetch-models``, which also keeps the verified
``.tflite`` for the reference) and, for the parity tests, ``ai-edge-litert``; tests skip with the
reason otherwise. The format / error tests need neither.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from segstyle_jax import person, selfie_convert
from segstyle_jax.masks import Segmentation
from segstyle_jax.weights import METADATA_KEY, WeightsError

PHOTOS = ("astronaut", "coffee", "chelsea")


def _tool():
    return selfie_convert


@pytest.fixture(scope="module")
def model():
    path = person.default_selfie_path()
    if not path.is_file():
        pytest.skip(f"{path} missing: run {person.CONVERT_COMMAND}")
    return person.load_selfie_params()


@pytest.fixture(scope="module")
def tflite_bytes():
    path = person.source_tflite_path()
    if not path.is_file():
        pytest.skip(f"{path} missing: run {person.CONVERT_COMMAND}")
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() in (person.SOURCE_SHA256, person.NPM_SOURCE_SHA256)
    return data


@pytest.fixture(scope="module")
def reference(tflite_bytes):
    """The .tflite as it is, run by LiteRT (its default XNNPACK delegate provides MediaPipe's
    Convolution2DTransposeBias custom op)."""
    interpreter_mod = pytest.importorskip("ai_edge_litert.interpreter", reason="pip install ai-edge-litert",
                                          exc_type=ImportError)
    it = interpreter_mod.Interpreter(model_content=tflite_bytes)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

    def run(x):
        it.set_tensor(inp, np.asarray(x, np.float32)[None])
        it.invoke()
        return it.get_tensor(out)[0, ..., 0].copy()

    run.interpreter = it
    return run


@pytest.fixture(scope="module")
def photos():
    data = pytest.importorskip("skimage.data", reason="pip install scikit-image")
    return {name: getattr(data, name)() for name in PHOTOS}


# ---------------------------------------------------------------------------------------------- parity


def test_network_matches_reference_runtime_on_photos(model, reference, photos):
    for name, img in photos.items():
        x = person.prepare_input(img)
        ours, ref = person.run_network(x, model), reference(x)
        assert ours.shape == ref.shape == (256, 256)
        mad = float(np.abs(ours - ref).mean())
        assert mad < 1e-3, f"{name}: mean |jax - litert| = {mad:.3g}"
        # and the decision agrees almost everywhere
        assert np.mean((ours >= 0.5) != (ref >= 0.5)) < 1e-3, name


def test_network_matches_reference_runtime_on_noise(model, reference):
    x = np.random.default_rng(0).random((256, 256, 3), dtype=np.float32)
    assert np.abs(person.run_network(x, model) - reference(x)).max() < 1e-4


def test_converted_constants_equal_the_models(model, reference):
    """The flatbuffer reader against LiteRT's own view of every float16 constant."""
    it = reference.interpreter
    by_name = {d["name"]: d for d in it.get_tensor_details()}
    checked = 0
    for layer, leaves in model.params.items():
        for leaf, tflite_name in (("kernel", f"{layer}/Kernel"), ("bias", f"{layer}/Bias")):
            ref = it.get_tensor(by_name[tflite_name]["index"]).astype(np.float32)
            ours = leaves[leaf]
            if leaf == "kernel":  # back to TFLite's [out, kh, kw, in] / depthwise [1, kh, kw, C*m]
                ours = ours.transpose(2, 0, 1, 3) if layer.startswith("depthwise") else ours.transpose(3, 0, 1, 2)
            np.testing.assert_array_equal(ours, ref, err_msg=tflite_name)
            checked += 1
    assert checked == 110


def test_reader_sees_the_graph_litert_sees(tflite_bytes, reference):
    ops = [o for o in reference.interpreter._get_ops_details() if o["op_name"] != "DELEGATE"]  # XNNPACK's node
    parsed = _tool().read_tflite(tflite_bytes)["operators"]
    assert len(parsed) == len(ops) == 246
    for ours, theirs in zip(parsed, ops, strict=True):
        assert (ours["op"] if ours["op"] != "CUSTOM" else ours["custom_code"]) == theirs["op_name"]
        assert ours["inputs"] == list(theirs["inputs"]) and ours["outputs"] == list(theirs["outputs"])


# What the converter makes of either build of the model (PyPI wheel or npm package): the same file.
PARAMS_SHA256 = "a8877ebcf5db3e184e42bdc6127a121769e967b4b723316dc4c054f796af318f"
GRAPH_SHA256 = "d4fe0cb41daf531b3d76bf4f68f4c2d54402e0df7d2baa0395b5262467115e3f"


def test_conversion_is_deterministic(model, tflite_bytes):
    params, metadata = _tool().convert_tflite(tflite_bytes)
    assert metadata["params_sha256"] == model.metadata["params_sha256"] == PARAMS_SHA256
    assert metadata["graph_sha256"] == model.metadata["graph_sha256"] == GRAPH_SHA256
    assert metadata["source"]["sha256"] == hashlib.sha256(tflite_bytes).hexdigest()
    assert len(params) == 55 and len(metadata["graph"]["nodes"]) == 136


# ---------------------------------------------------------------------------------------------- the API


def test_person_segmentation_on_astronaut(model, photos):
    img = photos["astronaut"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", person.PersonSegmentationWarning)
        seg = person.person_segmentation(img, params=model)
    assert isinstance(seg, Segmentation) and seg.labels == ("background", "person")
    assert seg.hw == img.shape[:2] and seg.probability.shape == img.shape[:2]
    np.testing.assert_allclose(seg.masks.sum(0), 1.0)
    assert 0.45 < seg.person_fraction < 0.65  # measured 0.546: the astronaut and her helmet
    h, w = seg.hw

    def prob(fy, fx):
        return seg.probability[int(fy * h), int(fx * w)]

    assert prob(0.2, 0.43) > 0.9 and prob(0.6, 0.3) > 0.9  # face, suit
    assert prob(0.1, 0.03) < 0.1 and prob(0.2, 0.8) < 0.1  # flag (top left), shuttle (top right)
    soft = person.person_segmentation(img, threshold=None, params=model)
    np.testing.assert_allclose(soft.masks[1], seg.probability)
    assert abs(soft.person_fraction - seg.person_fraction) < 0.05


def test_segment_person_resizes_back(model, photos):
    img = photos["coffee"]  # 400x600: stretched to 256x256 and back
    prob = person.segment_person(img, params=model)
    assert prob.shape == (400, 600) and prob.dtype == np.float32
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    assert prob[200, 300] > 0.5 > prob[20, 20]  # the cup (!) vs the table corner


def test_warning_on_flat_image(model):
    for value in (0.0, 0.5, 1.0):
        with pytest.warns(person.PersonSegmentationWarning, match="give your own segmentation"):
            seg = person.person_segmentation(np.full((120, 160, 3), value, np.float32), params=model)
        assert seg.person_fraction == 0.0 and seg.labels == ("background", "person")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        person.person_segmentation(np.zeros((64, 64, 3), np.float32), params=model, warn=False)


def test_default_params_and_jit_speed(model):
    x = np.random.default_rng(1).random((256, 256, 3), dtype=np.float32)
    person.run_network(x)  # default file, compiles once
    t0 = time.perf_counter()
    for _ in range(3):
        person.run_network(x)
    per_call = (time.perf_counter() - t0) / 3
    assert per_call < 2.0, f"{per_call:.3f} s per 256x256 call"


def test_bad_threshold(model):
    with pytest.raises(ValueError, match="threshold"):
        person.person_segmentation(np.zeros((8, 8, 3), np.float32), threshold=1.5, params=model)


# ---------------------------------------------------------------------------------------------- file format


def test_missing_default_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGSTYLE_JAX_CACHE", str(tmp_path))
    with pytest.raises(WeightsError, match="segstyle fetch-models"):
        person.load_selfie_params()
    with pytest.raises(WeightsError, match="fetch-models"):
        person.segment_person(np.zeros((8, 8, 3), np.float32))


def _rewrite(src: Path, dst: Path, change) -> Path:
    with np.load(src, allow_pickle=False) as a:
        data = {k: a[k] for k in a.files}
    change(data)
    np.savez(dst, **data)
    return dst


def test_tampered_files_are_refused(model, tmp_path):
    src = person.default_selfie_path()

    def bump_weight(d):
        d["conv2d/kernel"] = d["conv2d/kernel"] + 1e-3

    def edit_graph(d):
        meta = json.loads(d[METADATA_KEY].tobytes())
        meta["graph"]["nodes"][0]["stride"] = [1, 1]
        d[METADATA_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)

    def edit_graph_and_checksum(d):
        meta = json.loads(d[METADATA_KEY].tobytes())
        meta["graph"]["nodes"][0]["stride"] = [1, 1]
        meta["graph_sha256"] = person.graph_sha256(meta["graph"])
        d[METADATA_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)

    for change, match in ((bump_weight, "checksum mismatch"), (edit_graph, "graph checksum"),
                          (edit_graph_and_checksum, "model says")):
        bad = _rewrite(src, tmp_path / f"{change.__name__}.npz", change)
        with pytest.raises(WeightsError, match=match):
            person.load_selfie_params(bad)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(src.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="not a readable"):
        person.load_selfie_params(truncated)


def test_save_is_atomic_and_reloads(model, tmp_path):
    out = person.save_selfie_params(tmp_path / "copy.npz", model.params, model.metadata)
    again = person.load_selfie_params(out)
    assert again.metadata == model.metadata
    assert [p.name for p in tmp_path.iterdir()] == ["copy.npz"]


def test_wrong_tflite_is_refused(tmp_path):
    tool = _tool()
    fake = tmp_path / "selfie_segmentation.tflite"
    fake.write_bytes(b"\0\0\0\0TFL3" + b"\0" * 100)
    with pytest.raises(WeightsError, match="sha256"):
        tool.obtain_tflite(fake)
    with pytest.raises(WeightsError, match="TFLite"):
        tool.read_tflite(b"not a model")


# ---------------------------------------------------------------------------------------------- op semantics


def _node(**kw):
    return {"output": "y", "activation": "NONE", **kw}


def test_transposed_conv_matches_brute_force():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 5, 4, 3)).astype(np.float32)
    k = rng.standard_normal((3, 3, 3, 2)).astype(np.float32)  # [kh, kw, in, out]
    b = rng.standard_normal(2).astype(np.float32)
    for padding in ("SAME", "VALID"):
        y = np.asarray(person._transpose_conv(jnp.asarray(x), jnp.asarray(k), jnp.asarray(b),
                                              _node(padding=padding, stride=[2, 2])))
        full = np.zeros((1, (5 - 1) * 2 + 3, (4 - 1) * 2 + 3, 2), np.float32)
        for iy in range(5):
            for ix in range(4):
                full[0, iy * 2:iy * 2 + 3, ix * 2:ix * 2 + 3] += np.einsum("c,hwco->hwo", x[0, iy, ix], k)
        if padding == "SAME":  # out = in * stride; total crop 1 -> 0 before, 1 after
            full = full[:, :10, :8]
        np.testing.assert_allclose(y, full + b, rtol=1e-5, atol=1e-5)


def test_same_padding_is_bottom_right_heavy_and_pool_counts_real_pixels():
    assert person._padding("SAME", 8, 3, 2) == (4, (0, 1))
    assert person._padding("SAME", 7, 3, 2) == (4, (1, 1))
    assert person._padding("SAME", 6, 4, 1) == (6, (1, 2))
    assert person._padding("VALID", 7, 3, 2) == (3, (0, 0))
    x = jnp.ones((1, 3, 3, 1))
    y = person._average_pool(x, _node(padding="SAME", stride=[2, 2], window=[2, 2]))
    np.testing.assert_allclose(np.asarray(y), 1.0)  # padded zeros are not averaged in


def test_resize_bilinear_flags():
    x = jnp.arange(4, dtype=jnp.float32).reshape(1, 1, 4, 1) * jnp.ones((1, 2, 1, 1))

    def row(ac, hp, size=8):
        node = _node(size=[2, size], align_corners=ac, half_pixel_centers=hp)
        return np.asarray(person._resize_bilinear(x, node))[0, 0, :, 0]

    np.testing.assert_allclose(row(False, False), [0, .5, 1, 1.5, 2, 2.5, 3, 3])
    np.testing.assert_allclose(row(False, True), [0, .25, .75, 1.25, 1.75, 2.25, 2.75, 3])
    np.testing.assert_allclose(row(True, False, 7), [0, .5, 1, 1.5, 2, 2.5, 3])
