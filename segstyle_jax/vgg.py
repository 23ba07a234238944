"""VGG16 / VGG19 feature extractor in Flax, in torchvision's layer order.

Conventions (stated here once; everything else refers to this module):

* Layout is NHWC. The model takes RGB images with values in [0, 1], shape ``[N, h, w, 3]``
  (or ``[h, w, 3]``, which returns unbatched features).
* Preprocessing is part of the model: ``(x - mean) / std`` with the ``mean``/``std`` fields.
  Their values come from the weight file's metadata (``preprocessing``), read by
  :mod:`segstyle_jax.weights`; the defaults are torchvision's ImageNet statistics, which is what
  every torchvision VGG checkpoint (and the default weights) expects.
* Convolution kernels are HWIO ``[3, 3, c_in, c_out]``, biases ``[c_out]``; parameters are named
  after the layers: ``params["conv3_2"]["kernel"]``.
* Layers are named ``conv{block}_{i}``, ``relu{block}_{i}`` and ``pool{block}``. Pooling is 2x2 with
  stride 2 and VALID padding (odd sizes drop the last row/column), max or average.
* Only the layers up to the deepest requested tap are computed.
* The convolutions run by XLA's own convolution (``conv='direct'``, the default) or by Winograd's
  ``F(4x4, 3x3)`` (``'winograd'``; ``'winograd2x2'`` for ``F(2x2, 3x3)``; :mod:`segstyle_jax.winograd`):
  the same function up to float rounding; ``'auto'`` picks per layer what was faster on this
  project's benchmark (:func:`conv_algorithms`).
* ``dtype``: what the convolutions, ReLUs and poolings compute in: ``'float32'`` (default) or
  ``'bfloat16'`` (the input is preprocessed in float32 and then rounded, the kernels and biases are
  rounded, XLA accumulates each convolution in float32 and rounds its output). The returned
  activations are always float32, so what follows them (Grams, losses) runs in float32. bfloat16
  layers run the direct convolution (:func:`conv_algorithms`).

The model does no I/O; weights are read by :mod:`segstyle_jax.weights`.
"""

from __future__ import annotations

import re
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from segstyle_jax import winograd

DTYPES = ("float32", "bfloat16")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Convolutions per block, torchvision's configurations "D" (vgg16) and "E" (vgg19).
_BLOCKS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
_WIDTHS = (64, 128, 256, 512, 512)

ARCHITECTURES = tuple(_BLOCKS)


def _check_arch(arch: str) -> None:
    if arch not in _BLOCKS:
        raise ValueError(f"unknown VGG architecture {arch!r}; expected one of {ARCHITECTURES}")


def layer_names(arch: str) -> tuple[str, ...]:
    """All layer names of ``arch`` in forward order, e.g. ``('conv1_1', 'relu1_1', ..., 'pool5')``."""
    _check_arch(arch)
    names = []
    for block, n_conv in enumerate(_BLOCKS[arch], start=1):
        for i in range(1, n_conv + 1):
            names += [f"conv{block}_{i}", f"relu{block}_{i}"]
        names.append(f"pool{block}")
    return tuple(names)


def conv_names(arch: str) -> tuple[str, ...]:
    """Names of the convolutions of ``arch`` in order (13 for vgg16, 16 for vgg19)."""
    return tuple(n for n in layer_names(arch) if n.startswith("conv"))


def conv_shapes(arch: str) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """``{conv name: (kernel shape HWIO, bias shape)}`` for ``arch``."""
    _check_arch(arch)
    shapes, c_in = {}, 3
    for block, n_conv in enumerate(_BLOCKS[arch], start=1):
        c_out = _WIDTHS[block - 1]
        for i in range(1, n_conv + 1):
            shapes[f"conv{block}_{i}"] = ((3, 3, c_in, c_out), (c_out,))
            c_in = c_out
    return shapes


def torchvision_feature_indices(arch: str) -> dict[str, int]:
    """``{conv name: index N}`` of the convolutions in torchvision's ``vgg.features[N]``."""
    index, out = 0, {}
    for name in layer_names(arch):
        if name.startswith("conv"):
            out[name] = index
        index += 1
    return out


def tap_block(tap: str) -> int:
    """Block number (1..5) of a layer name: ``'relu4_2'`` -> 4, ``'pool1'`` -> 1."""
    match = re.fullmatch(r"(?:conv|relu)([1-5])_[1-4]|pool([1-5])", tap)
    if match is None:
        raise ValueError(f"{tap!r} is not a VGG layer name (conv<b>_<i>, relu<b>_<i> or pool<b>)")
    return int(match.group(1) or match.group(2))


def pool_2x2(x, pooling: str = "max"):
    """2x2 stride-2 VALID pooling of ``[N, h, w, c]`` -> ``[N, h // 2, w // 2, c]`` (odd sizes drop
    the last row/column), the same values as ``flax.linen.max_pool``/``avg_pool``.

    Written as a reshape and a reduction because that is what XLA's CPU backend differentiates
    fast: the backward of ``lax.reduce_window`` (``select_and_scatter``) took 65 ms against 10 ms
    at 256x256x64 and made the whole VGG gradient about 12% slower than PyTorch's. Ties in a max
    window share the gradient equally (``reduce_window`` gives it to the first), which only
    matters for exactly equal activations.
    """
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)
    return x.max(axis=(2, 4)) if pooling == "max" else x.mean(axis=(2, 4))


class Conv3x3(nn.Module):
    """A 3x3 stride-1 convolution with one pixel of zero padding and a bias, with ``nn.Conv``'s
    parameters (``kernel`` HWIO ``[3, 3, c_in, c_out]``, ``bias`` ``[c_out]``) and initializers.

    ``algorithm``: one of :data:`segstyle_jax.winograd.ALGORITHMS` (:func:`segstyle_jax.winograd.conv3x3`).
    When the variables hold a ``prepared`` collection (:func:`prepared_variables`), the layer takes
    its flipped and transformed kernels from there instead of deriving them from ``kernel``.
    """

    features: int
    algorithm: str = "direct"

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        if kernel.dtype != x.dtype:  # unconditionally, a NumPy kernel closed over as a constant would be copied
            kernel, bias = kernel.astype(x.dtype), bias.astype(x.dtype)
        prepared = None
        if self.has_variable("prepared", "kernel_flipped"):
            prepared = {k: self.get_variable("prepared", k) for k in ("kernel_flipped", "u", "u_flipped")
                        if self.has_variable("prepared", k)}
        return winograd.conv3x3(x, kernel, self.algorithm, prepared) + bias


def conv_map_shapes(arch: str, height: int, width: int) -> dict[str, tuple[int, int, int, int]]:
    """``{conv name: (h, w, c_in, c_out)}``: each convolution's input map size and channels for an
    ``height x width`` image (every pooling halves the map, dropping an odd last row/column)."""
    shapes, out, h, w = conv_shapes(arch), {}, height, width
    for name in layer_names(arch):
        if name.startswith("conv"):
            (_, _, c_in, c_out), _ = shapes[name]
            out[name] = (h, w, c_in, c_out)
        elif name.startswith("pool"):
            h, w = h // 2, w // 2
    return out


def check_conv_dtype(conv: str, dtype: str) -> None:
    """Raise ``ValueError`` for a Winograd ``conv`` asked for in a ``dtype`` other than float32
    (:func:`conv_algorithms` says why)."""
    if dtype != "float32" and conv in ("winograd", "winograd2x2"):
        raise ValueError(f"conv={conv!r} loses too much in {dtype} (Winograd's transforms amplify its "
                         f"rounding); use 'direct' or 'auto'")


def conv_algorithms(arch: str, conv: str, height: int, width: int, platform: str,
                    dtype: str = "float32") -> dict[str, str]:
    """``{conv name: algorithm}``: what each convolution of ``arch`` runs for an ``height x width``
    input under the model's ``conv`` setting on ``platform`` (``'direct'``, ``'winograd'`` or
    ``'winograd2x2'``; :func:`segstyle_jax.winograd.layer_algorithm` of the layer's map size and
    channels, :func:`conv_map_shapes`). The model and the engine's prepared kernels both follow this
    plan.

    In bfloat16 (``dtype``) every layer runs the direct convolution: Winograd's transforms amplify
    the rounding (one 32x32x128 layer, relative RMS error against float32: direct 0.29%,
    ``F(2x2, 3x3)`` 0.63%, ``F(4x4, 3x3)`` 3.6%), so ``'auto'`` picks direct there and asking for
    ``'winograd'`` / ``'winograd2x2'`` is a ``ValueError``."""
    check_conv_dtype(conv, dtype)
    if dtype != "float32":
        conv = "direct"
    return {name: winograd.layer_algorithm(conv, *shape, platform)
            for name, shape in conv_map_shapes(arch, height, width).items()}


def prepared_variables(params, algorithms: dict[str, str] | None = None) -> dict:
    """The ``prepared`` variable collection for ``params``: every convolution mapped to its
    :func:`segstyle_jax.winograd.prepared_kernels` (NumPy arrays, computed once), with the Winograd
    transforms of the tile size its algorithm runs where ``algorithms`` (:func:`conv_algorithms`)
    says ``'winograd'`` or ``'winograd2x2'``; ``None``: the flipped kernels only. Applied as
    ``model.apply({"params": params, "prepared": prepared_variables(params, plan)}, x)``, the model
    computes the same function without flipping or transforming a kernel."""
    algorithms = algorithms or {}
    return {name: winograd.prepared_kernels(p["kernel"], winograd.TILE.get(algorithms.get(name, "direct")))
            for name, p in params.items() if name.startswith("conv")}


class VGG(nn.Module):
    """VGG feature extractor returning ``{tap: activations}``.

    Attributes:
      arch: ``'vgg16'`` or ``'vgg19'``.
      taps: layer names to return, e.g. ``('relu1_1', 'relu2_1', 'relu4_2')``.
      pooling: ``'max'`` (torchvision) or ``'avg'`` (Gatys et al. prefer it for synthesis).
      mean, std: per-channel preprocessing applied to the [0, 1] RGB input.
      conv: convolution algorithm, ``'direct'`` (default), ``'auto'``, ``'winograd'`` or
        ``'winograd2x2'`` (:mod:`segstyle_jax.winograd`).
      dtype: ``'float32'`` (default) or ``'bfloat16'``: what the layers compute in (module
        docstring); the returned activations are float32 either way. bfloat16 layers run the
        direct convolution (:func:`conv_algorithms`).

    ``__call__(x)``: ``x`` is ``[N, h, w, 3]`` or ``[h, w, 3]`` RGB in [0, 1]; returns a dict
    mapping each tap to ``[N, h_l, w_l, c_l]`` (or ``[h_l, w_l, c_l]``), where
    ``h_l = h // 2**(block - 1)``.
    """

    arch: str = "vgg16"
    taps: tuple[str, ...] = ("relu4_2",)
    pooling: Literal["max", "avg"] = "max"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    conv: str = "direct"
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        names = layer_names(self.arch)
        unknown = [t for t in self.taps if t not in names]
        if unknown or not self.taps:
            raise ValueError(f"unknown taps {unknown} for {self.arch}; layers are {', '.join(names)}")
        if self.pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', got {self.pooling!r}")
        if self.conv not in winograd.ALGORITHMS:
            raise ValueError(f"conv must be one of {winograd.ALGORITHMS}, got {self.conv!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        unbatched = x.ndim == 3
        if unbatched:
            x = x[None]
        if x.shape[-1] != 3:
            raise ValueError(f"expected RGB images [N, h, w, 3], got shape {x.shape}")

        x = (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)
        x = x.astype(self.dtype)  # a no-op for float32
        deepest = max(names.index(t) for t in self.taps)
        shapes = conv_shapes(self.arch)
        algorithms = conv_algorithms(self.arch, self.conv, x.shape[1], x.shape[2], jax.default_backend(), self.dtype)
        out = {}
        for name in names[: deepest + 1]:
            if name.startswith("conv"):
                x = Conv3x3(shapes[name][0][-1], algorithms[name], name=name)(x)
            elif name.startswith("relu"):
                x = nn.relu(x)
            else:
                x = pool_2x2(x, self.pooling)
            if name in self.taps:
                out[name] = (x[0] if unbatched else x).astype(jnp.float32)
        return out
