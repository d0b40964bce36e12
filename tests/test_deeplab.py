"""DeepLabV3-OVS (OpenTrans) on ovs against the PyTorch reference re-typed from OpenTrans
(tests/reference/deeplab_reference.py), on identical random weights saved as a detectron2
checkpoint with OpenTrans' real key names and converted with `ovs convert`."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import (FrameworkCase, assert_close, assert_conversion_errors,
                      framework_test_images)

# the reference's dependencies first: without them the module is skipped
FW = FrameworkCase("deeplab_reference", "deeplab")
R, SHORT, MAX = FW.R, FW.SHORT, FW.MAX

import torch  # noqa: E402

import ovs  # noqa: E402
import ovs.convert  # noqa: E402
import ovs.flops  # noqa: E402
from ovs.cli import main as cli_main  # noqa: E402
from ovs import _core  # noqa: E402
from ovs.frameworks import ConversionError, DeepLabModel  # noqa: E402

NAMES = ["cat", "dog", "grass", "sky", "road"]


def _images():
    """A random 150x200 image, then framework_test_images() (a random 300x90 one: long side
    capped by MAX, 192x58 -> 64; a smooth 150x200 one, classes well separated over regions)."""
    smooth, tall = framework_test_images()
    return [np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8), tall, smooth]


def test_load_gives_the_framework_model(pair):
    ref, model, _ = pair
    assert isinstance(model, DeepLabModel)
    assert "res5 (OpenTrans)" in repr(model)
    assert model.embed_dim == 64 and model.layers == (3, 4, 6, 3)
    assert model.logit_scale == pytest.approx(float(ref.logit_scale.detach().exp()), rel=1e-6)


def test_embeddings_match_pytorch(pair):
    ref, model, _ = pair
    for img in _images()[:1]:
        x, _ = R.preprocess(img, SHORT, MAX)
        with torch.no_grad():
            emb, (h, w) = ref.pixel_embeddings(x)
        ours = model.embed(x.numpy())
        assert ours.shape == (1, 64, h, w)
        assert_close(ours[0].reshape(64, -1).T, emb[0].numpy(), name="pixel embeddings")


def test_segmenter_matches_opentrans_inference(pair):
    ref, model, _ = pair
    seg = FW.segmenter(model)
    for i, img in enumerate(_images()[1:]):
        probs, logits, lowres, x = R.semantic(ref, img, NAMES, SHORT, MAX)
        ours_x, _ = ovs.frameworks.detectron2_preprocess(img, SHORT, MAX, 32, R.PIXEL_MEAN, R.PIXEL_STD)
        np.testing.assert_array_equal(ours_x, x.numpy())   # Pillow resize, same float32 arithmetic
        if i == 0:
            cls = seg.classifier(NAMES)
            assert_close(model.lowres(img, cls, "logits", short=SHORT, max_size=MAX, divisor=32),
                         logits.numpy(), name="low-res logits")
            lg = seg.logits(img, NAMES)
            assert lg.shape == (len(NAMES),) + img.shape[:2]
        p = seg.predict(img, NAMES)
        assert_close(p, probs.numpy(), name="probabilities")
        labels = seg.segment(img, NAMES)
        agree = float((labels == probs.numpy().argmax(0)).mean())
        assert agree >= 0.999, f"label maps agree on {agree:.4%} of pixels"


@pytest.fixture(scope="module")
def pool_ref():
    return R.small(seed=1, opentrans_aspp=False)


def test_image_pooling_variant(tmp_path, pool_ref):
    """The standard DeepLabV3+ ASPP (pooled fifth branch, 5A-input projection)."""
    ref = pool_ref
    model = ovs.load(FW.convert(ref, tmp_path, "pool"))
    assert "image pooling" in repr(model)
    img = _images()[2]
    probs, _, _, _ = R.semantic(ref, img, NAMES, SHORT, MAX)
    seg = FW.segmenter(model)
    assert_close(seg.predict(img, NAMES), probs.numpy(), name="probabilities (image pooling)")


def test_pruned_backbone_runs_sparse(tmp_path):
    """A DeepLab whose trunk convs are 90% zeros (as a transferred subnetwork) runs its trunk
    through the sparse kernels and still matches PyTorch on the same pruned weights."""
    ref = R.small(seed=2)
    with torch.no_grad():
        for name, p in ref.backbone.named_parameters():
            if p.ndim == 4 and name != "conv1.weight":
                k = int(0.9 * p.numel())
                thr = p.abs().flatten().kthvalue(k).values
                p.mul_((p.abs() > thr).to(p.dtype))
            # whole 3x3s empty (global pruning does this): a constant branch in ovs, also
            # in the dilated layer4 and for layer2.0's strided 3x3 (on the dense kernel: the
            # sparse one takes stride 1 only; the model runs sparse, so zeros are structure)
            if name in ("layer1.1.conv2.weight", "layer2.0.conv2.weight", "layer3.2.conv2.weight",
                        "layer4.1.conv2.weight"):
                p.zero_()
    model = FW.load_pruned(ref, tmp_path, DeepLabModel)
    empty = {c["name"]: c["sparse"] for c in model._trunk.convs() if c["nnz"] == 0}
    assert empty == {"visual.layer1.1.conv2": True, "visual.layer2.0.conv2": False,
                     "visual.layer3.2.conv2": True, "visual.layer4.1.conv2": True}, empty
    img = _images()[2]
    probs, _, _, x = R.semantic(ref, img, NAMES, SHORT, MAX)
    with torch.no_grad():
        emb, _ = ref.pixel_embeddings(x)
    assert_close(model.embed(x.numpy())[0].reshape(64, -1).T, emb[0].numpy(), name="sparse trunk")
    seg = FW.segmenter(model)
    assert_close(seg.predict(img, NAMES), probs.numpy(), name="probabilities (sparse)")
    # the same trunk stored as CSR (ovs.prune.save_sparse): ovs.load gives the framework model
    csr = tmp_path / "pruned_csr.safetensors"
    path = tmp_path / "pruned.safetensors"   # the file FW.load_pruned converted
    assert path.is_file()
    assert ovs.prune.save_sparse(ovs.weights.load_state_dict(path), csr)
    again = ovs.load(csr)
    assert isinstance(again, DeepLabModel)
    assert_close(again.embed(x.numpy())[0].reshape(64, -1).T, emb[0].numpy(), name="CSR file")


@pytest.mark.parametrize("os_", [16, 8])
def test_deeplab_trunk_features(pair, os_):
    """res2..res5 of the DEEPLAB-style ResNet (strided/dilated 3x3, strided shortcut, stem
    without inner ReLUs) against zs3's ResNet at output stride 16 and 8."""
    ref, model, _ = pair
    trunk = R.ResNet((3, 4, 6, 3), os_, 16)
    trunk.load_state_dict(ref.backbone.state_dict())
    trunk.eval()
    sd = {k: v for k, v in model.state_dict.items() if k.startswith("visual.")}
    net = _core.ResNet(sd, "visual.", (3, 4, 6, 3), 16, 0, 0, 0, False, style="deeplab",
                       output_stride=os_)
    x = torch.randn(1, 3, 96, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        feats, t = [], x
        t = trunk.relu(trunk.Avgpool(trunk.bn3(trunk.conv3(trunk.bn2(trunk.conv2(trunk.bn1(trunk.conv1(t))))))))
        for layer in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4):
            t = layer(t)
            feats.append(t.numpy())
    out = net.forward(x.numpy(), features=True)
    for s, f in enumerate(feats):
        assert_close(out[f"res{s + 2}"], f, name=f"res{s + 2} (OS {os_})")


def test_pixel_classify_fast_equals_naive():
    rng = np.random.default_rng(0)
    for E, h, w, T in [(64, 7, 45, 6), (16, 1, 1, 1), (33, 17, 19, 151)]:
        emb = rng.standard_normal((E, h, w)).astype(np.float32)
        emb[:, 0, 0] = 0   # an all-zero pixel: the 1e-7 keeps it finite
        text = rng.standard_normal((T, E)).astype(np.float32)
        for softmax in (False, True):
            a = _core.pixel_classify(emb, text, 14.3, softmax=softmax)
            b = _core.pixel_classify(emb, text, 14.3, softmax=softmax, naive=True)
            assert_close(a, b, rtol=1e-5, name=f"pixel_classify softmax={softmax}")
            if softmax:
                np.testing.assert_allclose(a.sum(0), 1, rtol=1e-5)
    with pytest.raises(ValueError, match="text has 3 columns"):
        _core.pixel_classify(np.zeros((4, 2, 2), np.float32), np.zeros((2, 3), np.float32), 1.0)
    with pytest.raises(ValueError, match="T=0"):
        _core.pixel_classify(np.zeros((4, 2, 2), np.float32), np.zeros((0, 4), np.float32), 1.0)


def test_convert_reports_bad_checkpoints(pair, tmp_path):
    ref, _, _ = pair
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    ovs.convert.convert_state_dict(sd, "deeplab")   # the good one converts

    assert_conversion_errors(sd, "deeplab", [
        ({"aspp.aspp2.bn.running_var": None}, r"missing: .aspp.aspp2.bn.running_var."),
        ({"sem_seg_head.last_conv.0.weight": np.zeros((64, 100, 3, 3), np.float32)},
         r"'sem_seg_head.last_conv.0.weight' \(-> 'decoder.last_conv.0.weight'\): \(64, 100, 3, 3\), "
         r"expected \(64, 112, 3, 3\)"),
        ({"criterion.empty_weight": np.ones(3, np.float32)}, "unexpected tensor.*'criterion.empty_weight'"),
        ({"aspp.extra.weight": np.ones(3, np.float32)}, "unexpected: 'aspp.extra.weight'"),
        ({"backbone.layer3.2.conv1.weight": None, "backbone.layer3.2.bn1.weight": None},
         r"'backbone.layer3.2.conv1.weight' \(-> 'visual.layer3.2.conv1.weight'\)"),
        ({"logit_scale": np.array(np.nan, np.float32)}, "'logit_scale' contains NaN"),
    ])
    with pytest.raises(ValueError, match="unknown framework 'maskformer'"):
        ovs.convert.convert_state_dict(sd, "maskformer")
    with pytest.raises(ConversionError, match="no tensors"):
        ovs.convert.convert_state_dict({}, "deeplab")
    # through the CLI: exit code 2 and the key named
    R.save_checkpoint(ref, tmp_path / "ok.pth")
    rc = cli_main(["convert", str(tmp_path / "missing.pth"), "--framework", "deeplab",
                       "-o", str(tmp_path / "x.safetensors")])
    assert rc == 2


def test_segmenter_and_cli(pair, tmp_path):
    ref, model, path = pair
    with pytest.raises(ValueError, match="bg_threshold does not apply"):
        ovs.Segmenter(model, "deeplab", bg_threshold=0.5)
    with pytest.raises(ValueError, match="short_side must be an int >= 32, got 8"):
        ovs.Segmenter(model, "deeplab", short_side=8)
    FW.assert_rejects_bad_images(model.embed)
    FW.check_segmenter_and_cli(model, path, _images()[2], NAMES, tmp_path, other_method="naclip")


def test_flops_equal_fvcore(pair, pool_ref):
    from fvcore.nn import FlopCountAnalysis

    ref, model, _ = pair
    for opentrans, m in ((True, ref), (False, pool_ref)):
        H, W = 64, 96
        fa = FlopCountAnalysis(m, (torch.zeros(1, 3, H, W), torch.zeros(len(NAMES), 64)))
        fa.unsupported_ops_warnings(False)
        fa.uncalled_modules_warnings(False)
        sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
        conv, _ = ovs.convert.convert_state_dict(sd, "deeplab")
        rows = ovs.flops.count(conv, image_size=(H, W), num_classes=len(NAMES))
        assert ovs.flops.total(rows, fvcore=True) == fa.total(), f"opentrans={opentrans}"


def test_prune_a_deeplab_model(pair):
    """ovs.prune works on a DeepLab model (its trunk has open_clip names): the result is a
    DeepLab model whose trunk runs sparse where faster, equal to the dense run of the same
    weights."""
    import ovs.prune

    _, model, _ = pair
    pruned = ovs.prune.magnitude(model, sparsity=0.9)
    assert isinstance(pruned, DeepLabModel)
    assert 0.89 < ovs.prune.sparsity(ovs.prune.masks(pruned)) < 0.91
    dense = DeepLabModel(pruned.state_dict, sparse="dense")
    sparse = DeepLabModel(pruned.state_dict, sparse="all")
    x = np.random.default_rng(5).standard_normal((1, 3, 64, 96)).astype(np.float32)
    assert_close(sparse.embed(x), dense.embed(x), rtol=1e-5, name="sparse vs dense trunk")


def test_classify_streams_the_embeddings(pair):
    """DeepLabModel.classify (embed_proj + pixel_classify band by band of 2048 pixels in C)
    equals pixel_classify of the whole embedding map, over several bands and a partial one, at
    1 and 2 threads bit for bit."""
    _, model, _ = pair
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 224, 288)).astype(np.float32)   # 56 x 72 = 4032 pixels: 2 bands
    text = model.text_rows(NAMES)
    emb = model.embed(x)
    n = ovs.get_num_threads()
    try:
        for softmax in (False, True):
            ovs.set_num_threads(2)
            got = model.classify(x, text, softmax=softmax)
            ovs.set_num_threads(1)
            one = model.classify(x, text, softmax=softmax)
            assert np.array_equal(got, one), "classify differs between 1 and 2 threads"
            for i in range(2):
                ref = _core.pixel_classify(emb[i], text, model.logit_scale, softmax=softmax)
                assert_close(got[i], ref, rtol=1e-5, name=f"classify image {i} softmax={softmax}")
    finally:
        ovs.set_num_threads(n)
    with pytest.raises(ValueError, match="text must be"):
        model.classify(x, text[:, :5])
    with pytest.raises(ValueError, match="text must be"):
        model.classify(x, text[:0])
    with pytest.raises(ValueError, match="sides must be at least 32"):
        model.classify(x[:, :, :16], text)


def test_failed_allocations_are_clean_errors(pair):
    """Every C allocation of building the head and of a forward on a fresh head fails in turn:
    a MemoryError each time (or, where the code recovers, the same result), never a crash."""
    from conftest import inject_alloc_failures as _inject

    _, model, _ = pair
    n = ovs.get_num_threads()
    ovs.set_num_threads(1)
    try:
        vis = {k: v for k, v in model.state_dict.items()
               if k.startswith(("visual.", "aspp.", "decoder.", "embed_proj."))}
        trunk = _core.ResNet(vis, "visual.", (3, 4, 6, 3), 16, 0, 0, 0, False, style="deeplab",
                             output_stride=16)
        x = np.random.default_rng(7).standard_normal((1, 3, 64, 64)).astype(np.float32)
        _inject(lambda: _core.DeepLabHead(trunk).forward(x), "DeepLabHead build + forward")
        _inject(lambda h: h.forward(x), "DeepLabHead.forward", setup=lambda: _core.DeepLabHead(trunk))
        text = np.random.default_rng(8).standard_normal((3, model.embed_dim)).astype(np.float32)
        _inject(lambda h: h.classify(x, text, 2.0, softmax=True), "DeepLabHead.classify",
                setup=lambda: _core.DeepLabHead(trunk))
    finally:
        ovs.set_num_threads(n)


def test_eval_runs_the_framework(pair, tmp_path):
    """`ovs eval --method deeplab` on a converted file equals Segmenter.segment's confusion."""
    from test_eval import check_framework_eval

    _, model, path = pair
    check_framework_eval(tmp_path, model, path, "deeplab")
