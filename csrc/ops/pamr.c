/* PAMR, pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), as the NACLIP and SCLIP
 * repositories' pamr.py computes it; the formula is in include/ovs/ops.h.
 *
 * Dimension letters: C mask channels (classes), K image channels, H, W image (= mask) size,
 * ND number of dilations, P = 8 * ND neighbours (the 8-neighbourhood at each dilation, in
 * pamr.py's kernel order: (-1,-1) (-1,0) (-1,1) (0,-1) (0,1) (1,-1) (1,0) (1,1), times d).
 *
 * Memory: the affinity (P, H, W) is computed once; the propagation then runs on blocks of
 * classes, each ping-ponging between the output and a scratch of block planes, so pamr.py's
 * (C, P, H, W) neighbour tensor is never formed. Within a step, rows are split between threads;
 * every output value is one fixed-order sum over the P neighbours, so results do not depend on
 * the thread count or the block size. */
#include "ops/ops_internal.h"

#include <float.h>

#define PAMR_MAX_DILATIONS 16

static const int pamr_dy[8] = {-1, -1, -1, 0, 0, 1, 1, 1};
static const int pamr_dx[8] = {-1, 0, 1, -1, 1, -1, 0, 1};

static inline int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

int ops_pamr_check(const char *op, int64_t C, int64_t K, int64_t H, int64_t W,
                   const int64_t *dilations, int64_t ND, int64_t steps) {
    int st;
    if ((st = ops_check_nonneg(op, "C", C)) || (st = ops_check_pos(op, "K", K)) ||
        (st = ops_check_nonneg(op, "H", H)) || (st = ops_check_nonneg(op, "W", W)) ||
        (st = ops_check_nonneg(op, "steps", steps)))
        return st;
    if (ND < 1 || ND > PAMR_MAX_DILATIONS || !dilations)
        return ovs_set_error(OVS_ERR_ARG, "%s: need 1..%d dilations, got %lld", op,
                             PAMR_MAX_DILATIONS, (long long)ND);
    for (int64_t i = 0; i < ND; i++)
        if (dilations[i] < 1 || dilations[i] > INT32_MAX / 2)
            return ovs_set_error(OVS_ERR_ARG, "%s: dilations must be >= 1, got %lld", op,
                                 (long long)dilations[i]);
    int64_t hw, t;
    if ((st = ops_mul(&hw, op, H, W)) || (st = ops_mul(&t, op, hw, 8 * ND)) ||
        (st = ops_mul(&t, op, hw, C > K ? C : K)))
        return st;
    return OVS_OK;
}

int64_t ovs_pamr_block(int64_t C, int64_t H, int64_t W) {
    if (C <= 0 || H <= 0 || W <= 0) return 0;
    const int64_t hw = H * W, per = OVS_PAMR_BLOCK_FLOATS / hw;
    return per < 1 ? 1 : (per < C ? per : C);
}

size_t ovs_pamr_scratch_floats(int64_t C, int64_t H, int64_t W, int64_t ND) {
    if (C <= 0 || H <= 0 || W <= 0 || ND <= 0) return 0;
    return (size_t)(8 * ND + ovs_pamr_block(C, H, W)) * (size_t)H * (size_t)W;
}

int ovs_pamr_affinity(float *aff, const float *image, int64_t K, int64_t H, int64_t W,
                      const int64_t *dilations, int64_t ND) {
    static const char op[] = "ovs_pamr_affinity";
    int st = ops_pamr_check(op, 0, K, H, W, dilations, ND, 0);
    if (st) return st;
    if (H == 0 || W == 0) return OVS_OK;
    const int64_t P = 8 * ND, HW = H * W, n = 9 * ND; /* n: values entering the std */
    if ((st = ops_check_ptr(op, "aff", aff, 1)) || (st = ops_check_ptr(op, "image", image, 1)))
        return st;
#pragma omp parallel for schedule(static) if (HW * P > OPS_PAR_MIN) num_threads(ovs_get_num_threads())
    for (int64_t y = 0; y < H; y++) {
        float vals[9 * PAMR_MAX_DILATIONS], acc[8 * PAMR_MAX_DILATIONS];
        for (int64_t x = 0; x < W; x++) {
            for (int64_t p = 0; p < P; p++) acc[p] = 0.0f;
            for (int64_t k = 0; k < K; k++) {
                const float *plane = image + k * HW;
                const float centre = plane[y * W + x];
                /* the 3 x 3 grid at every dilation, centre included once per dilation, as
                 * pamr.py's LocalStDev concatenates them; unbiased std over the 9 * ND values */
                float mean = 0.0f;
                for (int64_t i = 0; i < ND; i++) {
                    const int64_t d = dilations[i];
                    for (int a = 0; a < 3; a++) {
                        const float *row = plane + clamp64(y + (a - 1) * d, 0, H - 1) * W;
                        for (int b = 0; b < 3; b++) {
                            const float v = row[clamp64(x + (b - 1) * d, 0, W - 1)];
                            vals[i * 9 + a * 3 + b] = v;
                            mean += v;
                        }
                    }
                }
                mean /= (float)n;
                float ss = 0.0f;
                for (int64_t i = 0; i < n; i++) ss += (vals[i] - mean) * (vals[i] - mean);
                const float denom = 1e-8f + 0.1f * sqrtf(ss / (float)(n - 1));
                for (int64_t i = 0; i < ND; i++)
                    for (int q = 0; q < 8; q++) {
                        const float v = vals[i * 9 + (pamr_dy[q] + 1) * 3 + (pamr_dx[q] + 1)];
                        acc[i * 8 + q] += -fabsf(centre - v) / denom;
                    }
            }
            /* mean over the image channels, then softmax over the P neighbours */
            float mx = -INFINITY;
            for (int64_t p = 0; p < P; p++) {
                acc[p] /= (float)K;
                if (acc[p] > mx) mx = acc[p];
            }
            float sum = 0.0f;
            for (int64_t p = 0; p < P; p++) {
                acc[p] = expf(acc[p] - mx);
                sum += acc[p];
            }
            const float inv = 1.0f / sum;
            for (int64_t p = 0; p < P; p++) aff[(p * H + y) * W + x] = acc[p] * inv;
        }
    }
    return OVS_OK;
}

/* dst row y (W,) = sum_p aff[p, y, :] * src[clamp(y + oy_p), clamp(x + ox_p)], the sum
 * starting from 0 and taken over p ascending at every x (edges and interior alike). In the
 * interior [dmax, W - dmax) no shift leaves the row: PAMR_CHUNK pixels at a time with the
 * accumulators in registers (two loads and a multiply-add per neighbour and pixel). */
#define PAMR_CHUNK 32
typedef float pamr_v8 __attribute__((vector_size(32)));

static void pamr_row(float *restrict dst, const float *src, const float *aff, int64_t H,
                     int64_t W, int64_t y, const int64_t *oy, const int64_t *ox, int64_t P,
                     int64_t dmax, int64_t nc, int64_t plane) {
    const float *arow[8 * PAMR_MAX_DILATIONS];
    int64_t srow[8 * PAMR_MAX_DILATIONS]; /* offset of the shifted source row */
    for (int64_t p = 0; p < P; p++) {
        arow[p] = aff + (p * H + y) * W;
        srow[p] = clamp64(y + oy[p], 0, H - 1) * W + ox[p];
    }
    const int64_t lo = dmax < W ? dmax : W, hi = W - dmax > lo ? W - dmax : lo;
    for (int64_t c = 0; c < nc; c += 2) {
        /* two classes share each load of the affinity */
        const int two = c + 1 < nc;
        const float *s0 = src + c * plane, *s1 = two ? s0 + plane : s0;
        float *d0 = dst + c * plane, *d1 = two ? d0 + plane : d0;
        int64_t x = lo;
        for (; x + PAMR_CHUNK <= hi; x += PAMR_CHUNK) {
            pamr_v8 acc0[PAMR_CHUNK / 8], acc1[PAMR_CHUNK / 8];
            for (int j = 0; j < PAMR_CHUNK / 8; j++) acc0[j] = acc1[j] = (pamr_v8){0};
            for (int64_t p = 0; p < P; p++) {
                const float *a = arow[p] + x, *t0 = s0 + (srow[p] + x), *t1 = s1 + (srow[p] + x);
                for (int j = 0; j < PAMR_CHUNK / 8; j++) {
                    pamr_v8 va, v0, v1;
                    memcpy(&va, a + 8 * j, sizeof va);
                    memcpy(&v0, t0 + 8 * j, sizeof v0);
                    memcpy(&v1, t1 + 8 * j, sizeof v1);
                    acc0[j] += va * v0;
                    acc1[j] += va * v1;
                }
            }
            memcpy(d0 + x, acc0, sizeof acc0);
            if (two) memcpy(d1 + x, acc1, sizeof acc1);
        }
        for (int k = 0; k <= two; k++) {
            const float *sk = k ? s1 : s0;
            float *dk = k ? d1 : d0;
            for (int64_t e = x; e < hi; e++) {
                float acc = 0.0f;
                for (int64_t p = 0; p < P; p++) acc += arow[p][e] * sk[srow[p] + e];
                dk[e] = acc;
            }
            for (int64_t e = 0; e < W; e++) { /* the edges, with clamped columns */
                if (e == lo) e = hi;
                if (e >= W) break;
                float acc = 0.0f;
                for (int64_t p = 0; p < P; p++)
                    acc += arow[p][e] * sk[srow[p] - ox[p] + clamp64(e + ox[p], 0, W - 1)];
                dk[e] = acc;
            }
        }
    }
}

int ovs_pamr_propagate(float *out, const float *mask, const float *aff, int64_t C, int64_t H,
                       int64_t W, const int64_t *dilations, int64_t ND, int64_t steps,
                       float *scratch) {
    static const char op[] = "ovs_pamr_propagate";
    int st = ops_pamr_check(op, C, 1, H, W, dilations, ND, steps);
    if (st) return st;
    if (C == 0 || H == 0 || W == 0) return OVS_OK;
    const int64_t P = 8 * ND, HW = H * W, B = ovs_pamr_block(C, H, W);
    if ((st = ops_check_ptr(op, "out", out, 1)) || (st = ops_check_ptr(op, "mask", mask, 1)) ||
        (st = ops_check_ptr(op, "aff", aff, 1)) ||
        (st = ops_check_ptr(op, "scratch", scratch, steps > 0 ? 1 : 0)))
        return st;
    if (steps == 0) {
        if (out != mask) memcpy(out, mask, (size_t)C * HW * sizeof(float));
        return OVS_OK;
    }
    int64_t oy[8 * PAMR_MAX_DILATIONS], ox[8 * PAMR_MAX_DILATIONS], dmax = 0;
    for (int64_t i = 0; i < ND; i++) dmax = dilations[i] > dmax ? dilations[i] : dmax;
    for (int64_t i = 0; i < ND; i++)
        for (int q = 0; q < 8; q++) {
            oy[i * 8 + q] = pamr_dy[q] * dilations[i];
            ox[i * 8 + q] = pamr_dx[q] * dilations[i];
        }
    for (int64_t c0 = 0; c0 < C; c0 += B) {
        const int64_t nb = C - c0 < B ? C - c0 : B;
        float *o = out + c0 * HW;
        const float *m = mask + c0 * HW;
        /* Ping-pong between o and scratch so that the last step writes o. An odd step count
         * first copies the block to scratch, which also makes out == mask safe. */
        if (steps % 2) memcpy(scratch, m, (size_t)nb * HW * sizeof(float));
#pragma omp parallel num_threads(ovs_get_num_threads()) if (nb * HW * P > OPS_PAR_MIN)
        for (int64_t s = 0; s < steps; s++) {
            const int to_out = (steps - s) % 2 == 1;
            const float *src = s == 0 && steps % 2 == 0 ? m : (to_out ? scratch : o);
            float *dst = to_out ? o : scratch;
#pragma omp for schedule(static)
            for (int64_t y = 0; y < H; y++)
                pamr_row(dst + y * W, src, aff, H, W, y, oy, ox, P, dmax, nb, HW);
        }
    }
    return OVS_OK;
}

int ovs_pamr_forward(float *out, const float *mask, const float *image, int64_t C, int64_t K,
                     int64_t H, int64_t W, const int64_t *dilations, int64_t ND, int64_t steps,
                     float *scratch) {
    static const char op[] = "ovs_pamr_forward";
    int st = ops_pamr_check(op, C, K, H, W, dilations, ND, steps);
    if (st) return st;
    if (C == 0 || H == 0 || W == 0) return OVS_OK;
    if ((st = ops_check_ptr(op, "scratch", scratch, 1))) return st;
    float *aff = scratch, *block = scratch + 8 * ND * H * W;
    if ((st = ovs_pamr_affinity(aff, image, K, H, W, dilations, ND))) return st;
    return ovs_pamr_propagate(out, mask, aff, C, H, W, dilations, ND, steps, block);
}
