"""Independent PyTorch reference for SC-CLIP (Self-Calibrated CLIP, arXiv 2411.15869).

Re-typed from github.com/SuleBai/SC-CLIP (commit 0417ba9), `clip/model.py`: `lof_pytorch`,
`VisionTransformer.forward(return_all=True)`, `custom_attn`, `adaptively_aggregate`,
`mean_interpolation`, with the defaults of `configs/base_config.py` (pre_adjust_idx=8,
post_adjust_idx=3, multi_start_idx=3, multi_end_idx=10, res_cls=0.3) and `beta=0.4`,
`n_neighbors=30`, `contamination=0.05`. The standard blocks run as open_clip modules; the common
pipeline (resize, windows, padding, positional embedding, cosine logits) is seg_reference.py's
(SEGMENTATION_SPEC.md §2).

Three deliberate differences from the original, all outside its default setting:
- the anomaly position of flat patch index i is (i // gw, i % gw) (row-major over the
  (gh, gw) grid); the original computes (i // gh, i % gh), which is the same on the square grids
  of its 224 x 224 windows and indexes out of range or the wrong token on non-square ones;
- the number of LOF neighbours is min(30, G - 1) for G patch tokens (the original's topk fails
  for windows of fewer than 31 patches, e.g. a 64 x 64 crop); with G < 2 nothing is an anomaly;
- the positional embedding is resized with size-based bicubic (common pipeline), not
  `scale_factor=(g + 0.1) / 14`.

Test/reference code only: the ovs package never imports torch.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import seg_reference as R

PRE_ADJUST_IDX = 8
POST_ADJUST_IDX = 3
MULTI_START_IDX = 3
MULTI_END_IDX = 10
RES_CLS = 0.3
BETA = 0.4
N_NEIGHBORS = 30
CONTAMINATION = 0.05
DEFAULTS = dict(short_side=336, window=(224, 112), logit_scale=40.0, templates="imagenet80")


def lof_pytorch(x, n_neighbors=N_NEIGHBORS, contamination=CONTAMINATION):
    """SC-CLIP's `lof_pytorch`, with n_neighbors capped at G - 1."""
    n_neighbors = min(n_neighbors, x.shape[0] - 1)
    distances = torch.norm(x[:, None] - x[None, :], dim=2, p=2) ** 2
    knn_distances, knn_indices = torch.topk(distances, k=n_neighbors + 1, largest=False)
    knn_distances, knn_indices = knn_distances[:, 1:], knn_indices[:, 1:]
    k_distances = knn_distances[:, -1].unsqueeze(1).expand_as(knn_distances)
    reach_distances = torch.max(knn_distances, k_distances)
    LRD = n_neighbors / torch.nan_to_num(reach_distances.mean(dim=1), nan=1e-6)
    LRD_ratios = LRD[knn_indices] / LRD.unsqueeze(1)
    LOF_scores = LRD_ratios.mean(dim=1)
    threshold = torch.quantile(LOF_scores.to(torch.float32), 1 - contamination)
    outlier_mask = LOF_scores > threshold
    outlier_indices = torch.where(outlier_mask)[0]
    return outlier_indices, LOF_scores, threshold


def mean_interpolation(feature_map, top_indices):
    """SC-CLIP's `mean_interpolation`: each anomaly (row, col) in top_indices becomes the mean of
    its non-anomalous 8-neighbours (zero padding; kept when it has none)."""
    B, C, H, W = feature_map.shape
    dtype = feature_map.dtype
    if len(top_indices) == 0:
        return feature_map
    kernel = torch.ones(C, 1, 3, 3, dtype=dtype)
    kernel[:, 0, 1, 1] = 0
    mask = torch.ones((H, W), dtype=dtype)
    indices = torch.tensor(top_indices, dtype=torch.long)
    mask[indices[:, 0], indices[:, 1]] = 0
    mask = mask.unsqueeze(0).unsqueeze(0)
    masked_feature_map = feature_map * mask
    padded_feature_map = F.pad(masked_feature_map, (1, 1, 1, 1), mode='constant', value=0)
    padded_mask = F.pad(mask, (1, 1, 1, 1), mode='constant', value=0)
    neighbor_sum = F.conv2d(padded_feature_map, kernel, groups=C)
    valid_neighbors = F.conv2d(padded_mask, kernel[:, :1, :, :], groups=1)
    valid_neighbor_mask = (valid_neighbors > 0).to(dtype)
    safe_valid_neighbors = valid_neighbors.clone()
    safe_valid_neighbors[safe_valid_neighbors == 0] = 1
    mean_neighbors = neighbor_sum / safe_valid_neighbors
    top_indices_mask = torch.zeros((H, W), dtype=dtype)
    top_indices_mask[indices[:, 0], indices[:, 1]] = 1
    top_indices_mask = top_indices_mask.unsqueeze(0).unsqueeze(0)
    update_mask = top_indices_mask * valid_neighbor_mask
    return feature_map * (1 - update_mask) + mean_neighbors * update_mask


def adaptively_aggregate(maskclip_feats, corrs):
    corrs_normalized = corrs / (corrs.sum(dim=-1, keepdim=True) + 1e-6)
    maskclip_feats_ref = torch.matmul(corrs_normalized, maskclip_feats.permute(1, 0, 2))
    return maskclip_feats_ref.permute(1, 0, 2)


def custom_attn(attn_layer, x, mid_simi):
    """SC-CLIP's `custom_attn` on x (G, B, width): (softmax of the thresholded mid-layer
    similarity + softmax(k k^T * scale)) / 2, then v and out_proj."""
    num_heads = attn_layer.num_heads
    _, bsz, embed_dim = x.size()
    head_dim = embed_dim // num_heads
    scale = head_dim ** -0.5
    q, k, v = F.linear(x, attn_layer.in_proj_weight, attn_layer.in_proj_bias).chunk(3, dim=-1)
    q = q.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    k = k.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    v = v.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    mid_simi = (mid_simi - torch.mean(mid_simi)) * 3.0
    mid_simi[mid_simi < 0.0] = float('-inf')
    mid_simi = mid_simi.repeat(num_heads, 1, 1)
    attn_weights = F.softmax(mid_simi, dim=-1)
    k_attn = torch.bmm(k, k.transpose(1, 2)) * scale
    attn_weights += F.softmax(k_attn, dim=-1)
    attn_weights /= 2
    attn_output = torch.bmm(attn_weights, v)
    attn_output = attn_output.transpose(0, 1).contiguous().view(-1, bsz, embed_dim)
    return attn_layer.out_proj(attn_output)


@torch.no_grad()
def scclip_forward(visual, x: torch.Tensor, stats: dict | None = None) -> torch.Tensor:
    """Padded window (1, 3, gh*p, gw*p) -> SC-CLIP dense features (gh, gw, E) (not normalised):
    the body of SC-CLIP's `VisionTransformer.forward(x, return_all=True)`. stats, if given,
    receives the discrete decisions and their margins (for judging float32 ties)."""
    blocks = visual.transformer.resblocks
    if len(blocks) < MULTI_END_IDX + 1:
        raise ValueError("SC-CLIP needs at least 11 blocks")
    t = visual.conv1(x)  # (1, width, gh, gw)
    B = 1
    width = t.shape[1]
    feat_w, feat_h = t.shape[-2], t.shape[-1]  # gh, gw (SC-CLIP's names)
    t = t.reshape(width, -1).t()
    t = torch.cat([visual.class_embedding.to(t.dtype)[None], t])
    t = visual.ln_pre(t + R._vit_positional(visual, feat_w, feat_h, t.dtype))
    batch_first = getattr(visual.transformer, "batch_first", True)
    x = t[:, None]  # (T, 1, width), SC-CLIP's (L, B, D) layout

    def run(blk, y):
        return blk(y.transpose(0, 1)).transpose(0, 1) if batch_first else blk(y)

    feats_list = []
    for idx, blk in enumerate(blocks[:-1], start=1):
        x = run(blk, x)
        feats_list.append(x)
        if idx == len(blocks) - 1:
            cls_token = x[:1, ...]
            G = x.shape[0] - 1
            if G >= 2:
                outlier_indices, lof, thr = lof_pytorch(x[1:, ...].squeeze(1))
            else:
                outlier_indices, lof, thr = torch.zeros(0, dtype=torch.long), None, None
            # row-major (row, col) of a flat patch index (the original divides by feat_w = gh)
            top_indices = [(int(i) // feat_h, int(i) % feat_h) for i in outlier_indices]
            feature_map = x[1:, :, :].permute(1, 2, 0).reshape(B, width, feat_w, feat_h)
            feature_map = mean_interpolation(feature_map, top_indices)
            x = feature_map.reshape(B, width, feat_w * feat_h).permute(2, 0, 1)
            if stats is not None:
                stats["outliers"] = outlier_indices.clone()
                if lof is not None:
                    stats["lof_margin"] = float(((lof - thr.to(lof.dtype)).abs() / thr).min())

    feats = feats_list[PRE_ADJUST_IDX][1:, ...].clone()
    feats = feats.permute(1, 2, 0).reshape(B, width, feat_w, feat_h)
    feats = mean_interpolation(feats, top_indices)
    feats = feats.reshape(B, width, feat_w * feat_h).permute(2, 0, 1)
    feats = feats / feats.norm(dim=2, keepdim=True)
    before_simi = torch.matmul(feats.permute(1, 0, 2), feats.permute(1, 2, 0))
    mid_simi = before_simi.clone()
    if stats is not None:
        stats["mid_margin"] = float((mid_simi - mid_simi.mean()).abs().min())
        stats["beta_margin_pre"] = float((before_simi - BETA).abs().min())
        stats["pre_kept"] = float((before_simi >= BETA).double().mean())
        stats["mid_kept"] = float((mid_simi >= mid_simi.mean()).double().mean())
    before_simi[before_simi < BETA] = 0.0
    x = adaptively_aggregate(x, before_simi)

    for blk in blocks[-1:]:
        x = custom_attn(blk.attn, blk.ln_1(x), mid_simi=mid_simi) + RES_CLS * cls_token

    feats = feats_list[POST_ADJUST_IDX][1:, ...].clone()
    feats = feats / feats.norm(dim=2, keepdim=True)
    after_simi = torch.matmul(feats.permute(1, 0, 2), feats.permute(1, 2, 0))
    if stats is not None:
        stats["beta_margin_post"] = float((after_simi - BETA).abs().min())
        stats["post_kept"] = float((after_simi >= BETA).double().mean())
    after_simi[after_simi < BETA] = 0.0
    x = adaptively_aggregate(x, after_simi)

    re_feats = torch.zeros_like(feats_list[0])
    for i in range(MULTI_START_IDX, MULTI_END_IDX):
        re_feats += feats_list[i]
    cls_token = re_feats[:1, ...]
    blk = blocks[-1]
    re_feats = custom_attn(blk.attn, blk.ln_1(re_feats[1:, ...]), mid_simi=mid_simi) + RES_CLS * cls_token
    re_feats = adaptively_aggregate(re_feats, after_simi)
    x += re_feats

    x = x.permute(1, 0, 2)
    z = visual.ln_post(x) @ visual.proj.to(x.dtype)  # (1, G, E)
    return z[0].reshape(feat_w, feat_h, -1)


@torch.no_grad()
def reference_logits(model, image: np.ndarray, classifier: torch.Tensor, short_side, window,
                     dtype=torch.float64, stats: list | None = None) -> torch.Tensor:
    """Cosine logits (C, H, W) at the input size: seg_reference.sliding_logits with SC-CLIP's
    dense features per window. stats, if a list, receives one dict per window."""

    def features(crop, box):
        st = {} if stats is not None else None
        f = scclip_forward(model.visual, crop, st)
        if stats is not None:
            stats.append(st)
        return f

    return R.sliding_logits(model, image, classifier, short_side, window, dtype, features)
