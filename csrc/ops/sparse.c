/* Sparse (CSR) weights and the sparse x dense convolution.
 * Dimension letters as in include/ovs/ops.h: N batch, C/K input/output channels, H, W input and
 * P, Q output extents, R, S kernel extents, L = C*R*S (a row of the weight matrix).
 *
 * The fast kernel never builds an im2col matrix. The input image is zero-padded once into
 * (C, Hp, Wq) planes (Hp = H + 2ph, row stride Wq >= Wp = W + 2pw; see sp_layout for the
 * aligned variant with one copy per kernel column) and the output is computed on the padded
 * grid of P rows by Wq columns, flattened: grid position i = p*Wq + q. For stride 1 every
 * weight (c, r, s) then reads the input at one constant offset from i, resolved for every
 * non-zero once per call (or once per input size: ovs_sparse_plan, which the models keep per
 * conv), so output row k over a tile of 64 grid positions is a sum of shifted
 * input runs scaled by the row's non-zeros: one broadcast and 4 zmm FMAs per non-zero (the
 * tile kernels, ops/sparse.h and sparse_x86.c). The columns q >= Q of the grid are computed
 * and dropped. Work is proportional to the non-zeros; what decides the speed against the
 * dense GEMM is how little else a non-zero costs (one 32-bit offset and one broadcast),
 * aligned loads, and the tile's input staying in L1 (input-channel slices).
 * Measured on Zen 5 (loaded machine, 1 thread): 75-120 GFLOP/s on the non-zeros of RN50's
 * 1x1 and 3x3 convs at 25-75% density (65-80 at 7x7 and 14x14), against 135-200 for the
 * dense path; so at 50-75% density the dense kernel stays faster (the calibration keeps it).
 * A weight without non-zeros only writes bias + residual + activation. */
#include "ops/sparse.h"

#include <omp.h>
#include <stdint.h>

#include "ops/gemm.h"

#define SP_TILE SPARSE_TILE
#define SP_ROWS SPARSE_ROWS

int ovs_csr_from_dense(ovs_csr *out, const float *dense, int64_t rows, int64_t cols) {
    memset(out, 0, sizeof *out);
    if (rows < 0 || cols < 0)
        return ovs_set_error(OVS_ERR_ARG, "csr_from_dense: negative size %lld x %lld",
                             (long long)rows, (long long)cols);
    if (cols < 1 || cols > 65536)
        return ovs_set_error(OVS_ERR_UNSUPPORTED,
                             "csr_from_dense: %lld columns (16-bit column indices allow 1..65536)",
                             (long long)cols);
    size_t total;
    if (ovs_mul_size(&total, (size_t)rows, (size_t)cols))
        return ovs_set_error(OVS_ERR_OVERFLOW, "csr_from_dense: %lld x %lld overflows",
                             (long long)rows, (long long)cols);
    if (total && !dense) return ovs_set_error(OVS_ERR_ARG, "csr_from_dense: dense is NULL");
    int64_t nnz = 0;
    for (size_t i = 0; i < total; i++) nnz += dense[i] != 0.0f;
    out->row_ptr = ovs_malloc(((size_t)rows + 1) * sizeof(int64_t));
    out->col = ovs_malloc((nnz ? (size_t)nnz : 1) * sizeof(uint16_t));
    out->val = ovs_malloc((nnz ? (size_t)nnz : 1) * sizeof(float));
    if (!out->row_ptr || !out->col || !out->val) {
        ovs_csr_free(out);
        return ovs_set_error(OVS_ERR_NOMEM, "csr_from_dense: out of memory for %lld non-zeros",
                             (long long)nnz);
    }
    out->rows = rows;
    out->cols = cols;
    out->nnz = nnz;
    int64_t j = 0;
    for (int64_t r = 0; r < rows; r++) {
        out->row_ptr[r] = j;
        const float *row = dense + (size_t)r * (size_t)cols;
        for (int64_t c = 0; c < cols; c++)
            if (row[c] != 0.0f) {
                out->col[j] = (uint16_t)c;
                out->val[j++] = row[c];
            }
    }
    out->row_ptr[rows] = j;
    return OVS_OK;
}

int ovs_csr_to_dense(float *dense, const ovs_csr *m) {
    if (!m || !m->row_ptr) return ovs_set_error(OVS_ERR_ARG, "csr_to_dense: empty matrix");
    memset(dense, 0, (size_t)m->rows * (size_t)m->cols * sizeof(float));
    for (int64_t r = 0; r < m->rows; r++)
        for (int64_t j = m->row_ptr[r]; j < m->row_ptr[r + 1]; j++)
            dense[(size_t)r * (size_t)m->cols + m->col[j]] = m->val[j];
    return OVS_OK;
}

void ovs_csr_free(ovs_csr *m) {
    if (!m) return;
    ovs_free(m->row_ptr);
    ovs_free(m->col);
    ovs_free(m->val);
    memset(m, 0, sizeof *m);
}

size_t ovs_csr_bytes(const ovs_csr *m) {
    if (!m || !m->row_ptr) return 0;
    return ((size_t)m->rows + 1) * sizeof(int64_t) +
           (size_t)m->nnz * (sizeof(uint16_t) + sizeof(float));
}

/* ---------------------------------------------------------------- checks */
static int sparse_check(const char *op, float *out, const float *in, const ovs_csr *w,
                        int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R,
                        int64_t S, const ovs_conv2d_params *p, ovs_act act, int64_t *P_out,
                        int64_t *Q_out) {
    if (!w || !w->row_ptr) return ovs_set_error(OVS_ERR_ARG, "%s: weight is NULL or empty", op);
    int64_t P = 0, Q = 0;
    int st = ops_conv2d_geometry(op, N, C, H, W, K, R, S, p, act, &P, &Q);
    if (st) return st;
    if (p->groups != 1)
        return ovs_set_error(OVS_ERR_UNSUPPORTED, "%s: groups must be 1, got %lld", op,
                             (long long)p->groups);
    int64_t L;
    if ((st = ops_mul(&L, op, C, R)) || (st = ops_mul(&L, op, L, S))) return st;
    if (w->rows != K || w->cols != L)
        return ovs_set_error(OVS_ERR_ARG, "%s: weight is %lld x %lld, expected K x C*R*S = %lld x %lld",
                             op, (long long)w->rows, (long long)w->cols, (long long)K, (long long)L);
    int64_t nin, nout;
    if ((st = ops_mul(&nin, op, N, C)) || (st = ops_mul(&nin, op, nin, H)) ||
        (st = ops_mul(&nin, op, nin, W)) || (st = ops_mul(&nout, op, N, K)) ||
        (st = ops_mul(&nout, op, nout, P)) || (st = ops_mul(&nout, op, nout, Q)))
        return st;
    if ((st = ops_check_ptr(op, "out", out, nout)) || (st = ops_check_ptr(op, "in", in, nin)))
        return st;
    *P_out = P;
    *Q_out = Q;
    return OVS_OK;
}

/* ---------------------------------------------------------------- naive */
int ovs_conv2d_sparse_forward_naive(float *out, const float *in, const ovs_csr *w,
                                    const float *bias, const float *residual, int64_t N,
                                    int64_t C, int64_t H, int64_t W, int64_t K, int64_t R,
                                    int64_t S, const ovs_conv2d_params *p, ovs_act act) {
    int64_t P = 0, Q = 0;
    int st = sparse_check("conv2d_sparse_forward_naive", out, in, w, N, C, H, W, K, R, S, p, act,
                          &P, &Q);
    if (st) return st;
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++)
            for (int64_t y = 0; y < P; y++)
                for (int64_t x = 0; x < Q; x++) {
                    double acc = bias ? bias[k] : 0.0;
                    for (int64_t j = w->row_ptr[k]; j < w->row_ptr[k + 1]; j++) {
                        int64_t l = w->col[j], c = l / (R * S), r = (l / S) % R, s = l % S;
                        int64_t iy = y * p->stride_h - p->pad_h + r * p->dil_h;
                        int64_t ix = x * p->stride_w - p->pad_w + s * p->dil_w;
                        if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                        acc += (double)w->val[j] * in[((n * C + c) * H + iy) * W + ix];
                    }
                    size_t o = (size_t)(((n * K + k) * P + y) * Q + x);
                    if (residual) acc += residual[o];
                    out[o] = (float)acc;
                }
    if (act != OVS_ACT_NONE && act != OVS_ACT_RELU) return ovs_act_forward_naive(out, N * K * P * Q, act);
    if (act == OVS_ACT_RELU)
        for (int64_t i = 0; i < N * K * P * Q; i++) out[i] = out[i] > 0 ? out[i] : 0.0f;
    return OVS_OK;
}

/* ---------------------------------------------------------------- fast */
/* The kernels of the ISA the GEMM uses (chosen from the CPU or forced by ovs_gemm_set_isa), so
 * one switch forces both in tests. */
static const ops_sparse_isa *sparse_isa(void) {
    const ops_gemm_isa *g = ops_gemm_current_isa();
    if (g == &ops_gemm_avx512 && ops_sparse_avx512.tile) return &ops_sparse_avx512;
    if (g == &ops_gemm_avx2 && ops_sparse_avx2.tile) return &ops_sparse_avx2;
    return &ops_sparse_portable;
}

/* The portable tile kernel: the contract of ops/sparse.h written out. */
static void portable_tile(const float *x, const int32_t *xo, const float *val,
                          const int64_t *js, const int64_t *je, int nr, float *t, int resume) {
    for (int u = 0; u < nr; u++) {
        float *tu = t + u * SP_TILE;
        if (!resume)
            for (int64_t i = 0; i < SP_TILE; i++) tu[i] = 0.0f;
        for (int64_t j = js[u]; j < je[u]; j++) {
            const float *s = x + xo[j];
            const float v = val[j];
            for (int64_t i = 0; i < SP_TILE; i++) tu[i] = fmaf(v, s[i], tu[i]);
        }
    }
}

static void portable_narrow(const float *x, const int32_t *xo, const float *val,
                            const int64_t *js, const int64_t *je, int nr, float *t, int resume,
                            int nv) {
    for (int u = 0; u < nr; u++) {
        float *tu = t + u * SP_TILE;
        if (!resume)
            for (int64_t i = 0; i < 16 * nv; i++) tu[i] = 0.0f;
        for (int64_t j = js[u]; j < je[u]; j++) {
            const float *s = x + xo[j];
            const float v = val[j];
            for (int64_t i = 0; i < 16 * nv; i++) tu[i] = fmaf(v, s[i], tu[i]);
        }
    }
}

const ops_sparse_isa ops_sparse_portable = {"portable", portable_tile, portable_narrow};

/* Layout of one call. The input is read from a zero-padded copy, (C, Hp, Wq) per copy, unless
 * the conv is 1x1 unpadded with at least one tile of positions and either its input is 64-byte
 * aligned with planes of whole 64-byte lines or it has few non-zeros (then from in itself,
 * nothing past the image read; see sp_geometry). Unaligned vector loads cost about twice aligned ones here, so where the grid
 * row Wp rounded up to 16 floats wastes little (Wq <= 1.2 Q) the copy is aligned: rows of Wq
 * floats, and one copy per kernel column s holding the input shifted left by s*dw, so that
 * every weight (c, r, s) reads whole aligned vectors at
 *     off(c, r, s) = s*copy + c*plane + r*dh*Wq.
 * Otherwise (small images) one copy with rows of Wp, off = c*plane + r*dh*Wp + s*dw. */
typedef struct {
    int copy;                 /* read from a padded copy */
    int64_t Hp, Wp;           /* padded input extent */
    int64_t Wq;               /* grid row width: the row stride of the copy (Wp or aligned) */
    int64_t ncopy;            /* copies: S (aligned, shifted) or 1 */
    int64_t plane;            /* floats per channel of a copy */
    size_t copy_floats;       /* floats per copy: C * plane */
    size_t pad_floats;        /* all copies incl. slack, + 16 for alignment (0 without a copy) */
    size_t off_floats;        /* the offset table (L int64) and the resolved offsets (nnz int32) */
    int64_t Lc, nch;          /* weight columns per input-channel slice, slices */
    size_t cost_floats;       /* the per-block cost prefix (blocks + 1 int64) and the slice
                               * starts of every row (K * (nch + 1) int64) */
} sp_layout;

/* Output rows per work item: their accumulators (SP_BLOCK x SP_TILE floats, 8 KiB) stay in L1
 * beside the input slice. */
#define SP_BLOCK SP_ROWS
/* Bytes of input a tile may read per slice of input channels: the slice stays in L1 (48 KiB
 * on Zen 5, 32 KiB on older cores) while every row of a block reads it. */
#define SP_SLICE_BYTES (32 * 1024)
#define SP_SLICE_NNZ 32
/* Work (non-zeros x grid positions; output elements for a fully pruned conv) below which a
 * call stays on the calling thread: waking a sleeping OpenMP worker (OMP_WAIT_POLICY=PASSIVE,
 * ovs's default) costs tens of microseconds on a VM, more than the second thread saves on the
 * nearly empty convs of a 90%-sparse RN50 (its res4 conv1s: 2 threads took 1.1-2x the time of
 * one, loaded machine). About the dense conv's own threshold (1e6 multiply-adds). */
#define SP_PAR_MIN ((int64_t)1 << 20)
#define SP_PAR_MIN_ZERO ((int64_t)1 << 18)

static int64_t round16(int64_t v) { return (v + 15) / 16 * 16; }

/* A tile reads the same 64 positions of every channel plane, so the plane stride decides which
 * L1/L2 sets its lines fall in: a stride of 2^k 64-byte lines puts the channels' lines in
 * 64 / 2^k of L1's 64 sets (8 ways each). At 64x64 and 128x128 maps (DeepLabV3's trunk at
 * 512^2: strides of 256 and 1024 lines) every channel hit the same sets, and a 1x1 conv with
 * 512 input channels and 23% of its weights ran at 12 useful GMAC/s against 27 at 14x14 (Zen
 * 4, 1 thread). sp_spread: planes of G floats (whole lines) reach at least 16 set offsets. */
static int sp_spread(int64_t G) {
    int64_t lines = G / 16, pow2 = 1;
    while (pow2 < 64 && lines % (2 * pow2) == 0) pow2 *= 2;
    return pow2 <= 4;
}

static int sp_geometry(int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                       int64_t nnz, const ovs_conv2d_params *p, const float *in, sp_layout *g) {
    const int direct = R == 1 && S == 1 && p->pad_h == 0 && p->pad_w == 0;
    g->Hp = H + 2 * p->pad_h;
    g->Wp = W + 2 * p->pad_w;
    const int64_t P = g->Hp - (R - 1) * p->dil_h, Q = g->Wp - (S - 1) * p->dil_w;  /* stride 1 */
    int aligned = Q > 0 && (direct ? 1 : round16(g->Wp) * 5 <= Q * 6);
    /* The S aligned copies write S - 1 more padded copies of the input per call (~1 ns per
     * float on large maps: DRAM-bound), which the aligned loads repay only with enough
     * non-zeros per tile (the unaligned loads of one copy cost ~0.8 ns more per non-zero and
     * tile). Measured on 3x3 convs, 10-47% density, 28x28 to 224x224 maps (1 thread, loaded
     * machine): one copy when 0.8 * nnz * tiles < (S - 1) * C * Hp * Wq took 0.49-0.95 of
     * the time of the aligned copies where it chose one copy (32x32 channels at 224x224, 10%:
     * 0.49; 64x64 at 112x112, 10%: 0.67), and the aligned copies were 1.0-1.2x faster where
     * it kept them (128x128 at 56x56, 25%: 1.18). */
    if (aligned && !direct && S > 1 && P > 0) {
        const double Wq = (double)round16(g->Wp);
        const double tiles = ceil((double)P * Wq / SP_TILE);
        if (4.0 * (double)nnz * tiles < 5.0 * (double)(S - 1) * (double)C * (double)g->Hp * Wq)
            aligned = 0;
    }
    g->Wq = aligned && !direct ? round16(g->Wp) : g->Wp;
    g->ncopy = aligned ? S : 1;
    g->plane = g->Hp * g->Wq;
    /* 1x1: copied planes of an odd number of 64-byte lines (see ops_odd_lines) */
    if (aligned && direct) g->plane = ops_odd_lines(g->plane);
    /* The shifted copies and the channel planes are read together by a tile; at strides of a
     * multiple of 4 KiB (RN50: 32 x 114 x 128 floats per copy at 112x112, 64 x 58 x 64 at 56x56)
     * their lines fall in the same L1 sets and evict each other. Skewed by 64 bytes per
     * channel plane and 21 lines per copy: 5-12% faster on RN50's 3x3 convs (loaded machine,
     * interleaved A/B, 1 thread). */
    const int skew = aligned && !direct;
    if (skew && g->plane % 256 == 0) g->plane += 16;
    /* A 1x1 unpadded conv reads its input in place (no copy; grid = image, G = H*W) when the
     * planes are whole 64-byte lines at an aligned input, or, from unaligned planes, when the
     * copy would cost more than the unaligned loads (~1 ns per float copied against ~0.8 ns
     * more per non-zero and tile; the nearly empty 1x1 convs of res4-res5 at 90%). If G is not
     * a whole number of tiles, its last tile is computed at G - SP_TILE (nothing read past the
     * image) and stores only its own positions: needs G >= SP_TILE. */
    g->copy = 1;
    if (direct && P > 0 && in) {
        const int64_t G = H * W, tiles = (G + SP_TILE - 1) / SP_TILE;
        const int whole = G % 16 == 0 && ((uintptr_t)in & 63) == 0 && sp_spread(G);
        if (G >= SP_TILE && (whole || 8.0 * (double)nnz * (double)tiles < 5.0 * (double)C * (double)G)) {
            g->copy = 0;
            g->plane = G;
        }
    }
    size_t L, copy, all;
    if (ovs_mul3_size(&L, (size_t)C, (size_t)R, (size_t)S) ||
        ovs_mul_size(&copy, (size_t)g->plane, (size_t)C) || copy > SIZE_MAX / 4 ||
        ovs_mul_size(&all, copy + (skew ? 336 : 0), (size_t)g->ncopy))
        return OVS_ERR_OVERFLOW;
    if (skew) copy += 336;   /* 21 lines */
    g->copy_floats = copy;
    /* slack after the last copy: a tile reads SP_TILE floats from a grid position that may be
     * the last one, past which the unaligned layout's shift adds (S-1)*dw */
    const size_t slack = (size_t)((S - 1) * p->dil_w) + SP_TILE + 16;
    g->pad_floats = g->copy ? all + slack : 0;
    g->off_floats = 2 * L + (size_t)nnz + 16;
    /* cache lines one input channel of a tile touches: R*S (aligned copies, 2 lines per run
     * of SP_TILE floats each) or R (one copy: the S shifted runs share ~3 lines) runs */
    const int64_t lines = g->ncopy > 1 ? R * S * (SP_TILE / 16) : R * (SP_TILE / 16 + 1);
    if (nnz < 0) return OVS_ERR_ARG;
    int64_t Cc = SP_SLICE_BYTES / (64 * lines);
    if (Cc < 1) Cc = 1;
    /* but a slice must leave each row enough non-zeros (SP_SLICE_NNZ on average) to pay for
     * reloading its accumulators */
    const int64_t most = K > 0 ? nnz / (K * SP_SLICE_NNZ) : 0;
    if (most < 1 || (C + Cc - 1) / Cc > most) Cc = most < 1 ? C : (C + most - 1) / most;
    if (Cc > C) Cc = C > 0 ? C : 1;
    if (Cc < 1) Cc = 1;
    g->nch = C > 0 ? (C + Cc - 1) / Cc : 1;
    g->Lc = Cc * R * S;
    size_t starts;
    if (ovs_mul_size(&starts, (size_t)K, (size_t)g->nch + 1)) return OVS_ERR_OVERFLOW;
    g->cost_floats = 2 * ((size_t)(K + SP_BLOCK - 1) / SP_BLOCK + 1 + starts) + 16;
    if (g->pad_floats > SIZE_MAX / 2 - g->off_floats - g->cost_floats - 32) return OVS_ERR_OVERFLOW;
    return OVS_OK;
}

size_t ovs_conv2d_sparse_scratch_floats(int64_t C, int64_t H, int64_t W, int64_t K, int64_t R,
                                        int64_t S, int64_t nnz, const ovs_conv2d_params *p) {
    if (!p || C < 0 || H < 0 || W < 0 || K < 0 || R < 1 || S < 1 || nnz < 0 || p->pad_h < 0 ||
        p->pad_w < 0 || p->dil_h < 1 || p->dil_w < 1)
        return 0;
    sp_layout g;
    /* in = NULL: the size with a copy, whatever the input's alignment */
    if (sp_geometry(C, H, W, K, R, S, nnz, p, NULL, &g)) return SIZE_MAX;
    /* +32: the tables start 64-byte aligned */
    return g.pad_floats + g.off_floats + g.cost_floats + 32;
}

/* The copies of one image x (C, H, W): copy s, channel c, row y' of Wq floats holds the padded
 * input row y' shifted left by shift*s (zeros outside the image). Plain loops, not libc calls:
 * the rows are short (7 to 240 floats). */
static void sp_pad(float *xpad, const float *x, int64_t C, int64_t H, int64_t W, int64_t ph,
                   int64_t pw, const sp_layout *g, int64_t shift, size_t slack) {
    const int64_t planes = g->ncopy * C, Hp = g->Hp, Wq = g->Wq;
    /* called by every thread of the forward's region: the planes are shared out */
#pragma omp for schedule(static)
    for (int64_t t = 0; t < planes; t++) {
        const int64_t s = t / C, c = t % C;
        float *d = xpad + (size_t)s * g->copy_floats + (size_t)c * g->plane;
        const float *src = x + (size_t)c * H * W;
        /* destination column q holds padded column q + s*shift = image column q + s*shift - pw */
        const int64_t lo = pw - s * shift;
        const int64_t q0 = lo > 0 ? (lo < Wq ? lo : Wq) : 0;
        const int64_t q1 = lo + W < Wq ? (lo + W > q0 ? lo + W : q0) : Wq;
        if (ph == 0 && pw == 0 && s == 0 && Wq == W) {  /* 1x1: whole planes */
            memcpy(d, src, (size_t)(H * W) * sizeof(float));
        } else {
            for (int64_t yp = 0; yp < Hp; yp++) {
                float *row = d + yp * Wq;
                const int64_t y = yp - ph;
                if (y < 0 || y >= H) {
                    for (int64_t q = 0; q < Wq; q++) row[q] = 0.0f;
                    continue;
                }
                const float *sr = src + y * W - lo;
                for (int64_t q = 0; q < q0; q++) row[q] = 0.0f;
                for (int64_t q = q0; q < q1; q++) row[q] = sr[q];
                for (int64_t q = q1; q < Wq; q++) row[q] = 0.0f;
            }
        }
        for (int64_t i = Hp * Wq; i < g->plane; i++) d[i] = 0.0f;  /* plane rounded up */
    }
#pragma omp single
    {
        memset(xpad + (size_t)g->ncopy * g->copy_floats, 0, slack * sizeof(float));
        for (int64_t s = 0; s < g->ncopy; s++)   /* the copies' skew gaps (tiles read into them) */
            memset(xpad + (size_t)s * g->copy_floats + (size_t)C * g->plane, 0,
                   (g->copy_floats - (size_t)C * g->plane) * sizeof(float));
    }
}

static inline float sp_finish(float v, float b, const float *r, ovs_act act) {
    v += b;
    if (r) v += *r;
    return act == OVS_ACT_RELU ? (v > 0.0f ? v : 0.0f) : v;
}

/* Grid positions [i0, i0 + width) of the (P, Wq) grid (Wq: the grid row) of the tile t (nk rows
 * of SP_TILE floats) to output rows [k0, k0 + nk) of o (K, P, Q): bias, residual and ReLU by the
 * conv epilogue the dense convolution uses (the ISA's store, ops/gemm.h: the same arithmetic
 * per element), one call per run of kept positions within a grid row. The grid columns q >= Q
 * are dropped. */
static void sp_store(ops_gemm_store_fn store, float *o, const float *res, const float *t,
                     const float *bias, int64_t k0, int64_t nk, int64_t i0, int64_t width,
                     int64_t Wq, int64_t P, int64_t Q, ovs_act act) {
    const int64_t PQ = P * Q;
    const float *b = bias ? bias + k0 : NULL;
    int64_t y = i0 / Wq, q = i0 % Wq, i = 0;
    if (Wq == Q) {   /* grid = output (1x1): one run */
        y = 0;
        q = i0;
    }
    while (i < width) {
        const int64_t run = Wq == Q ? width : Wq - q < width - i ? Wq - q : width - i;
        const int64_t keep = Wq == Q ? run : q < Q ? (Q - q < run ? Q - q : run) : 0;
        for (int64_t c = 0; c < keep; c += OPS_GEMM_NR_MAX) {  /* the store's widest run */
            const size_t at = (size_t)k0 * PQ + (size_t)(y * Q + q + c);
            const int64_t n = keep - c < OPS_GEMM_NR_MAX ? keep - c : OPS_GEMM_NR_MAX;
            store(o + at, PQ, t + i + c, SP_TILE, nk, n, b, res ? res + at : NULL, PQ, act);
        }
        i += run;
        q = 0;
        y++;
    }
}

/* off (L,): the input offset of weight column l = (c, r, s) in the layout g. */
static void sp_offsets(int64_t *off, int64_t C, int64_t R, int64_t S, const ovs_conv2d_params *p,
                       const sp_layout *g) {
    for (int64_t l = 0; l < C * R * S; l++) {
        const int64_t c = l / (R * S), r = (l / S) % R, s = l % S;
        off[l] = c * g->plane + r * p->dil_h * g->Wq +
                 (g->ncopy > 1 ? s * (int64_t)g->copy_floats : s * p->dil_w);
    }
}

/* Every non-zero's input offset xo (from the per-column table off) and the slice starts of every
 * row (see the forward). An orphaned work-shared loop, called inside a parallel region of the
 * forward: its threads share it (ending with a barrier). */
static void sp_tables(const ovs_csr *w, const int64_t *off, int32_t *xo, int64_t *start,
                      int64_t nch, int64_t Lc) {
    const int64_t ns = nch + 1;
#pragma omp for schedule(static)
    for (int64_t k = 0; k < w->rows; k++) {
        for (int64_t j = w->row_ptr[k]; j < w->row_ptr[k + 1]; j++) xo[j] = (int32_t)off[w->col[j]];
        int64_t *sk = start + k * ns;
        sk[0] = w->row_ptr[k];
        sk[nch] = w->row_ptr[k + 1];
        for (int64_t h = 1; h < nch; h++) {  /* first j >= sk[h-1] with col[j] >= h*Lc */
            int64_t lo = sk[h - 1], hi = sk[nch];
            while (lo < hi) {
                const int64_t mid = lo + (hi - lo) / 2;
                if ((int64_t)w->col[mid] < h * Lc) lo = mid + 1; else hi = mid;
            }
            sk[h] = lo;
        }
    }
}

void ovs_sparse_plan_free(ovs_sparse_plan *plan) {
    if (!plan) return;
    ovs_free(plan->block);
    memset(plan, 0, sizeof *plan);
}

static int sparse_forward(float *out, const float *in, const ovs_csr *w, const float *bias,
                          const float *residual, int64_t N, int64_t C, int64_t H, int64_t W,
                          int64_t K, int64_t R, int64_t S, const ovs_conv2d_params *p,
                          ovs_act act, float *scratch, ovs_sparse_plan *plan) {
    const char *op = "conv2d_sparse_forward";
    int64_t P = 0, Q = 0;
    int st = sparse_check(op, out, in, w, N, C, H, W, K, R, S, p, act, &P, &Q);
    if (st) return st;
    if (p->stride_h != 1 || p->stride_w != 1)
        return ovs_set_error(OVS_ERR_UNSUPPORTED, "%s: stride must be 1, got %lldx%lld", op,
                             (long long)p->stride_h, (long long)p->stride_w);
    if (N == 0 || K == 0 || P == 0 || Q == 0) return OVS_OK;
    if (w->nnz == 0) {  /* a fully pruned conv: bias, residual and activation only */
        const int64_t PQ = P * Q;
#pragma omp parallel for schedule(static) if (N * K * PQ >= SP_PAR_MIN_ZERO) num_threads(ovs_get_num_threads())
        for (int64_t nk = 0; nk < N * K; nk++) {
            float *o = out + nk * PQ;
            const float *r = residual ? residual + nk * PQ : NULL;
            const float b = bias ? bias[nk % K] : 0.0f;
            if (r)
                for (int64_t i = 0; i < PQ; i++) o[i] = sp_finish(0.0f, b, r + i, act);
            else
                for (int64_t i = 0; i < PQ; i++) o[i] = sp_finish(0.0f, b, NULL, act);
        }
        if (act != OVS_ACT_NONE && act != OVS_ACT_RELU) return ovs_act_forward(out, N * K * PQ, act);
        return OVS_OK;
    }
    sp_layout g;
    if (sp_geometry(C, H, W, K, R, S, w->nnz, p, in, &g))
        return ovs_set_error(OVS_ERR_OVERFLOW, "%s: padded input size overflows", op);
    if ((size_t)g.ncopy * g.copy_floats + SP_TILE + 64 > (size_t)INT32_MAX)
        return ovs_set_error(OVS_ERR_UNSUPPORTED,
                             "%s: input of %lld x %lld x %lld too large (offsets are 32-bit)", op,
                             (long long)C, (long long)H, (long long)W);
    if (!scratch) return ovs_set_error(OVS_ERR_ARG, "%s: scratch is NULL", op);
    const int64_t Wq = g.Wq, L = C * R * S;
    float *xpad = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    int64_t *off = (int64_t *)(((uintptr_t)(scratch + g.pad_floats) + 63) & ~(uintptr_t)63);
    int32_t *xo = (int32_t *)(((uintptr_t)(off + L) + 63) & ~(uintptr_t)63);
    int64_t *cost = (int64_t *)(((uintptr_t)(xo + w->nnz) + 63) & ~(uintptr_t)63);
    /* Slice starts: row k's non-zeros of slice h (columns [h*Lc, (h+1)*Lc)) are
     * [start[k*(nch+1) + h], start[k*(nch+1) + h + 1]); columns ascend within a row. */
    const int64_t nch = g.nch, Lc = g.Lc, ns = nch + 1;
    int64_t *start = (int64_t *)(((uintptr_t)(cost + (K + SP_BLOCK - 1) / SP_BLOCK + 1) + 63) &
                                 ~(uintptr_t)63);
    /* With a plan, xo and start come from it, built here when the geometry (or the weight)
     * differs from the one it holds. */
    int tables_ready = 0;
    if (plan) {
        const int same = plan->block && plan->col == w->col && plan->nnz == w->nnz &&
                         plan->rows == K && plan->C == C && plan->H == H && plan->W == W &&
                         plan->R == R && plan->S == S && plan->pad_h == p->pad_h &&
                         plan->pad_w == p->pad_w && plan->dil_h == p->dil_h &&
                         plan->dil_w == p->dil_w && plan->copy == g.copy && plan->nch == nch;
        if (!same) {
            ovs_sparse_plan_free(plan);
            size_t bytes;
            if (ovs_mul_size(&bytes, (size_t)K, (size_t)ns * sizeof(int64_t)) ||
                bytes > SIZE_MAX - (size_t)w->nnz * sizeof(int32_t) - 64)
                return ovs_set_error(OVS_ERR_OVERFLOW, "%s: plan size overflows", op);
            bytes += (size_t)w->nnz * sizeof(int32_t) + 64;
            if (!(plan->block = ovs_malloc(bytes)))
                return ovs_set_error(OVS_ERR_NOMEM, "%s: out of memory for the plan (%zu bytes)",
                                     op, bytes);
            plan->start = (int64_t *)plan->block;
            plan->xo = (int32_t *)(((uintptr_t)(plan->start + K * ns) + 63) & ~(uintptr_t)63);
            sp_offsets(off, C, R, S, p, &g);
            /* its own region, so that the work-shared loop never binds to a caller's team */
            int32_t *pxo = plan->xo;
            int64_t *pstart = plan->start;
#pragma omp parallel num_threads(ovs_get_num_threads())
            sp_tables(w, off, pxo, pstart, nch, Lc);
            plan->col = w->col;
            plan->nnz = w->nnz;
            plan->rows = K;
            plan->C = C, plan->H = H, plan->W = W, plan->R = R, plan->S = S;
            plan->pad_h = p->pad_h, plan->pad_w = p->pad_w, plan->dil_h = p->dil_h,
            plan->dil_w = p->dil_w;
            plan->copy = g.copy;
            plan->nch = nch;
        }
        xo = plan->xo;
        start = plan->start;
        tables_ready = 1;
    } else {
        sp_offsets(off, C, R, S, p, &g);
    }
    /* Work items are (tile, block of SP_BLOCK output rows), tile-major so that a tile's input
     * stays in cache while every block reads it; within an item, slice by slice of input
     * channels, every group of SP_ROWS rows advances its accumulators (the slice's input in
     * L1). Threads take contiguous runs of items of equal cost (non-zeros + a fixed epilogue
     * share), so the rows' non-zeros balance the threads. */
    const int64_t blocks = (K + SP_BLOCK - 1) / SP_BLOCK;
    cost[0] = 0;
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t k = SP_BLOCK * b, e = k + SP_BLOCK < K ? k + SP_BLOCK : K;
        cost[b + 1] = cost[b] + (w->row_ptr[e] - w->row_ptr[k]) + 2 * (e - k);
    }
    const int64_t G = P * Wq, tiles = (G + SP_TILE - 1) / SP_TILE, per_tile = cost[blocks];
    const size_t in_img = (size_t)C * H * W, out_img = (size_t)K * P * Q;
    const ops_sparse_isa *isa = sparse_isa();
    /* the epilogue: the dense conv's (its ReLU; other activations after, over the whole output) */
    const ops_gemm_store_fn store = ops_gemm_current_isa()->store;
    const ovs_act eact = act == OVS_ACT_RELU ? OVS_ACT_RELU : OVS_ACT_NONE;
    const int par = (double)w->nnz * (double)G >= (double)SP_PAR_MIN && tiles * blocks > 1;
    /* One parallel region per call: the offsets, the copies of each image and the items. */
#pragma omp parallel if (par) num_threads(ovs_get_num_threads())
    {
        /* every non-zero's input offset, resolved once per call (or per plan); the loop's
         * implicit barrier publishes xo and start */
        if (!tables_ready) sp_tables(w, off, xo, start, nch, Lc);
        const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
        const int64_t total = tiles * per_tile;
        const int64_t lo = total / nt * tid + (total % nt) * tid / nt;
        const int64_t hi = tid + 1 == nt ? total : total / nt * (tid + 1) + (total % nt) * (tid + 1) / nt;
        /* the first item whose cost range starts at or after lo */
        int64_t tile0 = lo / per_tile, rem = lo % per_tile, bl = 0, bh = blocks;
        while (bl < bh) {
            const int64_t mid = (bl + bh) / 2;
            if (cost[mid] < rem) bl = mid + 1; else bh = mid;
        }
        int64_t b0 = bl;
        if (b0 == blocks) { b0 = 0; tile0++; }
        float t[SP_BLOCK * SP_TILE] __attribute__((aligned(64)));
        int64_t js[SP_ROWS], je[SP_ROWS];
        for (int64_t n = 0; n < N; n++) {
            const float *x = in + n * in_img;
            if (g.copy) {  /* every thread takes part; ends with a barrier */
                sp_pad(xpad, x, C, H, W, p->pad_h, p->pad_w, &g, g.ncopy > 1 ? p->dil_w : 0,
                       g.pad_floats - 16 - (size_t)g.ncopy * g.copy_floats);
                x = xpad;
            }
            float *o = out + n * out_img;
            const float *res = residual ? residual + n * out_img : NULL;
            int64_t tile = tile0, b = b0;
            for (; tile < tiles && tile * per_tile + cost[b] < hi;) {
                const int64_t i0 = tile * SP_TILE, width = G - i0 < SP_TILE ? G - i0 : SP_TILE;
                const int64_t k0 = SP_BLOCK * b, nk = K - k0 < SP_BLOCK ? K - k0 : SP_BLOCK;
                /* a last, partial tile of up to 48 positions: only its 16-float vectors (nv);
                 * read in place, it ends at G (see sp_geometry) */
                const int nv = width < SP_TILE && isa->narrow ? (int)((width + 15) / 16) : 4;
                const int64_t span = nv < 4 ? 16 * (int64_t)nv : SP_TILE;
                const int64_t ic = g.copy || i0 + span <= G ? i0 : G - span;
                for (int64_t h = 0; h < nch; h++) {
                    for (int64_t u = 0; u < nk; u++) {
                        js[u] = start[(k0 + u) * ns + h];
                        je[u] = start[(k0 + u) * ns + h + 1];
                    }
                    if (nv < 4)
                        isa->narrow(x + ic, xo, w->val, js, je, (int)nk, t, (int)(h > 0), nv);
                    else
                        isa->tile(x + ic, xo, w->val, js, je, (int)nk, t, (int)(h > 0));
                }
                sp_store(store, o, res, t + (i0 - ic), bias, k0, nk, i0, width, Wq, P, Q, eact);
                if (++b == blocks) { b = 0; tile++; }
            }
            /* the next image's copy overwrites xpad */
            if (N > 1 && g.copy) {
#pragma omp barrier
            }
        }
    }
    if (act != OVS_ACT_NONE && act != OVS_ACT_RELU) return ovs_act_forward(out, N * K * P * Q, act);
    return OVS_OK;
}

int ovs_conv2d_sparse_forward(float *out, const float *in, const ovs_csr *w, const float *bias,
                              const float *residual, int64_t N, int64_t C, int64_t H, int64_t W,
                              int64_t K, int64_t R, int64_t S, const ovs_conv2d_params *p,
                              ovs_act act, float *scratch) {
    return sparse_forward(out, in, w, bias, residual, N, C, H, W, K, R, S, p, act, scratch, NULL);
}

int ovs_conv2d_sparse_forward_planned(float *out, const float *in, const ovs_csr *w,
                                      const float *bias, const float *residual, int64_t N,
                                      int64_t C, int64_t H, int64_t W, int64_t K, int64_t R,
                                      int64_t S, const ovs_conv2d_params *p, ovs_act act,
                                      float *scratch, ovs_sparse_plan *plan) {
    if (!plan) return ovs_set_error(OVS_ERR_ARG, "conv2d_sparse_forward_planned: plan is NULL");
    return sparse_forward(out, in, w, bias, residual, N, C, H, W, K, R, S, p, act, scratch, plan);
}
