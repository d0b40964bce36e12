/* SC-CLIP's feature calibration ops (github.com/SuleBai/SC-CLIP, clip/model.py): anomaly tokens
 * by local outlier factor (lof_pytorch), their repair from 8-neighbours (mean_interpolation), and
 * the thresholded-similarity aggregation (adaptively_aggregate). Letters as in ops.h; M tokens. */
#include "ops/ops_internal.h"

#include <stdlib.h>

/* Scratch floats the LOF ops need: distances (M, M) double, k-distances (M,)
 * double, neighbour indices (M, k) int64, scores as float32 (M,). */
size_t ovs_lof_scratch_floats(int64_t M, int64_t k) {
    if (M < 0 || k < 0) return 0;
    const size_t m = (size_t)M, kk = (size_t)(k < M ? k : M);
    return 2 * m * m + 2 * m + 2 * m * kk + m + 8;
}

static int lof_check(const char *op, uint8_t *outlier, double *lof, const float *x, int64_t M,
                     int64_t D, int64_t k, float contamination, float *scratch) {
    int st;
    if ((st = ops_check_nonneg(op, "M", M)) || (st = ops_check_nonneg(op, "D", D)) ||
        (st = ops_check_pos(op, "k", k)))
        return st;
    if (!(contamination >= 0.0f && contamination <= 1.0f))
        return ovs_set_error(OVS_ERR_ARG, "%s: contamination must be in [0, 1], got %g", op,
                             (double)contamination);
    int64_t n;
    if ((st = ops_mul(&n, op, M, D)) || (st = ops_mul(&n, op, M, M)) || (st = ops_mul(&n, op, n, 2)))
        return st;
    if ((st = ops_check_ptr(op, "outlier", outlier, M)) || (st = ops_check_ptr(op, "lof", lof, M)) ||
        (st = ops_check_ptr(op, "x", x, M * D)) || (st = ops_check_ptr(op, "scratch", scratch, M)))
        return st;
    return OVS_OK;
}

/* torch.quantile(v (n,) float32, q) with linear interpolation, in float32 as torch does it. */
static int cmp_float(const void *a, const void *b) {
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static float quantile_f32(float *v, int64_t n, float q) {
    qsort(v, (size_t)n, sizeof(float), cmp_float);
    const float rank = q * (float)(n - 1);
    const int64_t lo = (int64_t)rank;
    const int64_t hi = (int64_t)ceilf(rank);
    const float w = rank - (float)lo, a = v[lo], b = v[hi < n ? hi : n - 1];
    return w < 0.5f ? a + w * (b - a) : b - (b - a) * (1.0f - w); /* torch.lerp */
}

/* The k smallest row[j] over j != i into ni (ascending), by repeated minimum (index order
 * breaks ties): the plain selection of the naive twin and the fallback for k > 64. */
static void select_naive(const double *row, int64_t M, int64_t i, int64_t k, int64_t *ni) {
    for (int64_t r = 0; r < k; r++) {
        int64_t best = -1;
        for (int64_t j = 0; j < M; j++) {
            if (j == i) continue;
            int taken = 0;
            for (int64_t t = 0; t < r; t++) taken |= ni[t] == j;
            if (taken) continue;
            if (best < 0 || row[j] < row[best]) best = j;
        }
        ni[r] = best;
    }
}

/* From distances d (M, M) and k (1 <= k <= M - 1): k-distances kd, neighbours nb, scores lof
 * and the outliers. */
static void lof_finish(uint8_t *outlier, double *lof, const double *d, int64_t M, int64_t k,
                       float contamination, double *kd, int64_t *nb, float *sorted, int naive) {
    /* per row: the k nearest other rows, ascending */
#pragma omp parallel for schedule(static) if (!naive && M * M >= OPS_PAR_MIN) num_threads(ovs_get_num_threads())
    for (int64_t i = 0; i < M; i++) {
        const double *row = d + (size_t)i * M;
        int64_t *ni = nb + (size_t)i * k;
        if (naive || k > 64) {
            select_naive(row, M, i, k, ni);
            kd[i] = row[ni[k - 1]];
            continue;
        }
        double tv[64]; /* sorted insertion into the current k best */
        int64_t n = 0;
        for (int64_t j = 0; j < M; j++) {
            if (j == i) continue;
            const double v = row[j];
            if (n == k && !(v < tv[k - 1])) continue;
            int64_t p = n < k ? n++ : k - 1;
            while (p > 0 && v < tv[p - 1]) {
                tv[p] = tv[p - 1];
                ni[p] = ni[p - 1];
                p--;
            }
            tv[p] = v;
            ni[p] = j;
        }
        kd[i] = tv[k - 1];
    }
    /* lof[i] = mean_j lrd(nb_j) / lrd(i) with lrd = k / kd (SC-CLIP's reach distance is always
     * the row's own k-distance): = kd[i] * mean_j 1 / kd[nb_j] */
    int finite = 1;
    for (int64_t i = 0; i < M; i++) {
        const double lrd_i = (double)k / kd[i];
        double s = 0.0;
        for (int64_t t = 0; t < k; t++) s += ((double)k / kd[nb[(size_t)i * k + t]]) / lrd_i;
        lof[i] = s / (double)k;
        finite &= isfinite(lof[i]) != 0;
        sorted[i] = (float)lof[i];
    }
    for (int64_t i = 0; i < M; i++) outlier[i] = 0;
    if (!finite) return; /* duplicate tokens (k-distance 0): no ranking, nothing is an anomaly */
    const float thr = quantile_f32(sorted, M, (float)(1.0 - (double)contamination));
    for (int64_t i = 0; i < M; i++) outlier[i] = lof[i] > (double)thr;
}

static int lof_run(const char *op, uint8_t *outlier, double *lof, const float *x, int64_t M,
                   int64_t D, int64_t k, float contamination, float *scratch, int naive) {
    int st = lof_check(op, outlier, lof, x, M, D, k, contamination, scratch);
    if (st) return st;
    if (M < 2) {
        if (M) {
            outlier[0] = 0;
            lof[0] = 1.0;
        }
        return OVS_OK;
    }
    if (k > M - 1) k = M - 1;
    double *d = (double *)scratch;          /* (M, M) squared distances */
    double *kd = d + (size_t)M * M;         /* (M,) k-distances */
    int64_t *nb = (int64_t *)(kd + M);      /* (M, k) nearest rows */
    float *sorted = (float *)(nb + (size_t)M * k); /* (M,) scores as float32 */
    if (naive) {
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < M; j++) {
                double s = 0.0;
                for (int64_t c = 0; c < D; c++) {
                    const double t = (double)x[i * D + c] - (double)x[j * D + c];
                    s += t * t;
                }
                d[(size_t)i * M + j] = s;
            }
    } else {
        /* symmetric: the upper triangle, row blocks in parallel, mirrored afterwards */
#pragma omp parallel for schedule(dynamic, 8) if (M * M * D >= OPS_PAR_MIN) num_threads(ovs_get_num_threads())
        for (int64_t i = 0; i < M; i++) {
            const float *xi = x + i * D;
            d[(size_t)i * M + i] = 0.0;
            for (int64_t j = i + 1; j < M; j++) {
                const float *xj = x + j * D;
                double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
                int64_t c = 0;
                for (; c + 4 <= D; c += 4) {
                    const double t0 = (double)xi[c] - xj[c], t1 = (double)xi[c + 1] - xj[c + 1];
                    const double t2 = (double)xi[c + 2] - xj[c + 2], t3 = (double)xi[c + 3] - xj[c + 3];
                    s0 += t0 * t0;
                    s1 += t1 * t1;
                    s2 += t2 * t2;
                    s3 += t3 * t3;
                }
                for (; c < D; c++) {
                    const double t = (double)xi[c] - xj[c];
                    s0 += t * t;
                }
                d[(size_t)i * M + j] = (s0 + s1) + (s2 + s3);
            }
        }
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < i; j++) d[(size_t)i * M + j] = d[(size_t)j * M + i];
    }
    lof_finish(outlier, lof, d, M, k, contamination, kd, nb, sorted, naive);
    return OVS_OK;
}

int ovs_lof_outliers(uint8_t *outlier, double *lof, const float *x, int64_t M, int64_t D,
                     int64_t k, float contamination, float *scratch) {
    return lof_run("ovs_lof_outliers", outlier, lof, x, M, D, k, contamination, scratch, 0);
}

int ovs_lof_outliers_naive(uint8_t *outlier, double *lof, const float *x, int64_t M, int64_t D,
                           int64_t k, float contamination, float *scratch) {
    return lof_run("ovs_lof_outliers_naive", outlier, lof, x, M, D, k, contamination, scratch, 1);
}

int ovs_neighbour_fill(float *out, const float *x, int64_t ldx, const uint8_t *outlier,
                       int64_t H, int64_t W, int64_t D) {
    static const char op[] = "ovs_neighbour_fill";
    int st;
    int64_t M;
    if ((st = ops_check_nonneg(op, "H", H)) || (st = ops_check_nonneg(op, "W", W)) ||
        (st = ops_check_nonneg(op, "D", D)) || (st = ops_mul(&M, op, H, W)))
        return st;
    if (ldx < D) return ovs_set_error(OVS_ERR_ARG, "%s: ldx %lld < D %lld", op, (long long)ldx, (long long)D);
    if ((st = ops_check_ptr(op, "out", out, M * D)) || (st = ops_check_ptr(op, "x", x, M * D)) ||
        (st = ops_check_ptr(op, "outlier", outlier, M)))
        return st;
#pragma omp parallel for schedule(static) if (M * D >= OPS_PAR_MIN) num_threads(ovs_get_num_threads())
    for (int64_t p = 0; p < M; p++) {
        const int64_t i = p / W, j = p % W;
        float *o = out + p * D;
        const float *xp = x + p * ldx;
        int64_t n = 0;
        if (outlier[p]) {
            for (int64_t c = 0; c < D; c++) o[c] = 0.0f;
            for (int64_t di = -1; di <= 1; di++)
                for (int64_t dj = -1; dj <= 1; dj++) {
                    const int64_t a = i + di, b = j + dj;
                    if ((!di && !dj) || a < 0 || a >= H || b < 0 || b >= W || outlier[a * W + b]) continue;
                    const float *xq = x + (a * W + b) * ldx;
                    for (int64_t c = 0; c < D; c++) o[c] += xq[c];
                    n++;
                }
        }
        if (n) {
            const float inv = (float)n;
            for (int64_t c = 0; c < D; c++) o[c] /= inv;
        } else if (o != xp) {
            memcpy(o, xp, (size_t)D * sizeof(float));
        }
    }
    return OVS_OK;
}

static int aggregate_check(const char *op, float *out, const float *x, int64_t ldx, float *corr,
                           int64_t M, int64_t D) {
    int st;
    int64_t n;
    if ((st = ops_check_nonneg(op, "M", M)) || (st = ops_check_nonneg(op, "D", D)) ||
        (st = ops_mul(&n, op, M, M)) || (st = ops_mul(&n, op, M, D)))
        return st;
    if (ldx < D) return ovs_set_error(OVS_ERR_ARG, "%s: ldx %lld < D %lld", op, (long long)ldx, (long long)D);
    if ((st = ops_check_ptr(op, "out", out, M * D)) || (st = ops_check_ptr(op, "x", x, M * D)) ||
        (st = ops_check_ptr(op, "corr", corr, M * M)))
        return st;
    return OVS_OK;
}

/* corr (M, M) in place: entries < beta -> 0, then each row / (row sum + 1e-6). */
static void threshold_rows(float *corr, int64_t M, float beta) {
#pragma omp parallel for schedule(static) if (M * M >= OPS_PAR_MIN) num_threads(ovs_get_num_threads())
    for (int64_t i = 0; i < M; i++) {
        float *r = corr + i * M;
        float s = 0.0f;
        for (int64_t j = 0; j < M; j++) {
            if (r[j] < beta) r[j] = 0.0f;
            s += r[j];
        }
        const float den = s + 1e-6f;
        for (int64_t j = 0; j < M; j++) r[j] /= den;
    }
}

int ovs_similarity_aggregate(float *out, const float *x, int64_t ldx, float *corr, int64_t M,
                             int64_t D, float beta) {
    static const char op[] = "ovs_similarity_aggregate";
    int st = aggregate_check(op, out, x, ldx, corr, M, D);
    if (st) return st;
    if (M == 0) return OVS_OK;
    threshold_rows(corr, M, beta);
    return ops_sgemm(op, 0, M, D, M, 1.0f, corr, M, x, ldx, 0.0f, out, D);
}

int ovs_similarity_aggregate_naive(float *out, const float *x, int64_t ldx, float *corr,
                                   int64_t M, int64_t D, float beta) {
    static const char op[] = "ovs_similarity_aggregate_naive";
    int st = aggregate_check(op, out, x, ldx, corr, M, D);
    if (st) return st;
    for (int64_t i = 0; i < M; i++) {
        float *r = corr + i * M;
        double s = 0.0;
        for (int64_t j = 0; j < M; j++) {
            if (r[j] < beta) r[j] = 0.0f;
            s += r[j];
        }
        for (int64_t j = 0; j < M; j++) r[j] = (float)(r[j] / (s + 1e-6));
        for (int64_t c = 0; c < D; c++) {
            double a = 0.0;
            for (int64_t j = 0; j < M; j++) a += (double)r[j] * x[j * ldx + c];
            out[i * D + c] = (float)a;
        }
    }
    return OVS_OK;
}
