/* Dense-feature heads: MaskCLIP (ResNet and ViT), SCLIP, ClearCLIP, NACLIP, SC-CLIP.
 * Each runs the tower up to its last block and replaces that block as
 * tests/reference/SEGMENTATION_SPEC.md specifies. The heads table (ovs_head_table, at the end
 * of this file) is the one place a head is named: a new head is its functions and one entry. */
#include "methods/internal.h"

#include <math.h>
#include <string.h>

/* SC-CLIP (github.com/SuleBai/SC-CLIP, clip/model.py, configs/base_config.py defaults), with
 * blocks numbered from 0: block outputs 3..9 are fused, block 8 calibrates before the last
 * block, block 3 after it; anomalies are found in the output of block L-2. */
#define SCCLIP_MIN_LAYERS 11
enum { SCCLIP_PRE = 8, SCCLIP_POST = 3, SCCLIP_MULTI_START = 3, SCCLIP_MULTI_END = 10, SCCLIP_KNN = 30 };
static const float SCCLIP_RES_CLS = 0.3f, SCCLIP_BETA = 0.4f, SCCLIP_CONTAMINATION = 0.05f;

int ovs_segmenter_create(ovs_segmenter **out, ovs_resnet *resnet, ovs_vit *vit,
                         const ovs_seg_config *cfg) {
    *out = NULL;
    if (!!resnet == !!vit) return ovs_set_error(OVS_ERR_ARG, "give exactly one tower (ResNet or ViT)");
    int64_t nheads;
    const ovs_head_info *table = ovs_head_table(&nheads), *h = cfg->head;
    if (!h || h < table || h >= table + nheads)
        return ovs_set_error(OVS_ERR_ARG, "unknown head (not an entry of ovs_head_table)");
    if (resnet && !(h->towers & OVS_TOWER_RESNET))
        return ovs_set_error(OVS_ERR_ARG, "%s runs on ViT towers only, not on a ResNet", h->title);
    if (resnet && !ovs_resnet_get_config(resnet)->has_attnpool)
        return ovs_set_error(OVS_ERR_ARG, "%s on a ResNet needs its attention pool weights", h->title);
    if (vit && ovs_vit_get_config(vit)->embed_dim <= 0)
        return ovs_set_error(OVS_ERR_ARG, "the ViT has no projection (visual.proj)");
    if (vit && ovs_vit_transformer(vit)->layers < h->min_layers)
        return ovs_set_error(OVS_ERR_ARG, "%s needs a ViT with at least %lld blocks (%s), this one has %lld",
                             h->title, (long long)h->min_layers, h->min_layers_why,
                             (long long)ovs_vit_transformer(vit)->layers);
    if (cfg->ks_thresh > 0 && !(h->flags & OVS_HEAD_KEY_SMOOTHING))
        return ovs_set_error(OVS_ERR_ARG, "key smoothing (ks_thresh) is not part of the %s head", h->title);
    if (cfg->crop < 0 || (cfg->crop > 0 && (cfg->stride <= 0 || cfg->stride > cfg->crop)))
        return ovs_set_error(OVS_ERR_ARG, "window needs 0 < stride <= crop, got crop %lld stride %lld",
                             (long long)cfg->crop, (long long)cfg->stride);
    if ((h->flags & OVS_HEAD_SIGMA) && !(cfg->sigma > 0 && isfinite(cfg->sigma)))
        return ovs_set_error(OVS_ERR_ARG, "%s sigma must be positive, got %g", h->title, (double)cfg->sigma);
    ovs_segmenter *s = ovs_calloc(1, sizeof *s);
    if (!s) return OVS_ERR_NOMEM;
    s->resnet = resnet;
    s->vit = vit;
    s->cfg = *cfg;
    ovs_arena_init(&s->arena);
    ovs_arena_init(&s->work);
    *out = s;
    return OVS_OK;
}

void ovs_segmenter_free(ovs_segmenter *s) {
    if (!s) return;
    ovs_free(s->omega);
    ovs_arena_free(&s->arena);
    ovs_arena_free(&s->work);
    ovs_free(s);
}

int64_t ovs_segmenter_embed_dim(const ovs_segmenter *s) {
    return s->vit ? ovs_vit_get_config(s->vit)->embed_dim : ovs_resnet_get_config(s->resnet)->embed_dim;
}

int64_t ovs_segmenter_patch(const ovs_segmenter *s) { return s->vit ? ovs_vit_get_config(s->vit)->patch : 32; }

/* feats (G, E) = proj(ln_post(x)) of the patch tokens x (G, D); x is normalised in place. */
static int vit_project(const ovs_vit *m, float *feats, float *x, int64_t G) {
    const ovs_vit_config *cfg = ovs_vit_get_config(m);
    const float *ln_w, *ln_b;
    const ovs_matrix *proj; /* not NULL: ovs_segmenter_create checked embed_dim > 0 */
    ovs_vit_head(m, &ln_w, &ln_b, &proj);
    int rc = ovs_layernorm_forward(x, x, ln_w, ln_b, G, cfg->width, 1e-5f);
    return rc ? rc : ovs_linear_forward(feats, x, proj, NULL, NULL, G, cfg->width, cfg->embed_dim, OVS_ACT_NONE);
}

/* NACLIP prior Omega (T, T): 0 on the class row/column, exp(-d^2 / (2 sigma^2)) between patches. */
static int naclip_omega(ovs_segmenter *s, int64_t gh, int64_t gw) {
    if (s->omega && s->omega_gh == gh && s->omega_gw == gw) return OVS_OK;
    const int64_t G = gh * gw, T = 1 + G;
    size_t n;
    if (ovs_mul_size(&n, (size_t)T, (size_t)T) || n > ((size_t)1 << 32))
        return ovs_set_error(OVS_ERR_OVERFLOW, "NACLIP prior for a %lldx%lld grid is too large", (long long)gh, (long long)gw);
    float *om = ovs_malloc(n * sizeof(float));
    if (!om) return OVS_ERR_NOMEM;
    const double inv = 1.0 / (2.0 * (double)s->cfg.sigma * (double)s->cfg.sigma);
#pragma omp parallel for schedule(static) if (T > 256) num_threads(ovs_get_num_threads())
    for (int64_t a = 0; a < T; a++) {
        float *row = om + (size_t)a * T;
        if (a == 0) {
            memset(row, 0, (size_t)T * sizeof(float));
            continue;
        }
        const int64_t ia = (a - 1) / gw, ja = (a - 1) % gw;
        row[0] = 0.0f;
        for (int64_t b = 1; b < T; b++) {
            const int64_t di = ia - (b - 1) / gw, dj = ja - (b - 1) % gw;
            row[b] = (float)exp(-(double)(di * di + dj * dj) * inv);
        }
    }
    ovs_free(s->omega);
    s->omega = om;
    s->omega_gh = gh;
    s->omega_gw = gw;
    return OVS_OK;
}

/* The replaced last block on x (T, D), written to xo (T, D). */
static int vit_last_block(ovs_segmenter *s, float *xo, float *x, int64_t T, int64_t gh, int64_t gw) {
    const ovs_transformer *tf = ovs_vit_transformer(s->vit);
    const ovs_block *blk = &tf->blocks[tf->layers - 1];
    const int64_t D = tf->width, E = tf->heads, F = D / E, Dm = tf->mlp;
    const ovs_head_info *head = s->cfg.head;
    float *y = ovs_arena_floats(&s->work, (size_t)T * D);          /* (T, D) ln_1(x) */
    float *qkv = ovs_arena_floats(&s->work, (size_t)T * 3 * D);    /* (T, 3D) */
    float *o = ovs_arena_floats(&s->work, (size_t)T * D);          /* (T, D) heads concatenated */
    float *p1 = ovs_arena_floats(&s->work, (size_t)T * T);         /* (T, T) */
    float *p2 = ovs_arena_floats(&s->work, (size_t)T * T);         /* (T, T) */
    if (!y || !qkv || !o || !p1 || !p2) return OVS_ERR_NOMEM;
    int rc;
    if ((rc = ovs_layernorm_forward(y, x, blk->ln1_w, blk->ln1_b, T, D, 1e-5f))) return rc;
    if ((rc = ovs_linear_forward(qkv, y, &blk->in_proj, blk->in_proj_b, NULL, T, D, 3 * D, OVS_ACT_NONE)))
        return rc;
    const float scale = 1.0f / sqrtf((float)F);
    const int64_t ld = 3 * D;
    if (s->cfg.ks_thresh > 0) { /* patch tokens' keys, all heads (OVS_HEAD_KEY_SMOOTHING heads) */
        if (!(s->keys = ovs_arena_floats(&s->work, (size_t)(T - 1) * D))) return OVS_ERR_NOMEM;
        for (int64_t t = 1; t < T; t++)
            memcpy(s->keys + (t - 1) * D, qkv + t * ld + D, (size_t)D * sizeof(float));
        s->keys_dim = D;
    }
    if (T > INT32_MAX / 4 || ld > INT32_MAX) return ovs_set_error(OVS_ERR_OVERFLOW, "too many tokens");
    for (int64_t h = 0; h < E; h++) {
        const float *q = qkv + h * F, *k = qkv + D + h * F, *v = qkv + 2 * D + h * F;
        float *oh = o + h * F;
        if (!head->attn) { /* the value path */
            for (int64_t t = 0; t < T; t++) memcpy(oh + t * D, v + t * ld, (size_t)F * sizeof(float));
            continue;
        }
        if ((rc = head->attn(s, p1, p2, q, k, ld, T, F, scale, gh, gw))) return rc;
        /* oh (T, F) = P (T, T) @ v_h (T, F), written into the strided head columns */
        if ((rc = ovs_matmul(oh, D, p1, T, v, ld, T, T, F, 1.0f, 0.0f))) return rc;
    }
    if (!(head->flags & OVS_HEAD_KEEP_RESIDUAL))
        return ovs_linear_forward(xo, o, &blk->out_proj, blk->out_proj_b, NULL, T, D, D, OVS_ACT_NONE);
    /* x1 = x + out_proj(o); xo = x1 + mlp(ln_2(x1)) */
    if ((rc = ovs_linear_forward(x, o, &blk->out_proj, blk->out_proj_b, x, T, D, D, OVS_ACT_NONE))) return rc;
    float *hidden = ovs_arena_floats(&s->work, (size_t)T * Dm); /* (T, Dm) */
    if (!hidden) return OVS_ERR_NOMEM;
    if ((rc = ovs_layernorm_forward(y, x, blk->ln2_w, blk->ln2_b, T, D, 1e-5f))) return rc;
    if ((rc = ovs_linear_forward(hidden, y, &blk->fc, blk->fc_b, NULL, T, D, Dm, tf->act))) return rc;
    memcpy(xo, x, (size_t)T * D * sizeof(float));
    return ovs_linear_forward(xo, hidden, &blk->proj, blk->proj_b, xo, T, Dm, D, OVS_ACT_NONE);
}

/* SC-CLIP's custom_attn over G patch tokens xin (G, D) (no class token), plus res_cls * cls:
 *   out = out_proj(concat_h ((pmid + softmax(s k_h k_h^T)) / 2) v_h) + 0.3 * cls (D,)
 * pmid (G, G): the softmax of the thresholded mid-layer similarity, shared by every head. */
static int scclip_attn(ovs_segmenter *s, float *out, const float *xin, const float *pmid,
                       const float *cls, int64_t G) {
    const ovs_transformer *tf = ovs_vit_transformer(s->vit);
    const ovs_block *blk = &tf->blocks[tf->layers - 1];
    const int64_t D = tf->width, E = tf->heads, F = D / E, ld = 3 * D;
    float *y = ovs_arena_floats(&s->work, (size_t)G * D);        /* (G, D) ln_1(xin) */
    float *qkv = ovs_arena_floats(&s->work, (size_t)G * 3 * D);  /* (G, 3D) */
    float *o = ovs_arena_floats(&s->work, (size_t)G * D);        /* (G, D) heads concatenated */
    float *p = ovs_arena_floats(&s->work, (size_t)G * G);        /* (G, G) one head's weights */
    if (!y || !qkv || !o || !p) return OVS_ERR_NOMEM;
    int rc;
    if ((rc = ovs_layernorm_forward(y, xin, blk->ln1_w, blk->ln1_b, G, D, 1e-5f))) return rc;
    if ((rc = ovs_linear_forward(qkv, y, &blk->in_proj, blk->in_proj_b, NULL, G, D, 3 * D, OVS_ACT_NONE)))
        return rc;
    const float scale = 1.0f / sqrtf((float)F);
    const int64_t n = G * G;
    for (int64_t h = 0; h < E; h++) {
        const float *k = qkv + D + h * F, *v = qkv + 2 * D + h * F;
        if ((rc = ovs_attention_probs(p, k, ld, k, ld, G, G, F, scale, NULL, 0))) return rc;
#pragma omp parallel for schedule(static) if (n > 65536) num_threads(ovs_get_num_threads())
        for (int64_t i = 0; i < n; i++) p[i] = (pmid[i] + p[i]) * 0.5f;
        if ((rc = ovs_matmul(o + h * F, D, p, G, v, ld, G, G, F, 1.0f, 0.0f))) return rc;
    }
    if ((rc = ovs_linear_forward(out, o, &blk->out_proj, blk->out_proj_b, NULL, G, D, D, OVS_ACT_NONE)))
        return rc;
#pragma omp parallel for schedule(static) if (G * D > 65536) num_threads(ovs_get_num_threads())
    for (int64_t t = 0; t < G; t++)
        for (int64_t c = 0; c < D; c++) out[t * D + c] += SCCLIP_RES_CLS * cls[c];
    return OVS_OK;
}

/* sim (G, G) = cosine similarities of the rows of f (G, D), row stride ld; fn (G, D) scratch. */
static int cosine_gram(float *sim, float *fn, const float *f, int64_t ld, int64_t G, int64_t D) {
#pragma omp parallel for schedule(static) if (G * D > 65536) num_threads(ovs_get_num_threads())
    for (int64_t t = 0; t < G; t++) {
        const float *r = f + t * ld;
        double ss = 0.0;
        for (int64_t c = 0; c < D; c++) ss += (double)r[c] * r[c];
        const float nrm = (float)sqrt(ss);
        for (int64_t c = 0; c < D; c++) fn[t * D + c] = r[c] / nrm;
    }
    const ovs_matrix fm = ovs_matrix_dense(fn, G, D);
    return ovs_matmul_wt(sim, G, fn, D, &fm, G, 1.0f, 0.0f);
}

/* SC-CLIP's VisionTransformer.forward(return_all=True) after the standard blocks:
 * bt (L-1, T, D) the output of every block but the last -> feats (G, E). */
static int scclip_features(ovs_segmenter *s, float *feats, const float *bt, int64_t gh, int64_t gw) {
    const int64_t D = ovs_vit_get_config(s->vit)->width, L = ovs_vit_transformer(s->vit)->layers;
    const int64_t G = gh * gw, T = 1 + G;
    const size_t TD = (size_t)T * D;
    if (G > INT32_MAX / 4 || 3 * D > INT32_MAX || (uint64_t)G * (uint64_t)G > ((uint64_t)1 << 31))
        return ovs_set_error(OVS_ERR_OVERFLOW,
                             "SC-CLIP on a %lldx%lld patch grid needs (G, G) similarity maps of over "
                             "2^31 entries; use a sliding window or a smaller short side",
                             (long long)gh, (long long)gw);
    const float *xl = bt + (size_t)(L - 2) * TD;                         /* (T, D) block L-2 output */
    float *mask_f = ovs_arena_floats(&s->work, (size_t)G / 4 + 1);       /* (G,) bytes */
    double *lof = (double *)ovs_arena_floats(&s->work, 2 * (size_t)G);  /* (G,) */
    float *lsc = ovs_arena_floats(&s->work, ovs_lof_scratch_floats(G, SCCLIP_KNN));
    float *xa = ovs_arena_floats(&s->work, (size_t)G * D);   /* (G, D) patches, anomalies repaired */
    float *fm = ovs_arena_floats(&s->work, (size_t)G * D);   /* (G, D) block-8 / normalised rows */
    float *fn = ovs_arena_floats(&s->work, (size_t)G * D);   /* (G, D) normalised rows */
    float *mid = ovs_arena_floats(&s->work, (size_t)G * G);  /* (G, G) block-8 similarity */
    float *corr = ovs_arena_floats(&s->work, (size_t)G * G); /* (G, G) aggregation weights */
    float *pmid = ovs_arena_floats(&s->work, (size_t)G * G); /* (G, G) softmax of thresholded mid */
    float *xb = ovs_arena_floats(&s->work, (size_t)G * D);   /* (G, D) */
    float *re = ovs_arena_floats(&s->work, TD);              /* (T, D) fused blocks 3..9 */
    if (!mask_f || !lof || !lsc || !xa || !fm || !fn || !mid || !corr || !pmid || !xb || !re)
        return OVS_ERR_NOMEM;
    uint8_t *mask = (uint8_t *)mask_f;
    int rc;
    /* anomalies in the block L-2 patches, repaired there and in block 8's patches */
    if ((rc = ovs_lof_outliers(mask, lof, xl + D, G, D, SCCLIP_KNN, SCCLIP_CONTAMINATION, lsc))) return rc;
    if ((rc = ovs_neighbour_fill(xa, xl + D, D, mask, gh, gw, D))) return rc;
    if ((rc = ovs_neighbour_fill(fm, bt + (size_t)SCCLIP_PRE * TD + D, D, mask, gh, gw, D))) return rc;
    /* mid = cos(block 8); x = aggregate(x, mid >= beta) */
    if ((rc = cosine_gram(mid, fn, fm, D, G, D))) return rc;
    memcpy(corr, mid, (size_t)G * G * sizeof(float));
    if ((rc = ovs_similarity_aggregate(xb, xa, D, corr, G, D, SCCLIP_BETA))) return rc;
    /* pmid = softmax((mid - mean(mid)) * 3, entries < 0 masked) */
    double msum = 0.0;
    for (int64_t i = 0; i < G * G; i++) msum += mid[i];
    const double mmean = msum / (double)(G * G);
#pragma omp parallel for schedule(static) if (G * G > 65536) num_threads(ovs_get_num_threads())
    for (int64_t i = 0; i < G * G; i++) {
        const float v = (float)(((double)mid[i] - mmean) * 3.0);
        pmid[i] = v < 0.0f ? -INFINITY : v;
    }
    if ((rc = ovs_softmax_forward(pmid, G, G))) return rc;
    /* x = attn(x) + 0.3 cls; x = aggregate(x, cos(block 3) >= beta) */
    if ((rc = scclip_attn(s, xa, xb, pmid, xl, G))) return rc;
    if ((rc = cosine_gram(corr, fn, bt + (size_t)SCCLIP_POST * TD + D, D, G, D))) return rc;
    if ((rc = ovs_similarity_aggregate(xb, xa, D, corr, G, D, SCCLIP_BETA))) return rc;
    /* multi-level: re = sum of blocks 3..9 (class token included); x += aggregate(attn(re)) */
    memset(re, 0, TD * sizeof(float));
    for (int64_t l = SCCLIP_MULTI_START; l < SCCLIP_MULTI_END; l++) {
        const float *b = bt + (size_t)l * TD;
        for (size_t i = 0; i < TD; i++) re[i] += b[i];
    }
    if ((rc = scclip_attn(s, xa, re + D, pmid, re, G))) return rc;
    /* corr already holds the thresholded, row-normalised block-3 weights */
    if ((rc = ovs_matmul(xb, D, corr, G, xa, D, G, G, D, 1.0f, 1.0f))) return rc;
    return vit_project(s->vit, feats, xb, G);
}

int ovs_seg_dense_features(ovs_segmenter *s, float *feats, const float *image, int64_t H, int64_t W) {
    const int64_t p = ovs_segmenter_patch(s);
    if (H < p || W < p || H % p || W % p)
        return ovs_set_error(OVS_ERR_ARG, "dense features need sides that are positive multiples of %lld, got %lldx%lld",
                             (long long)p, (long long)H, (long long)W);
    const int64_t gh = H / p, gw = W / p, G = gh * gw;
    ovs_arena_reset(&s->work);
    s->keys = NULL;
    int rc;
    if (s->resnet) {
        ovs_resnet_attnpool ap;
        if ((rc = ovs_resnet_get_attnpool(s->resnet, &ap))) return rc;
        float *r5;
        int64_t C5, h5, w5;
        if ((rc = ovs_resnet_trunk(s->resnet, image, 1, H, W, NULL, &r5, &C5, &h5, &w5))) return rc;
        if (h5 * w5 != G) return ovs_set_error(OVS_ERR_ARG, "unexpected res5 grid %lldx%lld", (long long)h5, (long long)w5);
        float *tok = ovs_arena_floats(&s->work, (size_t)G * C5);  /* (G, C5) positions as rows */
        float *v = ovs_arena_floats(&s->work, (size_t)G * C5);    /* (G, C5) v_proj */
        if (!tok || !v) return OVS_ERR_NOMEM;
#pragma omp parallel for schedule(static) num_threads(ovs_get_num_threads())
        for (int64_t g = 0; g < G; g++)
            for (int64_t c = 0; c < C5; c++) tok[g * C5 + c] = r5[c * G + g];
        if ((rc = ovs_linear_forward(v, tok, ap.v, ap.vb, NULL, G, C5, C5, OVS_ACT_NONE))) return rc;
        if (s->cfg.ks_thresh > 0) { /* k_proj of res5, for key smoothing */
            if (!(s->keys = ovs_arena_floats(&s->work, (size_t)G * C5))) return OVS_ERR_NOMEM;
            if ((rc = ovs_linear_forward(s->keys, tok, ap.k, ap.kb, NULL, G, C5, C5, OVS_ACT_NONE))) return rc;
            s->keys_dim = C5;
        }
        return ovs_linear_forward(feats, v, ap.c, ap.cb, NULL, G, C5, ovs_resnet_get_config(s->resnet)->embed_dim,
                                  OVS_ACT_NONE);
    }
    ovs_vit *m = s->vit;
    const int64_t D = ovs_vit_get_config(m)->width, T = 1 + G, L = ovs_vit_transformer(m)->layers;
    if (s->cfg.head->vit) return s->cfg.head->vit(s, feats, image, H, W, gh, gw);
    float *x = ovs_arena_floats(&s->work, (size_t)T * D);   /* (T, D) tokens entering the last block */
    float *xo = ovs_arena_floats(&s->work, (size_t)T * D);  /* (T, D) last block output */
    if (!x || !xo) return OVS_ERR_NOMEM;
    ovs_vit_outputs out = {.tokens = x};
    if ((rc = ovs_vit_forward(m, image, 1, H, W, L - 1, &out))) return rc;
    if ((rc = vit_last_block(s, xo, x, T, gh, gw))) return rc;
    return vit_project(m, feats, xo + D, G);
}

/* ---------------------------------------------------------------- the heads */
/* SCLIP: softmax(q q^T) + softmax(k k^T). */
static int sclip_attn(ovs_segmenter *s, float *p, float *scratch, const float *q, const float *k,
                      int64_t ld, int64_t T, int64_t F, float scale, int64_t gh, int64_t gw) {
    (void)s, (void)gh, (void)gw;
    int rc;
    if ((rc = ovs_attention_probs(p, q, ld, q, ld, T, T, F, scale, NULL, 0)) ||
        (rc = ovs_attention_probs(scratch, k, ld, k, ld, T, T, F, scale, NULL, 0)))
        return rc;
    const int64_t n = T * T;
#pragma omp parallel for schedule(static) if (n > 65536) num_threads(ovs_get_num_threads())
    for (int64_t i = 0; i < n; i++) p[i] += scratch[i];
    return OVS_OK;
}

/* ClearCLIP: softmax(q q^T). */
static int clearclip_attn(ovs_segmenter *s, float *p, float *scratch, const float *q, const float *k,
                          int64_t ld, int64_t T, int64_t F, float scale, int64_t gh, int64_t gw) {
    (void)s, (void)scratch, (void)k, (void)gh, (void)gw;
    return ovs_attention_probs(p, q, ld, q, ld, T, T, F, scale, NULL, 0);
}

/* NACLIP: softmax(k k^T + Omega), Omega the Gaussian prior of the grid (naclip_omega). */
static int naclip_attn(ovs_segmenter *s, float *p, float *scratch, const float *q, const float *k,
                       int64_t ld, int64_t T, int64_t F, float scale, int64_t gh, int64_t gw) {
    (void)scratch, (void)q;
    int rc = naclip_omega(s, gh, gw);
    return rc ? rc : ovs_attention_probs(p, k, ld, k, ld, T, T, F, scale, s->omega, 0);
}

/* SC-CLIP: the trunk keeps every block's output, then scclip_features. */
static int scclip_vit(ovs_segmenter *s, float *feats, const float *image, int64_t H, int64_t W,
                      int64_t gh, int64_t gw) {
    ovs_vit *m = s->vit;
    const int64_t D = ovs_vit_get_config(m)->width, L = ovs_vit_transformer(m)->layers, T = 1 + gh * gw;
    float *bt = ovs_arena_floats(&s->work, (size_t)(L - 1) * T * D); /* (L-1, T, D) block outputs */
    if (!bt) return OVS_ERR_NOMEM;
    ovs_vit_outputs bout = {.block_tokens = bt};
    int rc = ovs_vit_forward(m, image, 1, H, W, L - 1, &bout);
    return rc ? rc : scclip_features(s, feats, bt, gh, gw);
}

/* On top of the trunk's one last block: LOF distances, two cosine similarity maps, three (g, g)
 * aggregations and the second pass of the replaced attention (the fusion). */
static const ovs_head_flop_row scclip_flops[] = {
    {"lof_distances", "matmul", 1, "ggD"},
    {"similarity", "matmul", 2, "ggD"},
    {"aggregate", "matmul", 3, "ggD"},
    {"fusion.in_proj", "linear", 3, "gDD"},
    {"fusion.attention", "attention", 2, "ggD"},
    {"fusion.out_proj", "linear", 1, "gDD"},
    {NULL, NULL, 0, NULL},
};

/* ---------------------------------------------------------------- the heads table
 * Defaults: tests/reference/SEGMENTATION_SPEC.md section 3; MaskCLIP uses the common protocol
 * under which SCLIP/ClearCLIP/NACLIP re-evaluate it. SC-CLIP: configs/base_config.py +
 * cfg_*.py, Resize(scale=(2048, 336)), slide 224 / 112, logit_scale 40 (VOC-21 50,
 * COCO-Object 55), openai_imagenet_template. */
static const ovs_head_info head_table[] = {
    {.name = "maskclip", .title = "MaskCLIP",
     .summary = "ViT: the last block's value path (no query-key attention); ResNet: the attention "
                "pool's v_proj and c_proj at every position",
     .towers = OVS_TOWER_RESNET | OVS_TOWER_VIT, .default_for = OVS_TOWER_RESNET,
     .flags = OVS_HEAD_KEEP_RESIDUAL | OVS_HEAD_KEY_SMOOTHING,
     .short_side = 336, .crop = 224, .stride = 112, .logit_scale = 40.0f, .templates = "imagenet80"},
    {.name = "sclip", .title = "SCLIP",
     .summary = "softmax(q q^T) + softmax(k k^T) attention, residual and FFN kept",
     .towers = OVS_TOWER_VIT, .flags = OVS_HEAD_KEEP_RESIDUAL, .attn = sclip_attn,
     .short_side = 336, .crop = 224, .stride = 112, .logit_scale = 40.0f, .templates = "imagenet80"},
    {.name = "clearclip", .title = "ClearCLIP",
     .summary = "softmax(q q^T) attention, no residual, no FFN",
     .towers = OVS_TOWER_VIT, .attn = clearclip_attn,
     .short_side = 448, .crop = 448, .stride = 224, .logit_scale = 50.0f, .templates = "imagenet80"},
    {.name = "naclip", .title = "NACLIP",
     .summary = "softmax(k k^T + Gaussian neighbourhood prior) attention, no residual, no FFN",
     .towers = OVS_TOWER_VIT, .default_for = OVS_TOWER_VIT, .flags = OVS_HEAD_SIGMA,
     .attn = naclip_attn,
     .short_side = 336, .crop = 224, .stride = 112, .logit_scale = 40.0f, .sigma = 5.0f,
     .templates = "imagenet80"},
    {.name = "scclip", .title = "SC-CLIP",
     .summary = "anomaly repair, mid-layer similarity calibration and multi-level fusion "
                "(tests/reference/scclip_reference.py)",
     .towers = OVS_TOWER_VIT, .min_layers = SCCLIP_MIN_LAYERS,
     .min_layers_why = "it reads blocks 3..9 and the output of block L-2, as on ViT-B/16",
     .vit = scclip_vit, .flops = scclip_flops,
     .short_side = 336, .crop = 224, .stride = 112, .logit_scale = 40.0f, .templates = "imagenet80"},
};

#define NUM_HEADS (sizeof head_table / sizeof head_table[0])

const ovs_head_info *ovs_head_table(int64_t *count) { return *count = (int64_t)NUM_HEADS, head_table; }

const ovs_head_info *ovs_head_by_name(const char *name) {
    return ovs_table_find(head_table, NUM_HEADS, sizeof head_table[0], name);
}
