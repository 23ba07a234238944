"""The JAX step with glibc's malloc as it is and with ``host_memory.keep_freed_memory()`` both ways
(per-thread arenas, one heap for all threads), each in its own fresh process.

    python bench/bench_malloc.py                       # 128 px K 1 and 2, 256 px K 2; about 3 minutes
    python bench/bench_malloc.py --configs 256:2 512:1 --steps 30 --rounds 3

The setting changes glibc's malloc for the whole process, so it cannot be compared inside one
process, and not next to PyTorch (``bench_step.py --malloc keep`` and ``--malloc glibc`` show the two
frameworks sharing one heap): every configuration runs ``--rounds`` times in each mode, the modes alternating, each run a
fresh process that compiles the engine's step (``conv='auto'``), takes ``--warmup``
untimed steps and then ``--steps`` timed ones. Modes: ``glibc`` (its defaults), ``arenas``
(``keep_freed_memory`` for a small step: glibc's per-thread arenas) and ``one-heap`` (for a large
step: ``M_ARENA_MAX = 1``). Reported: the median step of each run, the median over runs, each kept
mode's ratio to glibc's, which mode the ``segstyle`` command picks at that size, XLA's temp buffer
size and the page faults per timed step (minor faults: each is a 4 KB page of a freed buffer that
the OS maps and zeroes again).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


MODES = ("glibc", "arenas", "one-heap")


def run_one(size: int, k: int, approach: str, steps: int, warmup: int, mode: str) -> dict:
    """In this process: apply ``mode`` (:data:`MODES`), compile one step and time it -> its row."""
    from segstyle_jax import host_memory

    if mode == "glibc":
        applied = False
    else:  # 1 pixel: a small step (per-thread arenas); None: unknown, so one heap
        applied = host_memory.keep_freed_memory(1 if mode == "arenas" else None)
    import jax
    import numpy as np

    from bench.bench_step import make_inputs
    from segstyle_jax import engine
    from segstyle_jax.config import LossWeights, StepConfig
    from segstyle_jax.weights import load_default_weights

    weights = load_default_weights()
    content, styles, masks = make_inputs(size, k, "bands")
    cfg = StepConfig(approach, size, size, k)
    lw = LossWeights.create(cfg)
    seg = [engine.SegmentStyle(((i, 1.0, None),)) for i in range(k)]
    targets = engine.make_targets(cfg, weights.model(cfg.taps), weights.params, content, masks,
                                  engine.segment_targets(weights.model(cfg.style_taps), weights.params, styles, seg))
    conv = "auto"  # as stylize runs a stage of a few hundred steps
    init, update = engine.make_update_fn(cfg, weights.model(cfg.taps, conv=conv), params=weights.params)
    x0 = np.broadcast_to(content, (k,) + content.shape).copy() if approach == "multipass" else content
    state = init(x0)
    compiled = engine.compile_lowered(update.lower(state, targets, lw))
    times, faults = [], 0
    for i in range(warmup + steps):
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        state, info = compiled(state, targets, lw)
        jax.block_until_ready(info)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    return {"size": size, "segments": k, "approach": approach, "conv": conv, "mode": mode, "keep_freed_memory": applied,
            "one_arena": host_memory.one_arena(),
            "step_median_s": statistics.median(times), "step_min_s": min(times), "step_max_s": max(times),
            "page_faults_per_step": faults / steps, "xla_temp_mb": compiled.memory_analysis().temp_size_in_bytes / 2 ** 20}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--configs", nargs="+", default=["128:1", "128:2", "256:2"], metavar="SIZE:K",
                   help="image size and number of segments of each configuration (default 128:1 128:2 256:2)")
    p.add_argument("--approach", default="blended", choices=("multipass", "blended", "locality", "localized"))
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=8, help="untimed steps first (glibc's heap settles in a few)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # child: size k mode
    args = p.parse_args(argv)
    if args.one:
        size, k, mode = args.one
        print(json.dumps(run_one(int(size), int(k), args.approach, args.steps, args.warmup, mode)))
        return None

    try:
        configs = [tuple(int(v) for v in c.split(":")) for c in args.configs]
        if any(len(c) != 2 or min(c) < 1 for c in configs):
            raise ValueError
    except ValueError:
        p.error(f"--configs takes SIZE:K pairs of positive integers, got {args.configs}")
    from segstyle_jax import host_memory

    rows = []
    for size, k in configs:
        runs = {mode: [] for mode in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                out = subprocess.run([sys.executable, __file__, "--one", str(size), str(k), mode,
                                      "--approach", args.approach, "--steps", str(args.steps),
                                      "--warmup", str(args.warmup)], capture_output=True, text=True, check=True)
                row = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1])
                print(json.dumps(row), flush=True)
                runs[mode].append(row)
        med = {mode: statistics.median(r["step_median_s"] for r in rs) for mode, rs in runs.items()}
        rows.append((size, k, runs, med))

    import jax

    print(f"\n{jax.devices()[0].device_kind} | jax {jax.__version__} | {args.approach}, {args.steps} timed steps after "
          f"{args.warmup}, {args.rounds} fresh processes per mode\n")
    print("| size | K | conv | XLA temp MB | glibc s/step (runs) | arenas s/step (runs) | one heap s/step (runs) "
          "| arenas / glibc | one heap / glibc | the command picks | page faults per step, glibc / arenas / one heap |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size, k, runs, med in rows:
        fmt = lambda rs: ", ".join(f"{r['step_median_s']:.3f}" for r in rs)  # noqa: E731
        applied = all(r["keep_freed_memory"] for mode in MODES[1:] for r in runs[mode])
        faults = {mode: statistics.median(r["page_faults_per_step"] for r in rs) for mode, rs in runs.items()}
        picks = "one heap" if host_memory.uses_one_arena(size * size * (k if args.approach == "multipass" else 1)) \
            else "arenas"
        print(f"| {size}² | {k} | {runs['glibc'][0]['conv']} | {runs['glibc'][0]['xla_temp_mb']:.0f} "
              f"| {med['glibc']:.3f} ({fmt(runs['glibc'])}) | {med['arenas']:.3f} ({fmt(runs['arenas'])}) "
              f"| {med['one-heap']:.3f} ({fmt(runs['one-heap'])}){'' if applied else ' (not applied: no glibc)'} "
              f"| {med['arenas'] / med['glibc']:.2f} | {med['one-heap'] / med['glibc']:.2f} | {picks} "
              f"| {faults['glibc']:.0f} / {faults['arenas']:.0f} / {faults['one-heap']:.0f} |")
    return rows


if __name__ == "__main__":
    main()
