"""The JAX step with glibc's malloc as it is, with the settings of ``host_memory.keep_freed_memory()``
and with their alternatives (per-thread arenas or one heap for all threads, JAX's CPU dispatch
asynchronous or synchronous), each in its own fresh process.

    python bench/bench_malloc.py                       # 128 px K 1 and 2, 256 px K 2, every mode: about 7 minutes
    python bench/bench_malloc.py --configs 256:2 512:1 --steps 30 --rounds 3 --modes arenas arenas-sync

The setting changes glibc's malloc for the whole process, so it cannot be compared inside one
process, and not next to PyTorch (``bench_step.py --malloc keep`` and ``--malloc glibc`` show the two
frameworks in one process): every configuration runs ``--rounds`` times in each mode, the modes alternating, each run a
fresh process that compiles the engine's step (``conv='auto'``), takes ``--warmup``
untimed steps and then ``--steps`` timed ones. Modes (:data:`MODES`): ``glibc`` (its defaults),
``arenas`` (``mallopt`` as ``keep_freed_memory`` sets it, glibc's per-thread arenas kept),
``one-heap`` (the same and ``M_ARENA_MAX = 1``), each of the two also with ``-sync``: JAX's CPU
dispatch synchronous (``jax_cpu_enable_async_dispatch`` off), so that the step runs on the thread
that calls it and its temp buffer comes from that thread's heap, not from a worker thread's arena
(which cannot hold a block above 64 MB). ``arenas-sync`` is what ``keep_freed_memory`` applies.
Reported: the median step of each run, the median over runs, each mode's ratio to the first mode's
(``glibc`` by default), which mode the ``segstyle`` command picks, XLA's temp buffer size and the
page faults per timed step (minor faults: each is a 4 KB page of a freed buffer that the OS maps
and zeroes again).
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

from segstyle_jax.config import APPROACHES  # noqa: E402  (importing JAX starts no backend: apply_mode can still act)

MODES = ("glibc", "arenas", "one-heap", "arenas-sync", "one-heap-sync")
COMMAND_MODE = "arenas-sync"  # what keep_freed_memory applies (the segstyle command, on a CPU)


def apply_mode(mode: str) -> bool:
    """Set glibc's malloc and JAX's CPU dispatch as ``mode`` says (before any JAX work); ``True`` if
    the malloc settings took (glibc), ``False`` for ``glibc`` or elsewhere."""
    import ctypes
    import ctypes.util

    import jax

    from segstyle_jax import host_memory

    jax.config.update("jax_cpu_enable_async_dispatch", not mode.endswith("-sync"))
    if mode == "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = [(host_memory._M_MMAP_MAX, 0), (host_memory._M_TRIM_THRESHOLD, host_memory._NEVER)]
    if mode.startswith("one-heap"):
        settings.append((host_memory._M_ARENA_MAX, 1))
    return all(mallopt(option, value) for option, value in settings)


def run_one(size: int, k: int, approach: str, steps: int, warmup: int, mode: str) -> dict:
    """In this process: apply ``mode`` (:data:`MODES`), compile one step and time it -> its row."""
    applied = apply_mode(mode)
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
            "one_arena": mode.startswith("one-heap"), "async_dispatch": not mode.endswith("-sync"),
            "step_median_s": statistics.median(times), "step_min_s": min(times), "step_max_s": max(times),
            "page_faults_per_step": faults / steps, "xla_temp_mb": compiled.memory_analysis().temp_size_in_bytes / 2 ** 20}


def parse_config(spec: str, approach: str) -> tuple[int, int, str]:
    """``SIZE:K`` or ``SIZE:K:APPROACH`` -> ``(size, k, approach)``; ``approach`` when not given."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() and int(p) > 0 for p in parts[:2]) \
            or (len(parts) == 3 and parts[2] not in APPROACHES):
        raise ValueError(f"{spec!r}: expected SIZE:K or SIZE:K:APPROACH (positive integers; one of {APPROACHES})")
    return int(parts[0]), int(parts[1]), parts[2] if len(parts) == 3 else approach


def markdown(rows, modes: list[str], picks: str) -> str:
    """One table line per configuration and mode: ``rows`` of ``(size, k, approach, runs)``, ``runs``
    mapping each mode to its processes' result rows; ratios are to the first mode's median."""
    lines = [f"| size | K | approach | XLA temp MB | mode | s/step, median of runs (runs) | / {modes[0]} "
             "| page faults per step |", "|---|---|---|---|---|---|---|---|"]
    def each(rs):
        return ", ".join(f"{r['step_median_s']:.3f}" for r in rs)

    for size, k, approach, runs in rows:
        med = {m: statistics.median(r["step_median_s"] for r in runs[m]) for m in modes}
        for m in modes:
            applied = m == "glibc" or all(r["keep_freed_memory"] for r in runs[m])
            name = f"**{m}** (the command's)" if m == picks else m
            lines.append(f"| {size}² | {k} | {approach} | {runs[m][0]['xla_temp_mb']:.0f} | {name}"
                         f"{'' if applied else ' (not applied: no glibc)'} "
                         f"| {med[m]:.3f} ({each(runs[m])}) "
                         f"| {med[m] / med[modes[0]]:.2f} "
                         f"| {statistics.median(r['page_faults_per_step'] for r in runs[m]):.0f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--configs", nargs="+", default=["128:1", "128:2", "256:2"], metavar="SIZE:K[:APPROACH]",
                   help="image size, number of segments and (default --approach) approach of each configuration "
                        "(default 128:1 128:2 256:2)")
    p.add_argument("--approach", default="blended", choices=APPROACHES)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                   help="what to compare, in this order (ratios are to the first; default: all)")
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
        configs = [parse_config(c, args.approach) for c in args.configs]
    except ValueError as e:
        p.error(f"--configs: {e}")

    rows = []
    for size, k, approach in configs:
        runs = {mode: [] for mode in args.modes}
        for _ in range(args.rounds):
            for mode in args.modes:
                out = subprocess.run([sys.executable, __file__, "--one", str(size), str(k), mode,
                                      "--approach", approach, "--steps", str(args.steps),
                                      "--warmup", str(args.warmup)], capture_output=True, text=True, check=True)
                row = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1])
                print(json.dumps(row), flush=True)
                runs[mode].append(row)
        rows.append((size, k, approach, runs))

    import jax

    print(f"\n{jax.devices()[0].device_kind} | jax {jax.__version__} | {args.steps} timed steps after "
          f"{args.warmup}, {args.rounds} fresh processes per mode, the modes alternating\n")
    print(markdown(rows, args.modes, COMMAND_MODE))
    return rows


if __name__ == "__main__":
    main()
