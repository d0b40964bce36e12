/* 2-D convolution as an implicit GEMM on the packed-GEMM micro-kernels, and BatchNorm folding.
 * Dimension letters: N batch, C/K input/output channels, H, W input and P, Q output extents,
 * R, S kernel extents, G groups (Cg = C/G, Kg = K/G), L = Cg*R*S (a row of the weight matrix).
 *
 * Per image n and group g:  out[n, g*Kg:(g+1)*Kg] (Kg, P*Q) = W_g (Kg, L) @ X (L, P*Q), where
 * X is never built (no im2col): the micro-kernels read it through tap offset tables from a
 * zero-padded, stride-phase-split copy of the input (or the input itself), see conv_implicit. */
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
    p.algo = OVS_CONV2D_AUTO;
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

/* Floats of the buffer a conv copies its input into, with NB-column blocks: the kept stride
 * phases of the zero-padded input plus NB zero floats (see conv_implicit), or for a stride-1
 * unpadded conv the (L, NB) copy of its last block; 0 for invalid sizes or on overflow. */
static size_t conv_copy_floats(int64_t C, int64_t H, int64_t W, int64_t R, int64_t S,
                               const ovs_conv2d_params *p, int64_t NB) {
    if (!p || C < 1 || H < 0 || W < 0 || R < 1 || S < 1 || p->groups < 1 || p->stride_h < 1 ||
        p->stride_w < 1 || p->pad_h < 0 || p->pad_w < 0 || p->dil_h < 1 || p->dil_w < 1 ||
        C % p->groups != 0)
        return 0;
    const int64_t Cg = C / p->groups;
    int64_t n;
    if (p->stride_h == 1 && p->stride_w == 1 && p->pad_h == 0 && p->pad_w == 0) {
        if (__builtin_mul_overflow(Cg, R, &n) || __builtin_mul_overflow(n, S, &n) ||
            __builtin_mul_overflow(n, NB, &n))
            return 0;
        return (size_t)n;
    }
    int64_t na = 0, nb = 0;   /* distinct row / column phases the taps read */
    for (int64_t r = 0; r < R; r++) {
        int64_t q = 0;
        while (q < r && (q * p->dil_h) % p->stride_h != (r * p->dil_h) % p->stride_h) q++;
        na += q == r;
    }
    for (int64_t s = 0; s < S; s++) {
        int64_t q = 0;
        while (q < s && (q * p->dil_w) % p->stride_w != (s * p->dil_w) % p->stride_w) q++;
        nb += q == s;
    }
    int64_t hp, wp;
    if (__builtin_mul_overflow(p->pad_h, 2, &hp) || __builtin_add_overflow(hp, H, &hp) ||
        __builtin_mul_overflow(p->pad_w, 2, &wp) || __builtin_add_overflow(wp, W, &wp))
        return 0;
    const int64_t Hs = hp / p->stride_h + (hp % p->stride_h != 0),
                  Ws = wp / p->stride_w + (wp % p->stride_w != 0);
    if (__builtin_mul_overflow(Cg, na * nb, &n) || __builtin_mul_overflow(n, Hs, &n) ||
        __builtin_mul_overflow(n, Ws, &n) || __builtin_add_overflow(n, NB, &n))
        return 0;
    return (size_t)n;
}

/* Columns the micro-kernels compute for n consecutive positions cut into NB-column blocks
 * (conv_make_blocks' widths: a block of 16 < cnt <= 16 + narrow is 16 + its narrow rest). */
static int64_t conv_cols(int64_t n, int64_t NB, int64_t narrow) {
    int64_t cols = 0;
    for (int64_t f = 0; f < n; f += NB) {
        const int64_t cnt = n - f < NB ? n - f : NB;
        if (NB > 16 && cnt > 16 && cnt - 16 <= narrow) cols += cnt;
        else cols += cnt <= narrow ? cnt : cnt <= 16 ? 16 : NB;
    }
    return cols;
}

/* Compact columns: a stride-1, ungrouped R x S conv (R*S > 1) on a small padded map computes
 * each flat row's Ws - Q padding columns (7x7 with padding 1: 64 columns for 49 positions).
 * Where that wastes 15% or more, the conv builds the (L, P*Q) columns of one image (im2col,
 * zeros for padding) and runs them as a 1x1 conv of L input channels with the same packed
 * weight: each output is the same fmaf chain over l = (c, r, s) in increasing order (a
 * padding tap adds fmaf(w, 0, acc) = acc, as a skipped one), so the result is bitwise the
 * direct conv's. Up to 2^20 floats of columns, K >= 64 (building them costs ~1/K of the
 * products). Returns the columns' floats (0: not taken). */
static int64_t conv_compact_floats(int64_t C, int64_t H, int64_t W, int64_t K, int64_t R,
                                   int64_t S, const ovs_conv2d_params *p) {
    if (!p || R * S <= 1 || p->groups != 1 || p->stride_h != 1 || p->stride_w != 1 || K < 64 ||
        C < 1 || C > ((int64_t)1 << 20) / (R * S))
        return 0;
    const int64_t P = ovs_conv2d_out_size(H, R, 1, p->pad_h, p->dil_h);
    const int64_t Q = ovs_conv2d_out_size(W, S, 1, p->pad_w, p->dil_w);
    if (P < 1 || Q < 1 || P > ((int64_t)1 << 20) || Q > ((int64_t)1 << 20)) return 0;
    const int64_t L = C * R * S, PQ = P * Q;
    if (PQ > ((int64_t)1 << 20) / L) return 0;
    const ops_gemm_isa *isa = ops_gemm_current_isa();
    const int64_t NB = isa->nr_max, Ws = W + 2 * p->pad_w, F = (P - 1) * Ws + Q;
    const int64_t flat = conv_cols(F, NB, isa->narrow_max), compact = conv_cols(PQ, NB, isa->narrow_max);
    return 100 * flat >= 115 * compact ? L * PQ : 0;
}

/* Scratch floats of the compact path for `cols` columns of L rows: the columns (whole lines),
 * then the 1x1 conv's (L, NB) tail copy at cols_lines(cols). */
static size_t conv_cols_lines(int64_t cols) { return ((size_t)cols + 15) / 16 * 16; }
static size_t conv_compact_scratch(int64_t cols, int64_t L) {
    return conv_cols_lines(cols) + (size_t)L * OPS_GEMM_NR_MAX;
}

/* The (L, P*Q) columns of one image (C, H, W): cols[(c*R + r)*S + s][p*Q + q] = the input at
 * row p - ph + r*dh, column q - pw + s*dw, zero outside. */
static void conv_im2col(float *cols, const float *x, int64_t C, int64_t H, int64_t W, int64_t R,
                        int64_t S, const ovs_conv2d_params *p, int64_t P, int64_t Q) {
    const int64_t L = C * R * S;
#pragma omp parallel for schedule(static) if (L * P * Q >= OPS_PAR_MIN) num_threads(ovs_get_num_threads())
    for (int64_t l = 0; l < L; l++) {
        const int64_t c = l / (R * S), r = (l / S) % R, s = l % S;
        const int64_t dy = r * p->dil_h - p->pad_h, dx = s * p->dil_w - p->pad_w;
        /* output columns q with 0 <= q + dx < W: [q0, q1) */
        int64_t q0 = dx < 0 ? -dx : 0, q1 = W - dx < Q ? W - dx : Q;
        if (q1 < q0) q1 = q0;
        float *d = cols + l * P * Q;
        for (int64_t pp = 0; pp < P; pp++) {
            float *row = d + pp * Q;
            const int64_t y = pp + dy;
            if (y < 0 || y >= H || q0 >= q1) {
                for (int64_t q = 0; q < Q; q++) row[q] = 0.0f;
                continue;
            }
            const float *src = x + (c * H + y) * W + dx;
            for (int64_t q = 0; q < q0; q++) row[q] = 0.0f;
            for (int64_t q = q0; q < q1; q++) row[q] = src[q];
            for (int64_t q = q1; q < Q; q++) row[q] = 0.0f;
        }
    }
}

size_t ovs_conv2d_scratch_floats(int64_t C, int64_t H, int64_t W, int64_t K, int64_t R,
                                 int64_t S, const ovs_conv2d_params *p) {
    const size_t copy = conv_copy_floats(C, H, W, R, S, p, OPS_GEMM_NR_MAX);
    const int64_t cols = conv_compact_floats(C, H, W, K, R, S, p);
    if (!cols || !copy) return copy;
    const size_t need = conv_compact_scratch(cols, C * R * S);
    return need > copy ? need : copy;
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
    /* A conv-packed weight: packed for these groups, then checked as the (K, L) matrix it holds. */
    ovs_matrix view;
    if (weight && weight->format == OVS_MATRIX_CONV_PACKED) {
        if (weight->groups != p->groups)
            return ovs_set_error(OVS_ERR_ARG,
                                 "%s: the weight was packed for %lld groups, the conv has %lld", op,
                                 (long long)weight->groups, (long long)p->groups);
        view = *weight;
        view.format = OVS_MATRIX_DENSE;
        weight = &view;
    }
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

int ops_conv2d_check_algo(const char *op, int64_t R, int64_t S, const ovs_conv2d_params *p) {
    if (p->algo != OVS_CONV2D_AUTO && p->algo != OVS_CONV2D_DIRECT &&
        p->algo != OVS_CONV2D_WINOGRAD && p->algo != OVS_CONV2D_WINOGRAD4)
        return ovs_set_error(OVS_ERR_ARG, "%s: algo %d is not an ovs_conv2d_algo", op,
                             (int)p->algo);
    if ((p->algo == OVS_CONV2D_WINOGRAD || p->algo == OVS_CONV2D_WINOGRAD4) &&
        !ops_conv2d_winograd_supported(R, S, p))
        return ovs_set_error(OVS_ERR_UNSUPPORTED,
                             "%s: Winograd covers 3x3 convs of stride 1, dilation 1, groups 1; "
                             "this one is %lldx%lld, stride %lldx%lld, dilation %lldx%lld, "
                             "groups %lld",
                             op, (long long)R, (long long)S, (long long)p->stride_h,
                             (long long)p->stride_w, (long long)p->dil_h, (long long)p->dil_w,
                             (long long)p->groups);
    return OVS_OK;
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

/* ---------------------------------------------------------------- implicit GEMM */
/* Stride phases. The zero-padded input Xp (Cg, Hp, Wp), Hp = H + 2ph, Wp = W + 2pw, is split
 * into its sh x sw stride phases, phase (a, b) = Xp[:, a::sh, b::sw] of (Hs, Ws) = (ceil(Hp/sh),
 * ceil(Wp/sw)); only the phases some tap reads are kept (a in {r*dh % sh}, b in {s*dw % sw}).
 * Output pixel (p, q) then reads tap l = (c, r, s) at X[f + boff[l]], f = p*Ws + q, from the
 * plane of phase (r*dh % sh, s*dw % sw) at row offset r*dh / sh and column offset s*dw / sw:
 * every phase is a stride-1 gather, and NB consecutive flat positions read NB consecutive
 * floats, so out (Kg, f) = W_g (Kg, L) @ X (L, f) runs on the ISA's gather micro-kernel
 * (ops/gemm.h) with NB = nr_max flat positions per block and W_g packed once per call.
 * Positions with q >= Q (the right padding columns) are computed and dropped. A stride-1
 * unpadded conv reads the input itself (the last partial block through a zero-filled copy);
 * otherwise the phase copy is the only copy, with NB floats of zero slack at its end.
 *
 * Blocks: either flat (consecutive NB positions across rows; few positions dropped when Ws - Q
 * is small) or per output row (each row cut into ceil(Q/NB) blocks; wide padding, as ASPP's
 * large dilations), whichever computes fewer positions; blocks without a kept position are not
 * computed. A block is computed as wide as it needs (conv_block_width): NB columns, 16 (the
 * (mr, 16) tile), or its 1..narrow_max positions on the ISA's narrow kernel (the end of a small
 * map: the 4 left of 14x14, 7x7 cut as 32 + 16 + 1). The epilogue (bias, residual, activation)
 * is the ISA's SIMD store, from the tile into the output rows.
 *
 * Taps that only read padding are skipped: a block's tap list is (c, r, s) for all c and r, s
 * in the smallest ranges holding every tap that reads an input element (not padding) for some
 * kept position of the block. A skipped or padding tap adds fmaf(w, 0, acc) = acc exactly (for
 * finite w; acc is never -0 unless a product underflowed to it), so each output is still the
 * fmaf chain over all taps in increasing order, bitwise: the result depends neither on the
 * blocks nor on the tiling nor on the thread count nor on the ISA. (ASPP's dilation 18 on a
 * 32x32 map skips ~40% of its taps.) */
#define CONV_MAX_LISTS 64   /* more distinct tap ranges than this: the others use all taps */

typedef struct {
    int64_t r0, r1, s0, s1;  /* tap ranges [r0, r1) x [s0, s1) (all channels) */
    int64_t n;               /* taps: Cg * (r1 - r0) * (s1 - s0), 0 if a range is empty */
    int64_t *aoff, *boff;    /* (n,) l * mr_max (packed weights) and input offsets */
} conv_taps;

typedef struct {
    int64_t f0;              /* first flat position */
    int32_t cnt;             /* positions to store from f0 (at most NB) */
    int32_t list;            /* its conv_taps */
} conv_block;

typedef struct {
    const float *a;          /* (ceil(Kg/amr), L, amr) packed weights of the group */
    int64_t amr;             /* rows per packed block: the ISA's mr or OVS_CONV_PACK_MR */
    const float *x;          /* phase planes (+ NB zero floats) or the input itself */
    const float *tail;       /* (L, NB) zero-filled copy of the last block, or NULL */
    const int64_t *lin;      /* (L,) l*NB: offsets into tail */
    const conv_taps *lists;
    const conv_block *blocks;
    float *dst;              /* (Kg, P*Q) */
    const float *res;        /* (Kg, P*Q) or NULL; may equal dst */
    const float *bias;       /* (Kg,) or NULL */
    int64_t Kg, L, P, Q, Ws, F, NB, nblocks;   /* F = (P-1)*Ws + Q flat positions */
    ovs_act act;
    int pack;                /* copy each block's operand rows into a contiguous (taps, NB) */
} conv_implicit_job;

/* Rows [k0, k0+m) of the tile (row stride ld) of block bl into dst: bias, residual, act (the
 * ISA's epilogue, one call per run of kept positions within an output row). */
static void conv_implicit_store(const conv_implicit_job *j, ops_gemm_store_fn store,
                                const float *tile, int64_t ld, int64_t k0, int64_t m,
                                const conv_block *bl) {
    const int64_t PQ = j->P * j->Q, nf = bl->cnt;
    int64_t t = 0;
    while (t < nf) {
        const int64_t f = bl->f0 + t, p = f / j->Ws, q = f % j->Ws;
        if (q >= j->Q) {            /* a padding column: skip to the next row */
            t += j->Ws - q;
            continue;
        }
        int64_t len = j->Q - q;
        if (len > nf - t) len = nf - t;
        const int64_t at = k0 * PQ + p * j->Q + q;
        store(j->dst + at, PQ, tile + t, ld, m, len, j->bias ? j->bias + k0 : NULL,
              j->res ? j->res + at : NULL, PQ, j->act);
        t += len;
    }
}

/* Blocks per task: the input window a task's blocks read stays within ~256 KiB. */
static int64_t conv_implicit_blocks(int64_t planes, int64_t halo, int64_t NB) {
    int64_t per = ((int64_t)1 << 16) / (planes > 0 ? planes : 1) - halo;
    int64_t blocks = per / NB;
    if (blocks > 16) blocks = 16;
    return blocks < 1 ? 1 : blocks;
}

/* Taps per slice when a chain is cut (resumed, ops/gemm.h) so that the operand rows of a
 * task's blocks stay in L2 across its output-channel tiles. */
#ifndef CONV_TAP_SLICE
#define CONV_TAP_SLICE 512
#endif
#define CONV_SLICE_BLOCKS 4
#define CONV_WHOLE_FLOATS ((int64_t)1 << 18)

/* Columns computed for block bl: its positions with the narrow kernel when they are few, 16
 * when they fit (the (mr, 16) tile), else NB. Any width gives the same fmaf chains. */
static inline int64_t conv_block_width(const ops_gemm_isa *isa, int64_t NB,
                                       const conv_block *bl) {
    if (bl->cnt <= isa->narrow_max) return bl->cnt;
    return bl->cnt <= 16 ? 16 : NB;
}

/* Software prefetch. A block's first output-channel tile reads its operand rows from memory:
 * Cg*R (c, r) streams of NB + S - 1 floats each (96 for a 32-channel 3x3), too many for the
 * hardware prefetchers, and the kernel keeps only a few misses in flight (24 FMAs per two loads):
 * on a 224^2 map 32->32 3x3 about half of the kernel's time stalled on those loads. So before
 * block b's first tile the lines of block b + 1 are prefetched (one per (c, r) run of S taps),
 * and before each tile the residual lines of the tile two steps ahead. Hints only: no effect on
 * the results. */
static void conv_prefetch_input(const conv_implicit_job *j, const conv_block *bl, int64_t l0,
                                int64_t lc, int64_t w) {
    const conv_taps *tl = j->lists + bl->list;
    if ((j->tail && bl->f0 + w > j->F) || tl->n <= l0) return;
    const int64_t n = tl->n - l0 < lc ? tl->n - l0 : lc;
    const int64_t span = tl->s1 - tl->s0 > 0 ? tl->s1 - tl->s0 : 1;   /* taps per (c, r) run */
    const float *x = j->x + bl->f0;
    for (int64_t i = 0; i < n; i += span) {
        const float *p = x + tl->boff[l0 + i];
        for (int64_t o = 0; o < w + span - 1; o += 16) __builtin_prefetch(p + o, 0, 2);
        __builtin_prefetch(p + w + span - 2, 0, 2);
    }
}

/* The residual lines of rows [k0, k0+m) of block bl (its kept positions are consecutive in the
 * output from the first one on: at most cnt floats per row). */
static void conv_prefetch_residual(const conv_implicit_job *j, const conv_block *bl, int64_t k0,
                                   int64_t m) {
    const int64_t PQ = j->P * j->Q;
    int64_t p = bl->f0 / j->Ws, q = bl->f0 % j->Ws;
    if (q >= j->Q) p++, q = 0;
    if (p >= j->P) return;
    const int64_t at = p * j->Q + q, len = PQ - at < bl->cnt ? PQ - at : bl->cnt;
    for (int64_t r = 0; r < m; r++) {
        const float *rr = j->res + (k0 + r) * PQ + at;
        for (int64_t o = 0; o < len; o += 16) __builtin_prefetch(rr + o, 0, 3);
        __builtin_prefetch(rr + len - 1, 0, 3);
    }
}

static int conv_implicit_run(const conv_implicit_job *j, int64_t planes, int64_t halo) {
    const ops_gemm_isa *isa = ops_gemm_current_isa();
    const int64_t mr = isa->mr_max, NB = j->NB, nblocks = j->nblocks;
    /* Weights larger than the input the conv reads, and that input within L2 (1 MiB): all
     * blocks in one group (whole chains, not sliced), so each weight tile streams from memory
     * once per call (per thread: the threads split the output channels) and every block reads
     * it from L2; in block groups each group streamed all the weights again. RN50's layer3 and
     * layer4 convs, whose weights a forward reads cold. */
    const double in_floats = (double)planes * (double)(j->F + halo);
    const int whole = in_floats <= (double)CONV_WHOLE_FLOATS &&
                      (double)j->Kg * (double)j->L > in_floats;
    const int sliced = !whole && j->L > 2 * CONV_TAP_SLICE;
    const int64_t lc = sliced ? CONV_TAP_SLICE : j->L;
    const int64_t bpt = whole ? nblocks
                        : sliced ? CONV_SLICE_BLOCKS : conv_implicit_blocks(planes, halo, NB);
    int64_t pgroups = (nblocks + bpt - 1) / bpt;
    const int64_t ktiles = (j->Kg + mr - 1) / mr;
    int threads = 1;
#ifdef _OPENMP
    if (!omp_in_parallel() && (double)j->Kg * (double)j->L * (double)nblocks * NB >= 1.0e6)
        threads = ovs_get_num_threads();
#endif
    /* Output-channel groups (whole micro-tiles): enough tasks for ~4 per thread; with all
     * blocks in one group, one per thread: each task packs (1x1) or reads every block's operand
     * rows for its tiles, so 4 tasks per thread did that 4x over (Zen 4, 2 threads: 1024->256
     * at 14x14 0.62 -> 0.50 ms, 2048->512 at 7x7 0.59 -> 0.52, 3x3 512 at 7x7 1.67 -> 1.44). */
    int64_t kgroups = 1;
    const int split = threads > 1 && !whole && !sliced && pgroups < 4 * (int64_t)threads;
    if (split) {
        /* ~4 tasks per thread as block groups x tile groups: each block group reads all the
         * weights of its tile group, each tile group packs / reads all the operand rows of its
         * block group, so take the split with the least of both, pg*Kg + kg*F floats per row
         * of L (Zen 4, 2 threads: 512->128 at 28x28 as 8 x 1 instead of 7 x 2, 0.54 -> 0.50
         * ms; 256->512 at 28x28 stays 4 x 2) */
        const int64_t want = 4 * (int64_t)threads;
        double best = -1.0;
        for (int64_t kg = 1; kg <= want && kg <= ktiles; kg++) {
            int64_t pg = (want + kg - 1) / kg;
            if (pg > nblocks) pg = nblocks;
            const double cost = (double)pg * (double)j->Kg + (double)kg * (double)j->F;
            if (best < 0.0 || cost < best) best = cost, pgroups = pg, kgroups = kg;
        }
    }
    if (threads > 1 && !split && pgroups < 4 * (int64_t)threads) {
        const int64_t per = whole ? 1 : 4;
        kgroups = (per * (int64_t)threads + pgroups - 1) / pgroups;
        if (kgroups > ktiles) kgroups = ktiles;
    }
    /* Equal tasks in whole rounds: blocks and micro-tiles are dealt out evenly (group sizes
     * differ by at most one) and the task count is made a multiple of the thread count where
     * the blocks allow, so no thread waits at the region's end for a last or larger task (a
     * group of bpt blocks then the rest left up to a task's worth of one thread idle). */
    while (threads > 1 && (pgroups * kgroups) % threads && pgroups < nblocks) pgroups++;
    const int64_t bmax = (nblocks + pgroups - 1) / pgroups;   /* blocks per group, at most */
    const int64_t tpg = (ktiles + kgroups - 1) / kgroups;      /* micro-tiles per group, at most */
    const int64_t tasks = pgroups * kgroups;
    /* Sliced: a task's tiles (tpg x bmax of (mr, NB)) live in a per-thread buffer across slices. */
    const int64_t per_thread = tpg * bmax * mr * NB;
    float *acc = NULL;
    if (sliced && !(acc = ovs_malloc((size_t)threads * (size_t)per_thread * sizeof(float))))
        return ovs_set_error(OVS_ERR_NOMEM, "ovs_conv2d_forward: out of memory for %lld tiles",
                             (long long)(threads * tpg * bmax));
    /* Packed operand rows: a task's blocks, (lc, NB) each, in the calling thread's kept
     * workspace (one part per thread). */
    const int64_t pk_per = j->pack ? bmax * lc * NB : 0;
    float *pks = NULL;
    void *pk_own = NULL;
    if (pk_per && !(pks = ops_thread_workspace(OPS_WS_CONV, (size_t)threads * (size_t)pk_per *
                                                                sizeof(float), &pk_own))) {
        ovs_free(acc);
        return ovs_set_error(OVS_ERR_NOMEM, "ovs_conv2d_forward: out of memory for %lld packed "
                             "blocks", (long long)(threads * bmax));
    }
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1 && tasks > 1)
    for (int64_t task = 0; task < tasks; task++) {
        const int64_t pg = task / kgroups, kg = task % kgroups;
        const int64_t b0 = pg * nblocks / pgroups, b1 = (pg + 1) * nblocks / pgroups;
        const int64_t k0 = kg * ktiles / kgroups * mr;
        const int64_t k1 = (kg + 1) * ktiles / kgroups * mr < j->Kg
                               ? (kg + 1) * ktiles / kgroups * mr : j->Kg;
        float local[OPS_GEMM_MR_MAX * OPS_GEMM_NR_MAX];   /* (mr, NB), or the narrow groups */
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *tiles = sliced ? acc + tid * per_thread : local;
        float *pk = pks ? pks + tid * pk_per : NULL;
        for (int64_t l0 = 0; l0 < j->L; l0 += lc) {
            for (int64_t k = k0; k < k1; k += mr) {
                const int64_t m = k1 - k < mr ? k1 - k : mr, kt = (k - k0) / mr;
                const float *a = j->a + (k / j->amr) * j->amr * j->L + k % j->amr;
                for (int64_t b = b0; b < b1; b++) {
                    const conv_block *bl = j->blocks + b;
                    const conv_taps *tl = j->lists + bl->list;
                    float *tile = sliced ? tiles + (kt * bmax + (b - b0)) * mr * NB : tiles;
                    const int64_t w = conv_block_width(isa, NB, bl);
                    /* narrow: up to OPS_GEMM_NARROW_GROUPS micro-tiles of rows in one call, made
                     * at the first of them; group g's tile at tile + g * gs */
                    const int narrow = w <= isa->narrow_max;
                    if (narrow && kt % OPS_GEMM_NARROW_GROUPS) continue;
                    int64_t G = 1;
                    if (narrow) {
                        G = (k1 - k + mr - 1) / mr;
                        if (G > OPS_GEMM_NARROW_GROUPS) G = OPS_GEMM_NARROW_GROUPS;
                    }
                    const int64_t gs = sliced ? bmax * mr * NB : mr * w;
                    if (k == k0 && b + 1 < b1)
                        conv_prefetch_input(j, j->blocks + b + 1, l0, lc,
                                            conv_block_width(isa, NB, j->blocks + b + 1));
                    if (j->res && !sliced && !narrow) {   /* the tile two steps ahead */
                        int64_t b2 = b + 2, k2 = k;
                        if (b2 >= b1) b2 = b0 + (b2 - b1), k2 = k + mr;
                        if (k2 < k1 && b2 < b1)
                            conv_prefetch_residual(j, j->blocks + b2, k2,
                                                   k1 - k2 < mr ? k1 - k2 : mr);
                    }
                    const float *b_x = j->x + bl->f0;
                    const int64_t *b_off = tl->boff + l0;
                    if (j->tail && bl->f0 + w > j->F) {
                        b_x = j->tail + (bl->f0 - j->F / NB * NB);
                        b_off = j->lin + l0;
                    }
                    if (tl->n == 0) {           /* every tap reads padding */
                        if (l0 == 0)
                            for (int64_t g = 0; g < G; g++)
                                for (int64_t i = 0; i < mr * w; i++) tile[g * gs + i] = 0.0f;
                    } else if (l0 < tl->n) {
                        const int64_t n = tl->n - l0 < lc ? tl->n - l0 : lc;
                        if (narrow) {
                            const float *ag[OPS_GEMM_NARROW_GROUPS];
                            for (int64_t g = 0; g < G; g++) {
                                const int64_t kk = k + g * mr;
                                ag[g] = j->a + (kk / j->amr) * j->amr * j->L + kk % j->amr;
                            }
                            /* rows past k1 in the last group: computed, never stored */
                            isa->gather_narrow(G, mr, w, n, ag, tl->aoff + l0, b_x, b_off, tile,
                                               gs, l0 > 0);
                        } else if (pk) {
                            /* the block's rows packed at its first tile, read by the others:
                             * with weights in blocks of the kernel's mr (A column l at
                             * a + l*mr), as two 16-column panels for the panel kernel (no
                             * offset tables); else as (n, NB) rows for the gather kernel */
                            float *pb = pk + (b - b0) * lc * NB;
                            const int panel = j->amr == mr;
                            if (k == k0) {
                                if (panel)   /* constant sizes where w is 32: inlined */
                                    for (int64_t i = 0; i < n; i++) {
                                        const float *src = b_x + b_off[i];
                                        memcpy(pb + i * 16, src, 16 * sizeof(float));
                                        if (w == 32)
                                            memcpy(pb + (n + i) * 16, src + 16,
                                                   16 * sizeof(float));
                                        else if (w > 16)
                                            memcpy(pb + (n + i) * 16, src + 16,
                                                   (size_t)(w - 16) * sizeof(float));
                                    }
                                else
                                    for (int64_t i = 0; i < n; i++)
                                        memcpy(pb + i * NB, b_x + b_off[i],
                                               (size_t)w * sizeof(float));
                            }
                            if (panel)
                                isa->kernel(m, w, n, a + tl->aoff[l0], pb, n * 16, tile, l0 > 0);
                            else
                                isa->gather(m, w, n, a, tl->aoff + l0, pb, j->lin, tile, l0 > 0);
                        } else {
                            isa->gather(m, w, n, a, tl->aoff + l0, b_x, b_off, tile, l0 > 0);
                        }
                    }
                    if (!sliced)
                        for (int64_t g = 0; g < G; g++) {
                            const int64_t kk = k + g * mr;
                            conv_implicit_store(j, isa->store, tile + g * gs, w, kk,
                                                k1 - kk < mr ? k1 - kk : mr, bl);
                        }
                }
            }
        }
        if (sliced)
            for (int64_t k = k0; k < k1; k += mr)
                for (int64_t b = b0; b < b1; b++)
                    conv_implicit_store(j, isa->store,
                                        tiles + (((k - k0) / mr) * bmax + (b - b0)) * mr * NB,
                                        conv_block_width(isa, NB, j->blocks + b), k,
                                        k1 - k < mr ? k1 - k : mr, j->blocks + b);
    }
    ovs_free(acc);
    ovs_free(pk_own);
    return OVS_OK;
}

/* The geometry of one conv call: phases, plane extents, flat positions. */
typedef struct {
    int64_t H, W, R, S, P, Q, Cg;
    int64_t sh, sw, ph, pw, dh, dw;
    int64_t na, nb;          /* stride phases kept along rows / columns */
    int64_t *amap, *bmap;    /* (sh,), (sw,): phase -> kept index, -1 if unused */
    int64_t Hs, Ws, F;
    int raw;                 /* stride 1, no padding: X is the input itself */
} conv_geom;

/* Tap rows (or columns) valid for output row p: [lo, hi] (empty if lo > hi). */
static void conv_tap_range(int64_t p, int64_t st, int64_t pad, int64_t dil, int64_t in,
                           int64_t R, int64_t *lo, int64_t *hi) {
    const int64_t base = p * st - pad;             /* input index of tap 0 */
    int64_t l = base >= 0 ? 0 : (-base + dil - 1) / dil;
    int64_t h = in - 1 - base < 0 ? -1 : (in - 1 - base) / dil;
    *lo = l;
    *hi = h < R - 1 ? h : R - 1;
}

/* Union of the valid tap ranges over output indices [p0, p1]: [*r0, *r1). */
static void conv_tap_union(int64_t p0, int64_t p1, int64_t st, int64_t pad, int64_t dil,
                           int64_t in, int64_t R, int64_t *r0, int64_t *r1) {
    int64_t lo = R, hi = -1;
    for (int64_t p = p0; p <= p1; p++) {
        int64_t l, h;
        conv_tap_range(p, st, pad, dil, in, R, &l, &h);
        if (l > h) continue;
        if (l < lo) lo = l;
        if (h > hi) hi = h;
    }
    *r0 = lo;
    *r1 = hi + 1 > lo ? hi + 1 : lo;
}

/* The blocks (and for each its tap ranges, as a list index) of the conv; lists[0] = all taps.
 * A block of NB = 32 with 16 < cnt <= 16 + narrow positions (the end of a small map, as the
 * 49 of a 7x7 1x1 conv) is cut into 16 + the rest, which the narrow kernel computes (ops/gemm.h)
 * instead of 32 columns. Returns the number of blocks (at most 2 * max(flat, per_row));
 * *nlists gets the number of lists. */
static int64_t conv_make_blocks(const conv_geom *g, int64_t NB, int64_t narrow,
                                conv_block *blocks, conv_taps *lists, int64_t *nlists) {
    const int64_t P = g->P, Q = g->Q, Ws = g->Ws, F = g->F;
    const int padded = g->ph > 0 || g->pw > 0;
    const int64_t flat = (F + NB - 1) / NB, per_row = P * ((Q + NB - 1) / NB);
    const int rows = !g->raw && per_row < flat;
    int64_t n = 0, nl = 1;
    lists[0] = (conv_taps){0, g->R, 0, g->S, 0, NULL, NULL};
    int64_t fs0 = 0, fs1 = g->S;   /* the column union over a whole row */
    if (padded) conv_tap_union(0, Q - 1, g->sw, g->pw, g->dw, g->W, g->S, &fs0, &fs1);
    const int64_t total = rows ? per_row : flat;
    for (int64_t i = 0; i < total; i++) {
        int64_t fb, cb;
        if (rows) {
            const int64_t per = (Q + NB - 1) / NB, p = i / per, q0 = (i % per) * NB;
            fb = p * Ws + q0;
            cb = Q - q0 < NB ? Q - q0 : NB;
        } else {
            fb = i * NB;
            cb = F - fb < NB ? F - fb : NB;
        }
        const int split = NB > 16 && cb > 16 && cb - 16 <= narrow;
        for (int part = 0; part <= split; part++) {
            const int64_t f0 = part ? fb + 16 : fb, cnt = split ? (part ? cb - 16 : 16) : cb;
            /* kept positions: the first and last with q < Q */
            int64_t pa = f0 / Ws, qa = f0 % Ws, pb = (f0 + cnt - 1) / Ws,
                    qb = (f0 + cnt - 1) % Ws;
            if (qa >= Q) { pa++; qa = 0; }
            if (qb >= Q) qb = Q - 1;
            if (pa > pb || (pa == pb && qa > qb)) continue;   /* only dropped columns */
            int64_t list = 0;
            if (padded) {
                int64_t r0, r1, s0, s1;
                conv_tap_union(pa, pb, g->sh, g->ph, g->dh, g->H, g->R, &r0, &r1);
                if (pa == pb) conv_tap_union(qa, qb, g->sw, g->pw, g->dw, g->W, g->S, &s0, &s1);
                else s0 = fs0, s1 = fs1;
                for (list = 0; list < nl; list++)
                    if (lists[list].r0 == r0 && lists[list].r1 == r1 && lists[list].s0 == s0 &&
                        lists[list].s1 == s1)
                        break;
                if (list == nl) {
                    if (nl < CONV_MAX_LISTS)
                        lists[nl++] = (conv_taps){r0, r1, s0, s1, 0, NULL, NULL};
                    else
                        list = 0;   /* all taps: exact too, only slower */
                }
            }
            blocks[n++] = (conv_block){f0, (int32_t)cnt, (int32_t)list};
        }
    }
    *nlists = nl;
    return n;
}

/* Input offset of tap (c, r, s). */
static int64_t conv_tap_offset(const conv_geom *g, int64_t c, int64_t r, int64_t s) {
    const int64_t a = g->amap[(r * g->dh) % g->sh], b = g->bmap[(s * g->dw) % g->sw];
    return ((c * g->na + a) * g->nb + b) * g->Hs * g->Ws + (r * g->dh / g->sh) * g->Ws +
           s * g->dw / g->sw;
}

/* The kept stride phases of (Cg, H, W) into xs (Cg, na, nb, Hs, Ws): phase (a, b) holds the
 * zero-padded input at rows y*sh + a, columns x*sw + b. */
static void conv_phase_input(float *xs, const float *src, const conv_geom *g) {
    const int64_t Hs = g->Hs, Ws = g->Ws, planes = g->Cg * g->na * g->nb;
    const int64_t H = g->H, W = g->W;
#pragma omp parallel for schedule(static) if (planes * Hs * Ws >= OPS_PAR_MIN && planes > 1) num_threads(ovs_get_num_threads())
    for (int64_t pl = 0; pl < planes; pl++) {
        const int64_t c = pl / (g->na * g->nb), ia = (pl / g->nb) % g->na, ib = pl % g->nb;
        int64_t a = 0, b = 0;
        while (g->amap[a] != ia) a++;
        while (g->bmap[b] != ib) b++;
        const float *s = src + c * H * W;
        float *d = xs + pl * Hs * Ws;
        /* columns x with 0 <= x*sw + b - pw < W: [x0, x1) */
        const int64_t off = b - g->pw;
        int64_t x0 = off >= 0 ? 0 : (-off + g->sw - 1) / g->sw;
        int64_t x1 = W - 1 - off < 0 ? 0 : (W - 1 - off) / g->sw + 1;
        if (x1 > Ws) x1 = Ws;
        if (x1 < x0) x1 = x0;
        for (int64_t y = 0; y < Hs; y++) {
            float *row = d + y * Ws;
            const int64_t iy = y * g->sh + a - g->ph;
            if (iy < 0 || iy >= H || x0 >= x1) {
                memset(row, 0, (size_t)Ws * sizeof(float));
                continue;
            }
            const float *sr = s + iy * W;
            for (int64_t x = 0; x < x0; x++) row[x] = 0.0f;
            if (g->sw == 1) {
                memcpy(row + x0, sr + x0 + off, (size_t)(x1 - x0) * sizeof(float));
            } else {
                for (int64_t x = x0; x < x1; x++) row[x] = sr[x * g->sw + off];
            }
            for (int64_t x = x1; x < Ws; x++) row[x] = 0.0f;
        }
    }
}

static int conv_implicit(const char *op, float *out, const float *in, const ovs_matrix *weight,
                         const float *bias, const float *residual, int64_t N, int64_t C,
                         int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                         const ovs_conv2d_params *p, ovs_act act, int64_t P, int64_t Q,
                         float *scratch) {
    const ops_gemm_isa *isa = ops_gemm_current_isa();
    const int64_t G = p->groups, Cg = C / G, Kg = K / G, L = Cg * R * S, PQ = P * Q;
    const int64_t mr = isa->mr_max, NB = isa->nr_max;
    /* Weights packed at load (rows in blocks of OVS_CONV_PACK_MR, a multiple of mr: a micro-tile
     * reads mr consecutive rows of a block) or packed here, per call, in blocks of mr. */
    const int prepacked = weight->format == OVS_MATRIX_CONV_PACKED;
    const int64_t amr = prepacked ? OVS_CONV_PACK_MR : mr, astride = (Kg + amr - 1) / amr * amr * L;
    if (prepacked && OVS_CONV_PACK_MR % mr != 0)
        return ovs_set_error(OVS_ERR_UNSUPPORTED,
                             "%s: the %s kernels' %lld-row tiles do not divide packed blocks of %d",
                             op, isa->name, (long long)mr, OVS_CONV_PACK_MR);
    conv_geom g = {H, W, R, S, P, Q, Cg, p->stride_h, p->stride_w, p->pad_h, p->pad_w,
                   p->dil_h, p->dil_w, 0, 0, NULL, NULL, 0, 0, 0, 0};
    g.raw = g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
    const int64_t Hp = H + 2 * g.ph, Wp = W + 2 * g.pw;
    g.Hs = (Hp + g.sh - 1) / g.sh;
    g.Ws = (Wp + g.sw - 1) / g.sw;
    g.F = (P - 1) * g.Ws + Q;
    /* Geometry tables: phase maps, blocks, lists (their offset tables are sized after). */
    const int64_t flat = (g.F + NB - 1) / NB, per_row = P * ((Q + NB - 1) / NB);
    const int64_t maxblocks = 2 * (flat > per_row ? flat : per_row);
    int64_t *maps = ovs_malloc((size_t)(g.sh + g.sw) * sizeof(int64_t));
    conv_block *blocks = ovs_malloc((size_t)maxblocks * sizeof(conv_block));
    conv_taps *lists = ovs_malloc(CONV_MAX_LISTS * sizeof(conv_taps));
    int64_t *offs = NULL;
    float *xs = NULL, *ap = NULL, *tail = NULL, *owned = NULL;
    const float *aw = weight->data;
    int st = OVS_OK;
    if (!maps || !blocks || !lists) {
        st = ovs_set_error(OVS_ERR_NOMEM, "%s: out of memory for the block tables", op);
        goto done;
    }
    g.amap = maps;
    g.bmap = maps + g.sh;
    for (int64_t i = 0; i < g.sh + g.sw; i++) maps[i] = -1;
    for (int64_t r = 0; r < R; r++) {
        int64_t *m = &g.amap[(r * g.dh) % g.sh];
        if (*m < 0) *m = g.na++;
    }
    for (int64_t s = 0; s < S; s++) {
        int64_t *m = &g.bmap[(s * g.dw) % g.sw];
        if (*m < 0) *m = g.nb++;
    }
    int64_t nlists = 0;
    const int64_t nblocks = conv_make_blocks(&g, NB, isa->narrow_max, blocks, lists, &nlists);
    size_t ntaps = 0;
    for (int64_t t = 0; t < nlists; t++) {
        conv_taps *tl = &lists[t];
        tl->n = tl->r1 > tl->r0 && tl->s1 > tl->s0 ? Cg * (tl->r1 - tl->r0) * (tl->s1 - tl->s0) : 0;
        ntaps += (size_t)tl->n;
    }
    /* offsets: 2 per tap of each list, + L for the tail's */
    const size_t n_x = g.raw ? 0 : (size_t)(Cg * g.na * g.nb) * (size_t)(g.Hs * g.Ws) + (size_t)NB;
    const size_t n_a = prepacked ? 0 : (size_t)G * (size_t)astride;
    offs = ovs_malloc((2 * ntaps + (size_t)L) * sizeof(int64_t));
    ap = n_a ? ovs_malloc(n_a * sizeof(float)) : NULL;
    /* The input copy (phases or tail) in the caller's scratch when given (sized by
     * ovs_conv2d_scratch_floats: a model's arena, reused across calls), else allocated here. */
    const size_t n_copy = g.raw ? (size_t)L * (size_t)NB : n_x;
    const int own = !(scratch && ovs_conv2d_scratch_floats(C, H, W, K, R, S, p) >= n_copy);
    float *copy = own ? ovs_malloc(n_copy * sizeof(float)) : scratch;
    if (own) owned = copy;
    if (g.raw) tail = copy;
    else if (n_x) xs = copy;
    if (!offs || (n_a && !ap) || !copy) {
        st = ovs_set_error(OVS_ERR_NOMEM,
                           "%s: out of memory for the padded input (%zu floats) and the packed "
                           "weights (%zu floats)",
                           op, n_x, n_a);
        goto done;
    }
    int64_t *o = offs;
    for (int64_t t = 0; t < nlists; t++) {
        conv_taps *tl = &lists[t];
        tl->aoff = o;
        tl->boff = o + tl->n;
        /* channel 0's taps from the geometry, channel c's = those + c planes (serial work per
         * call: no divisions per tap) */
        const int64_t nrs = tl->n / (Cg > 0 ? Cg : 1);
        const int64_t cplane = conv_tap_offset(&g, 1, 0, 0) - conv_tap_offset(&g, 0, 0, 0);
        int64_t i = 0;
        for (int64_t r = tl->r0; r < tl->r1 && tl->n; r++)
            for (int64_t s = tl->s0; s < tl->s1; s++, i++) {
                tl->aoff[i] = (r * S + s) * amr;
                tl->boff[i] = conv_tap_offset(&g, 0, r, s);
            }
        for (int64_t c = 1; c < Cg && tl->n; c++)
            for (int64_t q = 0; q < nrs; q++, i++) {
                tl->aoff[i] = tl->aoff[q] + c * R * S * amr;
                tl->boff[i] = tl->boff[q] + c * cplane;
            }
        o += 2 * tl->n;
    }
    int64_t *lin = o;
    for (int64_t l = 0; l < L; l++) lin[l] = l * NB;
    if (xs) memset(xs + n_x - NB, 0, (size_t)NB * sizeof(float));
    /* Dense weights: those of every group packed once per call. */
    if (!prepacked) {
        for (int64_t gi = 0; gi < G; gi++)
            ops_gemm_pack_rows(isa, ap + gi * astride, weight->data + gi * Kg * L, L, Kg, L,
                               ovs_get_num_threads());
        aw = ap;
    }
    const int64_t halo = ((R - 1) * g.dh / g.sh) * g.Ws + (S - 1) * g.dw / g.sw;
    for (int64_t n = 0; n < N && !st; n++)
        for (int64_t gi = 0; gi < G; gi++) {
            const float *src = in + (n * C + gi * Cg) * H * W;
            if (!g.raw) conv_phase_input(xs, src, &g);
            const float *x = g.raw ? src : xs;
            /* raw: positions f < F read x[f + off] < Cg*H*W, beyond F the next group; the last
             * partial block reads a zero-filled copy instead. */
            const int64_t ft = g.F / NB * NB;
            const int use_tail = g.raw && ft < g.F;
            if (use_tail) {   /* serial: zeros by memset, then the F - ft valid columns */
                const int64_t nv = g.F - ft;
                memset(tail, 0, (size_t)(L * NB) * sizeof(float));
                for (int64_t l = 0; l < L; l++)
                    memcpy(tail + l * NB, x + ft + lists[0].boff[l], (size_t)nv * sizeof(float));
            }
            conv_implicit_job j = {aw + gi * astride, amr, x,
                                   use_tail ? tail : NULL, lin, lists, blocks,
                                   out + (n * K + gi * Kg) * PQ,
                                   residual ? residual + (n * K + gi * Kg) * PQ : NULL,
                                   bias ? bias + gi * Kg : NULL, Kg, L, P, Q, g.Ws, g.F, NB,
                                   nblocks, act, 0};
            /* 1x1: the block's rows, one per input channel, are a whole plane apart (RN50's
             * 56x56 planes are 196 cache lines: 16 L1 sets for all channels, which then evict
             * each other); packed, the output-channel tiles read them contiguously. A 3x3's
             * packed rows would be 9 copies of each input row: slower (0.93-0.97x). */
            j.pack = R * S == 1 && g.raw;
            if ((st = conv_implicit_run(&j, Cg * g.na * g.nb, halo))) break;
        }
done:
    ovs_free(maps);
    ovs_free(blocks);
    ovs_free(lists);
    ovs_free(offs);
    ovs_free(ap);
    ovs_free(owned);
    return st;
}

int ovs_conv2d_forward(float *out, const float *in, const ovs_matrix *weight, const float *bias,
                       const float *residual, int64_t N, int64_t C, int64_t H, int64_t W,
                       int64_t K, int64_t R, int64_t S, const ovs_conv2d_params *p, ovs_act act,
                       float *scratch) {
    static const char op[] = "ovs_conv2d_forward";
    int64_t P, Q;
    int st = ops_conv2d_check(op, out, in, weight, N, C, H, W, K, R, S, p, act, &P, &Q);
    if (st || (st = ops_conv2d_check_algo(op, R, S, p))) return st;
    const int64_t PQ = P * Q;
    if (N == 0 || K == 0 || PQ == 0) return OVS_OK;
    if (weight->format != OVS_MATRIX_DENSE && weight->format != OVS_MATRIX_CONV_PACKED)
        return ovs_set_error(OVS_ERR_UNSUPPORTED, "%s: weight format %d is not supported", op,
                             (int)weight->format);
    const ovs_conv2d_algo algo =
        p->algo == OVS_CONV2D_AUTO ? ovs_conv2d_auto_algo(N, C, H, W, K, R, S, p) : p->algo;
    if (C > 0 && (algo == OVS_CONV2D_WINOGRAD || algo == OVS_CONV2D_WINOGRAD4))
        return ops_conv2d_winograd(op, out, in, weight, bias, residual, N, C, H, W, K, p->pad_h,
                                   p->pad_w, act, P, Q, algo == OVS_CONV2D_WINOGRAD4 ? 4 : 2);
    const int64_t ncols = C > 0 ? conv_compact_floats(C, H, W, K, R, S, p) : 0;
    if (ncols) {   /* per image: its columns, then a 1x1 conv over them */
        /* the caller's scratch is sized by ovs_conv2d_scratch_floats, which covers this */
        const int64_t L = C * R * S;
        const size_t cpad = conv_cols_lines(ncols);
        float *cols =
            scratch ? scratch : ovs_malloc(conv_compact_scratch(ncols, L) * sizeof(float));
        if (!cols)
            return ovs_set_error(OVS_ERR_NOMEM, "%s: out of memory for the %lld x %lld columns",
                                 op, (long long)L, (long long)PQ);
        ovs_conv2d_params p1 = ovs_conv2d_defaults();
        p1.algo = OVS_CONV2D_DIRECT;
        for (int64_t n = 0; n < N && !st; n++) {
            conv_im2col(cols, in + n * C * H * W, C, H, W, R, S, p, P, Q);
            st = conv_implicit(op, out + n * K * PQ, cols, weight, bias,
                               residual ? residual + n * K * PQ : NULL, 1, L, P, Q, K, 1, 1, &p1,
                               act, P, Q, cols + cpad);
        }
        if (!scratch) ovs_free(cols);
        return st;
    }
    if (C > 0)
        return conv_implicit(op, out, in, weight, bias, residual, N, C, H, W, K, R, S, p, act, P, Q,
                             scratch);
    /* No input channels: out = act(bias [+ residual]). */
    const int64_t planes = N * K;
    for (int64_t i = 0; i < planes; i++) {
        float *x = out + i * PQ;
        const float *res = residual ? residual + i * PQ : NULL;
        if (res == x) {
            conv_epilogue_plane(x, bias ? bias[i % K] : 0.0f, NULL, PQ, act);
        } else {
            memset(x, 0, (size_t)PQ * sizeof(float));
            conv_epilogue_plane(x, bias ? bias[i % K] : 0.0f, res, PQ, act);
        }
    }
    return OVS_OK;
}

/* ---------------------------------------------------------------- packed weights */
size_t ovs_conv2d_packed_floats(int64_t K, int64_t L, int64_t groups) {
    if (K < 0 || L < 0 || groups < 1 || K % groups != 0) return SIZE_MAX;
    const int64_t Kg = K / groups, MR = OVS_CONV_PACK_MR;
    size_t n;
    if (ovs_mul3_size(&n, (size_t)groups, (size_t)((Kg + MR - 1) / MR * MR), (size_t)L))
        return SIZE_MAX;
    return n;
}

/* The checks of pack and unpack: sizes, groups, the packed size; *n gets K*L. */
static int conv_pack_check(const char *op, int64_t K, int64_t L, int64_t groups, int64_t *n,
                           size_t *packed) {
    int st;
    if ((st = ops_check_nonneg(op, "K", K)) || (st = ops_check_nonneg(op, "L", L)) ||
        (st = ops_check_pos(op, "groups", groups)) || (st = ops_mul(n, op, K, L)))
        return st;
    if (K % groups != 0)
        return ovs_set_error(OVS_ERR_ARG, "%s: K = %lld must be divisible by groups = %lld", op,
                             (long long)K, (long long)groups);
    *packed = ovs_conv2d_packed_floats(K, L, groups);
    if (*packed == SIZE_MAX || *packed > (size_t)INT64_MAX)
        return ovs_set_error(OVS_ERR_OVERFLOW, "%s: packed size of (%lld, %lld) overflows", op,
                             (long long)K, (long long)L);
    return OVS_OK;
}

int ovs_conv2d_pack(float *dst, const float *src, int64_t K, int64_t L, int64_t groups) {
    static const char op[] = "ovs_conv2d_pack";
    int64_t n = 0;
    size_t packed = 0;
    int st = conv_pack_check(op, K, L, groups, &n, &packed);
    if (st || (st = ops_check_ptr(op, "src", src, n)) ||
        (st = ops_check_ptr(op, "dst", dst, (int64_t)packed)))
        return st;
    const int64_t Kg = K / groups, MR = OVS_CONV_PACK_MR, per = (Kg + MR - 1) / MR;
    const int64_t blocks = groups * per;
    /* The AVX-512 packing has MR-row blocks: the same copy, faster than the scalar one. */
    const ops_gemm_isa *isa = ops_gemm_current_isa();
#pragma omp parallel for schedule(static) if (n >= OPS_PAR_MIN && blocks > 1) num_threads(ovs_get_num_threads())
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t g = b / per, k0 = (b % per) * MR, m = Kg - k0 < MR ? Kg - k0 : MR;
        float *d = dst + b * MR * L;
        const float *s = src + (g * Kg + k0) * L;
        if (isa->mr_max == MR) isa->pack_a(d, s, L, m, L);
        else ops_gemm_pack_a_scalar(d, s, L, m, L, MR);
        for (int64_t l = 0; l < L && m < MR; l++)
            for (int64_t r = m; r < MR; r++) d[l * MR + r] = 0.0f;
    }
    return OVS_OK;
}

/* Blocks from the last to the first: block b's packed place starts at or after its rows' raw
 * place and ends before the next block's packed place, so a block moved through a copy
 * overwrites only raw rows already moved. */
int ovs_conv2d_pack_inplace(float *buf, int64_t K, int64_t L, int64_t groups) {
    static const char op[] = "ovs_conv2d_pack_inplace";
    int64_t n = 0;
    size_t packed = 0;
    int st = conv_pack_check(op, K, L, groups, &n, &packed);
    if (st || (st = ops_check_ptr(op, "buf", buf, (int64_t)packed))) return st;
    const int64_t Kg = K / groups, MR = OVS_CONV_PACK_MR, per = (Kg + MR - 1) / MR;
    if (packed == 0) return OVS_OK;
    float *tmp = ovs_malloc((size_t)MR * (size_t)L * sizeof(float));
    if (!tmp) return ovs_set_error(OVS_ERR_NOMEM, "%s: out of memory for one block", op);
    const ops_gemm_isa *isa = ops_gemm_current_isa();
    for (int64_t b = groups * per - 1; b >= 0; b--) {
        const int64_t g = b / per, k0 = (b % per) * MR, m = Kg - k0 < MR ? Kg - k0 : MR;
        float *d = buf + b * MR * L;
        memcpy(tmp, buf + (g * Kg + k0) * L, (size_t)(m * L) * sizeof(float));
        if (isa->mr_max == MR) isa->pack_a(d, tmp, L, m, L);
        else ops_gemm_pack_a_scalar(d, tmp, L, m, L, MR);
        for (int64_t l = 0; l < L && m < MR; l++)
            for (int64_t r = m; r < MR; r++) d[l * MR + r] = 0.0f;
    }
    ovs_free(tmp);
    return OVS_OK;
}

int ovs_conv2d_unpack(float *dst, const ovs_matrix *packed) {
    static const char op[] = "ovs_conv2d_unpack";
    if (!packed) return ovs_set_error(OVS_ERR_ARG, "%s: packed is NULL", op);
    if (packed->format != OVS_MATRIX_CONV_PACKED)
        return ovs_set_error(OVS_ERR_ARG, "%s: the matrix is not conv-packed (format %d)", op,
                             (int)packed->format);
    const int64_t K = packed->rows, L = packed->cols;
    int64_t n = 0;
    size_t np = 0;
    int st = conv_pack_check(op, K, L, packed->groups, &n, &np);
    if (st || (st = ops_check_ptr(op, "dst", dst, n)) ||
        (st = ops_check_ptr(op, "packed data", packed->data, (int64_t)np)))
        return st;
#pragma omp parallel for schedule(static) if (n >= OPS_PAR_MIN && K > 1) num_threads(ovs_get_num_threads())
    for (int64_t k = 0; k < K; k++)
        for (int64_t l = 0; l < L; l++)
            dst[k * L + l] = packed->data[ops_conv_packed_at(K, L, packed->groups, k, l)];
    return OVS_OK;
}

ovs_matrix ovs_conv2d_packed(const float *packed, int64_t K, int64_t L, int64_t groups) {
    return (ovs_matrix){.format = OVS_MATRIX_CONV_PACKED, .data = packed, .rows = K, .cols = L,
                        .groups = groups};
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
