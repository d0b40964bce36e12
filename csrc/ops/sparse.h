/* Sparse convolution internals shared by csrc/ops/sparse*.c: the tile-kernel contract and the
 * per-ISA kernel tables (chosen with the GEMM's ISA, ops_gemm_current_isa).
 *
 * A tile kernel computes, for the SPARSE_TILE consecutive grid positions i at x and the nr <=
 * SPARSE_ROWS CSR rows u whose non-zeros in this slice of columns are [jb[u], je[u]),
 *     acc = resume ? t[u*SPARSE_TILE + i] : 0
 *     for j = jb[u] .. je[u]-1 (in increasing order): acc = fmaf(val[j], x[xo[j] + i], acc)
 *     t[u*SPARSE_TILE + i] = acc
 * so a row's chain over all its non-zeros may be cut into slices of columns (input channels)
 * with a bitwise-equal result
 * one accumulator per output element and no reassociation, so every ISA, tiling and thread
 * count gives bitwise-identical results. xo[j] is the input offset of non-zero j (its column's
 * channel, row and column shift, resolved once per call); x must be readable SPARSE_TILE floats
 * past every x + xo[j] (the padded input's slack). */
#ifndef OVS_OPS_SPARSE_H
#define OVS_OPS_SPARSE_H

#include "ops/ops_internal.h"

#include <stdint.h>

/* Grid positions and (at most) output rows per kernel call. */
#define SPARSE_TILE 64
#define SPARSE_ROWS 32

typedef void (*ops_sparse_tile_fn)(const float *x, const int32_t *xo, const float *val, const int64_t *jb, const int64_t *je, int nr,
                                   float *t, int resume);

/* The same contract over the first 16 * nv grid positions only (nv = 1..3: the last, partial
 * tile of a map; t keeps its row stride SPARSE_TILE); x readable 16 * nv floats past every
 * x + xo[j]. */
typedef void (*ops_sparse_narrow_fn)(const float *x, const int32_t *xo, const float *val, const int64_t *jb,
                                     const int64_t *je, int nr, float *t, int resume, int nv);

typedef struct {
    const char *name;         /* "portable", "avx2", "avx512" */
    ops_sparse_tile_fn tile;
    ops_sparse_narrow_fn narrow;   /* NULL: the last tile runs the whole width */
} ops_sparse_isa;

extern const ops_sparse_isa ops_sparse_portable;
extern const ops_sparse_isa ops_sparse_avx2;      /* needs AVX2 + FMA */
extern const ops_sparse_isa ops_sparse_avx512;    /* needs AVX-512F */

#endif
