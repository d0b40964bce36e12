/*
 * Mask2Former blocks shared by FC-CLIP and Han et al. (OpenTrans): multi-scale deformable
 * attention, the MSDeformAttn pixel decoder, the masked-attention transformer decoder and
 * the semantic inference over the predicted masks (csrc/frameworks/semantic.c).
 * One image per call, float32, maps (C, H, W) row-major, token sequences (tokens, D).
 *
 * Usage:
 *
 *     ovs_m2f_pixel_decoder_config pc = ovs_m2f_pixel_decoder_defaults();
 *     pc.prefix = "sem_seg_head.pixel_decoder.";
 *     pc.in_channels[0] = 256; ...                       // res2..res5 channels of the backbone
 *     ovs_m2f_pixel_decoder *pd;
 *     if (ovs_m2f_pixel_decoder_create(&pd, &pc, &weights)) { puts(ovs_last_error()); return; }
 *     const float *feats[4] = {res2, res3, res4, res5};   // (C_s, H_s, W_s) each
 *     int64_t hw[4][2] = {{H2, W2}, {H3, W3}, {H4, W4}, {H5, W5}};
 *     float *ms[3] = {ms5, ms4, ms3};                      // (D, H5, W5), (D, H4, W4), (D, H3, W3)
 *     ovs_m2f_pixel_decoder_forward(pd, feats, hw, mask_features, ms);  // mask_features (mask_dim, H2, W2)
 *
 *     ovs_m2f_decoder_config dc = ovs_m2f_decoder_defaults();
 *     dc.prefix = "sem_seg_head.predictor."; dc.queries = 250; ...
 *     ovs_m2f_decoder *dec;
 *     ovs_m2f_decoder_create(&dec, &dc, &weights);
 *     const int64_t sizes[3][2] = {{H5, W5}, {H4, W4}, {H3, W3}};
 *     ovs_m2f_decoder_outputs o = {.hidden = hidden, .masks = masks};
 *     ovs_m2f_decoder_forward(dec, (const float *const *)ms, sizes, mask_features, H2, W2, &o);
 *
 * Weights come from an ovs_tensor_map with the detectron2 / fc-clip state-dict names below
 * cfg.prefix (listed at each create function); they are borrowed, not copied, so the map's
 * owner must outlive the block. A block keeps one workspace arena reused across calls and
 * must not run on two threads at once. Errors: OVS_ERR_MISSING / OVS_ERR_SHAPE name the
 * weight; OVS_ERR_ARG names the argument.
 */
#ifndef OVS_M2F_H
#define OVS_M2F_H

#include "ovs/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- MSDeformAttn */
/* Multi-scale deformable attention (Deformable DETR's MSDeformAttn, 2-d reference points).
 * Weights below `prefix` (e.g. "...encoder.layers.0.self_attn."):
 *   sampling_offsets.weight (E*L*P*2, D) .bias   attention_weights.weight (E*L*P, D) .bias
 *   value_proj.weight (D, D) .bias               output_proj.weight (D, D) .bias */
typedef struct {
    int64_t D, E, L, P;               /* width, heads, levels, points per (head, level) */
    ovs_matrix sampling_offsets;      /* (E*L*P*2, D) */
    ovs_matrix attention_weights;     /* (E*L*P, D) */
    ovs_matrix value_proj;            /* (D, D) */
    ovs_matrix output_proj;           /* (D, D) */
    const float *sampling_offsets_b;  /* (E*L*P*2,) */
    const float *attention_weights_b; /* (E*L*P,) */
    const float *value_proj_b;        /* (D,) */
    const float *output_proj_b;       /* (D,) */
} ovs_msdeform_attn;

int ovs_msdeform_attn_bind(ovs_msdeform_attn *m, const ovs_tensor_map *w, const char *prefix,
                           int64_t D, int64_t E, int64_t L, int64_t P);
/* Scratch floats of ovs_msdeform_attn_forward for Q queries over S value tokens. */
size_t ovs_msdeform_attn_scratch_floats(const ovs_msdeform_attn *m, int64_t Q, int64_t S);
/* out (Q, D) = output_proj(core(value_proj(input), loc, softmax(attention_weights(query))))
 *   [+ residual (Q, D), which may alias out]
 * with loc[q, e, l, p] = ref[q, l] + sampling_offsets(query)[q, e, l, p] / (W_l, H_l).
 * query (Q, D) (positional embedding already added); input (S, D) the L level maps'
 * tokens concatenated, shapes (L, 2) their (H_l, W_l); ref (Q, L, 2) normalised (x, y). */
int ovs_msdeform_attn_forward(const ovs_msdeform_attn *m, float *out, const float *query,
                              const float *input, const float *ref, const float *residual,
                              const int64_t *shapes, int64_t Q, float *scratch);

/* ---------------------------------------------------------------- pixel decoder */
/* MSDeformAttnPixelDecoder (Mask2Former / FC-CLIP) with 3 transformer levels (res5, res4,
 * res3), one FPN level (res2, common stride 4). Weights below prefix:
 *   input_proj.{i}.0.weight (D, C_{5-i}, 1, 1) .bias, input_proj.{i}.1.weight (D,) .bias
 *       (GroupNorm), i = 0, 1, 2 for res5, res4, res3
 *   transformer.level_embed (3, D)
 *   transformer.encoder.layers.{j}.self_attn.*   (MSDeformAttn above, L = 3)
 *   transformer.encoder.layers.{j}.norm1.weight (D,) .bias, .linear1.weight (ffn, D) .bias,
 *       .linear2.weight (D, ffn) .bias, .norm2.weight (D,) .bias,  j < enc_layers
 *   adapter_1.weight (D, C_2, 1, 1), adapter_1.norm.weight (D,) .bias
 *   layer_1.weight (D, D, 3, 3), layer_1.norm.weight (D,) .bias
 *   mask_features.weight (mask_dim, D, 1, 1) .bias */
typedef struct {
    const char *prefix;       /* e.g. "sem_seg_head.pixel_decoder." */
    int64_t in_channels[4];   /* channels of res2..res5 */
    int64_t conv_dim;         /* D (256) */
    int64_t mask_dim;         /* mask feature channels (256) */
    int64_t enc_layers;       /* deformable encoder layers (6) */
    int64_t heads;            /* E (8) */
    int64_t points;           /* P (4) */
    int64_t ffn_dim;          /* encoder FFN width (1024) */
    int64_t groups;           /* GroupNorm groups (32) */
} ovs_m2f_pixel_decoder_config;

/* conv_dim 256, mask_dim 256, 6 layers, 8 heads, 4 points, ffn 1024, 32 groups; no prefix,
 * in_channels of CLIP RN50 (256, 512, 1024, 2048). */
ovs_m2f_pixel_decoder_config ovs_m2f_pixel_decoder_defaults(void);

typedef struct ovs_m2f_pixel_decoder ovs_m2f_pixel_decoder;
int ovs_m2f_pixel_decoder_create(ovs_m2f_pixel_decoder **out,
                                 const ovs_m2f_pixel_decoder_config *cfg,
                                 const ovs_tensor_map *w);
void ovs_m2f_pixel_decoder_free(ovs_m2f_pixel_decoder *m);
/* Free the work buffers kept between calls (the next forward allocates them again). */
void ovs_m2f_pixel_decoder_release_workspace(ovs_m2f_pixel_decoder *m);
const ovs_m2f_pixel_decoder_config *ovs_m2f_pixel_decoder_get_config(const ovs_m2f_pixel_decoder *m);
/* feats[s] (in_channels[s], hw[s][0], hw[s][1]) for res2..res5 (each >= 1 x 1).
 * mask_features (mask_dim, H2, W2) and ms[l] (D, h, w) for l = 0, 1, 2 = res5, res4, res3
 * (the encoder's outputs, which feed the transformer decoder); any output may be NULL. */
int ovs_m2f_pixel_decoder_forward(ovs_m2f_pixel_decoder *m, const float *const feats[4],
                                  const int64_t hw[4][2], float *mask_features, float *ms[3]);

/* ---------------------------------------------------------------- transformer decoder */
/* MultiScaleMaskedTransformerDecoder (Mask2Former; FC-CLIP's minus its CLIP class head):
 * learned queries, per layer masked cross-attention on level i % 3 (masked where the
 * previous prediction resized to the level is sigmoid < 0.5, a fully masked query row being
 * unmasked), self-attention, FFN (post-norm), then a prediction from decoder_norm.
 * Weights below prefix:
 *   query_feat.weight (Q, D), query_embed.weight (Q, D), level_embed.weight (3, D)
 *   input_proj.{l}.weight (D, in_channels, 1, 1) .bias   only when in_channels != D
 *   transformer_cross_attention_layers.{i}.multihead_attn.in_proj_weight (3D, D)
 *       .in_proj_bias (3D,) .out_proj.weight (D, D) .out_proj.bias (D,), then .norm.weight/.bias
 *   transformer_self_attention_layers.{i}.self_attn.* (same) and .norm
 *   transformer_ffn_layers.{i}.linear1.weight (ffn, D) .bias, .linear2.weight (D, ffn) .bias,
 *       .norm.weight/.bias
 *   decoder_norm.weight (D,) .bias
 *   mask_embed.layers.{0,1,2}.weight ((D, D), (D, D), (mask_dim, D)) .bias
 *   class_embed.weight (class_dim, D) .bias                  when class_layers == 1
 *   class_embed.layers.{k}.weight ... (last (class_dim, D))   when class_layers > 1
 *   _mask_pooling_proj.0.weight (D,) .bias, _mask_pooling_proj.1.weight (D, D) .bias
 *                                                             when fcclip_class_head
 * FC-CLIP's class head (fcclip_class_head = 1; needs mask_dim == D and class_layers >= 1):
 * the class head reads decoder_norm(x) + Linear(LayerNorm(mask pooling)), where mask pooling
 * averages mask_features over the pixels whose mask logit is > 0:
 *   pooled[q, c] = sum_p mask_features[c, p] [logit[q, p] > 0] / (#{p: logit[q, p] > 0} + 1e-8).
 * Without it, the class head reads decoder_norm(x) (Mask2Former, Han et al.). */
typedef struct {
    const char *prefix;       /* e.g. "sem_seg_head.predictor." */
    int64_t in_channels;      /* channels of the multi-scale maps (the pixel decoder's D) */
    int64_t hidden_dim;       /* D (256) */
    int64_t queries;          /* Q (100 Mask2Former / Han et al., 250 FC-CLIP) */
    int64_t heads;            /* E (8) */
    int64_t ffn_dim;          /* FFN width (2048) */
    int64_t layers;           /* decoder layers = DEC_LAYERS - 1 (9) */
    int64_t mask_dim;         /* mask feature channels (256) */
    int64_t class_layers;     /* 0: no class head; 1: a Linear; k > 1: a k-layer ReLU MLP */
    int64_t class_dim;        /* class head output width (ignored when class_layers == 0) */
    int fcclip_class_head;    /* 1: FC-CLIP's mask-pooled class head input (see above) */
} ovs_m2f_decoder_config;

/* in_channels 256, hidden 256, 100 queries, 8 heads, ffn 2048, 9 layers, mask_dim 256,
 * no class head. */
ovs_m2f_decoder_config ovs_m2f_decoder_defaults(void);

/* Every pointer may be NULL (not written). There are layers + 1 predictions (the first from
 * the learned queries before any layer). */
typedef struct {
    float *hidden;            /* (layers+1, Q, D) decoder_norm outputs */
    float *classes;           /* (layers+1, Q, class_dim) class head outputs (class_layers > 0) */
    float *masks;             /* (Q, H, W) mask logits of the last prediction */
    float *masks_all;         /* (layers+1, Q, H, W) mask logits of every prediction */
} ovs_m2f_decoder_outputs;

typedef struct ovs_m2f_decoder ovs_m2f_decoder;
int ovs_m2f_decoder_create(ovs_m2f_decoder **out, const ovs_m2f_decoder_config *cfg,
                           const ovs_tensor_map *w);
void ovs_m2f_decoder_free(ovs_m2f_decoder *m);
/* Free the work buffers kept between calls (the next forward allocates them again). */
void ovs_m2f_decoder_release_workspace(ovs_m2f_decoder *m);
const ovs_m2f_decoder_config *ovs_m2f_decoder_get_config(const ovs_m2f_decoder *m);
/* feats[l] (in_channels, sizes[l][0], sizes[l][1]) for l = 0, 1, 2 (res5, res4, res3 from
 * the pixel decoder); mask_features (mask_dim, H, W). */
int ovs_m2f_decoder_forward(ovs_m2f_decoder *m, const float *const feats[3],
                            const int64_t sizes[3][2], const float *mask_features, int64_t H,
                            int64_t W, ovs_m2f_decoder_outputs *out);

/* ---------------------------------------------------------------- semantic inference */
/* MaskFormer's semantic map (Han et al. / OpenTrans semantic_inference, FC-CLIP's after
 * sem_seg_postprocess), without ever holding (Q, H, W):
 *   out (C, H, W)[c] = sum_q probs[q, c] * sigmoid(R(crop(U(masks[q]))))
 * masks (Q, h, w) mask logits at mask-feature resolution, probs (Q, C) class probabilities,
 * U the bilinear resize (align_corners = 0, as F.interpolate) to up = (Hu, Wu) (the padded
 * input), crop its top-left crop = (Hc, Wc) (the image's resized extent), R the bilinear resize
 * to size = (H, W) (the identity when crop == size). Computed in bands of output rows: per
 * band only the crop rows its taps read are upsampled, and the class sum is one ovs_matmul.
 * Band bounds depend only on the shapes: bitwise the same result at any thread count.
 * Allocates its band buffers (Q x 8192 floats and tables); OVS_ERR_ARG for sizes < 1 or a
 * crop outside `up`, OVS_ERR_NOMEM. The naive twin materialises every stage whole. */
int ovs_mask_semantic(float *out, const float *masks, const float *probs, int64_t Q, int64_t h,
                      int64_t w, int64_t C, const int64_t up[2], const int64_t crop[2],
                      const int64_t size[2]);
int ovs_mask_semantic_naive(float *out, const float *masks, const float *probs, int64_t Q,
                            int64_t h, int64_t w, int64_t C, const int64_t up[2],
                            const int64_t crop[2], const int64_t size[2]);
/* labels (H, W) = the argmax over c of ovs_mask_semantic's out (the first of equal maxima), band
 * by band: only one band's (C, band) scores are held. Bitwise the argmax of ovs_mask_semantic. */
int ovs_mask_semantic_labels(int32_t *labels, const float *masks, const float *probs, int64_t Q,
                             int64_t h, int64_t w, int64_t C, const int64_t up[2],
                             const int64_t crop[2], const int64_t size[2]);
int ovs_mask_semantic_labels_naive(int32_t *labels, const float *masks, const float *probs,
                                   int64_t Q, int64_t h, int64_t w, int64_t C,
                                   const int64_t up[2], const int64_t crop[2],
                                   const int64_t size[2]);

/* ---------------------------------------------------------------- FC-CLIP mask pooling */
/* CLIP's attention pool (open_clip ModifiedResNet attnpool) as FC-CLIP's
 * visual_prediction_forward_resnet runs it densely: one query per mask, the mean of res5 plus
 * pos[0], attending only to the pixels where the mask logits resized (bilinear,
 * align_corners = 0) to res5's extent are > 0; keys and values res5 plus the spatial
 * positional embedding resized (bilinear) from its G x G grid. Weights borrowed, float32. */
typedef struct {
    const float *pos;                   /* (G*G + 1, C) attnpool.positional_embedding */
    const float *wq, *bq, *wk, *bk;     /* (C, C), (C,): q_proj, k_proj */
    const float *wv, *bv;               /* (C, C), (C,): v_proj */
    const float *wc, *bc;               /* (E, C), (E,): c_proj */
    int64_t C, E, G, heads;             /* heads divides C */
} ovs_fcclip_attnpool;

/* out (Q, E) the pooled CLIP embedding of each mask, valid (Q,) 1 where the mask has a pixel
 * at res5's extent (an empty mask's row is c_proj's bias: torch gives NaN there, FC-CLIP does
 * not read it). res5 (C, h, w), masks (Q, Hm, Wm) mask logits. The fast version folds the
 * query into the key projection (the keys are never formed; see csrc/frameworks/fcclip.c);
 * the naive twin follows the definition in double. Thread-count invariant. */
int ovs_fcclip_mask_pool(float *out, uint8_t *valid, const ovs_fcclip_attnpool *ap,
                         const float *res5, int64_t h, int64_t w, const float *masks, int64_t Q,
                         int64_t Hm, int64_t Wm);
int ovs_fcclip_mask_pool_naive(float *out, uint8_t *valid, const ovs_fcclip_attnpool *ap,
                               const float *res5, int64_t h, int64_t w, const float *masks,
                               int64_t Q, int64_t Hm, int64_t Wm);

#ifdef __cplusplus
}
#endif
#endif /* OVS_M2F_H */
