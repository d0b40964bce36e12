/* The LAPACK routines of the analysis (Fortran interface of the linked OpenBLAS; symbols carry
 * the "scipy_" prefix with scipy-openblas32, see core/blas.h). Integers are 32-bit. The trailing
 * size_t is the hidden length of the character argument (gfortran ABI; ignored by callers of
 * other compilers' builds, which take no such argument). */
#ifndef OVS_ANALYSIS_LAPACK_H
#define OVS_ANALYSIS_LAPACK_H

#include <stddef.h>

#include "core/blas.h"

#define OVS_LAPACK(name) OVS_BLAS(name##_)

/* Singular values (jobz "N") of the column-major m x n matrix a (overwritten) into s (min(m,n),
 * descending). work: lwork doubles (lwork = -1: query the size into work[0]); iwork: 8 min(m,n). */
void OVS_LAPACK(dgesdd)(const char *jobz, const int *m, const int *n, double *a, const int *lda,
                        double *s, double *u, const int *ldu, double *vt, const int *ldvt,
                        double *work, const int *lwork, int *iwork, int *info, size_t jobz_len);

/* C = alpha A Aᵀ + beta C (trans "N", A n x k) or alpha Aᵀ A + beta C (trans "T", A k x n);
 * only the uplo triangle of the n x n C is written. */
void OVS_LAPACK(dsyrk)(const char *uplo, const char *trans, const int *n, const int *k,
                       const double *alpha, const double *a, const int *lda, const double *beta,
                       double *c, const int *ldc, size_t uplo_len, size_t trans_len);

/* Eigenvalues (jobz "N") of the symmetric n x n matrix a (uplo triangle read, a overwritten)
 * into w, ascending. work: lwork doubles, iwork: liwork ints (-1: query sizes). */
void OVS_LAPACK(dsyevd)(const char *jobz, const char *uplo, const int *n, double *a, const int *lda,
                        double *w, double *work, const int *lwork, int *iwork, const int *liwork,
                        int *info, size_t jobz_len, size_t uplo_len);

#endif
