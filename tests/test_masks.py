"""Tests for segstyle_jax.masks: constructors, files, layer masks, distance, locality."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from PIL import Image

from segstyle_jax import masks as M


def _sums_to_one(masks, atol=1e-5):
    np.testing.assert_allclose(np.asarray(masks).sum(axis=0), 1.0, atol=atol)


# ---------------------------------------------------------------- constructors


def test_from_label_map_one_hot_sorted_labels():
    lab = np.array([[10, 2, 2], [0, 10, 2]])
    seg = M.from_label_map(lab)
    assert seg.labels == ("0", "2", "10")  # numeric order, not string order
    assert seg.masks.shape == (3, 2, 3) and seg.masks.dtype == np.float32
    _sums_to_one(seg.masks)
    np.testing.assert_array_equal(seg.masks[2], (lab == 10).astype(np.float32))
    np.testing.assert_array_equal(np.array(seg.labels)[seg.hard()].astype(int), lab)


def test_from_label_map_names_and_merge():
    lab = np.array([[0, 1], [2, 2]])
    seg = M.from_label_map(lab, names={0: "bg", 1: "person", 2: "bg"})
    assert seg.labels == ("bg", "person")
    np.testing.assert_array_equal(seg.masks[0], [[1, 0], [1, 1]])
    with pytest.raises(ValueError, match=r"label\(s\) \[2\].*no name"):
        M.from_label_map(lab, names={0: "bg", 1: "person"})
    with pytest.raises(ValueError, match="integer labels"):
        M.from_label_map(np.array([[0.5, 1.0]]))


def test_from_color_map_and_unknown_colour_error():
    red, blue, green = (255, 0, 0), (0, 0, 255), (0, 255, 0)
    rgb = np.array([[red, blue, blue], [green, red, blue]], dtype=np.uint8)
    seg = M.from_color_map(rgb, {red: "sky", "#0000ff": "person", green: "sky"})
    assert seg.labels == ("person", "sky")  # sorted by name; red+green merged
    _sums_to_one(seg.masks)
    np.testing.assert_array_equal(seg.masks[0], [[0, 1, 1], [0, 0, 1]])
    with pytest.raises(ValueError, match=r"1 pixel\(s\) in 1 colour.*\(0, 255, 0\) #00ff00: 1 px"):
        M.from_color_map(rgb, {red: "sky", blue: "person"})


def test_from_soft_masks_normalizes_and_uncovered_error():
    a = np.array([[1.0, 0.5], [0.2, 0.0]], np.float32)
    b = np.array([[255, 255], [51, 255]], np.uint8)  # 1, 1, 0.2, 1
    seg = M.from_soft_masks([a, b], names=["fg", "bg"])
    assert seg.labels == ("fg", "bg") and seg.masks.shape == (2, 2, 2)
    _sums_to_one(seg.masks)
    np.testing.assert_allclose(seg.masks[0], [[0.5, 1 / 3], [0.5, 0.0]], atol=1e-6)
    assert M.from_soft_masks(np.stack([a, 1 - a])).labels == ("0", "1")
    with pytest.raises(ValueError, match=r"^2 of 4 pixels are uncovered"):
        M.from_soft_masks([np.array([[1.0, 0], [0, 0.3]]), np.zeros((2, 2))])
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        M.from_soft_masks([np.full((2, 2), 1.5)])
    with pytest.raises(ValueError, match="2 soft masks but 1 names"):
        M.from_soft_masks([a, b], names=["x"])


def test_segmentation_container_checks():
    with pytest.raises(ValueError, match="unique"):
        M.Segmentation(np.ones((2, 2, 2)) / 2, ("a", "a"))
    with pytest.raises(ValueError, match="2 masks but 1 labels"):
        M.Segmentation(np.ones((2, 2, 2)) / 2, ("a",))


# ---------------------------------------------------------------- files


def test_load_label_map_png_modes(tmp_path):
    lab = np.array([[0, 3, 3], [7, 0, 3]], np.uint8)
    Image.fromarray(lab).save(tmp_path / "l.png")  # mode L
    seg = M.load_segmentation(tmp_path / "l.png", names={0: "a", 3: "b", 7: "c"})
    assert seg.labels == ("a", "b", "c")
    np.testing.assert_array_equal(seg.masks[1], lab == 3)

    p = Image.fromarray(lab).convert("P")  # palette image: pixel values are indices
    p.putpalette([0, 0, 0, 255, 0, 0] * 128)
    p.save(tmp_path / "p.png")
    assert M.load_segmentation(str(tmp_path / "p.png")).labels == ("0", "3", "7")

    Image.fromarray(lab.astype(np.uint16) * 1000).save(tmp_path / "i.png")  # 16-bit PNG
    assert M.load_segmentation(tmp_path / "i.png").labels == ("0", "3000", "7000")


def test_load_color_png_and_soft_mask_list(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[:, 2:] = (255, 255, 0)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    seg = M.load_segmentation(tmp_path / "c.png", color_table={(0, 0, 0): "bg", (255, 255, 0): "fg"})
    assert seg.labels == ("bg", "fg") and seg.masks[1].sum() == 12
    with pytest.raises(ValueError, match=r"c\.png.*color_table"):
        M.load_segmentation(tmp_path / "c.png")
    with pytest.raises(ValueError, match=r"c\.png.*\(255, 255, 0\).*: 12 px"):
        M.load_segmentation(tmp_path / "c.png", color_table={(0, 0, 0): "bg"})

    a = np.zeros((4, 5), np.uint8)
    a[:, :2] = 255
    Image.fromarray(a).save(tmp_path / "m0.png")
    Image.fromarray(255 - a).save(tmp_path / "m1.png")
    seg = M.load_segmentation([tmp_path / "m0.png", tmp_path / "m1.png"], names=["x", "y"])
    assert seg.labels == ("x", "y")
    _sums_to_one(seg.masks)
    np.testing.assert_array_equal(seg.masks[0], a / 255)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        M.load_segmentation(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=r"cannot read .*junk\.png"):
        M.load_segmentation(tmp_path / "junk.png")
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "z.png")
    Image.fromarray(np.zeros((3, 5), np.uint8)).save(tmp_path / "z2.png")
    with pytest.raises(ValueError, match=r"differ in size.*z2\.png: 3x5"):
        M.load_segmentation([tmp_path / "z.png", tmp_path / "z2.png"])
    with pytest.raises(ValueError, match=r"20 of 20 pixels are uncovered.*z\.png"):
        M.load_segmentation([tmp_path / "z.png"])


# ---------------------------------------------------------------- resize / validate


def test_resize_keeps_partition():
    lab = np.zeros((8, 6), int)
    lab[2:6, 1:4] = 1
    seg = M.from_label_map(lab)
    small = M.resize_segmentation(seg, (4, 3))  # exact area average
    np.testing.assert_allclose(small.masks[1], [[0, 0, 0], [0.5, 1, 0], [0.5, 1, 0], [0, 0, 0]],
                               atol=1e-6)
    big = M.resize_segmentation(seg, (11, 13))
    assert big.masks.shape == (2, 11, 13) and big.labels == seg.labels
    _sums_to_one(big.masks)
    assert big.masks.min() >= 0 and big.masks.max() <= 1
    hard = M.resize_segmentation(seg, (16, 12), method="nearest")
    assert set(np.unique(hard.masks)) <= {0.0, 1.0}


def test_validate_messages():
    seg = M.from_label_map(np.array([[0, 0, 1], [0, 0, 0]]), names={0: "bg", 1: "cat"})
    M.validate(seg, (2, 3))
    with pytest.raises(ValueError, match=r"2x3 \(h x w\).*content image size 4x3"):
        M.validate(seg, (4, 3))
    with pytest.raises(ValueError, match=r"'cat' has 1 pixel"):
        M.validate(seg, (2, 3), min_pixels=2)


# ---------------------------------------------------------------- pooling


def _np_avg_pool_valid(x):
    """Reference for flax.linen.avg_pool(x, (2, 2), (2, 2), 'VALID') on [h, w]."""
    h, w = x.shape
    out = np.zeros((h // 2, w // 2))
    for i in range(h // 2):
        for j in range(w // 2):
            out[i, j] = x[2 * i:2 * i + 2, 2 * j:2 * j + 2].mean()
    return out


def test_pool_mask_hand_example_and_odd_size():
    x = np.array([[1, 0, 0, 0],
                  [1, 1, 0, 1],
                  [0, 0, 1, 1],
                  [0, 0, 1, 1]], np.float32)
    np.testing.assert_allclose(M.pool_mask(x, 1), [[0.75, 0.25], [0.0, 1.0]])
    np.testing.assert_allclose(M.pool_mask(x, 2), [[0.5]])
    np.testing.assert_allclose(M.pool_mask(x, 0), x)

    y = np.random.default_rng(0).random((5, 7)).astype(np.float32)
    out = M.pool_mask(y, 1)
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out, _np_avg_pool_valid(y), atol=1e-6)
    z = np.random.default_rng(1).random((23, 19))
    np.testing.assert_allclose(M.pool_mask(z, 2), _np_avg_pool_valid(_np_avg_pool_valid(z)),
                               atol=1e-6)
    with pytest.raises(ValueError, match="too small"):
        M.pool_mask(y, 3)


def test_pool_mask_matches_flax_pools():
    nn = pytest.importorskip("flax.linen")
    x = np.random.default_rng(2).random((1, 13, 22, 1)).astype(np.float32)
    a, m = jnp.asarray(x), jnp.asarray(x)
    for level in range(1, 4):
        a = nn.avg_pool(a, (2, 2), strides=(2, 2), padding="VALID")
        m = nn.max_pool(m, (2, 2), strides=(2, 2))
        ours = M.pool_mask(x[0, :, :, 0], level)
        assert ours.shape == m.shape[1:3] == (13 >> level, 22 >> level)
        np.testing.assert_allclose(ours, a[0, :, :, 0], atol=1e-6)


def test_pool_mask_jit_vmap_and_batched():
    x = jnp.asarray(np.random.default_rng(3).random((3, 9, 10)), jnp.float32)
    batched = M.pool_mask(x, 2)
    looped = jnp.stack([M.pool_mask(x[k], 2) for k in range(3)])
    vmapped = jax.vmap(lambda m: M.pool_mask(m, 2))(x)
    jitted = jax.jit(M.pool_mask, static_argnums=1)(x, 2)
    assert batched.shape == (3, 2, 2)
    for other in (looped, vmapped, jitted):
        np.testing.assert_allclose(batched, other, atol=1e-6)


def test_tap_level():
    assert M.tap_level("relu1_1") == 0 and M.tap_level("conv1_1") == 0
    assert M.tap_level("relu4_2") == 3 and M.tap_level("relu5_1") == 4
    for bad in ("pool1", "relu0_1", "relu6_1", "relu4", "Relu4_2", "relu4_2x", 3):
        with pytest.raises(ValueError, match="tap"):
            M.tap_level(bad)


def test_layer_masks_shapes_reuse_and_partition():
    lab = np.random.default_rng(4).integers(0, 3, size=(21, 34))
    seg = M.from_label_map(lab)
    taps = ("relu4_1", "relu1_1", "relu2_1", "relu3_1", "relu4_2", "relu5_1")
    lm = M.layer_masks(seg.masks, taps)
    assert list(lm) == list(taps)
    for t in taps:
        lvl = M.tap_level(t)
        assert lm[t].shape == (3, 21 >> lvl, 34 >> lvl)
        _sums_to_one(lm[t])
        np.testing.assert_allclose(lm[t], M.pool_mask(seg.masks, lvl), atol=1e-6)
    assert lm["relu4_1"] is lm["relu4_2"]  # one computation per level


def test_erode_inside():
    x = np.zeros((32, 32), np.float32)
    x[:, :16] = 1
    e = np.asarray(M.erode_inside(x, "relu2_1"))  # convs 2 -> pool -> 1 conv
    assert e.shape == (16, 16)
    assert set(np.unique(e)) <= {0.0, 1.0}
    # receptive field of a relu2_1 unit spans 2*c..2*c+1 +-2 at input, then +-1 unit: inside
    # iff 2*(c+1)+1+2 <= 15  ->  c <= 5
    np.testing.assert_array_equal(e[0], (np.arange(16) <= 5).astype(np.float32))
    assert np.all(e <= np.asarray(M.pool_mask(x, 1)))
    np.testing.assert_array_equal(M.erode_inside(np.ones((16, 16)), 2), 1.0)  # border is not outside


# ---------------------------------------------------------------- distances


def test_distance_hand_cases():
    row = np.array([[1, 1, 1, 1, 0]], np.float32)
    np.testing.assert_array_equal(M.distance_to_outside(row[None])[0], [[4, 3, 2, 1, 0]])
    sq = np.zeros((5, 5), np.float32)
    sq[1:4, 1:4] = 1
    want = np.zeros((5, 5))
    want[1:4, 1:4] = 1
    want[2, 2] = 2
    seg = M.from_soft_masks([sq, 1 - sq])
    d = M.distance_to_outside(seg.masks)
    assert d.dtype == np.float32 and d.shape == (2, 5, 5)
    np.testing.assert_array_equal(d[0], want)
    corner = np.ones((5, 5))
    corner[0, 0] = 0
    assert M.distance_to_outside(corner)[4, 4] == np.float32(np.sqrt(32))
    # whole-image segment: large finite value; empty segment: zeros
    full = M.distance_to_outside(np.stack([np.ones((3, 4)), np.zeros((3, 4))]))
    np.testing.assert_array_equal(full[0], 7.0)
    np.testing.assert_array_equal(full[1], 0.0)
    np.testing.assert_array_equal(M.brute_force_distance(np.ones((3, 4))), 7.0)


def _blobs(rng, h, w, n):
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((h, w), bool)
    for _ in range(n):
        cy, cx, ry, rx = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1, 6), rng.uniform(1, 6)
        out |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return out


def test_distance_matches_brute_force_on_blobs():
    rng = np.random.default_rng(5)
    for shape, n in [((20, 17), 3), ((20, 17), 6), ((9, 31), 2), ((1, 12), 1)]:
        inside = _blobs(rng, *shape, n)
        seg = M.from_label_map(inside.astype(int))
        d = M.distance_to_outside(seg.masks)
        for k in range(seg.num_segments):
            np.testing.assert_array_equal(d[k], M.brute_force_distance(seg.masks[k]))


# ---------------------------------------------------------------- locality


def _two_segment_example():
    lab = np.zeros((12, 16), int)
    lab[:, 8:] = 1
    seg = M.from_label_map(lab)
    return seg.masks, M.distance_to_outside(seg.masks)


def test_locality_weighted_masks_values():
    masks, dist = _two_segment_example()
    np.testing.assert_array_equal(M.locality_weighted_masks(masks, dist, 0.0, 3.0), masks)
    w = np.asarray(M.locality_weighted_masks(masks, dist, 0.8, 3.0))
    assert w.shape == masks.shape and w.min() >= 0 and w.max() <= 1
    assert np.all(w[masks == 0] == 0)
    # segment 0 = columns 0..7; boundary column 7 weighs less than interior column 0
    assert np.all(w[0, :, 7] < w[0, :, 4]) and np.all(w[0, :, 4] < w[0, :, 0])
    np.testing.assert_allclose(w[0, 0, 7], 1 - 0.8 * np.exp(-1 / 3), rtol=1e-6)
    w_clamped = np.asarray(M.locality_weighted_masks(masks, dist, 2.0, 0.0))  # gamma->1, rho->1e-3
    np.testing.assert_allclose(w_clamped, masks, atol=1e-6)
    assert np.all(np.isfinite(w_clamped))


def test_locality_weighted_masks_jit_no_recompile():
    masks, dist = _two_segment_example()
    traces = []

    def f(m, d, gamma, rho):
        traces.append(1)
        return M.locality_weighted_masks(m, d, gamma, rho)

    jf = jax.jit(f)
    f32 = jnp.float32
    a = jf(masks, dist, f32(0.3), f32(2.0))
    b = jf(masks, dist, f32(0.9), f32(5.0))
    c = jf(masks, dist, f32(0.1), f32(0.5))
    assert len(traces) == 1
    # Python floats are weakly typed: one more trace for that signature, then none
    jf(masks, dist, 0.3, 2.0)
    jf(masks, dist, 0.7, 9.0)
    assert len(traces) == 2
    np.testing.assert_allclose(b, M.locality_weighted_masks(masks, dist, 0.9, 5.0), rtol=1e-6)
    assert not np.allclose(a, b) and not np.allclose(a, c)
    # gradient with respect to rho is finite (tunable, traced hyperparameter)
    g = jax.grad(lambda r: M.locality_weighted_masks(masks, dist, 0.5, r).sum())(2.0)
    assert np.isfinite(g) and g < 0  # wider band -> less weight


def test_feather_keeps_sum_one():
    masks, _ = _two_segment_example()
    f = M.feather(masks, 1.5)
    assert f.shape == masks.shape and f.dtype == np.float32
    _sums_to_one(f)
    assert 0 < f[0, 0, 8] < 0.5 < f[0, 0, 7] < 1  # the seam is softened
    np.testing.assert_array_equal(M.feather(masks, 0), masks)
