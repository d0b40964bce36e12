/* Linear layer. Packed weights: the packed-weight GEMM with the epilogue fused per tile.
 * Dense weights: one sgemm, then bias + residual + activation fused into one pass over the
 * output rows. A residual that aliases out is folded into the sgemm (beta = 1) instead.
 * Dimension letters: M rows, C input features, K output features. */
#include "ops/ops_internal.h"

/* row (K,) = act(row + bias (K,) [+ res (K,)]); bias and res may be NULL. */
static void linear_epilogue_row(float *row, const float *bias, const float *res, int64_t K,
                                ovs_act act) {
    if (bias && res) {
#pragma omp simd
        for (int64_t j = 0; j < K; j++) row[j] = (row[j] + bias[j]) + res[j];
    } else if (bias) {
#pragma omp simd
        for (int64_t j = 0; j < K; j++) row[j] += bias[j];
    } else if (res) {
#pragma omp simd
        for (int64_t j = 0; j < K; j++) row[j] += res[j];
    }
    ops_act_inplace(row, K, act);
}

/* Shared argument checks of the fast and naive versions. */
int ops_linear_check(const char *op, float *out, const float *in, const ovs_matrix *weight,
                     int64_t M, int64_t C, int64_t K, ovs_act act) {
    int st;
    int64_t mk, mc;
    if ((st = ops_check_nonneg(op, "M", M)) || (st = ops_check_nonneg(op, "C", C)) ||
        (st = ops_check_nonneg(op, "K", K)) || (st = ops_check_act(op, act)) ||
        (st = ops_check_matrix(op, weight, K, C)) || (st = ops_mul(&mk, op, M, K)) ||
        (st = ops_mul(&mc, op, M, C)) || (st = ops_check_ptr(op, "out", out, mk)) ||
        (st = ops_check_ptr(op, "in", in, mk > 0 ? mc : 0)))
        return st;
    return OVS_OK;
}

int ovs_linear_forward(float *out, const float *in, const ovs_matrix *weight, const float *bias,
                       const float *residual, int64_t M, int64_t C, int64_t K, ovs_act act) {
    static const char op[] = "ovs_linear_forward";
    int st = ops_linear_check(op, out, in, weight, M, C, K, act);
    if (st) return st;
    if (M == 0 || K == 0) return OVS_OK;
    if (weight->format == OVS_MATRIX_PACKED)
        return ops_gemm_packed(op, out, K, in, C, weight, M, 1.0f, 0.0f, bias, residual, K, act);
    int fold_residual = residual == out;  /* out already holds the residual: beta = 1 */
    st = ops_sgemm(op, 1, M, K, C, 1.0f, in, C, weight->data, C, fold_residual ? 1.0f : 0.0f,
                   out, K);
    if (st) return st;
    const float *res = fold_residual ? NULL : residual;
    if (!bias && !res && act == OVS_ACT_NONE) return OVS_OK;
#pragma omp parallel for schedule(static) if (M * K >= OPS_PAR_MIN && M > 1) num_threads(ovs_get_num_threads())
    for (int64_t i = 0; i < M; i++)
        linear_epilogue_row(out + i * K, bias, res ? res + i * K : NULL, K, act);
    return OVS_OK;
}
