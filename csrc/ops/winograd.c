/* Winograd F(2x2, 3x3) and F(4x4, 3x3) convolution (Lavin & Gray, "Fast Algorithms for
 * Convolutional Neural Networks", 2016) for 3x3, stride-1, undilated, ungrouped convs, on the
 * packed-GEMM micro-kernels. Dimension letters as in include/ovs/ops.h; m = 2 or 4 is the output
 * tile, n = m + 2 the input patch, XI = n*n the transformed positions (16 or 36), indexed
 * xi = n*a + b; T = N * TH * TW output tiles of m x m (TH = ceil(P/m), TW = ceil(Q/m)).
 *
 * Per tile and output channel k:  Y (m x m) = A^T [ sum_c U_kc .* V_c ] A  with
 *     U_kc = G g_kc G^T (n x n, the weights, transformed once per call),
 *     V_c  = B^T d_c B  (n x n, d_c the input patch rows m*ty-ph.., columns m*tx-pw.., zero
 *     outside). F(2x2):
 *     G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],  B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],
 *     A^T = [1 1 1 0; 0 1 -1 -1];
 *     F(4x4) (interpolation points 0, 1, -1, 1/2, -2, infinity: float32 error about 0.6x
 *     (rms; 0.45x max) that of the common 0, 1, -1, 2, -2, after Barabasz et al., "Error
 *     analysis and improving the accuracy of Winograd convolution for DNNs", 2020):
 *     G = [1 0 0; 1/3 1/3 1/3; -1/3 1/3 -1/3; -16/15 -8/15 -4/15; 1/15 -2/15 4/15; 0 0 1],
 *     B^T = [1 -1.5 -2 1.5 1 0; 0 -1 .5 2.5 1 0; 0 1 -2.5 .5 1 0; 0 -2 -1 2 1 0;
 *            0 .5 -1 -.5 1 0; 0 1 -1.5 -2 1.5 1],
 *     A^T = [1 1 1 1 1 0; 0 1 -1 .5 -2 0; 0 1 1 .25 4 0; 0 1 -1 .125 -8 1].
 * The sum over c is, for each xi, a GEMM M_xi (K, T) = U_xi (K, C) @ V_xi (C, T): run on the
 * ISA's panel kernel (ops/gemm.h; U_xi packed as the left operand, V_xi in 16-column panels),
 * one fmaf chain over c in increasing order per element. Every transform is a fixed sequence of
 * float operations (no contraction: the build is ISO C, -ffp-contract=off), written in the
 * order of the matrix products above (left factor first, terms with a zero coefficient left
 * out, the others added in increasing index order), so the result is bitwise that of the naive
 * twin (ovs_conv2d_forward_naive with algo WINOGRAD / WINOGRAD4, naive.c; up to the activation
 * code and the sign of zeros) and independent of chunking, thread count and ISA.
 *
 * Work: tiles in chunks of NT (a multiple of the kernel width: V of a chunk ~1 MiB, smaller for
 * ~4 chunks per thread);
 * a thread takes a chunk whole: input transform into its V (XI, NT/16, C, 16), then per block of
 * mr output channels the XI GEMMs into its M (XI, NT/NB, mr, NB) and the output transform with
 * (Y + bias) [+ residual], act fused, straight into out. No barrier inside the region. */
#include "ops/gemm.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define WG_XI 36   /* at most: F(4x4) */
#define WG_V_FLOATS ((int64_t)1 << 18)   /* V of one chunk: about 1 MiB */
#define WG_KPART_TILES 128               /* at most this many tiles: threads split K instead */
#define WG_PF_AHEAD 16                   /* a weight block's channels prefetched ahead (below) */

/* V, M and U are strided between their XI positions by ops_odd_lines: the transforms write
 * (and read) the XI positions of one element together, and with a stride of 2^k lines (64 KiB
 * for V of 64 tiles x 256 channels) all XI streams fell in the same L1 set (8 ways): the
 * weight transform's stores were 16% of a 256-channel 28x28 conv. */
/* a packed weight block (OVS_CONV_PACK_MR rows) is read whole into the transform's lanes */
_Static_assert(OVS_CONV_PACK_MR <= OPS_GEMM_MR_MAX, "a packed weight block fits the lanes");

int ops_conv2d_winograd_supported(int64_t R, int64_t S, const ovs_conv2d_params *p) {
    return R == 3 && S == 3 && p->stride_h == 1 && p->stride_w == 1 && p->dil_h == 1 &&
           p->dil_w == 1 && p->groups == 1;
}

/* F(4x4)'s fractions in G (naive.c's table holds the same float constants). */
#define WG_C3 (1.0f / 3.0f)
#define WG_C1_15 (1.0f / 15.0f)
#define WG_C2_15 (2.0f / 15.0f)
#define WG_C4_15 (4.0f / 15.0f)
#define WG_C8_15 (8.0f / 15.0f)
#define WG_C16_15 (16.0f / 15.0f)

/* The 1-D transforms of F(4x4), each a fixed sequence of float operations in the order of the
 * matrix product (naive.c: acc = 0, acc += L[i] * x[i] over the non-zero L[i]). */
#define WG_G4(o, x0, x1, x2, i)                                                                  \
    do {                                                                                         \
        o[0 * (i)] = (x0);                                                                       \
        o[1 * (i)] = (WG_C3 * (x0) + WG_C3 * (x1)) + WG_C3 * (x2);                               \
        o[2 * (i)] = (-WG_C3 * (x0) + WG_C3 * (x1)) - WG_C3 * (x2);                              \
        o[3 * (i)] = (-WG_C16_15 * (x0) - WG_C8_15 * (x1)) - WG_C4_15 * (x2);                    \
        o[4 * (i)] = (WG_C1_15 * (x0) - WG_C2_15 * (x1)) + WG_C4_15 * (x2);                      \
        o[5 * (i)] = (x2);                                                                       \
    } while (0)
#define WG_BT4(o0, o1, o2, o3, o4, o5, d0, d1, d2, d3, d4, d5)                                   \
    do {                                                                                         \
        o0 = ((((d0) - 1.5f * (d1)) - 2.0f * (d2)) + 1.5f * (d3)) + (d4);                        \
        o1 = ((-(d1) + 0.5f * (d2)) + 2.5f * (d3)) + (d4);                                       \
        o2 = (((d1) - 2.5f * (d2)) + 0.5f * (d3)) + (d4);                                        \
        o3 = ((-2.0f * (d1) - (d2)) + 2.0f * (d3)) + (d4);                                       \
        o4 = ((0.5f * (d1) - (d2)) - 0.5f * (d3)) + (d4);                                        \
        o5 = ((((d1) - 1.5f * (d2)) - 2.0f * (d3)) + 1.5f * (d4)) + (d5);                        \
    } while (0)
#define WG_AT4(o0, o1, o2, o3, m0, m1, m2, m3, m4, m5)                                           \
    do {                                                                                         \
        o0 = ((((m0) + (m1)) + (m2)) + (m3)) + (m4);                                             \
        o1 = (((m1) - (m2)) + 0.5f * (m3)) - 2.0f * (m4);                                        \
        o2 = (((m1) + (m2)) + 0.25f * (m3)) + 4.0f * (m4);                                       \
        o3 = ((((m1) - (m2)) + 0.125f * (m3)) - 8.0f * (m4)) + (m5);                             \
    } while (0)

/* u[xi][r] = (G g_r G^T)[xi] for the kernels g[i][r] (3x3 row-major in i), r < mr; F(2x2).
 * Every lane r < OPS_GEMM_MR_MAX is computed (a fixed trip count, vectorised; lanes past the
 * ISA's mr hold zeros), each lane on its own. */
#define WG_LANES OPS_GEMM_MR_MAX
static inline void wg_weight2(float u[WG_XI][OPS_GEMM_MR_MAX],
                              const float g[9][OPS_GEMM_MR_MAX]) {
    const int64_t mr = WG_LANES;
    float t[12][OPS_GEMM_MR_MAX];   /* (4, 3) = G g */
    for (int j = 0; j < 3; j++)
        for (int64_t r = 0; r < mr; r++) {
            t[j][r] = g[j][r];
            t[3 + j][r] = (0.5f * g[j][r] + 0.5f * g[3 + j][r]) + 0.5f * g[6 + j][r];
            t[6 + j][r] = (0.5f * g[j][r] - 0.5f * g[3 + j][r]) + 0.5f * g[6 + j][r];
            t[9 + j][r] = g[6 + j][r];
        }
    for (int a = 0; a < 4; a++)
        for (int64_t r = 0; r < mr; r++) {
            const float t0 = t[3 * a][r], t1 = t[3 * a + 1][r], t2 = t[3 * a + 2][r];
            u[4 * a][r] = t0;
            u[4 * a + 1][r] = (0.5f * t0 + 0.5f * t1) + 0.5f * t2;
            u[4 * a + 2][r] = (0.5f * t0 - 0.5f * t1) + 0.5f * t2;
            u[4 * a + 3][r] = t2;
        }
}

/* The same for F(4x4): u (36, mr). */
static inline void wg_weight4(float u[WG_XI][OPS_GEMM_MR_MAX],
                              const float g[9][OPS_GEMM_MR_MAX]) {
    float t[18][OPS_GEMM_MR_MAX];   /* (6, 3) = G g */
    for (int j = 0; j < 3; j++)
        for (int r = 0; r < WG_LANES; r++)
            WG_G4((&t[j][r]), g[j][r], g[3 + j][r], g[6 + j][r], 3 * OPS_GEMM_MR_MAX);
    for (int a = 0; a < 6; a++)
        for (int r = 0; r < WG_LANES; r++)
            WG_G4((&u[6 * a][r]), t[3 * a][r], t[3 * a + 1][r], t[3 * a + 2][r], OPS_GEMM_MR_MAX);
}

/* Block kb of the transformed weights (rows kb*mr.., zeros past K) into dst, position xi at
 * dst + xi*xs: dst[xi*xs + c*mr + r] = (G g_{kb*mr+r, c} G^T)[xi]. */
static void wg_transform_block(float *dst0, int64_t xs, const ovs_matrix *w, int64_t K,
                               int64_t C, int64_t mr, int64_t m, int64_t kb) {
    const int64_t L = 9 * C, XI = (m + 2) * (m + 2);
    /* W[k, l] at w->data[wrow(k) + l * ws]: dense rows, or the conv-packed blocks (1 group) */
    const int packed = w->format == OVS_MATRIX_CONV_PACKED;
    const int64_t ws = packed ? OVS_CONV_PACK_MR : 1;
    {
        const int64_t mk = K - kb * mr < mr ? K - kb * mr : mr;
        /* the lanes no row fills (past OVS_CONV_PACK_MR, or past mk) stay zero: set once (zeroed
         * per channel, it was a memset per channel: 512 channels at 7x7 took 1.23x as long,
         * 1 thread, weights in cache) */
        float g[9][OPS_GEMM_MR_MAX] = {{0}}, u[WG_XI][OPS_GEMM_MR_MAX];
        for (int64_t c = 0; c < C; c++) {
            int64_t off = 0;   /* lane of row kb*mr */
            if (packed) {
                /* the whole packed block of OVS_CONV_PACK_MR rows holding rows kb*mr.. (mr
                 * divides it): contiguous per tap, lanes off.. are ours */
                const int64_t k0 = kb * mr;
                const float *src = w->data + (k0 / ws) * ws * L + c * 9 * ws;
                off = k0 % ws;
                if (c + WG_PF_AHEAD < C) {   /* the block is contiguous, cold in a forward: the
                                               * loads of src were half this function's time
                                               * (RN50 224^2 trunk: ~1% of it, Zen 4) */
                    const char *p = (const char *)(src + WG_PF_AHEAD * 9 * ws);
                    for (int64_t o = 0; o < 9 * ws * (int64_t)sizeof(float); o += 64)
                        __builtin_prefetch(p + o, 0, 3);
                }
                for (int i = 0; i < 9; i++)
                    for (int r = 0; r < OVS_CONV_PACK_MR; r++) g[i][r] = src[i * ws + r];
            } else {
                for (int64_t r = 0; r < mk; r++) {
                    const float *src = w->data + (kb * mr + r) * L + c * 9;
                    for (int i = 0; i < 9; i++) g[i][r] = src[i];
                }
            }
            if (m == 4)
                wg_weight4(u, g);
            else
                wg_weight2(u, g);
            /* a whole block: constant-size copies (inlined vector moves; the per-lane loop
             * with its r < mk test was most of this function's time) */
#define WG_COPY_LANES(n)                                                                  \
    for (int64_t xi = 0; xi < XI; xi++)                                                   \
        memcpy(dst0 + xi * xs + c * (n), &u[xi][off], (n) * sizeof(float))
            if (mk == mr && mr == 12) {
                WG_COPY_LANES(12);
            } else if (mk == mr && mr == 6) {
                WG_COPY_LANES(6);
            } else if (mk == mr && mr == 4) {
                WG_COPY_LANES(4);
            } else {
                for (int64_t xi = 0; xi < XI; xi++) {
                    float *dst = dst0 + xi * xs + c * mr;
                    for (int64_t r = 0; r < mr; r++) dst[r] = r < mk ? u[xi][off + r] : 0.0f;
                }
            }
#undef WG_COPY_LANES
        }
    }
}

/* The raw weight's floats that wg_transform_block reads for the block of rows k0.. (k0 a
 * multiple of mr): at *n floats from the returned start (dense rows: the block's own; packed:
 * the whole block of OVS_CONV_PACK_MR rows holding them, interleaved). */
static const float *wg_weight_rows(const ovs_matrix *w, int64_t K, int64_t k0, int64_t mr, int64_t L,
                                   int64_t *n) {
    const int64_t ws = w->format == OVS_MATRIX_CONV_PACKED ? OVS_CONV_PACK_MR : mr;
    const int64_t r0 = k0 / ws * ws, rows = K - r0 < ws ? K - r0 : ws;
    *n = rows * L;
    return w->data + r0 * L;
}

/* U (XI, uxs >= KB*C*mr) = the transformed weights, block kb holding rows kb*mr.. (zeros past
 * K): U[xi*uxs + (kb*C + c)*mr + r] = (G g_{kb*mr+r, c} G^T)[xi]. */
static void wg_transform_weights(float *U, int64_t uxs, const ovs_matrix *w, int64_t K, int64_t C,
                                 int64_t mr, int64_t m, int threads) {
    const int64_t KB = (K + mr - 1) / mr;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && KB > 1 && 9 * K * C >= OPS_PAR_MIN)
    for (int64_t kb = 0; kb < KB; kb++)
        wg_transform_block(U + kb * C * mr, uxs, w, K, C, mr, m, kb);
}

typedef struct {
    const float *in;         /* (N, C, H, W) */
    const float *U;          /* (XI, KB, C, mr) */
    const float *bias;       /* (K,) or NULL */
    const float *res;        /* (N, K, P, Q) or NULL; may equal out */
    float *out;              /* (N, K, P, Q) */
    int64_t C, H, W, K, P, Q, ph, pw;
    int64_t m, XI;           /* output tile m x m, XI = (m + 2)^2 transformed positions */
    int64_t TH, TW, T;       /* tiles per column / row / in all */
    int64_t NT, NB, mr, KB;  /* a chunk's buffer tiles (multiple of NB), kernel width, height */
    int64_t CT;              /* tiles per chunk (<= NT): chunk ch is tiles [ch*CT, ch*CT + CT) */
    int64_t vxs, mxs;        /* V's and M's strides between positions xi (ops_odd_lines) */
    const int64_t *aoff, *boff; /* (C,) each: c * mr and c * 16, the narrow kernel's offsets */
    ovs_act act;
} wg_job;

/* Consecutive tiles of one tile row, within one 16-column panel of V. */
typedef struct {
    int64_t i0, len;         /* chunk-local index of its first tile, tiles (1..16) */
    int64_t n, ty, tx0;      /* image, tile row, tile column of its first tile */
} wg_piece;

/* One thread's buffers. */
typedef struct {
    float *V;                /* (XI, vxs): each (NT/16, C, 16) */
    float *M;                /* (XI, mxs): each (NT/NB, mr, NB) */
    wg_piece *pieces;        /* (NT,) the chunk's pieces in order */
    int64_t npieces;
} wg_bufs;

/* The chunk's tiles [t0, t0 + nt) cut into pieces. */
static void wg_cut(const wg_job *j, wg_bufs *b, int64_t t0, int64_t nt) {
    int64_t np = 0;
    for (int64_t i = 0; i < nt;) {
        const int64_t t = t0 + i, tx = t % j->TW;
        int64_t len = j->TW - tx;                   /* to the end of the tile row */
        if (len > 16 - i % 16) len = 16 - i % 16;   /* to the end of the panel */
        if (len > nt - i) len = nt - i;
        b->pieces[np++] = (wg_piece){i, len, t / (j->TH * j->TW), (t / j->TW) % j->TH, tx};
        i += len;
    }
    b->npieces = np;
}

/* A piece's patch rows y0 .. y0 + rows of channel c of image n, read in place: d[r] points at
 * patch column u0 (image column x0 + u0), or at zeros for a row outside the image (or no
 * column inside it); and t[a][u] = 0 for the columns u outside [u0, u1) (a < rows, ts floats
 * per row of t, wd columns), where B^T d is zero. */
static inline void wg_patch_rows(const wg_job *j, const float **d, int rows, int64_t n,
                                 int64_t c, int64_t y0, int64_t x0, int64_t u0, int64_t u1,
                                 const float *zeros, float *t, int64_t ts, int64_t wd) {
    for (int r = 0; r < rows; r++) {
        const int64_t y = y0 + r;
        d[r] = y >= 0 && y < j->H && u1 > u0
                   ? j->in + ((n * j->C + c) * j->H + y) * j->W + x0 + u0
                   : zeros;
    }
    for (int a = 0; a < rows; a++) {
        for (int64_t u = 0; u < u0; u++) t[a * ts + u] = 0.0f;
        for (int64_t u = u1 > u0 ? u1 : u0; u < wd; u++) t[a * ts + u] = 0.0f;
    }
}

/* V of the chunk's tiles, F(2x2). A piece's patches are the columns
 * [2*tx0 - pw, 2*tx0 - pw + 2*len + 2) of 4 input rows, read in place (rows outside the image
 * read zeros; outside the columns [u0, u1) that lie inside it B^T d is zero): B^T applied down
 * the rows first (over contiguous floats), then across each tile's 4 columns, from the even and
 * odd columns. */
static void wg_input2(const wg_job *j, const wg_bufs *b, int64_t c0, int64_t c1) {
    const int64_t C = j->C;
    const int64_t xs = j->vxs;   /* V's stride between positions xi */
    static const float zeros[34];   /* rows outside the image */
    for (int64_t pi = 0; pi < b->npieces; pi++) {
        const wg_piece *pc = &b->pieces[pi];
        const int64_t len = pc->len, wd = 2 * len + 2, y0 = 2 * pc->ty - j->ph;
        const int64_t x0 = 2 * pc->tx0 - j->pw;
        const int64_t pan = pc->i0 / 16, s0 = pc->i0 % 16;
        const int64_t u0 = x0 < 0 ? -x0 : 0, u1 = x0 + wd > j->W ? j->W - x0 : wd;
        for (int64_t c = c0; c < c1; c++) {
            const float *d[4];   /* d[r][u - u0]: patch row r, column u */
            float t[4][34];      /* B^T d */
            wg_patch_rows(j, d, 4, pc->n, c, y0, x0, u0, u1, zeros, &t[0][0], 34, wd);
            const float *d0 = d[0] - u0, *d1 = d[1] - u0, *d2 = d[2] - u0, *d3 = d[3] - u0;
            for (int64_t u = u0; u < u1; u++) {
                t[0][u] = d0[u] - d2[u];
                t[1][u] = d1[u] + d2[u];
                t[2][u] = d2[u] - d1[u];
                t[3][u] = d1[u] - d3[u];
            }
            float *v = b->V + (pan * C + c) * 16 + s0;
            for (int a = 0; a < 4; a++) {
                const float *ta = t[a];
                float *v0 = v + (4 * a) * xs, *v1 = v0 + xs, *v2 = v1 + xs, *v3 = v2 + xs;
#pragma omp simd   /* v0..v3 are disjoint runs of V */
                for (int64_t s = 0; s < len; s++) {
                    const float e0 = ta[2 * s], o0 = ta[2 * s + 1], e1 = ta[2 * s + 2],
                                o1 = ta[2 * s + 3];
                    v0[s] = e0 - e1;
                    v1[s] = o0 + e1;
                    v2[s] = e1 - o0;
                    v3[s] = o0 - o1;
                }
            }
        }
    }
}

/* V of the chunk's tiles, F(4x4): a piece's patches are the columns
 * [4*tx0 - pw, 4*tx0 - pw + 4*len + 2) of 6 input rows; B^T down the rows first (contiguous
 * floats), then across each tile's 6 columns, from the rows split into their 4 column phases. */
static void wg_input4(const wg_job *j, const wg_bufs *b, int64_t c0, int64_t c1) {
    const int64_t C = j->C;
    const int64_t xs = j->vxs;   /* V's stride between positions xi */
    for (int64_t pi = 0; pi < b->npieces; pi++) {
        const wg_piece *pc = &b->pieces[pi];
        const int64_t len = pc->len, wd = 4 * len + 2, y0 = 4 * pc->ty - j->ph;
        const int64_t x0 = 4 * pc->tx0 - j->pw;
        const int64_t pan = pc->i0 / 16, s0 = pc->i0 % 16;
        /* the patch rows read in place: columns [u0, u1) lie inside the image, rows outside
         * it read zeros; outside [u0, u1) B^T d is zero */
        const int64_t u0 = x0 < 0 ? -x0 : 0, u1 = x0 + wd > j->W ? j->W - x0 : wd;
        static const float zeros[66];   /* rows outside the image */
        for (int64_t c = c0; c < c1; c++) {
            const float *d[6];   /* d[r][u - u0]: patch row r, column u */
            float t[6][66];      /* B^T d */
            wg_patch_rows(j, d, 6, pc->n, c, y0, x0, u0, u1, zeros, &t[0][0], 66, wd);
            for (int64_t u = u0; u < u1; u++)
                WG_BT4(t[0][u], t[1][u], t[2][u], t[3][u], t[4][u], t[5][u], d[0][u - u0],
                       d[1][u - u0], d[2][u - u0], d[3][u - u0], d[4][u - u0], d[5][u - u0]);
            float ph[6][4][17];   /* ph[a][q][s] = t[a][4s + q] */
            for (int a = 0; a < 6; a++) {
                for (int64_t s = 0; s < len; s++)
                    for (int q = 0; q < 4; q++) ph[a][q][s] = t[a][4 * s + q];
                ph[a][0][len] = t[a][4 * len];
                ph[a][1][len] = t[a][4 * len + 1];
            }
            float *v = b->V + (pan * C + c) * 16 + s0;
            for (int a = 0; a < 6; a++) {
                const float *p0 = ph[a][0], *p1 = ph[a][1], *p2 = ph[a][2], *p3 = ph[a][3];
                float *v0 = v + (6 * a) * xs, *v1 = v0 + xs, *v2 = v1 + xs, *v3 = v2 + xs,
                      *v4 = v3 + xs, *v5 = v4 + xs;
#pragma omp simd   /* v0..v5 are disjoint runs of V */
                for (int64_t s = 0; s < len; s++)
                    WG_BT4(v0[s], v1[s], v2[s], v3[s], v4[s], v5[s], p0[s], p1[s], p2[s], p3[s],
                           p0[s + 1], p1[s + 1]);
            }
        }
    }
}

/* The ReLU of a stored value when the job's activation is ReLU (the output transforms' `relu`);
 * other activations run over each stored row after. */
#define WG_RELU(v) (relu ? ops_relu(v) : (v))

/* Output channels [k0, k0 + m) of the chunk from M, F(2x2): Y = A^T M A, (Y + b) [+ res], act;
 * each output row of a piece interleaved from its tiles' two columns, then stored contiguously. */
static void wg_output2(const wg_job *j, const wg_bufs *b, int64_t k0, int64_t m) {
    const int relu = j->act == OVS_ACT_RELU;   /* fused into the stores (WG_RELU) */
    const int64_t NB = j->NB, mr = j->mr, PQ = j->P * j->Q, Q = j->Q;
    const int64_t xs = j->mxs;   /* M's stride between positions xi */
    for (int64_t r = 0; r < m; r++) {
        const int64_t k = k0 + r;
        const float bk = j->bias ? j->bias[k] : 0.0f;
        for (int64_t pi = 0; pi < b->npieces; pi++) {
            const wg_piece *pc = &b->pieces[pi];
            const int64_t len = pc->len, e0 = pc->i0 % NB;
            const float *mm = b->M + ((pc->i0 / NB) * mr + r) * NB + e0;
            float s[8][16];   /* A^T M: (2, 4) per tile */
            for (int q = 0; q < 4; q++)
                for (int64_t e = 0; e < len; e++) {
                    const float m0 = mm[q * xs + e], m1 = mm[(4 + q) * xs + e],
                                m2 = mm[(8 + q) * xs + e], m3 = mm[(12 + q) * xs + e];
                    s[q][e] = (m0 + m1) + m2;
                    s[4 + q][e] = (m1 - m2) - m3;
                }
            const int64_t ox = 2 * pc->tx0, w = Q - ox < 2 * len ? Q - ox : 2 * len;
            for (int a = 0; a < 2; a++) {
                const int64_t oy = 2 * pc->ty + a;
                if (oy >= j->P) break;
                const int64_t off = (pc->n * j->K + k) * PQ + oy * Q + ox;
                float *o = j->out + off;   /* (w,) the piece's output row; + b, + res, act */
                const float *s0 = s[4 * a], *s1 = s[4 * a + 1], *s2 = s[4 * a + 2],
                            *s3 = s[4 * a + 3];
                float y[32];   /* the row: (Y + b) [+ res], each output column once */
                for (int64_t e = 0; e < w / 2; e++) {
                    y[2 * e] = ((s0[e] + s1[e]) + s2[e]) + bk;
                    y[2 * e + 1] = ((s1[e] - s2[e]) - s3[e]) + bk;
                }
                if (w % 2) {   /* the map's last column: the tile's first */
                    const int64_t e = w / 2;
                    y[w - 1] = ((s0[e] + s1[e]) + s2[e]) + bk;
                }
                if (j->res) {
                    const float *rs = j->res + off;
                    for (int64_t x = 0; x < w; x++) o[x] = WG_RELU(y[x] + rs[x]);
                } else {
                    for (int64_t x = 0; x < w; x++) o[x] = WG_RELU(y[x]);
                }
                if (!relu) ops_act_inplace(o, w, j->act);
            }
        }
    }
}

/* The same for F(4x4): each output row of a piece from its tiles' four columns. */
static void wg_output4(const wg_job *j, const wg_bufs *b, int64_t k0, int64_t m) {
    const int relu = j->act == OVS_ACT_RELU;   /* fused into the stores (WG_RELU) */
    const int64_t NB = j->NB, mr = j->mr, PQ = j->P * j->Q, Q = j->Q;
    const int64_t xs = j->mxs;   /* M's stride between positions xi */
    for (int64_t r = 0; r < m; r++) {
        const int64_t k = k0 + r;
        const float bk = j->bias ? j->bias[k] : 0.0f;
        for (int64_t pi = 0; pi < b->npieces; pi++) {
            const wg_piece *pc = &b->pieces[pi];
            const int64_t len = pc->len, e0 = pc->i0 % NB;
            const float *mm = b->M + ((pc->i0 / NB) * mr + r) * NB + e0;
            float s[24][16];   /* A^T M: (4, 6) per tile */
            for (int q = 0; q < 6; q++)
                for (int64_t e = 0; e < len; e++)
                    WG_AT4(s[q][e], s[6 + q][e], s[12 + q][e], s[18 + q][e], mm[q * xs + e],
                           mm[(6 + q) * xs + e], mm[(12 + q) * xs + e], mm[(18 + q) * xs + e],
                           mm[(24 + q) * xs + e], mm[(30 + q) * xs + e]);
            const int64_t ox = 4 * pc->tx0, w = Q - ox < 4 * len ? Q - ox : 4 * len;
            for (int a = 0; a < 4; a++) {
                const int64_t oy = 4 * pc->ty + a;
                if (oy >= j->P) break;
                const int64_t off = (pc->n * j->K + k) * PQ + oy * Q + ox;
                float *o = j->out + off;   /* (w,) the piece's output row; + b, + res, act */
                const float *t0 = s[6 * a], *t1 = s[6 * a + 1], *t2 = s[6 * a + 2],
                            *t3 = s[6 * a + 3], *t4 = s[6 * a + 4], *t5 = s[6 * a + 5];
                float y[4][16];   /* the row's 4 columns per tile */
                for (int64_t e = 0; e < len; e++)
                    WG_AT4(y[0][e], y[1][e], y[2][e], y[3][e], t0[e], t1[e], t2[e], t3[e], t4[e],
                           t5[e]);
                const int64_t full = w / 4;   /* whole tiles; then the map's last 1..3 columns */
                if (j->res) {
                    const float *rs = j->res + off;
                    for (int64_t e = 0; e < full; e++)
                        for (int b4 = 0; b4 < 4; b4++)
                            o[4 * e + b4] = WG_RELU((y[b4][e] + bk) + rs[4 * e + b4]);
                    for (int64_t x = 4 * full; x < w; x++)
                        o[x] = WG_RELU((y[x % 4][full] + bk) + rs[x]);
                } else {
                    for (int64_t e = 0; e < full; e++)
                        for (int b4 = 0; b4 < 4; b4++) o[4 * e + b4] = WG_RELU(y[b4][e] + bk);
                    for (int64_t x = 4 * full; x < w; x++) o[x] = WG_RELU(y[x % 4][full] + bk);
                }
                if (!relu) ops_act_inplace(o, w, j->act);
            }
        }
    }
}

/* How the GEMM covers a chunk's last panel pair (NB columns, n of them tiles, 1 <= n <= NB):
 * *wide columns from a 16-wide call (0 or 16: its first panel, when that is full or too wide
 * for the narrow kernel), then *rest from the ISA's narrow kernel; 0 where the full NB-wide
 * call has to run. A 7x7 tile map (RN50 224's 28x28 F(4x4) and 14x14 F(2x2) convs: 49 tiles)
 * fills 64 columns: 15 of them, a quarter of the GEMM, were padding. */
static int wg_tail_plan(const ops_gemm_isa *isa, int64_t NB, int64_t n, int64_t *wide, int64_t *rest) {
    const int64_t nmax = isa->gather_narrow ? isa->narrow_max : 0;
    *wide = n >= 16 || n > nmax ? 16 : 0;
    *rest = n > *wide ? n - *wide : 0;
    return n < NB && *wide < NB && *rest <= nmax;
}

/* The last panel pair's GEMM as wg_tail_plan says (it returned 1 for n), each part into a
 * scratch tile copied into M's (mr, NB) layout. Same fmaf chains (ops/gemm.h): the results do
 * not change. */
static void wg_gemm_tail(const ops_gemm_isa *isa, const wg_job *j, int64_t m, int64_t wide,
                         int64_t rest, const float *a, const float *bp, float *mt) {
    const int64_t C = j->C, NB = j->NB;
    float tmp[OPS_GEMM_MR_MAX * 16];
    if (wide) {
        isa->kernel(m, 16, C, a, bp, C * 16, tmp, 0);
        for (int64_t r = 0; r < m; r++) memcpy(mt + r * NB, tmp + r * 16, 16 * sizeof(float));
    }
    if (rest) {
        const float *ag[1] = {a};
        isa->gather_narrow(1, m, rest, C, ag, j->aoff, bp + (wide ? C * 16 : 0), j->boff, tmp, 0, 0);
        for (int64_t r = 0; r < m; r++)
            for (int64_t e = 0; e < rest; e++) mt[r * NB + wide + e] = tmp[r * rest + e];
    }
}

/* The chunk's V for channels [c0, c1): its tiles cut into pieces, input transform (the padding
 * columns that its GEMMs read zero). */
static void wg_chunk_input(const wg_job *j, wg_bufs *b, int64_t chunk, int64_t c0, int64_t c1) {
    const int64_t t0 = chunk * j->CT, nt = j->T - t0 < j->CT ? j->T - t0 : j->CT;
    const int64_t C = j->C;
    const int64_t xs = j->vxs;                 /* V's stride between positions xi */
    wg_cut(j, b, t0, nt);
    /* V's columns past nt that the GEMMs read (the last panel pair's, wg_tail_plan): zero; the
     * others are never read */
    const int64_t last = (nt - 1) / j->NB * j->NB, n = nt - last;
    int64_t wide, rest;
    const int64_t end = last + (wg_tail_plan(ops_gemm_current_isa(), j->NB, n, &wide, &rest)
                                    ? (wide > n ? wide : n) : j->NB);
    for (int64_t xi = 0; xi < j->XI; xi++)
        for (int64_t c = c0; c < c1; c++)
            for (int64_t col = nt; col < end; col++)
                b->V[xi * xs + (col / 16 * C + c) * 16 + col % 16] = 0.0f;
    if (j->m == 4)
        wg_input4(j, b, c0, c1);
    else
        wg_input2(j, b, c0, c1);
}

/* Output channels of block kb for the chunk whose V is in b: the XI GEMMs U_xi (block kb, at
 * U + xi*uxs) @ V_xi into M (a last, partly filled panel pair by wg_gemm_tail), then the
 * output transform. */
static void wg_chunk_block(const wg_job *j, wg_bufs *b, int64_t chunk, int64_t kb,
                           const float *U, int64_t uxs, const char *pf, int64_t pf_bytes) {
    const ops_gemm_isa *isa = ops_gemm_current_isa();
    const int64_t t0 = chunk * j->CT, nt = j->T - t0 < j->CT ? j->T - t0 : j->CT;
    const int64_t C = j->C, NB = j->NB, mr = j->mr;
    const int64_t used = (nt + NB - 1) / NB;   /* panels holding a tile of the chunk */
    const int64_t k0 = kb * mr, m = j->K - k0 < mr ? j->K - k0 : mr;
    /* pf: bytes to bring into L2 while the GEMMs run, a share before each kernel call */
    const int64_t calls = j->XI * used, share = pf ? (pf_bytes + 64 * calls - 1) / (64 * calls) * 64 : 0;
    int64_t wide = 0, rest = 0;   /* the last panel pair's plan */
    const int tail = wg_tail_plan(isa, NB, nt - (used - 1) * NB, &wide, &rest);
    for (int64_t xi = 0; xi < j->XI; xi++)
        for (int64_t pp = 0; pp < used; pp++) {
            for (int64_t o = 0; o < share && pf_bytes > 0; o += 64, pf_bytes -= 64, pf += 64)
                __builtin_prefetch(pf, 0, 2);   /* prefetcht1: into L2 */
            const float *a = U + xi * uxs, *bp = b->V + xi * j->vxs + pp * (NB / 16) * C * 16;
            float *mt = b->M + xi * j->mxs + pp * mr * NB;
            if (pp == used - 1 && tail)
                wg_gemm_tail(isa, j, m, wide, rest, a, bp, mt);
            else
                isa->kernel(m, NB, C, a, bp, C * 16, mt, 0);
        }
    if (j->m == 4)
        wg_output4(j, b, k0, m);
    else
        wg_output2(j, b, k0, m);
}

/* Where thread t of nth starts in the per-image K split's items it = (image it / KB, block
 * it % KB): the item boundary nearest t / nth of all output rows, ties to the earlier (an
 * image's last block may be short: RN50's 128 channels are 10 blocks of 12 and one of 8, and
 * equal item counts gave one of two threads 72 rows and the other 56). */
static int64_t wg_split(int64_t items, int64_t KB, int64_t K, int64_t mr, int t, int nth) {
    if (t <= 0) return 0;
    if (t >= nth) return items;
    const int64_t goal = items / KB * K * t;   /* nth times the target row */
    int64_t best = 0, bd = INT64_MAX;
    for (int64_t it = 0; it <= items; it++) {
        const int64_t rows = it / KB * K + (it % KB * mr < K ? it % KB * mr : K);
        const int64_t d = llabs(nth * rows - goal);
        if (d < bd) bd = d, best = it;
    }
    return best;
}

/* Tiles per chunk: V (XI, NT, C) of about WG_V_FLOATS, a multiple of NB, at most 8 NB. */
static int64_t wg_chunk_tiles(int64_t C, int64_t NB, int64_t XI) {
    int64_t nt = WG_V_FLOATS / (XI * C) / NB * NB;
    if (nt > 8 * NB) nt = 8 * NB;
    return nt < NB ? NB : nt;
}

int ops_conv2d_winograd(const char *op, float *out, const float *in, const ovs_matrix *weight,
                        const float *bias, const float *residual, int64_t N, int64_t C, int64_t H,
                        int64_t W, int64_t K, int64_t ph, int64_t pw, ovs_act act, int64_t P,
                        int64_t Q, int64_t m) {
    const ops_gemm_isa *isa = ops_gemm_current_isa();
    const int64_t mr = isa->mr_max, NB = isa->nr_max, KB = (K + mr - 1) / mr;
    const int64_t XI = (m + 2) * (m + 2);
    wg_job j = {in, NULL, bias, residual, out, C, H, W, K, P, Q, ph, pw, m, XI, (P + m - 1) / m,
                (Q + m - 1) / m, 0, 0, NB, mr, KB, 0, 0, 0, NULL, NULL, act};
    j.T = N * j.TH * j.TW;
    int threads = ovs_get_num_threads();
#ifdef _OPENMP
    if (omp_in_parallel()) threads = 1;
#endif
    /* Few tiles per image: a chunk per image, and the threads split the (image, block of mr
     * output channels) pairs (no barrier either): a thread makes an image's V when it first
     * takes one of its pairs, and transforms each weight block it takes into its own buffer
     * (XI*C*mr floats, cache-sized) right before that block's GEMMs, so the XI*K*C
     * transformed weights never go through memory (with few tiles per weight, writing and
     * re-reading them cost as much as the GEMMs). Otherwise chunks of tiles; with several
     * threads at least ~4 chunks each where the tiles allow (the dynamic schedule then evens
     * out a short last chunk). No way of cutting the work changes any result. */
    const int kpart = j.TH * j.TW <= WG_KPART_TILES;
    if (kpart) {
        j.CT = j.TH * j.TW;
        j.NT = (j.CT + NB - 1) / NB * NB;
    } else {
        j.NT = wg_chunk_tiles(C, NB, XI);
        if (threads > 1) {
            const int64_t even = j.T / (4 * threads) / NB * NB;
            if (even < j.NT) j.NT = even > NB ? even : NB;
        }
    }
    if (!kpart) j.CT = j.NT;
    const int64_t chunks = (j.T + j.CT - 1) / j.CT, items = kpart ? N * KB : chunks;
    if (threads > items) threads = (int)items;
    /* per thread: V, M, (kpart) its weight block, the pieces */
    j.vxs = ops_odd_lines(C * j.NT);
    j.mxs = ops_odd_lines(mr * j.NT);
    const int64_t kuxs = ops_odd_lines(C * mr);   /* kpart: a thread's one weight block */
    const int64_t uxs = ops_odd_lines(KB * C * mr);
    const size_t nv = (size_t)XI * (size_t)j.vxs, nm = (size_t)XI * (size_t)j.mxs;
    const size_t nu = kpart ? (size_t)XI * (size_t)kuxs : 0;
    const size_t per =
        (((nv + nm + nu) * sizeof(float) + (size_t)j.NT * sizeof(wg_piece)) + 63) & ~(size_t)63;
    /* U (chunks of tiles only), then the threads' buffers, in the calling thread's kept
     * workspace (ops_internal.h): fresh blocks of a MiB or more are mapped per call (ovs
     * returns large frees to the system), and their page faults cost ~0.4 ms of a 128-channel
     * 56x56 conv */
    const size_t u_bytes =
        kpart ? 0
              : ((size_t)XI * (size_t)uxs * sizeof(float) + 63) & ~(size_t)63;
    const size_t off_bytes = (2 * (size_t)C * sizeof(int64_t) + 63) & ~(size_t)63;
    void *own = NULL;
    char *ws = ops_thread_workspace(OPS_WS_CONV, u_bytes + off_bytes + (size_t)threads * per, &own);
    float *U = ws && !kpart ? (float *)ws : NULL;
    char *bufs = ws ? ws + u_bytes + off_bytes : NULL;
    if (!ws) {
        return ovs_set_error(OVS_ERR_NOMEM,
                             "%s: out of memory for the Winograd transforms (%lld x %lld weights, "
                             "%d x %zu bytes of tiles)",
                             op, (long long)K, (long long)C, threads, per);
    }
    int64_t *offs = (int64_t *)(ws + u_bytes);
    for (int64_t c = 0; c < C; c++) offs[c] = c * mr, offs[C + c] = c * 16;
    j.aoff = offs, j.boff = offs + C;
    if (kpart) {
        const int shared_v = N == 1 && threads > 1;
#pragma omp parallel num_threads(threads) if (threads > 1)
        {
            int tid = 0, nth = 1;   /* the team as granted (at most threads) */
#ifdef _OPENMP
            tid = omp_get_thread_num();
            nth = omp_get_num_threads();
#endif
            wg_bufs b;
            float *mine = (float *)(bufs + (size_t)tid * per);
            b.M = mine + nv;
            float *Ub = b.M + nm;
            b.pieces = (wg_piece *)(Ub + nu);
            b.npieces = 0;
            int64_t have_v = -1;   /* the image whose V is in b */
            /* One image: its V made once, the threads sharing its channels, in the first
             * thread's buffer (each thread making the whole V took 17% of a 128-channel F(4x4)
             * conv at 28x28 on every thread) */
            b.V = shared_v && nth > 1 ? (float *)bufs : mine;
            if (shared_v && nth > 1) {
                const int64_t c0 = C * tid / nth, c1 = C * (tid + 1) / nth;
                wg_chunk_input(&j, &b, 0, c0, c1);
#pragma omp barrier
                have_v = 0;
            }
            /* contiguous runs of items per thread: the raw weights of a thread's next block
             * are fetched into L2 while its current block's GEMMs run (the weight transform
             * otherwise waits on them: RN50's weights are past any L3, and its K-split convs
             * hold 26 MB of them at 224^2) */
            const int64_t it0 = wg_split(items, KB, K, mr, tid, nth);
            const int64_t it1 = wg_split(items, KB, K, mr, tid + 1, nth);
            for (int64_t it = it0; it < it1; it++) {
                const int64_t n = it / KB, kb = it % KB;
                if (have_v != n) {
                    wg_chunk_input(&j, &b, n, 0, C);
                    have_v = n;
                }
                wg_transform_block(Ub, kuxs, weight, K, C, mr, m, kb);
                const char *pf = NULL;
                int64_t pf_bytes = 0;
                if (it + 1 < it1) {
                    int64_t nf;
                    pf = (const char *)wg_weight_rows(weight, K, (it + 1) % KB * mr, mr, 9 * C, &nf);
                    pf_bytes = nf * (int64_t)sizeof(float);
                }
                wg_chunk_block(&j, &b, n, kb, Ub, kuxs, pf, pf_bytes);
            }
        }
    } else {
        wg_transform_weights(U, uxs, weight, K, C, mr, m, threads);
        j.U = U;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
        for (int64_t ch = 0; ch < chunks; ch++) {
            int tid = 0;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            wg_bufs b;
            b.V = (float *)(bufs + (size_t)tid * per);
            b.M = b.V + nv;
            b.pieces = (wg_piece *)(b.M + nm);
            b.npieces = 0;
            wg_chunk_input(&j, &b, ch, 0, C);
            for (int64_t kb = 0; kb < KB; kb++)
                wg_chunk_block(&j, &b, ch, kb, U + kb * C * mr, uxs, NULL, 0);
        }
    }
    ovs_free(own);
    return OVS_OK;
}

int ovs_conv2d_winograd_wins(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R,
                             int64_t S, const ovs_conv2d_params *p) {
    if (!p || !ops_conv2d_winograd_supported(R, S, p)) return 0;
    const int64_t P = ovs_conv2d_out_size(H, 3, 1, p->pad_h, 1);
    const int64_t Q = ovs_conv2d_out_size(W, 3, 1, p->pad_w, 1);
    if (P < 1 || Q < 1 || N < 1) return 0;
    /* Tiles of one image, not of the batch: an image's result must not depend on the batch it
     * is in (both paths are batch-invariant, bitwise, so the choice must be too). */
    const int64_t T = ((P + 1) / 2) * ((Q + 1) / 2);
    /* Measured per layer (AVX-512, 1 and 2 threads, RN50 224/448 and DeepLab 512 shapes; see
     * the commit): the transforms cost about as much as the GEMM saves below ~1500 tiles for
     * C < 128 (RN50 224's layer1 at 56x56 loses by 5-10%) and below C*T ~ 60000 otherwise
     * (256 channels at 28x28 break even); with C = 512 the 16*K*C transformed weights (16 MiB,
     * re-read per chunk) eat the gain (break even at 28x28).
     * Re-measured on AMD Zen 5 (AVX-512, 1 thread, CPU time of the calling thread): with
     * C < 64 the 16 GEMMs are too short for their transforms, Winograd took 1.25-1.6x the
     * direct time for RN50's stem convs (C = 32 at 112x112, T = 3136), about 1.05x at 224x224
     * (T = 12544) and won only from 256x256 (T = 16384, 0.84x); with C = 64 it lost at 80x80
     * (T = 1600, 1.13x) and won at 112x112 (T = 3136, 0.8-0.9x).
     * Re-measured on AMD Zen 4 (AVX-512, 2026-12-05, benchmarks/bench_conv.py, 1 and 2
     * threads) after the input transform read its rows in place (no per-channel copies) and
     * small maps split K instead of tiles: F(2x2) took 0.68-0.76x the direct time for RN50 224's
     * stem (C = 32 at 112x112, T = 3136), layer1 (64 at 56x56, T = 784) and layer2 (128 at
     * 28x28, T = 196), 0.75-0.81x for C = 32 at 224x224 and 256x256, 0.87-0.89x for C = 512 at
     * 14x14 (T = 49, split K: the transformed weights never go through memory), 0.9-1.0x for
     * 256 at 14x14 (T * C = 12544) and 1.8x for 512 at 7x7: it wins from T * C ~ 20000. C < 32
     * and C > 384 on maps of more than WG_KPART_TILES tiles keep the earlier limits.
     * Again after V, M and U got odd-line strides (same day, bench_conv.py --repeat 11, 1 / 2
     * threads): 256 at 14x14 0.79 / 0.83x, 512 at 14x14 0.70 / 0.74x, 512 at 7x7 (T * C = 8192)
     * 1.42 / 1.46x: the crossover is now between 8192 and 12544.
     * Again after a chunk's last panel pair computed only its tiles (Zen 4, 2026-12-06, one conv
     * alone, 1 / 2 threads; 16 tiles had filled 32 GEMM columns): 512 at 7x7 (RN50 224's
     * layer4, T * C = 8192) 0.76 / 0.60x the direct time, 384 at 7x7 0.77 / 0.62x, 256 -> 512 at
     * 7x7 (4096) 0.95 / 0.68x, 256 at 7x7 1.02 / 0.99x, 256 at 10x10 0.59 / 0.52x, 128 at 12x12
     * and 14x14 0.52 / 0.40x and 0.76 / 0.72x, 96 at 14x14 (4704) 0.92 / 0.84x; 64 at 14x14
     * (3136) 1.15 / 1.10x; with fewer tiles the per-call weight transform is not repaid: 512 at
     * 5x5 (T = 9) 2.1 / 1.8x, at 4x4 1.35 / 1.04x. */
    if (C < 16 || K < 16) return 0;
    if (C < 32) return T >= 14000;
    if (C > 384 && T > WG_KPART_TILES) return 0;
    return T >= 16 && T * C >= 4096;
}

/* 1 when AUTO takes F(4x4, 3x3): it beats F(2x2, 3x3) and the direct conv, and its error is
 * affordable; from the tiles of one image (T4 = ceil(P/4) * ceil(Q/4)) and the widths.
 * Speed, measured per layer on an Intel Xeon (Sapphire Rapids class, AVX-512, KVM, 2 cores;
 * 1 and 2 threads, CPU time, benchmarks/bench_conv.py: RN50 224/448 and DeepLab 512 shapes,
 * see the commits): F(4x4) took 0.44-0.61x the direct time for C = 128..304 from 56x56
 * (T4 = 196) up and, with the per-image K split (T4 <= WG_KPART_TILES), 0.56x at 32x32,
 * 0.63-0.67x (C = 512) and 0.66-0.73x (256) at 28x28 (F(2x2): 0.68-0.71x, 0.70-0.73x); with
 * C = 128 at 28x28 it gains only 5-10% (left to the direct conv, F(2x2) loses there) and at
 * 14x14 both lose (F(4x4) 1.5-1.6x, F(2x2) 1.1-1.3x). It also wins for C = 32 and 64
 * (0.48-0.78x), but there it costs too much accuracy: on RN50 (tests/_generated weights) at
 * 448^2 against open_clip in float64, F(4x4) on the stem's two C = 32 convs alone takes the
 * res5 error from 4.8e-5 to 1.6e-4, on layer1's C = 64 convs alone to 9.0e-5, on the C >= 128
 * convs (this rule) to 6.9e-5 (the parity bar is 1e-4).
 * On AMD Zen 4 (AVX-512, 2026-12-05, one conv timed alone, 1 / 2 threads) F(4x4) beat F(2x2)
 * also for C = 128..255 on the per-image K split (T4 <= WG_KPART_TILES): 128 at 28x28 (RN50
 * 224's layer2) 1.22 vs 1.40 ms / 0.78 vs 0.87, 192 at 28x28 2.39 vs 2.92 / 1.40 vs 1.75, 128
 * at 40x40 2.03 vs 2.44 / 1.25 vs 1.36 (F(2x2) itself ~0.6x direct there): the K split took
 * them from 256 channels down to 128, as the tile chunks already did. */
static int wg4_wins(int64_t C, int64_t P, int64_t Q, int64_t K) {
    const int64_t T4 = ((P + 3) / 4) * ((Q + 3) / 4);
    if (C < 128 || K < 16) return 0;
    return T4 > WG_KPART_TILES ? C <= 384 : T4 >= 49;
}

ovs_conv2d_algo ovs_conv2d_auto_algo(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K,
                                     int64_t R, int64_t S, const ovs_conv2d_params *p) {
    if (!p || !ops_conv2d_winograd_supported(R, S, p)) return OVS_CONV2D_DIRECT;
    const int64_t P = ovs_conv2d_out_size(H, 3, 1, p->pad_h, 1);
    const int64_t Q = ovs_conv2d_out_size(W, 3, 1, p->pad_w, 1);
    if (P < 1 || Q < 1 || N < 1) return OVS_CONV2D_DIRECT;
    if (wg4_wins(C, P, Q, K)) return OVS_CONV2D_WINOGRAD4;
    return ovs_conv2d_winograd_wins(N, C, H, W, K, R, S, p) ? OVS_CONV2D_WINOGRAD
                                                             : OVS_CONV2D_DIRECT;
}
