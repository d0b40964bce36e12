/* Plain reference versions of the fast kernels, for tests: direct loops straight from each
 * op's definition, double accumulation, libm math, one thread, no BLAS, no scratch.
 * They take the same arguments and run the same argument checks as their fast twins.
 * Dimension letters as in include/ovs/ops.h. */
#include "ops/ops_internal.h"

static float act_naive(float x, ovs_act act) {
    switch (act) {
    case OVS_ACT_RELU: return x < 0.0f ? 0.0f : x;
    case OVS_ACT_GELU: return (float)(0.5 * (double)x * erfc(-(double)x / sqrt(2.0)));
    case OVS_ACT_QUICKGELU: return (float)((double)x / (1.0 + exp(-1.702 * (double)x)));
    case OVS_ACT_SIGMOID: return (float)(1.0 / (1.0 + exp(-(double)x)));
    case OVS_ACT_NONE: break;
    }
    return x;
}

/* sum_f a[f] b[f] in double. */
static double dot_naive(const float *a, const float *b, int64_t F) {
    double acc = 0.0;
    for (int64_t f = 0; f < F; f++) acc += (double)a[f] * (double)b[f];
    return acc;
}

int ovs_act_forward_naive(float *x, int64_t n, ovs_act act) {
    int st = ops_act_check("ovs_act_forward_naive", x, n, act);
    if (st) return st;
    for (int64_t i = 0; i < n; i++) x[i] = act_naive(x[i], act);
    return OVS_OK;
}

int ovs_linear_forward_naive(float *out, const float *in, const ovs_matrix *weight,
                             const float *bias, const float *residual, int64_t M, int64_t C,
                             int64_t K, ovs_act act) {
    int st = ops_linear_check("ovs_linear_forward_naive", out, in, weight, M, C, K, act);
    if (st) return st;
    for (int64_t i = 0; i < M; i++)
        for (int64_t k = 0; k < K; k++) {
            double acc = 0.0;
            for (int64_t c = 0; c < C; c++)
                acc += (double)in[i * C + c] * (double)ops_matrix_at(weight, k, c);
            if (bias) acc += bias[k];
            if (residual) acc += residual[i * K + k];   /* read before out[i, k] is written */
            out[i * K + k] = act_naive((float)acc, act);
        }
    return OVS_OK;
}

/* The Winograd F(2x2, 3x3) and F(4x4, 3x3) convs (csrc/ops/winograd.c) as plain loops: the
 * transforms as the matrix products G g G^T, B^T d B, A^T M A (terms with a zero coefficient
 * left out, the others added in increasing index order, from 0), each M element one fmaf chain
 * over c in increasing order; float arithmetic throughout, so it equals the fast path (==) for
 * every act (but GELU, QuickGELU, sigmoid: libm here, ops_act_inplace there). */
static const float wg_G2[4 * 3] = {1, 0, 0, 0.5f, 0.5f, 0.5f, 0.5f, -0.5f, 0.5f, 0, 0, 1};
static const float wg_BT2[4 * 4] = {1, 0, -1, 0, 0, 1, 1, 0, 0, -1, 1, 0, 0, 1, 0, -1};
static const float wg_AT2[2 * 4] = {1, 1, 1, 0, 0, 1, -1, -1};
/* F(4x4): the points 0, 1, -1, 1/2, -2, infinity (winograd.c) */
static const float wg_G4[6 * 3] = {1,              0,              0,
                                   1.0f / 3.0f,    1.0f / 3.0f,    1.0f / 3.0f,
                                   -1.0f / 3.0f,   1.0f / 3.0f,    -1.0f / 3.0f,
                                   -16.0f / 15.0f, -8.0f / 15.0f,  -4.0f / 15.0f,
                                   1.0f / 15.0f,   -2.0f / 15.0f,  4.0f / 15.0f,
                                   0,              0,              1};
static const float wg_BT4[6 * 6] = {1, -1.5f, -2,    1.5f,  1,    0, 0, -1,   0.5f, 2.5f, 1, 0,
                                    0, 1,     -2.5f, 0.5f,  1,    0, 0, -2,   -1,   2,    1, 0,
                                    0, 0.5f,  -1,    -0.5f, 1,    0, 0, 1,    -1.5f, -2,  1.5f, 1};
static const float wg_AT4[4 * 6] = {1, 1, 1, 1,     1,  0, 0, 1, -1, 0.5f,   -2, 0,
                                    0, 1, 1, 0.25f, 4,  0, 0, 1, -1, 0.125f, -8, 1};

/* out (rows, cols) = L (rows, n) @ X (n, cols), terms with a zero coefficient left out. */
static void wg_lmul(float *out, const float *L, int64_t rows, int64_t n, const float *X,
                    int64_t cols) {
    for (int64_t a = 0; a < rows; a++)
        for (int64_t j = 0; j < cols; j++) {
            float acc = 0.0f;
            for (int64_t i = 0; i < n; i++)
                if (L[a * n + i] != 0.0f) acc += L[a * n + i] * X[i * cols + j];
            out[a * cols + j] = acc;
        }
}

/* out (rows, rows) = L (rows, n) @ X (n, n) @ L^T, as (L (L X)^T)^T: two plain products. */
static void wg_sandwich(float *out, const float *L, int64_t rows, int64_t n, const float *X) {
    float t[6 * 6], u[6 * 6];   /* t (rows, n) = L X, then u (rows, rows) = L t^T */
    wg_lmul(t, L, rows, n, X, n);
    float tt[6 * 6];            /* t^T (n, rows) */
    for (int64_t a = 0; a < rows; a++)
        for (int64_t j = 0; j < n; j++) tt[j * rows + a] = t[a * n + j];
    wg_lmul(u, L, rows, n, tt, rows);
    for (int64_t a = 0; a < rows; a++)
        for (int64_t b = 0; b < rows; b++) out[a * rows + b] = u[b * rows + a];
}

/* F(m x m, 3x3), m = 2 or 4: tiles of m x m outputs from patches of a = m + 2. */
static int wg_naive(float *out, const float *in, const ovs_matrix *weight, const float *bias,
                    const float *residual, int64_t N, int64_t C, int64_t H, int64_t W, int64_t K,
                    int64_t ph, int64_t pw, ovs_act act, int64_t P, int64_t Q, int64_t m) {
    const int64_t a = m + 2, XI = a * a;
    const float *G = m == 4 ? wg_G4 : wg_G2, *BT = m == 4 ? wg_BT4 : wg_BT2,
                *AT = m == 4 ? wg_AT4 : wg_AT2;
    float *U = ovs_malloc((size_t)(K * C * XI + 1) * sizeof(float));   /* (K, C, XI) */
    if (!U)
        return ovs_set_error(OVS_ERR_NOMEM, "ovs_conv2d_forward_naive: out of memory");
    for (int64_t k = 0; k < K; k++)
        for (int64_t c = 0; c < C; c++) {
            float g[9];
            for (int i = 0; i < 9; i++) g[i] = ops_matrix_at(weight, k, c * 9 + i);
            wg_sandwich(U + (k * C + c) * XI, G, a, 3, g);
        }
    for (int64_t n = 0; n < N; n++)
        for (int64_t ty = 0; m * ty < P; ty++)
            for (int64_t tx = 0; m * tx < Q; tx++)
                for (int64_t k = 0; k < K; k++) {
                    float mm[36] = {0}, y[16];
                    for (int64_t c = 0; c < C; c++) {
                        float d[36], v[36];
                        for (int64_t r = 0; r < a; r++)
                            for (int64_t q = 0; q < a; q++) {
                                const int64_t ih = m * ty - ph + r, iw = m * tx - pw + q;
                                d[r * a + q] = ih >= 0 && ih < H && iw >= 0 && iw < W
                                                   ? in[((n * C + c) * H + ih) * W + iw]
                                                   : 0.0f;
                            }
                        wg_sandwich(v, BT, a, a, d);
                        for (int64_t e = 0; e < XI; e++)
                            mm[e] = fmaf(U[(k * C + c) * XI + e], v[e], mm[e]);
                    }
                    wg_sandwich(y, AT, m, a, mm);   /* Y = A^T M A */
                    for (int64_t i = 0; i < m; i++)
                        for (int64_t b = 0; b < m; b++) {
                            const int64_t oy = m * ty + i, ox = m * tx + b;
                            if (oy >= P || ox >= Q) continue;
                            const int64_t o = ((n * K + k) * P + oy) * Q + ox;
                            float v = y[i * m + b] + (bias ? bias[k] : 0.0f);
                            if (residual) v += residual[o];
                            out[o] = act_naive(v, act);
                        }
                }
    ovs_free(U);
    return OVS_OK;
}

int ovs_conv2d_forward_naive(float *out, const float *in, const ovs_matrix *weight,
                             const float *bias, const float *residual, int64_t N, int64_t C,
                             int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                             const ovs_conv2d_params *p, ovs_act act) {
    int64_t P, Q;
    int st = ops_conv2d_check("ovs_conv2d_forward_naive", out, in, weight, N, C, H, W, K, R, S,
                              p, act, &P, &Q);
    if (st || (st = ops_conv2d_check_algo("ovs_conv2d_forward_naive", R, S, p))) return st;
    /* AUTO is the direct conv here: the definition every fast path is checked against. */
    if (p->algo == OVS_CONV2D_WINOGRAD || p->algo == OVS_CONV2D_WINOGRAD4)
        return N && K && P && Q ? wg_naive(out, in, weight, bias, residual, N, C, H, W, K,
                                           p->pad_h, p->pad_w, act, P, Q,
                                           p->algo == OVS_CONV2D_WINOGRAD4 ? 4 : 2)
                                : OVS_OK;
    const int64_t Cg = C / p->groups, Kg = K / p->groups;
    /* weight (K, Cg, R, S) */
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) {
            const int64_t g = k / Kg;
            for (int64_t y = 0; y < P; y++)
                for (int64_t x = 0; x < Q; x++) {
                    double acc = 0.0;
                    for (int64_t c = 0; c < Cg; c++)
                        for (int64_t r = 0; r < R; r++)
                            for (int64_t s = 0; s < S; s++) {
                                int64_t ih = y * p->stride_h - p->pad_h + r * p->dil_h;
                                int64_t iw = x * p->stride_w - p->pad_w + s * p->dil_w;
                                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                                acc += (double)in[((n * C + g * Cg + c) * H + ih) * W + iw] *
                                       (double)ops_matrix_at(weight, k, (c * R + r) * S + s);
                            }
                    int64_t o = ((n * K + k) * P + y) * Q + x;
                    if (bias) acc += bias[k];
                    if (residual) acc += residual[o];
                    out[o] = act_naive((float)acc, act);
                }
        }
    return OVS_OK;
}

int ovs_avgpool2d_forward_naive(float *out, const float *in, int64_t NC, int64_t H, int64_t W,
                                int64_t R, int64_t S, int64_t stride_h, int64_t stride_w,
                                int64_t pad_h, int64_t pad_w, int count_include_pad) {
    int64_t P, Q;
    int st = ops_avgpool2d_check("ovs_avgpool2d_forward_naive", out, in, NC, H, W, R, S, stride_h,
                                 stride_w, pad_h, pad_w, &P, &Q);
    if (st) return st;
    for (int64_t nc = 0; nc < NC; nc++)
        for (int64_t y = 0; y < P; y++)
            for (int64_t x = 0; x < Q; x++) {
                /* Every tap of the window over the zero-padded input. */
                double sum = 0.0;
                int64_t inside = 0, padded = 0;
                for (int64_t r = 0; r < R; r++)
                    for (int64_t s = 0; s < S; s++) {
                        int64_t ih = y * stride_h - pad_h + r, iw = x * stride_w - pad_w + s;
                        if (ih >= H + pad_h || iw >= W + pad_w) continue;   /* beyond padding */
                        padded++;
                        if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                        inside++;
                        sum += in[(nc * H + ih) * W + iw];
                    }
                int64_t div = count_include_pad ? padded : inside;
                out[(nc * P + y) * Q + x] = (float)(sum / (double)div);
            }
    return OVS_OK;
}

int ovs_layernorm_forward_naive(float *out, const float *in, const float *weight,
                                const float *bias, int64_t M, int64_t D, float eps) {
    int st = ops_layernorm_check("ovs_layernorm_forward_naive", out, in, weight, bias, M, D, eps);
    if (st) return st;
    for (int64_t i = 0; i < M; i++) {
        const float *x = in + i * D;
        double mean = 0.0, var = 0.0;
        for (int64_t j = 0; j < D; j++) mean += x[j];
        mean /= (double)D;
        for (int64_t j = 0; j < D; j++) var += (x[j] - mean) * (x[j] - mean);
        var /= (double)D;
        double rstd = 1.0 / sqrt(var + (double)eps);
        for (int64_t j = 0; j < D; j++) {
            double y = (x[j] - mean) * rstd;
            if (weight) y *= weight[j];
            if (bias) y += bias[j];
            out[i * D + j] = (float)y;
        }
    }
    return OVS_OK;
}

int ovs_softmax_forward_naive(float *x, int64_t M, int64_t D) {
    int st = ops_softmax_check("ovs_softmax_forward_naive", x, M, D);
    if (st) return st;
    for (int64_t i = 0; i < M; i++) {
        float *row = x + i * D;
        double m = -INFINITY, s = 0.0;
        for (int64_t j = 0; j < D; j++) m = row[j] > m ? row[j] : m;
        if (m == -INFINITY) {   /* all -inf: zeros, as the fast version */
            for (int64_t j = 0; j < D; j++) row[j] = 0.0f;
            continue;
        }
        for (int64_t j = 0; j < D; j++) s += exp(row[j] - m);
        for (int64_t j = 0; j < D; j++) row[j] = (float)(exp(row[j] - m) / s);
    }
    return OVS_OK;
}

int ovs_attention_forward_naive(float *out, const float *q, int64_t ldq, const float *k,
                                int64_t ldk, const float *v, int64_t ldv, int64_t T, int64_t U,
                                int64_t E, int64_t F, float scale, const float *mask,
                                int causal) {
    int st = ops_attention_forward_check("ovs_attention_forward_naive", out, q, ldq, k, ldk, v,
                                         ldv, T, U, E, F, causal);
    if (st) return st;
    const int64_t D = E * F;
    /* The logits are recomputed in each of three passes (max, normaliser, weighted sum) so
     * that no buffer is needed; the output row accumulates in place. */
    for (int64_t h = 0; h < E; h++)
        for (int64_t t = 0; t < T; t++) {
            const float *qt = q + t * ldq + h * F;
#define LOGIT(u, dst)                                                                      \
    do {                                                                                   \
        const float *ku = k + (u) * ldk + h * F;                                           \
        double dot = 0.0;                                                                  \
        for (int64_t f = 0; f < F; f++) dot += (double)qt[f] * (double)ku[f];              \
        dst = dot * scale + (mask ? mask[t * U + (u)] : 0.0);                              \
        if (causal && (u) > U - T + t) dst = -INFINITY;                                          \
    } while (0)
            double m = -INFINITY, s = 0.0, l;
            for (int64_t u = 0; u < U; u++) {
                LOGIT(u, l);
                if (l > m) m = l;
            }
            float *o = out + t * D + h * F;
            for (int64_t f = 0; f < F; f++) o[f] = 0.0f;
            if (m == -INFINITY) continue;   /* fully masked row: zeros */
            for (int64_t u = 0; u < U; u++) {
                LOGIT(u, l);
                s += exp(l - m);
            }
            for (int64_t u = 0; u < U; u++) {
                LOGIT(u, l);
                double pu = exp(l - m) / s;
                for (int64_t f = 0; f < F; f++) o[f] += (float)(pu * v[u * ldv + h * F + f]);
            }
#undef LOGIT
        }
    return OVS_OK;
}

/* PAMR straight from pamr.py's definition, in double, one class plane at a time. */
int ovs_pamr_forward_naive(float *out, const float *mask, const float *image, int64_t C,
                           int64_t K, int64_t H, int64_t W, const int64_t *dilations, int64_t ND,
                           int64_t steps) {
    static const char op[] = "ovs_pamr_forward_naive";
    static const int dy[8] = {-1, -1, -1, 0, 0, 1, 1, 1}, dx[8] = {-1, 0, 1, -1, 1, -1, 0, 1};
    int st = ops_pamr_check(op, C, K, H, W, dilations, ND, steps);
    if (st) return st;
    if (C == 0 || H == 0 || W == 0) return OVS_OK;
    const int64_t P = 8 * ND, HW = H * W, n = 9 * ND;
    double *aff = ovs_malloc((size_t)P * HW * sizeof(double));   /* (P, H, W) */
    double *cur = ovs_malloc((size_t)HW * sizeof(double));       /* (H, W) */
    double *nxt = ovs_malloc((size_t)HW * sizeof(double));       /* (H, W) */
    double *vals = ovs_malloc((size_t)n * sizeof(double));       /* (9 * ND,) */
    if (!aff || !cur || !nxt || !vals) {
        st = ovs_set_error(OVS_ERR_NOMEM, "%s: out of memory", op);
        goto done;
    }
#define CL(v, hi) ((v) < 0 ? 0 : ((v) > (hi) ? (hi) : (v)))
    for (int64_t y = 0; y < H; y++)
        for (int64_t x = 0; x < W; x++) {
            for (int64_t p = 0; p < P; p++) aff[p * HW + y * W + x] = 0.0;
            for (int64_t k = 0; k < K; k++) {
                const float *pl = image + k * HW;
                double mean = 0.0, ss = 0.0;
                for (int64_t i = 0; i < ND; i++)
                    for (int a = 0; a < 3; a++)
                        for (int b = 0; b < 3; b++) {
                            const int64_t yy = CL(y + (a - 1) * dilations[i], H - 1);
                            const int64_t xx = CL(x + (b - 1) * dilations[i], W - 1);
                            vals[i * 9 + a * 3 + b] = pl[yy * W + xx];
                            mean += pl[yy * W + xx];
                        }
                mean /= (double)n;
                for (int64_t i = 0; i < n; i++) ss += (vals[i] - mean) * (vals[i] - mean);
                const double sd = sqrt(ss / (double)(n - 1));
                for (int64_t i = 0; i < ND; i++)
                    for (int q = 0; q < 8; q++) {
                        const int64_t yy = CL(y + dy[q] * dilations[i], H - 1);
                        const int64_t xx = CL(x + dx[q] * dilations[i], W - 1);
                        aff[(i * 8 + q) * HW + y * W + x] +=
                            -fabs((double)pl[y * W + x] - (double)pl[yy * W + xx]) / (1e-8 + 0.1 * sd) / (double)K;
                    }
            }
            double mx = -INFINITY, sum = 0.0;
            for (int64_t p = 0; p < P; p++) mx = fmax(mx, aff[p * HW + y * W + x]);
            for (int64_t p = 0; p < P; p++) sum += exp(aff[p * HW + y * W + x] - mx);
            for (int64_t p = 0; p < P; p++)
                aff[p * HW + y * W + x] = exp(aff[p * HW + y * W + x] - mx) / sum;
        }
    for (int64_t c = 0; c < C; c++) {
        for (int64_t i = 0; i < HW; i++) cur[i] = mask[c * HW + i];
        for (int64_t s = 0; s < steps; s++) {
            for (int64_t y = 0; y < H; y++)
                for (int64_t x = 0; x < W; x++) {
                    double acc = 0.0;
                    for (int64_t i = 0; i < ND; i++)
                        for (int q = 0; q < 8; q++) {
                            const int64_t yy = CL(y + dy[q] * dilations[i], H - 1);
                            const int64_t xx = CL(x + dx[q] * dilations[i], W - 1);
                            acc += aff[(i * 8 + q) * HW + y * W + x] * cur[yy * W + xx];
                        }
                    nxt[y * W + x] = acc;
                }
            double *t = cur;
            cur = nxt;
            nxt = t;
        }
        for (int64_t i = 0; i < HW; i++) out[c * HW + i] = (float)cur[i];
    }
#undef CL
done:
    ovs_free(aff);
    ovs_free(cur);
    ovs_free(nxt);
    ovs_free(vals);
    return st;
}

int ovs_groupnorm_forward_naive(float *out, const float *in, const float *weight,
                                const float *bias, int64_t N, int64_t C, int64_t HW, int64_t G,
                                float eps) {
    int64_t total;
    int st = ops_groupnorm_check("ovs_groupnorm_forward_naive", out, in, N, C, HW, G, eps, &total);
    if (st) return st;
    const int64_t Cg = C / G;
    for (int64_t n = 0; n < N; n++)
        for (int64_t g = 0; g < G; g++) {
            const float *x = in + (n * C + g * Cg) * HW;   /* (Cg, HW) */
            double mean = 0.0, var = 0.0;
            for (int64_t j = 0; j < Cg * HW; j++) mean += x[j];
            mean /= (double)(Cg * HW);
            for (int64_t j = 0; j < Cg * HW; j++) var += (x[j] - mean) * (x[j] - mean);
            var /= (double)(Cg * HW);
            double rstd = 1.0 / sqrt(var + (double)eps);
            for (int64_t c = 0; c < Cg; c++)
                for (int64_t j = 0; j < HW; j++) {
                    double y = (x[c * HW + j] - mean) * rstd;
                    if (weight) y *= weight[g * Cg + c];
                    if (bias) y += bias[g * Cg + c];
                    out[(n * C + g * Cg + c) * HW + j] = (float)y;
                }
        }
    return OVS_OK;
}

int ovs_matmul_wt_naive(float *out, int64_t ldo, const float *a, int64_t lda,
                        const ovs_matrix *w, int64_t M, float alpha, float beta) {
    int empty;
    int st = ops_matmul_wt_check("ovs_matmul_wt_naive", out, ldo, a, lda, w, M, &empty);
    if (st || empty) return st;
    for (int64_t i = 0; i < M; i++)
        for (int64_t k = 0; k < w->rows; k++) {
            double acc = 0.0;
            for (int64_t c = 0; c < w->cols; c++)
                acc += (double)a[i * lda + c] * (double)ops_matrix_at(w, k, c);
            /* beta == 0 ignores out (it may hold NaN), as BLAS does */
            double y = (double)alpha * acc;
            if (beta != 0.0f) y += (double)beta * (double)out[i * ldo + k];
            out[i * ldo + k] = (float)y;
        }
    return OVS_OK;
}

int ovs_matmul_naive(float *out, int64_t ldo, const float *a, int64_t lda, const float *b,
                     int64_t ldb, int64_t M, int64_t K, int64_t N, float alpha, float beta) {
    int st = ops_matmul_check("ovs_matmul_naive", out, ldo, a, lda, b, ldb, M, K, N);
    if (st) return st;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double acc = 0.0;
            for (int64_t k = 0; k < K; k++) acc += (double)a[i * lda + k] * (double)b[k * ldb + j];
            double y = (double)alpha * acc;
            if (beta != 0.0f) y += (double)beta * (double)out[i * ldo + j];
            out[i * ldo + j] = (float)y;
        }
    return OVS_OK;
}

int ovs_adaptive_avgpool2d_forward_naive(float *out, const float *in, int64_t NC, int64_t H,
                                         int64_t W, int64_t P, int64_t Q) {
    int64_t n_out;
    int st = ops_adaptive_avgpool2d_check("ovs_adaptive_avgpool2d_forward_naive", out, in, NC, H,
                                          W, P, Q, &n_out);
    if (st || n_out == 0) return st;
    /* torch's adaptive windows: [floor(p H / P), ceil((p + 1) H / P)) by floor/ceil in double */
    for (int64_t nc = 0; nc < NC; nc++)
        for (int64_t p = 0; p < P; p++)
            for (int64_t q = 0; q < Q; q++) {
                const int64_t h0 = (int64_t)floor((double)p * H / P);
                const int64_t h1 = (int64_t)ceil((double)(p + 1) * H / P);
                const int64_t w0 = (int64_t)floor((double)q * W / Q);
                const int64_t w1 = (int64_t)ceil((double)(q + 1) * W / Q);
                double sum = 0.0;
                for (int64_t y = h0; y < h1; y++)
                    for (int64_t x = w0; x < w1; x++) sum += in[(nc * H + y) * W + x];
                out[(nc * P + p) * Q + q] = (float)(sum / (double)((h1 - h0) * (w1 - w0)));
            }
    return OVS_OK;
}

/* Source coordinate of output index d along an axis of `in` inputs and `n` outputs, as torch's
 * area_pixel_compute_source_index, in float as torch computes it for float tensors (the
 * coordinate is part of the definition: in double it would move by ~1e-7 of the index);
 * bilinear clamps negative coordinates to 0, bicubic does not. */
static float resize_source_naive(int64_t in, int64_t n, int64_t d, int align_corners, int cubic) {
    if (align_corners) return n > 1 ? (float)(in - 1) / (float)(n - 1) * (float)d : 0.0f;
    float s = (float)in / (float)n * ((float)d + 0.5f) - 0.5f;
    return (!cubic && s < 0.0f) ? 0.0f : s;
}

static int64_t clamp_index(int64_t i, int64_t n) { return i < 0 ? 0 : (i > n - 1 ? n - 1 : i); }

/* Interpolation weights (in double) of the taps i - 1 .. i + 2 (cubic) or i .. i + 1 (linear)
 * around the source coordinate s; *i0 = floor(s) (kept inside the input), t its fractional
 * offset (float, as torch). */
static void resize_weights_naive(float s, int64_t in, int cubic, int64_t *i0, double w[4]) {
    int64_t i = (int64_t)floorf(s);
    if (i > in - 1) i = in - 1;
    float tf = s - (float)i;
    const double t = tf < 0.0f ? 0.0 : (tf > 1.0f ? 1.0 : (double)tf);
    *i0 = i;
    if (!cubic) {
        w[0] = 1.0 - t;
        w[1] = t;
        return;
    }
    /* Keys' cubic convolution kernel with A = -0.75 at distances 1 + t, t, 1 - t, 2 - t */
    const double A = -0.75, d[4] = {1.0 + t, t, 1.0 - t, 2.0 - t};
    for (int j = 0; j < 4; j++) {
        const double x = d[j];
        w[j] = x <= 1.0 ? ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                        : ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    }
}

static int resize_naive(const char *op, float *out, const float *in, int64_t NC, int64_t H,
                        int64_t W, int64_t P, int64_t Q, int align_corners, int cubic) {
    int64_t n_out;
    int st = ops_planes_check(op, "resize", out, in, NC, H, W, P, Q, &n_out);
    if (st || n_out == 0) return st;
    const int taps = cubic ? 4 : 2, first = cubic ? -1 : 0;
    for (int64_t nc = 0; nc < NC; nc++)
        for (int64_t p = 0; p < P; p++)
            for (int64_t q = 0; q < Q; q++) {
                int64_t y0, x0;
                double wy[4], wx[4];
                resize_weights_naive(resize_source_naive(H, P, p, align_corners, cubic), H, cubic,
                                     &y0, wy);
                resize_weights_naive(resize_source_naive(W, Q, q, align_corners, cubic), W, cubic,
                                     &x0, wx);
                double acc = 0.0;
                for (int i = 0; i < taps; i++)
                    for (int j = 0; j < taps; j++) {
                        const int64_t y = clamp_index(y0 + first + i, H);
                        const int64_t x = clamp_index(x0 + first + j, W);
                        acc += wy[i] * wx[j] * (double)in[(nc * H + y) * W + x];
                    }
                out[(nc * P + p) * Q + q] = (float)acc;
            }
    return OVS_OK;
}

int ovs_resize_bilinear_naive(float *out, const float *in, int64_t NC, int64_t H, int64_t W,
                              int64_t P, int64_t Q, int align_corners) {
    return resize_naive("ovs_resize_bilinear_naive", out, in, NC, H, W, P, Q, align_corners, 0);
}

int ovs_resize_bicubic_naive(float *out, const float *in, int64_t NC, int64_t H, int64_t W,
                             int64_t P, int64_t Q, int align_corners) {
    return resize_naive("ovs_resize_bicubic_naive", out, in, NC, H, W, P, Q, align_corners, 1);
}

int ovs_attention_probs_naive(float *probs, const float *a, int64_t lda, const float *b,
                              int64_t ldb, int64_t T, int64_t U, int64_t F, float scale,
                              const float *mask, int causal) {
    int st = ops_attention_probs_check("ovs_attention_probs_naive", probs, a, lda, b, ldb, T, U,
                                       F, causal);
    if (st) return st;
    for (int64_t t = 0; t < T; t++) {
        float *row = probs + t * U;
        /* logits in double into the row's own floats would round them; compute each twice */
#define LOGIT(u)                                                                         \
    (causal && (u) > U - T + t ? -INFINITY : dot_naive(a + t * lda, b + (u) * ldb, F) *   \
                                                     (double)scale +                     \
                                                 (mask ? (double)mask[t * U + (u)] : 0.0))
        double m = -INFINITY, s = 0.0;
        for (int64_t u = 0; u < U; u++) m = fmax(m, LOGIT(u));
        if (m == -INFINITY) {   /* fully masked row: zeros */
            for (int64_t u = 0; u < U; u++) row[u] = 0.0f;
            continue;
        }
        for (int64_t u = 0; u < U; u++) s += exp(LOGIT(u) - m);
        for (int64_t u = 0; u < U; u++) row[u] = (float)(exp(LOGIT(u) - m) / s);
#undef LOGIT
    }
    return OVS_OK;
}
