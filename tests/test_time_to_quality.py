"""bench/time_to_quality.py's schedule language: what a stage spec means and what it refuses."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")  # bench/ imports it (bench_step.py's helpers)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for bench/
from bench.time_to_quality import Stage, parse_schedule, stylize_calls  # noqa: E402


def test_stages_parse_and_print_back():
    stages = parse_schedule("adam@0.25:50, adam0.05@0.5:100,lbfgs-fixed/20@1")
    assert stages == [Stage("adam", 0.02, 0.25, 50), Stage("adam", 0.05, 0.5, 100),
                      Stage("lbfgs-fixed", 0.02, 1.0, None, lbfgs_memory=20)]
    assert [str(s) for s in stages] == ["adam@0.25:50", "adam0.05@0.5:100", "lbfgs-fixed/20@1"]
    assert parse_schedule("lbfgs@1")[0].lbfgs_memory == 10 and str(parse_schedule("lbfgs/10@1")[0]) == "lbfgs@1"


def test_one_stylize_call_only_for_the_same_optimizer_settings():
    same = parse_schedule("lbfgs-fixed/20@0.5:100,lbfgs-fixed/20@1")
    assert stylize_calls(same) == [same]
    mixed = parse_schedule("lbfgs-fixed@0.5:100,lbfgs-fixed/20@1")
    assert stylize_calls(mixed) == [[mixed[0]], [mixed[1]]]


@pytest.mark.parametrize("spec, message", [
    ("adam@0.5:100", "last stage must be at full size"),
    ("adam@0.5,adam@1", "every stage but the last needs :STEPS"),
    ("adam@2:5,adam@1", "scales must be in"),
    ("sgd@1", "bad stage"),
    ("adam/20@1", "/MEMORY is for lbfgs"),
    ("lbfgs-fixed/0@1", "memory must be at least 1"),
])
def test_bad_schedules_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_schedule(spec)
