"""Quality metrics: does each segment wear its own style, how much leaks at the boundaries, how
far the content moved.

For an output image ``x`` with segment masks ``M_k`` and style images ``a_s``:

* style matrix ``D[k, s] = sum_l lambda_l ||G_k^l(x) - Gram(a_s)^l||_F^2 / c_l^2`` with the masked,
  area-normalized Gram of :func:`segstyle_jax.losses.masked_gram` and whole-image style Grams;
* a segment *wears its own style* when its own style ``s(k)`` is the nearest column of its row;
* separation ``D[k, s(k)] / min_{s != s(k)} D[k, s]``: below 1 means nearer its own style;
* the same matrix on a boundary band (the pixels of segment ``k`` within ``band_px`` of another
  segment, from :func:`segstyle_jax.masks.distance_to_outside`): *band separation* is how clearly
  the border still wears its own style (lower is better);
* *band leakage* ``D_band[k, j](p) / D_band[k, j](x)`` for the nearest other style ``j``, with
  ``p`` the content photo: above 1 means the border moved toward another segment's style
  (leaked), below 1 that it moved away; lower is better;
* content distance: mean squared difference of the content-tap features of ``x`` and ``p``.

All distances use the same VGG, taps and layer weights as the optimization.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from segstyle_jax import losses, masks as masks_lib
from segstyle_jax.engine import style_grams
from segstyle_jax.vgg import VGG


@functools.partial(jax.jit, static_argnums=(0, 1))
def _style_matrix(model: VGG, style_taps, params, image, seg_masks, style_grams, layer_weights):
    """``[K, S]`` style distances for masks ``[K, h, w]`` and the ``S`` style images' Grams, a list
    of ``{tap: [1, c, c]}``."""
    feats = model.apply({"params": params}, image)
    lw = {t: layer_weights[i] for i, t in enumerate(style_taps)}
    layer_masks = jax.vmap(lambda m: masks_lib.layer_masks(m, style_taps))(seg_masks)
    targets = {t: jnp.concatenate([g[t] for g in style_grams]) for t in style_taps}
    per_style = jax.vmap(losses.segments_style_loss, in_axes=(None, None, 0, None))  # -> [S, K]
    k = seg_masks.shape[0]
    tiled = {t: jnp.broadcast_to(g[:, None], (g.shape[0], k) + g.shape[1:]) for t, g in targets.items()}
    return per_style(feats, layer_masks, tiled, lw).T


@functools.partial(jax.jit, static_argnums=(0,))
def _content_distance(model: VGG, params, image, photo):
    """Mean over ``model.taps`` of :func:`segstyle_jax.losses.content_loss` between the features of
    ``image`` and ``photo`` (both ``[h, w, 3]``)."""
    feats_x, feats_p = model.apply({"params": params}, image), model.apply({"params": params}, photo)
    return jnp.mean(jnp.stack([losses.content_loss(feats_x[t], feats_p[t]) for t in model.taps]))


def boundary_band(seg_masks: np.ndarray, band_px: float) -> np.ndarray:
    """``[K, h, w]`` hard masks of the pixels of each segment within ``band_px`` of its border."""
    dist = masks_lib.distance_to_outside(seg_masks)
    return ((dist > 0) & (dist <= band_px)).astype(np.float32)


def _summary(matrix: np.ndarray, own: Sequence[int], style_names: Sequence[str], labels: Sequence[str]):
    rows = []
    for k, label in enumerate(labels):
        d = matrix[k]
        others = [d[s] for s in range(len(style_names)) if s != own[k]]
        rows.append({
            "segment": label,
            "own_style": style_names[own[k]],
            "distances": {name: float(d[s]) for s, name in enumerate(style_names)},
            "nearest_style": style_names[int(np.argmin(d))],
            "wears_own_style": bool(int(np.argmin(d)) == own[k]),
            "separation": float(d[own[k]] / min(others)) if others and min(others) > 0 else None,
        })
    return rows


def evaluate(model: VGG, params, image, content, seg_masks, labels: Sequence[str], style_images: Sequence,
             style_names: Sequence[str], own_style: Sequence[int], style_taps: Sequence[str],
             content_taps: Sequence[str], layer_weights=None, band_px: float = 8.0) -> dict:
    """Metrics of ``image`` ``[h, w, 3]`` (see the module docstring) as a JSON-ready dict.

    ``model.taps`` must contain ``style_taps`` and ``content_taps``; ``own_style[k]`` indexes
    ``style_images`` for segment ``k``. ``band_px`` is the boundary band width in pixels.
    """
    style_taps, content_taps = tuple(style_taps), tuple(content_taps)
    # host arrays and whole compiled programs: op by op (and jnp.asarray on host arrays), every
    # operation compiled a program of its own, about a second each on a GPU
    layer_weights = np.ones(len(style_taps), np.float32) if layer_weights is None \
        else np.asarray(layer_weights, np.float32)
    style_model = model.clone(taps=style_taps)
    grams = [style_grams(style_model, params, s) for s in style_images]
    image = np.asarray(image, np.float32)
    seg_masks = np.asarray(seg_masks, np.float32)
    full = np.asarray(_style_matrix(model, style_taps, params, image, seg_masks, grams, layer_weights))
    band_masks = boundary_band(seg_masks, band_px)
    band = np.asarray(_style_matrix(model, style_taps, params, image, band_masks, grams, layer_weights))
    photo = np.asarray(content, np.float32)
    band_photo = np.asarray(_style_matrix(model, style_taps, params, photo, band_masks, grams, layer_weights))
    content_distance = float(_content_distance(model.clone(taps=content_taps), params, image, photo))

    segments = _summary(full, own_style, style_names, labels)
    band_rows = _summary(band, own_style, style_names, labels)
    for k, (row, b, area) in enumerate(zip(segments, band_rows, band_masks.sum(axis=(1, 2)))):
        row["band_distances"] = b["distances"]
        row["band_separation"] = b["separation"] if area > 0 else None
        row["band_pixels"] = int(area)
        others = [s for s in range(len(style_names)) if s != own_style[k]]
        j = min(others, key=lambda s: band[k, s]) if others else None
        row["band_leakage"] = float(band_photo[k, j] / band[k, j]) if j is not None and area > 0 and band[k, j] > 0 else None
    seps = [r["separation"] for r in segments if r["separation"] is not None]
    band_seps = [r["band_separation"] for r in segments if r["band_separation"] is not None]
    leaks = [r["band_leakage"] for r in segments if r["band_leakage"] is not None]
    return {
        "styles": list(style_names),
        "segments": segments,
        "all_wear_own_style": all(r["wears_own_style"] for r in segments),
        "mean_separation": float(np.mean(seps)) if seps else None,
        "mean_band_separation": float(np.mean(band_seps)) if band_seps else None,
        "mean_band_leakage": float(np.mean(leaks)) if leaks else None,
        "content_distance": content_distance,
        "band_px": band_px,
    }
