/*
 * CLIP towers: ModifiedResNet and VisionTransformer image encoders, the causal text transformer.
 *
 * Usage:
 *
 *     ovs_resnet_config cfg = {.prefix = "visual.", .layers = {3, 4, 6, 3}, .width = 64,
 *                              .embed_dim = 1024, .heads = 32, .grid = 7, .has_attnpool = 1};
 *     ovs_resnet *net;
 *     if (ovs_resnet_create(&net, &cfg, &weights)) { puts(ovs_last_error()); return; }
 *     float embed[1024];
 *     ovs_resnet_outputs out = {.embed = embed};
 *     ovs_resnet_forward(net, image, 1, 224, 224, &out);   // image (1, 3, 224, 224)
 *     ovs_resnet_free(net);
 *
 * Weights come from an ovs_tensor_map with open_clip names below cfg.prefix. Models borrow
 * every tensor they use unchanged (the map's owner must outlive the model) and own the ones they
 * transform (BatchNorm folded into convs, transposed projections, resized positional embeddings).
 * A model keeps one workspace arena reused across calls; a model must not be used by two threads
 * at once (the Python layer holds a per-model lock). Two models never share state.
 */
#ifndef OVS_MODELS_H
#define OVS_MODELS_H

#include "ovs/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- ModifiedResNet */
typedef struct {
    const char *prefix;       /* name prefix, e.g. "visual." */
    int64_t layers[4];        /* bottlenecks per stage: RN50 {3,4,6,3}, RN101 {3,4,23,3} */
    int64_t width;            /* stem width: stage s has planes width<<s, output 4*(width<<s) */
    int64_t embed_dim;        /* attention-pool output dim (c_proj rows) */
    int64_t heads;            /* attention-pool heads */
    int64_t grid;             /* attention-pool positional grid side (image_size / 32) */
    int has_attnpool;         /* 0: stop at res5 (backbone use) */
    int style;                /* ovs_resnet_style; 0 = CLIP */
    int64_t output_stride;    /* res5 stride: 32 (0 means 32); DEEPLAB style also 16 or 8 */
} ovs_resnet_config;

/* Two bottleneck layouts share the weights' names and shapes (so a CLIP RN50 mask or pruned
 * weights transfer between them):
 *   OVS_RESNET_CLIP     open_clip's ModifiedResNet: stem conv-BN-ReLU x3, AvgPool 2; bottleneck
 *                       strides by an AvgPool after the 3x3, shortcut AvgPool -> 1x1 -> BN.
 *   OVS_RESNET_DEEPLAB  the ZS3/OpenTrans DeepLab trunk (zs3/modeling/backbone/resnet.py): the
 *                       same 3-conv stem with no ReLU between the convs (conv-BN x3, AvgPool 2,
 *                       ReLU); torchvision-style bottleneck striding in the 3x3 (padding =
 *                       dilation), shortcut strided 1x1 -> BN. output_stride 16: stage strides
 *                       1,2,2,1, res5 dilations 2,4,8 (multi-grid 1,2,4); 8: strides 1,2,1,1,
 *                       res4 dilation 2, res5 4,8,16. The last stage must have 3 blocks. */
typedef enum {
    OVS_RESNET_CLIP = 0,
    OVS_RESNET_DEEPLAB = 1,
} ovs_resnet_style;

typedef struct ovs_resnet ovs_resnet;

/* Every pointer may be NULL (not computed/copied). Shapes for input (N, 3, H, W): */
typedef struct {
    float *res[4];            /* res2..res5: (N, 4*(width<<s), H/(4<<s), W/(4<<s)) for CLIP style;
                                 any style: ovs_resnet_feature_shape */
    float *embed;             /* (N, embed_dim) attention-pooled embedding */
} ovs_resnet_outputs;

int ovs_resnet_create(ovs_resnet **out, const ovs_resnet_config *cfg, const ovs_tensor_map *w);
void ovs_resnet_free(ovs_resnet *m);
/* Free the work buffers kept between calls (the next forward allocates them again): for a
 * trunk whose outputs feed other blocks, so that its activations do not add to theirs. */
void ovs_resnet_release_workspace(ovs_resnet *m);
const ovs_resnet_config *ovs_resnet_get_config(const ovs_resnet *m);
/* Channels and spatial size of res2..res5 for an (H, W) input; H, W must be >= 32 and the
 * strided convs/pools truncate like PyTorch's. */
int ovs_resnet_feature_shape(const ovs_resnet *m, int stage, int64_t H, int64_t W, int64_t *C,
                             int64_t *h, int64_t *w);
/* images (N, 3, H, W) normalised float32. */
int ovs_resnet_forward(ovs_resnet *m, const float *images, int64_t N, int64_t H, int64_t W,
                       ovs_resnet_outputs *out);
/* The stem and the four stages only (no attention pool), for heads and decoders that read the
 * last stage themselves. Resets the model's workspace, then: res_out[s] (optional, as
 * ovs_resnet_outputs.res) receives stage s's output; *res5 (N, *C5, *h5, *w5) points into the
 * workspace, valid until the next call on m. */
int ovs_resnet_trunk(ovs_resnet *m, const float *images, int64_t N, int64_t H, int64_t W,
                     float **res_out, float **res5, int64_t *C5, int64_t *h5, int64_t *w5);
/* CLIP's attention pool (AttentionPool2d): q, k, v (C, C) and c (embed_dim, C) projections with
 * their biases, C = channels of res5. */
typedef struct {
    int64_t channels;         /* C */
    const ovs_matrix *q, *k, *v, *c;
    const float *qb, *kb, *vb, *cb;
} ovs_resnet_attnpool;
/* The attention pool's weights; OVS_ERR_ARG if the model has none (cfg.has_attnpool = 0). */
int ovs_resnet_get_attnpool(const ovs_resnet *m, ovs_resnet_attnpool *out);

/* Sparse execution. Each conv of the model holds its (BatchNorm-folded) weight dense or as CSR
 * and runs ovs_conv2d_forward or ovs_conv2d_sparse_forward accordingly; results agree to float
 * rounding. Modes:
 *   OVS_SPARSE_DENSE  every conv dense (the state after create)
 *   OVS_SPARSE_ALL    every conv the sparse kernel can run (stride 1) sparse
 *   OVS_SPARSE_AUTO   per conv, time both kernels on this CPU at the conv's input size for an
 *                     (H, W) image (batch 1, current thread count) and keep the faster; convs
 *                     with more than 70% non-zeros stay dense without timing.
 * A sparse conv frees its dense weight (memory proportional to the non-zeros). */
typedef enum {
    OVS_SPARSE_DENSE = 0,
    OVS_SPARSE_ALL = 1,
    OVS_SPARSE_AUTO = 2,
} ovs_sparse_mode;

typedef struct {
    const char *name;         /* weight name without ".weight", e.g. "visual.layer1.0.conv2" */
    int64_t K, C, R, S;       /* weight (K, C, R, S) */
    int64_t nnz;              /* non-zeros after BatchNorm folding */
    int sparse;               /* 1 if the sparse kernel runs this conv */
    size_t weight_bytes;      /* bytes of the weight as held now */
    double dense_ms, sparse_ms;  /* calibration timings of OVS_SPARSE_AUTO (0 if not timed) */
} ovs_conv_info;

int ovs_resnet_sparsify(ovs_resnet *m, ovs_sparse_mode mode, int64_t H, int64_t W);
/* Convs in order: stem conv1..3, then per bottleneck conv1, conv2, conv3 and downsample. */
int64_t ovs_resnet_conv_count(const ovs_resnet *m);
int ovs_resnet_conv_info(const ovs_resnet *m, int64_t i, ovs_conv_info *info);

/* ---------------------------------------------------------------- DeepLabV3+ head (OpenTrans) */
/* The DeepLabV3-OVS head of OpenTrans (mask2former/Deeplabv3.py with zs3/modeling/aspp.py and
 * decoder.py) on a DEEPLAB-style ResNet trunk (res2 = low-level feature, res5 at stride 16):
 *   ASPP: branches 1x1 and 3x3 at dilations 6, 12, 18 (rate x 16 / output stride), each
 *         conv-BN-ReLU to A (256) channels, and a fifth branch that is either
 *           image pooling: global average -> 1x1 conv-BN-ReLU -> broadcast (DeepLabV3+), or
 *           res5 itself, as OpenTrans' ASPP.forward does (it interpolates x, not the pooled
 *           branch, hence its 3072-input projection; the pooling weights are then unused);
 *         the variant follows the projection's input width (5A or 4A + C5). Concat -> 1x1
 *         conv-BN-ReLU (dropout is the identity at inference).
 *   decoder: res2 -> 1x1 conv-BN-ReLU (48); ASPP output bilinearly upsampled
 *         (align_corners=True) to res2's size; concat [aspp, low] -> (3x3 conv-BN-ReLU) x 2.
 *   embedding: ReLU -> Linear(A -> E) per pixel (OpenTrans embed_proj), E = 1024 for RN50.
 * Weight names (below cfg.prefix): aspp.aspp{1..4}.atrous_conv / .bn, aspp.global_avg_pool.1
 * / .2, aspp.conv1 / aspp.bn1, decoder.conv1 / decoder.bn1, decoder.last_conv.{0,1,4,5},
 * embed_proj.weight / .bias. BatchNorms are folded at load. */
typedef struct {
    const char *prefix;       /* head weight prefix ("" for the names above) */
} ovs_deeplab_config;

typedef struct ovs_deeplab ovs_deeplab;

/* The head borrows the trunk (which must outlive it and not be run concurrently). */
int ovs_deeplab_create(ovs_deeplab **out, ovs_resnet *trunk, const ovs_deeplab_config *cfg,
                       const ovs_tensor_map *w);
void ovs_deeplab_free(ovs_deeplab *m);
int64_t ovs_deeplab_embed_dim(const ovs_deeplab *m);
int ovs_deeplab_image_pool(const ovs_deeplab *m);   /* 1: pooling branch; 0: res5 branch */
/* Extent (h, w) of the per-pixel embedding for an (H, W) input: res2's, about H/4 x W/4. */
int ovs_deeplab_out_shape(const ovs_deeplab *m, int64_t H, int64_t W, int64_t *h, int64_t *w);
/* embed (N, E, h, w) for images (N, 3, H, W) normalised float32 (H, W >= 32). */
int ovs_deeplab_forward(ovs_deeplab *m, float *embed, const float *images, int64_t N, int64_t H,
                        int64_t W);
/* out (N, T, h, w) = ovs_pixel_classify of the embeddings ovs_deeplab_forward gives, computed
 * in bands of pixels (the embedding, then the classification) so that the (N, E, h, w)
 * embedding map is never held; results equal forward + ovs_pixel_classify to float rounding and
 * do not depend on the thread count. */
int ovs_deeplab_classify(ovs_deeplab *m, float *out, const float *images, int64_t N, int64_t H,
                         int64_t W, const float *text, int64_t T, float scale, int softmax);
/* Per-pixel text classification of embeddings, as OpenTrans' inference:
 *   out[t, p] = scale * <text[t], embed[:, p]> / (||embed[:, p]|| + 1e-7)
 * then, with softmax != 0, softmax over t at each pixel. embed (E, P) channel-major, text (T, E)
 * (rows L2-normalised by the caller), out (T, P). */
int ovs_pixel_classify(float *out, const float *embed, int64_t E, int64_t P, const float *text,
                       int64_t T, float scale, int softmax);
int ovs_pixel_classify_naive(float *out, const float *embed, int64_t E, int64_t P,
                             const float *text, int64_t T, float scale, int softmax);

/* ---------------------------------------------------------------- transformer blocks */
/* A pre-LN residual attention block as open_clip's ResidualAttentionBlock:
 *   x = x + out_proj(MHA(ln_1(x)));  x = x + c_proj(act(c_fc(ln_2(x)))) */
typedef struct {
    const float *ln1_w, *ln1_b;   /* (D,) */
    ovs_matrix in_proj;           /* (3D, D): q, k, v stacked */
    const float *in_proj_b;       /* (3D,) */
    ovs_matrix out_proj;          /* (D, D) */
    const float *out_proj_b;      /* (D,) */
    const float *ln2_w, *ln2_b;   /* (D,) */
    ovs_matrix fc;                /* (Dm, D) */
    const float *fc_b;            /* (Dm,) */
    ovs_matrix proj;              /* (D, Dm) */
    const float *proj_b;          /* (D,) */
} ovs_block;

typedef struct {
    int64_t width;            /* D */
    int64_t heads;            /* E; head width F = D / E */
    int64_t mlp;              /* Dm */
    int64_t layers;           /* L */
    ovs_act act;              /* OVS_ACT_QUICKGELU for OpenAI weights, OVS_ACT_GELU otherwise */
    ovs_block *blocks;        /* (L,) */
    float *packed;            /* owned: every block's in_proj | out_proj | fc | proj, packed */
} ovs_transformer;

/* Bind blocks "<prefix>resblocks.<i>.*" (layers counted from the map), check shapes, pack the
 * four weight matrices of each block for the packed-weight GEMM. */
int ovs_transformer_init(ovs_transformer *t, const char *prefix, int64_t heads, ovs_act act,
                         const ovs_tensor_map *w);
void ovs_transformer_release(ovs_transformer *t);
/* Workspace floats one block needs for B sequences of T tokens. */
size_t ovs_block_scratch_floats(const ovs_transformer *t, int64_t B, int64_t T);
/* x (B, T, D) <- block(x), in place. causal != 0 applies the causal mask. */
int ovs_block_forward(const ovs_transformer *t, const ovs_block *blk, float *x, int64_t B,
                      int64_t T, int causal, float *scratch);
/* The block for one token per sequence, where only those tokens' outputs are wanted (the last
 * block before a pooled head: ViT's class token, the text tower's end-of-text token): every
 * token's key and value, the query, the attention and the MLP only at row rows[b] of sequence b
 * (with causal != 0 it attends to keys 0..rows[b]). out (B, D) <- those rows of block(x); x
 * (B, T, D) is only read. Equal to ovs_block_forward on those rows up to float rounding (the
 * out-projection and MLP GEMMs run over B rows instead of B*T). Workspace:
 * ovs_block_scratch_floats(t, B, T). */
int ovs_block_forward_rows(const ovs_transformer *t, const ovs_block *blk, const float *x, int64_t B,
                           int64_t T, const int64_t *rows, int causal, float *out, float *scratch);
/* Causal blocks over a shared, cached prefix (prompt ensembles: "a photo of a {}." for many
 * class names). The B sequences of x (B, T, D) are the tokens at positions P..P+T-1 that follow
 * one common prefix of P tokens whose keys|values at this block are past (P, 2D) (row p = k_p
 * then v_p; NULL when P == 0): each query attends to the P prefix keys and to its own sequence's
 * keys up to itself. save (B*T, 2D), when not NULL, receives the keys|values of x's tokens at
 * this block (the cache that a later call passes as past). Equal to ovs_block_forward with
 * causal = 1 on the concatenated sequences, restricted to the last T positions. With rows (B,)
 * not NULL, as ovs_block_forward_rows: out (B, D) <- row rows[b] of each sequence's output
 * (the attention, out-projection and MLP only there), x only read. */
size_t ovs_block_prefixed_scratch_floats(const ovs_transformer *t, int64_t B, int64_t T, int64_t P);
int ovs_block_forward_prefixed(const ovs_transformer *t, const ovs_block *blk, float *x,
                               int64_t B, int64_t T, const float *past, int64_t P, float *save,
                               const int64_t *rows, float *out, float *scratch);

/* ---------------------------------------------------------------- VisionTransformer */
typedef struct {
    const char *prefix;       /* e.g. "visual." */
    int64_t width;            /* D */
    int64_t layers;           /* L */
    int64_t heads;            /* E */
    int64_t patch;            /* p */
    int64_t grid;             /* positional-embedding grid side (image_size / p) */
    int64_t embed_dim;        /* proj columns; 0 if no proj */
    ovs_act act;
} ovs_vit_config;

typedef struct ovs_vit ovs_vit;

typedef struct {
    float *tokens;            /* (N, T, D) tokens after `blocks` blocks, T = 1 + gh*gw */
    float *block_tokens;      /* (L, N, T, D) output of every block run (optional) */
    float *embed;             /* (N, embed_dim): ln_post + proj of the class token (needs all L) */
} ovs_vit_outputs;

int ovs_vit_create(ovs_vit **out, const ovs_vit_config *cfg, const ovs_tensor_map *w);
void ovs_vit_free(ovs_vit *m);
const ovs_vit_config *ovs_vit_get_config(const ovs_vit *m);
const ovs_transformer *ovs_vit_transformer(const ovs_vit *m);
/* Final LayerNorm (D,) and projection as a (embed_dim, D) matrix for heads that project patches. */
void ovs_vit_head(const ovs_vit *m, const float **ln_w, const float **ln_b, const ovs_matrix **proj);
/* Run the stem and the first `blocks` blocks (0..L) on images (N, 3, H, W); H, W multiples of
 * the patch size. */
int ovs_vit_forward(ovs_vit *m, const float *images, int64_t N, int64_t H, int64_t W,
                    int64_t blocks, ovs_vit_outputs *out);

/* ---------------------------------------------------------------- text transformer */
typedef struct {
    const char *prefix;       /* "" for CLIP's top-level text keys */
    int64_t width, layers, heads;
    int64_t context;          /* positional-embedding rows (77) */
    int64_t vocab;            /* token-embedding rows (49408) */
    int64_t embed_dim;        /* text_projection columns */
    ovs_act act;
} ovs_text_config;

typedef struct ovs_text ovs_text;

int ovs_text_create(ovs_text **out, const ovs_text_config *cfg, const ovs_tensor_map *w);
void ovs_text_free(ovs_text *m);
const ovs_text_config *ovs_text_get_config(const ovs_text *m);
/* out (N, embed_dim) = text embeddings of ids (N, S), S <= context. The end-of-text position of
 * each row is argmax(ids[n]) (as CLIP); with truncate != 0 only positions up to the batch's
 * largest such position are computed (identical result: attention is causal). */
int ovs_text_forward(ovs_text *m, float *out, const int32_t *ids, int64_t N, int64_t S,
                     int truncate);

/* Prompts that share a token prefix (a template's "<start_of_text> a photo of a" before each
 * class name), computed once for the prefix:
 *
 *     float *kv = malloc(ovs_text_prefix_floats(m, P) * sizeof(float));
 *     ovs_text_prefix(m, kv, prefix_ids, P);                    // once per template
 *     ovs_text_forward_prefixed(m, out, kv, P, suffix_ids, N, S); // any number of batches
 *
 * equals ovs_text_forward on the rows prefix_ids + suffix_ids[n] (float rounding aside), when
 * each row's end-of-text token (the largest id) is in its suffix.
 *   kv          (layers, P, 2*width): each layer's keys|values of the prefix tokens
 *   prefix_ids  (P,), 1 <= P < context: the tokens at positions 0..P-1
 *   suffix_ids  (N, S), P + S <= context: the tokens at positions P..P+S-1; the end-of-text
 *               position of row n is argmax(suffix_ids[n]), and positions after the last
 *               one in the batch are not computed. */
size_t ovs_text_prefix_floats(const ovs_text *m, int64_t P);
int ovs_text_prefix(ovs_text *m, float *kv, const int32_t *prefix_ids, int64_t P);
int ovs_text_forward_prefixed(ovs_text *m, float *out, const float *kv, int64_t P,
                              const int32_t *suffix_ids, int64_t N, int64_t S);

#ifdef __cplusplus
}
#endif
#endif /* OVS_MODELS_H */
