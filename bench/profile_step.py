"""Per-op profile of the compiled update step: where XLA spends a step, and where it spends nothing.

    python bench/profile_step.py --size 128                  # locality, K = 2, Adam, 5 traced steps
    python bench/profile_step.py --size 256 --approach multipass --segments 4 --optimizer lbfgs-fixed

Builds the engine's step on the bench inputs of ``bench_step.py`` (real default VGG16 weights, the
astronaut, K vertical bands, ``--conv auto``) and compiles it with the engine's compile options plus
``xla_cpu_enable_xprof_traceme``, so that XLA's CPU runtime records every op (thunk) it runs and every
task of its thread pool. The process first runs ``host_memory.keep_freed_memory()``, as the ``segstyle``
command and ``bench_step.py`` do (``--malloc keep``, the default: freed memory kept, the step on the calling
thread), so that the trace is of the step they run; ``--malloc glibc`` leaves malloc and JAX's
asynchronous CPU dispatch as they are (the step then runs on a worker thread). After ``--warmup`` steps, ``--steps`` steps run under ``jax.profiler.trace``
(a Perfetto trace in ``--trace-dir``, a temporary folder by default) and the trace is read back:

* ``op kinds``: HLO ops grouped by name without their number (``dot_general``, ``copy_bitcast_fusion``,
  ...): how many a step runs and their summed duration per step (an op runs on one thread; the
  products spread their work over the pool, inside their own span);
* ``covered``: wall time per step during which at least one traced op or thread-pool task was
  running, and the ``gaps`` between them, with their number and a histogram by length. A gap is
  time in which nothing the runtime traces ran: scheduling and waiting between tasks, the Python
  loop between steps, but also work it does not trace (the ``end: ...`` events mark asynchronous
  ops, whose work may continue past their own event), so a gap is not necessarily idle time.

On the 2-core benchmark CPU 33-37% of a step at 128-512 px fell in gaps, while low-priority busy
loops beside the steps found only about 5% of the cores idle (speed notes): the gaps are mostly
untraced work or spin-waiting. CPU only: on a GPU the trace has other event names (use the
XLA/Perfetto tools there).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench.bench_step import make_inputs  # noqa: E402
from segstyle_jax import engine, host_memory, winograd  # noqa: E402
from segstyle_jax.config import APPROACHES, OPTIMIZERS, LossWeights, StepConfig  # noqa: E402
from segstyle_jax.weights import load_default_weights  # noqa: E402

# Trace events that are not ops: Python frames ("$file:line"), the executable's and executor's own
# spans, PjRt bookkeeping. Thread-pool tasks ("ThreadpoolListener::...") count as work, not as ops.
NOT_OPS = re.compile(r"^\$|ThunkExecutor|Pjit|PjRt|Execute|block_until|try_to_block|^end: |Handle input|Wait for|"
                     r"PythonRef|ParseArguments|Threadpool")
POOL = re.compile(r"^ThreadpoolListener::")
GAP_BINS_US = (20, 100, 500)


def trace_events(trace_dir: Path) -> list[dict]:
    """The complete ("X") events of the newest Perfetto trace under ``trace_dir``."""
    files = sorted(glob.glob(str(trace_dir / "**" / "*.trace.json.gz"), recursive=True))
    if not files:
        raise SystemExit(f"no Perfetto trace under {trace_dir}: jax.profiler.trace wrote none")
    with gzip.open(files[-1]) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X" and "dur" in e]


def op_kind(name: str) -> str:
    """``'dot_general.39'`` -> ``'dot_general'``, ``'copy_bitcast_fusion.6'`` -> ``'copy_bitcast_fusion'``."""
    return re.sub(r"[._]?\d+$", "", name)


def summarize(events: list[dict], steps: int) -> dict:
    """Per-step figures from the trace events of ``steps`` steps (durations in microseconds in,
    milliseconds out): ``ops`` (count), ``op_ms`` (summed op durations), ``kinds`` ({kind: (count,
    ms)}), ``pool_tasks``, ``span_ms`` (first to last work event, per step), ``covered_ms`` (union of
    op and task intervals), ``gaps`` (count), ``gap_ms``, ``gap_hist_ms`` ({"<20us": ms, ...})."""
    ops = [e for e in events if not NOT_OPS.search(e["name"])]
    pool = [e for e in events if POOL.search(e["name"]) and e["name"].endswith("Region")]
    kinds: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for e in ops:
        k = kinds[op_kind(e["name"])]
        k[0] += 1
        k[1] += e["dur"]
    work = sorted((e["ts"], e["ts"] + e["dur"]) for e in ops + pool)
    if not work:
        raise SystemExit("the trace holds no op events: was the step compiled with xla_cpu_enable_xprof_traceme?")
    covered, gaps = 0.0, []
    start, end = work[0]
    for a, b in work[1:]:
        if a > end:
            covered += end - start
            gaps.append(a - end)
            start, end = a, b
        else:
            end = max(end, b)
    covered += end - start
    labels = [f"<{b}us" for b in GAP_BINS_US] + [f">={GAP_BINS_US[-1]}us"]
    hist = dict.fromkeys(labels, 0.0)
    for g in gaps:
        hist[next((label for label, b in zip(labels, GAP_BINS_US) if g < b), labels[-1])] += g
    per = 1e3 * steps
    return {
        "ops": len(ops) / steps, "op_ms": sum(e["dur"] for e in ops) / per,
        "kinds": {k: (n / steps, t / per) for k, (n, t) in sorted(kinds.items(), key=lambda kv: -kv[1][1])},
        "pool_tasks": sum(1 for e in pool if e["name"].endswith("StartRegion")) / steps,
        "span_ms": (work[-1][1] - work[0][0]) / per, "covered_ms": covered / per,
        "gaps": len(gaps) / steps, "gap_ms": sum(gaps) / per,
        "gap_hist_ms": {k: v / per for k, v in hist.items()},
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--segments", type=int, default=2)
    p.add_argument("--approach", default="locality", choices=APPROACHES)
    p.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    p.add_argument("--conv", default="auto", choices=winograd.ALGORITHMS)
    p.add_argument("--steps", type=int, default=5, help="traced steps (default 5)")
    p.add_argument("--warmup", type=int, default=5, help="untraced steps before (default 5)")
    p.add_argument("--kinds", type=int, default=25, help="op kinds listed (default 25)")
    p.add_argument("--trace-dir", type=Path, help="keep the trace here (default: a temporary folder)")
    p.add_argument("--malloc", default="keep", choices=("keep", "glibc"),
                   help="keep: host_memory.keep_freed_memory() first, as the segstyle command runs (default); "
                        "glibc: malloc and JAX's CPU dispatch as they are")
    args = p.parse_args(argv)
    if args.steps < 1:
        raise SystemExit("--steps must be at least 1")
    if args.malloc == "keep":
        host_memory.keep_freed_memory()  # before the backend starts: it fixes the dispatch mode
    if jax.default_backend() != "cpu":
        raise SystemExit(f"profile_step reads XLA's CPU runtime events; this JAX runs on {jax.default_backend()}")

    weights = load_default_weights()
    content, styles, masks = make_inputs(args.size, args.segments, "bands")
    cfg = StepConfig(args.approach, args.size, args.size, args.segments, optimizer=args.optimizer)
    lw = LossWeights.create(cfg)
    seg = [engine.SegmentStyle(((i, 1.0, None),)) for i in range(args.segments)]
    targets = engine.make_targets(cfg, weights.model(cfg.taps), weights.params, content, masks,
                                  engine.segment_targets(weights.model(cfg.style_taps), weights.params, styles, seg))
    init, update = engine.make_update_fn(cfg, weights.model(cfg.taps, conv=args.conv), params=weights.params)
    state = init(np.stack([content] * args.segments) if args.approach == "multipass" else content)
    options = {**engine.compiler_options(), "xla_cpu_enable_xprof_traceme": True}
    compiled = update.lower(state, targets, lw).compile(compiler_options=options)

    def run(n):
        nonlocal state
        for _ in range(n):
            state, info = compiled(state, targets, lw)
            jax.block_until_ready(info["loss"])

    run(args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        trace_dir = args.trace_dir or Path(tmp)
        with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
            t0 = time.perf_counter()
            run(args.steps)
            wall_ms = 1e3 * (time.perf_counter() - t0) / args.steps
        s = summarize(trace_events(trace_dir), args.steps)

    print(f"{args.size}² {args.approach} K = {args.segments} {args.optimizer} conv {args.conv}, "
          f"jax {jax.__version__}, {jax.devices()[0].device_kind}, "
          f"malloc {'keeps freed memory' if host_memory.is_applied() else 'as glibc has it'}, CPU dispatch "
          f"{'asynchronous' if jax.config.read('jax_cpu_enable_async_dispatch') else 'synchronous'}"
          f": {wall_ms:.1f} ms a step under the profiler; "
          f"per step: {s['ops']:.0f} ops, {s['pool_tasks']:.0f} thread-pool "
          f"tasks; work from first to last event {s['span_ms']:.1f} ms, covered by an op or task "
          f"{s['covered_ms']:.1f} ms, {s['gaps']:.0f} gaps in which nothing traced ran, {s['gap_ms']:.1f} ms "
          f"({', '.join(f'{k}: {v:.1f}' for k, v in s['gap_hist_ms'].items())})\n")
    print("| op kind | per step | ms per step | share of op time |")
    print("|---|---|---|---|")
    for kind, (n, ms) in list(s["kinds"].items())[:args.kinds]:
        print(f"| {kind} | {n:.0f} | {ms:.2f} | {100 * ms / s['op_ms']:.0f}% |")
    print(f"| all ops | {s['ops']:.0f} | {s['op_ms']:.2f} | 100% |")
    return s


if __name__ == "__main__":
    main()
