"""Each method's post-processing against its original code, re-typed in PyTorch.

- SCLIP / ClearCLIP / NACLIP `postprocess_result` (wangf3014/SCLIP clip_segmentor.py:148-170,
  mc-lan/ClearCLIP clearclip_segmentor.py, sinahmr/NACLIP naclip.py): softmax over every query
  (synonym), max over each class's queries, SCLIP's area filter (`area_thd`), the probability
  threshold (`prob_thd`, label 0). `sclip_postprocess` below is that code with the mmseg data
  samples taken out.
- MaskCLIP's prompt denoising (chongzhou96/MaskCLIP mmseg/models/decode_heads/maskclip_head.py,
  `refine_output`, the `pd_thresh` branch): `maskclip_prompt_denoise` below.

Checked: the C kernels (`_core.seg_labels_grouped`, its naive twin, `_core.seg_prompt_denoise`)
on random logits, and ovs.Segmenter end to end on the tiny random ViT (the reference gets the
per-query cosine logits from Segmenter.logits with one class per query, which
test_segment_parity.py checks against open_clip). Probabilities <= 1e-4 relative, labels >= 99.9%
equal.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ovs
from ovs import _core
from ovs.classnames import split_synonyms


# ----------------------------------------------------------------------------- references
def sclip_postprocess(logits: torch.Tensor, query_idx, logit_scale, prob_thd=0.0, area_thd=None):
    """SCLIP CLIPForSegmentation.postprocess_result for one image; logits (Q, H, W) are the
    cosine logits at the output size. Returns (seg_logits (C, H, W), seg_pred (H, W))."""
    query_idx = torch.as_tensor(query_idx, dtype=torch.int64)
    seg_logits = logits * logit_scale
    seg_logits = seg_logits.softmax(0)  # n_queries * w * h

    num_cls, num_queries = max(query_idx) + 1, len(query_idx)
    if num_cls != num_queries:
        seg_logits = seg_logits.unsqueeze(0)
        cls_index = nn.functional.one_hot(query_idx)
        cls_index = cls_index.T.view(num_cls, num_queries, 1, 1)
        seg_logits = (seg_logits * cls_index).max(1)[0]

    if area_thd is not None:
        # Force segmentations with area < self.area_thd to 0 (background)
        predictions = nn.functional.one_hot(seg_logits.argmax(0), num_cls).to(seg_logits.dtype)
        area_pred = predictions[:, :, 1:].sum((0, 1), keepdim=True)  # prone background
        area_pred = (area_pred > area_thd * area_pred.sum()).to(seg_logits.dtype)
        seg_logits[1:] *= area_pred.transpose(0, -1)

    seg_pred = seg_logits.argmax(0, keepdim=True)
    seg_pred[seg_logits.max(0, keepdim=True)[0] < prob_thd] = 0
    return seg_logits, seg_pred[0]


def maskclip_prompt_denoise(output: torch.Tensor, pd_thresh: float) -> torch.Tensor:
    """MaskClipHead.refine_output, pd_thresh branch; output (N, C, H, W) cosine logits."""
    output = output.clone()
    if pd_thresh > 0:
        N, C, H, W = output.shape
        _output = F.softmax(output * 100, dim=1)
        max_cls_conf = _output.view(N, C, -1).max(dim=-1)[0]
        selected_cls = (max_cls_conf < pd_thresh)[:, :, None, None].expand(N, C, H, W)
        output[selected_cls] = -100
    return output


def _rel(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def _agree(a, b) -> float:
    return float((np.asarray(a) == np.asarray(b)).mean())


def _upsample(lr: np.ndarray, H: int, W: int) -> torch.Tensor:
    """The reference's bilinear resize of (Q, h, w) logits to the output size (SCLIP:
    F.interpolate(..., mode='bilinear') with align_corners=False), in float64."""
    return F.interpolate(torch.from_numpy(lr).double()[None], size=(H, W), mode="bilinear",
                         align_corners=False)[0]


# ----------------------------------------------------------------------------- C kernels
# (queries per class, logit_scale, prob_thd, area_thd): VOC-21-like (65, 0.1, 0.1), Context-60-like
# (50, 0.1, None), no synonyms with the area filter, synonyms without any threshold
# and the spread of per-query offsets (regions of different sizes; small ones for the area filter)
CASES = [
    ((3, 1, 2, 1, 1, 1, 4, 1), 65.0, 0.1, 0.1, 0.02),
    ((2, 1, 1, 3) + (1,) * 20, 50.0, 0.1, None, 0.005),
    ((1, 1, 1, 1, 1, 1, 1), 40.0, 0.0, 0.1, 0.02),
    ((1, 2, 3, 1), 40.0, 0.0, None, 0.02),
]


@pytest.mark.parametrize("per_class,scale,prob_thd,area_thd,offset", CASES)
def test_grouped_labels_match_sclip(per_class, scale, prob_thd, area_thd, offset):
    rng = np.random.default_rng(len(per_class))
    qc = np.repeat(np.arange(len(per_class)), per_class).astype(np.int32)
    Q, C, (h, w), (H, W) = len(qc), len(per_class), (9, 13), (70, 101)
    lr = (0.03 * rng.standard_normal((Q, h, w)) + offset * rng.standard_normal((Q, 1, 1))).astype(np.float32)
    probs_ref, labels_ref = sclip_postprocess(_upsample(lr, H, W), qc, scale, prob_thd, area_thd)
    labels_ref = labels_ref.numpy()
    kw = dict(logit_scale=scale, prob_thd=prob_thd, bg_label=0, area_thd=-1.0 if area_thd is None else area_thd)
    fast = _core.seg_labels_grouped(lr, H, W, qc, C, **kw)
    naive = _core.seg_labels_grouped_naive(lr, H, W, qc, C, **kw)
    assert fast.shape == (H, W) and fast.dtype == np.int32
    assert _agree(fast, labels_ref) >= 0.999, f"fast vs SCLIP {_agree(fast, labels_ref):.5f}"
    assert _agree(naive, labels_ref) >= 0.999, f"naive vs SCLIP {_agree(naive, labels_ref):.5f}"
    assert _agree(fast, naive) >= 0.999
    # the probabilities ovs.Segmenter.predict returns for these settings
    from ovs.segment import _group_max, area_filter

    p = _group_max(_core.seg_upsample(lr, H, W, logit_scale=scale, softmax=True), qc, C, 0.0)
    if area_thd is not None:
        p = area_filter(p, area_thd)
    assert _rel(p, probs_ref.numpy()) <= 1e-4
    # the steps did something (the test would otherwise pass with them left out)
    _, plain = sclip_postprocess(_upsample(lr, H, W), qc, scale)
    if area_thd is not None or prob_thd > 0:
        assert (labels_ref != plain.numpy()).mean() > 0.01, "thresholds changed nothing: weak case"


def test_grouped_labels_threads_and_bg_label():
    rng = np.random.default_rng(7)
    qc = np.array([0, 0, 1, 2, 2, 3], np.int32)
    lr = (0.05 * rng.standard_normal((6, 11, 8))).astype(np.float32)
    n = ovs.get_num_threads()
    try:
        ovs.set_num_threads(1)
        one = _core.seg_labels_grouped(lr, 57, 41, qc, 4, logit_scale=50, prob_thd=0.5, bg_label=-1, area_thd=0.2)
        ovs.set_num_threads(2)
        two = _core.seg_labels_grouped(lr, 57, 41, qc, 4, logit_scale=50, prob_thd=0.5, bg_label=-1, area_thd=0.2)
    finally:
        ovs.set_num_threads(n)
    np.testing.assert_array_equal(one, two)
    _, ref = sclip_postprocess(_upsample(lr, 57, 41), qc, 50, 0.5, 0.2)
    below = (sclip_postprocess(_upsample(lr, 57, 41), qc, 50, 0.0, 0.2)[0].max(0)[0] < 0.5).numpy()
    assert below.any() and (~below).any()
    ref = ref.numpy()
    ref[below] = -1  # bg_label=-1 instead of SCLIP's 0
    assert _agree(one, ref) >= 0.999


def test_prompt_denoise_matches_maskclip():
    rng = np.random.default_rng(3)
    C, gh, gw = 12, 7, 9
    g = (0.02 * rng.standard_normal((C, gh * gw)) + 0.01 * rng.standard_normal((C, 1))).astype(np.float32)
    ref = maskclip_prompt_denoise(torch.from_numpy(g).view(1, C, gh, gw), 0.5).view(C, -1).numpy()
    ours = _core.seg_prompt_denoise(g, 0.5)
    suppressed = (ref == -100).all(1)
    assert suppressed.any() and (~suppressed).any(), "weak case: all or no classes suppressed"
    np.testing.assert_array_equal(ours == -100, ref == -100)
    assert _rel(ours, ref) <= 1e-6
    np.testing.assert_array_equal(g, g.copy())  # input untouched (a copy is returned)


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def vit(fixtures_dir):
    return ovs.load(fixtures_dir / "vit_tiny.safetensors", act="gelu")


def _img(h, w, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
    big = np.kron(base, np.ones((8, 8, 1)))[:h, :w]  # blocks: regions the model can tell apart
    return np.clip(big + rng.normal(0, 12, big.shape), 0, 255).astype(np.uint8)


CLASSES = ["background, sky, wall, floor", "cat, kitty", "dog", "grass, lawn, meadow", "car", "tree, bush"]


@pytest.mark.parametrize("method,scale,prob_thd,area_thd", [("sclip", 65.0, 0.1, 0.1),
                                                            ("naclip", 40.0, 0.3, None),
                                                            ("clearclip", 50.0, 0.0, 0.2)])
def test_segmenter_synonym_max_end_to_end(vit, method, scale, prob_thd, area_thd):
    img = _img(72, 104, seed=1)
    base = dict(short_side=None, window=(48, 32), templates="simple")
    queries, owner = [], []
    for c, name in enumerate(CLASSES):
        syn = split_synonyms(name)
        queries += syn
        owner += [c] * len(syn)
    # per-query cosine logits: one class per query, nothing grouped
    q_logits = ovs.Segmenter(vit, method, **base).logits(img, queries)
    probs_ref, labels_ref = sclip_postprocess(torch.from_numpy(q_logits).double(), owner, scale, prob_thd, area_thd)
    seg = ovs.Segmenter(vit, method, synonym_mode="max", logit_scale=scale, bg_threshold=prob_thd or None,
                        area_threshold=area_thd, bg_label=0, **base)
    labels = seg.segment(img, CLASSES)
    assert labels.shape == img.shape[:2]
    assert _agree(labels, labels_ref.numpy()) >= 0.999
    assert _rel(seg.predict(img, CLASSES), probs_ref.numpy()) <= 1e-4
    # logits(): the max over each class's synonyms
    lg = seg.logits(img, CLASSES)
    ref_lg = np.stack([q_logits[np.asarray(owner) == c].max(0) for c in range(len(CLASSES))])
    np.testing.assert_array_equal(lg, ref_lg)
    # synonym lists as ovs.classnames ships them give the same labels
    lists = [split_synonyms(n) for n in CLASSES]
    np.testing.assert_array_equal(seg.segment(img, lists), labels)
    # a duplicated class scores exactly as its twin and the first index wins (without thresholds:
    # the twin's queries join the softmax denominator, as they would in SCLIP)
    argmax_only = ovs.Segmenter(vit, method, synonym_mode="max", **base)
    np.testing.assert_array_equal(argmax_only.segment(img, CLASSES + [CLASSES[2]]),
                                  argmax_only.segment(img, CLASSES))


def test_segmenter_prompt_denoise_end_to_end(vit):
    """Segmenter(prompt_denoise=t).logits == MaskCLIP's refine_output on the window's grid
    logits, then the bilinear upsampling (one whole-image window, sides multiples of 16)."""
    img = _img(64, 96, seed=2)
    names = ["cat", "dog", "grass", "sky", "car", "road", "tree", "person"]
    plain = ovs.Segmenter(vit, "maskclip", short_side=None, window=None, templates="simple")
    cls = vit.text_classifier(names, plain.templates)
    x = ((img.astype(np.float32) / 255 - np.asarray(vit.mean, np.float32)) / np.asarray(vit.std, np.float32))
    f = plain._core_seg().dense_features(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))
    gh, gw, E = f.shape
    f = torch.from_numpy(f).double().view(-1, E)
    grid = (torch.from_numpy(cls).double() @ F.normalize(f, dim=-1).T).view(1, len(names), gh, gw)
    conf = F.softmax(grid * 100, dim=1).view(len(names), -1).max(-1)[0].numpy()
    t = float(np.sort(conf)[len(names) // 2] - 1e-6)  # about half the classes below: both branches
    assert 0 < t < 1
    ref = F.interpolate(maskclip_prompt_denoise(grid, t), size=img.shape[:2], mode="bilinear",
                        align_corners=False)[0].numpy()
    seg = ovs.Segmenter(vit, "maskclip", short_side=None, window=None, prompt_denoise=t, templates="simple")
    ours = seg.logits(img, names)
    suppressed = (ref == -100).all((1, 2))
    assert suppressed.any() and (~suppressed).any()
    assert _rel(ours, ref) <= 1e-4
    assert _agree(seg.segment(img, names), ref.argmax(0)) >= 0.999


def maskclip_refine(output: torch.Tensor, k: torch.Tensor, pd_thresh: float, ks_thresh: float) -> torch.Tensor:
    """MaskClipHead.refine_output (both branches) as in chongzhou96/MaskCLIP; output (N, C, H, W)
    cosine logits, k (N, HW, Dk) keys."""
    output = maskclip_prompt_denoise(output, pd_thresh)
    if k is not None and ks_thresh > 0:
        output = F.softmax(output * 100, dim=1)
        N, C, H, W = output.shape
        output = output.view(N, C, -1).transpose(-2, -1)
        k = F.normalize(k, p=2)
        weight = k @ k.transpose(-2, -1)
        selected_pos = (output.max(dim=-1, keepdim=True)[0] < ks_thresh)
        selected_pos = selected_pos.expand(-1, -1, C)
        weighted_output = weight @ output
        output[selected_pos] = weighted_output[selected_pos]
        output = output.transpose(-2, -1).view(N, C, H, W)
    return output


def _torch_model(name: str, fixtures_dir):
    """The open_clip module of a fixture model with its saved weights, float64."""
    from safetensors.torch import load_file

    from conftest import load_reference

    model, _ = load_reference("make_fixtures")._build(name)
    model.load_state_dict(load_file(str(fixtures_dir / f"{name}.safetensors")))
    return model.double().eval(), load_reference("seg_reference")


@pytest.mark.parametrize("name", ["vit_tiny", "rn_tiny"])
def test_segmenter_key_smoothing_end_to_end(fixtures_dir, name):
    """Segmenter(method="maskclip", prompt_denoise=pd, key_smoothing=ks).logits equals MaskCLIP's
    refine_output on the window's grid logits with the last attention layer's keys (computed
    here with torch from the open_clip module), bilinearly upsampled."""
    model, ref_mod = _torch_model(name, fixtures_dir)
    ovs_model = ovs.load(fixtures_dir / f"{name}.safetensors", act="gelu")
    p = 8 if name == "vit_tiny" else 32
    img = _img(4 * p, 6 * p, seed=4)
    names = ["cat", "dog", "grass", "sky", "car", "road"]
    cls = torch.from_numpy(ovs_model.text_classifier(names, "simple")).double()
    x = ((img.astype(np.float64) / 255 - np.asarray(ovs_model.mean)) / np.asarray(ovs_model.std))
    x = torch.from_numpy(x.transpose(2, 0, 1)[None].copy())
    with torch.no_grad():
        f = ref_mod.dense_features(model, x, "maskclip")  # (gh, gw, E)
        gh, gw, E = f.shape
        grid = (F.normalize(f.reshape(-1, E), dim=-1) @ cls.T).T.reshape(1, len(names), gh, gw)
        if name == "vit_tiny":
            blk = model.visual.transformer.resblocks[-1]
            t = ref_mod.vit_tokens_before_last(model.visual, x)
            D = t.shape[-1]
            k = F.linear(blk.ln_1(t), blk.attn.in_proj_weight, blk.attn.in_proj_bias)[1:, D:2 * D]
        else:
            r = ref_mod.resnet_res5(model.visual, x).permute(1, 2, 0).reshape(gh * gw, -1)
            ap = model.visual.attnpool
            k = F.linear(r, ap.k_proj.weight, ap.k_proj.bias)
        probs = F.softmax(grid * 100, dim=1).view(len(names), -1).max(0)[0].numpy()
        ks = float(np.quantile(probs, 0.5))  # half the positions smoothed: both branches
        ref = maskclip_refine(grid, k[None], 0.0, ks)
        ref_up = F.interpolate(ref, size=img.shape[:2], mode="bilinear", align_corners=False)[0].numpy()
    smoothed = (probs < ks)
    assert smoothed.any() and (~smoothed).any()
    plain = F.interpolate(F.softmax(grid * 100, dim=1), size=img.shape[:2], mode="bilinear", align_corners=False)
    assert _rel(plain[0].numpy(), ref_up) > 1e-2, "smoothing changed nothing: weak case"
    seg = ovs.Segmenter(ovs_model, "maskclip", short_side=None, window=None, key_smoothing=ks, templates="simple")
    ours = seg.logits(img, names)
    assert _rel(ours, ref_up) <= 1e-4
    assert _agree(seg.segment(img, names), ref_up.argmax(0)) >= 0.999
    # the kernel alone, on random data, with prompt denoising first as in refine_output
    rng = np.random.default_rng(5)
    g = (0.02 * rng.standard_normal((5, 30))).astype(np.float32)
    kk = rng.standard_normal((30, 16)).astype(np.float32)
    r = maskclip_refine(torch.from_numpy(g).view(1, 5, 5, 6), torch.from_numpy(kk)[None], 0.5, 0.9)
    o = _core.seg_key_smooth(_core.seg_prompt_denoise(g, 0.5), kk, 0.9)
    assert _rel(o, r.view(5, 30).numpy()) <= 1e-5


# ----------------------------------------------------------------------------- errors
def test_postprocess_errors(vit):
    with pytest.raises(ValueError, match="synonym_mode must be 'mean'.*got 'min'"):
        ovs.Segmenter(vit, "sclip", synonym_mode="min")
    with pytest.raises(ValueError, match=r"area_threshold must be a number in \[0, 1\], got 1.5"):
        ovs.Segmenter(vit, "sclip", area_threshold=1.5)
    with pytest.raises(ValueError, match=r"prompt_denoise must be a number in \[0, 1\], got -0.1"):
        ovs.Segmenter(vit, "maskclip", prompt_denoise=-0.1)
    with pytest.raises(ValueError, match="bg_label must be -1 .* got -2"):
        ovs.Segmenter(vit, "sclip", bg_label=-2)
    seg = ovs.Segmenter(vit, "sclip", short_side=None, window=None, bg_label=5, bg_threshold=0.5)
    with pytest.raises(ValueError, match="bg_label 5 is not a class index for 2 classes"):
        seg.segment(_img(32, 32), ["cat", "dog"])
    with pytest.raises(TypeError, match=r"class_names\[1\] must be a str or a non-empty list of str synonyms, got \[\]"):
        seg.segment(_img(32, 32), ["cat", []])
    with pytest.raises(ValueError, match=r"class_names\[0\]: a synonym may not contain ','"):
        seg.segment(_img(32, 32), [["cat, kitty"], "dog"])
    lr = np.zeros((3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="query 1 maps to class 5, outside 0..1"):
        _core.seg_labels_grouped(lr, 8, 8, np.array([0, 5, 1], np.int32), 2)
    with pytest.raises(ValueError, match="class 1 has no query"):
        _core.seg_labels_grouped(lr, 8, 8, np.array([0, 0, 2], np.int32), 3)
    with pytest.raises(ValueError, match=r"query_class must have one entry per query \(3\), got 2"):
        _core.seg_labels_grouped(lr, 8, 8, np.array([0, 1], np.int32), 2)
    with pytest.raises(ValueError, match="need 1 <= classes <= queries, got 4 classes for 3 queries"):
        _core.seg_labels_grouped_naive(lr, 8, 8, np.array([0, 1, 2], np.int32), 4)
    with pytest.raises(ValueError, match="area_thd <= 1"):
        _core.seg_labels_grouped(lr, 8, 8, np.array([0, 1, 2], np.int32), 3, area_thd=2.0)
    with pytest.raises(ValueError, match="empty logits"):
        _core.seg_prompt_denoise(np.zeros((0, 4), np.float32), 0.5)
    with pytest.raises(ValueError, match=r"pd_thresh and ks_thresh must be in \[0, 1\], got 2, 0"):
        _core.Segmenter(vit.visual, "maskclip", 0, 0, 5.0, 2.0)
    with pytest.raises(ValueError, match="key_smoothing is MaskCLIP's refinement: it needs method='maskclip', got 'sclip'"):
        ovs.Segmenter(vit, "sclip", key_smoothing=1.0)
    with pytest.raises(ValueError, match=r"key_smoothing must be a number in \[0, 1\], got 3"):
        ovs.Segmenter(vit, "maskclip", key_smoothing=3)
    with pytest.raises(ValueError, match=r"keys must have one row per position \(4\), got 3"):
        _core.seg_key_smooth(np.zeros((2, 4), np.float32), np.zeros((3, 5), np.float32), 0.5)
