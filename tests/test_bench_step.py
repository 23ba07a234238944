"""bench/bench_step.py end to end at tiny sizes: each row in its own child process, with the malloc
setting the segstyle command picks for it, and the rows collected by the parent."""

import argparse
import json

import pytest

pytest.importorskip("torch")  # bench/ imports it

from bench import bench_step  # noqa: E402
from segstyle_jax import host_memory  # noqa: E402


def test_every_row_gets_a_process_of_its_own():
    args = argparse.Namespace(sizes=[128, 256], segments=[1, 2], approaches=["blended", "multipass"])
    assert bench_step.process_groups(args) == [
        (size, [(k, approach)]) for size in (128, 256) for k in (1, 2) for approach in ("blended", "multipass")]


@pytest.mark.real_weights
def test_each_row_runs_in_its_own_process(capsys, tmp_path, monkeypatch):
    jsonl = tmp_path / "rows.jsonl"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")  # recorded with every row, as the row's process got it
    applied_here = host_memory.is_applied()  # (a CLI test may have applied it to this process already)
    rows = bench_step.main(["--sizes", "32", "48", "--segments", "1", "--steps", "1", "--warmup", "0",
                            "--no-flop-count", "--peak-n", "64", "--jsonl", str(jsonl)])
    assert [r["size"] for r in rows] == [32, 48]
    assert len({r["pid"] for r in rows}) == 2  # two child processes
    for r in rows:
        assert r["ratio"] > 0 and r["loss0_rel_diff"] < 1e-4
        assert r["malloc_keeps_freed_memory"] and r["jax_cpu_async_dispatch"] is False  # as the command runs
        assert r["malloc_keeps_large_blocks"] is True  # a tiny step keeps them (host_memory.before_step)
        assert r["peak_gflops"] == rows[0]["peak_gflops"]  # measured once, by the parent
        assert r["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
        assert {"jax_page_faults_per_step", "torch_sys_s_per_step"} <= set(r)  # recorded for both frameworks
    assert [json.loads(line)["size"] for line in jsonl.read_text().splitlines()] == [32, 48]
    out = capsys.readouterr().out
    assert "each row in a fresh process of its own" in out and "| 48 | 1 | blended |" in out
    assert "GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in out
    assert host_memory.is_applied() == applied_here  # the parent (this process) left its malloc alone


def test_timed_counts_what_the_call_made_the_kernel_do():
    import mmap

    import numpy as np

    usage = []

    def touch_fresh_pages():  # 64 MB mapped fresh (not from malloc, whose settings a test may have changed)
        with mmap.mmap(-1, 64 * 2 ** 20) as m:
            a = np.frombuffer(m, np.uint8)
            a[::4096] = 1  # one minor fault per 4 KiB page (or per 2 MiB huge page) at first touch
            out = int(a[4096])
            del a
        return out

    out, wall = bench_step._timed(touch_fresh_pages, usage=usage)
    assert out == 1 and wall > 0
    assert usage[0]["page_faults"] >= 64 * 2 ** 20 // 4096 // 512  # even with 2 MiB huge pages
    assert set(usage[0]) == {"page_faults", "voluntary_switches", "involuntary_switches", "sys_s"}
    bench_step._timed(lambda: None, usage=usage)
    med = bench_step.usage_medians("jax", usage)
    assert med["jax_page_faults_per_step"] == (usage[0]["page_faults"] + usage[1]["page_faults"]) / 2
    assert bench_step.usage_medians("jax", []) == {}


def _timed_row(**extra):
    row = {"gflop_per_step": 10.0, "jax_step_median_s": 0.5, "torch_step_median_s": 1.0, "peak_gflops": 100.0}
    row.update(extra)
    return row


def test_flop_rates_on_cpu_use_xla_count():
    row = bench_step.set_flop_rates(_timed_row(device="cpu:cpu", torch_gflop_per_eval=11.0))
    assert row["flop_source"].startswith("XLA")
    assert row["jax_gflops"] == pytest.approx(20.0) and row["torch_gflops"] == pytest.approx(10.0)
    assert row["jax_pct_peak"] == pytest.approx(20.0) and row["torch_pct_peak"] == pytest.approx(10.0)


def test_flop_rates_on_gpu_use_torch_count_once():
    # XLA's GPU cost analysis does not count cuDNN's convolutions: the torch count replaces it
    row = bench_step.set_flop_rates(_timed_row(device="gpu:NVIDIA H200", torch_gflop_per_eval=300.0))
    assert row["xla_gflop_per_step"] == 10.0 and row["gflop_per_step"] == 300.0
    assert row["jax_gflops"] == pytest.approx(600.0) and row["torch_pct_peak"] == pytest.approx(300.0)
    again = bench_step.set_flop_rates(dict(row))  # a saved row read back (--table) keeps its counts
    assert again["gflop_per_step"] == 300.0 and again["xla_gflop_per_step"] == 10.0


def test_malloc_mode_says_when_a_step_gave_its_large_blocks_back():
    kept = {"malloc_keeps_freed_memory": True, "jax_cpu_async_dispatch": False}
    assert bench_step.malloc_mode(kept) == "kept, sync"
    assert bench_step.malloc_mode({**kept, "malloc_keeps_large_blocks": True}) == "kept, sync"
    assert bench_step.malloc_mode({**kept, "malloc_keeps_large_blocks": False}) == "kept, sync, large blocks given back"
    assert bench_step.malloc_mode({"malloc_keeps_freed_memory": False, "malloc_keeps_large_blocks": None}) == "glibc"


def test_table_from_saved_rows(tmp_path, capsys):
    saved = tmp_path / "rows.jsonl"
    base = {"size": 64, "segments": 2, "approach": "blended", "optimizer": "adam", "conv": "auto", "pooling": "max",
            "jax_compile_s": 1.0, "torch_first_step_s": 0.1, "torch_compile": False,
            "jax_step_min_s": 0.4, "jax_step_max_s": 0.6, "torch_step_min_s": 0.9, "torch_step_max_s": 1.1,
            "ratio": 0.5, "jax_xla_temp_mb": 5.0, "jax_cpu_util": 1.0, "torch_cpu_util": 1.0, "others_cpu_util": 0.0,
            "loss0_rel_diff": 1e-6}
    gpu = _timed_row(**base, device="gpu:NVIDIA H200", torch_gflop_per_eval=300.0, jax_step_gpu_mb=7.0,
                     torch_step_gpu_mb=9.0)
    saved.write_text(json.dumps(gpu) + "\n")
    rows = bench_step.main(["--table", str(saved)])
    assert rows[0]["gflop_per_step"] == 300.0
    out = capsys.readouterr().out
    assert "| 64 | 2 | blended |" in out and "GPU 7 / 9" in out and "600 (600%)" in out
