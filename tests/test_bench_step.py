"""bench/bench_step.py end to end at tiny sizes: each row in its own child process, with the malloc
setting the segstyle command picks for it, and the rows collected by the parent."""

import argparse
import json

import pytest

pytest.importorskip("torch")  # bench/ imports it

from bench import bench_step  # noqa: E402
from segstyle_jax import host_memory  # noqa: E402


def test_every_row_gets_a_process_of_its_own():
    assert bench_step.row_pixels(128, 2, "blended") == 128 * 128
    assert bench_step.row_pixels(128, 4, "multipass") == 4 * 128 * 128
    args = argparse.Namespace(sizes=[128, 256], segments=[1, 2], approaches=["blended", "multipass"])
    assert bench_step.process_groups(args) == [
        (size, [(k, approach)]) for size in (128, 256) for k in (1, 2) for approach in ("blended", "multipass")]


@pytest.mark.real_weights
def test_each_row_runs_in_its_own_process(capsys, tmp_path):
    jsonl = tmp_path / "rows.jsonl"
    applied_here = host_memory.is_applied()  # (a CLI test may have applied it to this process already)
    rows = bench_step.main(["--sizes", "32", "48", "--segments", "1", "--steps", "1", "--warmup", "0",
                            "--no-flop-count", "--peak-n", "64", "--jsonl", str(jsonl)])
    assert [r["size"] for r in rows] == [32, 48]
    assert len({r["pid"] for r in rows}) == 2  # two child processes
    for r in rows:
        assert r["ratio"] > 0 and r["loss0_rel_diff"] < 1e-4
        assert not r["malloc_one_arena"]  # small steps keep per-thread arenas
        assert r["peak_gflops"] == rows[0]["peak_gflops"]  # measured once, by the parent
    assert [json.loads(line)["size"] for line in jsonl.read_text().splitlines()] == [32, 48]
    out = capsys.readouterr().out
    assert "each row in a fresh process of its own" in out and "| 48 | 1 | blended |" in out
    assert host_memory.is_applied() == applied_here  # the parent (this process) left its malloc alone
