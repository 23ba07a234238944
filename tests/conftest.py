import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# the CLI keeps compiled programs in ~/.cache unless told not to: tests that run it in this process
# must neither write there nor turn JAX's persistent cache on for the tests after them
os.environ["SEGSTYLE_JAX_COMPILE_CACHE"] = "off"
sys.path.insert(0, str(Path(__file__).parent))  # test helpers such as torch_vgg.py


def random_vgg_params(arch: str = "vgg16", seed: int = 0) -> dict:
    """He-initialised random VGG parameters (activations keep their scale through the layers)."""
    from segstyle_jax import vgg

    rng = np.random.default_rng(seed)
    return {name: {"kernel": rng.normal(0, np.sqrt(2 / (9 * k[2])), k).astype(np.float32),
                   "bias": rng.normal(0, 0.01, b).astype(np.float32)}
            for name, (k, b) in vgg.conv_shapes(arch).items()}


@pytest.fixture(scope="session")
def random_weights():
    """In-memory random VGG16 weights (VGGWeights), for fast mechanical tests."""
    from segstyle_jax.weights import VGGWeights, make_metadata

    params = random_vgg_params()
    return VGGWeights(params=params, metadata=make_metadata("vgg16", params, {"kind": "random test weights"}))


@pytest.fixture(scope="session")
def random_weights_file(tmp_path_factory, random_weights):
    from segstyle_jax.weights import save_weights

    path = tmp_path_factory.mktemp("weights") / "random_vgg16.npz"
    return save_weights(path, random_weights.params, random_weights.metadata)


@pytest.fixture(scope="session")
def tiny_scene():
    """A 40x48 synthetic photo, two half-plane segments, two distinct style images."""
    rng = np.random.default_rng(0)
    h, w = 40, 48
    yy, xx = np.mgrid[:h, :w]
    content = np.stack([xx / w, yy / h, 0.5 + 0.3 * np.sin(xx / 5)], -1).astype(np.float32)
    labels = (xx > w // 2).astype(np.int32)
    stripes = np.stack([(np.sin(np.mgrid[:32, :32][1] / 2) > 0)] * 3, -1).astype(np.float32)
    noise = rng.uniform(0, 1, (32, 32, 3)).astype(np.float32)
    return {"content": content, "labels": labels, "styles": {"0": stripes, "1": noise}}


@pytest.fixture(autouse=True)
def _fresh_step_cache():
    """Every test starts with an empty in-process step cache: a step an earlier test compiled would
    otherwise skip the compile (and the functions a test replaces to watch it)."""
    from segstyle_jax import step_cache

    step_cache.clear()
    yield


@pytest.fixture
def step_cache_off():
    """The in-process step cache turned off for one test (every stylize call compiles its steps)."""
    from segstyle_jax import step_cache

    before = step_cache.stats()["max_entries"]
    step_cache.set_max_entries(0)
    yield
    step_cache.set_max_entries(before)


@pytest.fixture
def batched_step_too_big(monkeypatch):
    """``engine.compile_update`` refusing every step of more than one image (``MemoryError``), as if
    a batched multipass step did not fit; returns the real ``compile_update``."""
    from segstyle_jax import engine

    compile_update = engine.compile_update

    def small_memory(update, state, targets, weights, config, available_bytes=None):
        if config.num_images > 1:
            raise MemoryError("pretend the batched step does not fit")
        return compile_update(update, state, targets, weights, config, available_bytes)

    monkeypatch.setattr(engine, "compile_update", small_memory)
    return compile_update
