"""The Flax VGG against a torchvision-identical torch VGG, through the converter, layer by layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from segstyle_jax import vgg  # noqa: E402
from segstyle_jax.convert import convert_torch_file  # noqa: E402
from segstyle_jax.weights import load_weights  # noqa: E402
from torch_vgg import TorchVGG, layer_outputs  # noqa: E402


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)


@pytest.mark.parametrize("arch,pooling,conv", [("vgg16", "max", "direct"), ("vgg19", "max", "direct"),
                                               ("vgg19", "avg", "direct"), ("vgg16", "max", "winograd")])
def test_every_layer_matches_torch(tmp_path, arch, pooling, conv):
    torch.manual_seed(0)
    model = TorchVGG(arch, pooling).eval()
    pth = tmp_path / f"{arch}.pth"
    torch.save(model.state_dict(), pth)
    weights = load_weights(convert_torch_file(pth, tmp_path / f"{arch}.npz"))
    assert weights.arch == arch

    names = list(vgg.layer_names(arch))
    x = np.random.default_rng(1).uniform(0, 1, (2, 36, 44, 3)).astype(np.float32)
    mean, std = np.array(vgg.IMAGENET_MEAN, np.float32), np.array(vgg.IMAGENET_STD, np.float32)
    with torch.no_grad():
        ref = layer_outputs(model, torch.from_numpy(((x - mean) / std).transpose(0, 3, 1, 2)), names)
    with jax.default_matmul_precision("highest"):
        ours = jax.jit(weights.model(tuple(names), pooling, conv).apply)(weights.variables(), jnp.asarray(x))
    assert set(ours) == set(names)
    for name in names:
        expected = ref[name].numpy().transpose(0, 2, 3, 1)
        assert ours[name].shape == expected.shape, name
        assert rel_err(ours[name], expected) < 1e-4, name


def test_computes_only_up_to_the_deepest_tap(tmp_path):
    torch.manual_seed(0)
    pth = tmp_path / "vgg16.pth"
    torch.save(TorchVGG("vgg16").state_dict(), pth)
    weights = load_weights(convert_torch_file(pth, tmp_path / "w.npz"))
    model = weights.model(("relu2_1", "relu1_2"))
    jaxpr = jax.make_jaxpr(model.apply)(weights.variables(), jnp.zeros((1, 16, 16, 3)))
    n_conv = sum(eqn.primitive.name == "conv_general_dilated" for eqn in jaxpr.jaxpr.eqns)
    assert n_conv == 3  # conv1_1, conv1_2, conv2_1 and nothing deeper
    out = model.apply(weights.variables(), jnp.zeros((16, 16, 3)))  # unbatched input
    assert out["relu1_2"].shape == (16, 16, 64) and out["relu2_1"].shape == (8, 8, 128)


def test_bfloat16_layers_return_float32_features_close_to_float32(random_weights):
    x = jnp.asarray(np.random.default_rng(3).uniform(0, 1, (20, 24, 3)).astype(np.float32))
    taps = ("relu1_1", "relu3_1")
    full = random_weights.model(taps)
    half = full.clone(dtype="bfloat16")
    f32, b16 = full.apply(random_weights.variables(), x), half.apply(random_weights.variables(), x)
    jaxpr = jax.make_jaxpr(half.apply)(random_weights.variables(), x)
    conv_dtypes = {str(e.invars[0].aval.dtype) for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"}
    assert conv_dtypes == {"bfloat16"}  # the convolutions do run in bfloat16
    for tap in taps:
        assert b16[tap].dtype == jnp.float32
        err = float(jnp.abs(b16[tap] - f32[tap]).max() / jnp.abs(f32[tap]).max())
        assert 1e-5 < err < 3e-2, (tap, err)  # rounded (not identical), but only by bfloat16's ~3 digits
    with pytest.raises(ValueError, match="dtype must be one of"):
        full.clone(dtype="float16").apply(random_weights.variables(), x)
    # Winograd's transforms amplify bfloat16's rounding: 'auto' runs direct there, 'winograd' is refused
    plan = vgg.conv_algorithms("vgg16", "auto", 64, 64, "cpu", "bfloat16")
    assert set(plan.values()) == {"direct"} != set(vgg.conv_algorithms("vgg16", "auto", 64, 64, "cpu").values())
    with pytest.raises(ValueError, match="loses too much in bfloat16"):
        full.clone(dtype="bfloat16", conv="winograd").apply(random_weights.variables(), x)


def test_unknown_tap_is_an_error():
    with pytest.raises(ValueError, match="relu6_1"):
        vgg.VGG("vgg16", taps=("relu6_1",)).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="relu5_4"):  # vgg16 has three convolutions in block 5
        vgg.VGG("vgg16", taps=("relu5_4",)).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_reshape_pooling_equals_flax_pooling_and_its_gradient(pooling):
    import flax.linen as nn

    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 7, 9, 3)).astype(np.float32))  # odd sizes, no ties
    flax_pool = nn.max_pool if pooling == "max" else nn.avg_pool
    ref = lambda v: flax_pool(v, (2, 2), strides=(2, 2), padding="VALID")  # noqa: E731
    ours = lambda v: vgg.pool_2x2(v, pooling)  # noqa: E731
    np.testing.assert_array_equal(ours(x), ref(x))
    w = jnp.arange(2 * 3 * 4 * 3, dtype=jnp.float32).reshape(2, 3, 4, 3)
    np.testing.assert_allclose(jax.grad(lambda v: jnp.sum(ours(v) * w))(x), jax.grad(lambda v: jnp.sum(ref(v) * w))(x))
