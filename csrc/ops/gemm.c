/* Packed-weight GEMM for fixed weights: out (M, K) = epilogue(a (M, C) @ W^T), W (K, C) packed
 * once at model build into panels of NR = OVS_PACK_NR output features (layout in ops.h).
 * Dimension letters as in include/ovs/ops.h.
 *
 * Determinism by construction: every output element is one fmaf chain over c = 0..C-1 in
 * increasing order (see ops/gemm.h), computed by micro-kernel calls over slices of c; the epilogue
 * (alpha, beta, bias, residual, activation) is applied after, element by element, by code shared
 * by all ISAs. A row's result therefore does not depend on M, on the row's position, on the
 * tiling, on the slicing (a cut chain resumes from the stored float), on the thread count or on
 * the ISA path (portable / AVX2 / AVX-512).
 *
 * Work split: `a` is packed once per call into blocks of mr_max rows (the ISA's SIMD packing,
 * ops/gemm.h); the output is cut into tasks of (a block of rows) x (a group of panels); OpenMP
 * threads take tasks dynamically. Row blocks are as tall as L2 allows (each row block streams
 * the whole weight from memory once: 197 ViT tokens are one block, not three). Inside a task,
 * column blocks of GEMM_NB panels: the micro-kernel covers mr_max rows x nr_max columns (one or
 * two adjacent panels) per call; long chains are cut into slices of GEMM_KC steps so that a
 * micro-tile's slice of packed rows stays in L1 and the column block's weight slice in L2. */
#include "ops/gemm.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* ---------------------------------------------------------------- portable kernel */
#define PORTABLE_MR 4

/* Operand columns / rows through the offset tables, or the packed layouts without them. */
static void portable_gather(int64_t mr, int64_t nr, int64_t C, const float *a,
                            const int64_t *aoff, const float *b0, const int64_t *boff,
                            float *tile, int resume) {
    float acc[PORTABLE_MR][OVS_PACK_NR];
    (void)nr;   /* always NR: the portable ISA's nr_max */
    for (int64_t r = 0; r < mr; r++)
        for (int j = 0; j < OVS_PACK_NR; j++) acc[r][j] = resume ? tile[r * OVS_PACK_NR + j] : 0.0f;
    for (int64_t c = 0; c < C; c++) {
        const float *b = boff ? b0 + boff[c] : b0 + c * OVS_PACK_NR;
        const float *ac = aoff ? a + aoff[c] : a + c * PORTABLE_MR;
        for (int64_t r = 0; r < mr; r++) {
            const float av = ac[r];
            for (int j = 0; j < OVS_PACK_NR; j++) acc[r][j] = fmaf(av, b[j], acc[r][j]);
        }
    }
    for (int64_t r = 0; r < mr; r++)
        for (int j = 0; j < OVS_PACK_NR; j++) tile[r * OVS_PACK_NR + j] = acc[r][j];
}

static void portable_kernel(int64_t mr, int64_t nr, int64_t C, const float *a, const float *b,
                            int64_t b2, float *tile, int resume) {
    (void)b2;
    portable_gather(mr, nr, C, a, NULL, b, NULL, tile, resume);
}

void ops_gemm_pack_a_scalar(float *dst, const float *a, int64_t lda, int64_t m, int64_t C,
                            int64_t mr_max) {
    for (int64_t r = 0; r < m; r++)
        for (int64_t c = 0; c < C; c++) dst[c * mr_max + r] = a[r * lda + c];
}

static void portable_pack(float *dst, const float *a, int64_t lda, int64_t m, int64_t C) {
    ops_gemm_pack_a_scalar(dst, a, lda, m, C, PORTABLE_MR);
}

void ops_gemm_store_scalar(float *o, int64_t ldo, const float *acc, int64_t lda, int64_t m,
                           int64_t n, const float *bias, const float *res, int64_t ldr,
                           ovs_act act) {
    for (int64_t r = 0; r < m; r++) {
        float v[OPS_GEMM_NR_MAX];
        const float b = bias ? bias[r] : 0.0f, *a = acc + r * lda;
        if (res) {
            const float *rr = res + r * ldr;
            for (int64_t i = 0; i < n; i++) v[i] = (a[i] + b) + rr[i];
        } else {
            for (int64_t i = 0; i < n; i++) v[i] = a[i] + b;
        }
        ops_act_inplace(v, n, act);
        for (int64_t i = 0; i < n; i++) o[r * ldo + i] = v[i];
    }
}

const ops_gemm_isa ops_gemm_portable = {"portable", PORTABLE_MR, OVS_PACK_NR, portable_kernel,
                                        portable_gather, portable_pack, ops_gemm_store_scalar, 0, NULL};

void ops_gemm_pack_rows(const ops_gemm_isa *isa, float *dst, const float *a, int64_t lda,
                        int64_t M, int64_t C, int threads) {
    const int64_t mr = isa->mr_max, blocks = (M + mr - 1) / mr;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && blocks > 1)
    for (int64_t i = 0; i < blocks; i++)
        isa->pack_a(dst + i * C * mr, a + i * mr * lda, lda, M - i * mr < mr ? M - i * mr : mr, C);
}

/* ---------------------------------------------------------------- ISA choice */
/* -1: not chosen yet; otherwise an ovs_gemm_isa_kind. Forced by ovs_gemm_set_isa (tests). */
static _Atomic int gemm_isa_kind = -1;

static int cpu_has(ovs_gemm_isa_kind kind) {
    switch (kind) {
    case OVS_GEMM_ISA_PORTABLE: return 1;
#if defined(__x86_64__) || defined(__i386__)
    case OVS_GEMM_ISA_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case OVS_GEMM_ISA_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f");
#endif
    default: return 0;
    }
}

static const ops_gemm_isa *isa_table(int kind) {
    switch (kind) {
    case OVS_GEMM_ISA_AVX2: return &ops_gemm_avx2;
    case OVS_GEMM_ISA_AVX512: return &ops_gemm_avx512;
    default: return &ops_gemm_portable;
    }
}

static int best_isa(void) {
    if (cpu_has(OVS_GEMM_ISA_AVX512)) return OVS_GEMM_ISA_AVX512;
    if (cpu_has(OVS_GEMM_ISA_AVX2)) return OVS_GEMM_ISA_AVX2;
    return OVS_GEMM_ISA_PORTABLE;
}

const ops_gemm_isa *ops_gemm_current_isa(void) {
    int kind = atomic_load(&gemm_isa_kind);
    if (kind < 0) {
        kind = best_isa();
        atomic_store(&gemm_isa_kind, kind);
    }
    return isa_table(kind);
}

int ovs_gemm_set_isa(ovs_gemm_isa_kind kind) {
    if (kind == OVS_GEMM_ISA_AUTO) {
        atomic_store(&gemm_isa_kind, best_isa());
        return OVS_OK;
    }
    if (kind != OVS_GEMM_ISA_PORTABLE && kind != OVS_GEMM_ISA_AVX2 && kind != OVS_GEMM_ISA_AVX512)
        return ovs_set_error(OVS_ERR_ARG, "ovs_gemm_set_isa: unknown ISA %d", (int)kind);
    if (!cpu_has(kind))
        return ovs_set_error(OVS_ERR_UNSUPPORTED,
                             "ovs_gemm_set_isa: this CPU does not support the %s kernels",
                             isa_table(kind)->name);
    atomic_store(&gemm_isa_kind, (int)kind);
    return OVS_OK;
}

const char *ovs_gemm_isa_name(void) { return ops_gemm_current_isa()->name; }

/* ---------------------------------------------------------------- FMA rate probe */
/* OPS_FMA_CHAINS fmaf chains (the compiler may put them in one vector: the FLOPs are the same). */
static float portable_fma_chains(int64_t iters) {
    float a[OPS_FMA_CHAINS], s = 0.0f;
    for (int i = 0; i < OPS_FMA_CHAINS; i++) a[i] = (float)i;
    for (int64_t k = 0; k < iters; k++)
        for (int i = 0; i < OPS_FMA_CHAINS; i++) a[i] = fmaf(a[i], 0.9999999f, 1e-7f);
    for (int i = 0; i < OPS_FMA_CHAINS; i++) s += a[i];
    return s;
}

int ovs_fma_peak(int threads, int64_t iters, double *gflops) {
    if (threads < 1 || iters < 1 || !gflops)
        return ovs_set_error(OVS_ERR_ARG, "fma_peak: threads and iters must be >= 1 and gflops "
                             "non-NULL (got %d, %lld)", threads, (long long)iters);
    const ops_gemm_isa *isa = ops_gemm_current_isa();
    float (*chains)(int64_t) = portable_fma_chains;
    double lanes = 1.0;
    if (isa == &ops_gemm_avx512) chains = ops_fma_chains_avx512, lanes = 16.0;
    else if (isa == &ops_gemm_avx2) chains = ops_fma_chains_avx2, lanes = 8.0;
    struct timespec t0, t1;
    float sink = 0.0f;
    clock_gettime(CLOCK_MONOTONIC, &t0);
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    sink += chains(iters);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    const double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    if (!(sink == sink) || s <= 0.0)   /* the chains converge to finite values */
        return ovs_set_error(OVS_ERR_UNSUPPORTED, "fma_peak: no usable timing (%g s)", s);
    *gflops = 2.0 * OPS_FMA_CHAINS * lanes * (double)iters * (double)threads / s / 1e9;
    return OVS_OK;
}

/* ---------------------------------------------------------------- packing */
size_t ovs_matrix_packed_floats(int64_t rows, int64_t cols) {
    if (rows < 0 || cols < 0) return 0;
    size_t panels = (size_t)(rows + OVS_PACK_NR - 1) / OVS_PACK_NR, n;
    if (ovs_mul3_size(&n, panels, (size_t)OVS_PACK_NR, (size_t)cols)) return SIZE_MAX;
    return n;
}

void ops_matrix_pack_rows(float *dst, const float *src, int64_t ld, int64_t rows, int64_t cols,
                          int threads) {
    const int64_t panels = (rows + OVS_PACK_NR - 1) / OVS_PACK_NR;
#pragma omp parallel for schedule(static) if (threads > 1 && panels > 1) num_threads(threads)
    for (int64_t p = 0; p < panels; p++) {
        float *d = dst + p * cols * OVS_PACK_NR;       /* (cols, NR) */
        for (int j = 0; j < OVS_PACK_NR; j++) {
            const int64_t k = p * OVS_PACK_NR + j;
            if (k < rows) {
                const float *s = src + k * ld;
                for (int64_t c = 0; c < cols; c++) d[c * OVS_PACK_NR + j] = s[c];
            } else {
                for (int64_t c = 0; c < cols; c++) d[c * OVS_PACK_NR + j] = 0.0f;
            }
        }
    }
}

int ovs_matrix_pack(float *dst, const float *src, int64_t rows, int64_t cols) {
    static const char op[] = "ovs_matrix_pack";
    int st;
    int64_t n;
    if ((st = ops_check_nonneg(op, "rows", rows)) || (st = ops_check_nonneg(op, "cols", cols)) ||
        (st = ops_mul(&n, op, rows, cols)) || (st = ops_check_ptr(op, "src", src, n)))
        return st;
    size_t packed = ovs_matrix_packed_floats(rows, cols);
    if (packed == SIZE_MAX || packed > (size_t)INT64_MAX)
        return ovs_set_error(OVS_ERR_OVERFLOW, "%s: packed size of (%lld, %lld) overflows", op,
                             (long long)rows, (long long)cols);
    if ((st = ops_check_ptr(op, "dst", dst, (int64_t)packed))) return st;
    ops_matrix_pack_rows(dst, src, cols, rows, cols,
                         n >= OPS_PAR_MIN ? ovs_get_num_threads() : 1);
    return OVS_OK;
}

ovs_matrix ovs_matrix_packed(const float *packed, int64_t rows, int64_t cols) {
    return (ovs_matrix){.format = OVS_MATRIX_PACKED, .data = packed, .rows = rows, .cols = cols};
}

/* ---------------------------------------------------------------- workspace */
/* Per-thread workspaces (ops_internal.h), kept between calls up to OPS_WS_KEEP bytes: a fresh
 * block per call costs page faults and, when it is unmapped, TLB shootdowns on the other threads
 * (~1/10 of a ViT forward at 2 threads). A block is 64 bytes of header (its capacity in bytes)
 * then the workspace; a pthread key per slot frees it at thread exit. */
#define OPS_WS_KEEP ((size_t)32 << 20)
#define OPS_WS_HDR ((size_t)64)

static pthread_key_t ws_keys[OPS_WS_SLOTS];
static pthread_once_t ws_once = PTHREAD_ONCE_INIT;
static int ws_keys_ok;

static void ws_destroy(void *block) { ovs_free(block); }
static void ws_make_keys(void) {
    int ok = 1;
    for (int i = 0; i < OPS_WS_SLOTS && ok; i++) ok = pthread_key_create(&ws_keys[i], ws_destroy) == 0;
    ws_keys_ok = ok;
}

void *ops_thread_workspace(int slot, size_t bytes, void **own) {
    pthread_once(&ws_once, ws_make_keys);
    const int keyed = ws_keys_ok && slot >= 0 && slot < OPS_WS_SLOTS;
    unsigned char *block = keyed ? pthread_getspecific(ws_keys[slot]) : NULL;
    *own = NULL;
    if (block) {
        size_t cap;
        memcpy(&cap, block, sizeof cap);
        if (cap >= bytes) return block + OPS_WS_HDR;   /* kept: the caller does not free it */
        pthread_setspecific(ws_keys[slot], NULL);
        ovs_free(block);
    }
    if (bytes > SIZE_MAX - OPS_WS_HDR) {
        ovs_set_error(OVS_ERR_OVERFLOW, "workspace of %zu bytes overflows", bytes);
        return NULL;
    }
    if (!(block = ovs_malloc(OPS_WS_HDR + bytes))) return NULL;
    memcpy(block, &bytes, sizeof bytes);
    if (!keyed || bytes > OPS_WS_KEEP || pthread_setspecific(ws_keys[slot], block) != 0)
        *own = block;                                  /* the caller frees it after the call */
    return block + OPS_WS_HDR;
}

void ovs_gemm_release_workspace(void) {
    pthread_once(&ws_once, ws_make_keys);
    if (!ws_keys_ok) return;
    for (int i = 0; i < OPS_WS_SLOTS; i++) {
        void *block = pthread_getspecific(ws_keys[i]);
        if (block) {
            pthread_setspecific(ws_keys[i], NULL);
            ovs_free(block);
        }
    }
}

/* Packs the blocks of mr_max rows [b0, b1) of `a` unless already done: a block is claimed by
 * the first thread that needs it (flag 0 -> 1), packed, published (-> 2); a thread that finds
 * it claimed by another waits for the flag. No barrier between packing and computing. */
static void gemm_pack_blocks(const ops_gemm_isa *isa, float *ap, const float *a, int64_t lda,
                             int64_t M, int64_t C, int64_t b0, int64_t b1, _Atomic int *flags) {
    const int64_t mr = isa->mr_max;
    for (int64_t i = b0; i < b1; i++) {
        int expected = 0;
        if (atomic_load_explicit(&flags[i], memory_order_acquire) == 0 &&
            atomic_compare_exchange_strong(&flags[i], &expected, 1)) {
            isa->pack_a(ap + i * C * mr, a + i * mr * lda, lda, M - i * mr < mr ? M - i * mr : mr, C);
            atomic_store_explicit(&flags[i], 2, memory_order_release);
        }
    }
    for (int64_t i = b0; i < b1; i++)
        for (unsigned spins = 0; atomic_load_explicit(&flags[i], memory_order_acquire) != 2; spins++) {
            if (spins >= 256) sched_yield();   /* the packer may have been preempted */
#if defined(__x86_64__) || defined(__i386__)
            else __builtin_ia32_pause();
#endif
        }
}

/* ---------------------------------------------------------------- driver */
/* Chains longer than 2 * GEMM_KC steps are cut into slices of GEMM_KC (resumed from the stored
 * partial sums, ops/gemm.h), so that the slices a task reuses stay in cache. */
#ifndef GEMM_KC
#define GEMM_KC 256
#endif
/* Floats of packed rows a task keeps in L2 per slice (256 KiB), and panels per column block
 * (its kc x GEMM_NB*NR slice of the weight, 128 KiB at kc = 256, also stays in L2). */
#ifndef GEMM_A_L2
#define GEMM_A_L2 ((int64_t)64 << 10)
#endif
#ifndef GEMM_NB
#define GEMM_NB 8
#endif

/* Rows per row block: as few blocks as the L2 budget allows (each block streams the whole
 * weight once), balanced, in whole micro-tiles. */
static int64_t gemm_row_block(int64_t M, int64_t kc, int64_t mr) {
    int64_t cap = kc > 0 ? GEMM_A_L2 / kc : GEMM_A_L2;
    cap = cap / mr * mr;
    if (cap < mr) cap = mr;
    const int64_t blocks = (M + cap - 1) / cap;
    const int64_t rows = (M + blocks - 1) / blocks;
    return (rows + mr - 1) / mr * mr;
}

/* out[i, j] for j < nj of one tile row: the shared epilogue, the same code for every ISA.
 * Per element, in this order: alpha *, + beta * out, + bias, + res, then the activation. The
 * common linear-layer case (alpha 1, beta 0) has its own branch-free loops (same operations,
 * same order: bitwise the general path's result). */
static void gemm_epilogue_row(float *o, const float *acc, int64_t nj, float alpha, float beta,
                              const float *bias, const float *res, ovs_act act) {
    float v[OPS_GEMM_NR_MAX];
    if (alpha == 1.0f && beta == 0.0f) {
        if (bias && res) {
#pragma omp simd
            for (int64_t j = 0; j < nj; j++) v[j] = (acc[j] + bias[j]) + res[j];
        } else if (bias) {
#pragma omp simd
            for (int64_t j = 0; j < nj; j++) v[j] = acc[j] + bias[j];
        } else if (res) {
#pragma omp simd
            for (int64_t j = 0; j < nj; j++) v[j] = acc[j] + res[j];
        } else {
#pragma omp simd
            for (int64_t j = 0; j < nj; j++) v[j] = acc[j];
        }
    } else {
        for (int64_t j = 0; j < nj; j++) {
            float x = acc[j];
            if (alpha != 1.0f) x = alpha * x;
            if (beta != 0.0f) x = beta == 1.0f ? x + o[j] : x + beta * o[j];
            if (bias) x = x + bias[j];
            if (res) x = x + res[j];
            v[j] = x;
        }
    }
    ops_act_inplace(v, nj, act);
#pragma omp simd
    for (int64_t j = 0; j < nj; j++) o[j] = v[j];
}

/* The left operand is packed once per call (the ISA's SIMD packing) into blocks of mr_max rows;
 * then tasks of (row block) x (group of panels). A task walks its panels in column blocks of
 * GEMM_NB panels; per column block, slice by slice, each micro-tile of rows (its kc slice in
 * L1) runs the micro-kernel over the block's panel pairs (the block's slice in L2); the partial
 * sums of the (row block x column block) tiles wait in a per-thread buffer between slices, and
 * the epilogue runs on a tile after its last slice. One parallel region, no barrier but its
 * end: tasks (each packs the row blocks it needs that no thread has claimed yet). */
int ops_gemm_packed(const char *op, float *out, int64_t ldo, const float *a, int64_t lda,
                    const ovs_matrix *w, int64_t M, float alpha, float beta, const float *bias,
                    const float *res, int64_t ldr, ovs_act act) {
    const int64_t K = w->rows, C = w->cols;
    if (M == 0 || K == 0) return OVS_OK;
    const ops_gemm_isa *isa = ops_gemm_current_isa();
    const int64_t mr = isa->mr_max, step = isa->nr_max / OVS_PACK_NR, nrm = isa->nr_max;
    const int sliced = C > 2 * GEMM_KC;
    const int64_t kc = sliced ? GEMM_KC : (C > 0 ? C : 1);
    const int64_t rb = gemm_row_block(M, kc, mr);
    const int64_t panels = (K + OVS_PACK_NR - 1) / OVS_PACK_NR;
    const int64_t row_blocks = (M + rb - 1) / rb;
    const int64_t mblocks = (M + mr - 1) / mr;
    int threads = 1;
#ifdef _OPENMP
    if (!omp_in_parallel() && (double)M * (double)K * (double)C >= 1.0e6)
        threads = ovs_get_num_threads();
#endif
    /* Panel groups (whole micro-tiles): enough tasks for ~8 per thread, so that a worker that
     * wakes late (passive waiting) or is preempted leaves a short tail: at 2 threads a ViT-B
     * block's out-proj (48 panels) is 12 tasks of 4 panels. */
    int64_t group = panels;
    if (threads > 1) {
        int64_t want = 8 * (int64_t)threads;
        int64_t groups = (want + row_blocks - 1) / row_blocks;
        group = (panels + groups - 1) / groups;
        if (group < 2) group = 2;
    }
    group = (group + step - 1) / step * step;
    const int64_t groups = (panels + group - 1) / group;
    const int64_t tasks = row_blocks * groups;
    int64_t nb = group < GEMM_NB ? group : GEMM_NB;
    nb = (nb + step - 1) / step * step;
    /* A task's (row block x column block) tiles, (nb/step) x (rb/mr) of (mr, nr_max), per thread. */
    const int64_t per_thread = rb * nb * OVS_PACK_NR;
    /* Workspace: packed rows, then the per-thread partial sums, then one flag per row block
     * of mr_max (all 64-byte aligned). */
    const size_t ap_n = C > 0 ? (size_t)mblocks * (size_t)mr * (size_t)C : 0;
    const size_t ap_bytes = (ap_n * sizeof(float) + 63) & ~(size_t)63;
    const size_t acc_bytes = (((size_t)threads * (size_t)per_thread * sizeof(float)) + 63) & ~(size_t)63;
    const size_t flag_bytes = (size_t)mblocks * sizeof(_Atomic int);
    void *own;
    unsigned char *ws = ops_thread_workspace(OPS_WS_GEMM, ap_bytes + acc_bytes + flag_bytes, &own);
    if (!ws)
        return ovs_set_error(OVS_ERR_NOMEM, "%s: out of memory for the workspace (packed rows "
                             "%lld x %lld and partial sums)", op, (long long)M, (long long)C);
    float *ap = (float *)ws, *accs = (float *)(ws + ap_bytes);
    _Atomic int *flags = (_Atomic int *)(ws + ap_bytes + acc_bytes);
    for (int64_t i = 0; i < mblocks; i++) atomic_init(&flags[i], 0);
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *mine = accs + tid * per_thread;
#pragma omp for schedule(dynamic, 1) nowait
        for (int64_t t = 0; t < tasks; t++) {
            const int64_t i0 = (t / groups) * rb, g0 = (t % groups) * group;
            const int64_t i1 = i0 + rb < M ? i0 + rb : M;
            const int64_t g1 = g0 + group < panels ? g0 + group : panels;
            if (C > 0) gemm_pack_blocks(isa, ap, a, lda, M, C, i0 / mr, (i1 + mr - 1) / mr, flags);
            for (int64_t q0 = g0; q0 < g1; q0 += nb) {
                const int64_t q1 = q0 + nb < g1 ? q0 + nb : g1;
                for (int64_t l0 = 0; l0 < kc || l0 < C; l0 += kc) {
                    const int64_t n = C - l0 < kc ? C - l0 : kc;
                    const int last = l0 + kc >= C;
                    for (int64_t i = i0; i < i1; i += mr) {
                        const int64_t m = i1 - i < mr ? i1 - i : mr;
                        for (int64_t p = q0; p < q1; p += step) {
                            const int64_t np = q1 - p < step ? q1 - p : step, nr = np * OVS_PACK_NR;
                            const int64_t j0 = p * OVS_PACK_NR;
                            const int64_t nj = K - j0 < nr ? K - j0 : nr;
                            float *tile = mine + ((p - q0) / step * (rb / mr) + (i - i0) / mr) * mr * nrm;
                            if (C > 0) {
                                isa->kernel(m, nr, n, ap + i * C + l0 * mr,
                                            w->data + (p * C + l0) * OVS_PACK_NR, C * OVS_PACK_NR,
                                            tile, l0 > 0);
                            } else {
                                for (int64_t z = 0; z < m * nr; z++) tile[z] = 0.0f;
                            }
                            if (!last) continue;   /* more slices to come */
                            for (int64_t r = 0; r < m; r++)
                                gemm_epilogue_row(out + (i + r) * ldo + j0, tile + r * nr, nj,
                                                  alpha, beta, bias ? bias + j0 : NULL,
                                                  res ? res + (i + r) * ldr + j0 : NULL, act);
                        }
                    }
                }
            }
        }
    }
    ovs_free(own);
    return OVS_OK;
}

int ovs_gemm_packed_naive(float *out, const float *a, const float *packed, int64_t M, int64_t C,
                          int64_t K) {
    static const char op[] = "ovs_gemm_packed_naive";
    int st;
    int64_t mk, mc;
    if ((st = ops_check_nonneg(op, "M", M)) || (st = ops_check_nonneg(op, "C", C)) ||
        (st = ops_check_nonneg(op, "K", K)) || (st = ops_mul(&mk, op, M, K)) ||
        (st = ops_mul(&mc, op, M, C)) || (st = ops_check_ptr(op, "out", out, mk)) ||
        (st = ops_check_ptr(op, "a", a, mk > 0 ? mc : 0)) ||
        (st = ops_check_ptr(op, "packed", packed, mk > 0 && C > 0 ? 1 : 0)))
        return st;
    for (int64_t i = 0; i < M; i++)
        for (int64_t k = 0; k < K; k++) {
            const float *col = packed + (k / OVS_PACK_NR) * C * OVS_PACK_NR + k % OVS_PACK_NR;
            float acc = 0.0f;
            for (int64_t c = 0; c < C; c++) acc = fmaf(a[i * C + c], col[c * OVS_PACK_NR], acc);
            out[i * K + k] = acc;
        }
    return OVS_OK;
}
