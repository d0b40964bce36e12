/* DeepLabV3+ head of OpenTrans' DeepLabV3-OVS (ASPP, decoder with the res2 skip, per-pixel
 * embedding) on a DEEPLAB-style ResNet trunk, and the per-pixel text classifier.
 * Dimension letters: N batch, C5 res5 channels, Cl res2 channels, A ASPP/decoder width (256),
 * (h, w) res5 extent (stride 16), (hl, wl) res2 extent (stride 4), E embedding dim,
 * T text rows (classes + the no-object embedding), P pixels. */
#include "models/internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define LOW_CH 48   /* zs3 Decoder: res2 reduced to 48 channels */

struct ovs_deeplab {
    ovs_resnet *trunk;        /* borrowed, DEEPLAB style */
    ovs_convbn aspp[4];       /* (A, C5, 1|3, 1|3): 1x1, then 3x3 at dilations 6, 12, 18 */
    ovs_convbn pool;          /* (A, C5, 1, 1) image-pooling branch (image_pool only) */
    int image_pool;           /* 1: pooling branch; 0: res5 itself as the fifth branch */
    ovs_convbn proj;          /* (A, Ccat, 1, 1) after the concat, Ccat = 5A or 4A + C5 */
    ovs_convbn low;           /* (48, Cl, 1, 1) decoder.conv1 */
    ovs_convbn last[2];       /* (A, A + 48, 3, 3), (A, A, 3, 3) decoder.last_conv */
    ovs_matrix embed;         /* (E, A) embed_proj weight, conv-packed view of embed_packed */
    float *embed_packed;      /* owned (ovs_conv2d_pack) */
    const float *embed_b;     /* (E,) */
    int64_t C5, Cl, A, E;
    ovs_arena arena;
};

static int head_convbn(ovs_convbn *cb, const ovs_tensor_map *w, const char *prefix,
                       const char *conv, const char *bn, int64_t K, int64_t C, int64_t R,
                       int64_t dil) {
    char c[256], b[256];
    snprintf(c, sizeof c, "%s%s", prefix, conv);
    snprintf(b, sizeof b, "%s%s", prefix, bn);
    return ovs_convbn_init(cb, w, c, b, K, C, R, 1, R == 3 ? dil : 0, dil);
}

int ovs_deeplab_create(ovs_deeplab **out, ovs_resnet *trunk, const ovs_deeplab_config *cfg,
                       const ovs_tensor_map *w) {
    *out = NULL;
    if (!trunk || trunk->cfg.style != OVS_RESNET_DEEPLAB || trunk->cfg.has_attnpool)
        return ovs_set_error(OVS_ERR_ARG, "the DeepLab head needs a DEEPLAB-style ResNet trunk without attention pool");
    const char *prefix = cfg && cfg->prefix ? cfg->prefix : "";
    if (strlen(prefix) >= 100) return ovs_set_error(OVS_ERR_ARG, "DeepLab weight prefix too long");
    ovs_deeplab *m = ovs_calloc(1, sizeof *m);
    if (!m) return OVS_ERR_NOMEM;
    ovs_arena_init(&m->arena);
    m->trunk = trunk;
    m->C5 = trunk->channels;
    m->Cl = 4 * trunk->cfg.width;
    char name[256];
    const ovs_tensor *t;
    int rc;
    int64_t any4[4] = {-1, m->C5, 1, 1};
    snprintf(name, sizeof name, "%saspp.aspp1.atrous_conv.weight", prefix);
    if ((rc = ovs_tensor_map_check(&t, w, name, 4, any4))) goto error;
    m->A = t->shape[0];
    /* ASPP rates 6/12/18 at output stride 16 (12/24/36 at 8), as zs3's ASPP */
    const int64_t k = trunk->cfg.output_stride == 8 ? 2 : 1;
    const int64_t rates[4] = {1, 6 * k, 12 * k, 18 * k};
    for (int i = 0; i < 4; i++) {
        char c[64], b[64];
        snprintf(c, sizeof c, "aspp.aspp%d.atrous_conv", i + 1);
        snprintf(b, sizeof b, "aspp.aspp%d.bn", i + 1);
        if ((rc = head_convbn(&m->aspp[i], w, prefix, c, b, m->A, m->C5, i ? 3 : 1, rates[i]))) goto error;
    }
    int64_t projshape[4] = {m->A, -1, 1, 1};
    snprintf(name, sizeof name, "%saspp.conv1.weight", prefix);
    if ((rc = ovs_tensor_map_check(&t, w, name, 4, projshape))) goto error;
    const int64_t ccat = t->shape[1];
    if (ccat == 5 * m->A) m->image_pool = 1;
    else if (ccat == 4 * m->A + m->C5) m->image_pool = 0;
    else {
        rc = ovs_set_error(OVS_ERR_SHAPE, "'%s' has %lld input channels: expected %lld (image pooling) "
                           "or %lld (OpenTrans: res5 as the fifth branch)", name, (long long)ccat,
                           (long long)(5 * m->A), (long long)(4 * m->A + m->C5));
        goto error;
    }
    if (m->image_pool &&
        (rc = head_convbn(&m->pool, w, prefix, "aspp.global_avg_pool.1", "aspp.global_avg_pool.2", m->A, m->C5, 1, 1)))
        goto error;
    if ((rc = head_convbn(&m->proj, w, prefix, "aspp.conv1", "aspp.bn1", m->A, ccat, 1, 1)) ||
        (rc = head_convbn(&m->low, w, prefix, "decoder.conv1", "decoder.bn1", LOW_CH, m->Cl, 1, 1)) ||
        (rc = head_convbn(&m->last[0], w, prefix, "decoder.last_conv.0", "decoder.last_conv.1", m->A, m->A + LOW_CH, 3, 1)) ||
        (rc = head_convbn(&m->last[1], w, prefix, "decoder.last_conv.4", "decoder.last_conv.5", m->A, m->A, 3, 1)))
        goto error;
    snprintf(name, sizeof name, "%sembed_proj.weight", prefix);
    {   /* the 1x1 embed_proj conv (E, A), E any, packed once: only the packed copy stays */
        const ovs_tensor *t;
        int64_t shape[2] = {-1, m->A};
        if ((rc = ovs_tensor_map_check(&t, w, name, 2, shape))) goto error;
        m->E = shape[0] = t->shape[0];
        if ((rc = ovs_bind_conv_owned(&m->embed, &m->embed_packed, w, name, 2, shape))) goto error;
    }
    snprintf(name, sizeof name, "%sembed_proj.bias", prefix);
    if ((rc = ovs_bind_vec(&m->embed_b, w, name, m->E))) goto error;
    *out = m;
    return OVS_OK;
error:
    ovs_deeplab_free(m);
    return rc;
}

void ovs_deeplab_free(ovs_deeplab *m) {
    if (!m) return;
    for (int i = 0; i < 4; i++) ovs_convbn_release(&m->aspp[i]);
    ovs_convbn_release(&m->pool);
    ovs_convbn_release(&m->proj);
    ovs_convbn_release(&m->low);
    ovs_convbn_release(&m->last[0]);
    ovs_convbn_release(&m->last[1]);
    ovs_free(m->embed_packed);
    ovs_arena_free(&m->arena);
    ovs_free(m);
}

int64_t ovs_deeplab_embed_dim(const ovs_deeplab *m) { return m->E; }
int ovs_deeplab_image_pool(const ovs_deeplab *m) { return m->image_pool; }

int ovs_deeplab_out_shape(const ovs_deeplab *m, int64_t H, int64_t W, int64_t *h, int64_t *w) {
    int64_t C;
    return ovs_resnet_feature_shape(m->trunk, 0, H, W, &C, h, w);
}

static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

/* Memory: the trunk's work buffers are released as soon as res5 is copied out, and the head's
 * at the end of the call, so a call's peak is the larger of the two phases (not their sum) and
 * nothing stays allocated between calls; d2 reuses the concat buffer. */
typedef struct {             /* the per-pixel text classification fused into the head */
    const float *text;       /* (T, E), NULL: the head returns the embeddings */
    int64_t T;
    float scale;
    int softmax;
} deeplab_classifier;

static int deeplab_head(ovs_deeplab *m, float *embed, const float *low, const float *x,
                        int64_t N, int64_t hl, int64_t wl, int64_t h, int64_t w,
                        const deeplab_classifier *cls);

static int deeplab_run(ovs_deeplab *m, float *out, const float *images, int64_t N, int64_t H,
                       int64_t W, const deeplab_classifier *cls) {
    if (N <= 0) return ovs_set_error(OVS_ERR_ARG, "batch size must be positive, got %lld", (long long)N);
    int64_t hl, wl, C5, h, w;
    int rc;
    if ((rc = ovs_deeplab_out_shape(m, H, W, &hl, &wl))) return rc;
    ovs_arena_reset(&m->arena);
    float *low = ovs_arena_floats(&m->arena, (size_t)N * m->Cl * hl * wl);   /* (N, Cl, hl, wl) */
    if (!low) return OVS_ERR_NOMEM;
    float *res[4] = {low, NULL, NULL, NULL}, *x;
    if ((rc = ovs_resnet_trunk(m->trunk, images, N, H, W, res, &x, &C5, &h, &w))) return rc;
    float *x5 = ovs_arena_floats(&m->arena, (size_t)N * C5 * h * w);       /* (N, C5, h, w) */
    if (!x5) return OVS_ERR_NOMEM;
    memcpy(x5, x, (size_t)N * C5 * h * w * sizeof(float));
    ovs_arena_free(&m->trunk->arena);
    rc = deeplab_head(m, out, low, x5, N, hl, wl, h, w, cls);
    ovs_arena_free(&m->arena);
    return rc;
}

int ovs_deeplab_forward(ovs_deeplab *m, float *embed, const float *images, int64_t N, int64_t H,
                        int64_t W) {
    return deeplab_run(m, embed, images, N, H, W, NULL);
}

int ovs_deeplab_classify(ovs_deeplab *m, float *out, const float *images, int64_t N, int64_t H,
                         int64_t W, const float *text, int64_t T, float scale, int softmax) {
    if (!text || T < 1)
        return ovs_set_error(OVS_ERR_ARG, "ovs_deeplab_classify: need T >= 1 text rows, got %lld",
                             (long long)T);
    if (!isfinite(scale))
        return ovs_set_error(OVS_ERR_ARG, "ovs_deeplab_classify: scale must be finite");
    const deeplab_classifier cls = {text, T, scale, softmax};
    return deeplab_run(m, out, images, N, H, W, &cls);
}

/* Pixels per band of the fused classification: an (E, band) embedding buffer of 8 MiB at E = 1024. */
#define CLASSIFY_BAND 2048

/* embed_proj then ovs_pixel_classify, band by band of pixels of d (N, A, P): out (N, T, P).
 * The (E, P) embedding map is never held; band bounds depend on P only. */
static int classify_bands(ovs_deeplab *m, float *out, const float *d, int64_t N, int64_t P,
                          const deeplab_classifier *cls) {
    const int64_t A = m->A, E = m->E, T = cls->T;
    const int64_t band = P < CLASSIFY_BAND ? P : CLASSIFY_BAND;
    float *xb = ovs_arena_floats(&m->arena, (size_t)A * band);   /* (A, band) */
    float *eb = ovs_arena_floats(&m->arena, (size_t)E * band);   /* (E, band) */
    float *ob = ovs_arena_floats(&m->arena, (size_t)T * band);   /* (T, band) */
    if (!xb || !eb || !ob) return OVS_ERR_NOMEM;
    ovs_conv2d_params p = ovs_conv2d_defaults();
    int rc;
    for (int64_t n = 0; n < N; n++)
        for (int64_t p0 = 0; p0 < P; p0 += band) {
            const int64_t nb = P - p0 < band ? P - p0 : band;
            const float *dn = d + (size_t)n * A * P + p0;
            float *on = out + (size_t)n * T * P + p0;
            for (int64_t a = 0; a < A; a++)
                memcpy(xb + (size_t)a * nb, dn + (size_t)a * P, (size_t)nb * sizeof(float));
            if ((rc = ovs_conv2d_forward(eb, xb, &m->embed, m->embed_b, NULL, 1, A, 1, nb, E, 1, 1,
                                         &p, OVS_ACT_NONE, NULL)) ||
                (rc = ovs_pixel_classify(ob, eb, E, nb, cls->text, T, cls->scale, cls->softmax)))
                return rc;
            for (int64_t t = 0; t < T; t++)
                memcpy(on + (size_t)t * P, ob + (size_t)t * nb, (size_t)nb * sizeof(float));
        }
    return OVS_OK;
}

/* ASPP, decoder and embedding (or, with cls, the embedding's text classification) from res2
 * (low) and res5 (x), buffers from the head's arena. */
static int deeplab_head(ovs_deeplab *m, float *embed, const float *low, const float *x,
                        int64_t N, int64_t hl, int64_t wl, int64_t h, int64_t w,
                        const deeplab_classifier *cls) {
    const int64_t A = m->A, Cl = m->Cl, C5 = m->C5, Ccat = m->proj.C, Cd = m->last[0].C;
    int rc;
    const size_t hw = (size_t)h * w, hwl = (size_t)hl * wl;
    size_t sn = 1;
    for (int i = 0; i < 4; i++) sn = max_size(sn, ovs_convbn_scratch(&m->aspp[i], h, w));
    sn = max_size(sn, ovs_convbn_scratch(&m->proj, h, w));
    sn = max_size(sn, ovs_convbn_scratch(&m->low, hl, wl));
    sn = max_size(sn, ovs_convbn_scratch(&m->last[0], hl, wl));
    sn = max_size(sn, ovs_convbn_scratch(&m->last[1], hl, wl));
    float *scratch = ovs_arena_floats(&m->arena, sn);
    float *cat = ovs_arena_floats(&m->arena, (size_t)N * Ccat * hw);     /* (N, Ccat, h, w) */
    float *aspp = ovs_arena_floats(&m->arena, (size_t)N * A * hw);       /* (N, A, h, w) */
    float *cat2 = ovs_arena_floats(&m->arena, (size_t)N * Cd * hwl);     /* (N, A + 48, hl, wl) */
    float *d1 = ovs_arena_floats(&m->arena, (size_t)N * A * hwl);        /* (N, A, hl, wl) */
    float *pooled = ovs_arena_floats(&m->arena, (size_t)C5 + A);         /* (C5,) | (A,) */
    float *d2 = cat2;   /* (N, A, hl, wl): the concat is dead once last[0] has read it */
    if (!scratch || !cat || !aspp || !cat2 || !d1 || !pooled) return OVS_ERR_NOMEM;
    /* ASPP: each branch writes its channel slice of the concat, one image at a time */
    for (int64_t n = 0; n < N; n++) {
        const float *xn = x + (size_t)n * C5 * hw;
        float *cn = cat + (size_t)n * Ccat * hw;
        for (int i = 0; i < 4; i++)
            if ((rc = ovs_convbn_forward(&m->aspp[i], cn + (size_t)i * A * hw, xn, NULL, 1, h, w,
                                         OVS_ACT_RELU, scratch)))
                return rc;
        float *c5 = cn + (size_t)4 * A * hw;
        if (m->image_pool) {
            float *v = pooled + C5;
            if ((rc = ovs_adaptive_avgpool2d_forward(pooled, xn, C5, h, w, 1, 1)) ||
                (rc = ovs_convbn_forward(&m->pool, v, pooled, NULL, 1, 1, 1, OVS_ACT_RELU, scratch)))
                return rc;
            /* bilinear upsampling of a 1x1 map is a broadcast */
            for (int64_t c = 0; c < A; c++)
                for (size_t p = 0; p < hw; p++) c5[(size_t)c * hw + p] = v[c];
        } else {
            memcpy(c5, xn, (size_t)C5 * hw * sizeof(float));
        }
    }
    if ((rc = ovs_convbn_forward(&m->proj, aspp, cat, NULL, N, h, w, OVS_ACT_RELU, scratch))) return rc;
    /* decoder: [upsampled ASPP, reduced res2] -> two 3x3 conv-BN-ReLU */
    for (int64_t n = 0; n < N; n++) {
        float *cn = cat2 + (size_t)n * Cd * hwl;
        if ((rc = ovs_resize_bilinear(cn, aspp + (size_t)n * A * hw, A, h, w, hl, wl, 1)) ||
            (rc = ovs_convbn_forward(&m->low, cn + (size_t)A * hwl, low + (size_t)n * Cl * hwl,
                                     NULL, 1, hl, wl, OVS_ACT_RELU, scratch)))
            return rc;
    }
    if ((rc = ovs_convbn_forward(&m->last[0], d1, cat2, NULL, N, hl, wl, OVS_ACT_RELU, scratch)) ||
        (rc = ovs_convbn_forward(&m->last[1], d2, d1, NULL, N, hl, wl, OVS_ACT_RELU, scratch)))
        return rc;
    /* embed_proj = ReLU (a no-op after the decoder's ReLU) then a per-pixel Linear: a 1x1 conv */
    if (cls) return classify_bands(m, embed, d2, N, (int64_t)hwl, cls);
    ovs_conv2d_params p = ovs_conv2d_defaults();
    return ovs_conv2d_forward(embed, d2, &m->embed, m->embed_b, NULL, N, A, hl, wl, m->E, 1, 1,
                              &p, OVS_ACT_NONE, NULL);
}

/* ---------------------------------------------------------------- pixel classifier */
static int classify_check(const char *op, float *out, const float *embed, int64_t E, int64_t P,
                          const float *text, int64_t T, float scale) {
    if (!out || !embed || !text) return ovs_set_error(OVS_ERR_ARG, "%s: NULL buffer", op);
    if (E < 1 || P < 0 || T < 1)
        return ovs_set_error(OVS_ERR_ARG, "%s: need E >= 1, P >= 0, T >= 1, got %lld, %lld, %lld", op,
                             (long long)E, (long long)P, (long long)T);
    if (!isfinite(scale)) return ovs_set_error(OVS_ERR_ARG, "%s: scale must be finite", op);
    return OVS_OK;
}

/* out[:, p] = softmax(out[:, p]) for a (T, P) block, pixels in [p0, p1) (at most PIX_TILE):
 * row by row over the pixels, so every pass reads contiguous floats; per pixel the same max,
 * expf and double sum in increasing t as a column at a time. */
#define PIX_TILE 256

static void softmax_columns(float *out, int64_t T, int64_t P, int64_t p0, int64_t p1) {
    float mx[PIX_TILE];
    double sum[PIX_TILE];
    const int64_t n = p1 - p0;
    float *o = out + p0;
    for (int64_t q = 0; q < n; q++) {
        mx[q] = o[q];
        sum[q] = 0;
    }
    for (int64_t t = 1; t < T; t++)
        for (int64_t q = 0; q < n; q++) mx[q] = fmaxf(mx[q], o[t * P + q]);
    for (int64_t t = 0; t < T; t++)
        for (int64_t q = 0; q < n; q++) {
            float e = expf(o[t * P + q] - mx[q]);
            o[t * P + q] = e;
            sum[q] += e;
        }
    for (int64_t q = 0; q < n; q++) mx[q] = (float)(1.0 / sum[q]);   /* now the inverse sums */
    for (int64_t t = 0; t < T; t++)
        for (int64_t q = 0; q < n; q++) o[t * P + q] *= mx[q];
}

int ovs_pixel_classify(float *out, const float *embed, int64_t E, int64_t P, const float *text,
                       int64_t T, float scale, int softmax) {
    int rc = classify_check("ovs_pixel_classify", out, embed, E, P, text, T, scale);
    if (rc || P == 0) return rc;
    /* the dot products as one GEMM: a 1x1 conv of the (E, P) map with the (T, E) text rows */
    ovs_matrix tm = ovs_matrix_dense(text, T, E);
    ovs_conv2d_params p = ovs_conv2d_defaults();
    if ((rc = ovs_conv2d_forward(out, embed, &tm, NULL, NULL, 1, E, 1, P, T, 1, 1, &p, OVS_ACT_NONE, NULL)))
        return rc;
    const int64_t tiles = (P + PIX_TILE - 1) / PIX_TILE;
#pragma omp parallel for schedule(static) num_threads(ovs_get_num_threads())
    for (int64_t ti = 0; ti < tiles; ti++) {
        const int64_t p0 = ti * PIX_TILE, p1 = p0 + PIX_TILE < P ? p0 + PIX_TILE : P;
        double ss[PIX_TILE];
        for (int64_t q = p0; q < p1; q++) ss[q - p0] = 0;
        for (int64_t e = 0; e < E; e++) {
            const float *row = embed + (size_t)e * P;
            for (int64_t q = p0; q < p1; q++) ss[q - p0] += (double)row[q] * row[q];
        }
        float f[PIX_TILE];
        for (int64_t q = p0; q < p1; q++) f[q - p0] = scale / ((float)sqrt(ss[q - p0]) + 1e-7f);
        for (int64_t t = 0; t < T; t++) {
            float *o = out + (size_t)t * P;
            for (int64_t q = p0; q < p1; q++) o[q] *= f[q - p0];
        }
        if (softmax) softmax_columns(out, T, P, p0, p1);
    }
    return OVS_OK;
}

int ovs_pixel_classify_naive(float *out, const float *embed, int64_t E, int64_t P,
                             const float *text, int64_t T, float scale, int softmax) {
    int rc = classify_check("ovs_pixel_classify_naive", out, embed, E, P, text, T, scale);
    if (rc) return rc;
    for (int64_t p = 0; p < P; p++) {
        double ss = 0;
        for (int64_t e = 0; e < E; e++) ss += (double)embed[e * P + p] * embed[e * P + p];
        const double norm = sqrt(ss) + 1e-7;
        for (int64_t t = 0; t < T; t++) {
            double dot = 0;
            for (int64_t e = 0; e < E; e++) dot += (double)text[t * E + e] * embed[e * P + p];
            out[t * P + p] = (float)(scale * dot / norm);
        }
    }
    if (softmax)
        for (int64_t p0 = 0; p0 < P; p0 += PIX_TILE)
            softmax_columns(out, T, P, p0, p0 + PIX_TILE < P ? p0 + PIX_TILE : P);
    return OVS_OK;
}
