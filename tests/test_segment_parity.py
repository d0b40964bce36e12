"""Parity of ovs.Segmenter (maskclip / sclip / clearclip / naclip) with the PyTorch reference.

Fixtures come from tests/reference/seg_reference.py (float64 torch on random-weight open_clip
models, see tests/reference/SEGMENTATION_SPEC.md), generated once into tests/_generated.

Tolerance policy: max |ours - ref| / max |ref| <= 1e-4 for cosine logits and for probabilities;
labels must agree on >= 99.9% of the pixels whose reference top-2 logit gap exceeds twice the
allowed logit error (closer pixels are ties within tolerance); label maps have the input's size.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import ovs

from conftest import load_reference

HERE = Path(__file__).resolve().parent
GENERATED = HERE / "_generated"
REL_TOL = 1e-4
MIN_AGREEMENT = 0.999


ref = load_reference("seg_reference")
CASES = [c["name"] for c in ref.fixture_cases()]
# predict() and segment() are checked on a cheaper subset (every method and both models appear);
# logits() runs on every case.
PREDICT_CASES = [
    "maskclip_vit_synth_whole", "sclip_synth_whole", "clearclip_synth_whole", "naclip_synth_whole",
    "maskclip_rn50_synth_whole", "clearclip_small", "maskclip_rn50_small", "naclip_odd_whole",
]
SEGMENT_CASES = ["clearclip_small", "maskclip_rn50_small", "naclip_odd_whole",
                 "maskclip_rn50_odd_whole"]


@pytest.fixture(scope="session")
def seg_dir() -> Path:
    return ref.ensure_seg_fixtures(GENERATED)


@pytest.fixture(scope="session")
def models(seg_dir):
    cache = {}

    def get(tag):
        if tag not in cache:
            cache[tag] = ovs.load(str(seg_dir / f"seg_{tag}.safetensors"))
        return cache[tag]

    return get


@pytest.fixture(scope="session")
def fixture(seg_dir):
    cache = {}

    def get(name):
        if name not in cache:
            with np.load(seg_dir / f"seg_{name}.npz") as z:
                d = {k: z[k] for k in z.files}
            d["class_names"] = [str(s) for s in d["class_names"]]
            d["method"] = str(d["method"])
            d["model"] = str(d["model"])
            d["templates"] = str(d["templates"])
            d["short_side"] = int(d["short_side"]) or None
            w = tuple(int(v) for v in d["window"])
            d["window"] = None if w == (0, 0) else w
            d["logit_scale"] = float(d["logit_scale"])
            cache[name] = d
        return cache[name]

    return get


def make_segmenter(models, fx, **extra):
    return ovs.Segmenter(models(fx["model"]), method=fx["method"], short_side=fx["short_side"],
                         window=fx["window"], logit_scale=fx["logit_scale"],
                         templates=fx["templates"], **extra)


def rel_err(got, want) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


def decidable(logits_ref: np.ndarray) -> np.ndarray:
    """Pixels whose reference top-2 logit gap exceeds twice the allowed logit error."""
    top2 = np.sort(logits_ref, axis=0)[-2:]
    return (top2[1] - top2[0]) > 2 * REL_TOL * np.abs(logits_ref).max()


def check_labels(labels, fx, what):
    h, w = fx["image"].shape[:2]
    assert labels.shape == (h, w), f"{what}: label map {labels.shape}, input {(h, w)}"
    mask = decidable(fx["logits"])
    assert mask.mean() > 0.9, "fixture too tie-heavy to judge labels"
    agree = float((labels == fx["labels"])[mask].mean())
    n_bad = int((labels != fx["labels"])[mask].sum())
    assert agree >= MIN_AGREEMENT, (
        f"{what}: labels agree on {agree * 100:.3f}% of decidable pixels "
        f"({n_bad} of {int(mask.sum())} differ)")


_logits_cache = {}


def ovs_logits(models, fx, name):
    if name not in _logits_cache:
        seg = make_segmenter(models, fx)
        _logits_cache[name] = seg.logits(fx["image"], fx["class_names"])
    return _logits_cache[name]


@pytest.mark.parametrize("name", CASES)
def test_logits_match_reference(models, fixture, name):
    fx = fixture(name)
    got = ovs_logits(models, fx, name)
    c = len(fx["class_names"])
    h, w = fx["image"].shape[:2]
    assert isinstance(got, np.ndarray) and got.dtype == np.float32, type(got)
    assert got.shape == (c, h, w), f"logits shape {got.shape}, want {(c, h, w)}"
    err = rel_err(got, fx["logits"])
    assert err <= REL_TOL, f"{name}: logits max rel error {err:.3g} > {REL_TOL}"
    check_labels(got.argmax(axis=0), fx, f"{name} argmax(logits)")


@pytest.mark.parametrize("name", PREDICT_CASES)
def test_predict_matches_reference(models, fixture, name):
    fx = fixture(name)
    probs = make_segmenter(models, fx).predict(fx["image"], fx["class_names"])
    c = len(fx["class_names"])
    h, w = fx["image"].shape[:2]
    assert isinstance(probs, np.ndarray) and probs.dtype == np.float32, type(probs)
    assert probs.shape == (c, h, w), f"probs shape {probs.shape}, want {(c, h, w)}"
    sums = probs.astype(np.float64).sum(axis=0)
    assert np.abs(sums - 1).max() < 1e-5, f"{name}: probs sum off by {np.abs(sums - 1).max():.3g}"
    err = rel_err(probs, fx["probs"])
    assert err <= REL_TOL, f"{name}: probs max rel error {err:.3g} > {REL_TOL}"


@pytest.mark.parametrize("name", SEGMENT_CASES)
def test_segment_labels(models, fixture, name):
    fx = fixture(name)
    labels = make_segmenter(models, fx).segment(fx["image"], fx["class_names"])
    assert isinstance(labels, np.ndarray) and labels.dtype == np.int32, type(labels)
    assert labels.min() >= 0 and labels.max() < len(fx["class_names"]), (labels.min(), labels.max())
    check_labels(labels, fx, f"{name} segment()")


@pytest.mark.parametrize("layout", ["strided", "fortran"])
def test_noncontiguous_image(models, fixture, layout):
    fx = fixture("maskclip_rn50_small")
    img = fx["image"]
    if layout == "strided":
        big = np.zeros((img.shape[0], img.shape[1] * 2, 3), np.uint8)
        big[:, ::2] = img
        view = big[:, ::2]
    else:
        view = np.asfortranarray(img)
    assert not view.flags.c_contiguous and np.array_equal(view, img)
    got = make_segmenter(models, fx).logits(view, fx["class_names"])
    err = rel_err(got, fx["logits"])
    assert err <= REL_TOL, f"{layout} image: logits max rel error {err:.3g}"


@pytest.mark.parametrize("name,bg_label", [("maskclip_rn50_small", 0), ("naclip_synth_whole", -1)])
def test_background_threshold(models, fixture, name, bg_label):
    # voc classes start with a "background" class -> low-confidence pixels get 0; the synth
    # classes have no background class -> -1 (SEGMENTATION_SPEC.md §2).
    fx = fixture(name)
    assert (fx["class_names"][0] == "background") == (bg_label == 0)
    pmax = fx["probs"].max(axis=0)
    thr = float(np.quantile(pmax, 0.3))
    labels = make_segmenter(models, fx, bg_threshold=thr).segment(fx["image"], fx["class_names"])
    assert labels.dtype == np.int32 and labels.shape == fx["image"].shape[:2]
    want = np.where(pmax < thr, bg_label, fx["labels"])
    mask = decidable(fx["logits"]) & (np.abs(pmax - thr) > REL_TOL * fx["probs"].max())
    agree = float((labels == want)[mask].mean())
    assert agree >= MIN_AGREEMENT, f"bg threshold: labels agree on {agree * 100:.3f}%"
    assert (labels[mask & (pmax < thr)] == bg_label).all()


# ----------------------------------------------------------------------------------------------
# Bad inputs (cheap segmenter: RN50 maskclip at the input size, one window)
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cheap(models):
    return ovs.Segmenter(models("rn50"), method="maskclip", short_side=None, window=None,
                         logit_scale=40, templates="simple")


IMG = np.full((64, 96, 3), 128, np.uint8)


@pytest.mark.parametrize("call", ["predict", "segment", "logits"])
def test_empty_class_list(cheap, call):
    with pytest.raises(ValueError, match="empty"):
        getattr(cheap, call)(IMG, [])


@pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.int8, np.bool_])
def test_non_uint8_image(cheap, dtype):
    with pytest.raises(TypeError, match=f"uint8.*got {np.dtype(dtype)}"):
        cheap.segment(IMG.astype(dtype), ["cat", "dog"])


def test_nan_float_image(cheap):
    img = IMG.astype(np.float32)
    img[3, 5, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        cheap.segment(img, ["cat", "dog"])


@pytest.mark.parametrize("shape", [(64, 96), (64 * 96 * 3,), (64, 96, 4), (64, 96, 1)])
def test_wrong_shape(cheap, shape):
    with pytest.raises(ValueError, match=re.escape(f"got shape {shape}")):
        cheap.segment(np.zeros(shape, np.uint8), ["cat", "dog"])


def test_unknown_method_lists_valid(models):
    with pytest.raises(ValueError) as info:
        ovs.Segmenter(models("vitb16"), method="segformer")
    msg = str(info.value)
    for m in ref.METHODS:
        assert m in msg, f"error message does not list {m!r}: {msg}"


@pytest.mark.parametrize("method", ref.VIT_ONLY_METHODS)
def test_vit_only_method_on_resnet(models, method):
    with pytest.raises(ValueError, match=f"method '{method}' needs a ViT model"):
        ovs.Segmenter(models("rn50"), method=method)



# ----------------------------------------------------------------------------------------------
# Defaults and the fixtures themselves
# ----------------------------------------------------------------------------------------------

DEFAULT_CASES = [c for c in CASES if c.endswith("_defaults")]


def test_every_method_has_a_defaults_fixture():
    assert sorted(ref.fixture_cases()[CASES.index(n)]["method"] for n in DEFAULT_CASES) == \
        sorted(["maskclip", "maskclip", "sclip", "clearclip", "naclip"]), DEFAULT_CASES


@pytest.mark.parametrize("name", DEFAULT_CASES)
def test_defaults_match_reference(models, fixture, name):
    """Segmenter(model, method) with no settings: the published defaults (short side, window,
    logit scale, the 80 ImageNet templates) of the reference, and its probabilities."""
    fx = fixture(name)
    seg = ovs.Segmenter(models(fx["model"]), method=fx["method"])
    got = (seg.short_side, seg.window, seg.logit_scale, seg.templates)
    want = (fx["short_side"], fx["window"], fx["logit_scale"], fx["templates"])
    assert got == want, f"{fx['method']} defaults {got} != reference {want}"
    assert fx["templates"] == "imagenet80"
    if name not in _logits_cache:  # shared with test_logits_match_reference (CI time)
        _logits_cache[name] = seg.logits(fx["image"], fx["class_names"])
    logits = _logits_cache[name].astype(np.float64)
    err = rel_err(logits, fx["logits"])
    assert err <= REL_TOL, f"{name}: logits max rel error {err:.3g} > {REL_TOL}"
    z = seg.logit_scale * logits
    probs = np.exp(z - z.max(0))
    probs /= probs.sum(0)
    err = rel_err(probs, fx["probs"])
    assert err <= REL_TOL, f"{name}: probs max rel error {err:.3g} > {REL_TOL}"


def test_readme_defaults_table():
    """The README's method table states the defaults that Segmenter uses."""
    readme = (HERE.parent / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)`[^|]*\|[^|]*\| (\d+) \| (\d+) / (\d+) \| (\d+) \| (\w+) \|$",
                      readme, re.M)
    table = {m: (int(s), (int(c), int(st)), float(ls), t) for m, s, c, st, ls, t in rows}
    assert set(table) == set(ovs.METHODS), f"README table rows: {sorted(table)}"
    scclip_ref = load_reference("scclip_reference")  # SC-CLIP's defaults (its configs), tests/test_scclip.py
    for method, (short, window, scale, templates) in table.items():
        d = scclip_ref.DEFAULTS if method == "scclip" else ref.DEFAULTS[method]
        assert (d["short_side"], d["window"], d["logit_scale"], d["templates"]) == \
            (short, window, scale, templates), f"README row for {method} != reference defaults"


def test_fixture_weights_have_no_constant_tensor(seg_dir):
    """Every weight of the parity models is random (open_clip zero-initialises the attention
    biases: a head that dropped a q/k/v/out bias would still match)."""
    from ovs.weights import load_state_dict

    for tag in ("vitb16", "rn50"):
        sd = load_state_dict(seg_dir / f"seg_{tag}.safetensors")
        const = [k for k, v in sd.items()
                 if v.dtype.kind == "f" and v.size > 1 and np.all(v == v.flat[0])]
        assert not const, f"seg_{tag}: constant tensors {const}"
        assert np.abs(sd["visual.attnpool.v_proj.bias" if tag == "rn50" else
                         "visual.transformer.resblocks.11.attn.in_proj_bias"]).min() > 0


def test_reference_labels_not_constant(fixture):
    """Every reference label map holds several classes, none covering 90% of it (a nearly
    constant map would let a broken head pass; the RN50 maps were 95-99.8% one class before
    seg_reference._center_rn50_values also cancelled the c_proj bias)."""
    for name in json.loads((GENERATED / "seg_index.json").read_text()):
        labels = fixture(name)["labels"]
        counts = np.bincount(labels.ravel())
        share = counts.max() / labels.size
        assert share < 0.9, f"{name}: one class covers {share * 100:.1f}% of the reference map"
        assert (counts > 0).sum() >= 2, f"{name}: a single class in the reference map"
