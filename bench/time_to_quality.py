"""Time to quality: wall seconds until the full-size loss is within 5% of what the plain schedule reaches.

    python bench/time_to_quality.py --quick           # 96 px, 120 reference steps: 1.5 minutes on 2 idle CPU cores
    python bench/time_to_quality.py --size 128        # 500 reference steps at 128 px: 7 minutes
    python bench/time_to_quality.py                   # 256 px, 500 reference steps
    python bench/time_to_quality.py --size 128 --candidates c2f-adam 'mine=adam0.05@0.25:60,lbfgs-fixed@1'

Inputs are real: the default VGG16 weights (loaded once, passed to every run), scikit-image's
astronaut photo with the hand-drawn person mask and the demo styles (Hubble deep field for the
background, brick for the person) of :mod:`segstyle_jax.demo_data`, the ``locality`` approach
(``--approach``) and the default loss weights. Every run goes through :func:`segstyle_jax.stylize`.

**Reference.** The plain schedule: Adam (learning rate 0.02), ``--ref-steps`` (500) steps at full
size (``--size``, longest side), from the content image. The callback records the loss of every
step with its wall-clock time since the :func:`stylize` call began, so the time includes building
the targets and compiling the step. The **target** is ``1.05 x`` what the reference reaches,
taken as the median loss of its last 5% of steps (``--target-from tail``, the default), or its
*last* loss (``last``: the loss of step 500, i.e. of the image before the 500th update) or its
minimum (``min``); all three are reported. The tail median is the default because Adam at a
constant learning rate does not settle: at 256 px the reference's last loss was 2941, a spike 32%
above the tail median (2229), and ``last`` would have set a target the plain schedule meets at
step 240 of 500. There is noise even so: at 128 px the loss oscillates by about +-2% from step to
step at the end, and a
reference run at 128 px on a busy machine ended at 8258 where runs on an idle one end at 7892
(they already differ in the 4th digit at step 2: XLA's multithreaded CPU reductions are not
bitwise reproducible under contention, and 500 Adam steps amplify that), which moved the plain
schedule's own step to target from 473 to 451. Runs on an idle machine repeat to the last digit.

**Candidates.** Each is a list of stages ``OPT[LR][/MEMORY]@SCALE[:STEPS]`` (``adam@0.5:100`` =
100 Adam steps at half size, ``adam0.05@1`` = Adam with learning rate 0.05 at full size, ``lbfgs@1`` =
optax's L-BFGS with its zoom line search at full size, ``lbfgs-fixed@1`` = L-BFGS with the unit
step, no line search; ``lbfgs-fixed/20@1`` the same with 20 correction pairs instead of 10). A
schedule whose stages share one optimizer, learning rate and memory is one
:func:`stylize` call with ``scales=`` and ``steps=`` per scale, as the ``segstyle`` command runs
``--scales 0.25 0.5 1 --steps 50 100 N`` (it prepares each scale while the one before runs). Any
other schedule makes one call per stage, at ``size * SCALE``, starting from the previous stage's
image (``init=``, upsampled by :func:`stylize` itself with the same Lanczos resize its own
``scales=`` uses); both give the same sizes, targets and losses. The last stage must be at full size;
it runs until its loss first reaches the target, or its step budget (``STEPS``, default
``--ref-steps``) or the wall budget (``--budget``, 0.8, x the plain schedule's time to target) runs
out: a candidate slower than that is no contender, and is reported as ``> budget``.
A candidate's time is the wall time from the start of its first stage to the callback of the
full-size step whose loss first reaches the target: coarse stages, target building and every
compilation included (``jax.clear_caches()`` before each candidate, the reference included, so
no run reuses another's compiled programs). ``plain`` is the reference itself: the time at
which its trace first reached the target. That is a first run at these sizes; a ``segstyle`` user
who has run them before loads the compiled steps from the persistent cache
(:mod:`segstyle_jax.compile_cache`, and on the CPU the update steps from :mod:`segstyle_jax.step_store`,
untraced): ``--compile-cache DIR`` runs the bench with it, and a second
invocation with the same ``DIR`` measures every candidate warm (within the first, later candidates
already load the programs earlier ones stored).

**Fairness.** Only full-size losses are compared, and only the loss the full-size step itself
reports (the loss of the image before that step's update): losses at other sizes are different
functions. The full-size stage of every candidate is the same :func:`stylize` call as the
reference (same size, weights, masks, styles, style scale, approach and loss weights); only the
optimizer, its learning rate and the starting image differ, and those do not enter the loss.
The first crossing counts, so an optimizer whose loss oscillates (Adam at a high learning rate)
may dip under the target once and be credited: see ``final_loss`` and the trace.

**Reported** per candidate (a JSON line each, with the whole loss trace, then a Markdown table):
wall seconds to target and the setup + compile seconds inside it (per stage: the time from the
end of the stage before, or the start, to its first step's callback minus one steady step, i.e.
resizing, the style and content targets with their jits, and the XLA compile of the update step,
less what was prepared while the stage before ran; for the reference also the XLA compile time of
its step), steps run at each scale, the ratio to the plain schedule's time
to target and to its full ``--ref-steps`` wall time, this process's CPU seconds to target, the
loss where it stopped, median step seconds per stage, and the machine's load: the load average
and ``others_cpu``, the CPU other processes used while the candidate ran (in cores; on a 2-core
machine anything above ~0.2 slows the steps down). Because the load drifts between candidates, a
*same-speed estimate* is added: setup + compile as measured plus every stage's steps at the
fastest median step time seen for that size and optimizer (and L-BFGS memory) anywhere in the
bench (a summary line in the JSON-lines file). The header has the device, CPU and versions (``bench/bench_step.py``'s
helpers). Run it on an idle machine for numbers to quote.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench.bench_step import _cpu_seconds, _machine_cpu_seconds, environment, machine_busy_pct  # noqa: E402
from segstyle_jax import api, compile_cache, demo_data, host_memory, images as images_lib, step_cache  # noqa: E402
from segstyle_jax.weights import load_default_weights  # noqa: E402

TOLERANCE = 1.05  # target = TOLERANCE x the reference's loss (its tail median by default: TARGET_RULES)


# ----------------------------------------------------------------------------------------------
# schedules


@dataclass(frozen=True)
class Stage:
    optimizer: str
    learning_rate: float
    scale: float
    steps: int | None  # None: the last stage's default budget
    lbfgs_memory: int = 10

    def __str__(self):
        lr = "" if self.optimizer.startswith("lbfgs") or self.learning_rate == 0.02 else f"{self.learning_rate:g}"
        memory = f"/{self.lbfgs_memory}" if self.optimizer.startswith("lbfgs") and self.lbfgs_memory != 10 else ""
        return f"{self.optimizer}{lr}{memory}@{self.scale:g}" + ("" if self.steps is None else f":{self.steps}")


_STAGE = re.compile(r"^(adam|lbfgs-fixed|lbfgs)([0-9.eE+-]*)(?:/([0-9]+))?@([0-9.]+)(?::([0-9]+))?$")


def parse_schedule(spec: str) -> list[Stage]:
    """``"adam@0.5:100,lbfgs-fixed/20@1"`` -> stages (``/20``: 20 L-BFGS correction pairs instead of
    10). The last stage must be at scale 1."""
    stages = []
    for part in spec.split(","):
        m = _STAGE.match(part.strip())
        if not m:
            raise ValueError(f"bad stage {part!r}: use OPT[LR][/MEMORY]@SCALE[:STEPS], e.g. adam@0.5:100, adam0.05@1 "
                             "or lbfgs-fixed/20@1")
        opt, lr, memory, scale, steps = m.groups()
        if memory and opt == "adam":
            raise ValueError(f"bad stage {part!r}: /MEMORY is for lbfgs and lbfgs-fixed")
        if memory is not None and int(memory) < 1:
            raise ValueError(f"bad stage {part!r}: L-BFGS memory must be at least 1")
        stages.append(Stage(opt, float(lr) if lr else 0.02, float(scale), int(steps) if steps else None,
                            int(memory) if memory else 10))
    if not stages or stages[-1].scale != 1.0:
        raise ValueError(f"{spec!r}: the last stage must be at full size (@1)")
    if any(s.steps is None for s in stages[:-1]):
        raise ValueError(f"{spec!r}: every stage but the last needs :STEPS")
    if any(not 0 < s.scale <= 1 for s in stages):
        raise ValueError(f"{spec!r}: scales must be in (0, 1]")
    return stages


def default_candidates(ref_steps: int, coarse: int) -> dict[str, str]:
    """The candidates run by default; ``coarse`` steps at half size, half that at quarter size,
    a quarter at an eighth (``-low``: 1.5 x ``coarse`` at quarter size, 0.3 x at half size;
    ``-even``: ``coarse`` at both).

    History, from exploratory runs (steps are full-size steps to the target):

    * 128 px, Adam: 50 / 100 / 200 Adam steps at half size -> 204 / 160 / 138 full-size steps (plain:
      451); 50-100 at quarter then 100 at half size -> 109-121; a higher full-size learning rate after
      a coarse start hurt (0.05: 385 steps), as did a lower one (0.01: 217) and a cosine decay.
      On a CPU a 32 or 64 px step costs 0.35-0.45 of a 128 px one, so coarse steps pay little there.
    * 256 px, tail target of an earlier reference run (plain Adam: 340 steps; the compile option
      added later moved its trajectory, see README): after Adam 50 at 64 px + 100 at 128 px, Adam
      needs 135 full-size steps; with a 20-step learning-rate warm-up 160, with Adam's moments carried
      over from the coarse scale (upsampled) 144. Optax's L-BFGS with its zoom line search costs 3-5
      evaluations per step and never won. L-BFGS with the fixed unit step (``lbfgs-fixed``, one
      evaluation per step, neural-style's choice) descends without Adam's oscillation: from the photo
      it reaches the last-loss target in 144 steps (Adam 240); after the same Adam coarse start 99
      full-size steps; with ``lbfgs-fixed`` at the coarse scales too 91 (50 + 100 coarse steps), 71
      (100 + 200) or 64 (50 at 32 px, 100 at 64, 150 at 128): the extra coarse steps cost about what
      they save, so the defaults below are the cheap ones.
    * 256 px, the *(AMD2)* target 2770, ``lbfgs-fixed`` at 64 / 128 / 256 px (50 + 100 coarse steps):
      the number of L-BFGS correction pairs (``/M``), 5 / 10 / 20 / 30 / 40, took 79 / 74 / 68 / 72 /
      71 full-size steps. With 20 pairs: 150 steps at 128 px instead of 100 -> 62 full-size steps,
      30 + 70 coarse steps -> 81, 40 more at 192 px -> 55; each change costs (in coarse steps) about
      what it saves, or more. The last stage's loss, 20 pairs: 167 k at its first step, 8.2 k at
      step 25, 3.7 k at step 50, 2.7 k at step 70; 0.3-0.6% of the pixels sit at 0 or 1, so the clip
      to [0, 1] does not hold L-BFGS back.
    * 256 px, the *(Xeon)* target 1984, ``lbfgs-fixed/20`` (warm compile cache, one run each; the
      full-size step's time varies by ~8% from run to run): steps at 64 / 128 px -> full-size steps,
      seconds: 50 / 100 -> 107, 45.1 s; 150 / 50 -> 101, 41.3 s; 200 / 50 -> 101, 42.3 s;
      150 / 30 -> 109, 39.0 and 42.3 s; 100 / 20 -> 125, 42.7 s; 250 / 30 -> 105, 46.0 s; 200 at
      64 px alone -> 129, 44.1 s; 100 at 128 px alone -> 112, 42.6 s; 50 / 50 and 30 more at 192 px
      -> 108, 53.1 s; 50 / 100 with 50 pairs -> 105, 56.1 s. The full-size stage takes 100-130 steps
      whatever came before; here a 64 px step costs 0.15 of a 256 px one and a 128 px step 0.4, so
      the cheapest start shifts the coarse work to 64 px (``c2f-lbfgs-fixed20-low``).
    * 256 px, the *(Xeon)* target 1819, ``lbfgs-fixed/20`` (one run each, a day on which the machine's
      steps ran 20% slower; counts are exact, times only comparable within that day): steps at 64 /
      128 px -> full-size steps: 50 / 100 -> 118 (the day before); 150 / 30 -> 125 (the day before);
      50 / 30 -> 146; 50 / 60 -> 136; 25 / 40 -> 151; 30 / 30 -> 154; 0 / 60 -> 152; 100 / 0 -> 158;
      50 / 150 -> 105; 50 / 200 -> 98; 100 / 100 -> 106; 150 / 100 -> 103; 200 / 100 -> 100;
      100 / 150 -> 96; 50 / 100 and 30 or 60 at 192 px -> 104 or 92; 100 at 32 px and 100 / 100 -> 96.
      In seconds 100 / 100 came first (53.7 s against 56.8-59.6 s for the others with 100 or more
      coarse steps; 64 / 128 / 256 px steps 0.043 / 0.10 / 0.32 s that day):
      ``c2f-lbfgs-fixed20-even``.
    """
    return {
        "c2f-adam": f"adam@0.25:{max(1, coarse // 2)},adam@0.5:{coarse},adam@1",
        "lbfgs-fixed": "lbfgs-fixed@1",
        "c2f-lbfgs-fixed": f"lbfgs-fixed@0.25:{max(1, coarse // 2)},lbfgs-fixed@0.5:{coarse},lbfgs-fixed@1",
        "c2f-lbfgs-fixed20": (f"lbfgs-fixed/20@0.25:{max(1, coarse // 2)},lbfgs-fixed/20@0.5:{coarse},"
                              "lbfgs-fixed/20@1"),
        "c2f-lbfgs-fixed20-even": f"lbfgs-fixed/20@0.25:{coarse},lbfgs-fixed/20@0.5:{coarse},lbfgs-fixed/20@1",
        "c2f-lbfgs-fixed20-low": (f"lbfgs-fixed/20@0.25:{max(1, coarse * 3 // 2)},"
                                  f"lbfgs-fixed/20@0.5:{max(1, coarse * 3 // 10)},lbfgs-fixed/20@1"),
        "c2f3-lbfgs-fixed": (f"lbfgs-fixed@0.125:{max(1, coarse // 2)},lbfgs-fixed@0.25:{coarse},"
                             f"lbfgs-fixed@0.5:{coarse * 3 // 2},lbfgs-fixed@1"),
    }


# ----------------------------------------------------------------------------------------------
# running


class _Stop(Exception):
    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


@dataclass
class Problem:
    """What every run shares: the inputs and everything that defines the loss."""

    content: np.ndarray
    segments: object
    styles: dict
    approach: str
    size: int
    weights: object

    def stylize(self, stages: list[Stage], steps: list[int], init, callback):
        """One :func:`api.stylize` call for ``stages``, which share an optimizer and its settings:
        at the last one's size, the others as its ``scales``."""
        last = stages[-1]
        return api.stylize(self.content, self.segments, self.styles, self.approach, steps=steps,
                           size=max(16, round(self.size * last.scale)), scales=tuple(s.scale / last.scale for s in stages),
                           optimizer=last.optimizer, learning_rate=last.learning_rate,
                           lbfgs_memory=last.lbfgs_memory, init=init,
                           weights=self.weights, compute_metrics=False, callback=callback)


def stylize_calls(stages: list[Stage]) -> list[list[Stage]]:
    """The :func:`api.stylize` calls a schedule makes: one (with ``scales=``, as a user of the
    ``segstyle`` command would run it) when every stage has the same optimizer and settings,
    else one per stage."""
    if len({(s.optimizer, s.learning_rate, s.lbfgs_memory) for s in stages}) == 1:
        return [list(stages)]
    return [[s] for s in stages]


def run_schedule(problem: Problem, stages: list[Stage], default_steps: int, target: float | None = None,
                 wall_budget: float = float("inf"), save: Path | None = None) -> dict:
    """Run the stages in order; the last one stops at the first loss <= ``target`` (if given).

    Returns the trace (stage, step, wall seconds since the start, loss, this process's CPU seconds
    since the start, unweighted content term, unweighted style term), per-stage timings and why it
    stopped. A stage's setup + compile is the time from the end of the stage before (or the start)
    to its first step's callback, minus one steady step; inside one :func:`api.stylize` call the next
    scale is prepared while the current one runs, so that part of it is hidden in the steps before."""
    jax.clear_caches()  # every candidate compiles its own programs, as a fresh process would
    step_cache.clear()  # ... and builds its own steps (segstyle_jax.step_cache)
    gc.collect()
    load_start = os.getloadavg()
    m0, c0 = _machine_cpu_seconds(), _cpu_seconds()
    t0 = time.perf_counter()
    trace, image, reached, reached_cpu, stopped = [], "content", None, None, "completed"
    times: list[list[float]] = [[] for _ in stages]
    holder, compile_s = {}, {}
    offset = 0
    for call in stylize_calls(stages):
        steps = [s.steps if s.steps is not None else default_steps for s in call]

        def callback(p, offset=offset):
            si = offset + p.scale_index
            t = time.perf_counter() - t0
            times[si].append(t)
            trace.append((si, p.step, round(t, 4), float(p.loss), round(_cpu_seconds() - c0, 3),
                          float(p.terms["content"]), float(p.terms["style"])))
            last = si == len(stages) - 1
            why = "reached" if last and target is not None and p.loss <= target else \
                "wall budget" if t > wall_budget else None
            if why:
                if save is not None:
                    holder["image"] = p.image()
                raise _Stop(why)

        try:
            result = problem.stylize(call, steps, image, callback)
            image = result.image
            compile_s[offset] = result.compile_seconds  # the XLA compiles of the call's steps
            if result.stopped != "completed":
                stopped = result.stopped
        except _Stop as stop:
            stopped = stop.why
            image = holder.get("image")
        offset += len(call)
        if stopped != "completed":
            break
    stage_rows, before = [], 0.0
    for si, stage in enumerate(stages):
        ts = times[si]
        steady = [b - a for a, b in zip(ts, ts[1:])]
        step_s = statistics.median(steady) if steady else 0.0
        stage_rows.append({"stage": str(stage), "scale": stage.scale, "px": max(16, round(problem.size * stage.scale)),
                           "optimizer": stage.optimizer, "learning_rate": stage.learning_rate,
                           "lbfgs_memory": stage.lbfgs_memory, "steps": len(ts),
                           "step_median_s": step_s, "setup_compile_s": (ts[0] - before - step_s) if ts else 0.0})
        if si in compile_s:
            stage_rows[-1]["engine_compile_s"] = compile_s[si]
        if not ts:
            break
        before = ts[-1]
    if stopped == "reached":
        reached, reached_cpu = trace[-1][2], trace[-1][4]
    wall = time.perf_counter() - t0
    m1, c1 = _machine_cpu_seconds(), _cpu_seconds()
    if stopped == "completed" and target is not None:
        stopped = "step budget"
    if save is not None and image is not None and not isinstance(image, str):
        images_lib.save_image(save, image)
    return {"trace": trace, "stages": stage_rows, "stopped": stopped, "seconds_to_target": reached,
            "cpu_seconds_to_target": reached_cpu, "wall_s": wall,
            "final_loss": trace[-1][3] if trace else float("nan"),
            "terms_where_stopped": _terms(trace[-1]) if trace else {},
            "setup_compile_s": sum(r["setup_compile_s"] for r in stage_rows),
            "own_cpu": (c1 - c0) / wall, "others_cpu": max(0.0, (m1 - m0) - (c1 - c0)) / wall,
            "loadavg_start": load_start, "loadavg_end": os.getloadavg()}


def _terms(entry) -> dict:
    """The unweighted content and style terms of a trace entry (empty for traces without them)."""
    return {"content": entry[5], "style": entry[6]} if len(entry) > 6 else {}


def first_reach(trace, target: float, stage: int):
    """(wall seconds, CPU seconds, step) of the first entry of ``stage`` in ``trace`` with loss <= target."""
    for si, step, t, loss, cpu, *_ in trace:
        if si == stage and loss <= target:
            return t, cpu, step
    return None


# ----------------------------------------------------------------------------------------------
# output


def same_speed_estimates(rows) -> None:
    """Add ``same_speed_s``: the time to target had every step run at the fastest median step time
    observed for its size and optimizer in this bench (setup + compile as measured). The machine's
    load changes between runs; this puts all candidates on the same step speeds."""
    fastest: dict = {}
    for r in rows:
        for s in r["stages"]:
            if s["steps"] > 1:
                key = (s["px"], s["optimizer"], s.get("lbfgs_memory", 10))
                fastest[key] = min(fastest.get(key, float("inf")), s["step_median_s"])
    for r in rows:
        if r["seconds_to_target"] is None:
            r["same_speed_s"] = None
            continue
        r["same_speed_s"] = sum(s["setup_compile_s"] + s["steps"] * fastest.get(
            (s["px"], s["optimizer"], s.get("lbfgs_memory", 10)), s["step_median_s"]) for s in r["stages"])


def markdown(rows, plain: dict) -> str:
    ref_est = rows[0]["same_speed_s"]
    head = ("| candidate | schedule | wall s to target | setup+compile s inside | steps at each scale "
            "| ratio to plain's time to target | ratio to plain's all-steps time | CPU s to target (ratio) "
            "| same-speed estimate s (ratio) | loss where stopped (content / style terms) | step s (median, per scale) "
            "| others' CPU (cores) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ttt, cpu = r["seconds_to_target"], r["cpu_seconds_to_target"]
        steps = " + ".join(f"{s['steps']}@{s['px']}px" for s in r["stages"])
        t = r.get("terms_where_stopped") or {}
        terms = f" ({t['content']:.4g} / {t['style']:.4g})" if t else ""
        step_s = " / ".join(f"{s['step_median_s']:.3f}" for s in r["stages"])
        if ttt is None:
            wall = f"not reached ({r['stopped']}; ran {r['wall_s']:.1f})"
            ratio, ratio_all = f"> {r['wall_s'] / plain['ttt']:.2f}", f"> {r['wall_s'] / plain['wall']:.2f}"
            cpu_s = est = "-"
        else:
            wall, ratio, ratio_all = f"{ttt:.1f}", f"{ttt / plain['ttt']:.2f}", f"{ttt / plain['wall']:.2f}"
            cpu_s = f"{cpu:.1f} ({cpu / plain['cpu']:.2f})"
            est = f"{r['same_speed_s']:.1f} ({r['same_speed_s'] / ref_est:.2f})"
        lines.append(f"| {r['candidate']} | `{r['schedule']}` | {wall} | {r['setup_compile_s']:.1f} | {steps} "
                     f"| {ratio} | {ratio_all} | {cpu_s} | {est} | {r['final_loss']:.5g}{terms} | {step_s} "
                     f"| {r['others_cpu']:.2f} |")
    return "\n".join(lines)


TARGET_RULES = {
    "last": "the last loss",
    "min": "the minimum loss",
    "tail": "the median loss of the last 5% of steps",
}


def reference_row(ref: dict, ref_steps: int, rule: str = "tail") -> dict:
    """The plain schedule's row: the target, and when the reference itself first reached it.

    ``ref`` is a fresh :func:`run_schedule` result or a row of an earlier bench (its trace is kept
    whole, so the target can be recomputed under another ``rule``)."""
    trace = ref["trace"]
    if len(trace) != ref_steps or ref["stopped"] not in ("completed", "reached (reference)"):
        raise SystemExit(f"the reference run stopped early ({ref['stopped']}) or has another step count")
    losses = [e[3] for e in trace]
    tail = sorted(losses[-max(1, ref_steps // 20):])
    basis = {"last": losses[-1], "min": min(losses), "tail": tail[len(tail) // 2]}[rule]
    target = TOLERANCE * basis
    ttt, cpu, step = first_reach(trace, target, 0)
    stage = {**ref["stages"][0], "steps": step}
    return {**ref, "candidate": "plain", "schedule": f"adam@1:{ref_steps}", "seconds_to_target": ttt,
            "cpu_seconds_to_target": cpu, "steps_to_target": step, "target_loss": target,
            "target_rule": f"{TOLERANCE} x {TARGET_RULES[rule]}", "ref_last_loss": losses[-1],
            "ref_min_loss": min(losses), "ref_tail_median_loss": tail[len(tail) // 2],
            # the last step's callback: all ref_steps steps, targets and compile included
            "ref_wall_s": trace[-1][2], "ref_cpu_s": trace[-1][4],
            "stopped": "reached (reference)", "final_loss": losses[step - 1], "stages": [stage],
            "terms_where_stopped": _terms(trace[step - 1]),
            "ratio_to_plain_ttt": 1.0, "ratio_to_plain_all_steps": ttt / trace[-1][2]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="96 px and 120 reference steps (1.5 minutes on 2 idle cores)")
    p.add_argument("--size", type=int, help="longest side in pixels (default 256; 96 with --quick)")
    p.add_argument("--ref-steps", type=int, help="Adam steps of the plain schedule (default 500; 120 with --quick)")
    p.add_argument("--coarse-steps", type=int, help="steps at each coarse scale (default ref-steps / 5)")
    p.add_argument("--approach", default="locality", choices=("multipass", "blended", "locality", "localized"))
    p.add_argument("--candidates", nargs="*",
                   help="names of default candidates and/or NAME=OPT[LR][/MEMORY]@SCALE[:STEPS],... schedules "
                        "(default: all default candidates)")
    p.add_argument("--target-from", default="tail", choices=tuple(TARGET_RULES),
                   help="target = 1.05 x the median of the reference's last 5%% of steps (default: insensitive to "
                        "Adam's step-to-step oscillation), its last loss, or its minimum")
    p.add_argument("--budget", type=float, default=0.8,
                   help="give up on a candidate after this multiple of the plain schedule's time to target")
    p.add_argument("--reference", type=Path,
                   help="reuse the plain row of a JSON-lines file from an earlier run (same size, approach and "
                        "reference steps) instead of running the reference: for exploring schedules only, "
                        "since the ratios then compare runs made under different machine load")
    p.add_argument("--jsonl", type=Path, help="also append the JSON lines to this file")
    p.add_argument("--save-dir", type=Path, help="write each run's image where it stopped (PNG) into this folder")
    p.add_argument("--compile-cache", type=Path, metavar="DIR",
                   help="use and fill XLA's persistent compile cache in DIR (default: none, every program compiled); "
                        "run twice with the same DIR for warm figures")
    args = p.parse_args(argv)
    size = args.size or (96 if args.quick else 256)
    ref_steps = args.ref_steps or (120 if args.quick else 500)
    coarse = args.coarse_steps or max(1, ref_steps // 5)
    defaults = default_candidates(ref_steps, coarse)
    candidates = {}
    for c in (args.candidates if args.candidates is not None else list(defaults)):
        name, _, spec = c.partition("=") if "=" in c else (c, "", defaults.get(c))
        if spec is None:
            p.error(f"unknown candidate {c!r}: one of {', '.join(defaults)}, or NAME=SCHEDULE")
        try:
            candidates[name] = (spec, parse_schedule(spec))
        except ValueError as e:
            p.error(str(e))
    if args.save_dir:
        args.save_dir.mkdir(parents=True, exist_ok=True)
    save = (lambda name: args.save_dir / f"{name}.png") if args.save_dir else (lambda name: None)

    host_memory.keep_freed_memory_for_cpu_steps()  # as the segstyle command runs
    if args.compile_cache:
        compile_cache.enable(args.compile_cache)
    t_start = time.perf_counter()
    env = environment()  # records malloc_keeps_freed_memory
    env["compile_cache"] = str(args.compile_cache) if args.compile_cache else None
    env["compile_cache_entries_at_start"] = len(list(args.compile_cache.glob("*-cache"))) if args.compile_cache else 0
    env["cpu_busy_at_start_pct"] = busy = machine_busy_pct()
    env["loadavg_at_start"] = os.getloadavg()
    if busy > 10:
        print(f"# WARNING: the CPU was {busy:.0f}% busy before this benchmark started; other processes distort the "
              f"timings (see others_cpu per candidate; CPU seconds are less affected)", file=sys.stderr)
    problem = Problem(content=demo_data.astronaut(), segments=demo_data.astronaut_hand_mask(),
                      styles=demo_data.demo_styles(), approach=args.approach, size=size,
                      weights=load_default_weights())
    common = {"size": size, "approach": args.approach, "ref_steps": ref_steps, "tolerance": TOLERANCE}
    out = open(args.jsonl, "a") if args.jsonl else None

    def emit(row):
        line = json.dumps({**common, **row, "env": env}, default=float)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    # -- the reference: the plain schedule, every step recorded
    if args.reference:
        rows = [json.loads(line) for line in args.reference.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r.get("candidate") == "plain" and all(r.get(k) == v for k, v in common.items())]
        if not rows:
            raise SystemExit(f"{args.reference}: no plain row for {common}")
        ref_row = {**reference_row(rows[-1], ref_steps, args.target_from), "reused_from": str(args.reference)}
        ref_row.pop("env", None)
    else:
        print(f"# reference: adam@1:{ref_steps} at {size} px ...", file=sys.stderr, flush=True)
        ref = run_schedule(problem, [Stage("adam", 0.02, 1.0, ref_steps)], ref_steps, save=save("plain"))
        ref_row = reference_row(ref, ref_steps, args.target_from)
    emit(ref_row)
    target = ref_row["target_loss"]
    plain = {"ttt": ref_row["seconds_to_target"], "cpu": ref_row["cpu_seconds_to_target"],
             "wall": ref_row["ref_wall_s"]}
    print(f"# target {target:.6g} = {ref_row['target_rule']} (last {ref_row['ref_last_loss']:.6g}, min "
          f"{ref_row['ref_min_loss']:.6g}, tail median {ref_row['ref_tail_median_loss']:.6g}); plain reaches it at "
          f"step {ref_row['steps_to_target']}, {plain['ttt']:.1f} s; all {ref_steps} steps {plain['wall']:.1f} s",
          file=sys.stderr, flush=True)

    rows = [ref_row]
    for name, (spec, stages) in candidates.items():
        print(f"# {name}: {spec} ...", file=sys.stderr, flush=True)
        r = run_schedule(problem, stages, ref_steps, target=target, wall_budget=args.budget * plain["ttt"],
                         save=save(name))
        ttt = r["seconds_to_target"]
        row = {"candidate": name, "schedule": spec, **r, "target_loss": target,
               "steps_to_target": r["stages"][-1]["steps"] if ttt is not None else None,
               "ratio_to_plain_ttt": ttt / plain["ttt"] if ttt is not None else None,
               "ratio_to_plain_all_steps": ttt / plain["wall"] if ttt is not None else None,
               "cpu_ratio_to_plain_ttt": r["cpu_seconds_to_target"] / plain["cpu"] if ttt is not None else None}
        emit(row)
        rows.append(row)
        print(f"#   {r['stopped']}: " + (f"{ttt:.1f} s" if ttt is not None else
                                          f"ran {r['wall_s']:.1f} s, loss {r['final_loss']:.6g}"),
              file=sys.stderr, flush=True)
    if out:
        out.close()
    same_speed_estimates(rows)
    if args.jsonl:  # the estimates need every row; one summary line after them
        with open(args.jsonl, "a") as f:
            f.write(json.dumps({**common, "summary": {r["candidate"]: r["same_speed_s"] for r in rows}}) + "\n")

    v = env["versions"]
    first = ref_row["stages"][0].get("engine_compile_s", float("nan"))
    print(f"\n{env['device']} | {env['cpu']} | {env['cpu_count']} cpus | jax {v['jax']} jaxlib {v['jaxlib']} "
          f"flax {v['flax']} optax {v['optax']} numpy {v['numpy']} | XLA_FLAGS={env['XLA_FLAGS']!r}, compile options {env['xla_compile_options']} | "
          f"CPU {busy:.0f}% busy before start, load average {env['loadavg_at_start'][0]:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end | {args.approach}, {size} px, real VGG16 weights, astronaut + hand mask, "
          f"hubble/brick styles | target = {ref_row['target_rule']} of the plain schedule = {target:.6g} "
          f"(last {ref_row['ref_last_loss']:.6g}, min {ref_row['ref_min_loss']:.6g}, tail median "
          f"{ref_row['ref_tail_median_loss']:.6g}); plain: step "
          f"{ref_row['steps_to_target']} of {ref_steps}, {plain['ttt']:.1f} s to target, {plain['wall']:.1f} s for "
          f"all steps (its step's XLA compile: {first:.1f} s)"
          + (f" [reference reused from {args.reference}]" if args.reference else "")
          + (f" | compile cache {args.compile_cache} ({env['compile_cache_entries_at_start']} entries at start; "
             f"{compile_cache.summary().split(': ', 1)[1]})" if args.compile_cache else " | no compile cache")
          + f" | total {time.perf_counter() - t_start:.0f} s\n")
    print(markdown(rows, plain))
    return rows


if __name__ == "__main__":
    main()
