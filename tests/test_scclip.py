"""SC-CLIP (method="scclip"): its calibration ops against SC-CLIP's own functions re-typed in
torch (tests/reference/scclip_reference.py) and against their naive C twins, and the whole
method's logits against the reference on identical random weights.

Tolerance policy (as tests/test_segment_parity.py): max |ours - ref| / max |ref| <= 1e-4 for
cosine logits and probabilities; labels agree on >= 99.9% of the pixels whose reference top-2
gap exceeds twice the allowed logit error. The reference runs in float64 inside the test (no
stored fixtures). SC-CLIP takes discrete decisions (LOF anomalies, similarity >= 0.4, similarity
>= its mean): a decision within float32 rounding of its threshold could flip, so each failure
message reports the smallest margin the reference saw at each decision.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

import ovs
from ovs import _core

from conftest import load_reference

REL_TOL = 1e-4
MIN_AGREEMENT = 0.999


R = load_reference("seg_reference")
S = load_reference("scclip_reference")


# ----------------------------------------------------------------------------------------------
# Ops: LOF anomalies, neighbour repair, thresholded similarity aggregation
# ----------------------------------------------------------------------------------------------

def _tokens(rng, M, D, planted=()):
    x = rng.standard_normal((M, D)).astype(np.float32)
    for i in planted:
        x[i] += 6.0 * rng.standard_normal(D).astype(np.float32)
    return x


@pytest.mark.parametrize("M,D,k", [(196, 48, 30), (70, 128, 30), (20, 16, 30), (2, 3, 30),
                                   (300, 8, 5), (90, 4, 80)])
def test_lof_matches_scclip_and_naive(M, D, k):
    rng = np.random.default_rng(M * 7 + D)
    x = _tokens(rng, M, D, planted=range(0, M, 17))
    idx, lof_ref, _ = S.lof_pytorch(torch.from_numpy(x).double(), n_neighbors=k)
    want = np.zeros(M, bool)
    want[idx.numpy()] = True
    for naive in (False, True):
        mask, lof = _core.op_lof_outliers(x, k=k, contamination=0.05, naive=naive)
        assert mask.dtype == np.bool_ and lof.dtype == np.float64
        err = float(np.abs(lof - lof_ref.numpy()).max() / np.abs(lof_ref.numpy()).max())
        assert err < 1e-6, f"M={M} naive={naive}: LOF scores differ by {err:.3g}"
        assert np.array_equal(mask, want), (
            f"M={M} naive={naive}: anomalies {np.flatnonzero(mask)} != {np.flatnonzero(want)}")
    assert want.any() or M < 50  # the fixture exercises the decision


def test_lof_edge_cases():
    for M in (0, 1):
        mask, lof = _core.op_lof_outliers(np.zeros((M, 4), np.float32))
        assert mask.shape == (M,) and not mask.any()
    dup = np.ones((40, 3), np.float32)  # every k-distance is 0: nothing can be ranked
    for naive in (False, True):
        assert not _core.op_lof_outliers(dup, naive=naive)[0].any()
    x = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="contamination must be in \\[0, 1\\], got 1.5"):
        _core.op_lof_outliers(x, contamination=1.5)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        _core.op_lof_outliers(x, k=0)
    assert not _core.op_lof_outliers(x, contamination=0.0)[0].any()


def test_neighbour_fill_matches_scclip():
    rng = np.random.default_rng(3)
    H, W, D = 6, 7, 5
    x = rng.standard_normal((H, W, D)).astype(np.float32)
    mask = np.zeros((H, W), bool)
    mask[0, 0] = mask[0, 1] = mask[2, 3] = mask[H - 1, W - 1] = mask[3, 3] = True
    mask[4:6, 0:2] = True  # a block: its members average only unmarked neighbours
    got = _core.op_neighbour_fill(x, mask)
    fm = torch.from_numpy(x).double().permute(2, 0, 1)[None]
    want = S.mean_interpolation(fm, [tuple(p) for p in np.argwhere(mask)])[0].permute(1, 2, 0)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-6)
    assert np.array_equal(got[~mask], x[~mask])
    # every token marked: none has an unmarked neighbour, all are kept
    np.testing.assert_array_equal(_core.op_neighbour_fill(x, np.ones((H, W), bool)), x)
    with pytest.raises(ValueError, match="outlier must have shape \\(6, 7\\), got \\(7, 6\\)"):
        _core.op_neighbour_fill(x, np.zeros((7, 6), bool))


@pytest.mark.parametrize("M,D", [(196, 64), (33, 7), (1, 3)])
def test_similarity_aggregate_matches_scclip_and_naive(M, D):
    rng = np.random.default_rng(M)
    f = rng.standard_normal((M, 16)).astype(np.float32) + 0.7
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    corr = f @ f.T
    x = rng.standard_normal((M, D)).astype(np.float32)
    c = torch.from_numpy(corr).double()
    c[c < S.BETA] = 0.0
    want = S.adaptively_aggregate(torch.from_numpy(x).double()[:, None], c[None])[:, 0].numpy()
    assert 0.05 < float((corr >= S.BETA).mean()) < 0.95 or M == 1
    for naive in (False, True):
        got = _core.op_similarity_aggregate(x, corr, S.BETA, naive=naive)
        err = float(np.abs(got - want).max() / np.abs(want).max())
        assert err < 1e-5, f"naive={naive}: {err:.3g}"
    with pytest.raises(ValueError, match=f"corr must have shape \\({M}, {M}\\)"):
        _core.op_similarity_aggregate(x, corr[:, :0], S.BETA)


# ----------------------------------------------------------------------------------------------
# The method: Segmenter(model, "scclip") against the reference on random weights
# ----------------------------------------------------------------------------------------------

def _randomised(model):
    R._randomise_norms(model)
    R._randomise_constants(model)
    return model.eval()


def _narrow_vit(layers):
    """A 12-block ViT/16 of width 128 (2 heads of 64): every SC-CLIP index of ViT-B/16 applies,
    at 1/36 of the cost of width 768."""
    torch.manual_seed(0)
    return _randomised(open_clip.CLIP(
        embed_dim=64, quick_gelu=True,
        vision_cfg=dict(layers=layers, width=128, head_width=64, patch_size=16, image_size=224),
        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=1)))


def _to_ovs(model):
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return ovs.Model(sd, act="quickgelu")


@pytest.fixture(scope="module")
def narrow_pair():
    m = _narrow_vit(12)
    om = _to_ovs(m)
    return m.double(), om


@pytest.fixture(scope="module")
def narrow_sd():
    return {k: v.detach().numpy().copy() for k, v in _narrow_vit(12).state_dict().items()}


CASES = {
    # name: (image, short_side, window); windows of 224 x 224 -> square 14 x 14 grids
    "synth_win": (lambda: R.synthetic_image(240, 320, seed=1), 224, (224, 112)),
    # the whole 100 x 150 image, padded to 112 x 160: a non-square 7 x 10 grid
    "small_whole": (lambda: R.synthetic_image(100, 150, seed=2), None, None),
    # odd sides, a window taller than the image: two 181 x 224 windows on 12 x 14 grids
    "odd_win": (lambda: R.synthetic_image(181, 243, seed=3), None, (224, 112)),
}
NAMES = R.CLASSES["synth"]


def _reference(model64, seg, image, short_side, window):
    cls = torch.from_numpy(seg.classifier(NAMES))
    stats = []
    ref = S.reference_logits(model64, image, cls, short_side, window, torch.float64, stats)
    margins = {k: min(s[k] for s in stats if k in s) for k in
               ("lof_margin", "mid_margin", "beta_margin_pre", "beta_margin_post")}
    return ref.numpy(), margins


def _check(got, ref, margins, what):
    assert got.dtype == np.float32 and got.shape == ref.shape, (got.dtype, got.shape, ref.shape)
    err = float(np.abs(got.astype(np.float64) - ref).max() / np.abs(ref).max())
    assert err <= REL_TOL, f"{what}: logits max rel error {err:.3g} (decision margins {margins})"
    top2 = np.sort(ref, axis=0)[-2:]
    decidable = (top2[1] - top2[0]) > 2 * REL_TOL * np.abs(ref).max()
    assert decidable.mean() > 0.9
    agree = float((got.argmax(0) == ref.argmax(0))[decidable].mean())
    assert agree >= MIN_AGREEMENT, f"{what}: labels agree on {agree * 100:.3f}%"


@pytest.mark.parametrize("name", list(CASES))
def test_scclip_logits_match_reference(narrow_pair, name):
    model64, om = narrow_pair
    make, short_side, window = CASES[name]
    image = make()
    seg = ovs.Segmenter(om, method="scclip", short_side=short_side, window=window,
                        templates="simple")
    ref, margins = _reference(model64, seg, image, short_side, window)
    got = seg.logits(image, NAMES)
    _check(got, ref, margins, name)
    if name == "odd_win":
        probs = seg.predict(image, NAMES)
        want = torch.softmax(40.0 * torch.from_numpy(ref), 0).numpy()
        err = float(np.abs(probs - want).max() / want.max())
        assert err <= REL_TOL, f"probs max rel error {err:.3g}"
        labels = seg.segment(image, NAMES)
        assert labels.dtype == np.int32 and labels.shape == image.shape[:2]
        assert np.array_equal(labels, got.argmax(0))


def test_scclip_vitb16_matches_reference():
    """The published backbone's shape (ViT-B/16: width 768, 12 heads), random weights."""
    torch.manual_seed(0)  # the ViT-B/16 image tower; a small text tower keeps the test quick
    m = _randomised(open_clip.CLIP(
        embed_dim=512, quick_gelu=True,
        vision_cfg=dict(layers=12, width=768, head_width=64, patch_size=16, image_size=224),
        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=1)))
    om = _to_ovs(m)
    image = R.synthetic_image(100, 150, seed=4)
    seg = ovs.Segmenter(om, method="scclip", short_side=None, window=None, templates="simple")
    ref, margins = _reference(m.double(), seg, image, None, None)
    _check(seg.logits(image, NAMES), ref, margins, "ViT-B/16")


def test_scclip_defaults_and_errors(narrow_pair):
    _, om = narrow_pair
    seg = ovs.Segmenter(om, method="scclip")
    assert "scclip" in ovs.METHODS
    assert (seg.short_side, seg.window, seg.logit_scale, seg.templates) == (
        S.DEFAULTS["short_side"], S.DEFAULTS["window"], S.DEFAULTS["logit_scale"],
        S.DEFAULTS["templates"])
    shallow = _to_ovs(_narrow_vit(10))
    with pytest.raises(ValueError, match="SC-CLIP needs a ViT with at least 11 blocks.*has 10"):
        ovs.Segmenter(shallow, method="scclip")


def test_scclip_thread_count_only_rounds(narrow_pair):
    _, om = narrow_pair
    seg = ovs.Segmenter(om, method="scclip", short_side=None, window=None, templates="simple")
    image = R.synthetic_image(150, 200, seed=5)  # a 10 x 13 grid after padding
    n = ovs.get_num_threads()
    try:
        ovs.set_num_threads(1)
        one = seg.logits(image, NAMES)
        ovs.set_num_threads(2)
        two = seg.logits(image, NAMES)
    finally:
        ovs.set_num_threads(n)
    err = float(np.abs(one - two).max() / np.abs(one).max())
    assert err <= 1e-5, f"1 vs 2 threads: {err:.3g}"


def test_scclip_allocation_failures(narrow_sd):
    """Every C allocation of one SC-CLIP logits call fails in turn (a fresh segmenter each time,
    its arenas empty): each failure is a MemoryError or is recovered from with the same result."""
    image = R.synthetic_image(100, 150, seed=2)
    base = ovs.Model(narrow_sd, act="quickgelu")
    cls = ovs.Segmenter(base, method="scclip", templates="simple").classifier(NAMES)

    def fresh():
        seg = ovs.Segmenter(ovs.Model(narrow_sd, act="quickgelu"), method="scclip",
                            short_side=None, window=None, templates="simple")
        return seg._core_seg()

    def call(core):
        return core.logits(image, 100, 150, base.mean, base.std, cls)

    threads = ovs.get_num_threads()
    ovs.set_num_threads(1)
    try:
        core = fresh()
        _core.debug_fail_alloc(0)
        ref = call(core)
        n = _core.debug_fail_alloc(0)
        assert n >= 1
        failed = 0
        for i in range(1, n + 1):
            core = fresh()
            _core.debug_fail_alloc(i)
            try:
                out = call(core)
            except MemoryError:
                failed += 1
                continue
            finally:
                _core.debug_fail_alloc(0)
            assert np.array_equal(out, ref), f"allocation {i}/{n} failed, result changed"
        assert failed > 0, f"none of the {n} injected failures was reported"
    finally:
        _core.debug_fail_alloc(0)
        ovs.set_num_threads(threads)


def test_scclip_cli(narrow_sd, tmp_path):
    """`ovs segment --method scclip` end to end: the label PNG equals Segmenter.segment."""
    from PIL import Image
    from safetensors.numpy import save_file

    from ovs.cli import main, read_image

    weights = tmp_path / "narrow.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in narrow_sd.items()}, str(weights))
    src = Path(ovs.__file__).parent / "data" / "example_cat.jpg"
    out = tmp_path / "mask.png"
    assert main(["segment", str(src), "--classes", "cat,sofa,floor", "--model", str(weights),
                 "--method", "scclip", "--templates", "simple", "--short-side", "224",
                 "--out", str(out)]) == 0
    labels = np.asarray(Image.open(out))
    seg = ovs.Segmenter(ovs.Model(narrow_sd, act="quickgelu"), method="scclip", templates="simple",
                        short_side=224)
    want = seg.segment(read_image(str(src)), ["cat", "sofa", "floor"])
    assert labels.shape == want.shape and np.array_equal(labels.astype(np.int32), want)
