/* Helpers shared by the towers: weight binding and positional-embedding resizing. */
#define _DEFAULT_SOURCE   /* madvise, MADV_PAGEOUT, sysconf */
#include "models/internal.h"

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

void ovs_release_pages(const void *p, size_t bytes) {
#ifdef MADV_PAGEOUT
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0 || !p) return;
    uintptr_t lo = ((uintptr_t)p + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
    uintptr_t hi = ((uintptr_t)p + bytes) & ~((uintptr_t)page - 1);
    if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_PAGEOUT);  /* a hint; errors harmless */
#else
    (void)p;
    (void)bytes;
#endif
}

int ovs_bind_packed(ovs_matrix *out, float *dst, const ovs_tensor_map *w, const char *name,
                    int64_t rows, int64_t cols) {
    const float *src;
    float *scratch;
    int64_t shape[2] = {rows, cols};
    int rc = ovs_tensor_map_read(NULL, &src, &scratch, w, name, 2, shape);
    if (rc) return rc;
    rc = ovs_matrix_pack(dst, src, rows, cols);
    if (scratch) ovs_free_transient(scratch);
    else if (!rc) ovs_release_pages(src, (size_t)rows * (size_t)cols * sizeof(float));
    if (rc) return rc;
    *out = ovs_matrix_packed(dst, rows, cols);
    return OVS_OK;
}

int ovs_bind_conv_packed(ovs_matrix *out, float *dst, const ovs_tensor_map *w, const char *name,
                         int ndim, const int64_t *shape) {
    const float *src;
    float *scratch;
    int64_t K = shape[0], L = 1;
    for (int i = 1; i < ndim; i++) L *= shape[i];
    int rc = ovs_tensor_map_read(NULL, &src, &scratch, w, name, ndim, shape);
    if (rc) return rc;
    rc = ovs_conv2d_pack(dst, src, K, L, 1);
    if (scratch) ovs_free_transient(scratch);
    else if (!rc) ovs_release_pages(src, (size_t)K * (size_t)L * sizeof(float));
    if (rc) return rc;
    *out = ovs_conv2d_packed(dst, K, L, 1);
    return OVS_OK;
}

int ovs_bind_conv_owned(ovs_matrix *out, float **owned, const ovs_tensor_map *w, const char *name,
                        int ndim, const int64_t *shape) {
    int64_t L = 1;
    for (int i = 1; i < ndim; i++) L *= shape[i];
    const size_t n = ovs_conv2d_packed_floats(shape[0], L, 1);
    if (n == SIZE_MAX || n > SIZE_MAX / sizeof(float))
        return ovs_set_error(OVS_ERR_OVERFLOW, "conv weight '%s' is too large to pack", name);
    if (!(*owned = ovs_malloc(n ? n * sizeof(float) : 1))) return OVS_ERR_NOMEM;
    return ovs_bind_conv_packed(out, *owned, w, name, ndim, shape);
}

int ovs_pack_owned(float **data, ovs_matrix *m, int64_t rows, int64_t cols) {
    size_t n = ovs_matrix_packed_floats(rows, cols);
    if (n == SIZE_MAX || n > SIZE_MAX / sizeof(float))
        return ovs_set_error(OVS_ERR_OVERFLOW, "packed (%lld, %lld) weight is too large",
                             (long long)rows, (long long)cols);
    float *packed = ovs_malloc(n ? n * sizeof(float) : 1);
    if (!packed) return OVS_ERR_NOMEM;
    int rc = ovs_matrix_pack(packed, *data, rows, cols);
    if (rc) {
        ovs_free(packed);
        return rc;
    }
    ovs_free(*data);
    *data = packed;
    *m = ovs_matrix_packed(packed, rows, cols);
    return OVS_OK;
}

int ovs_bind_vec(const float **out, const ovs_tensor_map *w, const char *name, int64_t n) {
    const ovs_tensor *t;
    int64_t shape[1] = {n};
    int rc = ovs_tensor_map_get(&t, w, name, 1, shape);
    if (rc) return rc;
    *out = t->data;
    return OVS_OK;
}

int ovs_bind_mat(ovs_matrix *out, const ovs_tensor_map *w, const char *name, int64_t rows,
                 int64_t cols) {
    const ovs_tensor *t;
    int64_t shape[2] = {rows, cols};
    int rc = ovs_tensor_map_get(&t, w, name, 2, shape);
    if (rc) return rc;
    *out = ovs_matrix_dense(t->data, t->shape[0], t->shape[1]);
    return OVS_OK;
}

int ovs_bind_transposed(float **out, int64_t *rows, int64_t *cols, const ovs_tensor_map *w,
                        const char *name, int64_t want_rows, int64_t want_cols) {
    const ovs_tensor *t;
    const float *src;
    float *scratch;
    int64_t shape[2] = {want_rows, want_cols};
    int rc = ovs_tensor_map_read(&t, &src, &scratch, w, name, 2, shape);
    if (rc) return rc;
    int64_t R = t->shape[0], C = t->shape[1];
    size_t n;
    float *d = NULL;
    if (ovs_mul3_size(&n, (size_t)R, (size_t)C, sizeof(float)))
        rc = ovs_set_error(OVS_ERR_OVERFLOW, "weight '%s' is too large to transpose", name);
    else if (!(d = ovs_malloc(n ? n : 1)))
        rc = OVS_ERR_NOMEM;
    if (rc) {
        ovs_free_transient(scratch);
        return rc;
    }
    for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < C; c++) d[c * R + r] = src[r * C + c];
    ovs_free_transient(scratch);
    *out = d;
    *rows = R;
    *cols = C;
    return OVS_OK;
}

int ovs_model_check_prefix(const char *prefix, const char *what) {
    if (!prefix || strlen(prefix) >= 100)
        return ovs_set_error(OVS_ERR_ARG, "%s weight prefix missing or too long", what);
    return OVS_OK;
}

void *ovs_model_create(int *rc, size_t size, const char *prefix, const char *what,
                       int (*bind)(void *model, const void *cfg, const ovs_tensor_map *w),
                       void (*release)(void *model), const void *cfg, const ovs_tensor_map *w) {
    void *m = NULL;
    if ((*rc = ovs_model_check_prefix(prefix, what))) return NULL;
    if (!(m = ovs_calloc(1, size))) {
        *rc = OVS_ERR_NOMEM;
        return NULL;
    }
    if ((*rc = bind(m, cfg, w))) {
        release(m);
        return NULL;
    }
    return m;
}

void ovs_model_keep_prefix(char *buf, size_t cap, const char **cfg_prefix, ovs_arena *arena) {
    snprintf(buf, cap, "%s", *cfg_prefix);
    *cfg_prefix = buf;
    ovs_arena_init(arena);
}

int ovs_bind_projection(float **owned, ovs_matrix *proj, int64_t *embed, const ovs_tensor_map *w,
                        const char *name, int64_t D, int64_t want) {
    int64_t rows, cols;
    int rc = ovs_bind_transposed(owned, &rows, &cols, w, name, D, want);
    if (rc || (rc = ovs_pack_owned(owned, proj, cols, rows))) return rc;
    *embed = cols;
    return OVS_OK;
}

int ovs_tower_transformer(ovs_transformer *tf, int64_t *layers, const char *prefix, int64_t heads,
                          ovs_act act, const ovs_tensor_map *w, int64_t D, const char *of) {
    char name[512];
    snprintf(name, sizeof name, "%stransformer.", prefix);
    int rc = ovs_transformer_init(tf, name, heads, act, w);
    if (rc) return rc;
    if (tf->width != D)
        return ovs_set_error(OVS_ERR_SHAPE, "transformer width %lld != %s width %lld",
                             (long long)tf->width, of, (long long)D);
    *layers = tf->layers;
    return OVS_OK;
}

void ovs_tower_release(ovs_transformer *tf, float *proj_t) {
    ovs_transformer_release(tf);
    ovs_free(proj_t);
}

int ovs_pos_embed_for_grid(const float **out, ovs_pos_cache *cache, const float *pos, int64_t g,
                           int64_t D, int64_t gh, int64_t gw) {
    if (gh == g && gw == g) {
        *out = pos;
        return OVS_OK;
    }
    if (cache->data && cache->gh == gh && cache->gw == gw) {
        *out = cache->data;
        return OVS_OK;
    }
    size_t n = (size_t)(1 + gh * gw) * (size_t)D;
    float *dst = ovs_malloc(n * sizeof(float));
    float *grid_in = ovs_malloc((size_t)D * (size_t)(g * g) * sizeof(float));   /* (D, g, g) */
    float *grid_out = ovs_malloc((size_t)D * (size_t)(gh * gw) * sizeof(float)); /* (D, gh, gw) */
    int rc = OVS_OK;
    if (!dst || !grid_in || !grid_out) {
        rc = OVS_ERR_NOMEM;
        goto done;
    }
    for (int64_t i = 0; i < g * g; i++)
        for (int64_t d = 0; d < D; d++) grid_in[d * g * g + i] = pos[(1 + i) * D + d];
    if ((rc = ovs_resize_bicubic(grid_out, grid_in, D, g, g, gh, gw, 0))) goto done;
    memcpy(dst, pos, (size_t)D * sizeof(float));
    for (int64_t i = 0; i < gh * gw; i++)
        for (int64_t d = 0; d < D; d++) dst[(1 + i) * D + d] = grid_out[d * gh * gw + i];
    ovs_free(cache->data);
    cache->data = dst;
    cache->gh = gh;
    cache->gw = gw;
    dst = NULL;
    *out = cache->data;
done:
    ovs_free(dst);
    ovs_free(grid_in);
    ovs_free(grid_out);
    return rc;
}

void ovs_pos_cache_free(ovs_pos_cache *cache) {
    ovs_free(cache->data);
    memset(cache, 0, sizeof *cache);
}
