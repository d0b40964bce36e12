/* Scaled dot-product attention, heads in parallel (one head per thread, single-threaded GEMMs
 * inside the region): per head, the head's k columns are packed as the weight of the
 * packed-weight GEMM (ops/gemm.c, AVX-512 / AVX2 micro-kernels) and the scores computed from the
 * strided q columns (alpha = scale); mask + causal + softmax in one pass per row; then the
 * head's v columns, packed transposed, as the weight of a second packed GEMM of the
 * probabilities, straight into the strided output. The packing buffers are the thread's kept
 * workspace. Dimension letters: T query tokens, U key tokens, E heads, F head width, D = E*F. */
#include "ops/ops_internal.h"

/* Shared checks of ovs_attention_probs and the attention forwards. */
static int attention_check(const char *op, int64_t T, int64_t U, int64_t F, int64_t lda,
                           int64_t ldb, int causal) {
    int st;
    if ((st = ops_check_nonneg(op, "T", T)) || (st = ops_check_nonneg(op, "U", U)) ||
        (st = ops_check_nonneg(op, "F", F)))
        return st;
    if (lda < F || ldb < F)
        return ovs_set_error(OVS_ERR_ARG, "%s: row strides (%lld, %lld) must be >= the width %lld",
                             op, (long long)lda, (long long)ldb, (long long)F);
    if (causal && T > U)
        return ovs_set_error(OVS_ERR_ARG, "%s: a causal mask needs T <= U, got T = %lld, U = %lld",
                             op, (long long)T, (long long)U);
    return OVS_OK;
}

int ops_attention_forward_check(const char *op, float *out, const float *q, int64_t ldq,
                                const float *k, int64_t ldk, const float *v, int64_t ldv,
                                int64_t T, int64_t U, int64_t E, int64_t F, int causal) {
    int st;
    int64_t D, td, ud;
    if ((st = ops_check_nonneg(op, "E", E)) || (st = ops_check_nonneg(op, "F", F)) ||
        (st = ops_mul(&D, op, E, F)) || (st = attention_check(op, T, U, D, ldq, ldk, causal)))
        return st;
    if (ldv < D)
        return ovs_set_error(OVS_ERR_ARG, "%s: ldv = %lld must be >= E*F = %lld", op,
                             (long long)ldv, (long long)D);
    /* Spans of the strided operands must be addressable. */
    int64_t tq, ukv;
    if ((st = ops_mul(&td, op, T, D)) || (st = ops_mul(&ud, op, U, D)) ||
        (st = ops_mul(&tq, op, T, ldq)) || (st = ops_mul(&ukv, op, U, ldk > ldv ? ldk : ldv)) ||
        (st = ops_check_ptr(op, "out", out, td)) || (st = ops_check_ptr(op, "q", q, td)) ||
        (st = ops_check_ptr(op, "k", k, td > 0 ? ud : 0)) ||
        (st = ops_check_ptr(op, "v", v, td > 0 ? ud : 0)))
        return st;
    return OVS_OK;
}

/* probs (T, U) = softmax(probs + mask) row by row, the causal rows cut at U - T + t + 1 (the T
 * queries are the last T of the U positions: T == U is the usual square mask, T < U queries
 * that follow U - T earlier keys, e.g. a cached prompt prefix). */
static void attention_softmax_rows(float *probs, int64_t T, int64_t U, const float *mask,
                                   int causal) {
#pragma omp parallel for schedule(static) if (T * U >= OPS_PAR_MIN && T > 1) num_threads(ovs_get_num_threads())
    for (int64_t t = 0; t < T; t++)
        ops_softmax_row(probs + t * U, U, mask ? mask + t * U : NULL, causal ? U - T + t + 1 : U);
}

int ops_attention_probs_check(const char *op, float *probs, const float *a, int64_t lda,
                              const float *b, int64_t ldb, int64_t T, int64_t U, int64_t F,
                              int causal) {
    int st;
    int64_t tu, ta, ub;
    if ((st = attention_check(op, T, U, F, lda, ldb, causal)) || (st = ops_mul(&tu, op, T, U)) ||
        (st = ops_mul(&ta, op, T, lda)) || (st = ops_mul(&ub, op, U, ldb)) ||
        (st = ops_check_ptr(op, "probs", probs, tu)) ||
        (st = ops_check_ptr(op, "a", a, tu > 0 && F > 0 ? ta : 0)) ||
        (st = ops_check_ptr(op, "b", b, tu > 0 && F > 0 ? ub : 0)))
        return st;
    return OVS_OK;
}

int ovs_attention_probs(float *probs, const float *a, int64_t lda, const float *b, int64_t ldb,
                        int64_t T, int64_t U, int64_t F, float scale, const float *mask,
                        int causal) {
    static const char op[] = "ovs_attention_probs";
    int st = ops_attention_probs_check(op, probs, a, lda, b, ldb, T, U, F, causal);
    if (st) return st;
    if (T == 0) return OVS_OK;
    if ((st = ops_sgemm(op, 1, T, U, F, scale, a, lda, b, ldb, 0.0f, probs, U))) return st;
    attention_softmax_rows(probs, T, U, mask, causal);
    return OVS_OK;
}

/* v_h^T (F, U) packed as a weight: panel p holds features p*16.., row u of v at
 * dst[(p*U + u)*16 + f%16] (16 consecutive floats of v's row); features past F are zeros. */
static void pack_values(float *dst, const float *v, int64_t ldv, int64_t U, int64_t F) {
    const int64_t panels = (F + OVS_PACK_NR - 1) / OVS_PACK_NR;
    for (int64_t p = 0; p < panels; p++) {
        const int64_t f0 = p * OVS_PACK_NR, nf = F - f0 < OVS_PACK_NR ? F - f0 : OVS_PACK_NR;
        float *d = dst + p * U * OVS_PACK_NR;
        for (int64_t u = 0; u < U; u++) {
            const float *src = v + u * ldv + f0;
            float *row = d + u * OVS_PACK_NR;
            for (int64_t j = 0; j < nf; j++) row[j] = src[j];
            for (int64_t j = nf; j < OVS_PACK_NR; j++) row[j] = 0.0f;
        }
    }
}

int ovs_attention_forward(float *out, const float *q, int64_t ldq, const float *k, int64_t ldk,
                          const float *v, int64_t ldv, int64_t T, int64_t U, int64_t E,
                          int64_t F, float scale, const float *mask, int causal, float *scratch) {
    static const char op[] = "ovs_attention_forward";
    int st = ops_attention_forward_check(op, out, q, ldq, k, ldk, v, ldv, T, U, E, F, causal);
    if (st) return st;
    const int64_t D = E * F;
    if (T == 0 || D == 0) return OVS_OK;
    int64_t tu, etu;
    if ((st = ops_mul(&tu, op, T, U)) || (st = ops_mul(&etu, op, E, tu)) ||
        (st = ops_check_ptr(op, "scratch", scratch, etu)))
        return st;
    /* Heads run in parallel, one head per thread with single-threaded GEMMs: one parallel
     * region per call instead of three per head. */
    const size_t nk = ovs_matrix_packed_floats(U, F), nv = ovs_matrix_packed_floats(F, U);
    if (nk == SIZE_MAX || nv == SIZE_MAX || nk > SIZE_MAX / sizeof(float) / 2 - nv)
        return ovs_set_error(OVS_ERR_OVERFLOW, "%s: packed keys and values of %lld x %lld overflow",
                             op, (long long)U, (long long)F);
    ovs_region_error re = OVS_REGION_ERROR_INIT;
#pragma omp parallel if (E > 1 && tu * F >= OPS_PAR_MIN) num_threads(ovs_get_num_threads())
    {
        void *own = NULL;
        float *kp = ops_thread_workspace(OPS_WS_ATTENTION, (nk + nv) * sizeof(float), &own);
        if (!kp) ovs_region_keep(&re, OVS_ERR_NOMEM);
        float *vp = kp ? kp + nk : NULL;
#pragma omp for schedule(dynamic, 1)
        for (int64_t h = 0; h < E; h++) {
            if (!kp) continue;
            float *probs = scratch + h * tu;   /* (T, U) of head h */
            ops_matrix_pack_rows(kp, k + h * F, ldk, U, F, 1);   /* k_h as a (U, F) weight */
            const ovs_matrix wk = ovs_matrix_packed(kp, U, F);
            int hs = ops_gemm_packed(op, probs, U, q + h * F, ldq, &wk, T, scale, 0.0f, NULL, NULL,
                                     0, OVS_ACT_NONE);
            if (!hs) {
                attention_softmax_rows(probs, T, U, mask, causal);
                pack_values(vp, v + h * F, ldv, U, F);
                const ovs_matrix wv = ovs_matrix_packed(vp, F, U);
                hs = ops_gemm_packed(op, out + h * F, D, probs, U, &wv, T, 1.0f, 0.0f, NULL, NULL,
                                     0, OVS_ACT_NONE);
            }
            if (hs) ovs_region_keep(&re, hs);
        }
        ovs_free(own);
    }
    return ovs_region_finish(&re);
}
