/* CLIP ModifiedResNet (open_clip layout): 3-conv stem, anti-aliased bottlenecks (AvgPool before
 * the stride), attention pooling; and the DeepLab variant of the same weights (ovs_resnet_style:
 * strided/dilated 3x3s, strided 1x1 shortcuts, output stride 16 or 8). Every BatchNorm is folded
 * into its conv at load. */
#include "models/internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* The conv's folded weight straight from a CSR weight (never dense): each row's values scaled
 * by its BatchNorm factor (ovs_batchnorm_fold on the row's non-zeros: the same floats as the
 * dense fold), zeros the fold makes dropped. Sets weight/csr/sparse/nnz and the bias. A conv
 * too wide for 16-bit columns (C*R*S > 65536) is expanded to dense instead. */
static int convbn_init_sparse(ovs_convbn *cb, const ovs_sparse_tensor *sp, const int64_t *wshape,
                              const float *g, const float *b, const float *mean, const float *var) {
    int rc;
    if (sp->ndim != 4 || sp->shape[0] != wshape[0] || sp->shape[1] != wshape[1] ||
        sp->shape[2] != wshape[2] || sp->shape[3] != wshape[3])
        return ovs_set_error(OVS_ERR_SHAPE, "sparse weight '%s' has dense shape (%lld, %lld, %lld, %lld), "
                             "expected (%lld, %lld, %lld, %lld)", sp->name,
                             (long long)sp->shape[0], (long long)(sp->ndim > 1 ? sp->shape[1] : 0),
                             (long long)(sp->ndim > 2 ? sp->shape[2] : 0),
                             (long long)(sp->ndim > 3 ? sp->shape[3] : 0), (long long)wshape[0],
                             (long long)wshape[1], (long long)wshape[2], (long long)wshape[3]);
    if ((rc = ovs_sparse_tensor_check(sp))) return rc;
    const int64_t K = wshape[0], L = wshape[1] * wshape[2] * wshape[3];
    cb->bias = ovs_malloc((size_t)K * sizeof(float));
    float *val = ovs_malloc((sp->nnz ? (size_t)sp->nnz : 1) * sizeof(float));
    if (!cb->bias || !val) {
        ovs_free(val);
        return OVS_ERR_NOMEM;
    }
    for (int64_t k = 0; k < K; k++) {
        const int64_t at = sp->row_ptr[k], n = sp->row_ptr[k + 1] - at;
        if ((rc = ovs_batchnorm_fold(val + at, cb->bias + k, sp->val + at, NULL, g + k, b + k,
                                     mean + k, var + k, 1e-5f, 1, n))) {
            ovs_free(val);
            return rc;
        }
    }
    ovs_csr *m = &cb->csr;
    const int dense = L > 65536;
    float *wt = NULL;
    if (dense && (rc = ovs_convbn_weight_buffer(cb, &wt))) {
        ovs_free(val);
        return rc;
    }
    if (dense) memset(wt, 0, (size_t)K * (size_t)L * sizeof(float));
    m->row_ptr = ovs_malloc(((size_t)K + 1) * sizeof(int64_t));
    m->col = dense ? NULL : ovs_malloc((sp->nnz ? (size_t)sp->nnz : 1) * sizeof(uint16_t));
    if (!m->row_ptr || (!dense && !m->col)) {
        ovs_free(val);
        ovs_free(wt);
        ovs_csr_free(m);
        return OVS_ERR_NOMEM;
    }
    int64_t nnz = 0;
    for (int64_t k = 0; k < K; k++) {
        m->row_ptr[k] = nnz;
        for (int64_t j = sp->row_ptr[k]; j < sp->row_ptr[k + 1]; j++) {
            if (val[j] == 0.0f) continue;
            const int64_t c = sp->col16 ? (int64_t)sp->col16[j] : (int64_t)sp->col32[j];
            if (dense) {
                wt[(size_t)k * (size_t)L + (size_t)c] = val[j];
            } else {
                m->col[nnz] = (uint16_t)c;
                val[nnz] = val[j];   /* compacting in place: nnz <= j */
            }
            nnz++;
        }
    }
    m->row_ptr[K] = nnz;
    cb->nnz = nnz;
    if (dense) {
        ovs_free(val);
        ovs_csr_free(m);
        return ovs_convbn_set_dense(cb, wt);   /* packs it */
    }
    m->val = val;
    m->rows = K;
    m->cols = L;
    m->nnz = nnz;
    cb->w = ovs_matrix_dense(NULL, K, L);
    cb->sparse = 1;
    return OVS_OK;
}

int ovs_convbn_init(ovs_convbn *cb, const ovs_tensor_map *w, const char *conv, const char *bn,
                    int64_t K, int64_t C, int64_t R, int64_t stride, int64_t pad, int64_t dil) {
    char name[512];
    int64_t wshape[4] = {K, C, R, R}, vshape[1] = {K};
    const float *src[5];      /* weight, BN weight, bias, running_mean, running_var */
    float *scratch[5] = {NULL};
    static const char *const suffix[4] = {"weight", "bias", "running_mean", "running_var"};
    int rc;
    memset(cb, 0, sizeof *cb);
    if (!(cb->plan = ovs_malloc(sizeof *cb->plan))) return OVS_ERR_NOMEM;
    memset(cb->plan, 0, sizeof *cb->plan);
    /* Read for one use: only the folded copy stays resident. */
    snprintf(name, sizeof name, "%s.weight", conv);
    /* a weight given as CSR is folded straight into the sparse form (never dense) */
    const ovs_sparse_tensor *sp = ovs_tensor_map_find(w, name) ? NULL : ovs_tensor_map_find_sparse(w, name);
    rc = sp ? OVS_OK : ovs_tensor_map_read(NULL, &src[0], &scratch[0], w, name, 4, wshape);
    for (int i = 0; i < 4 && !rc; i++) {
        snprintf(name, sizeof name, "%s.%s", bn, suffix[i]);
        rc = ovs_tensor_map_read(NULL, &src[1 + i], &scratch[1 + i], w, name, 1, vshape);
    }
    size_t L = (size_t)C * R * R;
    cb->K = K;
    cb->C = C;
    cb->R = cb->S = R;
    cb->p = ovs_conv2d_defaults();
    cb->p.stride_h = cb->p.stride_w = stride;
    cb->p.pad_h = cb->p.pad_w = pad;
    cb->p.dil_h = cb->p.dil_w = dil;
    snprintf(cb->name, sizeof cb->name, "%s", conv);
    if (!rc && sp) {
        rc = convbn_init_sparse(cb, sp, wshape, src[1], src[2], src[3], src[4]);
        for (int i = 0; i < 5; i++) ovs_free_transient(scratch[i]);
        /* the sparse kernel runs stride 1 only: a strided conv is held dense */
        if (!rc && cb->sparse && stride != 1) rc = ovs_convbn_make_dense(cb);
        return rc;
    }
    /* folded into a buffer of the packed size, then packed in place */
    float *buf = NULL;
    if (!rc) rc = ovs_convbn_weight_buffer(cb, &buf);
    if (!rc && !(cb->bias = ovs_malloc((size_t)K * sizeof(float)))) rc = OVS_ERR_NOMEM;
    if (!rc)
        rc = ovs_batchnorm_fold(buf, cb->bias, src[0], NULL, src[1], src[2], src[3], src[4],
                                1e-5f, K, (int64_t)L);
    for (int i = 0; i < 5; i++) ovs_free_transient(scratch[i]);
    if (rc) {
        ovs_free(buf);
        return rc;
    }
    for (size_t i = 0; i < (size_t)K * L; i++) cb->nnz += buf[i] != 0.0f;
    return ovs_convbn_set_dense(cb, buf);
}

int ovs_convbn_weight_buffer(const ovs_convbn *cb, float **out) {
    size_t n = ovs_conv2d_packed_floats(cb->K, cb->C * cb->R * cb->S, cb->p.groups);
    if (n == SIZE_MAX || n > SIZE_MAX / sizeof(float))
        return ovs_set_error(OVS_ERR_OVERFLOW, "the weight of %s is too large", cb->name);
    if (!(*out = ovs_malloc(n ? n * sizeof(float) : 1)))
        return ovs_set_error(OVS_ERR_NOMEM, "out of memory for the weight of %s", cb->name);
    return OVS_OK;
}

int ovs_convbn_set_dense(ovs_convbn *cb, float *buf) {
    const int64_t L = cb->C * cb->R * cb->S;
    int rc = ovs_conv2d_pack_inplace(buf, cb->K, L, cb->p.groups);
    if (rc) {
        ovs_free(buf);
        return rc;
    }
    ovs_free(cb->weight);
    cb->weight = buf;
    cb->w = ovs_conv2d_packed(buf, cb->K, L, cb->p.groups);
    return OVS_OK;
}

void ovs_convbn_release(ovs_convbn *cb) {
    ovs_sparse_plan_free(cb->plan);
    ovs_free(cb->plan);
    cb->plan = NULL;
    ovs_csr_free(&cb->csr);
    ovs_free(cb->weight);
    ovs_free(cb->bias);
    cb->weight = cb->bias = NULL;
}

/* The attention pool's four projections (C, C) x3 and (E, C), E = -1: any, read and packed into
 * one owned block (the raw weights are not kept); their biases borrowed. */
static int attnpool_bind(ovs_resnet *m, const ovs_tensor_map *w, int64_t C, int64_t E) {
    static const char *const proj[4] = {"q_proj", "k_proj", "v_proj", "c_proj"};
    ovs_matrix *mats[4] = {&m->q, &m->k, &m->v, &m->c};
    const float **bias[4] = {&m->qb, &m->kb, &m->vb, &m->cb};
    char name[512];
    const ovs_tensor *t;
    int64_t rows[4] = {C, C, C, E};
    int rc;
    snprintf(name, sizeof name, "%sattnpool.c_proj.weight", m->prefix);
    int64_t cshape[2] = {E, C};
    if ((rc = ovs_tensor_map_check(&t, w, name, 2, cshape))) return rc;
    rows[3] = t->shape[0];
    size_t off[5] = {0}, total;
    for (int i = 0; i < 4; i++) {
        size_t n = ovs_matrix_packed_floats(rows[i], C);
        if (n == SIZE_MAX || __builtin_add_overflow(off[i], n, &off[i + 1]))
            return ovs_set_error(OVS_ERR_OVERFLOW, "attention-pool weights are too large");
    }
    if (ovs_mul_size(&total, off[4], sizeof(float)))
        return ovs_set_error(OVS_ERR_OVERFLOW, "attention-pool weights are too large");
    m->attn_packed = ovs_malloc(total ? total : 1);
    if (!m->attn_packed) return OVS_ERR_NOMEM;
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof name, "%sattnpool.%s.weight", m->prefix, proj[i]);
        if ((rc = ovs_bind_packed(mats[i], m->attn_packed + off[i], w, name, rows[i], C))) return rc;
        snprintf(name, sizeof name, "%sattnpool.%s.bias", m->prefix, proj[i]);
        if ((rc = ovs_bind_vec(bias[i], w, name, rows[i]))) return rc;
    }
    return OVS_OK;
}

int ovs_resnet_create(ovs_resnet **out, const ovs_resnet_config *cfg, const ovs_tensor_map *w) {
    *out = NULL;
    int rc = ovs_model_check_prefix(cfg->prefix, "ResNet");
    if (rc) return rc;
    if (cfg->width <= 0 || cfg->width % 2)
        return ovs_set_error(OVS_ERR_ARG, "ResNet width must be positive and even, got %lld", (long long)cfg->width);
    int64_t total = 0;
    for (int s = 0; s < 4; s++) {
        if (cfg->layers[s] <= 0 || cfg->layers[s] > 1000)
            return ovs_set_error(OVS_ERR_ARG, "ResNet stage %d has %lld blocks", s + 1, (long long)cfg->layers[s]);
        total += cfg->layers[s];
    }
    /* per stage: stride of its first block and dilation of its 3x3s (times the multi-grid) */
    int64_t st[4] = {1, 2, 2, 2}, dil[4] = {1, 1, 1, 1};
    const int64_t os = cfg->output_stride ? cfg->output_stride : 32;
    if (cfg->style == OVS_RESNET_CLIP) {
        if (os != 32)
            return ovs_set_error(OVS_ERR_ARG, "a CLIP-style ResNet has output stride 32, got %lld", (long long)os);
    } else if (cfg->style == OVS_RESNET_DEEPLAB) {
        if (os == 16) { st[3] = 1; dil[3] = 2; }
        else if (os == 8) { st[2] = st[3] = 1; dil[2] = 2; dil[3] = 4; }
        else if (os != 32)
            return ovs_set_error(OVS_ERR_ARG, "DeepLab ResNet output stride must be 8, 16 or 32, got %lld", (long long)os);
        if (os != 32 && cfg->layers[3] != 3)
            return ovs_set_error(OVS_ERR_ARG, "the DeepLab multi-grid last stage has 3 blocks, got %lld",
                                 (long long)cfg->layers[3]);
    } else {
        return ovs_set_error(OVS_ERR_ARG, "unknown ResNet style %d", cfg->style);
    }
    if (cfg->has_attnpool && cfg->style != OVS_RESNET_CLIP)
        return ovs_set_error(OVS_ERR_ARG, "only a CLIP-style ResNet has an attention pool");
    ovs_resnet *m = ovs_calloc(1, sizeof *m);
    if (!m) return OVS_ERR_NOMEM;
    m->cfg = *cfg;
    m->cfg.output_stride = os;
    ovs_model_keep_prefix(m->prefix, sizeof m->prefix, &m->cfg.prefix, &m->arena);
    char conv[256], bn[256];
    const int64_t wd = cfg->width;
    const int64_t stem_k[3] = {wd / 2, wd / 2, wd}, stem_c[3] = {3, wd / 2, wd / 2};
    for (int i = 0; i < 3; i++) {
        snprintf(conv, sizeof conv, "%sconv%d", m->prefix, i + 1);
        snprintf(bn, sizeof bn, "%sbn%d", m->prefix, i + 1);
        if ((rc = ovs_convbn_init(&m->stem[i], w, conv, bn, stem_k[i], stem_c[i], 3, i == 0 ? 2 : 1, 1, 1)))
            goto error;
    }
    m->blocks = ovs_calloc((size_t)total, sizeof(ovs_bottleneck));
    if (!m->blocks) { rc = OVS_ERR_NOMEM; goto error; }
    m->nblocks = total;
    int64_t inplanes = wd, bi = 0;
    for (int s = 0; s < 4; s++) {
        int64_t planes = wd << s;
        for (int64_t j = 0; j < cfg->layers[s]; j++, bi++) {
            ovs_bottleneck *b = &m->blocks[bi];
            b->inplanes = inplanes;
            b->planes = planes;
            static const int64_t grid[3] = {1, 2, 4};   /* zs3 _make_MG_unit blocks */
            b->stride = j == 0 ? st[s] : 1;
            b->dilation = dil[s] * (s == 3 && os != 32 ? grid[j] : 1);
            const int deeplab = cfg->style == OVS_RESNET_DEEPLAB;
            const int64_t cst = deeplab ? b->stride : 1, d = b->dilation;
            char base[160];
            snprintf(base, sizeof base, "%slayer%d.%lld", m->prefix, s + 1, (long long)j);
#define CB(dst, c, n, K, C, R, st, pad, dl) \
    (snprintf(conv, sizeof conv, "%s." c, base), snprintf(bn, sizeof bn, "%s." n, base), \
     ovs_convbn_init(dst, w, conv, bn, K, C, R, st, pad, dl))
            if ((rc = CB(&b->conv1, "conv1", "bn1", planes, inplanes, 1, 1, 0, 1)) ||
                (rc = CB(&b->conv2, "conv2", "bn2", planes, planes, 3, cst, d, d)) ||
                (rc = CB(&b->conv3, "conv3", "bn3", planes * 4, planes, 1, 1, 0, 1)))
                goto error;
            b->has_down = b->stride > 1 || inplanes != planes * 4;
            if (b->has_down && (rc = CB(&b->down, "downsample.0", "downsample.1", planes * 4, inplanes, 1, cst, 0, 1)))
                goto error;
#undef CB
            inplanes = planes * 4;
        }
    }
    m->channels = inplanes;
    if (cfg->has_attnpool) {
        const int64_t C = inplanes, g = cfg->grid;
        char name[512];
        const ovs_tensor *t;
        int64_t pos_shape[2] = {1 + g * g, C};
        if (g <= 0 || cfg->heads <= 0 || C % cfg->heads) {
            rc = ovs_set_error(OVS_ERR_ARG, "attention pool needs grid > 0 and heads dividing %lld", (long long)C);
            goto error;
        }
        snprintf(name, sizeof name, "%sattnpool.positional_embedding", m->prefix);
        if ((rc = ovs_tensor_map_get(&t, w, name, 2, pos_shape))) goto error;
        m->pos = t->data;
        if ((rc = attnpool_bind(m, w, C, cfg->embed_dim > 0 ? cfg->embed_dim : -1))) goto error;
        m->cfg.embed_dim = m->c.rows;
    }
    *out = m;
    return OVS_OK;
error:
    ovs_resnet_free(m);
    return rc;
}

void ovs_resnet_release_workspace(ovs_resnet *m) {
    if (m) ovs_arena_free(&m->arena);
}

void ovs_resnet_free(ovs_resnet *m) {
    if (!m) return;
    for (int i = 0; i < 3; i++) ovs_convbn_release(&m->stem[i]);
    for (int64_t i = 0; m->blocks && i < m->nblocks; i++) {
        ovs_convbn_release(&m->blocks[i].conv1);
        ovs_convbn_release(&m->blocks[i].conv2);
        ovs_convbn_release(&m->blocks[i].conv3);
        ovs_convbn_release(&m->blocks[i].down);
        ovs_free(m->blocks[i].kconst);
    }
    ovs_free(m->blocks);
    ovs_free(m->attn_packed);
    ovs_pos_cache_free(&m->pos_cache);
    ovs_arena_free(&m->arena);
    ovs_free(m);
}

const ovs_resnet_config *ovs_resnet_get_config(const ovs_resnet *m) { return &m->cfg; }

int64_t ovs_bottleneck_out_size(const ovs_resnet *m, const ovs_bottleneck *b, int64_t h) {
    if (m->cfg.style == OVS_RESNET_DEEPLAB) return (h - 1) / b->stride + 1;  /* strided 3x3, pad = dil */
    return h / b->stride;                                                   /* AvgPool(stride) */
}

/* Spatial size after the stem (conv s2 p1, two convs s1, avgpool 2) and after each stage. */
static void stage_sizes(const ovs_resnet *m, int64_t H, int64_t W, int64_t hs[5], int64_t ws[5]) {
    int64_t h = ovs_conv2d_out_size(H, 3, 2, 1, 1), w = ovs_conv2d_out_size(W, 3, 2, 1, 1);
    hs[0] = h / 2;
    ws[0] = w / 2;
    int64_t bi = 0;
    for (int s = 0; s < 4; s++) {
        hs[s + 1] = hs[s];
        ws[s + 1] = ws[s];
        for (int64_t j = 0; j < m->cfg.layers[s]; j++, bi++) {
            hs[s + 1] = ovs_bottleneck_out_size(m, &m->blocks[bi], hs[s + 1]);
            ws[s + 1] = ovs_bottleneck_out_size(m, &m->blocks[bi], ws[s + 1]);
        }
    }
}

int ovs_resnet_feature_shape(const ovs_resnet *m, int stage, int64_t H, int64_t W, int64_t *C,
                             int64_t *h, int64_t *w) {
    if (stage < 0 || stage > 3) return ovs_set_error(OVS_ERR_ARG, "stage must be 0..3 (res2..res5)");
    if (H < 32 || W < 32)
        return ovs_set_error(OVS_ERR_ARG, "ResNet input must be at least 32x32, got %lldx%lld", (long long)H, (long long)W);
    int64_t hs[5], ws[5];
    stage_sizes(m, H, W, hs, ws);
    *C = 4 * (m->cfg.width << stage);
    *h = hs[stage + 1];
    *w = ws[stage + 1];
    return OVS_OK;
}

int ovs_convbn_forward(const ovs_convbn *cb, float *out, const float *in, const float *residual,
                          int64_t N, int64_t H, int64_t W, ovs_act act, float *scratch) {
    if (cb->sparse && cb->plan)
        return ovs_conv2d_sparse_forward_planned(out, in, &cb->csr, cb->bias, residual, N, cb->C,
                                                 H, W, cb->K, cb->R, cb->S, &cb->p, act, scratch,
                                                 cb->plan);
    if (cb->sparse)
        return ovs_conv2d_sparse_forward(out, in, &cb->csr, cb->bias, residual, N, cb->C, H, W,
                                         cb->K, cb->R, cb->S, &cb->p, act, scratch);
    return ovs_conv2d_forward(out, in, &cb->w, cb->bias, residual, N, cb->C, H, W, cb->K, cb->R,
                              cb->S, &cb->p, act, scratch);
}

size_t ovs_convbn_scratch(const ovs_convbn *cb, int64_t H, int64_t W) {
    if (cb->sparse)
        return ovs_conv2d_sparse_scratch_floats(cb->C, H, W, cb->K, cb->R, cb->S, cb->csr.nnz,
                                                &cb->p);
    return ovs_conv2d_scratch_floats(cb->C, H, W, cb->K, cb->R, cb->S, &cb->p);
}

/* A conv2 without non-zeros (global magnitude pruning empties whole layers: at 90% of
 * open_clip's default-initialised RN50, every 3x3 of layer2..4) outputs its bias at every
 * pixel: the block's branch is then one vector per image. conv1 is dead (its output reaches
 * nothing but conv2's zero weights; sparse execution never reads inputs through zeros), the
 * pool averages equal values and conv3 maps a constant input to a constant. Taken where
 * conv2 runs sparse, or on the dense kernel in a model running sparse (a strided DeepLab
 * conv2, which the sparse kernel does not take): never in a dense model. */
static int const_branch(const ovs_resnet *m, const ovs_bottleneck *b) {
    return b->conv2.nnz == 0 && (b->conv2.sparse || m->sparse_on);
}

/* The constant branch's conv3 output (4 planes,), the same for every input: conv3 on one pixel
 * whose channels are relu(conv2's bias), pooled over st x st equal values as the full map
 * would be (the pool's own sum and division). Computed on first use into b->kconst (freed when
 * ovs_resnet_sparsify changes the kernels); work (P, st, st) then (P,). */
static int const_branch_vector(ovs_bottleneck *b, float *work, int64_t st, float *scratch) {
    const int64_t P = b->planes, ss = st * st;
    float *patch = work, *v = work + P * ss;
    for (int64_t c = 0; c < P; c++) {
        const float z = b->conv2.bias ? b->conv2.bias[c] : 0.0f, r = z > 0.0f ? z : 0.0f;
        for (int64_t t = 0; t < ss; t++) patch[c * ss + t] = r;
    }
    int rc = ss > 1 ? ovs_avgpool2d_forward(v, patch, P, st, st, st, st, st, st, 0, 0, 1)
                    : (memcpy(v, patch, (size_t)P * sizeof(float)), OVS_OK);
    if (rc) return rc;
    float *u = ovs_malloc((size_t)(4 * P) * sizeof(float));
    if (!u) return OVS_ERR_NOMEM;
    if ((rc = ovs_convbn_forward(&b->conv3, u, v, NULL, 1, 1, 1, OVS_ACT_NONE, scratch))) {
        ovs_free(u);
        return rc;
    }
    b->kconst = u;
    return OVS_OK;
}

/* x (N, K, hw) <- relu(...relu(relu(x + u[0][k]) + u[1][k]) ... + u[n-1][k]): the epilogues of n
 * consecutive constant branches (conv3's over its residual), each as its own pass would compute
 * it, over 1024 values at a time (one pass over memory for the chain; layer3 of a 90% RN50 is
 * six such blocks). */
#define KB_CHAIN 8
static void add_const_relu(float *x, const float *const *u, int n, int64_t N, int64_t K, int64_t hw) {
#pragma omp parallel for schedule(static) if (N * K * hw >= 32768) num_threads(ovs_get_num_threads())
    for (int64_t c = 0; c < N * K; c++) {
        float a[KB_CHAIN];
        for (int i = 0; i < n; i++) a[i] = u[i][c % K];
        for (int64_t t0 = 0; t0 < hw; t0 += 1024) {
            float *p = x + c * hw + t0;
            const int64_t len = hw - t0 < 1024 ? hw - t0 : 1024;
            for (int i = 0; i < n; i++)
                for (int64_t t = 0; t < len; t++) {
                    const float y = p[t] + a[i];
                    p[t] = y > 0.0f ? y : 0.0f;
                }
        }
    }
}

int ovs_resnet_trunk(ovs_resnet *m, const float *images, int64_t N, int64_t H, int64_t W,
                     float **res_out, float **res5, int64_t *C5, int64_t *h5, int64_t *w5) {
    if (N <= 0) return ovs_set_error(OVS_ERR_ARG, "batch size must be positive, got %lld", (long long)N);
    if (H < 32 || W < 32)
        return ovs_set_error(OVS_ERR_ARG, "ResNet input must be at least 32x32, got %lldx%lld", (long long)H, (long long)W);
    ovs_arena_reset(&m->arena);
    const int64_t wd = m->cfg.width;
    const int clip = m->cfg.style == OVS_RESNET_CLIP;
    int64_t hs[5], ws[5];
    stage_sizes(m, H, W, hs, ws);
    const int64_t h1 = ovs_conv2d_out_size(H, 3, 2, 1, 1), w1 = ovs_conv2d_out_size(W, 3, 2, 1, 1);
    /* Plan: each buffer is sized by the largest activation it holds (see the loop below):
     *   X0/X1  block inputs/outputs, the stem's last conv and pool
     *   T1     stem convs 1; conv1 outputs; the CLIP shortcut's pooled input
     *   T2     stem conv 2; conv2 outputs (before the CLIP pool)
     *   T3     the CLIP pooled conv2 output;   SC  the projection shortcut */
    const size_t stem_full = (size_t)N * wd * h1 * w1, stem_half = (size_t)N * (wd / 2) * h1 * w1;
    size_t nx = stem_full, n1 = stem_half, n2 = stem_half, n3 = 0, nsc = 0, nk = 0;
#define GROW(v, x) do { size_t x_ = (x); if (x_ > (v)) (v) = x_; } while (0)
    GROW(nx, (size_t)N * wd * hs[0] * ws[0]);
    size_t scratch_n = ovs_convbn_scratch(&m->stem[0], H, W), t;
    for (int i = 1; i < 3; i++)
        if ((t = ovs_convbn_scratch(&m->stem[i], h1, w1)) > scratch_n) scratch_n = t;
    {
        int64_t hi = hs[0], wi = ws[0];
        for (int64_t i = 0; i < m->nblocks; i++) {
            const ovs_bottleneck *b = &m->blocks[i];
            const int64_t ho = ovs_bottleneck_out_size(m, b, hi), wo = ovs_bottleneck_out_size(m, b, wi);
            const ovs_conv2d_params *p2 = &b->conv2.p;
            const int64_t h2 = ovs_conv2d_out_size(hi, 3, p2->stride_h, p2->pad_h, p2->dil_h);
            const int64_t w2 = ovs_conv2d_out_size(wi, 3, p2->stride_w, p2->pad_w, p2->dil_w);
            const int pooled = clip && b->stride > 1;
            GROW(nx, (size_t)N * b->inplanes * hi * wi);
            GROW(nx, (size_t)N * 4 * b->planes * ho * wo);
            GROW(n1, (size_t)N * b->planes * hi * wi);
            if (pooled && b->has_down) GROW(n1, (size_t)N * b->inplanes * ho * wo);
            GROW(n2, (size_t)N * b->planes * h2 * w2);
            if (pooled) GROW(n3, (size_t)N * b->planes * ho * wo);
            if (b->has_down) GROW(nsc, (size_t)N * 4 * b->planes * ho * wo);
            if (const_branch(m, b)) {
                const int64_t cs = clip ? b->stride : 1;
                GROW(nk, (size_t)b->planes * (cs * cs + 1));
                GROW(scratch_n, ovs_convbn_scratch(&b->conv3, 1, 1));
            }
            const size_t ts[4] = {ovs_convbn_scratch(&b->conv1, hi, wi),
                                  ovs_convbn_scratch(&b->conv2, hi, wi),
                                  ovs_convbn_scratch(&b->conv3, ho, wo),
                                  b->has_down ? ovs_convbn_scratch(&b->down, clip ? ho : hi, clip ? wo : wi) : 0};
            for (int q = 0; q < 4; q++)
                if (ts[q] > scratch_n) scratch_n = ts[q];
            hi = ho;
            wi = wo;
        }
    }
#undef GROW
    float *X0 = ovs_arena_floats(&m->arena, nx), *X1 = ovs_arena_floats(&m->arena, nx);
    float *T1 = ovs_arena_floats(&m->arena, n1), *T2 = ovs_arena_floats(&m->arena, n2);
    float *T3 = n3 ? ovs_arena_floats(&m->arena, n3) : NULL;
    float *SC = nsc ? ovs_arena_floats(&m->arena, nsc) : NULL;
    float *scratch = ovs_arena_floats(&m->arena, scratch_n ? scratch_n : 1);
    float *KB = nk ? ovs_arena_floats(&m->arena, nk) : NULL;   /* const_branch_vector's work */
    if (!X0 || !X1 || !T1 || !T2 || (n3 && !T3) || (nsc && !SC) || !scratch || (nk && !KB)) return OVS_ERR_NOMEM;
    int rc;
    /* stem: CLIP has a ReLU after each conv; the DeepLab trunk only after the pool */
    const ovs_act sa = clip ? OVS_ACT_RELU : OVS_ACT_NONE;
    if ((rc = ovs_convbn_forward(&m->stem[0], T1, images, NULL, N, H, W, sa, scratch)) ||
        (rc = ovs_convbn_forward(&m->stem[1], T2, T1, NULL, N, h1, w1, sa, scratch)) ||
        (rc = ovs_convbn_forward(&m->stem[2], X1, T2, NULL, N, h1, w1, sa, scratch)) ||
        (rc = ovs_avgpool2d_forward(X0, X1, N * wd, h1, w1, 2, 2, 2, 2, 0, 0, 1)))
        return rc;
    if (!clip && (rc = ovs_act_forward(X0, N * wd * hs[0] * ws[0], OVS_ACT_RELU))) return rc;
    float *x = X0;   /* the block input; a block's output replaces it (see conv3) */
    int64_t h = hs[0], w = ws[0], bi = 0;
    /* constant branches' epilogues not yet applied to x (all of x's shape: K channels, hw) */
    const float *pend[KB_CHAIN];
    int npend = 0;
    int64_t pK = 0;
#define FLUSH() do { if (npend) add_const_relu(x, pend, npend, N, pK, h * w); npend = 0; } while (0)
    for (int s = 0; s < 4; s++) {
        for (int64_t j = 0; j < m->cfg.layers[s]; j++, bi++) {
            ovs_bottleneck *b = &m->blocks[bi];
            const int64_t st = b->stride, P = b->planes;
            const int64_t ho = ovs_bottleneck_out_size(m, b, h), wo = ovs_bottleneck_out_size(m, b, w);
            const int kb = const_branch(m, b);
            if (!kb || b->has_down) FLUSH();   /* x is read below */
            if (kb) {
                if (!b->kconst && (rc = const_branch_vector(b, KB, clip ? st : 1, scratch))) return rc;
            } else if ((rc = ovs_convbn_forward(&b->conv1, T1, x, NULL, N, h, w, OVS_ACT_RELU, scratch)) ||
                       (rc = ovs_convbn_forward(&b->conv2, T2, T1, NULL, N, h, w, OVS_ACT_RELU, scratch))) {
                return rc;
            }
            const float *mid = T2;
            if (!kb && clip && st > 1) {
                if ((rc = ovs_avgpool2d_forward(T3, T2, N * P, h, w, st, st, st, st, 0, 0, 1))) return rc;
                mid = T3;
            }
            if (b->has_down) {   /* the shortcut: x itself, or this conv's output in SC */
                const float *src = x;
                int64_t hd = h, wdn = w;   /* the shortcut conv's input extent */
                if (clip && st > 1) {
                    if ((rc = ovs_avgpool2d_forward(T1, x, N * b->inplanes, h, w, st, st, st, st, 0, 0, 1)))
                        return rc;
                    src = T1;
                    hd = ho;
                    wdn = wo;
                }
                if ((rc = ovs_convbn_forward(&b->down, SC, src, NULL, N, hd, wdn, OVS_ACT_NONE, scratch))) return rc;
            }
            /* conv3 writes over its shortcut (the residual may alias the output): the
             * block's input is dead after it, and the output's cache lines are then the
             * residual's, already read, instead of a third stream (on a 56x56 map of 256
             * channels, 3.2 MB that L2 does not hold) */
            float *dst = b->has_down ? SC : x;
            if (!kb && (rc = ovs_convbn_forward(&b->conv3, dst, mid, dst, N, ho, wo, OVS_ACT_RELU, scratch)))
                return rc;
            if (b->has_down) {   /* the output is in SC: the old input's buffer becomes SC */
                SC = x;
                x = dst;
            }
            h = ho;
            w = wo;
            if (kb) {   /* conv3's epilogue over the residual x, with the next blocks' */
                pend[npend++] = b->kconst;
                pK = 4 * P;
                if (npend == KB_CHAIN) FLUSH();
            }
        }
        FLUSH();
        if (res_out && res_out[s])
            memcpy(res_out[s], x, (size_t)N * 4 * (wd << s) * h * w * sizeof(float));
    }
#undef FLUSH
    *res5 = x;
    *C5 = m->channels;
    *h5 = h;
    *w5 = w;
    return OVS_OK;
}

int ovs_resnet_get_attnpool(const ovs_resnet *m, ovs_resnet_attnpool *out) {
    if (!m->cfg.has_attnpool) return ovs_set_error(OVS_ERR_ARG, "this ResNet has no attention pool");
    *out = (ovs_resnet_attnpool){.channels = m->channels, .q = &m->q, .k = &m->k, .v = &m->v, .c = &m->c,
                                 .qb = m->qb, .kb = m->kb, .vb = m->vb, .cb = m->cb};
    return OVS_OK;
}

int ovs_resnet_forward(ovs_resnet *m, const float *images, int64_t N, int64_t H, int64_t W,
                       ovs_resnet_outputs *out) {
    if (out->embed && !m->cfg.has_attnpool)
        return ovs_set_error(OVS_ERR_ARG, "this ResNet has no attention pool: no embedding");
    float *x;
    int64_t C, h, w;
    int rc = ovs_resnet_trunk(m, images, N, H, W, out->res, &x, &C, &h, &w);
    if (rc || !out->embed) return rc;
    /* Attention pooling: tokens = [mean; positions] + pos, one query (the mean token). */
    const int64_t T = 1 + h * w, E = m->cfg.heads, F = C / E;
    const float *pos;
    if ((rc = ovs_pos_embed_for_grid(&pos, &m->pos_cache, m->pos, m->cfg.grid, C, h, w))) return rc;
    float *tok = ovs_arena_floats(&m->arena, (size_t)N * T * C);   /* (N, T, C) */
    float *q = ovs_arena_floats(&m->arena, (size_t)N * C);         /* (N, C) */
    float *att = ovs_arena_floats(&m->arena, (size_t)N * C);       /* (N, C) */
    if (!tok || !q || !att) return OVS_ERR_NOMEM;
    const int64_t G = h * w, CB = 16;   /* channels per item: whole 64-byte token lines */
#pragma omp parallel for schedule(static) num_threads(ovs_get_num_threads())
    for (int64_t nb = 0; nb < N * ((C + CB - 1) / CB); nb++) {
        const int64_t n = nb / ((C + CB - 1) / CB), c0 = nb % ((C + CB - 1) / CB) * CB;
        const int64_t nc = C - c0 < CB ? C - c0 : CB;
        const float *src = x + ((size_t)n * C + c0) * G;
        float *dst = tok + (size_t)n * T * C + c0;
        double sum[16] = {0};
        for (int64_t i = 0; i < G; i++)
            for (int64_t c = 0; c < nc; c++) {
                dst[(1 + i) * C + c] = src[c * G + i] + pos[(1 + i) * C + c0 + c];
                sum[c] += src[c * G + i];
            }
        for (int64_t c = 0; c < nc; c++) dst[c] = (float)(sum[c] / (double)G) + pos[c0 + c];
    }
    /* q of the first token only */
    for (int64_t n = 0; n < N; n++)
        memcpy(att + n * C, tok + (size_t)n * T * C, (size_t)C * sizeof(float));
    if ((rc = ovs_linear_forward(q, att, &m->q, m->qb, NULL, N, C, C, OVS_ACT_NONE))) return rc;
    const float scale = 1.0f / sqrtf((float)F);
    if (m->k.format == OVS_MATRIX_PACKED && m->v.format == OVS_MATRIX_PACKED &&
        F % OVS_PACK_NR == 0 && C % OVS_PACK_NR == 0) {
        float *u = ovs_arena_floats(&m->arena, (size_t)N * E * C);
        float *sc = ovs_arena_floats(&m->arena, (size_t)N * E * T);
        float *mix = ovs_arena_floats(&m->arena, (size_t)N * E * C);
        if (!u || !sc || !mix) return OVS_ERR_NOMEM;
        /* k and v folded into the query side (ovs_attention_folded) */
        if ((rc = ovs_attention_folded(att, tok, N, T, NULL, q, &m->k, m->kb, &m->v, m->vb, E, scale, u,
                                       sc, mix)))
            return rc;
    } else {
        /* k and v of every token (one GEMM each over all images) */
        float *kv = ovs_arena_floats(&m->arena, (size_t)N * T * 2 * C);  /* (N, T, 2C): k | v */
        float *probs = ovs_arena_floats(&m->arena, (size_t)E * T);     /* (E, 1, T) */
        if (!kv || !probs) return OVS_ERR_NOMEM;
        if ((rc = ovs_matmul_wt(kv, 2 * C, tok, C, &m->k, N * T, 1.0f, 0.0f)) ||
            (rc = ovs_matmul_wt(kv + C, 2 * C, tok, C, &m->v, N * T, 1.0f, 0.0f)))
            return rc;
#pragma omp parallel for schedule(static) num_threads(ovs_get_num_threads())
        for (int64_t r = 0; r < N * T; r++) {
            float *row = kv + (size_t)r * 2 * C;
            for (int64_t c = 0; c < C; c++) {
                row[c] += m->kb[c];
                row[C + c] += m->vb[c];
            }
        }
        for (int64_t n = 0; n < N; n++) {
            const float *kvn = kv + (size_t)n * T * 2 * C;
            if ((rc = ovs_attention_forward(att + n * C, q + n * C, C, kvn, 2 * C, kvn + C, 2 * C, 1,
                                            T, E, F, scale, NULL, 0, probs)))
                return rc;
        }
    }
    return ovs_linear_forward(out->embed, att, &m->c, m->cb, NULL, N, C, m->cfg.embed_dim, OVS_ACT_NONE);
}
