#!/usr/bin/env python
"""The locality term's distance transform: exact linear-time EDT against the paper's brute force.

    python bench/bench_distance.py [--brute-sizes 32 64 128 256] [--sizes 512 2048] [--repeat 3]

For each size, a two-segment mask (a disc of "person" on a background, plus a few blobs so the
border is not trivially convex): the brute-force nearest-outside-pixel search of the paper
(:func:`segstyle_jax.masks.brute_force_distance`, quadratic in the pixel count) and the exact
Euclidean distance transform used by the engine (:func:`segstyle_jax.masks.distance_to_outside`,
scipy's linear-time EDT), checked equal wherever both run. Prints JSON lines and a Markdown table
with the machine and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import scipy

from segstyle_jax import masks


def scene(n: int) -> np.ndarray:
    """``[2, n, n]`` one-hot masks: background and a person-like union of a disc and blobs."""
    yy, xx = np.mgrid[:n, :n] / n
    person = ((yy - 0.55) ** 2 + (xx - 0.5) ** 2 < 0.09) | ((yy - 0.2) ** 2 + (xx - 0.5) ** 2 < 0.02)
    person |= (np.abs(yy - 0.8) < 0.05) & (np.abs(xx - 0.3) < 0.2)
    return np.stack([~person, person]).astype(np.float32)


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brute-sizes", type=int, nargs="*", default=[32, 64, 128, 256])
    parser.add_argument("--sizes", type=int, nargs="*", default=[512, 2048])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    env = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "numpy": np.__version__, "scipy": scipy.__version__}
    rows = []
    for n in sorted(set(args.brute_sizes) | set(args.sizes)):
        m = scene(n)
        row = {"size": n, **env}
        row["edt_seconds"] = best_of(lambda: masks.distance_to_outside(m), args.repeat)
        if n in args.brute_sizes:
            brute = lambda: np.stack([masks.brute_force_distance(m[k]) for k in range(2)])  # noqa: E731
            row["brute_seconds"] = best_of(brute, 1)
            row["max_abs_difference"] = float(np.abs(brute() - masks.distance_to_outside(m)).max())
            row["speedup"] = row["brute_seconds"] / row["edt_seconds"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{env}\n")
    print("| size | exact EDT (s) | brute force (s) | speed-up | max abs difference (px) |")
    print("|---|---|---|---|---|")
    for r in rows:
        brute = f"{r['brute_seconds']:.3f}" if "brute_seconds" in r else "not run (quadratic)"
        speed = f"{r['speedup']:.0f}x" if "speedup" in r else ""
        diff = f"{r['max_abs_difference']:g}" if "max_abs_difference" in r else ""
        print(f"| {r['size']}² | {r['edt_seconds']:.4f} | {brute} | {speed} | {diff} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
