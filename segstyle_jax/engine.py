"""The compiled engine: targets computed once, one jitted update step, and the host loop around it.

Data flow (shapes for ``K`` segments, image ``[h, w, 3]``, tap ``l`` of ``[h_l, w_l, c_l]``):

    style images --style_grams--> per-segment targets A_k^l [K, c_l, c_l]   (once)
    content image --model--> content features P_l [h_l, w_l, c_l]           (once)
    make_update_fn(config, model, params=...) -> update(state, targets, weights) (jit, state donated,
        the VGG parameters, their flipped kernels and Winograd transforms put on the device once
        and passed as arguments, so the compiled program is small and XLA's persistent cache can
        keep it)
        VGG forward once (K images for multipass), locality-weighted masks, layer masks for every
        segment (vmapped), the K masked Grams of each tap as one product, content, TV,
        value_and_grad w.r.t. the image
        only, the optax update, clipping to [0, 1].
    optimize(...) runs the step ``steps`` times from Python (the safe default measured in
        DESIGN.md section 6), reports progress, and stops on a non-finite loss keeping the last
        finite image.

Approaches (``StepConfig.approach``):

* ``multipass``: ``K`` independent images ``x_k`` with the unmasked Gram against segment ``k``'s
  style, optimized as one batched program (VGG on ``[K, h, w, 3]``, losses vmapped over ``k``);
  composited by the masks afterwards (:func:`composite`).
* ``blended``: one image, masked Gram per segment against whole-style targets.
* ``locality``: ``blended`` with masks ``M_k (1 - gamma exp(-d_k / rho))`` before pooling.
* ``localized``: like ``locality`` (``gamma = 0`` turns it off) but the targets come from regions
  of the style images (``R_k``); that difference lives entirely in the targets.

Style blends: a segment's target is the weighted mean of its styles' Grams. With weights summing to
one, ``sum_j b_j ||G - A_j||^2 = ||G - sum_j b_j A_j||^2 + const``, so this has the same gradient
as blending the losses (what neural-style does) at the cost of one Gram.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from segstyle_jax import compile_cache, lbfgs, losses, masks as masks_lib, step_store
from segstyle_jax.config import LossWeights, StepConfig
from segstyle_jax.device_variables import device_variables
from segstyle_jax.vgg import VGG, conv_algorithms, layer_names


@flax.struct.dataclass
class Targets:
    """Everything the loss compares against, computed once (traced arrays, never recompiled).

    Attributes:
      content: tap -> ``[h_l, w_l, c_l]`` content features.
      style: tap -> ``[K, c_l, c_l]`` target Gram of each segment.
      masks: ``[K, h, w]`` segment masks (sum to 1 per pixel).
      dist: ``[K, h, w]`` distance of each pixel to the outside of its segment (pixels).
    """

    content: dict
    style: dict
    masks: jax.Array
    dist: jax.Array


@flax.struct.dataclass
class State:
    """Optimization state: ``image`` is ``[h, w, 3]`` (``[K, h, w, 3]`` for multipass)."""

    image: jax.Array
    opt_state: optax.OptState
    step: jax.Array


# ----------------------------------------------------------------------------------------------
# targets (computed once, outside the hot loop)


def as_float32(a):
    """``a`` as float32 without compiling anything: a jax array stays on its device (``astype``, a
    no-op when it is float32 already), anything else becomes a NumPy array for the compiled call it
    goes to. ``jnp.asarray`` on a host array compiles a conversion program per shape, about a
    second each on a GPU."""
    return a.astype(jnp.float32) if isinstance(a, jax.Array) else np.asarray(a, np.float32)


@functools.partial(jax.jit, static_argnums=(0,))
def _features(model: VGG, params, image):
    return model.apply({"params": params}, image)


def content_features(model: VGG, params, content, content_taps: Sequence[str]) -> dict:
    """``{tap: [h_l, w_l, c_l]}`` of the content image ``[h, w, 3]``."""
    feats = _features(model, params, np.asarray(content, np.float32))
    return {t: feats[t] for t in content_taps}


@functools.partial(jax.jit, static_argnums=(0,))
def _region_grams(model: VGG, params, image, regions):
    feats = model.apply({"params": params}, image)
    region_layers = jax.vmap(lambda r: masks_lib.layer_masks(r, model.taps))(regions)  # tap -> [J, h_l, w_l]
    return {tap: jax.vmap(lambda m, f=feats[tap]: losses.masked_gram(f, m)[0])(region_layers[tap])
            for tap in model.taps}


def style_grams(model: VGG, params, style, regions=None) -> dict:
    """Masked Grams of one style image ``[hs, ws, 3]`` under ``regions`` ``[J, hs, ws]``.

    Returns tap -> ``[J, c, c]``; ``regions=None`` means one region, the whole image (``J = 1``),
    which gives the plain Gram. ``model.taps`` must be the style taps.
    """
    # host arrays: jnp.asarray would compile a conversion per shape (about a second each on a GPU)
    style = np.asarray(style, np.float32)
    regions = np.ones((1,) + style.shape[:2], np.float32) if regions is None else np.asarray(regions, np.float32)
    if regions.shape[1:] != style.shape[:2]:
        raise ValueError(f"style region masks are {regions.shape[1:]}, style image is {style.shape[:2]}")
    return _region_grams(model, params, style, regions)


@dataclass(frozen=True)
class SegmentStyle:
    """What one segment should look like: a blend of ``(style index, weight, region mask or None)``."""

    parts: tuple[tuple[int, float, np.ndarray | None], ...]


def segment_targets(model: VGG, params, style_images: Sequence[np.ndarray],
                    segment_styles: Sequence[SegmentStyle]) -> dict:
    """Per-segment target Grams ``{tap: [K, c, c]}``: the weighted mean of the (region) Grams of
    each segment's styles, weights normalized to sum 1."""
    sources: list[dict] = []  # the Grams {tap: [1, c, c]} of each style (or style region) used
    whole: dict[int, int] = {}  # style index -> its whole-image Grams' place in sources
    coefficients = []  # per segment: (source, weight / total) pairs
    for seg in segment_styles:
        total = sum(w for _, w, _ in seg.parts)
        if total <= 0:
            raise ValueError("a segment's style weights must sum to a positive number")
        row = []
        for index, weight, region in seg.parts:
            if region is None and index in whole:
                source = whole[index]
            else:
                source = len(sources)
                sources.append(style_grams(model, params, style_images[index], None if region is None else region[None]))
                if region is None:
                    whole[index] = source
            row.append((source, weight / total))
        coefficients.append(row)
    mix = np.zeros((len(coefficients), len(sources)), np.float32)  # [K, P]
    for k, row in enumerate(coefficients):
        for source, w in row:
            mix[k, source] += w
    # G_k = sum_p mix[k, p] G_p, on the host: the Grams are small (c <= 512), and a program for it
    # took longer to compile (0.4 s on CPU, about a second on a GPU) than the copies take
    stacked = {t: np.concatenate([np.asarray(s[t], np.float32) for s in sources]) for t in sources[0]}  # [P, c, c]
    return {t: jax.device_put(np.tensordot(mix, g, axes=1)) for t, g in stacked.items()}


def make_targets(config: StepConfig, model: VGG, params, content, seg_masks, style_targets) -> Targets:
    """Bundle content features, style targets, masks and their distance transform (host, once)."""
    seg_masks = np.asarray(seg_masks, np.float32)
    expected = (config.num_segments, config.height, config.width)
    if seg_masks.shape != expected:
        raise ValueError(f"masks have shape {seg_masks.shape}, config expects {expected}")
    dist = masks_lib.distance_to_outside(seg_masks) if config.use_locality else np.zeros_like(seg_masks)
    content_model = model.clone(taps=config.content_taps)
    return Targets(content=content_features(content_model, params, content, config.content_taps),
                   style=dict(style_targets), masks=jax.device_put(seg_masks), dist=jax.device_put(dist))


def targets_spec(config: StepConfig, model: VGG, params) -> Targets:
    """The shapes and dtypes of :func:`make_targets`' result for ``config``, as
    ``jax.ShapeDtypeStruct`` leaves: enough to compile the step (:func:`compile_update`) while the
    targets themselves are still being computed. ``model`` must return ``config.taps``."""
    f32 = jnp.float32
    feats = jax.eval_shape(lambda x: model.apply({"params": params}, x),
                           jax.ShapeDtypeStruct((config.height, config.width, 3), f32))
    k = config.num_segments
    masks = jax.ShapeDtypeStruct((k, config.height, config.width), f32)
    return Targets(content={t: jax.ShapeDtypeStruct(feats[t].shape, f32) for t in config.content_taps},
                   style={t: jax.ShapeDtypeStruct((k, feats[t].shape[-1], feats[t].shape[-1]), f32)
                          for t in config.style_taps},
                   masks=masks, dist=masks)


# ----------------------------------------------------------------------------------------------
# the loss


def _layer_weight_dict(config: StepConfig, weights: LossWeights) -> dict:
    return {t: weights.layers[i] for i, t in enumerate(config.style_taps)}


def _content_term(config: StepConfig, feats: dict, targets: Targets):
    return sum(losses.content_loss(feats[t], targets.content[t]) for t in config.content_taps) / len(config.content_taps)


def _vgg_variables(params, prepared) -> dict:
    """``model.apply``'s variables: ``params``, and their prepared kernels when given
    (:func:`segstyle_jax.vgg.prepared_variables`)."""
    return {"params": params} if prepared is None else {"params": params, "prepared": prepared}


def style_terms(config: StepConfig, feats: dict, targets: Targets, weights: LossWeights):
    """``[K]``: each segment's unweighted style term ``sum_l lambda_l E_k^l`` from the VGG features.

    One-image approaches: ``feats`` of the one image (tap -> ``[h_l, w_l, c_l]``), the masked Grams
    of every segment under its layer masks (locality-weighted for ``locality``/``localized``), one
    product per tap (:func:`segstyle_jax.losses.segments_style_loss`). ``multipass``: ``feats`` of
    the ``K`` images (tap -> ``[K, h_l, w_l, c_l]``), image ``k``'s plain Gram against segment ``k``'s
    target: by default one 2-D product per image and tap; with ``config.multipass_grams ==
    'batched'`` one batched product per tap (``jax.vmap`` over ``k``). On XLA's CPU backend one
    round measured the batched form slower (a multipass step at 128², K = 2, 115 against 104 ms; at
    256², K = 1, 233 against 209; equal at 128², K = 4 and at 256², K = 2 and 4), a later one alike
    at 128² and 256², K = 2 and 4 (docs/speed-notes.md)."""
    layer_weights = _layer_weight_dict(config, weights)
    if config.approach == "multipass":
        if config.multipass_grams == "batched":
            return sum(layer_weights[t] * jax.vmap(losses.style_error)(jax.vmap(losses.gram)(feats[t]), targets.style[t])
                       for t in config.style_taps)
        return jnp.stack([sum(layer_weights[t] * losses.style_error(losses.gram(feats[t][k]), targets.style[t][k])
                              for t in config.style_taps) for k in range(config.num_segments)])
    seg_masks = targets.masks
    if config.use_locality:
        seg_masks = masks_lib.locality_weighted_masks(seg_masks, targets.dist, weights.gamma, weights.rho)
    layer_masks = jax.vmap(lambda m: masks_lib.layer_masks(m, config.style_taps))(seg_masks)
    return losses.segments_style_loss(feats, layer_masks, targets.style, layer_weights)


def one_image_loss(config: StepConfig, model: VGG, image, params, targets: Targets, weights: LossWeights,
                   prepared=None):
    """Loss of the one-image approaches (``blended``, ``locality``, ``localized``).

    ``image`` ``[h, w, 3]`` -> ``(total, terms)``; ``terms`` holds ``content``, ``style``, ``tv``
    and ``per_segment`` ``[K]`` (unweighted ``sum_l lambda_l E_k^l``, :func:`style_terms`).
    ``prepared``: the flipped and transformed kernels of ``params``
    (:func:`segstyle_jax.vgg.prepared_variables`), or ``None``.
    """
    feats = model.apply(_vgg_variables(params, prepared), image)
    per_segment = style_terms(config, feats, targets, weights)
    terms = {"content": _content_term(config, feats, targets),
             "style": jnp.sum(weights.segments * per_segment),
             "tv": losses.total_variation(image),
             "per_segment": per_segment}
    total = weights.content * terms["content"] + weights.style * terms["style"] + weights.tv * terms["tv"]
    return total, terms


def multipass_loss(config: StepConfig, model: VGG, images, params, targets: Targets, weights: LossWeights,
                   prepared=None):
    """Loss of ``multipass``: ``images`` ``[K, h, w, 3]``, image ``k`` against segment ``k``'s style
    with the unmasked Gram. The K objectives are independent, so the gradient of their sum is each
    image's own gradient. Returns ``(total, terms)`` like :func:`one_image_loss`."""
    feats = model.apply(_vgg_variables(params, prepared), images)  # one batched VGG pass over the K images
    per_segment = style_terms(config, feats, targets, weights)
    content = jax.vmap(lambda f: _content_term(config, f, targets))(feats)
    tv = jax.vmap(losses.total_variation)(images)
    terms = {"content": jnp.mean(content), "style": jnp.sum(weights.segments * per_segment),
             "tv": jnp.mean(tv), "per_segment": per_segment}
    total = jnp.sum(weights.content * content + weights.style * weights.segments * per_segment + weights.tv * tv)
    return total, terms


# ----------------------------------------------------------------------------------------------
# the update step


def make_optimizer(config: StepConfig) -> optax.GradientTransformation:
    """``optax.adam(learning_rate)``, L-BFGS with optax's zoom line search, or L-BFGS with a fixed
    unit step (``lbfgs-fixed``: no line search, one loss evaluation per step) from the config. Both
    L-BFGS are ``optax.lbfgs``'s with the direction computed by :mod:`segstyle_jax.lbfgs` (the same
    direction, in fewer passes over the memory)."""
    if config.optimizer == "adam":
        return optax.adam(config.learning_rate)
    return lbfgs.lbfgs(config.lbfgs_memory, linesearch=config.optimizer == "lbfgs")


class BoundStep:
    """A jitted step (or its ``Lowered`` / ``Compiled`` form) with its last argument bound: calling
    ``BoundStep(f, v)(*args)`` runs ``f(*args, v)``, ``.lower(*args)`` lowers ``f`` for ``(*args, v)``
    and ``.compile()`` compiles that, each again bound to ``v``; everything else (``cost_analysis``,
    ``memory_analysis``, ``as_text``, ...) is the wrapped object's. ``program_key``: what the jitted
    function is made from (:func:`make_update_fn`), for :mod:`segstyle_jax.step_store`; ``None`` when
    that is not known (then the step is never stored)."""

    def __init__(self, target, bound, program_key=None):
        self._target, self.bound, self.program_key = target, bound, program_key

    def __call__(self, *args):
        return self._target(*args, self.bound)

    def lower(self, *args):
        return BoundStep(self._target.lower(*args, self.bound), self.bound, self.program_key)

    def compile(self, *args, **kwargs):
        return BoundStep(self._target.compile(*args, **kwargs), self.bound, self.program_key)

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_target", "bound", "program_key"):
            raise AttributeError(name)
        return getattr(self._target, name)


def make_update_fn(config: StepConfig, model: VGG, optimizer: optax.GradientTransformation | None = None, *,
                   params):
    """Build ``(init, update)`` for ``config`` and the VGG parameters ``params``.

    ``init(image) -> State``. ``update(state, targets, weights) -> (state, info)`` is one
    ``jax.jit`` program (``state`` donated) computing the loss and its gradient with respect to the
    image only, the optax update and the clip to [0, 1]. ``info`` has ``loss`` (at the image before
    the update), the loss terms, ``grad_norm`` and ``finite``; when the loss or the new image is not
    finite, the state keeps the old image, so the last good image is never lost, and when the loss
    or its gradient is not finite the optimizer's update is skipped, its state kept as it was.

    ``params`` (those of the layers up to the deepest tap) are put on the device once, with the
    flipped kernels of the input gradient and, for the layers that run by Winograd at the config's
    image size (:func:`segstyle_jax.vgg.conv_algorithms`), their Winograd transforms
    (:func:`segstyle_jax.vgg.prepared_variables`), and passed
    to the program as a bound last argument (:class:`BoundStep`), so the step derives nothing from
    the kernels at run time. Steps built from the same host arrays share those device arrays
    (:mod:`segstyle_jax.device_variables`). Compiled into the program as constants instead, they
    made it 80 MB of StableHLO (280 MB with the transforms) and a 130 MB entry in XLA's persistent
    cache (:mod:`segstyle_jax.compile_cache`); step times are in the README ("Speed").

    The model's layers compute in ``config.compute_dtype`` whatever ``model.dtype`` says (the
    parameters stay float32 on the device and are rounded inside the program).
    """
    if tuple(model.taps) != config.taps:
        raise ValueError(f"model taps {model.taps} differ from the config's {config.taps}")
    model = model.clone(dtype=config.compute_dtype)  # the config says what the step computes in
    names = layer_names(model.arch)
    run = names[: max(names.index(t) for t in model.taps) + 1]  # the layers the model computes
    params = {name: jax.tree.map(lambda a: np.asarray(a, np.float32), p) for name, p in params.items() if name in run}
    plan = conv_algorithms(model.arch, model.conv, config.height, config.width, jax.default_backend(),
                           config.compute_dtype)
    variables = device_variables(params, plan)  # shared with the steps of other scales (its docstring)
    # what the program is made from, for the step store; unknown for an optimizer passed in
    program_key = None if optimizer is not None else (
        "update", config, (model.arch, tuple(model.taps), model.pooling, tuple(model.mean), tuple(model.std),
                           model.conv, model.dtype), tuple(sorted(plan.items())))
    optimizer = optimizer or make_optimizer(config)
    loss = multipass_loss if config.approach == "multipass" else one_image_loss

    @jax.jit
    def fresh_state(image) -> State:  # image: float32 (as_float32)
        state = State(image=image, opt_state=optimizer.init(image), step=jnp.zeros((), jnp.int32))
        # Fresh buffers for every leaf: optimizer states may share arrays, which donation forbids.
        return jax.tree.map(lambda a: jnp.array(a, copy=True), state)

    def init(image) -> State:
        # one compiled program: run op by op, the optimizer's init compiled a program per operation
        # (about a second each on a GPU)
        expected = (config.num_images, config.height, config.width, 3) if config.approach == "multipass" \
            else (config.height, config.width, 3)
        if np.shape(image) != expected:
            raise ValueError(f"initial image has shape {np.shape(image)}, expected {expected}")
        return fresh_state(as_float32(image))

    @functools.partial(jax.jit, donate_argnums=(0,))
    def update(state: State, targets: Targets, weights: LossWeights, variables):
        def objective(x):
            return loss(config, model, x, variables["params"], targets, weights, variables["prepared"])

        (value, terms), grad = jax.value_and_grad(objective, has_aux=True)(state.image)

        def optimizer_step():
            if config.optimizer == "lbfgs":
                return optimizer.update(grad, state.opt_state, state.image, value=value, grad=grad,
                                        value_fn=lambda x: objective(x)[0])
            return optimizer.update(grad, state.opt_state, state.image)

        def skip():
            return jnp.zeros_like(state.image), state.opt_state

        # A branch, not a select of new and old state: L-BFGS keeps 2 x memory image-sized
        # vectors, and jnp.where over them cost 12 ms a step at 256x256 with 20 pairs (5%).
        updates, opt_state = jax.lax.cond(jnp.isfinite(value) & jnp.all(jnp.isfinite(grad)), optimizer_step, skip)
        image = optax.apply_updates(state.image, updates)
        if config.clip:
            image = jnp.clip(image, 0.0, 1.0)
        finite = jnp.isfinite(value) & jnp.all(jnp.isfinite(image))
        new_state = State(image=jnp.where(finite, image, state.image), opt_state=opt_state, step=state.step + 1)
        info = {"loss": value, "grad_norm": jnp.sqrt(jnp.sum(grad * grad)), "finite": finite, **terms}
        return new_state, info

    return init, BoundStep(update, variables, program_key)


def available_memory_bytes() -> int | None:
    """Memory the step may use: the accelerator's limit, or on CPU the host's available RAM
    (Linux's ``MemAvailable``, which counts the page cache the kernel can drop; free pages
    elsewhere)."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        return stats.get("bytes_limit")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# XLA CPU compile options for the update step, kept because they measured faster (README, Speed):
# without YNNPACK's fusions the step is 7-12% faster at 128-512 px on the benchmark CPU.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options() -> dict:
    """The compile options :func:`compile_lowered` tries: :data:`CPU_COMPILER_OPTIONS` on CPU, none
    elsewhere or when ``XLA_FLAGS`` sets one of them itself (the user's choice wins)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if jax.devices()[0].platform == "cpu" and not any(name in flags for name in CPU_COMPILER_OPTIONS):
        return dict(CPU_COMPILER_OPTIONS)
    return {}


def compile_lowered(lowered):
    """``lowered.compile()`` with :func:`compiler_options`, or without them when this XLA does not
    know one of them (its defaults then)."""
    options = compiler_options()
    if options:
        try:
            return lowered.compile(compiler_options=options)
        except jax.errors.JaxRuntimeError as e:
            if "compile option" not in str(e):
                raise
    return lowered.compile()


def fits_in_memory(need: int | None, have: int | None) -> bool:
    """Whether a step XLA estimates at ``need`` bytes may run with ``have`` bytes available: at most
    80% of them (the process's peak RSS ran 6-25% above the estimate in 2048² runs: the targets, the
    weights and the runtime live outside the step). Unknown either way: yes."""
    return need is None or have is None or need <= 0.8 * have


def compile_update(update, state: State, targets: Targets, weights: LossWeights, config: StepConfig,
                   available_bytes: int | None = None):
    """Compile ``update`` ahead of time for these shapes -> ``(compiled, seconds, bytes needed)``.

    Raises ``MemoryError`` (before anything runs) when XLA's estimate of the step's memory
    (arguments, outputs and temporaries) exceeds 80% of ``available_bytes`` (default: what
    :func:`available_memory_bytes` reports now), with the sizes in the message: the process's peak
    RSS ran 6-25% above the estimate in 2048² runs (the targets, the weights and the runtime
    live outside the step). ``compiled`` is called like ``update``.

    With :mod:`segstyle_jax.step_store` on (the compile cache enabled, CPU) a step compiled before
    with the same recipe and argument shapes is loaded from it without tracing, and a step compiled
    here is stored (``update.program_key`` set: :func:`make_update_fn`), unless XLA's cache supplied
    it (:mod:`segstyle_jax.step_store`)."""
    t0 = time.perf_counter()
    key = loaded = None
    if getattr(update, "program_key", None) is not None and step_store.directory() is not None:
        key = step_store.step_key(update.program_key, (state, targets, weights, update.bound), compiler_options())
        loaded = step_store.load(key)
    if loaded is not None:
        compiled = BoundStep(loaded, update.bound, update.program_key)
    else:
        loaded_before = compile_cache.loaded_in_this_thread()
        compiled = compile_lowered(update.lower(state, targets, weights))
        # only an executable compiled here: one XLA's cache loaded serializes without all of its
        # functions (jax 0.10.2, CPU: "Function ... not found" when the stored copy first runs)
        if key is not None and compile_cache.loaded_in_this_thread() == loaded_before:
            step_store.store(key, compiled._target)
    seconds = time.perf_counter() - t0
    analysis = compiled.memory_analysis()
    need = None
    if analysis is not None:
        need = (analysis.temp_size_in_bytes + analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                - analysis.alias_size_in_bytes)
        have = available_memory_bytes() if available_bytes is None else available_bytes
        if not fits_in_memory(need, have):
            raise MemoryError(
                f"a {config.width}x{config.height} {config.approach} step with {config.num_segments} segments needs "
                f"about {need / 2**30:.1f} GiB, but only {have / 2**30:.1f} GiB is available; use a smaller size")
    return compiled, seconds, need


# ----------------------------------------------------------------------------------------------
# the host loop


@dataclass
class RunLog:
    """What :func:`optimize` observed: per-step loss terms, timings and why it stopped."""

    losses: list[float] = field(default_factory=list)
    terms: list[dict] = field(default_factory=list)
    first_step_seconds: float = 0.0  # includes compiling, unless ``update`` was compiled ahead
    step_seconds: list[float] = field(default_factory=list)
    stopped: str = "completed"


def optimize(update, state: State, targets: Targets, weights: LossWeights, steps: int,
             callback: Callable[[int, dict, State], None] | None = None) -> tuple[State, RunLog]:
    """Run ``update`` ``steps`` times from Python.

    ``callback(step, info, state)`` is called after every step with host floats in ``info``
    (``step`` counts from 1). A non-finite loss stops the run; the returned state then holds the
    last finite image and ``log.stopped`` says what happened.
    """
    log = RunLog()
    for i in range(steps):
        t0 = time.perf_counter()
        state, info = update(state, targets, weights)
        info = jax.device_get(info)  # waits for the step; progress needs the loss anyway
        elapsed = time.perf_counter() - t0
        if i == 0:
            log.first_step_seconds = elapsed
        else:
            log.step_seconds.append(elapsed)
        host = {k: (np.asarray(v).tolist() if np.ndim(v) else float(v)) for k, v in info.items()}
        if not info["finite"]:
            log.stopped = (f"non-finite loss ({host['loss']}) at step {i + 1}; kept the last finite image "
                           f"(try smaller style/learning-rate weights)")
            break
        log.losses.append(host["loss"])
        log.terms.append({k: host[k] for k in ("content", "style", "tv", "per_segment")})
        if callback is not None:
            callback(i + 1, host, state)
    return state, log


def split_passes(config: StepConfig, targets: Targets, weights: LossWeights) -> list[tuple[StepConfig, Targets, LossWeights]]:
    """Multipass as ``K`` separate one-image passes, for when the batched step does not fit in memory.

    Image ``k`` of :func:`multipass_loss` depends only on segment ``k``'s style target and weight,
    so pass ``k`` is the same problem with ``num_segments = 1`` (and, Adam being elementwise, the
    same Adam run; L-BFGS, whose curvature pairs and line search span the whole batch, then runs
    on each image separately):
    ``(config', targets', weights')`` with ``style[t] = style[t][k:k+1]``, ``masks``/``dist``
    ``[1, h, w]`` and ``segments = [w_k]``. All passes share one shape, hence one compilation; the
    memory is that of one image instead of ``K``.
    """
    if config.approach != "multipass":
        raise ValueError(f"only multipass splits into passes, not {config.approach!r}")
    one = dataclasses.replace(config, num_segments=1)
    return [(one,
             targets.replace(style={t: g[k:k + 1] for t, g in targets.style.items()},
                             masks=targets.masks[k:k + 1], dist=targets.dist[k:k + 1]),
             weights.replace(segments=weights.segments[k:k + 1]))
            for k in range(config.num_segments)]


def composite(images, seg_masks) -> jax.Array:
    """Multipass compositing: ``sum_k M_k * x_k`` for ``images`` ``[K, h, w, 3]`` and ``masks`` ``[K, h, w]``."""
    return _composite(as_float32(images), as_float32(seg_masks))


@jax.jit
def _composite(images, seg_masks):
    return jnp.einsum("khw,khwc->hwc", seg_masks, images, precision=jax.lax.Precision.HIGHEST)


def noise_image(key, shape, content=None, ratio: float = 1.0) -> jax.Array:
    """Uniform noise in [0, 1] of ``shape``, mixed with ``content`` by ``ratio`` (1 = pure noise)."""
    noise = jax.random.uniform(key, shape, jnp.float32)
    return noise if content is None else ratio * noise + (1 - ratio) * jnp.broadcast_to(content, shape)
