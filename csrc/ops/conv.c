/* 2-D convolution as im2col + sgemm per image, group and band of output rows, and BatchNorm
 * folding.
 * Dimension letters: N batch, C/K input/output channels, H, W input and P, Q output extents,
 * R, S kernel extents, G groups (Cg = C/G, Kg = K/G), L = Cg*R*S (a column of the im2col
 * matrix, a row of the weight matrix).
 *
 * Per image n and group g:  out[n, g*Kg:(g+1)*Kg] (Kg, P*Q) = W_g (Kg, L) @ col (L, P*Q)
 * where col is the im2col matrix of the group's channels (built and multiplied one band of
 * output rows at a time, see CONV_TILE_FLOATS), or, for a 1x1 stride-1 unpadded conv, the
 * input planes themselves (Cg, H*W) used directly as the GEMM operand.
 * Stride-1 convs whose padding columns cost little instead run as an implicit GEMM on the
 * packed-GEMM micro-kernels (conv_implicit below): no im2col matrix, one parallel region. */
#include "ops/gemm.h"

#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

ovs_conv2d_params ovs_conv2d_defaults(void) {
    ovs_conv2d_params p;
    p.stride_h = p.stride_w = 1;
    p.pad_h = p.pad_w = 0;
    p.dil_h = p.dil_w = 1;
    p.groups = 1;
    return p;
}

int64_t ovs_conv2d_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
    if (in < 0 || k < 1 || stride < 1 || pad < 0 || dil < 1) return -1;
    int64_t eff, span;
    if (__builtin_mul_overflow(dil, k - 1, &eff) || __builtin_add_overflow(eff, 1, &eff) ||
        __builtin_mul_overflow(pad, 2, &span) || __builtin_add_overflow(span, in, &span))
        return -1;
    if (span < eff) return -1;
    return (span - eff) / stride + 1;
}

/* The im2col matrix is built and multiplied a band of output rows at a time, a band being
 * as many rows as fit CONV_TILE_FLOATS (at least one): the band stays in L2 between im2col
 * writing it and sgemm packing it, instead of a (L, P*Q) matrix going through DRAM twice. */
#ifndef CONV_TILE_FLOATS
#define CONV_TILE_FLOATS ((int64_t)1 << 17)   /* 512 KiB */
#endif

static int64_t conv_band_rows(int64_t L, int64_t P, int64_t Q) {
    int64_t per_row = L * Q;
    int64_t rows = per_row > 0 ? CONV_TILE_FLOATS / per_row : P;
    if (rows < 1) rows = 1;
    return rows < P ? rows : P;
}

static int conv_is_pointwise(int64_t R, int64_t S, const ovs_conv2d_params *p) {
    return R == 1 && S == 1 && p->stride_h == 1 && p->stride_w == 1 && p->pad_h == 0 &&
           p->pad_w == 0;
}

size_t ovs_conv2d_scratch_floats(int64_t C, int64_t H, int64_t W, int64_t K, int64_t R,
                                 int64_t S, const ovs_conv2d_params *p) {
    (void)K;
    if (!p || p->groups < 1 || C < 0 || C % p->groups != 0) return 0;
    if (conv_is_pointwise(R, S, p)) return 0;
    int64_t P = ovs_conv2d_out_size(H, R, p->stride_h, p->pad_h, p->dil_h);
    int64_t Q = ovs_conv2d_out_size(W, S, p->stride_w, p->pad_w, p->dil_w);
    if (P < 0 || Q < 0) return 0;
    size_t L, n;
    if (ovs_mul3_size(&L, (size_t)(C / p->groups), (size_t)R, (size_t)S) || L > INT64_MAX ||
        ovs_mul3_size(&n, L, (size_t)conv_band_rows((int64_t)L, P, Q), (size_t)Q))
        return SIZE_MAX;  /* no allocation of this size can succeed; the arena reports it */
    return n;
}

/* The checks every 2-D convolution makes (dense or sparse): sizes, strides, padding, dilations,
 * activation, and that the kernel fits the padded input; *P_out, *Q_out get the output size.
 * Groups are the caller's (the sparse kernel supports only 1). */
int ops_conv2d_geometry(const char *op, int64_t N, int64_t C, int64_t H, int64_t W, int64_t K,
                        int64_t R, int64_t S, const ovs_conv2d_params *p, ovs_act act,
                        int64_t *P_out, int64_t *Q_out) {
    int st;
    if (!p) return ovs_set_error(OVS_ERR_ARG, "%s: params is NULL", op);
    if ((st = ops_check_nonneg(op, "N", N)) || (st = ops_check_nonneg(op, "C", C)) ||
        (st = ops_check_nonneg(op, "H", H)) || (st = ops_check_nonneg(op, "W", W)) ||
        (st = ops_check_nonneg(op, "K", K)) || (st = ops_check_pos(op, "R", R)) ||
        (st = ops_check_pos(op, "S", S)) || (st = ops_check_pos(op, "stride_h", p->stride_h)) ||
        (st = ops_check_pos(op, "stride_w", p->stride_w)) ||
        (st = ops_check_nonneg(op, "pad_h", p->pad_h)) ||
        (st = ops_check_nonneg(op, "pad_w", p->pad_w)) ||
        (st = ops_check_pos(op, "dil_h", p->dil_h)) ||
        (st = ops_check_pos(op, "dil_w", p->dil_w)) || (st = ops_check_act(op, act)))
        return st;
    int64_t P = ovs_conv2d_out_size(H, R, p->stride_h, p->pad_h, p->dil_h);
    int64_t Q = ovs_conv2d_out_size(W, S, p->stride_w, p->pad_w, p->dil_w);
    if (P < 0 || Q < 0)
        return ovs_set_error(OVS_ERR_ARG,
                             "%s: kernel %lldx%lld (dilation %lldx%lld) does not fit the padded "
                             "input %lldx%lld (padding %lldx%lld)",
                             op, (long long)R, (long long)S, (long long)p->dil_h,
                             (long long)p->dil_w, (long long)H, (long long)W, (long long)p->pad_h,
                             (long long)p->pad_w);
    *P_out = P;
    *Q_out = Q;
    return OVS_OK;
}

/* Shared argument checks of the fast and naive versions; *P_out, *Q_out get the output size. */
int ops_conv2d_check(const char *op, float *out, const float *in, const ovs_matrix *weight,
                     int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                     const ovs_conv2d_params *p, ovs_act act, int64_t *P_out, int64_t *Q_out) {
    int64_t P = 0, Q = 0;
    int st = ops_conv2d_geometry(op, N, C, H, W, K, R, S, p, act, &P, &Q);
    if (st || (st = ops_check_pos(op, "groups", p->groups))) return st;
    if (C % p->groups != 0 || K % p->groups != 0)
        return ovs_set_error(OVS_ERR_ARG,
                             "%s: C = %lld and K = %lld must be divisible by groups = %lld", op,
                             (long long)C, (long long)K, (long long)p->groups);
    int64_t L, nc, nchw, pq, nk, nkpq;
    if ((st = ops_mul(&L, op, C / p->groups, R)) || (st = ops_mul(&L, op, L, S)) ||
        (st = ops_mul(&nc, op, N, C)) || (st = ops_mul(&nchw, op, nc, H)) ||
        (st = ops_mul(&nchw, op, nchw, W)) || (st = ops_mul(&pq, op, P, Q)) ||
        (st = ops_mul(&nk, op, N, K)) || (st = ops_mul(&nkpq, op, nk, pq)) ||
        (st = ops_check_matrix(op, weight, K, L)) || (st = ops_check_ptr(op, "out", out, nkpq)) ||
        (st = ops_check_ptr(op, "in", in, nkpq > 0 ? nchw : 0)))
        return st;
    *P_out = P;
    *Q_out = Q;
    return OVS_OK;
}

/* ceil(a / b) and floor(a / b) for b > 0 and any sign of a. */
static int64_t div_ceil(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }
static int64_t div_floor(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

/* col (Cg*R*S, NP*Q) for output rows [p0, p0 + NP) from in (Cg, H, W): row (c, r, s),
 * column (p - p0, q) holds in[c, p*sh - ph + r*dh, q*sw - pw + s*dw] or 0 outside the input.
 * Parallel over rows. */
static void im2col(float *col, const float *in, int64_t Cg, int64_t H, int64_t W, int64_t R,
                   int64_t S, int64_t p0, int64_t NP, int64_t Q, const ovs_conv2d_params *p) {
    const int64_t rows = Cg * R * S, PQ = NP * Q, HW = H * W;
    const int64_t sh = p->stride_h, sw = p->stride_w, ph = p->pad_h, pw = p->pad_w;
    const int64_t dh = p->dil_h, dw = p->dil_w;
#pragma omp parallel for schedule(static) if (rows * PQ >= OPS_PAR_MIN && rows > 1) num_threads(ovs_get_num_threads())
    for (int64_t row = 0; row < rows; row++) {
        int64_t c = row / (R * S), r = (row / S) % R, s = row % S;
        float *dst = col + row * PQ;
        const float *plane = in + c * HW;
        int64_t off_w = s * dw - pw;       /* iw = q*sw + off_w */
        int64_t q_lo = div_ceil(-off_w, sw);
        int64_t q_hi = div_floor(W - 1 - off_w, sw) + 1;
        if (q_lo < 0) q_lo = 0;
        if (q_hi > Q) q_hi = Q;
        if (q_hi < q_lo) q_hi = q_lo;
        for (int64_t pp = 0; pp < NP; pp++) {
            float *d = dst + pp * Q;
            int64_t ih = (p0 + pp) * sh - ph + r * dh;
            if (ih < 0 || ih >= H || q_lo >= q_hi) {
                memset(d, 0, (size_t)Q * sizeof(float));
                continue;
            }
            const float *src = plane + ih * W;
            for (int64_t q = 0; q < q_lo; q++) d[q] = 0.0f;
            if (sw == 1) {
                memcpy(d + q_lo, src + q_lo + off_w, (size_t)(q_hi - q_lo) * sizeof(float));
            } else {
                for (int64_t q = q_lo; q < q_hi; q++) d[q] = src[q * sw + off_w];
            }
            for (int64_t q = q_hi; q < Q; q++) d[q] = 0.0f;
        }
    }
}

/* x (PQ,) = act(x + b [+ res (PQ,)]). */
static void conv_epilogue_plane(float *x, float b, const float *res, int64_t PQ, ovs_act act) {
    if (res) {
#pragma omp simd
        for (int64_t i = 0; i < PQ; i++) x[i] = (x[i] + b) + res[i];
    } else if (b != 0.0f) {
#pragma omp simd
        for (int64_t i = 0; i < PQ; i++) x[i] += b;
    }
    ops_act_inplace(x, PQ, act);
}

/* ---------------------------------------------------------------- implicit GEMM, stride 1 */
/* With the group's input zero-padded to (Cg, Hp, Wp), Hp = H + 2ph, Wp = W + 2pw, output pixel
 * (p, q) has the flat position f = p*Wp + q and reads tap l = (c, r, s) at X[f + off[l]],
 * off[l] = c*Hp*Wp + r*dh*Wp + s*dw. NR consecutive flat positions read NR consecutive floats,
 * so out (Kg, f) = W_g (Kg, L) @ X (L, f) runs on the ISA's gather micro-kernel (ops/gemm.h)
 * with W_g's rows broadcast and NR flat positions per tile; positions with q >= Q (the right
 * padding columns) are computed and dropped. The only copy is the padded input (none when
 * there is no padding); the last, partial block of NR positions is packed zero-filled.
 * Every output element is one fmaf chain over l = 0..L-1 (the micro-kernel contract), then
 * the epilogue: the result depends neither on the tiling nor on the thread count nor on the
 * ISA. Used when the dropped columns are at most a quarter of the work. */
#define CONV_NR OVS_PACK_NR

static int conv_implicit_ok(int64_t W, int64_t Q, const ovs_conv2d_params *p) {
    if (p->stride_h != 1 || p->stride_w != 1) return 0;
    const int64_t Wp = W + 2 * p->pad_w;
    return 4 * (Wp - Q) <= Wp;
}

typedef struct {
    const float *w;          /* (Kg, L) weights of the group */
    const float *x;          /* (Cg, Hp, Wp) padded input (or the input itself) */
    const int64_t *off;      /* (L,) tap offsets into x */
    const float *tail;       /* (L, NR) packed last block, or NULL if every block is whole */
    const int64_t *lin;      /* (L,) l*NR: offsets into tail */
    float *dst;              /* (Kg, P*Q) */
    const float *res;        /* (Kg, P*Q) or NULL; may equal dst */
    const float *bias;       /* (Kg,) or NULL */
    int64_t Kg, L, P, Q, Wp, F;   /* F = (P-1)*Wp + Q flat positions */
    ovs_act act;
} conv_implicit_job;

/* Rows [k0, k0+m) of the tile for flat block f0 into dst: bias, residual, activation. */
static void conv_implicit_store(const conv_implicit_job *j, const float *tile, int64_t k0,
                                int64_t m, int64_t f0) {
    const int64_t PQ = j->P * j->Q;
    const int64_t nf = j->F - f0 < CONV_NR ? j->F - f0 : CONV_NR;
    int64_t t = 0;
    while (t < nf) {
        const int64_t f = f0 + t, p = f / j->Wp, q = f % j->Wp;
        if (q >= j->Q) {            /* a padding column: skip to the next row */
            t += j->Wp - q;
            continue;
        }
        int64_t len = j->Q - q;
        if (len > nf - t) len = nf - t;
        for (int64_t r = 0; r < m; r++) {
            const int64_t k = k0 + r;
            float *o = j->dst + k * PQ + p * j->Q + q;
            const float *acc = tile + r * CONV_NR + t;
            const float b = j->bias ? j->bias[k] : 0.0f;
            float v[CONV_NR];
            if (j->res) {
                const float *rr = j->res + k * PQ + p * j->Q + q;
                for (int64_t i = 0; i < len; i++) v[i] = (acc[i] + b) + rr[i];
            } else {
                for (int64_t i = 0; i < len; i++) v[i] = acc[i] + b;
            }
            ops_act_inplace(v, len, j->act);
            for (int64_t i = 0; i < len; i++) o[i] = v[i];
        }
        t += len;
    }
}

/* Flat blocks per task: the input window a task's blocks read stays within ~256 KiB. */
static int64_t conv_implicit_blocks(int64_t Cg, int64_t halo) {
    int64_t per = CONV_TILE_FLOATS / 2 / (Cg > 0 ? Cg : 1) - halo;
    int64_t blocks = per / CONV_NR;
    if (blocks > 16) blocks = 16;
    return blocks < 1 ? 1 : blocks;
}

/* Taps per slice when L is cut (the chain resumed, ops/gemm.h) so that the operand rows of a
 * task's blocks stay in L2 across its output-channel tiles: CONV_TAP_SLICE taps x
 * CONV_SLICE_BLOCKS blocks of NR floats (each up to two cache lines) is ~256 KiB. */
#ifndef CONV_TAP_SLICE
#define CONV_TAP_SLICE 512
#endif
#define CONV_SLICE_BLOCKS 4

static int conv_implicit_run(const conv_implicit_job *j, int64_t Cg, int64_t halo) {
    const ops_gemm_isa *isa = ops_gemm_current_isa();
    const int64_t mr = isa->mr_max;
    const int64_t nblocks = (j->F + CONV_NR - 1) / CONV_NR;
    const int sliced = j->L > 2 * CONV_TAP_SLICE;
    const int64_t lc = sliced ? CONV_TAP_SLICE : j->L;
    const int64_t bpt = sliced ? CONV_SLICE_BLOCKS : conv_implicit_blocks(Cg, halo);
    const int64_t pgroups = (nblocks + bpt - 1) / bpt;
    const int64_t ktiles = (j->Kg + mr - 1) / mr;
    int threads = 1;
#ifdef _OPENMP
    if (!omp_in_parallel() && (double)j->Kg * (double)j->L * (double)j->F >= 1.0e6)
        threads = ovs_get_num_threads();
#endif
    /* Output-channel groups (whole micro-tiles): enough tasks for ~4 per thread. */
    int64_t kgroups = 1;
    if (threads > 1 && pgroups < 4 * (int64_t)threads) {
        kgroups = (4 * (int64_t)threads + pgroups - 1) / pgroups;
        if (kgroups > ktiles) kgroups = ktiles;
    }
    const int64_t tpg = (ktiles + kgroups - 1) / kgroups;   /* micro-tiles per group */
    kgroups = (ktiles + tpg - 1) / tpg;
    const int64_t tasks = pgroups * kgroups;
    /* Sliced: a task's tiles (tpg x bpt of (mr, NR)) live in a per-thread buffer across slices. */
    const int64_t per_thread = tpg * bpt * mr * CONV_NR;
    float *acc = NULL;
    if (sliced && !(acc = ovs_malloc((size_t)threads * (size_t)per_thread * sizeof(float))))
        return ovs_set_error(OVS_ERR_NOMEM, "ovs_conv2d_forward: out of memory for %lld tiles",
                             (long long)(threads * tpg * bpt));
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1 && tasks > 1)
    for (int64_t task = 0; task < tasks; task++) {
        const int64_t b0 = (task / kgroups) * bpt, kg = task % kgroups;
        const int64_t b1 = b0 + bpt < nblocks ? b0 + bpt : nblocks;
        const int64_t k0 = kg * tpg * mr;
        const int64_t k1 = k0 + tpg * mr < j->Kg ? k0 + tpg * mr : j->Kg;
        float local[16 * CONV_NR];   /* (mr, NR), mr <= 16 */
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *tiles = sliced ? acc + tid * per_thread : local;
        for (int64_t l0 = 0; l0 < j->L; l0 += lc) {
            const int64_t n = j->L - l0 < lc ? j->L - l0 : lc;
            for (int64_t k = k0; k < k1; k += mr) {
                const int64_t m = k1 - k < mr ? k1 - k : mr;
                const float *a = j->w + k * j->L + l0;
                for (int64_t b = b0; b < b1; b++) {
                    const int64_t f0 = b * CONV_NR;
                    float *tile = sliced ? tiles + (((k - k0) / mr) * bpt + (b - b0)) * mr * CONV_NR
                                         : tiles;
                    if (f0 + CONV_NR <= j->F)
                        isa->gather(m, n, a, j->L, j->x + f0, j->off + l0, tile, l0 > 0);
                    else
                        isa->gather(m, n, a, j->L, j->tail, j->lin + l0, tile, l0 > 0);
                    if (!sliced) conv_implicit_store(j, tile, k, m, f0);
                }
            }
        }
        if (sliced)
            for (int64_t k = k0; k < k1; k += mr)
                for (int64_t b = b0; b < b1; b++)
                    conv_implicit_store(j, tiles + (((k - k0) / mr) * bpt + (b - b0)) * mr * CONV_NR,
                                        k, k1 - k < mr ? k1 - k : mr, b * CONV_NR);
    }
    ovs_free(acc);
    return OVS_OK;
}

/* (Cg, H, W) -> (Cg, Hp, Wp) with zero borders. */
static void conv_pad_input(float *xp, const float *src, int64_t Cg, int64_t H, int64_t W,
                           int64_t ph, int64_t pw) {
    const int64_t Hp = H + 2 * ph, Wp = W + 2 * pw;
#pragma omp parallel for schedule(static) if (Cg * Hp * Wp >= OPS_PAR_MIN && Cg > 1) num_threads(ovs_get_num_threads())
    for (int64_t c = 0; c < Cg; c++) {
        float *d = xp + c * Hp * Wp;
        const float *s = src + c * H * W;
        memset(d, 0, (size_t)(ph * Wp) * sizeof(float));
        for (int64_t y = 0; y < H; y++) {
            float *row = d + (ph + y) * Wp;
            for (int64_t i = 0; i < pw; i++) row[i] = row[pw + W + i] = 0.0f;
            memcpy(row + pw, s + y * W, (size_t)W * sizeof(float));
        }
        memset(d + (ph + H) * Wp, 0, (size_t)(ph * Wp) * sizeof(float));
    }
}

static int conv_implicit(const char *op, float *out, const float *in, const ovs_matrix *weight,
                         const float *bias, const float *residual, int64_t N, int64_t C,
                         int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                         const ovs_conv2d_params *p, ovs_act act, int64_t P, int64_t Q) {
    const int64_t G = p->groups, Cg = C / G, Kg = K / G, L = Cg * R * S;
    const int64_t ph = p->pad_h, pw = p->pad_w, Hp = H + 2 * ph, Wp = W + 2 * pw;
    const int64_t HpWp = Hp * Wp, PQ = P * Q, F = (P - 1) * Wp + Q;
    const int padded = ph > 0 || pw > 0;
    size_t n_off = 2 * (size_t)L, n_x = padded ? (size_t)Cg * HpWp : 0;
    int64_t *off = ovs_malloc(n_off * sizeof(int64_t));
    float *tail = ovs_malloc((size_t)L * CONV_NR * sizeof(float));
    float *xp = n_x ? ovs_malloc(n_x * sizeof(float)) : NULL;
    if (!off || !tail || (n_x && !xp)) {
        ovs_free(off);
        ovs_free(tail);
        ovs_free(xp);
        return ovs_set_error(OVS_ERR_NOMEM, "%s: out of memory for the padded input (%zu floats)",
                             op, n_x);
    }
    int64_t *lin = off + L;
    for (int64_t c = 0, l = 0; c < Cg; c++)
        for (int64_t r = 0; r < R; r++)
            for (int64_t s = 0; s < S; s++, l++) {
                off[l] = c * HpWp + r * p->dil_h * Wp + s * p->dil_w;
                lin[l] = l * CONV_NR;
            }
    const int64_t halo = (R - 1) * p->dil_h * Wp + (S - 1) * p->dil_w;
    const int64_t ftail = F / CONV_NR * CONV_NR;   /* first position of a partial last block */
    int st = OVS_OK;
    for (int64_t n = 0; n < N && !st; n++)
        for (int64_t g = 0; g < G; g++) {
            const float *src = in + (n * C + g * Cg) * H * W;
            if (padded) conv_pad_input(xp, src, Cg, H, W, ph, pw);
            const float *x = padded ? xp : src;
            /* Positions f < F read x[f + off[l]] < Cg*Hp*Wp: in bounds; beyond F is padding. */
            if (ftail < F)
                for (int64_t l = 0; l < L; l++)
                    for (int64_t t = 0; t < CONV_NR; t++)
                        tail[l * CONV_NR + t] = ftail + t < F ? x[ftail + t + off[l]] : 0.0f;
            conv_implicit_job j = {weight->data + g * Kg * L, x, off, tail, lin,
                                   out + (n * K + g * Kg) * PQ,
                                   residual ? residual + (n * K + g * Kg) * PQ : NULL,
                                   bias ? bias + g * Kg : NULL, Kg, L, P, Q, Wp, F, act};
            if ((st = conv_implicit_run(&j, Cg, halo))) break;
        }
    ovs_free(off);
    ovs_free(tail);
    ovs_free(xp);
    return st;
}

int ovs_conv2d_forward(float *out, const float *in, const ovs_matrix *weight, const float *bias,
                       const float *residual, int64_t N, int64_t C, int64_t H, int64_t W,
                       int64_t K, int64_t R, int64_t S, const ovs_conv2d_params *p, ovs_act act,
                       float *scratch) {
    static const char op[] = "ovs_conv2d_forward";
    int64_t P, Q;
    int st = ops_conv2d_check(op, out, in, weight, N, C, H, W, K, R, S, p, act, &P, &Q);
    if (st) return st;
    const int64_t PQ = P * Q, HW = H * W, G = p->groups, Cg = C / G, Kg = K / G;
    const int64_t L = Cg * R * S;
    if (N == 0 || K == 0 || PQ == 0) return OVS_OK;
    if (weight->format != OVS_MATRIX_DENSE)
        return ovs_set_error(OVS_ERR_UNSUPPORTED, "%s: weight format %d is not supported", op,
                             (int)weight->format);
    const int pointwise = conv_is_pointwise(R, S, p);
    if (L > 0 && conv_implicit_ok(W, Q, p))
        return conv_implicit(op, out, in, weight, bias, residual, N, C, H, W, K, R, S, p, act, P, Q);
    if (!pointwise && L > 0 && !scratch)
        return ovs_set_error(OVS_ERR_ARG, "%s: scratch is NULL but %zu floats are needed", op,
                             ovs_conv2d_scratch_floats(C, H, W, K, R, S, p));
    const int fold_residual = residual == out;  /* out holds the residual: sgemm beta = 1 */
    const float beta = fold_residual ? 1.0f : 0.0f;
    const int64_t band = pointwise || L == 0 ? P : conv_band_rows(L, P, Q);
    for (int64_t n = 0; n < N; n++) {
        for (int64_t g = 0; g < G; g++) {
            const float *src = in + (n * C + g * Cg) * HW;       /* (Cg, H, W) */
            const float *w_g = weight->data + g * Kg * L;       /* (Kg, L) */
            float *dst = out + (n * K + g * Kg) * PQ;           /* (Kg, PQ) */
            if (pointwise || L == 0) {
                /* The input planes are the (L, PQ) operand. */
                st = ops_sgemm(op, 0, Kg, PQ, L, 1.0f, w_g, L, src, PQ, beta, dst, PQ);
                if (st) return st;
                continue;
            }
            for (int64_t p0 = 0; p0 < P; p0 += band) {
                const int64_t np = P - p0 < band ? P - p0 : band;
                im2col(scratch, src, Cg, H, W, R, S, p0, np, Q, p);   /* (L, np*Q) */
                st = ops_sgemm(op, 0, Kg, np * Q, L, 1.0f, w_g, L, scratch, np * Q, beta,
                               dst + p0 * Q, PQ);
                if (st) return st;
            }
        }
    }
    const float *res = fold_residual ? NULL : residual;
    if (!bias && !res && act == OVS_ACT_NONE) return OVS_OK;
    const int64_t planes = N * K;
#pragma omp parallel for schedule(static) if (planes * PQ >= OPS_PAR_MIN && planes > 1) num_threads(ovs_get_num_threads())
    for (int64_t i = 0; i < planes; i++)
        conv_epilogue_plane(out + i * PQ, bias ? bias[i % K] : 0.0f, res ? res + i * PQ : NULL,
                            PQ, act);
    return OVS_OK;
}

int ovs_batchnorm_fold(float *w_out, float *b_out, const float *conv_w, const float *conv_bias,
                       const float *gamma, const float *beta, const float *mean, const float *var,
                       float eps, int64_t K, int64_t L) {
    static const char op[] = "ovs_batchnorm_fold";
    int st;
    int64_t KL;
    if ((st = ops_check_nonneg(op, "K", K)) || (st = ops_check_nonneg(op, "L", L)) ||
        (st = ops_mul(&KL, op, K, L)) || (st = ops_check_ptr(op, "w_out", w_out, KL)) ||
        (st = ops_check_ptr(op, "conv_w", conv_w, KL)) ||
        (st = ops_check_ptr(op, "b_out", b_out, K)) ||
        (st = ops_check_ptr(op, "gamma", gamma, K)) || (st = ops_check_ptr(op, "beta", beta, K)) ||
        (st = ops_check_ptr(op, "mean", mean, K)) || (st = ops_check_ptr(op, "var", var, K)))
        return st;
    if (!(eps >= 0.0f)) return ovs_set_error(OVS_ERR_ARG, "%s: eps must be >= 0, got %g", op, eps);
    /* Validate everything before writing: w_out may alias conv_w. */
    for (int64_t k = 0; k < K; k++)
        if (!((double)var[k] + (double)eps > 0.0))
            return ovs_set_error(OVS_ERR_ARG,
                                 "%s: running_var[%lld] + eps = %g must be > 0 (a corrupt "
                                 "BatchNorm?)",
                                 op, (long long)k, (double)var[k] + (double)eps);
#pragma omp parallel for schedule(static) if (KL >= OPS_PAR_MIN && K > 1) num_threads(ovs_get_num_threads())
    for (int64_t k = 0; k < K; k++) {
        float f = (float)((double)gamma[k] / sqrt((double)var[k] + (double)eps));
        float b = conv_bias ? conv_bias[k] : 0.0f;
        b_out[k] = (b - mean[k]) * f + beta[k];
        const float *src = conv_w + k * L;
        float *dst = w_out + k * L;
        for (int64_t j = 0; j < L; j++) dst[j] = src[j] * f;
    }
    return OVS_OK;
}
