/* LayerNorm over the last dimension and GroupNorm over (channels of a group, pixels).
 * Dimension letters: M rows, D features; N batch, C channels, HW pixels, G groups.
 * Statistics are two-pass (mean, then mean squared deviation): no cancellation for inputs
 * with a large offset. */
#include "ops/ops_internal.h"

int ops_layernorm_check(const char *op, float *out, const float *in, const float *weight,
                        const float *bias, int64_t M, int64_t D, float eps) {
    int st;
    int64_t md;
    if ((st = ops_check_nonneg(op, "M", M)) || (st = ops_check_nonneg(op, "D", D)) ||
        (st = ops_mul(&md, op, M, D)) || (st = ops_check_ptr(op, "out", out, md)) ||
        (st = ops_check_ptr(op, "in", in, md)))
        return st;
    if (!(eps >= 0.0f)) return ovs_set_error(OVS_ERR_ARG, "%s: eps must be >= 0, got %g", op, eps);
    (void)weight;
    (void)bias;
    return OVS_OK;
}

/* Mean of x (n >= 1,): float SIMD partial sums of x - x[0] (small numbers even when the
 * values share a large offset, so float sums stay accurate), chunked into a double total so
 * that long reductions (a GroupNorm group) keep their precision. */
static double mean_f(const float *x, int64_t n) {
    const float shift = x[0];
    double total = 0.0;
    for (int64_t lo = 0; lo < n; lo += 4096) {
        int64_t hi = n - lo < 4096 ? n : lo + 4096;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t i = lo; i < hi; i++) s += x[i] - shift;
        total += s;
    }
    return (double)shift + total / (double)n;
}

/* The mean as an unevaluated float sum hi + lo: x - hi is exact for x near the mean
 * (Sterbenz), so (x - hi) - lo centres with almost double precision even when the mean is
 * large against the spread, at the cost of one subtraction. */
typedef struct {
    float hi, lo;
} mean2f;

static mean2f mean2f_of(double mean) {
    mean2f m;
    m.hi = (float)mean;
    m.lo = (float)(mean - (double)m.hi);
    return m;
}

/* Sum of (x - m)^2 over x (n,), chunked as mean_f. */
static double sumsq_dev_f(const float *x, int64_t n, mean2f m) {
    double total = 0.0;
    for (int64_t lo = 0; lo < n; lo += 4096) {
        int64_t hi = n - lo < 4096 ? n : lo + 4096;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t i = lo; i < hi; i++) {
            float d = (x[i] - m.hi) - m.lo;
            s += d * d;
        }
        total += s;
    }
    return total;
}

int ovs_layernorm_forward(float *out, const float *in, const float *weight, const float *bias,
                          int64_t M, int64_t D, float eps) {
    static const char op[] = "ovs_layernorm_forward";
    int st = ops_layernorm_check(op, out, in, weight, bias, M, D, eps);
    if (st) return st;
    if (M == 0 || D == 0) return OVS_OK;
    /* ~0.1 ns a float: below 256 Ki floats (a ViT-B block's 197 x 768 tokens: ~15 us) waking
     * the sleeping workers of a parallel region costs more than the rows. */
#pragma omp parallel for schedule(static) if (M * D >= 8 * OPS_PAR_MIN && M > 1) num_threads(ovs_get_num_threads())
    for (int64_t i = 0; i < M; i++) {
        const float *x = in + i * D;   /* (D,) */
        float *y = out + i * D;        /* (D,), may be x */
        const mean2f m = mean2f_of(mean_f(x, D));
        const float var = (float)(sumsq_dev_f(x, D, m) / (double)D);
        const float rstd = 1.0f / sqrtf(var + eps), mh = m.hi, ml = m.lo;
        if (weight && bias) {
#pragma omp simd
            for (int64_t j = 0; j < D; j++)
                y[j] = ((x[j] - mh) - ml) * rstd * weight[j] + bias[j];
        } else if (weight) {
#pragma omp simd
            for (int64_t j = 0; j < D; j++) y[j] = ((x[j] - mh) - ml) * rstd * weight[j];
        } else if (bias) {
#pragma omp simd
            for (int64_t j = 0; j < D; j++) y[j] = ((x[j] - mh) - ml) * rstd + bias[j];
        } else {
#pragma omp simd
            for (int64_t j = 0; j < D; j++) y[j] = ((x[j] - mh) - ml) * rstd;
        }
    }
    return OVS_OK;
}

int ops_groupnorm_check(const char *op, float *out, const float *in, int64_t N, int64_t C,
                        int64_t HW, int64_t G, float eps, int64_t *total) {
    int st;
    int64_t nc;
    if ((st = ops_check_nonneg(op, "N", N)) || (st = ops_check_nonneg(op, "C", C)) ||
        (st = ops_check_nonneg(op, "HW", HW)) || (st = ops_check_pos(op, "G", G)) ||
        (st = ops_mul(&nc, op, N, C)) || (st = ops_mul(total, op, nc, HW)) ||
        (st = ops_check_ptr(op, "out", out, *total)) || (st = ops_check_ptr(op, "in", in, *total)))
        return st;
    if (C % G != 0)
        return ovs_set_error(OVS_ERR_ARG, "%s: C = %lld is not divisible by G = %lld groups", op,
                             (long long)C, (long long)G);
    if (!(eps >= 0.0f)) return ovs_set_error(OVS_ERR_ARG, "%s: eps must be >= 0, got %g", op, eps);
    return OVS_OK;
}

int ovs_groupnorm_forward(float *out, const float *in, const float *weight, const float *bias,
                          int64_t N, int64_t C, int64_t HW, int64_t G, float eps) {
    int64_t total;
    int st = ops_groupnorm_check("ovs_groupnorm_forward", out, in, N, C, HW, G, eps, &total);
    if (st || total == 0) return st;
    const int64_t Cg = C / G, group = Cg * HW, NG = N * G;
#pragma omp parallel for schedule(static) if (total >= OPS_PAR_MIN && NG > 1) num_threads(ovs_get_num_threads())
    for (int64_t ng = 0; ng < NG; ng++) {
        const float *x = in + ng * group;   /* (Cg, HW) */
        float *y = out + ng * group;        /* (Cg, HW), may be x */
        const mean2f m = mean2f_of(mean_f(x, group));
        const float var = (float)(sumsq_dev_f(x, group, m) / (double)group);
        const float rstd = 1.0f / sqrtf(var + eps), mh = m.hi, ml = m.lo;
        int64_t c0 = (ng % G) * Cg;
        for (int64_t c = 0; c < Cg; c++) {
            /* Centre before scaling: x * scale + (b - mean * scale) would lose digits when
             * the mean is large against the spread. */
            float scale = rstd * (weight ? weight[c0 + c] : 1.0f);
            float shift = bias ? bias[c0 + c] : 0.0f;
            const float *xc = x + c * HW;
            float *yc = y + c * HW;
#pragma omp simd
            for (int64_t j = 0; j < HW; j++) yc[j] = ((xc[j] - mh) - ml) * scale + shift;
        }
    }
    return OVS_OK;
}
