"""What bfloat16 VGG layers cost in quality and give in speed: one stylization of the demo photo
(scikit-image's astronaut, person and background in two styles) with ``compute_dtype`` float32 and
bfloat16, everything else equal, in one invocation.

    python bench/compare_dtype.py [--size 512] [--steps 200] [--approach locality] [-o DIR]

Prints, per dtype, the median step time, the compile time, the final loss (as that run computed
it) and the quality metrics (:mod:`segstyle_jax.metrics`, computed in float32 for both images:
each segment's style distance to its own style, the mean separation, the content distance),
then how far the two images are apart (mean and max absolute difference in [0, 1] RGB, PSNR of one
against the other), and the catch-up: the first step at which the bfloat16 run's loss is at or
below what the float32 run reached after half the steps, in steps and in seconds of median step
time against float32's half (bfloat16 pays off end to end when it gets there sooner). With ``-o DIR`` it writes both images (``float32.png``, ``bfloat16.png``) and the
numbers (``compare_dtype.json``). The device and versions are printed with the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from segstyle_jax import __version__, api, atomic, demo_data, images  # noqa: E402
from segstyle_jax.config import COMPUTE_DTYPES  # noqa: E402


def image_distance(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean / max absolute difference of two ``[h, w, 3]`` images in [0, 1] and the PSNR (dB) of one
    against the other: ``10 log10(1 / mean((a - b)^2))``."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    mse = float(np.mean(d * d))
    return {"mean_abs_diff": float(np.abs(d).mean()), "max_abs_diff": float(np.abs(d).max()),
            "psnr_db": float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))}


def catch_up(losses_32, losses_16, step_32: float | None, step_16: float | None) -> dict:
    """Where the bfloat16 run (``losses_16``, one loss per step) first reaches the float32 run's loss
    after half its steps: ``{"target_loss", "float32_steps", "bfloat16_steps"}`` (``None`` when it
    never does) and, with the median step times, both in seconds (steps x median step time)."""
    half = max(1, len(losses_32) // 2)
    target = losses_32[half - 1]
    steps_16 = next((i + 1 for i, v in enumerate(losses_16) if v <= target), None)
    out = {"target_loss": target, "float32_steps": half, "bfloat16_steps": steps_16}
    if step_32 is not None and step_16 is not None:
        out["float32_s"] = half * step_32
        out["bfloat16_s"] = None if steps_16 is None else steps_16 * step_16
    return out


def run(size: int, steps: int, approach: str, weights=None, out: Path | None = None) -> dict:
    """Stylize the demo photo once per compute dtype -> ``{"runs": {dtype: numbers}, "distance": ...}``."""
    content, seg, styles = demo_data.astronaut(), demo_data.astronaut_hand_mask(), demo_data.demo_styles()
    runs, pictures, losses = {}, {}, {}
    for dtype in COMPUTE_DTYPES:
        r = api.stylize(content, seg, styles, approach, steps=steps, size=size, weights=weights, compute_dtype=dtype)
        pictures[dtype], losses[dtype] = r.image, r.losses
        runs[dtype] = {"median_step_s": float(np.median(r.step_seconds)) if r.step_seconds else None,
                       "compile_s": r.compile_seconds, "final_loss": r.losses[-1], "stopped": r.stopped,
                       "metrics": r.metrics}
        if out is not None:
            images.save_image(out / f"{dtype}.png", r.image)
    result = {"size": size, "steps": steps, "approach": approach, "device": str(jax.devices()[0]),
              "versions": {"segstyle_jax": __version__, "jax": jax.__version__},
              "runs": runs, "distance": image_distance(pictures["float32"], pictures["bfloat16"]),
              "catch_up": catch_up(losses["float32"], losses["bfloat16"], runs["float32"]["median_step_s"],
                                   runs["bfloat16"]["median_step_s"])}
    if out is not None:
        atomic.write_text(out / "compare_dtype.json", json.dumps(result, indent=2, default=float) + "\n")
    return result


def report(result: dict) -> str:
    """The numbers of :func:`run` as a few lines of text."""
    lines = [f"{result['approach']}, {result['size']} px, {result['steps']} Adam steps on {result['device']} "
             f"({', '.join(f'{k} {v}' for k, v in result['versions'].items())})"]
    for dtype, r in result["runs"].items():
        m = r["metrics"] or {}
        step = f"{r['median_step_s'] * 1e3:.1f} ms/step" if r["median_step_s"] is not None else "one step"
        own = ", ".join(f"{row['segment']} {row['distances'][row['own_style']]:.4g}" for row in m.get("segments", []))
        lines.append(f"  {dtype:>8}: {step}, compile {r['compile_s']:.1f} s, final loss {r['final_loss']:.5g}, "
                     f"distance to own style: {own}; mean separation {m.get('mean_separation') or float('nan'):.3f}, "
                     f"content distance {m.get('content_distance', float('nan')):.4g}, {r['stopped']}")
    d = result["distance"]
    lines.append(f"  bfloat16 vs float32 image: mean |diff| {d['mean_abs_diff']:.4f}, max {d['max_abs_diff']:.3f}, "
                 f"PSNR {d['psnr_db']:.1f} dB")
    c = result["catch_up"]
    seconds = (f" ({c['bfloat16_s']:.2f} s against {c['float32_s']:.2f} s)"
               if c.get("bfloat16_s") is not None else "")
    reached = f"at step {c['bfloat16_steps']}" if c["bfloat16_steps"] is not None else "never, in these steps"
    lines.append(f"  float32's loss after {c['float32_steps']} steps ({c['target_loss']:.5g}): bfloat16 reaches it "
                 f"{reached}{seconds}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--approach", default="locality", choices=api.APPROACHES)
    p.add_argument("--weights", help="VGG weight file (default: the default VGG16)")
    p.add_argument("-o", "--output-dir", type=Path, help="write both images and the numbers here")
    args = p.parse_args(argv)
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    result = run(args.size, args.steps, args.approach, args.weights, args.output_dir)
    print(report(result))
    return result


if __name__ == "__main__":
    main()
