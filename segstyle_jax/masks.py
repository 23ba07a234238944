"""Segmentations, layer masks and the locality weighting.

Conventions (stated here once; every other module refers to them):

* **Segmentation.** A float32 array ``masks`` of shape ``[K, h, w]`` with values in
  ``[0, 1]`` that sums to 1 at every pixel (hard label maps become one-hot, soft masks
  are allowed), plus one name per segment in ``labels``. The spatial size ``(h, w)``
  is that of the content image (see :func:`validate`).
* **Label order.** Label maps: sorted by integer label value (``[0, 2, 10]``, not by
  string). Colour maps: sorted by segment name. Soft masks: the order given.
  Only segments present in the input are kept (``K`` = distinct segments present); several
  labels or colours mapped to the same name are merged into one segment.
* **Layer level.** A VGG tap ``reluB_C`` / ``convB_C`` sits at level ``L = B - 1``
  (``relu1_*`` -> 0, ..., ``relu5_*`` -> 4). Its spatial size is obtained from
  ``(h, w)`` by ``L`` successive 2x2 stride-2 VALID pools, i.e. ``(h >> L, w >> L)``
  (floor division at every step; an odd size drops its last row/column, exactly like
  ``flax.linen.max_pool(x, (2, 2), (2, 2))``). Convolutions (SAME padding) keep the size.
* **Layer masks (the one rule).** ``m^l`` is the mask area-averaged to the layer size:
  at every pooling step each 2x2 block is replaced by its mean (:func:`pool_mask`).
  Convolutions leave the mask unchanged. Because averaging is linear, pooled masks of a
  partition still sum to 1 at every unit. :func:`erode_inside` is the optional
  alternative ("inside" units only: the whole receptive field lies in the segment).
* **Locality weighting** (paper 3.3, our form). ``d_k(p)`` is the exact Euclidean
  distance, in content pixels, from a pixel ``p`` of segment ``k`` (``M_k(p) >= 0.5``)
  to the nearest pixel not in segment ``k`` (:func:`distance_to_outside`, linear time).
  The weighted mask is ``M_k(p) * (1 - gamma * exp(-d_k(p) / rho))``
  (:func:`locality_weighted_masks`); it is taken to the layers with :func:`layer_masks`
  like any mask. It no longer sums to 1 across segments, which is fine: the masked
  Gram is normalized by each segment's own (weighted) area.

Host-side functions (reading, resizing, distance transform, feathering) use numpy and
return numpy arrays; :func:`pool_mask`, :func:`layer_masks`, :func:`erode_inside` and
:func:`locality_weighted_masks` are pure ``jax.numpy`` functions, safe under ``jit`` and
``vmap`` (``levels`` / ``taps`` are static Python values; ``gamma`` / ``rho`` may be
traced, so changing them never recompiles).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Segmentation",
    "from_label_map",
    "from_color_map",
    "from_soft_masks",
    "load_segmentation",
    "resize_segmentation",
    "validate",
    "pool_mask",
    "layer_masks",
    "tap_level",
    "erode_inside",
    "distance_to_outside",
    "brute_force_distance",
    "locality_weighted_masks",
    "feather",
    "VGG16_CONVS_PER_BLOCK",
    "VGG19_CONVS_PER_BLOCK",
]

#: Number of 3x3 convolutions in each of the five VGG blocks.
VGG16_CONVS_PER_BLOCK = (2, 2, 3, 3, 3)
VGG19_CONVS_PER_BLOCK = (2, 2, 4, 4, 4)

_SUM_TOL = 1e-4  # tolerance on "sums to 1 per pixel"


# ----------------------------------------------------------------------------------
# The Segmentation container
# ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Segmentation:
    """K segment masks of one image (host side, numpy).

    Attributes:
      masks: ``[K, h, w]`` float32 in ``[0, 1]``, summing to 1 at every pixel.
      labels: one unique name per segment, in mask order (e.g. ``("0", "1")`` for a
        label map, or user names such as ``("background", "person")``).
    """

    masks: np.ndarray
    labels: tuple[str, ...]

    def __post_init__(self):
        masks = np.asarray(self.masks, dtype=np.float32)
        if masks.ndim != 3:
            raise ValueError(f"Segmentation.masks must be [K, h, w]; got shape {masks.shape}")
        labels = tuple(str(l) for l in self.labels)
        if len(labels) != masks.shape[0]:
            raise ValueError(
                f"Segmentation has {masks.shape[0]} masks but {len(labels)} labels {labels}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"Segmentation labels must be unique; got {labels}")
        object.__setattr__(self, "masks", masks)
        object.__setattr__(self, "labels", labels)

    @property
    def num_segments(self) -> int:
        return self.masks.shape[0]

    @property
    def hw(self) -> tuple[int, int]:
        return (int(self.masks.shape[1]), int(self.masks.shape[2]))

    def hard(self) -> np.ndarray:
        """``[h, w]`` int index of the dominant segment at each pixel (argmax)."""
        return np.argmax(self.masks, axis=0)

    def __repr__(self) -> str:
        k, h, w = self.masks.shape
        return f"Segmentation(K={k}, h={h}, w={w}, labels={self.labels})"


# ----------------------------------------------------------------------------------
# Constructors
# ----------------------------------------------------------------------------------


def _one_hot_by_name(index: np.ndarray, names: Sequence[str]) -> Segmentation:
    """``index`` [h, w] ints in ``range(len(names))`` -> one-hot masks, merging equal
    names (the first occurrence fixes the order)."""
    order: list[str] = []
    group = np.empty(len(names), dtype=np.int64)
    for i, n in enumerate(names):
        if n not in order:
            order.append(n)
        group[i] = order.index(n)
    seg_index = group[index]
    masks = (seg_index[None, :, :] == np.arange(len(order))[:, None, None]).astype(np.float32)
    return Segmentation(masks=masks, labels=tuple(order))


def from_label_map(labels: np.ndarray, names: Mapping[int, str] | None = None) -> Segmentation:
    """Integer label map ``[h, w]`` -> one-hot :class:`Segmentation`.

    ``K`` is the number of distinct labels present, in increasing label order. ``names``
    maps label values to segment names (default ``str(label)``); every label present
    must have a name; labels mapped to the same name are merged.
    """
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"a label map must be [h, w]; got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("label map is empty")
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)) \
                or not np.all(arr == np.round(arr)):
            raise ValueError(
                f"a label map must hold integer labels; got dtype {arr.dtype} with "
                "non-integer values (use from_soft_masks for soft masks)")
        arr = arr.astype(np.int64)
    values, index = np.unique(arr, return_inverse=True)
    index = index.reshape(arr.shape)
    if names is None:
        seg_names = [str(int(v)) for v in values]
    else:
        missing = [int(v) for v in values if int(v) not in names]
        if missing:
            raise ValueError(
                f"label(s) {missing} appear in the label map but have no name in `names` "
                f"(named: {sorted(names)})")
        seg_names = [str(names[int(v)]) for v in values]
    return _one_hot_by_name(index, seg_names)


_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


def _parse_color(key) -> tuple[int, int, int]:
    if isinstance(key, str):
        m = _HEX.match(key.strip())
        if not m:
            raise ValueError(f"colour {key!r} is not '#rrggbb' or an (r, g, b) tuple")
        v = int(m.group(1), 16)
        return (v >> 16) & 255, (v >> 8) & 255, v & 255
    t = tuple(int(c) for c in key)
    if len(t) != 3 or any(c < 0 or c > 255 for c in t):
        raise ValueError(f"colour {key!r} must be three integers in 0..255")
    return t  # type: ignore[return-value]


def _fmt_color(c: int) -> str:
    r, g, b = (c >> 16) & 255, (c >> 8) & 255, c & 255
    return f"({r}, {g}, {b}) #{r:02x}{g:02x}{b:02x}"


def from_color_map(rgb: np.ndarray,
                   table: Mapping[tuple[int, int, int] | str, str]) -> Segmentation:
    """Colour-coded segmentation ``uint8 [h, w, 3]`` -> one-hot :class:`Segmentation`.

    ``table`` maps colours (``(r, g, b)`` tuples or ``'#rrggbb'`` strings) to segment
    names; several colours may share a name (merged). ``K`` is the number of names
    present, sorted by name. An alpha channel (``[h, w, 4]``) is ignored. A pixel whose
    colour is not in the table is an error that lists each such colour and its pixel count.
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"a colour map must be [h, w, 3] (or 4 with alpha); got {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.integer) and arr.min() >= 0 and arr.max() <= 255:
            arr = arr.astype(np.uint8)
        else:
            raise ValueError(f"a colour map must be uint8 0..255; got dtype {arr.dtype}")
    if not table:
        raise ValueError("colour table is empty")
    arr = arr[..., :3].astype(np.int64)
    code = (arr[..., 0] << 16) | (arr[..., 1] << 8) | arr[..., 2]
    lut: dict[int, str] = {}
    for key, name in table.items():
        r, g, b = _parse_color(key)
        lut[(r << 16) | (g << 8) | b] = str(name)
    colors, index, counts = np.unique(code, return_inverse=True, return_counts=True)
    index = index.reshape(code.shape)
    unknown = [(int(c), int(n)) for c, n in zip(colors, counts) if int(c) not in lut]
    if unknown:
        unknown.sort(key=lambda cn: -cn[1])
        shown = ", ".join(f"{_fmt_color(c)}: {n} px" for c, n in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        total = sum(n for _, n in unknown)
        raise ValueError(
            f"colour map has {total} pixel(s) in {len(unknown)} colour(s) not in the colour "
            f"table: {shown}{more}. Known colours: "
            + ", ".join(f"{_fmt_color(c)} -> {n!r}" for c, n in lut.items()))
    color_names = [lut[int(c)] for c in colors]
    order = sorted(set(color_names))
    group = np.array([order.index(n) for n in color_names], dtype=np.int64)
    return _one_hot_by_name(group[index], order)


def _as_unit_mask(m, i: int) -> np.ndarray:
    a = np.asarray(m)
    if a.ndim != 2:
        raise ValueError(f"soft mask {i} must be [h, w]; got shape {a.shape}")
    if a.dtype == bool:
        return a.astype(np.float32)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if np.issubdtype(a.dtype, np.integer):
        if a.min() < 0 or a.max() > 1:
            raise ValueError(
                f"soft mask {i} has integer dtype {a.dtype} with values outside 0..1 "
                "(integer masks must be uint8 0..255 or 0/1)")
        return a.astype(np.float32)
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"soft mask {i} has non-finite values")
    lo, hi = float(a.min()), float(a.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"soft mask {i} has values in [{lo:g}, {hi:g}], outside [0, 1]")
    return np.clip(a, 0.0, 1.0)


def from_soft_masks(masks: Sequence[np.ndarray] | np.ndarray,
                    names: Sequence[str] | None = None) -> Segmentation:
    """K grayscale masks ``[h, w]`` (float in ``[0, 1]``, bool, or uint8 0..255) ->
    :class:`Segmentation`, normalized to sum 1 at every pixel (``M_k / sum_j M_j``).

    Order is the order given; ``names`` default to ``"0", "1", ...``. Pixels where every
    mask is 0 belong to no segment: that is an error naming how many pixels are
    uncovered (add a background mask, e.g. ``1 - sum``).
    """
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        masks = [masks]
    ms = [_as_unit_mask(m, i) for i, m in enumerate(masks)]
    if not ms:
        raise ValueError("from_soft_masks needs at least one mask")
    shapes = {m.shape for m in ms}
    if len(shapes) != 1:
        raise ValueError(f"soft masks differ in size: {[m.shape for m in ms]}")
    stack = np.stack(ms, axis=0)
    if names is None:
        names = [str(i) for i in range(len(ms))]
    names = [str(n) for n in names]
    if len(names) != len(ms):
        raise ValueError(f"{len(ms)} soft masks but {len(names)} names {names}")
    total = stack.sum(axis=0)
    uncovered = total <= 1e-6
    n_unc = int(uncovered.sum())
    if n_unc:
        ys, xs = np.nonzero(uncovered)
        raise ValueError(
            f"{n_unc} of {total.size} pixels are uncovered (every soft mask is 0 there, "
            f"e.g. at row {ys[0]}, col {xs[0]}); add a mask that covers them")
    stack = stack / total[None]
    return Segmentation(masks=stack.astype(np.float32), labels=tuple(names))


# ----------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------


def _open_image(path):
    from PIL import Image, UnidentifiedImageError

    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"segmentation file not found: {p}")
    if os.path.isdir(p):
        raise ValueError(f"segmentation path is a directory, not an image: {p}")
    try:
        img = Image.open(p)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read segmentation image {p}: {e}") from e
    return img


def _gray_to_unit(img, path) -> np.ndarray:
    mode = img.mode
    if mode in ("RGB", "RGBA", "LA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("L")
        mode = "L"
    a = np.asarray(img)
    if mode == "1":
        return a.astype(np.float32)
    if mode == "L":
        return a.astype(np.float32) / 255.0
    if mode.startswith("I;16") or (mode == "I" and a.max(initial=0) > 255):
        return np.clip(a.astype(np.float32) / 65535.0, 0.0, 1.0)
    if mode == "I":
        return a.astype(np.float32) / 255.0
    if mode == "F":
        return a.astype(np.float32)
    raise ValueError(f"unsupported image mode {mode!r} for a soft mask: {os.fspath(path)}")


def load_segmentation(path_or_paths,
                      color_table: Mapping | None = None,
                      names=None) -> Segmentation:
    """Read a segmentation from image file(s).

    * one path, no ``color_table``: an integer label map. PNG modes ``L``, ``I``,
      ``I;16`` and ``1`` give their pixel values; mode ``P`` gives palette indices. An
      RGB(A) image is accepted only when it is gray (R == G == B); otherwise pass a
      ``color_table``. ``names``: ``dict[int, str]`` (see :func:`from_label_map`).
    * one path and ``color_table``: a colour-coded map (:func:`from_color_map`).
    * a list/tuple of paths: one grayscale soft mask per segment
      (:func:`from_soft_masks`); ``names``: a list of segment names.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file
    for anything unreadable or unusable.
    """
    if isinstance(path_or_paths, (list, tuple)):
        paths = list(path_or_paths)
        if color_table is not None:
            raise ValueError("color_table applies to a single colour-coded image, not a list")
        if not paths:
            raise ValueError("load_segmentation got an empty list of mask files")
        arrays = []
        for p in paths:
            arrays.append(_gray_to_unit(_open_image(p), p))
        shapes = [a.shape for a in arrays]
        if len(set(shapes)) != 1:
            detail = ", ".join(f"{os.fspath(p)}: {s[0]}x{s[1]}" for p, s in zip(paths, shapes))
            raise ValueError(f"mask files differ in size (h x w): {detail}")
        try:
            return from_soft_masks(arrays, names=names)
        except ValueError as e:
            raise ValueError(f"{e} (files: {[os.fspath(p) for p in paths]})") from e

    path = path_or_paths
    img = _open_image(path)
    try:
        if color_table is not None:
            if names is not None:
                raise ValueError("pass segment names in color_table, not in `names`")
            rgb = np.asarray(img.convert("RGB"))
            return from_color_map(rgb, color_table)
        mode = img.mode
        if mode in ("L", "P", "1", "I") or mode.startswith("I;16"):
            a = np.asarray(img)
            if mode == "1":
                a = a.astype(np.int64)
            return from_label_map(a.astype(np.int64), names=names)
        if mode in ("RGB", "RGBA", "LA"):
            a = np.asarray(img.convert("RGB"))
            if np.all(a[..., 0] == a[..., 1]) and np.all(a[..., 1] == a[..., 2]):
                return from_label_map(a[..., 0].astype(np.int64), names=names)
            raise ValueError(
                f"image mode {mode} with colours: a colour-coded segmentation needs a "
                "color_table mapping (r, g, b) -> name")
        raise ValueError(f"unsupported image mode {mode!r} for a label map")
    except ValueError as e:
        raise ValueError(f"{os.fspath(path)}: {e}") from e


# ----------------------------------------------------------------------------------
# Resizing and validation
# ----------------------------------------------------------------------------------


def resize_segmentation(seg: Segmentation, size_hw: tuple[int, int],
                        method: str = "auto") -> Segmentation:
    """Resize every mask to ``size_hw = (h, w)`` and renormalize to sum 1 per pixel.

    ``method="auto"`` (default): an exact area average (box filter) when neither side
    grows, otherwise bilinear (PIL's, which is antialiased along any side that shrinks).
    Both are linear, positive and normalized, so the result is still a soft partition;
    it is clipped to ``[0, 1]`` and divided by its per-pixel sum to remove rounding.
    Hard label maps become soft at the seams. ``method="nearest"`` keeps masks hard
    (nearest neighbour), ``"area"`` / ``"bilinear"`` force one filter.
    """
    from PIL import Image

    h, w = (int(size_hw[0]), int(size_hw[1]))
    if h <= 0 or w <= 0:
        raise ValueError(f"target size must be positive; got {size_hw}")
    h0, w0 = seg.hw
    if (h, w) == (h0, w0):
        return seg
    if method == "auto":
        method = "area" if (h <= h0 and w <= w0) else "bilinear"
    R = Image.Resampling
    filters = {"area": R.BOX, "bilinear": R.BILINEAR, "nearest": R.NEAREST}
    if method not in filters:
        raise ValueError(f"method must be auto/area/bilinear/nearest; got {method!r}")
    out = np.empty((seg.num_segments, h, w), np.float32)
    for k in range(seg.num_segments):
        im = Image.fromarray(np.ascontiguousarray(seg.masks[k], dtype=np.float32))  # mode F
        out[k] = np.asarray(im.resize((w, h), resample=filters[method]), dtype=np.float32)
    out = np.clip(out, 0.0, 1.0)
    total = out.sum(axis=0, keepdims=True)
    out = np.where(total > 1e-12, out / np.maximum(total, 1e-12), 1.0 / seg.num_segments)
    return Segmentation(masks=out.astype(np.float32), labels=seg.labels)


def validate(seg: Segmentation, content_hw: tuple[int, int], min_pixels: int = 1) -> None:
    """Check that ``seg`` fits a content image of size ``content_hw = (h, w)``.

    Raises ``ValueError`` if the sizes differ (the message gives both), if the masks are
    not finite, in ``[0, 1]`` and summing to 1 per pixel, or if a segment has fewer than
    ``min_pixels`` pixels with mask ``>= 0.5`` (the message names the label).
    """
    h, w = int(content_hw[0]), int(content_hw[1])
    sh, sw = seg.hw
    if (sh, sw) != (h, w):
        raise ValueError(
            f"segmentation size {sh}x{sw} (h x w) differs from the content image size "
            f"{h}x{w}; resize it with resize_segmentation(seg, ({h}, {w}))")
    m = seg.masks
    if not np.all(np.isfinite(m)):
        raise ValueError("segmentation masks contain non-finite values")
    if m.min() < -_SUM_TOL or m.max() > 1 + _SUM_TOL:
        raise ValueError(f"segmentation masks must lie in [0, 1]; got [{m.min():g}, {m.max():g}]")
    err = np.abs(m.sum(axis=0) - 1.0)
    if err.max() > _SUM_TOL:
        raise ValueError(
            f"segmentation masks must sum to 1 at every pixel; {int((err > _SUM_TOL).sum())} "
            f"pixels are off (max error {err.max():.3g})")
    counts = (m >= 0.5).reshape(m.shape[0], -1).sum(axis=1)
    small = [(lab, int(c)) for lab, c in zip(seg.labels, counts) if c < min_pixels]
    if small:
        detail = ", ".join(f"{lab!r} has {c}" for lab, c in small)
        raise ValueError(
            f"segment(s) too small: {detail} pixel(s) with mask >= 0.5 "
            f"(need at least {min_pixels})")


# ----------------------------------------------------------------------------------
# Layer masks (jax)
# ----------------------------------------------------------------------------------


def _as_float(x) -> jnp.ndarray:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x


def _pool2_avg(x: jnp.ndarray) -> jnp.ndarray:
    h2, w2 = x.shape[-2] // 2, x.shape[-1] // 2
    x = x[..., : 2 * h2, : 2 * w2]
    x = x.reshape(x.shape[:-2] + (h2, 2, w2, 2))
    return x.mean(axis=(-3, -1))


def _check_levels(shape, levels: int) -> None:
    if not isinstance(levels, (int, np.integer)) or levels < 0:
        raise ValueError(f"levels must be a static int >= 0; got {levels!r}")
    if len(shape) < 2:
        raise ValueError(f"mask must be [..., h, w]; got shape {shape}")
    h, w = shape[-2:]
    if (h >> levels) == 0 or (w >> levels) == 0:
        raise ValueError(
            f"a {h}x{w} mask is too small for {levels} 2x2 pooling step(s) "
            f"(needs at least {1 << levels} pixels per side)")


def pool_mask(mask, levels: int) -> jnp.ndarray:
    """``levels`` successive 2x2 stride-2 VALID average pools.

    ``[..., h, w] -> [..., h >> levels, w >> levels]`` (floor at every step: an odd side
    drops its last row/column, as ``flax.linen.avg_pool/max_pool`` with VALID padding).
    ``levels`` must be a static Python int; leading axes (segments, batch) are kept, so
    it works unbatched, batched, under ``jit`` and under ``vmap``.
    """
    x = _as_float(mask)
    _check_levels(x.shape, levels)
    for _ in range(int(levels)):
        x = _pool2_avg(x)
    return x


_TAP = re.compile(r"^(relu|conv)(\d+)_(\d+)$")


def _parse_tap(tap: str) -> tuple[int, int]:
    m = _TAP.match(tap) if isinstance(tap, str) else None
    if not m:
        raise ValueError(f"bad VGG tap name {tap!r}; expected like 'relu4_2' or 'conv1_1'")
    block, conv = int(m.group(2)), int(m.group(3))
    if not 1 <= block <= 5 or conv < 1:
        raise ValueError(f"bad VGG tap name {tap!r}: block must be 1..5 and conv >= 1")
    return block, conv


def tap_level(tap: str) -> int:
    """Pooling level of a VGG tap: ``'relu4_2'`` -> 3, ``'conv1_1'`` -> 0.

    Raises ``ValueError`` for names not of the form ``(relu|conv)B_C`` with ``B`` in 1..5.
    """
    return _parse_tap(tap)[0] - 1


def layer_masks(mask, taps: Iterable[str]) -> dict[str, jnp.ndarray]:
    """Mask(s) at the resolution of each tap: ``[..., h, w] -> {tap: [..., h_l, w_l]}``.

    Each distinct level is computed once, by pooling the previous level further (the
    same numbers as :func:`pool_mask` from scratch). The dict follows ``taps``' order.
    """
    taps = tuple(taps)
    x = _as_float(mask)
    levels = {t: tap_level(t) for t in taps}
    if not taps:
        return {}
    _check_levels(x.shape, max(levels.values()))
    by_level: dict[int, jnp.ndarray] = {0: x}
    cur, cur_level = x, 0
    for lvl in sorted(set(levels.values())):
        while cur_level < lvl:
            cur = _pool2_avg(cur)
            cur_level += 1
        by_level[lvl] = cur
    return {t: by_level[levels[t]] for t in taps}


def _min_filter3(x: jnp.ndarray) -> jnp.ndarray:
    # 3x3 min over the last two axes; positions outside the image are ignored
    # (padding is not content, so the border does not count as "outside").
    nd = x.ndim
    return jax.lax.reduce_window(
        x, jnp.array(jnp.inf, x.dtype), jax.lax.min,
        (1,) * (nd - 2) + (3, 3), (1,) * nd, "SAME")


def _min_pool2(x: jnp.ndarray) -> jnp.ndarray:
    h2, w2 = x.shape[-2] // 2, x.shape[-1] // 2
    x = x[..., : 2 * h2, : 2 * w2].reshape(x.shape[:-2] + (h2, 2, w2, 2))
    return x.min(axis=(-3, -1))


def erode_inside(mask, tap: str | int,
                 convs_per_block: Sequence[int] = VGG19_CONVS_PER_BLOCK) -> jnp.ndarray:
    """Optional "inside" layer mask: the minimum of the mask over each unit's receptive
    field, ``[..., h, w] -> [..., h_l, w_l]`` (same size as :func:`pool_mask`).

    A unit at tap ``reluB_C`` sees the input through the 3x3 convolutions of blocks
    ``1..B-1`` (``convs_per_block``), their 2x2 pools, and ``C`` more convolutions. The
    same chain with each convolution replaced by a 3x3 min filter and each pool by a 2x2
    min gives, for a hard mask, 1 exactly on units whose whole receptive field lies in the
    segment (a soft erosion for soft masks). Zero padding at the image border is not
    counted as outside. An int ``tap`` ``L`` means ``relu{L+1}_1``.
    """
    if isinstance(tap, (int, np.integer)):
        block, conv = int(tap) + 1, 1
        if not 1 <= block <= 5:
            raise ValueError(f"level must be 0..4; got {tap}")
    else:
        block, conv = _parse_tap(tap)
    if conv > convs_per_block[block - 1]:
        raise ValueError(f"tap {tap!r}: block {block} has only {convs_per_block[block - 1]} convs")
    x = _as_float(mask)
    _check_levels(x.shape, block - 1)
    for b in range(block - 1):
        for _ in range(convs_per_block[b]):
            x = _min_filter3(x)
        x = _min_pool2(x)
    for _ in range(conv):
        x = _min_filter3(x)
    return x


# ----------------------------------------------------------------------------------
# Distance transform and locality weighting
# ----------------------------------------------------------------------------------


def _inside_masks(seg_masks) -> tuple[np.ndarray, bool]:
    m = np.asarray(seg_masks)
    squeeze = m.ndim == 2
    if squeeze:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"masks must be [K, h, w] (or [h, w]); got shape {m.shape}")
    return m >= 0.5, squeeze


def distance_to_outside(seg_masks: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance (in pixels) to the nearest pixel outside each segment.

    ``[K, h, w] -> [K, h, w]`` float32 (``[h, w]`` also accepted). A pixel belongs to
    segment ``k`` where ``mask_k >= 0.5``; there ``d_k`` is the distance to the nearest
    pixel with ``mask_k < 0.5`` (so a pixel next to the boundary has 1); outside the
    segment ``d_k = 0``. A segment with no outside pixel (it covers the whole image) gets
    ``h + w`` everywhere, a finite value beyond any in-image distance, so its locality
    weight is ~1. Linear time (``scipy.ndimage.distance_transform_edt``); equals
    :func:`brute_force_distance` exactly.
    """
    from scipy.ndimage import distance_transform_edt

    inside, squeeze = _inside_masks(seg_masks)
    k, h, w = inside.shape
    out = np.zeros((k, h, w), np.float32)
    for i in range(k):
        if inside[i].all():
            out[i] = float(h + w)
        elif inside[i].any():
            out[i] = distance_transform_edt(inside[i]).astype(np.float32)
    return out[0] if squeeze else out


def brute_force_distance(mask_hw: np.ndarray) -> np.ndarray:
    """The paper's quadratic search, for tests and benchmarks only.

    ``[h, w] -> [h, w]`` float32: for each pixel with ``mask >= 0.5``, the minimum over
    all pixels with ``mask < 0.5`` of the Euclidean distance; 0 outside; ``h + w`` when
    there is no outside pixel (same conventions as :func:`distance_to_outside`).
    O((h w)^2) time, vectorised one image row at a time.
    """
    m = np.asarray(mask_hw)
    if m.ndim != 2:
        raise ValueError(f"brute_force_distance takes one [h, w] mask; got shape {m.shape}")
    inside = m >= 0.5
    h, w = inside.shape
    out = np.zeros((h, w), np.float32)
    oy, ox = np.nonzero(~inside)
    if oy.size == 0:
        out[inside] = float(h + w)
        return out
    oy = oy.astype(np.int64)
    ox = ox.astype(np.int64)
    for y in range(h):
        xs = np.nonzero(inside[y])[0].astype(np.int64)
        if xs.size == 0:
            continue
        d2 = (y - oy)[None, :] ** 2 + (xs[:, None] - ox[None, :]) ** 2
        out[y, xs] = np.sqrt(d2.min(axis=1).astype(np.float64)).astype(np.float32)
    return out


def locality_weighted_masks(masks, dist, gamma, rho) -> jnp.ndarray:
    """``M_k * (1 - gamma * exp(-d_k / rho))``: down-weight pixels near segment borders.

    Args:
      masks: ``[K, h, w]`` segment masks ``M_k`` (any leading shape works).
      dist: same shape, :func:`distance_to_outside` of the masks (pixels).
      gamma: strength, a scalar (may be traced); clipped to ``[0, 1]``. 0 returns ``masks``.
      rho: width in pixels, a scalar (may be traced); clamped to ``>= 1e-3``.

    Returns ``[K, h, w]`` in ``[0, 1]``. Pure ``jnp``: under ``jit`` with ``gamma``/``rho``
    as arguments, changing them does not recompile.
    """
    m = _as_float(masks)
    d = jnp.asarray(dist, dtype=m.dtype)
    g = jnp.clip(jnp.asarray(gamma, dtype=m.dtype), 0.0, 1.0)
    r = jnp.maximum(jnp.asarray(rho, dtype=m.dtype), 1e-3)
    return m * (1.0 - g * jnp.exp(-d / r))


def feather(masks, sigma_px: float) -> np.ndarray:
    """Gaussian-blur each mask (``sigma_px`` pixels, reflecting borders) and renormalize
    to sum 1 per pixel; for softening seams when compositing multipass results.

    ``[K, h, w] -> [K, h, w]`` float32 (numpy, host). ``sigma_px == 0`` returns the masks
    unchanged (as float32).
    """
    from scipy.ndimage import gaussian_filter

    m = np.asarray(masks.masks if isinstance(masks, Segmentation) else masks, dtype=np.float32)
    if m.ndim != 3:
        raise ValueError(f"masks must be [K, h, w]; got shape {m.shape}")
    if sigma_px < 0:
        raise ValueError(f"sigma_px must be >= 0; got {sigma_px}")
    if sigma_px == 0:
        return m
    out = np.stack([gaussian_filter(m[k].astype(np.float64), sigma=float(sigma_px),
                                    mode="reflect") for k in range(m.shape[0])])
    out = np.clip(out, 0.0, None)
    total = out.sum(axis=0, keepdims=True)
    out = out / np.maximum(total, 1e-12)
    return out.astype(np.float32)
