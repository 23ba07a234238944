"""The 3x3 convolution of VGG (stride 1, one pixel of zero padding) by Winograd's minimal filtering.

``F(2x2, 3x3)`` (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) computes
each 2x2 block of outputs from the 4x4 block of inputs around it with 16 multiplications per
(input channel, output channel) pair instead of 36::

    Y = A^T [ (G w G^T) * (B^T d B) ] A        (* elementwise over the 4x4 tile, summed over c_in)

so the convolution becomes 16 matrix products ``[tiles, c_in] @ [c_in, c_out]`` (2.25x fewer
multiplications) between two cheap linear transforms (additions and subtractions). The result
equals the direct convolution up to float rounding (relative error about 1e-6 in float32; the
transforms only use 0, +-1 and 0.5).

Why it is here: on XLA's CPU backend the direct convolution already runs near the matmul peak, so
removing multiplications is what is left to gain. The transforms move 4x the data of a layer's
input and output through memory, and the 3-channel first layer has too little work to repay them;
:func:`prefer_winograd` is the rule measured on the development CPU (README "Speed").

The gradient with respect to the input is again a 3x3 convolution (with the kernel flipped and its
channels swapped), so the custom VJP runs it by Winograd too; the kernel's gradient uses the direct
convolution (the engine never asks for it, and XLA removes it).

Shapes: ``x`` is NHWC ``[n, h, w, c_in]``, ``w`` is HWIO ``[3, 3, c_in, c_out]``; outputs are
``[n, h, w, c_out]``, the same as ``lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)))``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# G of F(2x2, 3x3): the 4x3 kernel transform (B^T and A^T are written out in _input_transform and
# _output_transform below).
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], np.float32)

ALGORITHMS = ("auto", "direct", "winograd")


def conv3x3_direct(x, w):
    """``[n, h, w, c_in] x [3, 3, c_in, c_out] -> [n, h, w, c_out]``, XLA's own convolution."""
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def kernel_transform(w):
    """``U = G w G^T`` per channel pair: ``[3, 3, c_in, c_out] -> [16, c_in, c_out]`` (tile position
    ``4 * r + s`` first). NumPy in, NumPy out (for weights known when tracing); else jax.

    Written as two matrix products (rows, then columns): NumPy's 3-operand einsum loops naively
    (23 ms against 4 ms for a 512x512 layer, which added up to a third of a second of every Winograd
    step's tracing)."""
    xp = np if isinstance(w, np.ndarray) else jnp
    c_in, c_out = w.shape[2], w.shape[3]
    rows = (_G @ w.reshape(3, 3 * c_in * c_out)).reshape(4, 3, c_in * c_out)  # G w: [r, b, i o]
    return xp.matmul(_G, rows).reshape(16, c_in, c_out)                        # (G w) G^T: [r, s, i o]


def _flipped_kernel(w):
    """The kernel of the input gradient: ``w[::-1, ::-1]`` with ``c_in`` and ``c_out`` swapped."""
    return w[::-1, ::-1].transpose(0, 1, 3, 2)


def _input_transform(xb):
    """``B^T d B`` of every 4x4 tile at stride 2: ``[n, 2 t + 2, 2 u + 2, c] -> [16, n t u, c]``.

    ``B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]``; tile ``(i, j)`` covers
    rows ``2i .. 2i + 3`` and columns ``2j .. 2j + 3``.
    """
    n, rows, cols, c = xb.shape
    t, u = (rows - 2) // 2, (cols - 2) // 2

    def bt(d0, d1, d2, d3):
        return d0 - d2, d1 + d2, d2 - d1, d1 - d3

    # Two stacks of four, rows then columns: XLA CPU makes one fusion of each, where a single stack
    # of 16 became 16 fusions and a copy (twice the compile time, and slower).
    rows = jnp.stack(bt(*(xb[:, a:a + 2 * t:2] for a in range(4))))                     # [4, n, t, cols, c]
    tiles = jnp.stack(bt(*(rows[:, :, :, b:b + 2 * u:2] for b in range(4))), axis=1)   # [4, 4, n, t, u, c]
    return tiles.reshape(16, n * t * u, c)


def _output_transform(m, n, t, u):
    """``A^T M A`` of every tile: ``[16, n t u, c] -> [n, 2 t, 2 u, c]``, ``A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]``."""
    m = m.reshape(4, 4, n, t, u, -1)

    def at(m0, m1, m2, m3):
        return m0 + m1 + m2, m1 - m2 - m3

    rows = at(m[0], m[1], m[2], m[3])                        # 2 x [4, n, t, u, c]
    out = [jnp.stack(at(r[0], r[1], r[2], r[3]), axis=3) for r in rows]   # 2 x [n, t, u, 2, c]
    return jnp.stack(out, axis=2).reshape(n, 2 * t, 2 * u, -1)


def _winograd(x, u):
    """The convolution of ``x`` ``[n, h, w, c_in]`` with the transformed kernel ``u`` ``[16, c_in, c_out]``.
    Odd sizes are padded to even ones with zeros and the extra row/column dropped."""
    n, h, w, _ = x.shape
    t, tu = (h + 1) // 2, (w + 1) // 2
    xp = jnp.pad(x, ((0, 0), (1, 2 * t - h + 1), (1, 2 * tu - w + 1), (0, 0)))
    m = jnp.einsum("kpc,kcd->kpd", _input_transform(xp), u if u.dtype == x.dtype else u.astype(x.dtype))
    return _output_transform(m, n, t, tu)[:, :h, :w]


def prepared_kernels(w, winograd: bool = True) -> dict:
    """What a step that takes a fixed kernel ``w`` ``[3, 3, c_in, c_out]`` as an argument needs,
    computed once on the host (NumPy): ``kernel_flipped``, the input gradient's kernel
    (``w[::-1, ::-1]`` with ``c_in`` and ``c_out`` swapped, HWIO ``[3, 3, c_out, c_in]``), and with
    ``winograd`` the transforms ``u`` ``[16, c_in, c_out]`` and ``u_flipped`` ``[16, c_out, c_in]``
    (:func:`kernel_transform` of both). Passed to :func:`conv3x3` as ``prepared``, they spare the step
    deriving them from a traced kernel at every call: that cost a fixed ~38 ms a step for the direct
    backward's flipped kernel on the 2-core benchmark CPU, and 100-190 ms for the Winograd transforms
    (README "Speed")."""
    w = np.asarray(w, np.float32)
    flipped = np.ascontiguousarray(_flipped_kernel(w))
    out = {"kernel_flipped": flipped}
    if winograd:
        out.update(u=kernel_transform(w), u_flipped=kernel_transform(flipped))
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
# prepared flipped kernel. conv3x3_prepared(x, u, u_flipped): conv3x3_winograd with the prepared
# transforms (arrays, possibly traced). Both take prepared_kernels' arrays; see _with_prepared_kernels.
conv3x3_direct_prepared = _with_prepared_kernels(conv3x3_direct)
conv3x3_prepared = _with_prepared_kernels(_winograd)


def conv3x3_winograd(x, w):
    """``[n, h, w, c_in] x [3, 3, c_in, c_out] -> [n, h, w, c_out]`` by ``F(2x2, 3x3)``; equals
    :func:`conv3x3_direct` up to float rounding. Differentiable in ``x`` (by Winograd) and ``w``.

    A kernel known when tracing (NumPy, or a concrete jax array) is transformed once on the host with
    NumPy, so a program that closes over it holds the transformed constants; a traced kernel is
    transformed inside the program, at every call. The engine's step does neither: it passes
    :func:`prepared_kernels` as arguments (:func:`conv3x3` with ``prepared``).
    """
    if isinstance(w, jax.core.Tracer):
        return _conv_traced_kernel(x, w)
    kernels = prepared_kernels(w)
    return conv3x3_prepared(x, kernels["u"], kernels["u_flipped"])


@jax.custom_vjp
def _conv_traced_kernel(x, w):
    return _winograd(x, kernel_transform(w))


def _fwd(x, w):
    return _conv_traced_kernel(x, w), (x, w)


def _bwd(residuals, g):
    x, w = residuals
    dx = _winograd(g, kernel_transform(_flipped_kernel(w)))
    dw = jax.vjp(lambda k: conv3x3_direct(x, k), w)[1](g)[0]
    return dx, dw


_conv_traced_kernel.defvjp(_fwd, _bwd)


# Largest feature map (pixels per image) that algorithm='auto' runs by Winograd: its tile tensors
# take 4x the memory of the input, which matters at 1024-2048 px; at a 512 px image, allowing
# 256x256 maps was 0.77x of the direct step against 0.80x for 128x128 (measured once, the compiled
# steps interleaved in one process).
MAX_WINOGRAD_PIXELS = 256 * 256

# Extra compile seconds Winograd costs a whole step (about 2.2 s on the development CPU, 2 cores)
# against what it saves per step and pixel (about 2 microseconds): below this many steps x pixels
# of a stage, the direct convolution finishes first (:func:`worth_compiling`).
MIN_STEP_PIXELS = 2 ** 20


def prefer_winograd(height: int, width: int, c_in: int, platform: str) -> bool:
    """Whether ``algorithm='auto'`` uses Winograd for a layer: on CPU, for inputs of at least 16
    channels (the 3-channel first layer ran 6x slower than XLA's convolution) and feature maps of at
    most :data:`MAX_WINOGRAD_PIXELS` pixels. Whole VGG16 steps (K = 2, the engine's loss) took 0.58-0.85x
    the time of the direct step at 64-512 px (``bench/bench_step.py --conv direct auto``). GPUs have their own convolution algorithms (cuDNN picks
    Winograd itself where it pays), so there it is never preferred."""
    return platform == "cpu" and c_in >= 16 and height * width <= MAX_WINOGRAD_PIXELS


def worth_compiling(steps: int, height: int, width: int, platform: str) -> bool:
    """Whether a stage of ``steps`` steps at ``height x width`` should compile its step with
    ``'auto'`` rather than ``'direct'``: on CPU, when ``steps * height * width >=`` :data:`MIN_STEP_PIXELS`
    (e.g. 64 steps at 128x128, 256 at 64x64). One-off forward passes (style targets, metrics) stay
    direct for the same reason."""
    return platform == "cpu" and steps * height * width >= MIN_STEP_PIXELS


def conv3x3(x, w, algorithm: str = "auto", prepared: dict | None = None):
    """The VGG convolution of ``x`` ``[n, h, w, c_in]`` with ``w`` ``[3, 3, c_in, c_out]`` by
    ``algorithm``: ``'direct'``, ``'winograd'`` or ``'auto'`` (:func:`prefer_winograd`).
    ``prepared``: ``w``'s :func:`prepared_kernels` (``u`` and ``u_flipped`` needed only where the
    layer runs by Winograd)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"convolution algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm == "auto":
        algorithm = "winograd" if prefer_winograd(x.shape[1], x.shape[2], x.shape[3], jax.default_backend()) else "direct"
    prepared = prepared or {}
    if algorithm == "winograd":
        if "u" in prepared:
            return conv3x3_prepared(x, prepared["u"].astype(x.dtype), prepared["u_flipped"].astype(x.dtype))
        return conv3x3_winograd(x, w)
    if "kernel_flipped" in prepared:
        return conv3x3_direct_prepared(x, w, prepared["kernel_flipped"].astype(x.dtype))
    return conv3x3_direct(x, w)
