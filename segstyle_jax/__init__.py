"""segstyle_jax: segmentation-aware, multi-style neural style transfer in JAX/Flax.

The public API is what this module exports; everything else may change.
"""

from segstyle_jax import compile_cache, step_cache
from segstyle_jax.api import Progress, Result, stylize
from segstyle_jax.config import APPROACHES, LossWeights, StepConfig
from segstyle_jax.engine import Targets, make_targets, make_update_fn, optimize, segment_targets
from segstyle_jax.masks import Segmentation, from_color_map, from_label_map, from_soft_masks, load_segmentation
from segstyle_jax.metrics import evaluate
from segstyle_jax.vgg import VGG, layer_names
from segstyle_jax.weights import VGGWeights, WeightsError, load_default_weights, load_weights

__version__ = "0.1.0"

__all__ = [
    "APPROACHES", "LossWeights", "Progress", "Result", "Segmentation", "StepConfig", "Targets", "VGG", "VGGWeights",
    "WeightsError", "evaluate", "from_color_map", "from_label_map", "from_soft_masks", "layer_names",
    "load_default_weights", "load_segmentation", "load_weights", "make_targets", "make_update_fn", "optimize",
    "compile_cache", "segment_targets", "step_cache", "stylize",
]
