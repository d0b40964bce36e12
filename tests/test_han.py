"""Han et al. (OpenTrans OpenSegMaskFormer) on ovs against the PyTorch reference assembled from
open_clip / transformers modules following OpenTrans (tests/reference/han_reference.py), on
identical random weights saved as a detectron2 checkpoint with OpenTrans' real key names and
converted with `ovs convert`."""
from __future__ import annotations

import copy
import re

import numpy as np
import pytest

from conftest import (FrameworkCase, assert_close, assert_conversion_errors,
                      framework_test_images)

# the reference's dependencies first: without them the module is skipped
FW = FrameworkCase("han_reference", "han", requires=("torch", "transformers", "open_clip"))
R, SHORT, MAX = FW.R, FW.SHORT, FW.MAX

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import ovs  # noqa: E402
import ovs.convert  # noqa: E402
import ovs.prune  # noqa: E402
from ovs import _core  # noqa: E402
from ovs.frameworks import ConversionError, HanModel, mask_semantic  # noqa: E402

NAMES = ["cat", "dog", "grass", "sky", "road"]


def test_load_gives_the_framework_model(pair):
    ref, model, _ = pair
    assert isinstance(model, HanModel)
    assert "queries=12" in repr(model) and "4-layer decoder" in repr(model)
    assert model.embed_dim == 64 and model.layers == (3, 4, 6, 3)
    assert model.logit_scale == pytest.approx(float(ref.logit_scale.detach().exp()), rel=1e-6)


def test_queries_and_masks_match_pytorch(pair):
    ref, model, _ = pair
    x, _ = R.preprocess(framework_test_images()[0], SHORT, MAX)
    with torch.no_grad():
        emb_ref, masks_ref = ref(x)
    emb, masks = model.forward(x.numpy())
    assert_close(emb, emb_ref.numpy(), rtol=1e-4, name="query embeddings (embed_proj)")
    assert_close(masks, masks_ref.numpy(), rtol=1e-4, name="mask logits")


def test_segmenter_matches_opentrans_inference(pair):
    ref, model, _ = pair
    seg = FW.segmenter(model)
    for i, img in enumerate(framework_test_images()):
        probs, cropped, cls, x = R.semantic(ref, img, NAMES, SHORT, MAX)
        if i == 0:
            text = seg.classifier(NAMES)
            emb, _ = model.forward(x.numpy())
            assert_close(model.class_logits(emb[0], text), cls.numpy(), rtol=1e-4, name="class logits")
            lr = model.lowres(img, text, "probs", short=SHORT, max_size=MAX, divisor=32)
            assert_close(lr, cropped.numpy(), rtol=1e-4, name="semantic scores (resized extent)")
        p = seg.predict(img, NAMES)
        assert_close(p, probs.numpy(), rtol=1e-4, name="semantic scores")
        assert_close(seg.logits(img, NAMES), probs.numpy(), rtol=1e-4, name="logits() = scores")
        labels = seg.segment(img, NAMES)
        # streamed (an image at the short side: no resize) or not, exactly predict's argmax
        np.testing.assert_array_equal(labels, p.argmax(0))
        ref_labels = probs.numpy().argmax(0)
        agree = float((labels == ref_labels).mean())
        assert agree >= 0.999, f"label maps agree on {agree:.4%} of pixels"
        if i == 0:   # the check has teeth: several classes win somewhere
            assert len(np.unique(ref_labels)) >= 2


def test_segment_streams_labels_without_resize(pair):
    """An image at the short side is not resized: segment() then takes the labels band by band
    from C (mask_semantic(labels=True)), never holding the (C, H, W) scores; they are exactly
    predict()'s argmax, agree with OpenTrans', and a duplicated class maps to its first entry."""
    ref, model, _ = pair
    img = np.ascontiguousarray(framework_test_images()[0][:SHORT, :160])
    seg = FW.segmenter(model)
    probs = R.semantic(ref, img, NAMES, SHORT, MAX)[0].numpy()
    labels = seg.segment(img, NAMES)
    np.testing.assert_array_equal(labels, seg.predict(img, NAMES).argmax(0))
    assert float((labels == probs.argmax(0)).mean()) >= 0.999
    assert len(np.unique(labels)) >= 2
    np.testing.assert_array_equal(seg.segment(img, NAMES + [NAMES[0]]), labels)


def _torch_semantic(masks, probs, h, w, upsampled=None, out_size=None):
    """Han et al. / FC-CLIP as written in torch: F.interpolate to the padded size, crop,
    F.interpolate to the output size, sigmoid, einsum over the queries."""
    m = torch.from_numpy(masks)[None]
    up = F.interpolate(m, size=upsampled or (4 * masks.shape[1], 4 * masks.shape[2]),
                       mode="bilinear", align_corners=False)[:, :, :h, :w]
    if out_size is not None:
        up = F.interpolate(up, size=out_size, mode="bilinear", align_corners=False)
    return torch.einsum("qc,qhw->chw", torch.from_numpy(probs), up[0].sigmoid()).numpy()


SEMANTIC_CASES = [   # (Q, hm, wm, C), h, w, upsampled, out_size
    ((7, 9, 13, 5), 36, 52, None, None),
    ((7, 9, 13, 5), 33, 50, None, None),
    ((7, 9, 13, 5), 1, 1, None, None),
    ((7, 9, 13, 5), 17, 3, None, None),
    ((7, 9, 13, 5), 33, 50, None, (101, 37)),      # FC-CLIP: resized to the image, up and down
    ((5, 8, 8, 3), 30, 29, (32, 32), (13, 11)),
    ((12, 16, 24, 9), 60, 90, (64, 96), (300, 451)),   # several bands of output rows
    ((4, 3, 40, 2), 10, 160, None, (20, 8500)),        # rows wider than one band
]


@pytest.mark.parametrize("case", range(len(SEMANTIC_CASES)))
def test_mask_semantic_equals_torch_and_naive(case):
    (Q, hm, wm, C), h, w, up, size = SEMANTIC_CASES[case]
    rng = np.random.default_rng(case)
    masks = (rng.standard_normal((Q, hm, wm)) * 3).astype(np.float32)
    masks[0, 0, :3] = (-200, 200, 0)   # saturated logits: sigmoid 0 and 1
    probs = rng.random((Q, C)).astype(np.float32)
    ref = _torch_semantic(masks, probs, h, w, up, size)
    got = mask_semantic(masks, probs, h, w, upsampled=up, out_size=size)
    assert_close(got, ref, rtol=1e-5, name=f"mask_semantic case {case}")
    naive = _core.mask_semantic(masks, probs, up, (h, w), size, naive=True)
    assert_close(naive, ref, rtol=1e-5, name=f"mask_semantic naive twin, case {case}")
    n = ovs.get_num_threads()
    try:
        ovs.set_num_threads(1)
        one = mask_semantic(masks, probs, h, w, upsampled=up, out_size=size)
        ovs.set_num_threads(2)
        two = mask_semantic(masks, probs, h, w, upsampled=up, out_size=size)
    finally:
        ovs.set_num_threads(n)
    assert np.array_equal(one, two), "mask_semantic differs between 1 and 2 threads"
    # labels=True: the argmax of the same scores, band by band, bit for bit
    lab = mask_semantic(masks, probs, h, w, upsampled=up, out_size=size, labels=True)
    assert lab.dtype == np.int32
    np.testing.assert_array_equal(lab, got.argmax(0))
    lab_naive = _core.mask_semantic(masks, probs, up, (h, w), size, naive=True, labels=True)
    np.testing.assert_array_equal(lab_naive, naive.argmax(0))
    if C > 1:
        assert float((lab == ref.argmax(0)).mean()) >= 0.999


def test_mask_semantic_failed_allocations_are_clean_errors():
    from conftest import inject_alloc_failures

    rng = np.random.default_rng(1)
    masks = rng.standard_normal((5, 8, 9)).astype(np.float32)
    probs = rng.random((5, 3)).astype(np.float32)
    for size in (None, (50, 17)):   # without and with the second resize (its band buffer)
        for naive in (False, True):
            for labels in (False, True):
                inject_alloc_failures(lambda: _core.mask_semantic(masks, probs, None, (30, 33), size,
                                                                  naive=naive, labels=labels),
                                      f"mask_semantic size={size} naive={naive} labels={labels}")


def test_mask_semantic_rejects_bad_inputs():
    rng = np.random.default_rng(0)
    masks = rng.standard_normal((7, 9, 13)).astype(np.float32)
    probs = rng.random((7, 5)).astype(np.float32)
    with pytest.raises(ValueError, match="inside the upsampled"):
        mask_semantic(masks, probs, 37, 52)
    with pytest.raises(ValueError, match="inside the upsampled"):
        mask_semantic(masks, probs, 20, 20, upsampled=(19, 40))
    with pytest.raises(ValueError, match="same Q"):
        mask_semantic(masks, probs[:3], 36, 52)
    with pytest.raises(ValueError, match="same Q"):
        mask_semantic(masks[:0], probs[:0], 36, 52)
    with pytest.raises(ValueError, match="masks must have 3"):
        mask_semantic(masks[0], probs, 36, 52)
    with pytest.raises(ValueError, match="crop must be >= 1"):
        mask_semantic(masks, probs, 0, 52)
    with pytest.raises(ValueError, match="out_size must be >= 1"):
        mask_semantic(masks, probs, 36, 52, out_size=(10, -1))
    with pytest.raises(TypeError, match="upsampled must be"):
        mask_semantic(masks, probs, 36, 52, upsampled="big")
    with pytest.raises(ValueError, match="at most 65536"):
        mask_semantic(masks, probs, 36, 52, out_size=(10, 1 << 20))
    bad = masks.copy()
    bad[3, 2, 1] = np.nan
    with pytest.raises(ValueError, match="masks contains NaN"):
        mask_semantic(bad, probs, 36, 52)
    with pytest.raises(ValueError, match="probs contains NaN"):
        mask_semantic(masks, np.full_like(probs, np.inf), 36, 52)


def test_thread_count_independent(pair):
    FW.assert_thread_count_invariant(pair[1], framework_test_images()[0], NAMES)


def test_convert_reports_bad_checkpoints(pair):
    ref, _, _ = pair
    sd = {k: v.numpy() for k, v in ref.opentrans_state_dict().items()}
    _, rep = ovs.convert.convert_state_dict(sd, "han")
    assert "criterion.empty_weight" in rep["ignored"]

    name = "sem_seg_head.predictor.transformer_cross_attention_layers.2.norm.bias"
    linear1 = "sem_seg_head.pixel_decoder.transformer.encoder.layers.1.linear1.weight"
    assert_conversion_errors(sd, "han", [
        ({name: None}, f"1 missing: '{re.escape(name)}'"),
        ({linear1: np.zeros((95, 64), np.float32)}, re.escape(f"'{linear1}': (95, 64), expected (96, 64)")),
        ({"embed_proj.1.weight": np.zeros((64, 32), np.float32)},
         re.escape("'embed_proj.1.weight' (-> 'embed_proj.weight'): (64, 32), expected (64, 64)")),
        ({"backbone.layer2.1.bn2.running_mean": None},
         re.escape("'backbone.layer2.1.bn2.running_mean' (-> 'visual.layer2.1.bn2.running_mean')")),
        ({"sem_seg_head.predictor.extra.weight": np.ones(3, np.float32)},
         "unexpected: 'sem_seg_head.predictor.extra.weight'"),
        ({"grounding_head.w": np.ones(3, np.float32)}, "unexpected tensor.*'grounding_head.w'"),
    ])
    with pytest.raises(ConversionError, match="does not match"):   # a DeepLab file is not a Han one
        HanModel({k: v for k, v in ovs.convert.convert_state_dict(sd, "han")[0].items()
                  if not k.startswith("sem_seg_head.predictor.class_embed")})


def test_segmenter_and_cli(pair, tmp_path):
    _, model, path = pair
    FW.assert_rejects_bad_images(model.forward)
    FW.check_segmenter_and_cli(model, path, framework_test_images()[0], NAMES, tmp_path,
                               other_method="deeplab")


def test_pruned_backbone_transfers_and_runs_sparse(pair, tmp_path):
    """A subnetwork found on CLIP RN50 (open_clip names) transfers to OpenTrans' names with
    ovs.prune.transfer(..., "han"); the masked checkpoint converts, its trunk runs through the
    sparse kernels and matches PyTorch on the same pruned weights; ovs.prune reads the same
    masks back from the converted model."""
    ref = copy.deepcopy(pair[0])
    clip_sd = {f"visual.{k}": v.numpy() for k, v in ref.backbone.state_dict().items()}
    masks = ovs.prune.masks(ovs.prune.magnitude(clip_sd, sparsity=0.9))
    han_masks = ovs.prune.transfer(masks, "han")
    ck = ref.opentrans_state_dict()
    assert set(han_masks) <= set(ck)
    with torch.no_grad():
        for name, m in han_masks.items():
            getattr_path = name[len("backbone."):].split(".")
            mod = ref.backbone
            for part in getattr_path[:-1]:
                mod = getattr(mod, part)
            getattr(mod, getattr_path[-1]).mul_(torch.from_numpy(m).to(torch.float32))
    model = FW.load_pruned(ref, tmp_path, HanModel)
    img = framework_test_images()[0]
    probs, _, _, _ = R.semantic(ref, img, NAMES, SHORT, MAX)
    assert_close(FW.segmenter(model).predict(img, NAMES), probs.numpy(), rtol=1e-4,
                 name="semantic scores (sparse trunk)")
    back = ovs.prune.masks(model)   # the converted model's trunk has open_clip's names again
    assert {k: v.tolist() for k, v in back.items()} == {k: v.tolist() for k, v in masks.items()}


def test_eval_runs_the_framework(pair, tmp_path):
    """`ovs eval --method han` on a converted file equals Segmenter.segment's confusion."""
    from test_eval import check_framework_eval

    _, model, path = pair
    check_framework_eval(tmp_path, model, path, "han")


def test_flops_count_every_conv_and_linear(pair):
    """ovs.flops rows for han: the conv / linear MACs equal the ones of every Conv2d, Linear and
    MultiheadAttention projection the reference runs (forward hooks), and the parameters are
    the reference's image-side parameters."""
    import ovs.flops

    ref, model, _ = pair
    macs = [0]

    def hook(m, args, kwargs, out):
        if isinstance(m, torch.nn.Conv2d):
            macs[0] += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, torch.nn.MultiheadAttention):   # in_proj (q, k, v) and out_proj
            q, k = kwargs.get("query", args[0] if args else None), kwargs.get("key", args[1] if len(args) > 1 else None)
            macs[0] += (2 * q.shape[0] * q.shape[1] + 2 * k.shape[0] * k.shape[1]) * m.embed_dim ** 2
        elif isinstance(m, torch.nn.Linear):
            macs[0] += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook, with_kwargs=True) for n, m in ref.named_modules()
               if not n.startswith("text_encoder")
               and isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.MultiheadAttention))]
    try:
        with torch.no_grad():
            ref(torch.zeros(1, 3, 64, 96))
    finally:
        for h in handles:
            h.remove()
    rows = ovs.flops.count(model, image_size=(64, 96), num_classes=len(NAMES))
    assert sum(r.macs for r in rows if r.kind in ("conv", "linear")) == macs[0]
    n_ref = sum(p.numel() for n, p in ref.named_parameters() if not n.startswith("text_encoder"))
    assert ovs.flops.params(rows) == n_ref
    assert ovs.flops.total(rows, fvcore=True) > macs[0]   # + einsums, norms, resizes
