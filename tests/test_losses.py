"""Tests of segstyle_jax.losses against hand-computed values and an independent float64 NumPy reference."""

import zlib

import jax

jax.config.update("jax_enable_x64", False)  # float32 everywhere, as in production

import jax.numpy as jnp
import numpy as np
import pytest

from segstyle_jax import losses


def highest():
    return jax.default_matmul_precision("highest")


SHAPES = [(4, 5, 3), (7, 3, 8), (1, 1, 2)]
MASK_KINDS = ["soft", "hard"]


# ----------------------------------------------------------------------------------------------
# Independent float64 NumPy references (explicit loops / einsum, no jax).
# ----------------------------------------------------------------------------------------------


def ref_masked_gram(F, m, eps=1e-8):
    F = np.asarray(F, np.float64)
    m = np.asarray(m, np.float64)
    h, w, c = F.shape
    S = np.zeros((c, c))
    for y in range(h):
        for x in range(w):
            S += m[y, x] * np.outer(F[y, x], F[y, x])
    area = float(m.sum())
    return S / max(area, eps), area


def ref_gram(F):
    F = np.asarray(F, np.float64)
    h, w, c = F.shape
    return np.einsum("yxi,yxj->ij", F, F) / (h * w)


def ref_style_error(G, A):
    G = np.asarray(G, np.float64)
    A = np.asarray(A, np.float64)
    c = G.shape[0]
    return sum((G[i, j] - A[i, j]) ** 2 for i in range(c) for j in range(c)) / c**2


def ref_content_loss(F, P):
    d = np.asarray(F, np.float64) - np.asarray(P, np.float64)
    return float((d**2).sum() / d.size)


def ref_total_variation(img):
    img = np.asarray(img, np.float64)
    h, w, ch = img.shape
    v = [(img[y + 1, x, k] - img[y, x, k]) ** 2 for y in range(h - 1) for x in range(w) for k in range(ch)]
    hz = [(img[y, x + 1, k] - img[y, x, k]) ** 2 for y in range(h) for x in range(w - 1) for k in range(ch)]
    return (np.mean(v) if v else 0.0) + (np.mean(hz) if hz else 0.0)


def ref_segment_style_loss(features, masks, targets, layer_weights, min_area=1e-3):
    total = 0.0
    for tap in targets:
        G, area = ref_masked_gram(features[tap], masks[tap])
        if area >= min_area:
            total += float(layer_weights[tap]) * ref_style_error(G, targets[tap])
    return total


def ref_eq5(F, m, A, eps=1e-8):
    # Paper's equation (5) in its own layout: F^l is [channels, positions],
    # dE/dF_ij = (1/Z) ((F^l)^T (G - A))_ji with the mask weight on position j, Z = c^2 N / 4.
    F = np.asarray(F, np.float64)
    m = np.asarray(m, np.float64)
    h, w, c = F.shape
    G, area = ref_masked_gram(F, m, eps)
    N = max(area, eps)
    Fl = F.reshape(h * w, c).T  # [c, M]
    prod = Fl.T @ (G - np.asarray(A, np.float64))  # [M, c], entry (j, i)
    out = np.zeros((c, h * w))
    for i in range(c):
        for j in range(h * w):
            out[i, j] = 4.0 / (c * c * N) * m.reshape(-1)[j] * prod[j, i]
    return out.T.reshape(h, w, c)


# ----------------------------------------------------------------------------------------------
# Random inputs.
# ----------------------------------------------------------------------------------------------


def make_features(rng, shape):
    # ReLU-like, non-negative features with some zeros, like VGG activations.
    return np.maximum(rng.normal(size=shape), 0.0).astype(np.float32) + 0.1 * rng.random(shape).astype(np.float32)


def make_mask(rng, hw, kind):
    if kind == "soft":
        return rng.random(hw).astype(np.float32)
    m = (rng.random(hw) > 0.5).astype(np.float32)
    m.reshape(-1)[0] = 1.0  # never empty
    return m


def make_sym(rng, c):
    B = rng.random((c, c))
    return ((B + B.T) / 2).astype(np.float32)


def seed(*parts):
    # Deterministic across processes (str hashes are salted per process).
    return np.random.default_rng(zlib.crc32(repr(parts).encode()))


# ----------------------------------------------------------------------------------------------
# Hand-computed values.
# ----------------------------------------------------------------------------------------------


def test_gram_hand_1x2x1():
    # F = [[1], [2]] (h=1, w=2, c=1): G = (1*1 + 2*2) / 2 = 2.5
    F = jnp.array([[[1.0], [2.0]]])
    np.testing.assert_allclose(losses.gram(F), [[2.5]], rtol=1e-7)


def test_gram_hand_1x2x2():
    # F_0 = (1, 2), F_1 = (3, 0)
    # F_0 F_0^T = [[1, 2], [2, 4]],  F_1 F_1^T = [[9, 0], [0, 0]]
    # G = [[10, 2], [2, 4]] / 2 = [[5, 1], [1, 2]]
    F = jnp.array([[[1.0, 2.0], [3.0, 0.0]]])
    with highest():
        np.testing.assert_allclose(losses.gram(F), [[5.0, 1.0], [1.0, 2.0]], rtol=1e-7)


def test_masked_gram_hand():
    # Same F, m = (1, 0.5): sum m F F^T = [[1, 2], [2, 4]] + 0.5 [[9, 0], [0, 0]] = [[5.5, 2], [2, 4]]
    # area = 1.5, G = [[5.5, 2], [2, 4]] / 1.5 = [[11/3, 4/3], [4/3, 8/3]]
    F = jnp.array([[[1.0, 2.0], [3.0, 0.0]]])
    m = jnp.array([[1.0, 0.5]])
    with highest():
        G, area = losses.masked_gram(F, m)
    np.testing.assert_allclose(G, [[11 / 3, 4 / 3], [4 / 3, 8 / 3]], rtol=1e-6)
    np.testing.assert_allclose(area, 1.5, rtol=1e-7)


def test_style_error_hand():
    # G - A = [[5, 1], [1, 2]] - [[4, 0], [0, 2]] = [[1, 1], [1, 0]]; ||.||_F^2 = 3; c^2 = 4 -> 0.75
    G = jnp.array([[5.0, 1.0], [1.0, 2.0]])
    A = jnp.array([[4.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(losses.style_error(G, A), 0.75, rtol=1e-7)


def test_content_loss_hand():
    # F = (1, 2, 3), P = (0, 2, 5): squared diffs 1, 0, 4 -> mean 5/3
    F = jnp.array([[[1.0], [2.0], [3.0]]])
    P = jnp.array([[[0.0], [2.0], [5.0]]])
    np.testing.assert_allclose(losses.content_loss(F, P), 5 / 3, rtol=1e-6)


def test_total_variation_hand_2x2():
    # Red channel [[0, 1], [2, 4]], green and blue zero.
    # vertical pairs: (2-0)^2 + (4-1)^2 = 4 + 9 = 13 over 1*2*3 = 6 entries -> 13/6
    # horizontal pairs: (1-0)^2 + (4-2)^2 = 1 + 4 = 5 over 2*1*3 = 6 entries -> 5/6
    # TV = 18/6 = 3
    img = np.zeros((2, 2, 3), np.float32)
    img[..., 0] = [[0, 1], [2, 4]]
    np.testing.assert_allclose(losses.total_variation(jnp.asarray(img)), 3.0, rtol=1e-6)


def test_total_variation_single_pixel_and_constant():
    assert float(losses.total_variation(jnp.ones((1, 1, 3)))) == 0.0
    assert float(losses.total_variation(jnp.full((3, 4, 3), 0.7))) == 0.0


def test_eq5_hand_1x2x1():
    # F = (1, 2), m = (1, 1), A = [[1]], c = 1: G = 2.5, N = 2, E = (2.5 - 1)^2 = 2.25
    # dE/dF_p = 4 / (1 * 2) * 1 * (2.5 - 1) * F_p = 3 F_p -> (3, 6)
    # (check: E = ((F0^2 + F1^2)/2 - 1)^2, dE/dF0 = 2 * 1.5 * F0 = 3)
    F = jnp.array([[[1.0], [2.0]]])
    m = jnp.ones((1, 2))
    A = jnp.array([[1.0]])
    np.testing.assert_allclose(losses.style_error(losses.masked_gram(F, m)[0], A), 2.25, rtol=1e-7)
    np.testing.assert_allclose(losses.masked_style_grad_eq5(F, m, A), [[[3.0], [6.0]]], rtol=1e-6)


def test_segment_style_loss_hand():
    # tap "a": F = [[1], [2]], m = (1, 0.5): G = (1 + 0.5*4) / 1.5 = 2, A = [[1]] -> E = 1, lambda = 3
    # tap "b": F = [[2]], m = [[1]]: G = 4, A = [[2]] -> E = 4, lambda = 0.5
    # L = 3 * 1 + 0.5 * 4 = 5
    feats = {"a": jnp.array([[[1.0], [2.0]]]), "b": jnp.array([[[2.0]]])}
    masks = {"a": jnp.array([[1.0, 0.5]]), "b": jnp.array([[1.0]])}
    targets = {"a": jnp.array([[1.0]]), "b": jnp.array([[2.0]])}
    weights = {"a": 3.0, "b": 0.5}
    np.testing.assert_allclose(losses.segment_style_loss(feats, masks, targets, weights), 5.0, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Against the float64 reference.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_gram_vs_reference(shape):
    F = make_features(seed("gram", shape), shape)
    with highest():
        G = losses.gram(jnp.asarray(F))
    assert G.shape == (shape[2], shape[2]) and G.dtype == jnp.float32
    np.testing.assert_allclose(G, ref_gram(F), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_masked_gram_vs_reference(shape, kind):
    rng = seed("mgram", shape, kind)
    F = make_features(rng, shape)
    m = make_mask(rng, shape[:2], kind)
    with highest():
        G, area = losses.masked_gram(jnp.asarray(F), jnp.asarray(m))
    G_ref, area_ref = ref_masked_gram(F, m)
    np.testing.assert_allclose(G, G_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(area, area_ref, rtol=1e-6)
    np.testing.assert_allclose(G, G.T, rtol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_masked_gram_full_mask_is_gram(shape):
    F = jnp.asarray(make_features(seed("full", shape), shape))
    with highest():
        G, area = losses.masked_gram(F, jnp.ones(shape[:2]))
        np.testing.assert_allclose(G, losses.gram(F), rtol=1e-6, atol=1e-7)
    assert float(area) == shape[0] * shape[1]


def test_masked_gram_empty_mask_is_zero_not_nan():
    F = jnp.asarray(make_features(seed("empty"), (4, 5, 3)))
    G, area = losses.masked_gram(F, jnp.zeros((4, 5)))
    assert float(area) == 0.0
    np.testing.assert_array_equal(G, np.zeros((3, 3)))


def test_masked_gram_rejects_wrong_mask_shape():
    with pytest.raises(ValueError):
        losses.masked_gram(jnp.ones((4, 5, 3)), jnp.ones((5, 4)))


@pytest.mark.parametrize("shape", SHAPES)
def test_style_error_vs_reference(shape):
    rng = seed("serr", shape)
    c = shape[2]
    G = make_sym(rng, c) * 3
    A = make_sym(rng, c)
    np.testing.assert_allclose(losses.style_error(jnp.asarray(G), jnp.asarray(A)), ref_style_error(G, A), rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_content_loss_vs_reference(shape):
    rng = seed("content", shape)
    F = make_features(rng, shape)
    P = make_features(rng, shape)
    np.testing.assert_allclose(losses.content_loss(jnp.asarray(F), jnp.asarray(P)), ref_content_loss(F, P), rtol=1e-5)


@pytest.mark.parametrize("shape", [(4, 5, 3), (7, 3, 3), (1, 4, 3), (5, 1, 3), (1, 1, 3)])
def test_total_variation_vs_reference(shape):
    img = seed("tv", shape).random(shape).astype(np.float32)
    tv = losses.total_variation(jnp.asarray(img))
    assert np.isfinite(float(tv))
    np.testing.assert_allclose(tv, ref_total_variation(img), rtol=1e-5, atol=1e-7)


def make_layers(rng, kind, shapes=(("relu1_1", (8, 6, 3)), ("relu2_1", (4, 3, 5)), ("relu3_1", (2, 2, 4)))):
    feats, masks, targets, weights = {}, {}, {}, {}
    for i, (tap, shp) in enumerate(shapes):
        feats[tap] = make_features(rng, shp)
        masks[tap] = make_mask(rng, shp[:2], kind)
        targets[tap] = make_sym(rng, shp[2])
        weights[tap] = np.float32(0.5 + i)
    return feats, masks, targets, weights


def to_jnp(d):
    return {k: jnp.asarray(v) for k, v in d.items()}


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_segment_style_loss_vs_reference(kind):
    feats, masks, targets, weights = make_layers(seed("seg", kind), kind)
    with highest():
        L = losses.segment_style_loss(to_jnp(feats), to_jnp(masks), to_jnp(targets), weights)
    np.testing.assert_allclose(L, ref_segment_style_loss(feats, masks, targets, weights), rtol=1e-5)


def test_segment_style_loss_ignores_extra_feature_taps():
    feats, masks, targets, weights = make_layers(seed("extra"), "soft")
    extra = dict(to_jnp(feats), relu4_2=jnp.ones((1, 1, 7)))
    with highest():
        a = losses.segment_style_loss(extra, to_jnp(masks), to_jnp(targets), weights)
        b = losses.segment_style_loss(to_jnp(feats), to_jnp(masks), to_jnp(targets), weights)
    np.testing.assert_allclose(a, b, rtol=1e-7)


# ----------------------------------------------------------------------------------------------
# Empty / vanishing segments.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vanish", [0.0, 1e-5])
def test_segment_style_loss_zero_mask_layer_is_skipped(vanish):
    feats, masks, targets, weights = make_layers(seed("zero"), "soft")
    masks["relu3_1"] = np.full_like(masks["relu3_1"], vanish)  # area 0 or 4e-5 < min_area = 1e-3
    F, M, T = to_jnp(feats), to_jnp(masks), to_jnp(targets)
    W = {k: jnp.asarray(v) for k, v in weights.items()}
    with highest():
        L = losses.segment_style_loss(F, M, T, W)
        without = losses.segment_style_loss(
            F, M, {k: v for k, v in T.items() if k != "relu3_1"}, W
        )
        assert np.isfinite(float(L))
        np.testing.assert_allclose(L, without, rtol=1e-7)  # the empty layer contributes 0
        np.testing.assert_allclose(L, ref_segment_style_loss(feats, masks, targets, weights), rtol=1e-5)

        gF, gM, gW = jax.grad(losses.segment_style_loss, argnums=(0, 1, 3))(F, M, T, W)
    for tree in (gF, gM, gW):
        for v in jax.tree_util.tree_leaves(tree):
            assert np.all(np.isfinite(np.asarray(v)))
    np.testing.assert_array_equal(gF["relu3_1"], 0.0)
    assert float(gW["relu3_1"]) == 0.0
    assert np.any(np.asarray(gF["relu1_1"]) != 0.0)  # the other layers still train


def test_segment_style_loss_threshold_is_on_area():
    # One position with mask value just below / above min_area.
    F = {"t": jnp.array([[[1.0], [2.0]]])}
    T = {"t": jnp.array([[0.0]])}
    W = {"t": 1.0}
    below = losses.segment_style_loss(F, {"t": jnp.array([[9e-4, 0.0]])}, T, W, min_area=1e-3)
    above = losses.segment_style_loss(F, {"t": jnp.array([[2e-3, 0.0]])}, T, W, min_area=1e-3)
    assert float(below) == 0.0
    np.testing.assert_allclose(above, 1.0, rtol=1e-5)  # G = 1 regardless of the (tiny) area


def test_segment_style_loss_jit_with_traced_weights():
    feats, masks, targets, weights = make_layers(seed("jit"), "hard")
    F, M, T = to_jnp(feats), to_jnp(masks), to_jnp(targets)
    W = {k: jnp.asarray(v) for k, v in weights.items()}
    with highest():
        eager = losses.segment_style_loss(F, M, T, W)
        jitted = jax.jit(losses.segment_style_loss)(F, M, T, W)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Equation (5) against autodiff.
# ----------------------------------------------------------------------------------------------


def masked_style_error(F, m, A):
    return losses.style_error(losses.masked_gram(F, m)[0], A)


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_eq5_matches_autodiff(shape, kind):
    rng = seed("eq5", shape, kind)
    F = jnp.asarray(make_features(rng, shape))
    m = jnp.asarray(make_mask(rng, shape[:2], kind))
    A = jnp.asarray(make_sym(rng, shape[2]))
    with highest():
        auto = jax.grad(masked_style_error)(F, m, A)
        eq5 = losses.masked_style_grad_eq5(F, m, A)
    scale = float(np.abs(np.asarray(auto)).max())
    np.testing.assert_allclose(eq5, auto, rtol=1e-4, atol=1e-6 * scale)
    np.testing.assert_allclose(eq5, ref_eq5(np.asarray(F), np.asarray(m), np.asarray(A)), rtol=1e-4, atol=1e-6 * scale)


@pytest.mark.parametrize("shape", [(4, 5, 3), (7, 3, 8)])
def test_eq5_through_relu_case_split(shape):
    # F = relu(Z): dE/dZ = eq5(F) where Z > 0 and 0 where Z < 0 -- the paper's two cases.
    rng = seed("relu", shape)
    Z = jnp.asarray(rng.normal(size=shape).astype(np.float32))
    m = jnp.asarray(make_mask(rng, shape[:2], "soft"))
    A = jnp.asarray(make_sym(rng, shape[2]))
    with highest():
        auto = jax.grad(lambda z: masked_style_error(jax.nn.relu(z), m, A))(Z)
        eq5 = losses.masked_style_grad_eq5(jax.nn.relu(Z), m, A)
    expected = jnp.where(Z > 0, eq5, 0.0)
    scale = float(np.abs(np.asarray(auto)).max())
    np.testing.assert_allclose(auto, expected, rtol=1e-4, atol=1e-6 * scale)
    assert np.all(np.asarray(auto)[np.asarray(Z) < 0] == 0.0)
    assert np.any(np.asarray(auto)[np.asarray(Z) > 0] != 0.0)


def test_eq5_nonsymmetric_target_matches_autodiff():
    rng = seed("nonsym")
    F = jnp.asarray(make_features(rng, (4, 5, 3)))
    m = jnp.asarray(make_mask(rng, (4, 5), "soft"))
    A = jnp.asarray(rng.random((3, 3)).astype(np.float32))
    with highest():
        np.testing.assert_allclose(
            losses.masked_style_grad_eq5(F, m, A), jax.grad(masked_style_error)(F, m, A), rtol=1e-4, atol=1e-7
        )


def test_eq5_empty_mask_is_zero():
    F = jnp.asarray(make_features(seed("e5empty"), (4, 5, 3)))
    g = losses.masked_style_grad_eq5(F, jnp.zeros((4, 5)), jnp.eye(3))
    np.testing.assert_array_equal(g, 0.0)


# ----------------------------------------------------------------------------------------------
# vmap across segments equals a loop.
# ----------------------------------------------------------------------------------------------


def test_vmap_over_segments_equals_loop():
    rng = seed("vmap")
    K = 3
    feats, _, _, weights = make_layers(rng, "soft")
    shapes = {tap: f.shape for tap, f in feats.items()}
    # Soft masks summing to 1 per position, with segment 2 empty at the deepest layer.
    masks_k = {}
    for tap, (h, w, c) in shapes.items():
        raw = rng.random((K, h, w)).astype(np.float32)
        masks_k[tap] = raw / raw.sum(0, keepdims=True)
    masks_k["relu3_1"][2] = 0.0
    targets_k = {tap: np.stack([make_sym(rng, c) for _ in range(K)]) for tap, (h, w, c) in shapes.items()}
    F, W = to_jnp(feats), {k: jnp.asarray(v) for k, v in weights.items()}
    with highest():
        batched = jax.vmap(losses.segment_style_loss, in_axes=(None, 0, 0, None))(
            F, to_jnp(masks_k), to_jnp(targets_k), W
        )
        loop = [
            losses.segment_style_loss(
                F,
                {t: jnp.asarray(v[k]) for t, v in masks_k.items()},
                {t: jnp.asarray(v[k]) for t, v in targets_k.items()},
                W,
            )
            for k in range(K)
        ]
    assert batched.shape == (K,)
    np.testing.assert_allclose(batched, np.array(loop), rtol=1e-6)
    for k in range(K):
        ref = ref_segment_style_loss(
            feats, {t: v[k] for t, v in masks_k.items()}, {t: v[k] for t, v in targets_k.items()}, weights
        )
        np.testing.assert_allclose(batched[k], ref, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# the batched form used by the engine


@pytest.mark.parametrize("shape,k", [((6, 5, 4), 3), ((3, 7, 2), 1)])
def test_masked_grams_equals_vmapped_masked_gram(shape, k):
    rng = np.random.default_rng(7)
    f = jnp.asarray(rng.normal(size=shape).astype(np.float32))
    m = jnp.asarray(rng.uniform(size=(k,) + shape[:2]).astype(np.float32)).at[0].set(0.0)  # one empty
    g, area = losses.masked_grams(f, m)
    g_ref, area_ref = jax.vmap(losses.masked_gram, in_axes=(None, 0))(f, m)
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(area, area_ref, rtol=1e-6)
    assert np.all(np.asarray(g[0]) == 0)


def test_segments_style_loss_equals_vmap_of_segment_style_loss_with_gradients():
    rng = np.random.default_rng(8)
    taps = {"a": (6, 6, 3), "b": (3, 3, 5)}
    k = 3
    feats = {t: jnp.asarray(rng.normal(size=s).astype(np.float32)) for t, s in taps.items()}
    masks_ = {t: jnp.asarray(rng.uniform(size=(k,) + s[:2]).astype(np.float32)) for t, s in taps.items()}
    masks_["b"] = masks_["b"].at[2].set(0.0)  # segment 2 vanishes at the deeper tap
    targets = {t: jnp.asarray(rng.normal(size=(k, s[2], s[2])).astype(np.float32)) for t, s in taps.items()}
    weights = {"a": 0.5, "b": 2.0}

    def batched(f):
        return losses.segments_style_loss(f, masks_, targets, weights)

    def vmapped(f):
        return jax.vmap(losses.segment_style_loss, in_axes=(None, 0, 0, None))(f, masks_, targets, weights)

    np.testing.assert_allclose(jax.jit(batched)(feats), jax.jit(vmapped)(feats), rtol=1e-5)
    gb = jax.jit(jax.grad(lambda f: jnp.sum(batched(f) * jnp.arange(1.0, k + 1))))(feats)
    gv = jax.jit(jax.grad(lambda f: jnp.sum(vmapped(f) * jnp.arange(1.0, k + 1))))(feats)
    for t in taps:
        np.testing.assert_allclose(gb[t], gv[t], rtol=1e-4, atol=1e-6)
        assert np.all(np.isfinite(np.asarray(gb[t])))


@pytest.mark.parametrize("shape,k", [((6, 5, 4), 3), ((3, 7, 2), 1)])
def test_masked_grams_closed_form_gradient_equals_autodiff(shape, k):
    # masked_grams has a hand-written VJP; compare it, for the features AND the masks, with autodiff
    # of the plain per-segment masked_gram and with a float64 finite difference of the NumPy reference.
    rng = np.random.default_rng(11)
    f = jnp.asarray(rng.normal(size=shape).astype(np.float32))
    m = jnp.asarray(rng.uniform(size=(k,) + shape[:2]).astype(np.float32))
    cot = jnp.asarray(rng.normal(size=(k, shape[2], shape[2])).astype(np.float32))  # not symmetric on purpose

    def closed(f, m):
        return jnp.sum(losses.masked_grams(f, m)[0] * cot)

    def plain(f, m):
        return jnp.sum(jax.vmap(losses.masked_gram, in_axes=(None, 0))(f, m)[0] * cot)

    with highest():
        gf, gm = jax.grad(closed, argnums=(0, 1))(f, m)
        rf, rm = jax.grad(plain, argnums=(0, 1))(f, m)
    np.testing.assert_allclose(gf, rf, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gm, rm, rtol=1e-4, atol=1e-5)

    # one feature entry and one mask entry by central differences of the float64 reference
    F64, M64, C64 = (np.asarray(a, np.float64) for a in (f, m, cot))

    def ref_value(F, M):
        return sum(float(np.sum(ref_masked_gram(F, M[j])[0] * C64[j])) for j in range(k))

    e = 1e-6
    dF = np.zeros_like(F64)
    dF[1, 2, 0] = e
    dM = np.zeros_like(M64)
    dM[k - 1, 0, 1] = e
    np.testing.assert_allclose(gf[1, 2, 0], (ref_value(F64 + dF, M64) - ref_value(F64 - dF, M64)) / (2 * e), rtol=1e-4)
    np.testing.assert_allclose(gm[k - 1, 0, 1], (ref_value(F64, M64 + dM) - ref_value(F64, M64 - dM)) / (2 * e),
                               rtol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_gram_closed_form_gradient_equals_autodiff(shape):
    rng = seed("gramgrad", shape)
    F = jnp.asarray(make_features(rng, shape))
    cot = jnp.asarray(rng.normal(size=(shape[2], shape[2])).astype(np.float32))
    h, w, c = shape

    def plain(F):
        f = F.reshape(h * w, c)
        return jnp.sum((f.T @ f) / (h * w) * cot)

    with highest():
        got = jax.grad(lambda F: jnp.sum(losses.gram(F) * cot))(F)
        want = jax.grad(plain)(F)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # and by hand: d/dF_p sum_ij G_ij C_ij = (C + C^T) F_p / (h w)
    expect = np.einsum("yxi,ij->yxj", np.asarray(F, np.float64), np.asarray(cot + cot.T, np.float64)) / (h * w)
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-6)
