"""The PyTorch converter and its command-line tool: layouts, architecture inference, bad input."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from segstyle_jax import vgg  # noqa: E402
from segstyle_jax.convert import infer_arch, params_from_torch_state_dict, torch_kernel_to_hwio  # noqa: E402
from segstyle_jax.weights import WeightsError, load_weights  # noqa: E402
from torch_vgg import TorchVGG  # noqa: E402

TOOL = Path(__file__).resolve().parent.parent / "tools" / "convert_torch_weights.py"


def run_tool(*args):
    # tests/ on the path so that a whole pickled TorchVGG can be unpickled by the tool
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, env=env)


def test_kernel_transpose():
    w = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3)  # O, I, H, W
    hwio = torch_kernel_to_hwio(w)
    assert hwio.shape == (3, 3, 3, 2)
    assert hwio[1, 2, 0, 1] == w[1, 0, 1, 2]


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_infers_architecture_and_ignores_classifier(arch):
    sd = TorchVGG(arch).state_dict()
    assert infer_arch(sd) == arch
    got_arch, params = params_from_torch_state_dict(sd)
    assert got_arch == arch and list(params) == list(vgg.conv_names(arch))


def test_missing_and_extra_layers_are_named():
    sd = TorchVGG("vgg16").state_dict()
    del sd["features.28.bias"]
    with pytest.raises(WeightsError, match=r"missing keys for vgg16: features\.28\.bias"):
        params_from_torch_state_dict(sd)
    sd = TorchVGG("vgg16").state_dict()
    sd["features.3.weight"] = torch.zeros(1)  # index 3 is a ReLU in vgg16
    with pytest.raises(WeightsError, match="match neither vgg16 nor vgg19"):
        params_from_torch_state_dict(sd)
    sd = TorchVGG("vgg16").state_dict()
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"unexpected keys for vgg16: extra\.weight"):
        params_from_torch_state_dict(sd)


def test_tool_converts_state_dict_and_checkpoint_dicts(tmp_path):
    model = TorchVGG("vgg19")
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, tmp_path / "ckpt.pth")
    result = run_tool(tmp_path / "ckpt.pth", tmp_path / "out.npz")
    assert result.returncode == 0, result.stderr
    assert "vgg19, 16 convolutions" in result.stdout
    weights = load_weights(tmp_path / "out.npz")
    np.testing.assert_array_equal(weights.params["conv5_4"]["bias"], model.features[34].bias.detach().numpy())


def test_tool_whole_model_needs_explicit_unsafe_flag(tmp_path):
    torch.save(TorchVGG("vgg16"), tmp_path / "model.pth")
    result = run_tool(tmp_path / "model.pth", tmp_path / "out.npz")
    assert result.returncode == 2 and "--allow-unsafe-pickle" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out.npz").exists()
    result = run_tool("--allow-unsafe-pickle", tmp_path / "model.pth", tmp_path / "out.npz")
    assert result.returncode == 0, result.stderr
    assert load_weights(tmp_path / "out.npz").arch == "vgg16"


def test_tool_one_line_errors(tmp_path):
    result = run_tool(tmp_path / "absent.pth", tmp_path / "out.npz")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'absent.pth'}: file not found"
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    result = run_tool(tmp_path / "junk.pth", tmp_path / "out.npz")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "junk.pth: cannot read" in result.stderr
    assert not (tmp_path / "out.npz").exists()
