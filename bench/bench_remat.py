"""XLA's memory estimate of the update step with and without rematerialization of the VGG blocks.

    python bench/bench_remat.py                     # 256-2048 px, locality and multipass, K = 2: ~2 minutes
    python bench/bench_remat.py --sizes 512 --approaches blended --conv direct

Rematerialization (``jax.checkpoint``) keeps only each VGG block's input and outputs for the
backward pass and recomputes the rest: the usual way to trade compute for memory. Whether it pays
depends on where the step's memory peaks, so this measures it: for every configuration the
engine's step is compiled twice, once with the project's VGG and once with each block wrapped in
``jax.checkpoint`` (``--policy``: ``nothing`` saves nothing inside a block, ``dots`` saves the
matrix products), and XLA's buffer plan of each is printed (``memory_analysis()``: temporaries and
arguments; nothing runs, so 2048² takes seconds). The checkpointed VGG below is the Flax model's
forward written as a function so that blocks can be wrapped; before measuring, it is checked
equal to :class:`segstyle_jax.vgg.VGG` on a small image.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from segstyle_jax import engine, vgg, winograd  # noqa: E402
from segstyle_jax.config import LossWeights, StepConfig  # noqa: E402
from segstyle_jax.weights import load_default_weights  # noqa: E402

POLICIES = {"nothing": jax.checkpoint_policies.nothing_saveable,
            "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


class CheckpointedVGG:
    """What the engine needs of :class:`segstyle_jax.vgg.VGG` (``arch``, ``taps``, ``conv``, ``clone``,
    ``apply`` with the ``prepared`` kernels), with every block (its convolutions, ReLUs and pooling)
    under ``jax.checkpoint`` when ``policy`` is set."""

    def __init__(self, model: vgg.VGG, policy=None):
        self.model, self.policy = model, policy
        self.arch, self.taps, self.conv = model.arch, model.taps, model.conv

    def clone(self, **changes):
        return CheckpointedVGG(self.model.clone(**changes), self.policy)

    def apply(self, variables, x):
        m, params, prepared = self.model, variables["params"], variables.get("prepared", {})
        names = vgg.layer_names(m.arch)
        names = names[: max(names.index(t) for t in m.taps) + 1]
        unbatched = x.ndim == 3
        x = x[None] if unbatched else x
        x = (x - jnp.asarray(m.mean, x.dtype)) / jnp.asarray(m.std, x.dtype)
        out = {}
        for block in sorted({vgg.tap_block(n) for n in names}):
            layers = [n for n in names if vgg.tap_block(n) == block]

            def run_block(x, layers=tuple(layers)):
                taps = {}
                for name in layers:
                    if name.startswith("conv"):
                        x = winograd.conv3x3(x, params[name]["kernel"], m.conv, prepared.get(name)) + params[name]["bias"]
                    elif name.startswith("relu"):
                        x = jax.nn.relu(x)
                    else:
                        x = vgg.pool_2x2(x, m.pooling)
                    if name in m.taps:
                        taps[name] = x
                return x, taps

            if self.policy is not None:
                run_block = jax.checkpoint(run_block, policy=self.policy)
            x, taps = run_block(x)
            out.update({t: f[0] if unbatched else f for t, f in taps.items()})
        return out


def check_equal(weights) -> float:
    """Max relative difference of the checkpointed VGG's taps from the Flax model's, at 32x40 px."""
    model = weights.model(("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"))
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (32, 40, 3)).astype(np.float32))
    want = model.apply(weights.variables(), x)
    got = CheckpointedVGG(model, POLICIES["nothing"]).apply(weights.variables(), x)
    return max(float(jnp.max(jnp.abs(got[t] - want[t])) / jnp.max(jnp.abs(want[t]))) for t in want)


def estimate(weights, size: int, approach: str, conv: str, policy) -> dict:
    k = 2
    cfg = StepConfig(approach, size, size, k)
    model = CheckpointedVGG(weights.model(cfg.taps, conv=conv), policy)
    init, update = engine.make_update_fn(cfg, model, params=weights.params)
    start = np.zeros((k, size, size, 3) if approach == "multipass" else (size, size, 3), np.float32)
    t0 = time.perf_counter()
    compiled = engine.compile_lowered(update.lower(init(start), engine.targets_spec(cfg, weights.model(cfg.taps),
                                                                                     weights.params),
                                                   LossWeights.create(cfg)))
    m = compiled.memory_analysis()
    return {"temp_gib": m.temp_size_in_bytes / 2 ** 30, "args_gib": m.argument_size_in_bytes / 2 ** 30,
            "compile_s": time.perf_counter() - t0}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--approaches", nargs="+", default=["locality", "multipass"],
                   choices=("multipass", "blended", "locality", "localized"))
    p.add_argument("--conv", nargs="+", default=["auto"], choices=winograd.ALGORITHMS)
    p.add_argument("--policy", default="nothing", choices=tuple(POLICIES))
    args = p.parse_args(argv)
    weights = load_default_weights()
    diff = check_equal(weights)
    if diff > 1e-5:
        raise SystemExit(f"the checkpointed VGG differs from the Flax model (max relative difference {diff:.1e})")
    print(f"# checkpointed VGG = Flax VGG to {diff:.1e} (max relative difference); {jax.devices()[0].device_kind}, "
          f"jax {jax.__version__}, K = 2, policy {args.policy!r}", flush=True)
    print("| size | approach | conv | XLA temp GiB, plain | XLA temp GiB, checkpointed blocks | checkpointed / plain "
          "| arguments GiB |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for approach in args.approaches:
            for conv in args.conv:
                plain = estimate(weights, size, approach, conv, None)
                remat = estimate(weights, size, approach, conv, POLICIES[args.policy])
                print(f"| {size}² | {approach} | {conv} | {plain['temp_gib']:.2f} | {remat['temp_gib']:.2f} "
                      f"| {remat['temp_gib'] / plain['temp_gib']:.2f} | {plain['args_gib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
