"""FC-CLIP (RN50) in PyTorch, assembled for the tests from open_clip, Hugging Face transformers'
Mask2Former modules and code re-typed from github.com/bytedance/fc-clip (commit 2b0bbe2):

- backbone: open_clip's CLIP (ModifiedResNet + text tower); ``extract_features_resnet``,
  ``visual_prediction_forward_resnet`` and ``encode_text`` re-typed from fcclip/modeling/backbone/clip.py;
- pixel decoder / transformer decoder: transformers' ``Mask2FormerPixelDecoder`` and
  ``Mask2FormerTransformerModule`` (the MSDeformAttn pixel decoder and the masked-attention
  decoder of Mask2Former), FC-CLIP's class head (MaskPooling, _mask_pooling_proj, class_embed MLP)
  and ``get_classification_logits`` re-typed from fcclip_transformer_decoder.py;
- inference (text classifier with ViLD templates and synonyms, category-overlap mask, geometric
  ensemble on valid masks, void probability, sem_seg_postprocess, semantic_inference) re-typed
  from fcclip/fcclip.py.

``checkpoint_state_dict`` writes the weights under fc-clip's real names (backbone.clip_model...,
sem_seg_head.pixel_decoder..., sem_seg_head.predictor..., void_embedding.weight); run as a script
it saves a random detectron2-style checkpoint:

    python tests/reference/fcclip_reference.py out.pth [--full] [--seed 0]
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# sibling references, by bare name (this folder is sys.path[0] for the script; the tests and
# benchmarks put it on sys.path)
import deeplab_reference as DL   # detectron2 preprocessing, BatchNorm randomisation
import m2f_hf as M2F             # transformers Mask2Former module names <-> fc-clip / detectron2 names

PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)
PIXEL_STD = (68.5005327, 66.6321579, 70.32316305)
VILD_PROMPT = [
    "a photo of a {}.", "This is a photo of a {}", "There is a {} in the scene",
    "There is the {} in the scene", "a photo of a {} in the scene", "a photo of a small {}.",
    "a photo of a medium {}.", "a photo of a large {}.", "This is a photo of a small {}.",
    "This is a photo of a medium {}.", "This is a photo of a large {}.",
    "There is a small {} in the scene.", "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
]

HF_TO_FCCLIP_PIXEL_DECODER, HF_TO_FCCLIP_PREDICTOR = M2F.HF_TO_FCCLIP_PIXEL_DECODER, M2F.HF_TO_FCCLIP_PREDICTOR


def _map(state, table, prefix):
    return {k: torch.from_numpy(v) for k, v in M2F.map_names(state, table, prefix).items()}


class FcclipClassHead(nn.Module):
    """fcclip_transformer_decoder.py: MaskPooling (from ODISE), _mask_pooling_proj, class_embed."""

    def __init__(self, D, out_dim):
        super().__init__()
        self._mask_pooling_proj = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, D))
        self.class_embed = nn.ModuleList([nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, out_dim)])
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))

    @staticmethod
    def mask_pooling(x, mask):
        if not x.shape[-2:] == mask.shape[-2:]:
            mask = F.interpolate(mask, size=x.shape[-2:], mode="bilinear", align_corners=False)
        mask = (mask > 0).to(mask.dtype)
        denorm = mask.sum(dim=(-1, -2), keepdim=True) + 1e-8
        return torch.einsum("bchw,bqhw->bqc", x, mask / denorm)

    def forward(self, decoder_output, mask_features, outputs_mask):
        x = self._mask_pooling_proj(self.mask_pooling(mask_features, outputs_mask)) + decoder_output
        for i, layer in enumerate(self.class_embed):
            x = F.relu(layer(x)) if i < 2 else layer(x)
        return x


def get_classification_logits(x, text_classifier, logit_scale, num_templates):
    x = F.normalize(x, dim=-1)
    logit_scale = torch.clamp(logit_scale.exp(), max=100)
    pred_logits = logit_scale * x @ text_classifier.T
    final, cur = [], 0
    for num_t in num_templates:
        final.append(pred_logits[:, :, cur: cur + num_t].max(-1).values)
        cur += num_t
    final.append(pred_logits[:, :, -1])
    return torch.stack(final, dim=-1)


class FCCLIP(nn.Module):
    def __init__(self, *, width=64, embed_dim=1024, text_width=512, text_layers=12, conv_dim=256,
                 enc_layers=6, enc_ffn=1024, queries=250, dec_layers=9, dec_ffn=2048, heads=8,
                 alpha=0.4, beta=0.8):
        super().__init__()
        import open_clip
        from open_clip.model import CLIPTextCfg, CLIPVisionCfg
        from transformers import Mask2FormerConfig
        from transformers.models.mask2former import modeling_mask2former as hf

        self.clip_model = open_clip.model.CLIP(
            embed_dim, CLIPVisionCfg(layers=(3, 4, 6, 3), width=width, image_size=224),
            CLIPTextCfg(context_length=77, vocab_size=49408, width=text_width,
                        heads=max(1, text_width // 64), layers=text_layers), quick_gelu=True)
        self.tokenizer = open_clip.get_tokenizer("RN50")
        cfg = Mask2FormerConfig(feature_size=conv_dim, mask_feature_size=conv_dim, hidden_dim=conv_dim,
                                encoder_feedforward_dim=enc_ffn, encoder_layers=enc_layers,
                                num_attention_heads=heads, num_queries=queries,
                                decoder_layers=dec_layers + 1, dim_feedforward=dec_ffn,
                                common_stride=4, feature_strides=[4, 8, 16, 32], dropout=0.0,
                                pre_norm=False, enforce_input_projection=False)
        self.channels = [4 * width * 2 ** s for s in range(4)]
        self.pixel_decoder = hf.Mask2FormerPixelDecoder(cfg, feature_channels=self.channels)
        self.predictor = hf.Mask2FormerTransformerModule(in_features=conv_dim, config=cfg)
        self.class_head = FcclipClassHead(conv_dim, embed_dim)
        self.void_embedding = nn.Embedding(1, embed_dim)
        self.dec_layers = dec_layers
        self.alpha, self.beta = alpha, beta

    # ---------------------------------------------------------------- backbone (clip.py)
    def extract_features_resnet(self, x):
        v = self.clip_model.visual
        out = {}
        x = v.act1(v.bn1(v.conv1(x)))
        x = v.act2(v.bn2(v.conv2(x)))
        x = v.act3(v.bn3(v.conv3(x)))
        x = v.avgpool(x)
        x = v.layer1(x)
        out["res2"] = x
        x = v.layer2(x)
        out["res3"] = x
        x = v.layer3(x)
        out["res4"] = x
        x = v.layer4(x)
        out["res5"] = x
        out["clip_vis_dense"] = x
        return out

    def visual_prediction_forward_resnet(self, x, masks):
        ap = self.clip_model.visual.attnpool
        batch, channel, height, width = x.shape
        if masks.shape[-2] != height or masks.shape[-1] != width:
            masks = F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False)
        num_masks = masks.shape[1]
        positional_embedding = ap.positional_embedding.to(x.dtype)
        spatial_pos_embed = positional_embedding[1:, None, :]
        orig_size = int(math.sqrt(spatial_pos_embed.shape[0]))
        spatial_pos_embed = spatial_pos_embed.permute(1, 2, 0).reshape(1, channel, orig_size, orig_size)
        spatial_pos_embed = F.interpolate(spatial_pos_embed, size=(height, width), mode="bilinear",
                                          align_corners=False)
        spatial_pos_embed = spatial_pos_embed.permute(2, 3, 0, 1).reshape(height * width, 1, channel)
        x = x.reshape(batch, channel, height * width).permute(2, 0, 1)
        key_value = x + spatial_pos_embed
        masks = masks.reshape(batch, num_masks, height * width)
        masks = (masks > 0).to(masks.dtype)
        query = x.mean(0, keepdim=True) + positional_embedding[:1, None, :]
        query = query.repeat_interleave(num_masks, dim=0)
        attn_mask = masks < 0.5
        attn_mask = attn_mask.unsqueeze(1).expand(-1, ap.num_heads, -1, -1)
        attn_mask = attn_mask.reshape(batch * ap.num_heads, query.shape[0], key_value.shape[0])
        x = F.multi_head_attention_forward(
            query=query, key=key_value, value=key_value, embed_dim_to_check=key_value.shape[-1],
            num_heads=ap.num_heads, q_proj_weight=ap.q_proj.weight, k_proj_weight=ap.k_proj.weight,
            v_proj_weight=ap.v_proj.weight, in_proj_weight=None,
            in_proj_bias=torch.cat([ap.q_proj.bias, ap.k_proj.bias, ap.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=ap.c_proj.weight, out_proj_bias=ap.c_proj.bias,
            use_separate_proj_weight=True, training=False, need_weights=False,
            attn_mask=attn_mask)[0].permute(1, 0, 2)
        return x

    def get_text_classifier(self, class_names):
        """fcclip.py prepare_class_names_from_metadata + get_text_classifier (eval)."""
        names = [x.replace(", ", ",").split(",") for x in class_names]
        templated, num_templates = [], []
        for syn in names:
            for s in syn:
                templated += [t.format(s) for t in VILD_PROMPT]
            num_templates.append(len(syn))
        # fc-clip encodes 128 prompts at a time ("to avoid oom")
        t = torch.cat([self.clip_model.encode_text(self.tokenizer(templated[i:i + 128]))
                       for i in range(0, len(templated), 128)])
        t = t / t.norm(dim=-1, keepdim=True)
        t = t.reshape(t.shape[0] // len(VILD_PROMPT), len(VILD_PROMPT), t.shape[-1]).mean(1)
        t = t / t.norm(dim=-1, keepdim=True)
        return t, num_templates, names


def preprocess(image_uint8, short=800, max_size=1333, divisor=32):
    """detectron2 test mapper (PIL bilinear resize), (x - mean) / std with FC-CLIP's pixel
    statistics, ImageList padding: deeplab_reference.preprocess's steps."""
    return DL.preprocess(image_uint8, short, max_size, divisor, PIXEL_MEAN, PIXEL_STD)


@torch.no_grad()
def semantic(model, image_uint8, class_names, train_synonyms, short=800, max_size=1333):
    """FCCLIP.forward (eval, semantic_on, sem_seg_postprocess_before_inference) for one image:
    (semantic scores (C, H, W) at the image's size, intermediates dict)."""
    images, image_size = preprocess(image_uint8, short, max_size)
    features = model.extract_features_resnet(images)
    text_classifier, num_templates, names = model.get_text_classifier(class_names)
    text_classifier = torch.cat([text_classifier, F.normalize(model.void_embedding.weight, dim=-1)], 0)
    pd = model.pixel_decoder([features[k] for k in ("res2", "res3", "res4", "res5")])
    dec = model.predictor(pd.multi_scale_features, pd.mask_features)
    hidden = dec.intermediate_hidden_states[-1].transpose(0, 1)
    mask_pred_results = dec.masks_queries_logits[-1]
    class_embed = model.class_head(hidden, pd.mask_features, mask_pred_results)
    mask_cls_results = get_classification_logits(class_embed, text_classifier,
                                                 model.class_head.logit_scale, num_templates)
    category_overlapping_mask = torch.tensor(
        [not set(train_synonyms).isdisjoint(set(s)) for s in names], dtype=torch.long)

    clip_feature = features["clip_vis_dense"]
    mask_for_pooling = F.interpolate(mask_pred_results, size=clip_feature.shape[-2:],
                                     mode="bilinear", align_corners=False)
    pooled_clip_feature = model.visual_prediction_forward_resnet(clip_feature, mask_for_pooling)
    out_vocab_cls_results = get_classification_logits(pooled_clip_feature, text_classifier,
                                                      model.clip_model.logit_scale, num_templates)
    in_vocab_cls_results = mask_cls_results[..., :-1]
    out_vocab_cls_results = out_vocab_cls_results[..., :-1]
    out_vocab_cls_probs = out_vocab_cls_results.softmax(-1)
    in_vocab_cls_results = in_vocab_cls_results.softmax(-1)
    # ENSEMBLE_ON_VALID_MASK: True in the RN50 config
    valid_masking = (mask_for_pooling > 0).to(mask_for_pooling).sum(-1).sum(-1) > 0
    valid_masking = valid_masking.to(in_vocab_cls_results.dtype).unsqueeze(-1)
    alpha = torch.ones_like(in_vocab_cls_results) * model.alpha * valid_masking
    beta = torch.ones_like(in_vocab_cls_results) * model.beta * valid_masking
    cls_logits_seen = ((in_vocab_cls_results ** (1 - alpha) * out_vocab_cls_probs ** alpha).log()
                       * category_overlapping_mask)
    cls_logits_unseen = ((in_vocab_cls_results ** (1 - beta) * out_vocab_cls_probs ** beta).log()
                         * (1 - category_overlapping_mask))
    cls_results = cls_logits_seen + cls_logits_unseen
    is_void_prob = F.softmax(mask_cls_results, dim=-1)[..., -1:]
    mask_cls_probs = torch.cat([cls_results.softmax(-1) * (1.0 - is_void_prob), is_void_prob], dim=-1)
    mask_cls_results = torch.log(mask_cls_probs + 1e-8)
    mask_pred_results = F.interpolate(mask_pred_results, size=images.shape[-2:], mode="bilinear",
                                      align_corners=False)
    height, width = image_uint8.shape[:2]
    # detectron2 sem_seg_postprocess, then semantic_inference
    m = mask_pred_results[0][:, : image_size[0], : image_size[1]].expand(1, -1, -1, -1)
    m = F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False)[0]
    mask_cls = F.softmax(mask_cls_results[0], dim=-1)[..., :-1]
    semseg = torch.einsum("qc,qhw->chw", mask_cls, m.sigmoid())
    return semseg, dict(masks=dec.masks_queries_logits[-1][0], class_embed=class_embed[0],
                        res5=clip_feature[0], pooled=pooled_clip_feature[0],
                        valid=valid_masking[0, :, 0] > 0, images=images)


# ------------------------------------------------------------------ random weights and checkpoints
@torch.no_grad()
def randomize(model, seed=0):
    """Every parameter and BatchNorm statistic random, scaled so activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            DL.randomize_batchnorm(mod, g)
    for name, p in model.named_parameters():
        if ".bn" in name or "downsample.2" in name:
            continue
        if p.ndim >= 2 and "embedding" not in name:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=g) * math.sqrt(1.0 / fan_in))
        elif "embedding" in name or name.endswith("level_embed"):
            p.copy_(torch.randn(p.shape, generator=g) * (0.1 if "clip_model" in name else 1.0))
        elif name.endswith("logit_scale"):
            p.fill_(math.log(30.0) + 0.2 * float(torch.randn(1, generator=g)))
        elif "sampling_offsets" in name:
            p.copy_(2.0 * torch.randn(p.shape, generator=g))
        elif name.endswith("weight"):   # norms
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    model.eval()
    return model


def small(seed=0):
    """Narrow FC-CLIP (RN50 layer counts, the real wiring; fewer channels, queries, layers)."""
    return randomize(FCCLIP(width=16, embed_dim=64, text_width=128, text_layers=1, conv_dim=64,
                            enc_layers=2, enc_ffn=96, queries=12, dec_layers=3, dec_ffn=128), seed)


def full(seed=0):
    """FC-CLIP's RN50 sizes (width 64, embedding 1024, text 512 x 12, 250 queries, 9 layers)."""
    return randomize(FCCLIP(), seed)


def checkpoint_state_dict(model):
    """The weights under fc-clip's FCCLIP state-dict names."""
    sd = {"backbone.clip_model." + k: v.detach().clone()
          for k, v in model.clip_model.state_dict().items()}
    sd.update(_map(model.pixel_decoder.state_dict(), HF_TO_FCCLIP_PIXEL_DECODER,
                   "sem_seg_head.pixel_decoder."))
    pred = dict(model.predictor.state_dict())
    packed = {}
    for i in range(model.dec_layers):   # HF's q/k/v projections -> nn.MultiheadAttention's packed
        p = f"decoder.layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            packed[f"transformer_self_attention_layers.{i}.self_attn.in_proj_{kind}"] = torch.cat(
                [pred.pop(f"{p}{x}_proj.{kind}") for x in "qkv"])
    pr = "sem_seg_head.predictor."
    sd.update(_map(pred, HF_TO_FCCLIP_PREDICTOR, pr))
    sd.update({pr + k: v.clone() for k, v in packed.items()})
    for k, v in model.class_head.state_dict().items():
        sd[pr + k.replace("class_embed.", "class_embed.layers.")] = v.detach().clone()
    sd["void_embedding.weight"] = model.void_embedding.weight.detach().clone()
    sd["criterion.empty_weight"] = torch.ones(134)
    return sd


def save_checkpoint(model, path):
    """detectron2's checkpoint layout: {"model": state_dict, "iteration": ...}."""
    torch.save({"model": checkpoint_state_dict(model), "iteration": 368749}, path)


if __name__ == "__main__":
    M2F.checkpoint_main(small, full, save_checkpoint, __doc__)
