/* Weight matrices, the checked sgemm wrapper every op goes through, and argument checks.
 * Dimension letters as in include/ovs/ops.h. */
#include "ops/ops_internal.h"
#include "core/blas.h"

#include <limits.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* ---------------------------------------------------------------- argument checks */
int ops_check_nonneg(const char *op, const char *name, int64_t v) {
    if (v < 0)
        return ovs_set_error(OVS_ERR_ARG, "%s: %s must be >= 0, got %lld", op, name, (long long)v);
    return OVS_OK;
}

int ops_check_pos(const char *op, const char *name, int64_t v) {
    if (v < 1)
        return ovs_set_error(OVS_ERR_ARG, "%s: %s must be >= 1, got %lld", op, name, (long long)v);
    return OVS_OK;
}

int ops_check_ptr(const char *op, const char *name, const void *ptr, int64_t count) {
    if (!ptr && count > 0)
        return ovs_set_error(OVS_ERR_ARG, "%s: %s is NULL but %lld elements are needed", op, name,
                             (long long)count);
    return OVS_OK;
}

int ops_mul(int64_t *out, const char *op, int64_t a, int64_t b) {
    if (__builtin_mul_overflow(a, b, out))
        return ovs_set_error(OVS_ERR_OVERFLOW, "%s: size %lld x %lld overflows", op, (long long)a,
                             (long long)b);
    return OVS_OK;
}

int ops_check_matrix(const char *op, const ovs_matrix *w, int64_t rows, int64_t cols) {
    if (!w) return ovs_set_error(OVS_ERR_ARG, "%s: weight matrix is NULL", op);
    if (w->format != OVS_MATRIX_DENSE && w->format != OVS_MATRIX_PACKED)
        return ovs_set_error(OVS_ERR_UNSUPPORTED, "%s: weight format %d is not supported", op,
                             (int)w->format);
    if (w->rows != rows || w->cols != cols)
        return ovs_set_error(OVS_ERR_ARG, "%s: weight is (%lld, %lld), expected (%lld, %lld)", op,
                             (long long)w->rows, (long long)w->cols, (long long)rows,
                             (long long)cols);
    if (!w->data && rows > 0 && cols > 0)
        return ovs_set_error(OVS_ERR_ARG, "%s: weight data is NULL", op);
    return OVS_OK;
}

int ops_check_act(const char *op, ovs_act act) {
    if (ovs_act_name(act)) return OVS_OK; /* an entry of the activations table (act.c) */
    return ovs_set_error(OVS_ERR_ARG, "%s: unknown activation %d", op, (int)act);
}

/* ---------------------------------------------------------------- sgemm */
/* One sgemm, spread over ovs's OpenMP threads by output blocks. OpenBLAS itself runs single-
 * threaded (ovs_set_num_threads keeps it at 1): mixing its spinning worker threads with
 * OpenMP's oversubscribes the cores. A large product is cut along its longer output side into
 * SGEMM_CHUNKS blocks whose bounds depend only on the shape -- never on the thread count -- and
 * each block is one sgemm over the full K, run by whichever thread takes it (one thread runs
 * them all in turn). OpenBLAS may round a block differently from the whole product, so a fixed
 * cut is what makes the result independent of the number of threads. */
static void sgemm_block(int trans_b, int64_t M, int64_t N, int64_t Kd, float alpha, const float *A,
                        int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    ovs_sgemm(OVS_CBLAS_ROW_MAJOR, OVS_CBLAS_NO_TRANS, trans_b ? OVS_CBLAS_TRANS : OVS_CBLAS_NO_TRANS,
              (int)M, (int)N, (int)Kd, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

/* Blocks of a large product (a few per thread on 2-4 cores, handed out dynamically: a thread
 * the OS deschedules on a busy machine then delays the call by one block, not by half of it). */
#define SGEMM_CHUNKS 6
/* Products of fewer multiply-adds are one sgemm. */
#define SGEMM_SPLIT_MACS 2.0e6

static void sgemm_parallel(int trans_b, int64_t M, int64_t N, int64_t Kd, float alpha,
                           const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                           float *C, int64_t ldc) {
    const int split_m = M >= N;
    const int64_t len = split_m ? M : N;
    int64_t chunk = (len + SGEMM_CHUNKS - 1) / SGEMM_CHUNKS;
    chunk = (chunk + 15) / 16 * 16;
    if (chunk < 64) chunk = 64;
    const int64_t nchunks = (len + chunk - 1) / chunk;
    if ((double)M * (double)N * (double)Kd < SGEMM_SPLIT_MACS || nchunks < 2) {
        sgemm_block(trans_b, M, N, Kd, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    int threads = 1;
#ifdef _OPENMP
    if (!omp_in_parallel()) threads = ovs_get_num_threads();
#endif
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t lo = c * chunk, n = lo + chunk < len ? chunk : len - lo;
        if (split_m)
            sgemm_block(trans_b, n, N, Kd, alpha, A + lo * lda, lda, B, ldb, beta, C + lo * ldc, ldc);
        else
            sgemm_block(trans_b, M, n, Kd, alpha, A, lda, trans_b ? B + lo * ldb : B + lo, ldb, beta,
                        C + lo, ldc);
    }
}

static int blas_int(const char *op, const char *name, int64_t v) {
    if (v > INT_MAX)
        return ovs_set_error(OVS_ERR_OVERFLOW,
                             "%s: %s = %lld does not fit in a BLAS int (max %d); split the work",
                             op, name, (long long)v, INT_MAX);
    return OVS_OK;
}

int ops_sgemm(const char *op, int trans_b, int64_t M, int64_t N, int64_t Kd, float alpha,
              const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
              int64_t ldc) {
    if (M == 0 || N == 0) return OVS_OK;
    int st;
    if ((st = blas_int(op, "M", M)) || (st = blas_int(op, "N", N)) ||
        (st = blas_int(op, "K", Kd)) || (st = blas_int(op, "ldc", ldc)))
        return st;
    if (Kd == 0) {
        /* BLAS implementations disagree on whether k = 0 still applies beta; do it here. */
        for (int64_t i = 0; i < M; i++) {
            float *row = C + i * ldc;
            if (beta == 0.0f) memset(row, 0, (size_t)N * sizeof(float));
            else if (beta != 1.0f)
                for (int64_t j = 0; j < N; j++) row[j] *= beta;
        }
        return OVS_OK;
    }
    if ((st = blas_int(op, "lda", lda)) || (st = blas_int(op, "ldb", ldb))) return st;
    sgemm_parallel(trans_b, M, N, Kd, alpha, A, lda, B, ldb, beta, C, ldc);
    return OVS_OK;
}

/* ---------------------------------------------------------------- weight matrices */
ovs_matrix ovs_matrix_dense(const float *data, int64_t rows, int64_t cols) {
    return (ovs_matrix){.format = OVS_MATRIX_DENSE, .data = data, .rows = rows, .cols = cols};
}

int ops_matmul_wt_check(const char *op, float *out, int64_t ldo, const float *a, int64_t lda,
                        const ovs_matrix *w, int64_t M, int *empty) {
    int st;
    *empty = 1;
    if (!w) return ovs_set_error(OVS_ERR_ARG, "%s: weight matrix is NULL", op);
    int64_t K = w->rows, C = w->cols;
    if ((st = ops_check_nonneg(op, "M", M)) || (st = ops_check_nonneg(op, "weight rows (K)", K)) ||
        (st = ops_check_nonneg(op, "weight cols (C)", C)) || (st = ops_check_matrix(op, w, K, C)))
        return st;
    if (M == 0 || K == 0) return OVS_OK;
    if (lda < C)
        return ovs_set_error(OVS_ERR_ARG, "%s: lda = %lld is smaller than C = %lld", op,
                             (long long)lda, (long long)C);
    if (ldo < K)
        return ovs_set_error(OVS_ERR_ARG, "%s: ldo = %lld is smaller than K = %lld", op,
                             (long long)ldo, (long long)K);
    int64_t out_span, a_span;
    if ((st = ops_mul(&out_span, op, M, ldo)) || (st = ops_mul(&a_span, op, M, lda))) return st;
    if ((st = ops_check_ptr(op, "out", out, out_span)) ||
        (st = ops_check_ptr(op, "a", a, C > 0 ? a_span : 0)))
        return st;
    *empty = 0;
    return OVS_OK;
}

int ovs_matmul_wt(float *out, int64_t ldo, const float *a, int64_t lda, const ovs_matrix *w,
                  int64_t M, float alpha, float beta) {
    static const char op[] = "ovs_matmul_wt";
    int empty;
    int st = ops_matmul_wt_check(op, out, ldo, a, lda, w, M, &empty);
    if (st || empty) return st;
    const int64_t K = w->rows, C = w->cols;
    if (w->format == OVS_MATRIX_PACKED)
        return ops_gemm_packed(op, out, ldo, a, lda, w, M, alpha, beta, NULL, NULL, 0,
                               OVS_ACT_NONE);
    return ops_sgemm(op, 1, M, K, C, alpha, a, lda, w->data, C, beta, out, ldo);
}

int ops_matmul_check(const char *op, float *out, int64_t ldo, const float *a, int64_t lda,
                     const float *b, int64_t ldb, int64_t M, int64_t K, int64_t N) {
    int st;
    if ((st = ops_check_nonneg(op, "M", M)) || (st = ops_check_nonneg(op, "K", K)) ||
        (st = ops_check_nonneg(op, "N", N)))
        return st;
    if (lda < K || ldb < N || ldo < N)
        return ovs_set_error(OVS_ERR_ARG, "%s: row strides lda = %lld, ldb = %lld, ldo = %lld must "
                             "be >= K = %lld, N = %lld, N", op, (long long)lda, (long long)ldb,
                             (long long)ldo, (long long)K, (long long)N);
    int64_t out_span, a_span, b_span;
    const int64_t work = M > 0 && N > 0 ? 1 : 0;
    if ((st = ops_mul(&out_span, op, M, ldo)) || (st = ops_mul(&a_span, op, M, lda)) ||
        (st = ops_mul(&b_span, op, K, ldb)) ||
        (st = ops_check_ptr(op, "out", out, work ? out_span : 0)) ||
        (st = ops_check_ptr(op, "a", a, work && K ? a_span : 0)) ||
        (st = ops_check_ptr(op, "b", b, work && K ? b_span : 0)))
        return st;
    return OVS_OK;
}

int ovs_matmul(float *out, int64_t ldo, const float *a, int64_t lda, const float *b, int64_t ldb,
               int64_t M, int64_t K, int64_t N, float alpha, float beta) {
    static const char op[] = "ovs_matmul";
    int st = ops_matmul_check(op, out, ldo, a, lda, b, ldb, M, K, N);
    if (st) return st;
    return ops_sgemm(op, 0, M, N, K, alpha, a, lda, b, ldb, beta, out, ldo);
}
