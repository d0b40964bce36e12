"""Seeing label maps: colour overlays with a legend, and the mask PNG palettes.

    >>> import ovs
    >>> seg = ovs.Segmenter(ovs.load("ViT-B-16"))
    >>> labels = seg.segment(image, ["cat", "wall", "floor"])
    >>> ovs.overlay(image, labels, ["cat", "wall", "floor"])     # a PIL image (Jupyter shows it)
    >>> seg.show(image, ["cat", "wall", "floor"])                # the same in one call

Two palettes, for two purposes:

* ``overlay_palette(n)``: saturated colours (golden-angle hues, high saturation and value,
  alternating brightness) for tints blended at ``alpha`` = 0.5 over a photo, where the dark
  and grey colours of the VOC palette would hardly show.
* ``palette(n)``: the Pascal VOC bit-interleaved palette (index 0 black, 1 (128, 0, 0), 2 (0,
  128, 0), ...). The mask PNGs written by ``save_label_png`` / ``ovs segment --out`` colour
  class k with VOC colour k + 1 (VOC's index 0 is black "background", which would hide class
  0), so the PNG's palette is VOC's shifted by one; pixel value 255 means ignored (a pixel
  whose best class is below ``bg_threshold``) and is black. With more than 255 classes the
  mask is a 16-bit grayscale PNG (mode ``I;16``, no palette): the pixel value is the class
  index and 65535 means ignored. In both forms the pixel value is the index into the class
  list, so ``np.asarray(PIL.Image.open("mask.png"))`` gives the labels back.
"""
from __future__ import annotations

import colorsys
import os
from typing import Sequence

import numpy as np

__all__ = ["palette", "overlay_palette", "overlay", "save_label_png", "IGNORE_8BIT", "IGNORE_16BIT"]

IGNORE_8BIT = 255      # ignored pixels in an 8-bit (palette) mask PNG
IGNORE_16BIT = 65535   # ignored pixels in a 16-bit mask PNG (more than 255 classes)
IGNORED_COLOUR = (128, 128, 128)  # legend swatch of the ignored pixels (they are not tinted)


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 colours: the Pascal VOC bit-interleaved palette (index 0 black)."""
    out = np.zeros((max(n, 1), 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


def overlay_palette(n: int) -> np.ndarray:
    """(n, 3) uint8 saturated, well separated colours for overlays: hue advances by the golden
    angle from class to class, saturation 0.9 / 0.75, value 1.0 / 0.8 alternating."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    out = np.zeros((int(n), 3), np.uint8)
    for k in range(int(n)):
        h = (0.0 + k * 0.381966) % 1.0
        s = 0.9 if k % 2 == 0 else 0.75
        v = 1.0 if (k // 2) % 2 == 0 else 0.8
        out[k] = [round(255 * c) for c in colorsys.hsv_to_rgb(h, s, v)]
    return out


def _check_labels(labels, shape, n_classes: int, ignore_index) -> np.ndarray:
    """int64 (H, W) labels with ignored pixels as -1; ValueError for values outside the class
    range (other than negative values and ignore_index)."""
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"labels must be a numpy integer array (H, W), got {type(labels).__name__}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.shape != tuple(shape):
        raise ValueError(f"labels shape {labels.shape} does not match the image's (H, W) = {tuple(shape)}")
    lab = labels.astype(np.int64)
    if ignore_index is not None:
        lab[lab == int(ignore_index)] = -1
    bad = lab >= n_classes
    if bad.any():
        v = int(lab[bad].max())
        raise ValueError(f"labels hold class index {v} but only {n_classes} class names were given "
                         f"(valid 0..{n_classes - 1}; negative values"
                         + (f" and {ignore_index}" if ignore_index is not None else "")
                         + " mean ignored)"
                         + (f"; for a mask PNG read back pass ignore_index={v}" if v in (IGNORE_8BIT, IGNORE_16BIT)
                            and ignore_index is None else ""))
    return np.where(lab < 0, -1, lab)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)   # Pillow >= 10.1 (FreeType): scalable
    except TypeError:  # pragma: no cover - older Pillow: the fixed ~10 px bitmap font
        return ImageFont.load_default()


def _short(name: str, limit: int = 40) -> str:
    name = " ".join(name.split())
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _share(n: int, total: int) -> str:
    p = 100.0 * n / total
    return "<0.1%" if 0 < p < 0.05 else f"{p:.1f}%"


def overlay(image, labels: np.ndarray, class_names: Sequence[str], *, alpha: float = 0.5,
            legend: bool = True, font_size: int | None = None, max_legend: int = 20,
            boundaries: bool = True, ignore_index: int | None = None):
    """The photo with each pixel tinted by its class colour and, to its right, a legend of the
    classes present with their share of the image's pixels. Returns an RGB PIL image (Jupyter
    renders it inline).

    image: uint8 (H, W, 3) RGB (or grayscale, float RGB in [0, 1], a PIL image, a file path).
    labels: integer (H, W) class indices into class_names, as Segmenter.segment returns;
        negative values (and ``ignore_index``, e.g. 255 for a mask PNG read back) are ignored
        pixels: left untinted and counted in an "ignored" legend row.
    alpha: tint opacity in [0, 1] (0.5: colour and photo equally visible).
    font_size: legend text height in pixels (default: about 1/20 of the image height, at
        least 12, at most 48). max_legend: legend rows for the largest classes; the rest are
        summed in a "+ N more" row. boundaries: draw class borders in the class colour, fully
        opaque, so adjacent regions stay distinguishable. Classes with no pixel are not listed.
    """
    from PIL import Image, ImageDraw

    from .image import as_rgb_uint8

    img = as_rgb_uint8(image)
    names = list(class_names) if not isinstance(class_names, str) else None
    if names is None or not all(isinstance(n, str) for n in names):
        raise TypeError(f"class_names must be a list of str, got {class_names!r}")
    if not names:
        raise ValueError("class_names is empty")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if font_size is not None and (isinstance(font_size, bool) or not isinstance(font_size, (int, np.integer))
                                  or not 6 <= font_size <= 512):
        raise ValueError(f"font_size must be an int in 6..512 (pixels), got {font_size!r}")
    if isinstance(max_legend, bool) or not isinstance(max_legend, (int, np.integer)) or max_legend < 1:
        raise ValueError(f"max_legend must be an int >= 1, got {max_legend!r}")
    H, W = img.shape[:2]
    lab = _check_labels(labels, (H, W), len(names), ignore_index)
    pal = overlay_palette(len(names))
    valid = lab >= 0

    out = img.astype(np.float32)
    colour = pal[np.where(valid, lab, 0)].astype(np.float32)
    out[valid] = (1.0 - alpha) * out[valid] + alpha * colour[valid]
    if boundaries and H > 1 and W > 1:
        edge = np.zeros((H, W), bool)
        edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
        edge[1:, :] |= lab[1:, :] != lab[:-1, :]
        edge &= valid
        out[edge] = colour[edge]
    base = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    if not legend:
        return base

    counts = np.bincount(lab[valid].ravel(), minlength=len(names)) if valid.any() \
        else np.zeros(len(names), np.int64)
    order = [int(k) for k in np.argsort(-counts, kind="stable") if counts[k] > 0]
    total = lab.size
    rows: list[tuple[tuple[int, int, int] | None, str, str]] = []
    for k in order[:max_legend]:
        rows.append((tuple(int(c) for c in pal[k]), _short(names[k]), _share(int(counts[k]), total)))
    if len(order) > max_legend:
        rest = order[max_legend:]
        rows.append((None, f"+ {len(rest)} more", _share(int(counts[rest].sum()), total)))
    n_ignored = int((~valid).sum())
    if n_ignored == total:
        rows = [(IGNORED_COLOUR, "no class: every pixel ignored", "100%")]
    elif n_ignored:
        rows.append((IGNORED_COLOUR, "ignored", _share(n_ignored, total)))

    fs = int(font_size) if font_size is not None else int(min(48, max(12, round(H / 20))))
    font = _font(fs)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def extent(text):
        x0, y0, x1, y1 = probe.textbbox((0, 0), text, font=font)
        return x1, y1   # from the drawing origin: includes the font's left bearing and ascent

    pad = max(4, fs // 2)
    swatch = fs
    gap = max(4, fs // 2)              # between swatch and name
    col_gap = max(8, fs)               # between the name column and the percentage column
    name_w = max(extent(r[1])[0] for r in rows)
    pct_w = max(extent(r[2])[0] for r in rows)
    line_h = max(swatch, max(extent(r[1] + r[2])[1] for r in rows)) + max(2, fs // 4)
    panel_w = pad + swatch + gap + name_w + col_gap + pct_w + pad
    panel_h = pad + line_h * len(rows) + pad
    canvas = Image.new("RGB", (W + panel_w, max(H, panel_h)), (255, 255, 255))
    canvas.paste(base, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = W + pad
    for i, (col, name, pct) in enumerate(rows):
        y = pad + i * line_h
        if col is not None:
            draw.rectangle([x0, y, x0 + swatch - 1, y + swatch - 1], fill=col, outline=(0, 0, 0))
        draw.text((x0 + swatch + gap, y), name, fill=(0, 0, 0), font=font)
        pw = extent(pct)[0]
        draw.text((W + panel_w - pad - pw, y), pct, fill=(0, 0, 0), font=font)
    return canvas


def _save_atomic(image, path: str | os.PathLike) -> None:
    """Save a PIL image as PNG through a temporary file in the same folder and a rename: an
    interrupted or failed save never leaves a truncated or half-written file at `path`."""
    from ._files import write_atomic

    write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))


def label_image(labels: np.ndarray, n_classes: int):
    """The mask as a PIL image: mode "P" with the VOC palette shifted by one (class k gets VOC
    colour k + 1, ignored pixels (negative labels) = 255, black) for up to 255 classes; mode
    "I;16" grayscale (class index, ignored = 65535) above."""
    from PIL import Image

    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu" or labels.ndim != 2:
        raise TypeError(f"labels must be an integer (H, W) numpy array, got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)} {getattr(labels, 'shape', '')}")
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or not 1 <= n_classes <= 65535:
        raise ValueError(f"n_classes must be an int in 1..65535, got {n_classes!r}")
    if labels.size and labels.max() >= n_classes:
        raise ValueError(f"labels hold class index {int(labels.max())} >= n_classes = {n_classes}")
    if n_classes > 255:
        arr = np.where(labels < 0, IGNORE_16BIT, labels).astype(np.uint16)
        return Image.fromarray(arr)
    arr = np.where(labels < 0, IGNORE_8BIT, labels).astype(np.uint8)
    im = Image.fromarray(arr, mode="P")
    pal = np.zeros((256, 3), np.uint8)
    pal[:n_classes] = palette(n_classes + 1)[1:]
    pal[IGNORE_8BIT] = (0, 0, 0)
    im.putpalette(pal.reshape(-1).tolist())
    return im


def save_label_png(labels: np.ndarray, path: str | os.PathLike, n_classes: int) -> None:
    """Write the mask PNG (see label_image for the two forms), atomically."""
    _save_atomic(label_image(labels, n_classes), path)
