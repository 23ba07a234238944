"""The Python API: :func:`stylize` turns a photo, its segments and their styles into a stylized image.

Everything is validated on the host before any compute: images readable, the segmentation the
size of the content image, every segment with a style and every style with a segment, weights
that match their counts. Then the content and masks are resized to the working size (longest
side ``size``), the targets are computed once, and the compiled update step runs ``steps`` times
(at each scale of ``scales``, coarse to fine; a scale's targets and compiled step are prepared in
two worker threads while the scale before it runs).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from segstyle_jax import compile_cache, engine, host_memory, images as images_lib, masks as masks_lib, step_cache, vgg, winograd
from segstyle_jax import metrics as metrics_lib
from segstyle_jax.config import APPROACHES, DEFAULT_CONTENT_TAPS, DEFAULT_STYLE_TAPS, LossWeights, StepConfig
from segstyle_jax.weights import VGGWeights, resolve_weights

# Loss weights that work on real photos with the default VGG16 (see README, "Choosing weights").
DEFAULT_WEIGHTS = {"content": 1.0, "style": 1e3, "tv": 10.0}


@dataclass
class Progress:
    """Passed to the ``callback`` of :func:`stylize` after every step.

    ``step`` counts from 1 within scale ``scale_index`` (of ``num_scales``), which has ``steps``
    steps; ``done`` and ``total`` count steps over all scales. A multipass run split into one pass
    per segment (``stylize(batch_passes=...)``) runs pass ``pass_index`` of ``num_passes`` after the
    other; ``done``/``total`` then count the steps of every pass, and ``loss``/``terms`` are the
    current pass's."""

    scale_index: int
    num_scales: int
    step: int
    steps: int
    done: int
    total: int
    loss: float
    terms: dict
    _image: Callable[[], np.ndarray]
    pass_index: int = 0
    num_passes: int = 1

    def image(self) -> np.ndarray:
        """The current image ``[h, w, 3]`` in [0, 1] (multipass: already composited). Call it inside
        the callback: the next step reuses (donates) the buffers it reads."""
        return self._image()


@dataclass
class Result:
    """What :func:`stylize` returns.

    Attributes:
      image: ``[h, w, 3]`` float32 in [0, 1].
      approach: the approach used.
      segmentation: the segmentation at the output size.
      losses: total loss per step (all scales, in order).
      terms: per step ``content``, ``style``, ``tv`` and ``per_segment``.
      metrics: quality metrics (:mod:`segstyle_jax.metrics`) or ``None``.
      images: multipass only, the ``K`` uncomposited images ``[K, h, w, 3]``.
      compile_seconds: time spent compiling the update step (all scales; 0 for a step taken from
        :mod:`segstyle_jax.step_cache`).
      step_seconds: wall time of every step after the first of each scale.
      stopped: ``"completed"`` or why the run stopped early.
      memory_bytes: XLA's estimate of the largest compiled step's memory (arguments, outputs and
        temporaries), the number checked against the available memory; ``None`` if unknown.
      num_passes: multipass: ``1`` when the ``K`` images ran as one batch at the last scale, ``K``
        when one after the other (``batch_passes``); 1 for the other approaches.
    """

    image: np.ndarray
    approach: str
    segmentation: masks_lib.Segmentation
    losses: list[float]
    terms: list[dict]
    metrics: dict | None = None
    images: np.ndarray | None = None
    compile_seconds: float = 0.0
    step_seconds: list[float] = field(default_factory=list)
    stopped: str = "completed"
    memory_bytes: int | None = None
    num_passes: int = 1

    def save(self, path) -> os.PathLike:
        """Write the image atomically (PNG or JPEG by suffix)."""
        return images_lib.save_image(path, self.image)


# ----------------------------------------------------------------------------------------------
# input normalisation


def as_segmentation(segments, content_hw: tuple[int, int]) -> masks_lib.Segmentation:
    """A :class:`~segstyle_jax.masks.Segmentation`, a label-map array, a mask file, or a list of
    grayscale mask files -> a validated segmentation of the content image's size."""
    if isinstance(segments, masks_lib.Segmentation):
        seg = segments
    elif isinstance(segments, np.ndarray) and segments.ndim == 2:
        seg = masks_lib.from_label_map(segments)
    elif isinstance(segments, np.ndarray) and segments.ndim == 3:
        seg = masks_lib.from_soft_masks(segments)
    elif isinstance(segments, (str, os.PathLike, list, tuple)):
        seg = masks_lib.load_segmentation(segments)
    else:
        raise TypeError(f"segments must be a Segmentation, a label map, or mask file(s); got {type(segments).__name__}")
    masks_lib.validate(seg, content_hw)
    return seg


def _style_parts(label: str, spec) -> list[tuple[Any, float, Any]]:
    """One segment's style spec -> ``[(image source, weight, region or None), ...]``.

    A spec is an image (path, array, PIL), or a list of ``(image, weight)`` / ``(image, weight,
    region)`` for a blend of several styles within the segment."""
    if isinstance(spec, (list, tuple)) and spec and isinstance(spec[0], (list, tuple)):
        parts = []
        for part in spec:
            if len(part) not in (2, 3):
                raise ValueError(f"style blend for segment {label!r}: use (image, weight) or (image, weight, region)")
            parts.append((part[0], float(part[1]), part[2] if len(part) == 3 else None))
        if any(w < 0 or not math.isfinite(w) for _, w, _ in parts) or sum(w for _, w, _ in parts) <= 0:
            raise ValueError(f"style blend weights for segment {label!r} must be >= 0 and sum to more than 0")
        return parts
    return [(spec, 1.0, None)]


def _source_key(src) -> Any:
    return os.fspath(src) if isinstance(src, (str, os.PathLike)) else id(src)


def _source_name(src, index: int) -> str:
    return os.path.basename(os.fspath(src)) if isinstance(src, (str, os.PathLike)) else f"style{index}"


# ----------------------------------------------------------------------------------------------
# the API


def stylize(
    content,
    segments,
    styles: Mapping[str, Any],
    approach: str = "blended",
    *,
    steps: int | Sequence[int] = 200,
    size: int = 256,
    scales: Sequence[float] = (1.0,),
    content_weight: float = DEFAULT_WEIGHTS["content"],
    style_weight: float = DEFAULT_WEIGHTS["style"],
    tv_weight: float = DEFAULT_WEIGHTS["tv"],
    segment_weights: Mapping[str, float] | None = None,
    style_layers: Sequence[str] = DEFAULT_STYLE_TAPS,
    layer_weights: Sequence[float] | None = None,
    content_layers: Sequence[str] = DEFAULT_CONTENT_TAPS,
    gamma: float = 0.8,
    rho: float = 8.0,
    regions: Mapping[str, Any] | None = None,
    init: Any = "content",
    seed: int = 0,
    optimizer: str = "adam",
    learning_rate: float = 0.02,
    lbfgs_memory: int = 10,
    style_scale: float = 1.0,
    pooling: str = "max",
    preserve_color: bool | Sequence[str] = False,
    feather_px: float = 0.0,
    weights: VGGWeights | str | os.PathLike | None = None,
    compute_metrics: bool = True,
    band_px: float | None = None,
    callback: Callable[[Progress], None] | None = None,
    batch_passes: bool | None = None,
    conv: str = "auto",
    compute_dtype: str = "float32",
) -> Result:
    """Stylize ``content`` with one style per segment.

    Args:
      content: the photo (path, PIL image, or ``[h, w, 3]`` array in [0, 1] / uint8).
      segments: a :class:`~segstyle_jax.masks.Segmentation`, an integer label map ``[h, w]``, a
        mask file (label PNG), or a list of grayscale mask files; the content image's size.
      styles: segment label -> style image, or -> ``[(image, weight), ...]`` to blend styles.
      approach: ``multipass``, ``blended``, ``locality`` or ``localized`` (see README).
      steps: optimizer steps at each scale (an int), or one count per scale.
      size: longest side of the output in pixels.
      scales: coarse-to-fine schedule as fractions of ``size`` (e.g. ``(0.5, 1.0)``); each scale
        starts from the previous result, upsampled.
      content_weight, style_weight, tv_weight: ``alpha``, ``beta``, ``tau``.
      segment_weights: label -> ``w_k`` (default 1 each).
      style_layers, layer_weights: style taps and their ``lambda_l`` (default 1 each).
      content_layers: content taps.
      gamma, rho: locality strength in [0, 1] and width in pixels (``locality``, ``localized``).
      regions: label -> mask ``[hs, ws]`` on that segment's style image (``localized``): take the
        style from this part of the painting. Masks may be arrays or grayscale image files.
      init: ``"content"``, ``"noise"``, or an image.
      seed: random seed for noise init (the same seed gives the same output).
      optimizer, learning_rate: ``adam`` (with its step size, in [0, 1] RGB units), ``lbfgs`` (optax's,
        zoom line search) or ``lbfgs-fixed`` (unit step, no line search: one evaluation per step).
      lbfgs_memory: correction pairs both L-BFGS keep (default 10, optax's); each pair holds two
        image-sized arrays (at 2048², 100 MB per pair for one image).
      style_scale: style images are resized to ``style_scale * size`` on their longest side.
      pooling: ``max`` or ``avg``.
      preserve_color: ``True`` or a list of labels: keep the content's colours (luminance-only
        transfer) in those segments.
      feather_px: multipass only, Gaussian feathering of the compositing masks (pixels).
      weights: VGG weights (a :class:`~segstyle_jax.weights.VGGWeights`, a weight file path, or
        ``None`` for the default VGG16).
      compute_metrics: also compute :mod:`segstyle_jax.metrics` on the result.
      band_px: boundary band width for the leakage metric (default ``size / 32``, at least 2).
      callback: called with a :class:`Progress` after every step.
      batch_passes: multipass only: ``True`` optimizes the ``K`` images as one batch, ``False`` one
        after the other (the memory of one image; with Adam the same result), ``None`` batches when XLA's
        memory estimate fits in the available memory and otherwise runs the passes one by one.
      conv: the step's convolution algorithm (:mod:`segstyle_jax.winograd`; the same result up to
        float rounding): ``auto`` picks per layer on CPU what was faster (Winograd's ``F(4x4, 3x3)``
        or ``F(2x2, 3x3)``, or XLA's convolution: :func:`segstyle_jax.winograd.layer_algorithm`; a
        scale with few steps or pixels keeps the faster-compiling direct convolution, fewer when
        :mod:`segstyle_jax.compile_cache` is on: :func:`segstyle_jax.winograd.worth_compiling`), ``direct``
        never uses Winograd, ``winograd`` / ``winograd2x2`` use ``F(4x4)`` / ``F(2x2)`` for every layer.
      compute_dtype: ``float32`` or ``bfloat16``: what the step's VGG layers compute in
        (:class:`~segstyle_jax.config.StepConfig`); ``bfloat16`` is for GPUs (README, "Speed"). The
        targets and the metrics are computed in float32 either way.

    Each scale's compiled step is kept for later calls in this process with the same shapes and
    settings (:mod:`segstyle_jax.step_cache`), which then start stepping at once.
    """
    if approach not in APPROACHES:
        raise ValueError(f"approach must be one of {', '.join(APPROACHES)}; got {approach!r}")
    if not scales or any(not 0 < s <= 1 for s in scales):
        raise ValueError(f"scales must be fractions in (0, 1], got {scales}")
    if style_scale <= 0:
        raise ValueError(f"style_scale must be > 0, got {style_scale}")
    if conv not in winograd.ALGORITHMS:
        raise ValueError(f"conv must be one of {', '.join(winograd.ALGORITHMS)}; got {conv!r}")
    vgg.check_conv_dtype(conv, compute_dtype)

    # --- read and validate everything before any compute ---
    content_image = images_lib.load_image(content)
    seg = as_segmentation(segments, content_image.shape[:2])
    missing = [label for label in seg.labels if label not in styles]
    extra = [label for label in styles if label not in seg.labels]
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"segments without a style: {', '.join(missing)}")
        if extra:
            problems.append(f"styles for labels not in the segmentation: {', '.join(map(str, extra))}")
        raise ValueError("; ".join(problems) + f" (segment labels are {', '.join(seg.labels)})")
    segment_weights = dict(segment_weights or {})
    unknown = [label for label in segment_weights if label not in seg.labels]
    if unknown:
        raise ValueError(f"segment weights for labels not in the segmentation: {', '.join(map(str, unknown))}")
    regions = dict(regions or {})
    unknown = [label for label in regions if label not in seg.labels]
    if unknown:
        raise ValueError(f"style regions for labels not in the segmentation: {', '.join(map(str, unknown))}")
    if regions and approach != "localized":
        raise ValueError(f"style regions are used by the 'localized' approach, not {approach!r}")

    sources, style_index, segment_parts = [], {}, []
    for label in seg.labels:
        parts = []
        for src, w, region in _style_parts(label, styles[label]):
            key = _source_key(src)
            if key not in style_index:
                style_index[key] = len(sources)
                sources.append(src)
            if region is None and label in regions and len(_style_parts(label, styles[label])) == 1:
                region = regions[label]
            parts.append((style_index[key], w, region))
        segment_parts.append(parts)
    style_originals = [images_lib.load_image(s) for s in sources]
    style_names = [_source_name(s, i) for i, s in enumerate(sources)]
    own_style = [max(parts, key=lambda p: p[1])[0] for parts in segment_parts]
    region_originals = {}
    for k, parts in enumerate(segment_parts):
        for j, (index, _, region) in enumerate(parts):
            if region is not None:
                r = _load_region(region, style_originals[index].shape[:2], seg.labels[k])
                region_originals[(k, j)] = r
    init_image = None if isinstance(init, str) else images_lib.load_image(init)
    if isinstance(init, str) and init not in ("content", "noise"):
        raise ValueError(f"init must be 'content', 'noise' or an image; got {init!r}")
    vgg_weights = resolve_weights(weights)
    keep_color = _keep_color_flags(preserve_color, seg.labels)

    # --- every scale's shapes and weights, checked before any compute ---
    steps_per_scale = [steps] * len(scales) if isinstance(steps, int) else [int(s) for s in steps]
    if len(steps_per_scale) != len(scales) or min(steps_per_scale) < 1:
        raise ValueError(f"steps must be a positive int or one positive int per scale ({len(scales)}); got {steps}")
    out_hw = images_lib.resize_longest(content_image, size).shape[:2]
    plans = []
    for scale in scales:
        longest = max(16, round(size * scale))
        content_s = images_lib.resize_longest(content_image, longest)
        hw = content_s.shape[:2]
        seg_s = masks_lib.resize_segmentation(seg, hw)
        for k, label in enumerate(seg_s.labels):
            if (seg_s.masks[k] >= 0.5).sum() == 0:
                raise ValueError(f"segment {label!r} vanishes at {hw[1]}x{hw[0]} px; use a larger size")
        config = StepConfig(approach, hw[0], hw[1], seg.num_segments, tuple(style_layers), tuple(content_layers),
                            pooling=pooling, optimizer=optimizer, learning_rate=learning_rate,
                            lbfgs_memory=lbfgs_memory, compute_dtype=compute_dtype)
        loss_weights = LossWeights.create(
            config, content=content_weight, style=style_weight, tv=tv_weight,
            segments=[segment_weights.get(label, 1.0) for label in seg.labels],
            layers=layer_weights, gamma=gamma, rho=rho)
        plans.append((config, loss_weights, content_s, seg_s, max(16, round(style_scale * longest))))

    # --- coarse to fine ---
    # Each scale's step compiles (from the targets' shapes) in one worker thread while its targets are
    # computed in another, and scale s + 1 is prepared so while scale s runs: both are mostly XLA
    # compiling, which done in turn leaves part of the second core idle.
    def prepare(si: int):
        config, loss_weights, content_s, seg_s, style_long = plans[si]
        hw = (config.height, config.width)
        model = vgg_weights.model(config.taps, pooling)  # targets: one forward pass, direct compiles fastest
        step_conv = "direct" if conv == "auto" and not winograd.worth_compiling(
            steps_per_scale[si], *hw, jax.default_backend(), cached=compile_cache.enabled_dir() is not None) else conv
        shape = (config.num_images, *hw, 3) if approach == "multipass" else (*hw, 3)
        compiling = pool.submit(_scale_step, config, vgg_weights.model(config.taps, pooling, step_conv), model,
                                vgg_weights, loss_weights, shape, batch_passes, available)
        targeting = pool.submit(_scale_targets, config, model, vgg_weights, pooling, content_s, seg_s.masks,
                                [_style_at(s, style_long) for s in style_originals], segment_parts, region_originals)
        return compiling, targeting

    all_losses, all_terms, step_seconds, compile_seconds = [], [], [], 0.0
    current, stopped, done_before, memory_bytes, num_passes = None, "completed", 0, None, 1
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="segstyle-prepare")
    # what the steps may use, read once: a compile that runs beside the targets' forward passes (or an
    # earlier scale's steps) would otherwise see less, and batch or split a multipass run by chance
    available = engine.available_memory_bytes()
    try:
        host_memory.keep_large_blocks(False)  # setup's large blocks go back when freed (host_memory docstring)
        next_scale = prepare(0)
        for si, (config, loss_weights, content_s, seg_s, style_long) in enumerate(plans):
            compiling, targeting = next_scale
            targets = targeting.result()
            init_fn, update, seconds, need, split = compiling.result()
            # keep the step's large blocks only if this step, and the next scale's setup that runs beside
            # it (its need guessed from the pixel count), leave room: host_memory's docstring
            host_memory.before_step(_need_with_next_scale(need, config, plans[si + 1][0] if si + 1 < len(plans) else None),
                                    available)
            if si + 1 < len(plans):
                next_scale = prepare(si + 1)
            previous = current if current is not None else init_image if init_image is not None else init
            start = _start_image(config, previous, content_s, seed)
            passes = [(targets, loss_weights, start)] if not split else \
                [(t, w, start[k:k + 1]) for k, (_, t, w) in enumerate(engine.split_passes(config, targets, loss_weights))]
            compile_seconds += seconds
            memory_bytes = max(memory_bytes or 0, need or 0) or None
            num_passes = len(passes)
            images_s = np.array(start, np.float32)  # multipass: [K, h, w, 3], filled pass by pass when split
            logs = []
            for pi, (targets_p, weights_p, start_p) in enumerate(passes):
                state = init_fn(start_p)
                # done/total count the steps of every pass; scales not compiled yet are assumed to split alike
                before = done_before + pi * steps_per_scale[si]
                total = done_before + len(passes) * sum(steps_per_scale[si:])

                def on_step(step, info, state, si=si, pi=pi, n=len(passes), before=before, total=total, seg_s=seg_s):
                    if callback is not None:
                        callback(Progress(si, len(scales), step, steps_per_scale[si], before + step, total,
                                          info["loss"], info,
                                          lambda: _final_image_from(_with_pass(images_s, state, pi, n), approach,
                                                                    seg_s.masks, feather_px),
                                          pi, n))

                state, log = engine.optimize(update, state, targets_p, weights_p, steps_per_scale[si], on_step)
                logs.append(log)
                images_s = _with_pass(images_s, state, pi, len(passes))
                if log.stopped != "completed":
                    break
            log = logs[0] if len(logs) == 1 else _merge_pass_logs(logs)
            done_before += len(passes) * steps_per_scale[si]
            all_losses += log.losses
            all_terms += log.terms
            step_seconds += log.step_seconds
            current = images_s
            if log.stopped != "completed":
                stopped = log.stopped
                break
    finally:  # after an early stop or an error: drop what has not started, let a running compile end
        pool.shutdown(wait=True, cancel_futures=True)
        host_memory.keep_large_blocks(True)  # the process as keep_freed_memory left it

    seg_out = masks_lib.resize_segmentation(seg, current.shape[-3:-1])
    image = _final_image_from(current, approach, seg_out.masks, feather_px)
    if current.shape[-3:-1] != out_hw:  # stopped early at a coarse scale
        image = images_lib.resize_to(image, out_hw)
        seg_out = masks_lib.resize_segmentation(seg, out_hw)
    if any(keep_color):
        image = images_lib.preserve_color(image, images_lib.resize_to(content_image, out_hw), seg_out.masks, keep_color)
    result = Result(image=image, approach=approach, segmentation=seg_out, losses=all_losses, terms=all_terms,
                    images=current if approach == "multipass" else None, compile_seconds=compile_seconds,
                    step_seconds=step_seconds, stopped=stopped, memory_bytes=memory_bytes, num_passes=num_passes)
    if compute_metrics:
        result.metrics = quality(result, content_image, style_originals, style_names, own_style, vgg_weights,
                                 style_layers, content_layers, layer_weights, pooling, style_scale, band_px)
    return result


def quality(result: Result, content_image, style_images, style_names, own_style, vgg_weights: VGGWeights,
            style_layers=DEFAULT_STYLE_TAPS, content_layers=DEFAULT_CONTENT_TAPS, layer_weights=None,
            pooling: str = "max", style_scale: float = 1.0, band_px: float | None = None) -> dict:
    """:func:`segstyle_jax.metrics.evaluate` on a result, at the result's size."""
    hw = result.image.shape[:2]
    longest = max(hw)
    band_px = band_px if band_px is not None else max(2.0, longest / 32)
    taps = tuple(style_layers) + tuple(t for t in content_layers if t not in style_layers)
    style_long = max(16, round(style_scale * longest))
    return metrics_lib.evaluate(
        vgg_weights.model(taps, pooling), vgg_weights.params, result.image, images_lib.resize_to(content_image, hw),
        result.segmentation.masks, result.segmentation.labels,
        [_style_at(s, style_long) for s in style_images], style_names, own_style,
        style_layers, content_layers, layer_weights, band_px)


def _need_with_next_scale(need: int | None, config: StepConfig, next_config: StepConfig | None) -> int | None:
    """The bytes this scale's step needs, or the next scale's if larger, guessed as
    ``need * pixels(next) / pixels(this)`` (the step's buffers grow with the pixel count)."""
    if need is None or next_config is None:
        return need
    return max(need, round(need * next_config.height * next_config.width / (config.height * config.width)))


def _start_image(config: StepConfig, start, content: np.ndarray, seed: int) -> np.ndarray:
    """The image a scale starts from, at its size: ``start`` (the scale before's result, or an init
    image; ``[K, h, w, 3]`` images are resized one by one), ``"noise"`` (uniform, from ``seed``) or
    ``"content"``; ``[K, h, w, 3]`` for multipass."""
    hw = (config.height, config.width)
    if isinstance(start, str):
        start = np.asarray(engine.noise_image(jax.random.key(seed), (*hw, 3))) if start == "noise" else content
    elif start.ndim == 4:
        start = np.stack([images_lib.resize_to(s, hw) for s in start])
    else:
        start = images_lib.resize_to(start, hw)
    if config.approach == "multipass" and start.ndim == 3:
        start = np.broadcast_to(start, (config.num_images, *hw, 3))
    return start


def _scale_targets(config: StepConfig, model, vgg_weights: VGGWeights, pooling: str, content, seg_masks,
                   styles: Sequence[np.ndarray], segment_parts, region_originals) -> engine.Targets:
    """The targets of one scale: each segment's style Grams (under its regions, resized to that
    style's size at this scale), the content features, the masks and their distance transform."""
    seg_styles = [engine.SegmentStyle(tuple(
        (index, w, None if (k, j) not in region_originals
         else _resize_mask(region_originals[(k, j)], styles[index].shape[:2]))
        for j, (index, w, _) in enumerate(parts))) for k, parts in enumerate(segment_parts)]
    style_targets = engine.segment_targets(vgg_weights.model(config.style_taps, pooling), vgg_weights.params,
                                           styles, seg_styles)
    return engine.make_targets(config, model, vgg_weights.params, content, seg_masks, style_targets)


def _scale_step(config: StepConfig, model, targets_model, vgg_weights: VGGWeights, weights: LossWeights,
                start_shape: tuple[int, ...], batch_passes: bool | None, available: int | None):
    """:func:`_cached_step` for one scale, from the shapes of its targets (``targets_model``'s
    :func:`engine.targets_spec`) and of its start image: all of it in the worker thread that calls
    this, where tracing for the shapes would otherwise hold up the thread that runs the steps."""
    targets = engine.targets_spec(config, targets_model, vgg_weights.params)
    return _cached_step(config, model, vgg_weights, targets, weights, np.zeros(start_shape, np.float32), batch_passes,
                        available)


def _cached_step(config: StepConfig, model, vgg_weights: VGGWeights, targets: engine.Targets, weights: LossWeights,
                 start, batch_passes: bool | None, available: int | None):
    """:func:`_compile_step`'s result, from :mod:`segstyle_jax.step_cache` when an earlier call in this
    process compiled the same step (then ``seconds`` is 0) and it fits in ``available`` now. A
    multipass step split because the batched one did not fit is not kept: that choice depends on the
    memory of the moment."""
    key = step_cache.step_key(config, model, step_cache.weights_identity(vgg_weights), targets, weights,
                              np.shape(start), batch_passes)
    hit = step_cache.get(key)
    if hit is not None:
        init_fn, compiled, _, need, split = hit
        if engine.fits_in_memory(need, available):
            return init_fn, compiled, 0.0, need, split
    result = _compile_step(config, model, vgg_weights.params, targets, weights, start, batch_passes, available)
    split = result[4]
    if not (split and batch_passes is None):
        step_cache.put(key, result)
    return result


def _compile_step(config: StepConfig, model, params, targets: engine.Targets, weights: LossWeights, start,
                  batch_passes: bool | None, available: int | None):
    """Compile the step of one scale -> ``(init, compiled update, seconds, bytes, split)``; ``bytes``
    is XLA's estimate of the compiled step's memory (``None`` if unknown); ``targets`` may be
    :func:`engine.targets_spec` (shapes only).

    ``split`` is ``False`` for one pass (the whole problem), ``True`` when ``config`` is multipass and
    either ``batch_passes`` is ``False`` or it is ``None`` and the batched step does not fit in
    memory: then the step is compiled for one image, to run ``K`` passes
    (:func:`engine.split_passes`). ``available``: the bytes the step may use
    (:func:`engine.compile_update`)."""
    seconds = 0.0
    split = config.approach == "multipass" and config.num_segments > 1 and batch_passes is not True
    if not split or batch_passes is None:
        init_fn, update = engine.make_update_fn(config, model, params=params)
        try:
            compiled, seconds, need = engine.compile_update(update, init_fn(start), targets, weights, config, available)
            return init_fn, compiled, seconds, need, False
        except MemoryError:
            if not split:
                raise
    one = dataclasses.replace(config, num_segments=1)
    targets0, weights0 = jax.eval_shape(lambda t, w: engine.split_passes(config, t, w)[0][1:], targets, weights)
    init_fn, update = engine.make_update_fn(one, model, params=params)
    compiled, more, need = engine.compile_update(update, init_fn(start[:1]), targets0, weights0, one, available)
    return init_fn, compiled, seconds + more, need, True


def _with_pass(images: np.ndarray, state: engine.State, index: int, num_passes: int) -> np.ndarray:
    """The images with pass ``index``'s current image in place (the state's image when unsplit)."""
    if num_passes == 1:
        return np.asarray(state.image)
    images = images.copy()
    images[index] = np.asarray(state.image)[0]
    return images


def _merge_pass_logs(logs: list[engine.RunLog]) -> engine.RunLog:
    """Per-pass logs of a split multipass -> the log the batched step would have written: per step,
    the total loss and style summed over passes, content and TV averaged, ``per_segment`` joined
    (steps that not every pass reached are dropped)."""
    n = min(len(log.losses) for log in logs)
    merged = engine.RunLog(first_step_seconds=sum(log.first_step_seconds for log in logs),
                           step_seconds=[t for log in logs for t in log.step_seconds],
                           stopped=next((log.stopped for log in logs if log.stopped != "completed"), "completed"))
    for i in range(n):
        terms = [log.terms[i] for log in logs]
        merged.losses.append(sum(log.losses[i] for log in logs))
        merged.terms.append({"content": float(np.mean([t["content"] for t in terms])),
                             "style": sum(t["style"] for t in terms),
                             "tv": float(np.mean([t["tv"] for t in terms])),
                             "per_segment": [v for t in terms for v in t["per_segment"]]})
    return merged


def _final_image_from(image: np.ndarray, approach: str, seg_masks, feather_px: float) -> np.ndarray:
    if approach != "multipass":
        return np.asarray(image, np.float32)
    m = masks_lib.feather(seg_masks, feather_px) if feather_px > 0 else seg_masks
    return np.asarray(engine.composite(image, m))


def _style_at(style: np.ndarray, longest: int) -> np.ndarray:
    """A style image resized to ``longest`` px on its longest side, but never below VGG's 16 px on
    its shortest (a wide painting at a small coarse scale would otherwise be too thin to pool)."""
    h, w = style.shape[:2]
    longest = max(longest, math.ceil(16 * max(h, w) / min(h, w)))
    return images_lib.resize_longest(style, longest)


def _keep_color_flags(preserve_color, labels) -> list[bool]:
    if isinstance(preserve_color, bool):
        return [preserve_color] * len(labels)
    unknown = [label for label in preserve_color if label not in labels]
    if unknown:
        raise ValueError(f"preserve_color names labels not in the segmentation: {', '.join(unknown)}")
    return [label in preserve_color for label in labels]


def _load_region(region, style_hw, label: str) -> np.ndarray:
    if isinstance(region, (str, os.PathLike)):
        region = images_lib.luminance(images_lib.load_image(region))
    region = np.asarray(region)
    region = region.astype(np.float32) / 255.0 if region.dtype == np.uint8 else region.astype(np.float32)
    if not np.isfinite(region).all() or region.min() < 0 or region.max() > 1:
        raise ValueError(f"style region for segment {label!r} must be in [0, 1] (or uint8)")
    if region.shape != tuple(style_hw):
        raise ValueError(f"style region for segment {label!r} is {region.shape[1]}x{region.shape[0]}, "
                         f"its style image is {style_hw[1]}x{style_hw[0]}")
    if (region >= 0.5).sum() == 0:
        raise ValueError(f"style region for segment {label!r} is empty")
    return region


def _resize_mask(mask: np.ndarray, hw) -> np.ndarray:
    return masks_lib.resize_segmentation(masks_lib.Segmentation(np.stack([mask, 1 - mask]), ("r", "rest")), hw).masks[0]
