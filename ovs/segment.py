"""Open-vocabulary semantic segmentation with training-free CLIP heads.

    >>> import ovs
    >>> seg = ovs.Segmenter(ovs.load("ViT-B-16"), method="naclip")
    >>> labels = seg.segment(image, ["cat", "grass", "sky"])     # int32 (H, W)
    >>> probs = seg.predict(image, ["cat", "grass", "sky"])      # float32 (C, H, W)

The methods (METHODS: the C heads table, csrc/methods/heads.c, read through _core.heads()) and
the pipeline (resize, sliding windows, padding, cosine logits, upsampling) are specified in
tests/reference/SEGMENTATION_SPEC.md; the pixel work runs in C.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Sequence

import numpy as np

from . import _core
from .image import as_rgb_uint8
from .model import Model

#: The training-free heads, name -> entry of the C heads table (csrc/methods/heads.c, the one
#: place a head is named): towers, default_for, published defaults, key_smoothing, summary, ...
HEAD_TABLE: dict[str, dict[str, Any]] = {h["name"]: h for h in _core.heads()}
METHODS = tuple(HEAD_TABLE)
VIT_METHODS = tuple(m for m, h in HEAD_TABLE.items() if "vit" in h["towers"])
RESNET_METHODS = tuple(m for m, h in HEAD_TABLE.items() if "resnet" in h["towers"])


def _defaults(h: dict[str, Any]) -> dict[str, Any]:
    d = dict(short_side=h["short_side"], window=h["window"], logit_scale=h["logit_scale"],
             templates=h["templates"])
    if h["sigma"] is not None:
        d["sigma"] = h["sigma"]
    return d


#: Published defaults of each method (SEGMENTATION_SPEC.md §3), from the heads table; MaskCLIP
#: uses the common protocol under which SCLIP/ClearCLIP/NACLIP re-evaluate it.
DEFAULTS: dict[str, dict[str, Any]] = {m: _defaults(h) for m, h in HEAD_TABLE.items()}

class _MethodDefault:
    """The default of short_side / window: the method's own value (DEFAULTS), shown as such in
    help(ovs.Segmenter)."""

    def __repr__(self) -> str:
        return "<method default>"


_UNSET: Any = _MethodDefault()

#: PAMR as NACLIP runs it (pamr_steps=10, pamr_stride=(8, 16)): Segmenter(pamr=True).
PAMR_STEPS = 10
PAMR_DILATIONS = (8, 16)


def pamr_steps(pamr) -> int:
    """Segmenter's pamr= as a step count: False/None -> 0 (off), True -> 10, an int >= 0 ->
    itself. Anything else (a negative or non-integer number, a string) is a ValueError."""
    if pamr is None or pamr is False or (isinstance(pamr, np.bool_) and not pamr):
        return 0
    if pamr is True or isinstance(pamr, np.bool_):
        return PAMR_STEPS
    if isinstance(pamr, (int, np.integer)):
        if pamr < 0:
            raise ValueError(f"pamr must be True, False or a number of steps >= 0, got {pamr!r}")
        return int(pamr)
    raise ValueError(f"pamr must be True, False or a number of steps (int >= 0), got {pamr!r} "
                     f"({type(pamr).__name__})")


def method_choices() -> list[str]:
    """Every method name Segmenter takes: the training-free heads (METHODS), then the trained
    frameworks (ovs.frameworks.FRAMEWORKS). The CLI's --method choices come from here."""
    from .frameworks import FRAMEWORKS

    return list(METHODS) + list(FRAMEWORKS)


def default_method(model: Model) -> str:
    """The head whose table entry is the default for the model's tower (default_for): NACLIP
    for ViTs (the best published training-free numbers among ours), MaskCLIP for ResNets (the
    only head that fits an attention-pooled ResNet)."""
    return next(m for m, h in HEAD_TABLE.items() if model.arch in h["default_for"])


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
    """class_names as a list of str (any iterable of str but a plain string), else TypeError.
    A class may also be a list of synonyms (as ovs.classnames.load_classnames gives them):
    ["person", "man"] is the class "person, man"."""
    if isinstance(class_names, (str, bytes)) or not hasattr(class_names, "__iter__"):
        raise TypeError(f"class_names must be a list of str, got {type(class_names).__name__}"
                        + (f" {class_names!r}" if isinstance(class_names, (str, bytes)) else ""))
    names = list(class_names)
    for i, n in enumerate(names):
        if isinstance(n, (list, tuple)):
            if not n or not all(isinstance(s, str) for s in n):
                raise TypeError(f"class_names[{i}] must be a str or a non-empty list of str synonyms, got {n!r}")
            if any("," in s for s in n):
                raise ValueError(f"class_names[{i}]: a synonym may not contain ',' (the synonym separator), got {n!r}")
            names[i] = ", ".join(n)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"class_names must be str, got {bad[0]!r} ({type(bad[0]).__name__})")
    return names


def _check_finite(a: np.ndarray, what: str) -> None:
    """Non-finite values would turn into NaN probabilities and arbitrary labels, silently."""
    if not np.isfinite(a).all():
        _refuse_nonfinite(what, int((~np.isfinite(a)).sum()), a.size)


def _refuse_nonfinite(what: str, n: int, size: int) -> None:
    raise ValueError(
        f"{what} contain {n} NaN or infinite value(s) of {size}: the model's weights "
        "overflow float32 (e.g. huge values in a projection or norm); check the weight file")


def _fraction(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not 0 <= float(v) <= 1:
        raise ValueError(f"{what} must be a number in [0, 1], got {v!r}")
    return float(v)


def _queries(names: list[str]) -> tuple[list[str], np.ndarray]:
    """SCLIP's get_cls_idx: every synonym of every class is one query; (queries, class of each)."""
    from .classnames import split_synonyms

    queries: list[str] = []
    owner: list[int] = []
    for c, name in enumerate(names):
        syn = split_synonyms(name)
        queries += syn
        owner += [c] * len(syn)
    return queries, np.asarray(owner, np.int32)


def _check_output_size(output_size) -> tuple[int, int]:
    ok = (isinstance(output_size, (tuple, list)) and len(output_size) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
                  for v in output_size))
    if not ok:
        raise ValueError(f"output_size must be (H, W), two positive ints, got {output_size!r}")
    return int(output_size[0]), int(output_size[1])


class Segmenter:
    """Segment images with class names invented at call time.

    model: an ovs.Model (ViT for every method; ResNet for "maskclip"), or a trained framework
        loaded from an `ovs convert` file (ovs.frameworks), e.g. DeepLabV3-OVS.
    method: "maskclip" | "sclip" | "clearclip" | "naclip" | "scclip" (default: naclip for ViT,
        maskclip for ResNet). "scclip" needs a ViT of at least 11 blocks (ViT-B/16 has 12).
        "deeplab" for a DeepLab model (its default), which runs the framework's own
        preprocessing (short_side, default 800, longer side capped at 1333, padding to 32) and
        inference (learned temperature and no-object embedding; window, logit_scale,
        bg_threshold, sigma and the training-free post-processing do not apply).
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
    preset: a dataset name from ovs.presets.PRESETS ("ade20k-150", "voc-21", ...): the method's
        published settings for that dataset (ovs/presets.py, each cited from its repository);
        explicit keyword arguments override it.
    synonym_mode: "mean" (default: a class "sofa, couch" is one query, its synonyms' embeddings
        averaged, as FC-CLIP) or "max" (each synonym is a query; softmax over all queries, a
        class scores its best synonym: SCLIP / ClearCLIP / NACLIP).
    area_threshold: SCLIP's area_thd: foreground classes (index >= 1; class 0 is the
        background) whose predicted area is <= this fraction of the predicted foreground area are
        dropped (their probabilities zeroed) before the labels are taken.
    bg_label: label of pixels below bg_threshold (default: 0 if the first class is named
        "background", else -1); the originals use 0 (their class 0 is the background).
    prompt_denoise: MaskCLIP's pd_thresh (0.5 in its docs): per window, a class whose largest
        softmax(100 * logits) probability over the window's patches is below it gets logit -100.
    key_smoothing: MaskCLIP's ks_thresh (1.0 in its docs; method "maskclip" only): per window,
        the logits become softmax(100 * logits) probabilities, and patches whose top probability
        is below it take the key-similarity-weighted sum of all patches' probabilities (keys of
        the last attention layer). logits() then returns these mixed probabilities.
    Class names may also be lists of synonyms (as ovs.classnames.load_classnames returns).
    pamr: pixel-adaptive mask refinement of the cosine logits at the output size, as NACLIP
        applies it: True = 10 steps at dilations (8, 16), an int = that many steps, False/0 =
        off. logits(), predict() and segment() all see the refined logits.
    """

    def __init__(self, model: Model, method: str | None = None, *, short_side=_UNSET,
                 window=_UNSET, logit_scale: float | None = None, templates=None,
                 bg_threshold: float | None = None, sigma: float | None = None,
                 output_size: tuple[int, int] | None = None, progress: bool = False,
                 preset: str | None = None, synonym_mode: str | None = None,
                 area_threshold: float | None = None, bg_label: int | None = None,
                 prompt_denoise: float | None = None, key_smoothing: float | None = None,
                 pamr: bool | int | None = None):
        given_args = dict(locals())  # every keyword as passed (for preset=), before anything changes
        from .frameworks import FRAMEWORKS, FrameworkModel

        if isinstance(model, FrameworkModel):
            if preset is not None:  # valid, but no preset holds framework settings
                from .presets import check_preset
                check_preset(preset)
            for name in ("synonym_mode", "area_threshold", "bg_label", "prompt_denoise",
                         "key_smoothing", "pamr"):
                if given_args[name] is not None and given_args[name] is not False:
                    raise ValueError(f"{name} does not apply to the {model.framework.name} "
                                     f"framework (it has its own inference), got {given_args[name]!r}")
            self._init_framework(model, method, short_side, window, logit_scale, templates,
                                 bg_threshold, sigma, output_size, progress)
            self.preset = preset
            return
        self._framework = None
        if method in FRAMEWORKS:
            raise ValueError(f"method {method!r} needs a {method} model converted with "
                             f"`ovs convert --framework {method}` and loaded with ovs.load, "
                             f"not a CLIP model")
        if not isinstance(model, Model):
            raise TypeError(f"model must be an ovs.Model (from ovs.load), got {type(model).__name__}")
        if model.visual is None or model.text is None:
            raise ValueError("segmentation needs a CLIP model with both image and text towers")
        method = default_method(model) if method is None else method
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
        valid = VIT_METHODS if model.arch == "vit" else RESNET_METHODS
        if method not in valid:
            raise ValueError(f"method {method!r} needs a ViT model; for a {model.arch} model use "
                             f"one of: {', '.join(valid)}")
        if preset is not None:
            # the preset fills every keyword the caller left at its default (explicit None counts
            # for short_side / window), then __init__ runs again with the merged keywords; a
            # setting this Segmenter has no keyword for (e.g. "pamr" before PAMR lands) is kept
            # in preset_skipped
            import inspect

            from .presets import settings as _preset_settings

            params = inspect.signature(Segmenter.__init__).parameters
            merged = {k: v for k, v in given_args.items() if k not in ("self", "model", "method", "preset")}
            skipped = {}
            for k, v in _preset_settings(method, preset).items():
                if k not in params:
                    skipped[k] = v
                elif merged[k] is params[k].default:
                    merged[k] = v
            self.__init__(model, method, **merged)
            self.preset = preset
            self.preset_skipped = skipped
            return
        self.preset = None
        self.preset_skipped: dict[str, Any] = {}
        self.synonym_mode = "mean" if synonym_mode is None else synonym_mode
        if self.synonym_mode not in ("mean", "max"):
            raise ValueError(f"synonym_mode must be 'mean' (average the synonyms' embeddings) or 'max' "
                             f"(one query per synonym, max probability), got {synonym_mode!r}")
        self.area_threshold = None if area_threshold is None else _fraction(area_threshold, "area_threshold")
        self.prompt_denoise = None if prompt_denoise is None else _fraction(prompt_denoise, "prompt_denoise")
        self.key_smoothing = None if key_smoothing is None else _fraction(key_smoothing, "key_smoothing")
        if self.key_smoothing and not HEAD_TABLE[method]["key_smoothing"]:
            have = [h for h in HEAD_TABLE.values() if h["key_smoothing"]]
            raise ValueError(f"key_smoothing is {' / '.join(h['title'] for h in have)}'s refinement: it needs "
                             f"method={' or '.join(repr(h['name']) for h in have)}, got {method!r}")
        if bg_label is not None and (isinstance(bg_label, bool) or not isinstance(bg_label, (int, np.integer))
                                     or bg_label < -1):
            raise ValueError(f"bg_label must be -1 (ignore) or a class index >= 0, got {bg_label!r}")
        self.bg_label = None if bg_label is None else int(bg_label)
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
        self.pamr = pamr_steps(pamr)  # steps, 0 = off
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
            self.output_size = _check_output_size(output_size)
        from .templates import get_templates

        get_templates(self.templates)  # validate now, not at the first call
        self._seg = _core.Segmenter(model.visual, method, crop, stride, self.sigma, self.prompt_denoise or 0.0,
                                    self.key_smoothing or 0.0)
        self._seg_visual = model.visual

    def _init_framework(self, model, method, short_side, window, logit_scale, templates,
                        bg_threshold, sigma, output_size, progress):
        """A trained framework (ovs.frameworks): its own preprocessing (detectron2 resize of the
        shorter side with a cap on the longer, padding to a multiple of 32), its learned
        temperature and no-object embedding; no sliding window."""
        fw = model.framework
        if method is not None and method != fw.name:
            raise ValueError(f"this is a {fw.name} model: use method={fw.name!r} (or None), "
                             f"got {method!r}")
        for name, value in (("window", window if window is not _UNSET else None),
                            ("logit_scale", logit_scale), ("bg_threshold", bg_threshold),
                            ("sigma", sigma)):
            if value is not None:
                raise ValueError(f"{name} does not apply to the {fw.name} framework (it has its "
                                 f"own inference), got {value!r}")
        d = fw.defaults
        self.model = model
        self.method = fw.name
        self._framework = fw
        self.short_side = d["short_side"] if short_side is _UNSET or short_side is None else short_side
        if isinstance(self.short_side, bool) or not isinstance(self.short_side, (int, np.integer)) \
                or self.short_side < 32:
            raise ValueError(f"short_side must be an int >= 32, got {self.short_side!r}")
        self.short_side = int(self.short_side)
        self.max_size = max(int(d["max_size"]), self.short_side)
        self.window = None
        self.logit_scale = model.logit_scale
        self.templates = d["templates"] if templates is None else templates
        self.bg_threshold = None
        self.sigma = None
        self.preset, self.preset_skipped = None, {}
        self.synonym_mode, self.area_threshold, self.bg_label = "mean", None, None
        self.prompt_denoise = self.key_smoothing = None
        self.pamr = 0
        self.progress = progress
        self.output_size = None
        if output_size is not None:
            self.output_size = _check_output_size(output_size)
        from .templates import get_templates

        get_templates(self.templates)

    def __repr__(self) -> str:
        if self._framework is not None:
            return (f"ovs.Segmenter(method={self.method!r}, short_side={self.short_side}, "
                    f"max_size={self.max_size}, templates={self.templates!r}, "
                    f"logit_scale={self.logit_scale:.4g} (learned))")
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in ("preset", "area_threshold", "bg_label", "prompt_denoise",
                                                            "key_smoothing")
                        if getattr(self, k) is not None)
        if self.synonym_mode != "mean":
            extra += f", synonym_mode={self.synonym_mode!r}"
        return (f"ovs.Segmenter(method={self.method!r}, short_side={self.short_side}, "
                f"window={self.window}, logit_scale={self.logit_scale}, "
                f"templates={self.templates!r}, bg_threshold={self.bg_threshold}, "
                f"sigma={self.sigma}, pamr={self.pamr}{extra})")

    # ------------------------------------------------------------ internals
    def _core_seg(self):
        if self._seg_visual is not self.model.visual:  # weights were swapped: rebuild
            crop, stride = self.window or (0, 0)
            self._seg = _core.Segmenter(self.model.visual, self.method, crop, stride, self.sigma,
                                        self.prompt_denoise or 0.0, self.key_smoothing or 0.0)
            self._seg_visual = self.model.visual
        return self._seg

    def classifier(self, class_names: Sequence[str]) -> np.ndarray:
        """The (C, D) text classifier for class_names (cached per model); for a framework
        with a no-object embedding, (C + 1, D) with it last."""
        if self._framework is not None:
            return self.model.text_rows(_check_names(class_names), self.templates)
        return self.model.text_classifier(_check_names(class_names), self.templates)

    def _lowres(self, image: np.ndarray, cls: np.ndarray, kind: str = "logits") -> np.ndarray:
        if self._framework is not None:
            lr = self.model.lowres(image, cls, kind, short=self.short_side,
                                   max_size=self.max_size, divisor=self._framework.defaults["divisor"])
            _check_finite(lr, "the image features")
            return lr
        h, w = image.shape[:2]
        hp, wp = processing_size(h, w, self.short_side)
        lr = self._core_seg().logits(np.ascontiguousarray(image), hp, wp, self.model.mean,
                                     self.model.std, cls)
        _check_finite(lr, "the image features")
        return lr

    def _out_size(self, image: np.ndarray) -> tuple[int, int]:
        return self.output_size or image.shape[:2]

    def _pamr_guide(self, image: np.ndarray, H: int, W: int) -> np.ndarray:
        """The image PAMR's affinities come from, as NACLIP feeds it: the normalised image at
        the processing size, bilinearly resized to the output size. (3, H, W) float32."""
        hp, wp = processing_size(image.shape[0], image.shape[1], self.short_side)
        x = _core.resize_u8_normalize(np.ascontiguousarray(image), (hp, wp), self.model.mean,
                                         self.model.std)
        return x if (hp, wp) == (H, W) else _core.resize(x, (H, W))

    def _refined(self, im: np.ndarray, lr: np.ndarray) -> np.ndarray:
        """Cosine logits (C, H, W) at the output size, PAMR-refined when pamr is on."""
        H, W = self._out_size(im)
        up = _core.seg_upsample(lr, H, W, logit_scale=1.0, softmax=False)
        if not self.pamr:
            return up
        return _core.pamr(up, self._pamr_guide(im, H, W), self.pamr, PAMR_DILATIONS)

    def _bg_label(self, class_names: Sequence[str]) -> int:
        first = class_names[0].replace(", ", ",").split(",")[0].strip().lower()
        return 0 if first == "background" else -1

    def _plan(self, names: list[str]):
        """(texts to encode, row of each scored logit plane among them or None, query -> class
        map or None). synonym_mode="mean": one text per class; "max": one per synonym (SCLIP's
        get_cls_idx). Duplicate classes are scored once and their planes copied."""
        distinct, rows = _distinct_classes(names)
        if self.synonym_mode == "mean":
            return distinct, rows, None
        queries, owner = _queries(distinct)
        if rows is None:
            return queries, None, owner
        per = [np.flatnonzero(owner == d) for d in range(len(distinct))]
        idx = np.concatenate([per[r] for r in rows])
        qc = np.concatenate([np.full(len(per[r]), i, np.int32) for i, r in enumerate(rows)])
        return queries, idx, qc

    def _resolve_bg_label(self, names: list[str]) -> int:
        if self.bg_label is None:
            return self._bg_label(names)
        if self.bg_label >= len(names):
            raise ValueError(f"bg_label {self.bg_label} is not a class index for {len(names)} classes")
        return self.bg_label

    def _run(self, images, class_names, finish, kind: str = "logits", fused=None):
        """finish(image, low-res output, query map) per image; fused(image, classifier), when
        given, instead of both for images whose classes have no duplicates or synonym queries."""
        batch = isinstance(images, (list, tuple)) or (isinstance(images, np.ndarray) and images.ndim == 4)
        items = list(images) if batch else [images]
        if batch and not items:
            raise ValueError("the image batch is empty")
        imgs = [as_rgb_uint8(im, f"images[{i}]" if batch else "image") for i, im in enumerate(items)]
        class_names = _check_names(class_names)
        texts, rows, qc = self._plan(class_names)
        cls = self.classifier(texts)
        _check_finite(cls, "the text classifier")
        out = []
        t0 = time.perf_counter()
        for i, im in enumerate(imgs):
            if fused is not None and rows is None and qc is None:
                out.append(fused(im, cls))
            else:
                lr = self._lowres(im, cls, kind)
                if rows is not None:  # duplicate classes: copies of one scored row, identical by construction
                    # (labels: the first given class of each distinct one, as argmax over the copies)
                    lr = lr[rows] if lr.ndim == 3 else np.unique(rows, return_index=True)[1][lr]
                out.append(finish(im, lr, qc))
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
        """Cosine logits (C, H, W) float32 (before the softmax), at the input's size;
        PAMR-refined when pamr is on. With synonym_mode="max", a class's logit is the max over
        its synonyms' logits (the softmax is monotone, so its argmax is the class of the largest
        synonym probability)."""
        C = len(_check_names(class_names))

        def finish(im, lr, qc):
            up = self._refined(im, lr)
            return up if qc is None else _group_max(up, qc, C, -np.inf)
        plain = self._framework is None and not self.pamr
        return self._run(image, class_names, finish, fused=self._logits_at(False) if plain else None)

    def _logits_at(self, softmax: bool):
        """_run's fused(image, classifier) for logits / predict without PAMR: the cosine logits
        resized to the output size in one C call (Segmenter.logits_at: the same floats as
        logits then seg_upsample, without the (C, H', W') map at the processing size)."""
        def fused(im, cls):
            H, W = self._out_size(im)
            hp, wp = processing_size(im.shape[0], im.shape[1], self.short_side)
            out, bad = self._core_seg().logits_at(
                np.ascontiguousarray(im), hp, wp, self.model.mean, self.model.std, cls, H, W,
                logit_scale=self.logit_scale if softmax else 1.0, softmax=softmax)
            if bad:
                _refuse_nonfinite("the image features", bad, len(cls) * hp * wp)
            if softmax and self.area_threshold is not None:
                out = area_filter(out, self.area_threshold)
            return out
        return fused

    def predict(self, image, class_names: Sequence[str]):
        """Class probabilities (C, H, W) float32: softmax(logit_scale * logits) over classes.
        synonym_mode="max": softmax over every synonym query, then each class's max (SCLIP's
        seg_logits; they sum to <= 1). area_threshold: small foreground classes' probabilities
        are zeroed as SCLIP does. A list or (N, H, W, 3) batch gives a list / stacked array."""
        C = len(_check_names(class_names))

        if self._framework is not None:  # probabilities at low resolution, then resized
            def finish_fw(im, lr, qc):
                H, W = self._out_size(im)
                if lr.shape[-2:] == (H, W) and lr.dtype == np.float32:
                    return lr  # already at the output size (Han, FC-CLIP): the resize is an identity
                return _core.seg_upsample(lr, H, W, logit_scale=1.0, softmax=False)
            return self._run(image, class_names, finish_fw, "probs")

        def finish(im, lr, qc):
            H, W = self._out_size(im)
            # PAMR refines the cosine logits at the output size first, as NACLIP (seg_upsample
            # is then an identity resize); then the softmax and SCLIP's grouping / area filter
            src = self._refined(im, lr) if self.pamr else lr
            p = _core.seg_upsample(src, H, W, logit_scale=self.logit_scale, softmax=True)
            if qc is not None:
                p = _group_max(p, qc, C, 0.0)
            if self.area_threshold is not None:
                p = area_filter(p, self.area_threshold)
            return p
        return self._run(image, class_names, finish, fused=None if self.pamr else self._logits_at(True))

    def segment(self, image, class_names: Sequence[str]):
        """Label map (H, W) int32: index into class_names of each pixel's best class; with
        bg_threshold, low-confidence pixels get bg_label (default: 0 when the first class is
        named "background", otherwise -1). synonym_mode="max" and area_threshold follow SCLIP's
        postprocess_result. Never materialises (C, H, W): memory stays bounded for large images."""
        names = _check_names(class_names)

        if self._framework is not None:  # argmax of the resized probabilities
            # a model that streams labels at the image's size (FC-CLIP) gives them directly
            stream = getattr(self.model, "streams_labels", False) and self.output_size is None

            def finish_fw(im, lr, qc):
                if stream:
                    return lr.astype(np.int32, copy=False)
                H, W = self._out_size(im)
                return _core.seg_labels(lr, H, W, logit_scale=1.0, bg_threshold=0.0, bg_label=-1)
            return self._run(image, names, finish_fw, "labels" if stream else "probs")

        def finish(im, lr, qc):
            H, W = self._out_size(im)
            bg = self._resolve_bg_label(names)  # here: after _run has validated the names
            thr = float(self.bg_threshold or 0.0)
            if qc is None and self.area_threshold is None:
                if self.pamr:  # class blocks refined and folded in: still never (C, H, W)
                    return _core.seg_labels_pamr(lr, self._pamr_guide(im, H, W), self.pamr,
                                                 PAMR_DILATIONS, logit_scale=self.logit_scale,
                                                 bg_threshold=thr, bg_label=bg)
                return _core.seg_labels(lr, H, W, logit_scale=self.logit_scale, bg_threshold=thr, bg_label=bg)
            if qc is None:
                qc = np.arange(len(names), dtype=np.int32)
            if self.pamr:  # NACLIP's order: refine the (Q, H, W) query logits, then SCLIP's steps
                lr = self._refined(im, lr)
            area = -1.0 if self.area_threshold is None else self.area_threshold
            return _core.seg_labels_grouped(lr, H, W, qc, len(names), logit_scale=self.logit_scale,
                                            prob_thd=thr, bg_label=bg, area_thd=area)

        def fused(im, cls):  # finish's plain case with the logits kept inside the C call: same labels
            H, W = self._out_size(im)
            hp, wp = processing_size(im.shape[0], im.shape[1], self.short_side)
            labels, bad = self._core_seg().labels(
                np.ascontiguousarray(im), hp, wp, self.model.mean, self.model.std, cls, H, W,
                logit_scale=self.logit_scale, bg_threshold=float(self.bg_threshold or 0.0),
                bg_label=self._resolve_bg_label(names))
            if bad:
                _refuse_nonfinite("the image features", bad, len(cls) * hp * wp)
            return labels
        plain = self.area_threshold is None and not self.pamr
        return self._run(image, names, finish, fused=fused if plain else None)

    def release_workspace(self) -> None:
        """Free the buffers segment() keeps between calls (its (C, H', W') logits at the
        processing size: 382 MB for 847 classes at 336x336); the next call allocates them again."""
        seg = getattr(self, "_seg", None)
        if self._framework is None and seg is not None:
            seg.release_workspace()

    def show(self, image, class_names: Sequence[str], **overlay_kw):
        """Segment one image and return ovs.overlay(image, labels, class_names) as an RGB PIL
        image (a notebook cell ending in it displays it inline). image: as for segment(), or a
        PIL image or an image file path. overlay_kw: alpha, legend, font_size, max_legend,
        boundaries (see ovs.overlay)."""
        from .visualize import overlay

        if isinstance(image, (list, tuple)) or (isinstance(image, np.ndarray) and image.ndim == 4):
            raise ValueError("show() takes one image, not a batch; call it per image")
        img = as_rgb_uint8(image)
        names = _check_names(class_names)
        labels = self.segment(img, names)
        if labels.shape != img.shape[:2]:   # output_size set: show the photo at the labels' size
            from PIL import Image
            img = np.asarray(Image.fromarray(img).resize(labels.shape[::-1], Image.BILINEAR))
        return overlay(img, labels, names, **overlay_kw)

def _group_max(x: np.ndarray, qc: np.ndarray, C: int, init: float) -> np.ndarray:
    """(C, H, W) max over the query planes of each class (x is (Q, H, W))."""
    out = np.full((C,) + x.shape[1:], init, np.float32)
    for q, c in enumerate(qc):
        np.maximum(out[c], x[q], out=out[c])
    return out


def area_filter(probs: np.ndarray, area_threshold: float) -> np.ndarray:
    """SCLIP's area filter on class probabilities (C, H, W), class 0 the background: classes
    c >= 1 whose argmax area is <= area_threshold times the argmax area of all classes >= 1 get
    probability 0 (a copy is returned)."""
    C = probs.shape[0]
    area = np.bincount(probs.argmax(0).ravel(), minlength=C)[1:].astype(np.float32)
    keep = area > np.float32(area_threshold) * area.sum(dtype=np.float32)
    out = probs.copy()
    out[1:][~keep] = 0
    return out
