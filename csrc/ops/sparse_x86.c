/* AVX2+FMA and AVX-512F tile kernels of the sparse convolution (contract in ops/sparse.h).
 * Compiled with function-level target attributes, so one build carries both and sparse.c picks
 * one at run time with the GEMM's ISA choice.
 *
 * Unstructured sparsity gives no two output channels a common non-zero to share an input
 * load, so every FMA reads its own input vector (folded into the FMA); what the kernels save is
 * everything else. A non-zero costs one resolved 32-bit input offset and one broadcast,
 * amortised over the tile's 64 grid positions (4 zmm, 8 ymm; AVX-512 reads two non-zeros' offsets
 * and values with one 8-byte load each: Zen 4, whose zmm loads take both load ports, ran RN50's
 * sparse convs at 70% 4% faster, 1 thread), and AVX-512 advances three output
 * rows together so that 12 independent accumulator chains hide the FMA latency (AVX2: one row
 * of 8 ymm). A call gets a whole block of rows: a slot whose row ends takes the next row, so
 * only the block's last two rows run as a pair and its last row alone (pairs cut at each row's
 * end: 5-25% slower on RN50's 1x1 convs). Measured in L1 on Zen 5 a pair of rows was 1.5x the
 * rate of 4 rows x 2 zmm with an offset-table lookup per non-zero; three rows run at the pair's
 * rate there (~178 GFLOP/s of a 273 peak: one zmm load per FMA, the loads are the limit), and
 * a few percent faster in RN50's convs (all convs sparse at 50%, 1 thread: 3% over 4
 * alternated pairs), where the tile kernels run at 40-55% of the peak. */
#include "ops/sparse.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <string.h>

#if SPARSE_TILE != 64
#error "the x86 sparse tile kernels are written for 64 grid positions"
#endif

/* ---------------------------------------------------------------- AVX2: 8 ymm per row */
__attribute__((target("avx2,fma"))) static void avx2_tile(const float *x, const int32_t *xo,
                                                          const float *val, const int64_t *js,
                                                          const int64_t *je, int nr, float *t,
                                                          int resume) {
    for (int u = 0; u < nr; u++) {
        float *tu = t + u * SPARSE_TILE;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,
               a7 = a0;
        if (resume) {
            a0 = _mm256_loadu_ps(tu);
            a1 = _mm256_loadu_ps(tu + 8);
            a2 = _mm256_loadu_ps(tu + 16);
            a3 = _mm256_loadu_ps(tu + 24);
            a4 = _mm256_loadu_ps(tu + 32);
            a5 = _mm256_loadu_ps(tu + 40);
            a6 = _mm256_loadu_ps(tu + 48);
            a7 = _mm256_loadu_ps(tu + 56);
        }
        for (int64_t j = js[u]; j < je[u]; j++) {
            const float *s = x + xo[j];
            const __m256 v = _mm256_broadcast_ss(val + j);
            a0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(s), a0);
            a1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(s + 8), a1);
            a2 = _mm256_fmadd_ps(v, _mm256_loadu_ps(s + 16), a2);
            a3 = _mm256_fmadd_ps(v, _mm256_loadu_ps(s + 24), a3);
            a4 = _mm256_fmadd_ps(v, _mm256_loadu_ps(s + 32), a4);
            a5 = _mm256_fmadd_ps(v, _mm256_loadu_ps(s + 40), a5);
            a6 = _mm256_fmadd_ps(v, _mm256_loadu_ps(s + 48), a6);
            a7 = _mm256_fmadd_ps(v, _mm256_loadu_ps(s + 56), a7);
        }
        _mm256_storeu_ps(tu, a0);
        _mm256_storeu_ps(tu + 8, a1);
        _mm256_storeu_ps(tu + 16, a2);
        _mm256_storeu_ps(tu + 24, a3);
        _mm256_storeu_ps(tu + 32, a4);
        _mm256_storeu_ps(tu + 40, a5);
        _mm256_storeu_ps(tu + 48, a6);
        _mm256_storeu_ps(tu + 56, a7);
    }
}

/* ---------------------------------------------------------------- AVX-512: 4 zmm per row */
#define Z_STEP(a, j)                                                     \
    do {                                                                 \
        const float *s_ = x + xo[j];                                     \
        const __m512 v_ = _mm512_set1_ps(val[j]);                        \
        a##0 = _mm512_fmadd_ps(v_, _mm512_loadu_ps(s_), a##0);           \
        a##1 = _mm512_fmadd_ps(v_, _mm512_loadu_ps(s_ + 16), a##1);      \
        a##2 = _mm512_fmadd_ps(v_, _mm512_loadu_ps(s_ + 32), a##2);      \
        a##3 = _mm512_fmadd_ps(v_, _mm512_loadu_ps(s_ + 48), a##3);      \
    } while (0)
/* Two consecutive non-zeros j, j + 1 of one row: their offsets and values each from one 8-byte
 * load (2 loads per 2 non-zeros instead of 4; the values broadcast from a register), the FMAs in
 * the order of Z_STEP(a, j); Z_STEP(a, j + 1). */
#define Z_STEP2(a, j)                                                                        \
    do {                                                                                     \
        int64_t o_;                                                                          \
        memcpy(&o_, xo + (j), sizeof o_);                                                    \
        const __m128 p_ = _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(val + (j)))); \
        const float *s_ = x + (int32_t)o_, *t_ = x + (int32_t)(o_ >> 32);                    \
        const __m512 v_ = _mm512_broadcastss_ps(p_), w_ = _mm512_broadcastss_ps(_mm_movehdup_ps(p_)); \
        a##0 = _mm512_fmadd_ps(v_, _mm512_loadu_ps(s_), a##0);                               \
        a##1 = _mm512_fmadd_ps(v_, _mm512_loadu_ps(s_ + 16), a##1);                          \
        a##2 = _mm512_fmadd_ps(v_, _mm512_loadu_ps(s_ + 32), a##2);                          \
        a##3 = _mm512_fmadd_ps(v_, _mm512_loadu_ps(s_ + 48), a##3);                          \
        a##0 = _mm512_fmadd_ps(w_, _mm512_loadu_ps(t_), a##0);                               \
        a##1 = _mm512_fmadd_ps(w_, _mm512_loadu_ps(t_ + 16), a##1);                          \
        a##2 = _mm512_fmadd_ps(w_, _mm512_loadu_ps(t_ + 32), a##2);                          \
        a##3 = _mm512_fmadd_ps(w_, _mm512_loadu_ps(t_ + 48), a##3);                          \
    } while (0)
#define Z_LOAD(a, t)                                  \
    if (resume) {                                     \
        a##0 = _mm512_loadu_ps(t);                    \
        a##1 = _mm512_loadu_ps((t) + 16);             \
        a##2 = _mm512_loadu_ps((t) + 32);             \
        a##3 = _mm512_loadu_ps((t) + 48);             \
    }
#define Z_STORE(a, t)                      \
    _mm512_storeu_ps(t, a##0);             \
    _mm512_storeu_ps((t) + 16, a##1);      \
    _mm512_storeu_ps((t) + 32, a##2);      \
    _mm512_storeu_ps((t) + 48, a##3);

/* Slot a's row has no non-zeros left: store it; take the block's next row (and go on pairing)
 * or retire the slot (u = -1). Used inside avx512_tile's loop. */
#define Z_SLOT_DONE(a, u, ta_, j, e)                                                          \
    if (j == e && u >= 0) {                                                                  \
        Z_STORE(a, ta_)                                                                      \
        if (next < nr) {                                                                     \
            u = next++;                                                                      \
            ta_ = t + u * SPARSE_TILE;                                                       \
            j = js[u];                                                                       \
            e = je[u];                                                                       \
            if (resume) { Z_LOAD(a, ta_) } else { a##0 = a##1 = a##2 = a##3 = _mm512_setzero_ps(); } \
            continue;                                                                        \
        }                                                                                    \
        u = -1;                                                                              \
    }

/* Three rows at a time in three accumulator slots; when a slot's row runs out of non-zeros it is
 * stored and the slot takes the block's next row, so rows advance in threes until the block has
 * no row left to start, then the last two in a pair and the last one alone. Twelve independent
 * chains instead of eight: more loads in flight when the input lines come from L2. Each row's
 * chain is its non-zeros in order whatever slot it runs in: the result does not depend on the
 * slots. */
__attribute__((target("avx512f"))) static void avx512_tile(const float *x, const int32_t *xo,
                                                           const float *val, const int64_t *js,
                                                           const int64_t *je, int nr, float *t,
                                                           int resume) {
    if (nr < 1) return;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m512 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    __m512 c0 = a0, c1 = a0, c2 = a0, c3 = a0;
    int ua = 0, ub = nr > 1 ? 1 : -1, uc = nr > 2 ? 2 : -1, next = nr < 3 ? nr : 3;
    float *ta = t, *tb = t + SPARSE_TILE, *tc = t + 2 * SPARSE_TILE;
    int64_t ja = js[0], ea = je[0], jb = 0, eb = 0, jc = 0, ec = 0;
    Z_LOAD(a, ta)
    if (ub >= 0) {
        Z_LOAD(b, tb)
        jb = js[1];
        eb = je[1];
    }
    if (uc >= 0) {
        Z_LOAD(c, tc)
        jc = js[2];
        ec = je[2];
    }
    for (;;) {
        if (uc >= 0) {   /* all three slots hold rows (a row is only retired when none is left) */
            for (; ja + 1 < ea && jb + 1 < eb && jc + 1 < ec; ja += 2, jb += 2, jc += 2) {
                Z_STEP2(a, ja);
                Z_STEP2(b, jb);
                Z_STEP2(c, jc);
            }
            for (; ja < ea && jb < eb && jc < ec; ja++, jb++, jc++) {
                Z_STEP(a, ja);
                Z_STEP(b, jb);
                Z_STEP(c, jc);
            }
        }
        Z_SLOT_DONE(a, ua, ta, ja, ea);
        Z_SLOT_DONE(b, ub, tb, jb, eb);
        Z_SLOT_DONE(c, uc, tc, jc, ec);
        break;
    }
    /* No row left to start: at most two slots still hold rows. Move c's into the free one. */
    if (uc >= 0) {
        if (ua < 0) {
            a0 = c0, a1 = c1, a2 = c2, a3 = c3, ua = uc, ta = tc, ja = jc, ea = ec;
        } else {
            b0 = c0, b1 = c1, b2 = c2, b3 = c3, ub = uc, tb = tc, jb = jc, eb = ec;
        }
    }
    if (ua >= 0 && ub >= 0) {
        for (; ja + 1 < ea && jb + 1 < eb; ja += 2, jb += 2) {
            Z_STEP2(a, ja);
            Z_STEP2(b, jb);
        }
        for (; ja < ea && jb < eb; ja++, jb++) {
            Z_STEP(a, ja);
            Z_STEP(b, jb);
        }
    }
    if (ua >= 0) {
        for (; ja < ea; ja++) Z_STEP(a, ja);
        Z_STORE(a, ta)
    }
    if (ub >= 0) {
        for (; jb < eb; jb++) Z_STEP(b, jb);
        Z_STORE(b, tb)
    }
}

/* ---------------------------------------------------------------- AVX-512: the last tile */
/* nv (1..3) zmm per row, four rows together (4 nv independent chains) while all four have
 * non-zeros left, then each row alone; each row's chain is its non-zeros in order, as the
 * contract asks. Inlined per nv so the accumulators stay in registers. */
#define N_LOAD(a, tu)                                                    \
    a##0 = resume ? _mm512_loadu_ps(tu) : _mm512_setzero_ps();           \
    if (nv > 1) a##1 = resume ? _mm512_loadu_ps((tu) + 16) : _mm512_setzero_ps(); \
    if (nv > 2) a##2 = resume ? _mm512_loadu_ps((tu) + 32) : _mm512_setzero_ps();
#define N_STEP(a, j)                                                     \
    do {                                                                 \
        const float *s_ = x + xo[j];                                     \
        const __m512 v_ = _mm512_set1_ps(val[j]);                        \
        a##0 = _mm512_fmadd_ps(v_, _mm512_loadu_ps(s_), a##0);           \
        if (nv > 1) a##1 = _mm512_fmadd_ps(v_, _mm512_loadu_ps(s_ + 16), a##1); \
        if (nv > 2) a##2 = _mm512_fmadd_ps(v_, _mm512_loadu_ps(s_ + 32), a##2); \
    } while (0)
#define N_STORE(a, tu)                                   \
    _mm512_storeu_ps(tu, a##0);                          \
    if (nv > 1) _mm512_storeu_ps((tu) + 16, a##1);       \
    if (nv > 2) _mm512_storeu_ps((tu) + 32, a##2);

__attribute__((target("avx512f"), always_inline)) static inline void
avx512_narrow_nv(const float *x, const int32_t *xo, const float *val, const int64_t *js,
                 const int64_t *je, int nr, float *t, int resume, const int nv) {
    int u = 0;
    for (; u + 4 <= nr; u += 4) {
        __m512 a0, a1 = _mm512_setzero_ps(), a2 = a1, b0, b1 = a1, b2 = a1;
        __m512 c0, c1 = a1, c2 = a1, d0, d1 = a1, d2 = a1;
        float *ta = t + u * SPARSE_TILE, *tb = ta + SPARSE_TILE, *tc = tb + SPARSE_TILE,
              *td = tc + SPARSE_TILE;
        N_LOAD(a, ta) N_LOAD(b, tb) N_LOAD(c, tc) N_LOAD(d, td)
        int64_t ja = js[u], jb = js[u + 1], jc = js[u + 2], jd = js[u + 3];
        const int64_t ea = je[u], eb = je[u + 1], ec = je[u + 2], ed = je[u + 3];
        for (; ja < ea && jb < eb && jc < ec && jd < ed; ja++, jb++, jc++, jd++) {
            N_STEP(a, ja);
            N_STEP(b, jb);
            N_STEP(c, jc);
            N_STEP(d, jd);
        }
        for (; ja < ea; ja++) N_STEP(a, ja);
        for (; jb < eb; jb++) N_STEP(b, jb);
        for (; jc < ec; jc++) N_STEP(c, jc);
        for (; jd < ed; jd++) N_STEP(d, jd);
        N_STORE(a, ta) N_STORE(b, tb) N_STORE(c, tc) N_STORE(d, td)
    }
    for (; u < nr; u++) {
        __m512 a0, a1 = _mm512_setzero_ps(), a2 = a1;
        float *ta = t + u * SPARSE_TILE;
        N_LOAD(a, ta)
        for (int64_t j = js[u]; j < je[u]; j++) N_STEP(a, j);
        N_STORE(a, ta)
    }
}
#undef N_LOAD
#undef N_STEP
#undef N_STORE

__attribute__((target("avx512f"))) static void avx512_narrow(const float *x, const int32_t *xo,
                                                             const float *val, const int64_t *js,
                                                             const int64_t *je, int nr, float *t,
                                                             int resume, int nv) {
    if (nv == 1) avx512_narrow_nv(x, xo, val, js, je, nr, t, resume, 1);
    else if (nv == 2) avx512_narrow_nv(x, xo, val, js, je, nr, t, resume, 2);
    else avx512_narrow_nv(x, xo, val, js, je, nr, t, resume, 3);
}

const ops_sparse_isa ops_sparse_avx2 = {"avx2", avx2_tile, NULL};
const ops_sparse_isa ops_sparse_avx512 = {"avx512", avx512_tile, avx512_narrow};

#else  /* not x86: the portable kernel stands in (sparse.c never selects these) */
const ops_sparse_isa ops_sparse_avx2 = {"avx2", NULL, NULL};
const ops_sparse_isa ops_sparse_avx512 = {"avx512", NULL, NULL};
#endif
