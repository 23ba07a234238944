"""The in-process cache of compiled steps: later stylize calls with the same shapes reuse them."""

import numpy as np
import pytest

from segstyle_jax import api, step_cache
from segstyle_jax.weights import VGGWeights

FAST = dict(steps=3, size=40, style_layers=("relu1_1", "relu2_1"), content_layers=("relu2_2",), compute_metrics=False)


def run(scene, weights, **kw):
    return api.stylize(scene["content"], scene["labels"], scene["styles"], weights=weights, **{**FAST, **kw})


def test_a_repeated_call_reuses_the_steps_and_gives_the_same_image(tiny_scene, random_weights):
    first = run(tiny_scene, random_weights, scales=(0.5, 1.0), init="noise", seed=2)
    assert step_cache.stats()["hits"] == 0 and step_cache.stats()["entries"] == 2 and first.compile_seconds > 0
    again = run(tiny_scene, random_weights, scales=(0.5, 1.0), init="noise", seed=2)
    assert step_cache.stats()["hits"] == 2 and again.compile_seconds == 0
    np.testing.assert_array_equal(again.image, first.image)
    assert again.losses == first.losses


def test_loss_weights_are_arguments_but_shapes_and_settings_are_keys(tiny_scene, random_weights):
    base = run(tiny_scene, random_weights)
    heavier = run(tiny_scene, random_weights, style_weight=1e4)  # the same compiled step, other numbers
    assert step_cache.stats()["hits"] == 1
    assert heavier.losses[0] != base.losses[0]
    # settings the optimizer ignores do not count: L-BFGS pairs for Adam, the learning rate for L-BFGS
    again = run(tiny_scene, random_weights, lbfgs_memory=20)
    assert step_cache.stats()["hits"] == 2 and again.losses == base.losses
    fixed = run(tiny_scene, random_weights, optimizer="lbfgs-fixed")
    fixed_lr = run(tiny_scene, random_weights, optimizer="lbfgs-fixed", learning_rate=0.5)
    assert step_cache.stats()["hits"] == 3 and fixed_lr.losses == fixed.losses
    run(tiny_scene, random_weights, optimizer="lbfgs-fixed", lbfgs_memory=3)  # counts for L-BFGS
    run(tiny_scene, random_weights, learning_rate=0.05)  # counts for Adam
    assert step_cache.stats()["hits"] == 3
    # recompiled for each: another size, optimizer, approach, pooling, convolution, number of segments
    for change in (dict(size=32), dict(optimizer="lbfgs"), dict(approach="locality"), dict(pooling="avg"),
                   dict(conv="winograd")):
        misses = step_cache.stats()["misses"]
        r = run(tiny_scene, random_weights, **change)
        assert step_cache.stats()["misses"] == misses + 1, change
        assert r.compile_seconds > 0, change
    three = np.where(tiny_scene["content"][..., 0] > 0.8, 2, tiny_scene["labels"])
    misses = step_cache.stats()["misses"]
    api.stylize(tiny_scene["content"], three, {**tiny_scene["styles"], "2": tiny_scene["styles"]["0"]},
                weights=random_weights, **FAST)
    assert step_cache.stats()["misses"] == misses + 1


def test_weights_are_told_apart_by_checksum_or_object(tiny_scene, random_weights):
    run(tiny_scene, random_weights)
    reloaded = VGGWeights(params={k: dict(v) for k, v in random_weights.params.items()},
                          metadata=dict(random_weights.metadata))  # another object, the same checksum
    run(tiny_scene, reloaded)
    assert step_cache.stats()["hits"] == 1
    other = {k: {n: a * 1.5 for n, a in v.items()} for k, v in random_weights.params.items()}
    unrecorded = VGGWeights(params=other, metadata={k: v for k, v in random_weights.metadata.items()
                                                    if k != "params_sha256"})
    a = run(tiny_scene, unrecorded)
    assert step_cache.stats()["hits"] == 1  # no checksum: known by its params object only
    b = run(tiny_scene, unrecorded)
    assert step_cache.stats()["hits"] == 2 and b.compile_seconds == 0
    np.testing.assert_array_equal(a.image, b.image)
    # the step binds the weights it was built with: other weights must not run on a cached step
    assert not np.allclose(a.losses[0], run(tiny_scene, random_weights).losses[0])


def test_size_limit_and_off(tiny_scene, random_weights):
    try:
        step_cache.set_max_entries(1)
        run(tiny_scene, random_weights)
        run(tiny_scene, random_weights, size=32)  # evicts the 40 px step
        run(tiny_scene, random_weights)
        assert step_cache.stats()["hits"] == 0 and step_cache.stats()["entries"] == 1
        step_cache.set_max_entries(0)
        assert step_cache.stats()["entries"] == 0
        run(tiny_scene, random_weights)
        run(tiny_scene, random_weights)
        assert step_cache.stats()["hits"] == 0 and step_cache.stats()["entries"] == 0
    finally:
        step_cache.set_max_entries(step_cache.MAX_ENTRIES)
    for bad in (-1, 1.5, True, "4"):
        with pytest.raises(ValueError, match="step cache"):
            step_cache.set_max_entries(bad)


def test_a_step_split_for_lack_of_memory_is_not_kept(tiny_scene, random_weights, monkeypatch, batched_step_too_big):
    from segstyle_jax import engine

    split = run(tiny_scene, random_weights, approach="multipass")
    assert split.num_passes == 2 and step_cache.stats()["entries"] == 0
    monkeypatch.setattr(engine, "compile_update", batched_step_too_big)  # memory "freed": now it batches
    assert run(tiny_scene, random_weights, approach="multipass").num_passes == 1
    # a cached step that no longer fits in what is available is compiled again (and refused)
    monkeypatch.setattr(engine, "available_memory_bytes", lambda: 1 << 20)
    with pytest.raises(MemoryError, match="needs about"):
        run(tiny_scene, random_weights, approach="multipass", batch_passes=True)
