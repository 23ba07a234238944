"""bench/bench_conv.py: the layers it times are VGG16's, and every algorithm, PyTorch's included,
computes the same layer."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")  # bench/ imports it (bench_step.py's helpers)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for bench/
from bench import bench_conv  # noqa: E402


def test_layer_shapes_follow_vgg16_to_conv5_1():
    shapes = bench_conv.layer_shapes(256)
    assert shapes[0] == (256, 3, 64) and shapes[1] == (256, 64, 64) and shapes[-1] == (16, 512, 512)
    assert len(shapes) == 9  # 10 convolutions to conv5_1; conv3_2 = conv3_3 and conv4_2 = conv4_3 in shape
    assert bench_conv.layer_shapes(33)[-1] == (2, 512, 512)  # pooling floors odd sizes


def test_every_algorithm_and_torch_compute_the_same_layer(capsys):
    rows = bench_conv.main(["--sizes", "16", "--rounds", "1", "--torch"])
    assert [(r["side"], r["c_in"], r["c_out"]) for r in rows] == bench_conv.layer_shapes(16)
    for r in rows:
        for a in ("direct", "winograd", "winograd2x2", "torch"):
            assert r[f"{a}_ms"] > 0 and r[f"{a}_rel_err"] < 2e-5, (r["side"], r["c_in"], a)
    assert "| 16² | 3 -> 64 |" in capsys.readouterr().out
