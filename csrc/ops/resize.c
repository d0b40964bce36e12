/* Float image resizing as torch.nn.functional.interpolate (bilinear, bicubic with A = -0.75,
 * antialias=False). Source coordinates, indices and weights follow torch's CPU kernels in
 * float arithmetic, so results agree to rounding.
 * Dimension letters: NC planes, H, W input, P, Q output.
 *
 * Column indices and weights are tabulated per chunk of output columns (on the stack: ops do
 * not allocate) and shared by every output row of every plane; row weights are computed per
 * row. Work is parallel over (plane, output row). */
#include "ops/ops_internal.h"

#define RESIZE_CHUNK 256   /* output columns per table */

/* Input-per-output scale, as torch's area_pixel_compute_scale without a scale factor. */
static float resize_scale(int64_t in, int64_t out, int align_corners) {
    if (align_corners) return out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.0f;
    return (float)in / (float)out;
}

/* Source coordinate of output index d, as torch's area_pixel_compute_source_index. */
static float resize_source(float scale, int64_t d, int align_corners, int cubic) {
    if (align_corners) return scale * (float)d;
    float s = scale * ((float)d + 0.5f) - 0.5f;
    return (!cubic && s < 0.0f) ? 0.0f : s;
}

/* Linear taps: x[i0] * w0 + x[i1] * w1. */
static void linear_taps(float real, int64_t in, int64_t *i0, int64_t *i1, float *w0, float *w1) {
    int64_t i = (int64_t)floorf(real);
    if (i > in - 1) i = in - 1;
    float l = real - (float)i;
    l = l < 0.0f ? 0.0f : (l > 1.0f ? 1.0f : l);
    *i0 = i;
    *i1 = i + (i < in - 1 ? 1 : 0);
    *w0 = 1.0f - l;
    *w1 = l;
}

/* Cubic convolution weights (Keys, A = -0.75) for fractional offset t, taps i-1 .. i+2. */
static void cubic_weights(float t, float w[4]) {
    const float A = -0.75f;
    float x1 = t + 1.0f, x2 = 1.0f - t, x3 = 2.0f - t;
    w[0] = ((A * x1 - 5.0f * A) * x1 + 8.0f * A) * x1 - 4.0f * A;
    w[1] = ((A + 2.0f) * t - (A + 3.0f)) * t * t + 1.0f;
    w[2] = ((A + 2.0f) * x2 - (A + 3.0f)) * x2 * x2 + 1.0f;
    w[3] = ((A * x3 - 5.0f * A) * x3 + 8.0f * A) * x3 - 4.0f * A;
}

/* Cubic taps: indices clamped to [0, in - 1] as torch's upsample_get_value_bounded. */
static void cubic_taps(float real, int64_t in, int64_t idx[4], float w[4]) {
    int64_t i = (int64_t)floorf(real);
    if (i > in - 1) i = in - 1;
    float t = real - (float)i;
    t = t < 0.0f ? 0.0f : (t > 1.0f ? 1.0f : t);
    cubic_weights(t, w);
    for (int j = 0; j < 4; j++) {
        int64_t k = i - 1 + j;
        idx[j] = k < 0 ? 0 : (k > in - 1 ? in - 1 : k);
    }
}

int ops_planes_check(const char *op, const char *verb, float *out, const float *in, int64_t NC,
                     int64_t H, int64_t W, int64_t P, int64_t Q, int64_t *n_out) {
    int st;
    int64_t hw, pq, n_in;
    if ((st = ops_check_nonneg(op, "NC", NC)) || (st = ops_check_nonneg(op, "H", H)) ||
        (st = ops_check_nonneg(op, "W", W)) || (st = ops_check_nonneg(op, "P", P)) ||
        (st = ops_check_nonneg(op, "Q", Q)) || (st = ops_mul(&hw, op, H, W)) ||
        (st = ops_mul(&pq, op, P, Q)) || (st = ops_mul(&n_in, op, NC, hw)) ||
        (st = ops_mul(n_out, op, NC, pq)) || (st = ops_check_ptr(op, "out", out, *n_out)) ||
        (st = ops_check_ptr(op, "in", in, *n_out > 0 ? n_in : 0)))
        return st;
    if (*n_out > 0 && (H == 0 || W == 0))
        return ovs_set_error(OVS_ERR_ARG, "%s: cannot %s an empty %lldx%lld input to %lldx%lld",
                             op, verb, (long long)H, (long long)W, (long long)P, (long long)Q);
    return OVS_OK;
}

int ovs_resize_bilinear(float *out, const float *in, int64_t NC, int64_t H, int64_t W, int64_t P,
                        int64_t Q, int align_corners) {
    static const char op[] = "ovs_resize_bilinear";
    int64_t n_out;
    int st = ops_planes_check(op, "resize", out, in, NC, H, W, P, Q, &n_out);
    if (st || n_out == 0) return st;
    const float sh = resize_scale(H, P, align_corners), sw = resize_scale(W, Q, align_corners);
    const int64_t rows = NC * P;
    int64_t x0[RESIZE_CHUNK], x1[RESIZE_CHUNK];   /* (chunk,) column taps */
    float wx0[RESIZE_CHUNK], wx1[RESIZE_CHUNK];   /* (chunk,) their weights */
    for (int64_t q0 = 0; q0 < Q; q0 += RESIZE_CHUNK) {
        const int64_t nq = Q - q0 < RESIZE_CHUNK ? Q - q0 : RESIZE_CHUNK;
        for (int64_t j = 0; j < nq; j++)
            linear_taps(resize_source(sw, q0 + j, align_corners, 0), W, &x0[j], &x1[j], &wx0[j],
                        &wx1[j]);
#pragma omp parallel for schedule(static) if (rows * nq >= OPS_PAR_MIN && rows > 1) num_threads(ovs_get_num_threads())
        for (int64_t row = 0; row < rows; row++) {
            const int64_t plane = row / P, p = row % P;
            int64_t y0, y1;
            float wy0, wy1;
            linear_taps(resize_source(sh, p, align_corners, 0), H, &y0, &y1, &wy0, &wy1);
            const float *r0 = in + (plane * H + y0) * W, *r1 = in + (plane * H + y1) * W;
            float *dst = out + row * Q + q0;
            for (int64_t j = 0; j < nq; j++)
                dst[j] = wy0 * (wx0[j] * r0[x0[j]] + wx1[j] * r0[x1[j]]) +
                         wy1 * (wx0[j] * r1[x0[j]] + wx1[j] * r1[x1[j]]);
        }
    }
    return OVS_OK;
}

int ovs_resize_bilinear_taps(int64_t *i0, int64_t *i1, float *w0, float *w1, int64_t in,
                             int64_t out, int64_t n, int align_corners) {
    static const char op[] = "ovs_resize_bilinear_taps";
    int st;
    if ((st = ops_check_pos(op, "in", in)) || (st = ops_check_nonneg(op, "out", out)) ||
        (st = ops_check_nonneg(op, "n", n)))
        return st;
    if (n > out)
        return ovs_set_error(OVS_ERR_ARG, "%s: n = %lld taps asked of an axis of %lld outputs", op,
                             (long long)n, (long long)out);
    if ((st = ops_check_ptr(op, "i0", i0, n)) || (st = ops_check_ptr(op, "i1", i1, n)) ||
        (st = ops_check_ptr(op, "w0", w0, n)) || (st = ops_check_ptr(op, "w1", w1, n)))
        return st;
    const float scale = resize_scale(in, out, align_corners);
    for (int64_t d = 0; d < n; d++)
        linear_taps(resize_source(scale, d, align_corners, 0), in, &i0[d], &i1[d], &w0[d], &w1[d]);
    return OVS_OK;
}

int ovs_resize_bilinear_u8_normalize(float *out, const uint8_t *in, int64_t H, int64_t W,
                                     int64_t in_row_stride, int64_t in_pixel_stride, int64_t P,
                                     int64_t Q, const float mean[3], const float std[3]) {
    static const char op[] = "ovs_resize_bilinear_u8_normalize";
    int st;
    int64_t pq, span;
    if ((st = ops_check_nonneg(op, "H", H)) || (st = ops_check_nonneg(op, "W", W)) ||
        (st = ops_check_nonneg(op, "P", P)) || (st = ops_check_nonneg(op, "Q", Q)) ||
        (st = ops_mul(&pq, op, P, Q)) || (st = ops_check_ptr(op, "out", out, pq)) ||
        (st = ops_check_ptr(op, "mean", mean, 3)) || (st = ops_check_ptr(op, "std", std, 3)))
        return st;
    if (pq == 0) return OVS_OK;
    if (H == 0 || W == 0 || !in)
        return ovs_set_error(OVS_ERR_ARG, "%s: cannot resize an empty %lldx%lld input", op,
                             (long long)H, (long long)W);
    if (in_pixel_stride < 3 || in_row_stride < 1)
        return ovs_set_error(OVS_ERR_ARG, "%s: strides must be positive with >= 3 bytes per "
                             "pixel, got row stride %lld, pixel stride %lld", op,
                             (long long)in_row_stride, (long long)in_pixel_stride);
    if ((st = ops_mul(&span, op, H - 1, in_row_stride)) ||
        (st = ops_mul(&span, op, W - 1, in_pixel_stride)))
        return st;
    for (int c = 0; c < 3; c++)
        if (!(std[c] != 0.0f))
            return ovs_set_error(OVS_ERR_ARG, "%s: std[%d] must be non-zero, got %g", op, c,
                                 (double)std[c]);
    float lut[3][256];  /* as ovs_normalize_u8 (scale255 = 0): (v / 255 - mean) / std */
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++) lut[c][v] = ((float)v / 255.0f - mean[c]) / std[c];
    const float sh = resize_scale(H, P, 0), sw = resize_scale(W, Q, 0);
    const int64_t rows = 3 * P;
    int64_t x0[RESIZE_CHUNK], x1[RESIZE_CHUNK];   /* (chunk,) column taps */
    float wx0[RESIZE_CHUNK], wx1[RESIZE_CHUNK];   /* (chunk,) their weights */
    for (int64_t q0 = 0; q0 < Q; q0 += RESIZE_CHUNK) {
        const int64_t nq = Q - q0 < RESIZE_CHUNK ? Q - q0 : RESIZE_CHUNK;
        for (int64_t j = 0; j < nq; j++)
            linear_taps(resize_source(sw, q0 + j, 0, 0), W, &x0[j], &x1[j], &wx0[j], &wx1[j]);
#pragma omp parallel for schedule(static) if (rows * nq >= OPS_PAR_MIN && rows > 1) num_threads(ovs_get_num_threads())
        for (int64_t row = 0; row < rows; row++) {
            const int64_t c = row / P, p = row % P;
            int64_t y0, y1;
            float wy0, wy1;
            linear_taps(resize_source(sh, p, 0, 0), H, &y0, &y1, &wy0, &wy1);
            const uint8_t *r0 = in + y0 * in_row_stride + c, *r1 = in + y1 * in_row_stride + c;
            const float *t = lut[c];
            float *dst = out + row * Q + q0;
            for (int64_t j = 0; j < nq; j++) {
                const int64_t a = x0[j] * in_pixel_stride, b = x1[j] * in_pixel_stride;
                dst[j] = wy0 * (wx0[j] * t[r0[a]] + wx1[j] * t[r0[b]]) +
                         wy1 * (wx0[j] * t[r1[a]] + wx1[j] * t[r1[b]]);
            }
        }
    }
    return OVS_OK;
}

int ovs_resize_bicubic(float *out, const float *in, int64_t NC, int64_t H, int64_t W, int64_t P,
                       int64_t Q, int align_corners) {
    static const char op[] = "ovs_resize_bicubic";
    int64_t n_out;
    int st = ops_planes_check(op, "resize", out, in, NC, H, W, P, Q, &n_out);
    if (st || n_out == 0) return st;
    const float sh = resize_scale(H, P, align_corners), sw = resize_scale(W, Q, align_corners);
    const int64_t rows = NC * P;
    int64_t xi[RESIZE_CHUNK][4];   /* (chunk, 4) column taps */
    float wx[RESIZE_CHUNK][4];     /* (chunk, 4) their weights */
    for (int64_t q0 = 0; q0 < Q; q0 += RESIZE_CHUNK) {
        const int64_t nq = Q - q0 < RESIZE_CHUNK ? Q - q0 : RESIZE_CHUNK;
        for (int64_t j = 0; j < nq; j++)
            cubic_taps(resize_source(sw, q0 + j, align_corners, 1), W, xi[j], wx[j]);
#pragma omp parallel for schedule(static) if (rows * nq >= OPS_PAR_MIN / 4 && rows > 1) num_threads(ovs_get_num_threads())
        for (int64_t row = 0; row < rows; row++) {
            const int64_t plane = row / P, p = row % P;
            int64_t yi[4];
            float wy[4];
            cubic_taps(resize_source(sh, p, align_corners, 1), H, yi, wy);
            const float *r[4];
            for (int i = 0; i < 4; i++) r[i] = in + (plane * H + yi[i]) * W;
            float *dst = out + row * Q + q0;
            for (int64_t j = 0; j < nq; j++) {
                const int64_t *x = xi[j];
                const float *w = wx[j];
                float acc = 0.0f;
                for (int i = 0; i < 4; i++) {
                    /* Horizontal then vertical, as torch's cubic_interp1d nesting. */
                    float h = r[i][x[0]] * w[0] + r[i][x[1]] * w[1] + r[i][x[2]] * w[2] +
                              r[i][x[3]] * w[3];
                    acc += h * wy[i];
                }
                dst[j] = acc;
            }
        }
    }
    return OVS_OK;
}
