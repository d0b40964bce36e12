/* Mask2Former blocks (include/ovs/m2f.h): MSDeformAttn, the MSDeformAttn pixel decoder and
 * the masked-attention transformer decoder, composed from the ops of include/ovs/ops.h.
 * Letters: D width, E heads, F = D/E head width, L = 3 levels, P points, S encoder tokens,
 * Q queries, (H, W) the mask-feature map (stride 4), (h_l, w_l) level l's map. */
#include "ovs/m2f.h"
#include "models/internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define M2F_LEVELS 3
#define M2F_EPS 1e-5f          /* nn.LayerNorm / nn.GroupNorm default */
#define M2F_TEMPERATURE 10000.0f

/* ---------------------------------------------------------------- weight binding helpers */
static int wname(char *buf, size_t cap, const char *prefix, const char *fmt, ...) {
    int n = snprintf(buf, cap, "%s", prefix ? prefix : "");
    if (n < 0 || (size_t)n >= cap) return ovs_set_error(OVS_ERR_ARG, "weight prefix is too long");
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(buf + n, cap - (size_t)n, fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)(n + k) >= cap) return ovs_set_error(OVS_ERR_ARG, "weight name is too long");
    return OVS_OK;
}


static int bind_vec(const float **out, const ovs_tensor_map *w, const char *prefix,
                    const char *name, int64_t n) {
    char nm[320];
    int rc = wname(nm, sizeof nm, prefix, "%s", name);
    return rc ? rc : ovs_bind_vec(out, w, nm, n);
}

/* prefix + what + ".weight" (K, C) and ".bias" (K,). */
static int bind_linear(ovs_matrix *wm, const float **b, const ovs_tensor_map *w,
                       const char *prefix, const char *what, int64_t K, int64_t C) {
    char nm[320];
    int rc;
    if ((rc = wname(nm, sizeof nm, prefix, "%s.weight", what)) ||
        (rc = ovs_bind_mat(wm, w, nm, K, C)) ||
        (rc = wname(nm, sizeof nm, prefix, "%s.bias", what)) || (rc = ovs_bind_vec(b, w, nm, K)))
        return rc;
    return OVS_OK;
}

/* Packed copies of the linear weights a block owns (one buffer each), freed with the block. */
typedef struct {
    float **bufs;             /* (n,) */
    int64_t n, cap;
} m2f_owned;

/* *out = a new buffer of o of n floats (a packed weight of (rows, cols); SIZE_MAX: too large). */
static int owned_alloc_n(float **out, m2f_owned *o, size_t n, int64_t rows, int64_t cols) {
    if (n == SIZE_MAX || n > SIZE_MAX / sizeof(float))
        return ovs_set_error(OVS_ERR_OVERFLOW, "packed (%lld, %lld) weight is too large",
                             (long long)rows, (long long)cols);
    if (o->n == o->cap) {
        int64_t cap = o->cap ? 2 * o->cap : 32;
        float **b = ovs_malloc((size_t)cap * sizeof *b);
        if (!b) return OVS_ERR_NOMEM;
        if (o->n) memcpy(b, o->bufs, (size_t)o->n * sizeof *b);
        ovs_free(o->bufs);
        o->bufs = b;
        o->cap = cap;
    }
    float *buf = ovs_malloc((n ? n : 1) * sizeof(float));
    if (!buf) return OVS_ERR_NOMEM;
    o->bufs[o->n++] = buf;
    *out = buf;
    return OVS_OK;
}

/* *out = a new buffer of o for the packed form of a (rows, cols) matrix. */
static int owned_alloc(float **out, m2f_owned *o, int64_t rows, int64_t cols) {
    return owned_alloc_n(out, o, ovs_matrix_packed_floats(rows, cols), rows, cols);
}

/* A conv weight prefix + name (K, C, R, S), packed once (ovs_conv2d_pack) into a buffer of o. */
static int bind_conv(m2f_owned *o, ovs_matrix *out, const ovs_tensor_map *w, const char *prefix,
                     const char *name, int64_t K, int64_t C, int64_t R, int64_t S) {
    char nm[320];
    float *dst = NULL;
    int rc = wname(nm, sizeof nm, prefix, "%s", name);
    if (rc || (rc = owned_alloc_n(&dst, o, ovs_conv2d_packed_floats(K, C * R * S, 1), K, C * R * S)))
        return rc;
    const int64_t shape[4] = {K, C, R, S};
    return ovs_bind_conv_packed(out, dst, w, nm, 4, shape);
}

static void owned_free(m2f_owned *o) {
    for (int64_t i = 0; i < o->n; i++) ovs_free(o->bufs[i]);
    ovs_free(o->bufs);
    memset(o, 0, sizeof *o);
}

/* As bind_linear, the weight packed into a buffer of o (the threaded packed GEMM, results
 * independent of the thread count), or borrowed dense when o is NULL. */
static int bind_linear_p(m2f_owned *o, ovs_matrix *wm, const float **b, const ovs_tensor_map *w,
                         const char *prefix, const char *what, int64_t K, int64_t C) {
    if (!o) return bind_linear(wm, b, w, prefix, what, K, C);
    char nm[320];
    int rc;
    float *dst = NULL;
    if ((rc = owned_alloc(&dst, o, K, C)) || (rc = wname(nm, sizeof nm, prefix, "%s.weight", what)) ||
        (rc = ovs_bind_packed(wm, dst, w, nm, K, C)) ||
        (rc = wname(nm, sizeof nm, prefix, "%s.bias", what)) || (rc = ovs_bind_vec(b, w, nm, K)))
        return rc;
    return OVS_OK;
}

/* prefix + what + ".weight" (n,) and ".bias" (n,). */
static int bind_norm(const float **g, const float **b, const ovs_tensor_map *w,
                     const char *prefix, const char *what, int64_t n) {
    char nm[320];
    int rc;
    if ((rc = wname(nm, sizeof nm, prefix, "%s.weight", what)) || (rc = ovs_bind_vec(g, w, nm, n)) ||
        (rc = wname(nm, sizeof nm, prefix, "%s.bias", what)) || (rc = ovs_bind_vec(b, w, nm, n)))
        return rc;
    return OVS_OK;
}

/* dst (C, M) = src (M, C)^T. */
static void transpose(float *dst, const float *src, int64_t M, int64_t C) {
    const int64_t B = 32;
    for (int64_t i0 = 0; i0 < M; i0 += B)
        for (int64_t j0 = 0; j0 < C; j0 += B)
            for (int64_t i = i0; i < M && i < i0 + B; i++)
                for (int64_t j = j0; j < C && j < j0 + B; j++) dst[j * M + i] = src[i * C + j];
}

static float *arena_get(ovs_arena *a, int64_t n) { return ovs_arena_floats(a, (size_t)(n > 0 ? n : 1)); }

static int check_pos(const char *what, int64_t v) {
    if (v < 1) return ovs_set_error(OVS_ERR_ARG, "%s must be >= 1, got %lld", what, (long long)v);
    return OVS_OK;
}

/* Each of the n config values vals[i] of `block`, named names[i], must be >= 1. */
static int check_config(const char *block, int n, const char *const *names, const int64_t *vals) {
    char what[96];
    for (int i = 0; i < n; i++) {
        snprintf(what, sizeof what, "%s %s", block, names[i]);
        int rc = check_pos(what, vals[i]);
        if (rc) return rc;
    }
    return OVS_OK;
}

/* What both blocks keep beside their config: the weight prefix, the packed weights they own,
 * the workspace arena reused across calls. */
typedef struct {
    char prefix[160];
    m2f_owned owned;
    ovs_arena arena;
} m2f_base;

/* A block's start, after its config checks: the prefix *cfg_prefix (NULL: "") kept in b and
 * *cfg_prefix pointed at the copy; the arena ready. */
static int base_init(m2f_base *b, const char **cfg_prefix, const char *block) {
    const char *given = *cfg_prefix ? *cfg_prefix : "";
    ovs_arena_init(&b->arena);
    if (strlen(given) >= sizeof b->prefix)
        return ovs_set_error(OVS_ERR_ARG, "%s: prefix is too long", block);
    strcpy(b->prefix, given);
    *cfg_prefix = b->prefix;
    return OVS_OK;
}

/* The lifecycle both blocks share, ovs_<block>_create, _get_config, _release_workspace and
 * _free, for a block struct with members cfg, layers (owned) and base, whose file defines
 * <block>_bind(m, w) (config checks on m->cfg, then the weights); `what` names the block in
 * errors. */
#define M2F_BLOCK_LIFECYCLE(block, what)                                                    \
    int ovs_##block##_create(ovs_##block **out, const ovs_##block##_config *cfg,            \
                             const ovs_tensor_map *w) {                                     \
        *out = NULL;                                                                        \
        if (!cfg || !w)                                                                     \
            return ovs_set_error(OVS_ERR_ARG, "m2f " what ": NULL config or weights");      \
        ovs_##block *m = ovs_calloc(1, sizeof *m);                                          \
        if (!m) return OVS_ERR_NOMEM;                                                       \
        m->cfg = *cfg;                                                                      \
        int rc = base_init(&m->base, &m->cfg.prefix, what);                                 \
        if (rc || (rc = block##_bind(m, w))) {                                              \
            ovs_##block##_free(m);                                                          \
            return rc;                                                                      \
        }                                                                                   \
        *out = m;                                                                           \
        return OVS_OK;                                                                      \
    }                                                                                       \
    const ovs_##block##_config *ovs_##block##_get_config(const ovs_##block *m) {            \
        return &m->cfg;                                                                     \
    }                                                                                       \
    void ovs_##block##_release_workspace(ovs_##block *m) {                                  \
        if (m) ovs_arena_free(&m->base.arena);                                              \
    }                                                                                       \
    void ovs_##block##_free(ovs_##block *m) {                                               \
        if (!m) return;                                                                     \
        ovs_free(m->layers);                                                                \
        owned_free(&m->base.owned);                                                         \
        ovs_arena_free(&m->base.arena);                                                     \
        ovs_free(m);                                                                        \
    }

/* A post-norm feed-forward block: x = LayerNorm(x + linear2(relu(linear1(x)))). */
typedef struct {
    ovs_matrix linear1, linear2;      /* (ffn, D), (D, ffn) */
    const float *linear1_b, *linear2_b, *norm_w, *norm_b;
} m2f_ffn;

/* prefix + "linear1", "linear2" and the LayerNorm `norm`. */
static int bind_ffn(m2f_ffn *f, m2f_owned *o, const ovs_tensor_map *w, const char *prefix,
                    const char *norm, int64_t D, int64_t ffn) {
    int rc;
    if ((rc = bind_linear_p(o, &f->linear1, &f->linear1_b, w, prefix, "linear1", ffn, D)) ||
        (rc = bind_linear_p(o, &f->linear2, &f->linear2_b, w, prefix, "linear2", D, ffn)) ||
        (rc = bind_norm(&f->norm_w, &f->norm_b, w, prefix, norm, D)))
        return rc;
    return OVS_OK;
}

/* x (M, D) in place; hid: M * ffn floats. */
static int ffn_forward(const m2f_ffn *f, float *x, float *hid, int64_t M, int64_t D, int64_t ffn) {
    int rc;
    if ((rc = ovs_linear_forward(hid, x, &f->linear1, f->linear1_b, NULL, M, D, ffn,
                                 OVS_ACT_RELU)) ||
        (rc = ovs_linear_forward(x, hid, &f->linear2, f->linear2_b, x, M, ffn, D, OVS_ACT_NONE)))
        return rc;
    return ovs_layernorm_forward(x, x, f->norm_w, f->norm_b, M, D, M2F_EPS);
}

/* ---------------------------------------------------------------- MSDeformAttn */
static int msdeform_bind(ovs_msdeform_attn *m, m2f_owned *o, const ovs_tensor_map *w,
                         const char *prefix, int64_t D, int64_t E, int64_t L, int64_t P) {
    int rc;
    memset(m, 0, sizeof *m);
    if ((rc = check_pos("msdeform_attn D", D)) || (rc = check_pos("msdeform_attn heads", E)) ||
        (rc = check_pos("msdeform_attn levels", L)) || (rc = check_pos("msdeform_attn points", P)))
        return rc;
    if (D % E)
        return ovs_set_error(OVS_ERR_ARG, "msdeform_attn: D = %lld is not divisible by %lld heads",
                             (long long)D, (long long)E);
    if (E > (INT64_MAX / 2) / L / P)
        return ovs_set_error(OVS_ERR_OVERFLOW, "msdeform_attn: heads * levels * points overflows");
    m->D = D, m->E = E, m->L = L, m->P = P;
    const int64_t n = E * L * P;
    if ((rc = bind_linear_p(o, &m->sampling_offsets, &m->sampling_offsets_b, w, prefix,
                            "sampling_offsets", 2 * n, D)) ||
        (rc = bind_linear_p(o, &m->attention_weights, &m->attention_weights_b, w, prefix,
                            "attention_weights", n, D)) ||
        (rc = bind_linear_p(o, &m->value_proj, &m->value_proj_b, w, prefix, "value_proj", D, D)) ||
        (rc = bind_linear_p(o, &m->output_proj, &m->output_proj_b, w, prefix, "output_proj", D, D)))
        return rc;
    return OVS_OK;
}

int ovs_msdeform_attn_bind(ovs_msdeform_attn *m, const ovs_tensor_map *w, const char *prefix,
                           int64_t D, int64_t E, int64_t L, int64_t P) {
    return msdeform_bind(m, NULL, w, prefix, D, E, L, P);
}

size_t ovs_msdeform_attn_scratch_floats(const ovs_msdeform_attn *m, int64_t Q, int64_t S) {
    /* value (S, D), offsets/locations (Q, 2n), weights (Q, n), core output (Q, D) */
    const double n = (double)(m->E * m->L * m->P);
    double f = (double)S * m->D + (double)Q * (3.0 * n + m->D);
    return f > 1e17 ? SIZE_MAX : (size_t)f;
}

int ovs_msdeform_attn_forward(const ovs_msdeform_attn *m, float *out, const float *query,
                              const float *input, const float *ref, const float *residual,
                              const int64_t *shapes, int64_t Q, float *scratch) {
    static const char op[] = "ovs_msdeform_attn_forward";
    const int64_t D = m->D, E = m->E, L = m->L, P = m->P, n = E * L * P;
    if (!shapes) return ovs_set_error(OVS_ERR_ARG, "%s: shapes is NULL", op);
    int64_t S = 0;
    for (int64_t l = 0; l < L; l++) {
        if (shapes[2 * l] < 1 || shapes[2 * l + 1] < 1 || shapes[2 * l] > INT32_MAX ||
            shapes[2 * l + 1] > INT32_MAX)
            return ovs_set_error(OVS_ERR_ARG, "%s: level %lld has shape (%lld, %lld)", op,
                                 (long long)l, (long long)shapes[2 * l], (long long)shapes[2 * l + 1]);
        S += shapes[2 * l] * shapes[2 * l + 1];
    }
    if (Q < 0) return ovs_set_error(OVS_ERR_ARG, "%s: Q must be >= 0, got %lld", op, (long long)Q);
    if (Q == 0) return OVS_OK;
    if (!out || !query || !input || !ref || !scratch)
        return ovs_set_error(OVS_ERR_ARG, "%s: NULL buffer", op);
    float *value = scratch;                 /* (S, D) */
    float *loc = value + S * D;             /* (Q, E, L, P, 2): offsets, then locations */
    float *aw = loc + Q * 2 * n;            /* (Q, E, L*P) */
    float *core = aw + Q * n;               /* (Q, D) */
    int rc;
    if ((rc = ovs_linear_forward(value, input, &m->value_proj, m->value_proj_b, NULL, S, D, D,
                                 OVS_ACT_NONE)) ||
        (rc = ovs_linear_forward(loc, query, &m->sampling_offsets, m->sampling_offsets_b, NULL, Q,
                                 D, 2 * n, OVS_ACT_NONE)) ||
        (rc = ovs_linear_forward(aw, query, &m->attention_weights, m->attention_weights_b, NULL,
                                 Q, D, n, OVS_ACT_NONE)) ||
        (rc = ovs_softmax_forward(aw, Q * E, L * P)))
        return rc;
    /* loc = ref + offset / (W_l, H_l), as torch divides by the long normaliser (in float). */
    for (int64_t q = 0; q < Q; q++)
        for (int64_t e = 0; e < E; e++)
            for (int64_t l = 0; l < L; l++) {
                const float rx = ref[(q * L + l) * 2], ry = ref[(q * L + l) * 2 + 1];
                const float wl = (float)shapes[2 * l + 1], hl = (float)shapes[2 * l];
                float *o = loc + (((q * E + e) * L + l) * P) * 2;
                for (int64_t p = 0; p < P; p++) {
                    o[2 * p] = rx + o[2 * p] / wl;
                    o[2 * p + 1] = ry + o[2 * p + 1] / hl;
                }
            }
    if ((rc = ovs_msdeform_attn_core(core, value, shapes, L, loc, aw, Q, E, D / E, P)))
        return rc;
    return ovs_linear_forward(out, core, &m->output_proj, m->output_proj_b, residual, Q, D, D,
                              OVS_ACT_NONE);
}

/* ---------------------------------------------------------------- pixel decoder */
typedef struct {
    ovs_msdeform_attn attn;
    const float *norm1_w, *norm1_b;                        /* (D,) after the attention */
    m2f_ffn ffn;                                           /* its LayerNorm is norm2 */
} m2f_enc_layer;

struct ovs_m2f_pixel_decoder {
    ovs_m2f_pixel_decoder_config cfg;
    ovs_matrix in_proj[M2F_LEVELS];                /* (D, C) for res5, res4, res3 */
    const float *in_proj_b[M2F_LEVELS];            /* (D,) */
    const float *in_gn_w[M2F_LEVELS], *in_gn_b[M2F_LEVELS];
    const float *level_embed;                      /* (3, D) */
    m2f_enc_layer *layers;                         /* (enc_layers,) */
    ovs_matrix lateral, output, mask;              /* (D, C2), (D, D*9), (mask_dim, D) */
    const float *lateral_gn_w, *lateral_gn_b, *output_gn_w, *output_gn_b, *mask_b;
    m2f_base base;                                 /* prefix, packed weights, arena */
};

ovs_m2f_pixel_decoder_config ovs_m2f_pixel_decoder_defaults(void) {
    ovs_m2f_pixel_decoder_config c = {.prefix = "", .in_channels = {256, 512, 1024, 2048},
                                      .conv_dim = 256, .mask_dim = 256, .enc_layers = 6,
                                      .heads = 8, .points = 4, .ffn_dim = 1024, .groups = 32};
    return c;
}


/* Config checks and weights of a new pixel decoder m (M2F_BLOCK_LIFECYCLE's create). */
static int m2f_pixel_decoder_bind(ovs_m2f_pixel_decoder *m, const ovs_tensor_map *w) {
    int rc;
    const ovs_m2f_pixel_decoder_config c = m->cfg;
    static const char *const names[] = {"in_channels", "in_channels", "in_channels",
                                         "in_channels", "conv_dim", "mask_dim", "enc_layers",
                                         "heads", "points", "ffn_dim", "groups"};
    const int64_t vals[] = {c.in_channels[0], c.in_channels[1], c.in_channels[2],
                            c.in_channels[3], c.conv_dim, c.mask_dim, c.enc_layers, c.heads,
                            c.points, c.ffn_dim, c.groups};
    if ((rc = check_config("pixel decoder", 11, names, vals))) return rc;
    if (c.conv_dim % c.groups || c.conv_dim % 4 || c.conv_dim % c.heads)
        return ovs_set_error(OVS_ERR_ARG, "pixel decoder: conv_dim = %lld must be a multiple of 4, "
                             "of groups = %lld and of heads = %lld", (long long)c.conv_dim,
                             (long long)c.groups, (long long)c.heads);
    if (c.enc_layers > 1000) return ovs_set_error(OVS_ERR_ARG, "pixel decoder: enc_layers = %lld "
                                                  "is too large", (long long)c.enc_layers);
    const char *prefix = m->base.prefix;
    m2f_owned *o = &m->base.owned;
    const int64_t D = c.conv_dim;
    char nm[320], sub[320];
    m->layers = ovs_calloc((size_t)c.enc_layers, sizeof *m->layers);
    if (!m->layers) return OVS_ERR_NOMEM;
    for (int l = 0; l < M2F_LEVELS; l++) {
        int64_t C = c.in_channels[3 - l];
        snprintf(nm, sizeof nm, "input_proj.%d.0.weight", l);
        if ((rc = bind_conv(o, &m->in_proj[l], w, prefix, nm, D, C, 1, 1))) return rc;
        snprintf(nm, sizeof nm, "input_proj.%d.0.bias", l);
        if ((rc = bind_vec(&m->in_proj_b[l], w, prefix, nm, D))) return rc;
        snprintf(nm, sizeof nm, "input_proj.%d.1", l);
        if ((rc = bind_norm(&m->in_gn_w[l], &m->in_gn_b[l], w, prefix, nm, D))) return rc;
    }
    {
        const ovs_tensor *t;
        int64_t shape[2] = {M2F_LEVELS, D};
        if ((rc = wname(nm, sizeof nm, prefix, "transformer.level_embed")) ||
            (rc = ovs_tensor_map_get(&t, w, nm, 2, shape)))
            return rc;
        m->level_embed = t->data;
    }
    for (int64_t j = 0; j < c.enc_layers; j++) {
        m2f_enc_layer *ly = &m->layers[j];
        snprintf(sub, sizeof sub, "%stransformer.encoder.layers.%lld.", prefix, (long long)j);
        if ((rc = wname(nm, sizeof nm, sub, "self_attn.")) ||
            (rc = msdeform_bind(&ly->attn, o, w, nm, D, c.heads, M2F_LEVELS, c.points)) ||
            (rc = bind_norm(&ly->norm1_w, &ly->norm1_b, w, sub, "norm1", D)) ||
            (rc = bind_ffn(&ly->ffn, o, w, sub, "norm2", D, c.ffn_dim)))
            return rc;
    }
    if ((rc = bind_conv(o, &m->lateral, w, prefix, "adapter_1.weight", D, c.in_channels[0], 1, 1)) ||
        (rc = bind_norm(&m->lateral_gn_w, &m->lateral_gn_b, w, prefix, "adapter_1.norm", D)) ||
        (rc = bind_conv(o, &m->output, w, prefix, "layer_1.weight", D, D, 3, 3)) ||
        (rc = bind_norm(&m->output_gn_w, &m->output_gn_b, w, prefix, "layer_1.norm", D)) ||
        (rc = bind_conv(o, &m->mask, w, prefix, "mask_features.weight", c.mask_dim, D, 1, 1)) ||
        (rc = bind_vec(&m->mask_b, w, prefix, "mask_features.bias", c.mask_dim)))
        return rc;
    return OVS_OK;
}

M2F_BLOCK_LIFECYCLE(m2f_pixel_decoder, "pixel decoder")

/* One 1x1 conv (weight (K, C)) + GroupNorm on an (C, HW) map: out (K, HW). */
static int conv1x1_gn(float *out, const float *in, const ovs_matrix *wm, const float *b,
                      const float *gn_w, const float *gn_b, int64_t C, int64_t H, int64_t W,
                      int64_t K, int64_t G) {
    ovs_conv2d_params p = ovs_conv2d_defaults();
    int rc = ovs_conv2d_forward(out, in, wm, b, NULL, 1, C, H, W, K, 1, 1, &p, OVS_ACT_NONE, NULL);
    if (rc) return rc;
    return ovs_groupnorm_forward(out, out, gn_w, gn_b, 1, K, H * W, G, M2F_EPS);
}

int ovs_m2f_pixel_decoder_forward(ovs_m2f_pixel_decoder *m, const float *const feats[4],
                                  const int64_t hw[4][2], float *mask_features, float *ms[3]) {
    static const char op[] = "ovs_m2f_pixel_decoder_forward";
    const ovs_m2f_pixel_decoder_config *c = &m->cfg;
    const int64_t D = c->conv_dim, G = c->groups;
    if (!feats || !hw) return ovs_set_error(OVS_ERR_ARG, "%s: NULL features", op);
    for (int s = 0; s < 4; s++) {
        if (!feats[s])
            return ovs_set_error(OVS_ERR_ARG, "%s: feature res%d is NULL", op, s + 2);
        if (hw[s][0] < 1 || hw[s][1] < 1 || hw[s][0] > (1 << 20) || hw[s][1] > (1 << 20))
            return ovs_set_error(OVS_ERR_ARG, "%s: res%d has size (%lld, %lld); each side must be "
                                 "in 1..2^20", op, s + 2, (long long)hw[s][0], (long long)hw[s][1]);
    }
    int64_t shapes[M2F_LEVELS * 2], start[M2F_LEVELS], S = 0;
    for (int l = 0; l < M2F_LEVELS; l++) {
        shapes[2 * l] = hw[3 - l][0];
        shapes[2 * l + 1] = hw[3 - l][1];
        start[l] = S;
        S += shapes[2 * l] * shapes[2 * l + 1];
    }
    const int64_t H2 = hw[0][0], W2 = hw[0][1];
    ovs_arena *a = &m->base.arena;
    ovs_arena_reset(a);
    int64_t maxmap = 0;
    for (int l = 0; l < M2F_LEVELS; l++)
        if (shapes[2 * l] * shapes[2 * l + 1] > maxmap) maxmap = shapes[2 * l] * shapes[2 * l + 1];
    ovs_conv2d_params p3 = ovs_conv2d_defaults();
    p3.pad_h = p3.pad_w = 1;
    size_t conv_scratch = ovs_conv2d_scratch_floats(D, H2, W2, D, 3, 3, &p3);
    size_t attn_scratch = ovs_msdeform_attn_scratch_floats(&m->layers[0].attn, S, S);
    if (conv_scratch == SIZE_MAX || attn_scratch == SIZE_MAX)
        return ovs_set_error(OVS_ERR_OVERFLOW, "%s: input too large", op);
    float *x = arena_get(a, S * D);                      /* (S, D) encoder tokens */
    float *lvlpos = arena_get(a, S * D);                 /* (S, D) pos + level embedding */
    float *q = arena_get(a, S * D);                      /* (S, D) x + lvlpos */
    float *ref = arena_get(a, S * M2F_LEVELS * 2);       /* (S, 3, 2) */
    float *hid = arena_get(a, S * c->ffn_dim);           /* (S, ffn) */
    float *map = arena_get(a, D * maxmap);               /* (D, h, w) one level */
    float *scratch = arena_get(a, (int64_t)attn_scratch);
    float *res3 = ms && ms[2] ? ms[2] : arena_get(a, D * shapes[4] * shapes[5]);
    float *fpn = arena_get(a, D * H2 * W2), *fpn2 = arena_get(a, D * H2 * W2);
    float *cscr = conv_scratch ? arena_get(a, (int64_t)conv_scratch) : NULL;
    if (!x || !lvlpos || !q || !ref || !hid || !map || !scratch || !res3 || !fpn || !fpn2 ||
        (conv_scratch && !cscr))
        return OVS_ERR_NOMEM;
    int rc;
    /* input projections, positional + level embeddings, reference points */
    for (int l = 0; l < M2F_LEVELS; l++) {
        const int64_t h = shapes[2 * l], w = shapes[2 * l + 1], s = 3 - l;
        if ((rc = conv1x1_gn(map, feats[s], &m->in_proj[l], m->in_proj_b[l], m->in_gn_w[l],
                             m->in_gn_b[l], c->in_channels[s], h, w, D, G)))
            return rc;
        transpose(x + start[l] * D, map, D, h * w);
        float *pl = lvlpos + start[l] * D;
        if ((rc = ovs_pos_embed_sine(pl, D, h, w, M2F_TEMPERATURE))) return rc;
        for (int64_t t = 0; t < h * w; t++)
            for (int64_t d = 0; d < D; d++) pl[t * D + d] += m->level_embed[l * D + d];
        for (int64_t yy = 0; yy < h; yy++)
            for (int64_t xx = 0; xx < w; xx++) {
                float *r = ref + (start[l] + yy * w + xx) * M2F_LEVELS * 2;
                const float rx = ((float)xx + 0.5f) / (float)w, ry = ((float)yy + 0.5f) / (float)h;
                for (int k = 0; k < M2F_LEVELS; k++) r[2 * k] = rx, r[2 * k + 1] = ry;
            }
    }
    /* deformable encoder (post-norm) */
    for (int64_t j = 0; j < c->enc_layers; j++) {
        const m2f_enc_layer *ly = &m->layers[j];
        for (int64_t i = 0; i < S * D; i++) q[i] = x[i] + lvlpos[i];
        if ((rc = ovs_msdeform_attn_forward(&ly->attn, x, q, x, ref, x, shapes, S, scratch)) ||
            (rc = ovs_layernorm_forward(x, x, ly->norm1_w, ly->norm1_b, S, D, M2F_EPS)) ||
            (rc = ffn_forward(&ly->ffn, x, hid, S, D, c->ffn_dim)))
            return rc;
    }
    for (int l = 0; l < M2F_LEVELS; l++) {
        float *dst = ms && ms[l] ? ms[l] : (l == 2 ? res3 : NULL);
        if (dst) transpose(dst, x + start[l] * D, shapes[2 * l] * shapes[2 * l + 1], D);
    }
    if (!mask_features) return OVS_OK;
    /* FPN step to stride 4: GN(lateral(res2)) + up(res3), then relu(GN(conv3x3)) */
    if ((rc = conv1x1_gn(fpn, feats[0], &m->lateral, NULL, m->lateral_gn_w, m->lateral_gn_b,
                         c->in_channels[0], H2, W2, D, G)) ||
        (rc = ovs_resize_bilinear(fpn2, res3, D, shapes[4], shapes[5], H2, W2, 0)))
        return rc;
    for (int64_t i = 0; i < D * H2 * W2; i++) fpn2[i] += fpn[i];
    if ((rc = ovs_conv2d_forward(fpn, fpn2, &m->output, NULL, NULL, 1, D, H2, W2, D, 3, 3, &p3,
                                 OVS_ACT_NONE, cscr)) ||
        (rc = ovs_groupnorm_forward(fpn, fpn, m->output_gn_w, m->output_gn_b, 1, D, H2 * W2, G,
                                    M2F_EPS)) ||
        (rc = ovs_act_forward(fpn, D * H2 * W2, OVS_ACT_RELU)))
        return rc;
    ovs_conv2d_params p1 = ovs_conv2d_defaults();
    return ovs_conv2d_forward(mask_features, fpn, &m->mask, m->mask_b, NULL, 1, D, H2, W2,
                              c->mask_dim, 1, 1, &p1, OVS_ACT_NONE, NULL);
}

/* ---------------------------------------------------------------- transformer decoder */
/* nn.MultiheadAttention weights: q, k, v rows of in_proj_weight (3D, D), then out_proj. */
typedef struct {
    ovs_matrix wq, wk, wv, wo;        /* (D, D) each */
    const float *bq, *bk, *bv, *bo;   /* (D,) each */
    const float *norm_w, *norm_b;     /* (D,) the LayerNorm after the residual */
} m2f_mha;

typedef struct {
    m2f_mha cross, self;
    m2f_ffn ffn;
} m2f_dec_layer;

typedef struct {
    int64_t n;                        /* layers */
    ovs_matrix w[8];                  /* layer k: (out_k, in_k) */
    const float *b[8];
    int64_t out[8];
} m2f_mlp;

struct ovs_m2f_decoder {
    ovs_m2f_decoder_config cfg;
    const float *query_feat, *query_embed, *level_embed;   /* (Q, D), (Q, D), (3, D) */
    int has_input_proj;
    ovs_matrix in_proj[M2F_LEVELS];                        /* (D, in_channels) */
    const float *in_proj_b[M2F_LEVELS];
    m2f_dec_layer *layers;                                 /* (layers,) */
    const float *norm_w, *norm_b;                          /* decoder_norm (D,) */
    m2f_mlp mask_embed, class_embed;
    const float *pool_ln_w, *pool_ln_b;                    /* _mask_pooling_proj.0 (D,) */
    ovs_matrix pool_proj;                                  /* _mask_pooling_proj.1 (D, D) */
    const float *pool_proj_b;
    m2f_base base;                                         /* prefix, packed weights, arena */
};

ovs_m2f_decoder_config ovs_m2f_decoder_defaults(void) {
    ovs_m2f_decoder_config c = {.prefix = "", .in_channels = 256, .hidden_dim = 256,
                                .queries = 100, .heads = 8, .ffn_dim = 2048, .layers = 9,
                                .mask_dim = 256, .class_layers = 0, .class_dim = 0};
    return c;
}


static int bind_mha(m2f_mha *h, m2f_owned *o, const ovs_tensor_map *w, const char *prefix,
                    const char *attn, int64_t D) {
    char nm[320];
    const ovs_tensor *t;
    int rc;
    int64_t s2[2] = {3 * D, D}, s1[1] = {3 * D};
    const float *src;
    float *scratch;   /* in_proj_weight read for packing only */
    if ((rc = wname(nm, sizeof nm, prefix, "%s.in_proj_weight", attn)) ||
        (rc = ovs_tensor_map_read(NULL, &src, &scratch, w, nm, 2, s2)))
        return rc;
    ovs_matrix *qkv[3] = {&h->wq, &h->wk, &h->wv};
    for (int i = 0; i < 3 && !rc; i++) {   /* rows [i*D, (i+1)*D) of in_proj_weight, packed */
        float *dst = NULL;
        if (!(rc = owned_alloc(&dst, o, D, D)) &&
            !(rc = ovs_matrix_pack(dst, src + i * D * D, D, D)))
            *qkv[i] = ovs_matrix_packed(dst, D, D);
    }
    ovs_free_transient(scratch);
    if (rc) return rc;
    if ((rc = wname(nm, sizeof nm, prefix, "%s.in_proj_bias", attn)) ||
        (rc = ovs_tensor_map_get(&t, w, nm, 1, s1)))
        return rc;
    h->bq = t->data, h->bk = t->data + D, h->bv = t->data + 2 * D;
    if ((rc = wname(nm, sizeof nm, prefix, "%s.out_proj", attn)) ||
        (rc = bind_linear_p(o, &h->wo, &h->bo, w, "", nm, D, D)) ||
        (rc = bind_norm(&h->norm_w, &h->norm_b, w, prefix, "norm", D)))
        return rc;
    return OVS_OK;
}

/* An MLP "<what>.layers.{k}" (n > 1) or a Linear "<what>" (n == 1): D -> D ... -> out_dim. */
static int bind_mlp(m2f_mlp *mlp, m2f_owned *o, const ovs_tensor_map *w, const char *prefix,
                    const char *what, int64_t n, int64_t D, int64_t out_dim) {
    char nm[320];
    int rc;
    if (n < 1 || n > 8)
        return ovs_set_error(OVS_ERR_ARG, "%s: MLP layers must be in 1..8, got %lld", what,
                             (long long)n);
    mlp->n = n;
    for (int64_t k = 0; k < n; k++) {
        mlp->out[k] = k == n - 1 ? out_dim : D;
        if (n == 1) snprintf(nm, sizeof nm, "%s", what);
        else snprintf(nm, sizeof nm, "%s.layers.%lld", what, (long long)k);
        if ((rc = bind_linear_p(o, &mlp->w[k], &mlp->b[k], w, prefix, nm, mlp->out[k], D)))
            return rc;
    }
    return OVS_OK;
}

/* out (M, out_dim) = MLP(in (M, D)), ReLU between layers; tmp: 2 * M * D floats. */
static int mlp_forward(const m2f_mlp *mlp, float *out, const float *in, int64_t M, int64_t D,
                       float *tmp) {
    const float *cur = in;
    for (int64_t k = 0; k < mlp->n; k++) {
        float *dst = k == mlp->n - 1 ? out : tmp + (k % 2) * M * D;
        int rc = ovs_linear_forward(dst, cur, &mlp->w[k], mlp->b[k], NULL, M, D, mlp->out[k],
                                    k == mlp->n - 1 ? OVS_ACT_NONE : OVS_ACT_RELU);
        if (rc) return rc;
        cur = dst;
    }
    return OVS_OK;
}

/* Config checks and weights of a new decoder m (M2F_BLOCK_LIFECYCLE's create). */
static int m2f_decoder_bind(ovs_m2f_decoder *m, const ovs_tensor_map *w) {
    int rc;
    const ovs_m2f_decoder_config c = m->cfg;
    static const char *const names[] = {"in_channels", "hidden_dim", "queries", "heads",
                                         "ffn_dim", "layers", "mask_dim"};
    const int64_t vals[] = {c.in_channels, c.hidden_dim, c.queries, c.heads, c.ffn_dim, c.layers,
                            c.mask_dim};
    if ((rc = check_config("decoder", 7, names, vals))) return rc;
    if (c.hidden_dim % c.heads || c.hidden_dim % 4)
        return ovs_set_error(OVS_ERR_ARG, "decoder: hidden_dim = %lld must be a multiple of 4 and "
                             "of heads = %lld", (long long)c.hidden_dim, (long long)c.heads);
    if (c.layers > 1000)
        return ovs_set_error(OVS_ERR_ARG, "decoder: layers = %lld is too large", (long long)c.layers);
    if (c.fcclip_class_head && (c.class_layers < 1 || c.mask_dim != c.hidden_dim))
        return ovs_set_error(OVS_ERR_ARG, "decoder: FC-CLIP's class head needs class_layers >= 1 "
                             "(got %lld) and mask_dim == hidden_dim (got %lld, %lld)",
                             (long long)c.class_layers, (long long)c.mask_dim,
                             (long long)c.hidden_dim);
    if (c.class_layers < 0 || c.class_layers > 8 || (c.class_layers > 0 && c.class_dim < 1))
        return ovs_set_error(OVS_ERR_ARG, "decoder: class_layers must be in 0..8 (got %lld) and "
                             "class_dim >= 1 with a class head (got %lld)",
                             (long long)c.class_layers, (long long)c.class_dim);
    const char *prefix = m->base.prefix;
    m2f_owned *o = &m->base.owned;
    const int64_t D = c.hidden_dim, Q = c.queries;
    char nm[320], sub[320];
    const ovs_tensor *t;
    int64_t sq[2] = {Q, D}, sl[2] = {M2F_LEVELS, D};
    if ((rc = wname(nm, sizeof nm, prefix, "query_feat.weight")) ||
        (rc = ovs_tensor_map_get(&t, w, nm, 2, sq)))
        return rc;
    m->query_feat = t->data;
    if ((rc = wname(nm, sizeof nm, prefix, "query_embed.weight")) ||
        (rc = ovs_tensor_map_get(&t, w, nm, 2, sq)))
        return rc;
    m->query_embed = t->data;
    if ((rc = wname(nm, sizeof nm, prefix, "level_embed.weight")) ||
        (rc = ovs_tensor_map_get(&t, w, nm, 2, sl)))
        return rc;
    m->level_embed = t->data;
    m->has_input_proj = c.in_channels != D;
    if (m->has_input_proj)
        for (int l = 0; l < M2F_LEVELS; l++) {
            snprintf(sub, sizeof sub, "input_proj.%d.weight", l);
            if ((rc = bind_conv(o, &m->in_proj[l], w, prefix, sub, D, c.in_channels, 1, 1))) return rc;
            snprintf(sub, sizeof sub, "input_proj.%d.bias", l);
            if ((rc = bind_vec(&m->in_proj_b[l], w, prefix, sub, D))) return rc;
        }
    m->layers = ovs_calloc((size_t)c.layers, sizeof *m->layers);
    if (!m->layers) return OVS_ERR_NOMEM;
    for (int64_t i = 0; i < c.layers; i++) {
        m2f_dec_layer *ly = &m->layers[i];
        snprintf(sub, sizeof sub, "%stransformer_cross_attention_layers.%lld.", prefix, (long long)i);
        if ((rc = bind_mha(&ly->cross, o, w, sub, "multihead_attn", D))) return rc;
        snprintf(sub, sizeof sub, "%stransformer_self_attention_layers.%lld.", prefix, (long long)i);
        if ((rc = bind_mha(&ly->self, o, w, sub, "self_attn", D))) return rc;
        snprintf(sub, sizeof sub, "%stransformer_ffn_layers.%lld.", prefix, (long long)i);
        if ((rc = bind_ffn(&ly->ffn, o, w, sub, "norm", D, c.ffn_dim))) return rc;
    }
    if ((rc = bind_norm(&m->norm_w, &m->norm_b, w, prefix, "decoder_norm", D)) ||
        (rc = bind_mlp(&m->mask_embed, o, w, prefix, "mask_embed", 3, D, c.mask_dim)) ||
        (c.class_layers > 0 &&
         (rc = bind_mlp(&m->class_embed, o, w, prefix, "class_embed", c.class_layers, D,
                        c.class_dim))) ||
        (c.fcclip_class_head &&
         ((rc = bind_norm(&m->pool_ln_w, &m->pool_ln_b, w, prefix, "_mask_pooling_proj.0", D)) ||
          (rc = bind_linear_p(o, &m->pool_proj, &m->pool_proj_b, w, prefix,
                              "_mask_pooling_proj.1", D, D)))))
        return rc;
    return OVS_OK;
}

M2F_BLOCK_LIFECYCLE(m2f_decoder, "decoder")

/* out (T, D) = LayerNorm(res + out_proj(MHA(q_in Wq, k_in Wk, v_in Wv))) with an additive mask
 * (T, U) or NULL. out may alias res (and q_in / v_in, which are consumed first). */
static int mha_block(const m2f_mha *h, float *out, const float *res, const float *q_in,
                     const float *k_in, const float *v_in, int64_t T, int64_t U, int64_t D,
                     int64_t E, const float *mask, float *qp, float *kp, float *vp, float *att,
                     float *scratch) {
    int rc;
    const int64_t F = D / E;
    if ((rc = ovs_linear_forward(qp, q_in, &h->wq, h->bq, NULL, T, D, D, OVS_ACT_NONE)) ||
        (rc = ovs_linear_forward(kp, k_in, &h->wk, h->bk, NULL, U, D, D, OVS_ACT_NONE)) ||
        (rc = ovs_linear_forward(vp, v_in, &h->wv, h->bv, NULL, U, D, D, OVS_ACT_NONE)) ||
        (rc = ovs_attention_forward(att, qp, D, kp, D, vp, D, T, U, E, F,
                                    1.0f / sqrtf((float)F), mask, 0, scratch)) ||
        (rc = ovs_linear_forward(out, att, &h->wo, h->bo, res, T, D, D, OVS_ACT_NONE)))
        return rc;
    return ovs_layernorm_forward(out, out, h->norm_w, h->norm_b, T, D, M2F_EPS);
}

int ovs_m2f_decoder_forward(ovs_m2f_decoder *m, const float *const feats[3],
                            const int64_t sizes[3][2], const float *mask_features, int64_t H,
                            int64_t W, ovs_m2f_decoder_outputs *out) {
    static const char op[] = "ovs_m2f_decoder_forward";
    const ovs_m2f_decoder_config *c = &m->cfg;
    const int64_t D = c->hidden_dim, Q = c->queries, E = c->heads, NL = c->layers;
    const int64_t Cin = c->in_channels, MD = c->mask_dim;
    if (!feats || !sizes || !mask_features || !out)
        return ovs_set_error(OVS_ERR_ARG, "%s: NULL argument", op);
    if (H < 1 || W < 1 || H > (1 << 20) || W > (1 << 20))
        return ovs_set_error(OVS_ERR_ARG, "%s: mask features size (%lld, %lld); each side must be "
                             "in 1..2^20", op, (long long)H, (long long)W);
    int64_t maxhw = 0, start[M2F_LEVELS], S = 0;
    for (int l = 0; l < M2F_LEVELS; l++) {
        if (!feats[l]) return ovs_set_error(OVS_ERR_ARG, "%s: feature level %d is NULL", op, l);
        if (sizes[l][0] < 1 || sizes[l][1] < 1 || sizes[l][0] > (1 << 20) || sizes[l][1] > (1 << 20))
            return ovs_set_error(OVS_ERR_ARG, "%s: level %d has size (%lld, %lld); each side must "
                                 "be in 1..2^20", op, l, (long long)sizes[l][0], (long long)sizes[l][1]);
        int64_t hw = sizes[l][0] * sizes[l][1];
        if (hw > maxhw) maxhw = hw;
        start[l] = S;
        S += hw;
    }
    const int64_t HW = H * W;
    ovs_arena *a = &m->base.arena;
    ovs_arena_reset(a);
    float *src = arena_get(a, S * D);            /* (S, D) projected features + level embed */
    float *kin = arena_get(a, S * D);            /* (S, D) src + positional embedding */
    float *map = m->has_input_proj ? arena_get(a, D * maxhw) : NULL;   /* (D, h, w) */
    float *mfT = arena_get(a, HW * MD);          /* (HW, mask_dim) */
    size_t npk = ovs_matrix_packed_floats(HW, MD);
    if (npk == SIZE_MAX) return ovs_set_error(OVS_ERR_OVERFLOW, "%s: mask features too large", op);
    float *mfp = arena_get(a, (int64_t)npk);     /* mfT packed for the mask GEMM */
    float *x = arena_get(a, Q * D);              /* (Q, D) queries */
    float *qin = arena_get(a, Q * D);            /* (Q, D) x + query_embed */
    float *hn = arena_get(a, Q * D);             /* (Q, D) decoder_norm(x) */
    float *qp = arena_get(a, Q * D), *att = arena_get(a, Q * D);
    int64_t big = maxhw > Q ? maxhw : Q;
    float *kp = arena_get(a, big * D), *vp = arena_get(a, big * D);
    float *hid = arena_get(a, Q * (c->ffn_dim > 2 * D ? c->ffn_dim : 2 * D));
    float *me = arena_get(a, Q * MD);            /* (Q, mask_dim) mask embeddings */
    float *cur = arena_get(a, Q * HW);           /* (Q, H, W) current mask logits */
    float *small = arena_get(a, Q * maxhw);      /* (Q, h, w) resized logits -> additive mask */
    float *ascr = arena_get(a, E * Q * big);     /* attention probabilities */
    const int pool = c->fcclip_class_head && c->class_layers > 0 && out->classes;
    float *bin = pool ? arena_get(a, Q * HW) : NULL;        /* (Q, HW) normalised binary masks */
    float *pooled = pool ? arena_get(a, Q * MD) : NULL;     /* (Q, mask_dim) */
    size_t npk2 = pool ? ovs_matrix_packed_floats(MD, HW) : 0;
    if (npk2 == SIZE_MAX) return ovs_set_error(OVS_ERR_OVERFLOW, "%s: mask features too large", op);
    float *mfp2 = pool ? arena_get(a, (int64_t)npk2) : NULL;  /* mask_features packed (MD, HW) */
    if (!src || !kin || (m->has_input_proj && !map) || !mfT || !mfp || !x || !qin || !hn || !qp ||
        !att || !kp || !vp || !hid || !me || !cur || !small || !ascr || (pool && (!bin || !pooled || !mfp2)))
        return OVS_ERR_NOMEM;
    int rc;
    for (int l = 0; l < M2F_LEVELS; l++) {
        const int64_t h = sizes[l][0], w = sizes[l][1];
        const float *fm = feats[l];
        if (m->has_input_proj) {
            ovs_conv2d_params p1 = ovs_conv2d_defaults();
            if ((rc = ovs_conv2d_forward(map, fm, &m->in_proj[l], m->in_proj_b[l], NULL, 1, Cin,
                                         h, w, D, 1, 1, &p1, OVS_ACT_NONE, NULL)))
                return rc;
            fm = map;
        }
        float *s = src + start[l] * D, *k = kin + start[l] * D;
        transpose(s, fm, D, h * w);
        for (int64_t t = 0; t < h * w; t++)
            for (int64_t d = 0; d < D; d++) s[t * D + d] += m->level_embed[l * D + d];
        if ((rc = ovs_pos_embed_sine(k, D, h, w, M2F_TEMPERATURE))) return rc;
        for (int64_t i = 0; i < h * w * D; i++) k[i] += s[i];
    }
    transpose(mfT, mask_features, MD, HW);
    if ((rc = ovs_matrix_pack(mfp, mfT, HW, MD))) return rc;
    const ovs_matrix mf = ovs_matrix_packed(mfp, HW, MD);
    if (pool && (rc = ovs_matrix_pack(mfp2, mask_features, MD, HW))) return rc;
    const ovs_matrix mfc = ovs_matrix_packed(pool ? mfp2 : mfp, pool ? MD : HW, pool ? HW : MD);
    memcpy(x, m->query_feat, (size_t)(Q * D) * sizeof(float));
    for (int64_t i = 0; i <= NL; i++) {
        /* prediction i (from the queries after i layers) */
        float *hslot = out->hidden ? out->hidden + i * Q * D : hn;
        float *mslot = out->masks_all ? out->masks_all + i * Q * HW
                       : (i == NL && out->masks ? out->masks : cur);
        if ((rc = ovs_layernorm_forward(hslot, x, m->norm_w, m->norm_b, Q, D, M2F_EPS)) ||
            (rc = mlp_forward(&m->mask_embed, me, hslot, Q, D, hid)) ||
            (rc = ovs_matmul_wt(mslot, HW, me, MD, &mf, Q, 1.0f, 0.0f)))
            return rc;
        if (pool) {
            /* FC-CLIP: class_embed(decoder_norm(x) + proj(mask pooling of mask_features)) */
            for (int64_t qq = 0; qq < Q; qq++) {
                const float *lg = mslot + qq * HW;
                float *bq = bin + qq * HW, cnt = 0.0f;
                for (int64_t k = 0; k < HW; k++) cnt += lg[k] > 0.0f ? 1.0f : 0.0f;
                const float inv = 1.0f / (cnt + 1e-8f);
                for (int64_t k = 0; k < HW; k++) bq[k] = lg[k] > 0.0f ? inv : 0.0f;
            }
            if ((rc = ovs_matmul_wt(pooled, MD, bin, HW, &mfc, Q, 1.0f, 0.0f)) ||
                (rc = ovs_layernorm_forward(pooled, pooled, m->pool_ln_w, m->pool_ln_b, Q, D,
                                            M2F_EPS)) ||
                (rc = ovs_linear_forward(qp, pooled, &m->pool_proj, m->pool_proj_b, hslot, Q, D,
                                         D, OVS_ACT_NONE)) ||
                (rc = mlp_forward(&m->class_embed, out->classes + i * Q * c->class_dim, qp, Q, D,
                                  hid)))
                return rc;
        } else if (c->class_layers > 0 && out->classes &&
                   (rc = mlp_forward(&m->class_embed, out->classes + i * Q * c->class_dim, hslot,
                                     Q, D, hid)))
            return rc;
        if (i == NL) {
            if (out->masks && mslot != out->masks)
                memcpy(out->masks, mslot, (size_t)(Q * HW) * sizeof(float));
            break;
        }
        /* attention mask for layer i on level i % 3: sigmoid(resized logits) < 0.5 masked,
         * a query masked everywhere attends everywhere */
        const int l = (int)(i % M2F_LEVELS);
        const int64_t h = sizes[l][0], w = sizes[l][1], U = h * w;
        if ((rc = ovs_resize_bilinear(small, mslot, Q, H, W, h, w, 0))) return rc;
        for (int64_t qq = 0; qq < Q; qq++) {
            float *row = small + qq * U;
            int64_t masked = 0;
            for (int64_t u = 0; u < U; u++) {
                int mk = 1.0f / (1.0f + expf(-row[u])) < 0.5f;
                masked += mk;
                row[u] = mk ? -INFINITY : 0.0f;
            }
            if (masked == U) memset(row, 0, (size_t)U * sizeof(float));
        }
        const m2f_dec_layer *ly = &m->layers[i];
        for (int64_t k = 0; k < Q * D; k++) qin[k] = x[k] + m->query_embed[k];
        if ((rc = mha_block(&ly->cross, x, x, qin, kin + start[l] * D, src + start[l] * D, Q, U,
                            D, E, small, qp, kp, vp, att, ascr)))
            return rc;
        for (int64_t k = 0; k < Q * D; k++) qin[k] = x[k] + m->query_embed[k];
        if ((rc = mha_block(&ly->self, x, x, qin, qin, x, Q, Q, D, E, NULL, qp, kp, vp, att, ascr)) ||
            (rc = ffn_forward(&ly->ffn, x, hid, Q, D, c->ffn_dim)))
            return rc;
    }
    return OVS_OK;
}
