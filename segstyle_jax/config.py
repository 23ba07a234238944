"""Configuration, split by what it does to the compiled program.

* :class:`StepConfig` (frozen, hashable): everything that changes compiled shapes or the program
  itself: approach, image size, number of segments, taps, pooling, optimizer and its learning
  rate. A new value means a new compilation.
* :class:`LossWeights` (a pytree of float32 arrays): the numbers one tunes (content, style and TV
  weights, per-segment and per-layer weights, the locality strength ``gamma`` and width ``rho``).
  They are traced arguments of the update step, so changing them never recompiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import flax.struct
import jax
import numpy as np

from segstyle_jax.vgg import DTYPES as COMPUTE_DTYPES  # what StepConfig.compute_dtype may be

APPROACHES = ("multipass", "blended", "locality", "localized")
MULTIPASS_GRAMS = ("per-image", "batched")  # what StepConfig.multipass_grams may be
OPTIMIZERS = ("adam", "lbfgs", "lbfgs-fixed")

DEFAULT_STYLE_TAPS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
DEFAULT_CONTENT_TAPS = ("relu4_2",)


@dataclass(frozen=True)
class StepConfig:
    """Static settings of one compiled update step (hashable; changing any of them recompiles).

    Attributes:
      approach: one of :data:`APPROACHES` (paper sections 3.1-3.4).
      height, width: optimized image size in pixels.
      num_segments: ``K``.
      style_taps, content_taps: VGG layer names (see :mod:`segstyle_jax.vgg`).
      pooling: ``'max'`` or ``'avg'``.
      optimizer: ``'adam'``, ``'lbfgs'`` (optax's, with its zoom line search: several loss evaluations per
        step) or ``'lbfgs-fixed'`` (the unit quasi-Newton step without a line search: one evaluation per
        step, like ``torch.optim.LBFGS``'s default and neural-style's L-BFGS).
      learning_rate: Adam step size in image units ([0, 1] RGB); ignored by both L-BFGS.
      lbfgs_memory: number of L-BFGS correction pairs.
      clip: project the image back to [0, 1] after every step.
      compute_dtype: what the VGG layers of the step compute in, ``'float32'`` or ``'bfloat16'``
        (:class:`segstyle_jax.vgg.VGG`'s ``dtype``: the features come back as float32, and the image,
        Grams, losses, gradient and optimizer state stay float32). A lever for GPUs, whose bfloat16
        convolutions run at about twice the TF32 rate; the targets are computed in float32.
      multipass_grams: how ``multipass`` computes its ``K`` images' Grams at each tap: ``'per-image'``
        (one 2-D product per image, the default, chosen on CPU) or ``'batched'`` (one batched product
        per tap, ``jax.vmap`` over the images; a lever to measure on GPUs, where the per-image slices
        may cost copies). The same loss either way; ignored by the other approaches.
    """

    approach: str
    height: int
    width: int
    num_segments: int
    style_taps: tuple[str, ...] = DEFAULT_STYLE_TAPS
    content_taps: tuple[str, ...] = DEFAULT_CONTENT_TAPS
    pooling: str = "max"
    optimizer: str = "adam"
    learning_rate: float = 0.02
    lbfgs_memory: int = 10
    clip: bool = True
    compute_dtype: str = "float32"
    multipass_grams: str = "per-image"

    def __post_init__(self):
        if self.approach not in APPROACHES:
            raise ValueError(f"approach must be one of {APPROACHES}, got {self.approach!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")
        if self.multipass_grams not in MULTIPASS_GRAMS:
            raise ValueError(f"multipass_grams must be one of {MULTIPASS_GRAMS}, got {self.multipass_grams!r}")
        if isinstance(self.lbfgs_memory, bool) or not isinstance(self.lbfgs_memory, (int, np.integer)) \
                or self.lbfgs_memory < 1:
            raise ValueError(f"lbfgs_memory must be a positive integer, got {self.lbfgs_memory!r}")
        object.__setattr__(self, "lbfgs_memory", int(self.lbfgs_memory))
        if self.num_segments < 1:
            raise ValueError(f"need at least one segment, got {self.num_segments}")
        if min(self.height, self.width) < 16:
            raise ValueError(f"image {self.height}x{self.width} is too small: VGG needs at least 16 px per side")
        if not self.style_taps or not self.content_taps:
            raise ValueError("style_taps and content_taps must not be empty")
        object.__setattr__(self, "style_taps", tuple(self.style_taps))
        object.__setattr__(self, "content_taps", tuple(self.content_taps))

    @property
    def taps(self) -> tuple[str, ...]:
        """Every tap the model must return: style taps, then content taps not already in them."""
        return self.style_taps + tuple(t for t in self.content_taps if t not in self.style_taps)

    @property
    def use_locality(self) -> bool:
        """Whether masks are locality-weighted inside the step (``locality`` and ``localized``)."""
        return self.approach in ("locality", "localized")

    @property
    def num_images(self) -> int:
        """Images optimized at once: ``K`` for multipass, else 1."""
        return self.num_segments if self.approach == "multipass" else 1


@flax.struct.dataclass
class LossWeights:
    """Traced loss weights: ``L = content * L_c + style * sum_k segments[k] sum_l layers[l] E_k^l + tv * TV``.

    ``gamma`` (in [0, 1]) and ``rho`` (pixels) shape the locality weighting
    ``M_k * (1 - gamma * exp(-d_k / rho))``; they are ignored by ``multipass`` and ``blended``.
    All leaves are float32 arrays: ``segments`` is ``[K]``, ``layers`` is ``[len(style_taps)]``.
    """

    content: jax.Array
    style: jax.Array
    tv: jax.Array
    segments: jax.Array
    layers: jax.Array
    gamma: jax.Array
    rho: jax.Array

    @classmethod
    def create(cls, config: StepConfig, content: float = 1.0, style: float = 1e3, tv: float = 10.0,
               segments: Sequence[float] | None = None, layers: Sequence[float] | None = None,
               gamma: float = 0.8, rho: float = 8.0) -> "LossWeights":
        """Build float32 weights for ``config``; ``segments``/``layers`` default to all ones."""
        segments = np.ones(config.num_segments) if segments is None else np.asarray(segments, np.float64)
        layers = np.ones(len(config.style_taps)) if layers is None else np.asarray(layers, np.float64)
        if segments.shape != (config.num_segments,):
            raise ValueError(f"{segments.size} segment weights given for {config.num_segments} segments")
        if layers.shape != (len(config.style_taps),):
            raise ValueError(f"{layers.size} layer weights given for {len(config.style_taps)} style layers "
                             f"{config.style_taps}")
        values = dict(content=content, style=style, tv=tv, gamma=gamma, rho=rho)
        for name, v in values.items():
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"{name} weight must be finite and >= 0, got {v}")
        if not 0 <= gamma <= 1:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if (segments < 0).any() or (layers < 0).any() or not np.isfinite(segments).all() or not np.isfinite(layers).all():
            raise ValueError("segment and layer weights must be finite and >= 0")
        f32 = lambda v: jax.device_put(np.asarray(v, np.float32))  # noqa: E731  (jnp.asarray compiles)
        return cls(content=f32(content), style=f32(style), tv=f32(tv), segments=f32(segments),
                   layers=f32(layers), gamma=f32(gamma), rho=f32(rho))
