/* uint8 image preprocessing: Pillow-exact bicubic resizing and crop + normalise to float.
 *
 * Pillow's Image.resize(size, BICUBIC) on an RGB image (libImaging/Resample.c) is separable:
 * - per output coordinate, a window of input pixels around center = (x + 0.5) * scale with
 *   support 2 * max(scale, 1) (the filter is stretched when downscaling: antialiasing);
 *   bicubic weights (a = -0.5) are evaluated in double, divided by their sum, then rounded to
 *   fixed point with PRECISION_BITS = 22 fractional bits (round half away from zero);
 * - a horizontal pass over only the input rows the vertical pass will read, each sum started
 *   at 1 << 21 (rounding), shifted right by 22 and clipped to 0..255 into an 8-bit temporary;
 * - a vertical pass over the temporary in the same way;
 * - a pass is skipped when that axis keeps its size (both skipped: a plain copy);
 * - since Pillow 13.0 the vertical pass runs first when the height loses more than twice as
 *   many pixels as the width (Pillow 12 and older always ran horizontal first).
 * Reproducing these steps and their order of double operations gives bit-identical output.
 * Dimension letters: H, W input, P, Q output. */
#include "ops/ops_internal.h"

#include <limits.h>

#define PIL_PRECISION_BITS 22   /* 32 - 8 bits of result - 2 bits of headroom */

/* Pillow's bicubic kernel, a = -0.5. */
static double pil_bicubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* Window width (taps per output pixel) for resampling `in` to `out` pixels. */
static int64_t pil_ksize(int64_t in, int64_t out) {
    double scale = (double)(float)in / (double)out;
    double support = 2.0 * (scale < 1.0 ? 1.0 : scale);
    return (int64_t)ceil(support) * 2 + 1;
}

/* Fixed-point weights k (out, ksize) and windows bounds (out, 2) = (first tap, tap count) for
 * resampling `in` pixels to `out`, in Pillow's arithmetic. pre (ksize,) is double scratch. */
static void pil_coeffs(int32_t *k, int64_t *bounds, double *pre, int64_t in, int64_t out,
                       int64_t ksize) {
    double scale = (double)(float)in / (double)out;   /* Pillow: (double)(box1 - box0) / out */
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * filterscale;
    double ss = 1.0 / filterscale;
    for (int64_t xx = 0; xx < out; xx++) {
        double center = (xx + 0.5) * scale;     /* box0 = 0 */
        int64_t xmin = (int64_t)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int64_t xmax = (int64_t)(center + support + 0.5);
        if (xmax > in) xmax = in;
        xmax -= xmin;
        double ww = 0.0;
        for (int64_t x = 0; x < xmax; x++) {
            double w = pil_bicubic((x + xmin - center + 0.5) * ss);
            pre[x] = w;
            ww += w;
        }
        int32_t *kr = k + xx * ksize;
        for (int64_t x = 0; x < ksize; x++) {
            double w = x < xmax ? (ww != 0.0 ? pre[x] / ww : pre[x]) : 0.0;
            kr[x] = w < 0 ? (int32_t)(-0.5 + w * (1 << PIL_PRECISION_BITS))
                          : (int32_t)(0.5 + w * (1 << PIL_PRECISION_BITS));
        }
        bounds[2 * xx] = xmin;
        bounds[2 * xx + 1] = xmax;
    }
}

/* (acc >> 22) clipped to 0..255, as Pillow's clip8 (arithmetic shift of a signed sum). */
static inline uint8_t pil_clip8(int32_t acc) {
    int32_t v = acc >> PIL_PRECISION_BITS;
    return (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
}

/* Horizontal pass: dst (rows, Q, 3) from rows of src (rows, W) with the given byte strides. */
static void pil_horizontal(uint8_t *dst, const uint8_t *src, int64_t row_stride,
                           int64_t pix_stride, int64_t rows, int64_t Q, const int32_t *kk,
                           const int64_t *bounds, int64_t ksize) {
#pragma omp parallel for schedule(static) if (rows * Q * ksize >= OPS_PAR_MIN && rows > 1) num_threads(ovs_get_num_threads())
    for (int64_t y = 0; y < rows; y++) {
        const uint8_t *line = src + y * row_stride;
        uint8_t *d = dst + y * Q * 3;
        for (int64_t xx = 0; xx < Q; xx++) {
            const int32_t *k = kk + xx * ksize;
            const int64_t n = bounds[2 * xx + 1];
            const uint8_t *px = line + bounds[2 * xx] * pix_stride;
            int32_t s0 = 1 << (PIL_PRECISION_BITS - 1), s1 = s0, s2 = s0;
            for (int64_t x = 0; x < n; x++, px += pix_stride) {
                s0 += px[0] * k[x];
                s1 += px[1] * k[x];
                s2 += px[2] * k[x];
            }
            d[3 * xx] = pil_clip8(s0);
            d[3 * xx + 1] = pil_clip8(s1);
            d[3 * xx + 2] = pil_clip8(s2);
        }
    }
}

/* Vertical pass: dst (P, cols, 3) from src rows (starting `first` rows before the windows'
 * origin, i.e. window y reads src row bounds - first) with the given byte strides. */
static void pil_vertical(uint8_t *dst, const uint8_t *src, int64_t row_stride, int64_t pix_stride,
                         int64_t first, int64_t P, int64_t cols, const int32_t *kk,
                         const int64_t *bounds, int64_t ksize) {
    const int64_t CC = cols * 3;
    enum { BLOCK = 512 };
#pragma omp parallel for schedule(static) if (P * CC * ksize >= OPS_PAR_MIN && P > 1) num_threads(ovs_get_num_threads())
    for (int64_t yy = 0; yy < P; yy++) {
        const int32_t *k = kk + yy * ksize;
        const int64_t ymin = bounds[2 * yy] - first, n = bounds[2 * yy + 1];
        uint8_t *d = dst + yy * CC;
        /* Integer sums are exact, so summing taps-outer / columns-inner (vectorisable) gives
         * Pillow's result although Pillow loops the other way round. */
        int32_t acc[BLOCK];
        for (int64_t c0 = 0; c0 < CC; c0 += BLOCK) {
            const int64_t nc = CC - c0 < BLOCK ? CC - c0 : BLOCK;
            for (int64_t j = 0; j < nc; j++) acc[j] = 1 << (PIL_PRECISION_BITS - 1);
            for (int64_t y = 0; y < n; y++) {
                const uint8_t *line = src + (ymin + y) * row_stride;
                const int32_t ky = k[y];
                if (pix_stride == 3) {
#pragma omp simd
                    for (int64_t j = 0; j < nc; j++) acc[j] += line[c0 + j] * ky;
                } else {
                    for (int64_t j = 0; j < nc; j++) {
                        int64_t cc = c0 + j;
                        acc[j] += line[(cc / 3) * pix_stride + cc % 3] * ky;
                    }
                }
            }
            for (int64_t j = 0; j < nc; j++) d[c0 + j] = pil_clip8(acc[j]);
        }
    }
}

int ovs_resize_u8_pil_bicubic(uint8_t *out, const uint8_t *in, int64_t H, int64_t W,
                              int64_t in_row_stride, int64_t in_pixel_stride, int64_t P,
                              int64_t Q) {
    static const char op[] = "ovs_resize_u8_pil_bicubic";
    int st;
    int64_t pq3;
    if ((st = ops_check_nonneg(op, "H", H)) || (st = ops_check_nonneg(op, "W", W)) ||
        (st = ops_check_nonneg(op, "P", P)) || (st = ops_check_nonneg(op, "Q", Q)) ||
        (st = ops_mul(&pq3, op, P, Q)) || (st = ops_mul(&pq3, op, pq3, 3)) ||
        (st = ops_check_ptr(op, "out", out, pq3)))
        return st;
    if (pq3 == 0) return OVS_OK;
    if (H == 0 || W == 0)
        return ovs_set_error(OVS_ERR_ARG, "%s: cannot resize an empty %lldx%lld image to %lldx%lld",
                             op, (long long)H, (long long)W, (long long)P, (long long)Q);
    if (in_pixel_stride < 3 || in_row_stride < 1)
        return ovs_set_error(OVS_ERR_ARG,
                             "%s: strides must be positive with >= 3 bytes per pixel, got row "
                             "stride %lld, pixel stride %lld",
                             op, (long long)in_row_stride, (long long)in_pixel_stride);
    /* Pillow's sizes are C ints. */
    if (H > INT_MAX || W > INT_MAX || P > INT_MAX || Q > INT_MAX)
        return ovs_set_error(OVS_ERR_OVERFLOW, "%s: image sizes must fit in an int", op);
    int64_t span;
    if ((st = ops_check_ptr(op, "in", in, 1)) || (st = ops_mul(&span, op, H - 1, in_row_stride)) ||
        (st = ops_mul(&span, op, W - 1, in_pixel_stride)))
        return st;

    const int need_h = Q != W, need_v = P != H;
    if (!need_h && !need_v) {
        for (int64_t y = 0; y < H; y++)
            for (int64_t x = 0; x < W; x++)
                memcpy(out + (y * W + x) * 3, in + y * in_row_stride + x * in_pixel_stride, 3);
        return OVS_OK;
    }
    /* Pillow >= 13 runs the vertical pass first when the height shrinks by more than twice
     * as many pixels as the width does (fewer rows for the horizontal pass); the order
     * changes the intermediate 8-bit rounding, so it is part of the result. */
    const int v_first = H - P > 0 && H - P > (W - Q) * 2;

    /* One allocation: weights and windows of both axes, double scratch for the weights, and
     * the 8-bit intermediate: (rows, Q, 3) horizontal-first, (P, W, 3) vertical-first. */
    const int64_t kv = pil_ksize(H, P), kh = pil_ksize(W, Q);
    const int64_t kmax = kv > kh ? kv : kh;
    int64_t n_kv, n_kh, tmp_bytes;
    if ((st = ops_mul(&n_kv, op, P, kv)) || (st = ops_mul(&n_kh, op, Q, kh)) ||
        (st = ops_mul(&tmp_bytes, op, v_first ? P : H, v_first ? W : Q)) ||
        (st = ops_mul(&tmp_bytes, op, tmp_bytes, 3)))
        return st;
    /* Offsets rounded up to 64 bytes keep every part aligned; with sizes below 2^31 and
     * ksize below 2^33 nothing here approaches 2^63. */
#define PIL_ALIGN(n) (((size_t)(n) + 63) & ~(size_t)63)
    size_t off_kh = PIL_ALIGN((size_t)n_kv * sizeof(int32_t));
    size_t off_bv = off_kh + PIL_ALIGN((size_t)n_kh * sizeof(int32_t));
    size_t off_bh = off_bv + PIL_ALIGN((size_t)P * 2 * sizeof(int64_t));
    size_t off_pre = off_bh + PIL_ALIGN((size_t)Q * 2 * sizeof(int64_t));
    size_t off_tmp = off_pre + PIL_ALIGN((size_t)kmax * sizeof(double));
#undef PIL_ALIGN
    char *work = ovs_malloc(off_tmp + (size_t)tmp_bytes);
    if (!work) return OVS_ERR_NOMEM;
    int32_t *k_v = (int32_t *)work;                     /* (P, kv) */
    int32_t *k_h = (int32_t *)(work + off_kh);          /* (Q, kh) */
    int64_t *b_v = (int64_t *)(work + off_bv);          /* (P, 2) */
    int64_t *b_h = (int64_t *)(work + off_bh);          /* (Q, 2) */
    double *pre = (double *)(work + off_pre);           /* (kmax,) */
    uint8_t *tmp = (uint8_t *)(work + off_tmp);         /* see above */
    if (need_v) pil_coeffs(k_v, b_v, pre, H, P, kv);
    if (need_h) pil_coeffs(k_h, b_h, pre, W, Q, kh);

    if (v_first) {
        if (!need_h) {
            pil_vertical(out, in, in_row_stride, in_pixel_stride, 0, P, W, k_v, b_v, kv);
        } else {
            pil_vertical(tmp, in, in_row_stride, in_pixel_stride, 0, P, W, k_v, b_v, kv);
            pil_horizontal(out, tmp, W * 3, 3, P, Q, k_h, b_h, kh);
        }
    } else if (!need_v) {
        pil_horizontal(out, in, in_row_stride, in_pixel_stride, H, Q, k_h, b_h, kh);
    } else if (!need_h) {
        pil_vertical(out, in, in_row_stride, in_pixel_stride, 0, P, W, k_v, b_v, kv);
    } else {
        /* Only the input rows the vertical pass reads: [y_first, y_last). */
        const int64_t y_first = b_v[0], y_last = b_v[2 * (P - 1)] + b_v[2 * (P - 1) + 1];
        pil_horizontal(tmp, in + y_first * in_row_stride, in_row_stride, in_pixel_stride,
                       y_last - y_first, Q, k_h, b_h, kh);
        pil_vertical(out, tmp, Q * 3, 3, y_first, P, Q, k_v, b_v, kv);
    }
    ovs_free(work);
    return OVS_OK;
}

int ovs_normalize_u8(float *out, const uint8_t *in, int64_t H, int64_t W, int64_t in_row_stride,
                     int64_t in_pixel_stride, int64_t y0, int64_t x0, int64_t P, int64_t Q,
                     const float mean[3], const float std[3], int scale255) {
    static const char op[] = "ovs_normalize_u8";
    int st;
    int64_t pq;
    if ((st = ops_check_nonneg(op, "H", H)) || (st = ops_check_nonneg(op, "W", W)) ||
        (st = ops_check_nonneg(op, "y0", y0)) || (st = ops_check_nonneg(op, "x0", x0)) ||
        (st = ops_check_nonneg(op, "P", P)) || (st = ops_check_nonneg(op, "Q", Q)) ||
        (st = ops_mul(&pq, op, P, Q)) || (st = ops_check_ptr(op, "out", out, pq)) ||
        (st = ops_check_ptr(op, "in", in, pq)) || (st = ops_check_ptr(op, "mean", mean, 3)) ||
        (st = ops_check_ptr(op, "std", std, 3)))
        return st;
    if (y0 > H - P || x0 > W - Q)
        return ovs_set_error(OVS_ERR_ARG,
                             "%s: crop %lldx%lld at (%lld, %lld) exceeds the %lldx%lld image", op,
                             (long long)P, (long long)Q, (long long)y0, (long long)x0,
                             (long long)H, (long long)W);
    if (pq == 0) return OVS_OK;
    if (in_pixel_stride < 3 || in_row_stride < 1)
        return ovs_set_error(OVS_ERR_ARG,
                             "%s: strides must be positive with >= 3 bytes per pixel, got row "
                             "stride %lld, pixel stride %lld",
                             op, (long long)in_row_stride, (long long)in_pixel_stride);
    for (int c = 0; c < 3; c++)
        if (!(std[c] != 0.0f))
            return ovs_set_error(OVS_ERR_ARG, "%s: std[%d] must be non-zero, got %g", op, c,
                                 (double)std[c]);
    int64_t span;
    if ((st = ops_mul(&span, op, H - 1, in_row_stride)) ||
        (st = ops_mul(&span, op, W - 1, in_pixel_stride)))
        return st;
    /* Every output is one of 3 x 256 values: tabulate them with torchvision's operation order
     * (ToTensor divides by 255, Normalize subtracts the mean then divides by the std). */
    float lut[3][256];
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++) {
            float x = scale255 ? (float)v : (float)v / 255.0f;
            lut[c][v] = (x - mean[c]) / std[c];
        }
#pragma omp parallel for schedule(static) if (pq * 3 >= OPS_PAR_MIN && P > 1) num_threads(ovs_get_num_threads())
    for (int64_t i = 0; i < P; i++) {
        const uint8_t *src = in + (y0 + i) * in_row_stride + x0 * in_pixel_stride;
        float *o0 = out + i * Q, *o1 = o0 + pq, *o2 = o1 + pq;   /* channel planes (P, Q) */
        for (int64_t j = 0; j < Q; j++, src += in_pixel_stride) {
            o0[j] = lut[0][src[0]];
            o1[j] = lut[1][src[1]];
            o2[j] = lut[2][src[2]];
        }
    }
    return OVS_OK;
}
