"""Multiply-accumulates and parameters per layer of the CLIP towers, the training-free heads and
the trained frameworks (DeepLabV3-OVS, Han et al., FC-CLIP: count(ovs.load(converted), image_size=(H, W),
num_classes=C)).

Convention (fvcore's, which the paper's FLOP numbers use): one multiply-accumulate is counted
as one FLOP. Counted as fvcore counts them: convolutions (K*C/groups*R*S per output element),
linear layers and matmuls (in*out per row), BatchNorm (2 per element: affine inference),
LayerNorm (5 per element). Not counted, as in fvcore: activations, additions, pooling, softmax, and the
attention products (`aten::scaled_dot_product_attention` is not in fvcore's table); ovs lists
those products as "attention" rows, left out of the fvcore-comparable total (`fvcore=True`).
The towers are counted as open_clip defines them (the ResNet attention pool projects all
tokens, ln_post sees every ViT token), so the totals equal fvcore's on open_clip's modules.

    >>> import ovs, ovs.flops
    >>> rows = ovs.flops.count(ovs.load("RN50"), image_size=224)   # list of Layer
    >>> print(ovs.flops.table(rows))
    >>> ovs.flops.total(rows), ovs.flops.total(rows, sparse=True)  # dense / non-zeros only
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["Layer", "count", "total", "params", "table"]


@dataclass
class Layer:
    name: str            # parameter-name prefix (open_clip), e.g. "visual.layer1.0.conv2"
    kind: str            # conv, linear, matmul, batch_norm, layer_norm, attention
    macs: int            # dense multiply-accumulates for the whole input batch
    params: int          # parameters of the layer (weights + biases)
    density: float = 1.0  # non-zero fraction of the weight (1 for a dense layer)

    @property
    def sparse_macs(self) -> int:
        return int(round(self.macs * self.density)) if self.kind == "conv" or self.kind == "linear" \
            else self.macs


def _sd_and_config(model):
    from .frameworks import FrameworkModel, detect
    from .model import Model, infer_config

    if isinstance(model, FrameworkModel):
        return model.state_dict, {"framework": model.framework.name}
    if isinstance(model, Mapping) and detect(model) is not None:
        return model, {"framework": detect(model).name}
    if isinstance(model, Model):
        return model.state_dict, model.config
    if isinstance(model, Mapping):
        return model, infer_config(model)
    raise TypeError(f"expected an ovs.Model or an open_clip state dict, got {type(model).__name__}")


def _density(sd, name) -> float:
    w = sd.get(name + ".weight")
    if w is None:
        return 1.0
    return float(np.count_nonzero(w)) / max(np.size(w), 1)


def _nparams(sd, name) -> int:
    return sum(int(np.size(sd[k])) for k in (name + ".weight", name + ".bias") if k in sd)


def _resnet(sd, v, N, H, W) -> list[Layer]:
    rows: list[Layer] = []

    def conv_bn(name, bn, K, C, R, h, w):   # h, w: output extent
        rows.append(Layer(name, "conv", N * K * h * w * C * R * R, _nparams(sd, name), _density(sd, name)))
        rows.append(Layer(bn, "batch_norm", 2 * N * K * h * w, _nparams(sd, bn)))

    wd = v["width"]
    h, w = (H + 1) // 2, (W + 1) // 2   # 3x3 s2 p1
    conv_bn("visual.conv1", "visual.bn1", wd // 2, 3, 3, h, w)
    conv_bn("visual.conv2", "visual.bn2", wd // 2, wd // 2, 3, h, w)
    conv_bn("visual.conv3", "visual.bn3", wd, wd // 2, 3, h, w)
    h, w = h // 2, w // 2
    inplanes = wd
    for s, nblocks in enumerate(v["layers"]):
        planes = wd << s
        for b in range(nblocks):
            stride = 2 if (b == 0 and s > 0) else 1
            p = f"visual.layer{s + 1}.{b}"
            conv_bn(p + ".conv1", p + ".bn1", planes, inplanes, 1, h, w)
            conv_bn(p + ".conv2", p + ".bn2", planes, planes, 3, h, w)
            ho, wo = h // stride, w // stride
            conv_bn(p + ".conv3", p + ".bn3", planes * 4, planes, 1, ho, wo)
            if stride > 1 or inplanes != planes * 4:
                conv_bn(p + ".downsample.0", p + ".downsample.1", planes * 4, inplanes, 1, ho, wo)
            inplanes, h, w = planes * 4, ho, wo
    if v["attnpool"]:
        C, T, E = inplanes, 1 + h * w, v["embed_dim"]
        rows.append(Layer("visual.attnpool.positional_embedding", "add", 0,
                          int(np.size(sd.get("visual.attnpool.positional_embedding", 0)))))
        for proj in ("q_proj", "k_proj", "v_proj"):
            n = f"visual.attnpool.{proj}"
            rows.append(Layer(n, "linear", N * T * C * C, _nparams(sd, n), _density(sd, n)))
        rows.append(Layer("visual.attnpool.attention", "attention", 2 * N * T * T * C, 0))
        n = "visual.attnpool.c_proj"
        rows.append(Layer(n, "linear", N * T * C * E, _nparams(sd, n), _density(sd, n)))
    return rows


def _transformer(sd, prefix, N, T, D, layers, mlp, causal=False) -> list[Layer]:
    rows = []
    for i in range(layers):
        p = f"{prefix}resblocks.{i}"
        rows.append(Layer(p + ".ln_1", "layer_norm", 5 * N * T * D, _nparams(sd, p + ".ln_1")))
        n = p + ".attn.in_proj"
        rows.append(Layer(n, "linear", N * T * D * 3 * D,
                          int(np.size(sd.get(n + "_weight", 0)) + np.size(sd.get(n + "_bias", 0))),
                          float(np.count_nonzero(sd[n + "_weight"])) / sd[n + "_weight"].size
                          if n + "_weight" in sd else 1.0))
        rows.append(Layer(p + ".attn.attention", "attention", 2 * N * T * T * D, 0))
        n = p + ".attn.out_proj"
        rows.append(Layer(n, "linear", N * T * D * D, _nparams(sd, n), _density(sd, n)))
        rows.append(Layer(p + ".ln_2", "layer_norm", 5 * N * T * D, _nparams(sd, p + ".ln_2")))
        for n, k, m in ((p + ".mlp.c_fc", D, mlp), (p + ".mlp.c_proj", mlp, D)):
            rows.append(Layer(n, "linear", N * T * k * m, _nparams(sd, n), _density(sd, n)))
    return rows


def _vit(sd, v, N, H, W) -> list[Layer]:
    D, p = v["width"], v["patch"]
    g = (H // p) * (W // p)
    T = 1 + g
    rows = [Layer("visual.conv1", "conv", N * D * g * 3 * p * p, _nparams(sd, "visual.conv1"),
                  _density(sd, "visual.conv1"))]
    extra = int(sum(np.size(sd[k]) for k in ("visual.class_embedding", "visual.positional_embedding")
                    if k in sd))
    rows.append(Layer("visual.embeddings", "add", 0, extra))
    rows.append(Layer("visual.ln_pre", "layer_norm", 5 * N * T * D, _nparams(sd, "visual.ln_pre")))
    mlp = int(np.shape(sd["visual.transformer.resblocks.0.mlp.c_fc.weight"])[0])
    rows += _transformer(sd, "visual.transformer.", N, T, D, v["layers"], mlp)
    rows.append(Layer("visual.ln_post", "layer_norm", 5 * N * T * D, _nparams(sd, "visual.ln_post")))
    if v["embed_dim"]:
        rows.append(Layer("visual.proj", "matmul", N * D * v["embed_dim"], int(np.size(sd["visual.proj"]))))
    return rows


def _text(sd, t, N, S) -> list[Layer]:
    D = t["width"]
    mlp = int(np.shape(sd["transformer.resblocks.0.mlp.c_fc.weight"])[0])
    rows = [Layer("token_embedding", "embedding", 0,
                  int(np.size(sd["token_embedding.weight"]) + np.size(sd["positional_embedding"])))]
    rows += _transformer(sd, "transformer.", N, S, D, t["layers"], mlp, causal=True)
    rows.append(Layer("ln_final", "layer_norm", 5 * N * S * D, _nparams(sd, "ln_final")))
    rows.append(Layer("text_projection", "matmul", N * D * t["embed_dim"],
                      int(np.size(sd["text_projection"]))))
    return rows


def _deeplab(sd, N, H, W, num_classes) -> list[Layer]:
    """DeepLabV3-OVS as OpenTrans runs it (tests/reference/deeplab_reference.py): the DeepLab
    ResNet trunk at output stride 16, ASPP (whose unused pooling branch still runs, and whose
    fifth branch is a same-size bilinear interpolation of res5), decoder, embed_proj and the
    per-pixel bmm with C + 1 text rows. fvcore counts upsample_bilinear2d as 4 and
    adaptive_avg_pool2d as 1 FLOP per output / input element; its trace drops the OpenTrans
    pooling branch, whose result is unused."""
    rows: list[Layer] = []

    def conv_bn(name, bn, K, C, R, h, w):
        rows.append(Layer(name, "conv", N * K * h * w * C * R * R, _nparams(sd, name), _density(sd, name)))
        rows.append(Layer(bn, "batch_norm", 2 * N * K * h * w, _nparams(sd, bn)))

    wd = int(np.shape(sd["visual.layer1.0.conv1.weight"])[1])
    layers = [sum(1 for k in sd if k.startswith(f"visual.layer{s + 1}.") and k.endswith(".conv1.weight"))
              for s in range(4)]
    h, w = (H + 1) // 2, (W + 1) // 2
    conv_bn("visual.conv1", "visual.bn1", wd // 2, 3, 3, h, w)
    conv_bn("visual.conv2", "visual.bn2", wd // 2, wd // 2, 3, h, w)
    conv_bn("visual.conv3", "visual.bn3", wd, wd // 2, 3, h, w)
    h, w = h // 2, w // 2
    inplanes, strides = wd, (1, 2, 2, 1)
    hl = wl = 0
    for s, nblocks in enumerate(layers):
        planes = wd << s
        for b in range(nblocks):
            st = strides[s] if b == 0 else 1
            p = f"visual.layer{s + 1}.{b}"
            ho, wo = (h - 1) // st + 1, (w - 1) // st + 1
            conv_bn(p + ".conv1", p + ".bn1", planes, inplanes, 1, h, w)
            conv_bn(p + ".conv2", p + ".bn2", planes, planes, 3, ho, wo)
            conv_bn(p + ".conv3", p + ".bn3", planes * 4, planes, 1, ho, wo)
            if b == 0:
                conv_bn(p + ".downsample.0", p + ".downsample.1", planes * 4, inplanes, 1, ho, wo)
            inplanes, h, w = planes * 4, ho, wo
        if s == 0:
            hl, wl = h, w
    C5, A = inplanes, int(np.shape(sd["aspp.aspp1.atrous_conv.weight"])[0])
    for i in range(4):
        conv_bn(f"aspp.aspp{i + 1}.atrous_conv", f"aspp.aspp{i + 1}.bn", A, C5, 1 if i == 0 else 3, h, w)
    ccat = int(np.shape(sd["aspp.conv1.weight"])[1])
    opentrans = ccat != 5 * A
    if not opentrans:   # OpenTrans discards the pooling branch's output: dead code, not counted
        rows.append(Layer("aspp.global_avg_pool.0", "pool", N * C5 * h * w, 0))
        conv_bn("aspp.global_avg_pool.1", "aspp.global_avg_pool.2", A, C5, 1, 1, 1)
    rows.append(Layer("aspp.interpolate", "upsample", 4 * N * (C5 if opentrans else A) * h * w, 0))
    conv_bn("aspp.conv1", "aspp.bn1", A, ccat, 1, h, w)
    conv_bn("decoder.conv1", "decoder.bn1", 48, 4 * wd, 1, hl, wl)
    rows.append(Layer("decoder.interpolate", "upsample", 4 * N * A * hl * wl, 0))
    conv_bn("decoder.last_conv.0", "decoder.last_conv.1", A, A + 48, 3, hl, wl)
    conv_bn("decoder.last_conv.4", "decoder.last_conv.5", A, A, 3, hl, wl)
    E = int(np.shape(sd["embed_proj.weight"])[0])
    rows.append(Layer("embed_proj", "linear", N * hl * wl * A * E, _nparams(sd, "embed_proj"),
                      _density(sd, "embed_proj")))
    if num_classes:
        rows.append(Layer("classifier", "matmul", N * hl * wl * E * (num_classes + 1), 0))
    return rows


def _han(sd, N, H, W, num_classes) -> list[Layer]:
    """Han et al. (OpenTrans OpenSegMaskFormer) on an (H, W) padded input: the CLIP trunk
    without its attention pool, the MSDeformAttn pixel decoder, the masked-attention decoder
    with a prediction (decoder_norm, mask_embed, mask einsum, attention-mask resize) before the
    first layer and after each, class_embed and embed_proj on the last, the classifier against
    C + 1 text rows, and the semantic inference (mask logits resized to the input, the
    softmax * sigmoid einsum). Convention as above (GroupNorm and LayerNorm 5 per element,
    bilinear resizes 4 per output element as fvcore); the deformable sampling (grid_sample,
    not in fvcore's table) and the attention products are "attention" rows."""
    from .frameworks import HAN_HEADS, HAN_PD, HAN_PRED, _han_arch

    a = _han_arch(sd)
    layers = [sum(1 for k in sd if k.startswith(f"visual.layer{s + 1}.") and k.endswith(".conv1.weight"))
              for s in range(4)]
    rows = _resnet(sd, {"width": int(np.shape(sd["visual.layer1.0.conv1.weight"])[1]),
                        "layers": layers, "attnpool": False, "embed_dim": 0}, N, H, W)
    D, MD, Q, hid = a["conv_dim"], a["mask_dim"], a["queries"], a["hidden"]

    def lin(name, n_rows, i, o, kind="linear", shared=False):   # shared: params counted elsewhere
        rows.append(Layer(name, kind, N * n_rows * i * o, 0 if shared else _nparams(sd, name),
                          _density(sd, name)))

    def norm(name, n, kind="layer_norm", shared=False):
        rows.append(Layer(name, kind, 5 * N * n, 0 if shared else _nparams(sd, name)))

    # the trunk's strides: res2 /4 ... res5 /32 (the stem halves with rounding up, then floors)
    hs, ws = [], []
    h, w = (H + 1) // 2 // 2, (W + 1) // 2 // 2
    for s in range(4):
        if s:
            h, w = h // 2, w // 2
        hs.append(h)
        ws.append(w)
    chans = a["in_channels"]
    lv = [(hs[3 - i], ws[3 - i]) for i in range(3)]     # input_proj.0 reads res5
    for i, (h, w) in enumerate(lv):
        lin(f"{HAN_PD}input_proj.{i}.0", h * w, chans[3 - i], D, "conv")
        norm(f"{HAN_PD}input_proj.{i}.1", h * w * D, "group_norm")
    S = sum(h * w for h, w in lv)
    LP = 3 * a["points"] * HAN_HEADS
    for j in range(a["enc_layers"]):
        b = f"{HAN_PD}transformer.encoder.layers.{j}."
        lin(b + "self_attn.sampling_offsets", S, D, 2 * LP)
        lin(b + "self_attn.attention_weights", S, D, LP)
        lin(b + "self_attn.value_proj", S, D, D)
        rows.append(Layer(b + "self_attn.sampling", "attention", N * S * LP * (D // HAN_HEADS), 0))
        lin(b + "self_attn.output_proj", S, D, D)
        norm(b + "norm1", S * D)
        lin(b + "linear1", S, D, a["enc_ffn"])
        lin(b + "linear2", S, a["enc_ffn"], D)
        norm(b + "norm2", S * D)
    h2, w2 = hs[0], ws[0]
    lin(f"{HAN_PD}adapter_1", h2 * w2, chans[0], D, "conv")
    norm(f"{HAN_PD}adapter_1.norm", h2 * w2 * D, "group_norm")
    rows.append(Layer(f"{HAN_PD}fpn.interpolate", "upsample", 4 * N * D * h2 * w2, 0))
    lin(f"{HAN_PD}layer_1", h2 * w2, 9 * D, D, "conv")
    norm(f"{HAN_PD}layer_1.norm", h2 * w2 * D, "group_norm")
    lin(f"{HAN_PD}mask_features", h2 * w2, D, MD, "conv")

    def predict(i, target):   # the prediction heads' weights are shared by the 1 + layers calls
        norm(f"{HAN_PRED}decoder_norm", Q * hid, shared=i > 0)
        for k in range(3):
            lin(f"{HAN_PRED}mask_embed.layers.{k}", Q, hid, MD if k == 2 else hid, shared=i > 0)
        rows.append(Layer(f"{HAN_PRED}mask_einsum.{i}", "matmul", N * Q * MD * h2 * w2, 0))
        rows.append(Layer(f"{HAN_PRED}attn_mask.interpolate.{i}", "upsample",
                          4 * N * Q * target[0] * target[1], 0))

    predict(0, lv[0])
    for i in range(a["dec_layers"]):
        hl, wl = lv[i % 3]
        b = f"{HAN_PRED}transformer_cross_attention_layers.{i}."
        rows.append(Layer(b + "multihead_attn.in_proj", "linear", N * (Q + 2 * hl * wl) * hid * hid,
                          int(np.size(sd[b + "multihead_attn.in_proj_weight"])
                              + np.size(sd[b + "multihead_attn.in_proj_bias"]))))
        rows.append(Layer(b + "multihead_attn.attention", "attention", 2 * N * Q * hl * wl * hid, 0))
        lin(b + "multihead_attn.out_proj", Q, hid, hid)
        norm(b + "norm", Q * hid)
        b = f"{HAN_PRED}transformer_self_attention_layers.{i}."
        rows.append(Layer(b + "self_attn.in_proj", "linear", N * Q * hid * 3 * hid,
                          int(np.size(sd[b + "self_attn.in_proj_weight"])
                              + np.size(sd[b + "self_attn.in_proj_bias"]))))
        rows.append(Layer(b + "self_attn.attention", "attention", 2 * N * Q * Q * hid, 0))
        lin(b + "self_attn.out_proj", Q, hid, hid)
        norm(b + "norm", Q * hid)
        b = f"{HAN_PRED}transformer_ffn_layers.{i}."
        lin(b + "linear1", Q, hid, a["dec_ffn"])
        lin(b + "linear2", Q, a["dec_ffn"], hid)
        norm(b + "norm", Q * hid)
        predict(i + 1, lv[(i + 1) % 3])
    extra = int(sum(np.size(sd[f"{HAN_PRED}{k}.weight"]) for k in ("query_feat", "query_embed", "level_embed"))
                + np.size(sd[f"{HAN_PD}transformer.level_embed"]) + np.size(sd["non_object_embedding"])
                + np.size(sd["logit_scale"]))
    rows.append(Layer(f"{HAN_PRED}embeddings", "add", 0, extra))
    lin(f"{HAN_PRED}class_embed", Q, hid, hid)
    E = a["embed_dim"]
    lin("embed_proj", Q, hid, E)
    if num_classes:
        rows.append(Layer("classifier", "matmul", N * Q * E * (num_classes + 1), 0))
        rows.append(Layer("semantic.mask_interpolate", "upsample", 4 * N * Q * H * W, 0))
        rows.append(Layer("semantic.einsum", "matmul", N * Q * num_classes * H * W, 0))
    return rows


def _fcclip(sd, N, H, W, num_classes) -> list[Layer]:
    """FC-CLIP (RN50) at inference as fc-clip runs it (ovs/fcclip.py): the CLIP trunk; the
    MSDeformAttn pixel decoder (GroupNorm / LayerNorm 5 per element, grid_sample 4 per
    output); the masked transformer decoder
    with FC-CLIP's class head and mask prediction at each of its layers + 1 prediction points;
    CLIP's attention pool on res5 per query; both text classifiers (num_classes rows + void, one
    synonym per class); the masks upsampled to the input and the semantic einsum."""
    PD, PR = "sem_seg_head.pixel_decoder.", "sem_seg_head.predictor."
    wd = int(np.shape(sd["visual.layer1.0.conv1.weight"])[1])
    layers = [sum(1 for k in sd if k.startswith(f"visual.layer{s + 1}.") and k.endswith(".conv1.weight"))
              for s in range(4)]
    rows = _resnet(sd, dict(width=wd, layers=layers, attnpool=False), N, H, W)
    chans = [4 * (wd << s) for s in range(4)]
    size = [(H // 4) * (W // 4), (H // 8) * (W // 8), (H // 16) * (W // 16), (H // 32) * (W // 32)]
    D = int(np.shape(sd[PD + "input_proj.0.0.weight"])[0])
    MD = int(np.shape(sd[PD + "mask_features.weight"])[0])

    def lin(name, n, k, m, kind="linear"):
        rows.append(Layer(name, kind, N * n * k * m, _nparams(sd, name), _density(sd, name)))

    def norm(name, n, kind="group_norm"):
        rows.append(Layer(name, kind, 5 * N * n, _nparams(sd, name)))

    for i, lvl in enumerate((3, 2, 1)):          # input_proj.0 reads res5
        lin(f"{PD}input_proj.{i}.0", size[lvl], chans[lvl], D, "conv")
        norm(f"{PD}input_proj.{i}.1", size[lvl] * D)
    S = size[1] + size[2] + size[3]
    off = int(np.shape(sd[PD + "transformer.encoder.layers.0.self_attn.sampling_offsets.weight"])[0])
    hp = off // 2                                  # heads * levels * points
    fe = int(np.shape(sd[PD + "transformer.encoder.layers.0.linear1.weight"])[0])
    j = 0
    while f"{PD}transformer.encoder.layers.{j}.linear1.weight" in sd:
        b = f"{PD}transformer.encoder.layers.{j}."
        lin(b + "self_attn.value_proj", S, D, D)
        lin(b + "self_attn.sampling_offsets", S, D, off)
        lin(b + "self_attn.attention_weights", S, D, hp)
        # bilinear sampling: fvcore counts grid_sample as 4 per output element
        rows.append(Layer(b + "self_attn.sampling", "grid_sample", 4 * N * S * hp * (D // 8), 0))
        lin(b + "self_attn.output_proj", S, D, D)
        norm(b + "norm1", S * D, "layer_norm")
        lin(b + "linear1", S, D, fe)
        lin(b + "linear2", S, fe, D)
        norm(b + "norm2", S * D, "layer_norm")
        j += 1
    lin(PD + "adapter_1", size[0], chans[0], D, "conv")
    norm(PD + "adapter_1.norm", size[0] * D)
    rows.append(Layer(PD + "interpolate", "upsample", 4 * N * D * size[0], 0))
    lin(PD + "layer_1", size[0], 9 * D, D, "conv")
    norm(PD + "layer_1.norm", size[0] * D)
    lin(PD + "mask_features", size[0], D, MD, "conv")
    Q = int(np.shape(sd[PR + "query_feat.weight"])[0])
    F = int(np.shape(sd[PR + "transformer_ffn_layers.0.linear1.weight"])[0])
    E = int(np.shape(sd["text_projection"])[1])
    T = num_classes + 1

    def predict(tag, target):
        norm(PR + "decoder_norm", Q * D, "layer_norm")
        for k, m in enumerate((D, D, MD)):
            lin(f"{PR}mask_embed.layers.{k}", Q, D, m)
        rows.append(Layer(f"{PR}{tag}.masks", "matmul", N * Q * MD * size[0], 0))
        rows.append(Layer(f"{PR}{tag}.mask_pooling", "matmul", N * Q * MD * size[0], 0))
        norm(PR + "_mask_pooling_proj.0", Q * D, "layer_norm")
        lin(PR + "_mask_pooling_proj.1", Q, D, D)
        for k, m in enumerate((D, D, E)):
            lin(f"{PR}class_embed.layers.{k}", Q, D, m)
        if T > 1:
            rows.append(Layer(f"{PR}{tag}.classifier", "matmul", N * Q * E * T, 0))
        if target is not None:
            rows.append(Layer(f"{PR}{tag}.attn_mask", "upsample", 4 * N * Q * target, 0))

    L = 0
    while f"{PR}transformer_ffn_layers.{L}.linear1.weight" in sd:
        L += 1
    predict("prediction0", size[3])
    for i in range(L):
        s_l = size[3 - i % 3]
        c = f"{PR}transformer_cross_attention_layers.{i}."
        rows.append(Layer(c + "multihead_attn.in_proj", "linear", N * (Q + 2 * s_l) * D * D,
                          int(np.size(sd[c + "multihead_attn.in_proj_weight"]) + np.size(sd[c + "multihead_attn.in_proj_bias"]))))
        # nn.MultiheadAttention with a mask: q.k^T is a baddbmm (not in fvcore's table), the
        # weighted sum a bmm (counted); without a mask (self-attention) both are bmm
        rows.append(Layer(c + "multihead_attn.attention", "attention", N * Q * s_l * D, 0))
        rows.append(Layer(c + "multihead_attn.values", "matmul", N * Q * s_l * D, 0))
        lin(c + "multihead_attn.out_proj", Q, D, D)
        norm(c + "norm", Q * D, "layer_norm")
        a = f"{PR}transformer_self_attention_layers.{i}."
        rows.append(Layer(a + "self_attn.in_proj", "linear", N * Q * D * 3 * D,
                          int(np.size(sd[a + "self_attn.in_proj_weight"]) + np.size(sd[a + "self_attn.in_proj_bias"]))))
        rows.append(Layer(a + "self_attn.attention", "matmul", 2 * N * Q * Q * D, 0))
        lin(a + "self_attn.out_proj", Q, D, D)
        norm(a + "norm", Q * D, "layer_norm")
        f = f"{PR}transformer_ffn_layers.{i}."
        lin(f + "linear1", Q, D, F)
        lin(f + "linear2", Q, F, D)
        norm(f + "norm", Q * D, "layer_norm")
        predict(f"prediction{i + 1}", size[3 - (i + 1) % 3] if i + 1 < L else None)
    # out-of-vocabulary branch: CLIP's attention pool per mask on res5
    C5, s5 = chans[3], size[3]
    rows.append(Layer("visual.attnpool.mask_resize", "upsample", 4 * N * Q * s5, 0))
    rows.append(Layer("visual.attnpool.positional_embedding", "upsample", 4 * N * C5 * s5,
                      int(np.size(sd["visual.attnpool.positional_embedding"]))))
    rows.append(Layer("visual.attnpool.q_proj", "linear", N * Q * C5 * C5, _nparams(sd, "visual.attnpool.q_proj")))
    for p in ("k_proj", "v_proj"):
        rows.append(Layer(f"visual.attnpool.{p}", "linear", N * s5 * C5 * C5, _nparams(sd, f"visual.attnpool.{p}")))
    rows.append(Layer("visual.attnpool.attention", "attention", 2 * N * Q * s5 * C5, 0))
    rows.append(Layer("visual.attnpool.c_proj", "linear", N * Q * C5 * E, _nparams(sd, "visual.attnpool.c_proj")))
    if T > 1:
        rows.append(Layer("out_vocab.classifier", "matmul", N * Q * E * T, 0))
        rows.append(Layer("semantic.upsample", "upsample", 4 * N * Q * H * W, 0))
        rows.append(Layer("semantic.einsum", "matmul", N * Q * num_classes * H * W, 0))
    return rows


def _head_table() -> dict[str, dict]:
    from . import _core

    return {h["name"]: h for h in _core.heads()}


#: The training-free heads (the C heads table, csrc/methods/heads.c, through _core.heads()).
HEADS = tuple(_head_table())


def _head(cfg, head: str, N: int, H: int, W: int, num_classes: int) -> list[Layer]:
    """Extra work of a training-free head over the image tower's trunk: the patch projection
    into the embedding space and the cosine classifier (per patch x class), and on a ViT the
    head's own rows from its table entry (flops: (name, kind, mult, dims), MACs = mult * N *
    the product of dims: g patch positions, D tower width, E embedding dim)."""
    v = cfg["vision"]
    table = _head_table()
    if v["arch"] == "resnet":
        if "resnet" not in table[head]["towers"]:
            have = ", ".join(repr(m) for m, h in table.items() if "resnet" in h["towers"])
            raise ValueError(f"head {head!r} needs a ViT; ResNets have {have}")
        C, E = 32 * v["width"], v["embed_dim"]
        g = (H // 32) * (W // 32)
        return [Layer("head.v_proj", "conv", N * g * C * C, 0),
                Layer("head.c_proj", "conv", N * g * C * E, 0),
                Layer("head.classifier", "matmul", N * g * E * num_classes, 0)]
    D, E, p = v["width"], v["embed_dim"], v["patch"]
    g = (H // p) * (W // p)
    size = {"g": g, "D": D, "E": E}
    rows = [Layer(f"head.{head}.{name}", kind, mult * N * math.prod(size[c] for c in dims), 0)
            for name, kind, mult, dims in table[head]["flops"]]
    return rows + [Layer("head.proj", "matmul", N * g * D * E, 0),
                   Layer("head.classifier", "matmul", N * g * E * num_classes, 0)]


def count(model, *, image_size: int | Sequence[int] | None = None, batch: int = 1,
          text_tokens: int | None = None, num_texts: int = 0, head: str | None = None,
          num_classes: int = 0) -> list[Layer]:
    """Per-layer MACs and parameters. image_size: side or (H, W) of the image tower's input
    (default the model's); num_texts > 0 adds the text tower for that many prompts of
    text_tokens tokens (default the context, 77); head adds a training-free head's projection
    and classifier for num_classes classes."""
    sd, cfg = _sd_and_config(model)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    if "framework" in cfg:  # a trained framework: image pipeline + per-pixel classifier
        if head is not None:
            raise ValueError(f"head={head!r} is for CLIP models; a {cfg['framework']} model has its "
                             "own head (pass num_classes)")
        H, W = (512, 512) if image_size is None else (
            (int(image_size),) * 2 if isinstance(image_size, (int, np.integer)) else
            tuple(int(s) for s in image_size))
        if H < 32 or W < 32 or H % 32 or W % 32:
            raise ValueError(f"image size must be positive multiples of 32, got {H}x{W}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        build = {"han": _han, "fcclip": _fcclip}.get(cfg["framework"], _deeplab)
        rows = build(sd, batch, H, W, int(num_classes))
        if num_texts:
            from .frameworks import _text_model

            tm = _text_model(sd)
            t = tm.config["text"]
            S = t["context"] if text_tokens is None else int(text_tokens)
            rows += _text(tm.state_dict, t, int(num_texts), S)
        return rows
    rows: list[Layer] = []
    v = cfg.get("vision")
    if v is not None:
        if image_size is None:
            H = W = int(v["image_size"])
        elif isinstance(image_size, (int, np.integer)):
            H = W = int(image_size)
        else:
            H, W = (int(s) for s in image_size)
        mult = 32 if v["arch"] == "resnet" else v["patch"]
        if H < mult or W < mult or H % mult or W % mult:
            raise ValueError(f"image size must be positive multiples of {mult} for this model, "
                             f"got {H}x{W}")
        rows += _resnet(sd, v, batch, H, W) if v["arch"] == "resnet" else _vit(sd, v, batch, H, W)
        if head is not None:
            if head not in HEADS:
                raise ValueError(f"head must be one of {HEADS}, got {head!r}")
            if num_classes < 1:
                raise ValueError(f"num_classes must be >= 1 with a head, got {num_classes}")
            rows += _head(cfg, head, batch, H, W, num_classes)
    if num_texts:
        t = cfg.get("text")
        if t is None:
            raise ValueError("this model has no text tower")
        S = t["context"] if text_tokens is None else int(text_tokens)
        if not 1 <= S <= t["context"]:
            raise ValueError(f"text_tokens must be in 1..{t['context']}, got {S}")
        rows += _text(sd, t, int(num_texts), S)
    return rows


def total(rows: Sequence[Layer], *, sparse: bool = False, fvcore: bool = False) -> int:
    """Sum of MACs (= FLOPs by the convention above); sparse counts non-zero weights only;
    fvcore leaves out the attention products as fvcore does."""
    return sum(r.sparse_macs if sparse else r.macs for r in rows
               if not (fvcore and r.kind == "attention"))


def params(rows: Sequence[Layer], *, sparse: bool = False) -> int:
    return sum(int(round(r.params * r.density)) if sparse else r.params for r in rows)


def table(rows: Sequence[Layer], *, per_layer: bool = True) -> str:
    """A text table: one line per layer (per_layer) and the totals."""
    lines = [f"{'layer':<44} {'kind':<10} {'params':>11} {'density':>7} {'GMACs':>9} {'sparse GMACs':>12}"]
    if per_layer:
        for r in rows:
            lines.append(f"{r.name:<44} {r.kind:<10} {r.params:>11,} {r.density:>7.3f} "
                         f"{r.macs / 1e9:>9.4f} {r.sparse_macs / 1e9:>12.4f}")
    lines.append(f"{'total':<44} {'':<10} {params(rows):>11,} {'':>7} {total(rows) / 1e9:>9.4f} "
                 f"{total(rows, sparse=True) / 1e9:>12.4f}")
    lines.append(f"{'total (fvcore: no attention products)':<44} {'':<10} {params(rows, sparse=True):>11,} "
                 f"{'':>7} {total(rows, fvcore=True) / 1e9:>9.4f} {total(rows, sparse=True, fvcore=True) / 1e9:>12.4f}")
    lines.append("1 MAC counted as 1 FLOP (fvcore's convention); sparse = non-zero weights only; "
                 "last line's params column: non-zero parameters")
    return "\n".join(lines)
