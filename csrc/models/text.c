/* CLIP text transformer: token + positional embedding, causal pre-LN blocks, ln_final,
 * end-of-text pooling, projection. Only positions up to the batch's last end-of-text token are
 * computed when `truncate` is set: attention is causal, so later positions cannot change them. */
#include "models/internal.h"

#include <stdio.h>
#include <string.h>

#define NAME(buf, m, suffix) (snprintf(buf, sizeof buf, "%s" suffix, (m)->prefix), buf)

int ovs_text_create(ovs_text **out, const ovs_text_config *cfg, const ovs_tensor_map *w) {
    *out = NULL;
    if (!cfg->prefix || strlen(cfg->prefix) >= 100)
        return ovs_set_error(OVS_ERR_ARG, "text weight prefix missing or too long");
    if (cfg->width <= 0 || cfg->heads <= 0 || cfg->context <= 0 || cfg->vocab <= 0)
        return ovs_set_error(OVS_ERR_ARG, "text config needs positive width, heads, context, vocab");
    ovs_text *m = ovs_calloc(1, sizeof *m);
    if (!m) return OVS_ERR_NOMEM;
    m->cfg = *cfg;
    snprintf(m->prefix, sizeof m->prefix, "%s", cfg->prefix);
    m->cfg.prefix = m->prefix;
    ovs_arena_init(&m->arena);
    const int64_t D = cfg->width;
    char name[512];
    const ovs_tensor *t;
    int rc;
    int64_t tok_shape[2] = {cfg->vocab, D}, pos_shape[2] = {cfg->context, D};
    if ((rc = ovs_tensor_map_get(&t, w, NAME(name, m, "token_embedding.weight"), 2, tok_shape))) goto error;
    m->tok = t->data;
    if ((rc = ovs_tensor_map_get(&t, w, NAME(name, m, "positional_embedding"), 2, pos_shape))) goto error;
    m->pos = t->data;
    if ((rc = ovs_bind_vec(&m->ln_w, w, NAME(name, m, "ln_final.weight"), D)) ||
        (rc = ovs_bind_vec(&m->ln_b, w, NAME(name, m, "ln_final.bias"), D)))
        goto error;
    int64_t rows, cols;
    if ((rc = ovs_bind_transposed(&m->proj_t, &rows, &cols, w, NAME(name, m, "text_projection"), D,
                                  cfg->embed_dim > 0 ? cfg->embed_dim : -1)))
        goto error;
    if ((rc = ovs_pack_owned(&m->proj_t, &m->proj, cols, rows))) goto error;
    m->cfg.embed_dim = cols;
    snprintf(name, sizeof name, "%stransformer.", m->prefix);
    if ((rc = ovs_transformer_init(&m->tf, name, cfg->heads, cfg->act, w))) goto error;
    if (m->tf.width != D) {
        rc = ovs_set_error(OVS_ERR_SHAPE, "text transformer width %lld != embedding width %lld",
                           (long long)m->tf.width, (long long)D);
        goto error;
    }
    m->cfg.layers = m->tf.layers;
    *out = m;
    return OVS_OK;
error:
    ovs_text_free(m);
    return rc;
}

void ovs_text_free(ovs_text *m) {
    if (!m) return;
    ovs_transformer_release(&m->tf);
    ovs_free(m->proj_t);
    ovs_arena_free(&m->arena);
    ovs_free(m);
}

const ovs_text_config *ovs_text_get_config(const ovs_text *m) { return &m->cfg; }

int ovs_text_forward(ovs_text *m, float *out, const int32_t *ids, int64_t N, int64_t S,
                     int truncate) {
    const int64_t D = m->cfg.width, V = m->cfg.vocab;
    if (N < 0 || S <= 0 || S > m->cfg.context)
        return ovs_set_error(OVS_ERR_ARG, "token ids must be (N, S) with 1 <= S <= %lld, got (%lld, %lld)",
                             (long long)m->cfg.context, (long long)N, (long long)S);
    if (N == 0) return OVS_OK;
    ovs_arena_reset(&m->arena);
    int64_t *eot = (int64_t *)ovs_arena_floats(&m->arena, (size_t)N * 2); /* (N,) */
    if (!eot) return OVS_ERR_NOMEM;
    int64_t T = 1;
    for (int64_t n = 0; n < N; n++) {
        const int32_t *row = ids + n * S;
        int64_t best = 0;
        for (int64_t s = 0; s < S; s++) {
            if (row[s] < 0 || row[s] >= V)
                return ovs_set_error(OVS_ERR_ARG, "token id %d at [%lld, %lld] is outside 0..%lld",
                                     row[s], (long long)n, (long long)s, (long long)(V - 1));
            if (row[s] > row[best]) best = s;
        }
        eot[n] = best;
        if (best + 1 > T) T = best + 1;
    }
    if (!truncate) T = S;
    float *x = ovs_arena_floats(&m->arena, (size_t)N * T * D);          /* (N, T, D) */
    float *scratch = ovs_arena_floats(&m->arena, ovs_block_scratch_floats(&m->tf, N, T));
    float *pooled = ovs_arena_floats(&m->arena, (size_t)N * D);         /* (N, D) */
    if (!x || !scratch || !pooled) return OVS_ERR_NOMEM;
#pragma omp parallel for schedule(static) if (N * T * D > 65536) num_threads(ovs_get_num_threads())
    for (int64_t nt = 0; nt < N * T; nt++) {
        int64_t n = nt / T, s = nt % T;
        const float *e = m->tok + (size_t)ids[n * S + s] * D, *p = m->pos + (size_t)s * D;
        float *row = x + (size_t)nt * D;
        for (int64_t d = 0; d < D; d++) row[d] = e[d] + p[d];
    }
    int rc;
    for (int64_t l = 0; l < m->tf.layers; l++)
        if ((rc = ovs_block_forward(&m->tf, &m->tf.blocks[l], x, N, T, 1, scratch))) return rc;
    for (int64_t n = 0; n < N; n++)
        memcpy(pooled + n * D, x + ((size_t)n * T + eot[n]) * D, (size_t)D * sizeof(float));
    if ((rc = ovs_layernorm_forward(pooled, pooled, m->ln_w, m->ln_b, N, D, 1e-5f))) return rc;
    return ovs_linear_forward(out, pooled, &m->proj, NULL, NULL, N, D, m->cfg.embed_dim, OVS_ACT_NONE);
}
