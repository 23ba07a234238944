"""Winograd F(2x2, 3x3) against a NumPy convolution and XLA's own, values and gradients."""

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


def test_kernel_transform_by_hand():
    """``G w G^T`` for one channel pair: rows of G are w0, (w0+w1+w2)/2, (w0-w1+w2)/2, w2."""
    w = np.arange(9, dtype=np.float32).reshape(3, 3, 1, 1)
    g = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])
    expected = g @ w[:, :, 0, 0] @ g.T
    np.testing.assert_allclose(winograd.kernel_transform(w)[:, 0, 0], expected.reshape(16), rtol=1e-6)
    assert expected[0, 0] == w[0, 0] and expected[3, 3] == w[2, 2] and expected[1, 1] == 0.25 * w.sum()


@pytest.mark.parametrize("shape,c_out", [((1, 8, 8, 4), 5), ((2, 7, 9, 3), 4), ((1, 1, 1, 2), 3),
                                         ((3, 13, 6, 16), 8)])
def test_equals_numpy_convolution(shape, c_out):
    x, w = random_case(shape, c_out)
    expected = numpy_conv3x3(x, w)
    assert rel_err(winograd.conv3x3_winograd(jnp.asarray(x), w), expected) < 2e-6      # kernel known: host transform
    assert rel_err(jax.jit(winograd.conv3x3_winograd)(x, w), expected) < 2e-6          # kernel traced
    assert rel_err(winograd.conv3x3_direct(x, w), expected) < 2e-6


@pytest.mark.parametrize("shape,c_out", [((1, 8, 10, 4), 6), ((2, 7, 5, 8), 3)])
def test_gradients_equal_the_direct_convolution(shape, c_out):
    x, w = random_case(shape, c_out, seed=1)
    g = np.random.default_rng(2).standard_normal(shape[:-1] + (c_out,)).astype(np.float32)
    dx_ref, dw_ref = jax.vjp(winograd.conv3x3_direct, x, w)[1](g)
    dx, dw = jax.jit(lambda x, w, g: jax.vjp(winograd.conv3x3_winograd, x, w)[1](g))(x, w, g)   # traced kernel
    assert rel_err(dx, dx_ref) < 2e-6 and rel_err(dw, dw_ref) < 2e-6
    dx_fixed = jax.jit(jax.grad(lambda x: jnp.vdot(winograd.conv3x3_winograd(x, w), g)))(x)   # constant kernel
    assert rel_err(dx_fixed, dx_ref) < 2e-6
    # and the input gradient against NumPy: the correlation with the flipped, transposed kernel
    assert rel_err(dx, numpy_conv3x3(g, w[::-1, ::-1].transpose(0, 1, 3, 2))) < 2e-6


def test_auto_rule():
    assert winograd.prefer_winograd(64, 64, 256, "cpu")
    assert not winograd.prefer_winograd(64, 64, 3, "cpu")          # the RGB layer stays direct
    assert not winograd.prefer_winograd(512, 512, 64, "cpu")       # large maps: 4x the memory
    assert winograd.prefer_winograd(256, 256, 64, "cpu")
    assert not winograd.prefer_winograd(64, 64, 256, "gpu")
    assert winograd.worth_compiling(64, 128, 128, "cpu") and not winograd.worth_compiling(63, 128, 128, "cpu")
    assert not winograd.worth_compiling(10_000, 256, 256, "gpu")

    def runs_direct(c_in):
        x, w = random_case((1, 16, 16, c_in), 4)
        jaxpr = jax.make_jaxpr(lambda x: winograd.conv3x3(x, w, "auto"))(x)
        return any(e.primitive.name == "conv_general_dilated" for e in jaxpr.jaxpr.eqns)

    assert runs_direct(3)  # on every backend
    assert runs_direct(16) == (jax.default_backend() != "cpu")
    x, w = random_case((1, 16, 16, 3), 4)
    with pytest.raises(ValueError, match="algorithm"):
        winograd.conv3x3(x, w, "fft")


def test_vgg_features_and_gradient_agree_across_algorithms():
    # conv1_1 .. conv3_1 over 36x28, 18x14 and odd 9x7 maps (auto: direct for the RGB layer only)
    model = vgg.VGG("vgg16", taps=("relu1_2", "relu3_1"))
    x = jnp.asarray(np.random.default_rng(3).uniform(0, 1, (1, 36, 28, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    params = jax.tree.map(np.asarray, variables)
    out = {}
    for conv in ("direct", "auto", "winograd"):
        m = vgg.VGG("vgg16", taps=model.taps, conv=conv)
        feats_and_grad = jax.jit(lambda x, m=m: (m.apply(params, x), jax.grad(
            lambda x: sum(jnp.sum(f ** 2) for f in m.apply(params, x).values()))(x)))
        out[conv] = feats_and_grad(x)
    for conv in ("auto", "winograd"):
        for tap in model.taps:
            assert rel_err(out[conv][0][tap], out["direct"][0][tap]) < 1e-5, (conv, tap)
        assert rel_err(out[conv][1], out["direct"][1]) < 1e-5, conv
    with pytest.raises(ValueError, match="conv"):
        vgg.VGG("vgg16", taps=("relu1_1",), conv="fft").init(jax.random.key(0), x)


def test_prepared_kernels_give_the_same_convolution_and_input_gradient():
    x, w = random_case((2, 9, 8, 16), 6, seed=4)
    g = np.random.default_rng(5).standard_normal((2, 9, 8, 6)).astype(np.float32)
    prepared = winograd.prepared_kernels(w)
    assert prepared["u"].shape == (16, 16, 6) and prepared["u_flipped"].shape == (16, 6, 16)
    assert np.array_equal(prepared["kernel_flipped"], w[::-1, ::-1].transpose(0, 1, 3, 2))
    dx_ref = jax.vjp(winograd.conv3x3_direct, x, w)[1](g)[0]
    # the kernels traced, as the step passes them: values and the input gradient
    y, dx = jax.jit(lambda x, u, uf: (winograd.conv3x3_prepared(x, u, uf),
                                      jax.vjp(lambda x: winograd.conv3x3_prepared(x, u, uf), x)[1](g)[0]))(
        x, prepared["u"], prepared["u_flipped"])
    assert rel_err(y, numpy_conv3x3(x, w)) < 2e-6 and rel_err(dx, dx_ref) < 2e-6
    assert rel_err(winograd.conv3x3(x, w, "winograd", prepared), numpy_conv3x3(x, w)) < 2e-6
    # the direct convolution with the prepared flipped kernel: the same values, the same input gradient
    direct = jax.jit(lambda x, w, wf: (winograd.conv3x3_direct_prepared(x, w, wf),
                                       jax.vjp(lambda x: winograd.conv3x3_direct_prepared(x, w, wf), x)[1](g)[0]))
    yd, dxd = direct(x, w, prepared["kernel_flipped"])
    assert np.array_equal(yd, winograd.conv3x3_direct(x, w)) and rel_err(dxd, dx_ref) < 2e-6


def test_vgg_with_prepared_kernels_computes_the_same_and_transforms_nothing():
    model = vgg.VGG("vgg16", taps=("relu1_2", "relu2_1"), conv="winograd")
    x = jnp.asarray(np.random.default_rng(6).uniform(0, 1, (1, 12, 16, 3)), jnp.float32)
    params = jax.tree.map(np.asarray, model.init(jax.random.key(1), x)["params"])
    kernels = vgg.prepared_variables(params)
    assert sorted(kernels) == sorted(params) == ["conv1_1", "conv1_2", "conv2_1"]
    assert all("u" in k and "u_flipped" in k and "kernel_flipped" in k for k in kernels.values())
    assert "u" not in vgg.prepared_variables(params, winograd_kernels=False)["conv2_1"]
    with_kernels = {"params": params, "prepared": kernels}
    a = jax.jit(model.apply)({"params": params}, x)
    b = jax.jit(model.apply)(with_kernels, x)
    for tap in model.taps:
        assert rel_err(b[tap], a[tap]) < 1e-6, tap

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
    assert matmuls(with_kernels) == winograd_layers          # the 16 tile products of each layer, nothing else
    assert matmuls({"params": params}) == 3 * winograd_layers  # plus the kernel transform's two products
