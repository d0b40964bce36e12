/* The few BLAS/LAPACK entry points ovs uses, declared here so the same code builds against
 * scipy-openblas32 (symbols prefixed "scipy_") and a system OpenBLAS (no prefix).
 * Integers are 32-bit (LP64 BLAS); callers check that every dimension fits in an int. */
#ifndef OVS_CORE_BLAS_H
#define OVS_CORE_BLAS_H

#ifndef OVS_BLAS_PREFIX
#define OVS_BLAS_PREFIX
#endif
#define OVS_CAT_(a, b) a##b
#define OVS_CAT(a, b) OVS_CAT_(a, b)
#define OVS_BLAS(name) OVS_CAT(OVS_BLAS_PREFIX, name)

enum { OVS_CBLAS_ROW_MAJOR = 101, OVS_CBLAS_NO_TRANS = 111, OVS_CBLAS_TRANS = 112 };

void OVS_BLAS(cblas_sgemm)(int order, int trans_a, int trans_b, int M, int N, int K, float alpha,
                           const float *A, int lda, const float *B, int ldb, float beta, float *C,
                           int ldc);
void OVS_BLAS(cblas_sgemv)(int order, int trans, int M, int N, float alpha, const float *A,
                           int lda, const float *x, int incx, float beta, float *y, int incy);
void OVS_BLAS(openblas_set_num_threads)(int n);
int OVS_BLAS(openblas_get_num_threads)(void);

#define ovs_sgemm OVS_BLAS(cblas_sgemm)
#define ovs_sgemv OVS_BLAS(cblas_sgemv)

#endif
