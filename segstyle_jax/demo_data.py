"""Demo inputs that ship in packages (no network): scikit-image's ``astronaut.png`` (public
domain, a person before a background), a hand-drawn person mask for it, and two styles in the
paper's pairing of a colourful image with a black-and-white one: ``hubble_deep_field.jpg`` for
the background and the grayscale ``brick.png`` texture for the person."""

from __future__ import annotations

import numpy as np

from segstyle_jax import masks


def _skimage_data():
    try:
        from skimage import data
    except ImportError as e:  # pragma: no cover - scikit-image is a dependency
        raise RuntimeError("the demo images come from scikit-image: pip install scikit-image") from e
    return data


def astronaut() -> np.ndarray:
    """``[512, 512, 3]`` uint8 RGB."""
    return _skimage_data().astronaut()


def astronaut_hand_mask() -> masks.Segmentation:
    """Person / background of :func:`astronaut`, drawn by hand as an ellipse (head and hair) plus a
    rectangle (shoulders and suit); labels ``("background", "person")``."""
    yy, xx = np.mgrid[:512, :512]
    person = (((yy - 150) / 110) ** 2 + ((xx - 210) / 80) ** 2 < 1) | ((yy > 220) & (xx > 60) & (xx < 380))
    return masks.from_label_map(person.astype(np.int32), {0: "background", 1: "person"})


def demo_styles() -> dict[str, np.ndarray]:
    """``{"background": hubble_deep_field, "person": brick}`` as uint8 arrays."""
    data = _skimage_data()
    return {"background": data.hubble_deep_field(), "person": data.brick()}
