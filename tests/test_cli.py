"""The segstyle command line: outputs, frames, --compare, --metrics, and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from segstyle_jax import api
from segstyle_jax.cli import main


@pytest.fixture()
def files(tmp_path, tiny_scene):
    Image.fromarray((tiny_scene["content"] * 255).astype(np.uint8)).save(tmp_path / "photo.png")
    Image.fromarray(tiny_scene["labels"].astype(np.uint8)).save(tmp_path / "mask.png")
    for label, style in tiny_scene["styles"].items():
        Image.fromarray((style * 255).astype(np.uint8)).save(tmp_path / f"style{label}.png")
    return tmp_path


def base_args(d, weights_file, *extra):
    return ["stylize", str(d / "photo.png"), "--segments", str(d / "mask.png"), "--style", f"0={d / 'style0.png'}",
            "--style", f"1={d / 'style1.png'}", "--weights", str(weights_file), "--size", "40", "--steps", "4",
            "--style-layers", "relu1_1", "relu2_1", "--content-layers", "relu2_2", *extra]


def test_stylize_writes_image_frames_and_metrics(files, random_weights_file, capsys):
    out = files / "out" / "result.png"
    code = main(base_args(files, random_weights_file, "--output", str(out), "--metrics", str(files / "m.json"),
                          "--save-every", "2", "--approach", "blended"))
    assert code == 0
    assert Image.open(out).size == (40, 33)
    assert sorted(p.name for p in out.parent.iterdir()) == ["result.png", "result.step0002.png", "result.step0004.png"]
    report = json.loads((files / "m.json").read_text())
    assert list(report) == ["blended"] and len(report["blended"]["losses"]) == 4
    assert {"segments", "mean_separation", "mean_band_separation", "content_distance"} <= set(report["blended"]["metrics"])
    err = capsys.readouterr().err
    assert "step 4/4" in err and "loss" in err and "| blended |" in err


def test_compare_writes_a_sheet_and_every_approach(files, random_weights_file):
    out = files / "cmp.png"
    assert main(base_args(files, random_weights_file, "--output", str(out), "--compare", "--steps", "2")) == 0
    names = sorted(p.name for p in files.glob("cmp*.png"))
    assert names == ["cmp.blended.png", "cmp.locality.png", "cmp.localized.png", "cmp.multipass.png", "cmp.png"]
    sheet = Image.open(out)
    assert sheet.size[0] > 5 * 40 and sheet.size[1] > 33  # five panels and a caption strip


@pytest.mark.parametrize("change,message", [
    (["--segments", "MISSING.png"], "MISSING.png"),
    (["--style", "2=STYLE0"], "styles for labels not in the segmentation: 2"),
    (["--init", "nothere.png"], "nothere.png: file not found"),
    (["--gamma", "3"], "gamma must be in [0, 1]"),
    (["--layer-weights", "1", "2", "3"], "3 layer weights given for 2 style layers"),
    (["--optimizer", "lbfgs-fixed", "--lbfgs-memory", "0"], "lbfgs_memory must be a positive integer, got 0"),
])
def test_bad_input_is_one_line_and_writes_nothing(files, random_weights_file, capsys, change, message):
    change = [c.replace("STYLE0", str(files / "style0.png")) for c in change]
    code = main(base_args(files, random_weights_file, "--output", str(files / "o.png"),
                          "--metrics", str(files / "m.json"), *change))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not (files / "o.png").exists() and not (files / "m.json").exists()


def test_bad_weights_file_is_one_line(files, capsys):
    (files / "w.npz").write_bytes(b"PK\x03\x04 not really")
    code = main(base_args(files, files / "w.npz", "--output", str(files / "o.png")))
    assert code == 2 and "w.npz: not a readable segstyle_jax weight file" in capsys.readouterr().err


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "segstyle_jax", "stylize", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for group in ("inputs and outputs", "optimization", "loss", "look", "model"):
        assert group in result.stdout


@pytest.mark.real_weights
def test_demo_writes_overlay_result_sheet_and_metrics(tmp_path, capsys):
    assert main(["demo", "--output-dir", str(tmp_path), "--size", "48", "--steps", "2"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare.png", "metrics.json", "overlay.png", "result.png"]
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert list(report) == ["multipass", "blended", "locality", "localized"]
    assert Image.open(tmp_path / "result.png").size == (48, 48)
    assert "| locality |" in capsys.readouterr().out


@pytest.mark.real_weights
def test_segment_kmeans_writes_label_map_and_overlay(files, capsys):
    out, overlay = files / "labels.png", files / "overlay.png"
    assert main(["segment", str(files / "photo.png"), "--segments", "kmeans:2", "-o", str(out),
                 "--overlay", str(overlay)]) == 0
    labels = np.asarray(Image.open(out))
    assert labels.shape == (40, 48) and set(np.unique(labels)) == {0, 1}
    assert Image.open(overlay).size == (48, 40)
    assert "labels 0=0" in capsys.readouterr().err


def test_segment_bad_spec_is_one_line(files, capsys):
    assert main(["segment", str(files / "photo.png"), "--segments", "kmeans:1", "-o", str(files / "l.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "K must be" in err and len(err.splitlines()) == 1
    assert not (files / "l.png").exists()


@pytest.mark.real_weights
def test_stylize_with_automatic_segments_and_segmenter_regions(files, random_weights_file, capsys):
    """--segments kmeans:2 labels the photo 0/1; --region LABEL=kmeans:2@1 takes that region of the style."""
    out = files / "auto.png"
    args = base_args(files, random_weights_file, "--output", str(out), "--approach", "localized",
                     "--overlay", str(files / "ov.png"), "--steps", "2")
    args[args.index("--segments") + 1] = "kmeans:2"
    assert main(args + ["--region", "1=kmeans:2@1"]) == 0
    assert out.exists() and (files / "ov.png").exists()
    assert main(args + ["--region", "1=kmeans:2@7"]) == 2
    assert "found regions 0, 1" in capsys.readouterr().err


def test_person_model_missing_and_unfetchable_is_one_line(files, monkeypatch, tmp_path, capsys):
    from segstyle_jax import selfie_convert
    from segstyle_jax.weights import WeightsError

    monkeypatch.setenv("SEGSTYLE_JAX_CACHE", str(tmp_path / "cache"))

    def offline(**kwargs):
        raise WeightsError("no registry reachable")
    monkeypatch.setattr(selfie_convert, "convert", offline)
    assert main(["segment", str(files / "photo.png"), "--segments", "person", "-o", str(files / "l.png")]) == 2
    err = capsys.readouterr().err
    assert "first use of person segmentation" in err and "error: no registry reachable" in err


def test_too_large_for_memory_is_one_line(files, random_weights_file, monkeypatch, capsys):
    from segstyle_jax import engine

    monkeypatch.setattr(engine, "available_memory_bytes", lambda: 1 << 20)
    assert main(base_args(files, random_weights_file, "--output", str(files / "o.png"))) == 2
    err = capsys.readouterr().err
    assert "error: a 40x33 locality step with 2 segments needs about" in err and not (files / "o.png").exists()


def test_convolution_algorithm_option(files, random_weights_file):
    out = files / "w.png"
    assert main(base_args(files, random_weights_file, "--output", str(out), "--conv", "winograd")) == 0
    assert Image.open(out).size == (40, 33)
    with pytest.raises(SystemExit):
        main(base_args(files, random_weights_file, "--output", str(out), "--conv", "fft"))


def test_compute_dtype_option(files, random_weights_file, monkeypatch):
    seen = []
    stylize = api.stylize
    monkeypatch.setattr(api, "stylize", lambda *a, **kw: seen.append(kw["compute_dtype"]) or stylize(*a, **kw))
    out = files / "bf16.png"
    assert main(base_args(files, random_weights_file, "--output", str(out), "--compute-dtype", "bfloat16")) == 0
    assert seen == ["bfloat16"] and Image.open(out).size == (40, 33)
    with pytest.raises(SystemExit):
        main(base_args(files, random_weights_file, "--output", str(out), "--compute-dtype", "float16"))


def test_multipass_one_pass_at_a_time(files, random_weights_file, capsys):
    out = files / "mp.png"
    assert main(base_args(files, random_weights_file, "--output", str(out), "--approach", "multipass",
                          "--passes", "one-by-one")) == 0
    assert Image.open(out).size == (40, 33)
    err = capsys.readouterr().err
    assert "step 4/4 pass 1/2" in err and "step 4/4 pass 2/2" in err


@pytest.mark.parametrize("on_cpu", [True, False])
def test_host_malloc_settings_only_for_steps_on_the_cpu(files, random_weights_file, monkeypatch, on_cpu):
    from segstyle_jax import host_memory

    calls = []
    monkeypatch.setattr(host_memory, "steps_run_on_cpu", lambda: on_cpu)
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: calls.append("kept") or True)
    assert main(base_args(files, random_weights_file, "--output", str(files / "m.png"))) == 0
    assert calls == (["kept"] if on_cpu else [])


