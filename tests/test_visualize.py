"""ovs.overlay / Segmenter.show / the mask PNG palettes, checked on the rendered pixels.

The legend is located from the drawing itself: the panel is everything right of the photo,
rows are found from the swatch colours, and "text" means non-white, non-swatch pixels.
The VOC palette is checked against imgviz's label_colormap (an independent implementation).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ovs
from ovs.cli import read_image
from ovs.visualize import label_image, overlay, overlay_palette, palette, save_label_png

REPO = Path(ovs.__file__).resolve().parent.parent
CAT = REPO / "ovs" / "data" / "example_cat.jpg"
NAMES = ["cat", "wall", "never present", "a floor, with synonyms"]


def _photo(h=300, w=451):
    img = read_image(CAT)
    if img.shape[:2] != (h, w):
        img = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
    return img


def _labels(h, w):
    lab = np.zeros((h, w), np.int32)          # class 0 "cat"
    lab[:, w // 3:] = 1                        # "wall"
    lab[h // 2:, :] = 3                        # "a floor, with synonyms"
    lab[: h // 10, : w // 10] = -1             # ignored corner
    return lab                                 # class 2 has no pixel


def _panel(im: Image.Image, w: int) -> np.ndarray:
    return np.asarray(im)[:, w:].astype(np.int32)


def _swatch_rows(panel: np.ndarray, colour) -> np.ndarray:
    """Row indices of the panel where the exact colour fills a run of >= 6 pixels."""
    hit = np.all(panel == np.asarray(colour), axis=2)
    return np.flatnonzero(hit.sum(axis=1) >= 6)


def test_overlay_size_legend_rows_and_text():
    h, w = 300, 451
    img, lab = _photo(h, w), _labels(h, w)
    im = overlay(img, lab, NAMES)
    assert im.mode == "RGB" and im.height == h and im.width > w
    assert np.array_equal(np.asarray(im)[:, :w].shape, (h, w, 3))
    panel = _panel(im, w)
    pal = overlay_palette(len(NAMES))
    present = [3, 1, 0]                        # by decreasing share
    tops = []
    for k in present:
        rows = _swatch_rows(panel, pal[k])
        assert rows.size >= 8, f"class {NAMES[k]!r}: no legend swatch found"
        tops.append(rows[0])
    assert tops == sorted(tops), f"legend rows not ordered by share: swatch tops {tops}"
    assert _swatch_rows(panel, pal[2]).size == 0, "a class with no pixel is listed in the legend"
    # the ignored row: grey swatch
    assert _swatch_rows(panel, (128, 128, 128)).size >= 8
    # each row: text right of the swatch, with a visible gap between name and percentage
    for k in present:
        rows = _swatch_rows(panel, pal[k])
        band = panel[rows[0]: rows[-1] + 1]
        swatch_cols = np.flatnonzero(np.all(band == pal[k], axis=2).any(axis=0))
        ink = (band < 200).any(axis=2).any(axis=0)       # dark pixels per column
        ink[: swatch_cols[-1] + 2] = False               # leave out the swatch and its outline
        cols = np.flatnonzero(ink)
        assert cols.size > 20, f"row {NAMES[k]!r}: no text drawn"
        gaps = np.diff(cols)
        assert gaps.max() >= 8, (f"row {NAMES[k]!r}: no visible gap between name and "
                                 f"percentage (largest blank run {gaps.max() - 1} px)")
    # the panel is sized from the text: the last ink column is within the panel's padding
    ink_cols = np.flatnonzero((panel < 200).any(axis=2).any(axis=0))
    assert panel.shape[1] - 1 - ink_cols[-1] <= 40


def test_overlay_tints_are_visible():
    h, w = 120, 160
    img = np.full((h, w, 3), 128, np.uint8)             # a grey photo: only the tint shows
    lab = np.zeros((h, w), np.int32); lab[:, w // 2:] = 1
    out = np.asarray(overlay(img, lab, ["a", "b"], legend=False)).astype(int)
    assert out.shape == (h, w, 3)
    inner = out[10:-10, 10: w // 2 - 10]
    assert np.abs(inner - 128).max(axis=2).mean() >= 40, "class tint is too faint"
    # the two classes get clearly different colours
    right = out[10:-10, w // 2 + 10: -10]
    assert np.abs(inner.mean((0, 1)) - right.mean((0, 1))).max() >= 40


def test_font_size_scales_with_the_image():
    def ink_height(h):
        w = int(h * 1.5)
        im = overlay(_photo(h, w), np.zeros((h, w), np.int32), ["cat"])
        panel = _panel(im, w)
        rows = np.flatnonzero((panel < 200).any(axis=2)[:, :].any(axis=1))
        return rows[-1] - rows[0] + 1
    small, large = ink_height(120), ink_height(720)
    assert small >= 10, f"legend text only {small} px high on a 120 px image"
    assert large >= 2.5 * small, f"legend text {large} px on 720 px vs {small} px on 120 px"


def test_every_pixel_ignored_says_so():
    h, w = 100, 150
    im = overlay(_photo(h, w), np.full((h, w), -1, np.int32), NAMES)
    panel = _panel(im, w)
    assert (panel < 200).any(axis=2).sum() > 50, "the legend is empty when every pixel is ignored"
    assert np.array_equal(np.asarray(im)[:, :w], _photo(h, w)), "ignored pixels must stay untinted"
    pal = overlay_palette(len(NAMES))
    assert all(_swatch_rows(panel, c).size == 0 for c in pal)


def test_many_classes_are_capped_with_a_more_row():
    h, w = 200, 200
    lab = (np.arange(h * w).reshape(h, w) % 30).astype(np.int32)
    names = [f"class {i}" for i in range(30)]
    small = overlay(_photo(h, w), lab, names, max_legend=5, font_size=14)
    full = overlay(_photo(h, w), lab, names, max_legend=30, font_size=14)
    assert small.height == h and full.height > 2 * h    # 31 rows do not fit; 6 do


def test_show_returns_the_overlay(fixtures_dir):
    model = ovs.load(str(fixtures_dir / "vit_tiny.safetensors"), act="gelu")
    seg = ovs.Segmenter(model, short_side=64, window=None, templates="bare")
    img = _photo(60, 90)
    shown = seg.show(img, ["cat", "grass"])
    want = overlay(img, seg.segment(img, ["cat", "grass"]), ["cat", "grass"])
    assert isinstance(shown, Image.Image)
    assert np.array_equal(np.asarray(shown), np.asarray(want))
    assert isinstance(seg.segment(img, ["cat", "grass"]), np.ndarray)   # unchanged return type
    assert seg.show(str(CAT), ["cat"]).height == 300                    # a path works too
    with pytest.raises(ValueError, match="one image, not a batch"):
        seg.show([img, img], ["cat"])


def test_bad_inputs():
    img = _photo(40, 60)
    lab = np.zeros((40, 60), np.int32)
    with pytest.raises(ValueError, match="class index 7 but only 2 class names"):
        overlay(img, np.full((40, 60), 7), ["a", "b"])
    with pytest.raises(ValueError, match=r"labels shape \(40, 61\)"):
        overlay(img, np.zeros((40, 61), np.int32), ["a"])
    with pytest.raises(TypeError, match="integer dtype, got float32"):
        overlay(img, lab.astype(np.float32), ["a"])
    with pytest.raises(TypeError, match="list of str"):
        overlay(img, lab, "cat")
    with pytest.raises(ValueError, match="class_names is empty"):
        overlay(img, lab, [])
    with pytest.raises(ValueError, match="alpha must be a number in \\[0, 1\\], got 1.5"):
        overlay(img, lab, ["a"], alpha=1.5)
    with pytest.raises(ValueError, match="font_size must be an int in 6..512.*got 2"):
        overlay(img, lab, ["a"], font_size=2)
    with pytest.raises(ValueError, match="max_legend must be an int >= 1, got 0"):
        overlay(img, lab, ["a"], max_legend=0)
    with pytest.raises(ValueError, match="pass ignore_index=255"):
        overlay(img, np.full((40, 60), 255, np.uint8), ["a"])
    # a mask read back from a PNG: 255 = ignored
    ok = overlay(img, np.full((40, 60), 255, np.uint8), ["a"], ignore_index=255)
    assert ok.width > 60


def test_mask_png_palette_is_voc_shifted_by_one(tmp_path):
    import imgviz

    voc = imgviz.label_colormap()               # independent VOC palette
    assert np.array_equal(palette(256), voc)
    lab = np.array([[0, 1, 2], [-1, 2, 0]], np.int32)
    save_label_png(lab, tmp_path / "m.png", 3)
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P"
        arr = np.asarray(im)
        pal = np.asarray(im.getpalette()[: 256 * 3], np.uint8).reshape(-1, 3)
        rgb = np.asarray(im.convert("RGB"))
    assert np.array_equal(arr, np.where(lab < 0, 255, lab))
    for k in range(3):
        assert np.array_equal(pal[k], voc[k + 1])
    assert np.array_equal(rgb[1, 0], [0, 0, 0])    # ignored = 255 = black


def test_mask_png_16bit_above_255_classes(tmp_path):
    lab = np.array([[0, 255, 299], [-1, 256, 1]], np.int32)
    save_label_png(lab, tmp_path / "m16.png", 300)
    with Image.open(tmp_path / "m16.png") as im:
        assert im.mode in ("I;16", "I")
        arr = np.asarray(im).astype(np.int64)
    assert np.array_equal(arr, np.where(lab < 0, 65535, lab))
    with pytest.raises(ValueError, match="class index 300 >= n_classes = 300"):
        label_image(np.array([[300]]), 300)
    with pytest.raises(ValueError, match="n_classes must be an int in 1..65535, got 0"):
        label_image(np.zeros((2, 2), np.int32), 0)


def test_cli_summary_line():
    from ovs.cli import _summary

    lab = np.array([[0, 0, 2, -1]], np.int32)
    assert _summary(lab, ["cat", "dog", "sky"]) == "cat 50.0%, sky 25.0%, ignored 25.0%"
    assert _summary(np.full((2, 2), -1, np.int32), ["cat"]).startswith("every pixel ignored")
