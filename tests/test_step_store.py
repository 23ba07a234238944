"""The step store: a compiled update step written once, loaded later without tracing, with the same
result; keyed by everything the program is made of; a bad file is compiled again."""

import dataclasses
import warnings

import jax
import numpy as np
import optax
import pytest

from segstyle_jax import compile_cache, engine, masks as masks_lib, step_store
from segstyle_jax.config import LossWeights, StepConfig

H, W = 24, 32
STYLE_TAPS = ("relu1_1", "relu2_1")
CONTENT_TAPS = ("relu2_2",)


@pytest.fixture
def store_dir(tmp_path, monkeypatch):
    """The store on, in a temporary folder (JAX's own cache configuration is left alone)."""
    folder = tmp_path / "steps"
    monkeypatch.setattr(step_store, "directory", lambda: folder)
    step_store.reset_counts()
    yield folder
    step_store.reset_counts()


def problem(weights, config=None, h=H, w=W):
    rng = np.random.default_rng(0)
    config = config or StepConfig("locality", h, w, 2, STYLE_TAPS, CONTENT_TAPS, optimizer="lbfgs-fixed")
    content = rng.uniform(0, 1, (config.height, config.width, 3)).astype(np.float32)
    styles = [rng.uniform(0, 1, (20, 20, 3)).astype(np.float32) ** (k + 1) for k in range(2)]
    seg = masks_lib.from_label_map((np.arange(config.width)[None, :] * 2 // config.width).repeat(config.height, 0))
    style_targets = engine.segment_targets(weights.model(config.style_taps), weights.params, styles,
                                           [engine.SegmentStyle(((k, 1.0, None),)) for k in range(2)])
    targets = engine.make_targets(config, weights.model(config.taps), weights.params, content, seg.masks,
                                  style_targets)
    return config, targets, LossWeights.create(config), content


def run(compiled, init, start, targets, weights, steps=3):
    state, losses = init(start), []
    for _ in range(steps):
        state, info = compiled(state, targets, weights)
        losses.append(float(info["loss"]))
    return losses, np.asarray(state.image)


def test_a_stored_step_loads_without_tracing_and_computes_the_same(random_weights, store_dir, monkeypatch):
    config, targets, weights, content = problem(random_weights)
    model = random_weights.model(config.taps, conv="winograd")
    init, update = engine.make_update_fn(config, model, params=random_weights.params)
    compiled, _, need = engine.compile_update(update, init(content), targets, weights, config)
    assert len(list(store_dir.glob("*.step"))) == 1 and step_store.counts()["stored"] == 1
    fresh = run(compiled, init, content, targets, weights)

    # a new step of the same recipe, as a later process builds it: loaded, never lowered
    init2, update2 = engine.make_update_fn(config, model, params=random_weights.params)
    monkeypatch.setattr(engine.BoundStep, "lower", lambda *a, **k: pytest.fail("a stored step was traced"))
    loaded, _, need2 = engine.compile_update(update2, init2(content), targets, weights, config)
    assert step_store.counts() == {"loaded": 1, "stored": 1, "unreadable": 0, "refused": 0}
    assert need2 == need  # XLA's memory estimate comes with the loaded executable
    again = run(loaded, init2, content, targets, weights)
    assert again[0] == fresh[0] and np.array_equal(again[1], fresh[1])


def test_the_key_covers_what_the_program_is_made_of(random_weights, store_dir, monkeypatch):
    config, targets, weights, content = problem(random_weights)
    model = random_weights.model(config.taps)

    def key(config=config, model=model, targets=targets, weights=weights, start=content, options=None):
        init, update = engine.make_update_fn(config, model, params=random_weights.params)
        return step_store.step_key(update.program_key, (init(start), targets, weights, update.bound),
                                   engine.compiler_options() if options is None else options)

    base = key()
    assert key() == base  # the same recipe and shapes, built again
    # loss weights and targets are arguments: other values, the same program
    assert key(weights=LossWeights.create(config, style=3.0, gamma=0.1)) == base
    assert key(targets=problem(random_weights)[1]) == base
    other_config, other_targets, other_weights, other_content = problem(random_weights, h=H + 8)
    different = {
        "learning rate": key(config=dataclasses.replace(config, learning_rate=0.5)),
        "memory": key(config=dataclasses.replace(config, lbfgs_memory=3)),
        "convolution": key(model=random_weights.model(config.taps, conv="winograd")),
        "pooling": key(model=random_weights.model(config.taps, pooling="avg")),
        "shapes": key(config=other_config, targets=other_targets, weights=other_weights, start=other_content),
        "compile options": key(options={"xla_cpu_enable_fast_math": True}),
    }
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_thunk_runtime=true")
    different["XLA_FLAGS"] = key()
    monkeypatch.delenv("XLA_FLAGS")
    before = jax.config.jax_default_matmul_precision
    jax.config.update("jax_default_matmul_precision", "highest")
    try:
        different["matmul precision"] = key()
    finally:
        jax.config.update("jax_default_matmul_precision", before)
    with monkeypatch.context() as m:
        m.setattr(step_store, "_host_cpu", lambda: "another CPU, without AVX-512")
        different["CPU"] = key()
    monkeypatch.setattr(step_store, "_source_digest", "changed source")
    different["source"] = key()
    assert base not in different.values() and len(set(different.values())) == len(different), different


def test_an_unreadable_file_is_compiled_again_and_replaced(random_weights, store_dir):
    config, targets, weights, content = problem(random_weights)
    model = random_weights.model(config.taps)
    init, update = engine.make_update_fn(config, model, params=random_weights.params)
    engine.compile_update(update, init(content), targets, weights, config)
    (path,) = store_dir.glob("*.step")
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 3])  # cut short: a damaged file

    init2, update2 = engine.make_update_fn(config, model, params=random_weights.params)
    with pytest.warns(UserWarning, match="cannot load the stored step"):
        compiled, _, _ = engine.compile_update(update2, init2(content), targets, weights, config)
    assert step_store.counts() == {"loaded": 0, "stored": 2, "unreadable": 1, "refused": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the file written again loads cleanly
        init3, update3 = engine.make_update_fn(config, model, params=random_weights.params)
        reloaded, _, _ = engine.compile_update(update3, init3(content), targets, weights, config)
    assert step_store.counts()["loaded"] == 1
    assert run(reloaded, init3, content, targets, weights)[0] == run(compiled, init2, content, targets, weights)[0]


def test_a_step_with_an_optimizer_passed_in_is_not_stored(random_weights, store_dir):
    config, targets, weights, content = problem(random_weights, StepConfig("blended", H, W, 2, STYLE_TAPS,
                                                                           CONTENT_TAPS))
    init, update = engine.make_update_fn(config, random_weights.model(config.taps), optax.sgd(0.1),
                                         params=random_weights.params)
    assert update.program_key is None
    engine.compile_update(update, init(content), targets, weights, config)
    assert not store_dir.exists() and step_store.counts()["stored"] == 0


def test_the_store_follows_the_compile_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(compile_cache, "observes_loads", lambda: True)
    monkeypatch.setattr(compile_cache, "enabled_dir", lambda: None)
    assert step_store.directory() is None
    monkeypatch.setattr(compile_cache, "enabled_dir", lambda: tmp_path)
    assert step_store.directory() == tmp_path / step_store.SUBDIR  # this suite runs on the CPU
    # a cache set up through JAX's configuration alone: its loads go unseen, so nothing is stored
    monkeypatch.setattr(compile_cache, "observes_loads", lambda: False)
    assert step_store.directory() is None


def test_a_step_that_xla_s_cache_supplied_is_not_stored(random_weights, store_dir, monkeypatch):
    """An executable loaded from XLA's cache serializes incompletely (step_store docstring): a compile
    during which this thread loaded a program stores nothing."""
    config, targets, weights, content = problem(random_weights)
    init, update = engine.make_update_fn(config, random_weights.model(config.taps), params=random_weights.params)
    loads = iter([4, 5])  # before and after the compile: one program loaded in between
    monkeypatch.setattr(compile_cache, "loaded_in_this_thread", lambda: next(loads))
    engine.compile_update(update, init(content), targets, weights, config)
    assert not store_dir.exists() and step_store.counts()["stored"] == 0


def test_a_program_with_custom_calls_is_not_stored(store_dir):
    """A custom call (here jaxlib's LAPACK triangular solve) points into the process: a stored copy
    crashed a fresh process that loaded it (segmentation fault). Such programs are refused; others
    are stored."""
    r, c = np.eye(4, dtype=np.float32) + np.triu(np.ones((4, 4), np.float32)), np.ones(4, np.float32)
    solve = jax.jit(lambda r, c: jax.scipy.linalg.solve_triangular(r, c, lower=False)).lower(r, c).compile()
    plain = jax.jit(lambda r, c: r @ c).lower(r, c).compile()
    assert step_store.calls_out(solve) and not step_store.calls_out(plain)
    assert not step_store.store("a" * 64, solve) and not list(store_dir.glob("*.step"))
    assert step_store.counts()["refused"] == 1
    assert compile_cache.summary().endswith("; update steps: 1 not stored (custom calls)")
    assert step_store.store("b" * 64, plain) and [p.stem for p in store_dir.glob("*.step")] == ["b" * 64]
    assert compile_cache.summary().endswith("; update steps: 0 loaded without tracing, 1 stored, 1 not stored (custom calls)")
