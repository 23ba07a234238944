"""The largest image each approach runs at on this machine: XLA's memory estimate and a real run.

    python bench/bench_memory.py --sizes 1024 2048 --approaches multipass blended locality --steps 1

Every configuration runs in a fresh Python process (so its peak RSS is its own) as one
:func:`segstyle_jax.stylize` call: the astronaut photo with the hand-drawn person mask (``K = 2``)
and the demo styles, resized to ``--size`` on the longest side, ``--steps`` Adam steps, no
metrics. The step is compiled ahead of time and XLA's estimate of its memory (arguments, outputs,
temporaries) is checked against the available memory before anything runs; multipass with
``--passes auto`` falls back to one pass at a time when the batched step does not fit.

Reported per configuration: ``ran`` or the one-line refusal, XLA's estimate (``memory_bytes`` of
the result), the passes used, the process's peak RSS, compile seconds, the median seconds per step
(each pass's steps count separately), the wall time of the call, and the available memory at the
start. One JSON line each, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

def run_one(size: int, approach: str, steps: int, passes: str) -> dict:
    """One configuration in this process -> its row."""
    import statistics

    from segstyle_jax import api, demo_data, engine, host_memory
    from segstyle_jax.cli import PASSES

    host_memory.keep_freed_memory_for_cpu_steps()  # as the segstyle command runs

    row = {"size": size, "approach": approach, "steps": steps, "passes_requested": passes,
           "available_gib_at_start": (engine.available_memory_bytes() or 0) / 2 ** 30}
    t0 = time.perf_counter()
    try:
        r = api.stylize(demo_data.astronaut(), demo_data.astronaut_hand_mask(), demo_data.demo_styles(), approach,
                        steps=steps, size=size, compute_metrics=False, batch_passes=PASSES[passes])
    except MemoryError as e:
        row.update(outcome="refused", message=str(e))
    else:
        row.update(outcome="ran", xla_estimate_gib=(r.memory_bytes or 0) / 2 ** 30, passes=r.num_passes,
                   compile_s=r.compile_seconds,
                   step_median_s=statistics.median(r.step_seconds) if r.step_seconds else None,
                   final_loss=r.losses[-1])
    row["wall_s"] = time.perf_counter() - t0
    row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    return row


def markdown(rows) -> str:
    """The rows as a Markdown table."""
    lines = ["| size | approach | outcome | XLA estimate GiB | passes | peak RSS GiB | compile s | s/step | call s "
             "| available GiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["outcome"] == "ran":
            step = f"{r['step_median_s']:.1f}" if r.get("step_median_s") else "-"
            passes = "one by one" if r["passes"] > 1 else "batched" if r["approach"] == "multipass" else "-"
            lines.append(f"| {r['size']}² | {r['approach']} | ran | {r['xla_estimate_gib']:.1f} | {passes} | "
                         f"{r['peak_rss_gib']:.1f} | {r['compile_s']:.1f} | {step} | {r['wall_s']:.0f} | "
                         f"{r['available_gib_at_start']:.1f} |")
        else:
            lines.append(f"| {r['size']}² | {r['approach']} | {r['outcome']}: {r.get('message', '')} | | | "
                         f"{r.get('peak_rss_gib', float('nan')):.1f} | | | {r.get('wall_s', float('nan')):.0f} | "
                         f"{r.get('available_gib_at_start', float('nan')):.1f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--approaches", nargs="+", default=["multipass", "blended", "locality"],
                    choices=("multipass", "blended", "locality", "localized"))
    ap.add_argument("--steps", type=int, default=1, help="Adam steps per run (default 1; 2+ gives a steady step time)")
    ap.add_argument("--passes", default="auto", choices=("auto", "batched", "one-by-one"),
                    help="multipass passes, as segstyle's --passes (default auto)")
    ap.add_argument("--jsonl", type=Path, help="also append the JSON lines to this file")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process: one configuration
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.sizes[0], args.approaches[0], args.steps, args.passes)))
        return None

    rows = []
    for size in args.sizes:
        for approach in args.approaches:
            print(f"# {approach} at {size} px ...", file=sys.stderr, flush=True)
            proc = subprocess.run([sys.executable, __file__, "--one", "--sizes", str(size), "--approaches", approach,
                                   "--steps", str(args.steps), "--passes", args.passes],
                                  capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            row = json.loads(lines[-1]) if lines else {
                "size": size, "approach": approach, "outcome": f"crashed (exit {proc.returncode})",
                "message": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""}
            rows.append(row)
            line = json.dumps(row)
            print(line, flush=True)
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.write(line + "\n")

    import jax

    print(f"\n{jax.devices()[0].device_kind} | jax {jax.__version__} | {os.cpu_count()} cpus | "
          f"{args.steps} Adam step(s), K = 2, passes {args.passes}\n")
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
