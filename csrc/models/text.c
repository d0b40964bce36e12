/* CLIP text transformer: token + positional embedding, causal pre-LN blocks, ln_final,
 * end-of-text pooling, projection. Only positions up to the batch's last end-of-text token are
 * computed when `truncate` is set: attention is causal, so later positions cannot change them.
 * For the same reason a prefix shared by many prompts ("a photo of a") can run once: its keys and
 * values per layer are cached (ovs_text_prefix) and each prompt's remaining tokens attend to them
 * (ovs_text_forward_prefixed). */
#include "models/internal.h"

#include <stdio.h>
#include <string.h>

/* Config and weights of a new (zeroed) text tower (ovs_model_create). */
static int text_bind(ovs_text *m, const ovs_text_config *cfg, const ovs_tensor_map *w) {
    if (cfg->width <= 0 || cfg->heads <= 0 || cfg->context <= 0 || cfg->vocab <= 0)
        return ovs_set_error(OVS_ERR_ARG, "text config needs positive width, heads, context, vocab");
    m->cfg = *cfg;
    ovs_model_keep_prefix(m->prefix, sizeof m->prefix, &m->cfg.prefix, &m->arena);
    const int64_t D = cfg->width;
    char name[512];
    const ovs_tensor *t;
    int rc;
    int64_t tok_shape[2] = {cfg->vocab, D}, pos_shape[2] = {cfg->context, D};
    if ((rc = ovs_tensor_map_get(&t, w, OVS_WNAME(name, m, "token_embedding.weight"), 2,
                                 tok_shape)))
        return rc;
    m->tok = t->data;
    if ((rc = ovs_tensor_map_get(&t, w, OVS_WNAME(name, m, "positional_embedding"), 2, pos_shape)))
        return rc;
    m->pos = t->data;
    if ((rc = ovs_bind_vec(&m->ln_w, w, OVS_WNAME(name, m, "ln_final.weight"), D)) ||
        (rc = ovs_bind_vec(&m->ln_b, w, OVS_WNAME(name, m, "ln_final.bias"), D)) ||
        (rc = ovs_bind_projection(&m->proj_t, &m->proj, &m->cfg.embed_dim, w,
                                  OVS_WNAME(name, m, "text_projection"), D,
                                  cfg->embed_dim > 0 ? cfg->embed_dim : -1)))
        return rc;
    return ovs_tower_transformer(&m->tf, &m->cfg.layers, m->prefix, cfg->heads, cfg->act, w, D,
                                 "embedding");
}

static void text_release(ovs_text *m) {
    ovs_tower_release(&m->tf, m->proj_t);
}

OVS_MODEL_LIFECYCLE(text, "text")

static int check_ids(const ovs_text *m, const int32_t *ids, int64_t N, int64_t S) {
    const int64_t V = m->cfg.vocab;
    for (int64_t n = 0; n < N; n++)
        for (int64_t s = 0; s < S; s++) {
            int32_t id = ids[n * S + s];
            if (id < 0 || id >= V)
                return ovs_set_error(OVS_ERR_ARG, "token id %d at [%lld, %lld] is outside 0..%lld",
                                     id, (long long)n, (long long)s, (long long)(V - 1));
        }
    return OVS_OK;
}

/* eot (N,) = argmax of each row of ids (N, S) (the first maximum, as torch.argmax); returns the
 * number of positions up to the last of them. */
static int64_t end_of_text(int64_t *eot, const int32_t *ids, int64_t N, int64_t S) {
    int64_t T = 1;
    for (int64_t n = 0; n < N; n++) {
        const int32_t *row = ids + n * S;
        int64_t best = 0;
        for (int64_t s = 0; s < S; s++)
            if (row[s] > row[best]) best = s;
        eot[n] = best;
        if (best + 1 > T) T = best + 1;
    }
    return T;
}

/* x (N, T, D) = token embedding of ids (N, S)[:, :T] + positional embedding of positions
 * P..P+T-1. */
static void embed_tokens(const ovs_text *m, float *x, const int32_t *ids, int64_t N, int64_t S,
                         int64_t T, int64_t P) {
    const int64_t D = m->cfg.width;
#pragma omp parallel for schedule(static) if (N * T * D > 65536) num_threads(ovs_get_num_threads())
    for (int64_t nt = 0; nt < N * T; nt++) {
        int64_t n = nt / T, s = nt % T;
        const float *e = m->tok + (size_t)ids[n * S + s] * D, *p = m->pos + (size_t)(P + s) * D;
        float *row = x + (size_t)nt * D;
        for (int64_t d = 0; d < D; d++) row[d] = e[d] + p[d];
    }
}

/* out (N, embed_dim) = ln_final(pooled) @ text_projection; pooled (N, D) holds x[n, eot[n]] after
 * the last block (which computes only those rows, ovs_block_forward_rows), overwritten. */
static int text_head(ovs_text *m, float *out, int64_t N, float *pooled) {
    const int64_t D = m->cfg.width;
    int rc;
    if ((rc = ovs_layernorm_forward(pooled, pooled, m->ln_w, m->ln_b, N, D, 1e-5f))) return rc;
    return ovs_linear_forward(out, pooled, &m->proj, NULL, NULL, N, D, m->cfg.embed_dim, OVS_ACT_NONE);
}

int ovs_text_forward(ovs_text *m, float *out, const int32_t *ids, int64_t N, int64_t S,
                     int truncate) {
    const int64_t D = m->cfg.width;
    if (N < 0 || S <= 0 || S > m->cfg.context)
        return ovs_set_error(OVS_ERR_ARG, "token ids must be (N, S) with 1 <= S <= %lld, got (%lld, %lld)",
                             (long long)m->cfg.context, (long long)N, (long long)S);
    if (N == 0) return OVS_OK;
    int rc;
    if ((rc = check_ids(m, ids, N, S))) return rc;
    ovs_arena_reset(&m->arena);
    int64_t *eot = (int64_t *)ovs_arena_floats(&m->arena, (size_t)N * 2); /* (N,) */
    if (!eot) return OVS_ERR_NOMEM;
    int64_t T = end_of_text(eot, ids, N, S);
    if (!truncate) T = S;
    float *x = ovs_arena_floats(&m->arena, (size_t)N * T * D);          /* (N, T, D) */
    float *scratch = ovs_arena_floats(&m->arena, ovs_block_scratch_floats(&m->tf, N, T));
    float *pooled = ovs_arena_floats(&m->arena, (size_t)N * D);         /* (N, D) */
    if (!x || !scratch || !pooled) return OVS_ERR_NOMEM;
    embed_tokens(m, x, ids, N, S, T, 0);
    const int64_t L = m->tf.layers;
    for (int64_t l = 0; l + 1 < L; l++)
        if ((rc = ovs_block_forward(&m->tf, &m->tf.blocks[l], x, N, T, 1, scratch))) return rc;
    /* the last block only at the end-of-text tokens, the rows the head reads */
    if (L > 0 && (rc = ovs_block_forward_rows(&m->tf, &m->tf.blocks[L - 1], x, N, T, eot, 1, pooled, scratch)))
        return rc;
    if (L == 0)
        for (int64_t n = 0; n < N; n++)
            memcpy(pooled + n * D, x + ((size_t)n * T + eot[n]) * D, (size_t)D * sizeof(float));
    return text_head(m, out, N, pooled);
}

size_t ovs_text_prefix_floats(const ovs_text *m, int64_t P) {
    return (size_t)m->tf.layers * (size_t)(P > 0 ? P : 0) * 2 * (size_t)m->cfg.width;
}

int ovs_text_prefix(ovs_text *m, float *kv, const int32_t *ids, int64_t P) {
    const int64_t D = m->cfg.width;
    int rc;
    if (P < 1 || P >= m->cfg.context)
        return ovs_set_error(OVS_ERR_ARG, "a prefix must have 1..%lld tokens (one position stays "
                             "for the end-of-text token), got %lld",
                             (long long)(m->cfg.context - 1), (long long)P);
    if ((rc = check_ids(m, ids, 1, P))) return rc;
    ovs_arena_reset(&m->arena);
    float *x = ovs_arena_floats(&m->arena, (size_t)P * D);              /* (P, D) */
    float *scratch = ovs_arena_floats(&m->arena, ovs_block_prefixed_scratch_floats(&m->tf, 1, P, 0));
    if (!x || !scratch) return OVS_ERR_NOMEM;
    embed_tokens(m, x, ids, 1, P, P, 0);
    for (int64_t l = 0; l < m->tf.layers; l++)
        if ((rc = ovs_block_forward_prefixed(&m->tf, &m->tf.blocks[l], x, 1, P, NULL, 0,
                                             kv + (size_t)l * P * 2 * D, NULL, NULL, scratch)))
            return rc;
    return OVS_OK;
}

int ovs_text_forward_prefixed(ovs_text *m, float *out, const float *kv, int64_t P,
                              const int32_t *ids, int64_t N, int64_t S) {
    const int64_t D = m->cfg.width;
    int rc;
    if (P < 0 || N < 0 || S <= 0 || P + S > m->cfg.context || (P > 0 && !kv))
        return ovs_set_error(OVS_ERR_ARG, "a prefix of %lld tokens and suffixes (%lld, %lld) do "
                             "not fit: need P >= 0, S >= 1, P + S <= %lld and the prefix cache",
                             (long long)P, (long long)N, (long long)S, (long long)m->cfg.context);
    if (N == 0) return OVS_OK;
    if ((rc = check_ids(m, ids, N, S))) return rc;
    ovs_arena_reset(&m->arena);
    int64_t *eot = (int64_t *)ovs_arena_floats(&m->arena, (size_t)N * 2); /* (N,) within the suffix */
    if (!eot) return OVS_ERR_NOMEM;
    const int64_t T = end_of_text(eot, ids, N, S);
    float *x = ovs_arena_floats(&m->arena, (size_t)N * T * D);          /* (N, T, D) */
    float *scratch = ovs_arena_floats(&m->arena, ovs_block_prefixed_scratch_floats(&m->tf, N, T, P));
    float *pooled = ovs_arena_floats(&m->arena, (size_t)N * D);         /* (N, D) */
    if (!x || !scratch || !pooled) return OVS_ERR_NOMEM;
    embed_tokens(m, x, ids, N, S, T, P);
    const int64_t L = m->tf.layers;
    for (int64_t l = 0; l < L; l++) /* the last block only at the end-of-text tokens */
        if ((rc = ovs_block_forward_prefixed(&m->tf, &m->tf.blocks[l], x, N, T,
                                             P ? kv + (size_t)l * P * 2 * D : NULL, P, NULL,
                                             l + 1 == L ? eot : NULL, pooled, scratch)))
            return rc;
    if (L == 0)
        for (int64_t n = 0; n < N; n++)
            memcpy(pooled + n * D, x + ((size_t)n * T + eot[n]) * D, (size_t)D * sizeof(float));
    return text_head(m, out, N, pooled);
}
