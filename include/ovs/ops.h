/*
 * ovs ops: one function per op, float32, C-contiguous, NCHW for images.
 *
 * Argument order: outputs, inputs, weights, sizes, options, scratch.
 * Dimension letters used in this header and in csrc/ops/:
 *   N batch   C input channels   H, W input height/width
 *   K output channels (conv) / output features (linear)
 *   R, S kernel height/width   P, Q output height/width
 *   M rows of a matrix operand (tokens, pixels)   D feature width
 *   T tokens (query side)   U tokens (key side)   E heads   F head width (D = E*F)
 *
 * Every fast kernel has a plain reference `*_naive` with the same signature (minus scratch)
 * kept for tests (csrc/ops/naive.c, checked against its twin by tests/test_ops_twins.py);
 * ops that are plain loops already (batchnorm fold, neighbour fill, normalize_u8, the u8
 * resizes, the positional encoding's table) are their own reference. Ops never allocate (one exception: ovs_resize_u8_pil_bicubic): callers
 * pass scratch sized by the matching `*_scratch_floats` function. Unless stated, `out` must
 * not alias an input. Zero-sized work is a no-op; negative sizes and inconsistent arguments
 * give OVS_ERR_ARG, sizes whose products overflow (or a BLAS dimension above INT_MAX)
 * OVS_ERR_OVERFLOW, each with a message naming the op and the argument.
 *
 * Example (a 3x3 conv with fused ReLU):
 *
 *     ovs_matrix w = ovs_matrix_dense(weights, K, C * 3 * 3);
 *     ovs_conv2d_params p = ovs_conv2d_defaults(); p.pad_h = p.pad_w = 1;
 *     size_t n = ovs_conv2d_scratch_floats(C, H, W, K, 3, 3, &p);
 *     float *scratch = ovs_arena_floats(&arena, n);
 *     ovs_conv2d_forward(out, in, &w, bias, NULL, N, C, H, W, K, 3, 3, &p, OVS_ACT_RELU, scratch);
 */
#ifndef OVS_OPS_H
#define OVS_OPS_H

#include "ovs/ovs.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- weights as matrices */
/* A weight seen as a (rows, cols) matrix: a linear weight (K, C) or a conv weight
 * (K, C/groups*R*S). Ops take this rather than a bare pointer so that a sparse (CSR) format can
 * be chosen per layer later without changing op signatures. */
typedef enum {
    OVS_MATRIX_DENSE = 0,     /* data: (rows, cols) row-major */
    OVS_MATRIX_PACKED = 2,    /* data: panels for the GEMM micro-kernels, see ovs_matrix_pack */
    OVS_MATRIX_CONV_PACKED = 3, /* data: a conv weight in the conv's kernel layout, see
                                 * ovs_conv2d_pack (convs only) */
} ovs_matrix_format;

typedef struct {
    ovs_matrix_format format;
    const float *data;        /* dense: (rows, cols); packed: (ceil(rows/NR), cols, NR) */
    int64_t rows, cols;
    int64_t groups;           /* conv-packed: the conv groups it was packed for; else unused */
} ovs_matrix;

ovs_matrix ovs_matrix_dense(const float *data, int64_t rows, int64_t cols);

/* ---------------------------------------------------------------- packed weights */
/* A fixed weight W (rows = K output features, cols = C input features) packed once, at model
 * build, into the layout the GEMM micro-kernels stream: ceil(K/NR) panels, panel p a (C, NR)
 * block with packed[(p*C + c)*NR + j] = W[p*NR + j, c] (zeros for p*NR + j >= K).
 * Linear layers and ovs_matmul_wt accept packed matrices; every output element is then one
 * fmaf chain over c = 0..C-1 in increasing order (bias, residual, activation applied after), so
 * a row's result is bitwise the same whatever M, the row's position, the thread count or the
 * CPU's kernel (portable / AVX2+FMA / AVX-512F, chosen at run time). */
#define OVS_PACK_NR 16

/* Floats of the packed form of a (rows, cols) matrix; SIZE_MAX if that overflows. */
size_t ovs_matrix_packed_floats(int64_t rows, int64_t cols);
/* dst (ovs_matrix_packed_floats(rows, cols),) = packed form of src (rows, cols). */
int ovs_matrix_pack(float *dst, const float *src, int64_t rows, int64_t cols);
ovs_matrix ovs_matrix_packed(const float *packed, int64_t rows, int64_t cols);

/* Naive twin of the packed GEMM: out (M, K) = a (M, C) @ W^T, each element one fmaf chain in
 * increasing c, read straight from the packed layout. */
int ovs_gemm_packed_naive(float *out, const float *a, const float *packed, int64_t M, int64_t C,
                          int64_t K);

/* Micro-kernel family of the packed GEMM. AUTO picks the best the CPU supports (the default);
 * forcing one (tests, benchmarks) fails with OVS_ERR_UNSUPPORTED if the CPU lacks it. Process-
 * wide; do not change it while another thread runs a model. */
typedef enum {
    OVS_GEMM_ISA_AUTO = -1,
    OVS_GEMM_ISA_PORTABLE = 0,
    OVS_GEMM_ISA_AVX2 = 1,    /* AVX2 + FMA */
    OVS_GEMM_ISA_AVX512 = 2,  /* AVX-512F */
} ovs_gemm_isa_kind;
int ovs_gemm_set_isa(ovs_gemm_isa_kind kind);
/* "portable", "avx2" or "avx512": the kernels in use. */
const char *ovs_gemm_isa_name(void);
/* The FMA rate of the kernels' ISA on this machine, for reporting kernels and models as a
 * share of it: each of `threads` threads runs iters rounds of 12 independent vector FMAs held
 * in registers (no memory traffic); *gflops = 2 * lanes * FMAs / wall time / 1e9. */
int ovs_fma_peak(int threads, int64_t iters, double *gflops);
/* The packed-weight GEMM and the attention keep their workspaces (packed rows, partial sums,
 * packed keys and values; up to 32 MiB each) per calling thread between calls, freed when the
 * thread exits; this frees the calling thread's now (memory accounting, tests). */
void ovs_gemm_release_workspace(void);

/* out (M, K) = alpha * a (M, C) @ w^T (C -> K) + beta * out. Dense via OpenBLAS sgemm, packed
 * via the packed-weight GEMM. lda/ldo are row strides of a and out (>= C and >= K). */
int ovs_matmul_wt(float *out, int64_t ldo, const float *a, int64_t lda, const ovs_matrix *w,
                  int64_t M, float alpha, float beta);
int ovs_matmul_wt_naive(float *out, int64_t ldo, const float *a, int64_t lda,
                        const ovs_matrix *w, int64_t M, float alpha, float beta);

/* out (M, N) = alpha * a (M, K) @ b (K, N) + beta * out (beta == 0 ignores out), via OpenBLAS;
 * lda, ldb, ldo are row strides (>= K, N, N): a product of activations (attention weights
 * times values, a similarity matrix times features). */
int ovs_matmul(float *out, int64_t ldo, const float *a, int64_t lda, const float *b, int64_t ldb,
               int64_t M, int64_t K, int64_t N, float alpha, float beta);
int ovs_matmul_naive(float *out, int64_t ldo, const float *a, int64_t lda, const float *b,
                     int64_t ldb, int64_t M, int64_t K, int64_t N, float alpha, float beta);

/* ---------------------------------------------------------------- activations */
typedef enum {
    OVS_ACT_NONE = 0,
    OVS_ACT_RELU = 1,
    OVS_ACT_GELU = 2,         /* exact, 0.5 x (1 + erf(x / sqrt 2)) as torch.nn.GELU() */
    OVS_ACT_QUICKGELU = 3,    /* x * sigmoid(1.702 x) as open_clip QuickGELU */
    OVS_ACT_SIGMOID = 4,      /* 1 / (1 + exp(-x)) as torch.sigmoid (0 below x = -88.7) */
} ovs_act;

/* The activations table (csrc/ops/act.c), the one place an activation is named: every act=
 * of the bindings and _core.activations() (ovs.model.ACTIVATIONS, the CLI's --act) read it. */
typedef struct {
    const char *name;         /* "quickgelu" */
    ovs_act act;
    int tower_mlp;            /* an MLP activation of the CLIP towers (ovs.Model(act=)) */
    const char *summary;
} ovs_act_info;
/* The table: *count entries. */
const ovs_act_info *ovs_act_table(int64_t *count);
/* The entry named name, or NULL. */
const ovs_act_info *ovs_act_by_name(const char *name);
/* The name of act, or NULL for a value not in the table. */
const char *ovs_act_name(ovs_act act);

/* x (n,) = act(x), in place. */
int ovs_act_forward(float *x, int64_t n, ovs_act act);
int ovs_act_forward_naive(float *x, int64_t n, ovs_act act);
/* x (n,) = sigmoid(x) in place: ovs_act_forward(x, n, OVS_ACT_SIGMOID) (mask probabilities). */
int ovs_sigmoid_inplace(float *x, int64_t n);

/* ---------------------------------------------------------------- linear */
/* out (M, K) = act(in (M, C) @ weight^T + bias (K,) [+ residual (M, K)]).
 * bias and residual may be NULL; residual may alias out. weight dense (OpenBLAS) or packed
 * (the packed-weight GEMM, bias/residual/activation fused into its tile epilogue). */
int ovs_linear_forward(float *out, const float *in, const ovs_matrix *weight, const float *bias,
                       const float *residual, int64_t M, int64_t C, int64_t K, ovs_act act);
int ovs_linear_forward_naive(float *out, const float *in, const ovs_matrix *weight,
                             const float *bias, const float *residual, int64_t M, int64_t C,
                             int64_t K, ovs_act act);

/* ---------------------------------------------------------------- conv2d */
/* How ovs_conv2d_forward computes a conv. AUTO takes Winograd F(4x4, 3x3) or F(2x2, 3x3) for
 * 3x3, stride-1, undilated, ungrouped convs on maps large enough for it to win
 * (ovs_conv2d_auto_algo) and the direct implicit GEMM otherwise; DIRECT always the implicit
 * GEMM (the fmaf chain over the taps, for callers and tests that need exactly that); WINOGRAD
 * forces Winograd F(2x2, 3x3), WINOGRAD4 Winograd F(4x4, 3x3) (OVS_ERR_UNSUPPORTED for a conv
 * they do not cover). The paths agree to float32 rounding (F(4x4) a few times looser). */
typedef enum {
    OVS_CONV2D_AUTO = 0,
    OVS_CONV2D_DIRECT = 1,
    OVS_CONV2D_WINOGRAD = 2,
    OVS_CONV2D_WINOGRAD4 = 3,
} ovs_conv2d_algo;

typedef struct {
    int64_t stride_h, stride_w;
    int64_t pad_h, pad_w;     /* zero padding on each side */
    int64_t dil_h, dil_w;
    int64_t groups;           /* C and K divisible by groups */
    ovs_conv2d_algo algo;     /* AUTO unless a caller needs one path (tests, sparse parity) */
} ovs_conv2d_params;

ovs_conv2d_params ovs_conv2d_defaults(void);   /* stride 1, pad 0, dilation 1, groups 1, AUTO */
/* Output extent along one axis, or -1 if the kernel does not fit. */
int64_t ovs_conv2d_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil);
/* Scratch floats ovs_conv2d_forward may use: its copy of the input (the zero-padded input split
 * into its stride phases, about the input's size; for a stride-1 unpadded conv a (C/groups*R*S,
 * 32) block; for a small padded map whose flat rows would waste 15% of the columns, with K >=
 * 64, one image's (C*R*S, P*Q) im2col columns and a (C*R*S, 32) block). A caller that passes scratch of this size (e.g. from a model's arena, reused
 * across calls) saves the conv that allocation and its page faults on every call; with
 * scratch NULL the conv allocates it. */
size_t ovs_conv2d_scratch_floats(int64_t C, int64_t H, int64_t W, int64_t K, int64_t R,
                                 int64_t S, const ovs_conv2d_params *p);

/* out (N, K, P, Q) = act(conv(in (N, C, H, W), weight (K, C/groups, R, S)) + bias (K,)
 *                         [+ residual (N, K, P, Q)]).
 * weight is the (K, C/groups*R*S) matrix view; bias, residual may be NULL; residual may
 * alias out.
 * With algo DIRECT (and AUTO but for the large 3x3 stride-1 maps it gives to Winograd, below)
 * every conv runs as an implicit GEMM on the packed GEMM's per-ISA micro-kernels over the
 * zero-padded input split into its stride phases (no im2col; that copy is made in scratch, or
 * allocated per call when scratch is NULL, and dense weights are packed for the kernels per
 * call, OVS_ERR_NOMEM if an allocation fails; the Winograd path allocates its own buffers);
 * taps that only read padding are skipped. Each output is one fmaf chain over the taps
 * (c, r, s) in increasing order (a skipped tap would add an exact 0 for finite weights), then
 * + bias, + residual, activation, so the result is bitwise independent of the thread count and
 * of the ISA path (both paths are). ovs_conv2d_forward_naive is the direct conv in double for
 * AUTO and DIRECT, the Winograd twins for WINOGRAD and WINOGRAD4. */
int ovs_conv2d_forward(float *out, const float *in, const ovs_matrix *weight, const float *bias,
                       const float *residual, int64_t N, int64_t C, int64_t H, int64_t W,
                       int64_t K, int64_t R, int64_t S, const ovs_conv2d_params *p, ovs_act act,
                       float *scratch);
int ovs_conv2d_forward_naive(float *out, const float *in, const ovs_matrix *weight,
                             const float *bias, const float *residual, int64_t N, int64_t C,
                             int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                             const ovs_conv2d_params *p, ovs_act act);

/* Winograd F(2x2, 3x3) (csrc/ops/winograd.c), taken by ovs_conv2d_forward for algo WINOGRAD
 * and, when it wins, AUTO. Each output 2x2 tile of each image is
 *     Y = A^T [ sum_c (G g_kc G^T) .* (B^T d_c B) ] A,  then (Y + bias) [+ residual], act,
 * with d_c the 4x4 input patch of channel c (zero outside the image), g_kc the 3x3 kernel and
 * the standard matrices of Lavin & Gray (2016): the 16 elementwise sums are GEMMs (K, C) @
 * (C, tiles) on the packed micro-kernels, each an fmaf chain over c in increasing order; the
 * weights (dense or conv-packed) are transformed per call into a transient buffer of 16*K*C
 * floats (no second resident copy); each output's arithmetic does not depend on how the tiles
 * are cut into chunks for the threads, so the result is bitwise independent of the thread count
 * and of the ISA,
 * and equal (==) to ovs_conv2d_forward_naive with algo WINOGRAD (the same algorithm as plain
 * loops, the transforms as matrix products), up to the activation's implementation.
 * Its error against the exact conv is of the order of the direct float32 conv's (each M element
 * one fmaf chain over C instead of 9C taps, the transforms' coefficients 0, +-1/2, +-1): the
 * results differ from the direct path's in the last bits, tests/test_winograd.py bounds both.
 * Winograd F(4x4, 3x3) (algo WINOGRAD4, and AUTO where it wins) is the same with 4x4 output
 * tiles, 6x6 patches, 36 GEMMs and the matrices of Lavin & Gray for the points 0, +-1, +-2
 * (listed in winograd.c; 36*K*C transient transformed weights); its twin is
 * ovs_conv2d_forward_naive with algo WINOGRAD4. Its transforms' coefficients (up to 8, and
 * 1/6, 1/12, 1/24, inexact) make its float32 error larger, a few times the direct conv's
 * (tests/test_winograd.py measures and bounds it). */
/* 1 when Winograd F(2x2, 3x3) beats the direct conv for this conv (shape and params; checks
 * nothing else). The choice depends on one image's size, not on N: an image's result is
 * bitwise the same in any batch. */
int ovs_conv2d_winograd_wins(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R,
                             int64_t S, const ovs_conv2d_params *p);
/* The path AUTO takes for this conv: OVS_CONV2D_WINOGRAD4 where F(4x4, 3x3) wins, else
 * OVS_CONV2D_WINOGRAD where ovs_conv2d_winograd_wins, else OVS_CONV2D_DIRECT (shape and params
 * only, and like it independent of N). */
ovs_conv2d_algo ovs_conv2d_auto_algo(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K,
                                     int64_t R, int64_t S, const ovs_conv2d_params *p);

/* A conv weight (K, L = C/groups*R*S) packed once, at model build, into the layout the conv's
 * micro-kernels read (otherwise packed on every call): per group g, ceil(Kg/MR) blocks of
 * (L, MR), packed[g*ceil(Kg/MR)*MR*L + (k/MR)*MR*L + l*MR + k%MR] = W[g*Kg + k, l] (zeros for
 * k >= Kg), MR = OVS_CONV_PACK_MR. MR is a multiple of every ISA's micro-tile height
 * (portable 4, AVX2 6, AVX-512 12), so one packed weight serves whichever kernels are in use,
 * also after ovs_gemm_set_isa: no repacking. ovs_conv2d_forward(_naive) take it as the weight
 * (with the same groups); the result is bitwise the one of the dense weight. Example:
 *
 *     size_t n = ovs_conv2d_packed_floats(K, L, groups);
 *     float *pk = ovs_malloc(n * sizeof(float));
 *     ovs_conv2d_pack(pk, raw, K, L, groups);          (raw may be freed now)
 *     ovs_matrix w = ovs_conv2d_packed(pk, K, L, groups);
 */
#define OVS_CONV_PACK_MR 12

/* Floats of the packed form; SIZE_MAX for bad arguments (groups < 1, K not divisible) or overflow. */
size_t ovs_conv2d_packed_floats(int64_t K, int64_t L, int64_t groups);
/* dst (ovs_conv2d_packed_floats(K, L, groups),) = packed form of src (K, L). */
int ovs_conv2d_pack(float *dst, const float *src, int64_t K, int64_t L, int64_t groups);
/* The same in place: buf holds src (K, L) in its first K*L floats and has room for
 * ovs_conv2d_packed_floats(K, L, groups); it ends up holding the packed form (bitwise the one
 * ovs_conv2d_pack writes). Peak memory: the packed size plus one block (MR*L floats). */
int ovs_conv2d_pack_inplace(float *buf, int64_t K, int64_t L, int64_t groups);
/* dst (K, L) = the weight packed in `packed` (a conv-packed matrix): the inverse of the above. */
int ovs_conv2d_unpack(float *dst, const ovs_matrix *packed);
ovs_matrix ovs_conv2d_packed(const float *packed, int64_t K, int64_t L, int64_t groups);

/* Fold an inference BatchNorm that follows a conv into the conv's weight and bias:
 *   w'[k] = w[k] * gamma[k] / sqrt(var[k] + eps);  b'[k] = (b[k] - mean[k]) * that + beta[k].
 * w_out (K, L) and b_out (K,) are written; conv_bias may be NULL (treated as 0).
 * w_out may alias conv_w. */
int ovs_batchnorm_fold(float *w_out, float *b_out, const float *conv_w, const float *conv_bias,
                       const float *gamma, const float *beta, const float *mean, const float *var,
                       float eps, int64_t K, int64_t L);

/* ---------------------------------------------------------------- sparse weights */
/* A weight matrix (rows, cols) in compressed sparse rows: the non-zeros of row r are
 * val[row_ptr[r]:row_ptr[r+1]] at columns col[...] (ascending). For a conv weight
 * (K, C, R, S) the matrix is (K, L = C*R*S) and column l = (c*R + r)*S + s. Column indices are
 * 16-bit (cols <= 65536), so a non-zero costs 6 bytes against 4 per dense entry: the weight
 * memory of a layer is 6 * nnz + 8 * (rows + 1) bytes.
 *
 *     ovs_csr w;
 *     ovs_csr_from_dense(&w, dense, K, C * 3 * 3);       // allocates, keeps exact zeros out
 *     size_t n = ovs_conv2d_sparse_scratch_floats(C, H, W, K, 3, 3, w.nnz, &p);
 *     ovs_conv2d_sparse_forward(out, in, &w, bias, NULL, N, C, H, W, K, 3, 3, &p, OVS_ACT_RELU, scratch);
 *     ovs_csr_free(&w);
 */
typedef struct {
    int64_t rows, cols;       /* K, L */
    int64_t nnz;              /* stored non-zeros */
    int64_t *row_ptr;         /* (rows + 1) */
    uint16_t *col;            /* (nnz) column of each non-zero */
    float *val;               /* (nnz) value of each non-zero */
} ovs_csr;

/* out <- the non-zeros of dense (rows, cols); allocates (ovs_csr_free releases). cols must be
 * in 1..65536 (OVS_ERR_UNSUPPORTED otherwise). */
int ovs_csr_from_dense(ovs_csr *out, const float *dense, int64_t rows, int64_t cols);
/* dense (rows, cols) <- the matrix, zeros included. */
int ovs_csr_to_dense(float *dense, const ovs_csr *m);
void ovs_csr_free(ovs_csr *m);
/* Bytes held by the matrix (row pointers, indices, values). */
size_t ovs_csr_bytes(const ovs_csr *m);

/* Scratch floats ovs_conv2d_sparse_forward needs for a weight of nnz non-zeros: zero-padded
 * copies of one input image (one per kernel column S where the aligned layout applies, else
 * one; none for a 1x1 unpadded conv reading an aligned input in place), the non-zeros'
 * resolved input offsets and small tables; SIZE_MAX on overflow. */
size_t ovs_conv2d_sparse_scratch_floats(int64_t C, int64_t H, int64_t W, int64_t K, int64_t R,
                                        int64_t S, int64_t nnz, const ovs_conv2d_params *p);
/* As ovs_conv2d_forward with a CSR weight (K, C*R*S):
 *   out[n,k,p,q] = act(bias[k] + sum_{(c,r,s) in row k} w * in[n, c, p - ph + r*dh, q - pw + s*dw]
 *                  [+ residual[n,k,p,q]])
 * Fast version: stride 1 and groups 1 only (OVS_ERR_UNSUPPORTED otherwise: keep such a layer
 * dense), copies of at most 2^31 floats. Each non-zero is one broadcast multiply-add over a
 * run of 64 output pixels of the padded grid, so the work is proportional to the non-zeros;
 * threads split (pixel tile, block of output channels) pairs by non-zero counts. Every output
 * is one fmaf chain over its row's non-zeros in increasing column order, so the result is
 * bitwise the same at any thread count and on every ISA path (portable, AVX2+FMA, AVX-512F,
 * following ovs_gemm_set_isa). residual may alias out. */
int ovs_conv2d_sparse_forward(float *out, const float *in, const ovs_csr *weight,
                              const float *bias, const float *residual, int64_t N, int64_t C,
                              int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                              const ovs_conv2d_params *p, ovs_act act, float *scratch);
/* The tables ovs_conv2d_sparse_forward builds on every call (each non-zero's resolved input
 * offset, 4 bytes, and every output row's input-channel slice starts), kept between calls: a
 * model holds one per sparse conv. Zero-initialise; ovs_conv2d_sparse_forward_planned (re)builds
 * it when the weight, the input size or the layout differ from the ones it holds (on a 7x7 map
 * the tables cost as much as the convolution). ovs_sparse_plan_free releases it; free it too
 * when the weight's CSR is freed (the plan recognises its weight by the column array's address
 * and the non-zero count). A plan serves one call at a time. */
typedef struct {
    void *block;              /* owned: start then xo */
    int64_t *start;           /* (rows, nch + 1) */
    int32_t *xo;              /* (nnz) */
    const uint16_t *col;      /* the key: weight, geometry, layout */
    int64_t nnz, rows, C, H, W, R, S, pad_h, pad_w, dil_h, dil_w, nch;
    int copy;
} ovs_sparse_plan;
void ovs_sparse_plan_free(ovs_sparse_plan *plan);
/* ovs_conv2d_sparse_forward with the tables from (or built into) plan; the same results. */
int ovs_conv2d_sparse_forward_planned(float *out, const float *in, const ovs_csr *weight,
                                      const float *bias, const float *residual, int64_t N,
                                      int64_t C, int64_t H, int64_t W, int64_t K, int64_t R,
                                      int64_t S, const ovs_conv2d_params *p, ovs_act act,
                                      float *scratch, ovs_sparse_plan *plan);
/* Plain loops over the definition; any stride and padding, groups 1. */
int ovs_conv2d_sparse_forward_naive(float *out, const float *in, const ovs_csr *weight,
                                    const float *bias, const float *residual, int64_t N,
                                    int64_t C, int64_t H, int64_t W, int64_t K, int64_t R,
                                    int64_t S, const ovs_conv2d_params *p, ovs_act act);

/* ---------------------------------------------------------------- pooling */
/* out (N*C, P, Q) = average over kernel (R, S) windows with stride and zero padding, as
 * torch.nn.AvgPool2d(kernel, stride, padding, ceil_mode=False, count_include_pad).
 * As torch, padding must be at most half the kernel. */
int ovs_avgpool2d_forward(float *out, const float *in, int64_t NC, int64_t H, int64_t W,
                          int64_t R, int64_t S, int64_t stride_h, int64_t stride_w,
                          int64_t pad_h, int64_t pad_w, int count_include_pad);
int ovs_avgpool2d_forward_naive(float *out, const float *in, int64_t NC, int64_t H, int64_t W,
                                int64_t R, int64_t S, int64_t stride_h, int64_t stride_w,
                                int64_t pad_h, int64_t pad_w, int count_include_pad);
/* out (N*C, P, Q) as torch.nn.AdaptiveAvgPool2d((P, Q)). */
int ovs_adaptive_avgpool2d_forward(float *out, const float *in, int64_t NC, int64_t H, int64_t W,
                                   int64_t P, int64_t Q);
int ovs_adaptive_avgpool2d_forward_naive(float *out, const float *in, int64_t NC, int64_t H,
                                         int64_t W, int64_t P, int64_t Q);

/* ---------------------------------------------------------------- normalisation */
/* out (M, D) = (x - mean) / sqrt(var + eps) * weight + bias, per row. out may alias in.
 * weight/bias may be NULL (1 / 0). */
int ovs_layernorm_forward(float *out, const float *in, const float *weight, const float *bias,
                          int64_t M, int64_t D, float eps);
int ovs_layernorm_forward_naive(float *out, const float *in, const float *weight,
                                const float *bias, int64_t M, int64_t D, float eps);
/* out (N, C, HW) = GroupNorm(G groups) of in, as torch.nn.GroupNorm. out may alias in. */
int ovs_groupnorm_forward(float *out, const float *in, const float *weight, const float *bias,
                          int64_t N, int64_t C, int64_t HW, int64_t G, float eps);
int ovs_groupnorm_forward_naive(float *out, const float *in, const float *weight,
                                const float *bias, int64_t N, int64_t C, int64_t HW, int64_t G,
                                float eps);

/* ---------------------------------------------------------------- softmax */
/* x (M, D) = softmax over each row, in place (max-subtracted). A row whose entries are all
 * -inf becomes all zeros (torch.softmax gives NaN there). */
int ovs_softmax_forward(float *x, int64_t M, int64_t D);
int ovs_softmax_forward_naive(float *x, int64_t M, int64_t D);
/* out[j * out_stride] = softmax(scale * x[j * x_stride]) over j < D, one vector on the calling
 * thread: the max of scale * x in float, e_j = expf(scale * x_j - max) (libm), their sum in
 * double, out_j = e_j * (float)(1 / sum), as torch's float softmax to rounding. A building block
 * for loops over pixels (class probabilities of segmentation logits): no argument checks, D >= 1;
 * out may alias x when the strides are equal. */
void ovs_softmax_scaled_vec(float *out, int64_t out_stride, const float *x, int64_t x_stride,
                            int64_t D, float scale);

/* ---------------------------------------------------------------- attention */
/* probs (T, U) = softmax(scale * a (T, F) @ b (U, F)^T + mask (T, U)) for one head.
 * a and b are strided: row r of a starts at a + r*lda. mask may be NULL; causal != 0 masks
 * u > U - T + t with -inf (requires T <= U: the T queries are the last T of U positions, so
 * T == U is the usual lower-triangular mask and T < U lets queries follow U - T cached keys;
 * torch's is_causal aligns T < U top-left instead). A fully masked row gives zeros, as
 * torch.nn.functional.scaled_dot_product_attention. */
int ovs_attention_probs(float *probs, const float *a, int64_t lda, const float *b, int64_t ldb,
                        int64_t T, int64_t U, int64_t F, float scale, const float *mask,
                        int causal);
int ovs_attention_probs_naive(float *probs, const float *a, int64_t lda, const float *b,
                              int64_t ldb, int64_t T, int64_t U, int64_t F, float scale,
                              const float *mask, int causal);

/* Multi-head scaled dot-product attention, heads interleaved as in torch.nn.MultiheadAttention:
 *   out (T, E*F): out[:, h*F:(h+1)*F] = softmax(q_h k_h^T * scale + mask) v_h
 * q (T, *) row stride ldq, k and v (U, *) row strides ldk/ldv; head h of q is columns
 * [h*F, (h+1)*F). mask (T, U) additive or NULL; causal as above. scratch: E*T*U floats (heads run in
 * parallel, each with its own (T, U) block); each thread packs a head's keys and values into
 * its kept workspace (ovs_gemm_release_workspace). */
int ovs_attention_forward(float *out, const float *q, int64_t ldq, const float *k, int64_t ldk,
                          const float *v, int64_t ldv, int64_t T, int64_t U, int64_t E,
                          int64_t F, float scale, const float *mask, int causal, float *scratch);
int ovs_attention_forward_naive(float *out, const float *q, int64_t ldq, const float *k,
                                int64_t ldk, const float *v, int64_t ldv, int64_t T, int64_t U,
                                int64_t E, int64_t F, float scale, const float *mask,
                                int causal);

/* One query per sequence attending over tokens whose key and value projections are never
 * formed: they are folded into the query side. Per sequence n and head e (rows eF..eF+F of the
 * projections, F = C / E):
 *     q_e . k_e(t)     = (Wk_e^T q_e) . tok(t) + q_e . bk_e        u_e = Wk_e^T q_e  (C,)
 *     sum_t p_t v_e(t) = Wv_e (sum_t p_t tok(t)) + bv_e             (the p_t sum to 1)
 * 2 C^2 MACs per sequence (and 2 E T C for the scores and the mix) instead of 2 T C^2: CLIP's
 * attention pool (one query, the mean token) and a transformer's last block read at one row
 * (the class token, the end-of-text token). Equal to softmax(q k^T * scale) v with
 * k = tok Wk^T + bk, v = tok Wv^T + bv up to float rounding.
 *   att   (N, C)         out: the heads' outputs, before any output projection
 *   tok   (N, T, C)      the tokens the key and value projections would read
 *   nkeys (N,) or NULL   sequence n attends tokens 0..nkeys[n]-1 (1..T); NULL: all T
 *   q     (N, C)         the projected queries (bias included)
 *   k, v                 OVS_MATRIX_PACKED (C, C) projections; kb, vb (C,) their biases
 *   E                    heads: C % E == 0 and F a multiple of OVS_PACK_NR
 *   u (N, E, C), sc (N, E, T), mix (N, E, C)   work */
int ovs_attention_folded(float *att, const float *tok, int64_t N, int64_t T, const int64_t *nkeys,
                         const float *q, const ovs_matrix *k, const float *kb, const ovs_matrix *v,
                         const float *vb, int64_t E, float scale, float *u, float *sc, float *mix);

/* ---------------------------------------------------------------- SC-CLIP calibration */
/* Anomalous tokens by SC-CLIP's local outlier factor (its `lof_pytorch`): with d the squared
 * Euclidean distances between the rows of x (M, D) (accumulated in double), kd[i] the k-th
 * smallest d[i, j] over j != i and nb(i) those k rows,
 *   lof[i] = kd[i] * mean_{j in nb(i)} 1 / kd[j]
 * (SC-CLIP's reach distance max(d[i, j], kd[i]) is always kd[i], so its lrd is k / kd[i]);
 * outlier[i] = lof[i] > the (1 - contamination) quantile of lof as float32 (torch.quantile,
 * linear interpolation). k is capped at M - 1; M < 2, or a k-distance of 0 (duplicate rows),
 * marks nothing. scratch: ovs_lof_scratch_floats(M, k) floats, 8-byte aligned.
 * The naive twin computes all M*M distances with one plain sum each and selects neighbours by
 * repeated minimum. */
size_t ovs_lof_scratch_floats(int64_t M, int64_t k);
int ovs_lof_outliers(uint8_t *outlier, double *lof, const float *x, int64_t M, int64_t D,
                     int64_t k, float contamination, float *scratch);
int ovs_lof_outliers_naive(uint8_t *outlier, double *lof, const float *x, int64_t M, int64_t D,
                           int64_t k, float contamination, float *scratch);
/* SC-CLIP's `mean_interpolation`: tokens x (H*W, D) on an (H, W) grid, row stride ldx ->
 * out (H*W, D); a token marked in outlier (H*W,) becomes the mean of its unmarked
 * 8-neighbours inside the grid (kept if it has none); others are copied. out must not alias x
 * unless nothing is marked. (A plain loop: it is its own reference.) */
int ovs_neighbour_fill(float *out, const float *x, int64_t ldx, const uint8_t *outlier,
                       int64_t H, int64_t W, int64_t D);
/* SC-CLIP's `adaptively_aggregate` with its threshold: corr (M, M) is overwritten with
 * corr' = where(corr < beta, 0, corr) / (row sum + 1e-6), then out (M, D) = corr' @ x (M, D),
 * x with row stride ldx. */
int ovs_similarity_aggregate(float *out, const float *x, int64_t ldx, float *corr, int64_t M,
                             int64_t D, float beta);
int ovs_similarity_aggregate_naive(float *out, const float *x, int64_t ldx, float *corr,
                                   int64_t M, int64_t D, float beta);

/* ---------------------------------------------------------------- resize */
/* out (NC, P, Q) from in (NC, H, W), as torch.nn.functional.interpolate(mode="bilinear" or
 * "bicubic" (A = -0.75), antialias=False) with the given align_corners. */
int ovs_resize_bilinear(float *out, const float *in, int64_t NC, int64_t H, int64_t W, int64_t P,
                        int64_t Q, int align_corners);
int ovs_resize_bicubic(float *out, const float *in, int64_t NC, int64_t H, int64_t W, int64_t P,
                       int64_t Q, int align_corners);
/* The taps ovs_resize_bilinear uses along one axis (`in` samples resized to `out`), for output
 * indices d = 0..n-1 (n <= out): value d = w0[d] * x[i0[d]] + w1[d] * x[i1[d]]. For callers that
 * fuse the interpolation into their own loops (the segmenter's window accumulation and label
 * stage): their results are then bit for bit those of ovs_resize_bilinear. */
int ovs_resize_bilinear_taps(int64_t *i0, int64_t *i1, float *w0, float *w1, int64_t in,
                             int64_t out, int64_t n, int align_corners);
/* Naive twins: per output element, source coordinates and weights in double from torch's
 * definitions (clamped taps), no tables. */
int ovs_resize_bilinear_naive(float *out, const float *in, int64_t NC, int64_t H, int64_t W,
                              int64_t P, int64_t Q, int align_corners);
int ovs_resize_bicubic_naive(float *out, const float *in, int64_t NC, int64_t H, int64_t W,
                             int64_t P, int64_t Q, int align_corners);

/* out (3, P, Q) = ovs_resize_bilinear(ovs_normalize_u8(in), align_corners = 0), bit for bit,
 * without the (3, H, W) float copy of the input: each output reads its 2 x 2 source pixels
 * through the same normalisation table. Memory stays O(P * Q) for a huge input.
 * in: (H, W, 3) uint8 with the given strides in bytes; mean, std: (3,) */
int ovs_resize_bilinear_u8_normalize(float *out, const uint8_t *in, int64_t H, int64_t W,
                                     int64_t in_row_stride, int64_t in_pixel_stride, int64_t P,
                                     int64_t Q, const float mean[3], const float std[3]);

/* out (P, Q, 3) uint8 from in (H, W, 3) uint8 with Pillow's antialiased resampling
 * (Image.resize((Q, P), BICUBIC): a = -0.5, support scaled by the downscale factor, 22-bit
 * fixed-point coefficients, two separable passes with 8-bit clipping in between), bit-exact
 * with Pillow 13 (which runs the vertical pass first when the height loses more than twice
 * as many pixels as the width; Pillow <= 12 always ran the horizontal pass first).
 * Input rows may be strided (in_row_stride bytes, in_pixel_stride >= 3 bytes per pixel, the
 * 3 channels adjacent). Unlike the other ops it allocates its workspace (coefficients and one
 * intermediate image) with ovs_malloc: OVS_ERR_NOMEM if that fails. */
int ovs_resize_u8_pil_bicubic(uint8_t *out, const uint8_t *in, int64_t H, int64_t W,
                              int64_t in_row_stride, int64_t in_pixel_stride, int64_t P,
                              int64_t Q);

/* out (3, P, Q) float = ((in[y0+i, x0+j, c] / 255) - mean[c]) / std[c] for a (P, Q) crop at
 * (y0, x0) of an (H, W, 3) uint8 image with the given strides. scale255 != 0 keeps 0..255 input
 * range (detectron2-style mean/std in pixel units). Float32 operations in torchvision's order
 * (ToTensor then Normalize), so results are identical to it; std must be non-zero. */
int ovs_normalize_u8(float *out, const uint8_t *in, int64_t H, int64_t W, int64_t in_row_stride,
                     int64_t in_pixel_stride, int64_t y0, int64_t x0, int64_t P, int64_t Q,
                     const float mean[3], const float std[3], int scale255);

/* ---------------------------------------------------------------- PAMR */
/* Pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020) exactly as the NACLIP and SCLIP
 * repositories' pamr.py, PAMR(num_iter=steps, dilations)(image, mask), for a mask already at the
 * image's size. Letters: C mask channels, K image channels, H, W size, ND dilations,
 * P = 8 * ND neighbours. Every shift below clamps to the image (replicate padding).
 *
 *   neighbours N(y, x): for each dilation d (in order), (y + i d, x + j d) for (i, j) in
 *     (-1,-1) (-1,0) (-1,1) (0,-1) (0,1) (1,-1) (1,0) (1,1)
 *   std_k(y, x) = unbiased std (n - 1 = 9 ND - 1) of the 3 x 3 grid at every dilation
 *     (the centre once per dilation) of image channel k
 *   aff[p](y, x) = softmax over p of mean over k of -|I_k(y, x) - I_k(N_p)| / (1e-8 + 0.1 std_k)
 *   mask <- sum_p aff[p](y, x) * mask(N_p(y, x)), `steps` times, every class independently
 *
 * torch: pamr.PAMR(steps, dilations)(image[None], mask[None])[0]. The refinement is invariant
 * (up to the 1e-8) to a per-channel affine change of the image, so any normalisation works.
 *
 * Working memory: the affinity, P * H * W floats (64 bytes a pixel for the usual (8, 16)), plus
 * a ping-pong block of B = ovs_pamr_block(C, H, W) class planes (B * H * W floats, at most
 * max(OVS_PAMR_BLOCK_FLOATS, H * W) floats = 128 MB for planes up to 32 M pixels), never
 * pamr.py's C * P * H * W neighbour tensor: 2048 x 1536 pixels with 150 classes take 201 MB
 * of affinity + 126 MB of block besides the mask and output (1.9 GB each).
 * Threads split rows within a step; each value is one fixed-order sum, so results do not
 * depend on the thread count or the block size. */
#define OVS_PAMR_BLOCK_FLOATS ((int64_t)1 << 25)

/* Class planes propagated together: min(C, max(1, OVS_PAMR_BLOCK_FLOATS / (H * W))). */
int64_t ovs_pamr_block(int64_t C, int64_t H, int64_t W);
/* Scratch of ovs_pamr_forward: (P + ovs_pamr_block(C, H, W)) * H * W floats. */
size_t ovs_pamr_scratch_floats(int64_t C, int64_t H, int64_t W, int64_t ND);

/* out (C, H, W) = the refined mask; mask (C, H, W); image (K, H, W); dilations (ND,), each
 * >= 1 (up to 16 of them); steps >= 0 (0 copies the mask). out may alias mask. */
int ovs_pamr_forward(float *out, const float *mask, const float *image, int64_t C, int64_t K,
                     int64_t H, int64_t W, const int64_t *dilations, int64_t ND, int64_t steps,
                     float *scratch);
/* The two halves of ovs_pamr_forward, for callers that refine classes in pieces (the label
 * stage of a segmenter): aff (P, H, W) from image (K, H, W); then out (C, H, W) from mask
 * (C, H, W) (out may alias mask) with scratch of ovs_pamr_block(C, H, W) * H * W floats. */
int ovs_pamr_affinity(float *aff, const float *image, int64_t K, int64_t H, int64_t W,
                      const int64_t *dilations, int64_t ND);
int ovs_pamr_propagate(float *out, const float *mask, const float *aff, int64_t C, int64_t H,
                       int64_t W, const int64_t *dilations, int64_t ND, int64_t steps,
                       float *scratch);
/* Naive twin of ovs_pamr_forward: direct loops, double precision, allocates its buffers
 * (OVS_ERR_NOMEM on failure); out must not alias mask. */
int ovs_pamr_forward_naive(float *out, const float *mask, const float *image, int64_t C,
                           int64_t K, int64_t H, int64_t W, const int64_t *dilations, int64_t ND,
                           int64_t steps);

/* ---------------------------------------------------------------- Mask2Former ops */
/* Sine positional encoding of DETR / Mask2Former (PositionEmbeddingSine with normalize=True,
 * scale 2 pi, num_pos_feats = D/2, no padding mask), token-major:
 *   out (H, W, D): with e_y = (y+1) / (H + 1e-6) * 2 pi, e_x = (x+1) / (W + 1e-6) * 2 pi,
 *   t_k = temperature^(2 floor(k/2) / (D/2)) for k < D/2,
 *   out[y, x, k] = sin(e_y / t_k) (k even) or cos(e_y / t_k) (k odd), k < D/2,
 *   out[y, x, D/2 + k] = the same with e_x.
 * torch's module returns (N, D, H, W): out is its permute(0, 2, 3, 1)[0]. D must be a
 * multiple of 4; temperature 10000 in Mask2Former. */
int ovs_pos_embed_sine(float *out, int64_t D, int64_t H, int64_t W, float temperature);
int ovs_pos_embed_sine_naive(float *out, int64_t D, int64_t H, int64_t W, float temperature);

/* Core of multi-scale deformable attention (Deformable DETR's ms_deform_attn_core_pytorch,
 * one image), the sampling being exactly grid_sample(mode="bilinear", padding_mode="zeros",
 * align_corners=False) on each level's value map:
 *   out[q, e*F + f] = sum_{l, p} attn[q, e, l, p] *
 *                     bilinear(value_l[:, e*F + f], loc[q, e, l, p]),
 * value (S, E*F): the tokens of L levels concatenated, level l an (H_l, W_l) row-major map
 *   (shapes (L, 2) = (H_l, W_l) pairs, each >= 1; S = sum H_l W_l);
 * loc (Q, E, L, P, 2): (x, y) sampling locations normalised to [0, 1] over the level's map
 *   (pixel coordinate x * W_l - 1/2; taps outside the map read zero);
 * attn (Q, E, L, P): attention weights (softmax-normalised by the caller);
 * out (Q, E*F). Threads split the queries. */
int ovs_msdeform_attn_core(float *out, const float *value, const int64_t *shapes, int64_t L,
                           const float *loc, const float *attn, int64_t Q, int64_t E, int64_t F,
                           int64_t P);
int ovs_msdeform_attn_core_naive(float *out, const float *value, const int64_t *shapes,
                                 int64_t L, const float *loc, const float *attn, int64_t Q,
                                 int64_t E, int64_t F, int64_t P);

#ifdef __cplusplus
}
#endif
#endif /* OVS_OPS_H */
