"""Per-dataset settings of each training-free method, as the original repositories publish them.

    >>> import ovs
    >>> seg = ovs.Segmenter(ovs.load("ViT-B-16"), "sclip", preset="voc-21")
    >>> seg.short_side, seg.window, seg.logit_scale, seg.bg_threshold, seg.area_threshold
    (336, (224, 112), 65.0, 0.1, 0.1)
    >>> ovs.presets.settings("naclip", "voc-20")["window"] is None      # whole-image inference
    True

One table, `TABLE[(method, preset)]`: the Segmenter keyword arguments that method's repository
uses on that dataset, each with `sources[key]` = "owner/repo path:line" of the config or code line
it comes from (commits in `REPOS`; the cited lines are copied in
tests/reference/preset_sources.txt, which tests/test_presets.py parses to check this table).
Explicit Segmenter keyword arguments override a preset. Keys:

- short_side: mmseg `Resize(scale=(2048, S), keep_ratio=True)` -> S (ovs caps the long side at
  max(2048, S) as mmseg does);
- window: (slide_crop, slide_stride); None = whole-image inference (`slide_crop=0` /
  `test_cfg=dict(mode='whole')`);
- logit_scale: the softmax temperature (`logit_scale`);
- bg_threshold: `prob_thd` (pixels whose top class probability is below it get `bg_label`);
- bg_label: 0 where the originals write `seg_pred[max_prob < prob_thd] = 0` on datasets whose
  class 0 is the background (VOC-21, Context-60, COCO-Object);
- area_threshold: SCLIP's `area_thd`;
- synonym_mode: "max" = each synonym is its own query and a class scores the max probability of its
  queries (SCLIP / ClearCLIP / NACLIP `postprocess_result`);
- sigma: NACLIP's `gaussian_std`;
- prompt_denoise / key_smoothing: MaskCLIP's pd_thresh / ks_thresh (0 = off, its default);
- pamr: PAMR iterations (NACLIP's `pamr_steps=10`), passed to Segmenter as `pamr=` (a setting
  its constructor has no keyword for would be recorded in `Segmenter.preset_skipped`). Like every
  preset value it fills the keyword only while the caller leaves it at its default.

Not expressible, so left out: MaskCLIP's Pascal Context setting (`img_scale=(520, 520)` caps the
long side at 520, not the short side), its ImageNet mean/std and its 85 templates; ClearCLIP's
and SCLIP's fp16 inference. A (method, preset) pair without a published config (e.g. MaskCLIP
on VOC-21) applies nothing: the method's defaults stay.
"""
from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "TABLE", "REPOS", "settings", "check_preset"]

#: Repository commits the citations refer to.
REPOS = {
    "wangf3014/SCLIP": "b56bd3014b9e8a3ee3450bcfc53700a67d627b7a",
    "mc-lan/ClearCLIP": "ad68a404d55d48d27330b93554eb64a234ff717f",
    "sinahmr/NACLIP": "0cac3a651f753b11315ea799cfbfabf79da1bd76",
    "chongzhou96/MaskCLIP": "245d31f809be9c1938f8f30561b6bf9ed033d746",
}

#: Valid preset names (datasets the originals ship configs for).
PRESETS = ("ade20k-150", "cityscapes", "coco-object", "coco-stuff", "pascal-context-59",
           "pascal-context-60", "voc-20", "voc-21")

_S, _C, _N, _M = "wangf3014/SCLIP", "mc-lan/ClearCLIP", "sinahmr/NACLIP", "chongzhou96/MaskCLIP"


def _e(**kw) -> dict[str, Any]:
    """An entry: values and their sources, given as key=(value, "repo path:line")."""
    return {"settings": {k: v[0] for k, v in kw.items()}, "sources": {k: v[1] for k, v in kw.items()}}


# --- SCLIP: CLIPForSegmentation defaults (clip_segmentor.py:19-21), configs/cfg_*.py overrides
_SC = f"{_S} clip_segmentor.py"
_sclip_common = dict(window=((224, 112), f"{_SC}:21"), synonym_mode=("max", f"{_SC}:159"))


def _sclip(cfg: str, short_side: int, line: int, bg=None, area=None) -> dict[str, Any]:
    """An SCLIP entry from configs/<cfg>: the short side at `line`; the default logit scale, or
    with bg=(logit_scale, bg_threshold) those two at the config's lines 6 and 7 and background
    label 0; area=area_threshold at line 8."""
    c = f"{_S} configs/{cfg}"
    kw = dict(short_side=(short_side, f"{c}:{line}"), logit_scale=(40.0, f"{_SC}:20"))
    if bg is not None:
        kw.update(logit_scale=(bg[0], f"{c}:6"), bg_threshold=(bg[1], f"{c}:7"))
        if area is not None:
            kw["area_threshold"] = (area, f"{c}:8")
        kw["bg_label"] = (0, f"{_SC}:170")
    return _e(**kw, **_sclip_common)
# --- ClearCLIP: ClearCLIPSegmentation defaults (clearclip_segmentor.py:22-23)
_CC = f"{_C} clearclip_segmentor.py"
_clear_common = dict(window=((448, 224), f"{_CC}:23"), logit_scale=(50.0, f"{_CC}:23"),
                     synonym_mode=("max", f"{_CC}:227"))
# --- NACLIP: NACLIP defaults (naclip.py:20-22)
_NC = f"{_N} naclip.py"
_na_common = dict(logit_scale=(40.0, f"{_NC}:22"), sigma=(5.0, f"{_NC}:21"), pamr=(10, f"{_NC}:21"),
                  synonym_mode=("max", f"{_NC}:149"))
_na_slide = dict(window=((224, 112), f"{_NC}:22"))
# --- MaskCLIP: its own protocol, whole-image inference at short side 512; prompt denoising and
# key smoothing off (MaskClipHead(ks_thresh=0., pd_thresh=0.), maskclip_head.py:15)
_MH = f"{_M} mmseg/models/decode_heads/maskclip_head.py:15"


def _maskclip(short_cfg: str, model_cfg: str) -> dict[str, Any]:
    """A MaskCLIP entry: short side 512 at configs/<short_cfg> ("path:line"), whole-image
    inference at configs/_base_/models/<model_cfg>, the head's defaults."""
    return _e(short_side=(512, f"{_M} configs/{short_cfg}"),
              window=(None, f"{_M} configs/_base_/models/{model_cfg}"),
              prompt_denoise=(0.0, _MH), key_smoothing=(0.0, _MH))


TABLE: dict[tuple[str, str], dict[str, Any]] = {
    # ------------------------------------------------------------------ SCLIP
    ("sclip", "ade20k-150"): _sclip("cfg_ade20k.py", 336, 14),
    ("sclip", "cityscapes"): _sclip("cfg_city_scapes.py", 560, 14),
    ("sclip", "coco-object"): _sclip("cfg_coco_object.py", 336, 16, bg=(50.0, 0.1)),
    ("sclip", "coco-stuff"): _sclip("cfg_coco_stuff164k.py", 448, 14),
    ("sclip", "pascal-context-59"): _sclip("cfg_context59.py", 336, 14),
    ("sclip", "pascal-context-60"): _sclip("cfg_context60.py", 336, 16, bg=(50.0, 0.1)),
    ("sclip", "voc-20"): _sclip("cfg_voc20.py", 336, 14),
    ("sclip", "voc-21"): _sclip("cfg_voc21.py", 336, 17, bg=(65.0, 0.1), area=0.1),
    # ------------------------------------------------------------------ ClearCLIP
    ("clearclip", "ade20k-150"): _e(short_side=(448, f"{_C} configs/cfg_ade20k.py:14"), **_clear_common),
    ("clearclip", "cityscapes"): _e(short_side=(448, f"{_C} configs/cfg_city_scapes.py:15"),
                                    **dict(_clear_common, window=((224, 224), f"{_C} configs/cfg_city_scapes.py:6"))),
    ("clearclip", "coco-object"): _e(short_side=(448, f"{_C} configs/cfg_coco_object.py:15"),
                                     bg_threshold=(0.4, f"{_C} configs/cfg_coco_object.py:6"),
                                     bg_label=(0, f"{_CC}:230"), **_clear_common),
    ("clearclip", "coco-stuff"): _e(short_side=(448, f"{_C} configs/cfg_coco_stuff164k.py:14"), **_clear_common),
    ("clearclip", "pascal-context-59"): _e(short_side=(448, f"{_C} configs/cfg_context59.py:14"), **_clear_common),
    ("clearclip", "pascal-context-60"): _e(short_side=(448, f"{_C} configs/cfg_context60.py:15"),
                                           bg_threshold=(0.15, f"{_C} configs/cfg_context60.py:6"),
                                           bg_label=(0, f"{_CC}:230"), **_clear_common),
    ("clearclip", "voc-20"): _e(short_side=(448, f"{_C} configs/cfg_voc20.py:14"), **_clear_common),
    ("clearclip", "voc-21"): _e(short_side=(448, f"{_C} configs/cfg_voc21.py:15"),
                                bg_threshold=(0.5, f"{_C} configs/cfg_voc21.py:6"),
                                bg_label=(0, f"{_CC}:230"), **_clear_common),
    # ------------------------------------------------------------------ NACLIP
    ("naclip", "ade20k-150"): _e(short_side=(336, f"{_N} configs/cfg_ade20k.py:14"), **_na_slide, **_na_common),
    ("naclip", "cityscapes"): _e(short_side=(560, f"{_N} configs/cfg_city_scapes.py:14"), **_na_slide, **_na_common),
    ("naclip", "coco-object"): _e(short_side=(336, f"{_N} configs/cfg_coco_object.py:15"),
                                  bg_threshold=(0.1, f"{_N} configs/cfg_coco_object.py:6"),
                                  bg_label=(0, f"{_NC}:152"), **_na_slide, **_na_common),
    ("naclip", "coco-stuff"): _e(short_side=(336, f"{_N} configs/cfg_coco_stuff164k.py:14"), **_na_slide, **_na_common),
    ("naclip", "pascal-context-59"): _e(short_side=(336, f"{_N} configs/cfg_context59.py:14"), **_na_slide,
                                        **_na_common),
    ("naclip", "pascal-context-60"): _e(short_side=(336, f"{_N} configs/cfg_context60.py:15"),
                                        bg_threshold=(0.1, f"{_N} configs/cfg_context60.py:6"),
                                        bg_label=(0, f"{_NC}:152"), **_na_slide, **_na_common),
    ("naclip", "voc-20"): _e(short_side=(336, f"{_N} configs/cfg_voc20.py:15"),
                             window=(None, f"{_N} configs/cfg_voc20.py:6"), **_na_common),
    ("naclip", "voc-21"): _e(short_side=(336, f"{_N} configs/cfg_voc21.py:16"),
                             bg_threshold=(0.1, f"{_N} configs/cfg_voc21.py:6"),
                             window=(None, f"{_N} configs/cfg_voc21.py:7"),
                             bg_label=(0, f"{_NC}:152"), **_na_common),
    # ------------------------------------------------------------------ MaskCLIP
    ("maskclip", "ade20k-150"): _maskclip("_base_/datasets/ade20k.py:23", "maskclip_r50.py:26"),
    ("maskclip", "voc-20"): _maskclip("_base_/datasets/pascal_voc12_aug_20.py:23", "maskclip_vit16.py:51"),
    ("maskclip", "coco-stuff"): _maskclip("_base_/datasets/coco-stuff164k.py:23", "maskclip_vit16.py:51"),
    # img_scale=(1024, 512): short side 512 with the long side capped at 1024; on Cityscapes'
    # 2048x1024 images that is exactly short side 512
    ("maskclip", "cityscapes"): _maskclip("maskclip/maskclip_vit16_1024x512_cityscapes.py:22",
                                          "maskclip_vit16.py:51"),
}


def check_preset(name) -> str:
    """name if it is a known preset, else ValueError listing the valid ones."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return name


def settings(method: str, preset: str) -> dict[str, Any]:
    """The Segmenter keyword arguments of `method` on `preset` (a copy; {} when that method's
    repository has no config for the dataset). ValueError for an unknown preset or method."""
    from .segment import METHODS

    check_preset(preset)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    entry = TABLE.get((method, preset))
    return dict(entry["settings"]) if entry else {}


def sources(method: str, preset: str) -> dict[str, str]:
    """Where each setting of settings(method, preset) comes from ("owner/repo path:line")."""
    check_preset(preset)
    entry = TABLE.get((method, preset))
    return dict(entry["sources"]) if entry else {}
