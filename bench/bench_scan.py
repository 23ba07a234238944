"""Steps driven from Python vs chunks of steps inside one ``lax.scan`` program.

    python bench/bench_scan.py                       # 64 and 128 px, K = 2, blended, chunks of 10: ~2 minutes
    python bench/bench_scan.py --sizes 128 256 --chunk 20 --unroll 1 2

:func:`segstyle_jax.engine.optimize` calls the compiled update step once per step from Python, so
every step pays a dispatch and a device-to-host copy of the loss (progress needs it). The
alternative is ``chunk`` steps per call: ``lax.scan`` over the same update inside one ``jax.jit``
program (state donated), the losses returned as one array. Every row times both on the same
inputs (bench_step's astronaut photo, band masks and styles, the default VGG16 weights), taking turns:
``--reps`` calls of ``chunk`` Python steps against ``--reps`` calls of the scanned chunk, after a
warm-up call of each; compile time apart. The loss trajectories of the two are compared too (they
run the same steps from the same start).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench.bench_step import environment, make_inputs, machine_busy_pct  # noqa: E402
from segstyle_jax import engine  # noqa: E402
from segstyle_jax.config import LossWeights, StepConfig  # noqa: E402
from segstyle_jax.weights import load_default_weights  # noqa: E402


def scanned(update, chunk: int, unroll: int):
    """``chunk`` calls of ``update`` as one jitted ``lax.scan`` -> ``(state, losses [chunk])``."""

    def run(state, targets, weights):
        def body(s, _):
            s, info = update(s, targets, weights)
            return s, info["loss"]

        return jax.lax.scan(body, state, None, length=chunk, unroll=unroll)

    return jax.jit(run, donate_argnums=(0,))


def run_config(size: int, k: int, approach: str, chunk: int, unroll: int, reps: int, weights) -> dict:
    content, styles, masks = make_inputs(size, k, "bands")
    cfg = StepConfig(approach, size, size, k)
    lw = LossWeights.create(cfg)
    model = weights.model(cfg.taps)
    seg = [engine.SegmentStyle(((i, 1.0, None),)) for i in range(k)]
    tg = engine.make_targets(cfg, model, weights.params, content, masks,
                             engine.segment_targets(weights.model(cfg.style_taps), weights.params, styles, seg))
    init, update = engine.make_update_fn(cfg, model, params=weights.params)
    x0 = np.broadcast_to(content, (k,) + content.shape).copy() if approach == "multipass" else content

    t0 = time.perf_counter()
    step = engine.compile_lowered(update.lower(init(x0), tg, lw))
    compile_loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    many = engine.compile_lowered(scanned(update, chunk, unroll).lower(init(x0), tg, lw))
    compile_scan = time.perf_counter() - t0

    def loop_chunk(state):
        losses = []
        for _ in range(chunk):
            state, info = step(state, tg, lw)
            losses.append(float(info["loss"]))  # what optimize() does: the loss to the host every step
        return state, losses

    def scan_chunk(state):
        state, losses = many(state, tg, lw)
        return state, [float(v) for v in np.asarray(losses)]

    s_loop, s_scan = init(x0), init(x0)
    s_loop, l_loop = loop_chunk(s_loop)  # warm-up, and the same first chunk on both sides
    s_scan, l_scan = scan_chunk(s_scan)
    loop_t, scan_t = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        s_loop, _ = loop_chunk(s_loop)
        loop_t.append((time.perf_counter() - t0) / chunk)
        t0 = time.perf_counter()
        s_scan, _ = scan_chunk(s_scan)
        scan_t.append((time.perf_counter() - t0) / chunk)
    loop_s, scan_s = statistics.median(loop_t), statistics.median(scan_t)
    return {"size": size, "segments": k, "approach": approach, "chunk": chunk, "unroll": unroll,
            "loop_step_s": loop_s, "scan_step_s": scan_s, "scan_over_loop": scan_s / loop_s,
            "compile_loop_s": compile_loop, "compile_scan_s": compile_scan,
            "first_chunk_max_rel_loss_diff": max(abs(a - b) / abs(a) for a, b in zip(l_loop, l_scan))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--segments", type=int, default=2)
    ap.add_argument("--approach", default="blended", choices=("multipass", "blended", "locality", "localized"))
    ap.add_argument("--chunk", type=int, default=10, help="steps per scanned call (default 10)")
    ap.add_argument("--unroll", type=int, nargs="+", default=[1], help="lax.scan unroll factors to try (default 1)")
    ap.add_argument("--reps", type=int, default=3, help="timed chunks per side (default 3)")
    args = ap.parse_args(argv)
    env = environment()
    busy = machine_busy_pct()
    weights = load_default_weights()
    rows = [run_config(s, args.segments, args.approach, args.chunk, u, args.reps, weights)
            for s in args.sizes for u in args.unroll]
    v = env["versions"]
    print(f"{env['device']} | {env['cpu']} | {env['cpu_count']} cpus | jax {v['jax']} jaxlib {v['jaxlib']} | "
          f"XLA_FLAGS={env['XLA_FLAGS']!r}, compile options {env['xla_compile_options']} | CPU {busy:.0f}% busy before start | {args.approach}, K={args.segments}, "
          f"chunks of {args.chunk} steps, median of {args.reps}\n")
    print("| size | unroll | Python loop s/step | lax.scan s/step | scan / loop | compile s (loop / scan) "
          "| first-chunk loss rel. diff |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']}² | {r['unroll']} | {r['loop_step_s']:.4f} | {r['scan_step_s']:.4f} | "
              f"{r['scan_over_loop']:.2f} | {r['compile_loop_s']:.1f} / {r['compile_scan_s']:.1f} | "
              f"{r['first_chunk_max_rel_loss_diff']:.1e} |")
    return rows


if __name__ == "__main__":
    main()
