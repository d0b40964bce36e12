/*
 * Training-free open-vocabulary segmentation heads over the CLIP towers, and the sliding-window
 * pipeline that turns an image and a text classifier into per-class logits.
 * The exact behaviour of each head is specified in tests/reference/SEGMENTATION_SPEC.md.
 *
 * Usage:
 *
 *     ovs_segmenter *s;
 *     ovs_seg_config cfg = {.head = ovs_head_by_name("sclip"), .crop = 224, .stride = 112};
 *     ovs_segmenter_create(&s, NULL, vit, &cfg);
 *     ovs_seg_logits(s, lowres, img, H, W, W * 3, 3, Hp, Wp, mean, std, cls, C);  // (C, Hp, Wp)
 *     ovs_seg_labels(labels, lowres, C, Hp, Wp, H, W, 40.0f, 0.0f, -1);          // (H, W)
 *     ovs_segmenter_free(s);
 */
#ifndef OVS_METHODS_H
#define OVS_METHODS_H

#include "ovs/models.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ovs_segmenter ovs_segmenter;

/* ---------------------------------------------------------------- the heads table
 * One entry per training-free head, in csrc/methods/heads.c: its name (Python's method=, the
 * CLI's --method), the towers it runs on, its published defaults, the FLOP rows it adds and its
 * hooks. The bindings (_core.heads()), ovs.segment (METHODS, DEFAULTS), ovs.flops (HEADS) and
 * the CLI all read it: a new head is its functions and one entry, in that one file. */
enum { OVS_TOWER_RESNET = 1, OVS_TOWER_VIT = 2 };   /* bit masks: ovs_head_info.towers */
enum {                                             /* bit masks: ovs_head_info.flags */
    OVS_HEAD_KEEP_RESIDUAL = 1,   /* the replaced ViT block keeps its residual and FFN */
    OVS_HEAD_SIGMA = 2,           /* reads ovs_seg_config.sigma (must be > 0) */
    OVS_HEAD_KEY_SMOOTHING = 4,   /* takes ovs_seg_config.ks_thresh > 0 (keys of its last layer) */
};

/* An extra FLOP row of the head on a ViT (ovs.flops): mult * N * the product of dims, each
 * dim one of 'g' (patch positions), 'D' (tower width), 'E' (embedding dim). */
typedef struct {
    const char *name, *kind;      /* kind as ovs.flops.Layer.kind: matmul, linear, attention */
    int64_t mult;
    const char *dims;
} ovs_head_flop_row;

/* The attention of one ViT head in the replaced last block: p (T, T) from the head's queries q
 * and keys k (T, F), row stride ld; scratch (T, T); scale = 1/sqrt(F); (gh, gw) the patch grid
 * (T = 1 + gh*gw). NULL in the table: the value path only (p = identity). */
typedef int (*ovs_head_attn_fn)(ovs_segmenter *s, float *p, float *scratch, const float *q,
                                const float *k, int64_t ld, int64_t T, int64_t F, float scale,
                                int64_t gh, int64_t gw);
/* Dense features (gh*gw, E) of a normalised image (1, 3, H, W) on a ViT, replacing the standard
 * path (trunk, replaced last block with attn, ln_post, proj) entirely. NULL: standard path. */
typedef int (*ovs_head_vit_fn)(ovs_segmenter *s, float *feats, const float *image, int64_t H,
                               int64_t W, int64_t gh, int64_t gw);

typedef struct {
    const char *name;             /* "naclip": method= in Python, --method in the CLI */
    const char *title;            /* "NACLIP": the paper's spelling, in messages */
    const char *summary;          /* one line: what it does to the last block */
    unsigned towers;              /* OVS_TOWER_* it runs on */
    unsigned default_for;         /* OVS_TOWER_* whose default head it is */
    unsigned flags;               /* OVS_HEAD_* */
    int64_t min_layers;           /* ViT blocks it needs (0: any), and why (min_layers_why) */
    const char *min_layers_why;
    /* published defaults (tests/reference/SEGMENTATION_SPEC.md section 3) */
    int64_t short_side, crop, stride;  /* crop 0: the whole image */
    float logit_scale;
    float sigma;                  /* with OVS_HEAD_SIGMA */
    const char *templates;        /* ovs/templates.py name */
    const ovs_head_flop_row *flops;  /* extra ViT FLOP rows, ended by {NULL}; NULL: none */
    ovs_head_attn_fn attn;
    ovs_head_vit_fn vit;
} ovs_head_info;

/* The table: *count entries. */
const ovs_head_info *ovs_head_table(int64_t *count);
/* The entry named name, or NULL. */
const ovs_head_info *ovs_head_by_name(const char *name);

typedef struct {
    const ovs_head_info *head;    /* an entry of ovs_head_table */
    int64_t crop, stride;     /* sliding window on the resized image; crop 0 = whole image */
    float sigma;              /* NACLIP neighbourhood std in patches (5) */
    float pd_thresh;          /* MaskCLIP prompt denoising per window (0 = off; MaskCLIP 0.5):
                               * see ovs_seg_prompt_denoise */
    float ks_thresh;          /* MaskCLIP key smoothing per window (0 = off; MaskCLIP 1.0), head
                               * heads with OVS_HEAD_KEY_SMOOTHING only: see ovs_seg_key_smooth */
} ovs_seg_config;

/* Exactly one of resnet / vit is non-NULL. The segmenter borrows the tower (and its
 * workspace): callers serialise use of the tower and the segmenter. */
int ovs_segmenter_create(ovs_segmenter **out, ovs_resnet *resnet, ovs_vit *vit,
                         const ovs_seg_config *cfg);
void ovs_segmenter_free(ovs_segmenter *s);
/* Output dim of the dense features (the embedding dim of the tower). */
int64_t ovs_segmenter_embed_dim(const ovs_segmenter *s);
/* Side multiple the tower needs: the ViT patch size, 32 for ResNets. */
int64_t ovs_segmenter_patch(const ovs_segmenter *s);

/* Dense features (gh*gw, E), not normalised, of one normalised image (1, 3, H, W) whose sides
 * are multiples of the patch size (16/32): gh = H / p, gw = W / p. */
int ovs_seg_dense_features(ovs_segmenter *s, float *feats, const float *image, int64_t H,
                           int64_t W);

/* Cosine logits (C, Hp, Wp) at the processing resolution for a uint8 RGB image (H, W, 3) with
 * byte strides (row_stride, pixel_stride; channels contiguous): normalise with mean/std,
 * bilinear-resize to (Hp, Wp) (no resize when equal), slide windows, pad each to the patch size,
 * dense features, L2-normalise, dot with classifier (C, E) rows (expected L2-normalised),
 * bilinear-upsample, average overlapping windows. */
int ovs_seg_logits(ovs_segmenter *s, float *logits, const uint8_t *image, int64_t H, int64_t W,
                   int64_t row_stride, int64_t pixel_stride, int64_t Hp, int64_t Wp,
                   const float mean[3], const float std[3], const float *classifier, int64_t C);

/* The windows' average of ovs_seg_logits: logits (C, Hp, Wp) = per class, each of the nwin
 * windows' (gh, gw) logits (smalls (nwin, C, gh, gw)) bilinearly upsampled (align_corners=False)
 * to (wh, ww), cropped to (h, w), added at the window's origin (wy[j], wx[j]) in window order,
 * divided by the number of windows covering the pixel (every pixel must be covered, every window
 * inside the map). naive: element by element (the twin); else separably per class, bitwise equal,
 * and with bounds (ovs_seg_block_bounds_floats(C, Hp, Wp) floats, else NULL) also the label
 * stage's per-block class bounds of the result, for ovs_seg_labels_bounded. */
int ovs_seg_window_average(float *logits, int64_t C, int64_t Hp, int64_t Wp, const float *smalls,
                           int64_t nwin, const int64_t *wy, const int64_t *wx, int64_t gh, int64_t gw,
                           int64_t wh, int64_t ww, int64_t h, int64_t w, int naive, float *bounds);
size_t ovs_seg_block_bounds_floats(int64_t C, int64_t h, int64_t w);
/* Frees the buffers a segmenter keeps between calls (the next call allocates them again). */
void ovs_segmenter_release_workspace(ovs_segmenter *s);
/* ovs_seg_labels with the block bounds of these very logits taken where they were written
 * (ovs_seg_window_average's bounds): it skips its streaming pass over (C, h, w); same labels.
 * Bounds of other logits give wrong labels: the package only passes its own (ovs_seg_image_labels). */
int ovs_seg_labels_bounded(int32_t *labels, const float *logits, int64_t C, int64_t h, int64_t w, int64_t H,
                           int64_t W, float logit_scale, float bg_threshold, int32_t bg_label,
                           const float *bounds);

/* From low-resolution logits (C, h, w) to the output size (H, W) with bilinear interpolation
 * (align_corners=False), without materialising (C, H, W):
 *   labels (H, W) = argmax over classes; where bg_threshold > 0 and the largest
 *   softmax(logit_scale * logits) probability is below it, bg_label instead. */
int ovs_seg_labels(int32_t *labels, const float *logits, int64_t C, int64_t h, int64_t w,
                   int64_t H, int64_t W, float logit_scale, float bg_threshold, int32_t bg_label);
/* ovs_seg_logits then ovs_seg_upsample to (OH, OW) in one call, the same floats: each class's
 * (Hp, Wp) plane is averaged in a per-thread buffer and resized straight into out (C, OH, OW), so
 * the (C, Hp, Wp) logits never exist; softmax: then softmax(logit_scale * .) over classes per
 * pixel. Non-finite low-resolution logits: *nonfinite = their count (status OVS_OK). */
int ovs_seg_image_logits(ovs_segmenter *s, float *out, const uint8_t *image, int64_t H, int64_t W,
                         int64_t row_stride, int64_t pixel_stride, int64_t Hp, int64_t Wp,
                         const float mean[3], const float std[3], const float *classifier, int64_t C,
                         int64_t OH, int64_t OW, float logit_scale, int softmax, int64_t *nonfinite);
/* ovs_seg_logits then ovs_seg_labels to (OH, OW) in one call, the same labels, bit for bit: the
 * pass that writes the logits also takes the label stage's per-block class bounds (the label
 * stage's streaming pass over (C, Hp, Wp)), and the logits are working memory of the segmenter,
 * kept for the next call (ovs_segmenter_release_workspace frees it). Non-finite logits:
 * *nonfinite = their count (> 0) and no labels (status OVS_OK), for the caller to refuse. */
int ovs_seg_image_labels(ovs_segmenter *s, int32_t *labels, const uint8_t *image, int64_t H, int64_t W,
                         int64_t row_stride, int64_t pixel_stride, int64_t Hp, int64_t Wp,
                         const float mean[3], const float std[3], const float *classifier, int64_t C,
                         int64_t OH, int64_t OW, float logit_scale, float bg_threshold, int32_t bg_label,
                         int64_t *nonfinite);
/* The same labels, every class evaluated at every pixel (the naive twin: ovs_seg_labels keeps
 * per block of 8x8 low-resolution cells, then per cell, only the classes that can win there,
 * brackets the softmax denominator for bg_threshold, and gives identical labels). */
int ovs_seg_labels_naive(int32_t *labels, const float *logits, int64_t C, int64_t h, int64_t w,
                         int64_t H, int64_t W, float logit_scale, float bg_threshold, int32_t bg_label);
/* Labels as ovs_seg_labels after PAMR (ovs_pamr_forward, include/ovs/ops.h) of the upsampled
 * logits, NACLIP's order: upsample (C, h, w) to (H, W), refine with the affinity of guide
 * (K, H, W) (the normalised image at the output size), then argmax / background threshold.
 * Refines a block of classes at a time: working memory is the affinity (8 * ND * H * W floats)
 * plus 2 * ovs_pamr_block(C, H, W) planes and 12 bytes a pixel, not (C, H, W). */
int ovs_seg_labels_pamr(int32_t *labels, const float *logits, int64_t C, int64_t h, int64_t w,
                        const float *guide, int64_t K, int64_t H, int64_t W,
                        const int64_t *dilations, int64_t ND, int64_t steps, float logit_scale,
                        float bg_threshold, int32_t bg_label);
/* Labels for classes that are groups of queries (SCLIP / ClearCLIP / NACLIP postprocess_result),
 * without materialising (Q, H, W). logits (Q, h, w) are one row per query (a synonym of a
 * class); query_class (Q,) maps each query to its class 0..C-1 (every class has >= 1 query):
 *   p_q = softmax over the Q queries of logit_scale * bilinear(logits) at each output pixel;
 *   P_c = max of p_q over the queries of class c;
 *   area_thd >= 0 (SCLIP area_thd): classes c >= 1 whose argmax area is <= area_thd times the
 *     total argmax area of classes >= 1 get P_c = 0 (class 0 is the background);
 *   label = argmax_c P_c (first on ties); where max_c P_c < prob_thd, bg_label instead.
 * area_thd < 0: no area filter; prob_thd <= 0: no threshold. Two passes over the image; the
 * second recomputes only pixels whose label was a removed class. Extra memory: (H, W) bytes. */
int ovs_seg_labels_grouped(int32_t *labels, const float *logits, int64_t Q, int64_t h, int64_t w,
                           int64_t H, int64_t W, const int32_t *query_class, int64_t C,
                           float logit_scale, float prob_thd, int32_t bg_label, float area_thd);
/* The naive twin: materialises (Q, H, W) probabilities and (C, H, W) class probabilities and
 * follows SCLIP's code step by step (same arguments, same labels up to float rounding ties). */
int ovs_seg_labels_grouped_naive(int32_t *labels, const float *logits, int64_t Q, int64_t h,
                                 int64_t w, int64_t H, int64_t W, const int32_t *query_class,
                                 int64_t C, float logit_scale, float prob_thd, int32_t bg_label,
                                 float area_thd);
/* MaskCLIP's prompt denoising (MaskClipHead.refine_output, pd_thresh), in place on cosine logits
 * (C, n) over n grid positions: per position p = softmax(scale * logits[:, g]) over classes
 * (MaskCLIP: scale 100); a class whose largest p over all positions is < thresh gets every
 * logit set to -100. */
int ovs_seg_prompt_denoise(float *logits, int64_t C, int64_t n, float scale, float thresh);

/* MaskCLIP's key smoothing (MaskClipHead.refine_output, ks_thresh), in place on logits (C, n):
 * p = softmax(scale * logits) over classes at each of the n grid positions; keys (n, Dk) are the
 * last attention layer's keys of the positions (ViT: ln_1(x) W_k + b_k of the patch tokens;
 * ResNet: attnpool k_proj of res5), each channel L2-normalised over the n positions (the
 * original's F.normalize(k, p=2) on (N, HW, C) normalises dim 1, the positions);
 * W = k k^T (n, n); positions whose largest p is < thresh get p := W p (all positions' p
 * mixed by key similarity). logits := p (probabilities) everywhere afterwards. */
int ovs_seg_key_smooth(float *logits, int64_t C, int64_t n, const float *keys, int64_t Dk, float scale,
                       float thresh);

/* out (C, H, W) = upsampled logits; with softmax != 0, softmax(logit_scale * logits) over C. */
int ovs_seg_upsample(float *out, const float *logits, int64_t C, int64_t h, int64_t w, int64_t H,
                     int64_t W, float logit_scale, int softmax);

#ifdef __cplusplus
}
#endif
#endif /* OVS_METHODS_H */
