"""The compiled update step: vmap vs loop, no recompilation, the four approaches, safety."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segstyle_jax import engine, losses, masks as masks_lib
from segstyle_jax.config import LossWeights, StepConfig

H, W = 32, 40
STYLE_TAPS = ("relu1_1", "relu2_1", "relu3_1")
CONTENT_TAPS = ("relu2_2",)


def setup(weights, approach, K=2, optimizer="adam", seed=0):
    rng = np.random.default_rng(seed)
    config = StepConfig(approach, H, W, K, STYLE_TAPS, CONTENT_TAPS, optimizer=optimizer)
    model, style_model = weights.model(config.taps), weights.model(config.style_taps)
    content = rng.uniform(0, 1, (H, W, 3)).astype(np.float32)
    styles = [rng.uniform(0, 1, (24, 28, 3)).astype(np.float32) ** (k + 1) for k in range(K)]
    labels = (np.arange(W)[None, :] * K // W).repeat(H, 0)
    seg = masks_lib.from_label_map(labels)
    targets_style = engine.segment_targets(style_model, weights.params, styles,
                                           [engine.SegmentStyle(((k, 1.0, None),)) for k in range(K)])
    targets = engine.make_targets(config, model, weights.params, content, seg.masks, targets_style)
    start = np.broadcast_to(content, (K, H, W, 3)) if approach == "multipass" else content
    return config, model, targets, start, styles, seg


@pytest.mark.parametrize("approach", ["blended", "locality"])
def test_vmap_over_segments_equals_a_python_loop(random_weights, approach):
    config, model, targets, start, _, _ = setup(random_weights, approach, K=3)
    weights = LossWeights.create(config, segments=[1.0, 2.0, 0.5], layers=[1.0, 0.5, 2.0])
    _, terms = engine.one_image_loss(config, model, jnp.asarray(start), random_weights.params, targets, weights)
    feats = model.apply(random_weights.variables(), jnp.asarray(start))
    seg_masks = targets.masks
    if config.use_locality:
        seg_masks = masks_lib.locality_weighted_masks(seg_masks, targets.dist, weights.gamma, weights.rho)
    loop = []
    for k in range(3):
        lm = masks_lib.layer_masks(seg_masks[k], STYLE_TAPS)
        loop.append(losses.segment_style_loss(feats, lm, {t: targets.style[t][k] for t in STYLE_TAPS},
                                              {t: weights.layers[i] for i, t in enumerate(STYLE_TAPS)}))
    np.testing.assert_allclose(terms["per_segment"], np.array(loop), rtol=1e-5)
    np.testing.assert_allclose(terms["style"], np.dot([1.0, 2.0, 0.5], loop), rtol=1e-5)


def test_second_step_and_new_weights_do_not_recompile(random_weights):
    config, model, targets, start, _, _ = setup(random_weights, "locality")
    init, update = engine.make_update_fn(config, model, params=random_weights.params)
    state = init(start)
    state, _ = update(state, targets, LossWeights.create(config))
    state, _ = update(state, targets, LossWeights.create(config))
    changed = LossWeights.create(config, content=3.0, style=10.0, tv=0.0, segments=[0.1, 5.0],
                                 layers=[0.0, 1.0, 2.0], gamma=0.2, rho=30.0)
    state, info = update(state, targets, changed)
    assert update._cache_size() == 1
    assert int(state.step) == 3 and bool(info["finite"])


# optax's zoom line search (``lbfgs``) is the same code for every approach, and slow to compile: it runs
# for the batched image (multipass) and for one image (locality); the other two optimizers for all four.
@pytest.mark.parametrize("approach, optimizer", [
    (approach, optimizer) for approach in ("multipass", "blended", "locality", "localized")
    for optimizer in ("adam", "lbfgs", "lbfgs-fixed")
    if optimizer != "lbfgs" or approach in ("multipass", "locality")])
def test_every_approach_and_optimizer_lowers_the_loss(random_weights, approach, optimizer):
    config, model, targets, start, _, _ = setup(random_weights, approach, optimizer=optimizer)
    init, update = engine.make_update_fn(config, model, params=random_weights.params)
    weights = LossWeights.create(config, style=1e2)
    state, log = engine.optimize(update, init(start), targets, weights, 6)
    assert log.stopped == "completed" and len(log.losses) == 6
    assert log.losses[-1] < 0.9 * log.losses[0]
    image = np.asarray(state.image)
    assert image.shape == np.shape(start) and image.min() >= 0 and image.max() <= 1


@pytest.mark.parametrize("grams", ["per-image", "batched"])
def test_multipass_images_are_independent_unmasked_runs(random_weights, grams):
    """Image k of multipass gets exactly the gradient of a plain single-image Gatys loss with style k,
    whichever way the step forms its Grams (``StepConfig.multipass_grams``)."""
    config, model, targets, start, _, _ = setup(random_weights, "multipass")
    config = dataclasses.replace(config, multipass_grams=grams)
    weights = LossWeights.create(config, segments=[1.0, 3.0])
    grad = jax.jit(jax.grad(lambda x: engine.multipass_loss(config, model, x, random_weights.params, targets,
                                                            weights)[0]))(jnp.asarray(start) * 0.9)
    for k in range(2):
        def single(x, k=k):
            f = model.apply(random_weights.variables(), x)
            style = sum(losses.style_error(losses.gram(f[t]), targets.style[t][k]) for t in STYLE_TAPS)
            content = losses.content_loss(f["relu2_2"], targets.content["relu2_2"])
            return weights.content * content + weights.style * weights.segments[k] * style \
                + weights.tv * losses.total_variation(x)
        np.testing.assert_allclose(grad[k], jax.jit(jax.grad(single))(jnp.asarray(start[k]) * 0.9), rtol=1e-4,
                                   atol=1e-7)


def test_locality_with_gamma_zero_is_blended(random_weights):
    config_b, model, targets_b, start, _, _ = setup(random_weights, "blended")
    config_l, _, targets_l, _, _, _ = setup(random_weights, "locality")
    x = jnp.asarray(start)
    b = engine.one_image_loss(config_b, model, x, random_weights.params, targets_b, LossWeights.create(config_b))[0]
    l0 = engine.one_image_loss(config_l, model, x, random_weights.params, targets_l,
                               LossWeights.create(config_l, gamma=0.0))[0]
    l8 = engine.one_image_loss(config_l, model, x, random_weights.params, targets_l,
                               LossWeights.create(config_l, gamma=0.8))[0]
    np.testing.assert_allclose(l0, b, rtol=1e-6)
    assert abs(float(l8) - float(b)) > 1e-3 * abs(float(b))


def test_region_targets(random_weights):
    """A whole-image region gives the plain Gram; a half region gives that half's masked Gram;
    a blend of two styles is the weighted mean of their Grams."""
    _, _, _, _, styles, _ = setup(random_weights, "localized")
    model = random_weights.model(STYLE_TAPS)
    p = random_weights.params
    whole = engine.segment_targets(model, p, styles, [engine.SegmentStyle(((0, 1.0, None),))])
    ones = engine.segment_targets(model, p, styles, [engine.SegmentStyle(((0, 1.0, np.ones((24, 28), np.float32)),))])
    for t in STYLE_TAPS:
        np.testing.assert_allclose(whole[t], ones[t], rtol=1e-5)
    half = np.zeros((24, 28), np.float32)
    half[:, :14] = 1
    regional = engine.segment_targets(model, p, styles, [engine.SegmentStyle(((0, 1.0, half),))])
    feats = model.apply(random_weights.variables(), jnp.asarray(styles[0]))
    expected = losses.masked_gram(feats["relu2_1"], masks_lib.layer_masks(jnp.asarray(half), ("relu2_1",))["relu2_1"])[0]
    np.testing.assert_allclose(regional["relu2_1"][0], expected, rtol=1e-5)
    blend = engine.segment_targets(model, p, styles, [engine.SegmentStyle(((0, 3.0, None), (1, 1.0, None)))])
    other = engine.segment_targets(model, p, styles, [engine.SegmentStyle(((1, 1.0, None),))])
    np.testing.assert_allclose(blend["relu3_1"], 0.75 * whole["relu3_1"] + 0.25 * other["relu3_1"], rtol=1e-5)


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs-fixed"])
def test_non_finite_loss_keeps_the_last_good_image(random_weights, optimizer):
    config, model, targets, start, _, _ = setup(random_weights, "blended", optimizer=optimizer)
    init, update = engine.make_update_fn(config, model, params=random_weights.params)
    good = LossWeights.create(config)
    state, _ = update(init(start), targets, good)
    state, _ = update(state, targets, good)
    last_good = np.asarray(state.image).copy()
    opt_before = [np.asarray(a).copy() for a in jax.tree.leaves(state.opt_state)]
    bad = good.replace(content=jnp.float32(np.nan))
    state, log = engine.optimize(update, state, targets, bad, 5)
    assert "non-finite loss" in log.stopped and "step 1" in log.stopped
    np.testing.assert_array_equal(np.asarray(state.image), last_good)
    # the optimizer's update was skipped: its state (Adam's moments, L-BFGS's pairs) as before
    for before, after in zip(opt_before, jax.tree.leaves(state.opt_state), strict=True):
        np.testing.assert_array_equal(np.asarray(after), before)
    state, info = update(state, targets, good)  # and the run can go on from there
    assert bool(info["finite"]) and not np.array_equal(np.asarray(state.image), last_good)


def test_bad_shapes_are_rejected(random_weights):
    config, model, targets, start, _, seg = setup(random_weights, "blended")
    init, _ = engine.make_update_fn(config, model, params=random_weights.params)
    with pytest.raises(ValueError, match="initial image has shape"):
        init(np.zeros((H + 1, W, 3), np.float32))
    with pytest.raises(ValueError, match="masks have shape"):
        engine.make_targets(config, model, random_weights.params, start, seg.masks[:, :-1], targets.style)
    with pytest.raises(ValueError, match="3 segment weights given for 2 segments"):
        LossWeights.create(config, segments=[1, 1, 1])
    with pytest.raises(ValueError, match="2 layer weights given for 3 style layers"):
        LossWeights.create(config, layers=[1, 1])
    with pytest.raises(ValueError, match="gamma must be in"):
        LossWeights.create(config, gamma=1.5)
    with pytest.raises(ValueError, match="approach must be one of"):
        StepConfig("fancy", H, W, 2)
    with pytest.raises(ValueError, match="multipass_grams must be one of"):
        StepConfig("multipass", H, W, 2, multipass_grams="vmap")
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="lbfgs_memory must be a positive integer"):
            StepConfig("blended", H, W, 2, lbfgs_memory=bad)


@pytest.mark.parametrize("optimizer", ["lbfgs", "lbfgs-fixed"])
def test_lbfgs_keeps_the_configured_number_of_pairs(optimizer):
    config = StepConfig("blended", H, W, 2, optimizer=optimizer, lbfgs_memory=np.int64(3))
    assert config.lbfgs_memory == 3 and type(config.lbfgs_memory) is int
    state = engine.make_optimizer(config).init(jnp.zeros((H, W, 3)))
    # segstyle_jax.lbfgs keeps the pairs' s and y as the rows of one [2 x memory, pixels x 3] array
    memories = [leaf.shape for leaf in jax.tree.leaves(state) if leaf.ndim == 2 and leaf.shape[1] == H * W * 3]
    assert memories == [(2 * 3, H * W * 3)]


def test_compile_options_are_tried_and_dropped_when_unknown(random_weights, monkeypatch):
    config, model, targets, start, _, _ = setup(random_weights, "blended")
    init, update = engine.make_update_fn(config, model, params=random_weights.params)
    lowered = update.lower(init(start), targets, LossWeights.create(config))
    assert engine.compiler_options() == engine.CPU_COMPILER_OPTIONS  # the tests run on CPU
    monkeypatch.setattr(engine, "CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option": ""})
    with pytest.raises(jax.errors.JaxRuntimeError, match="compile option"):
        lowered.compile(compiler_options=engine.compiler_options())
    compiled = engine.compile_lowered(lowered)  # falls back to XLA's defaults
    state, info = compiled(init(start), targets, LossWeights.create(config))
    assert bool(info["finite"])
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_no_such_option=x")
    assert engine.compiler_options() == {}  # set by the user: left to XLA_FLAGS


def test_available_memory_counts_what_the_kernel_can_free():
    have = engine.available_memory_bytes()
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    free_pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < have <= total
    if os.path.exists("/proc/meminfo"):  # MemAvailable: free pages plus the droppable page cache
        assert have >= 0.9 * free_pages


@pytest.mark.parametrize("approach", ["multipass", "localized"])
def test_targets_spec_has_the_shapes_of_the_targets(random_weights, approach):
    # stylize compiles the step from targets_spec while make_targets runs: the two must agree leaf by leaf
    config, model, targets, start, _, _ = setup(random_weights, approach, K=3)
    spec = engine.targets_spec(config, model, random_weights.params)
    got = jax.tree.map(lambda s: (s.shape, s.dtype), spec)
    want = jax.tree.map(lambda a: (a.shape, a.dtype), targets)
    assert got == want
    init, update = engine.make_update_fn(config, model, params=random_weights.params)
    compiled, _, _ = engine.compile_update(update, init(start), spec, LossWeights.create(config), config)
    _, info = compiled(init(start), targets, LossWeights.create(config))  # compiled from shapes, run on values
    assert np.isfinite(float(info["loss"]))


@pytest.mark.parametrize("conv", ["direct", "auto"])
def test_step_takes_the_weights_as_arguments(random_weights, conv):
    """The VGG weights (and their Winograd transforms) are arguments of the compiled step, put on the
    device once: the program holds no copy of them, and computes the loss of the plain function."""
    config, _, targets, start, _, _ = setup(random_weights, "locality")
    model = random_weights.model(config.taps, conv=conv)
    weights = LossWeights.create(config)
    init, update = engine.make_update_fn(config, model, params=random_weights.params)
    assert isinstance(update, engine.BoundStep)
    assert ("u" in update.bound["prepared"]["conv2_1"]) == (conv != "direct")  # Winograd transforms only if used
    assert sorted(update.bound["params"]) == ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1"]  # to relu3_1
    used_bytes = sum(np.asarray(a).nbytes for a in jax.tree.leaves(update.bound["params"]))  # 2.2 MB
    lowered = update.lower(init(start), targets, weights)
    assert len(lowered.as_text()) < used_bytes / 2  # as constants, the text would hold them in hex
    compiled = lowered.compile()
    assert compiled.memory_analysis().argument_size_in_bytes > used_bytes
    _, info = compiled(init(start), targets, weights)
    want, _ = engine.one_image_loss(config, random_weights.model(config.taps), jnp.asarray(start),
                                    random_weights.params, targets, weights)
    assert abs(float(info["loss"]) - float(want)) <= 1e-5 * abs(float(want))
