"""The persistent compile cache: where it lives, how it is turned off, and that a second run loads
the compiled step instead of compiling it (and the update step from the step store, without
tracing it), with the same result."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segstyle_jax import compile_cache

ROOT = Path(__file__).resolve().parent.parent


def test_default_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.default_dir() == tmp_path / "segstyle_jax" / "xla"
    monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "mine"))
    assert compile_cache.default_dir() == tmp_path / "mine"
    for off in ("off", "OFF", "0", ""):
        monkeypatch.setenv(compile_cache.ENV_VAR, off)
        assert compile_cache.default_dir() is None
    assert compile_cache.resolve(None) is None  # not given: the (off) default
    assert compile_cache.resolve("off") is None
    assert compile_cache.resolve(str(tmp_path / "x")) == tmp_path / "x"


def test_enable_refuses_a_file_and_an_off_default(monkeypatch, tmp_path):
    (tmp_path / "f").write_text("not a directory")
    with pytest.raises(ValueError, match="not a directory"):
        compile_cache.enable(tmp_path / "f")
    monkeypatch.setenv(compile_cache.ENV_VAR, "off")
    with pytest.raises(ValueError, match="is off"):
        compile_cache.enable()


def _run_cli(args, env):
    # the tiny test step compiles in about a second: store whatever compiles, so the test sees entries
    code = ("import sys; from segstyle_jax import cli, compile_cache; compile_cache.MIN_COMPILE_SECONDS = 0; "
            f"sys.exit(cli.main({args!r}))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def _write_inputs(d, tiny_scene):
    Image.fromarray((tiny_scene["content"] * 255).astype(np.uint8)).save(d / "photo.png")
    Image.fromarray(tiny_scene["labels"].astype(np.uint8)).save(d / "mask.png")
    for label, style in tiny_scene["styles"].items():
        Image.fromarray((style * 255).astype(np.uint8)).save(d / f"style{label}.png")


def _stylize_args(d, weights_file, out, cache):
    return ["stylize", str(d / "photo.png"), "--segments", str(d / "mask.png"),
            "--style", f"0={d / 'style0.png'}", "--style", f"1={d / 'style1.png'}",
            "--weights", str(weights_file), "--size", "32", "--steps", "3", "--conv", "winograd",
            "--style-layers", "relu1_1", "relu2_1", "--content-layers", "relu2_2", "--output", str(out),
            "--compile-cache", cache]


def test_a_cache_that_cannot_be_made_is_a_warning(tmp_path, tiny_scene, random_weights_file, capsys):
    from segstyle_jax.cli import main

    _write_inputs(tmp_path, tiny_scene)
    (tmp_path / "file").write_text("in the way")
    out = tmp_path / "out.png"
    assert main(_stylize_args(tmp_path, random_weights_file, out, str(tmp_path / "file" / "cache"))) == 0
    assert "warning: compiling without a cache" in capsys.readouterr().err
    assert out.is_file() and compile_cache.enabled_dir() is None


def test_second_run_loads_the_compiled_step(tmp_path, tiny_scene, random_weights_file):
    _write_inputs(tmp_path, tiny_scene)
    cache = tmp_path / "cache"

    def args(out, where):
        # L-BFGS: its step once made a custom call into LAPACK, which crashed a process that loaded
        # the stored step before lowering any such operation itself (step_store.calls_out)
        return _stylize_args(tmp_path, random_weights_file, out, where) + ["--optimizer", "lbfgs-fixed"]

    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    first = _run_cli(args(tmp_path / "a.png", str(cache)), env)
    assert first.returncode == 0, first.stderr
    assert f"compile cache {cache}: 0 programs loaded" in first.stderr
    entries = sorted(p.name for p in cache.iterdir())
    assert any(name.startswith("jit_update") for name in entries), entries
    # the step takes the VGG weights as arguments: its entry holds code, not the weights
    weights_bytes = os.path.getsize(random_weights_file)
    assert all(p.stat().st_size < weights_bytes / 4 for p in cache.iterdir())

    # the update step is also kept serialized (step_store), and a new process loads it without tracing
    stored = sorted(p.name for p in (cache / "steps").iterdir())
    assert len(stored) == 1 and stored[0].endswith(".step"), stored
    assert "update steps: 0 loaded without tracing, 1 stored" in first.stderr

    second = _run_cli(args(tmp_path / "b.png", str(cache)), env)
    assert second.returncode == 0, second.stderr
    assert "0 compiled and stored" in second.stderr and "0 programs loaded" not in second.stderr
    assert "update steps: 1 loaded without tracing, 0 stored" in second.stderr
    assert sorted(p.name for p in (cache / "steps").iterdir()) == stored
    assert sorted(p.name for p in cache.iterdir()) == entries
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))

    # with the store emptied, XLA's cache supplies the step: not stored (it would not serialize whole)
    for p in (cache / "steps").iterdir():
        p.unlink()
    third = _run_cli(args(tmp_path / "c.png", str(cache)), env)
    assert third.returncode == 0, third.stderr
    assert "update steps" not in third.stderr and not list((cache / "steps").iterdir())
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "c.png")))


def test_off_runs_without_a_cache(tmp_path, tiny_scene, random_weights_file, capsys):
    from segstyle_jax.cli import main

    _write_inputs(tmp_path, tiny_scene)
    out = tmp_path / "out.png"
    assert main(_stylize_args(tmp_path, random_weights_file, out, "off")) == 0
    assert "compile cache" not in capsys.readouterr().err
    assert out.is_file() and compile_cache.enabled_dir() is None
