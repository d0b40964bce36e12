"""PyTorch reference of Han et al.'s open-vocabulary MaskFormer (OpenTrans ``OpenSegMaskFormer``,
VISION_FEATURE "queryClass", PER_REGION on), independent of ovs, for parity tests and the
framework benchmark.

Assembled from independent modules following github.com/Xujxyang/OpenTrans:
  mask2former/clip_models.py         CLIPResNetWithAttention with remove_attenpool(): open_clip's
                                     ModifiedResNet (same module names), res2..res5 out
  MSDeformAttnPixelDecoder           Hugging Face transformers' Mask2FormerPixelDecoder
  mask2former/modeling/transformer_decoder/mask2former_transformer_decoder_voca.py
                                     MultiScaleMaskedTransformerDecoderVoca: transformers'
                                     Mask2FormerTransformerModule (same wiring: masked attention
                                     with the sigmoid < 0.5 rule, decoder_norm, 3-layer
                                     mask_embed) plus class_embed = Linear(256, 256) on the last
                                     layer's decoder_norm output ("query_embed")
  mask2former/maskformer_model_voca.py  embed_proj (ReLU, Linear 256 -> 1024); cosine (norms +
                                     1e-7) with the CLIP text embeddings of the bare class names
                                     (TEXT_ENCODER.PROMPT "{}") and non_object_embedding, times
                                     exp(logit_scale); mask logits upsampled to the padded input;
                                     semantic_inference (softmax without no-object, sigmoid,
                                     einsum); detectron2 sem_seg_postprocess
  the text encoder                   open_clip's CLIP text tower (tests/reference/deeplab_reference.py)
`state_dict()` has OpenTrans' real keys (backbone.*, sem_seg_head.pixel_decoder.*,
sem_seg_head.predictor.*, text_encoder.*, embed_proj.1.*, non_object_embedding, logit_scale,
criterion.empty_weight); the Hugging Face weights are mapped with tests/reference/m2f_hf.py.

Run as a script to write a random detectron2 checkpoint ({"model": state_dict}):
    python tests/reference/han_reference.py OUT.pth [--full] [--seed 0]
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# sibling references, by bare name (this folder is sys.path[0] for the script; the tests and
# benchmarks put it on sys.path)
import deeplab_reference as DL   # TextEncoder, preprocess, randomize (BN / conv / text)
import m2f_hf as M2F             # transformers <-> detectron2 names

PIXEL_MEAN, PIXEL_STD, preprocess = DL.PIXEL_MEAN, DL.PIXEL_STD, DL.preprocess
HEADS = 8


class HanOVS(nn.Module):
    """OpenSegMaskFormer at inference (losses, grounding and the attention pool left out)."""

    def __init__(self, *, width=64, layers=(3, 4, 6, 3), conv_dim=256, mask_dim=256,
                 enc_layers=6, enc_ffn=1024, queries=100, dec_layers=9, dec_ffn=2048,
                 embed_dim=1024, text_width=512, text_layers=12, text_heads=8):
        super().__init__()
        from open_clip.modified_resnet import ModifiedResNet
        from transformers import Mask2FormerConfig
        from transformers.models.mask2former import modeling_mask2former as hf

        self.backbone = ModifiedResNet(list(layers), embed_dim, heads=32, image_size=64, width=width)
        self.backbone.attnpool = None        # remove_attenpool()
        cfg = Mask2FormerConfig(feature_size=conv_dim, mask_feature_size=mask_dim,
                                hidden_dim=conv_dim, encoder_feedforward_dim=enc_ffn,
                                encoder_layers=enc_layers, decoder_layers=dec_layers + 1,
                                num_attention_heads=HEADS, dim_feedforward=dec_ffn,
                                num_queries=queries, common_stride=4,
                                feature_strides=[4, 8, 16, 32], dropout=0.0, pre_norm=False,
                                enforce_input_projection=False)
        chans = [width * 4 << s for s in range(4)]
        self.pixel_decoder = hf.Mask2FormerPixelDecoder(cfg, feature_channels=chans)
        self.predictor = hf.Mask2FormerTransformerModule(in_features=conv_dim, config=cfg)
        self.class_embed = nn.Linear(conv_dim, conv_dim)
        self.embed_proj = nn.Sequential(nn.ReLU(), nn.Linear(conv_dim, embed_dim))
        self.text_encoder = DL.TextEncoder(text_width, text_layers, text_heads, embed_dim)
        self.non_object_embedding = nn.Parameter(torch.empty(1, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))
        self.dec_layers = dec_layers

    def features(self, x):
        t = self.backbone.stem(x)
        out = {}
        for s, layer in enumerate((self.backbone.layer1, self.backbone.layer2,
                                   self.backbone.layer3, self.backbone.layer4)):
            t = layer(t)
            out[f"res{s + 2}"] = t
        return out

    def forward(self, images):
        """(query embeddings (N, Q, E) after embed_proj, mask logits (N, Q, H/4, W/4))."""
        f = self.features(images)
        pd = self.pixel_decoder([f["res2"], f["res3"], f["res4"], f["res5"]])
        out = self.predictor(list(pd.multi_scale_features), pd.mask_features)
        query_embed = self.class_embed(out.intermediate_hidden_states[-1].transpose(0, 1))
        return self.embed_proj(query_embed), out.masks_queries_logits[-1]

    def class_logits(self, vision_ebmd, text_ebmd):
        """(N, Q, C + 1) as OpenSegMaskFormer.forward (eval, region_supervision)."""
        text_ebmd_0 = torch.cat([text_ebmd[None], self.non_object_embedding[None, :, :]], dim=1)
        vision_ebmd = vision_ebmd / (vision_ebmd.norm(dim=-1, keepdim=True) + 1e-7)
        text_ebmd_0 = text_ebmd_0 / (text_ebmd_0.norm(dim=-1, keepdim=True) + 1e-7)
        text_ebmd_0 = text_ebmd_0.permute(0, 2, 1)
        return torch.bmm(vision_ebmd * self.logit_scale.exp(), text_ebmd_0.expand(vision_ebmd.shape[0], -1, -1))

    def opentrans_state_dict(self) -> dict[str, torch.Tensor]:
        """The module's weights under OpenTrans' checkpoint names."""
        sd = {f"backbone.{k}": v for k, v in self.backbone.state_dict().items()}
        pd = M2F.map_names(self.pixel_decoder.state_dict(), M2F.HF_TO_FCCLIP_PIXEL_DECODER,
                           "sem_seg_head.pixel_decoder.")
        pr = M2F.predictor_weights(self.predictor, "sem_seg_head.predictor.", self.dec_layers)
        sd.update({k: torch.from_numpy(v) for k, v in {**pd, **pr}.items()})
        sd.update({f"sem_seg_head.predictor.class_embed.{k}": v
                   for k, v in self.class_embed.state_dict().items()})
        sd.update({f"text_encoder.{k}": v for k, v in self.text_encoder.state_dict().items()})
        sd.update({f"embed_proj.{k}": v for k, v in self.embed_proj.state_dict().items()})
        sd["non_object_embedding"] = self.non_object_embedding.detach()
        sd["logit_scale"] = self.logit_scale.detach()
        sd["criterion.empty_weight"] = torch.ones(134)   # SetCriterion's buffer (133 COCO classes + 1)
        return {k: v.detach().clone() for k, v in sd.items()}


@torch.no_grad()
def semantic_from_text(model, image_uint8, text, short=800, max_size=1333):
    """OpenTrans inference for one image with the class text embeddings (C, E) given: (semantic
    scores (C, H, W) at the image's size, the same at the resized extent before
    sem_seg_postprocess's resize (C, h, w), class logits (Q, C + 1), padded input)."""
    x, image_size = preprocess(image_uint8, short, max_size)
    vision_ebmd, mask_pred_results = model(x)
    mask_cls_result = model.class_logits(vision_ebmd, text)[0]
    mask_pred_results = F.interpolate(mask_pred_results, size=(x.shape[-2], x.shape[-1]),
                                      mode="bilinear", align_corners=False)
    # semantic_inference
    mask_cls = F.softmax(mask_cls_result, dim=-1)[..., :-1]
    mask_pred = mask_pred_results[0].sigmoid()
    r = torch.einsum("qc,qhw->chw", mask_cls, mask_pred)
    # detectron2 sem_seg_postprocess
    height, width = image_uint8.shape[:2]
    r = r[:, : image_size[0], : image_size[1]]
    cropped = r.clone()
    r = F.interpolate(r.expand(1, -1, -1, -1), size=(height, width), mode="bilinear",
                      align_corners=False)[0]
    return r, cropped, mask_cls_result, x


@torch.no_grad()
def semantic(model, image_uint8, class_names, short=800, max_size=1333):
    """semantic_from_text with the text embeddings of the bare class names."""
    return semantic_from_text(model, image_uint8, model.text_encoder.encode(class_names), short,
                              max_size)


@torch.no_grad()
def randomize(model, seed=0):
    """Random weights: BatchNorm statistics, convs, linears and the text tower as the DeepLab
    reference; the Mask2Former parts (norms, embeddings, deformable sampling offsets) as the
    Mask2Former block tests; mask logits kept in sigmoid's sensitive range."""
    DL.randomize(model, seed)
    M2F.randomize(model.pixel_decoder, seed + 1)
    M2F.randomize(model.predictor, seed + 2)
    M2F.randomize(model.class_embed, seed + 3)
    g = torch.Generator().manual_seed(seed + 4)
    # the mask embedding's last layer small: mask logits of O(1), so sigmoid and the masked
    # attention's < 0.5 rule both see varied values
    last = getattr(model.predictor.decoder.mask_predictor.mask_embedder, "2").layers[0]
    last.weight.mul_(3.0)
    last.weight.sub_(last.weight.mean(dim=1, keepdim=True))   # the same for the mask embeddings
    last.bias.zero_()                       # a common bias would give every query the same mask
    # mask features without the common mode of their non-negative (ReLU) inputs: zero-sum
    # rows, so that different queries get different masks
    w = model.pixel_decoder.mask_projection.weight
    w.sub_(w.mean(dim=1, keepdim=True))
    # distinct queries (random transformer layers average them out): learned query features
    # and positions of unit scale, residual branches damped
    for layer in model.predictor.decoder.layers:
        for lin in (layer.cross_attn.out_proj, layer.self_attn.out_proj, layer.fc2):
            lin.weight.mul_(0.1)
    for emb in (model.predictor.queries_features, model.predictor.queries_embedder):
        emb.weight.copy_(torch.randn(emb.weight.shape, generator=g))
    model.non_object_embedding.copy_(torch.randn(model.non_object_embedding.shape, generator=g))
    model.eval()
    return model


def small(seed=0):
    """A narrow model (the real wiring and layer counts of the trunk, fewer channels, queries
    and layers) for fast tests (text heads = width // 64, the rule ovs infers them with)."""
    m = HanOVS(width=16, conv_dim=64, mask_dim=64, enc_layers=2, enc_ffn=96, queries=12,
               dec_layers=4, dec_ffn=80, embed_dim=64, text_width=128, text_layers=1, text_heads=2)
    return randomize(m, seed)


def full(seed=0):
    """The real sizes (RN50 width 64, conv/mask dim 256, 6 encoder layers, 100 queries, 9
    decoder layers, embedding 1024, CLIP text 512 x 12)."""
    return randomize(HanOVS(), seed)


def save_checkpoint(model, path):
    """detectron2's checkpoint layout: {"model": state_dict, "iteration": ...}."""
    torch.save({"model": model.opentrans_state_dict(), "iteration": 50000}, path)


if __name__ == "__main__":
    M2F.checkpoint_main(small, full, save_checkpoint, __doc__)
