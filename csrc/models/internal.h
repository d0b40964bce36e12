/* Model internals shared by csrc/models/ (and csrc/frameworks/). The segmentation heads in
 * csrc/methods/ use the public accessors of include/ovs/models.h instead. */
#ifndef OVS_MODELS_INTERNAL_H
#define OVS_MODELS_INTERNAL_H

#include "ovs/models.h"

/* A convolution with its BatchNorm folded in (owned weight and bias). The weight is held
 * either dense (`weight`, packed once by ovs_conv2d_pack: the raw folded copy is freed) or
 * sparse (`csr`, and then `weight` is NULL), never both. */
typedef struct {
    float *weight;            /* (K, C*R*S) folded, conv-packed; NULL while sparse */
    float *bias;              /* (K,) folded */
    ovs_matrix w;             /* the conv-packed matrix view of weight */
    ovs_csr csr;              /* (K, C*R*S) non-zeros of the folded weight when sparse */
    int sparse;               /* 1: run ovs_conv2d_sparse_forward on csr */
    ovs_sparse_plan *plan;    /* owned: the sparse kernel's tables for the last input size
                               * (freed with, and whenever, the CSR is freed) */
    int64_t nnz;              /* non-zeros of the folded weight */
    double dense_ms, sparse_ms;  /* last calibration timings (0 if not measured) */
    char name[96];            /* the conv's weight name without ".weight" */
    int64_t K, C, R, S;
    ovs_conv2d_params p;
} ovs_convbn;

typedef struct {
    ovs_convbn conv1, conv2, conv3, down;
    float *kconst;            /* owned: an empty conv2's branch output (4 planes,), computed on
                               * first use (resnet.c const_branch); freed by ovs_resnet_sparsify */
    int has_down;
    int64_t inplanes, planes, stride, dilation;
} ovs_bottleneck;

/* A positional embedding resized for one grid, cached until the grid changes. */
typedef struct {
    float *data;              /* (1 + gh*gw, D) */
    int64_t gh, gw;
} ovs_pos_cache;

struct ovs_resnet {
    ovs_resnet_config cfg;
    char prefix[128];
    ovs_convbn stem[3];
    ovs_bottleneck *blocks;   /* (nblocks,) stage by stage */
    int64_t nblocks;
    /* attention pool (has_attnpool) */
    int64_t channels;         /* C = 32 * width */
    const float *pos;         /* (1 + grid*grid, C) */
    ovs_matrix q, k, v, c;    /* (C, C) x3, (embed_dim, C), packed into attn_packed */
    float *attn_packed;       /* packed q | k | v | c, owned */
    const float *qb, *kb, *vb, *cb;
    ovs_pos_cache pos_cache;
    ovs_arena arena;
    int sparse_on;            /* last ovs_resnet_sparsify: ALL or AUTO (zeros are structure) */
};

struct ovs_vit {
    ovs_vit_config cfg;
    char prefix[128];
    ovs_matrix patch;         /* (D, 3*p*p) conv1 weight, conv-packed view of patch_packed */
    float *patch_packed;      /* owned (ovs_conv2d_pack) */
    const float *cls;         /* (D,) */
    const float *pos;         /* (1 + grid*grid, D) */
    const float *ln_pre_w, *ln_pre_b, *ln_post_w, *ln_post_b;  /* (D,) */
    float *proj_t;            /* owned packed (embed_dim, D) transpose of proj (D, embed_dim) */
    ovs_matrix proj;          /* packed view of proj_t */
    ovs_transformer tf;
    ovs_pos_cache pos_cache;
    ovs_arena arena;
};

struct ovs_text {
    ovs_text_config cfg;
    char prefix[128];
    const float *tok;         /* (vocab, D) */
    const float *pos;         /* (context, D) */
    const float *ln_w, *ln_b; /* (D,) */
    float *proj_t;            /* (embed_dim, D) owned, packed */
    ovs_matrix proj;          /* packed view of proj_t */
    ovs_transformer tf;
    ovs_arena arena;
};

/* Positional embedding pos (1 + g*g, D) resized to (gh, gw) as
 * F.interpolate(mode="bicubic", align_corners=False) on the spatial part; class row kept.
 * Returns a pointer to the cache (or `pos` itself when the grid matches). */
int ovs_pos_embed_for_grid(const float **out, ovs_pos_cache *cache, const float *pos, int64_t g,
                           int64_t D, int64_t gh, int64_t gw);
void ovs_pos_cache_free(ovs_pos_cache *cache);

/* Shared bind helpers (models/common.c). */
/* Pack weight `name` (rows, cols) into dst (ovs_matrix_packed_floats(rows, cols) floats, owned
 * by the model) and make *out the packed matrix. The raw tensor is not read again afterwards:
 * read from the table's source into scratch, it is freed at once; borrowed from memory, its
 * pages go back to the kernel (ovs_release_pages). Either way the packed copy replaces it in
 * memory instead of doubling it. */
int ovs_bind_packed(ovs_matrix *out, float *dst, const ovs_tensor_map *w, const char *name,
                    int64_t rows, int64_t cols);
/* As ovs_bind_packed for a conv weight `name` of shape (K, C, R, S) (ndim 4; ndim 2: a (K, C)
 * weight used as a 1x1 conv) of one group, no extent -1: read for one use, packed by
 * ovs_conv2d_pack into dst (ovs_conv2d_packed_floats(K, L, 1) floats, L the product of the other
 * extents, owned by the model); *out its conv-packed view. */
int ovs_bind_conv_packed(ovs_matrix *out, float *dst, const ovs_tensor_map *w, const char *name,
                         int ndim, const int64_t *shape);
/* As ovs_bind_conv_packed into a buffer of its own, *owned (ovs_malloc'd, the model frees it;
 * NULL on failure). */
int ovs_bind_conv_owned(ovs_matrix *out, float **owned, const ovs_tensor_map *w, const char *name,
                        int ndim, const int64_t *shape);
/* Replace the owned dense (rows, cols) matrix *data by its packed form (freeing the dense one);
 * *m becomes the packed matrix view. */
int ovs_pack_owned(float **data, ovs_matrix *m, int64_t rows, int64_t cols);
/* Hint that the whole pages inside [p, p + bytes) will not be read soon (MADV_PAGEOUT where the
 * system has it, else nothing). Contents are kept: a file-backed page is dropped from memory and
 * read again from the file if touched, an anonymous one may be swapped out. */
void ovs_release_pages(const void *p, size_t bytes);
/* Borrow a (n,) vector / (rows, cols) matrix used as is (made resident: ovs_tensor_map_get). */
int ovs_bind_vec(const float **out, const ovs_tensor_map *w, const char *name, int64_t n);
int ovs_bind_mat(ovs_matrix *out, const ovs_tensor_map *w, const char *name, int64_t rows,
                 int64_t cols);
/* Owned (cols, rows) transpose of a (rows, cols) weight named `name`; rows/cols -1 = any. */
int ovs_bind_transposed(float **out, int64_t *rows, int64_t *cols, const ovs_tensor_map *w,
                        const char *name, int64_t want_rows, int64_t want_cols);

/* The parts every model's create shares (models/common.c). A weight prefix is at most 99
 * characters: an ARG error "<what> weight prefix missing or too long" otherwise (NULL too). */
int ovs_model_check_prefix(const char *prefix, const char *what);
/* After m->cfg = *cfg: copy the caller's prefix *cfg_prefix into the model's buffer buf (cap
 * bytes) and point *cfg_prefix at it, and ready the model's workspace arena. */
void ovs_model_keep_prefix(char *buf, size_t cap, const char **cfg_prefix, ovs_arena *arena);
/* buf = the model m's weight prefix + the literal suffix (a char array buf), as an expression. */
#define OVS_WNAME(buf, m, suffix) (snprintf(buf, sizeof buf, "%s" suffix, (m)->prefix), buf)

/* Every model's create: check the weight prefix (`what` names the model), allocate the model
 * (size bytes, zeroed) and bind(model, cfg, w) its config and weights; on failure
 * release(model). Returns the model, or NULL with *rc the error. */
void *ovs_model_create(int *rc, size_t size, const char *prefix, const char *what,
                       int (*bind)(void *model, const void *cfg, const ovs_tensor_map *w),
                       void (*release)(void *model), const void *cfg, const ovs_tensor_map *w);
/* The lifecycle the towers share, for a file that defines <model>_bind(ovs_<model> *m, const
 * ovs_<model>_config *cfg, const ovs_tensor_map *w) (config checks, m->cfg,
 * ovs_model_keep_prefix, weights) and <model>_release(ovs_<model> *m) (what m owns but its arena):
 * ovs_<model>_create through ovs_model_create, ovs_<model>_free and ovs_<model>_get_config. */
#define OVS_MODEL_LIFECYCLE(model, what)                                                    \
    static int model##_bind_any(void *m, const void *cfg, const ovs_tensor_map *w) {        \
        return model##_bind(m, cfg, w);                                                     \
    }                                                                                       \
    void ovs_##model##_free(ovs_##model *m) {                                               \
        if (!m) return;                                                                     \
        model##_release(m);                                                                 \
        ovs_arena_free(&m->arena);                                                          \
        ovs_free(m);                                                                        \
    }                                                                                       \
    static void model##_free_any(void *m) { ovs_##model##_free(m); }                        \
    int ovs_##model##_create(ovs_##model **out, const ovs_##model##_config *cfg,            \
                             const ovs_tensor_map *w) {                                     \
        int rc;                                                                             \
        *out = ovs_model_create(&rc, sizeof(ovs_##model), cfg->prefix, what,                \
                                model##_bind_any, model##_free_any, cfg, w);                \
        return rc;                                                                          \
    }                                                                                       \
    const ovs_##model##_config *ovs_##model##_get_config(const ovs_##model *m) {            \
        return &m->cfg;                                                                     \
    }
/* A tower's projection `name` (D, embed), embed = want (-1: any), held as its packed (embed, D)
 * transpose: *owned the buffer, *proj its packed view, *embed the embedding width. */
int ovs_bind_projection(float **owned, ovs_matrix *proj, int64_t *embed, const ovs_tensor_map *w,
                        const char *name, int64_t D, int64_t want);
/* A tower's transformer "<prefix>transformer." (ovs_transformer_init), whose width must be the
 * tower's width D (`of` names where D comes from in the SHAPE error); *layers its depth. */
int ovs_tower_transformer(ovs_transformer *tf, int64_t *layers, const char *prefix, int64_t heads,
                          ovs_act act, const ovs_tensor_map *w, int64_t D, const char *of);
/* Release what ovs_bind_projection and ovs_tower_transformer bound (NULL-safe). */
void ovs_tower_release(ovs_transformer *tf, float *proj_t);

/* A conv (K, C, R, R) named `conv` with the BatchNorm `bn` (eps 1e-5) folded in; padding and
 * dilation as torch's Conv2d. ovs_convbn_forward runs the dense or the sparse kernel. */
int ovs_convbn_init(ovs_convbn *cb, const ovs_tensor_map *w, const char *conv, const char *bn,
                    int64_t K, int64_t C, int64_t R, int64_t stride, int64_t pad, int64_t dil);
void ovs_convbn_release(ovs_convbn *cb);
/* *out = a buffer for cb's weight: ovs_conv2d_packed_floats(K, C*R*S, groups) floats (K, C, R,
 * S and p set). */
int ovs_convbn_weight_buffer(const ovs_convbn *cb, float **out);
/* Take buf (from ovs_convbn_weight_buffer, holding the raw folded (K, C*R*S) weight; owned, freed
 * here on failure) as cb's dense weight, packed in place (ovs_conv2d_pack_inplace): cb->weight,
 * cb->w its conv-packed view. The packed copy replaces the raw one, never beside it. */
int ovs_convbn_set_dense(ovs_convbn *cb, float *buf);
/* Hold a sparse conv's weight dense (rebuilt from the CSR, packed; the CSR freed). */
int ovs_convbn_make_dense(ovs_convbn *cb);
int ovs_convbn_forward(const ovs_convbn *cb, float *out, const float *in, const float *residual,
                       int64_t N, int64_t H, int64_t W, ovs_act act, float *scratch);
/* Scratch floats ovs_convbn_forward needs on an (H, W) input (dense or sparse kernel). */
size_t ovs_convbn_scratch(const ovs_convbn *cb, int64_t H, int64_t W);
/* Output extent of bottleneck b on an input extent h (per the model's style). */
int64_t ovs_bottleneck_out_size(const ovs_resnet *m, const ovs_bottleneck *b, int64_t h);

#endif
