"""The preset table (ovs/presets.py) against the original repositories' configs.

tests/reference/preset_sources.txt holds the cited config lines, copied from each repository at a
fixed commit by scripts/preset_sources.py (with their line numbers and URLs). This test derives
every method's per-dataset settings from those lines by the originals' own rules — the
segmentor's constructor defaults, overridden by the config's `model = dict(...)` keys; the short
side from `Resize(scale=(2048, S))` / `img_scale` — and requires the table to equal them, and
each citation to point at a line that holds its value. Nothing here reads values from the table
to build the expectation.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

import ovs
from ovs import presets

SOURCES = Path(__file__).resolve().parent / "reference" / "preset_sources.txt"

# preset -> config file of SCLIP / ClearCLIP / NACLIP (configs/cfg_<name>.py)
CFG = {"ade20k-150": "ade20k", "cityscapes": "city_scapes", "coco-object": "coco_object",
       "coco-stuff": "coco_stuff164k", "pascal-context-59": "context59", "pascal-context-60": "context60",
       "voc-20": "voc20", "voc-21": "voc21"}
# method -> (repository, segmentor file)
SEGMENTOR = {"sclip": ("wangf3014/SCLIP", "clip_segmentor.py"),
             "clearclip": ("mc-lan/ClearCLIP", "clearclip_segmentor.py"),
             "naclip": ("sinahmr/NACLIP", "naclip.py")}
# MaskCLIP: preset -> (config, dataset base config)
MASKCLIP = {"ade20k-150": ("configs/maskclip/maskclip_r50_512x512_ade20k.py", "configs/_base_/datasets/ade20k.py"),
            "voc-20": ("configs/maskclip/maskclip_vit16_512x512_voc12aug_20.py",
                       "configs/_base_/datasets/pascal_voc12_aug_20.py"),
            "coco-stuff": ("configs/maskclip/maskclip_vit16_512x512_coco-stuff164k.py",
                           "configs/_base_/datasets/coco-stuff164k.py"),
            "cityscapes": ("configs/maskclip/maskclip_vit16_1024x512_cityscapes.py",
                           "configs/_base_/datasets/cityscapes.py")}


def _read_sources() -> tuple[dict, dict]:
    """({(repo, path): {line number: text}}, {(repo, path): url})."""
    files: dict = {}
    urls: dict = {}
    cur = None
    for ln in SOURCES.read_text(encoding="utf-8").splitlines():
        if ln.startswith("== "):
            repo, path = ln[3:].split(" ", 1)
            cur = (repo, path)
            files[cur] = {}
        elif cur and ln.startswith("# https://github.com/"):
            urls[cur] = ln[2:]
        elif cur and re.match(r"^\d+: ", ln):
            n, text = ln.split(": ", 1)
            files[cur][int(n)] = text
    return files, urls


FILES, URLS = _read_sources()


def _kwargs(text: str) -> dict:
    """name=value pairs of Python keyword arguments in a snippet (literal values only)."""
    out = {}
    for m in re.finditer(r"(\w+)=(\([^()]*\)|'[^']*'|[-\w.]+)", text):
        try:
            out[m.group(1)] = ast.literal_eval(m.group(2))
        except (ValueError, SyntaxError):
            pass  # torch.device(...) and friends
    return out


def _constructor_defaults(repo: str, path: str) -> dict:
    """Keyword defaults of the segmentor's __init__ (its signature may wrap over lines)."""
    lines = FILES[(repo, path)]
    n = next(k for k, t in sorted(lines.items()) if "def __init__" in t)
    sig = [lines[n]]
    while not sig[-1].rstrip().endswith(":"):
        n += 1
        sig.append(lines[n])
    return _kwargs(" ".join(sig))


def _model_overrides(repo: str, path: str) -> dict:
    lines = FILES[(repo, path)]
    body = [t for t in lines.values() if re.match(r"\s+\w+=", t) and "type=" not in t]
    return _kwargs(" ".join(body))


def _resize_short(repo: str, path: str) -> int:
    scales = [ast.literal_eval(m.group(1)) for t in FILES[(repo, path)].values()
              for m in [re.search(r"scale=(\(\d+, \d+\))", t)] if m]
    assert scales, f"no Resize scale in {repo} {path}"
    return min(scales[-1])  # mmseg keep_ratio: the smaller number bounds the short side


def _expected_original(method: str, preset: str) -> dict:
    """Segmenter kwargs of SCLIP / ClearCLIP / NACLIP on a dataset, from the excerpts."""
    repo, seg_file = SEGMENTOR[method]
    cfg = f"configs/cfg_{CFG[preset]}.py"
    d = _constructor_defaults(repo, seg_file)
    d.update(_model_overrides(repo, cfg))
    seg_lines = " ".join(FILES[(repo, seg_file)].values())
    out: dict = {"short_side": _resize_short(repo, cfg), "logit_scale": float(d["logit_scale"]),
                 "window": None if d["slide_crop"] == 0 else (d["slide_crop"], d["slide_stride"])}
    if "cls_index).max(1)" in seg_lines:
        out["synonym_mode"] = "max"
    if d.get("prob_thd", 0) > 0:
        out["bg_threshold"] = d["prob_thd"]
        if re.search(r"seg_pred\[seg_(logits|probs)\.max\(0, keepdim=True\)\[0\] < self\.prob_thd\] = 0", seg_lines):
            out["bg_label"] = 0
    if d.get("area_thd") is not None:
        out["area_threshold"] = d["area_thd"]
    if "gaussian_std" in d:
        out["sigma"] = float(d["gaussian_std"])
    if d.get("pamr_steps", 0) > 0:
        out["pamr"] = d["pamr_steps"]
    return out


def _expected_maskclip(preset: str) -> dict:
    repo = "chongzhou96/MaskCLIP"
    cfg, base = MASKCLIP[preset]
    # the config's own img_scale (an override) wins over its dataset base config
    try:
        short = _resize_short(repo, cfg)
    except AssertionError:
        short = _resize_short(repo, base)
    model_base = next(t for t in FILES[(repo, cfg)].values() if "_base_/models/" in t)
    model_file = "configs/_base_/models/" + re.search(r"_base_/models/([\w.]+\.py)", model_base).group(1)
    mode = " ".join(FILES[(repo, model_file)].values())
    head = _kwargs(" ".join(FILES[(repo, "mmseg/models/decode_heads/maskclip_head.py")].values()))
    return {"short_side": short, "window": None if "mode='whole'" in mode else "slide",
            "prompt_denoise": float(head["pd_thresh"]), "key_smoothing": float(head["ks_thresh"])}


def test_excerpts_are_complete():
    assert all(url.startswith(f"https://github.com/{repo}/blob/{presets.REPOS[repo]}/{path}")
               for (repo, path), url in URLS.items())
    for method, (repo, seg_file) in SEGMENTOR.items():
        assert (repo, seg_file) in FILES
        for name in CFG.values():
            assert (repo, f"configs/cfg_{name}.py") in FILES


@pytest.mark.parametrize("preset", sorted(CFG))
@pytest.mark.parametrize("method", sorted(SEGMENTOR))
def test_table_matches_original_configs(method, preset):
    expected = _expected_original(method, preset)
    assert presets.settings(method, preset) == expected


@pytest.mark.parametrize("preset", sorted(MASKCLIP))
def test_maskclip_table_matches_its_configs(preset):
    assert presets.settings("maskclip", preset) == _expected_maskclip(preset)


def test_maskclip_has_no_other_presets():
    assert {p for m, p in presets.TABLE if m == "maskclip"} == set(MASKCLIP)


def test_published_values_quoted_in_the_issue():
    """Spot checks of values the issue quotes, straight from the excerpt text."""
    s = presets.settings
    assert (s("sclip", "voc-21")["logit_scale"], s("sclip", "voc-21")["bg_threshold"],
            s("sclip", "voc-21")["area_threshold"]) == (65, 0.1, 0.1)
    assert s("sclip", "cityscapes")["short_side"] == 560 and s("sclip", "coco-stuff")["short_side"] == 448
    assert s("clearclip", "coco-object")["bg_threshold"] == 0.4
    assert s("naclip", "cityscapes")["short_side"] == 560
    assert "dict(type='Resize', scale=(2048, 560), keep_ratio=True)" in FILES[("sinahmr/NACLIP",
                                                                                "configs/cfg_city_scapes.py")][14]


# per setting: what the cited line must contain (any one of the strings)
_CITED = {
    "short_side": lambda v: [f", {v})", f"({v}, "],
    "window": lambda v: (["slide_crop=0", "mode='whole'"] if v is None
                         else [f"slide_crop={v[0]}", f"slide_stride={v[1]}"]),
    "logit_scale": lambda v: [f"logit_scale={v:g}"],
    "bg_threshold": lambda v: [f"prob_thd={v:g}"],
    "area_threshold": lambda v: [f"area_thd={v:g}"],
    "bg_label": lambda v: ["< self.prob_thd] = 0"],
    "synonym_mode": lambda v: ["cls_index).max(1)"],
    "sigma": lambda v: [f"gaussian_std={v:g}."],
    "pamr": lambda v: [f"pamr_steps={v}"],
    "prompt_denoise": lambda v: [f"pd_thresh={v:g}."],
    "key_smoothing": lambda v: [f"ks_thresh={v:g}."],
}


@pytest.mark.parametrize("key", sorted(presets.TABLE), ids=lambda k: f"{k[0]}-{k[1]}")
def test_every_setting_cites_a_line_holding_it(key):
    entry = presets.TABLE[key]
    assert set(entry["sources"]) == set(entry["settings"])
    for name, value in entry["settings"].items():
        src = entry["sources"][name]
        m = re.fullmatch(r"([\w.-]+/[\w.-]+) (\S+):(\d+)", src)
        assert m, f"{key} {name}: citation {src!r} is not 'owner/repo path:line'"
        repo, path, line = m.group(1), m.group(2), int(m.group(3))
        assert repo in presets.REPOS
        text = FILES.get((repo, path), {}).get(line)
        assert text is not None, f"{key} {name}: {src} is not in {SOURCES.name}"
        # a window cites the line of its crop (its stride may be a default on the same line)
        assert name in _CITED, f"no citation rule for {name}"
        toks = _CITED[name](value)
        assert any(t in text for t in toks), f"{key} {name}={value!r}: cited line {src} reads {text.strip()!r}"


# ----------------------------------------------------------------------------- Segmenter
@pytest.fixture(scope="module")
def vit(fixtures_dir):
    return ovs.load(fixtures_dir / "vit_tiny.safetensors", act="gelu")


def test_segmenter_applies_presets(vit):
    seg = ovs.Segmenter(vit, "sclip", preset="voc-21")
    assert (seg.short_side, seg.window, seg.logit_scale, seg.bg_threshold, seg.area_threshold, seg.bg_label,
            seg.synonym_mode) == (336, (224, 112), 65.0, 0.1, 0.1, 0, "max")
    assert "preset='voc-21'" in repr(seg)
    seg = ovs.Segmenter(vit, "naclip", preset="voc-20")
    assert seg.window is None and seg.short_side == 336 and seg.sigma == 5.0
    # PAMR is recorded; it is passed on only where Segmenter takes a pamr keyword
    import inspect

    if "pamr" in inspect.signature(ovs.Segmenter.__init__).parameters:
        assert seg.preset_skipped == {}
    else:
        assert seg.preset_skipped == {"pamr": 10}
    # explicit keywords override, explicit None included
    seg = ovs.Segmenter(vit, "sclip", preset="voc-21", short_side=None, window=None, logit_scale=10,
                        bg_threshold=0.3, area_threshold=0.5, synonym_mode="mean", bg_label=-1)
    assert (seg.short_side, seg.window, seg.logit_scale, seg.bg_threshold, seg.area_threshold, seg.synonym_mode,
            seg.bg_label) == (None, None, 10.0, 0.3, 0.5, "mean", -1)
    # a method without a config for the dataset keeps its defaults
    seg = ovs.Segmenter(vit, "maskclip", preset="voc-21")
    assert (seg.short_side, seg.window) == (336, (224, 112))
    # the preset's settings give the same labels as the same settings passed by hand
    img = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    names = ["background, sky, wall", "cat, kitty", "dog", "grass"]
    a = ovs.Segmenter(vit, "clearclip", preset="voc-21", short_side=48, window=(32, 16)).segment(img, names)
    b = ovs.Segmenter(vit, "clearclip", short_side=48, window=(32, 16), logit_scale=50, bg_threshold=0.5,
                      bg_label=0, synonym_mode="max").segment(img, names)
    np.testing.assert_array_equal(a, b)


def test_preset_errors(vit):
    valid = re.escape(", ".join(presets.PRESETS))
    with pytest.raises(ValueError, match=f"unknown preset 'voc21'; valid presets: {valid}"):
        ovs.Segmenter(vit, "sclip", preset="voc21")
    with pytest.raises(ValueError, match="unknown preset 3"):
        presets.settings("sclip", 3)
    with pytest.raises(ValueError, match="unknown method 'segformer'"):
        presets.settings("segformer", "voc-21")


# ----------------------------------------------------------------------------- CLI and eval
def test_cli_segment_with_preset(fixtures_dir, vit, tmp_path):
    """`ovs segment --preset voc-21 --method sclip` writes the labels of
    Segmenter(model, "sclip", preset="voc-21") on the example photo."""
    import os
    import subprocess
    import sys

    from PIL import Image

    from ovs.cli import read_image

    repo = Path(ovs.__file__).resolve().parent.parent
    cat = repo / "ovs" / "data" / "example_cat.jpg"
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("OVS_MODEL", None)
    classes = "background, sky, wall; cat, kitty; grass"
    out = tmp_path / "mask.png"
    base = [sys.executable, "-m", "ovs", "segment", str(cat), "--classes", classes, "--model",
            str(fixtures_dir / "vit_tiny.safetensors"), "--act", "gelu", "--method", "sclip", "--threads", "1"]
    proc = subprocess.run(base + ["--preset", "voc-21", "--out", str(out)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "preset='voc-21'" in proc.stderr and "area_threshold=0.1" in proc.stderr
    with Image.open(out) as im:
        got = np.asarray(im)
    names = ["background, sky, wall", "cat, kitty", "grass"]
    ref = ovs.Segmenter(vit, "sclip", preset="voc-21").segment(read_image(cat), names)
    np.testing.assert_array_equal(got, np.where(ref < 0, 255, ref))
    proc = subprocess.run(base + ["--preset", "voc21", "--out", str(out)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "unknown preset 'voc21'; valid presets: ade20k-150" in proc.stderr


def test_eval_preset_options(tmp_path, fixtures_dir, vit):
    from conftest import load_test_module

    gen = load_test_module("data/make_datasets.py", "ovs_tests_make_datasets")
    gen.make(tmp_path, "voc-21", images=1, size=(20, 28))
    kw = dict(root=tmp_path, model=str(fixtures_dir / "vit_tiny.safetensors"), method="sclip", act="gelu",
              templates="bare", short_side=32, window="whole", progress=False, threads=1)
    default = ovs.evaluate("voc-21", **kw)
    assert default["settings"]["segmenter"]["preset"] == "voc-21"
    assert "area_threshold=0.1" in default["model"]["segmenter"]
    plain = ovs.evaluate("voc-21", preset="none", **kw)
    assert plain["settings"]["segmenter"]["preset"] is None
    assert "area_threshold" not in plain["model"]["segmenter"]
    other = ovs.evaluate("voc-21", preset="pascal-context-60", **kw)
    assert "logit_scale=50.0" in other["model"]["segmenter"]
    with pytest.raises(ValueError, match="unknown preset 'voc'; valid presets"):
        ovs.evaluate("voc-21", preset="voc", **kw)


def test_preset_and_pamr_together(fixtures_dir, vit, tmp_path):
    """NACLIP's presets turn PAMR on (10 steps); an explicit pamr= wins, False included; and
    `ovs segment --pamr 3 --preset voc-21` on the example photo writes the labels of
    Segmenter(model, "naclip", preset="voc-21", pamr=3)."""
    import os
    import subprocess
    import sys

    from PIL import Image

    from ovs.cli import read_image

    assert ovs.Segmenter(vit, "naclip", preset="voc-21").pamr == 10
    assert ovs.Segmenter(vit, "naclip", preset="voc-21", pamr=False).pamr == 0
    assert ovs.Segmenter(vit, "naclip", preset="voc-21", pamr=3).pamr == 3
    assert ovs.Segmenter(vit, "sclip", preset="voc-21").pamr == 0  # SCLIP's configs: no PAMR

    repo = Path(ovs.__file__).resolve().parent.parent
    cat = repo / "ovs" / "data" / "example_cat.jpg"
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("OVS_MODEL", None)
    out = tmp_path / "mask.png"
    proc = subprocess.run(
        [sys.executable, "-m", "ovs", "segment", str(cat), "--classes", "background; cat, kitty; grass",
         "--model", str(fixtures_dir / "vit_tiny.safetensors"), "--act", "gelu", "--method", "naclip",
         "--threads", "1", "--preset", "voc-21", "--pamr", "3", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as im:
        got = np.asarray(im)
    seg = ovs.Segmenter(vit, "naclip", preset="voc-21", pamr=3)
    ref = seg.segment(read_image(cat), ["background", "cat, kitty", "grass"])
    np.testing.assert_array_equal(got, np.where(ref < 0, 255, ref))
