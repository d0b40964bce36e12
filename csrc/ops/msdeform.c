/* Mask2Former ops: the sine positional encoding of DETR / Mask2Former and the core of
 * multi-scale deformable attention (Deformable DETR), each with its naive twin.
 * Dimension letters as in include/ovs/ops.h, plus
 *   L levels   P sampling points per (head, level)   S value tokens = sum_l H_l * W_l
 *   Q queries (rows of loc/attn/out)   E heads   F head width (D = E*F). */
#include "ops/ops_internal.h"

#include <math.h>

/* ---------------------------------------------------------------- sine positional encoding */
static int pos_sine_check(const char *op, float *out, int64_t D, int64_t H, int64_t W,
                          float temperature) {
    int st;
    int64_t hw, total;
    if ((st = ops_check_nonneg(op, "D", D)) || (st = ops_check_nonneg(op, "H", H)) ||
        (st = ops_check_nonneg(op, "W", W)) || (st = ops_mul(&hw, op, H, W)) ||
        (st = ops_mul(&total, op, hw, D)) || (st = ops_check_ptr(op, "out", out, total)))
        return st;
    if (D % 4 != 0)
        return ovs_set_error(OVS_ERR_ARG, "%s: D = %lld must be a multiple of 4 (D/2 features per "
                             "axis, sin/cos pairs)", op, (long long)D);
    if (!(temperature > 0.0f) || !isfinite(temperature))
        return ovs_set_error(OVS_ERR_ARG, "%s: temperature must be finite and > 0, got %g", op,
                             (double)temperature);
    return OVS_OK;
}

/* Float32 operations in the order of PositionEmbeddingSine.forward (mask None), so that
 * the result matches torch's to a few ulp of sin/cos. */
int ovs_pos_embed_sine(float *out, int64_t D, int64_t H, int64_t W, float temperature) {
    static const char op[] = "ovs_pos_embed_sine";
    int st = pos_sine_check(op, out, D, H, W, temperature);
    if (st || D == 0 || H == 0 || W == 0) return st;
    const int64_t npf = D / 2;
    const float scale = (float)(2.0 * M_PI), eps = 1e-6f;
    float dim_t[npf];   /* D is a feature width (256 in practice): a VLA is fine */
    for (int64_t k = 0; k < npf; k++)
        dim_t[k] = powf(temperature, (float)(2 * (k / 2)) / (float)npf);
    const float ylast = (float)H + eps, xlast = (float)W + eps;
#pragma omp parallel for schedule(static) if (H * W * D >= OPS_PAR_MIN) num_threads(ovs_get_num_threads())
    for (int64_t y = 0; y < H; y++) {
        const float ye = (float)(y + 1) / ylast * scale;
        for (int64_t x = 0; x < W; x++) {
            const float xe = (float)(x + 1) / xlast * scale;
            float *o = out + (y * W + x) * D;   /* (D,): pos_y features then pos_x features */
            for (int64_t k = 0; k < npf; k += 2) {
                o[k] = sinf(ye / dim_t[k]);
                o[k + 1] = cosf(ye / dim_t[k + 1]);
                o[npf + k] = sinf(xe / dim_t[k]);
                o[npf + k + 1] = cosf(xe / dim_t[k + 1]);
            }
        }
    }
    return OVS_OK;
}

/* Plain double-precision evaluation of the definition. */
int ovs_pos_embed_sine_naive(float *out, int64_t D, int64_t H, int64_t W, float temperature) {
    static const char op[] = "ovs_pos_embed_sine_naive";
    int st = pos_sine_check(op, out, D, H, W, temperature);
    if (st) return st;
    const int64_t npf = D / 2;
    for (int64_t y = 0; y < H; y++)
        for (int64_t x = 0; x < W; x++)
            for (int64_t d = 0; d < D; d++) {
                int64_t k = d % npf;
                double e = d < npf ? (double)(y + 1) / ((double)H + 1e-6) * 2.0 * M_PI
                                   : (double)(x + 1) / ((double)W + 1e-6) * 2.0 * M_PI;
                double a = e / pow((double)temperature, (double)(2 * (k / 2)) / (double)npf);
                out[(y * W + x) * D + d] = (float)(k % 2 == 0 ? sin(a) : cos(a));
            }
    return OVS_OK;
}

/* ---------------------------------------------------------------- deformable attention core */
static int msdeform_check(const char *op, float *out, const float *value, const int64_t *shapes,
                          int64_t L, const float *loc, const float *attn, int64_t Q, int64_t E,
                          int64_t F, int64_t P, int64_t *S_out) {
    int st;
    int64_t D, S = 0, qe, qel, qelp, n;
    if ((st = ops_check_pos(op, "L", L)) || (st = ops_check_nonneg(op, "Q", Q)) ||
        (st = ops_check_nonneg(op, "E", E)) || (st = ops_check_nonneg(op, "F", F)) ||
        (st = ops_check_nonneg(op, "P", P)) || (st = ops_mul(&D, op, E, F)))
        return st;
    if (!shapes) return ovs_set_error(OVS_ERR_ARG, "%s: shapes is NULL", op);
    for (int64_t l = 0; l < L; l++) {
        int64_t hw;
        if (shapes[2 * l] < 1 || shapes[2 * l + 1] < 1)
            return ovs_set_error(OVS_ERR_ARG, "%s: level %lld has shape (%lld, %lld); each must "
                                 "be >= 1", op, (long long)l, (long long)shapes[2 * l],
                                 (long long)shapes[2 * l + 1]);
        if ((st = ops_mul(&hw, op, shapes[2 * l], shapes[2 * l + 1]))) return st;
        if (hw > INT64_MAX - S) return ovs_set_error(OVS_ERR_OVERFLOW, "%s: S overflows", op);
        S += hw;
    }
    if ((st = ops_mul(&qe, op, Q, E)) || (st = ops_mul(&qel, op, qe, L)) ||
        (st = ops_mul(&qelp, op, qel, P)) || (st = ops_mul(&n, op, S, D)) ||
        (st = ops_check_ptr(op, "value", value, n)) ||
        (st = ops_check_ptr(op, "attn", attn, qelp)) ||
        (st = ops_check_ptr(op, "loc", loc, 2 * qelp)) || (st = ops_mul(&n, op, Q, D)) ||
        (st = ops_check_ptr(op, "out", out, n)))
        return st;
    *S_out = S;
    return OVS_OK;
}

/* Bilinear taps of grid_sample(align_corners=False, padding_mode="zeros") at normalised
 * location (lx, ly) in [0, 1] of an (H, W) map: up to 4 (index, weight) pairs inside the map.
 * The pixel coordinate is computed as torch does, ((2 l - 1 + 1) * W - 1) / 2. */
typedef struct {
    int64_t idx[4];
    float w[4];
    int n;
} taps4;

static inline void bilinear_taps(taps4 *t, float lx, float ly, int64_t H, int64_t W) {
    t->n = 0;
    const float ix = ((2.0f * lx - 1.0f + 1.0f) * (float)W - 1.0f) / 2.0f;
    const float iy = ((2.0f * ly - 1.0f + 1.0f) * (float)H - 1.0f) / 2.0f;
    /* Far outside (or NaN): no tap is inside; also keeps the int conversion in range. */
    if (!(ix > -1.0f && ix < (float)W && iy > -1.0f && iy < (float)H)) return;
    const float fx = floorf(ix), fy = floorf(iy);
    const int64_t x0 = (int64_t)fx, y0 = (int64_t)fy;
    const float ax = ix - fx, ay = iy - fy;   /* ix - ix_nw, iy - iy_nw */
    const float bx = (fx + 1.0f) - ix, by = (fy + 1.0f) - iy;
    const float wts[4] = {bx * by, ax * by, bx * ay, ax * ay};   /* nw, ne, sw, se */
    for (int c = 0; c < 4; c++) {
        int64_t xx = x0 + (c & 1), yy = y0 + (c >> 1);
        if (xx < 0 || xx >= W || yy < 0 || yy >= H) continue;
        t->idx[t->n] = yy * W + xx;
        t->w[t->n] = wts[c];
        t->n++;
    }
}

int ovs_msdeform_attn_core(float *out, const float *value, const int64_t *shapes, int64_t L,
                           const float *loc, const float *attn, int64_t Q, int64_t E, int64_t F,
                           int64_t P) {
    static const char op[] = "ovs_msdeform_attn_core";
    int64_t S;
    int st = msdeform_check(op, out, value, shapes, L, loc, attn, Q, E, F, P, &S);
    if (st) return st;
    const int64_t D = E * F;
    if (Q == 0 || D == 0) return OVS_OK;
    int64_t start[L];   /* (L,) first token of each level; L is small (3-4) */
    start[0] = 0;
    for (int64_t l = 1; l < L; l++) start[l] = start[l - 1] + shapes[2 * l - 2] * shapes[2 * l - 1];
#pragma omp parallel for schedule(static) if (Q * E * L * P * F >= OPS_PAR_MIN && Q > 1) num_threads(ovs_get_num_threads())
    for (int64_t q = 0; q < Q; q++) {
        float *o = out + q * D;   /* (D,) */
        memset(o, 0, (size_t)D * sizeof(float));
        for (int64_t e = 0; e < E; e++) {
            float *oe = o + e * F;   /* (F,) */
            for (int64_t l = 0; l < L; l++) {
                const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
                const float *v = value + start[l] * D + e * F;   /* token t at v + t*D */
                for (int64_t p = 0; p < P; p++) {
                    const int64_t i = ((q * E + e) * L + l) * P + p;
                    const float a = attn[i];
                    taps4 t;
                    bilinear_taps(&t, loc[2 * i], loc[2 * i + 1], H, W);
                    for (int c = 0; c < t.n; c++) {
                        const float w = a * t.w[c];
                        const float *vt = v + t.idx[c] * D;
#pragma omp simd
                        for (int64_t f = 0; f < F; f++) oe[f] += w * vt[f];
                    }
                }
            }
        }
    }
    return OVS_OK;
}

/* Plain loops: for each output element, the attention-weighted sum of grid_sample values
 * (each a sum of in-bounds corner values times bilinear weights), in double. */
int ovs_msdeform_attn_core_naive(float *out, const float *value, const int64_t *shapes,
                                 int64_t L, const float *loc, const float *attn, int64_t Q,
                                 int64_t E, int64_t F, int64_t P) {
    static const char op[] = "ovs_msdeform_attn_core_naive";
    int64_t S;
    int st = msdeform_check(op, out, value, shapes, L, loc, attn, Q, E, F, P, &S);
    if (st) return st;
    const int64_t D = E * F;
    for (int64_t q = 0; q < Q; q++)
        for (int64_t e = 0; e < E; e++)
            for (int64_t f = 0; f < F; f++) {
                double acc = 0.0;
                int64_t start = 0;
                for (int64_t l = 0; l < L; l++) {
                    const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
                    for (int64_t p = 0; p < P; p++) {
                        const int64_t i = ((q * E + e) * L + l) * P + p;
                        double ix = (double)loc[2 * i] * (double)W - 0.5;
                        double iy = (double)loc[2 * i + 1] * (double)H - 0.5;
                        double sampled = 0.0;
                        if (isfinite(ix) && isfinite(iy) && fabs(ix) < 1e15 && fabs(iy) < 1e15) {
                            double fx = floor(ix), fy = floor(iy);
                            for (int dy = 0; dy <= 1; dy++)
                                for (int dx = 0; dx <= 1; dx++) {
                                    double xx = fx + dx, yy = fy + dy;
                                    if (xx < 0 || xx >= (double)W || yy < 0 || yy >= (double)H)
                                        continue;
                                    double w = (1.0 - fabs(ix - xx)) * (1.0 - fabs(iy - yy));
                                    int64_t tok = start + (int64_t)yy * W + (int64_t)xx;
                                    sampled += w * value[tok * D + e * F + f];
                                }
                        }
                        acc += (double)attn[i] * sampled;
                    }
                    start += H * W;
                }
                out[q * D + e * F + f] = (float)acc;
            }
    return OVS_OK;
}
