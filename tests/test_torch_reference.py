"""bench/torch_reference.py computes what the JAX engine computes: loss, gradient and one Adam step.

A seeded random VGG16 (He-initialised so that every tap carries signal) goes through the converter;
the JAX engine and the PyTorch reference then see the same weight file, images, masks and weights.
Images are tiny and non-square (48 x 40, styles 44 x 36) so odd sizes after pooling are exercised.
"""

import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for bench/

from bench import torch_reference as ref  # noqa: E402
from segstyle_jax import engine  # noqa: E402
from segstyle_jax.config import LossWeights, StepConfig  # noqa: E402
from segstyle_jax.convert import convert_torch_file  # noqa: E402
from segstyle_jax.weights import load_weights  # noqa: E402
from torch_vgg import TorchVGG  # noqa: E402

H, W = 48, 40
RTOL = 1e-4


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny images gain nothing from threads, and OpenMP barriers crawl on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = TorchVGG("vgg16")
    with torch.no_grad():
        for layer in model.features:
            if isinstance(layer, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                layer.bias.uniform_(-0.05, 0.05)
    d = tmp_path_factory.mktemp("weights")
    torch.save(model.state_dict(), d / "vgg16.pth")
    return load_weights(convert_torch_file(d / "vgg16.pth", d / "vgg16.npz"))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W] / np.array([H, W])[:, None, None]
    content = np.stack([yy, xx, 0.5 + 0.3 * np.sin(6 * yy + 4 * xx)], -1)
    content = np.clip(content + 0.05 * rng.standard_normal((H, W, 3)), 0, 1).astype(np.float32)
    styles = [rng.uniform(0, 1, (44, 36, 3)).astype(np.float32),
              np.clip(np.cumsum(rng.uniform(-0.2, 0.2, (44, 36, 3)), axis=1) + 0.5, 0, 1).astype(np.float32)]
    return content, styles


def two_segments():
    """Left 26 columns / the rest, with a soft one-pixel seam."""
    m = np.zeros((2, H, W), np.float32)
    m[0, :, :26] = 1
    m[0, :, 26] = 0.4
    m[1] = 1 - m[0]
    return m


def three_segments():
    """Segment 2 lives in the last 8 columns only: after four 2x2 pools (40 -> 2 columns, floor on odd
    sizes) its relu5_1 mask is all zero, so the area < 1e-3 rule must drop that layer."""
    m = np.zeros((3, H, W), np.float32)
    m[0, :24, :32] = 1
    m[1, 24:, :32] = 1
    m[2, :, 32:] = 1
    return m


def segment_styles(approach, k, hs=44, ws=36):
    if approach == "localized":
        top = np.zeros((hs, ws), np.float32)
        top[: hs // 2] = 1
        left = np.zeros((hs, ws), np.float32)
        left[:, : ws // 3] = 1
        left[:, ws // 3] = 0.5
        parts = [((0, 1.0, top),), ((0, 0.3, None), (1, 0.7, left)), ((1, 1.0, None),)]
    else:
        parts = [((0, 1.0, None),), ((1, 1.0, None),), ((0, 0.5, None), (1, 0.5, None))]
    return [engine.SegmentStyle(p) for p in parts[:k]]


def build(weights, images, approach, seg_masks, pooling="max"):
    content, styles = images
    k = seg_masks.shape[0]
    cfg = StepConfig(approach, H, W, k, optimizer="adam", learning_rate=0.02, pooling=pooling)
    lw = LossWeights.create(cfg, content=1.0, style=1e3, tv=10.0, segments=np.linspace(1.0, 0.5, k),
                            layers=[1.0, 0.8, 0.6, 0.4, 0.2], gamma=0.7, rho=3.0)
    model, smodel = weights.model(cfg.taps, pooling), weights.model(cfg.style_taps, pooling)
    seg = segment_styles(approach, k)
    st = engine.segment_targets(smodel, weights.params, styles, seg)
    tg = engine.make_targets(cfg, model, weights.params, content, seg_masks, st)
    init = np.broadcast_to(content, (k, H, W, 3)) if approach == "multipass" else content
    # start away from the content image, so that the content loss and its gradient are not zero
    noise = np.random.default_rng(1).uniform(-0.1, 0.1, init.shape).astype(np.float32)
    init = np.clip(init + noise, 0, 1).astype(np.float32)
    torch_ref = ref.from_step_config(weights, cfg, lw, content, seg_masks, styles, seg, init=init)
    return cfg, lw, model, tg, torch_ref, init


def record_gradient() -> optax.GradientTransformation:
    """Passes updates through unchanged and keeps the last gradient in its state, so one compiled
    engine step yields the loss, the exact gradient (``jax.value_and_grad`` of the engine's loss,
    taken inside ``update``) and the Adam step: one compilation per case instead of two."""
    return optax.GradientTransformation(init=lambda p: jnp.zeros_like(p), update=lambda g, s, p=None: (g, g))


CASES = [("multipass", two_segments), ("blended", two_segments), ("locality", two_segments),
         ("localized", two_segments), ("localized", three_segments)]


@pytest.mark.parametrize("approach,masks_fn", CASES, ids=[f"{a}-K{m().shape[0]}" for a, m in CASES])
def test_loss_gradient_and_adam_step_match_jax(weights, images, approach, masks_fn):
    seg_masks = masks_fn()
    cfg, lw, model, tg, torch_ref, init = build(weights, images, approach, seg_masks)

    with jax.default_matmul_precision("highest"):
        init_fn, update = engine.make_update_fn(cfg, model, optax.chain(record_gradient(), optax.adam(cfg.learning_rate)),
                                                params=weights.params)
        state, info = update(init_fn(init), tg, lw)
    value, grad = float(info["loss"]), np.asarray(state.opt_state[0])
    t_value, t_grad = torch_ref.loss_and_grad(init)

    assert np.isfinite(value) and float(info["content"]) > 0 and float(info["tv"]) > 0
    assert np.all(np.asarray(info["per_segment"]) > 0)  # every segment's style loss takes part
    assert abs(t_value - value) / abs(value) < RTOL
    assert t_grad.shape == grad.shape == init.shape
    assert rel_err(t_grad, grad) < RTOL

    # One Adam step from both sides, from the same image, then the clip to [0, 1].
    t_loss = torch_ref.step()
    assert abs(t_loss - value) / abs(value) < RTOL
    jax_image = np.asarray(state.image)
    assert not np.allclose(jax_image, init)  # the step did move the image
    np.testing.assert_allclose(torch_ref.image, jax_image, rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("approach", ["multipass", "locality"])
def test_winograd_step_matches_torch(weights, images, approach):
    """The step with Winograd convolutions (what ``stylize`` runs on CPU) computes the same loss and
    gradient as PyTorch's direct convolutions."""
    cfg, lw, _, tg, torch_ref, init = build(weights, images, approach, two_segments())
    init_fn, update = engine.make_update_fn(cfg, weights.model(cfg.taps, conv="winograd"),
                                            optax.chain(record_gradient(), optax.adam(cfg.learning_rate)),
                                            params=weights.params)
    state, info = update(init_fn(init), tg, lw)
    t_value, t_grad = torch_ref.loss_and_grad(init)
    assert abs(t_value - float(info["loss"])) / abs(t_value) < RTOL
    assert rel_err(t_grad, state.opt_state[0]) < RTOL


@pytest.mark.parametrize("approach", ["multipass", "locality"])
def test_average_pooling_step_matches_torch(weights, images, approach):
    """With average pooling (``--pooling avg``; ``nn.AvgPool2d`` in the reference, a reshape and
    mean in the JAX model) the two compute the same loss and gradient too, and not those of max
    pooling."""
    cfg, lw, model, tg, torch_ref, init = build(weights, images, approach, two_segments(), pooling="avg")
    assert cfg.pooling == model.pooling == "avg"
    with jax.default_matmul_precision("highest"):
        init_fn, update = engine.make_update_fn(cfg, model, optax.chain(record_gradient(), optax.adam(cfg.learning_rate)),
                                                params=weights.params)
        state, info = update(init_fn(init), tg, lw)
    t_value, t_grad = torch_ref.loss_and_grad(init)
    assert abs(t_value - float(info["loss"])) / abs(t_value) < RTOL
    assert rel_err(t_grad, state.opt_state[0]) < RTOL
    max_value, _ = build(weights, images, approach, two_segments())[4].loss_and_grad(init)
    assert abs(max_value - t_value) / abs(t_value) > 1e-3


def test_bfloat16_step_stays_close_to_float32_and_to_torch_in_bfloat16(weights, images):
    """``compute_dtype='bfloat16'``: the VGG layers round to bfloat16 (so the loss moves off the
    float32 one, but by well under 1%, and the gradient keeps its direction), PyTorch's bfloat16 VGG
    computes the same, and the image and optimizer state stay float32."""
    seg_masks = two_segments()
    cfg, lw, model, tg, _, init = build(weights, images, "locality", seg_masks)
    results = {}
    for dtype in ("float32", "bfloat16"):
        c = dataclasses.replace(cfg, compute_dtype=dtype)
        init_fn, update = engine.make_update_fn(c, model, optax.chain(record_gradient(), optax.adam(c.learning_rate)),
                                                params=weights.params)
        state, info = update(init_fn(init), tg, lw)
        results[dtype] = float(info["loss"]), np.asarray(state.opt_state[0])
        assert state.image.dtype == jnp.float32
    (v32, g32), (v16, g16) = results["float32"], results["bfloat16"]
    content, styles = images
    torch16 = ref.from_step_config(weights, dataclasses.replace(cfg, compute_dtype="bfloat16"), lw, content, seg_masks,
                                   styles, segment_styles("locality", 2), init=init)
    t16, tg16 = torch16.loss_and_grad(init)

    def cosine(a, b):
        return float(np.sum(a * b) / np.linalg.norm(a) / np.linalg.norm(b))

    assert 1e-6 < abs(v16 - v32) / v32 < 5e-3  # rounded, and not by much (measured: 5e-4)
    assert abs(t16 - v16) / v16 < 5e-3
    assert cosine(g16, g32) > 0.98 and cosine(tg16, g16) > 0.98  # measured: 0.995, 0.994


def test_recorded_gradient_is_value_and_grad_of_the_loss(weights, images):
    """The gradient read from the update step above is ``jax.value_and_grad`` of ``one_image_loss``."""
    cfg, lw, model, tg, _, init = build(weights, images, "blended", two_segments())
    with jax.default_matmul_precision("highest"):
        (value, _), grad = jax.jit(jax.value_and_grad(
            lambda x: engine.one_image_loss(cfg, model, x, weights.params, tg, lw), has_aux=True))(jnp.asarray(init))
        init_fn, update = engine.make_update_fn(cfg, model, optax.chain(record_gradient(), optax.adam(cfg.learning_rate)),
                                                params=weights.params)
        state, info = update(init_fn(init), tg, lw)
    assert float(info["loss"]) == pytest.approx(float(value), rel=1e-6)
    assert rel_err(state.opt_state[0], grad) < 1e-6


def test_vanishing_layer_contributes_nothing(weights, images):
    """Segment 2's relu5_1 mask is empty; its error there would be large (G = 0 against A != 0) but
    must count as zero, so giving relu5_1 any weight changes nothing for that segment."""
    content, styles = images
    seg_masks = three_segments()
    area = ref.pooled_masks(torch.as_tensor(seg_masks), ["relu5_1"])["relu5_1"].sum((1, 2))
    assert float(area[2]) == 0.0 and float(area[0]) > 0

    problem = ref.TorchStyleTransfer(weights, "blended", content, seg_masks, styles, segment_styles("blended", 3),
                                     segment_weights=[0.0, 0.0, 1.0])
    x = ref._nchw(content)
    with torch.no_grad():
        g, _ = ref.masked_grams(problem.vgg(x)["relu5_1"][0], problem.layer_masks["relu5_1"])
        assert float(ref.style_error(g, problem.targets["relu5_1"])[2]) > 0  # what the rule drops
        problem.layer_weights["relu5_1"] = 0.0
        without = float(problem.loss(x))
        problem.layer_weights["relu5_1"] = 5.0
        assert without > 0 and float(problem.loss(x)) == without
