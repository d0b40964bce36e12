/* AVX2+FMA and AVX-512F micro-kernels of the packed-weight GEMM (contract in ops/gemm.h).
 * Compiled with function-level target attributes, so one build carries both and gemm.c picks
 * one at run time from the CPU. Each output element has its own accumulator lane and receives
 * one FMA per input feature c, in increasing c: the result equals the portable fmaf chain bit
 * for bit.
 * Register budget: AVX2 6 rows x 2 ymm = 12 accumulators + 2 panel vectors + 1 broadcast;
 * AVX-512 12 rows x 1 zmm = 12 accumulators + 1 panel vector (+ broadcasts folded into FMAs). */
#include "ops/gemm.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define AVX2_MR 6
#define AVX512_MR 12

#define AVX2_ATTR __attribute__((target("avx2,fma"), always_inline)) static inline
#define AVX512_ATTR __attribute__((target("avx512f"), always_inline)) static inline

/* mr is a compile-time constant at every call site below: the `mr > r` tests fold away and
 * the accumulators are named variables (arrays of vectors get spilled to the stack by gcc). */
/* Operand row c is b + c*NR (a packed panel) or, with an offset table, b + off[c]; off is a
 * literal NULL at the panel call sites, so that test folds away there. */
AVX2_ATTR void avx2_tile(const int mr, int64_t C, const float *a, int64_t lda, const float *b,
                         const int64_t *off, float *tile, int resume) {
    __m256 l0 = _mm256_setzero_ps(), h0 = l0, l1 = l0, h1 = l0, l2 = l0, h2 = l0, l3 = l0,
           h3 = l0, l4 = l0, h4 = l0, l5 = l0, h5 = l0;
    if (resume) {
#define LOAD(r)                                                      \
        if (mr > r) {                                                \
            l##r = _mm256_loadu_ps(tile + r * OVS_PACK_NR);          \
            h##r = _mm256_loadu_ps(tile + r * OVS_PACK_NR + 8);      \
        }
        LOAD(0) LOAD(1) LOAD(2) LOAD(3) LOAD(4) LOAD(5)
#undef LOAD
    }
    const float *a0 = a, *a1 = a + lda, *a2 = a + 2 * lda, *a3 = a + 3 * lda, *a4 = a + 4 * lda,
                *a5 = a + 5 * lda;
    for (int64_t c = 0; c < C; c++) {
        const float *bc = off ? b + off[c] : b + c * OVS_PACK_NR;
        const __m256 b0 = _mm256_loadu_ps(bc);
        const __m256 b1 = _mm256_loadu_ps(bc + 8);
        __m256 av;
#define ROW(r)                                              \
        if (mr > r) {                                       \
            av = _mm256_broadcast_ss(a##r + c);             \
            l##r = _mm256_fmadd_ps(av, b0, l##r);           \
            h##r = _mm256_fmadd_ps(av, b1, h##r);           \
        }
        ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5)
#undef ROW
    }
#define STORE(r)                                                     \
    if (mr > r) {                                                    \
        _mm256_storeu_ps(tile + r * OVS_PACK_NR, l##r);              \
        _mm256_storeu_ps(tile + r * OVS_PACK_NR + 8, h##r);          \
    }
    STORE(0) STORE(1) STORE(2) STORE(3) STORE(4) STORE(5)
#undef STORE
}

#define AVX2_CASE(n) \
    case n: avx2_tile(n, C, a, lda, panel, NULL, tile, 0); break;
#define AVX2_GATHER_CASE(n) \
    case n: avx2_tile(n, C, a, lda, b, off, tile, resume); break;

__attribute__((target("avx2,fma"))) static void avx2_kernel(int64_t mr, int64_t C,
                                                            const float *a, int64_t lda,
                                                            const float *panel, float *tile) {
    switch (mr) {
        AVX2_CASE(1) AVX2_CASE(2) AVX2_CASE(3) AVX2_CASE(4) AVX2_CASE(5) AVX2_CASE(6)
    default: break;
    }
}

__attribute__((target("avx2,fma"))) static void avx2_gather(int64_t mr, int64_t C,
                                                            const float *a, int64_t lda,
                                                            const float *b, const int64_t *off,
                                                            float *tile, int resume) {
    switch (mr) {
        AVX2_GATHER_CASE(1) AVX2_GATHER_CASE(2) AVX2_GATHER_CASE(3) AVX2_GATHER_CASE(4)
        AVX2_GATHER_CASE(5) AVX2_GATHER_CASE(6)
    default: break;
    }
}

AVX512_ATTR void avx512_tile(const int mr, int64_t C, const float *a, int64_t lda,
                             const float *b, const int64_t *off, float *tile, int resume) {
    __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0,
           c7 = c0, c8 = c0, c9 = c0, c10 = c0, c11 = c0;
    if (resume) {
#define LOAD(r) \
        if (mr > r) c##r = _mm512_loadu_ps(tile + r * OVS_PACK_NR);
        LOAD(0) LOAD(1) LOAD(2) LOAD(3) LOAD(4) LOAD(5) LOAD(6) LOAD(7) LOAD(8) LOAD(9)
        LOAD(10) LOAD(11)
#undef LOAD
    }
    for (int64_t c = 0; c < C; c++) {
        const __m512 bv = _mm512_loadu_ps(off ? b + off[c] : b + c * OVS_PACK_NR);
#define ROW(r) \
        if (mr > r) c##r = _mm512_fmadd_ps(_mm512_set1_ps(a[r * lda + c]), bv, c##r);
        ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5) ROW(6) ROW(7) ROW(8) ROW(9) ROW(10) ROW(11)
#undef ROW
    }
#define STORE(r) \
    if (mr > r) _mm512_storeu_ps(tile + r * OVS_PACK_NR, c##r);
    STORE(0) STORE(1) STORE(2) STORE(3) STORE(4) STORE(5) STORE(6) STORE(7) STORE(8) STORE(9)
    STORE(10) STORE(11)
#undef STORE
}

#define AVX512_CASE(n) \
    case n: avx512_tile(n, C, a, lda, panel, NULL, tile, 0); break;
#define AVX512_GATHER_CASE(n) \
    case n: avx512_tile(n, C, a, lda, b, off, tile, resume); break;

__attribute__((target("avx512f"))) static void avx512_kernel(int64_t mr, int64_t C,
                                                             const float *a, int64_t lda,
                                                             const float *panel, float *tile) {
    switch (mr) {
        AVX512_CASE(1) AVX512_CASE(2) AVX512_CASE(3) AVX512_CASE(4) AVX512_CASE(5)
        AVX512_CASE(6) AVX512_CASE(7) AVX512_CASE(8) AVX512_CASE(9) AVX512_CASE(10)
        AVX512_CASE(11) AVX512_CASE(12)
    default: break;
    }
}

__attribute__((target("avx512f"))) static void avx512_gather(int64_t mr, int64_t C,
                                                             const float *a, int64_t lda,
                                                             const float *b, const int64_t *off,
                                                             float *tile, int resume) {
    switch (mr) {
        AVX512_GATHER_CASE(1) AVX512_GATHER_CASE(2) AVX512_GATHER_CASE(3) AVX512_GATHER_CASE(4)
        AVX512_GATHER_CASE(5) AVX512_GATHER_CASE(6) AVX512_GATHER_CASE(7) AVX512_GATHER_CASE(8)
        AVX512_GATHER_CASE(9) AVX512_GATHER_CASE(10) AVX512_GATHER_CASE(11)
        AVX512_GATHER_CASE(12)
    default: break;
    }
}

const ops_gemm_isa ops_gemm_avx2 = {"avx2", AVX2_MR, avx2_kernel, avx2_gather};
const ops_gemm_isa ops_gemm_avx512 = {"avx512", AVX512_MR, avx512_kernel, avx512_gather};

#else  /* not x86: the portable kernel stands in (gemm.c never selects these) */
const ops_gemm_isa ops_gemm_avx2 = {"avx2", 0, NULL, NULL};
const ops_gemm_isa ops_gemm_avx512 = {"avx512", 0, NULL, NULL};
#endif
