/* Float image resizing as torch.nn.functional.interpolate (bilinear, bicubic with A = -0.75,
 * antialias=False). Source coordinates, indices and weights follow torch's CPU kernels in
 * float arithmetic, so results agree to rounding.
 * Dimension letters: NC planes, H, W input, P, Q output.
 *
 * One driver (resize_driver) serves the float bilinear and bicubic resizes and the uint8
 * bilinear resize with normalisation: column indices and weights are tabulated per chunk of
 * output columns (on the stack: ops do not allocate) and shared by every output row of every
 * plane; row weights are computed per row. Work is parallel over (plane, output row); the
 * three differ only in their row kernel (linear_row, cubic_row, linear_row_u8). */
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

/* Taps of one output index: 2 (bilinear) or 4 (bicubic) source indices and their weights. */
static void resize_taps(float real, int64_t in, int cubic, int64_t idx[4], float w[4]) {
    if (cubic)
        cubic_taps(real, in, idx, w);
    else
        linear_taps(real, in, &idx[0], &idx[1], &w[0], &w[1]);
}

/* What a row kernel reads: float planes (H, W) or a uint8 HWC image with strides and a
 * per-channel lookup table (value -> normalised float). */
struct resize_src {
    const float *f;
    const uint8_t *u8;
    int64_t row_stride, pixel_stride;
    const float (*lut)[256];
};

/* The row kernels: one output row of `nq` columns of plane `plane` (channel c of the uint8
 * image), dst[j] = sum_i wy[i] * sum_k wx[j][k] * src(plane, yi[i], xi[j][k]), in the
 * arithmetic order of torch's kernels. */
enum resize_kind { RESIZE_LINEAR, RESIZE_CUBIC, RESIZE_LINEAR_U8 };

static inline void linear_row(float *dst, const struct resize_src *s, int64_t plane,
                              int64_t H, int64_t W, const int64_t yi[4], const float wy[4],
                              const int64_t (*xi)[4], const float (*wx)[4], int64_t nq) {
    const float *r0 = s->f + (plane * H + yi[0]) * W, *r1 = s->f + (plane * H + yi[1]) * W;
    for (int64_t j = 0; j < nq; j++) {
        const int64_t *x = xi[j];
        const float *w = wx[j];
        dst[j] = wy[0] * (w[0] * r0[x[0]] + w[1] * r0[x[1]]) +
                 wy[1] * (w[0] * r1[x[0]] + w[1] * r1[x[1]]);
    }
}

static inline void linear_row_u8(float *dst, const struct resize_src *s, int64_t c,
                                 int64_t H, int64_t W, const int64_t yi[4], const float wy[4],
                                 const int64_t (*xi)[4], const float (*wx)[4], int64_t nq) {
    (void)H;
    (void)W;
    const uint8_t *r0 = s->u8 + yi[0] * s->row_stride + c;
    const uint8_t *r1 = s->u8 + yi[1] * s->row_stride + c;
    const float *t = s->lut[c];
    for (int64_t j = 0; j < nq; j++) {
        const int64_t a = xi[j][0] * s->pixel_stride, b = xi[j][1] * s->pixel_stride;
        const float *w = wx[j];
        dst[j] = wy[0] * (w[0] * t[r0[a]] + w[1] * t[r0[b]]) +
                 wy[1] * (w[0] * t[r1[a]] + w[1] * t[r1[b]]);
    }
}

static inline void cubic_row(float *dst, const struct resize_src *s, int64_t plane,
                             int64_t H, int64_t W, const int64_t yi[4], const float wy[4],
                             const int64_t (*xi)[4], const float (*wx)[4], int64_t nq) {
    const float *r[4];
    for (int i = 0; i < 4; i++) r[i] = s->f + (plane * H + yi[i]) * W;
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

/* The one resize driver: `planes` planes of (H, W) -> (P, Q) into out (planes, P, Q). Column
 * taps are tabulated per chunk of output columns and shared by every row; each (plane, output
 * row) computes its row taps and runs the row kernel of `kind`. Parallel over rows (every
 * output element is computed by one thread: results do not depend on the thread count). */
static void resize_driver(float *out, const struct resize_src *src, enum resize_kind kind,
                          int64_t planes, int64_t H, int64_t W, int64_t P, int64_t Q,
                          int align_corners) {
    const int cubic = kind == RESIZE_CUBIC;
    /* bicubic does about 4x the work per output element */
    const int64_t par_min = cubic ? OPS_PAR_MIN / 4 : OPS_PAR_MIN;
    const float sh = resize_scale(H, P, align_corners), sw = resize_scale(W, Q, align_corners);
    const int64_t rows = planes * P;
    int64_t xi[RESIZE_CHUNK][4];   /* (chunk, taps) column taps */
    float wx[RESIZE_CHUNK][4];     /* (chunk, taps) their weights */
    for (int64_t q0 = 0; q0 < Q; q0 += RESIZE_CHUNK) {
        const int64_t nq = Q - q0 < RESIZE_CHUNK ? Q - q0 : RESIZE_CHUNK;
        for (int64_t j = 0; j < nq; j++)
            resize_taps(resize_source(sw, q0 + j, align_corners, cubic), W, cubic, xi[j], wx[j]);
#pragma omp parallel for schedule(static) if (rows * nq >= par_min && rows > 1) num_threads(ovs_get_num_threads())
        for (int64_t r = 0; r < rows; r++) {
            int64_t yi[4];
            float wy[4];
            resize_taps(resize_source(sh, r % P, align_corners, cubic), H, cubic, yi, wy);
            float *dst = out + r * Q + q0;
            const int64_t(*cx)[4] = (const int64_t(*)[4])xi;
            const float(*cw)[4] = (const float(*)[4])wx;
            if (cubic)
                cubic_row(dst, src, r / P, H, W, yi, wy, cx, cw, nq);
            else if (kind == RESIZE_LINEAR_U8)
                linear_row_u8(dst, src, r / P, H, W, yi, wy, cx, cw, nq);
            else
                linear_row(dst, src, r / P, H, W, yi, wy, cx, cw, nq);
        }
    }
}

/* The float resizes: (NC, H, W) -> (NC, P, Q) planes after ops_planes_check's checks. */
static int resize_float(const char *op, enum resize_kind kind, float *out, const float *in,
                        int64_t NC, int64_t H, int64_t W, int64_t P, int64_t Q, int align_corners) {
    int64_t n_out;
    int st = ops_planes_check(op, "resize", out, in, NC, H, W, P, Q, &n_out);
    if (st || n_out == 0) return st;
    const struct resize_src src = {.f = in};
    resize_driver(out, &src, kind, NC, H, W, P, Q, align_corners);
    return OVS_OK;
}

int ovs_resize_bilinear(float *out, const float *in, int64_t NC, int64_t H, int64_t W, int64_t P,
                        int64_t Q, int align_corners) {
    return resize_float("ovs_resize_bilinear", RESIZE_LINEAR, out, in, NC, H, W, P, Q,
                        align_corners);
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
    const struct resize_src src = {.u8 = in, .row_stride = in_row_stride,
                                   .pixel_stride = in_pixel_stride,
                                   .lut = (const float (*)[256])lut};
    resize_driver(out, &src, RESIZE_LINEAR_U8, 3, H, W, P, Q, 0);
    return OVS_OK;
}

int ovs_resize_bicubic(float *out, const float *in, int64_t NC, int64_t H, int64_t W, int64_t P,
                       int64_t Q, int align_corners) {
    return resize_float("ovs_resize_bicubic", RESIZE_CUBIC, out, in, NC, H, W, P, Q,
                        align_corners);
}
