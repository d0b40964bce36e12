/* AVX2+FMA and AVX-512F micro-kernels of the packed-weight GEMM (contract in ops/gemm.h), and
 * the SIMD packing of the left operand. Compiled with function-level target attributes, so one
 * build carries both and gemm.c picks one at run time from the CPU. Each output element has its
 * own accumulator lane and receives one FMA per step c, in increasing c: the result equals the
 * portable fmaf chain bit for bit.
 * Register budget: AVX2 6 rows x 2 ymm (16 columns) = 12 accumulators + 2 operand vectors + 1
 * broadcast; AVX-512 12 rows x 2 zmm (32 columns, two adjacent 16-wide panels) = 24 accumulators
 * + 2 operand vectors + 1 broadcast, the blocking of ONNX Runtime's MLAS AVX-512F SGEMM kernel
 * (which streams the same 16-wide panel layout). For the few columns left at the end of a small
 * conv map, a transposed narrow kernel (rows in the lanes, up to 4 row groups x 4 columns) and
 * the conv epilogue in the same SIMD width. */
#include "ops/gemm.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define AVX2_MR 6
#define AVX512_MR 12

#define AVX2_ATTR __attribute__((target("avx2,fma"), always_inline)) static inline
#define AVX512_ATTR __attribute__((target("avx512f"), always_inline)) static inline

/* mr and nr are compile-time constants at every call site (the dispatch below): the `mr > r`
 * tests fold away and the accumulators are named variables (arrays of vectors get spilled to
 * the stack by gcc). aoff/boff are literal NULLs in the panel form, so those tests fold too. */
AVX2_ATTR void avx2_tile(const int mr, const int nr, int64_t C, const float *a,
                         const int64_t *aoff, const float *b, const int64_t *boff, int64_t b2,
                         float *tile, int resume) {
    (void)nr;
    (void)b2;
    __m256 l0 = _mm256_setzero_ps(), h0 = l0, l1 = l0, h1 = l0, l2 = l0, h2 = l0, l3 = l0,
           h3 = l0, l4 = l0, h4 = l0, l5 = l0, h5 = l0;
    if (resume) {
#define LOAD(r)                                              \
        if (mr > r) {                                        \
            l##r = _mm256_loadu_ps(tile + r * 16);           \
            h##r = _mm256_loadu_ps(tile + r * 16 + 8);       \
        }
        LOAD(0) LOAD(1) LOAD(2) LOAD(3) LOAD(4) LOAD(5)
#undef LOAD
    }
    for (int64_t c = 0; c < C; c++) {
        const float *bc = boff ? b + boff[c] : b + c * OVS_PACK_NR;
        const float *ac = aoff ? a + aoff[c] : a + c * AVX2_MR;
        const __m256 b0 = _mm256_loadu_ps(bc);
        const __m256 b1 = _mm256_loadu_ps(bc + 8);
        __m256 av;
#define ROW(r)                                              \
        if (mr > r) {                                       \
            av = _mm256_broadcast_ss(ac + r);               \
            l##r = _mm256_fmadd_ps(av, b0, l##r);           \
            h##r = _mm256_fmadd_ps(av, b1, h##r);           \
        }
        ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5)
#undef ROW
    }
#define STORE(r)                                             \
    if (mr > r) {                                            \
        _mm256_storeu_ps(tile + r * 16, l##r);               \
        _mm256_storeu_ps(tile + r * 16 + 8, h##r);           \
    }
    STORE(0) STORE(1) STORE(2) STORE(3) STORE(4) STORE(5)
#undef STORE
}

AVX512_ATTR void avx512_tile(const int mr, const int nr, int64_t C, const float *a,
                             const int64_t *aoff, const float *b, const int64_t *boff,
                             int64_t b2, float *tile, int resume) {
    __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0,
           c7 = c0, c8 = c0, c9 = c0, c10 = c0, c11 = c0;
    __m512 d0 = c0, d1 = c0, d2 = c0, d3 = c0, d4 = c0, d5 = c0, d6 = c0, d7 = c0, d8 = c0,
           d9 = c0, d10 = c0, d11 = c0;
    if (resume) {
#define LOAD(r)                                                          \
        if (mr > r) {                                                    \
            c##r = _mm512_loadu_ps(tile + r * nr);                       \
            if (nr > 16) d##r = _mm512_loadu_ps(tile + r * nr + 16);     \
        }
        LOAD(0) LOAD(1) LOAD(2) LOAD(3) LOAD(4) LOAD(5) LOAD(6) LOAD(7) LOAD(8) LOAD(9)
        LOAD(10) LOAD(11)
#undef LOAD
    }
    for (int64_t c = 0; c < C; c++) {
        const float *bc = boff ? b + boff[c] : b + c * OVS_PACK_NR;
        const float *ac = aoff ? a + aoff[c] : a + c * AVX512_MR;
        const __m512 b0 = _mm512_loadu_ps(bc);
        const __m512 b1 = nr > 16 ? _mm512_loadu_ps(bc + b2) : b0;
        __m512 av;
#define ROW(r)                                                   \
        if (mr > r) {                                            \
            av = _mm512_set1_ps(ac[r]);                          \
            c##r = _mm512_fmadd_ps(av, b0, c##r);                \
            if (nr > 16) d##r = _mm512_fmadd_ps(av, b1, d##r);   \
        }
        ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5) ROW(6) ROW(7) ROW(8) ROW(9) ROW(10) ROW(11)
#undef ROW
    }
#define STORE(r)                                                         \
    if (mr > r) {                                                        \
        _mm512_storeu_ps(tile + r * nr, c##r);                           \
        if (nr > 16) _mm512_storeu_ps(tile + r * nr + 16, d##r);         \
    }
    STORE(0) STORE(1) STORE(2) STORE(3) STORE(4) STORE(5) STORE(6) STORE(7) STORE(8) STORE(9)
    STORE(10) STORE(11)
#undef STORE
}

/* ---------------------------------------------------------------- packing of A */
/* dst[c*MR + r] = a[r*lda + c]: 8x8 blocks through an AVX transpose, then 4-row blocks through
 * SSE 4x4 transposes, 2-row blocks through unpacks; single rows and the last C % 8 (or % 4)
 * columns element by element. Plain copies: equal to ops_gemm_pack_a_scalar bit for bit. */
/* Columns [c, C) of `rows` rows starting at row r (s = a + r*lda), element by element. */
static inline void pack_cols_scalar(float *dst, const float *s, int64_t lda, int64_t r,
                                    int64_t rows, int64_t c, int64_t C, int64_t MR) {
    for (; c < C; c++)
        for (int64_t i = 0; i < rows; i++) dst[c * MR + r + i] = s[i * lda + c];
}

__attribute__((target("avx2"))) static void pack_rows_simd(float *dst, const float *a,
                                                           int64_t lda, int64_t m, int64_t C,
                                                           const int64_t MR) {
    int64_t r = 0;
    for (; m - r >= 8; r += 8) {
        const float *s = a + r * lda;
        int64_t c = 0;
        for (; c + 8 <= C; c += 8) {
            __m256 x0 = _mm256_loadu_ps(s + c), x1 = _mm256_loadu_ps(s + lda + c),
                   x2 = _mm256_loadu_ps(s + 2 * lda + c), x3 = _mm256_loadu_ps(s + 3 * lda + c),
                   x4 = _mm256_loadu_ps(s + 4 * lda + c), x5 = _mm256_loadu_ps(s + 5 * lda + c),
                   x6 = _mm256_loadu_ps(s + 6 * lda + c), x7 = _mm256_loadu_ps(s + 7 * lda + c);
            __m256 t0 = _mm256_unpacklo_ps(x0, x1), t1 = _mm256_unpackhi_ps(x0, x1),
                   t2 = _mm256_unpacklo_ps(x2, x3), t3 = _mm256_unpackhi_ps(x2, x3),
                   t4 = _mm256_unpacklo_ps(x4, x5), t5 = _mm256_unpackhi_ps(x4, x5),
                   t6 = _mm256_unpacklo_ps(x6, x7), t7 = _mm256_unpackhi_ps(x6, x7);
            __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)),
                   s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2)),
                   s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)),
                   s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2)),
                   s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0)),
                   s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2)),
                   s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0)),
                   s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
            float *d = dst + c * MR + r;
            _mm256_storeu_ps(d, _mm256_permute2f128_ps(s0, s4, 0x20));
            _mm256_storeu_ps(d + MR, _mm256_permute2f128_ps(s1, s5, 0x20));
            _mm256_storeu_ps(d + 2 * MR, _mm256_permute2f128_ps(s2, s6, 0x20));
            _mm256_storeu_ps(d + 3 * MR, _mm256_permute2f128_ps(s3, s7, 0x20));
            _mm256_storeu_ps(d + 4 * MR, _mm256_permute2f128_ps(s0, s4, 0x31));
            _mm256_storeu_ps(d + 5 * MR, _mm256_permute2f128_ps(s1, s5, 0x31));
            _mm256_storeu_ps(d + 6 * MR, _mm256_permute2f128_ps(s2, s6, 0x31));
            _mm256_storeu_ps(d + 7 * MR, _mm256_permute2f128_ps(s3, s7, 0x31));
        }
        pack_cols_scalar(dst, s, lda, r, 8, c, C, MR);
    }
    for (; m - r >= 4; r += 4) {
        const float *s = a + r * lda;
        int64_t c = 0;
        for (; c + 4 <= C; c += 4) {
            __m128 x0 = _mm_loadu_ps(s + c), x1 = _mm_loadu_ps(s + lda + c),
                   x2 = _mm_loadu_ps(s + 2 * lda + c), x3 = _mm_loadu_ps(s + 3 * lda + c);
            _MM_TRANSPOSE4_PS(x0, x1, x2, x3);
            float *d = dst + c * MR + r;
            _mm_storeu_ps(d, x0);
            _mm_storeu_ps(d + MR, x1);
            _mm_storeu_ps(d + 2 * MR, x2);
            _mm_storeu_ps(d + 3 * MR, x3);
        }
        pack_cols_scalar(dst, s, lda, r, 4, c, C, MR);
    }
    for (; m - r >= 2; r += 2) {
        const float *s = a + r * lda;
        int64_t c = 0;
        for (; c + 4 <= C; c += 4) {
            __m128 x0 = _mm_loadu_ps(s + c), x1 = _mm_loadu_ps(s + lda + c);
            __m128 lo = _mm_unpacklo_ps(x0, x1), hi = _mm_unpackhi_ps(x0, x1);
            float *d = dst + c * MR + r;
            _mm_storel_pi((__m64 *)d, lo);
            _mm_storeh_pi((__m64 *)(d + MR), lo);
            _mm_storel_pi((__m64 *)(d + 2 * MR), hi);
            _mm_storeh_pi((__m64 *)(d + 3 * MR), hi);
        }
        pack_cols_scalar(dst, s, lda, r, 2, c, C, MR);
    }
    if (r < m) pack_cols_scalar(dst, a + r * lda, lda, r, m - r, 0, C, MR);
}

static void avx2_pack(float *dst, const float *a, int64_t lda, int64_t m, int64_t C) {
    pack_rows_simd(dst, a, lda, m, C, AVX2_MR);
}

static void avx512_pack(float *dst, const float *a, int64_t lda, int64_t m, int64_t C) {
    pack_rows_simd(dst, a, lda, m, C, AVX512_MR);
}

/* ---------------------------------------------------------------- narrow tiles */
/* ops_gemm_isa.gather_narrow (ops/gemm.h): rows r < mr of group g's A column c in the lanes of
 * one vector (masked load), column j's B element broadcast, acc_gj[r] = fmaf(A[r, c], B[c, j],
 * acc_gj[r]) in increasing c: the contract's fmaf chains exactly (the product is commutative).
 * groups x nr (<= 4 x 4, compile-time nr) accumulators. */
#define NARROW_MAX 4

/* acc q##g##j for group g < G (runtime, <= 4) and column j < n (compile-time). */
#define NARROW_BODY(VEC, LOADU, BCAST, FMA, SETZERO, LANES)                                   \
    VEC q00 = SETZERO(), q01 = q00, q02 = q00, q03 = q00, q10 = q00, q11 = q00, q12 = q00,    \
        q13 = q00, q20 = q00, q21 = q00, q22 = q00, q23 = q00, q30 = q00, q31 = q00,          \
        q32 = q00, q33 = q00;                                                                 \
    float buf[OPS_GEMM_NARROW_GROUPS][NARROW_MAX][LANES];                                     \
    const float *a0 = ag[0], *a1 = G > 1 ? ag[1] : ag[0], *a2 = G > 2 ? ag[2] : ag[0],       \
                *a3 = G > 3 ? ag[3] : ag[0];                                                  \
    if (resume) {                                                                             \
        for (int64_t g = 0; g < G; g++)                                                       \
            for (int j = 0; j < n; j++)                                                       \
                for (int r = 0; r < LANES; r++)                                               \
                    buf[g][j][r] = r < mr ? tile[g * tstride + r * n + j] : 0.0f;             \
        NARROW_GROUP(NARROW_LOAD)                                                             \
    }                                                                                         \
    if (G == 4) {                                                                             \
        for (int64_t c = 0; c < C; c++) {                                                     \
            const float *bc = b + boff[c];                                                    \
            const int64_t o = aoff[c];                                                        \
            NARROW_STEP(0) NARROW_STEP(1) NARROW_STEP(2) NARROW_STEP(3)                       \
        }                                                                                     \
    } else {                                                                                  \
        for (int64_t c = 0; c < C; c++) {                                                     \
            const float *bc = b + boff[c];                                                    \
            const int64_t o = aoff[c];                                                        \
            NARROW_STEP(0)                                                                    \
            if (G > 1) { NARROW_STEP(1) }                                                     \
            if (G > 2) { NARROW_STEP(2) }                                                     \
        }                                                                                     \
    }                                                                                         \
    NARROW_GROUP(NARROW_SAVE)                                                                 \
    for (int64_t g = 0; g < G; g++)                                                           \
        for (int r = 0; r < mr; r++)                                                          \
            for (int j = 0; j < n; j++) tile[g * tstride + r * n + j] = buf[g][j][r];

#define NARROW_STEP(g)                                                                        \
    {                                                                                         \
        const __typeof__(q00) av = MASKED_A(a##g + o);                                        \
        q##g##0 = FMAV(av, BCASTV(bc[0]), q##g##0);                                           \
        if (n > 1) q##g##1 = FMAV(av, BCASTV(bc[1]), q##g##1);                                \
        if (n > 2) q##g##2 = FMAV(av, BCASTV(bc[2]), q##g##2);                                \
        if (n > 3) q##g##3 = FMAV(av, BCASTV(bc[3]), q##g##3);                                \
    }
#define NARROW_LOAD(g, j) if (G > g && n > j) q##g##j = LOADV(buf[g][j]);
#define NARROW_SAVE(g, j) if (G > g && n > j) STOREV(buf[g][j], q##g##j);
#define NARROW_GROUP(X) X(0, 0) X(0, 1) X(0, 2) X(0, 3) X(1, 0) X(1, 1) X(1, 2) X(1, 3)       \
    X(2, 0) X(2, 1) X(2, 2) X(2, 3) X(3, 0) X(3, 1) X(3, 2) X(3, 3)

AVX512_ATTR void avx512_narrow_tile(const int n, int64_t G, int64_t mr, int64_t C,
                                    const float *const *ag, const int64_t *aoff, const float *b,
                                    const int64_t *boff, float *tile, int64_t tstride,
                                    int resume) {
    const __mmask16 km = (__mmask16)((1u << mr) - 1);
#define MASKED_A(p) _mm512_maskz_loadu_ps(km, p)
#define FMAV _mm512_fmadd_ps
#define BCASTV _mm512_set1_ps
#define LOADV _mm512_loadu_ps
#define STOREV _mm512_storeu_ps
    NARROW_BODY(__m512, _mm512_loadu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_setzero_ps, 16)
#undef MASKED_A
#undef FMAV
#undef BCASTV
#undef LOADV
#undef STOREV
}

AVX2_ATTR void avx2_narrow_tile(const int n, int64_t G, int64_t mr, int64_t C,
                                const float *const *ag, const int64_t *aoff, const float *b,
                                const int64_t *boff, float *tile, int64_t tstride, int resume) {
    const __m256i km = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)mr),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
#define MASKED_A(p) _mm256_maskload_ps(p, km)
#define FMAV _mm256_fmadd_ps
#define BCASTV _mm256_set1_ps
#define LOADV _mm256_loadu_ps
#define STOREV _mm256_storeu_ps
    NARROW_BODY(__m256, _mm256_loadu_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_setzero_ps, 8)
#undef MASKED_A
#undef FMAV
#undef BCASTV
#undef LOADV
#undef STOREV
}
#undef NARROW_BODY
#undef NARROW_STEP
#undef NARROW_LOAD
#undef NARROW_SAVE
#undef NARROW_GROUP

#define NARROW_CASES(tile)                                                                    \
    switch (nr) {                                                                             \
    case 1: tile(1, groups, mr, C, ag, aoff, b, boff, t, tstride, resume); break;             \
    case 2: tile(2, groups, mr, C, ag, aoff, b, boff, t, tstride, resume); break;             \
    case 3: tile(3, groups, mr, C, ag, aoff, b, boff, t, tstride, resume); break;             \
    case 4: tile(4, groups, mr, C, ag, aoff, b, boff, t, tstride, resume); break;             \
    default: break;                                                                           \
    }

__attribute__((target("avx512f"))) static void avx512_narrow(
    int64_t groups, int64_t mr, int64_t nr, int64_t C, const float *const *ag,
    const int64_t *aoff, const float *b, const int64_t *boff, float *t, int64_t tstride,
    int resume) {
    NARROW_CASES(avx512_narrow_tile)
}

__attribute__((target("avx2,fma"))) static void avx2_narrow(
    int64_t groups, int64_t mr, int64_t nr, int64_t C, const float *const *ag,
    const int64_t *aoff, const float *b, const int64_t *boff, float *t, int64_t tstride,
    int resume) {
    NARROW_CASES(avx2_narrow_tile)
}
#undef NARROW_CASES

/* ---------------------------------------------------------------- conv epilogue */
/* ops_gemm_store_scalar's arithmetic (ops/gemm.h), 16 (8) lanes at a time: the same adds in the
 * same order per element, ReLU as x < 0 ? 0 : x (NaN and -0 kept); other activations through
 * ops_act_inplace on the stored row. */
/* One vector of the epilogue: acc + bias (+ residual), then ReLU if asked. */
__attribute__((target("avx512f"))) static inline __m512 avx512_store_vec(__m512 acc, __m512 b,
                                                                       const __m512 *res,
                                                                       ovs_act act) {
    __m512 v = _mm512_add_ps(acc, b);
    if (res) v = _mm512_add_ps(v, *res);
    if (act == OVS_ACT_RELU)
        v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ),
                               _mm512_setzero_ps());
    return v;
}

__attribute__((target("avx512f"))) static void avx512_store(float *o, int64_t ldo,
                                                            const float *acc, int64_t lda,
                                                            int64_t m, int64_t n,
                                                            const float *bias, const float *res,
                                                            int64_t ldr, ovs_act act) {
    for (int64_t r = 0; r < m; r++) {
        const __m512 b = _mm512_set1_ps(bias ? bias[r] : 0.0f);
        const float *a = acc + r * lda, *rr = res ? res + r * ldr : NULL;
        float *d = o + r * ldo;
        /* whole vectors unmasked: a masked load of the tile the kernel has just stored is not
         * forwarded from the store on AMD cores (it waits for the stores to reach L1), which
         * made this epilogue over half the time of a 1x1 conv with a residual */
        int64_t i = 0;
        for (; i + 16 <= n; i += 16) {
            const __m512 rv = rr ? _mm512_loadu_ps(rr + i) : _mm512_setzero_ps();
            _mm512_storeu_ps(d + i, avx512_store_vec(_mm512_loadu_ps(a + i), b, rr ? &rv : NULL,
                                                     act));
        }
        if (i < n) {
            const __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
            const __m512 rv = rr ? _mm512_maskz_loadu_ps(k, rr + i) : _mm512_setzero_ps();
            _mm512_mask_storeu_ps(d + i, k, avx512_store_vec(_mm512_maskz_loadu_ps(k, a + i), b,
                                                             rr ? &rv : NULL, act));
        }
        if (act != OVS_ACT_NONE && act != OVS_ACT_RELU) ops_act_inplace(d, n, act);
    }
}

__attribute__((target("avx2"))) static void avx2_store(float *o, int64_t ldo, const float *acc,
                                                       int64_t lda, int64_t m, int64_t n,
                                                       const float *bias, const float *res,
                                                       int64_t ldr, ovs_act act) {
    const __m256 zero = _mm256_setzero_ps();
    for (int64_t r = 0; r < m; r++) {
        const float bs = bias ? bias[r] : 0.0f;
        const __m256 b = _mm256_set1_ps(bs);
        const float *a = acc + r * lda, *rr = res ? res + r * ldr : NULL;
        float *d = o + r * ldo;
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) {
            __m256 v = _mm256_add_ps(_mm256_loadu_ps(a + i), b);
            if (rr) v = _mm256_add_ps(v, _mm256_loadu_ps(rr + i));
            if (act == OVS_ACT_RELU)
                v = _mm256_blendv_ps(v, zero, _mm256_cmp_ps(v, zero, _CMP_LT_OQ));
            _mm256_storeu_ps(d + i, v);
        }
        for (; i < n; i++) {
            float v = rr ? (a[i] + bs) + rr[i] : a[i] + bs;
            if (act == OVS_ACT_RELU) v = v < 0.0f ? 0.0f : v;
            d[i] = v;
        }
        if (act != OVS_ACT_NONE && act != OVS_ACT_RELU) ops_act_inplace(d, n, act);
    }
}

/* ---------------------------------------------------------------- dispatch */
/* One ISA's two entry points: a switch over (mr, nr) whose every case inlines the ISA's tile
 * template with constant sizes. ROWS lists the row counts, WIDTHS the (tile, row list) pairs. */
#define PANEL_CASE(tile, m, n) \
    case m * 64 + n: tile(m, n, C, a, NULL, b, NULL, b2, t, resume); break;
#define GATHER_CASE(tile, m, n) \
    case m * 64 + n: tile(m, n, C, a, aoff, b, boff, 16, t, resume); break;
#define ROWS_6(X, tile, n) X(tile, 1, n) X(tile, 2, n) X(tile, 3, n) X(tile, 4, n) X(tile, 5, n) \
    X(tile, 6, n)
#define ROWS_12(X, tile, n) ROWS_6(X, tile, n) X(tile, 7, n) X(tile, 8, n) X(tile, 9, n) \
    X(tile, 10, n) X(tile, 11, n) X(tile, 12, n)
#define AVX2_CASES(X) ROWS_6(X, avx2_tile, 16)
#define AVX512_CASES(X) ROWS_12(X, avx512_tile, 16) ROWS_12(X, avx512_tile, 32)

#define DEFINE_ISA(isa, target_str, MR, NR_MAX, CASES)                                        \
    __attribute__((target(target_str))) static void isa##_kernel(                            \
        int64_t mr, int64_t nr, int64_t C, const float *a, const float *b, int64_t b2,       \
        float *t, int resume) {                                                              \
        switch (mr * 64 + nr) {                                                              \
            CASES(PANEL_CASE)                                                                \
        default: break;                                                                      \
        }                                                                                    \
    }                                                                                        \
    __attribute__((target(target_str))) static void isa##_gather(                            \
        int64_t mr, int64_t nr, int64_t C, const float *a, const int64_t *aoff,              \
        const float *b, const int64_t *boff, float *t, int resume) {                         \
        if (!aoff || !boff) __builtin_unreachable();                                         \
        switch (mr * 64 + nr) {                                                              \
            CASES(GATHER_CASE)                                                               \
        default: break;                                                                      \
        }                                                                                    \
    }                                                                                        \
    const ops_gemm_isa ops_gemm_##isa = {#isa, MR, NR_MAX, isa##_kernel, isa##_gather,        \
                                         isa##_pack, isa##_store, NARROW_MAX, isa##_narrow};

DEFINE_ISA(avx2, "avx2,fma", AVX2_MR, 16, AVX2_CASES)
DEFINE_ISA(avx512, "avx512f", AVX512_MR, 32, AVX512_CASES)

/* ---------------------------------------------------------------- FMA rate probe */
/* iters rounds of OPS_FMA_CHAINS independent vector FMA chains held in registers (no memory
 * operand): the core's FMA rate on this ISA, the ceiling the micro-kernels are measured against
 * (ovs_fma_peak). a * x + y with x just below 1 converges to 1: no overflow, no denormals. The
 * returned sum keeps the chains from being optimised away. */
__attribute__((target("avx512f"))) float ops_fma_chains_avx512(int64_t iters) {
    const __m512 x = _mm512_set1_ps(0.9999999f), y = _mm512_set1_ps(1e-7f);
    __m512 a[OPS_FMA_CHAINS];
    for (int i = 0; i < OPS_FMA_CHAINS; i++) a[i] = _mm512_set1_ps((float)i);
    for (int64_t k = 0; k < iters; k++) {
#pragma GCC unroll 12
        for (int i = 0; i < OPS_FMA_CHAINS; i++) a[i] = _mm512_fmadd_ps(a[i], x, y);
    }
    float s = 0.0f;
    for (int i = 0; i < OPS_FMA_CHAINS; i++) s += _mm512_reduce_add_ps(a[i]);
    return s;
}

__attribute__((target("avx2,fma"))) float ops_fma_chains_avx2(int64_t iters) {
    const __m256 x = _mm256_set1_ps(0.9999999f), y = _mm256_set1_ps(1e-7f);
    __m256 a[OPS_FMA_CHAINS];
    for (int i = 0; i < OPS_FMA_CHAINS; i++) a[i] = _mm256_set1_ps((float)i);
    for (int64_t k = 0; k < iters; k++) {
#pragma GCC unroll 12
        for (int i = 0; i < OPS_FMA_CHAINS; i++) a[i] = _mm256_fmadd_ps(a[i], x, y);
    }
    float v[8], s = 0.0f;
    for (int i = 0; i < OPS_FMA_CHAINS; i++) {
        _mm256_storeu_ps(v, a[i]);
        for (int j = 0; j < 8; j++) s += v[j];
    }
    return s;
}

#else  /* not x86: the portable kernel stands in (gemm.c never selects these) */
float ops_fma_chains_avx512(int64_t iters) { (void)iters; return 0.0f; }
float ops_fma_chains_avx2(int64_t iters) { (void)iters; return 0.0f; }
const ops_gemm_isa ops_gemm_avx2 = {"avx2", 0, 0, NULL, NULL, NULL, NULL, 0, NULL};
const ops_gemm_isa ops_gemm_avx512 = {"avx512", 0, 0, NULL, NULL, NULL, NULL, 0, NULL};
#endif
