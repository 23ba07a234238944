"""bench/profile_step.py: the trace summary, checked on hand-made events, and one real profile."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")  # bench/ imports it (bench_step.py's helpers)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for bench/
from bench import profile_step  # noqa: E402


def x(name, ts, dur):
    return {"ph": "X", "name": name, "ts": ts, "dur": dur}


def test_summary_of_hand_made_events():
    # two steps; microseconds. Step 1: a product 0-10, a pool task 5-20, a fusion 30-40 (gap 20-30);
    # step 2: the product again 100-150 (gap 40-100: between the steps), a copy 150-160 (no gap).
    events = [x("$api.py:1 block_until_ready", 0, 200), x("ThunkExecutor::Execute", 0, 200),
              x("dot_general.3", 0, 10), x("ThreadpoolListener::StartRegion", 5, 15),
              x("ThreadpoolListener::Record", 5, 1), x("add_fusion.1", 30, 10), x("end: dot_general.3", 10, 0),
              x("dot_general.3", 100, 50), x("copy_bitcast_fusion", 150, 10)]
    s = profile_step.summarize(events, steps=2)
    assert s["ops"] == 2.0 and s["pool_tasks"] == 0.5
    assert s["kinds"] == {"dot_general": (1.0, 0.03), "add_fusion": (0.5, 0.005), "copy_bitcast_fusion": (0.5, 0.005)}
    assert s["op_ms"] == pytest.approx(0.04)
    assert s["span_ms"] == pytest.approx(0.08) and s["covered_ms"] == pytest.approx(0.045)  # 0-20, 30-40, 100-160
    assert s["gaps"] == 1.0 and s["gap_ms"] == pytest.approx(0.035)
    assert s["gap_hist_ms"] == pytest.approx({"<20us": 0.005, "<100us": 0.03, "<500us": 0.0, ">=500us": 0.0})
    assert profile_step.op_kind("dot_general.39") == "dot_general" and profile_step.op_kind("wrapped_pad") == "wrapped_pad"
    with pytest.raises(SystemExit, match="no op events"):
        profile_step.summarize([x("$frame", 0, 5)], steps=1)


@pytest.mark.real_weights
def test_a_real_profile(capsys, tmp_path):
    # --malloc glibc: keep_freed_memory would change this test process's allocator for the tests after it
    s = profile_step.main(["--size", "32", "--steps", "2", "--warmup", "1", "--trace-dir", str(tmp_path),
                           "--malloc", "glibc"])
    assert s["ops"] > 20 and ("dot_general" in s["kinds"] or "conv_general_dilated" in s["kinds"])
    assert 0 < s["covered_ms"] <= s["span_ms"] and s["gap_ms"] == pytest.approx(s["span_ms"] - s["covered_ms"], rel=1e-6)
    assert "| all ops |" in capsys.readouterr().out
    assert list(tmp_path.rglob("*.trace.json.gz"))
