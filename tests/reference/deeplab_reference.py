"""PyTorch reference of OpenTrans' DeepLabV3-OVS (independent of ovs), for parity tests and the
framework benchmark.

Re-typed from github.com/Xujxyang/OpenTrans:
  zs3/modeling/backbone/resnet.py   ResNet-50 with the CLIP-style 3-conv stem (no ReLU between
                                    the stem convs), dilated multi-grid last stage, OS 16
  zs3/modeling/aspp.py              ASPP (its forward concatenates x itself, not the pooled
                                    branch: `x5 = F.interpolate(x, ...)`; hence conv1's 3072 inputs)
  zs3/modeling/decoder.py           DeepLabV3+ decoder (48-channel res2 skip, two 3x3 convs)
  mask2former/Deeplabv3.py          OpenSegDeeplabv3Text: embed_proj (ReLU, Linear 256 -> 1024),
                                    cosine with CLIP text embeddings + non_object_embedding,
                                    exp(logit_scale), softmax, no-object dropped, sem_seg_postprocess
The text encoder is open_clip's (CLIP text tower, OpenAI names, QuickGELU), as OpenTrans'
CLIPTextEncoder. Module attribute names follow OpenTrans, so `state_dict()` has its real keys
(backbone.*, aspp.*, sem_seg_head.*, text_encoder.*, embed_proj.1.*, non_object_embedding,
logit_scale); `save_checkpoint` writes detectron2's {"model": state_dict} layout.

Run as a script to write a random checkpoint:
    python tests/reference/deeplab_reference.py OUT.pth [--full] [--seed 0]
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PIXEL_MEAN = (123.675, 116.280, 103.530)
PIXEL_STD = (58.395, 57.120, 57.375)


# ------------------------------------------------------------------ zs3 ResNet (backbone)
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, dilation=dilation,
                               padding=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), output_stride=16, width=64):
        super().__init__()
        self.inplanes = width
        blocks = [1, 2, 4]
        if output_stride == 16:
            strides, dilations = [1, 2, 2, 1], [1, 1, 1, 2]
        elif output_stride == 8:
            strides, dilations = [1, 2, 1, 1], [1, 1, 2, 4]
        else:
            raise NotImplementedError
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.Avgpool = nn.AvgPool2d(kernel_size=2, stride=2, padding=0)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(width, layers[0], strides[0], dilations[0])
        self.layer2 = self._make_layer(width * 2, layers[1], strides[1], dilations[1])
        self.layer3 = self._make_layer(width * 4, layers[2], strides[2], dilations[2])
        self.layer4 = self._make_MG_unit(width * 8, blocks, strides[3], dilations[3])

    def _down(self, planes, stride):
        if stride != 1 or self.inplanes != planes * 4:
            return nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, kernel_size=1, stride=stride,
                                           bias=False), nn.BatchNorm2d(planes * 4))
        return None

    def _make_layer(self, planes, blocks, stride=1, dilation=1):
        layers = [Bottleneck(self.inplanes, planes, stride, dilation, self._down(planes, stride))]
        self.inplanes = planes * 4
        for _ in range(1, blocks):
            layers.append(Bottleneck(self.inplanes, planes, dilation=dilation))
        return nn.Sequential(*layers)

    def _make_MG_unit(self, planes, blocks, stride=1, dilation=1):
        layers = [Bottleneck(self.inplanes, planes, stride, dilation=blocks[0] * dilation,
                             downsample=self._down(planes, stride))]
        self.inplanes = planes * 4
        for i in range(1, len(blocks)):
            layers.append(Bottleneck(self.inplanes, planes, stride=1, dilation=blocks[i] * dilation))
        return nn.Sequential(*layers)

    def forward(self, input):
        x = self.bn1(self.conv1(input))
        x = self.bn2(self.conv2(x))
        x = self.bn3(self.conv3(x))
        x = self.relu(self.Avgpool(x))
        x = self.layer1(x)
        low_level_feat = x
        x = self.layer4(self.layer3(self.layer2(x)))
        return x, low_level_feat


# ------------------------------------------------------------------ zs3 ASPP and decoder
class _ASPPModule(nn.Module):
    def __init__(self, inplanes, planes, kernel_size, padding, dilation):
        super().__init__()
        self.atrous_conv = nn.Conv2d(inplanes, planes, kernel_size=kernel_size, stride=1,
                                     padding=padding, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.atrous_conv(x)))


class ASPP(nn.Module):
    """opentrans=True: OpenTrans' forward (x itself as the fifth branch, conv1 takes 4A + C5);
    False: the standard DeepLabV3+ image pooling (conv1 takes 5A)."""

    def __init__(self, inplanes=2048, planes=256, output_stride=16, opentrans=True):
        super().__init__()
        dilations = [1, 6, 12, 18] if output_stride == 16 else [1, 12, 24, 36]
        self.opentrans = opentrans
        self.aspp1 = _ASPPModule(inplanes, planes, 1, padding=0, dilation=dilations[0])
        self.aspp2 = _ASPPModule(inplanes, planes, 3, padding=dilations[1], dilation=dilations[1])
        self.aspp3 = _ASPPModule(inplanes, planes, 3, padding=dilations[2], dilation=dilations[2])
        self.aspp4 = _ASPPModule(inplanes, planes, 3, padding=dilations[3], dilation=dilations[3])
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)), nn.Conv2d(inplanes, planes, 1, stride=1, bias=False),
            nn.BatchNorm2d(planes), nn.ReLU())
        cin = 4 * planes + inplanes if opentrans else 5 * planes
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        x1 = self.aspp1(x)
        x2 = self.aspp2(x)
        x3 = self.aspp3(x)
        x4 = self.aspp4(x)
        x5 = self.global_avg_pool(x)
        if self.opentrans:
            x5 = F.interpolate(x, size=x4.size()[2:], mode="bilinear", align_corners=True)
        else:
            x5 = F.interpolate(x5, size=x4.size()[2:], mode="bilinear", align_corners=True)
        x = torch.cat((x1, x2, x3, x4, x5), dim=1)
        x = self.relu(self.bn1(self.conv1(x)))
        return self.dropout(x)


class Decoder(nn.Module):
    def __init__(self, low_level_inplanes=256, planes=256):
        super().__init__()
        self.conv1 = nn.Conv2d(low_level_inplanes, 48, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(48)
        self.relu = nn.ReLU()
        self.last_conv = nn.Sequential(
            nn.Conv2d(planes + 48, planes, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(planes), nn.ReLU(), nn.Dropout(0.5),
            nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(planes), nn.ReLU(), nn.Dropout(0.1))

    def forward(self, x, low_level_feat):
        low_level_feat = self.relu(self.bn1(self.conv1(low_level_feat)))
        x = F.interpolate(x, size=low_level_feat.size()[2:], mode="bilinear", align_corners=True)
        x = torch.cat((x, low_level_feat), dim=1)
        return self.last_conv(x)


# ------------------------------------------------------------------ text encoder (open_clip)
class TextEncoder(nn.Module):
    """CLIP's text tower with OpenTrans' CLIPTextEncoder attribute names."""

    def __init__(self, width=512, layers=12, heads=8, embed_dim=1024, context=77, vocab=49408):
        super().__init__()
        import open_clip
        from open_clip.model import CLIPTextCfg, _build_text_tower

        tower = _build_text_tower(embed_dim, CLIPTextCfg(context_length=context, vocab_size=vocab,
                                                         width=width, heads=heads, layers=layers),
                                  quick_gelu=True)
        self.token_embedding = tower.token_embedding
        self.positional_embedding = tower.positional_embedding
        self.transformer = tower.transformer
        self.ln_final = tower.ln_final
        self.text_projection = tower.text_projection
        self.register_buffer("attn_mask", tower.attn_mask, persistent=False)
        self._tokenize = open_clip.tokenize

    def forward(self, text):
        x = self.token_embedding(text) + self.positional_embedding
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

    def encode(self, names):
        return self.forward(self._tokenize(list(names)))


# ------------------------------------------------------------------ the framework
class DeepLabOVS(nn.Module):
    """OpenSegDeeplabv3Text at inference (its training-only parts left out)."""

    def __init__(self, *, width=64, layers=(3, 4, 6, 3), aspp_planes=256, embed_dim=1024,
                 text_width=512, text_layers=12, text_heads=8, opentrans_aspp=True,
                 output_stride=16):
        super().__init__()
        self.backbone = ResNet(layers, output_stride, width)
        c5 = width * 8 * 4
        self.aspp = ASPP(c5, aspp_planes, output_stride, opentrans_aspp)
        self.sem_seg_head = Decoder(width * 4, aspp_planes)
        self.text_encoder = TextEncoder(text_width, text_layers, text_heads, embed_dim)
        self.non_object_embedding = nn.Parameter(torch.empty(1, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))
        self.embed_proj = nn.Sequential(nn.ReLU(), nn.Linear(aspp_planes, embed_dim))
        self.aspp_planes = aspp_planes

    def pixel_embeddings(self, images):
        """(N, h*w, E) for normalised padded images (N, 3, H, W), and (h, w)."""
        features, low_level_feat = self.backbone(images)
        features = self.aspp(features)
        vision_feature = self.sem_seg_head(features, low_level_feat)
        bsz, channel, h, w = vision_feature.shape
        v = torch.reshape(vision_feature, (bsz, self.aspp_planes, -1)).permute(0, 2, 1)
        return self.embed_proj(v), (h, w)

    def logits(self, images, text_ebmd):
        """(N, h*w, C + 1) = exp(logit_scale) * cosine, as OpenSegDeeplabv3Text.forward (eval)."""
        vision_ebmd, hw = self.pixel_embeddings(images)
        text_ebmd_0 = torch.cat([text_ebmd[None], self.non_object_embedding[None, :, :]], dim=1)
        vision_ebmd = vision_ebmd / (vision_ebmd.norm(dim=-1, keepdim=True) + 1e-7)
        text_ebmd_0 = text_ebmd_0 / (text_ebmd_0.norm(dim=-1, keepdim=True) + 1e-7)
        text_ebmd_0 = text_ebmd_0.permute(0, 2, 1)
        logit_scale = self.logit_scale.exp()
        return torch.bmm(vision_ebmd * logit_scale, text_ebmd_0.expand(vision_ebmd.shape[0], -1, -1)), hw

    def forward(self, images, text_ebmd):
        return self.logits(images, text_ebmd)[0]


# ------------------------------------------------------------------ detectron2 pre/post-processing
def resize_shortest_edge(h, w, short, max_size):
    """detectron2 ResizeShortestEdge.get_output_shape."""
    scale = short * 1.0 / min(h, w)
    if h < w:
        newh, neww = short, scale * w
    else:
        newh, neww = scale * h, short
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh = newh * scale
        neww = neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def preprocess(image_uint8, short=800, max_size=1333, divisor=32, pixel_mean=PIXEL_MEAN,
               pixel_std=PIXEL_STD):
    """detectron2 test mapper (ResizeTransform via PIL bilinear) + normalisation + ImageList
    padding. Returns ((1, 3, Hp, Wp) tensor, (h, w) resized size)."""
    from PIL import Image

    h, w = image_uint8.shape[:2]
    nh, nw = resize_shortest_edge(h, w, short, max_size)
    img = np.asarray(Image.fromarray(image_uint8).resize((nw, nh), Image.BILINEAR))
    x = torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1)))
    mean = torch.tensor(pixel_mean).view(-1, 1, 1)
    std = torch.tensor(pixel_std).view(-1, 1, 1)
    x = (x - mean) / std
    hp = int(math.ceil(nh / divisor) * divisor)
    wp = int(math.ceil(nw / divisor) * divisor)
    batched = x.new_zeros(1, 3, hp, wp)
    batched[0, :, :nh, :nw].copy_(x)
    return batched, (nh, nw)


@torch.no_grad()
def semantic(model, image_uint8, class_names, short=800, max_size=1333):
    """OpenTrans inference for one image: (probs (C, H, W) at the image's size, low-res logits
    (C, h, w) without no-object, low-res probs (C, h, w), padded input)."""
    x, image_size = preprocess(image_uint8, short, max_size)
    text = model.text_encoder.encode(class_names)
    mask_cls_results, (h, w) = model.logits(x, text)
    cls_pred = mask_cls_results[0]
    logits = cls_pred[:, :-1].reshape(h, w, -1).permute(2, 0, 1)
    cls_pred = F.softmax(cls_pred, dim=-1)[..., :-1]
    a, c = cls_pred.shape
    r = torch.reshape(cls_pred, (h, w, c)).permute(2, 0, 1)
    lowres = r.clone()
    height, width = image_uint8.shape[:2]
    # detectron2 sem_seg_postprocess
    r = r[:, : image_size[0], : image_size[1]].expand(1, -1, -1, -1)
    r = F.interpolate(r, size=(height, width), mode="bilinear", align_corners=False)[0]
    return r, logits, lowres, x


# ------------------------------------------------------------------ random weights and checkpoints
@torch.no_grad()
def randomize_batchnorm(mod: nn.BatchNorm2d, g: torch.Generator) -> None:
    """Non-trivial BatchNorm affine and running statistics from generator g (also used by
    fcclip_reference.py)."""
    n = mod.num_features
    mod.weight.copy_(torch.rand(n, generator=g) * 0.6 + 0.2)
    mod.bias.copy_(torch.randn(n, generator=g) * 0.2)
    mod.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
    mod.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)


@torch.no_grad()
def randomize(model, seed=0):
    """Every parameter and BatchNorm statistic random (conv/linear weights He-scaled so the
    activations stay O(1) through 50 layers; BN affine and running stats non-trivial)."""
    g = torch.Generator().manual_seed(seed)
    for name, mod in model.named_modules():
        if isinstance(mod, nn.BatchNorm2d):
            randomize_batchnorm(mod, g)
        elif isinstance(mod, (nn.Conv2d, nn.Linear)):
            fan_in = mod.weight[0].numel()
            mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
            if mod.bias is not None:
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
    te = model.text_encoder
    for name, p in te.named_parameters():
        if p.ndim >= 2 and "embedding" not in name:
            p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
        elif "embedding" in name:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        elif name.endswith("weight"):   # layer norms
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    model.non_object_embedding.copy_(torch.randn(model.non_object_embedding.shape, generator=g))
    model.logit_scale.fill_(math.log(30.0) + 0.1 * float(torch.randn(1, generator=g)))
    model.eval()
    return model


def small(seed=0, opentrans_aspp=True):
    """A narrow DeepLabV3-OVS (the real layer counts and wiring, fewer channels) for fast tests
    (text heads = width // 64, the rule ovs infers the head count with, as open_clip)."""
    m = DeepLabOVS(width=16, aspp_planes=64, embed_dim=64, text_width=128, text_layers=1,
                   text_heads=2, opentrans_aspp=opentrans_aspp)
    return randomize(m, seed)


def full(seed=0):
    """The real RN50 sizes (width 64, ASPP 256, embedding 1024, CLIP text 512 x 12)."""
    return randomize(DeepLabOVS(), seed)


def save_checkpoint(model, path):
    """detectron2's checkpoint layout: {"model": state_dict, "iteration": ...}."""
    torch.save({"model": model.state_dict(), "iteration": 50000}, path)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--full", action="store_true", help="RN50 sizes (default: the small test model)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    save_checkpoint(full(a.seed) if a.full else small(a.seed), a.out)
    print(a.out)
