"""Loss functions of segmentation-aware neural style transfer, as pure ``jax.numpy`` functions.

Every function here is pure (no classes, no state, no I/O), works in float32, and is safe under
``jax.jit``, ``jax.vmap`` and ``jax.grad``. They are written **unbatched**: one image and one
segment at a time. Callers ``jax.vmap`` them across segments (or images), e.g.::

    per_segment = jax.vmap(segment_style_loss, in_axes=(None, 0, 0, None))
    losses = per_segment(features, masks_k, targets_k, layer_weights)     # [K]

Conventions (owned by this module):

* ``features`` are the activations of one VGG tap for one image, ``[h, w, c]`` float (NHWC without
  the batch axis). ``p`` below indexes the ``h * w`` spatial positions and ``F_p`` is the
  ``c``-vector at position ``p``.
* ``mask`` is one segment's mask at the same resolution as the features, ``[h, w]``, values in
  ``[0, 1]`` (hard one-hot masks or soft masks). Bringing masks to a layer's resolution is the
  caller's job (see ``DESIGN.md`` section 2: 2x2 area averaging at every pooling step).
* Gram matrices are ``[c, c]`` and normalized by the number of positions (``gram``) or by the mask
  area (``masked_gram``), so a segment's style loss does not shrink with its size.
* Matrix products use JAX's default matmul precision; wrap calls in
  ``jax.default_matmul_precision("highest")`` where full float32 accuracy matters on GPU/TPU.

Formulas (``N`` = mask area, ``c`` = channels):

* ``gram``:          ``G = sum_p F_p F_p^T / (h w)``
* ``masked_gram``:   ``G = sum_p m(p) F_p F_p^T / max(sum_p m(p), eps)``, area ``sum_p m(p)``
* ``style_error``:   ``E = ||G - A||_F^2 / c^2``
* ``content_loss``:  ``mean((F - P)^2)`` over all ``h w c`` entries
* ``total_variation``: mean squared vertical neighbour difference + mean squared horizontal one
* ``segment_style_loss``: ``sum_l lambda_l E^l`` over the style taps of one segment
* ``masked_style_grad_eq5``: the closed form ``dE/dF`` (the paper's equation (5))

Empty and vanishing segments. ``masked_gram`` never divides by zero: the area is clamped to
``eps`` (``EPS = 1e-8``), so an all-zero mask gives ``G = 0`` (finite). In ``segment_style_loss``
a layer whose mask area ``sum_p m_l(p)`` is below ``min_area`` (default ``1e-3``, in units of
layer positions) contributes **exactly 0** to the loss and has zero gradient. This covers a segment
that is empty, or that has (numerically) vanished at a deep layer after pooling. The skip is a
``jnp.where`` on the area, not Python control flow, so it works on traced masks under ``jit`` /
``vmap``; the unused branch is itself finite (thanks to the ``eps`` clamp), so no NaN leaks into
gradients. Callers that want to reject empty segments outright (bad input) should check mask areas
on the host before optimization; this module only guarantees finite, well-defined numbers.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

__all__ = [
    "EPS",
    "gram",
    "masked_gram",
    "style_error",
    "content_loss",
    "total_variation",
    "segment_style_loss",
    "masked_grams",
    "segments_style_loss",
    "masked_style_grad_eq5",
]

EPS = 1e-8
"""Minimum mask area used as the Gram denominator: ``max(sum_p m(p), EPS)``."""


def gram(features: jax.Array) -> jax.Array:
    """Gram matrix of one feature map, normalized by the number of positions.

    ``G = sum_p F_p F_p^T / (h * w)``

    Differentiated by :func:`_gram_product`'s closed form (one matrix product instead of
    autodiff's two).

    Args:
      features: ``[h, w, c]`` activations of one image at one tap.

    Returns:
      ``[c, c]`` symmetric Gram matrix.
    """
    h, w, c = features.shape
    return _gram_product(jnp.reshape(features, (h * w, c))) / (h * w)


@jax.custom_vjp
def _gram_product(f: jax.Array) -> jax.Array:
    """``f^T f`` for ``f`` ``[N, c]`` -> ``[c, c]``.

    Its gradient for a cotangent ``D`` ``[c, c]`` is ``f (D + D^T)``: one ``[N, c] x [c, c]``
    product where autodiff of ``f.T @ f`` takes two (one per factor) and adds them; a third less
    work for the Gram's forward and backward together.
    """
    return f.T @ f


def _gram_product_fwd(f):
    return f.T @ f, f


def _gram_product_bwd(f, d):
    return (f @ (d + d.T),)


_gram_product.defvjp(_gram_product_fwd, _gram_product_bwd)


def masked_gram(
    features: jax.Array, mask: jax.Array, eps: float = EPS
) -> tuple[jax.Array, jax.Array]:
    """Gram matrix of one segment, normalized by the segment's (soft) area.

    ``G = sum_p m(p) F_p F_p^T / max(sum_p m(p), eps)``,   ``area = sum_p m(p)``

    The mask weights each position once (``F^T diag(m) F``), so for ``m == 1`` everywhere this is
    exactly ``gram(features)``. An all-zero mask gives ``G = 0`` and ``area = 0`` (no NaN).

    Args:
      features: ``[h, w, c]`` activations.
      mask: ``[h, w]`` segment mask at the same resolution, values in ``[0, 1]``.
      eps: smallest denominator (defaults to ``EPS``).

    Returns:
      ``(G, area)``: the ``[c, c]`` Gram matrix and the scalar mask area ``sum_p m(p)``.
    """
    h, w, c = features.shape
    if mask.shape != (h, w):
        raise ValueError(f"mask shape {mask.shape} does not match features {features.shape[:2]}")
    f = jnp.reshape(features, (h * w, c))
    m = jnp.reshape(mask, (h * w,)).astype(f.dtype)
    area = jnp.sum(m)
    g = ((f * m[:, None]).T @ f) / jnp.maximum(area, eps)
    return g, area


def masked_grams(
    features: jax.Array, masks: jax.Array, eps: float = EPS
) -> tuple[jax.Array, jax.Array]:
    """All ``K`` masked Grams of one feature map at once (the batched form of :func:`masked_gram`).

    ``G_k = sum_p m_k(p) F_p F_p^T / max(sum_p m_k(p), eps)``,   ``area_k = sum_p m_k(p)``

    Computed as one matrix product ``F^T [F*m_1, ..., F*m_K]`` (``[c, N] x [N, K c]``). This is
    the one place the per-segment rule of this module is broken on purpose: on CPU its forward and
    backward take about half the time of ``jax.vmap(masked_gram)`` over ``k`` (whose backward
    materialises and reduces ``K`` separate ``[N, c]`` products), and its gradient is the closed
    form of :func:`_masked_gram_products` (one product where autodiff takes two). Tests check it
    equals the vmap, value and gradient.

    Args:
      features: ``[h, w, c]`` activations.
      masks: ``[K, h, w]`` segment masks at the same resolution.

    Returns:
      ``(G, area)``: ``[K, c, c]`` and ``[K]``.
    """
    h, w, c = features.shape
    k = masks.shape[0]
    if masks.shape[1:] != (h, w):
        raise ValueError(f"mask shape {masks.shape[1:]} does not match features {features.shape[:2]}")
    f = jnp.reshape(features, (h * w, c))
    m = jnp.reshape(masks, (k, h * w)).astype(f.dtype)
    area = jnp.sum(m, axis=1)
    return _masked_gram_products(f, m) / jnp.maximum(area, eps)[:, None, None], area


@jax.custom_vjp
def _masked_gram_products(f: jax.Array, m: jax.Array) -> jax.Array:
    """``S_k = sum_p m_k(p) f_p f_p^T`` for ``f`` ``[N, c]`` and ``m`` ``[K, N]`` -> ``[K, c, c]``,
    as one product ``f^T [f*m_1, ..., f*m_K]`` (``[c, K c]``: the symmetric ``S_k`` side by side).

    Gradient, for cotangents ``D_k`` ``[c, c]`` and ``Y_k = f (D_k + D_k^T)``::

        d f_p    = sum_k m_k(p) Y_k[p]             (the paper's equation (5), summed over segments)
                 = [m_1(p) f_p, ..., m_K(p) f_p] . [D_1 + D_1^T; ...; D_K + D_K^T]
        d m_k(p) = f_p^T D_k f_p = Y_k[p] . f_p / 2

    ``d f`` is one product ``[N, K c] x [K c, c]`` of the masked features (recomputed, not kept
    from the forward) with the stacked symmetric cotangents: the sum over ``k`` runs inside the
    product. Autodiff of the forward would take two products of that size (one per factor) and
    add them; forming the ``[N, K c]`` array of all ``Y_k`` and summing it over ``k`` afterwards
    (this function's form until it was measured) took 85 ms against 78 for a locality step with
    K = 4 at 128², 1114 against 1040 ms at 512² (speed notes). ``d m`` (needed only when the
    masks themselves are differentiated; ``jit`` drops it otherwise) still goes through ``Y``.
    """
    return _masked_gram_products_fwd(f, m)[0]


def _masked_features(f, m):
    """``[f*m_1, ..., f*m_K]``: ``[N, K c]`` for ``f`` ``[N, c]`` and ``m`` ``[K, N]``."""
    n, c = f.shape
    return jnp.reshape(m.T[:, :, None] * f[:, None, :], (n, m.shape[0] * c))


def _masked_gram_products_fwd(f, m):
    c = f.shape[1]
    k = m.shape[0]
    # f^T [f*m_1, ...] ([c, K c]) is S_k^T = S_k side by side; measured a little faster than
    # [f*m_1, ...]^T f at the first taps (N large, c small)
    s = jnp.reshape(f.T @ _masked_features(f, m), (c, k, c))
    return jnp.transpose(s, (1, 0, 2)), (f, m)


def _masked_gram_products_bwd(residuals, d):
    f, m = residuals
    n, c = f.shape
    k = m.shape[0]
    sym = d + jnp.swapaxes(d, 1, 2)                                           # [K, c, c]
    df = _masked_features(f, m) @ jnp.reshape(sym, (k * c, c))                # [N, K c] x [K c, c]
    y = jnp.reshape(f @ jnp.reshape(jnp.transpose(sym, (1, 0, 2)), (c, k * c)), (n, k, c))  # Y_k[p]
    dm = 0.5 * jnp.einsum("nkc,nc->kn", y, f)
    return df, dm


_masked_gram_products.defvjp(_masked_gram_products_fwd, _masked_gram_products_bwd)


def segments_style_loss(
    features: Mapping[str, jax.Array],
    masks: Mapping[str, jax.Array],
    targets: Mapping[str, jax.Array],
    layer_weights: Mapping[str, jax.Array | float],
    min_area: float = 1e-3,
) -> jax.Array:
    """Style loss of ALL segments, ``[K]``: :func:`segment_style_loss` for each ``k``, computed with
    :func:`masked_grams` (one product per tap instead of ``K``; equal to
    ``jax.vmap(segment_style_loss, in_axes=(None, 0, 0, None))``).

    Args:
      features: tap -> ``[h_l, w_l, c_l]``.
      masks: tap -> ``[K, h_l, w_l]`` layer masks of every segment.
      targets: tap -> ``[K, c_l, c_l]`` target Grams.
      layer_weights: tap -> scalar ``lambda_l``.
      min_area: a segment's layer with mask area below this contributes exactly 0.
    """
    total = None
    for tap in sorted(targets):
        g, area = masked_grams(features[tap], masks[tap])
        e = jax.vmap(style_error)(g, targets[tap])
        term = layer_weights[tap] * e
        term = jnp.where(area >= min_area, term, jnp.zeros_like(term))
        total = term if total is None else total + term
    return total


def style_error(G: jax.Array, A: jax.Array) -> jax.Array:
    """Per-layer style error between a Gram matrix and its target.

    ``E = ||G - A||_F^2 / c^2 = sum_ij (G_ij - A_ij)^2 / c^2``

    Args:
      G: ``[c, c]`` Gram matrix of the image being optimized.
      A: ``[c, c]`` target Gram matrix (of the style image).

    Returns:
      Scalar.
    """
    c = G.shape[-1]
    d = G - A
    return jnp.sum(d * d) / (c * c)


def content_loss(features: jax.Array, target: jax.Array) -> jax.Array:
    """Content loss at one tap: mean squared difference of the features.

    ``L = mean_{p, i} (F_{p,i} - P_{p,i})^2``   (mean over all ``h * w * c`` entries)

    Args:
      features: ``[h, w, c]`` activations of the image being optimized.
      target: ``[h, w, c]`` activations of the content image at the same tap.

    Returns:
      Scalar.
    """
    d = features - target
    return jnp.mean(d * d)


def total_variation(image: jax.Array) -> jax.Array:
    """Squared total variation of one image.

    ``TV = mean_{y,x,ch} (x[y+1,x,ch] - x[y,x,ch])^2 + mean_{y,x,ch} (x[y,x+1,ch] - x[y,x,ch])^2``

    The first mean runs over the ``(h-1) * w * ch`` vertical neighbour pairs, the second over the
    ``h * (w-1) * ch`` horizontal pairs. A direction without pairs (``h == 1`` or ``w == 1``)
    contributes 0 rather than the NaN of an empty mean.

    Args:
      image: ``[h, w, ch]`` image (normally ``ch == 3``, RGB).

    Returns:
      Scalar.
    """
    h, w = image.shape[0], image.shape[1]
    tv = jnp.zeros((), image.dtype)
    if h > 1:
        dv = image[1:, :, ...] - image[:-1, :, ...]
        tv = tv + jnp.mean(dv * dv)
    if w > 1:
        dh = image[:, 1:, ...] - image[:, :-1, ...]
        tv = tv + jnp.mean(dh * dh)
    return tv


def segment_style_loss(
    features: Mapping[str, jax.Array],
    masks: Mapping[str, jax.Array],
    targets: Mapping[str, jax.Array],
    layer_weights: Mapping[str, jax.Array | float],
    min_area: float = 1e-3,
) -> jax.Array:
    """Style loss of ONE segment, summed over the style taps.

    ``L = sum_l lambda_l * E^l``,  ``E^l = style_error(masked_gram(F_l, m_l)[0], A_l)``,

    where a layer with mask area ``sum_p m_l(p) < min_area`` contributes exactly 0 (value and
    gradient; selected with ``jnp.where``, so no NaN through the unused branch). The taps summed
    are the keys of ``targets``; ``features`` may hold extra taps (e.g. content taps), which are
    ignored. ``masks`` and ``layer_weights`` must have every key of ``targets``.

    Vmap across segments with ``in_axes=(None, 0, 0, None)`` (masks ``[K, h_l, w_l]`` and targets
    ``[K, c_l, c_l]`` per tap).

    Args:
      features: tap -> ``[h_l, w_l, c_l]`` activations of the image being optimized.
      masks: tap -> ``[h_l, w_l]`` this segment's mask at that layer's resolution.
      targets: tap -> ``[c_l, c_l]`` target (style) Gram matrix for this segment.
      layer_weights: tap -> scalar ``lambda_l`` (Python float or traced array).
      min_area: layers whose mask area is below this are skipped (in layer positions).

    Returns:
      Scalar.
    """
    total = jnp.zeros((), jnp.float32)
    for tap in sorted(targets):
        g, area = masked_gram(features[tap], masks[tap])
        e = style_error(g, targets[tap])
        term = layer_weights[tap] * e
        total = total + jnp.where(area >= min_area, term, jnp.zeros_like(term))
    return total


def masked_style_grad_eq5(
    features: jax.Array, mask: jax.Array, target: jax.Array, eps: float = EPS
) -> jax.Array:
    """Closed-form gradient ``dE/dF`` of the masked style error (the paper's equation (5)).

    For ``E = style_error(masked_gram(F, m)[0], A)`` with ``N = max(sum_p m(p), eps)`` and ``c``
    channels::

        dE/dF_p = (4 / (c^2 N)) * m(p) * (G - A) F_p          (G, A symmetric)

    i.e. with ``Fm`` = ``F * m[..., None]`` flattened to ``[h w, c]``: ``dE/dF = (1/Z) Fm (G - A)``,
    ``Z = c^2 N / 4``. Derivation: ``dE/dG = 2 (G - A) / c^2`` and ``G`` is quadratic in ``F_p``
    with weight ``m(p) / N`` (``N`` does not depend on ``F``).

    Relation to the paper's equation (5): there ``F^l`` is ``[channels, positions]`` and
    ``dE_l/dF^l_{ij} = (1/Z) ((F^l)^T (G^l - A^l))_{ji}`` if ``F^l_{ij} > 0`` and 0 otherwise. In
    our ``[positions, channels]`` layout ``((F^l)^T (G - A))_{ji}`` is ``(F (G - A))_{p=j, i}``,
    which is the formula above with the mask weight ``m(p)`` and ``Z = c^2 N / 4`` (Gatys et al.
    use ``Z = N_l^2 M_l^2`` for their unnormalized Gram). The ReLU case split of equation (5) is the
    chain rule through the ReLU that produced ``F``; it lives outside this function (multiply the
    result by ``pre_activation > 0`` to get the gradient w.r.t. the pre-activation).

    A non-symmetric ``A`` is handled by using the symmetric part of ``G - A`` (the exact gradient
    in general); for symmetric ``A`` this is identical to the formula above.

    Args:
      features: ``[h, w, c]`` activations ``F``.
      mask: ``[h, w]`` segment mask ``m``.
      target: ``[c, c]`` target Gram ``A``.
      eps: smallest area denominator; must match the one used in ``masked_gram``.

    Returns:
      ``[h, w, c]`` gradient, same shape as ``features``.
    """
    h, w, c = features.shape
    g, area = masked_gram(features, mask, eps)
    d = g - target
    d = 0.5 * (d + d.T)
    n = jnp.maximum(area, eps)
    f = jnp.reshape(features, (h * w, c))
    m = jnp.reshape(mask, (h * w,)).astype(f.dtype)
    grad = (4.0 / (c * c * n)) * m[:, None] * (f @ d)
    return jnp.reshape(grad, (h, w, c))
