"""Multi-region segmentation for photos without people: k-means on VGG features, colour and position.

Offline and in JAX (no model beyond the VGG weights the style transfer already uses).

* :func:`kmeans` is pure ``jax``: ``n_init`` runs (default 4, vmapped) of greedy k-means++ seeding and
  Lloyd iterations in a ``lax.fori_loop``, all in one jitted function; the lowest-inertia run wins, and
  the result is deterministic for the key. An empty cluster is re-seeded to the point farthest from its
  current centre (the j-th empty cluster of an iteration takes the j-th farthest point), so nothing
  divides by zero and no NaN can appear, even with fewer distinct points than ``k``.
* :func:`kmeans_segmentation` (``"kmeans:K"``): the image is resized so its longest side is
  ``work_size`` (the *working grid*, ``[hw, ww]``). Per working pixel the feature vector is the
  concatenation of three groups, each scaled to total variance 1 over the image and then weighted:

  - VGG activations at ``tap`` (default ``relu3_1``), bilinearly upsampled to the working grid, each
    channel standardized (dead channels dropped), divided by ``sqrt(#channels)``;
  - CIE Lab colour, centred, divided by its total standard deviation (at least 10 Lab units, so a
    near-uniform image is not blown up), times ``color_weight``;
  - ``(y, x)`` position in units of the longest side, scaled so a square image has total variance 1,
    times ``position_weight * POSITION_SCALE`` (``POSITION_SCALE = 0.5``).

  :func:`kmeans` clusters them into ``k`` groups. Cleanup on the working grid: the one-hot labels are
  Gaussian-smoothed (``smooth_px``, in image pixels; default 1% of the longest side) and argmax-ed,
  then every 8-connected component smaller than ``min_fraction`` of the image is merged into the
  surrounding labels (each of its pixels takes the label of the nearest kept pixel). The labels are
  brought to the image size through one-hot maps smoothed by 1 working pixel and bilinearly resized
  (argmax), the small-component rule is applied once more at full size, and the surviving ``K'`` labels are
  renumbered in reading order: by mean row (top to bottom, rounded to 1% of the height), then by mean
  column (left to right). Names are ``"0" .. "K'-1"``; masks are one-hot.
* :func:`slic_segmentation` (``"slic:K"``): scikit-image SLIC superpixels (Lab, ``n_segments=k``,
  ``compactness`` :data:`SLIC_COMPACTNESS`) on the working grid, then the same cleanup, resizing and
  ordering. SLIC is deterministic; ``seed`` is accepted for a uniform interface and unused.
* :func:`segment_image` dispatches a spec parsed by :func:`parse_segmenter`: ``"person"`` (the selfie
  model, :func:`segstyle_jax.person.person_segmentation`, threshold 0.5), ``"kmeans:K"``, ``"slic:K"``.

Rules for ``K``: ``K >= 2``; ``K`` must not exceed the working-grid pixel count / 16, the number of
distinct colours of the image (8-bit RGB), nor ``1 / min_fraction``; otherwise :class:`ValueError`
names the largest ``K`` that works. If fewer than ``K`` regions survive the cleanup, a
:class:`RegionSegmentationWarning` says how many did (not an error; the result has ``K' < K``
segments).

Host-side numpy (resizing, Lab conversion, connected components) around two jitted parts: the VGG
features with their standardization, and :func:`kmeans`.
"""

from __future__ import annotations

import re
import warnings
from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from segstyle_jax import vgg
from segstyle_jax.engine import as_float32
from segstyle_jax.masks import Segmentation, from_label_map

__all__ = [
    "SEGMENTERS",
    "POSITION_SCALE",
    "SLIC_COMPACTNESS",
    "RegionSegmentationWarning",
    "kmeans",
    "kmeans_segmentation",
    "slic_segmentation",
    "max_regions",
    "parse_segmenter",
    "segment_image",
]

#: Segmenter names understood by :func:`parse_segmenter` (``person``; ``kmeans:K``; ``slic:K``).
SEGMENTERS = ("person", "kmeans", "slic")
#: Base scale of the position group (``position_weight = 1`` means half the weight of a unit group).
POSITION_SCALE = 0.5
#: SLIC compactness (Lab colour distance vs. grid distance); lower follows colour more closely.
SLIC_COMPACTNESS = 8.0
#: Pixels of the working grid per allowed region (``K <= hw * ww // PIXELS_PER_REGION``).
PIXELS_PER_REGION = 16
_LAB_FLOOR = 10.0  # minimum colour standard deviation (Lab units) used for scaling


class RegionSegmentationWarning(UserWarning):
    """Fewer regions than requested survived the cleanup (small or fragmented clusters were merged)."""


# ----------------------------------------------------------------------------------------------
# k-means


def _sqdist(points, centers):
    """``[N, D], [k, D] -> [N, k]`` squared Euclidean distances (clipped at 0)."""
    d = (jnp.sum(points * points, axis=1)[:, None] - 2.0 * points @ centers.T
         + jnp.sum(centers * centers, axis=1)[None, :])
    return jnp.maximum(d, 0.0)


def _kmeanspp(points, k: int, key):
    """Greedy k-means++ seeding (as in scikit-learn): the first centre uniform; each next one the best,
    by the resulting potential ``sum_i min_j |x_i - c_j|^2``, of ``2 + floor(ln k)`` candidates drawn
    with probability ~ D^2."""
    n = points.shape[0]
    trials = 2 + int(np.log(k))
    key0, key_rest = jax.random.split(key)
    first = jax.random.randint(key0, (), 0, n)
    centers = jnp.zeros((k, points.shape[1]), points.dtype).at[0].set(points[first])
    d2 = jnp.sum((points - points[first]) ** 2, axis=1)
    keys = jax.random.split(key_rest, max(k - 1, 1))

    def body(i, carry):
        centers, d2 = carry
        any_far = jnp.any(d2 > 0)
        logits = jnp.where(d2 > 0, jnp.log(jnp.where(d2 > 0, d2, 1.0)), -jnp.inf)
        logits = jnp.where(any_far, logits, 0.0)  # all points coincide with centres: uniform
        cand = jax.random.categorical(keys[i - 1], logits, shape=(trials,))
        cand_d2 = jnp.minimum(d2[None, :], _sqdist(points, points[cand]).T)  # [trials, N]
        best = jnp.argmin(cand_d2.sum(axis=1))
        centers = centers.at[i].set(points[cand[best]])
        return centers, cand_d2[best]

    centers, _ = lax.fori_loop(1, k, body, (centers, d2))
    return centers


def _assign(points, centers):
    d = _sqdist(points, centers)
    a = jnp.argmin(d, axis=1)
    return a, jnp.take_along_axis(d, a[:, None], axis=1)[:, 0]


def _kmeans_single(points, key, k: int, iters: int):
    centers = _kmeanspp(points, k, key)

    def lloyd(_, centers):
        a, mind = _assign(points, centers)
        onehot = jax.nn.one_hot(a, k, dtype=points.dtype)  # [N, k]
        counts = onehot.sum(axis=0)
        sums = onehot.T @ points
        empty = counts == 0
        rank = jnp.clip(jnp.cumsum(empty) - 1, 0, k - 1)  # j-th empty cluster -> j-th farthest point
        _, far = lax.top_k(mind, k)
        reseed = points[far[rank]]
        return jnp.where(empty[:, None], reseed, sums / jnp.maximum(counts, 1.0)[:, None])

    centers = lax.fori_loop(0, iters, lloyd, centers)
    a, mind = _assign(points, centers)
    return centers, a.astype(jnp.int32), mind.sum()


@partial(jax.jit, static_argnames=("k", "iters", "n_init"))
def _kmeans_jit(points, key, k: int, iters: int, n_init: int):
    if key.ndim == 0:  # an integer seed: its key made inside the program (outside, two more programs compile)
        key = jax.random.PRNGKey(key)
    centers, a, inertia = jax.vmap(lambda kk: _kmeans_single(points, kk, k, iters))(jax.random.split(key, n_init))
    best = jnp.argmin(inertia)  # first of the lowest: deterministic
    return centers[best], a[best]


def kmeans(points, k: int, key, iters: int = 25, n_init: int = 4):
    """k-means clustering: ``points [N, D]`` float32 -> ``(centers [k, D], assignment [N] int32)``.

    ``key``: a ``jax.random`` key (or an int seed); the result is deterministic for it. ``n_init``
    independent runs (greedy k-means++ seeding, then ``iters`` Lloyd iterations), vmapped in one jitted
    function; the run with the lowest inertia ``sum_i |x_i - c(x_i)|^2`` wins. Empty clusters are re-seeded
    to the points farthest from their centres, so the output never holds NaN; with fewer distinct
    points than ``k`` some centres coincide and their clusters stay empty (``assignment`` then uses
    fewer than ``k`` values). Requires ``1 <= k <= N``.
    """
    points = as_float32(points)
    if points.ndim != 2:
        raise ValueError(f"points must be [N, D]; got shape {points.shape}")
    k, iters = int(k), int(iters)
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of points ({n}); got {k}")
    if iters < 0:
        raise ValueError(f"iters must be >= 0; got {iters}")
    if int(n_init) < 1:
        raise ValueError(f"n_init must be >= 1; got {n_init}")
    if not bool(np.isfinite(np.asarray(points)).all()):
        raise ValueError("points contain non-finite values")
    if isinstance(key, (int, np.integer)):
        # a seed of 32 bits becomes its key inside the program (the same key); others made here
        key = np.uint32(key) if 0 <= int(key) < 2**32 else jax.random.PRNGKey(int(key))
    return _kmeans_jit(points, key, k, iters, int(n_init))


# ----------------------------------------------------------------------------------------------
# features


def _needed_params(params, arch: str, tap: str) -> dict:
    names = vgg.layer_names(arch)
    upto = names[: names.index(tap) + 1]
    return {n: params[n] for n in upto if n in params}


@lru_cache(maxsize=16)
def _feature_fn(arch: str, tap: str, mean: tuple, std: tuple):
    model = vgg.VGG(arch=arch, taps=(tap,), pooling="max", mean=mean, std=std)

    @jax.jit
    def features(params, image, lab, yx, color_weight, position_weight):
        """``image [hw, ww, 3]``, ``lab [hw, ww, 3]``, ``yx [hw, ww, 2]`` -> points ``[hw*ww, D]``."""
        hw, ww = image.shape[:2]
        f = model.apply({"params": params}, image)[tap]  # [h_l, w_l, c]
        f = jax.image.resize(f, (hw, ww, f.shape[-1]), method="linear")
        f = f.reshape(hw * ww, -1)
        std_f = f.std(axis=0)
        alive = std_f > 1e-6 * (1.0 + jnp.max(std_f))
        f = jnp.where(alive, (f - f.mean(axis=0)) / jnp.where(alive, std_f, 1.0), 0.0)
        f = f / jnp.sqrt(jnp.maximum(alive.sum(), 1).astype(f.dtype))
        c = lab.reshape(hw * ww, 3)
        c = c - c.mean(axis=0)
        c = c / jnp.maximum(jnp.sqrt(jnp.sum(c.var(axis=0))), _LAB_FLOOR) * color_weight
        p = yx.reshape(hw * ww, 2)
        p = (p - p.mean(axis=0)) * (jnp.sqrt(6.0) * POSITION_SCALE * position_weight)
        return jnp.concatenate([f, c, p], axis=1)

    return features


def _lab(image: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(np.clip(image, 0.0, 1.0)).astype(np.float32)


def _positions(hw: int, ww: int) -> np.ndarray:
    """``[hw, ww, 2]`` pixel centres ``(y, x)`` in units of the longest side."""
    s = float(max(hw, ww))
    yy, xx = np.mgrid[:hw, :ww].astype(np.float32)
    return np.stack([(yy + 0.5) / s, (xx + 0.5) / s], axis=-1)


# ----------------------------------------------------------------------------------------------
# checks


def _distinct_colours(image: np.ndarray, enough: int) -> int:
    """Distinct 8-bit RGB colours of ``image`` (stops early once ``enough`` are seen in a subsample)."""
    from segstyle_jax.images import to_uint8

    px = to_uint8(image).reshape(-1, 3).astype(np.int32)
    code = (px[:, 0] << 16) | (px[:, 1] << 8) | px[:, 2]
    if code.size > 65536:
        sub = np.unique(code[:: code.size // 65536])
        if sub.size >= enough:
            return int(sub.size)
    return int(np.unique(code).size)


def _work_hw(hw: tuple[int, int], work_size: int) -> tuple[int, int]:
    h, w = hw
    scale = work_size / max(h, w)
    return (work_size, max(1, int(round(w * scale)))) if h >= w else (max(1, int(round(h * scale))), work_size)


def max_regions(image, work_size: int = 128, min_fraction: float = 0.01) -> int:
    """Largest ``K`` the region segmenters accept for ``image``: the minimum of the working-grid pixel
    count / 16, the number of distinct 8-bit colours, and ``1 / min_fraction`` (when > 0)."""
    from segstyle_jax.images import load_image

    img = load_image(image)
    hw, ww = _work_hw(img.shape[:2], int(work_size))
    limit = (hw * ww) // PIXELS_PER_REGION
    if min_fraction > 0:
        limit = min(limit, int(np.floor(1.0 / min_fraction + 1e-9)))
    return min(limit, _distinct_colours(img, limit + 1))


def _check_k(img: np.ndarray, k, work_size: int, min_fraction: float, what: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"{what}: K must be an integer; got {k!r}")
    k = int(k)
    if k < 2:
        raise ValueError(f"{what}: K must be >= 2 (K = 1 is the whole image); got {k}")
    hw, ww = _work_hw(img.shape[:2], work_size)
    by_pixels = (hw * ww) // PIXELS_PER_REGION
    by_fraction = int(np.floor(1.0 / min_fraction + 1e-9)) if min_fraction > 0 else None
    colours = _distinct_colours(img, k)
    limits = [(by_pixels, f"the {hw}x{ww} working grid allows at most {by_pixels} regions "
                          f"({PIXELS_PER_REGION} pixels each; raise work_size for more)"),
              (colours, f"the image has only {colours} distinct colour(s)")]
    if by_fraction is not None:
        limits.append((by_fraction, f"min_fraction={min_fraction:g} allows at most {by_fraction} regions"))
    largest = min(limit for limit, _ in limits)
    if k > largest:
        why = "; ".join(msg for limit, msg in limits if k > limit)
        hint = (f"the largest K that works is {largest}" if largest >= 2
                else "no K >= 2 works (nothing to segment)")
        raise ValueError(f"{what}: K={k} is too large for this image: {why}; {hint}")
    return k


def _check_args(work_size, min_fraction, smooth_px):
    if int(work_size) != work_size or work_size < 8:
        raise ValueError(f"work_size must be an integer >= 8; got {work_size}")
    if not 0.0 <= float(min_fraction) < 0.5:
        raise ValueError(f"min_fraction must be in [0, 0.5); got {min_fraction}")
    if smooth_px is not None and not float(smooth_px) >= 0:
        raise ValueError(f"smooth_px must be >= 0 or None; got {smooth_px}")


# ----------------------------------------------------------------------------------------------
# cleanup (host side)


def _smooth_labels(labels: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smoothed one-hot then argmax (a soft mode filter). ``[h, w]`` ints -> ``[h, w]``."""
    from scipy.ndimage import gaussian_filter

    if sigma <= 0:
        return labels
    present = np.unique(labels)
    best = np.full(labels.shape, -1.0, np.float32)
    out = labels.copy()
    for c in present:
        m = gaussian_filter((labels == c).astype(np.float32), sigma=sigma, mode="nearest")
        better = m > best
        out[better], best[better] = c, m[better]
    return out


def _merge_small_components(labels: np.ndarray, min_pixels: int, max_rounds: int = 5) -> np.ndarray:
    """Give every 8-connected component smaller than ``min_pixels`` to the surrounding labels: each of
    its pixels takes the label of the nearest pixel of a kept component. ``[h, w]`` -> ``[h, w]``."""
    from scipy.ndimage import distance_transform_edt, label as cc_label

    if min_pixels <= 1:
        return labels
    structure = np.ones((3, 3), bool)
    labels = labels.copy()
    for _ in range(max_rounds):
        small = np.zeros(labels.shape, bool)
        biggest = (0, None)
        for c in np.unique(labels):
            comp, n = cc_label(labels == c, structure=structure)
            if n == 0:
                continue
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            j = int(np.argmax(sizes))
            if sizes[j] > biggest[0]:
                biggest = (int(sizes[j]), comp == j)
            small |= (sizes < min_pixels)[comp] & (comp > 0)
        if not small.any():
            break
        if small.all():  # everything is fragmented: keep the largest component only
            small &= ~biggest[1]
        _, (iy, ix) = distance_transform_edt(small, return_indices=True)
        labels = labels[iy, ix]
    return labels


def _resize_labels(labels: np.ndarray, out_hw: tuple[int, int], sigma: float) -> np.ndarray:
    """Labels ``[hw, ww]`` -> ``[h, w]``: per label a (lightly smoothed) one-hot map, bilinearly resized
    (antialiased when shrinking), then argmax."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    h, w = out_hw
    if labels.shape == (h, w):
        return labels
    best = np.full((h, w), -1.0, np.float32)
    out = np.zeros((h, w), labels.dtype)
    for c in np.unique(labels):
        m = (labels == c).astype(np.float32)
        if sigma > 0:
            m = gaussian_filter(m, sigma=sigma, mode="nearest")
        big = np.asarray(Image.fromarray(m, mode="F").resize((w, h), Image.Resampling.BILINEAR), np.float32)
        better = big > best
        out[better], best[better] = c, big[better]
    return out


def _reading_order(labels: np.ndarray) -> np.ndarray:
    """Renumber labels ``0..K'-1`` by mean row (rounded to 1% of the height), then mean column."""
    h, w = labels.shape
    present = np.unique(labels)
    yy, xx = np.mgrid[:h, :w]
    keys = []
    for c in present:
        m = labels == c
        keys.append((int(round(100.0 * yy[m].mean() / max(h, 1))), float(xx[m].mean()), int(c)))
    keys.sort()
    lut = np.zeros(int(present.max()) + 1, np.int32)
    for new, (_, _, c) in enumerate(keys):
        lut[c] = new
    return lut[labels]


def _finish(labels_work: np.ndarray, k: int, img_hw: tuple[int, int], smooth_px: float | None,
            min_fraction: float, method: str) -> Segmentation:
    """Cleanup on the working grid, resize to the image, cleanup again, order, warn."""
    h, w = img_hw
    hw, ww = labels_work.shape
    scale = hw / h  # working pixels per image pixel
    if smooth_px is None:
        sigma_work = 0.01 * max(hw, ww)
    else:
        sigma_work = float(smooth_px) * scale
    labels = _smooth_labels(labels_work, sigma_work)
    labels = _merge_small_components(labels, int(np.ceil(min_fraction * hw * ww)))
    labels = _resize_labels(labels, (h, w), sigma=1.0 if (h, w) != (hw, ww) else 0.0)
    labels = _merge_small_components(labels, int(np.ceil(min_fraction * h * w)))
    labels = _reading_order(labels)
    n = int(labels.max()) + 1
    if n < k:
        warnings.warn(
            f"{method}: only {n} of the {k} requested regions survived the cleanup (clusters smaller than "
            f"min_fraction={min_fraction:g} of the image or fragmented into such pieces were merged into "
            f"their surroundings); the segmentation has {n} segments. Lower min_fraction or smooth_px, or "
            f"ask for fewer regions.", RegionSegmentationWarning, stacklevel=3)
    return from_label_map(labels)


# ----------------------------------------------------------------------------------------------
# segmenters


def kmeans_segmentation(image, k: int, weights=None, seed: int = 0, position_weight: float = 1.0,
                        color_weight: float = 1.0, tap: str = "relu3_1", work_size: int = 128,
                        smooth_px: float | None = None, min_fraction: float = 0.01) -> Segmentation:
    """Segment ``image`` into ``k`` regions by k-means on VGG features, Lab colour and position.

    Args:
      image: ``[h, w, 3]`` float in ``[0, 1]`` (or anything :func:`segstyle_jax.images.load_image` takes).
      k: number of regions, ``>= 2`` and at most :func:`max_regions` (else ``ValueError`` naming it).
      weights: :class:`~segstyle_jax.weights.VGGWeights`; ``None`` loads the default weights.
      seed: k-means++ seed; the result is deterministic for it.
      position_weight, color_weight: weights of the position and colour groups (the VGG group has 1).
      tap: VGG layer whose activations are used (``relu3_1``: textures at a ~40 px receptive field).
      work_size: longest side of the working grid the features are computed and clustered on.
      smooth_px: Gaussian smoothing of the label maps, in image pixels (``None``: 1% of the longest
        side; ``0``: none).
      min_fraction: connected pieces smaller than this fraction of the image are merged into their
        surroundings.

    Returns a one-hot :class:`~segstyle_jax.masks.Segmentation` ``[K', h, w]`` named ``"0" .. "K'-1"``
    in reading order (top to bottom, then left to right); ``K' < k`` only after a
    :class:`RegionSegmentationWarning`.
    """
    from segstyle_jax.images import load_image, resize_to
    from segstyle_jax.weights import load_default_weights

    img = load_image(image)
    _check_args(work_size, min_fraction, smooth_px)
    work_size = int(work_size)
    k = _check_k(img, k, work_size, float(min_fraction), f"kmeans:{k}")
    if weights is None:
        weights = load_default_weights()
    names = vgg.layer_names(weights.arch)
    if tap not in names:
        raise ValueError(f"tap {tap!r} is not a layer of {weights.arch}; layers are {', '.join(names)}")
    level = vgg.tap_block(tap) - 1 if not tap.startswith("pool") else vgg.tap_block(tap)
    hw, ww = _work_hw(img.shape[:2], work_size)
    if min(hw, ww) < 2 ** level:
        raise ValueError(f"the working grid {hw}x{ww} is too small for tap {tap!r} (needs >= {2 ** level} "
                         f"pixels per side): raise work_size or use an earlier tap")
    work = resize_to(img, (hw, ww))
    fn = _feature_fn(weights.arch, tap, tuple(map(float, weights.mean)), tuple(map(float, weights.std)))
    # host arrays straight into the compiled function: jnp.asarray would compile a conversion per array
    params = _needed_params(weights.params, weights.arch, tap)
    points = fn(params, np.asarray(work, np.float32), np.asarray(_lab(work), np.float32),
                np.asarray(_positions(hw, ww), np.float32), np.float32(color_weight), np.float32(position_weight))
    _, assignment = kmeans(points, k, int(seed))  # the key made inside the program (kmeans)
    labels_work = np.asarray(assignment).reshape(hw, ww)
    return _finish(labels_work, k, img.shape[:2], smooth_px, float(min_fraction), f"kmeans:{k}")


def slic_segmentation(image, k: int, seed: int = 0, work_size: int = 128, smooth_px: float | None = None,
                      min_fraction: float = 0.01, compactness: float = SLIC_COMPACTNESS) -> Segmentation:
    """Segment ``image`` into about ``k`` SLIC superpixels (scikit-image, Lab, ``start_label=0``).

    Computed on the working grid (longest side ``work_size``), then cleaned, resized and ordered as in
    :func:`kmeans_segmentation`. SLIC may return a few more or fewer than ``k`` segments; fewer than
    ``k`` warns. ``seed`` is unused (SLIC is deterministic).
    """
    from skimage.segmentation import slic

    from segstyle_jax.images import load_image, resize_to

    del seed
    img = load_image(image)
    _check_args(work_size, min_fraction, smooth_px)
    work_size = int(work_size)
    k = _check_k(img, k, work_size, float(min_fraction), f"slic:{k}")
    hw, ww = _work_hw(img.shape[:2], work_size)
    work = resize_to(img, (hw, ww))
    labels_work = slic(work.astype(np.float64), n_segments=k, compactness=float(compactness), start_label=0,
                       channel_axis=-1, convert2lab=True, enforce_connectivity=False)
    _, labels_work = np.unique(labels_work, return_inverse=True)
    labels_work = labels_work.reshape(hw, ww).astype(np.int32)
    return _finish(labels_work, k, img.shape[:2], smooth_px, float(min_fraction), f"slic:{k}")


_SPEC = re.compile(r"^\s*([A-Za-z_]+)\s*(?::\s*(\S*)\s*)?$")


def parse_segmenter(spec: str) -> tuple[str, int | None]:
    """``"person"`` -> ``("person", None)``; ``"kmeans:3"`` -> ``("kmeans", 3)``; ``"slic:5"`` ->
    ``("slic", 5)``. Names are case-insensitive; ``K`` must be an integer >= 2. Anything else is a
    :class:`ValueError` that lists the accepted forms."""
    forms = "'person', 'kmeans:K' or 'slic:K' (K an integer >= 2)"
    if not isinstance(spec, str):
        raise ValueError(f"segmenter must be a string, {forms}; got {spec!r}")
    m = _SPEC.match(spec)
    if m is None:
        raise ValueError(f"cannot parse segmenter {spec!r}: expected {forms}")
    name, arg = m.group(1).lower(), m.group(2)
    if name not in SEGMENTERS:
        raise ValueError(f"unknown segmenter {m.group(1)!r}: expected {forms}")
    if name == "person":
        if arg is not None:
            raise ValueError(f"segmenter 'person' takes no K; got {spec!r}")
        return "person", None
    if arg is None or arg == "":
        raise ValueError(f"segmenter {name!r} needs the number of regions: '{name}:K', e.g. '{name}:3'")
    if not re.fullmatch(r"[+]?\d+", arg):
        raise ValueError(f"segmenter {spec!r}: K must be an integer >= 2; got {arg!r}")
    k = int(arg)
    if k < 2:
        raise ValueError(f"segmenter {spec!r}: K must be >= 2 (K = 1 is the whole image); got {k}")
    return name, k


def segment_image(image, spec: str, weights=None, seed: int = 0) -> Segmentation:
    """Segment ``image`` with the segmenter named by ``spec`` (see :func:`parse_segmenter`):
    ``person`` -> :func:`segstyle_jax.person.person_segmentation` (threshold 0.5), ``kmeans:K`` ->
    :func:`kmeans_segmentation` (``weights``, ``seed``), ``slic:K`` -> :func:`slic_segmentation`."""
    name, k = parse_segmenter(spec)
    if name == "person":
        from segstyle_jax.person import person_segmentation

        return person_segmentation(image, threshold=0.5)
    if name == "kmeans":
        return kmeans_segmentation(image, k, weights=weights, seed=seed)
    return slic_segmentation(image, k, seed=seed)
