/* Winograd F(2x2, 3x3) convolution (Lavin & Gray, "Fast Algorithms for Convolutional Neural
 * Networks", 2016) for 3x3, stride-1, undilated, ungrouped convs, on the packed-GEMM
 * micro-kernels. Dimension letters as in include/ovs/ops.h; T = N * TH * TW output tiles of 2x2
 * (TH = ceil(P/2), TW = ceil(Q/2)); xi = 4*a + b indexes the 16 transformed positions.
 *
 * Per tile and output channel k:  Y (2x2) = A^T [ sum_c U_kc .* V_c ] A  with
 *     U_kc = G g_kc G^T (4x4, the weights, transformed once per call),
 *     V_c  = B^T d_c B  (4x4, d_c the input patch rows 2ty-ph.., columns 2tx-pw.., zero outside),
 *     G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],  B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],
 *     A^T = [1 1 1 0; 0 1 -1 -1].
 * The sum over c is, for each xi, a GEMM M_xi (K, T) = U_xi (K, C) @ V_xi (C, T): run on the
 * ISA's panel kernel (ops/gemm.h; U_xi packed as the left operand, V_xi in 16-column panels),
 * one fmaf chain over c in increasing order per element. Every transform is a fixed sequence of
 * float additions (products by 0.5 are exact), written in the order of the matrix products
 * above, so the result is bitwise that of the naive twin (ovs_conv2d_forward_naive with algo
 * WINOGRAD, naive.c; up to the activation code)
 * and independent of chunking, thread count and ISA.
 *
 * Work: tiles in chunks of NT (a multiple of the kernel width: V of a chunk ~1 MiB, smaller for
 * ~4 chunks per thread);
 * a thread takes a chunk whole: input transform into its V (16, NT/16, C, 16), then per block of
 * mr output channels the 16 GEMMs into its M (16, NT/NB, mr, NB) and the output transform with
 * (Y + bias) [+ residual], act fused, straight into out. No barrier inside the region. */
#include "ops/gemm.h"

#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define WG_XI 16
#define WG_V_FLOATS ((int64_t)1 << 18)   /* V of one chunk: about 1 MiB */

int ops_conv2d_winograd_supported(int64_t R, int64_t S, const ovs_conv2d_params *p) {
    return R == 3 && S == 3 && p->stride_h == 1 && p->stride_w == 1 && p->dil_h == 1 &&
           p->dil_w == 1 && p->groups == 1;
}

/* u[xi][r] = (G g_r G^T)[xi] for the mr kernels g[i][r] (3x3 row-major in i), r < mr. */
static inline void wg_weight(float u[WG_XI][OPS_GEMM_MR_MAX], const float g[9][OPS_GEMM_MR_MAX],
                             int64_t mr) {
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

/* U (16, KB, C, mr) = the transformed weights, block kb holding rows kb*mr.. (zeros past K):
 * U[((xi*KB + kb)*C + c)*mr + r] = (G g_{kb*mr+r, c} G^T)[xi]. */
static void wg_transform_weights(float *U, const ovs_matrix *w, int64_t K, int64_t C, int64_t mr,
                                 int threads) {
    const int64_t KB = (K + mr - 1) / mr, L = 9 * C;
    /* W[k, l] at w->data[wrow(k) + l * ws]: dense rows, or the conv-packed blocks (1 group) */
    const int packed = w->format == OVS_MATRIX_CONV_PACKED;
    const int64_t ws = packed ? OVS_CONV_PACK_MR : 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && KB > 1 && 9 * K * C >= OPS_PAR_MIN)
    for (int64_t kb = 0; kb < KB; kb++) {
        const int64_t m = K - kb * mr < mr ? K - kb * mr : mr;
        for (int64_t c = 0; c < C; c++) {
            float g[9][OPS_GEMM_MR_MAX] = {{0}}, u[WG_XI][OPS_GEMM_MR_MAX];
            for (int64_t r = 0; r < m; r++) {
                const int64_t k = kb * mr + r;
                const float *src =
                    w->data + c * 9 * ws + (packed ? (k / ws) * ws * L + k % ws : k * L);
                for (int i = 0; i < 9; i++) g[i][r] = src[i * ws];
            }
            wg_weight(u, g, mr);
            for (int xi = 0; xi < WG_XI; xi++) {
                float *dst = U + ((xi * KB + kb) * C + c) * mr;
                for (int64_t r = 0; r < mr; r++) dst[r] = u[xi][r];
            }
        }
    }
}

typedef struct {
    const float *in;         /* (N, C, H, W) */
    const float *U;          /* (16, KB, C, mr) */
    const float *bias;       /* (K,) or NULL */
    const float *res;        /* (N, K, P, Q) or NULL; may equal out */
    float *out;              /* (N, K, P, Q) */
    int64_t C, H, W, K, P, Q, ph, pw;
    int64_t TH, TW, T;       /* tiles per column / row / in all */
    int64_t NT, NB, mr, KB;  /* tiles per chunk (multiple of NB), kernel width and height */
    ovs_act act;
} wg_job;

/* Consecutive tiles of one tile row, within one 16-column panel of V. */
typedef struct {
    int64_t i0, len;         /* chunk-local index of its first tile, tiles (1..16) */
    int64_t n, ty, tx0;      /* image, tile row, tile column of its first tile */
} wg_piece;

/* One thread's buffers. */
typedef struct {
    float *V;                /* (16, NT/16, C, 16) */
    float *M;                /* (16, NT/NB, mr, NB) */
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

/* V of the chunk's tiles (columns past nt zero). A piece's patches are the columns
 * [2*tx0 - pw, 2*tx0 - pw + 2*len + 2) of 4 input rows: B^T applied down the rows first (over
 * contiguous floats), then across each tile's 4 columns, from the even and odd columns. */
static void wg_input(const wg_job *j, const wg_bufs *b, int64_t nt) {
    const int64_t C = j->C, H = j->H, W = j->W, HW = H * W, np16 = j->NT / 16;
    const int64_t xs = np16 * C * 16;   /* V's stride between positions xi */
    for (int64_t pan = nt / 16; pan < np16; pan++)   /* columns past nt */
        for (int xi = 0; xi < WG_XI; xi++)
            for (int64_t c = 0; c < C; c++)
                for (int64_t s = pan * 16 < nt ? nt - pan * 16 : 0; s < 16; s++)
                    b->V[xi * xs + (pan * C + c) * 16 + s] = 0.0f;
    for (int64_t pi = 0; pi < b->npieces; pi++) {
        const wg_piece *pc = &b->pieces[pi];
        const int64_t len = pc->len, wd = 2 * len + 2, y0 = 2 * pc->ty - j->ph;
        const int64_t x0 = 2 * pc->tx0 - j->pw;
        /* columns [u0, u1) of the segment lie inside the image */
        const int64_t u0 = x0 < 0 ? -x0 : 0, u1 = x0 + wd > W ? W - x0 : wd;
        const int64_t pan = pc->i0 / 16, s0 = pc->i0 % 16;
        for (int64_t c = 0; c < C; c++) {
            float d[4][34];
            for (int r = 0; r < 4; r++) {
                const int64_t y = y0 + r;
                if (y < 0 || y >= H || u1 <= u0) {
                    for (int64_t u = 0; u < wd; u++) d[r][u] = 0.0f;
                    continue;
                }
                const float *row = j->in + pc->n * C * HW + c * HW + y * W + x0;
                for (int64_t u = 0; u < u0; u++) d[r][u] = 0.0f;
                for (int64_t u = u0; u < u1; u++) d[r][u] = row[u];
                for (int64_t u = u1; u < wd; u++) d[r][u] = 0.0f;
            }
            float t[4][34];   /* B^T d, each row split into even and odd columns */
            float ev[4][17], od[4][17];
            for (int64_t u = 0; u < wd; u++) {
                t[0][u] = d[0][u] - d[2][u];
                t[1][u] = d[1][u] + d[2][u];
                t[2][u] = d[2][u] - d[1][u];
                t[3][u] = d[1][u] - d[3][u];
            }
            for (int a = 0; a < 4; a++)
                for (int64_t s = 0; s <= len; s++) {
                    ev[a][s] = t[a][2 * s];
                    od[a][s] = t[a][2 * s + 1];
                }
            float *v = b->V + (pan * C + c) * 16 + s0;
            for (int a = 0; a < 4; a++) {
                const float *e = ev[a], *o = od[a];
                float *v0 = v + (4 * a) * xs, *v1 = v0 + xs, *v2 = v1 + xs, *v3 = v2 + xs;
                for (int64_t s = 0; s < len; s++) {
                    v0[s] = e[s] - e[s + 1];
                    v1[s] = o[s] + e[s + 1];
                    v2[s] = e[s + 1] - o[s];
                    v3[s] = o[s] - o[s + 1];
                }
            }
        }
    }
}

/* Output channels [k0, k0 + m) of the chunk from M: Y = A^T M A, (Y + b) [+ res], act; each
 * output row of a piece interleaved from its tiles' two columns, then stored contiguously. */
static void wg_output(const wg_job *j, const wg_bufs *b, int64_t k0, int64_t m) {
    const int64_t NB = j->NB, mr = j->mr, npan = j->NT / NB, PQ = j->P * j->Q, Q = j->Q;
    const int64_t xs = npan * mr * NB;   /* M's stride between positions xi */
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
                for (int64_t e = 0; e < w / 2; e++) {
                    const float v0 = ((s0[e] + s1[e]) + s2[e]) + bk;
                    const float v1 = ((s1[e] - s2[e]) - s3[e]) + bk;
                    o[2 * e] = j->res ? v0 + j->res[off + 2 * e] : v0;
                    o[2 * e + 1] = j->res ? v1 + j->res[off + 2 * e + 1] : v1;
                }
                if (w % 2) {   /* the map's last column: the tile's first */
                    const int64_t e = w / 2;
                    const float v0 = ((s0[e] + s1[e]) + s2[e]) + bk;
                    o[w - 1] = j->res ? v0 + j->res[off + w - 1] : v0;
                }
                ops_act_inplace(o, w, j->act);
            }
        }
    }
}

static void wg_chunk(const wg_job *j, wg_bufs *b, int64_t chunk) {
    const ops_gemm_isa *isa = ops_gemm_current_isa();
    const int64_t t0 = chunk * j->NT, nt = j->T - t0 < j->NT ? j->T - t0 : j->NT;
    const int64_t C = j->C, NB = j->NB, mr = j->mr, np16 = j->NT / 16, npan = j->NT / NB;
    const int64_t used = (nt + NB - 1) / NB;   /* panels holding a tile of the chunk */
    wg_cut(j, b, t0, nt);
    wg_input(j, b, nt);
    for (int64_t kb = 0; kb < j->KB; kb++) {
        const int64_t k0 = kb * mr, m = j->K - k0 < mr ? j->K - k0 : mr;
        for (int xi = 0; xi < WG_XI; xi++) {
            const float *a = j->U + ((xi * j->KB + kb) * C) * mr;
            for (int64_t pp = 0; pp < used; pp++)
                isa->kernel(m, NB, C, a, b->V + ((xi * np16 + pp * (NB / 16)) * C) * 16, C * 16,
                            b->M + ((xi * npan + pp) * mr) * NB, 0);
        }
        wg_output(j, b, k0, m);
    }
}

/* Tiles per chunk: V (16, NT, C) of about WG_V_FLOATS, a multiple of NB, at most 8 NB. */
static int64_t wg_chunk_tiles(int64_t C, int64_t NB) {
    int64_t nt = WG_V_FLOATS / (WG_XI * C) / NB * NB;
    if (nt > 8 * NB) nt = 8 * NB;
    return nt < NB ? NB : nt;
}

int ops_conv2d_winograd(const char *op, float *out, const float *in, const ovs_matrix *weight,
                        const float *bias, const float *residual, int64_t N, int64_t C, int64_t H,
                        int64_t W, int64_t K, int64_t ph, int64_t pw, ovs_act act, int64_t P,
                        int64_t Q) {
    const ops_gemm_isa *isa = ops_gemm_current_isa();
    const int64_t mr = isa->mr_max, NB = isa->nr_max, KB = (K + mr - 1) / mr;
    wg_job j = {in, NULL, bias, residual, out, C, H, W, K, P, Q, ph, pw, (P + 1) / 2, (Q + 1) / 2,
                0, 0, NB, mr, KB, act};
    j.T = N * j.TH * j.TW;
    int threads = ovs_get_num_threads();
#ifdef _OPENMP
    if (omp_in_parallel()) threads = 1;
#endif
    /* Several threads: at least ~4 chunks each where the tiles allow (the dynamic schedule then
     * evens out a short last chunk). The chunking does not change any result. */
    j.NT = wg_chunk_tiles(C, NB);
    if (threads > 1) {
        const int64_t even = j.T / (4 * threads) / NB * NB;
        if (even < j.NT) j.NT = even > NB ? even : NB;
    }
    const int64_t chunks = (j.T + j.NT - 1) / j.NT;
    if (threads > chunks) threads = (int)chunks;
    /* per thread: V, M and the pieces */
    const size_t nv = (size_t)(WG_XI * C) * (size_t)j.NT, nm = (size_t)(WG_XI * mr) * (size_t)j.NT;
    const size_t per = (((nv + nm) * sizeof(float) + (size_t)j.NT * sizeof(wg_piece)) + 63) &
                       ~(size_t)63;
    /* U, then the threads' buffers, in the calling thread's kept workspace (ops_internal.h):
     * fresh blocks of a MiB or more are mapped per call (ovs returns large frees to the
     * system), and their page faults cost ~0.4 ms of a 128-channel 56x56 conv */
    const size_t u_bytes =
        ((size_t)WG_XI * (size_t)(KB * mr) * (size_t)C * sizeof(float) + 63) & ~(size_t)63;
    void *own = NULL;
    char *ws = ops_thread_workspace(OPS_WS_CONV, u_bytes + (size_t)threads * per, &own);
    float *U = ws ? (float *)ws : NULL;
    char *bufs = ws ? ws + u_bytes : NULL;
    if (!ws) {
        return ovs_set_error(OVS_ERR_NOMEM,
                             "%s: out of memory for the Winograd transforms (%lld x %lld weights, "
                             "%d x %zu bytes of tiles)",
                             op, (long long)K, (long long)C, threads, per);
    }
    wg_transform_weights(U, weight, K, C, mr, threads);
    j.U = U;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
    for (int64_t ch = 0; ch < chunks; ch++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        char *base = bufs + (size_t)tid * per;
        wg_bufs b;
        b.V = (float *)base;
        b.M = b.V + nv;
        b.pieces = (wg_piece *)(b.M + nm);
        b.npieces = 0;
        wg_chunk(&j, &b, ch);
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
     * (T = 1600, 1.13x) and won at 112x112 (T = 3136, 0.8-0.9x). */
    if (C < 16 || K < 16 || C > 384) return 0;
    if (C < 64) return T >= 14000;
    return C < 128 ? T >= 2500 : T * C >= 60000;
}
