"""Per-layer time of each convolution algorithm: the data behind ``winograd.layer_algorithm``.

    python bench/bench_conv.py                                   # 64-512 px images, about 75 s on 2 cores
    python bench/bench_conv.py --sizes 256 --algorithms direct winograd --rounds 9 --torch --jsonl conv.jsonl

For every distinct convolution of VGG16 up to ``conv5_1`` (what the default style and content taps
need) at each image size, and every algorithm of :mod:`segstyle_jax.winograd` (``direct``: XLA's
convolution; ``winograd``: ``F(4x4, 3x3)``; ``winograd2x2``: ``F(2x2, 3x3)``), one jitted program
runs what the update step runs of that layer: the convolution with its bias and ReLU, and the input
gradient of a random cotangent, with the kernels prepared on the host and passed as arguments
(:func:`segstyle_jax.winograd.prepared_kernels`), compiled with the step's compile options. The
algorithms take turns, one call each, for ``--rounds`` rounds after a warm-up; the median is
reported, with the relative error of each one's ``y`` against the direct convolution's. With
``--torch`` PyTorch takes its turn too: the same layer as ``bench/torch_reference.py`` runs it
(``nn.Conv2d`` and ReLU on NCHW tensors, the input gradient by autograd, the kernel's switched off;
its ``y`` checked against JAX's like the others), so the table shows where XLA's convolutions lose. JSON lines and a Markdown table (one row per
layer shape, the fastest JAX algorithm marked) with the machine and versions.

It is the layers in isolation: in the whole step XLA fuses the transforms with the neighbouring
ReLU, bias and pooling, so ``bench/bench_step.py --conv ...`` is the judge of a rule; this shows
where each algorithm wins.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.bench_step import environment, machine_busy_pct  # noqa: E402
from segstyle_jax import engine, host_memory, vgg, winograd  # noqa: E402

ALGORITHMS = ("direct", "winograd", "winograd2x2")


def layer_shapes(size: int, deepest: str = "conv5_1") -> list[tuple[int, int, int]]:
    """Distinct ``(map side, c_in, c_out)`` of VGG16's convolutions up to ``deepest`` for a
    ``size x size`` image, in forward order."""
    shapes = []
    for name, (side, _, c_in, c_out) in vgg.conv_map_shapes("vgg16", size, size).items():
        if (side, c_in, c_out) not in shapes:
            shapes.append((side, c_in, c_out))
        if name == deepest:
            break
    return shapes


def layer_program(algorithm: str, x, kernel, bias, g):
    """The compiled ``(y, dx)`` of ``y = relu(conv(x) + bias)`` and its input gradient for the
    cotangent ``g``, by ``algorithm``, as a call without arguments."""
    tile = winograd.TILE.get(algorithm)
    prepared = winograd.prepared_kernels(kernel, tile)

    def f(x, kernel, bias, prepared, g):
        def layer(x):
            return jax.nn.relu(winograd.conv3x3(x, kernel, algorithm, prepared) + bias)
        y, vjp = jax.vjp(layer, x)
        return y, vjp(g)[0]

    args = (x, jnp.asarray(kernel), jnp.asarray(bias), jax.device_put(prepared), g)
    compiled = engine.compile_lowered(jax.jit(f).lower(*args))
    return lambda: jax.block_until_ready(compiled(*args))


def torch_layer(x, kernel, bias, g):
    """The same layer in PyTorch, NCHW: ``relu(conv2d(x) + bias)`` and the input gradient for ``g``."""
    import torch

    conv = torch.nn.Conv2d(kernel.shape[2], kernel.shape[3], 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
        conv.bias.copy_(torch.from_numpy(bias))
    conv.requires_grad_(False)
    xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous()  # np.array: a writable copy
    gt = torch.from_numpy(np.array(g)).permute(0, 3, 1, 2).contiguous()

    def call():
        xg = xt.clone().requires_grad_(True)
        y = torch.relu(conv(xg))
        (dx,) = torch.autograd.grad(y, xg, gt)
        return y, dx
    return call


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512], help="image sides (px)")
    p.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    p.add_argument("--rounds", type=int, default=7, help="timed calls of each algorithm, taking turns")
    p.add_argument("--torch", action="store_true", help="also time the same layer in PyTorch (NCHW)")
    p.add_argument("--jsonl", type=Path, help="also append the JSON lines to this file")
    args = p.parse_args(argv)
    host_memory.keep_freed_memory_for_cpu_steps()  # as the segstyle command runs
    env, busy = environment(), machine_busy_pct()
    v = env["versions"]
    header = (f"{env['device']} | {env['cpu']} | {env['cpu_count']} cpus | jax {v['jax']} jaxlib {v['jaxlib']} | "
              f"XLA_FLAGS={env['XLA_FLAGS']!r}, compile options {env['xla_compile_options']} | "
              f"CPU {busy:.0f}% busy before start")
    print(f"# {header}", flush=True)
    rng = np.random.default_rng(0)
    rows, seen = [], set()
    t_start = time.perf_counter()
    for size in args.sizes:
        for side, c_in, c_out in layer_shapes(size):
            if (side, c_in, c_out) in seen:
                continue
            seen.add((side, c_in, c_out))
            x = jnp.asarray(rng.uniform(0, 2, (1, side, side, c_in)).astype(np.float32))
            kernel = (rng.standard_normal((3, 3, c_in, c_out)) / np.sqrt(9 * c_in)).astype(np.float32)
            bias = (0.1 * rng.standard_normal(c_out)).astype(np.float32)
            g = jnp.asarray(rng.standard_normal((1, side, side, c_out)).astype(np.float32))
            calls, outputs = {}, {}
            for a in args.algorithms:
                calls[a] = layer_program(a, x, kernel, bias, g)
                outputs[a] = calls[a]()
            if args.torch:
                calls["torch"] = torch_layer(x, kernel, bias, g)
                y, dx = calls["torch"]()
                outputs["torch"] = (jnp.asarray(y.detach().permute(0, 2, 3, 1).numpy()), None)
            times = {a: [] for a in calls}
            for _ in range(args.rounds):
                for a, call in calls.items():
                    t0 = time.perf_counter()
                    call()
                    times[a].append(time.perf_counter() - t0)
            ref = outputs.get("direct")
            row = {**env, "side": side, "c_in": c_in, "c_out": c_out, "rounds": args.rounds,
                   "gflop_direct": 2 * 2 * 9 * side * side * c_in * c_out / 1e9}
            for a in calls:
                row[f"{a}_ms"] = 1e3 * statistics.median(times[a])
                if ref is not None:  # of y only: a ReLU flipped by rounding moves dx by a whole g * w
                    row[f"{a}_rel_err"] = float(jnp.abs(outputs[a][0] - ref[0]).max() / jnp.abs(ref[0]).max())
            rows.append(row)
            line = json.dumps(row)
            print(line, flush=True)
            if args.jsonl:
                with args.jsonl.open("a") as fh:
                    fh.write(line + "\n")

    print(f"\n{header} | {len(rows)} layer shapes, {time.perf_counter() - t_start:.0f} s; forward (conv + bias + ReLU) and "
          f"input gradient, median of {args.rounds} calls taking turns\n")
    timed = list(args.algorithms) + (["torch"] if args.torch else [])
    print("| map | c_in -> c_out | " + " | ".join(f"{a} ms" for a in timed) + " | fastest JAX | "
          + ("fastest JAX / PyTorch | " if args.torch else "")
          + " | ".join(f"{a} rel. err." for a in args.algorithms if a != "direct") + " |")
    print("|---|---|" + "---|" * (len(timed) + 1 + args.torch + len(args.algorithms) - ("direct" in args.algorithms)))
    for r in rows:
        fastest = min(args.algorithms, key=lambda a: r[f"{a}_ms"])
        errs = [f"{r[f'{a}_rel_err']:.1e}" if f"{a}_rel_err" in r else "" for a in args.algorithms if a != "direct"]
        vs_torch = [f"{r[f'{fastest}_ms'] / r['torch_ms']:.2f}"] if args.torch else []
        print(f"| {r['side']}² | {r['c_in']} -> {r['c_out']} | " + " | ".join(f"{r[f'{a}_ms']:.1f}" for a in timed)
              + f" | {fastest} | " + " | ".join(vs_torch + errs) + " |")
    return rows


if __name__ == "__main__":
    main()
