"""device_variables: the step's VGG variables on the device, shared between steps while one holds them."""

import gc
import weakref

import jax
import numpy as np
from conftest import random_vgg_params

from segstyle_jax import device_variables as dv, vgg


def plan(size):
    return vgg.conv_algorithms("vgg16", "auto", size, size, "cpu")


def test_the_same_arrays_as_prepared_variables():
    params = {k: v for k, v in random_vgg_params().items() if k <= "conv4_1"}
    got = dv.device_variables(params, plan(128))
    want = {"params": params, "prepared": vgg.prepared_variables(params, plan(128))}
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert isinstance(a, jax.Array)
        np.testing.assert_array_equal(np.asarray(a), b)
    assert "u" in got["prepared"]["conv2_1"] and "u" not in got["prepared"]["conv1_1"]


def test_shared_between_plans_while_alive_and_freed_after():
    params = random_vgg_params()
    small, large = dv.device_variables(params, plan(64)), dv.device_variables(params, plan(256))
    assert (plan(64)["conv4_1"], plan(256)["conv4_1"]) == ("winograd2x2", "winograd2x2")
    assert large["params"]["conv1_1"]["kernel"] is small["params"]["conv1_1"]["kernel"]
    assert large["prepared"]["conv3_1"]["kernel_flipped"] is small["prepared"]["conv3_1"]["kernel_flipped"]
    assert large["prepared"]["conv4_1"]["u"] is small["prepared"]["conv4_1"]["u"]  # F(2x2) at both sizes
    assert plan(64)["conv2_1"] != plan(256)["conv2_1"]  # F(2x2) against F(4x4): different transforms
    assert large["prepared"]["conv2_1"]["u"].shape[0] == 36 and small["prepared"]["conv2_1"]["u"].shape[0] == 16

    # nothing but the steps keeps a device array alive ...
    watch = weakref.ref(large["prepared"]["conv2_1"]["u"])
    del small, large
    gc.collect()
    assert watch() is None
    # ... and a host array that goes takes its entries with it
    before = len(dv._memo)
    del params
    gc.collect()
    assert len(dv._memo) < before
