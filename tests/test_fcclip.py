"""FC-CLIP (RN50) on ovs against the PyTorch reference assembled from open_clip, transformers'
Mask2Former modules and code re-typed from bytedance/fc-clip (tests/reference/fcclip_reference.py),
on identical random weights saved as a detectron2 checkpoint with fc-clip's real key names and
converted with `ovs convert`."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import (FrameworkCase, assert_close, assert_conversion_errors,
                      framework_test_images)

# the reference's dependencies first: without them the module is skipped
FW = FrameworkCase("fcclip_reference", "fcclip", requires=("torch", "transformers", "open_clip"))
R, SHORT, MAX = FW.R, FW.SHORT, FW.MAX

import torch  # noqa: E402
import ovs  # noqa: E402
import ovs.convert  # noqa: E402
import ovs.flops  # noqa: E402
from ovs.fcclip import FCCLIPModel, coco_panoptic_synonyms  # noqa: E402

# seen classes (a synonym in COCO-panoptic's vocabulary) and unseen ones, with synonyms
NAMES = ["wall", "sofa, couch", "xylophone, marimba", "sky", "aardvark"]


def _semantic(ref, img, names=NAMES):
    return R.semantic(ref, img, names, coco_panoptic_synonyms(), SHORT, MAX)


@pytest.fixture(scope="module")
def expected(pair):
    """The reference's (semantic scores, intermediates) for each of framework_test_images()."""
    return [_semantic(pair[0], img) for img in framework_test_images()]


def test_load_gives_the_framework_model(pair):
    ref, model, _ = pair
    assert isinstance(model, FCCLIPModel)
    assert model.layers == (3, 4, 6, 3) and model.queries == 12 and model.dec_layers == 3
    assert model.embed_dim == 64 and model.pool_heads == ref.clip_model.visual.attnpool.num_heads
    assert model.logit_scale == pytest.approx(float(ref.class_head.logit_scale.detach().exp()), rel=1e-6)
    assert model.clip_logit_scale == pytest.approx(float(ref.clip_model.logit_scale.detach().exp()), rel=1e-6)
    assert "queries=12" in repr(model)


def test_text_classifier_matches_fcclip(pair):
    """One row per synonym (ViLD templates averaged), the void embedding last; the category
    overlap with the COCO-panoptic training vocabulary; max over synonyms."""
    ref, model, _ = pair
    rows = model.text_rows(NAMES, "vild")
    with torch.no_grad():
        t, num, _ = ref.get_text_classifier(NAMES)
        void = torch.nn.functional.normalize(ref.void_embedding.weight, dim=-1)
    assert_close(np.asarray(rows), torch.cat([t, void]).numpy(), rtol=1e-5, name="text rows")
    assert list(np.bincount(rows.groups)) == num == [1, 2, 2, 1, 1]
    assert list(rows.overlap) == [True, True, False, True, False]


def test_network_matches_pytorch(pair, expected):
    """Trunk, pixel decoder, transformer decoder with FC-CLIP's class head, and the mask-pooled
    CLIP attention pool, each against the reference's intermediate."""
    ref, model, _ = pair
    img = framework_test_images()[0]
    _, mid = expected[0]
    x, _ = ovs.frameworks.detectron2_preprocess(img, SHORT, MAX, 32, R.PIXEL_MEAN, R.PIXEL_STD)
    np.testing.assert_array_equal(x, mid["images"].numpy())
    out = model.forward(x)
    assert_close(out["res5"], mid["res5"].numpy(), name="res5 (clip_vis_dense)")
    assert_close(out["masks"], mid["masks"].numpy(), name="mask logits")
    assert_close(out["class_embed"], mid["class_embed"].numpy(), name="class embeddings")
    pooled, valid = model.mask_pool(out["res5"], out["masks"])
    np.testing.assert_array_equal(valid, mid["valid"].numpy())
    assert_close(pooled[valid], mid["pooled"].numpy()[valid], name="mask-pooled CLIP embeddings")
    with pytest.raises(ValueError, match="multiples of 32, got 100x64"):
        model.forward(np.zeros((1, 3, 100, 64), np.float32))


POOL_CASES = [   # C, E, heads, grid, res5 (h, w), masks (Q, Hm, Wm)
    (64, 48, 4, 7, (5, 6), (9, 20, 24)),
    (128, 32, 2, 3, (4, 4), (6, 4, 4)),        # masks already at res5's extent
    (96, 40, 3, 5, (7, 3), (5, 28, 12)),
]


@pytest.mark.parametrize("case", range(len(POOL_CASES)))
def test_mask_pool_equals_fcclip_attention_pool(case):
    """_core.fcclip_mask_pool (the C fast path, keys folded into the query) and its naive twin
    against fc-clip's visual_prediction_forward_resnet (the reference's code) on an open_clip
    AttentionPool2d with random weights; 1 vs 2 threads bit for bit; an empty mask is invalid
    and its row is c_proj's bias."""
    from open_clip.modified_resnet import AttentionPool2d

    C, E, heads, g, (h, w), (Q, Hm, Wm) = POOL_CASES[case]
    torch.manual_seed(case)
    ap = AttentionPool2d(g, C, heads, E).eval()
    with torch.no_grad():
        ap.positional_embedding.normal_(0, 0.3)
        for lin in (ap.q_proj, ap.k_proj, ap.v_proj, ap.c_proj):
            lin.bias.normal_(0, 0.1)
    rng = np.random.default_rng(case)
    res5 = rng.standard_normal((C, h, w)).astype(np.float32)
    masks = (rng.standard_normal((Q, Hm, Wm)) * 2).astype(np.float32)
    masks[0] = -3.0                                    # no pixel: invalid
    stub = type("Stub", (), {})()
    stub.clip_model = type("Clip", (), {})()
    stub.clip_model.visual = type("Visual", (), {"attnpool": ap})()
    with torch.no_grad():
        ref = R.FCCLIP.visual_prediction_forward_resnet(stub, torch.from_numpy(res5)[None],
                                                        torch.from_numpy(masks)[None])[0].numpy()
    W = [ap.positional_embedding] + [t for lin in (ap.q_proj, ap.k_proj, ap.v_proj, ap.c_proj)
                                     for t in (lin.weight, lin.bias)]
    args = [res5, masks] + [t.detach().numpy() for t in W] + [heads]
    n = ovs.get_num_threads()
    try:
        ovs.set_num_threads(2)
        pooled, valid = ovs._core.fcclip_mask_pool(*args)
        ovs.set_num_threads(1)
        one, _ = ovs._core.fcclip_mask_pool(*args)
    finally:
        ovs.set_num_threads(n)
    assert np.array_equal(pooled, one), "fcclip_mask_pool differs between 1 and 2 threads"
    up = torch.nn.functional.interpolate(torch.from_numpy(masks)[None], size=(h, w), mode="bilinear",
                                         align_corners=False)[0]
    np.testing.assert_array_equal(valid, (up > 0).flatten(1).any(1).numpy())
    assert not valid[0] and valid[1:].any()
    # an empty mask's row (torch: NaN or, in newer versions, zero attention; fc-clip never
    # reads it) is c_proj's bias here
    np.testing.assert_array_equal(pooled[0], ap.c_proj.bias.detach().numpy())
    assert_close(pooled[valid], ref[valid], rtol=1e-5, name="mask pool vs fc-clip")
    naive, nvalid = ovs._core.fcclip_mask_pool(*args, naive=True)
    np.testing.assert_array_equal(nvalid, valid)
    assert_close(naive[valid], ref[valid], rtol=1e-5, name="mask pool naive twin vs fc-clip")
    assert_close(pooled, naive, rtol=1e-5, name="mask pool fast vs naive (empty rows too)")


def _pool_args(seed, C=8, E=4):
    """Small random fcclip_mask_pool arrays: res5 (C, 3, 3), masks (2, 6, 6), pos (5, C), the q,
    k, v projections (C, C) + (C,), c_proj (E, C) + (E,)."""
    rng = np.random.default_rng(seed)
    shapes = [(C, 3, 3), (2, 6, 6), (5, C), *((C, C), (C,)) * 3, (E, C), (E,)]
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def test_mask_pool_failed_allocations_are_clean_errors():
    from conftest import inject_alloc_failures

    args = _pool_args(2) + [2]
    for naive in (False, True):
        inject_alloc_failures(lambda: ovs._core.fcclip_mask_pool(*args, naive=naive),
                              f"fcclip_mask_pool naive={naive}",
                              result=lambda r: {"pooled": r[0], "valid": r[1]})


def test_mask_pool_rejects_bad_inputs():
    E = 4
    good = _pool_args(0, E=E)
    pool = ovs._core.fcclip_mask_pool
    assert pool(*good, 2)[0].shape == (2, E)
    with pytest.raises(ValueError, match="heads must divide"):
        pool(*good, 3)
    with pytest.raises(ValueError, match="pos must have G"):
        pool(*good[:2], good[2][:4], *good[3:], 2)
    with pytest.raises(ValueError, match="wk must have shape"):
        pool(*good[:5], good[5][:, :4], *good[6:], 2)
    with pytest.raises(ValueError, match="bc must have shape"):
        pool(*good[:10], good[10][:3], 2)
    with pytest.raises(ValueError, match="masks must have 3"):
        pool(good[0], good[1][0], *good[2:], 2)
    bad = good[0].copy()
    bad[1, 1, 1] = np.inf
    with pytest.raises(ValueError, match="res5 contains NaN"):
        pool(bad, *good[1:], 2)
    with pytest.raises(ValueError, match="non-empty"):
        pool(good[0], good[1][:0], *good[2:], 2)


def test_segmenter_matches_fcclip_inference(pair, expected):
    ref, model, _ = pair
    seg = FW.segmenter(model)
    for img, (sem, _) in zip(framework_test_images(), expected):
        p = seg.predict(img, NAMES)
        assert_close(p, sem.numpy(), name="semantic scores")
        labels = seg.segment(img, NAMES)
        agree = float((labels == sem.numpy().argmax(0)).mean())
        assert agree >= 0.999, f"label maps agree on {agree:.4%} of pixels"
        # segment() streams the labels band by band (never the (C, H, W) scores): exactly the
        # argmax of predict()'s scores, also with a duplicated class (its first entry wins)
        np.testing.assert_array_equal(labels, p.argmax(0))
        np.testing.assert_array_equal(seg.segment(img, NAMES + [NAMES[1]]), labels)


def test_empty_masks_take_the_in_vocabulary_probabilities(tmp_path):
    """ENSEMBLE_ON_VALID_MASK: mask features made constant (the mask projection's weight zero,
    its bias one), so each query's mask logit is one number over the image; the last
    mask-embedding layer's bias is shifted so that about half of them are negative. Those masks have no pixel at res5, and there FC-CLIP keeps the in-vocabulary
    probabilities (α = β = 0; the attention pool's NaN row is unused)."""
    ref = R.small(seed=3)
    img = framework_test_images()[0]
    with torch.no_grad():
        ref.pixel_decoder.mask_projection.weight.zero_()
        ref.pixel_decoder.mask_projection.bias.fill_(1.0)
        last = ref.predictor.decoder.mask_predictor.mask_embedder.layers[2].layers[0]
        m = np.sort(_semantic(ref, img)[1]["masks"][:, 0, 0].numpy())
        k = len(m) // 4 + int(np.argmax(np.diff(m)[len(m) // 4 - 1: 3 * len(m) // 4]))
        last.bias -= float(m[k - 1] + m[k]) / 2 / last.bias.numel()   # in the widest middle gap
    model = ovs.load(FW.convert(ref, tmp_path, "constant_masks"))
    sem, mid = _semantic(ref, img)
    valid = mid["valid"].numpy()
    assert 0 < valid.sum() < len(valid), "the test needs valid and empty masks"
    out = model.forward(ovs.frameworks.detectron2_preprocess(img, SHORT, MAX, 32, R.PIXEL_MEAN,
                                                             R.PIXEL_STD)[0])
    np.testing.assert_array_equal(model.mask_pool(out["res5"], out["masks"])[1], valid)
    assert_close(FW.segmenter(model).predict(img, NAMES), sem.numpy(), name="semantic scores")


def test_thread_count_does_not_change_results(pair):
    """1 vs 2 threads: the C trunk and Mask2Former blocks agree to float32 rounding (their
    GEMMs split work by thread; tests/test_m2f.py holds them to 1e-6), the rest is serial."""
    FW.assert_thread_count_invariant(pair[1], framework_test_images()[0], NAMES)


def test_convert_reports_bad_checkpoints(pair, tmp_path):
    ref, _, _ = pair
    sd = {k: v.numpy() for k, v in R.checkpoint_state_dict(ref).items()}
    _, report = ovs.convert.convert_state_dict(sd, "fcclip")   # the good one converts
    assert "criterion.empty_weight" in report["ignored"]

    name = "sem_seg_head.predictor.transformer_cross_attention_layers.1.multihead_attn.in_proj_bias"
    offsets = "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.self_attn.sampling_offsets.weight"
    assert_conversion_errors(sd, "fcclip", [
        ({name: None}, rf"1 missing: '{name}'"),
        ({"backbone.clip_model.visual.attnpool.c_proj.weight": np.zeros((32, 512), np.float32)},
         r"'backbone.clip_model.visual.attnpool.c_proj.weight' \(-> 'visual.attnpool.c_proj.weight'\): "
         r"\(32, 512\), expected \(64, 512\)"),
        ({offsets: np.zeros((96, 64), np.float32)},
         r"sampling_offsets.weight': \(96, 64\), expected \(192, 64\)"),
        ({"sem_seg_head.predictor.extra.weight": np.ones(3, np.float32)},
         "unexpected: 'sem_seg_head.predictor.extra.weight'"),
        ({"backbone.head.weight": np.ones(3, np.float32)}, "unexpected tensor.*'backbone.head.weight'"),
        ({"void_embedding.weight": None}, "missing: 'void_embedding.weight'"),
    ])
    conv, _ = ovs.convert.convert_state_dict(sd, "fcclip")
    with pytest.raises(ValueError, match="alpha must be a number in"):
        FCCLIPModel(conv, alpha=1.5)


def test_segmenter_and_cli(pair, tmp_path):
    _, model, path = pair
    FW.check_segmenter_and_cli(model, path, framework_test_images()[0], NAMES, tmp_path,
                               other_method="deeplab")


def test_flops_equal_fvcore(pair):
    """ovs.flops rows of FC-CLIP against fvcore's trace of the reference network: trunk, pixel
    decoder, decoder with the class head and mask prediction at every layer, the per-mask
    attention pool, both classifiers (one synonym per class), upsampling and the semantic
    einsum at the input size."""
    from fvcore.nn import FlopCountAnalysis

    ref, model, _ = pair
    H, W, C = 64, 96, 5
    F = torch.nn.functional

    class Net(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x, text):
            m = self.m
            f = m.extract_features_resnet(x)
            pd = m.pixel_decoder([f[k] for k in ("res2", "res3", "res4", "res5")])
            dec = m.predictor(pd.multi_scale_features, pd.mask_features)
            ones = [1] * C
            cls = [R.get_classification_logits(m.class_head(h.transpose(0, 1), pd.mask_features, mk),
                                               text, m.class_head.logit_scale, ones)
                   for h, mk in zip(dec.intermediate_hidden_states, dec.masks_queries_logits)]
            mk = dec.masks_queries_logits[-1]
            pool = F.interpolate(mk, size=f["res5"].shape[-2:], mode="bilinear", align_corners=False)
            pooled = m.visual_prediction_forward_resnet(f["res5"], pool)
            out = R.get_classification_logits(pooled, text, m.clip_model.logit_scale, ones)
            up = F.interpolate(mk, size=(H, W), mode="bilinear", align_corners=False)
            return torch.einsum("qc,qhw->chw", out[0, :, :-1], up[0].sigmoid()), cls

    fa = FlopCountAnalysis(Net(ref).eval(), (torch.zeros(1, 3, H, W), torch.randn(C + 1, 64)))
    fa.unsupported_ops_warnings(False)
    fa.uncalled_modules_warnings(False)
    rows = ovs.flops.count(model, image_size=(H, W), num_classes=C)
    # fvcore's einsum handle counts through numpy's einsum_path: within a few MACs of ours
    assert ovs.flops.total(rows, fvcore=True) == pytest.approx(fa.total(), rel=1e-5)
    by = {k: sum(r.macs for r in rows if r.kind == k) for k in ("conv", "linear")}
    assert by == {"conv": fa.by_operator()["conv"], "linear": fa.by_operator()["linear"]}


def test_pruned_backbone_runs_sparse(pair):
    """ovs.prune on an FC-CLIP model prunes the CLIP trunk's convs (open_clip names) and gives
    an FC-CLIP model; the trunk through the sparse kernels equals the dense run."""
    import ovs.prune

    _, model, _ = pair
    pruned = ovs.prune.magnitude(model, sparsity=0.9)
    assert isinstance(pruned, FCCLIPModel) and (pruned.alpha, pruned.beta) == (0.4, 0.8)
    masks = ovs.prune.masks(pruned)
    assert masks and all(k.startswith("visual.") for k in masks)
    assert 0.89 < ovs.prune.sparsity(masks) < 0.91
    img = framework_test_images()[0]
    dense = FW.segmenter(FCCLIPModel(pruned.state_dict, sparse="dense")).predict(img, NAMES)
    sparse = FW.segmenter(FCCLIPModel(pruned.state_dict, sparse="all")).predict(img, NAMES)
    assert_close(sparse, dense, rtol=1e-5, name="sparse vs dense trunk")


def test_eval_runs_the_framework(pair, tmp_path):
    """`ovs eval --method fcclip` on a converted file equals Segmenter.segment's confusion."""
    from test_eval import check_framework_eval

    _, model, path = pair
    check_framework_eval(tmp_path, model, path, "fcclip")
