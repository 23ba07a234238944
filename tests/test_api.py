"""The stylize API: input validation before compute, determinism, options; real-weight quality checks."""

import numpy as np
import pytest

from segstyle_jax import api, compile_cache, demo_data, engine, masks as masks_lib, winograd
from segstyle_jax.images import ImageError

FAST = dict(steps=3, size=40, style_layers=("relu1_1", "relu2_1"), content_layers=("relu2_2",))


def run(scene, weights, **kw):
    args = {**FAST, **kw}
    return api.stylize(scene["content"], scene["labels"], scene["styles"], weights=weights, **args)


def test_result_and_determinism(tiny_scene, random_weights):
    a = run(tiny_scene, random_weights, init="noise", seed=3)
    b = run(tiny_scene, random_weights, init="noise", seed=3)
    c = run(tiny_scene, random_weights, init="noise", seed=4)
    assert a.image.shape == (33, 40, 3) and a.image.dtype == np.float32
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    assert len(a.losses) == 3 and a.stopped == "completed"
    assert a.metrics["styles"] == ["style0", "style1"] and len(a.metrics["segments"]) == 2


def test_coarse_to_fine_blend_colour_and_callback(tiny_scene, random_weights):
    seen = []
    styles = {"0": [(tiny_scene["styles"]["0"], 0.5), (tiny_scene["styles"]["1"], 0.5)], "1": tiny_scene["styles"]["1"]}
    r = api.stylize(tiny_scene["content"], tiny_scene["labels"], styles, "multipass", weights=random_weights,
                    scales=(0.5, 1.0), preserve_color=["1"], feather_px=1.0, callback=seen.append, **FAST)
    assert [(p.scale_index, p.step) for p in seen] == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]
    assert seen[-1].image().shape == (33, 40, 3)
    assert r.images.shape == (2, 33, 40, 3) and len(r.losses) == 6
    assert [(p.done, p.total) for p in seen] == [(i, 6) for i in range(1, 7)]


def test_steps_per_scale(tiny_scene, random_weights):
    seen = []
    r = api.stylize(tiny_scene["content"], tiny_scene["labels"], tiny_scene["styles"], weights=random_weights,
                    scales=(0.5, 1.0), callback=seen.append, **{**FAST, "steps": (4, 2)})
    assert [(p.scale_index, p.step, p.steps) for p in seen][3:] == [(0, 4, 4), (1, 1, 2), (1, 2, 2)]
    assert len(r.losses) == 6 and seen[-1].done == seen[-1].total == 6
    with pytest.raises(ValueError, match="one positive int per scale"):
        api.stylize(tiny_scene["content"], tiny_scene["labels"], tiny_scene["styles"], weights=random_weights,
                    scales=(0.5, 1.0), **{**FAST, "steps": (4,)})


@pytest.mark.parametrize("change,message", [
    (dict(segments=np.zeros((10, 10), np.int32)), "differs from the content image size"),
    (dict(styles={"0": "x"}), "segments without a style: 1"),
    (dict(styles={"0": 0, "1": 0, "cat": 0}), "styles for labels not in the segmentation: cat"),
    (dict(segment_weights={"7": 1.0}), "segment weights for labels not in the segmentation: 7"),
    (dict(layer_weights=[1.0, 1.0, 1.0]), "3 layer weights given for 2 style layers"),
    (dict(approach="magic"), "approach must be one of"),
    (dict(regions={"0": np.ones((32, 32))}), "used by the 'localized' approach"),
    (dict(approach="localized", regions={"0": np.zeros((32, 32))}), "style region for segment '0' is empty"),
    (dict(approach="localized", regions={"0": np.ones((5, 5))}), "style region for segment '0' is 5x5"),
    (dict(init="sketchy"), "init must be"),
    (dict(steps=0), "steps must be"),
    (dict(conv="fft"), "conv must be one of"),
    (dict(compute_dtype="float16"), "compute_dtype must be one of"),
    (dict(compute_dtype="bfloat16", conv="winograd"), "loses too much in bfloat16"),
])
def test_bad_input_is_rejected_before_compute(tiny_scene, random_weights, change, message):
    kw = {"segments": tiny_scene["labels"], "styles": tiny_scene["styles"], **FAST, **change}
    segments, styles = kw.pop("segments"), kw.pop("styles")
    with pytest.raises(ValueError, match=message):
        api.stylize(tiny_scene["content"], segments, styles, weights=random_weights, **kw)


def test_convolution_algorithms_agree_and_auto_skips_short_stages(tiny_scene, random_weights, monkeypatch, step_cache_off,
                                                                  tmp_path):
    used = []
    make_update_fn = engine.make_update_fn

    def recording(config, model, *args, **kw):
        used.append(model.conv)
        return make_update_fn(config, model, *args, **kw)

    monkeypatch.setattr(engine, "make_update_fn", recording)
    direct = run(tiny_scene, random_weights, conv="direct", compute_metrics=False)
    wino = run(tiny_scene, random_weights, conv="winograd", compute_metrics=False)
    auto = run(tiny_scene, random_weights, conv="auto", compute_metrics=False)  # 3 steps at 40x33: not worth it
    assert used == ["direct", "winograd", "direct"]
    assert abs(wino.losses[0] - direct.losses[0]) / direct.losses[0] < 1e-5
    assert np.abs(wino.image - direct.image).mean() < 1e-3
    np.testing.assert_array_equal(auto.image, direct.image)
    # with the compile cache on, the lower threshold decides (the compile is paid once)
    monkeypatch.setattr(winograd, "MIN_STEP_PIXELS_CACHED", 1)
    monkeypatch.setattr(compile_cache, "enabled_dir", lambda: None)
    run(tiny_scene, random_weights, conv="auto", compute_metrics=False)
    assert used[-1] == "direct"
    monkeypatch.setattr(compile_cache, "enabled_dir", lambda: tmp_path / "cache")  # (the step store writes there)
    run(tiny_scene, random_weights, conv="auto", compute_metrics=False)
    assert used[-1] == "auto"
    monkeypatch.setattr(compile_cache, "enabled_dir", lambda: None)
    monkeypatch.setattr(winograd, "MIN_STEP_PIXELS", 1)  # any stage is worth it: auto's per-layer rule
    run(tiny_scene, random_weights, conv="auto", compute_metrics=False)
    assert used[-1] == "auto"


def test_unreadable_images_are_named(tiny_scene, random_weights, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"junk")
    with pytest.raises(ImageError, match="bad.png"):
        api.stylize(tmp_path / "bad.png", tiny_scene["labels"], tiny_scene["styles"], weights=random_weights, **FAST)
    with pytest.raises(ImageError, match="missing.jpg: file not found"):
        api.stylize(tiny_scene["content"], tiny_scene["labels"], {"0": tmp_path / "missing.jpg", "1": tmp_path / "x"},
                    weights=random_weights, **FAST)


def test_empty_segment_is_an_error(tiny_scene, random_weights):
    m = np.zeros((3,) + tiny_scene["labels"].shape, np.float32)
    m[0], m[1] = tiny_scene["labels"] == 0, tiny_scene["labels"] == 1
    m[2, 0, 0], m[0, 0, 0] = 0.4, 0.6  # a segment that never reaches 0.5 anywhere
    seg = masks_lib.Segmentation(m, ("0", "1", "2"))
    with pytest.raises(ValueError, match="'2'"):
        api.stylize(tiny_scene["content"], seg, {**tiny_scene["styles"], "2": tiny_scene["styles"]["0"]},
                    weights=random_weights, **FAST)


@pytest.mark.real_weights
@pytest.mark.parametrize("approach", ["blended", "locality", "multipass"])
def test_real_photo_each_segment_wears_its_own_style(approach):
    r = api.stylize(demo_data.astronaut(), demo_data.astronaut_hand_mask(), demo_data.demo_styles(), approach,
                    steps=25, size=64, learning_rate=0.04)
    assert r.losses[-1] < 0.5 * r.losses[0]
    if approach == "multipass":
        # Each of the K images matches its style over the whole frame, not inside its segment; in 25 steps
        # at 64 px the person cut out of the brick-styled image is not yet nearer brick (see README).
        return
    for row in r.metrics["segments"]:
        assert row["wears_own_style"], row


def test_too_large_for_memory_is_refused_before_running(tiny_scene, random_weights, monkeypatch):
    from segstyle_jax import engine

    monkeypatch.setattr(engine, "available_memory_bytes", lambda: 1 << 20)  # pretend 1 MiB is free
    seen = []
    with pytest.raises(MemoryError, match=r"40x33 blended step with 2 segments needs about .* GiB, but only 0.0 GiB"):
        run(tiny_scene, random_weights, approach="blended", callback=seen.append)
    assert seen == []  # no step ran


def test_the_memory_check_uses_what_was_available_when_the_call_started(tiny_scene, random_weights, monkeypatch):
    from segstyle_jax import engine

    readings = iter([1 << 40])  # plenty at the start; any later reading would raise StopIteration

    monkeypatch.setattr(engine, "available_memory_bytes", lambda: next(readings))
    r = run(tiny_scene, random_weights, approach="multipass", scales=(0.5, 1.0), compute_metrics=False)
    assert r.stopped == "completed" and r.num_passes == 1  # batched at both scales, decided from one reading


def test_multipass_split_into_passes_gives_the_batched_result(tiny_scene, random_weights):
    seen = []
    batched = run(tiny_scene, random_weights, approach="multipass", batch_passes=True, compute_metrics=False)
    split = run(tiny_scene, random_weights, approach="multipass", batch_passes=False, compute_metrics=False,
                callback=seen.append)
    np.testing.assert_allclose(split.images, batched.images, atol=1e-5)
    assert (batched.num_passes, split.num_passes) == (1, 2) and 0 < split.memory_bytes < batched.memory_bytes
    np.testing.assert_allclose(split.losses, batched.losses, rtol=1e-5)
    np.testing.assert_allclose([t["per_segment"] for t in split.terms], [t["per_segment"] for t in batched.terms],
                               rtol=1e-5)
    assert [(p.pass_index, p.step, p.done, p.total) for p in seen] == \
        [(0, 1, 1, 6), (0, 2, 2, 6), (0, 3, 3, 6), (1, 1, 4, 6), (1, 2, 5, 6), (1, 3, 6, 6)]
    assert seen[-1].image().shape == (33, 40, 3)


def test_multipass_runs_pass_by_pass_when_the_batch_does_not_fit(tiny_scene, random_weights, batched_step_too_big):
    seen = []
    r = run(tiny_scene, random_weights, approach="multipass", compute_metrics=False, callback=seen.append)
    assert {p.num_passes for p in seen} == {2} and r.images.shape == (2, 33, 40, 3) and len(r.losses) == 3
    with pytest.raises(MemoryError, match="pretend"):
        run(tiny_scene, random_weights, approach="multipass", compute_metrics=False, batch_passes=True)


def test_a_wide_style_at_a_tiny_coarse_scale_keeps_16_px(tiny_scene, random_weights):
    wide = np.random.default_rng(1).uniform(0, 1, (20, 60, 3)).astype(np.float32)
    r = api.stylize(tiny_scene["content"], tiny_scene["labels"], {"0": wide, "1": tiny_scene["styles"]["1"]},
                    weights=random_weights, scales=(0.5, 1.0), compute_metrics=False, **FAST)
    assert r.stopped == "completed" and len(r.losses) == 6
    assert api._style_at(wide, 16).shape == (16, 48, 3)


def test_a_stop_from_the_callback_leaves_no_preparation_running(tiny_scene, random_weights):
    # stylize prepares scale s + 1 in worker threads while scale s runs; a callback that stops the
    # run propagates, and no worker is left compiling afterwards
    import threading

    class Stop(Exception):
        pass

    def stop(progress):
        raise Stop

    with pytest.raises(Stop):
        run(tiny_scene, random_weights, scales=(0.5, 0.75, 1.0), callback=stop)
    assert not [t for t in threading.enumerate() if t.name.startswith("segstyle-prepare")]
    # and the same scales without the stop run every scale's steps, prepared ahead
    r = run(tiny_scene, random_weights, scales=(0.5, 0.75, 1.0), steps=(2, 2, 3))
    assert len(r.losses) == 7 and r.image.shape == (33, 40, 3)


def test_the_next_scale_need_is_guessed_from_its_pixel_count():
    from segstyle_jax.config import StepConfig

    small, large = (StepConfig(approach="blended", height=h, width=w, num_segments=2) for h, w in ((32, 40), (64, 80)))
    assert api._need_with_next_scale(100, small, large) == 400   # 4x the pixels
    assert api._need_with_next_scale(400, large, small) == 400   # this scale's own need is the larger
    assert api._need_with_next_scale(100, small, None) == 100 and api._need_with_next_scale(None, small, large) is None


def test_a_run_compiles_a_handful_of_programs(tiny_scene, random_weights):
    """Everything outside the step runs as a few whole compiled programs, not op by op: on a GPU
    every program compiles for about a second, and a 256 px demo spent minutes compiling single
    operations (this run compiled 40 programs before; jnp.asarray on a host array alone compiles one)."""
    import jax.monitoring

    compiled = []

    def listener(event, seconds, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:  # a size no other test uses, so nothing is compiled already
        r = run(tiny_scene, random_weights, approach="locality", size=44)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert r.metrics is not None
    # style Grams (one per style image size), content features, init, the step, the metrics' style
    # matrix and content distance (6 here; one spare)
    assert 1 <= len(compiled) <= 7, len(compiled)
