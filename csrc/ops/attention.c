/* Scaled dot-product attention, heads in parallel (one head per thread, single-threaded GEMMs
 * inside the region): per head, the head's k columns are packed as the weight of the
 * packed-weight GEMM (ops/gemm.c, AVX-512 / AVX2 micro-kernels) and the scores computed from the
 * strided q columns (alpha = scale); mask + causal + softmax in one pass per row; then the
 * head's v columns, packed transposed, as the weight of a second packed GEMM of the
 * probabilities, straight into the strided output. The packing buffers are the thread's kept
 * workspace. Dimension letters: T query tokens, U key tokens, E heads, F head width, D = E*F. */
#include "ops/ops_internal.h"

#include <math.h>

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

/* ---------------------------------------------------------------- one query, k and v folded
 * (the algebra in include/ovs/ops.h). Sums of 16 lanes as the packed GEMM keeps them, then a
 * fixed tree: the result does not depend on the thread count. */
int ovs_attention_folded(float *att, const float *tok, int64_t N, int64_t T, const int64_t *nkeys,
                         const float *q, const ovs_matrix *k, const float *kb, const ovs_matrix *v,
                         const float *vb, int64_t E, float scale, float *u, float *sc, float *mix) {
    enum { NR = OVS_PACK_NR };
    if (!att || !tok || !q || !k || !kb || !v || !vb || !u || !sc || !mix || N < 0 || T < 1)
        return ovs_set_error(OVS_ERR_ARG, "ovs_attention_folded: a buffer is NULL or the sizes are "
                             "bad (N = %lld, T = %lld)", (long long)N, (long long)T);
    const int64_t C = k->cols, F = E > 0 ? C / E : 0;
    if (k->format != OVS_MATRIX_PACKED || v->format != OVS_MATRIX_PACKED || k->rows != C ||
        v->rows != C || v->cols != C || E <= 0 || C % E || F % NR || C % NR)
        return ovs_set_error(OVS_ERR_ARG, "ovs_attention_folded: needs packed (C, C) projections "
                             "and heads of a multiple of %d channels (C = %lld, %lld heads)", NR,
                             (long long)C, (long long)E);
    for (int64_t n = 0; nkeys && n < N; n++)
        if (nkeys[n] < 1 || nkeys[n] > T)
            return ovs_set_error(OVS_ERR_ARG, "ovs_attention_folded: sequence %lld attends %lld of "
                                 "%lld tokens", (long long)n, (long long)nkeys[n], (long long)T);
    const float *pk = k->data, *pv = v->data;
    const int64_t panels = C / NR, per_head = F / NR;
    const int nt = ovs_get_num_threads();
    /* u (N, E, C): u[n, e, c] = sum over the head's rows r of q[n, r] Wk[r, c], panel by panel */
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t ec = 0; ec < E * (C / NR); ec++) {
        const int64_t e = ec / (C / NR), c0 = ec % (C / NR) * NR;
        for (int64_t n = 0; n < N; n++) {
            const float *qn = q + n * C + e * F;
            for (int64_t c = c0; c < c0 + NR; c++) {
                float acc[NR] = {0};
                for (int64_t pp = 0; pp < per_head; pp++) {
                    const float *w = pk + ((e * per_head + pp) * C + c) * NR;
                    for (int j = 0; j < NR; j++) acc[j] = fmaf(qn[pp * NR + j], w[j], acc[j]);
                }
                for (int h = NR / 2; h > 0; h /= 2)
                    for (int j = 0; j < h; j++) acc[j] += acc[j + h];
                u[(n * E + e) * C + c] = acc[0];
            }
        }
    }
    /* scores (N, E, T) = (u . tok + q . bk) * scale, then their softmax over the attended t */
    ovs_region_error re = OVS_REGION_ERROR_INIT;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t ne = 0; ne < N * E; ne++) {
        const int64_t n = ne / E, e = ne % E, nk = nkeys ? nkeys[n] : T;
        const float *ue = u + ne * C, *qe = q + n * C + e * F, *kbe = kb + e * F;
        float qb = 0.0f;
        for (int64_t f = 0; f < F; f++) qb = fmaf(qe[f], kbe[f], qb);
        float *s = sc + ne * T;
        for (int64_t t = 0; t < nk; t++) {
            const float *x = tok + (n * T + t) * C;
            float acc[NR] = {0};
            for (int64_t c = 0; c < C; c += NR)
                for (int j = 0; j < NR; j++) acc[j] = fmaf(ue[c + j], x[c + j], acc[j]);
            for (int h = NR / 2; h > 0; h /= 2)
                for (int j = 0; j < h; j++) acc[j] += acc[j + h];
            s[t] = (acc[0] + qb) * scale;
        }
        const int st = ovs_softmax_forward(s, 1, nk);
        if (st) ovs_region_keep(&re, st);
    }
    int rc = ovs_region_finish(&re);
    if (rc) return rc;
    /* mix (C,) = sum_t p_t tok(t), t in order */
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t ne = 0; ne < N * E; ne++) {
        const int64_t n = ne / E, nk = nkeys ? nkeys[n] : T;
        const float *s = sc + ne * T;
        float *me = mix + ne * C;
        for (int64_t c = 0; c < C; c++) me[c] = 0.0f;
        for (int64_t t = 0; t < nk; t++) {
            const float pt = s[t], *x = tok + (n * T + t) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) me[c] = fmaf(pt, x[c], me[c]);
        }
    }
    /* att (N, C): row r of Wv (a panel's column) times its head's mix, + bv; the packed GEMM's
     * chain (fmaf over c in increasing order, bias after) */
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t p = 0; p < panels; p++) {
        const int64_t e = p / per_head;
        for (int64_t n = 0; n < N; n++) {
            const float *me = mix + (n * E + e) * C;
            float acc[NR] = {0};
            for (int64_t c = 0; c < C; c++) {
                const float *w = pv + (p * C + c) * NR;
                for (int j = 0; j < NR; j++) acc[j] = fmaf(me[c], w[j], acc[j]);
            }
            for (int j = 0; j < NR; j++) att[n * C + p * NR + j] = acc[j] + vb[p * NR + j];
        }
    }
    return OVS_OK;
}
