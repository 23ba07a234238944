"""Command line: ``segstyle stylize``, ``segstyle info`` (also ``python -m segstyle_jax``).

Errors in the user's input print one line (``error: ...``) and exit with status 2; nothing is
written. Outputs (images, frames, metrics) are written atomically.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from segstyle_jax import __version__, compile_cache, host_memory, winograd
from segstyle_jax.config import APPROACHES, COMPUTE_DTYPES, DEFAULT_CONTENT_TAPS, DEFAULT_STYLE_TAPS, OPTIMIZERS

USER_ERRORS = (ValueError, FileNotFoundError, MemoryError)  # WeightsError and ImageError are ValueErrors


# ----------------------------------------------------------------------------------------------
# argument parsing


def _key_value(text: str, what: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{what} must look like LABEL=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    if not key or not value:
        raise argparse.ArgumentTypeError(f"{what} must look like LABEL=VALUE, got {text!r}")
    return key, value


def parse_style(text: str):
    """``LABEL=IMAGE`` or ``LABEL=IMG1@0.7,IMG2@0.3`` (a blend) -> ``(label, spec)``."""
    label, value = _key_value(text, "--style")
    parts = []
    for item in value.split(","):
        path, _, weight = item.rpartition("@") if "@" in item else (item, "", "1")
        try:
            parts.append((path, float(weight)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--style {text!r}: blend weight {weight!r} is not a number") from None
    return label, (parts[0][0] if len(parts) == 1 else parts)


def parse_float_pair(text: str, what: str):
    label, value = _key_value(text, what)
    try:
        return label, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} {text!r}: {value!r} is not a number") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segstyle", description="Segmentation-aware multi-style neural style "
                                     "transfer in JAX: each segment of a photo in its own style.")
    parser.add_argument("--version", action="version", version=f"segstyle_jax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stylize", help="stylize a photo, one style per segment",
                       description="Stylize CONTENT with one style per segment of --segments.")
    p.add_argument("content", help="content photo")
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--segments", required=True, nargs="+", metavar="MASK",
                    help="automatic: 'person' (labels background, person), 'kmeans:K' or 'slic:K' (labels 0..K-1); "
                         "or a label-map PNG (one integer label per pixel), a colour PNG with --colors, or several "
                         "grayscale mask PNGs (soft masks, labels 0..K-1 in the order given)")
    io.add_argument("--colors", metavar="HEX=LABEL[,...]",
                    help="colour table for a colour-coded mask, e.g. '#ff0000=person,#000000=background'")
    io.add_argument("--style", required=True, action="append", type=parse_style, metavar="LABEL=IMAGE",
                    help="style of one segment; repeat per segment. Blend: LABEL=A.jpg@0.7,B.jpg@0.3")
    io.add_argument("--region", action="append", default=[], metavar="LABEL=MASK",
                    help="localized: take segment LABEL's style from a region of its style image: a grayscale mask "
                         "the size of the style image, or SEGMENTER@REGION, e.g. person=person@person (the person "
                         "in a portrait) or background=kmeans:3@0 (region 0 of 3)")
    io.add_argument("--output", "-o", required=True, help="output image (.png or .jpg)")
    io.add_argument("--metrics", metavar="JSON", help="write quality metrics (and the loss history) here")
    io.add_argument("--overlay", metavar="PNG", help="also write the segments over the photo, to check the masks")
    io.add_argument("--save-every", type=int, default=0, metavar="N",
                    help="also write the image every N steps as OUTPUT_STEM.stepNNNN.png")
    io.add_argument("--compare", action="store_true",
                    help="run all four approaches; OUTPUT gets a labelled side-by-side sheet, each approach's image "
                         "goes to OUTPUT_STEM.APPROACH.png")

    opt = p.add_argument_group("optimization")
    opt.add_argument("--approach", choices=APPROACHES, default="locality")
    opt.add_argument("--steps", type=int, nargs="+", default=[200], metavar="N",
                     help="steps (default 200); with --scales, one count for every scale or one per scale")
    opt.add_argument("--size", type=int, default=256, help="longest side of the output, pixels (default 256)")
    opt.add_argument("--scales", type=float, nargs="+", default=[1.0], metavar="F",
                     help="coarse-to-fine fractions of --size, e.g. 0.5 1 (default 1)")
    opt.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                     help="adam (default), lbfgs (zoom line search) or lbfgs-fixed (unit step, one evaluation per "
                          "step)")
    opt.add_argument("--learning-rate", type=float, default=0.02, help="Adam step in [0,1] RGB units (default 0.02)")
    opt.add_argument("--lbfgs-memory", type=int, default=10, metavar="M",
                     help="correction pairs of both L-BFGS (default 10; each holds two image-sized arrays)")
    opt.add_argument("--init", default="content", help="content, noise, or an image path (default content)")
    opt.add_argument("--seed", type=int, default=0, help="seed for noise init (default 0)")
    opt.add_argument("--passes", choices=tuple(PASSES), default="auto",
                     help="multipass: optimize the K images as one batch, one by one (the memory of one image), or "
                          "auto: batched when it fits in memory (default)")

    loss = p.add_argument_group("loss")
    loss.add_argument("--content-weight", type=float, default=1.0)
    loss.add_argument("--style-weight", type=float, default=1e3)
    loss.add_argument("--tv-weight", type=float, default=10.0)
    loss.add_argument("--segment-weight", action="append", default=[], metavar="LABEL=W",
                      help="per-segment style weight (default 1)")
    loss.add_argument("--style-layers", nargs="+", default=list(DEFAULT_STYLE_TAPS), metavar="TAP")
    loss.add_argument("--layer-weights", nargs="+", type=float, metavar="W", help="one per style layer (default 1)")
    loss.add_argument("--content-layers", nargs="+", default=list(DEFAULT_CONTENT_TAPS), metavar="TAP")
    loss.add_argument("--gamma", type=float, default=0.8, help="locality strength in [0,1] (default 0.8)")
    loss.add_argument("--rho", type=float, default=8.0, help="locality width in pixels (default 8)")

    look = p.add_argument_group("look")
    look.add_argument("--style-scale", type=float, default=1.0, help="style image size relative to --size")
    look.add_argument("--preserve-color", nargs="*", metavar="LABEL",
                      help="keep the photo's colours (luminance-only transfer): all segments, or the labels given")
    look.add_argument("--feather", type=float, default=0.0, metavar="PX", help="multipass: soften seams (pixels)")

    model = p.add_argument_group("model")
    model.add_argument("--weights", default="default",
                       help="VGG weight file (.npz from tools/convert_torch_weights.py); default: VGG16 ImageNet")
    model.add_argument("--pooling", choices=("max", "avg"), default="max")
    model.add_argument("--conv", choices=winograd.ALGORITHMS, default="auto",
                       help="convolution algorithm of the step (the same result up to float rounding): auto "
                            "(default: per layer, Winograd on CPU where it was faster), direct (XLA's), "
                            "winograd (F(4x4, 3x3) everywhere) or winograd2x2 (F(2x2, 3x3) everywhere)")
    _add_compute_dtype(model)
    _add_compile_cache(model)
    p.set_defaults(func=cmd_stylize)

    p = sub.add_parser("demo", help="the offline demo: astronaut photo, person and background in two styles",
                       description="Stylize scikit-image's astronaut photo (person: brick texture, background: "
                                   "Hubble deep field) with all four approaches; writes the mask overlay, the "
                                   "result, a side-by-side sheet and the metrics into --output-dir.")
    p.add_argument("--output-dir", "-o", default="segstyle_demo", help="folder for the outputs (default segstyle_demo)")
    p.add_argument("--size", type=int, default=160, help="longest side in pixels (default 160: about 2.5 min on 2 CPU cores)")
    p.add_argument("--steps", type=int, default=100, help="Adam steps per approach (default 100)")
    p.add_argument("--approach", choices=APPROACHES, default="locality", help="the approach for result.png")
    _add_compute_dtype(p)
    _add_compile_cache(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("segment", help="segment a photo automatically and write the label map",
                       description="Segment IMAGE and write its label map (and an overlay to check it) before a "
                                   "long run; the label map is what --segments takes.")
    p.add_argument("image")
    p.add_argument("--segments", required=True, metavar="SEGMENTER", help="person, kmeans:K or slic:K")
    p.add_argument("--output", "-o", required=True, metavar="LABELS.png",
                   help="label map: one integer per pixel (person: 0 background, 1 person; kmeans/slic: 0..K-1)")
    p.add_argument("--overlay", metavar="OVERLAY.png", help="the segments drawn over the photo")
    p.add_argument("--seed", type=int, default=0, help="seed for kmeans (default 0)")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("fetch-models", help="fetch and convert the person segmentation model (once, from PyPI)",
                       add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_fetch_models)

    p = sub.add_parser("info", help="show the VGG model, its weights and the tap shapes for an image")
    p.add_argument("image", nargs="?", help="an image to report tap shapes for")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--weights", default="default")
    p.set_defaults(func=cmd_info)
    return parser


# ----------------------------------------------------------------------------------------------
# progress


PASSES = {"auto": None, "batched": True, "one-by-one": False}  # --passes -> stylize(batch_passes=...)


class ProgressBar:
    """One line on stderr: bar, step, loss, time per step (redrawn in place on a terminal)."""

    def __init__(self, label: str, stream=None, width: int = 24):
        self.label, self.stream, self.width = label, stream or sys.stderr, width
        self.tty = self.stream.isatty()
        self.last = time.perf_counter()
        self.printed = -1

    def __call__(self, p) -> None:
        now = time.perf_counter()
        per_step, self.last = now - self.last, now
        total, done = p.total, p.done
        filled = int(self.width * done / total)
        scale = f" scale {p.scale_index + 1}/{p.num_scales}" if p.num_scales > 1 else ""
        scale += f" pass {p.pass_index + 1}/{p.num_passes}" if p.num_passes > 1 else ""
        line = (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] step {p.step}/{p.steps}{scale} "
                f"loss {p.loss:.4g} ({per_step:.2f} s/step)")
        decile = 10 * done // total
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done == total else ""))
        elif decile != self.printed or done == total:
            self.stream.write(line + "\n")
        self.printed = decile
        self.stream.flush()


# ----------------------------------------------------------------------------------------------
# commands


SEGMENTER = re.compile(r"person|(kmeans|slic):\S+")


def _is_segmenter(spec: str) -> bool:
    return SEGMENTER.fullmatch(spec) is not None and not Path(spec).exists()


def ensure_person_model() -> None:
    """Convert the person segmentation model on first use (fetched once from PyPI), with a notice."""
    from segstyle_jax import person, selfie_convert

    if not person.default_selfie_path().is_file():
        print("first use of person segmentation: fetching mediapipe==0.10.14 from PyPI to convert its selfie "
              "model (once)", file=sys.stderr)
        selfie_convert.convert(log=lambda message: print(message, file=sys.stderr))


def auto_segment(image, spec: str, seed: int = 0):
    """Run a segmenter (``person``, ``kmeans:K``, ``slic:K``), printing its warnings as ``warning:`` lines."""
    from segstyle_jax import regions

    regions.parse_segmenter(spec)  # a bad spec is an error before any download
    if spec == "person":
        ensure_person_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = regions.segment_image(image, spec, seed=seed)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return seg


def _region_arg(value: str, label: str, styles: dict, seed: int):
    """``--region`` value -> a mask path, or the named region of the style image's segmentation."""
    from segstyle_jax import images

    spec, at, name = value.rpartition("@")
    if not at or not _is_segmenter(spec):
        return value
    style = styles.get(label)
    if not isinstance(style, str):
        raise ValueError(f"--region {label}={value}: segment {label!r} needs exactly one style image")
    seg = auto_segment(images.load_image(style), spec, seed)
    if name not in seg.labels:
        raise ValueError(f"--region {label}={value}: {spec} found regions {', '.join(seg.labels)} in {style}, "
                         f"not {name!r}")
    return seg.masks[seg.labels.index(name)]


def _segments_arg(args, content):
    from segstyle_jax import masks

    paths = args.segments
    if len(paths) == 1 and _is_segmenter(paths[0]):
        if args.colors:
            raise ValueError("--colors applies to a colour-coded mask file, not to automatic segmentation")
        return auto_segment(content, paths[0], args.seed)
    table = None
    if args.colors:
        table = {}
        for item in args.colors.split(","):
            color, label = _key_value(item.strip(), "--colors")
            table[color] = label
        if len(paths) != 1:
            raise ValueError("--colors needs exactly one colour-coded mask")
    return masks.load_segmentation(paths[0] if len(paths) == 1 else list(paths), color_table=table)


def _frame_writer(output: Path, every: int):
    from segstyle_jax.images import save_image

    def write(p):
        if every and p.step % every == 0:
            suffix = f".s{p.scale_index + 1}" if p.num_scales > 1 else ""
            save_image(output.with_name(f"{output.stem}{suffix}.step{p.step:04d}.png"), p.image())
    return write


def cmd_stylize(args) -> int:
    from segstyle_jax import api, atomic, images, masks
    from segstyle_jax.weights import resolve_weights

    output = Path(args.output)
    if output.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"{output}: output must end in .png, .jpg or .jpeg")
    if args.save_every < 0:
        raise ValueError("--save-every must be >= 0")
    content = images.load_image(args.content)
    segmentation = api.as_segmentation(_segments_arg(args, content), content.shape[:2])
    styles = dict(args.style)
    if len(styles) != len(args.style):
        raise ValueError("a label is given more than one --style; blend styles with LABEL=A.jpg@0.5,B.jpg@0.5")
    regions = {label: _region_arg(value, label, styles, args.seed)
               for label, value in (_key_value(r, "--region") for r in args.region)}
    segment_weights = dict(parse_float_pair(s, "--segment-weight") for s in args.segment_weight)
    weights = resolve_weights(args.weights)
    preserve = False if args.preserve_color is None else (True if not args.preserve_color else args.preserve_color)
    init = args.init if args.init in ("content", "noise") else images.load_image(args.init)

    if args.overlay:
        small = images.resize_longest(content, args.size)
        seg_small = masks.resize_segmentation(segmentation, small.shape[:2])
        images.save_image(args.overlay, images.overlay_segments(small, seg_small.masks))
        print(f"wrote {args.overlay} (segments {', '.join(segmentation.labels)})", file=sys.stderr)

    approaches = APPROACHES if args.compare else (args.approach,)
    results = {}
    for approach in approaches:
        bar = ProgressBar(f"{approach:>9}")
        frames = _frame_writer(output if not args.compare else output.with_name(f"{output.stem}.{approach}.png"),
                               args.save_every)

        def callback(p, bar=bar, frames=frames):
            bar(p)
            frames(p)

        results[approach] = api.stylize(
            content, segmentation, styles, approach, steps=args.steps[0] if len(args.steps) == 1 else args.steps,
            size=args.size, scales=args.scales,
            content_weight=args.content_weight, style_weight=args.style_weight, tv_weight=args.tv_weight,
            segment_weights=segment_weights, style_layers=args.style_layers, layer_weights=args.layer_weights,
            content_layers=args.content_layers, gamma=args.gamma, rho=args.rho,
            regions=regions if approach == "localized" else None, init=init, seed=args.seed,
            optimizer=args.optimizer, learning_rate=args.learning_rate,
            lbfgs_memory=args.lbfgs_memory, style_scale=args.style_scale,
            pooling=args.pooling, preserve_color=preserve, feather_px=args.feather, weights=weights,
            compute_metrics=bool(args.metrics) or args.compare, callback=callback,
            batch_passes=PASSES[args.passes], conv=args.conv, compute_dtype=args.compute_dtype)
        r = results[approach]
        if r.stopped != "completed":
            print(f"warning: {approach}: {r.stopped}", file=sys.stderr)
        steady = f", {np.median(r.step_seconds):.3f} s/step" if r.step_seconds else ""
        print(f"{approach}: final loss {r.losses[-1]:.4g} after {len(r.losses)} steps "
              f"(compile {r.compile_seconds:.1f} s{steady})", file=sys.stderr)

    if args.compare:
        for approach, r in results.items():
            images.save_image(output.with_name(f"{output.stem}.{approach}.png"), r.image)
        first = next(iter(results.values()))
        photo = images.resize_to(content, first.image.shape[:2])
        sheet = images.labelled_sheet([photo] + [r.image for r in results.values()], ["content", *results])
        images.save_image(output, sheet)
    else:
        images.save_image(output, results[args.approach].image)
    print(f"wrote {output}", file=sys.stderr)

    if args.metrics:
        report = {a: {"metrics": r.metrics, "losses": r.losses, "stopped": r.stopped,
                      "compile_seconds": r.compile_seconds,
                      "median_step_seconds": float(np.median(r.step_seconds)) if r.step_seconds else None}
                  for a, r in results.items()}
        atomic.write_text(args.metrics, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.metrics}", file=sys.stderr)
    if args.metrics or args.compare:
        print(metrics_table(results), file=sys.stderr)
    return 0


def metrics_table(results) -> str:
    """Markdown table of the headline metrics of each approach (``results``: approach -> Result or metrics dict)."""
    rows = ["| approach | every segment nearest its own style | separation (lower better) | "
            "border separation (lower better) | border leakage (lower better) | content distance |",
            "|---|---|---|---|---|---|"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for approach, r in results.items():
        m = r if isinstance(r, dict) else r.metrics
        rows.append(f"| {approach} | {'yes' if m['all_wear_own_style'] else 'no'} | {fmt(m['mean_separation'])} | "
                    f"{fmt(m['mean_band_separation'])} | {fmt(m['mean_band_leakage'])} | "
                    f"{fmt(m['content_distance'])} |")
    return "\n".join(rows)


def cmd_demo(args) -> int:
    from segstyle_jax import api, atomic, demo_data, images, masks
    from segstyle_jax.weights import WeightsError, load_default_weights

    out = Path(args.output_dir)
    content, styles = demo_data.astronaut(), demo_data.demo_styles()
    try:
        segmentation, how = auto_segment(content, "person"), "person segmentation model"
    except WeightsError as e:  # no registry reachable on first use: still show the method
        print(f"warning: {e}; using the hand-drawn mask instead", file=sys.stderr)
        segmentation, how = demo_data.astronaut_hand_mask(), "hand-drawn mask"
    weights = load_default_weights()
    photo = images.resize_longest(images.load_image(content), args.size)
    small_seg = masks.resize_segmentation(segmentation, photo.shape[:2])
    images.save_image(out / "overlay.png", images.overlay_segments(photo, small_seg.masks))
    print(f"segments: {', '.join(segmentation.labels)} ({how}); wrote {out / 'overlay.png'}", file=sys.stderr)
    results = {}
    for approach in APPROACHES:
        results[approach] = api.stylize(content, segmentation, styles, approach, steps=args.steps, size=args.size,
                                        weights=weights, compute_dtype=args.compute_dtype,
                                        callback=ProgressBar(f"{approach:>9}"))
    images.save_image(out / "result.png", results[args.approach].image)
    sheet = images.labelled_sheet([photo] + [r.image for r in results.values()], ["content", *results])
    images.save_image(out / "compare.png", sheet)
    report = {a: {"metrics": r.metrics, "final_loss": r.losses[-1], "steps": len(r.losses),
                  "median_step_seconds": float(np.median(r.step_seconds)) if r.step_seconds else None}
              for a, r in results.items()}
    atomic.write_text(out / "metrics.json", json.dumps(report, indent=2) + "\n")
    print(metrics_table(results))
    print(f"wrote {out / 'result.png'} ({args.approach}), {out / 'compare.png'}, {out / 'metrics.json'}", file=sys.stderr)
    return 0


def cmd_segment(args) -> int:
    from segstyle_jax import images

    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise ValueError(f"{output}: the label map must be a .png (lossless)")
    image = images.load_image(args.image)
    seg = auto_segment(image, args.segments, args.seed)
    if seg.num_segments > 256:
        raise ValueError(f"{seg.num_segments} segments do not fit an 8-bit label map")
    from PIL import Image

    from segstyle_jax.atomic import atomic_write

    with atomic_write(output) as f:
        Image.fromarray(seg.hard().astype(np.uint8)).save(f, format="PNG")
    fractions = ", ".join(f"{i}={label} {seg.masks[i].mean():.1%}" for i, label in enumerate(seg.labels))
    print(f"wrote {output}: labels {fractions}", file=sys.stderr)
    if args.overlay:
        images.save_image(args.overlay, images.overlay_segments(image, seg.masks))
        print(f"wrote {args.overlay}", file=sys.stderr)
    return 0


def cmd_fetch_models(args) -> int:
    from segstyle_jax import selfie_convert

    return selfie_convert.main(args.args)


def cmd_info(args) -> int:
    import jax
    import jax.numpy as jnp

    from segstyle_jax import images, vgg
    from segstyle_jax.weights import resolve_weights

    weights = resolve_weights(args.weights)
    meta = weights.metadata
    print(f"segstyle_jax {__version__}, jax {jax.__version__} on {jax.devices()[0].platform}")
    print(f"weights: {meta['arch']} from {meta['source'].get('kind')} ({meta['source'].get('file')}), "
          f"params sha256 {meta['params_sha256'][:16]}... verified")
    print(f"preprocessing: {meta['preprocessing']}")
    n = sum(int(np.prod(v.shape)) for leaves in weights.params.values() for v in leaves.values())
    print(f"{len(weights.params)} convolutions, {n:,} parameters")
    if args.image:
        image = images.resize_longest(images.load_image(args.image), args.size)
        taps = tuple(t for t in vgg.layer_names(weights.arch) if t.startswith("relu"))
        feats = jax.jit(weights.model(taps).apply)(weights.variables(), jnp.asarray(image))
        print(f"tap shapes for {args.image} at {image.shape[1]}x{image.shape[0]}:")
        for tap in taps:
            print(f"  {tap:8s} {tuple(feats[tap].shape)}  mean {float(feats[tap].mean()):.3f}")
    return 0


def _add_compute_dtype(group) -> None:
    group.add_argument("--compute-dtype", choices=COMPUTE_DTYPES, default="float32",
                       help="what the step's VGG layers compute in (default float32); bfloat16 is for GPUs, where "
                            "it is faster (README, Speed); targets and metrics stay float32; bfloat16 layers run the "
                            "direct convolution (Winograd's transforms amplify its rounding)")


def _add_compile_cache(group) -> None:
    group.add_argument("--compile-cache", metavar="DIR|off", default=None,
                       help="keep compiled steps here, so a later run at the same size and settings starts without "
                            f"compiling (default: ${compile_cache.ENV_VAR}, else ~/.cache/segstyle_jax/xla); "
                            "off: compile every time")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runs_steps = args.command in ("stylize", "demo")
    try:
        if runs_steps:
            # this process is ours: keep the step's buffers between steps and run CPU steps on this
            # thread (CPU steps only: host_memory's docstring)
            host_memory.keep_freed_memory_for_cpu_steps()
            cache = compile_cache.resolve(args.compile_cache)
            if cache is not None:
                try:
                    compile_cache.enable(cache)  # before anything compiles
                except OSError as e:  # a cache that cannot be made never stops a run
                    print(f"warning: compiling without a cache: {e}", file=sys.stderr)
        status = args.func(args)
        if runs_steps and compile_cache.enabled_dir() is not None:
            print(compile_cache.summary(), file=sys.stderr)
        return status
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing more written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
