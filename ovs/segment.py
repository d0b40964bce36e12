"""Open-vocabulary semantic segmentation with training-free CLIP heads.

    >>> import ovs
    >>> seg = ovs.Segmenter(ovs.load("ViT-B-16"), method="naclip")
    >>> labels = seg.segment(image, ["cat", "grass", "sky"])     # int32 (H, W)
    >>> probs = seg.predict(image, ["cat", "grass", "sky"])      # float32 (C, H, W)

Methods ("maskclip", "sclip", "clearclip", "naclip") and the pipeline (resize, sliding windows,
padding, cosine logits, upsampling) are specified in tests/reference/SEGMENTATION_SPEC.md; the
pixel work runs in C.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Sequence

import numpy as np

from . import _core
from .model import Model

METHODS = ("maskclip", "sclip", "clearclip", "naclip")
VIT_METHODS = METHODS
RESNET_METHODS = ("maskclip",)

#: Published defaults of each method (SEGMENTATION_SPEC.md §3); MaskCLIP uses the common
#: protocol under which SCLIP/ClearCLIP/NACLIP re-evaluate it.
DEFAULTS: dict[str, dict[str, Any]] = {
    "maskclip": dict(short_side=336, window=(224, 112), logit_scale=40.0, templates="imagenet80"),
    "sclip": dict(short_side=336, window=(224, 112), logit_scale=40.0, templates="imagenet80"),
    "clearclip": dict(short_side=448, window=(448, 224), logit_scale=50.0, templates="imagenet80"),
    "naclip": dict(short_side=336, window=(224, 112), logit_scale=40.0, templates="imagenet80",
                   sigma=5.0),
}

_UNSET: Any = object()


def default_method(model: Model) -> str:
    """NACLIP for ViTs (the best published training-free numbers among ours), MaskCLIP for
    ResNets (the only head that fits an attention-pooled ResNet)."""
    return "naclip" if model.arch == "vit" else "maskclip"


#: Longest processing side: the originals resize with mmseg's Resize(scale=(2048, short_side),
#: keep_ratio=True), which also caps the long side. Only images more elongated than
#: 2048 / short_side (about 6:1) are affected; without the cap a 3x200 strip would be
#: processed at 336x22400.
MAX_LONG_SIDE = 2048


def processing_size(h: int, w: int, short_side: int | None) -> tuple[int, int]:
    """(H', W') after resizing the shorter side to short_side, the longer one to at most
    max(2048, short_side) (mmcv's rescale_size: int(x * scale + 0.5))."""
    if not short_side:
        return h, w
    scale = min(short_side / min(h, w), max(MAX_LONG_SIDE, short_side) / max(h, w))
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


def as_rgb_uint8(image, what: str = "image") -> np.ndarray:
    """uint8 (H, W, 3) from uint8 RGB, grayscale (H, W), or float RGB in [0, 1]."""
    from .image import as_uint8_image

    if isinstance(image, np.ndarray) and image.dtype.kind == "f":
        if not np.isfinite(image).all():
            raise ValueError(f"{what} contains NaN or infinity")
        if image.size and (image.min() < 0 or image.max() > 1):
            raise ValueError(f"float {what} must be RGB in [0, 1] (got range "
                             f"{image.min():g}..{image.max():g}); pass uint8 for 0..255 data")
        image = np.rint(image * 255).astype(np.uint8)
    return as_uint8_image(image, what)


def _distinct_classes(class_names) -> tuple[list[str], np.ndarray | None]:
    """The classes to score once each, and the row of each given class among them (None when
    all are distinct). Two entries with the same synonyms after splitting and stripping ("cat",
    " cat") are one class: they are encoded and scored once and their rows copied, so duplicate
    classes get bit-identical scores whatever the GEMM blocking does with row positions."""
    from .classnames import split_synonyms
    from .text import _check_class_names

    names = _check_class_names(class_names)
    first: dict[tuple[str, ...], int] = {}
    distinct: list[str] = []
    rows = np.empty(len(names), np.intp)
    for i, name in enumerate(names):
        key = tuple(split_synonyms(name))
        if key not in first:
            first[key] = len(distinct)
            distinct.append(name)
        rows[i] = first[key]
    return distinct, (None if len(distinct) == len(names) else rows)
def _check_names(class_names) -> list[str]:
    """class_names as a list of str (any iterable of str but a plain string), else TypeError."""
    if isinstance(class_names, (str, bytes)) or not hasattr(class_names, "__iter__"):
        raise TypeError(f"class_names must be a list of str, got {type(class_names).__name__}"
                        + (f" {class_names!r}" if isinstance(class_names, (str, bytes)) else ""))
    names = list(class_names)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"class_names must be str, got {bad[0]!r} ({type(bad[0]).__name__})")
    return names


def _check_finite(a: np.ndarray, what: str) -> None:
    """Non-finite values would turn into NaN probabilities and arbitrary labels, silently."""
    if not np.isfinite(a).all():
        n = int((~np.isfinite(a)).sum())
        raise ValueError(
            f"{what} contain {n} NaN or infinite value(s) of {a.size}: the model's weights "
            "overflow float32 (e.g. huge values in a projection or norm); check the weight file")


class Segmenter:
    """Segment images with class names invented at call time.

    model: an ovs.Model (ViT for every method; ResNet for "maskclip").
    method: "maskclip" | "sclip" | "clearclip" | "naclip" (default: naclip for ViT, maskclip
        for ResNet).
    short_side: resize so the shorter side has this length before windowing (None: keep);
        the longer side is capped at max(2048, short_side), as in the original methods.
    window: (crop, stride) sliding window on the resized image, or None for the whole image.
    logit_scale: temperature of the softmax over classes (predict, bg_threshold).
    templates: "imagenet80" | "vild" | "simple" | "bare" | a list of "{}" templates.
    bg_threshold: pixels whose top class probability is below it get the background label:
        0 when the first class is named "background", otherwise -1 (ignored).
    sigma: NACLIP's neighbourhood std in patches.
    output_size: (H, W) of the outputs instead of the input's size (e.g. to bound memory of
        predict() on very large images).
    progress: print per-image progress to stderr.
    """

    def __init__(self, model: Model, method: str | None = None, *, short_side=_UNSET,
                 window=_UNSET, logit_scale: float | None = None, templates=None,
                 bg_threshold: float | None = None, sigma: float | None = None,
                 output_size: tuple[int, int] | None = None, progress: bool = False):
        if not isinstance(model, Model):
            raise TypeError(f"model must be an ovs.Model (from ovs.load), got {type(model).__name__}")
        if model._visual is None or model._text is None:
            raise ValueError("segmentation needs a CLIP model with both image and text towers")
        method = default_method(model) if method is None else method
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
        valid = VIT_METHODS if model.arch == "vit" else RESNET_METHODS
        if method not in valid:
            raise ValueError(f"method {method!r} needs a ViT model; for a {model.arch} model use "
                             f"one of: {', '.join(valid)}")
        d = DEFAULTS[method]
        self.model = model
        self.method = method
        self.short_side = d["short_side"] if short_side is _UNSET else short_side
        self.window = d["window"] if window is _UNSET else window
        self.logit_scale = float(d["logit_scale"] if logit_scale is None else logit_scale)
        self.templates = d["templates"] if templates is None else templates
        self.bg_threshold = bg_threshold
        self.sigma = float(d.get("sigma", 5.0) if sigma is None else sigma)
        self.output_size = output_size
        self.progress = progress
        if self.short_side is not None and (not isinstance(self.short_side, (int, np.integer))
                                            or isinstance(self.short_side, bool)
                                            or self.short_side < 1):
            raise ValueError(f"short_side must be a positive int or None, got {self.short_side!r}")
        crop = stride = 0
        if self.window is not None:
            try:
                crop, stride = self.window
                if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                           for v in (crop, stride)):
                    raise TypeError
                crop, stride = int(crop), int(stride)
            except (TypeError, ValueError):
                raise ValueError(f"window must be (crop, stride) ints or None, got {self.window!r}") from None
            if crop < 1 or not 1 <= stride <= crop:
                raise ValueError(f"window needs crop >= 1 and 1 <= stride <= crop, got {self.window!r}")
            self.window = (crop, stride)
        if not np.isfinite(self.logit_scale) or self.logit_scale <= 0:
            raise ValueError(f"logit_scale must be a positive number, got {self.logit_scale!r}")
        if bg_threshold is not None and not 0 <= float(bg_threshold) <= 1:
            raise ValueError(f"bg_threshold must be in [0, 1], got {bg_threshold!r}")
        if output_size is not None:
            ok = (isinstance(output_size, (tuple, list)) and len(output_size) == 2
                  and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
                          for v in output_size))
            if not ok:
                raise ValueError(f"output_size must be (H, W), two positive ints, got {output_size!r}")
            self.output_size = (int(output_size[0]), int(output_size[1]))
        from .templates import get_templates

        get_templates(self.templates)  # validate now, not at the first call
        self._seg = _core.Segmenter(model._visual, method, crop, stride, self.sigma)
        self._seg_visual = model._visual

    def __repr__(self) -> str:
        return (f"ovs.Segmenter(method={self.method!r}, short_side={self.short_side}, "
                f"window={self.window}, logit_scale={self.logit_scale}, "
                f"templates={self.templates!r}, bg_threshold={self.bg_threshold})")

    # ------------------------------------------------------------ internals
    def _core_seg(self):
        if self._seg_visual is not self.model._visual:  # weights were swapped: rebuild
            crop, stride = self.window or (0, 0)
            self._seg = _core.Segmenter(self.model._visual, self.method, crop, stride, self.sigma)
            self._seg_visual = self.model._visual
        return self._seg

    def classifier(self, class_names: Sequence[str]) -> np.ndarray:
        """The (C, D) text classifier for class_names (cached per model)."""
        return self.model.text_classifier(_check_names(class_names), self.templates)

    def _lowres(self, image: np.ndarray, cls: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        hp, wp = processing_size(h, w, self.short_side)
        lr = self._core_seg().logits(np.ascontiguousarray(image), hp, wp, self.model.mean,
                                     self.model.std, cls)
        _check_finite(lr, "the image features")
        return lr

    def _out_size(self, image: np.ndarray) -> tuple[int, int]:
        return self.output_size or image.shape[:2]

    def _bg_label(self, class_names: Sequence[str]) -> int:
        first = class_names[0].replace(", ", ",").split(",")[0].strip().lower()
        return 0 if first == "background" else -1

    def _run(self, images, class_names, finish):
        batch = isinstance(images, (list, tuple)) or (isinstance(images, np.ndarray) and images.ndim == 4)
        items = list(images) if batch else [images]
        if batch and not items:
            raise ValueError("the image batch is empty")
        imgs = [as_rgb_uint8(im, f"images[{i}]" if batch else "image") for i, im in enumerate(items)]
        class_names = _check_names(class_names)
        distinct, rows = _distinct_classes(class_names)
        cls = self.classifier(distinct)
        _check_finite(cls, "the text classifier")
        out = []
        t0 = time.perf_counter()
        for i, im in enumerate(imgs):
            lr = self._lowres(im, cls)
            if rows is not None:  # duplicate classes: copies of one scored row, identical by construction
                lr = lr[rows]
            out.append(finish(im, lr))
            if self.progress:
                print(f"\rovs: segmented {i + 1}/{len(imgs)} image(s) "
                      f"({im.shape[1]}x{im.shape[0]}) in {time.perf_counter() - t0:.1f}s",
                      end="", file=sys.stderr, flush=True)
        if self.progress:
            print(file=sys.stderr)
        if not batch:
            return out[0]
        if isinstance(images, np.ndarray):
            return np.stack(out)
        return out

    # ------------------------------------------------------------ API
    def logits(self, image, class_names: Sequence[str]):
        """Cosine logits (C, H, W) float32 (before the softmax), at the input's size."""
        def finish(im, lr):
            H, W = self._out_size(im)
            return _core.seg_upsample(lr, H, W, logit_scale=1.0, softmax=False)
        return self._run(image, class_names, finish)

    def predict(self, image, class_names: Sequence[str]):
        """Class probabilities (C, H, W) float32: softmax(logit_scale * logits) over classes.
        A list or (N, H, W, 3) batch gives a list / stacked array."""
        def finish(im, lr):
            H, W = self._out_size(im)
            return _core.seg_upsample(lr, H, W, logit_scale=self.logit_scale, softmax=True)
        return self._run(image, class_names, finish)

    def segment(self, image, class_names: Sequence[str]):
        """Label map (H, W) int32: index into class_names of each pixel's best class; with
        bg_threshold, low-confidence pixels get 0 (first class named "background") or -1.
        Never materialises (C, H, W): memory stays bounded for large images."""
        names = _check_names(class_names)

        def finish(im, lr):
            H, W = self._out_size(im)
            thr = float(self.bg_threshold or 0.0)
            return _core.seg_labels(lr, H, W, logit_scale=self.logit_scale, bg_threshold=thr,
                                    bg_label=self._bg_label(names))
        return self._run(image, names, finish)

    def show(self, image, class_names: Sequence[str], **overlay_kw):
        """Segment one image and return ovs.overlay(image, labels, class_names) as an RGB PIL
        image (a notebook cell ending in it displays it inline). image: as for segment(), or a
        PIL image or an image file path. overlay_kw: alpha, legend, font_size, max_legend,
        boundaries (see ovs.overlay)."""
        from .visualize import _as_rgb, overlay

        if isinstance(image, (list, tuple)) or (isinstance(image, np.ndarray) and image.ndim == 4):
            raise ValueError("show() takes one image, not a batch; call it per image")
        img = _as_rgb(image)
        names = _check_names(class_names)
        labels = self.segment(img, names)
        if labels.shape != img.shape[:2]:   # output_size set: show the photo at the labels' size
            from PIL import Image
            img = np.asarray(Image.fromarray(img).resize(labels.shape[::-1], Image.BILINEAR))
        return overlay(img, labels, names, **overlay_kw)
