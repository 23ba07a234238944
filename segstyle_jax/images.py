"""Host-side image I/O and small image utilities (numpy + Pillow only, no jax).

Convention (stated here once; every other module refers to it):

* **Image.** A float32 numpy array of shape ``[h, w, 3]``, RGB, values in ``[0, 1]``.
* **Inputs.** :func:`load_image` accepts a path, a ``PIL.Image`` or an ndarray.
  Grayscale inputs (2-D arrays, ``[h, w, 1]``, Pillow ``L``/``I``/``I;16``/``F``/``1``)
  are replicated to 3 channels. An alpha channel (``RGBA``, ``LA``, ``[h, w, 4]``,
  palette transparency) is **dropped**, not composited: the colour channels are kept
  as stored, whatever the transparency. EXIF orientation is applied.
  ``uint8`` values are divided by 255 (``uint16`` / 16-bit Pillow images by 65535);
  float values are taken as already in ``[0, 1]`` and rejected if non-finite or outside
  ``[-1e-6, 1 + 1e-6]`` (then clipped to ``[0, 1]``).
* **Segmentations** (``masks``) follow :mod:`segstyle_jax.masks`: ``[K, h, w]`` float,
  summing to 1 at every pixel.
* **Errors.** Every problem with an input or output file raises :class:`ImageError`
  (a ``ValueError``) whose message starts with the file's name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from segstyle_jax.atomic import atomic_write

__all__ = [
    "ImageError",
    "PALETTE",
    "YIQ_FROM_RGB",
    "RGB_FROM_YIQ",
    "load_image",
    "resize_longest",
    "resize_to",
    "to_uint8",
    "save_image",
    "labelled_sheet",
    "overlay_segments",
    "luminance",
    "preserve_color",
]

_FLOAT_TOL = 1e-6

_SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}

#: Fixed segment colours for :func:`overlay_segments` (cycled when ``K`` is larger).
PALETTE = np.array(
    [
        [0.90, 0.12, 0.15],  # red
        [0.12, 0.35, 0.95],  # blue
        [0.10, 0.75, 0.20],  # green
        [0.98, 0.85, 0.10],  # yellow
        [0.85, 0.15, 0.85],  # magenta
        [0.10, 0.85, 0.90],  # cyan
        [1.00, 0.55, 0.00],  # orange
        [0.50, 0.25, 0.75],  # purple
        [0.55, 0.35, 0.15],  # brown
        [1.00, 0.60, 0.75],  # pink
        [0.55, 0.60, 0.10],  # olive
        [0.00, 0.50, 0.50],  # teal
    ],
    dtype=np.float32,
)

_BOUNDARY_COLOUR = np.array([0.05, 0.05, 0.05], dtype=np.float32)

#: NTSC RGB -> YIQ matrix (rows Y, I, Q), applied as ``yiq = YIQ_FROM_RGB @ rgb``.
YIQ_FROM_RGB = np.array(
    [
        [0.299, 0.587, 0.114],
        [0.595716, -0.274453, -0.321263],
        [0.211456, -0.522591, 0.311135],
    ],
    dtype=np.float64,
)
#: Exact inverse of :data:`YIQ_FROM_RGB` (its first column is ``(1, 1, 1)``).
RGB_FROM_YIQ = np.linalg.inv(YIQ_FROM_RGB)


class ImageError(ValueError):
    """A problem with an image file or image input; the message names the file."""


# --------------------------------------------------------------------------- loading


def _from_array(arr: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"{name}: expected an image of shape [h, w], [h, w, 1], [h, w, 3] or [h, w, 4], got {arr.shape}")
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        out = arr.astype(np.float32) / 65535.0
    elif np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise ImageError(f"{name}: float image contains non-finite values")
        lo, hi = float(out.min()), float(out.max())
        if lo < -_FLOAT_TOL or hi > 1.0 + _FLOAT_TOL:
            raise ImageError(f"{name}: float image values must lie in [0, 1], got [{lo:.6g}, {hi:.6g}]")
        out = np.clip(out, 0.0, 1.0)
    else:
        raise ImageError(f"{name}: unsupported image dtype {arr.dtype} (use uint8, uint16 or float)")
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    elif out.shape[2] == 4:
        out = out[:, :, :3]  # alpha dropped, not composited
    return np.ascontiguousarray(out, dtype=np.float32)


def _from_pil(img: Image.Image, name: str) -> np.ndarray:
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.float32) / 65535.0
    elif mode == "I":
        raw = np.asarray(img).astype(np.float64)
        scale = 65535.0 if raw.size and raw.max() > 255 else 255.0
        arr = np.clip(raw / scale, 0.0, 1.0).astype(np.float32)
    elif mode == "F":
        return _from_array(np.asarray(img, dtype=np.float32), name)
    else:
        if mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        arr = np.asarray(img.convert("RGB"))  # drops alpha for RGBA / LA
    return _from_array(arr, name)


def load_image(src) -> np.ndarray:
    """Load ``src`` (path, ``PIL.Image`` or ndarray) as a float32 ``[h, w, 3]`` image in [0, 1].

    See the module docstring for the conversion rules. Raises :class:`ImageError`
    ("<path>: file not found", "<path>: cannot read image: <reason>", or a bad array).
    """
    if isinstance(src, np.ndarray):
        return _from_array(src, "<ndarray>")
    if isinstance(src, Image.Image):
        name = getattr(src, "filename", "") or "<PIL.Image>"
        return _from_pil(src, name)
    if not isinstance(src, (str, os.PathLike)):
        raise ImageError(f"<{type(src).__name__}>: expected a path, a PIL.Image or an ndarray")
    path = Path(src)
    if not path.exists():
        raise ImageError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            img.load()
            return _from_pil(img, str(path))
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{path}: cannot read image: {exc}") from exc


# --------------------------------------------------------------------------- resizing


def _check_image(image, what: str = "image") -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what} must have shape [h, w, 3], got {image.shape}")
    return image


def resize_to(image, hw: tuple[int, int]) -> np.ndarray:
    """Resize to exactly ``hw = (h, w)`` with Pillow LANCZOS on float32 channels, clipped to [0, 1]."""
    image = _check_image(image)
    h, w = int(hw[0]), int(hw[1])
    if h < 1 or w < 1:
        raise ValueError(f"target size must be positive, got {hw}")
    if image.shape[:2] == (h, w):
        return image.copy()
    channels = []
    for c in range(3):
        ch = Image.fromarray(np.ascontiguousarray(image[:, :, c], dtype=np.float32))  # mode 'F'
        channels.append(np.asarray(ch.resize((w, h), Image.Resampling.LANCZOS), dtype=np.float32))
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0).astype(np.float32)


def resize_longest(image, size: int) -> np.ndarray:
    """Resize so the longest side is ``size`` (aspect kept, each side rounded and >= 1)."""
    image = _check_image(image)
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
    if h >= w:
        new = (size, new[1])
    else:
        new = (new[0], size)
    return resize_to(image, new)


# --------------------------------------------------------------------------- saving


def to_uint8(image) -> np.ndarray:
    """Clip to [0, 1], scale by 255, round, and cast to uint8."""
    return np.round(np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def save_image(path, image) -> Path:
    """Save ``image`` atomically to ``path`` (PNG or JPEG, from the suffix); return the path.

    Writes to a temporary file in the target folder and ``os.replace``-s it into place,
    creating parent folders as needed. On any error the temporary file is removed and
    nothing is left at ``path``; the error is raised as :class:`ImageError`.
    """
    path = Path(path)
    fmt = _SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"{path}: unsupported file suffix {path.suffix!r} (use .png, .jpg or .jpeg)")
    try:
        pixels = to_uint8(_check_image(image))
    except ValueError as exc:
        raise ImageError(f"{path}: {exc}") from exc
    try:
        with atomic_write(path) as fh:
            Image.fromarray(pixels).save(fh, format=fmt)
    except Exception as exc:
        raise ImageError(f"{path}: cannot write image: {exc}") from exc
    return path


# --------------------------------------------------------------------------- sheets and overlays


def labelled_sheet(
    images: Sequence[np.ndarray],
    labels: Sequence[str],
    height: int | None = None,
    pad: int = 4,
) -> np.ndarray:
    """Side-by-side contact sheet with a caption above each image.

    Every image is resized to a common ``height`` (default: the largest height) keeping
    its aspect; above each sits a white caption strip with its label drawn in dark text
    (``ImageFont.load_default()``). Columns are separated and surrounded by ``pad``
    white pixels; a column is widened (image centred) if its label is wider than the
    image. Returns a float32 ``[H, W, 3]`` image.
    """
    images = [_check_image(im, "each image") for im in images]
    labels = [str(s) for s in labels]
    if not images:
        raise ValueError("labelled_sheet needs at least one image")
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    pad = max(0, int(pad))
    height = int(height) if height is not None else max(im.shape[0] for im in images)
    if height < 1:
        raise ValueError(f"height must be positive, got {height}")
    resized = [
        resize_to(im, (height, max(1, int(round(im.shape[1] * height / im.shape[0]))))) for im in images
    ]

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [probe.textbbox((0, 0), s, font=font) if s else (0, 0, 0, 0) for s in labels]
    text_h = max(max(b[3] for b in boxes), 1)
    strip = text_h + pad
    widths = [max(im.shape[1], (b[2] - b[0]) + 2 * pad) for im, b in zip(resized, boxes)]
    total_w = pad + sum(w + pad for w in widths)
    total_h = pad + strip + height + pad

    sheet = Image.new("RGB", (total_w, total_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    x = pad
    for im, label, box, col_w in zip(resized, labels, boxes, widths):
        ox = x + (col_w - im.shape[1]) // 2
        sheet.paste(Image.fromarray(to_uint8(im)), (ox, pad + strip))
        if label:
            tx = x + (col_w - (box[2] - box[0])) // 2 - box[0]
            draw.text((tx, pad), label, fill=(20, 20, 20), font=font)
        x += col_w + pad
    return np.asarray(sheet, dtype=np.float32) / 255.0


def overlay_segments(image, masks: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Colour each segment of ``masks`` ``[K, h, w]`` and blend it over ``image``.

    Segment ``k`` gets ``PALETTE[k % len(PALETTE)]`` (red, blue, green, yellow, magenta,
    cyan, ...); soft masks mix colours. The result is ``(1 - alpha) * image + alpha *
    colour``, with 1-px dark boundaries drawn on pixels whose argmax label differs from
    the right or lower neighbour. Returns float32 ``[h, w, 3]`` in [0, 1].
    """
    image = _check_image(image)
    masks = np.asarray(masks, dtype=np.float32)
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(f"masks must have shape [K, {image.shape[0]}, {image.shape[1]}], got {masks.shape}")
    k = masks.shape[0]
    palette = PALETTE[np.arange(k) % len(PALETTE)]
    colour = np.einsum("khw,kc->hwc", masks, palette)
    out = (1.0 - alpha) * image + alpha * colour
    label = np.argmax(masks, axis=0)
    edge = np.zeros(label.shape, dtype=bool)
    edge[:, :-1] |= label[:, :-1] != label[:, 1:]
    edge[:-1, :] |= label[:-1, :] != label[1:, :]
    out[edge] = _BOUNDARY_COLOUR
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- colour


def luminance(image) -> np.ndarray:
    """ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B``: ``[h, w, 3]`` -> ``[h, w]``."""
    image = np.asarray(image, dtype=np.float32)
    return (image @ YIQ_FROM_RGB[0].astype(np.float32)).astype(np.float32)


def preserve_color(stylized, content, masks=None, keep=None) -> np.ndarray:
    """Luminance-only transfer (Gatys et al. 2016, "Preserving color in neural artistic style transfer").

    Both images are converted to YIQ with the NTSC matrix ::

        [Y]   [0.299     0.587     0.114   ] [R]
        [I] = [0.595716 -0.274453 -0.321263] [G]
        [Q]   [0.211456 -0.522591  0.311135] [B]

    The result takes Y from ``stylized`` and I, Q from ``content``, is converted back
    with the exact inverse matrix and clipped to [0, 1]. Since the inverse's first
    column is ``(1, 1, 1)``, this adds ``Y_stylized - Y_content`` to every channel of
    ``content``.

    With ``masks`` ``[K, h, w]`` and ``keep`` (one bool per segment; default all True),
    only kept segments use it: ``sum_k masks[k] * (preserved if keep[k] else stylized)``.
    """
    stylized = _check_image(stylized, "stylized")
    content = _check_image(content, "content")
    if stylized.shape != content.shape:
        raise ValueError(f"stylized {stylized.shape} and content {content.shape} must have the same shape")
    y = stylized.astype(np.float64) @ YIQ_FROM_RGB[0]
    iq = content.astype(np.float64) @ YIQ_FROM_RGB[1:].T
    yiq = np.concatenate([y[..., None], iq], axis=-1)
    preserved = np.clip(yiq @ RGB_FROM_YIQ.T, 0.0, 1.0).astype(np.float32)
    if masks is None:
        if keep is not None:
            raise ValueError("keep given without masks")
        return preserved
    masks = np.asarray(masks, dtype=np.float32)
    if masks.ndim != 3 or masks.shape[1:] != stylized.shape[:2]:
        raise ValueError(f"masks must have shape [K, {stylized.shape[0]}, {stylized.shape[1]}], got {masks.shape}")
    keep = np.ones(masks.shape[0], dtype=bool) if keep is None else np.asarray(keep, dtype=bool).reshape(-1)
    if keep.shape[0] != masks.shape[0]:
        raise ValueError(f"keep has {keep.shape[0]} entries for {masks.shape[0]} segments")
    w_keep = np.tensordot(keep.astype(np.float32), masks, axes=1)[..., None]
    w_style = np.tensordot((~keep).astype(np.float32), masks, axes=1)[..., None]
    return np.clip(w_keep * preserved + w_style * stylized, 0.0, 1.0).astype(np.float32)
