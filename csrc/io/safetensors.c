/* safetensors reader: strict header validation, tensors read on demand from the file (pread,
 * with a check that the file is still the one opened) or viewed in a caller's buffer, dtype
 * conversion (see ovs/io.h). */
#include "ovs/io.h"

#include "io/json.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the safetensors reader assumes a little-endian host"
#endif

/* What identifies the file's contents at open: a tensor read later refuses a file whose
 * identity changed (rewritten in place, truncated, or replaced by another file). */
typedef struct {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
} file_identity;

struct ovs_safetensors {
    const unsigned char *base;          /* (size,) caller buffer, NULL for a file */
    size_t size;                        /* bytes of the buffer or the file */
    unsigned char *owned;               /* (8 + header_size,) the file's header, NULL for a buffer */
    int fd;                             /* the open file (O_RDONLY), -1 for a buffer */
    char *path;                         /* (file) the path as resolved at open, for checks/messages */
    file_identity id;                   /* (file) identity at open */
    size_t header_size;                 /* JSON bytes after the 8-byte length */
    const unsigned char *data;          /* (data_size,) = base + 8 + header_size, NULL for a file */
    size_t data_size;
    ovs_safetensors_entry *entries;     /* (count,) header order */
    int64_t count;
    const ovs_safetensors_entry **by_name;  /* (count,) sorted by strcmp(name) */
    ovs_safetensors_meta *meta;         /* (meta_count,) header order */
    int64_t meta_count;
    char *strings;                      /* (header_size + 1,) decoded names, keys and values */
    size_t strings_used;
};

/* ---------------------------------------------------------------- dtypes */
static const struct {
    const char *name;
    size_t size;
} dtype_table[OVS_DTYPE_COUNT_] = {
    [OVS_DTYPE_F32] = {"F32", 4},  [OVS_DTYPE_F16] = {"F16", 2},  [OVS_DTYPE_BF16] = {"BF16", 2},
    [OVS_DTYPE_F64] = {"F64", 8},  [OVS_DTYPE_I64] = {"I64", 8},  [OVS_DTYPE_I32] = {"I32", 4},
    [OVS_DTYPE_I16] = {"I16", 2},  [OVS_DTYPE_I8] = {"I8", 1},    [OVS_DTYPE_U64] = {"U64", 8},
    [OVS_DTYPE_U32] = {"U32", 4},  [OVS_DTYPE_U16] = {"U16", 2},  [OVS_DTYPE_U8] = {"U8", 1},
    [OVS_DTYPE_BOOL] = {"BOOL", 1},
};

const char *ovs_dtype_name(ovs_dtype dtype) {
    return (unsigned)dtype < OVS_DTYPE_COUNT_ ? dtype_table[dtype].name : "?";
}

size_t ovs_dtype_size(ovs_dtype dtype) {
    return (unsigned)dtype < OVS_DTYPE_COUNT_ ? dtype_table[dtype].size : 0;
}

static int dtype_from_name(ovs_dtype *out, const char *name) {
    for (int d = 0; d < OVS_DTYPE_COUNT_; d++) {
        if (strcmp(dtype_table[d].name, name) == 0) {
            *out = (ovs_dtype)d;
            return 0;
        }
    }
    return -1;
}

/* ---------------------------------------------------------------- header parsing */
/* Parser state: the cursor, the object being filled and capacities of its growing arrays. */
typedef struct {
    ovs_json j;
    ovs_safetensors *st;
    int64_t entries_cap;
    int64_t meta_cap;
    int seen_metadata;
} parser;

/* Grow *arr (count used, *cap capacity, `elem` bytes each) so that one more element fits. */
static int grow(void **arr, int64_t count, int64_t *cap, size_t elem) {
    if (count < *cap) return OVS_OK;
    int64_t ncap = *cap ? *cap * 2 : 64;
    size_t bytes;
    if (ncap <= *cap || ovs_mul_size(&bytes, (size_t)ncap, elem))
        return ovs_set_error(OVS_ERR_OVERFLOW, "safetensors header: too many entries");
    void *n = ovs_malloc(bytes);
    if (!n) return OVS_ERR_NOMEM;
    if (count) memcpy(n, *arr, (size_t)count * elem);
    ovs_free(*arr);
    *arr = n;
    *cap = ncap;
    return OVS_OK;
}

/* Decode the next JSON string into the string pool. `commit` keeps it; otherwise the space is
 * reused by the next string. The pool has header_size + 1 bytes, and every decoded string plus
 * its NUL is no longer than its quoted form, so it cannot overflow. */
static int pool_string(parser *p, const char **out, size_t *len, int commit) {
    ovs_safetensors *st = p->st;
    char *dst = st->strings + st->strings_used;
    size_t n;
    int err = ovs_json_string(&p->j, dst, &n);
    if (err) return err;
    if (commit) st->strings_used += n + 1;
    *out = dst;
    if (len) *len = n;
    return OVS_OK;
}

/* The JSON array of non-negative integers at the cursor into vals[0..*n), at most `max`. */
static int parse_uint_array(parser *p, int64_t *vals, int *n, int max, const char *name,
                            const char *field) {
    int err;
    size_t at = p->j.pos;
    if (ovs_json_peek(&p->j) != '[')
        return ovs_set_error(OVS_ERR_FORMAT,
                             "safetensors header: tensor '%.200s': \"%s\" must be an array of "
                             "non-negative integers (byte %zu)", name, field, at);
    p->j.pos++;
    *n = 0;
    if (ovs_json_peek(&p->j) == ']') {
        p->j.pos++;
        return OVS_OK;
    }
    for (;;) {
        if (*n == max)
            return ovs_set_error(OVS_ERR_FORMAT,
                                 "safetensors header: tensor '%.200s': \"%s\" has more than %d "
                                 "entries (byte %zu)", name, field, max, p->j.pos);
        int64_t v;
        if ((err = ovs_json_uint(&p->j, &v))) {
            char msg[256];
            snprintf(msg, sizeof msg, "%s", ovs_last_error());
            return ovs_set_error(OVS_ERR_FORMAT, "safetensors header: tensor '%.200s': \"%s\": %s",
                                 name, field, msg);
        }
        vals[(*n)++] = v;
        int c = ovs_json_peek(&p->j);
        if (c == ',') {
            p->j.pos++;
        } else if (c == ']') {
            p->j.pos++;
            return OVS_OK;
        } else {
            return ovs_set_error(OVS_ERR_FORMAT,
                                 "safetensors header: tensor '%.200s': \"%s\": expected ',' or ']' "
                                 "at byte %zu", name, field, p->j.pos);
        }
    }
}

/* {"dtype": ..., "shape": [...], "data_offsets": [b, e]} for the tensor called `name`. */
static int parse_tensor(parser *p, const char *name) {
    ovs_safetensors *st = p->st;
    ovs_json *j = &p->j;
    int err;
    if (ovs_json_peek(j) != '{')
        return ovs_set_error(OVS_ERR_FORMAT,
                             "safetensors header: tensor '%.200s': expected an object with dtype, "
                             "shape and data_offsets at byte %zu", name, j->pos);
    j->pos++;
    ovs_safetensors_entry e;
    memset(&e, 0, sizeof e);
    e.name = name;
    int have_dtype = 0, have_shape = 0, have_offsets = 0;
    int64_t offsets[2] = {0, 0};
    if (ovs_json_peek(j) == '}') {
        j->pos++;
    } else {
        for (;;) {
            const char *field;
            if ((err = pool_string(p, &field, NULL, 0))) return err;
            if ((err = ovs_json_expect(j, ':'))) return err;
            int *seen = NULL;
            if (strcmp(field, "dtype") == 0) seen = &have_dtype;
            else if (strcmp(field, "shape") == 0) seen = &have_shape;
            else if (strcmp(field, "data_offsets") == 0) seen = &have_offsets;
            if (seen && *seen)
                return ovs_set_error(OVS_ERR_FORMAT,
                                     "safetensors header: tensor '%.200s': duplicate field \"%s\" "
                                     "(byte %zu)", name, field, j->pos);
            if (seen == &have_dtype) {
                size_t at = j->pos;
                if (ovs_json_peek(j) != '"')
                    return ovs_set_error(OVS_ERR_FORMAT,
                                         "safetensors header: tensor '%.200s': dtype must be a "
                                         "string (byte %zu)", name, at);
                const char *dt;
                if ((err = pool_string(p, &dt, NULL, 0))) return err;
                if (dtype_from_name(&e.dtype, dt))
                    return ovs_set_error(OVS_ERR_FORMAT,
                                         "safetensors header: tensor '%.200s': unsupported dtype "
                                         "'%.40s' (byte %zu; supported: F32 F16 BF16 F64 I64 I32 "
                                         "I16 I8 U64 U32 U16 U8 BOOL)", name, dt, at);
            } else if (seen == &have_shape) {
                if ((err = parse_uint_array(p, e.shape, &e.ndim, OVS_MAX_DIMS, name, "shape")))
                    return err;
            } else if (seen == &have_offsets) {
                int n;
                if ((err = parse_uint_array(p, offsets, &n, 2, name, "data_offsets"))) return err;
                if (n != 2)
                    return ovs_set_error(OVS_ERR_FORMAT,
                                         "safetensors header: tensor '%.200s': data_offsets must "
                                         "have exactly 2 entries, got %d", name, n);
            } else {
                if ((err = ovs_json_skip(j))) return err;  /* unknown field: ignored */
            }
            if (seen) *seen = 1;
            int more = ovs_json_member_end(j);
            if (more > 0) continue;
            if (more == 0) break;
            return ovs_set_error(OVS_ERR_FORMAT,
                                 "safetensors header: tensor '%.200s': expected ',' or '}' at byte "
                                 "%zu", name, j->pos);
        }
    }
    if (!have_dtype || !have_shape || !have_offsets)
        return ovs_set_error(OVS_ERR_FORMAT, "safetensors header: tensor '%.200s': missing \"%s\"",
                             name, !have_dtype ? "dtype" : !have_shape ? "shape" : "data_offsets");

    /* Sizes: numel and nbytes without overflow. */
    uint64_t numel = 1;
    for (int d = 0; d < e.ndim; d++) {
        if (__builtin_mul_overflow(numel, (uint64_t)e.shape[d], &numel) || numel > INT64_MAX)
            return ovs_set_error(OVS_ERR_FORMAT,
                                 "safetensors header: tensor '%.200s': element count of the shape "
                                 "overflows", name);
    }
    size_t nbytes;
    if (numel > SIZE_MAX || ovs_mul_size(&nbytes, (size_t)numel, ovs_dtype_size(e.dtype)))
        return ovs_set_error(OVS_ERR_FORMAT,
                             "safetensors header: tensor '%.200s': byte size of the shape "
                             "overflows", name);
    e.numel = (int64_t)numel;
    e.nbytes = nbytes;

    /* Offsets against the data region. */
    uint64_t begin = (uint64_t)offsets[0], end = (uint64_t)offsets[1];
    if (begin > end)
        return ovs_set_error(OVS_ERR_FORMAT,
                             "safetensors header: tensor '%.200s': data_offsets [%llu, %llu] "
                             "begin after end", name, (unsigned long long)begin,
                             (unsigned long long)end);
    if (end - begin != (uint64_t)nbytes)
        return ovs_set_error(OVS_ERR_FORMAT,
                             "safetensors header: tensor '%.200s': data_offsets [%llu, %llu] "
                             "hold %llu bytes but %s shape needs %zu", name,
                             (unsigned long long)begin, (unsigned long long)end,
                             (unsigned long long)(end - begin), ovs_dtype_name(e.dtype), nbytes);
    if (end > (uint64_t)st->data_size)
        return ovs_set_error(OVS_ERR_FORMAT,
                             "safetensors header: tensor '%.200s': data_offsets [%llu, %llu] end "
                             "beyond the data region (%zu bytes)", name,
                             (unsigned long long)begin, (unsigned long long)end, st->data_size);
    e.offset = 8 + st->header_size + (size_t)begin;
    e.data = st->data ? st->data + begin : NULL;

    if ((err = grow((void **)&st->entries, st->count, &p->entries_cap, sizeof e))) return err;
    st->entries[st->count++] = e;
    return OVS_OK;
}

/* "__metadata__": null or {"key": "value", ...}. */
static int parse_metadata(parser *p) {
    ovs_safetensors *st = p->st;
    ovs_json *j = &p->j;
    int err;
    if (p->seen_metadata)
        return ovs_set_error(OVS_ERR_FORMAT, "safetensors header: duplicate \"__metadata__\" "
                                             "(byte %zu)", j->pos);
    p->seen_metadata = 1;
    if (ovs_json_null(j)) return OVS_OK;
    if (ovs_json_peek(j) != '{')
        return ovs_set_error(OVS_ERR_FORMAT, "safetensors header: \"__metadata__\" must be an "
                                             "object of strings (byte %zu)", j->pos);
    j->pos++;
    if (ovs_json_peek(j) == '}') {
        j->pos++;
        return OVS_OK;
    }
    for (;;) {
        ovs_safetensors_meta m;
        size_t klen, vlen;
        if ((err = pool_string(p, &m.key, &klen, 1))) return err;
        if ((err = ovs_json_expect(j, ':'))) return err;
        if (ovs_json_peek(j) != '"')
            return ovs_set_error(OVS_ERR_FORMAT, "safetensors header: \"__metadata__\" value of "
                                                 "'%.200s' must be a string (byte %zu)",
                                 m.key, j->pos);
        if ((err = pool_string(p, &m.value, &vlen, 1))) return err;
        if (strlen(m.key) != klen || strlen(m.value) != vlen)
            return ovs_set_error(OVS_ERR_FORMAT, "safetensors header: \"__metadata__\" entry "
                                                 "'%.200s' contains a NUL character", m.key);
        if ((err = grow((void **)&st->meta, st->meta_count, &p->meta_cap, sizeof m))) return err;
        st->meta[st->meta_count++] = m;
        int more = ovs_json_member_end(j);
        if (more > 0) continue;
        if (more == 0) return OVS_OK;
        return ovs_set_error(OVS_ERR_FORMAT, "safetensors header: \"__metadata__\": expected ',' "
                                             "or '}' at byte %zu", j->pos);
    }
}

static int parse_header(parser *p) {
    ovs_json *j = &p->j;
    int err;
    if (ovs_json_peek(j) != '{')
        return ovs_set_error(OVS_ERR_FORMAT, "safetensors header: must be a JSON object, found %s "
                                             "at byte %zu",
                             ovs_json_peek(j) < 0 ? "nothing" : "another value", j->pos);
    j->pos++;
    if (ovs_json_peek(j) == '}') {
        j->pos++;
    } else {
        for (;;) {
            const char *name;
            size_t len;
            size_t at = j->pos;
            if ((err = pool_string(p, &name, &len, 1))) return err;
            if (strlen(name) != len)
                return ovs_set_error(OVS_ERR_FORMAT, "safetensors header: a tensor name contains "
                                                     "a NUL character (byte %zu)", at);
            if ((err = ovs_json_expect(j, ':'))) return err;
            if (strcmp(name, "__metadata__") == 0)
                err = parse_metadata(p);
            else
                err = parse_tensor(p, name);
            if (err) return err;
            int more = ovs_json_member_end(j);
            if (more > 0) continue;
            if (more == 0) break;
            return ovs_set_error(OVS_ERR_FORMAT, "safetensors header: expected ',' or '}' after "
                                                 "tensor '%.200s' at byte %zu", name, j->pos);
        }
    }
    return ovs_json_end(j);
}

/* JSON syntax errors come from json.c without context: say it is the header. */
static int header_error(int err) {
    if (err == OVS_ERR_FORMAT && strncmp(ovs_last_error(), "safetensors", 11) != 0) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", ovs_last_error());
        return ovs_set_error(err, "safetensors header: %s", msg);
    }
    return err;
}

static int cmp_name(const void *a, const void *b) {
    const ovs_safetensors_entry *x = *(const ovs_safetensors_entry *const *)a;
    const ovs_safetensors_entry *y = *(const ovs_safetensors_entry *const *)b;
    return strcmp(x->name, y->name);
}

static int cmp_range(const void *a, const void *b) {
    const ovs_safetensors_entry *x = *(const ovs_safetensors_entry *const *)a;
    const ovs_safetensors_entry *y = *(const ovs_safetensors_entry *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return 0;
}

static int cmp_meta(const void *a, const void *b) {
    return strcmp((*(const ovs_safetensors_meta *const *)a)->key,
                  (*(const ovs_safetensors_meta *const *)b)->key);
}

/* Unique names (and the by-name index), unique metadata keys, disjoint byte ranges. */
static int check_tables(ovs_safetensors *st) {
    int64_t n = st->count;
    int err = OVS_OK;
    st->by_name = ovs_malloc((size_t)(n ? n : 1) * sizeof *st->by_name);
    if (!st->by_name) return OVS_ERR_NOMEM;
    for (int64_t i = 0; i < n; i++) st->by_name[i] = &st->entries[i];
    qsort(st->by_name, (size_t)n, sizeof *st->by_name, cmp_name);
    for (int64_t i = 1; i < n; i++) {
        if (strcmp(st->by_name[i - 1]->name, st->by_name[i]->name) == 0)
            return ovs_set_error(OVS_ERR_FORMAT, "safetensors header: duplicate tensor name "
                                                 "'%.200s'", st->by_name[i]->name);
    }

    const ovs_safetensors_entry **by_range = ovs_malloc((size_t)(n ? n : 1) * sizeof *by_range);
    if (!by_range) return OVS_ERR_NOMEM;
    for (int64_t i = 0; i < n; i++) by_range[i] = &st->entries[i];
    qsort(by_range, (size_t)n, sizeof *by_range, cmp_range);
    const ovs_safetensors_entry *last = NULL;  /* the non-empty range reaching furthest so far */
    for (int64_t i = 0; i < n && !err; i++) {
        const ovs_safetensors_entry *e = by_range[i];
        if (e->nbytes == 0) continue;
        if (last && e->offset < last->offset + last->nbytes) {
            size_t base = 8 + st->header_size;
            err = ovs_set_error(OVS_ERR_FORMAT,
                                "safetensors header: tensors '%.200s' [%zu, %zu] and '%.200s' "
                                "[%zu, %zu] overlap in the data region", last->name,
                                last->offset - base, last->offset - base + last->nbytes, e->name,
                                e->offset - base, e->offset - base + e->nbytes);
        }
        if (!last || e->offset + e->nbytes > last->offset + last->nbytes) last = e;
    }
    ovs_free(by_range);
    if (err) return err;

    if (st->meta_count > 1) {
        const ovs_safetensors_meta **keys = ovs_malloc((size_t)st->meta_count * sizeof *keys);
        if (!keys) return OVS_ERR_NOMEM;
        for (int64_t i = 0; i < st->meta_count; i++) keys[i] = &st->meta[i];
        qsort(keys, (size_t)st->meta_count, sizeof *keys, cmp_meta);
        for (int64_t i = 1; i < st->meta_count && !err; i++) {
            if (strcmp(keys[i - 1]->key, keys[i]->key) == 0)
                err = ovs_set_error(OVS_ERR_FORMAT, "safetensors header: duplicate \"__metadata__\" "
                                                    "key '%.200s'", keys[i]->key);
        }
        ovs_free(keys);
    }
    return err;
}

/* The header length N from the first 8 bytes of a file or buffer of `size` bytes, checked
 * against the size and the limit. */
static int header_length(size_t *n_out, const unsigned char *first8, size_t size) {
    if (size < 8)
        return ovs_set_error(OVS_ERR_FORMAT,
                             "not a safetensors file: %zu bytes, shorter than the 8-byte header "
                             "length", size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | first8[i];
    if (n > size - 8)
        return ovs_set_error(OVS_ERR_FORMAT,
                             "not a safetensors file or truncated: header length %llu is beyond "
                             "the end of the file (%zu bytes after the length)",
                             (unsigned long long)n, size - 8);
    if (n > OVS_SAFETENSORS_MAX_HEADER)
        return ovs_set_error(OVS_ERR_FORMAT,
                             "safetensors header length %llu exceeds the %zu-byte limit",
                             (unsigned long long)n, OVS_SAFETENSORS_MAX_HEADER);
    *n_out = (size_t)n;
    return OVS_OK;
}

/* Validate the header at `header` (8 + n bytes) of a file or buffer of `size` bytes into a new
 * object; `base` is the whole buffer (borrowed) or NULL for a file read on demand. */
static int parse_image(ovs_safetensors **out, const unsigned char *base,
                       const unsigned char *header, size_t n, size_t size) {
    *out = NULL;
    ovs_safetensors *st = ovs_calloc(1, sizeof *st);
    if (!st) return OVS_ERR_NOMEM;
    st->fd = -1;
    st->base = base;
    st->size = size;
    st->header_size = n;
    st->data = base ? base + 8 + n : NULL;
    st->data_size = size - 8 - n;
    int err;
    st->strings = ovs_malloc(st->header_size + 1);
    if (!st->strings) {
        err = OVS_ERR_NOMEM;
        goto error;
    }
    parser p;
    memset(&p, 0, sizeof p);
    p.st = st;
    ovs_json_init(&p.j, header + 8, st->header_size);
    if ((err = header_error(parse_header(&p)))) goto error;
    if ((err = check_tables(st))) goto error;
    *out = st;
    return OVS_OK;
error:
    ovs_safetensors_close(st);
    return err;
}

int ovs_safetensors_parse(ovs_safetensors **out, const void *buf, size_t size) {
    if (!out) return ovs_set_error(OVS_ERR_ARG, "ovs_safetensors_parse: out is NULL");
    *out = NULL;
    if (!buf && size) return ovs_set_error(OVS_ERR_ARG, "ovs_safetensors_parse: buf is NULL");
    static const unsigned char empty[1] = {0};
    const unsigned char *base = buf ? buf : empty;
    size_t n = 0;
    int err = header_length(&n, base, size);
    return err ? err : parse_image(out, base, base, n, size);
}

/* What a non-regular file is, for messages. */
static const char *file_kind(mode_t mode) {
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    if (S_ISSOCK(mode)) return "a socket";
    return "not a regular file";
}

static int refuse_kind(const char *path, mode_t mode) {
    int e = S_ISDIR(mode) ? EISDIR : EINVAL;
    ovs_set_error(OVS_ERR_IO, "cannot read '%.512s': it is %s; weights must be a regular file",
                  path, file_kind(mode));
    errno = e;
    return OVS_ERR_IO;
}

static int io_error(const char *what, const char *path, int e) {
    ovs_set_error(OVS_ERR_IO, "cannot %s '%.512s': %s", what, path, strerror(e));
    errno = e;
    return OVS_ERR_IO;
}

static file_identity identity_of(const struct stat *sb) {
    file_identity id;
    memset(&id, 0, sizeof id);
    id.dev = sb->st_dev;
    id.ino = sb->st_ino;
    id.size = sb->st_size;
    id.mtime = sb->st_mtim;
    return id;
}

static int same_time(struct timespec a, struct timespec b) {
    return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}

/* pread exactly `len` bytes at `off`; 0, or -1 with errno set (0 = EOF before the end: the
 * file shrank, reported as ESTALE by the callers' identity check). */
static int pread_all(int fd, void *dst, size_t len, size_t off, size_t *got_out) {
    size_t done = 0;
    while (done < len) {
        size_t want = len - done < ((size_t)1 << 30) ? len - done : ((size_t)1 << 30);
        ssize_t got = pread(fd, (unsigned char *)dst + done, want, (off_t)(off + done));
        if (got < 0) {
            if (errno == EINTR) continue;
            *got_out = done;
            return -1;
        }
        if (got == 0) break;
        done += (size_t)got;
    }
    *got_out = done;
    return 0;
}

int ovs_safetensors_open(ovs_safetensors **out, const char *path) {
    if (!out || !path) return ovs_set_error(OVS_ERR_ARG, "ovs_safetensors_open: NULL argument");
    *out = NULL;
    /* stat before open: opening a FIFO blocks until a writer appears, /dev/zero never ends. */
    struct stat sb;
    if (stat(path, &sb) != 0) return io_error("open", path, errno);
    if (!S_ISREG(sb.st_mode)) return refuse_kind(path, sb.st_mode);
    /* O_NONBLOCK: if the path was swapped for a FIFO after the stat, open still returns. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return io_error("open", path, errno);
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return io_error("stat", path, e);
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return refuse_kind(path, sb.st_mode);
    }
    size_t size = (size_t)sb.st_size;
    unsigned char first8[8];
    size_t got = 0, n = 0;
    int err;
    if (size >= 8 && pread_all(fd, first8, 8, 0, &got) != 0) {
        int e = errno;
        close(fd);
        return io_error("read", path, e);
    }
    if (size >= 8 && got != 8) size = got;  /* shrank meanwhile: reported as truncated below */
    if ((err = header_length(&n, first8, size))) {
        close(fd);
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", ovs_last_error());
        return ovs_set_error(err, "'%.300s': %s", path, msg);
    }
    /* Only the header is read now; tensors are read when asked for (ovs_safetensors_read_*),
     * so a loaded model holds the weights once: in the form its kernels use. */
    unsigned char *header = ovs_malloc(8 + n);
    if (!header) {
        close(fd);
        return ovs_set_error(OVS_ERR_NOMEM, "out of memory reading the header of '%.512s' "
                                            "(%zu bytes)", path, n);
    }
    if (pread_all(fd, header, 8 + n, 0, &got) != 0) {
        int e = errno;
        close(fd);
        ovs_free(header);
        return io_error("read", path, e);
    }
    if (got != 8 + n) {
        close(fd);
        ovs_free(header);
        return ovs_set_error(OVS_ERR_IO, "cannot read '%.512s': the file shrank to %zu bytes "
                                         "while its header was read (is it being written?)",
                             path, got);
    }
    ovs_safetensors *st = NULL;
    err = parse_image(&st, NULL, header, n, size);
    if (err) {
        close(fd);
        ovs_free(header);
        if (err == OVS_ERR_FORMAT) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", ovs_last_error());
            ovs_set_error(err, "'%.300s': %s", path, msg);
        }
        return err;
    }
    st->owned = header;
    st->fd = fd;
    st->id = identity_of(&sb);
    /* The absolute path, so a later chdir does not make the file look replaced. */
    char *abs = realpath(path, NULL);
    size_t len = strlen(abs ? abs : path);
    st->path = ovs_malloc(len + 1);
    if (!st->path) {
        free(abs);
        ovs_safetensors_close(st);
        return OVS_ERR_NOMEM;
    }
    memcpy(st->path, abs ? abs : path, len + 1);
    free(abs);
    *out = st;
    return OVS_OK;
}

/* OVS_OK if the file behind st is still the one opened: the open descriptor's size and
 * modification time, and the path still naming the same file (a path that no longer exists is
 * fine: the descriptor keeps the opened file readable). Not the change time: chmod, a new hard
 * link or removing the path change it without touching the bytes. A rewrite of the same size
 * that also restores the modification time is not seen. */
static int check_unchanged(const ovs_safetensors *st) {
    struct stat sb;
    const char *why = NULL;
    if (fstat(st->fd, &sb) != 0) return io_error("stat", st->path, errno);
    if (sb.st_size != st->id.size)
        why = "its size changed";
    else if (!same_time(sb.st_mtim, st->id.mtime))
        why = "it was modified";
    else if (stat(st->path, &sb) == 0 && (sb.st_dev != st->id.dev || sb.st_ino != st->id.ino))
        why = "the path now names another file";
    if (!why) return OVS_OK;
    ovs_set_error(OVS_ERR_IO, "'%.512s' changed since it was opened (%s): its tensors are read "
                              "when needed, so reload it (ovs.load / SafeTensorsFile) to use the "
                              "new contents", st->path, why);
    errno = ESTALE;
    return OVS_ERR_IO;
}

/* Read bytes [off, off + len) of tensor e's data (off relative to the tensor) into dst, from
 * the buffer or the file (the caller checks the file's identity around the reads). */
static int read_span(void *dst, const ovs_safetensors *st, const ovs_safetensors_entry *e,
                     size_t off, size_t len) {
    if (!len) return OVS_OK;
    if (e->data) {
        memcpy(dst, (const unsigned char *)e->data + off, len);
        return OVS_OK;
    }
    size_t got;
    if (pread_all(st->fd, dst, len, e->offset + off, &got) != 0)
        return io_error("read", st->path, errno);
    if (got != len) {
        ovs_set_error(OVS_ERR_IO, "'%.512s' changed since it was opened (it is shorter now): its "
                                  "tensors are read when needed, so reload it", st->path);
        errno = ESTALE;
        return OVS_ERR_IO;
    }
    return OVS_OK;
}

void ovs_safetensors_close(ovs_safetensors *st) {
    if (!st) return;
    if (st->fd >= 0) close(st->fd);
    OVS_FREE_ALL(st->path, st->owned, st->entries, st->by_name, st->meta, st->strings, st);
}

int ovs_safetensors_is_lazy(const ovs_safetensors *st) { return st && st->fd >= 0; }

/* ---------------------------------------------------------------- accessors */
int64_t ovs_safetensors_count(const ovs_safetensors *st) { return st ? st->count : 0; }

const ovs_safetensors_entry *ovs_safetensors_entry_at(const ovs_safetensors *st, int64_t index) {
    if (!st || index < 0 || index >= st->count) return NULL;
    return &st->entries[index];
}

int64_t ovs_safetensors_find(const ovs_safetensors *st, const char *name) {
    if (!st || !name) return -1;
    int64_t lo = 0, hi = st->count;  /* search by_name[lo, hi) */
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(st->by_name[mid]->name, name);
        if (c == 0) return st->by_name[mid] - st->entries;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

int64_t ovs_safetensors_meta_count(const ovs_safetensors *st) { return st ? st->meta_count : 0; }

const ovs_safetensors_meta *ovs_safetensors_meta_at(const ovs_safetensors *st, int64_t index) {
    if (!st || index < 0 || index >= st->meta_count) return NULL;
    return &st->meta[index];
}

const char *ovs_safetensors_meta_get(const ovs_safetensors *st, const char *key) {
    if (!st || !key) return NULL;
    for (int64_t i = 0; i < st->meta_count; i++) {
        if (strcmp(st->meta[i].key, key) == 0) return st->meta[i].value;
    }
    return NULL;
}

size_t ovs_safetensors_size(const ovs_safetensors *st) { return st ? st->size : 0; }

size_t ovs_safetensors_header_size(const ovs_safetensors *st) { return st ? st->header_size : 0; }

/* ---------------------------------------------------------------- conversion to float32 */
/* IEEE half -> single, exact, keeping NaN payloads as NumPy's npy_half_to_float does. */
static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);   /* inf / nan */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;                                /* +-0 */
    } else {
        /* Subnormal mant * 2^-24: move the leading 1 to bit 10 and adjust the exponent. */
        int shift = __builtin_clz(mant) - 21;
        bits = sign | ((uint32_t)(113 - shift) << 23) | (((mant << shift) & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Loads go through memcpy because tensor data need not be aligned for its type. */
#define CONVERT_LOOP(T, EXPR)                          \
    for (int64_t i = 0; i < n; i++) {                  \
        T v;                                           \
        memcpy(&v, src + (size_t)i * sizeof(T), sizeof(T)); \
        out[i] = (EXPR);                               \
    }

/* out[0..n) = elements [first, first + n) of tensor e, converted from their bytes at src. */
static int convert_f32(float *out, const unsigned char *src, int64_t n, int64_t first,
                       const ovs_safetensors_entry *e) {
    switch (e->dtype) {
    case OVS_DTYPE_F32: if (n) memcpy(out, src, (size_t)n * sizeof(float)); break;
    case OVS_DTYPE_F16: CONVERT_LOOP(uint16_t, f16_to_f32(v)); break;
    case OVS_DTYPE_BF16: CONVERT_LOOP(uint16_t, bf16_to_f32(v)); break;
    case OVS_DTYPE_F64:
        for (int64_t i = 0; i < n; i++) {
            double v;
            memcpy(&v, src + (size_t)i * sizeof(double), sizeof(double));
            /* Round to nearest like a cast, but a finite value that rounds past FLT_MAX is
             * refused rather than turned into infinity. */
            if (isfinite(v) && fabs(v) >= 0x1.ffffffp127)
                return ovs_set_error(OVS_ERR_FORMAT,
                                     "safetensors: F64 tensor '%.200s' holds the finite value %g "
                                     "(element %lld) beyond float32's range; ovs computes in "
                                     "float32 and would turn it into infinity",
                                     e->name, v, (long long)(first + i));
            out[i] = (float)v;
        }
        break;
    case OVS_DTYPE_I64: CONVERT_LOOP(int64_t, (float)v); break;
    case OVS_DTYPE_I32: CONVERT_LOOP(int32_t, (float)v); break;
    case OVS_DTYPE_I16: CONVERT_LOOP(int16_t, (float)v); break;
    case OVS_DTYPE_I8: CONVERT_LOOP(int8_t, (float)v); break;
    case OVS_DTYPE_U64: CONVERT_LOOP(uint64_t, (float)v); break;
    case OVS_DTYPE_U32: CONVERT_LOOP(uint32_t, (float)v); break;
    case OVS_DTYPE_U16: CONVERT_LOOP(uint16_t, (float)v); break;
    case OVS_DTYPE_U8: CONVERT_LOOP(uint8_t, (float)v); break;
    case OVS_DTYPE_BOOL: CONVERT_LOOP(uint8_t, v ? 1.0f : 0.0f); break;
    default:
        return ovs_set_error(OVS_ERR_UNSUPPORTED, "safetensors: tensor '%.200s' has dtype %d",
                             e->name, (int)e->dtype);
    }
    return OVS_OK;
}

static const ovs_safetensors_entry *entry_for_read(const ovs_safetensors *st, int64_t index,
                                                   const void *out) {
    const ovs_safetensors_entry *e = ovs_safetensors_entry_at(st, index);
    if (!e) {
        ovs_set_error(OVS_ERR_ARG, "safetensors: tensor index %lld out of range [0, %lld)",
                      (long long)index, (long long)ovs_safetensors_count(st));
        return NULL;
    }
    if (!out && e->numel) {
        ovs_set_error(OVS_ERR_ARG, "safetensors: out is NULL");
        return NULL;
    }
    return e;
}

int ovs_safetensors_read_raw(void *out, const ovs_safetensors *st, int64_t index) {
    const ovs_safetensors_entry *e = entry_for_read(st, index, out);
    if (!e) return OVS_ERR_ARG;
    if (e->data) return read_span(out, st, e, 0, e->nbytes);
    int err = check_unchanged(st);   /* even for an empty tensor: the answer would be stale */
    if (!err) err = read_span(out, st, e, 0, e->nbytes);
    if (!err) err = check_unchanged(st);   /* a change that finished during the read */
    return err;
}

int ovs_safetensors_read_f32(float *out, const ovs_safetensors *st, int64_t index) {
    const ovs_safetensors_entry *e = entry_for_read(st, index, out);
    if (!e) return OVS_ERR_ARG;
    if (e->data) return convert_f32(out, e->data, e->numel, 0, e);
    if (e->dtype == OVS_DTYPE_F32 || !e->numel) return ovs_safetensors_read_raw(out, st, index);
    /* Other dtypes from a file: through a small stack buffer, a block of elements at a time. */
    enum { CHUNK = 16384 };
    unsigned char buf[CHUNK];
    const size_t item = ovs_dtype_size(e->dtype);
    const int64_t per = (int64_t)(CHUNK / item);
    int err = check_unchanged(st);
    for (int64_t i = 0; i < e->numel && !err; i += per) {
        int64_t n = e->numel - i < per ? e->numel - i : per;
        err = read_span(buf, st, e, (size_t)i * item, (size_t)n * item);
        if (!err) err = convert_f32(out + i, buf, n, i, e);
    }
    if (!err) err = check_unchanged(st);
    return err;
}
