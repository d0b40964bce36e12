/* Errors, checked allocation, arenas, threads and the named-weight table. */
#include "ovs/ovs.h"
#include "core/blas.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

/* ---------------------------------------------------------------- errors */
static _Thread_local char tls_error[OVS_ERROR_CAP];

int ovs_set_error(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_error, sizeof tls_error, fmt, ap);
    va_end(ap);
    return code;
}

const char *ovs_last_error(void) { return tls_error; }

const char *ovs_status_name(int code) {
    switch (code) {
    case OVS_OK: return "ok";
    case OVS_ERR_ARG: return "bad argument";
    case OVS_ERR_NOMEM: return "out of memory";
    case OVS_ERR_IO: return "I/O error";
    case OVS_ERR_FORMAT: return "bad file format";
    case OVS_ERR_SHAPE: return "shape mismatch";
    case OVS_ERR_MISSING: return "missing weight";
    case OVS_ERR_UNSUPPORTED: return "unsupported";
    case OVS_ERR_OVERFLOW: return "size overflow";
    default: return "unknown error";
    }
}

/* ---------------------------------------------------------------- errors from parallel regions */
/* The slot is claimed with a compare-and-swap, so exactly one thread writes the message; it
 * publishes the status with release order after the message. ovs_region_finish runs after the
 * region's closing barrier, which orders every write of the region before it. */
static int region_claim(ovs_region_error *re) {
    int expected = 0;
    return __atomic_compare_exchange_n(&re->claimed, &expected, 1, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_RELAXED);
}

int ovs_region_fail(ovs_region_error *re, int status, const char *fmt, ...) {
    if (status == OVS_OK || !region_claim(re)) return status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(re->message, sizeof re->message, fmt, ap);
    va_end(ap);
    __atomic_store_n(&re->status, status, __ATOMIC_RELEASE);
    return status;
}

int ovs_region_keep(ovs_region_error *re, int status) {
    if (status == OVS_OK) return status;
    const char *msg = tls_error[0] ? tls_error : ovs_status_name(status);
    return ovs_region_fail(re, status, "%s", msg);
}

int ovs_region_failed(const ovs_region_error *re) {
    return __atomic_load_n(&re->claimed, __ATOMIC_RELAXED) != 0;
}

int ovs_region_finish(const ovs_region_error *re) {
    int status = __atomic_load_n(&re->status, __ATOMIC_ACQUIRE);
    if (status == OVS_OK) return OVS_OK;
    return ovs_set_error(status, "%s", re->message);
}

/* ---------------------------------------------------------------- memory */
/* Failure injection: countdown of allocations until one fails (0 = off). Test-only, so a
 * plain atomic counter is enough. */
static int64_t fail_countdown;
static int64_t alloc_count;

int64_t ovs_debug_fail_alloc(int64_t n) {
    int64_t made = __atomic_exchange_n(&alloc_count, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&fail_countdown, n > 0 ? n : 0, __ATOMIC_SEQ_CST);
    return made;
}

static int injected_failure(void) {
    __atomic_add_fetch(&alloc_count, 1, __ATOMIC_RELAXED);
    int64_t c = __atomic_load_n(&fail_countdown, __ATOMIC_RELAXED);
    if (c <= 0) return 0;
    return __atomic_sub_fetch(&fail_countdown, 1, __ATOMIC_SEQ_CST) == 0;
}

/* Large blocks (activations, workspaces) are aligned to 2 MiB and advised as transparent huge
 * pages: a fresh 2 MiB page is one fault where 4 KiB pages are 512, and the page-fault path was
 * a fifth of a DeepLab call's CPU time. Advice only; where THP is off nothing changes. */
#define HUGE_PAGE ((size_t)2 << 20)
#define HUGE_ALLOC ((size_t)4 << 20)

void *ovs_malloc(size_t bytes) {
    if (injected_failure()) {
        ovs_set_error(OVS_ERR_NOMEM, "out of memory (injected failure, %zu bytes)", bytes);
        return NULL;
    }
    void *p = NULL;
    /* 64-byte alignment keeps SIMD loads aligned and avoids false sharing between threads. */
    size_t rounded = (bytes + 63) & ~(size_t)63;
    const size_t align = rounded >= HUGE_ALLOC ? HUGE_PAGE : 64;
    if (rounded < bytes || posix_memalign(&p, align, rounded ? rounded : 64) != 0) {
        ovs_set_error(OVS_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
        return NULL;
    }
#if defined(MADV_HUGEPAGE)
    if (align == HUGE_PAGE) madvise(p, rounded & ~(HUGE_PAGE - 1), MADV_HUGEPAGE);
#endif
    return p;
}

void *ovs_calloc(size_t count, size_t size) {
    size_t bytes;
    if (ovs_mul_size(&bytes, count, size)) {
        ovs_set_error(OVS_ERR_OVERFLOW, "allocation of %zu x %zu bytes overflows", count, size);
        return NULL;
    }
    void *p = ovs_malloc(bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

void ovs_free(void *ptr) { free(ptr); }

void ovs_free_all(void *const *ptrs, size_t n) {
    for (size_t i = 0; i < n; i++) ovs_free(ptrs[i]);
}

int ovs_malloc_return_large(size_t threshold) {
#if defined(__GLIBC__) && defined(M_MMAP_THRESHOLD)
    if (getenv("MALLOC_MMAP_THRESHOLD_") || getenv("OVS_KEEP_MALLOC")) return 0;
    if (threshold > ((size_t)32 << 20)) threshold = (size_t)32 << 20;
    return mallopt(M_MMAP_THRESHOLD, (int)threshold) == 1;
#else
    (void)threshold;
    return 0;
#endif
}

/* Transient buffers: mapped directly above TRANSIENT_MAP bytes, so that freeing one returns its
 * memory to the system at once. Through malloc, a large block freed raises glibc's dynamic mmap
 * threshold and the next ones come from the heap, where the holes they leave after a model's
 * weights are read, transformed and freed one by one add up (~10% of a model). A 64-byte header
 * holds the mapped size (0: from ovs_malloc). */
#define TRANSIENT_MAP ((size_t)256 << 10)
#define TRANSIENT_HDR ((size_t)64)

void *ovs_malloc_transient(size_t bytes) {
    if (bytes < TRANSIENT_MAP || bytes > SIZE_MAX - TRANSIENT_HDR) {
        unsigned char *p = ovs_malloc(bytes + TRANSIENT_HDR);
        if (!p) return NULL;
        memset(p, 0, sizeof(size_t));
        return p + TRANSIENT_HDR;
    }
    if (injected_failure()) {
        ovs_set_error(OVS_ERR_NOMEM, "out of memory (injected failure, %zu bytes)", bytes);
        return NULL;
    }
    size_t total = bytes + TRANSIENT_HDR;
    unsigned char *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        ovs_set_error(OVS_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
        return NULL;
    }
    memcpy(p, &total, sizeof total);
    return p + TRANSIENT_HDR;
}

void ovs_free_transient(void *ptr) {
    if (!ptr) return;
    unsigned char *p = (unsigned char *)ptr - TRANSIENT_HDR;
    size_t total;
    memcpy(&total, p, sizeof total);
    if (total) munmap(p, total);
    else ovs_free(p);
}

int ovs_mul_size(size_t *out, size_t a, size_t b) {
    if (__builtin_mul_overflow(a, b, out)) return OVS_ERR_OVERFLOW;
    return 0;
}

int ovs_mul3_size(size_t *out, size_t a, size_t b, size_t c) {
    size_t t;
    if (__builtin_mul_overflow(a, b, &t) || __builtin_mul_overflow(t, c, out))
        return OVS_ERR_OVERFLOW;
    return 0;
}

/* ---------------------------------------------------------------- arena */
struct ovs_arena_chunk {
    ovs_arena_chunk *next;
    size_t size;    /* usable bytes after the header */
    size_t used;
    /* data follows, 64-byte aligned */
};

#define CHUNK_HEADER ((sizeof(ovs_arena_chunk) + 63) & ~(size_t)63)

void ovs_arena_init(ovs_arena *a) { memset(a, 0, sizeof *a); }

static ovs_arena_chunk *chunk_new(size_t size) {
    ovs_arena_chunk *c = ovs_malloc(CHUNK_HEADER + size);
    if (!c) return NULL;
    c->next = NULL;
    c->size = size;
    c->used = 0;
    return c;
}

float *ovs_arena_floats(ovs_arena *a, size_t count) {
    size_t bytes;
    if (ovs_mul_size(&bytes, count, sizeof(float)) || bytes > SIZE_MAX - 128) {
        ovs_set_error(OVS_ERR_OVERFLOW, "workspace request of %zu floats overflows", count);
        return NULL;
    }
    bytes = (bytes + 63) & ~(size_t)63;
    if (bytes == 0) bytes = 64;
    ovs_arena_chunk *c = a->chunks;
    if (!c || c->size - c->used < bytes) {
        size_t want = bytes;
        if (!a->chunks && a->peak > want) want = a->peak;
        c = chunk_new(want);
        if (!c) return NULL;
        c->next = a->chunks;
        a->chunks = c;
    }
    float *p = (float *)((char *)c + CHUNK_HEADER + c->used);
    c->used += bytes;
    a->used += bytes;
    if (a->used > a->peak) a->peak = a->used;
    return p;
}

void ovs_arena_reset(ovs_arena *a) {
    ovs_arena_chunk *c = a->chunks;
    if (c && c->next) {
        /* Several chunks were needed: replace them by one chunk of the peak size. */
        while (c) {
            ovs_arena_chunk *n = c->next;
            ovs_free(c);
            c = n;
        }
        a->chunks = chunk_new(a->peak); /* may fail: the next request then allocates */
    } else if (c) {
        c->used = 0;
    }
    a->used = 0;
}

void ovs_arena_free(ovs_arena *a) {
    ovs_arena_chunk *c = a->chunks;
    while (c) {
        ovs_arena_chunk *n = c->next;
        ovs_free(c);
        c = n;
    }
    memset(a, 0, sizeof *a);
}

/* ---------------------------------------------------------------- threads */
/* One process-wide count read by every parallel region (num_threads(ovs_get_num_threads())).
 * omp_set_num_threads alone would only change the calling thread's setting: other Python
 * threads would keep the old count. */
static int num_threads_setting;  /* atomic; 0 until the first ovs_set_num_threads */

void ovs_set_num_threads(int n) {
    if (n <= 0) {
#ifdef _OPENMP
        n = omp_get_num_procs();
#else
        n = 1;
#endif
    }
    __atomic_store_n(&num_threads_setting, n, __ATOMIC_RELAXED);
    /* OpenBLAS stays single-threaded: ovs splits each sgemm over its own OpenMP threads
     * (ops_sgemm), so the two thread pools never compete for the cores. */
    OVS_BLAS(openblas_set_num_threads)(1);
}

int ovs_get_num_threads(void) {
    int n = __atomic_load_n(&num_threads_setting, __ATOMIC_RELAXED);
    if (n > 0) return n;
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* ---------------------------------------------------------------- named weights */
const ovs_tensor *ovs_tensor_map_find(const ovs_tensor_map *map, const char *name) {
    for (int64_t i = 0; i < map->count; i++)
        if (strcmp(map->items[i].name, name) == 0) return &map->items[i];
    return NULL;
}

const ovs_sparse_tensor *ovs_tensor_map_find_sparse(const ovs_tensor_map *map, const char *name) {
    for (int64_t i = 0; map->sparse && i < map->nsparse; i++)
        if (strcmp(map->sparse[i].name, name) == 0) return &map->sparse[i];
    return NULL;
}

int ovs_sparse_tensor_check(const ovs_sparse_tensor *t) {
    if (t->ndim < 1 || t->ndim > OVS_MAX_DIMS)
        return ovs_set_error(OVS_ERR_FORMAT, "sparse weight '%s': %d dims", t->name, t->ndim);
    int64_t cols = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0)
            return ovs_set_error(OVS_ERR_FORMAT, "sparse weight '%s': negative extent", t->name);
        if (i && __builtin_mul_overflow(cols, t->shape[i], &cols))
            return ovs_set_error(OVS_ERR_FORMAT, "sparse weight '%s': shape overflows", t->name);
    }
    const int64_t rows = t->shape[0];
    if (!t->row_ptr || !t->val || (t->col16 != NULL) == (t->col32 != NULL) || t->nnz < 0)
        return ovs_set_error(OVS_ERR_FORMAT, "sparse weight '%s': incomplete CSR arrays", t->name);
    if (t->row_ptr[0] != 0 || t->row_ptr[rows] != t->nnz)
        return ovs_set_error(OVS_ERR_FORMAT,
                             "sparse weight '%s': row pointers run from %lld to %lld, expected 0 to nnz = %lld",
                             t->name, (long long)t->row_ptr[0], (long long)t->row_ptr[rows],
                             (long long)t->nnz);
    for (int64_t r = 0; r < rows; r++) {
        const int64_t b = t->row_ptr[r], e = t->row_ptr[r + 1];
        if (e < b || e > t->nnz)
            return ovs_set_error(OVS_ERR_FORMAT, "sparse weight '%s': row pointer %lld is not monotone",
                                 t->name, (long long)(r + 1));
        int64_t prev = -1;
        for (int64_t j = b; j < e; j++) {
            const int64_t c = t->col16 ? (int64_t)t->col16[j] : (int64_t)t->col32[j];
            if (c <= prev || c >= cols)
                return ovs_set_error(OVS_ERR_FORMAT,
                                     "sparse weight '%s': row %lld has column %lld (columns must be "
                                     "ascending in 0..%lld)",
                                     t->name, (long long)r, (long long)c, (long long)(cols - 1));
            if (!isfinite(t->val[j]))
                return ovs_set_error(OVS_ERR_FORMAT, "sparse weight '%s' holds NaN or infinity",
                                     t->name);
            prev = c;
        }
    }
    return OVS_OK;
}

const void *ovs_table_find(const void *table, size_t count, size_t size, const char *name) {
    for (size_t i = 0; name && i < count; i++) {
        const char *entry = (const char *)table + i * size, *entry_name;
        memcpy(&entry_name, entry, sizeof entry_name);
        if (!strcmp(entry_name, name)) return entry;
    }
    return NULL;
}

int64_t ovs_tensor_numel(const ovs_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t at = 0;
    at += snprintf(buf + at, cap - at, "(");
    for (int i = 0; i < ndim && at < cap; i++)
        at += snprintf(buf + at, cap - at, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (at < cap) snprintf(buf + at, cap - at, ")");
}

int ovs_tensor_map_check(const ovs_tensor **out, const ovs_tensor_map *map, const char *name,
                         int ndim, const int64_t *shape) {
    const ovs_tensor *t = ovs_tensor_map_find(map, name);
    *out = NULL;
    if (!t) return ovs_set_error(OVS_ERR_MISSING, "weight '%s' is missing from the state dict", name);
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        if (shape[i] >= 0 && t->shape[i] != shape[i]) ok = 0;
    if (!ok) {
        char want[160], got[160];
        shape_str(want, sizeof want, ndim, shape);
        shape_str(got, sizeof got, t->ndim, t->shape);
        return ovs_set_error(OVS_ERR_SHAPE, "weight '%s' has shape %s, expected %s (-1 = any)",
                             name, got, want);
    }
    *out = t;
    return OVS_OK;
}

static int no_source(const ovs_tensor *t) {
    return ovs_set_error(OVS_ERR_ARG, "weight '%s' has no data and its table no source to read "
                                      "it from", t->name);
}

int ovs_tensor_map_get(const ovs_tensor **out, const ovs_tensor_map *map, const char *name,
                       int ndim, const int64_t *shape) {
    const ovs_tensor *t;
    int rc = ovs_tensor_map_check(&t, map, name, ndim, shape);
    if (rc) return rc;
    if (!t->data) {
        const float *data;
        if (!map->source || !map->source->keep) return no_source(t);
        if ((rc = map->source->keep(map->source->ctx, t - map->items, &data))) return rc;
        if (t->data != data)
            return ovs_set_error(OVS_ERR_ARG, "weight '%s': the table's source did not make it "
                                              "resident", name);
    }
    *out = t;
    return OVS_OK;
}

int ovs_tensor_map_read(const ovs_tensor **out, const float **data, float **scratch,
                        const ovs_tensor_map *map, const char *name, int ndim,
                        const int64_t *shape) {
    const ovs_tensor *t;
    *data = NULL;
    *scratch = NULL;
    int rc = ovs_tensor_map_check(&t, map, name, ndim, shape);
    if (rc) return rc;
    if (t->data) {
        *data = t->data;
    } else {
        if (!map->source || !map->source->read) return no_source(t);
        size_t bytes;
        int64_t n = ovs_tensor_numel(t);
        if (ovs_mul_size(&bytes, (size_t)n, sizeof(float)))
            return ovs_set_error(OVS_ERR_OVERFLOW, "weight '%s' is too large", name);
        float *buf = ovs_malloc_transient(bytes ? bytes : 1);
        if (!buf) return OVS_ERR_NOMEM;
        if ((rc = map->source->read(map->source->ctx, t - map->items, buf))) {
            ovs_free_transient(buf);
            return rc;
        }
        *data = *scratch = buf;
    }
    if (out) *out = t;
    return OVS_OK;
}
