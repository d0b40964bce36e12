/* Pre-LN residual attention blocks shared by the ViT image tower and the text tower. */
#include "models/internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

int ovs_transformer_init(ovs_transformer *t, const char *prefix, int64_t heads, ovs_act act,
                         const ovs_tensor_map *w) {
    char name[512];
    memset(t, 0, sizeof *t);
    int64_t L = 0;
    for (;; L++) {
        snprintf(name, sizeof name, "%sresblocks.%lld.ln_1.weight", prefix, (long long)L);
        if (!ovs_tensor_map_find(w, name)) break;
    }
    if (L == 0)
        return ovs_set_error(OVS_ERR_MISSING, "no transformer blocks found: '%sresblocks.0.ln_1.weight' is missing", prefix);
    snprintf(name, sizeof name, "%sresblocks.0.ln_1.weight", prefix);
    const ovs_tensor *ln = ovs_tensor_map_find(w, name);
    if (ln->ndim != 1 || ln->shape[0] <= 0)
        return ovs_set_error(OVS_ERR_SHAPE, "'%s' must be 1-D", name);
    int64_t D = ln->shape[0];
    snprintf(name, sizeof name, "%sresblocks.0.mlp.c_fc.weight", prefix);
    const ovs_tensor *fc = ovs_tensor_map_find(w, name);
    if (!fc) return ovs_set_error(OVS_ERR_MISSING, "weight '%s' is missing from the state dict", name);
    if (fc->ndim != 2) return ovs_set_error(OVS_ERR_SHAPE, "'%s' must be 2-D", name);
    int64_t Dm = fc->shape[0];
    if (heads <= 0 || D % heads != 0)
        return ovs_set_error(OVS_ERR_ARG, "width %lld is not divisible by %lld heads", (long long)D, (long long)heads);
    /* One allocation for all packed weights: in_proj (3D, D), out_proj (D, D), fc (Dm, D),
     * proj (D, Dm) per block. */
    const size_t n_in = ovs_matrix_packed_floats(3 * D, D), n_out = ovs_matrix_packed_floats(D, D);
    const size_t n_fc = ovs_matrix_packed_floats(Dm, D), n_proj = ovs_matrix_packed_floats(D, Dm);
    size_t per_block = n_in, total;
    if (n_in == SIZE_MAX || n_out == SIZE_MAX || n_fc == SIZE_MAX || n_proj == SIZE_MAX ||
        __builtin_add_overflow(per_block, n_out, &per_block) ||
        __builtin_add_overflow(per_block, n_fc, &per_block) ||
        __builtin_add_overflow(per_block, n_proj, &per_block) ||
        ovs_mul3_size(&total, per_block, (size_t)L, sizeof(float)))
        return ovs_set_error(OVS_ERR_OVERFLOW, "transformer weights (%lld layers, width %lld) are too large",
                             (long long)L, (long long)D);
    t->blocks = ovs_calloc((size_t)L, sizeof(ovs_block));
    t->packed = ovs_malloc(total ? total : 1);
    if (!t->blocks || !t->packed) {
        ovs_transformer_release(t);
        return OVS_ERR_NOMEM;
    }
    t->width = D;
    t->heads = heads;
    t->mlp = Dm;
    t->layers = L;
    t->act = act;
    for (int64_t i = 0; i < L; i++) {
        ovs_block *b = &t->blocks[i];
        float *pk = t->packed + (size_t)i * per_block;
        int rc = 0;
#define P(suffix) (snprintf(name, sizeof name, "%sresblocks.%lld." suffix, prefix, (long long)i), name)
        if ((rc = ovs_bind_vec(&b->ln1_w, w, P("ln_1.weight"), D)) ||
            (rc = ovs_bind_vec(&b->ln1_b, w, P("ln_1.bias"), D)) ||
            (rc = ovs_bind_packed(&b->in_proj, pk, w, P("attn.in_proj_weight"), 3 * D, D)) ||
            (rc = ovs_bind_vec(&b->in_proj_b, w, P("attn.in_proj_bias"), 3 * D)) ||
            (rc = ovs_bind_packed(&b->out_proj, pk + n_in, w, P("attn.out_proj.weight"), D, D)) ||
            (rc = ovs_bind_vec(&b->out_proj_b, w, P("attn.out_proj.bias"), D)) ||
            (rc = ovs_bind_vec(&b->ln2_w, w, P("ln_2.weight"), D)) ||
            (rc = ovs_bind_vec(&b->ln2_b, w, P("ln_2.bias"), D)) ||
            (rc = ovs_bind_packed(&b->fc, pk + n_in + n_out, w, P("mlp.c_fc.weight"), Dm, D)) ||
            (rc = ovs_bind_vec(&b->fc_b, w, P("mlp.c_fc.bias"), Dm)) ||
            (rc = ovs_bind_packed(&b->proj, pk + n_in + n_out + n_fc, w, P("mlp.c_proj.weight"), D, Dm)) ||
            (rc = ovs_bind_vec(&b->proj_b, w, P("mlp.c_proj.bias"), D))) {
            ovs_transformer_release(t);
            return rc;
        }
#undef P
    }
    return OVS_OK;
}

void ovs_transformer_release(ovs_transformer *t) {
    ovs_free(t->blocks);
    ovs_free(t->packed);
    t->blocks = NULL;
    t->packed = NULL;
    t->layers = 0;
}

size_t ovs_block_scratch_floats(const ovs_transformer *t, int64_t B, int64_t T) {
    int64_t D = t->width, wide = 3 * D > t->mlp ? 3 * D : t->mlp;
    size_t M = (size_t)B * (size_t)T;
    return M * (size_t)D + M * (size_t)wide + (size_t)t->heads * (size_t)T * (size_t)T;
}

/* The second half of a block, shared by both forwards: x += out_proj(h) (h holds the
 * attention output), then x += c_proj(act(c_fc(ln_2(x)))). */
static int block_tail(const ovs_transformer *t, const ovs_block *blk, float *x, int64_t M,
                      float *h, float *wide) {
    const int64_t D = t->width, Dm = t->mlp;
    int rc;
    if ((rc = ovs_linear_forward(x, h, &blk->out_proj, blk->out_proj_b, x, M, D, D, OVS_ACT_NONE)))
        return rc;
    if ((rc = ovs_layernorm_forward(h, x, blk->ln2_w, blk->ln2_b, M, D, 1e-5f))) return rc;
    if ((rc = ovs_linear_forward(wide, h, &blk->fc, blk->fc_b, NULL, M, D, Dm, t->act))) return rc;
    return ovs_linear_forward(x, wide, &blk->proj, blk->proj_b, x, M, Dm, D, OVS_ACT_NONE);
}

/* The workspace laid out as h (M, D), wide (M, max(3D, Dm)) and the attention's probabilities
 * after them (returned in *probs), then h <- ln_1(x). */
static int block_ln1(const ovs_transformer *t, const ovs_block *blk, const float *x, int64_t M,
                     float *scratch, float **h, float **wide, float **probs) {
    const int64_t D = t->width, Dm = t->mlp;
    *h = scratch;
    *wide = *h + (size_t)M * D;
    *probs = *wide + (size_t)M * (3 * D > Dm ? 3 * D : Dm);
    return ovs_layernorm_forward(*h, x, blk->ln1_w, blk->ln1_b, M, D, 1e-5f);
}

/* The first half of a block, shared by the forwards: block_ln1, then wide <- q|k|v =
 * in_proj(ln_1(x)) (h free once the projection has read it). */
static int block_qkv(const ovs_transformer *t, const ovs_block *blk, const float *x, int64_t M,
                     float *scratch, float **h, float **wide, float **probs) {
    const int64_t D = t->width;
    int rc = block_ln1(t, blk, x, M, scratch, h, wide, probs);
    if (rc) return rc;
    return ovs_linear_forward(*wide, *h, &blk->in_proj, blk->in_proj_b, NULL, M, D, 3 * D, OVS_ACT_NONE);
}

int ovs_block_forward(const ovs_transformer *t, const ovs_block *blk, float *x, int64_t B,
                      int64_t T, int causal, float *scratch) {
    const int64_t D = t->width, E = t->heads, F = D / E, M = B * T;
    float *h, *wide, *probs; /* probs (E, T, T) */
    int rc;
    if ((rc = block_qkv(t, blk, x, M, scratch, &h, &wide, &probs))) return rc;
    const float scale = 1.0f / sqrtf((float)F);
    for (int64_t b = 0; b < B; b++) {
        const float *qkv = wide + (size_t)b * T * 3 * D;
        rc = ovs_attention_forward(h + (size_t)b * T * D, qkv, 3 * D, qkv + D, 3 * D, qkv + 2 * D,
                                   3 * D, T, T, E, F, scale, NULL, causal, probs);
        if (rc) return rc;
    }
    return block_tail(t, blk, x, M, h, wide);
}

int ovs_block_forward_rows(const ovs_transformer *t, const ovs_block *blk, const float *x, int64_t B,
                           int64_t T, const int64_t *rows, int causal, float *out, float *scratch) {
    const int64_t D = t->width, E = t->heads, F = D / E, M = B * T;
    if (B < 0 || T < 1 || !rows)
        return ovs_set_error(OVS_ERR_ARG, "ovs_block_forward_rows: bad sizes B = %lld, T = %lld (rows %s)",
                             (long long)B, (long long)T, rows ? "given" : "NULL");
    for (int64_t b = 0; b < B; b++)
        if (rows[b] < 0 || rows[b] >= T)
            return ovs_set_error(OVS_ERR_ARG, "ovs_block_forward_rows: row %lld of sequence %lld is outside "
                                 "0..%lld", (long long)rows[b], (long long)b, (long long)(T - 1));
    if (B == 0) return OVS_OK;
    float *h, *wide, *probs; /* the attention output (B, D) goes to h, the MLP hidden to wide */
    int rc;
    const float scale = 1.0f / sqrtf((float)F);
    /* Only rows[b] reads the attention: with the key and value projections folded into its query
     * (ovs_attention_folded) no token's q, k or v is formed, only ln_1 of every token, where
     * the scratch after h holds the folded path's buffers (not for a handful of tokens: the
     * unfolded projection's buffer is too small then, and its work as small). */
    const int64_t Dm = t->mlp, wcols = 3 * D > Dm ? 3 * D : Dm;
    const double need = (double)B * (2.0 * D + 2.0 * E * D + E * T + 2.0);
    if (blk->in_proj.format == OVS_MATRIX_PACKED && D % OVS_PACK_NR == 0 && F % OVS_PACK_NR == 0 &&
        need <= (double)M * wcols + (double)E * T * T) {
        if ((rc = block_ln1(t, blk, x, M, scratch, &h, &wide, &probs))) return rc;
        int64_t *nk = (int64_t *)wide;   /* (B,): D is even, so wide is 8-byte aligned */
        float *q = wide + 2 * B, *att = q + (size_t)B * D, *u = att + (size_t)B * D; /* (B, D) x2, (B, E, D) */
        float *mix = u + (size_t)B * E * D, *sc = mix + (size_t)B * E * D;           /* (B, E, D), (B, E, T) */
        for (int64_t b = 0; b < B; b++) {
            memcpy(att + (size_t)b * D, h + ((size_t)b * T + rows[b]) * D, (size_t)D * sizeof(float));
            nk[b] = causal ? rows[b] + 1 : T;
        }
        /* the packed in_proj (3D, D) is q | k | v, each whole panels */
        const float *w = blk->in_proj.data;
        const ovs_matrix wq = {OVS_MATRIX_PACKED, w, D, D, 0}, wk = {OVS_MATRIX_PACKED, w + (size_t)D * D, D, D, 0},
                         wv = {OVS_MATRIX_PACKED, w + (size_t)2 * D * D, D, D, 0};
        if ((rc = ovs_linear_forward(q, att, &wq, blk->in_proj_b, NULL, B, D, D, OVS_ACT_NONE)) ||
            (rc = ovs_attention_folded(att, h, B, T, nk, q, &wk, blk->in_proj_b + D, &wv, blk->in_proj_b + 2 * D,
                                       E, scale, u, sc, mix)))
            return rc;
        memcpy(h, att, (size_t)B * D * sizeof(float));   /* wide is the MLP's from here */
    } else {
        if ((rc = block_qkv(t, blk, x, M, scratch, &h, &wide, &probs))) return rc;
        for (int64_t b = 0; b < B; b++) { /* h's rows are free once the projection has read them */
            const float *qkv = wide + (size_t)b * T * 3 * D;
            rc = ovs_attention_forward(h + (size_t)b * D, qkv + (size_t)rows[b] * 3 * D, 3 * D, qkv + D, 3 * D,
                                       qkv + 2 * D, 3 * D, 1, causal ? rows[b] + 1 : T, E, F, scale, NULL, 0,
                                       probs);
            if (rc) return rc;
        }
    }
    for (int64_t b = 0; b < B; b++)
        memcpy(out + (size_t)b * D, x + ((size_t)b * T + rows[b]) * D, (size_t)D * sizeof(float));
    return block_tail(t, blk, out, B, h, wide);
}

size_t ovs_block_prefixed_scratch_floats(const ovs_transformer *t, int64_t B, int64_t T,
                                         int64_t P) {
    int64_t D = t->width, wide = 3 * D > t->mlp ? 3 * D : t->mlp;
    size_t M = (size_t)B * (size_t)T, U = (size_t)P + (size_t)T;
    return M * (size_t)D + M * (size_t)wide + (size_t)t->heads * (size_t)T * U + U * 2 * (size_t)D;
}

int ovs_block_forward_prefixed(const ovs_transformer *t, const ovs_block *blk, float *x,
                               int64_t B, int64_t T, const float *past, int64_t P, float *save,
                               const int64_t *rows, float *out, float *scratch) {
    const int64_t D = t->width, E = t->heads, F = D / E, M = B * T, U = P + T;
    if (B < 0 || T < 0 || P < 0 || (P > 0 && !past) || (rows && !out))
        return ovs_set_error(OVS_ERR_ARG, "ovs_block_forward_prefixed: bad sizes B = %lld, "
                             "T = %lld, P = %lld (past %s, rows %s, out %s)", (long long)B, (long long)T,
                             (long long)P, past ? "given" : "NULL", rows ? "given" : "NULL",
                             out ? "given" : "NULL");
    for (int64_t b = 0; rows && b < B; b++)
        if (rows[b] < 0 || rows[b] >= T)
            return ovs_set_error(OVS_ERR_ARG, "ovs_block_forward_prefixed: row %lld of sequence %lld is "
                                 "outside 0..%lld", (long long)rows[b], (long long)b, (long long)(T - 1));
    if (M == 0) return OVS_OK;
    float *h, *wide, *probs; /* probs (E, T, U) */
    int rc;
    if ((rc = block_qkv(t, blk, x, M, scratch, &h, &wide, &probs))) return rc;
    float *kv = probs + (size_t)E * T * U;   /* (U, 2D): the prefix's k|v, then one sequence's */
    if (save)
        for (int64_t r = 0; r < M; r++)
            memcpy(save + (size_t)r * 2 * D, wide + (size_t)r * 3 * D + D, (size_t)2 * D * sizeof(float));
    /* Every sequence sees the same P cached rows: copy them once; only the T rows after them
     * change from sequence to sequence. */
    if (P > 0) memcpy(kv, past, (size_t)P * 2 * D * sizeof(float));
    const float scale = 1.0f / sqrtf((float)F);
    for (int64_t b = 0; b < B; b++) {
        const float *qkv = wide + (size_t)b * T * 3 * D;
        const int64_t n = rows ? rows[b] + 1 : T; /* this sequence's keys that are read */
        for (int64_t s = 0; s < n; s++)
            memcpy(kv + (size_t)(P + s) * 2 * D, qkv + (size_t)s * 3 * D + D,
                   (size_t)2 * D * sizeof(float));
        if (rows) /* one query, the last of the P + n positions: every key visible */
            rc = ovs_attention_forward(h + (size_t)b * D, qkv + (size_t)rows[b] * 3 * D, 3 * D, kv, 2 * D,
                                       kv + D, 2 * D, 1, P + n, E, F, scale, NULL, 0, probs);
        else
            rc = ovs_attention_forward(h + (size_t)b * T * D, qkv, 3 * D, kv, 2 * D, kv + D, 2 * D,
                                       T, U, E, F, scale, NULL, 1, probs);
        if (rc) return rc;
    }
    if (!rows) return block_tail(t, blk, x, M, h, wide);
    for (int64_t b = 0; b < B; b++)
        memcpy(out + (size_t)b * D, x + ((size_t)b * T + rows[b]) * D, (size_t)D * sizeof(float));
    return block_tail(t, blk, out, B, h, wide);
}
