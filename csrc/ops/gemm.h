/* Packed-weight GEMM internals shared by csrc/ops/gemm*.c and conv.c: the micro-kernel contract
 * and the per-ISA kernel tables. Dimension letters as in include/ovs/ops.h; NR = OVS_PACK_NR.
 *
 * The left operand A (mr rows) is packed: mr_max floats per step c, A[r, c] at
 * a[c * mr_max + r] (or a[aoff[c] + r] with an offset table). The right operand B (nr = 16 or
 * 32 columns) has row c at b + c*NR (a packed panel; columns 16..31 in the next panel, b + b2)
 * or at b + boff[c] (the implicit-GEMM convolution: columns j at b + boff[c] + j). Every
 * kernel computes, for each row r < mr and column j < nr,
 *     acc = resume ? tile[r*nr + j] : 0
 *     for c = 0 .. C-1 (in increasing order): acc = fmaf(A[r, c], B[c, j], acc)
 *     tile[r*nr + j] = acc
 * with one accumulator per output element and no reassociation, so all kernels (and all tilings,
 * tile widths and thread counts that call them) give bitwise-identical results; a chain may be
 * cut into consecutive calls over slices of c (resume) with a bitwise-equal result. */
#ifndef OVS_OPS_GEMM_H
#define OVS_OPS_GEMM_H

#include "ops/ops_internal.h"

/* The packed-panel form: B row c at b + c*NR (+ b2 for columns 16..31), A at a + c*mr_max. */
typedef void (*ops_gemm_kernel_fn)(int64_t mr, int64_t nr, int64_t C, const float *a,
                                   const float *b, int64_t b2, float *tile, int resume);

/* The offset-table form: A column c at a + aoff[c], B row c at b + boff[c] (columns 16..31 at
 * b + boff[c] + 16). */
typedef void (*ops_gemm_gather_fn)(int64_t mr, int64_t nr, int64_t C, const float *a,
                                   const int64_t *aoff, const float *b, const int64_t *boff,
                                   float *tile, int resume);

/* dst[c*mr_max + r] = a[r*lda + c] for r < m <= mr_max, c < C (rows m.. of dst untouched). */
typedef void (*ops_gemm_pack_fn)(float *dst, const float *a, int64_t lda, int64_t m, int64_t C);

/* The conv epilogue of m rows of a tile: for r < m, i < n (n <= OPS_GEMM_NR_MAX)
 *     o[r*ldo + i] = act((acc[r*lda + i] + b_r) [+ res[r*ldr + i]]),  b_r = bias ? bias[r] : 0
 * in this order, in float, element by element (0 is added also without a bias: -0 becomes +0),
 * then ops_act_inplace's activation; res may be NULL or equal o. Every ISA's version equals
 * ops_gemm_store_scalar bit for bit. */
typedef void (*ops_gemm_store_fn)(float *o, int64_t ldo, const float *acc, int64_t lda,
                                  int64_t m, int64_t n, const float *bias, const float *res,
                                  int64_t ldr, ovs_act act);

/* The offset-table form for the few positions left at the end of a small map, transposed: up to
 * OPS_GEMM_NARROW_GROUPS row groups of mr <= mr_max rows each, group g's A column c at
 * ag[g] + aoff[c] (mr consecutive floats, in the lanes of one vector), B row c at b + boff[c]
 * (nr <= narrow_max columns, each broadcast); group g's (mr, nr) tile at tile + g * tstride.
 * Same fmaf chains as the other kernels (groups x nr independent chains hide the FMA latency). */
typedef void (*ops_gemm_narrow_fn)(int64_t groups, int64_t mr, int64_t nr, int64_t C,
                                   const float *const *ag, const int64_t *aoff, const float *b,
                                   const int64_t *boff, float *tile, int64_t tstride,
                                   int resume);
#define OPS_GEMM_NARROW_GROUPS 4

typedef struct {
    const char *name;         /* "portable", "avx2", "avx512" */
    int64_t mr_max;           /* rows per micro-tile */
    int64_t nr_max;           /* columns per micro-tile: 16 or 32 */
    ops_gemm_kernel_fn kernel;
    ops_gemm_gather_fn gather;
    ops_gemm_pack_fn pack_a;
    ops_gemm_store_fn store;  /* the conv epilogue (SIMD for no activation and ReLU) */
    int64_t narrow_max;       /* columns of gather_narrow (0: none) */
    ops_gemm_narrow_fn gather_narrow;
} ops_gemm_isa;

#define OPS_GEMM_MR_MAX 16    /* no ISA has more rows per micro-tile */
#define OPS_GEMM_NR_MAX 32    /* nor more columns */

/* The kernels of the ISA in use (chosen from the CPU, or forced by ovs_gemm_set_isa). */
const ops_gemm_isa *ops_gemm_current_isa(void);

/* Packs rows [0, M) of a (M, C; row stride lda) into ceil(M / mr_max) blocks of (C, mr_max),
 * block i at dst + i*C*mr_max, with the ISA's pack_a; over `threads` threads. */
void ops_gemm_pack_rows(const ops_gemm_isa *isa, float *dst, const float *a, int64_t lda,
                        int64_t M, int64_t C, int threads);

extern const ops_gemm_isa ops_gemm_portable;
extern const ops_gemm_isa ops_gemm_avx2;      /* needs AVX2 + FMA */
extern const ops_gemm_isa ops_gemm_avx512;    /* needs AVX-512F */

/* The FMA rate probe's chains (ovs_fma_peak): iters rounds of OPS_FMA_CHAINS independent
 * vector FMAs of the ISA's width (16 or 8 lanes), in registers. */
#define OPS_FMA_CHAINS 12
float ops_fma_chains_avx512(int64_t iters);
float ops_fma_chains_avx2(int64_t iters);

/* The scalar packing routine (the portable ISA's, and the reference the SIMD ones equal). */
void ops_gemm_pack_a_scalar(float *dst, const float *a, int64_t lda, int64_t m, int64_t C,
                            int64_t mr_max);

/* The scalar conv epilogue (the portable ISA's, and the reference the SIMD ones equal). */
void ops_gemm_store_scalar(float *o, int64_t ldo, const float *acc, int64_t lda, int64_t m,
                           int64_t n, const float *bias, const float *res, int64_t ldr,
                           ovs_act act);

#endif
