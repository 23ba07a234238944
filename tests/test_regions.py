"""Region segmentation without people: k-means (pure JAX), the kmeans/slic segmenters, spec parsing."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest
from scipy.ndimage import label as cc_label

from segstyle_jax import regions
from segstyle_jax.masks import Segmentation


@pytest.fixture(scope="module")
def weights():
    from segstyle_jax.weights import WeightsError, load_default_weights

    try:
        return load_default_weights()
    except WeightsError as e:  # pragma: no cover - depends on the environment
        pytest.skip(f"default VGG weights unavailable: {e}")


def _blobs(seed=0, n=90):
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
    truth = np.repeat(np.arange(3), n)
    pts = means[truth] + rng.normal(0, 0.5, (3 * n, 2)).astype(np.float32)
    return pts, truth, means


def _same_partition(a, b) -> bool:
    """``a`` and ``b`` label the points identically up to a permutation of the labels."""
    pairs = set(zip(np.asarray(a).tolist(), np.asarray(b).tolist()))
    return len(pairs) == len(set(np.asarray(a).tolist())) == len(set(np.asarray(b).tolist()))


def _check_valid(seg: Segmentation, hw):
    assert isinstance(seg, Segmentation)
    assert seg.hw == tuple(hw)
    assert seg.labels == tuple(str(i) for i in range(seg.num_segments))
    np.testing.assert_allclose(seg.masks.sum(0), 1.0, atol=1e-6)
    assert set(np.unique(seg.masks)) <= {0.0, 1.0}
    assert (seg.masks.reshape(seg.num_segments, -1).sum(1) > 0).all()


def _bands(h=48, w=72, seed=0):
    """Three vertical bands: red with fine vertical stripes, green noise, smooth blue."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    b = w // 3
    xx = np.arange(b)
    img[:, :b] = [0.85, 0.15, 0.1]
    img[:, :b, 1] += 0.25 * (np.sin(xx * 2.0) > 0)
    img[:, b:2 * b] = np.clip([0.15, 0.7, 0.2] + rng.normal(0, 0.12, (h, b, 3)), 0, 1)
    img[:, 2 * b:] = [0.15, 0.2, 0.9]
    img[:, 2 * b:, 2] -= 0.1 * np.arange(h)[:, None] / h
    truth = np.repeat(np.arange(3), b)[None].repeat(h, 0)
    return np.clip(img, 0, 1).astype(np.float32), truth


# ----------------------------------------------------------------------------------------------
# kmeans


def test_kmeans_recovers_blobs_and_is_deterministic():
    pts, truth, means = _blobs()
    key = jax.random.PRNGKey(0)
    centers, a = regions.kmeans(pts, 3, key)
    assert centers.shape == (3, 2) and a.shape == (len(pts),) and a.dtype == np.int32
    assert _same_partition(a, truth)
    # every true mean has a centre within 0.3
    d = np.linalg.norm(np.asarray(centers)[:, None] - means[None], axis=-1)
    assert d.min(axis=0).max() < 0.3
    c2, a2 = regions.kmeans(pts, 3, key)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(a2))
    np.testing.assert_array_equal(np.asarray(centers), np.asarray(c2))


def test_kmeans_other_keys_valid():
    pts, truth, _ = _blobs(seed=1)
    for seed in (1, 2, 7):
        _, a = regions.kmeans(pts, 3, jax.random.PRNGKey(seed))
        assert _same_partition(a, truth)
    _, a_int = regions.kmeans(pts, 3, 7)  # an int seed works like PRNGKey(seed)
    _, a_key = regions.kmeans(pts, 3, jax.random.PRNGKey(7))
    np.testing.assert_array_equal(np.asarray(a_int), np.asarray(a_key))


def test_kmeans_empty_clusters_no_nan():
    base = np.array([[0, 0], [1, 0], [0, 1], [5, 5]], np.float32)
    pts = np.repeat(base, 10, axis=0)  # 40 points, 4 distinct
    centers, a = regions.kmeans(pts, 6, jax.random.PRNGKey(3))
    centers, a = np.asarray(centers), np.asarray(a)
    assert np.isfinite(centers).all()
    assert set(np.unique(a)) <= set(range(6))
    np.testing.assert_allclose(centers[a], pts, atol=1e-5)  # each point sits on its centre
    same = np.zeros((7, 3), np.float32)  # all points identical, k = N
    centers, a = regions.kmeans(same, 7, jax.random.PRNGKey(0), iters=3)
    assert np.isfinite(np.asarray(centers)).all() and (np.asarray(a) >= 0).all()


def test_kmeans_bad_input():
    pts = np.zeros((5, 2), np.float32)
    with pytest.raises(ValueError, match="between 1 and the number of points"):
        regions.kmeans(pts, 6, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        regions.kmeans(np.zeros(5, np.float32), 2, jax.random.PRNGKey(0))


# ----------------------------------------------------------------------------------------------
# kmeans_segmentation


def test_kmeans_segmentation_bands(weights):
    img, truth = _bands()
    seg = regions.kmeans_segmentation(img, 3, weights=weights, work_size=64)
    _check_valid(seg, img.shape[:2])
    assert seg.num_segments == 3
    hard = seg.hard()
    for j in range(3):  # reading order: equal mean rows, so left to right
        inter = np.logical_and(hard == j, truth == j).sum()
        union = np.logical_or(hard == j, truth == j).sum()
        assert inter / union > 0.8, (j, inter / union)
    again = regions.kmeans_segmentation(img, 3, weights=weights, work_size=64)
    np.testing.assert_array_equal(seg.masks, again.masks)
    other = regions.kmeans_segmentation(img, 3, weights=weights, work_size=64, seed=5)
    np.testing.assert_array_equal(seg.masks, other.masks)  # same regions -> same order for any seed


def test_kmeans_segmentation_coffee(weights):
    from skimage import data

    from segstyle_jax.images import resize_longest

    img = resize_longest(data.coffee().astype(np.float32) / 255, 96)
    min_fraction = 0.02
    with warnings.catch_warnings():
        warnings.simplefilter("error", regions.RegionSegmentationWarning)
        seg = regions.kmeans_segmentation(img, 3, weights=weights, work_size=64, min_fraction=min_fraction)
    _check_valid(seg, img.shape[:2])
    assert seg.num_segments == 3
    hard = seg.hard()
    fractions = seg.masks.mean(axis=(1, 2))
    assert (fractions >= min_fraction).all(), fractions
    for c in range(seg.num_segments):  # no piece below min_fraction survives
        comp, n = cc_label(hard == c, structure=np.ones((3, 3), bool))
        sizes = np.bincount(comp.ravel())[1:]
        assert sizes.min() >= min_fraction * hard.size, (c, sizes)
    rows = [np.nonzero(hard == c)[0].mean() for c in range(3)]  # ordered top to bottom (1% buckets)
    assert all(round(100 * a / hard.shape[0]) <= round(100 * b / hard.shape[0]) for a, b in zip(rows, rows[1:]))


def test_kmeans_segmentation_random_weights_and_options(random_weights, tiny_scene):
    img = tiny_scene["content"]
    seg = regions.kmeans_segmentation(img, 2, weights=random_weights, work_size=32, tap="relu2_1",
                                      smooth_px=0, position_weight=0.0, color_weight=2.0)
    _check_valid(seg, img.shape[:2])
    with pytest.raises(ValueError, match="not a layer"):
        regions.kmeans_segmentation(img, 2, weights=random_weights, tap="relu9_1")
    with pytest.raises(ValueError, match="too small for tap"):
        regions.kmeans_segmentation(img, 2, weights=random_weights, work_size=8, tap="relu5_1")
    with pytest.raises(ValueError, match="K must be >= 2"):
        regions.kmeans_segmentation(img, 1, weights=random_weights)
    with pytest.raises(ValueError, match="integer"):
        regions.kmeans_segmentation(img, 2.5, weights=random_weights)


def test_k_too_large(random_weights):
    two = np.zeros((40, 40, 3), np.float32)
    two[:, 20:] = 1.0
    with pytest.raises(ValueError, match="2 distinct colour.*largest K that works is 2"):
        regions.kmeans_segmentation(two, 3, weights=random_weights, work_size=32)
    with pytest.raises(ValueError, match="nothing to segment"):
        regions.kmeans_segmentation(np.full((20, 20, 3), 0.5, np.float32), 2, weights=random_weights)
    noise = np.random.default_rng(0).uniform(0, 1, (40, 40, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"16x16 working grid.*largest K that works is 16"):
        regions.kmeans_segmentation(noise, 17, weights=random_weights, work_size=16, min_fraction=0)
    with pytest.raises(ValueError, match="min_fraction=0.1 allows at most 10.*largest K that works is 10"):
        regions.slic_segmentation(noise, 11, min_fraction=0.1)
    assert regions.max_regions(noise, work_size=16, min_fraction=0) == 16
    assert regions.max_regions(two) == 2


def test_fewer_regions_warns():
    labels = np.zeros((40, 40), np.int32)
    labels[:, 20:] = 1
    labels[5:7, 5:7] = 2  # 4 px of 1600: below min_fraction, merged into label 0
    with pytest.warns(regions.RegionSegmentationWarning, match="only 2 of the 3"):
        seg = regions._finish(labels, 3, (80, 80), smooth_px=0, min_fraction=0.01, method="kmeans:3")
    _check_valid(seg, (80, 80))
    assert seg.num_segments == 2
    np.testing.assert_array_equal(seg.hard()[:, :40], 0)
    np.testing.assert_array_equal(seg.hard()[:, 40:], 1)


# ----------------------------------------------------------------------------------------------
# slic, parsing, dispatch


def test_slic_segmentation():
    from skimage import data

    from segstyle_jax.images import resize_longest

    img = resize_longest(data.chelsea().astype(np.float32) / 255, 64)
    seg = regions.slic_segmentation(img, 4, work_size=64)
    _check_valid(seg, img.shape[:2])
    assert 2 <= seg.num_segments <= 6


@pytest.mark.parametrize("spec, expected", [
    ("person", ("person", None)), ("kmeans:3", ("kmeans", 3)), ("slic:5", ("slic", 5)),
    (" KMeans : 2 ", ("kmeans", 2)), ("kmeans:12", ("kmeans", 12)),
])
def test_parse_segmenter_good(spec, expected):
    assert regions.parse_segmenter(spec) == expected


@pytest.mark.parametrize("spec, match", [
    ("kmeans:x", "integer"), ("kmeans:1", ">= 2"), ("kmeans:0", ">= 2"), ("kmeans:-3", "integer"),
    ("kmeans", "needs the number of regions"), ("kmeans:", "needs the number of regions"),
    ("person:2", "takes no K"), ("watershed:3", "unknown segmenter"), ("", "cannot parse"),
    ("kmeans:3:4", "integer"), ("kmeans:2.5", "integer"),
])
def test_parse_segmenter_bad(spec, match):
    with pytest.raises(ValueError, match=match):
        regions.parse_segmenter(spec)


def test_segment_image_dispatch(random_weights, tiny_scene):
    img = tiny_scene["content"]
    seg = regions.segment_image(img, "kmeans:2", weights=random_weights, seed=1)
    _check_valid(seg, img.shape[:2])
    assert seg.num_segments == 2
    seg = regions.segment_image(img, "slic:3")
    _check_valid(seg, img.shape[:2])
    with pytest.raises(ValueError, match="unknown segmenter"):
        regions.segment_image(img, "grabcut:2")


def test_segment_image_person(tiny_scene):
    from segstyle_jax import person

    if not person.default_selfie_path().is_file():
        pytest.skip(f"selfie model missing: run {person.CONVERT_COMMAND}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", person.PersonSegmentationWarning)
        seg = regions.segment_image(tiny_scene["content"], "person")
    assert seg.labels == person.LABELS and seg.threshold == 0.5
    np.testing.assert_allclose(seg.masks.sum(0), 1.0)


def test_kmeans_int_seed_is_the_same_as_its_prng_key():
    """An int seed becomes its key inside the compiled program (no extra programs on a GPU), the same
    key as ``jax.random.PRNGKey(seed)``, also for seeds beyond 32 bits and negative ones."""
    points = np.random.default_rng(5).standard_normal((120, 3)).astype(np.float32)
    for seed in (0, 11, 2**32 - 1, 2**32 + 5, -7):
        by_seed = regions.kmeans(points, 3, seed, iters=5, n_init=2)
        by_key = regions.kmeans(points, 3, jax.random.PRNGKey(seed), iters=5, n_init=2)
        np.testing.assert_array_equal(by_seed[1], by_key[1])
        np.testing.assert_array_equal(by_seed[0], by_key[0])


def test_kmeans_segmentation_compiles_two_programs(random_weights, tiny_scene):
    """The features and the clustering, nothing op by op (each a second of compiling on a GPU); the
    seed's key is made inside the clustering program (made outside, it compiled two more)."""
    import jax.monitoring

    events = []

    def listener(event, seconds, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(seconds)

    jax.clear_caches()  # the key's programs do not depend on shapes: another test may have compiled them
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        regions.kmeans_segmentation(tiny_scene["content"], 2, weights=random_weights, work_size=24, tap="relu1_2",
                                    seed=3)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert len(events) == 2  # measured: 4 when the key was made outside
