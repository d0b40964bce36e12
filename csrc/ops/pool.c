/* Average pooling (torch.nn.AvgPool2d, ceil_mode=False) and adaptive average pooling.
 * Dimension letters: NC planes (batch x channels), H, W input, P, Q output, R, S kernel. */
#include "ops/ops_internal.h"

/* Shared checks of the fast and naive avgpool; *P_out, *Q_out get the output size. */
int ops_avgpool2d_check(const char *op, float *out, const float *in, int64_t NC, int64_t H,
                        int64_t W, int64_t R, int64_t S, int64_t stride_h, int64_t stride_w,
                        int64_t pad_h, int64_t pad_w, int64_t *P_out, int64_t *Q_out) {
    int st;
    if ((st = ops_check_nonneg(op, "NC", NC)) || (st = ops_check_nonneg(op, "H", H)) ||
        (st = ops_check_nonneg(op, "W", W)) || (st = ops_check_pos(op, "R", R)) ||
        (st = ops_check_pos(op, "S", S)) || (st = ops_check_pos(op, "stride_h", stride_h)) ||
        (st = ops_check_pos(op, "stride_w", stride_w)) ||
        (st = ops_check_nonneg(op, "pad_h", pad_h)) || (st = ops_check_nonneg(op, "pad_w", pad_w)))
        return st;
    /* As torch: a window must always overlap the input, so the divisor is never 0. */
    if (pad_h > R / 2 || pad_w > S / 2)
        return ovs_set_error(OVS_ERR_ARG,
                             "%s: padding (%lld, %lld) must be at most half the kernel "
                             "(%lld, %lld)",
                             op, (long long)pad_h, (long long)pad_w, (long long)R, (long long)S);
    int64_t P = ovs_conv2d_out_size(H, R, stride_h, pad_h, 1);
    int64_t Q = ovs_conv2d_out_size(W, S, stride_w, pad_w, 1);
    if (P < 0 || Q < 0)
        return ovs_set_error(OVS_ERR_ARG,
                             "%s: kernel %lldx%lld does not fit the padded input %lldx%lld "
                             "(padding %lldx%lld)",
                             op, (long long)R, (long long)S, (long long)H, (long long)W,
                             (long long)pad_h, (long long)pad_w);
    int64_t hw, pq, n_in, n_out;
    if ((st = ops_mul(&hw, op, H, W)) || (st = ops_mul(&pq, op, P, Q)) ||
        (st = ops_mul(&n_in, op, NC, hw)) || (st = ops_mul(&n_out, op, NC, pq)) ||
        (st = ops_check_ptr(op, "out", out, n_out)) ||
        (st = ops_check_ptr(op, "in", in, n_out > 0 ? n_in : 0)))
        return st;
    *P_out = P;
    *Q_out = Q;
    return OVS_OK;
}

/* The window of output index i along one axis (kernel k, input extent n): [*lo, *hi) clipped to
 * the input; returns its extent clipped only to the padded input (count_include_pad's divisor). */
static inline int64_t pool_window(int64_t i, int64_t stride, int64_t pad, int64_t k, int64_t n,
                                  int64_t *lo, int64_t *hi) {
    int64_t a = i * stride - pad, b = a + k;
    if (b > n + pad) b = n + pad;
    *lo = a < 0 ? 0 : a;
    *hi = b > n ? n : b;
    return b - a;
}

int ovs_avgpool2d_forward(float *out, const float *in, int64_t NC, int64_t H, int64_t W,
                          int64_t R, int64_t S, int64_t stride_h, int64_t stride_w,
                          int64_t pad_h, int64_t pad_w, int count_include_pad) {
    static const char op[] = "ovs_avgpool2d_forward";
    int64_t P, Q;
    int st = ops_avgpool2d_check(op, out, in, NC, H, W, R, S, stride_h, stride_w, pad_h, pad_w,
                                 &P, &Q);
    if (st) return st;
    const int64_t HW = H * W, PQ = P * Q;
    if (NC == 0 || PQ == 0) return OVS_OK;
    if (R == 2 && S == 2 && stride_h == 2 && stride_w == 2 && pad_h == 0 && pad_w == 0) {
        /* The ResNets' 2x2 stride-2 pools (stem, CLIP downsampling): whole windows, the same
         * sum in the same order as the general loop below (bitwise), written so it vectorises
         * (the general loop's per-window bounds ran at ~2 cycles per input float). */
#pragma omp parallel for schedule(static) if (NC * PQ * 4 >= OPS_PAR_MIN && NC > 1) num_threads(ovs_get_num_threads())
        for (int64_t plane = 0; plane < NC; plane++) {
            const float *x = in + plane * HW;
            float *y = out + plane * PQ;
            for (int64_t p = 0; p < P; p++) {
                const float *a = x + 2 * p * W, *b = a + W;
                float *yp = y + p * Q;
#pragma omp simd
                for (int64_t q = 0; q < Q; q++)
                    yp[q] = (((0.0f + a[2 * q]) + a[2 * q + 1]) + b[2 * q]) + b[2 * q + 1];
#pragma omp simd
                for (int64_t q = 0; q < Q; q++) yp[q] = yp[q] / 4.0f;
            }
        }
        return OVS_OK;
    }
#pragma omp parallel for schedule(static) if (NC * PQ * R * S >= OPS_PAR_MIN && NC > 1) num_threads(ovs_get_num_threads())
    for (int64_t plane = 0; plane < NC; plane++) {
        const float *x = in + plane * HW;     /* (H, W) */
        float *y = out + plane * PQ;          /* (P, Q) */
        for (int64_t p = 0; p < P; p++) {
            int64_t h0, h1;
            const int64_t pool_h = pool_window(p, stride_h, pad_h, R, H, &h0, &h1);
            for (int64_t q = 0; q < Q; q++) {
                int64_t w0, w1;
                const int64_t pool_w = pool_window(q, stride_w, pad_w, S, W, &w0, &w1);
                float sum = 0.0f;
                for (int64_t ih = h0; ih < h1; ih++)
                    for (int64_t iw = w0; iw < w1; iw++) sum += x[ih * W + iw];
                int64_t div = count_include_pad ? pool_h * pool_w : (h1 - h0) * (w1 - w0);
                y[p * Q + q] = sum / (float)div;
            }
        }
    }
    return OVS_OK;
}

int ops_adaptive_avgpool2d_check(const char *op, float *out, const float *in, int64_t NC,
                                 int64_t H, int64_t W, int64_t P, int64_t Q, int64_t *n_out) {
    int st = ops_planes_check(op, "pool", out, in, NC, H, W, P, Q, n_out);
    if (st || *n_out == 0) return st;
    /* Also guards (p + 1) * H in the window bounds. */
    int64_t tmp;
    if ((st = ops_mul(&tmp, op, P + 1, H)) || (st = ops_mul(&tmp, op, Q + 1, W))) return st;
    return OVS_OK;
}

int ovs_adaptive_avgpool2d_forward(float *out, const float *in, int64_t NC, int64_t H, int64_t W,
                                   int64_t P, int64_t Q) {
    static const char op[] = "ovs_adaptive_avgpool2d_forward";
    int64_t n_out;
    int st = ops_adaptive_avgpool2d_check(op, out, in, NC, H, W, P, Q, &n_out);
    if (st || n_out == 0) return st;
    const int64_t hw = H * W, pq = P * Q, n_in = NC * hw;
#pragma omp parallel for schedule(static) if (n_in >= OPS_PAR_MIN && NC > 1) num_threads(ovs_get_num_threads())
    for (int64_t plane = 0; plane < NC; plane++) {
        const float *x = in + plane * hw;     /* (H, W) */
        float *y = out + plane * pq;          /* (P, Q) */
        for (int64_t p = 0; p < P; p++) {
            /* Window [floor(p H / P), ceil((p + 1) H / P)), as torch. */
            int64_t h0 = p * H / P, h1 = ((p + 1) * H + P - 1) / P;
            for (int64_t q = 0; q < Q; q++) {
                int64_t w0 = q * W / Q, w1 = ((q + 1) * W + Q - 1) / Q;
                float sum = 0.0f;
                for (int64_t ih = h0; ih < h1; ih++)
                    for (int64_t iw = w0; iw < w1; iw++) sum += x[ih * W + iw];
                y[p * Q + q] = sum / (float)((h1 - h0) * (w1 - w0));
            }
        }
    }
    return OVS_OK;
}
