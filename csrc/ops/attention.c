/* Scaled dot-product attention, heads in parallel (one head per thread, single-threaded
 * sgemms inside the region): per head, scores by sgemm on the strided q/k columns of the head
 * (alpha = scale), mask + causal + softmax in one pass per row, then an sgemm of the
 * probabilities with the head's v columns straight into the strided output.
 * Dimension letters: T query tokens, U key tokens, E heads, F head width, D = E*F. */
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
    /* Heads run in parallel, one head per thread with single-threaded sgemms: one parallel
     * region per call instead of three per head. */
    ovs_region_error re = OVS_REGION_ERROR_INIT;
#pragma omp parallel for schedule(dynamic, 1) if (E > 1 && tu * F >= OPS_PAR_MIN) num_threads(ovs_get_num_threads())
    for (int64_t h = 0; h < E; h++) {
        float *probs = scratch + h * tu;   /* (T, U) of head h */
        int hs = ops_sgemm(op, 1, T, U, F, scale, q + h * F, ldq, k + h * F, ldk, 0.0f, probs, U);
        if (!hs) {
            attention_softmax_rows(probs, T, U, mask, causal);
            hs = ops_sgemm(op, 0, T, F, U, 1.0f, probs, U, v + h * F, ldv, 0.0f, out + h * F, D);
        }
        if (hs) ovs_region_keep(&re, hs);
    }
    return ovs_region_finish(&re);
}
