/* Helpers shared by the op kernels in csrc/ops/: argument checks, the checked sgemm wrapper,
 * the threading threshold and vectorisable scalar math (exp, GELU, QuickGELU).
 * Dimension letters as in include/ovs/ops.h. */
#ifndef OVS_OPS_INTERNAL_H
#define OVS_OPS_INTERNAL_H

#include "ovs/ops.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Loops touching fewer elements than this stay on one thread: below it the fork/join of an
 * OpenMP region costs more than the work (a few microseconds on this machine). */
#define OPS_PAR_MIN ((int64_t)1 << 15)

/* OVS_ERR_ARG unless v >= 0. */
int ops_check_nonneg(const char *op, const char *name, int64_t v);
/* OVS_ERR_ARG unless v >= 1. */
int ops_check_pos(const char *op, const char *name, int64_t v);
/* OVS_ERR_ARG if ptr is NULL while `count` elements are to be read or written through it. */
int ops_check_ptr(const char *op, const char *name, const void *ptr, int64_t count);
/* *out = a * b (both >= 0), OVS_ERR_OVERFLOW if it does not fit in int64. */
int ops_mul(int64_t *out, const char *op, int64_t a, int64_t b);
/* OVS_ERR_UNSUPPORTED unless w is a dense (rows, cols) matrix with data. */
int ops_check_matrix(const char *op, const ovs_matrix *w, int64_t rows, int64_t cols);
/* OVS_ERR_ARG unless act is one of the ovs_act values. */
int ops_check_act(const char *op, ovs_act act);
/* The argument checks shared by the PAMR kernels and their naive twin (csrc/ops/pamr.c). */
int ops_pamr_check(const char *op, int64_t C, int64_t K, int64_t H, int64_t W,
                   const int64_t *dilations, int64_t ND, int64_t steps);

/* Row-major C (M, N) = alpha * A (M, Kd) @ op(B) + beta * C with op(B) = B (Kd, N) or, with
 * trans_b, B (N, Kd)^T. M == 0 or N == 0 is a no-op; Kd == 0 scales C by beta (0 clears it).
 * Every extent and leading dimension must fit in a BLAS int (OVS_ERR_OVERFLOW otherwise).
 * Large products outside a parallel region are split over ovs_get_num_threads() threads
 * (single-threaded OpenBLAS calls on row/column chunks); inside a parallel region (attention's
 * per-head loop) the call runs whole on the calling thread, so it may be called there. An error
 * it sets lands in that thread's buffer: keep the status and report after the region. */
int ops_sgemm(const char *op, int trans_b, int64_t M, int64_t N, int64_t Kd, float alpha,
              const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
              int64_t ldc);

/* The packed-weight GEMM (csrc/ops/gemm.c): out (M, K) with row stride ldo =
 *   act(alpha * (a (M, C) @ W^T) [+ beta * out] [+ bias (K,)] [+ res (M, K), row stride ldr])
 * for w packed (K, C), applied in that order per element; res may alias out. Arguments are
 * checked by the caller. */
int ops_gemm_packed(const char *op, float *out, int64_t ldo, const float *a, int64_t lda,
                    const ovs_matrix *w, int64_t M, float alpha, float beta, const float *bias,
                    const float *res, int64_t ldr, ovs_act act);

/* Packs rows [0, rows) of src (row stride ld, `cols` columns) as a weight (rows, cols) in the
 * panel layout of OVS_MATRIX_PACKED (ovs_matrix_pack without the checks; rows past `rows` of
 * the last panel are zeros); over `threads` threads. */
void ops_matrix_pack_rows(float *dst, const float *src, int64_t ld, int64_t rows, int64_t cols,
                          int threads);

/* The calling thread's workspace of `bytes` in slot `slot` (one per user, so that nested users
 * do not share one): kept between calls (up to 32 MiB; freed at thread exit or by
 * ovs_gemm_release_workspace), so that a warm caller neither allocates nor page-faults.
 * *own is NULL, or a block the caller must ovs_free after use (too large to keep). NULL with
 * the error set when out of memory. 64-byte aligned. */
/* OPS_WS_CONV: the implicit conv's packed 1x1 rows, or the Winograd conv's transforms (one
 * conv call at a time per thread) */
enum { OPS_WS_GEMM = 0, OPS_WS_ATTENTION = 1, OPS_WS_CONV = 2, OPS_WS_SLOTS = 3 };
void *ops_thread_workspace(int slot, size_t bytes, void **own);

/* v floats rounded up to whole 64-byte lines, an odd number of them: a buffer whose rows (or
 * planes, or positions) are this far apart spreads their lines over every L1 set offset
 * (with 2^k-line strides they all fall in one set); the sparse kernel's copied planes and the
 * Winograd buffers' position strides. */
static inline int64_t ops_odd_lines(int64_t v) {
    const int64_t r = (v + 15) / 16 * 16;
    return (r / 16) % 2 ? r : r + 16;
}

/* Offset of W[k, l] in a conv-packed weight (K, L) of G groups (layout in ops.h). */
static inline int64_t ops_conv_packed_at(int64_t K, int64_t L, int64_t G, int64_t k, int64_t l) {
    const int64_t Kg = K / G, MR = OVS_CONV_PACK_MR, g = k / Kg, kk = k % Kg;
    return g * ((Kg + MR - 1) / MR * MR) * L + (kk / MR) * MR * L + l * MR + kk % MR;
}

/* W[k, c] of a dense, packed or conv-packed (checked) weight matrix; for naive reference loops. */
static inline float ops_matrix_at(const ovs_matrix *w, int64_t k, int64_t c) {
    if (w->format == OVS_MATRIX_PACKED)
        return w->data[((k / OVS_PACK_NR) * w->cols + c) * OVS_PACK_NR + k % OVS_PACK_NR];
    if (w->format == OVS_MATRIX_CONV_PACKED)
        return w->data[ops_conv_packed_at(w->rows, w->cols, w->groups, k, c)];
    return w->data[k * w->cols + c];
}

/* x (n,) = act(x) on one thread; callers parallelise over rows. */
void ops_act_inplace(float *x, int64_t n, ovs_act act);

/* x (D,) = softmax(x + mask (D,)) over x[0:valid] and zeros in x[valid:D]; one thread.
 * mask may be NULL. A row with no finite entry becomes zeros. */
void ops_softmax_row(float *x, int64_t D, const float *mask, int64_t valid);

/* Argument checks shared by each fast op and its naive twin (same messages, same codes). */
int ops_linear_check(const char *op, float *out, const float *in, const ovs_matrix *weight,
                     int64_t M, int64_t C, int64_t K, ovs_act act);
/* Sizes, params, activation and the output size of any 2-D convolution (groups not checked). */
int ops_conv2d_geometry(const char *op, int64_t N, int64_t C, int64_t H, int64_t W, int64_t K,
                        int64_t R, int64_t S, const ovs_conv2d_params *p, ovs_act act,
                        int64_t *P_out, int64_t *Q_out);
int ops_conv2d_check(const char *op, float *out, const float *in, const ovs_matrix *weight,
                     int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                     const ovs_conv2d_params *p, ovs_act act, int64_t *P_out, int64_t *Q_out);
/* OVS_ERR_ARG for an algo outside ovs_conv2d_algo, OVS_ERR_UNSUPPORTED for WINOGRAD(4) on a
 * conv it does not cover (see ops_conv2d_winograd_supported). */
int ops_conv2d_check_algo(const char *op, int64_t R, int64_t S, const ovs_conv2d_params *p);
/* 1 for the convs Winograd F(2x2, 3x3) and F(4x4, 3x3) cover: 3x3, stride 1, dilation 1,
 * groups 1. */
int ops_conv2d_winograd_supported(int64_t R, int64_t S, const ovs_conv2d_params *p);
/* The Winograd conv F(m x m, 3x3), m = 2 or 4 (csrc/ops/winograd.c), on checked arguments with
 * N, K, P, Q, C >= 1. */
int ops_conv2d_winograd(const char *op, float *out, const float *in, const ovs_matrix *weight,
                        const float *bias, const float *residual, int64_t N, int64_t C, int64_t H,
                        int64_t W, int64_t K, int64_t ph, int64_t pw, ovs_act act, int64_t P,
                        int64_t Q, int64_t m);
int ops_avgpool2d_check(const char *op, float *out, const float *in, int64_t NC, int64_t H,
                        int64_t W, int64_t R, int64_t S, int64_t stride_h, int64_t stride_w,
                        int64_t pad_h, int64_t pad_w, int64_t *P_out, int64_t *Q_out);
int ops_layernorm_check(const char *op, float *out, const float *in, const float *weight,
                        const float *bias, int64_t M, int64_t D, float eps);
int ops_softmax_check(const char *op, float *x, int64_t M, int64_t D);
int ops_act_check(const char *op, float *x, int64_t n, ovs_act act);
/* *total = N * C * HW */
int ops_groupnorm_check(const char *op, float *out, const float *in, int64_t N, int64_t C,
                        int64_t HW, int64_t G, float eps, int64_t *total);
int ops_attention_probs_check(const char *op, float *probs, const float *a, int64_t lda,
                              const float *b, int64_t ldb, int64_t T, int64_t U, int64_t F,
                              int causal);
/* *empty = 1 when there is nothing to compute (M == 0 or no weight rows). */
int ops_matmul_check(const char *op, float *out, int64_t ldo, const float *a, int64_t lda,
                     const float *b, int64_t ldb, int64_t M, int64_t K, int64_t N);
int ops_matmul_wt_check(const char *op, float *out, int64_t ldo, const float *a, int64_t lda,
                        const ovs_matrix *w, int64_t M, int *empty);
/* Checks of an op mapping planes in (NC, H, W) to out (NC, P, Q) (resize, adaptive pooling);
 * *n_out = NC * P * Q; an empty input with a non-empty output is an error ("cannot <verb> ..."). */
int ops_planes_check(const char *op, const char *verb, float *out, const float *in, int64_t NC,
                     int64_t H, int64_t W, int64_t P, int64_t Q, int64_t *n_out);
int ops_adaptive_avgpool2d_check(const char *op, float *out, const float *in, int64_t NC,
                                 int64_t H, int64_t W, int64_t P, int64_t Q, int64_t *n_out);
int ops_attention_forward_check(const char *op, float *out, const float *q, int64_t ldq,
                                const float *k, int64_t ldk, const float *v, int64_t ldv,
                                int64_t T, int64_t U, int64_t E, int64_t F, int causal);

/* ---------------------------------------------------------------- vectorisable math */
/* Written without branches (selects only) and fully inlined so that gcc turns loops over them
 * into AVX2 code; libm's expf/erff are scalar calls and would not vectorise. */

/* exp(x), relative error below 2e-7 over the float range; 0 below -87, inf above 88.7, NaN
 * for NaN. exp(x) = 2^n e^r with n = round(x / ln 2) and |r| <= ln2 / 2 (Cody-Waite split of
 * ln 2); e^r by its degree-7 Taylor polynomial (truncation error < 6e-9 on that interval).
 * fmaf maps to one FMA instruction (the build is ISO C, so a*b+c is never contracted). */
static inline float ops_expf(float x) {
    float xc = x < -87.0f ? -87.0f : x;
    xc = xc > 88.0f ? 88.0f : xc;
    /* Adding and removing 1.5 * 2^23 rounds to the nearest integer (|t| < 2^22 here). */
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = fmaf(n, -0.693359375f, xc);     /* 0.693359375 has 9 bits: exact product */
    r = fmaf(n, 2.12194440e-4f, r);           /* ln 2 = 0.693359375 - 2.12194440e-4 */
    float p = 1.0f / 5040.0f;
    p = fmaf(p, r, 1.0f / 720.0f);
    p = fmaf(p, r, 1.0f / 120.0f);
    p = fmaf(p, r, 1.0f / 24.0f);
    p = fmaf(p, r, 1.0f / 6.0f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float y = p * scale;                      /* NaN input: r and so y are NaN already */
    y = x < -87.0f ? 0.0f : y;
    return x > 88.7f ? INFINITY : y;
}

/* x * Phi(x) with Phi the standard normal CDF (torch.nn.GELU(), approximate="none").
 * Phi(x) = erfc(-x / sqrt 2) / 2, erfc(z) for z >= 0 by Abramowitz & Stegun 7.1.26
 * (absolute error <= 1.5e-7, the formula torch's vectorised erf uses too); using erfc on |x|
 * avoids the cancellation in 1 + erf(x) for negative x. */
static inline float ops_gelu(float x) {
    float z = fabsf(x) * 0.70710678118654752f;
    float t = 1.0f / fmaf(0.3275911f, z, 1.0f);
    float poly = 1.061405429f;
    poly = fmaf(poly, t, -1.453152027f);
    poly = fmaf(poly, t, 1.421413741f);
    poly = fmaf(poly, t, -0.284496736f);
    poly = fmaf(poly, t, 0.254829592f);
    float half_erfc = 0.5f * poly * t * ops_expf(-z * z);
    float cdf = x >= 0.0f ? 1.0f - half_erfc : half_erfc;
    return x * cdf;
}

/* x * sigmoid(1.702 x), as open_clip's QuickGELU. */
static inline float ops_quickgelu(float x) {
    return x * (1.0f / (1.0f + ops_expf(-1.702f * x)));
}

/* 1 / (1 + exp(-x)), as torch.sigmoid: 0 where exp(-x) overflows (x < -88.7), 1 for large x. */
static inline float ops_sigmoid(float x) { return 1.0f / (1.0f + ops_expf(-x)); }

/* max(x, 0), NaN kept as torch.relu keeps it. */
static inline float ops_relu(float x) { return x < 0.0f ? 0.0f : x; }

#endif
