/* CLIP VisionTransformer (open_clip layout): patch conv, class token, positional embedding
 * (resized for other grids), ln_pre, pre-LN blocks, ln_post, projection. */
#include "models/internal.h"

#include <stdio.h>
#include <string.h>

/* Config and weights of a new (zeroed) ViT (ovs_model_create). */
static int vit_bind(ovs_vit *m, const ovs_vit_config *cfg, const ovs_tensor_map *w) {
    if (cfg->width <= 0 || cfg->heads <= 0 || cfg->patch <= 0 || cfg->grid <= 0)
        return ovs_set_error(OVS_ERR_ARG, "ViT config needs positive width, heads, patch and grid");
    m->cfg = *cfg;
    ovs_model_keep_prefix(m->prefix, sizeof m->prefix, &m->cfg.prefix, &m->arena);
    const int64_t D = cfg->width, p = cfg->patch, g = cfg->grid;
    char name[512];
    const ovs_tensor *t;
    int rc;
    int64_t pos_shape[2] = {1 + g * g, D};
    const int64_t conv_shape[4] = {D, 3, p, p};
    if ((rc = ovs_bind_conv_owned(&m->patch, &m->patch_packed, w, OVS_WNAME(name, m, "conv1.weight"),
                                  4, conv_shape)) ||
        (rc = ovs_bind_vec(&m->cls, w, OVS_WNAME(name, m, "class_embedding"), D)) ||
        (rc = ovs_tensor_map_get(&t, w, OVS_WNAME(name, m, "positional_embedding"), 2, pos_shape)))
        return rc;
    m->pos = t->data;
    if ((rc = ovs_bind_vec(&m->ln_pre_w, w, OVS_WNAME(name, m, "ln_pre.weight"), D)) ||
        (rc = ovs_bind_vec(&m->ln_pre_b, w, OVS_WNAME(name, m, "ln_pre.bias"), D)) ||
        (rc = ovs_bind_vec(&m->ln_post_w, w, OVS_WNAME(name, m, "ln_post.weight"), D)) ||
        (rc = ovs_bind_vec(&m->ln_post_b, w, OVS_WNAME(name, m, "ln_post.bias"), D)) ||
        (cfg->embed_dim > 0 &&
         (rc = ovs_bind_projection(&m->proj_t, &m->proj, &m->cfg.embed_dim, w,
                                   OVS_WNAME(name, m, "proj"), D, cfg->embed_dim))))
        return rc;
    return ovs_tower_transformer(&m->tf, &m->cfg.layers, m->prefix, cfg->heads, cfg->act, w, D,
                                 "conv1");
}

static void vit_release(ovs_vit *m) {
    ovs_tower_release(&m->tf, m->proj_t);
    ovs_free(m->patch_packed);
    ovs_pos_cache_free(&m->pos_cache);
}

OVS_MODEL_LIFECYCLE(vit, "ViT")
const ovs_transformer *ovs_vit_transformer(const ovs_vit *m) { return &m->tf; }

void ovs_vit_head(const ovs_vit *m, const float **ln_w, const float **ln_b, const ovs_matrix **proj) {
    *ln_w = m->ln_post_w;
    *ln_b = m->ln_post_b;
    *proj = m->cfg.embed_dim > 0 ? &m->proj : NULL;
}

int ovs_vit_forward(ovs_vit *m, const float *images, int64_t N, int64_t H, int64_t W,
                    int64_t blocks, ovs_vit_outputs *out) {
    const int64_t D = m->cfg.width, p = m->cfg.patch, L = m->tf.layers;
    if (N <= 0) return ovs_set_error(OVS_ERR_ARG, "batch size must be positive, got %lld", (long long)N);
    if (H < p || W < p)
        return ovs_set_error(OVS_ERR_ARG, "image %lldx%lld is smaller than one %lldx%lld patch",
                             (long long)H, (long long)W, (long long)p, (long long)p);
    if (blocks < 0 || blocks > L)
        return ovs_set_error(OVS_ERR_ARG, "blocks must be in 0..%lld, got %lld", (long long)L, (long long)blocks);
    if (out->embed && blocks != L)
        return ovs_set_error(OVS_ERR_ARG, "the embedding needs all %lld blocks", (long long)L);
    const int64_t gh = H / p, gw = W / p, T = 1 + gh * gw;
    ovs_conv2d_params cp = ovs_conv2d_defaults();
    cp.stride_h = cp.stride_w = p;
    int rc;
    const float *pos;
    if ((rc = ovs_pos_embed_for_grid(&pos, &m->pos_cache, m->pos, m->cfg.grid, D, gh, gw))) return rc;

    ovs_arena_reset(&m->arena);
    size_t scratch_n = ovs_conv2d_scratch_floats(3, H, W, D, p, p, &cp);
    size_t block_n = ovs_block_scratch_floats(&m->tf, N, T);
    float *pe = ovs_arena_floats(&m->arena, (size_t)N * D * gh * gw);       /* (N, D, gh, gw) */
    float *x = ovs_arena_floats(&m->arena, (size_t)N * T * D);              /* (N, T, D) */
    float *scratch = ovs_arena_floats(&m->arena, scratch_n > block_n ? scratch_n : block_n);
    if (!pe || !x || !scratch) return OVS_ERR_NOMEM;

    if ((rc = ovs_conv2d_forward(pe, images, &m->patch, NULL, NULL, N, 3, H, W, D, p, p, &cp,
                                 OVS_ACT_NONE, scratch)))
        return rc;
    const int64_t G = gh * gw;
#pragma omp parallel for schedule(static) if (N * T * D > 65536) num_threads(ovs_get_num_threads())
    for (int64_t nt = 0; nt < N * T; nt++) {
        int64_t n = nt / T, i = nt % T;
        float *row = x + (size_t)nt * D;
        const float *pr = pos + (size_t)i * D;
        if (i == 0) {
            for (int64_t d = 0; d < D; d++) row[d] = m->cls[d] + pr[d];
        } else {
            const float *src = pe + (size_t)n * D * G + (i - 1);
            for (int64_t d = 0; d < D; d++) row[d] = src[(size_t)d * G] + pr[d];
        }
    }
    if ((rc = ovs_layernorm_forward(x, x, m->ln_pre_w, m->ln_pre_b, N * T, D, 1e-5f))) return rc;
    /* the embedding alone reads only the class tokens of the last block: its out-projection,
     * MLP and attention queries run for those N rows (ovs_block_forward_rows; ~6% of ViT-B/16's
     * multiply-adds at 224^2) */
    const int cls_only = out->embed && !out->tokens && !out->block_tokens && blocks > 0;
    float *cls = pe; /* (N, D) class tokens, then after ln_post (pe is free after the embedding) */
    for (int64_t l = 0; l < blocks; l++) {
        if (cls_only && l == blocks - 1) {
            int64_t *first = (int64_t *)ovs_arena_floats(&m->arena, (size_t)N * 2);
            if (!first) return OVS_ERR_NOMEM;
            for (int64_t n = 0; n < N; n++) first[n] = 0;
            if ((rc = ovs_block_forward_rows(&m->tf, &m->tf.blocks[l], x, N, T, first, 0, cls, scratch))) return rc;
            break;
        }
        if ((rc = ovs_block_forward(&m->tf, &m->tf.blocks[l], x, N, T, 0, scratch))) return rc;
        if (out->block_tokens)
            memcpy(out->block_tokens + (size_t)l * N * T * D, x, (size_t)N * T * D * sizeof(float));
    }
    if (out->tokens) memcpy(out->tokens, x, (size_t)N * T * D * sizeof(float));
    if (out->embed) {
        if (!cls_only)
            for (int64_t n = 0; n < N; n++)
                memcpy(cls + n * D, x + (size_t)n * T * D, (size_t)D * sizeof(float));
        if ((rc = ovs_layernorm_forward(cls, cls, m->ln_post_w, m->ln_post_b, N, D, 1e-5f))) return rc;
        if (m->cfg.embed_dim > 0)
            rc = ovs_linear_forward(out->embed, cls, &m->proj, NULL, NULL, N, D, m->cfg.embed_dim,
                                    OVS_ACT_NONE);
        else
            memcpy(out->embed, cls, (size_t)N * D * sizeof(float));
    }
    return rc;
}
