/* Row softmax (max-subtracted), in place. ops_softmax_row is also the attention kernel's
 * scale+mask+softmax pass. Dimension letters: M rows, D row length. */
#include "ops/ops_internal.h"

void ops_softmax_row(float *x, int64_t D, const float *mask, int64_t valid) {
    float m = -INFINITY;
    if (mask) {
#pragma omp simd reduction(max : m)
        for (int64_t j = 0; j < valid; j++) {
            float v = x[j] + mask[j];
            x[j] = v;
            m = v > m ? v : m;
        }
    } else {
#pragma omp simd reduction(max : m)
        for (int64_t j = 0; j < valid; j++) m = x[j] > m ? x[j] : m;
    }
    if (m == -INFINITY) {
        /* Every entry is masked: no distribution to speak of. Zeros, as torch's
         * scaled_dot_product_attention, rather than 0/0. (D may be 0 with x NULL: no memset,
         * whose pointer must not be NULL even for 0 bytes.) */
        if (D > 0) memset(x, 0, (size_t)D * sizeof(float));
        return;
    }
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < valid; j++) {
        float e = ops_expf(x[j] - m);
        x[j] = e;
        s += e;
    }
    float inv = 1.0f / s;
#pragma omp simd
    for (int64_t j = 0; j < valid; j++) x[j] *= inv;
    for (int64_t j = valid; j < D; j++) x[j] = 0.0f;
}

int ops_softmax_check(const char *op, float *x, int64_t M, int64_t D) {
    int st;
    int64_t md;
    if ((st = ops_check_nonneg(op, "M", M)) || (st = ops_check_nonneg(op, "D", D)) ||
        (st = ops_mul(&md, op, M, D)) || (st = ops_check_ptr(op, "x", x, md)))
        return st;
    return OVS_OK;
}

int ovs_softmax_forward(float *x, int64_t M, int64_t D) {
    static const char op[] = "ovs_softmax_forward";
    int st = ops_softmax_check(op, x, M, D);
    if (st) return st;
    if (M == 0 || D == 0) return OVS_OK;
#pragma omp parallel for schedule(static) if (M * D >= OPS_PAR_MIN && M > 1) num_threads(ovs_get_num_threads())
    for (int64_t i = 0; i < M; i++) ops_softmax_row(x + i * D, D, NULL, D);
    return OVS_OK;
}

void ovs_softmax_scaled_vec(float *out, int64_t out_stride, const float *x, int64_t x_stride,
                            int64_t D, float scale) {
    float m = -INFINITY;
    for (int64_t j = 0; j < D; j++) {
        const float t = scale * x[j * x_stride];
        if (t > m) m = t;
    }
    double sum = 0.0;
    for (int64_t j = 0; j < D; j++) {
        const float e = expf(scale * x[j * x_stride] - m);
        out[j * out_stride] = e;
        sum += e;
    }
    const float inv = (float)(1.0 / sum);
    for (int64_t j = 0; j < D; j++) out[j * out_stride] *= inv;
}
