/*
 * ovs io: read-only access to safetensors weight files.
 *
 * Usage:
 *
 *     ovs_safetensors *st = NULL;
 *     if (ovs_safetensors_open(&st, "open_clip_model.safetensors") != OVS_OK) {
 *         fprintf(stderr, "%s\n", ovs_last_error());
 *         return;
 *     }
 *     int64_t i = ovs_safetensors_find(st, "visual.conv1.weight");
 *     const ovs_safetensors_entry *e = ovs_safetensors_entry_at(st, i);   // NULL if i < 0
 *     float *w = ovs_malloc(e->numel * sizeof(float));                   // (shape...)
 *     ovs_safetensors_read_f32(w, st, i);      // read now; any numeric dtype -> float32
 *     ...
 *     ovs_safetensors_close(st);               // invalidates every entry and data pointer
 *
 * File layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON
 *   {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *    "__metadata__": {"<key>": "<value>", ...}}
 * and then the data region; offsets count from the start of the data region.
 *
 * Everything in the header is checked before open/parse succeed: N <= file size - 8 and
 * N <= OVS_SAFETENSORS_MAX_HEADER, strict JSON (nesting of unknown values <= 64), a known dtype,
 * shape entries non-negative integers, rank <= OVS_MAX_DIMS, numel * itemsize without overflow,
 * data_offsets exactly two integers with begin <= end, end - begin == numel * itemsize,
 * end <= data region size, unique names, and no two non-empty tensors sharing bytes.
 * Gaps between tensors are allowed. Data is little-endian; this reader targets little-endian
 * hosts only.
 *
 * Errors: OVS_ERR_IO (cannot open/stat/map; the message names the path and the system error,
 * and errno keeps the cause), OVS_ERR_FORMAT (malformed; the message says what and where),
 * OVS_ERR_NOMEM.
 *
 * ovs_safetensors_open reads and validates only the header and keeps the file open; each tensor
 * is read (pread, no mmap) when asked for, so a model built from it holds its weights once, in
 * the form its kernels use, instead of a copy of the file besides. The file's identity (device,
 * inode, size, modification time) is recorded at open and checked before and after
 * every read: a file rewritten, truncated or replaced since (the path naming another file) gives
 * OVS_ERR_IO "... changed since it was opened" with errno ESTALE, never other weights or a
 * SIGBUS. A path removed after the open still reads (the descriptor keeps the opened file).
 * Non-regular files (directories, FIFOs, devices) are refused before they are opened, so a FIFO
 * cannot block and /dev/zero cannot be read forever.
 */
#ifndef OVS_IO_H
#define OVS_IO_H

#include "ovs/ovs.h"

#ifdef __cplusplus
extern "C" {
#endif

#define OVS_SAFETENSORS_MAX_HEADER ((size_t)100 << 20)  /* 100 MiB */

typedef enum {
    OVS_DTYPE_F32 = 0,
    OVS_DTYPE_F16,
    OVS_DTYPE_BF16,
    OVS_DTYPE_F64,
    OVS_DTYPE_I64,
    OVS_DTYPE_I32,
    OVS_DTYPE_I16,
    OVS_DTYPE_I8,
    OVS_DTYPE_U64,
    OVS_DTYPE_U32,
    OVS_DTYPE_U16,
    OVS_DTYPE_U8,
    OVS_DTYPE_BOOL,
    OVS_DTYPE_COUNT_,
} ovs_dtype;

/* The safetensors spelling ("F32", "BF16", ...); "?" for an invalid value. */
const char *ovs_dtype_name(ovs_dtype dtype);
/* Bytes per element; 0 for an invalid value. */
size_t ovs_dtype_size(ovs_dtype dtype);

/* One tensor of a file, in header order. All pointers live until ovs_safetensors_close. */
typedef struct {
    const char *name;              /* UTF-8, NUL-terminated (names with NUL are rejected) */
    ovs_dtype dtype;
    int ndim;                      /* 0..OVS_MAX_DIMS */
    int64_t shape[OVS_MAX_DIMS];   /* (ndim,) */
    int64_t numel;                 /* product of shape (1 for a scalar) */
    size_t offset;                 /* byte offset of the data from the start of the file/buffer */
    size_t nbytes;                 /* numel * ovs_dtype_size(dtype) */
    const void *data;              /* (nbytes,) little-endian, alignment not guaranteed, in the
                                      caller's buffer (ovs_safetensors_parse); NULL for a file
                                      (ovs_safetensors_open): read it with ovs_safetensors_read_* */
} ovs_safetensors_entry;

/* One "__metadata__" pair, in header order. */
typedef struct {
    const char *key;               /* UTF-8, NUL-terminated */
    const char *value;
} ovs_safetensors_meta;

typedef struct ovs_safetensors ovs_safetensors;

/* Open `path`, read and validate its header; tensors are read on demand.
 * out:  receives the file (NULL on failure); it holds one open descriptor until closed
 * path: a regular file (others: OVS_ERR_IO with errno EISDIR / EINVAL) */
int ovs_safetensors_open(ovs_safetensors **out, const char *path);
/* 1 for a file opened with ovs_safetensors_open (tensors read on demand), 0 for a buffer. */
int ovs_safetensors_is_lazy(const ovs_safetensors *st);

/* Validate a safetensors image held by the caller (no copy). The buffer must stay valid and
 * unchanged until ovs_safetensors_close. Same checks and errors as ovs_safetensors_open.
 * out:  receives the parsed view (NULL on failure)
 * buf:  (size,) bytes of a whole file */
int ovs_safetensors_parse(ovs_safetensors **out, const void *buf, size_t size);

/* Free (and close the file, if opened from a path). NULL is allowed. */
void ovs_safetensors_close(ovs_safetensors *st);

/* Number of tensors. */
int64_t ovs_safetensors_count(const ovs_safetensors *st);
/* Entry `index` (0 <= index < count), or NULL when out of range. */
const ovs_safetensors_entry *ovs_safetensors_entry_at(const ovs_safetensors *st, int64_t index);
/* Index of the tensor called `name` (binary search), or -1. */
int64_t ovs_safetensors_find(const ovs_safetensors *st, const char *name);

/* Number of metadata pairs and pair `index` (NULL when out of range). */
int64_t ovs_safetensors_meta_count(const ovs_safetensors *st);
const ovs_safetensors_meta *ovs_safetensors_meta_at(const ovs_safetensors *st, int64_t index);
/* Value of metadata `key`, or NULL. */
const char *ovs_safetensors_meta_get(const ovs_safetensors *st, const char *key);

/* Size in bytes of the file or buffer, and of its JSON header. */
size_t ovs_safetensors_size(const ovs_safetensors *st);
size_t ovs_safetensors_header_size(const ovs_safetensors *st);

/* Convert tensor `index` to float32 as NumPy's astype(np.float32) does: F16 exactly (subnormals,
 * infinities, NaN payloads), BF16 exactly, F64 and 64-bit integers rounded to nearest even
 * (overflow -> inf), BOOL -> 0/1. Thread-safe; needs no allocation. From a file: OVS_ERR_IO
 * (errno ESTALE) if it changed since it was opened, or the read's system error.
 * out:   (numel,) floats, C order
 * index: 0 <= index < count, else OVS_ERR_ARG */
int ovs_safetensors_read_f32(float *out, const ovs_safetensors *st, int64_t index);
/* Copy tensor `index`'s stored bytes (nbytes, little-endian) to out; same errors. */
int ovs_safetensors_read_raw(void *out, const ovs_safetensors *st, int64_t index);

#ifdef __cplusplus
}
#endif
#endif /* OVS_IO_H */
