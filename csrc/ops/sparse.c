/* Sparse (CSR) weights and the sparse x dense convolution.
 * Dimension letters as in include/ovs/ops.h: N batch, C/K input/output channels, H, W input and
 * P, Q output extents, R, S kernel extents, L = C*R*S (a row of the weight matrix).
 *
 * The fast kernel never builds an im2col matrix. The input image is zero-padded once into
 * (C, Hp, Wp), Hp = H + 2ph, Wp = W + 2pw, and the output is computed on the padded grid of
 * P rows by Wp columns, flattened: grid position i = p*Wp + q. For stride 1 every weight
 * (c, r, s) then reads the input at one constant offset from i,
 *   off(c, r, s) = c*Hp*Wp + r*dh*Wp + s*dw,
 * so output row k over a run of grid positions is a sum of shifted input runs scaled by the
 * row's non-zeros: one broadcast FMA per non-zero and 8 floats. The columns q >= Q of the grid
 * are computed and dropped (2 of Wp for a 3x3 conv). A 1x1 unpadded conv reads the input
 * planes directly (Hp*Wp = H*W, off = c*H*W). */
#include "ops/ops_internal.h"

#include <stdint.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SPARSE_AVX2 1
#endif

/* Grid positions per work item: 8 vector accumulators of 8 floats. */
#define SP_TILE 64

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

static inline float sp_act(float v, ovs_act act) {
    return act == OVS_ACT_RELU ? (v > 0.0f ? v : 0.0f) : v;
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
static int sp_geometry(int64_t C, int64_t H, int64_t W, int64_t R, int64_t S,
                       const ovs_conv2d_params *p, int *direct, int64_t *Hp, int64_t *Wp,
                       size_t *pad_floats, size_t *table_floats) {
    *direct = R == 1 && S == 1 && p->pad_h == 0 && p->pad_w == 0;
    *Hp = H + 2 * p->pad_h;
    *Wp = W + 2 * p->pad_w;
    size_t L, plane, padded;
    if (ovs_mul3_size(&L, (size_t)C, (size_t)R, (size_t)S) ||
        ovs_mul_size(&plane, (size_t)*Hp, (size_t)*Wp) || ovs_mul_size(&padded, plane, (size_t)C))
        return OVS_ERR_OVERFLOW;
    /* slack after the last plane: the dropped grid columns of the last rows read up to
     * (S-1)*dw floats past it */
    size_t slack = (size_t)((S - 1) * p->dil_w) + SP_TILE;
    *pad_floats = *direct ? 0 : padded + slack;
    *table_floats = 2 * L;  /* int64 offsets */
    if (*pad_floats > SIZE_MAX - *table_floats - 16) return OVS_ERR_OVERFLOW;
    return OVS_OK;
}

size_t ovs_conv2d_sparse_scratch_floats(int64_t C, int64_t H, int64_t W, int64_t K, int64_t R,
                                        int64_t S, const ovs_conv2d_params *p) {
    (void)K;
    if (!p || C < 0 || H < 0 || W < 0 || R < 1 || S < 1 || p->pad_h < 0 || p->pad_w < 0 ||
        p->dil_w < 1)
        return 0;
    int direct;
    int64_t Hp, Wp;
    size_t pad, table;
    if (sp_geometry(C, H, W, R, S, p, &direct, &Hp, &Wp, &pad, &table)) return SIZE_MAX;
    return pad + table + 16;  /* +16: the offset table starts 64-byte aligned */
}

/* acc (width,) = sum over the non-zeros [b, e) of val * x[off[col] + 0..width) */
static inline void sp_row_tile(float *acc, const float *x, const int64_t *off, const uint16_t *col,
                               const float *val, int64_t b, int64_t e, int64_t width) {
#ifdef SPARSE_AVX2
    if (width == SP_TILE) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,
               a7 = a0;
        for (int64_t j = b; j < e; j++) {
            const float *s = x + off[col[j]];
            const __m256 v = _mm256_set1_ps(val[j]);
            a0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(s), a0);
            a1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(s + 8), a1);
            a2 = _mm256_fmadd_ps(v, _mm256_loadu_ps(s + 16), a2);
            a3 = _mm256_fmadd_ps(v, _mm256_loadu_ps(s + 24), a3);
            a4 = _mm256_fmadd_ps(v, _mm256_loadu_ps(s + 32), a4);
            a5 = _mm256_fmadd_ps(v, _mm256_loadu_ps(s + 40), a5);
            a6 = _mm256_fmadd_ps(v, _mm256_loadu_ps(s + 48), a6);
            a7 = _mm256_fmadd_ps(v, _mm256_loadu_ps(s + 56), a7);
        }
        _mm256_storeu_ps(acc, a0);
        _mm256_storeu_ps(acc + 8, a1);
        _mm256_storeu_ps(acc + 16, a2);
        _mm256_storeu_ps(acc + 24, a3);
        _mm256_storeu_ps(acc + 32, a4);
        _mm256_storeu_ps(acc + 40, a5);
        _mm256_storeu_ps(acc + 48, a6);
        _mm256_storeu_ps(acc + 56, a7);
        return;
    }
    int64_t i = 0;
    for (; i + 16 <= width; i += 16) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0;
        for (int64_t j = b; j < e; j++) {
            const float *s = x + off[col[j]] + i;
            const __m256 v = _mm256_set1_ps(val[j]);
            a0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(s), a0);
            a1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(s + 8), a1);
        }
        _mm256_storeu_ps(acc + i, a0);
        _mm256_storeu_ps(acc + i + 8, a1);
    }
    for (; i + 8 <= width; i += 8) {
        __m256 a0 = _mm256_setzero_ps();
        for (int64_t j = b; j < e; j++)
            a0 = _mm256_fmadd_ps(_mm256_set1_ps(val[j]), _mm256_loadu_ps(x + off[col[j]] + i), a0);
        _mm256_storeu_ps(acc + i, a0);
    }
    for (; i < width; i++) {
        float a = 0.0f;
        for (int64_t j = b; j < e; j++) a = fmaf(val[j], x[off[col[j]] + i], a);
        acc[i] = a;
    }
#else
    for (int64_t i = 0; i < width; i++) acc[i] = 0.0f;
    for (int64_t j = b; j < e; j++) {
        const float *s = x + off[col[j]];
        const float v = val[j];
        for (int64_t i = 0; i < width; i++) acc[i] += v * s[i];
    }
#endif
}

int ovs_conv2d_sparse_forward(float *out, const float *in, const ovs_csr *w, const float *bias,
                              const float *residual, int64_t N, int64_t C, int64_t H, int64_t W,
                              int64_t K, int64_t R, int64_t S, const ovs_conv2d_params *p,
                              ovs_act act, float *scratch) {
    const char *op = "conv2d_sparse_forward";
    int64_t P = 0, Q = 0;
    int st = sparse_check(op, out, in, w, N, C, H, W, K, R, S, p, act, &P, &Q);
    if (st) return st;
    if (p->stride_h != 1 || p->stride_w != 1)
        return ovs_set_error(OVS_ERR_UNSUPPORTED, "%s: stride must be 1, got %lldx%lld", op,
                             (long long)p->stride_h, (long long)p->stride_w);
    if (N == 0 || K == 0 || P == 0 || Q == 0) return OVS_OK;
    int direct;
    int64_t Hp, Wp;
    size_t pad_floats, table_floats;
    if (sp_geometry(C, H, W, R, S, p, &direct, &Hp, &Wp, &pad_floats, &table_floats))
        return ovs_set_error(OVS_ERR_OVERFLOW, "%s: padded input size overflows", op);
    if (!scratch) return ovs_set_error(OVS_ERR_ARG, "%s: scratch is NULL", op);
    float *xpad = scratch;                                  /* (C, Hp, Wp) + slack */
    uintptr_t t = (uintptr_t)(scratch + pad_floats);
    int64_t *off = (int64_t *)((t + 63) & ~(uintptr_t)63);  /* (L,) */
    const int64_t plane = Hp * Wp, RS = R * S, L = C * RS;
    for (int64_t l = 0; l < L; l++) {
        int64_t c = l / RS, r = (l / S) % R, s = l % S;
        off[l] = c * plane + r * p->dil_h * Wp + s * p->dil_w;
    }
    /* grid positions computed: P rows of Wp; the direct case has Wp == Q */
    const int64_t G = P * Wp, tiles = (G + SP_TILE - 1) / SP_TILE;
    const size_t in_img = (size_t)C * H * W, out_img = (size_t)K * P * Q;
    for (int64_t n = 0; n < N; n++) {
        const float *x = in + n * in_img;
        if (!direct) {
            float *dst = xpad;
            memset(dst, 0, pad_floats * sizeof(float));
#pragma omp parallel for schedule(static) if (in_img >= (size_t)OPS_PAR_MIN)
            for (int64_t c = 0; c < C; c++)
                for (int64_t y = 0; y < H; y++)
                    memcpy(dst + c * plane + (y + p->pad_h) * Wp + p->pad_w,
                           x + ((size_t)c * H + y) * W, (size_t)W * sizeof(float));
            x = xpad;
        }
        float *o = out + n * out_img;
        const float *res = residual ? residual + n * out_img : NULL;
        const int64_t items = tiles * K;
        const int par = w->nnz * G >= OPS_PAR_MIN;
#pragma omp parallel for schedule(static) if (par)
        for (int64_t it = 0; it < items; it++) {
            const int64_t tile = it / K, k = it % K;
            const int64_t i0 = tile * SP_TILE, width = G - i0 < SP_TILE ? G - i0 : SP_TILE;
            float acc[SP_TILE] __attribute__((aligned(64)));
            sp_row_tile(acc, x + i0, off, w->col, w->val, w->row_ptr[k], w->row_ptr[k + 1], width);
            const float b = bias ? bias[k] : 0.0f;
            float *ok = o + (size_t)k * P * Q;
            const float *rk = res ? res + (size_t)k * P * Q : NULL;
            if (direct) {
                for (int64_t i = 0; i < width; i++) {
                    float v = acc[i] + b;
                    if (rk) v += rk[i0 + i];
                    ok[i0 + i] = sp_act(v, act);
                }
            } else {
                int64_t y = i0 / Wp, q = i0 % Wp;
                for (int64_t i = 0; i < width; i++) {
                    if (q < Q) {
                        const int64_t oi = y * Q + q;
                        float v = acc[i] + b;
                        if (rk) v += rk[oi];
                        ok[oi] = sp_act(v, act);
                    }
                    if (++q == Wp) { q = 0; y++; }
                }
            }
        }
    }
    if (act != OVS_ACT_NONE && act != OVS_ACT_RELU) return ovs_act_forward(out, N * K * P * Q, act);
    return OVS_OK;
}
