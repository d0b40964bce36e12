/*
 * ovs — open-vocabulary segmentation engine: core definitions.
 *
 * Usage (C):
 *
 *     ovs_tensor_map weights = ...;              // names follow open_clip's state dict
 *     ovs_resnet *net = NULL;
 *     if (ovs_resnet_create(&net, &cfg, &weights) != OVS_OK)
 *         fprintf(stderr, "%s\n", ovs_last_error());
 *     ...
 *     ovs_resnet_free(net);
 *
 * Conventions used throughout the C core:
 * - every function that can fail returns an ovs_status (0 = OVS_OK) and, on failure, leaves a
 *   message for the calling thread in ovs_last_error(); nothing calls exit(), abort() or assert()
 *   on user input;
 * - element counts and offsets are int64_t / size_t, products are checked for overflow;
 * - tensors are float32, C-contiguous, row-major; images are NCHW;
 * - all heap memory goes through ovs_malloc/ovs_free so tests can inject allocation failures.
 */
#ifndef OVS_OVS_H
#define OVS_OVS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- status codes */
typedef enum {
    OVS_OK = 0,
    OVS_ERR_ARG = 1,          /* a bad argument: size, range, inconsistent dims */
    OVS_ERR_NOMEM = 2,        /* an allocation failed */
    OVS_ERR_IO = 3,           /* open/read/mmap of a file failed */
    OVS_ERR_FORMAT = 4,       /* a file is corrupt, truncated or not what it claims */
    OVS_ERR_SHAPE = 5,        /* a weight has the wrong shape for the architecture */
    OVS_ERR_MISSING = 6,      /* a required weight is absent */
    OVS_ERR_UNSUPPORTED = 7,  /* valid but not supported (dtype, layout, ...) */
    OVS_ERR_OVERFLOW = 8,     /* a size computation would overflow */
} ovs_status;

/* Record an error message for the calling thread and return `code`. printf-style.
 * The message is per thread: inside an OpenMP parallel region it would land in a worker's
 * buffer and the caller would never see it. Parallel regions therefore report through an
 * ovs_region_error (below), which carries the first failure's status and message back to the
 * calling thread. */
int ovs_set_error(int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* The message of the last error raised on this thread ("" if none). */
const char *ovs_last_error(void);
/* A short name for a status code ("bad argument", "out of memory", ...). */
const char *ovs_status_name(int code);

/* ---------------------------------------------------------------- errors from parallel regions */
/* Capacity of an error message, terminating NUL included (longer messages are truncated). */
#define OVS_ERROR_CAP 1024

/* The first error raised by any thread of one OpenMP parallel region. Usage:
 *
 *     ovs_region_error re = OVS_REGION_ERROR_INIT;
 *     #pragma omp parallel for ...
 *     for (int64_t i = 0; i < n; i++) {
 *         if (ovs_region_failed(&re)) continue;              // optional: skip the rest
 *         float *buf = ovs_malloc(bytes);
 *         if (!buf) { ovs_region_fail(&re, OVS_ERR_NOMEM, "row %lld: out of memory", (long long)i); continue; }
 *         int st = some_ovs_function(...);                   // left its message on this thread
 *         if (st) ovs_region_keep(&re, st);
 *         ...
 *     }
 *     return ovs_region_finish(&re);   // after the region, on the calling thread
 *
 * The first failure wins (claimed atomically; later ones are dropped), whichever thread raises
 * it. ovs_region_finish copies its message into the calling thread's ovs_last_error() and
 * returns its status (OVS_OK if nothing failed). */
typedef struct {
    int status;                   /* OVS_OK until a failure is published */
    int claimed;                  /* 1 once a thread has taken the slot */
    char message[OVS_ERROR_CAP];
} ovs_region_error;

#define OVS_REGION_ERROR_INIT {OVS_OK, 0, {0}}

/* Record `status` with a printf-style message unless an earlier failure is recorded; returns
 * `status`. Thread-safe; callable from any thread of the region. */
int ovs_region_fail(ovs_region_error *re, int status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* Record `status` with the message this thread's last ovs_set_error left (the callee raised
 * it); does nothing for OVS_OK. Returns `status`. */
int ovs_region_keep(ovs_region_error *re, int status);
/* Nonzero once some thread has recorded a failure (for skipping the remaining work). */
int ovs_region_failed(const ovs_region_error *re);
/* On the calling thread, after the region: set ovs_last_error() to the recorded message and
 * return the recorded status, or return OVS_OK if nothing failed. */
int ovs_region_finish(const ovs_region_error *re);

/* ---------------------------------------------------------------- memory */
void *ovs_malloc(size_t bytes);                 /* NULL on failure (never aborts) */
void *ovs_calloc(size_t count, size_t size);    /* zeroed, overflow-checked */
void ovs_free(void *ptr);
/* ovs_free each of ptrs[0..n) (NULL ones too); OVS_FREE_ALL(a, b, c) frees a, b and c. */
void ovs_free_all(void *const *ptrs, size_t n);
#define OVS_FREE_ALL(...)                                                                   \
    ovs_free_all((void *const[]){__VA_ARGS__}, sizeof((void *const[]){__VA_ARGS__}) / sizeof(void *))
/* Make malloc map every block of `threshold` bytes or more directly (glibc M_MMAP_THRESHOLD,
 * at most 32 MiB), so that freeing one returns it to the system at once. glibc's default moves
 * the threshold up to the largest block freed so far (up to 32 MiB), after which the activations
 * and arrays of every call come from the heap and its holes stay resident between calls (seen:
 * +100..650 MB after one framework call at 640 px). Process-wide; the Python module calls it at
 * import with 1 MiB. Does nothing (returns 0) off glibc, or when MALLOC_MMAP_THRESHOLD_ (the
 * user's own setting) or OVS_KEEP_MALLOC is in the environment; 1 when applied. */
int ovs_malloc_return_large(size_t threshold);
/* A large short-lived buffer (64-byte aligned) whose memory goes back to the system as soon as
 * it is freed (mapped directly from 256 KiB on): for weights read only to be transformed.
 * Free it with ovs_free_transient only (NULL is allowed). */
void *ovs_malloc_transient(size_t bytes);
void ovs_free_transient(void *ptr);
/* Failure injection for tests: the n-th allocation from now fails (n >= 1); 0 disables.
 * Returns the number of allocations made since the last call. Process-wide, test use only. */
int64_t ovs_debug_fail_alloc(int64_t n);

/* Overflow-checked size arithmetic: return 0 on success, OVS_ERR_OVERFLOW otherwise. */
int ovs_mul_size(size_t *out, size_t a, size_t b);
int ovs_mul3_size(size_t *out, size_t a, size_t b, size_t c);

/* A bump allocator reused across calls. Allocations come from chunks; ovs_arena_reset() makes
 * everything available again and, if more than one chunk was needed, replaces the chunks with
 * one chunk of the peak size, so steady-state calls make no allocations at all. */
typedef struct ovs_arena_chunk ovs_arena_chunk;
typedef struct {
    ovs_arena_chunk *chunks;  /* newest first */
    size_t used;              /* bytes handed out since the last reset */
    size_t peak;              /* largest `used` seen */
} ovs_arena;

void ovs_arena_init(ovs_arena *a);
/* 64-byte aligned float buffer of `count` floats; NULL (with error set) on failure. */
float *ovs_arena_floats(ovs_arena *a, size_t count);
void ovs_arena_reset(ovs_arena *a);
void ovs_arena_free(ovs_arena *a);

/* ---------------------------------------------------------------- threads */
/* Threads of ovs's parallel loops (OpenMP; OpenBLAS is kept single-threaded). n <= 0 means all
 * cores. Process-wide: every parallel region, on any thread, uses the count last set. */
void ovs_set_num_threads(int n);
int ovs_get_num_threads(void);

/* ---------------------------------------------------------------- named weights */
#define OVS_MAX_DIMS 8

/* One float32 tensor of a weight table: in memory (data, borrowed from its owner: a NumPy
 * array, a buffer) or not yet read (data NULL: the table's source reads it on demand). */
typedef struct {
    const char *name;              /* open_clip state-dict name, e.g. "visual.layer1.0.conv1.weight" */
    const float *data;             /* C-contiguous float32 data, NULL until read from the source */
    int ndim;
    int64_t shape[OVS_MAX_DIMS];
} ovs_tensor;

/* One float32 tensor of dense shape `shape` stored as compressed sparse rows (a pruned conv
 * weight read from a file by ovs.prune): the matrix is (rows = shape[0], cols = product of the
 * other extents); the non-zeros of row r are val[row_ptr[r] .. row_ptr[r+1]) at columns
 * col16 or col32 (exactly one is set) strictly ascending. Borrowed like ovs_tensor, and never
 * trusted: ovs_sparse_tensor_check validates it before use. */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[OVS_MAX_DIMS];
    int64_t nnz;
    const int64_t *row_ptr;        /* (rows + 1) */
    const uint16_t *col16;         /* (nnz) or NULL */
    const int32_t *col32;          /* (nnz) or NULL */
    const float *val;              /* (nnz) */
} ovs_sparse_tensor;

/* Where the tensors with data NULL come from (e.g. a safetensors file read on demand). Both
 * functions take the item's index in the table and return an ovs_status.
 *   read: the values, checked (finite) and converted to float32, into dst (numel floats);
 *   keep: make the item resident for the table owner's lifetime: set items[index].data and
 *         *data to one buffer the owner frees with the table. */
typedef struct {
    int (*read)(void *ctx, int64_t index, float *dst);
    int (*keep)(void *ctx, int64_t index, const float **data);
    void *ctx;
} ovs_tensor_source;

/* A read-only name -> tensor table. Not owned: models copy what they transform (folded BN,
 * packed matrices: read through ovs_tensor_map_read, so a tensor from a source is read into a
 * scratch buffer and freed once transformed) and borrow the rest (ovs_tensor_map_get, which
 * makes a source's tensor resident), so the owner must outlive every model built from it. */
typedef struct {
    const ovs_tensor *items;  /* (count,) */
    int64_t count;
    const ovs_tensor_source *source;  /* NULL: every item has its data */
    /* Weights may also be given sparse (looked up only by the consumers that can take them:
     * the ResNet convs); ovs_tensor_map_find sees the dense ones only. */
    const ovs_sparse_tensor *sparse;  /* (nsparse,) may be NULL */
    int64_t nsparse;
} ovs_tensor_map;

/* The tensor called `name`, or NULL (its data may be NULL: see ovs_tensor_map_get). */
const ovs_tensor *ovs_tensor_map_find(const ovs_tensor_map *map, const char *name);
/* Look up `name` and check its shape against `shape[0..ndim)` (-1 = any extent), without
 * reading it (out->data may be NULL). OVS_ERR_MISSING / OVS_ERR_SHAPE with a message naming
 * the weight and both shapes. */
int ovs_tensor_map_check(const ovs_tensor **out, const ovs_tensor_map *map, const char *name,
                         int ndim, const int64_t *shape);
/* ovs_tensor_map_check, then the data made resident (read through the source's keep if it was
 * not): on success (*out)->data is valid as long as the table's owner lives. For tensors a
 * model uses as they are. */
int ovs_tensor_map_get(const ovs_tensor **out, const ovs_tensor_map *map, const char *name,
                       int ndim, const int64_t *shape);
/* ovs_tensor_map_check, then the data for one use: *data is the tensor in memory, or *scratch,
 * a new buffer it was read into from the source (ovs_free_transient it when done; NULL when
 * nothing was allocated). For tensors a model transforms (packs, folds, transposes): only the transformed
 * copy stays resident. out may be NULL. */
int ovs_tensor_map_read(const ovs_tensor **out, const float **data, float **scratch,
                        const ovs_tensor_map *map, const char *name, int ndim,
                        const int64_t *shape);
/* The sparse tensor called `name`, or NULL. */
const ovs_sparse_tensor *ovs_tensor_map_find_sparse(const ovs_tensor_map *map, const char *name);
/* OVS_OK if t is a well-formed CSR of its shape: row_ptr[0] = 0, non-decreasing, ending at nnz;
 * columns in range and strictly ascending within each row; values finite. Otherwise
 * OVS_ERR_FORMAT with a message naming the tensor and the first fault. */
int ovs_sparse_tensor_check(const ovs_sparse_tensor *t);

/* Element count of a tensor (product of its shape). */
int64_t ovs_tensor_numel(const ovs_tensor *t);

/* The named tables (heads, activations): the entry of table (count entries of size bytes, each
 * beginning with its `const char *name`) called name, or NULL (also for name NULL). */
const void *ovs_table_find(const void *table, size_t count, size_t size, const char *name);

#ifdef __cplusplus
}
#endif
#endif /* OVS_OVS_H */
