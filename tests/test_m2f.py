"""Mask2Former blocks (include/ovs/m2f.h, ovs/_m2f.py) against independent references.

- GroupNorm, sine positional encoding, deformable-attention core: fast vs naive twin vs torch
  (torch.nn.GroupNorm; transformers' Mask2FormerSinePositionEmbedding; Deformable DETR's
  ms_deform_attn_core_pytorch re-typed below with F.grid_sample).
- MSDeformAttn, pixel decoder, transformer decoder: vs Hugging Face transformers'
  Mask2Former modules (pure PyTorch, pinned in pyproject's test extra) with random weights
  mapped to the fc-clip / detectron2 names (the mapping is HF_TO_FCCLIP_* below and the
  docstring of ovs/_m2f.py).
Tolerances: ops 1e-5 * max(1, max |ref|); blocks 1e-4 * max(1, max |ref|).
"""
from __future__ import annotations

import re
import sys
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ovs
from ovs import _core, _m2f

from conftest import load_reference  # noqa: E402

M2F = load_reference("m2f_hf")   # the HF <-> detectron2 name tables, HF module weights
HF_TO_FCCLIP_PIXEL_DECODER, map_names = M2F.HF_TO_FCCLIP_PIXEL_DECODER, M2F.map_names
predictor_weights, randomize = M2F.predictor_weights, M2F.randomize

transformers = pytest.importorskip("transformers")
from transformers import Mask2FormerConfig  # noqa: E402
from transformers.models.mask2former import modeling_mask2former as hf  # noqa: E402

torch.set_num_threads(1)


def assert_close(got, ref, what, tol):
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref.detach().numpy() if isinstance(ref, torch.Tensor) else ref, np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != reference {ref.shape}"
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(got - ref).max())
    assert err <= tol * scale, f"{what}: max |diff| = {err:.3g} > {tol:g} * {scale:.3g}"


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


# ---------------------------------------------------------------- GroupNorm
@pytest.mark.parametrize("N,C,HW,G", [(2, 64, 35, 32), (1, 6, 1, 3), (1, 8, 1000, 1)])
def test_groupnorm_fast_naive_torch(rng, N, C, HW, G):
    x = (rng.standard_normal((N, C, HW)) * 3 + 5).astype(np.float32)
    w = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    ref = F.group_norm(torch.from_numpy(x), G, torch.from_numpy(w), torch.from_numpy(b), 1e-5)
    fast = _core.op_groupnorm(x, G, w, b, 1e-5)
    naive = _core.op_groupnorm(x, G, w, b, 1e-5, naive=True)
    assert_close(fast, ref, "groupnorm fast", 1e-5)
    assert_close(naive, ref, "groupnorm naive", 1e-5)
    assert_close(fast, naive, "groupnorm fast vs naive", 1e-5)
    with pytest.raises(ValueError, match="divide C = 8"):
        _core.op_groupnorm(np.zeros((1, 8, 3), np.float32), 3, naive=True)


# ---------------------------------------------------------------- sine positional encoding
@pytest.mark.parametrize("D,H,W", [(64, 5, 7), (256, 2, 3), (8, 1, 1)])
def test_pos_embed_sine(D, H, W):
    pe = hf.Mask2FormerSinePositionEmbedding(num_position_features=D // 2, normalize=True)
    ref = pe((1, D, H, W), "cpu", torch.float32)[0].permute(1, 2, 0)
    assert_close(_m2f.position_embedding_sine(D, H, W), ref, "pos fast", 1e-5)
    assert_close(_core.op_pos_embed_sine(D, H, W, naive=True), ref, "pos naive", 1e-5)


def test_pos_embed_sine_errors():
    with pytest.raises(ValueError, match="D = 6"):
        _core.op_pos_embed_sine(6, 2, 2)
    with pytest.raises(ValueError, match="H = -1"):
        _core.op_pos_embed_sine(8, -1, 2)
    with pytest.raises(ValueError, match="temperature"):
        _core.op_pos_embed_sine(8, 2, 2, temperature=0.0)
    assert _core.op_pos_embed_sine(8, 0, 3).shape == (0, 3, 8)


# ---------------------------------------------------------------- deformable attention core
def ms_deform_attn_core_pytorch(value, value_spatial_shapes, sampling_locations, attention_weights):
    """Re-typed from fc-clip fcclip/modeling/pixel_decoder/ops/functions/ms_deform_attn_func.py."""
    N_, S_, M_, D_ = value.shape
    _, Lq_, M_, L_, P_, _ = sampling_locations.shape
    value_list = value.split([H_ * W_ for H_, W_ in value_spatial_shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampling_value_list = []
    for lid_, (H_, W_) in enumerate(value_spatial_shapes):
        value_l_ = value_list[lid_].flatten(2).transpose(1, 2).reshape(N_ * M_, D_, H_, W_)
        sampling_grid_l_ = sampling_grids[:, :, :, lid_].transpose(1, 2).flatten(0, 1)
        sampling_value_l_ = F.grid_sample(value_l_, sampling_grid_l_, mode="bilinear",
                                          padding_mode="zeros", align_corners=False)
        sampling_value_list.append(sampling_value_l_)
    attention_weights = attention_weights.transpose(1, 2).reshape(N_ * M_, 1, Lq_, L_ * P_)
    output = (torch.stack(sampling_value_list, dim=-2).flatten(-2) * attention_weights).sum(-1)
    return output.view(N_, M_ * D_, Lq_).transpose(1, 2).contiguous()


@pytest.mark.parametrize("shapes,Q,E,F_,P", [([(6, 7), (3, 4), (2, 2)], 23, 4, 8, 4),
                                             ([(1, 1)], 5, 1, 3, 2),
                                             ([(9, 5), (1, 3)], 40, 2, 16, 3)])
def test_msdeform_core(rng, shapes, Q, E, F_, P):
    L, S = len(shapes), sum(h * w for h, w in shapes)
    value = rng.standard_normal((S, E, F_)).astype(np.float32)
    # locations in [-0.3, 1.3]: inside, on the border and outside every map
    loc = rng.uniform(-0.3, 1.3, (Q, E, L, P, 2)).astype(np.float32)
    loc[0, 0, 0, 0] = (0.0, 0.0)
    loc[-1, -1, -1, -1] = (1.0, 1.0)
    attn = rng.random((Q, E, L, P)).astype(np.float32)
    attn /= attn.reshape(Q, E, -1).sum(-1)[:, :, None, None]
    ref = ms_deform_attn_core_pytorch(torch.from_numpy(value)[None], shapes,
                                      torch.from_numpy(loc)[None], torch.from_numpy(attn)[None])[0]
    fast = _m2f.msdeform_attn_core(value, shapes, loc, attn)
    naive = _core.op_msdeform_attn_core(value, shapes, loc, attn, naive=True)
    assert_close(fast, ref, "msdeform core fast", 1e-5)
    assert_close(naive, ref, "msdeform core naive", 1e-5)
    assert_close(fast, naive, "msdeform core fast vs naive", 1e-5)


def test_msdeform_core_extreme_locations(rng):
    value = rng.standard_normal((12, 2, 4)).astype(np.float32)
    loc = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.5], np.float32)[
        rng.integers(0, 6, (7, 2, 1, 3, 2))]
    attn = np.ones((7, 2, 1, 3), np.float32)
    fast = _core.op_msdeform_attn_core(value, [(3, 4)], loc, attn)
    naive = _core.op_msdeform_attn_core(value, [(3, 4)], loc, attn, naive=True)
    assert np.isfinite(fast).all()
    assert_close(fast, naive, "extreme locations", 1e-5)


def test_msdeform_core_errors():
    v = np.zeros((12, 2, 4), np.float32)
    loc = np.zeros((3, 2, 1, 2, 2), np.float32)
    attn = np.zeros((3, 2, 1, 2), np.float32)
    with pytest.raises(ValueError, match=r"value must have shape \(13, 2, 4\)"):
        _core.op_msdeform_attn_core(v, [(3, 4), (1, 1)], np.zeros((3, 2, 2, 2, 2), np.float32),
                                    np.zeros((3, 2, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"attn must have shape \(3, 2, 1, 2\)"):
        _core.op_msdeform_attn_core(v, [(3, 4)], loc, attn[:, :, :, :1])
    with pytest.raises(ValueError, match=r"shapes\[0\] = \(0, 4\)"):
        _core.op_msdeform_attn_core(v, [(0, 4)], loc, attn)
    with pytest.raises(TypeError, match="shapes"):
        _core.op_msdeform_attn_core(v, 3, loc, attn)


# ---------------------------------------------------------------- MSDeformAttn module
def test_msdeform_attn_module(rng):
    D, E, L, P = 32, 4, 3, 4
    shapes = [(5, 6), (3, 3), (2, 1)]
    S = sum(h * w for h, w in shapes)
    mod = hf.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(D, E, L, P).eval()
    randomize(mod, 1)
    x = torch.from_numpy(rng.standard_normal((1, S, D)).astype(np.float32))
    pos = torch.from_numpy(rng.standard_normal((1, S, D)).astype(np.float32))
    valid = torch.ones(1, L, 2)
    ref_pts = hf.Mask2FormerPixelDecoderEncoderOnly.get_reference_points(shapes, valid, "cpu")
    with torch.no_grad():
        ref, _ = mod(x, attention_mask=torch.zeros(1, S, dtype=torch.bool), encoder_hidden_states=x,
                     position_embeddings=pos, reference_points=ref_pts, spatial_shapes_list=shapes)
    prefix = "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.self_attn."
    w = {prefix + k: v.numpy().copy() for k, v in mod.state_dict().items()}
    got = _m2f.msdeform_attn(w, prefix, (x + pos)[0].numpy(), x[0].numpy(), ref_pts[0].numpy(),
                             shapes, E, P)
    assert_close(got, ref[0], "MSDeformAttn vs transformers", 1e-4)
    del w[prefix + "value_proj.bias"]
    with pytest.raises(KeyError, match="value_proj.bias"):
        _m2f.msdeform_attn(w, prefix, x[0].numpy(), x[0].numpy(), ref_pts[0].numpy(), shapes, E, P)


# ---------------------------------------------------------------- pixel decoder
PD = dict(D=64, MD=48, heads=4, ffn=96, layers=2)
CHANNELS = (24, 40, 56, 72)


def hf_config(**kw):
    return Mask2FormerConfig(feature_size=PD["D"], mask_feature_size=PD["MD"],
                             hidden_dim=PD["D"], encoder_feedforward_dim=PD["ffn"],
                             encoder_layers=PD["layers"], num_attention_heads=PD["heads"],
                             common_stride=4, feature_strides=[4, 8, 16, 32], dropout=0.0,
                             pre_norm=False, enforce_input_projection=False, **kw)


def features(rng, N, sizes):
    return [rng.standard_normal((N, c, h, w)).astype(np.float32) for c, (h, w) in zip(CHANNELS, sizes)]


@pytest.fixture(scope="module")
def pixel_decoder():
    mod = hf.Mask2FormerPixelDecoder(hf_config(), feature_channels=list(CHANNELS)).eval()
    randomize(mod, 2)
    w = map_names(mod.state_dict(), HF_TO_FCCLIP_PIXEL_DECODER, _m2f.PIXEL_DECODER_PREFIX)
    ours = _m2f.PixelDecoder(w, CHANNELS, conv_dim=PD["D"], mask_dim=PD["MD"],
                             enc_layers=PD["layers"], heads=PD["heads"], ffn_dim=PD["ffn"])
    return mod, w, ours


@pytest.mark.parametrize("sizes", [[(16, 20), (8, 10), (4, 5), (2, 3)],
                                   [(9, 7), (5, 4), (3, 2), (1, 1)]])
def test_pixel_decoder(rng, pixel_decoder, sizes):
    mod, _, ours = pixel_decoder
    feats = features(rng, 2, sizes)
    with torch.no_grad():
        ref = mod([torch.from_numpy(f) for f in feats])
    mask_features, ms = ours(*feats)
    assert_close(mask_features, ref.mask_features, "mask_features", 1e-4)
    for l in range(3):
        assert_close(ms[l], ref.multi_scale_features[l], f"multi-scale level {l}", 1e-4)


def test_pixel_decoder_errors(rng, pixel_decoder):
    _, w, ours = pixel_decoder
    feats = features(rng, 1, [(8, 8), (4, 4), (2, 2), (1, 1)])
    with pytest.raises(ValueError, match=r"res3 must have shape \(1, 40, \*, \*\)"):
        ours(feats[0], feats[2], feats[2], feats[3])
    with pytest.raises(ValueError, match="in_channels"):
        _m2f.PixelDecoder(w, CHANNELS[:3])
    nan = feats[1].copy()
    nan[0, 3, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"res3 contains NaN or infinity \(flat index"):
        ours(feats[0], nan, feats[2], feats[3])
    with pytest.raises(ValueError, match="res2 must not be empty"):
        ours(feats[0][:, :, :0], feats[1], feats[2], feats[3])
    bad = dict(w)
    name = "sem_seg_head.pixel_decoder.transformer.encoder.layers.1.linear2.weight"
    bad[name] = bad[name][:, :5]
    with pytest.raises(ValueError, match=re.escape(name)):
        _m2f.PixelDecoder(bad, CHANNELS, conv_dim=PD["D"], mask_dim=PD["MD"],
                          enc_layers=PD["layers"], heads=PD["heads"], ffn_dim=PD["ffn"])
    del bad["sem_seg_head.pixel_decoder.adapter_1.norm.bias"]
    bad[name] = w[name]
    with pytest.raises(KeyError, match=r"adapter_1\.norm\.bias"):
        _m2f.PixelDecoder(bad, CHANNELS, conv_dim=PD["D"], mask_dim=PD["MD"],
                          enc_layers=PD["layers"], heads=PD["heads"], ffn_dim=PD["ffn"])


# ---------------------------------------------------------------- transformer decoder
DEC = dict(Q=6, layers=4, ffn=80)


@pytest.mark.parametrize("in_channels,class_layers", [(64, 1), (40, 3)])
def test_transformer_decoder(rng, in_channels, class_layers):
    D, MD, E = PD["D"], PD["MD"], PD["heads"]
    cfg = hf_config(num_queries=DEC["Q"], decoder_layers=DEC["layers"] + 1, dim_feedforward=DEC["ffn"])
    mod = hf.Mask2FormerTransformerModule(in_features=in_channels, config=cfg).eval()
    randomize(mod, 3)
    if class_layers == 1:
        head = torch.nn.Linear(D, 7)
        names = {"weight": "class_embed.weight", "bias": "class_embed.bias"}
    else:
        head = hf.Mask2FormerMLPPredictionHead(D, D, 7, class_layers)
        names = {f"{k}.0.{x}": f"class_embed.layers.{k}.{x}" for k in range(class_layers)
                 for x in ("weight", "bias")}
    randomize(head, 4)
    prefix = _m2f.PREDICTOR_PREFIX
    w = predictor_weights(mod, prefix, DEC["layers"])
    w.update({prefix + names[k]: v.detach().numpy().copy() for k, v in head.state_dict().items()})
    sizes, HW = [(2, 3), (4, 5), (7, 9)], (14, 17)
    ms = [(rng.standard_normal((2, in_channels, h, w_)) * 2).astype(np.float32) for h, w_ in sizes]
    mf = rng.standard_normal((2, MD) + HW).astype(np.float32)
    with torch.no_grad():
        ref = mod([torch.from_numpy(m) for m in ms], torch.from_numpy(mf))
    # intermediate_hidden_states: layers+1 tensors (Q, N, D) -> (N, layers+1, Q, D)
    hid_ref = torch.stack([h.transpose(0, 1) for h in ref.intermediate_hidden_states], 1)
    masks_ref = torch.stack(ref.masks_queries_logits, 1)                      # (N, L+1, Q, H, W)
    with torch.no_grad():
        cls_ref = head(hid_ref)
    dec = _m2f.TransformerDecoder(w, in_channels=in_channels, hidden_dim=D, queries=DEC["Q"],
                                  heads=E, ffn_dim=DEC["ffn"], layers=DEC["layers"], mask_dim=MD,
                                  class_layers=class_layers, class_dim=7)
    hid, cls, masks = dec(ms, mf, all_masks=True)
    assert_close(hid, hid_ref, "decoder hidden states", 1e-4)
    assert_close(cls, cls_ref, "class head", 1e-4)
    assert_close(masks, masks_ref, "mask logits (every layer)", 1e-4)
    # the masked attention really masks here: a fraction of the (query, key) pairs of the
    # level-0 layers are masked (the all-masked fallback has its own test below)
    sig = torch.sigmoid(F.interpolate(masks_ref[0, :-1].reshape(-1, 1, *HW), size=sizes[0],
                                      mode="bilinear", align_corners=False)) < 0.5
    assert 0 < sig.float().mean() < 1
    hid2, _, last = dec(ms, mf)
    assert np.array_equal(hid2, hid) and np.array_equal(last, masks[:, -1])


FcclipClassHead = load_reference("fcclip_reference").FcclipClassHead   # fc-clip's class-embedding path, re-typed


def test_transformer_decoder_fcclip_class_head(rng):
    D, E = PD["D"], PD["heads"]
    cfg = Mask2FormerConfig(feature_size=D, mask_feature_size=D, hidden_dim=D,
                            num_attention_heads=E, num_queries=5, decoder_layers=3,
                            dim_feedforward=DEC["ffn"], dropout=0.0)
    mod = hf.Mask2FormerTransformerModule(in_features=D, config=cfg).eval()
    randomize(mod, 7)
    head = FcclipClassHead(D, 24).eval()
    randomize(head, 8)
    w = predictor_weights(mod, "sem_seg_head.predictor.", 2)
    w.update({"sem_seg_head.predictor." + k.replace("class_embed.", "class_embed.layers."): v.numpy().copy()
              for k, v in head.state_dict().items()})
    sizes, HW = [(2, 2), (3, 4), (5, 6)], (10, 12)
    ms = [rng.standard_normal((1, D, h, w_)).astype(np.float32) for h, w_ in sizes]
    mf = rng.standard_normal((1, D) + HW).astype(np.float32)
    with torch.no_grad():
        ref = mod([torch.from_numpy(m) for m in ms], torch.from_numpy(mf))
        cls_ref = torch.stack([head(h.transpose(0, 1), torch.from_numpy(mf), m)
                               for h, m in zip(ref.intermediate_hidden_states,
                                               ref.masks_queries_logits)], 1)
    dec = _m2f.TransformerDecoder(w, in_channels=D, hidden_dim=D, queries=5, heads=E,
                                  ffn_dim=DEC["ffn"], layers=2, mask_dim=D, class_layers=3,
                                  class_dim=24, fcclip_class_head=True)
    _, cls, _ = dec(ms, mf)
    assert_close(cls, cls_ref, "FC-CLIP class embeddings", 1e-4)
    with pytest.raises(ValueError, match="mask_dim == hidden_dim"):
        _m2f.TransformerDecoder(w, in_channels=D, hidden_dim=D, queries=5, heads=E, layers=2,
                                mask_dim=32, class_layers=3, class_dim=24, fcclip_class_head=True)
    del w["sem_seg_head.predictor._mask_pooling_proj.1.bias"]
    with pytest.raises(KeyError, match=r"_mask_pooling_proj\.1\.bias"):
        _m2f.TransformerDecoder(w, in_channels=D, hidden_dim=D, queries=5, heads=E,
                                ffn_dim=DEC["ffn"], layers=2, mask_dim=D, class_layers=3,
                                class_dim=24, fcclip_class_head=True)


def test_transformer_decoder_fallback_all_masked(rng):
    """Every query masked everywhere (the last mask-embedding layer outputs -1 and the mask
    features are ones, so every logit is -mask_dim): the fallback must unmask whole rows as HF
    does, not produce NaN or zeros."""
    D, MD, E = PD["D"], PD["MD"], PD["heads"]
    cfg = hf_config(num_queries=3, decoder_layers=3, dim_feedforward=DEC["ffn"])
    mod = hf.Mask2FormerTransformerModule(in_features=D, config=cfg).eval()
    randomize(mod, 5)
    with torch.no_grad():  # mask logits = bias . 1 = -MD < 0 everywhere: all masked
        last = mod.decoder.mask_predictor.mask_embedder.layers[2].layers[0]
        last.weight.zero_()
        last.bias.fill_(-1.0)
    w = predictor_weights(mod, "p.", 2)
    ms = [rng.standard_normal((1, D, h, w_)).astype(np.float32) for h, w_ in [(2, 2), (3, 3), (4, 4)]]
    mf = np.ones((1, MD, 8, 8), np.float32)
    with torch.no_grad():
        ref = mod([torch.from_numpy(m) for m in ms], torch.from_numpy(mf))
    hid, _, _ = _core.M2FDecoder(w, "p.", D, D, 3, E, DEC["ffn"], 2, MD).forward(ms, mf)
    hid_ref = torch.stack([h.transpose(0, 1) for h in ref.intermediate_hidden_states], 1)
    assert np.isfinite(hid).all()
    assert_close(hid, hid_ref, "all-masked fallback", 1e-4)


def test_transformer_decoder_errors(rng):
    D = PD["D"]
    cfg = hf_config(num_queries=3, decoder_layers=2, dim_feedforward=DEC["ffn"])
    mod = hf.Mask2FormerTransformerModule(in_features=D, config=cfg).eval()
    w = predictor_weights(mod, "p.", 1)
    kw = dict(prefix="p.", in_channels=D, hidden_dim=D, queries=3, heads=PD["heads"],
              ffn_dim=DEC["ffn"], layers=1, mask_dim=PD["MD"])
    with pytest.raises(ValueError, match=r"p\.query_feat\.weight"):
        _m2f.TransformerDecoder(w, **{**kw, "queries": 4})
    with pytest.raises(KeyError, match=r"transformer_cross_attention_layers\.1\.multihead_attn"):
        _m2f.TransformerDecoder(w, **{**kw, "layers": 2})
    with pytest.raises(ValueError, match="class_layers"):
        _m2f.TransformerDecoder(w, **{**kw, "class_layers": 1})
    dec = _m2f.TransformerDecoder(w, **kw)
    ms = [np.zeros((1, D, 2, 2), np.float32)] * 3
    with pytest.raises(ValueError, match="mask_features contains NaN"):
        dec(ms, np.full((1, PD["MD"], 4, 4), np.inf, np.float32))
    with pytest.raises(ValueError, match="3 arrays"):
        dec(ms[:2], np.zeros((1, PD["MD"], 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"mask_features must have shape \(\*, 48, \*, \*\)"):
        dec(ms, np.zeros((1, 5, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"ms\[1\] must have shape \(1, 64, \*, \*\)"):
        dec([ms[0], np.zeros((1, 3, 2, 2), np.float32), ms[2]], np.zeros((1, PD["MD"], 4, 4), np.float32))


# ---------------------------------------------------------------- threads
def test_thread_count_independent(rng, pixel_decoder):
    _, _, ours = pixel_decoder
    feats = features(rng, 1, [(16, 20), (8, 10), (4, 5), (2, 3)])
    mod = hf.Mask2FormerTransformerModule(
        in_features=PD["D"], config=hf_config(num_queries=5, decoder_layers=4,
                                              dim_feedforward=DEC["ffn"])).eval()
    randomize(mod, 9)
    dec = _m2f.TransformerDecoder(predictor_weights(mod, "p.", 3), prefix="p.",
                                  in_channels=PD["D"], hidden_dim=PD["D"], queries=5,
                                  heads=PD["heads"], ffn_dim=DEC["ffn"], layers=3,
                                  mask_dim=PD["MD"])
    old = ovs.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 3):
            ovs.set_num_threads(n)
            mf, ms = ours(*feats)
            runs.append((mf, dec(ms, mf, all_masks=True)[2]))
    finally:
        ovs.set_num_threads(old)
    for n, (mf, masks) in zip((2, 3), runs[1:]):
        assert_close(mf, runs[0][0], f"mask features 1 vs {n} threads", 1e-6)
        assert_close(masks, runs[0][1], f"decoder masks 1 vs {n} threads", 1e-6)


def test_refcounts_unchanged(rng, pixel_decoder):
    _, _, ours = pixel_decoder
    feats = features(rng, 1, [(8, 8), (4, 4), (2, 2), (1, 1)])
    ours(*feats)
    before = [sys.getrefcount(f) for f in feats]
    for _ in range(20):
        ours(*feats)
    assert [sys.getrefcount(f) for f in feats] == before


# ---------------------------------------------------------------- failure injection
def test_fail_every_allocation(rng, pixel_decoder):
    """Fail the i-th C allocation of build + forward for every i: a MemoryError each time (or
    the unchanged result), never a crash."""
    _, w, _ = pixel_decoder
    feats = features(rng, 1, [(8, 10), (4, 5), (2, 3), (1, 2)])
    kw = dict(conv_dim=PD["D"], mask_dim=PD["MD"], enc_layers=PD["layers"], heads=PD["heads"],
              ffn_dim=PD["ffn"])

    def run():
        pd = _m2f.PixelDecoder(w, CHANNELS, **kw)
        mf, ms = pd(*feats)
        dec = _m2f.TransformerDecoder(dw, prefix="p.", in_channels=PD["D"], hidden_dim=PD["D"],
                                      queries=3, heads=PD["heads"], ffn_dim=DEC["ffn"], layers=2,
                                      mask_dim=PD["MD"])
        return mf, dec(ms, mf)[2]

    mod = hf.Mask2FormerTransformerModule(
        in_features=PD["D"], config=hf_config(num_queries=3, decoder_layers=3,
                                              dim_feedforward=DEC["ffn"])).eval()
    randomize(mod, 6)
    dw = predictor_weights(mod, "p.", 2)
    old = ovs.get_num_threads()
    ovs.set_num_threads(1)
    try:
        _core.debug_fail_alloc(0)
        ref = run()
        n = _core.debug_fail_alloc(0)
        assert n >= 4
        failed = 0
        for i in range(1, n + 1):
            _core.debug_fail_alloc(i)
            try:
                got = run()
            except MemoryError:
                failed += 1
                continue
            finally:
                _core.debug_fail_alloc(0)
            assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])
        assert failed > 0
    finally:
        _core.debug_fail_alloc(0)
        ovs.set_num_threads(old)
