"""The 3x3 convolution of VGG (stride 1, one pixel of zero padding) by Winograd's minimal filtering.

``F(m x m, 3x3)`` (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) computes
each ``m x m`` block of outputs from the ``a x a`` block of inputs around it (``a = m + 2``) with
``a^2`` multiplications per (input channel, output channel) pair instead of ``9 m^2``::

    Y = A^T [ (G w G^T) * (B^T d B) ] A        (* elementwise over the a x a tile, summed over c_in)

so the convolution becomes ``a^2`` matrix products ``[tiles, c_in] @ [c_in, c_out]`` between two
linear transforms of the data (additions and small multiples). Two tile sizes are here:

* ``F(4x4, 3x3)`` (``'winograd'``, the default Winograd): 36 products per 16 outputs, 4x fewer
  multiplications than the direct convolution, and tiles holding 2.25x the layer's input. The
  transforms use the points 0, +-1, +-2 (entries up to 8 and fractions 1/4, 1/6, 1/12, 1/24): the
  result equals the direct convolution to about 5e-6 relative per layer in float32.
* ``F(2x2, 3x3)`` (``'winograd2x2'``): 16 products per 4 outputs (2.25x fewer), tiles of 4x the
  input, transforms of 0, +-1 and 1/2 only (about 6e-7 relative per layer).

Why it is here: on XLA's CPU backend the direct convolution already runs near the matmul peak, so
removing multiplications is what is left to gain; :func:`layer_algorithm` is the per-layer rule
measured on the benchmark CPUs (README "Speed").

The gradient with respect to the input is again a 3x3 convolution (with the kernel flipped and its
channels swapped), so the custom VJP runs it by Winograd too; the kernel's gradient uses the direct
convolution (the engine never asks for it, and XLA removes it).

Shapes: ``x`` is NHWC ``[n, h, w, c_in]``, ``w`` is HWIO ``[3, 3, c_in, c_out]``; outputs are
``[n, h, w, c_out]``, the same as ``lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)))``.
A transformed kernel ``u`` is ``[a^2, c_in, c_out]`` (tile position ``a * r + s`` first); its first
dimension tells which ``F(m x m, 3x3)`` it belongs to.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ALGORITHMS = ("auto", "direct", "winograd", "winograd2x2")

# The transforms of F(m x m, 3x3) by output tile size m: (B^T [a, a], G [a, 3], A^T [m, a]), a = m + 2.
# F(2x2, 3x3) interpolates at 0, 1, -1 and infinity; F(4x4, 3x3) at 0, 1, -1, 2, -2 and infinity.
TRANSFORMS = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)),
}

# The output tile size of each Winograd algorithm.
TILE = {"winograd": 4, "winograd2x2": 2}


def conv3x3_direct(x, w):
    """``[n, h, w, c_in] x [3, 3, c_in, c_out] -> [n, h, w, c_out]``, XLA's own convolution."""
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def kernel_transform(w, tile: int = 4):
    """``U = G w G^T`` per channel pair: ``[3, 3, c_in, c_out] -> [a^2, c_in, c_out]`` (``a = tile + 2``,
    tile position ``a * r + s`` first). NumPy in (computed in float64), NumPy float32 out, for
    weights known when tracing; else jax, in ``w``'s dtype.

    Written as two matrix products (rows, then columns): NumPy's 3-operand einsum loops naively
    (23 ms against 4 ms for a 512x512 layer, which added up to a third of a second of every Winograd
    step's tracing)."""
    g = TRANSFORMS[tile][1]
    a, c_in, c_out = g.shape[0], w.shape[2], w.shape[3]
    if isinstance(w, np.ndarray):
        rows = (g @ w.astype(np.float64).reshape(3, 3 * c_in * c_out)).reshape(a, 3, c_in * c_out)
        return np.matmul(g, rows).reshape(a * a, c_in, c_out).astype(np.float32)
    g = jnp.asarray(g, w.dtype)
    rows = (g @ w.reshape(3, 3 * c_in * c_out)).reshape(a, 3, c_in * c_out)   # G w: [r, b, i o]
    return jnp.matmul(g, rows).reshape(a * a, c_in, c_out)                     # (G w) G^T: [r, s, i o]


def tile_of(u) -> int:
    """The output tile size ``m`` of a transformed kernel ``u`` ``[(m + 2)^2, c_in, c_out]``."""
    for tile, (bt, _, _) in TRANSFORMS.items():
        if u.shape[0] == bt.shape[0] ** 2:
            return tile
    raise ValueError(f"a transformed kernel has {', '.join(str(b.shape[0] ** 2) for b, _, _ in TRANSFORMS.values())} "
                     f"tile positions, not {u.shape[0]}")


def _flipped_kernel(w):
    """The kernel of the input gradient: ``w[::-1, ::-1]`` with ``c_in`` and ``c_out`` swapped."""
    return w[::-1, ::-1].transpose(0, 1, 3, 2)


def _combine(matrix, parts):
    """``[sum_j matrix[i, j] * parts[j] for i]``, skipping zeros and multiplying by +-1 as a sign: the
    transforms as the additions they are."""
    out = []
    for row in matrix:
        acc = None
        for c, part in zip(row, parts):
            if c == 0:
                continue
            term = part if c == 1 else -part if c == -1 else float(c) * part
            acc = term if acc is None else acc + term
        out.append(acc)
    return out


def _input_transform(xb, tile: int):
    """``B^T d B`` of every ``a x a`` tile at stride ``m`` (``m = tile``, ``a = m + 2``):
    ``[n, m t + 2, m u + 2, c] -> [a^2, n t u, c]``; tile ``(i, j)`` covers rows ``m i .. m i + a - 1``
    and columns ``m j .. m j + a - 1``."""
    bt = TRANSFORMS[tile][0]
    a = bt.shape[0]
    n, rows, cols, c = xb.shape
    t, u = (rows - 2) // tile, (cols - 2) // tile
    # Two stacks of a, rows then columns: XLA CPU makes one fusion of each, where a single stack
    # of a^2 became a^2 fusions and a copy (twice the compile time, and slower).
    rows = jnp.stack(_combine(bt, [xb[:, i:i + tile * t:tile] for i in range(a)]))                  # [a, n, t, cols, c]
    tiles = jnp.stack(_combine(bt, [rows[:, :, :, j:j + tile * u:tile] for j in range(a)]), axis=1)  # [a, a, n, t, u, c]
    return tiles.reshape(a * a, n * t * u, c)


def _output_transform(m, n, t, u, tile: int):
    """``A^T M A`` of every tile: ``[a^2, n t u, c] -> [n, m t, m u, c]`` (``m = tile``)."""
    at = TRANSFORMS[tile][2]
    a = at.shape[1]
    m = m.reshape(a, a, n, t, u, -1)
    rows = _combine(at, [m[i] for i in range(a)])                                  # tile x [a, n, t, u, c]
    out = [jnp.stack(_combine(at, [r[j] for j in range(a)]), axis=3) for r in rows]  # tile x [n, t, u, tile, c]
    return jnp.stack(out, axis=2).reshape(n, tile * t, tile * u, -1)


def _winograd(x, u):
    """The convolution of ``x`` ``[n, h, w, c_in]`` with the transformed kernel ``u``
    ``[a^2, c_in, c_out]`` by ``F(m x m, 3x3)``, ``m`` from ``u``'s shape (:func:`tile_of`). Sizes
    that are not multiples of ``m`` are padded with zeros and the extra rows/columns dropped."""
    tile = tile_of(u)
    n, h, w, _ = x.shape
    t, tu = -(-h // tile), -(-w // tile)
    xp = jnp.pad(x, ((0, 0), (1, tile * t - h + 1), (1, tile * tu - w + 1), (0, 0)))
    m = jnp.einsum("kpc,kcd->kpd", _input_transform(xp, tile), u if u.dtype == x.dtype else u.astype(x.dtype))
    return _output_transform(m, n, t, tu, tile)[:, :h, :w]


def prepared_kernels(w, tile: int | None = 4) -> dict:
    """What a step that takes a fixed kernel ``w`` ``[3, 3, c_in, c_out]`` as an argument needs,
    computed once on the host (NumPy): ``kernel_flipped``, the input gradient's kernel
    (``w[::-1, ::-1]`` with ``c_in`` and ``c_out`` swapped, HWIO ``[3, 3, c_out, c_in]``), and with
    a ``tile`` (2 or 4; ``None`` for none) the transforms of ``F(tile x tile, 3x3)``, ``u``
    ``[a^2, c_in, c_out]`` and ``u_flipped`` ``[a^2, c_out, c_in]`` (:func:`kernel_transform` of both).
    Passed to :func:`conv3x3` as ``prepared``, they spare the step deriving them from a traced kernel
    at every call: that cost a fixed ~38 ms a step for the direct backward's flipped kernel on the
    2-core benchmark CPU, and 100-190 ms for the Winograd transforms (README "Speed")."""
    w = np.asarray(w, np.float32)
    flipped = np.ascontiguousarray(_flipped_kernel(w))
    out = {"kernel_flipped": flipped}
    if tile is not None:
        out.update(u=kernel_transform(w, tile), u_flipped=kernel_transform(flipped, tile))
    return out


def _with_prepared_kernels(conv):
    """``conv(x, k)`` as ``f(x, k, k_flipped)``, differentiable in ``x`` only: its input gradient is
    ``conv(g, k_flipped)`` (for these convolutions the correlation with the flipped kernel), and the
    kernels' cotangents are zeros (nothing asks for them; XLA removes them)."""

    @jax.custom_vjp
    def f(x, k, k_flipped):
        return conv(x, k)

    def fwd(x, k, k_flipped):
        return conv(x, k), (k, k_flipped)

    def bwd(residuals, g):
        k, k_flipped = residuals
        return conv(g, k_flipped), jnp.zeros_like(k), jnp.zeros_like(k_flipped)

    f.defvjp(fwd, bwd)
    return f


# conv3x3_direct_prepared(x, w, kernel_flipped): the direct convolution, its backward with the
# prepared flipped kernel. conv3x3_prepared(x, u, u_flipped): the Winograd convolution with the
# prepared transforms (arrays, possibly traced; their shape says which F(m x m, 3x3)). Both take
# prepared_kernels' arrays; see _with_prepared_kernels.
conv3x3_direct_prepared = _with_prepared_kernels(conv3x3_direct)
conv3x3_prepared = _with_prepared_kernels(_winograd)


def conv3x3_winograd(x, w, tile: int = 4):
    """``[n, h, w, c_in] x [3, 3, c_in, c_out] -> [n, h, w, c_out]`` by ``F(tile x tile, 3x3)``;
    equals :func:`conv3x3_direct` up to float rounding. Differentiable in ``x`` (by Winograd) and ``w``.

    A kernel known when tracing (NumPy, or a concrete jax array) is transformed once on the host with
    NumPy, so a program that closes over it holds the transformed constants; a traced kernel is
    transformed inside the program, at every call. The engine's step does neither: it passes
    :func:`prepared_kernels` as arguments (:func:`conv3x3` with ``prepared``).
    """
    if tile not in TRANSFORMS:
        raise ValueError(f"Winograd tile size must be one of {sorted(TRANSFORMS)}, got {tile!r}")
    if isinstance(w, jax.core.Tracer):
        return _conv_traced_kernel(tile, x, w)
    kernels = prepared_kernels(w, tile)
    return conv3x3_prepared(x, kernels["u"], kernels["u_flipped"])


def _conv_traced_kernel(tile, x, w):
    return _winograd(x, kernel_transform(w, tile))


def _fwd(tile, x, w):
    return _conv_traced_kernel(tile, x, w), (x, w)


def _bwd(tile, residuals, g):
    x, w = residuals
    dx = _winograd(g, kernel_transform(_flipped_kernel(w), tile))
    dw = jax.vjp(lambda k: conv3x3_direct(x, k), w)[1](g)[0]
    return dx, dw


_conv_traced_kernel = jax.custom_vjp(_conv_traced_kernel, nondiff_argnums=(0,))
_conv_traced_kernel.defvjp(_fwd, _bwd)


# Largest feature map (pixels per image) that algorithm='auto' runs by Winograd: the tile tensors
# take 2.25x (F(4x4)) or 4x (F(2x2)) the memory of the layer's input, which matters at 1024-2048 px.
MAX_WINOGRAD_PIXELS = 256 * 256

# Extra compile seconds 'auto' costs a whole step against 'direct' (2.0, 2.6 and 3.5 s at 128, 256
# and 512 px on the 2-core benchmark CPU) over what it saves per step and pixel (1.1-1.5
# microseconds): about 2 million steps x pixels repay it (110 steps at 128x128, 34 at 256x256, 9 at
# 512x512). Below that, the direct convolution finishes first (:func:`worth_compiling`).
MIN_STEP_PIXELS = 2 ** 21
# With XLA's persistent compile cache on (:mod:`segstyle_jax.compile_cache`) the extra compile is
# paid once per shape and every later run loads the program: then a stage pays off from far fewer
# steps (measured warm, locality K = 2, lbfgs-fixed: 35 -> 31 ms a step at 64x64, 105 -> 84 ms at
# 128x128). 2^18 steps x pixels: 64 steps at 64x64, 16 at 128x128; one-off passes stay direct.
# A stage alone pays its kernel transforms (:func:`prepared_kernels`) in its setup too (a 100-step
# stage, warm: first step 1.9-2.7 s after the call at 64x64 with 'auto' against 1.0-1.2 s direct,
# 2.6 against 1.3 s at 128x128), which would put the break-even near 3 x 2^18; but in a
# coarse-to-fine run the later scales reuse the deep layers' F(2x2) transforms, and with 3 x 2^18
# the 64 px stage of the time-to-quality schedule ended later (8.55 s after the call against 8.0):
# the transforms were then computed beside its slower direct steps. Kept at 2^18 (speed notes).
MIN_STEP_PIXELS_CACHED = 2 ** 18


def layer_algorithm(algorithm: str, height: int, width: int, c_in: int, c_out: int, platform: str) -> str:
    """The algorithm one layer runs: ``algorithm`` itself unless it is ``'auto'``, which on CPU is

    * ``'direct'`` for the 3-channel first layer (too little work per pixel to repay the
      transforms), for maps above :data:`MAX_WINOGRAD_PIXELS`, and for maps of 128x128 and more
      where ``c_in * c_out <= 64 * 64`` (VGG's ``conv1_2``: the transforms' memory traffic, which
      grows with ``c_in + c_out``, outweighs the products saved, which grow with ``c_in * c_out``);
    * ``'winograd'`` (``F(4x4, 3x3)``) for maps of 64x64 pixels and more;
    * ``'winograd2x2'`` below that: with few tiles per image, ``F(4x4)``'s products are too small
      to run fast.

    Measured layer by layer with ``bench/bench_conv.py`` and as whole steps with
    ``bench/bench_step.py --conv direct auto`` (README "Speed"). GPUs have their own convolution
    algorithms (cuDNN picks Winograd itself where it pays): there ``'auto'`` is always ``'direct'``.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"convolution algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm != "auto":
        return algorithm
    pixels = height * width
    if platform != "cpu" or c_in < 16 or pixels > MAX_WINOGRAD_PIXELS or (pixels >= 128 * 128 and c_in * c_out <= 64 * 64):
        return "direct"
    return "winograd" if pixels >= 64 * 64 else "winograd2x2"


def worth_compiling(steps: int, height: int, width: int, platform: str, cached: bool = False) -> bool:
    """Whether a stage of ``steps`` steps at ``height x width`` should compile its step with
    ``'auto'`` rather than ``'direct'``: on CPU, when ``steps * height * width >=`` :data:`MIN_STEP_PIXELS`
    (e.g. 128 steps at 128x128, 512 at 64x64), or :data:`MIN_STEP_PIXELS_CACHED` when ``cached``
    (the persistent compile cache is on, so the compile is paid once for many runs). One-off
    forward passes (style targets, metrics) stay direct for the same reason."""
    return platform == "cpu" and steps * height * width >= (MIN_STEP_PIXELS_CACHED if cached else MIN_STEP_PIXELS)


def conv3x3(x, w, algorithm: str = "auto", prepared: dict | None = None):
    """The VGG convolution of ``x`` ``[n, h, w, c_in]`` with ``w`` ``[3, 3, c_in, c_out]`` by
    ``algorithm``: ``'direct'``, ``'winograd'`` (``F(4x4, 3x3)``), ``'winograd2x2'`` or ``'auto'``
    (:func:`layer_algorithm`). ``prepared``: ``w``'s :func:`prepared_kernels` (``u`` and ``u_flipped``
    needed only where the layer runs by Winograd, and then of its tile size)."""
    algorithm = layer_algorithm(algorithm, x.shape[1], x.shape[2], x.shape[3], w.shape[3], jax.default_backend())
    prepared = prepared or {}
    if algorithm != "direct":
        tile = TILE[algorithm]
        if "u" not in prepared:
            return conv3x3_winograd(x, w, tile)
        if tile_of(prepared["u"]) != tile:
            raise ValueError(f"prepared kernels are for F({tile_of(prepared['u'])}x{tile_of(prepared['u'])}, 3x3), "
                             f"this layer runs F({tile}x{tile}, 3x3)")
        return conv3x3_prepared(x, prepared["u"].astype(x.dtype), prepared["u_flipped"].astype(x.dtype))
    if "kernel_flipped" in prepared:
        return conv3x3_direct_prepared(x, w, prepared["kernel_flipped"].astype(x.dtype))
    return conv3x3_direct(x, w)
