import colorsys
import os

import numpy as np
import pytest
from PIL import Image

from segstyle_jax.images import (
    ImageError,
    labelled_sheet,
    load_image,
    luminance,
    overlay_segments,
    preserve_color,
    resize_longest,
    resize_to,
    save_image,
    to_uint8,
)

rng = np.random.default_rng(0)


def _rand_u8(h=7, w=9, c=3):
    return rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)


def test_png_roundtrip_exact(tmp_path):
    u8 = _rand_u8()
    out = save_image(tmp_path / "sub" / "a.png", u8.astype(np.float32) / 255)
    assert out == tmp_path / "sub" / "a.png" and out.exists()
    assert sorted(os.listdir(out.parent)) == ["a.png"]  # no temp file left
    img = load_image(out)
    assert img.dtype == np.float32 and img.shape == (7, 9, 3)
    np.testing.assert_array_equal(to_uint8(img), u8)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_jpeg_save(tmp_path):
    p = save_image(tmp_path / "a.JPG", np.full((8, 8, 3), 0.5, np.float32))
    assert load_image(p).shape == (8, 8, 3)


def test_gray_and_rgba(tmp_path):
    g = _rand_u8(c=1)[:, :, 0]
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.shape == (7, 9, 3)
    np.testing.assert_array_equal(to_uint8(img), np.repeat(g[:, :, None], 3, 2))

    rgba = _rand_u8(c=4)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = load_image(str(tmp_path / "a.png"))
    np.testing.assert_array_equal(to_uint8(img), rgba[:, :, :3])  # alpha dropped, not composited
    np.testing.assert_array_equal(to_uint8(load_image(rgba)), rgba[:, :, :3])
    np.testing.assert_array_equal(to_uint8(load_image(g)), np.repeat(g[:, :, None], 3, 2))


def test_array_and_pil_inputs():
    u8 = _rand_u8()
    ref = u8.astype(np.float32) / 255
    np.testing.assert_allclose(load_image(u8), ref)
    np.testing.assert_allclose(load_image(ref.astype(np.float64)), ref)
    np.testing.assert_allclose(load_image(Image.fromarray(u8)), ref)
    assert load_image(u8).dtype == np.float32
    # tiny float overshoot is tolerated and clipped
    assert load_image(np.full((2, 2, 3), 1 + 5e-7)).max() == 1.0


@pytest.mark.parametrize("bad", [1.1, -0.01, np.nan, np.inf])
def test_float_out_of_range(bad):
    a = np.full((3, 3, 3), 0.5)
    a[1, 1, 1] = bad
    with pytest.raises(ImageError, match="<ndarray>"):
        load_image(a)


def test_missing_and_corrupt(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageError, match="nope.png: file not found"):
        load_image(missing)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(ImageError, match="junk.png: cannot read image"):
        load_image(junk)
    # truncated PNG
    Image.fromarray(_rand_u8(40, 40)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="t.png: cannot read image"):
        load_image(tmp_path / "t.png")


def test_exif_orientation(tmp_path):
    u8 = _rand_u8(4, 6)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    Image.fromarray(u8).save(tmp_path / "r.png", exif=exif)
    assert load_image(tmp_path / "r.png").shape == (6, 4, 3)


def test_resize():
    img = rng.random((30, 50, 3), dtype=np.float32)
    assert resize_longest(img, 20).shape == (12, 20, 3)
    assert resize_longest(img.transpose(1, 0, 2), 20).shape == (20, 12, 3)
    assert resize_longest(np.zeros((1, 100, 3), np.float32), 10).shape == (1, 10, 3)
    same = resize_longest(img, 50)
    np.testing.assert_array_equal(same, img)
    r = resize_to(img, (7, 11))
    assert r.shape == (7, 11, 3) and r.dtype == np.float32
    assert r.min() >= 0 and r.max() <= 1
    flat = resize_to(np.full((10, 10, 3), 0.25, np.float32), (4, 6))
    np.testing.assert_allclose(flat, 0.25, atol=1e-5)


def test_save_failure_leaves_nothing(tmp_path):
    img = np.zeros((4, 4, 3), np.float32)
    with pytest.raises(ImageError, match="a.xyz"):
        save_image(tmp_path / "a.xyz", img)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ImageError, match="b.png"):
        save_image(tmp_path / "b.png", np.zeros((4, 4), np.float32))  # bad shape
    assert os.listdir(tmp_path) == []
    # failure during the write: target is a directory -> replace fails, temp removed
    (tmp_path / "d.png").mkdir()
    with pytest.raises(ImageError, match="d.png"):
        save_image(tmp_path / "d.png", img)
    assert os.listdir(tmp_path) == ["d.png"] and os.listdir(tmp_path / "d.png") == []


def test_labelled_sheet():
    a = np.zeros((20, 10, 3), np.float32)
    b = np.full((10, 15, 3), 0.5, np.float32)
    sheet = labelled_sheet([a, b], ["content", "style"], pad=4)
    assert sheet.dtype == np.float32 and sheet.ndim == 3 and sheet.shape[2] == 3
    assert sheet.min() >= 0 and sheet.max() <= 1
    # images resized to height 20: b -> 20x30; image region at bottom (height 20 + pad)
    strip_h = sheet.shape[0] - 20 - 2 * 4
    assert strip_h > 4
    assert sheet.shape[1] >= 4 + 10 + 4 + 30 + 4
    strip = sheet[4 : 4 + strip_h]
    assert strip.min() < 0.5  # text drawn
    assert (strip > 0.99).mean() > 0.5  # mostly white background
    assert np.all(sheet[:4] == 1.0) and np.all(sheet[-4:] == 1.0)  # white padding
    # black image a occupies exactly its 20x10 region
    assert (sheet[4 + strip_h : 4 + strip_h + 20] == 0).all(axis=2).sum() == 20 * 10
    small = labelled_sheet([a, b], ["content", "style"], height=8)
    assert small.shape[0] == sheet.shape[0] - 12  # same caption strip, shorter images
    with pytest.raises(ValueError):
        labelled_sheet([a], ["x", "y"])


def test_overlay_segments():
    h, w = 10, 12
    img = np.full((h, w, 3), 0.8, np.float32)
    lab = np.zeros((h, w), int)
    lab[:, 6:] = 1
    lab[7:, :] = 2
    masks = np.stack([(lab == k).astype(np.float32) for k in range(3)])
    out = overlay_segments(img, masks)
    assert out.shape == (h, w, 3) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    # segment colours: red-ish, blue-ish, green
    assert out[2, 2, 0] > out[2, 2, 1] and out[2, 2, 0] > out[2, 2, 2]
    assert out[2, 9, 2] > out[2, 9, 0]
    assert out[9, 2, 1] > out[9, 2, 0]
    # boundaries darker than interior pixels
    lum = luminance(out)
    assert lum[2, 5] < 0.2 and lum[6, 2] < 0.2
    assert lum[2, 5] < lum[2, 2] and lum[2, 5] < lum[2, 9]
    assert lum[2, 2] > 0.3


def test_luminance():
    px = np.array([[[1.0, 0.0, 0.0]]], np.float32)
    assert luminance(px).shape == (1, 1)
    np.testing.assert_allclose(luminance(px)[0, 0], 0.299, rtol=1e-6)
    np.testing.assert_allclose(luminance(np.ones((2, 3, 3))), 1.0, rtol=1e-6)


def test_preserve_color_luminance_and_hue():
    stylized = rng.uniform(0.3, 0.7, (16, 16, 3)).astype(np.float32)
    content = rng.uniform(0.2, 0.8, (16, 16, 3)).astype(np.float32)
    out = preserve_color(stylized, content)
    assert out.shape == (16, 16, 3) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    ok = np.all((out > 1e-3) & (out < 1 - 1e-3), axis=-1)
    assert ok.mean() > 0.5
    np.testing.assert_allclose(luminance(out)[ok], luminance(stylized)[ok], atol=1e-2)

    gray = np.full((4, 4, 3), 0.5, np.float32)
    col = np.zeros((4, 4, 3), np.float32)
    col[..., :] = [0.7, 0.35, 0.3]
    out = preserve_color(gray, col)
    np.testing.assert_allclose(luminance(out), 0.5, atol=1e-4)
    h_out = colorsys.rgb_to_hsv(*out[0, 0])[0]
    h_col = colorsys.rgb_to_hsv(*col[0, 0])[0]
    assert abs(h_out - h_col) < 1e-3
    assert out[0, 0, 0] > out[0, 0, 1] > out[0, 0, 2]


def test_preserve_color_masks_keep():
    stylized = np.full((6, 8, 3), 0.5, np.float32)
    content = np.zeros((6, 8, 3), np.float32)
    content[..., :] = [0.2, 0.6, 0.3]
    masks = np.zeros((2, 6, 8), np.float32)
    masks[0, :, :4] = 1
    masks[1, :, 4:] = 1
    full = preserve_color(stylized, content)
    out = preserve_color(stylized, content, masks=masks, keep=[True, False])
    np.testing.assert_allclose(out[:, :4], full[:, :4], atol=1e-6)
    np.testing.assert_allclose(out[:, 4:], stylized[:, 4:], atol=1e-6)
    np.testing.assert_allclose(preserve_color(stylized, content, masks, [True, True]), full, atol=1e-6)
    np.testing.assert_allclose(preserve_color(stylized, content, masks, [False, False]), stylized, atol=1e-6)
    # soft masks blend
    soft = np.full((2, 6, 8), 0.5, np.float32)
    np.testing.assert_allclose(
        preserve_color(stylized, content, soft, [True, False]), 0.5 * full + 0.5 * stylized, atol=1e-6
    )
    with pytest.raises(ValueError):
        preserve_color(stylized, content, masks, [True])
