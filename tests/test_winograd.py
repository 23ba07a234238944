"""Winograd F(4x4, 3x3) and F(2x2, 3x3) against a NumPy convolution and XLA's own, values and gradients."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from segstyle_jax import vgg, winograd


def numpy_conv3x3(x, w):
    """Cross-correlation with one pixel of zero padding, written out: ``[n, h, w, ci] -> [n, h, w, co]``."""
    n, h, wd, _ = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, wd, w.shape[3]))
    for dy in range(3):
        for dx in range(3):
            out += xp[:, dy:dy + h, dx:dx + wd] @ w[dy, dx].astype(np.float64)
    return out


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


def random_case(shape, c_out, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    w = (rng.standard_normal((3, 3, shape[-1], c_out)) / np.sqrt(9 * shape[-1])).astype(np.float32)
    return x, w


# Relative error allowed against float64 NumPy: F(2x2)'s transforms hold 0, +-1 and 1/2 only, F(4x4)'s
# entries up to 8 and fractions down to 1/24, so it rounds about 10x more (measured on these cases:
# 1-2e-7 and 1-2e-6; 8e-7 and 1e-5 with 256 input channels). A wrong transform entry gives errors of order 1.
TOL = {2: 2e-6, 4: 2e-5}


def test_kernel_transform_by_hand():
    """``G w G^T`` for one channel pair. F(2x2): rows of G are w0, (w0+w1+w2)/2, (w0-w1+w2)/2, w2.
    F(4x4): its G's rows evaluate the kernel polynomial at 0, 1, -1, 2, -2 (scaled) and infinity."""
    w = np.arange(9, dtype=np.float32).reshape(3, 3, 1, 1)
    g = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])
    expected = g @ w[:, :, 0, 0] @ g.T
    np.testing.assert_allclose(winograd.kernel_transform(w, 2)[:, 0, 0], expected.reshape(16), rtol=1e-6)
    assert expected[0, 0] == w[0, 0] and expected[3, 3] == w[2, 2] and expected[1, 1] == 0.25 * w.sum()
    g4 = np.array([[6, 0, 0], [-4, -4, -4], [-4, 4, -4], [1, 2, 4], [1, -2, 4], [0, 0, 24]]) / 24
    u4 = winograd.kernel_transform(w, 4)[:, 0, 0].reshape(6, 6)
    np.testing.assert_allclose(u4, g4 @ w[:, :, 0, 0] @ g4.T, rtol=1e-6)
    assert u4[0, 0] == w[0, 0, 0, 0] / 16 and u4[5, 5] == w[2, 2, 0, 0]
    np.testing.assert_allclose(u4[1, 1], w.sum() / 36, rtol=1e-6)   # (-1/6)^2 * sum
    # traced kernels give the same transform
    np.testing.assert_allclose(jax.jit(winograd.kernel_transform, static_argnums=1)(w, 4)[:, 0, 0], u4.reshape(36),
                               rtol=1e-6, atol=1e-6)


def test_transforms_are_exact_for_polynomial_points():
    """``A^T [(G g) * (B^T d)] = 1-D correlation of d with g`` for every transform pair, exactly in float64."""
    rng = np.random.default_rng(7)
    for tile, (bt, g, at) in winograd.TRANSFORMS.items():
        d, k = rng.standard_normal(tile + 2), rng.standard_normal(3)
        np.testing.assert_allclose(at @ ((g @ k) * (bt @ d)), np.correlate(d, k, "valid"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("shape,c_out", [((1, 8, 8, 4), 5), ((2, 7, 9, 3), 4), ((1, 1, 1, 2), 3),
                                         ((3, 13, 6, 16), 8)])
def test_equals_numpy_convolution(shape, c_out, tile):
    x, w = random_case(shape, c_out)
    expected = numpy_conv3x3(x, w)
    assert rel_err(winograd.conv3x3_winograd(jnp.asarray(x), w, tile), expected) < TOL[tile]    # host transform
    traced = jax.jit(winograd.conv3x3_winograd, static_argnums=2)
    assert rel_err(traced(x, w, tile), expected) < TOL[tile]                                    # kernel traced
    assert rel_err(winograd.conv3x3_direct(x, w), expected) < 2e-6


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("shape,c_out", [((1, 8, 10, 4), 6), ((2, 7, 5, 8), 3)])
def test_gradients_equal_the_direct_convolution(shape, c_out, tile):
    x, w = random_case(shape, c_out, seed=1)
    g = np.random.default_rng(2).standard_normal(shape[:-1] + (c_out,)).astype(np.float32)
    dx_ref, dw_ref = jax.vjp(winograd.conv3x3_direct, x, w)[1](g)
    conv = lambda x, w: winograd.conv3x3_winograd(x, w, tile)  # noqa: E731
    dx, dw = jax.jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g))(x, w, g)   # traced kernel
    assert rel_err(dx, dx_ref) < TOL[tile] and rel_err(dw, dw_ref) < 2e-6
    dx_fixed = jax.jit(jax.grad(lambda x: jnp.vdot(conv(x, w), g)))(x)   # constant kernel
    assert rel_err(dx_fixed, dx_ref) < TOL[tile]
    # and the input gradient against NumPy: the correlation with the flipped, transposed kernel
    assert rel_err(dx, numpy_conv3x3(g, w[::-1, ::-1].transpose(0, 1, 3, 2))) < TOL[tile]


def test_auto_rule():
    rule = winograd.layer_algorithm
    assert rule("auto", 64, 64, 256, 256, "cpu") == "winograd"           # F(4x4) from 64x64 maps up
    assert rule("auto", 256, 256, 64, 128, "cpu") == "winograd"
    assert rule("auto", 32, 32, 256, 512, "cpu") == "winograd2x2"        # small maps: F(2x2)
    assert rule("auto", 64, 64, 3, 64, "cpu") == "direct"                # the RGB layer stays direct
    assert rule("auto", 128, 128, 64, 64, "cpu") == "direct"             # conv1_2 at 128x128 and more
    assert rule("auto", 64, 64, 64, 64, "cpu") == "winograd"
    assert rule("auto", 512, 512, 128, 128, "cpu") == "direct"           # large maps: the tiles' memory
    assert rule("auto", 64, 64, 256, 256, "gpu") == "direct"
    assert rule("winograd2x2", 512, 512, 3, 64, "gpu") == "winograd2x2"  # an explicit choice is kept
    with pytest.raises(ValueError, match="algorithm"):
        rule("fft", 8, 8, 8, 8, "cpu")
    assert winograd.worth_compiling(128, 128, 128, "cpu") and not winograd.worth_compiling(127, 128, 128, "cpu")
    assert not winograd.worth_compiling(10_000, 256, 256, "gpu")
    # with the persistent compile cache the extra compile is paid once: fewer steps repay it
    assert winograd.worth_compiling(16, 128, 128, "cpu", cached=True)
    assert not winograd.worth_compiling(15, 128, 128, "cpu", cached=True)
    assert not winograd.worth_compiling(16, 128, 128, "cpu") and not winograd.worth_compiling(1, 256, 256, "cpu", cached=True)

    def ops(c_in, side=16):
        x, w = random_case((1, side, side, c_in), 4)
        jaxpr = jax.make_jaxpr(lambda x: winograd.conv3x3(x, w, "auto"))(x)
        return {e.primitive.name for e in jaxpr.jaxpr.eqns}

    assert "conv_general_dilated" in ops(3)  # on every backend
    assert ("conv_general_dilated" in ops(16)) == (jax.default_backend() != "cpu")
    x, w = random_case((1, 16, 16, 3), 4)
    with pytest.raises(ValueError, match="algorithm"):
        winograd.conv3x3(x, w, "fft")


def test_vgg_plan_follows_the_map_sizes():
    plan = vgg.conv_algorithms("vgg16", "auto", 256, 256, "cpu")
    assert [plan[n] for n in ("conv1_1", "conv1_2", "conv2_1", "conv3_3", "conv4_1", "conv5_3")] == \
        ["direct", "direct", "winograd", "winograd", "winograd2x2", "winograd2x2"]
    assert vgg.conv_map_shapes("vgg16", 129, 135)["conv2_1"] == (64, 67, 64, 128)  # pooling floors odd sizes
    odd = vgg.conv_algorithms("vgg16", "auto", 129, 135, "cpu")
    assert odd["conv2_1"] == "winograd" and odd["conv3_1"] == "winograd2x2"
    assert set(vgg.conv_algorithms("vgg19", "auto", 256, 256, "gpu").values()) == {"direct"}
    assert set(vgg.conv_algorithms("vgg16", "winograd", 64, 64, "cpu").values()) == {"winograd"}


def test_vgg_features_and_gradient_agree_across_algorithms():
    # conv1_1 .. conv3_1 over 36x28, 18x14 and odd 9x7 maps (auto: direct for the RGB layer only)
    model = vgg.VGG("vgg16", taps=("relu1_2", "relu3_1"))
    x = jnp.asarray(np.random.default_rng(3).uniform(0, 1, (1, 36, 28, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    params = jax.tree.map(np.asarray, variables)
    out = {}
    for conv in winograd.ALGORITHMS:
        m = vgg.VGG("vgg16", taps=model.taps, conv=conv)
        feats_and_grad = jax.jit(lambda x, m=m: (m.apply(params, x), jax.grad(
            lambda x: sum(jnp.sum(f ** 2) for f in m.apply(params, x).values()))(x)))
        out[conv] = feats_and_grad(x)
    for conv in ("auto", "winograd", "winograd2x2"):
        for tap in model.taps:
            assert rel_err(out[conv][0][tap], out["direct"][0][tap]) < 5e-5, (conv, tap)
        assert rel_err(out[conv][1], out["direct"][1]) < 5e-5, conv
    with pytest.raises(ValueError, match="conv"):
        vgg.VGG("vgg16", taps=("relu1_1",), conv="fft").init(jax.random.key(0), x)


@pytest.mark.parametrize("tile", [2, 4])
def test_prepared_kernels_give_the_same_convolution_and_input_gradient(tile):
    x, w = random_case((2, 9, 8, 16), 6, seed=4)
    g = np.random.default_rng(5).standard_normal((2, 9, 8, 6)).astype(np.float32)
    prepared = winograd.prepared_kernels(w, tile)
    a2 = (tile + 2) ** 2
    assert prepared["u"].shape == (a2, 16, 6) and prepared["u_flipped"].shape == (a2, 6, 16)
    assert np.array_equal(prepared["kernel_flipped"], w[::-1, ::-1].transpose(0, 1, 3, 2))
    assert "u" not in winograd.prepared_kernels(w, None)
    dx_ref = jax.vjp(winograd.conv3x3_direct, x, w)[1](g)[0]
    # the kernels traced, as the step passes them: values and the input gradient
    y, dx = jax.jit(lambda x, u, uf: (winograd.conv3x3_prepared(x, u, uf),
                                      jax.vjp(lambda x: winograd.conv3x3_prepared(x, u, uf), x)[1](g)[0]))(
        x, prepared["u"], prepared["u_flipped"])
    assert rel_err(y, numpy_conv3x3(x, w)) < TOL[tile] and rel_err(dx, dx_ref) < TOL[tile]
    algorithm = {2: "winograd2x2", 4: "winograd"}[tile]
    assert rel_err(winograd.conv3x3(x, w, algorithm, prepared), numpy_conv3x3(x, w)) < TOL[tile]
    other = {2: "winograd", 4: "winograd2x2"}[tile]
    with pytest.raises(ValueError, match="prepared kernels are for"):
        winograd.conv3x3(x, w, other, prepared)
    # the direct convolution with the prepared flipped kernel: the same values, the same input gradient
    direct = jax.jit(lambda x, w, wf: (winograd.conv3x3_direct_prepared(x, w, wf),
                                       jax.vjp(lambda x: winograd.conv3x3_direct_prepared(x, w, wf), x)[1](g)[0]))
    yd, dxd = direct(x, w, prepared["kernel_flipped"])
    assert np.array_equal(yd, winograd.conv3x3_direct(x, w)) and rel_err(dxd, dx_ref) < 2e-6


def test_vgg_with_prepared_kernels_computes_the_same_and_transforms_nothing():
    model = vgg.VGG("vgg16", taps=("relu1_2", "relu2_1"), conv="winograd")
    x = jnp.asarray(np.random.default_rng(6).uniform(0, 1, (1, 12, 16, 3)), jnp.float32)
    params = jax.tree.map(np.asarray, model.init(jax.random.key(1), x)["params"])
    plan = vgg.conv_algorithms("vgg16", "winograd", 12, 16, "cpu")
    kernels = vgg.prepared_variables(params, plan)
    assert sorted(kernels) == sorted(params) == ["conv1_1", "conv1_2", "conv2_1"]
    assert all(k["u"].shape[0] == 36 and "u_flipped" in k and "kernel_flipped" in k for k in kernels.values())
    assert "u" not in vgg.prepared_variables(params)["conv2_1"]  # no plan: the flipped kernels only
    with_kernels = {"params": params, "prepared": kernels}
    a = jax.jit(model.apply)({"params": params}, x)
    b = jax.jit(model.apply)(with_kernels, x)
    for tap in model.taps:
        assert rel_err(b[tap], a[tap]) < TOL[4], tap  # the host transforms in float64, the traced in float32

    def count_dots(jaxpr):  # through custom_vjp calls and other nested programs
        n = 0
        for e in jaxpr.eqns:
            n += e.primitive.name == "dot_general"
            for v in e.params.values():
                inner = getattr(v, "jaxpr", v)
                if isinstance(inner, jax.extend.core.Jaxpr):
                    n += count_dots(inner)
        return n

    def matmuls(variables):  # the products in the traced forward pass
        return count_dots(jax.make_jaxpr(model.apply)(variables, x).jaxpr)

    winograd_layers = 3  # conv1_1 .. conv2_1 (conv='winograd' runs the RGB layer so too); the rest is past relu2_1
    assert matmuls(with_kernels) == winograd_layers          # the tile products of each layer, nothing else
    assert matmuls({"params": params}) == 3 * winograd_layers  # plus the kernel transform's two products
