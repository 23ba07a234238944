"""segstyle_jax: segmentation-aware, multi-style neural style transfer in JAX/Flax."""

from segstyle_jax.vgg import VGG, layer_names
from segstyle_jax.weights import VGGWeights, WeightsError, load_default_weights, load_weights

__version__ = "0.1.0"

__all__ = ["VGG", "VGGWeights", "WeightsError", "layer_names", "load_default_weights", "load_weights"]
