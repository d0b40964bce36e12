/* Packed-weight GEMM internals shared by csrc/ops/gemm*.c: the micro-kernel contract and the
 * per-ISA kernel tables. Dimension letters as in include/ovs/ops.h; NR = OVS_PACK_NR.
 *
 * Every kernel computes, for each row r < mr and column j < NR of one packed panel,
 *     acc = 0; for c = 0 .. C-1 (in increasing order): acc = fmaf(a[r*lda + c], panel[c*NR + j], acc)
 *     tile[r*NR + j] = acc
 * with one accumulator per output element and no reassociation, so all kernels (and all tilings
 * and thread counts that call them) give bitwise-identical results. */
#ifndef OVS_OPS_GEMM_H
#define OVS_OPS_GEMM_H

#include "ops/ops_internal.h"

/* tile (mr, NR) = a (mr, C; row stride lda) @ panel (C, NR), 1 <= mr <= the kernel's mr_max. */
typedef void (*ops_gemm_kernel_fn)(int64_t mr, int64_t C, const float *a, int64_t lda,
                                   const float *panel, float *tile);

/* The same with an offset table instead of a packed panel: row c of the (C, NR) operand is the NR
 * floats at b + off[c] (the implicit-GEMM convolution, csrc/ops/conv.c). Same fmaf chain; with
 * resume != 0 the chain continues from the values in tile instead of 0, so a chain over
 * c = 0..C-1 may be cut into consecutive calls over slices of c with a bitwise-equal result. */
typedef void (*ops_gemm_gather_fn)(int64_t mr, int64_t C, const float *a, int64_t lda,
                                   const float *b, const int64_t *off, float *tile, int resume);

typedef struct {
    const char *name;         /* "portable", "avx2", "avx512" */
    int64_t mr_max;           /* rows per micro-tile */
    ops_gemm_kernel_fn kernel;
    ops_gemm_gather_fn gather;
} ops_gemm_isa;

/* The kernels of the ISA in use (chosen from the CPU, or forced by ovs_gemm_set_isa). */
const ops_gemm_isa *ops_gemm_current_isa(void);

extern const ops_gemm_isa ops_gemm_portable;
extern const ops_gemm_isa ops_gemm_avx2;      /* needs AVX2 + FMA */
extern const ops_gemm_isa ops_gemm_avx512;    /* needs AVX-512F */

#endif
