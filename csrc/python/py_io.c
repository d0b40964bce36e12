/* Python bindings: io. `_core.SafeTensorsFile`, a read-only safetensors file.
 *
 * Opened from a path, the C reader holds the validated header and reads each tensor when asked
 * (pread, no mmap; a file changed since the open raises OSError: see ovs/io.h), so get() and
 * get_raw() return new arrays. Over a caller's buffer (from_buffer) they are zero-copy
 * views.
 *
 * Lifetime: the C object lives in a small internal owner (`_SafeTensorsMapping`). The file object
 * holds one reference to it and every zero-copy array view holds another as its numpy base, so
 * close() only drops the file's reference: the mapping goes away when the last view dies, and a
 * view can never point at unmapped memory. */
#include "python/pyovs.h"

#include "ovs/io.h"

#include <errno.h>
#include <structmember.h>
#include <string.h>

/* ---------------------------------------------------------------- the mapping owner */
typedef struct {
    PyObject_HEAD
    ovs_safetensors *st;   /* NULL only while being constructed */
    Py_buffer buffer;      /* the caller's bytes, for from_buffer() */
    int has_buffer;
} MappingObject;

static void mapping_dealloc(MappingObject *self) {
    ovs_safetensors_close(self->st);
    if (self->has_buffer) PyBuffer_Release(&self->buffer);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject MappingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ovs._core._SafeTensorsMapping",
    .tp_basicsize = sizeof(MappingObject),
    .tp_dealloc = (destructor)mapping_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Keeps a safetensors mapping alive while arrays view it (internal).",
};

static MappingObject *mapping_alloc(void) {
    MappingObject *m = PyObject_New(MappingObject, &MappingType);
    if (!m) return NULL;
    m->st = NULL;
    m->has_buffer = 0;
    memset(&m->buffer, 0, sizeof m->buffer);
    return m;
}

/* ---------------------------------------------------------------- the file object */
typedef struct {
    PyObject_HEAD
    MappingObject *map;    /* NULL once closed */
    PyObject *path;        /* str, or None for from_buffer() */
} FileObject;

static PyTypeObject FileType;

static void file_dealloc(FileObject *self) {
    Py_XDECREF(self->map);
    Py_XDECREF(self->path);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static FileObject *file_wrap(PyTypeObject *type, MappingObject *map, PyObject *path) {
    FileObject *self = (FileObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    Py_INCREF(map);
    self->map = map;
    Py_INCREF(path);
    self->path = path;
    return self;
}

/* IO errors become OSError(errno, message) (so a missing file is FileNotFoundError); the
 * rest follow ovs_py_raise. */
static PyObject *raise_open_error(int status, int err) {
    if (status != OVS_ERR_IO) return ovs_py_raise(status);
    PyObject *args = Py_BuildValue("(is)", err ? err : EIO, ovs_last_error());
    if (args) {
        PyErr_SetObject(PyExc_OSError, args);
        Py_DECREF(args);
    }
    return NULL;
}

static PyObject *file_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"path", NULL};
    PyObject *path_bytes = NULL, *path_str = NULL;
    MappingObject *map = NULL;
    PyObject *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&:SafeTensorsFile", kwlist,
                                     PyUnicode_FSConverter, &path_bytes))
        return NULL;
    path_str = PyUnicode_DecodeFSDefault(PyBytes_AS_STRING(path_bytes));
    if (!path_str) goto error;
    map = mapping_alloc();
    if (!map) goto error;
    const char *path = PyBytes_AS_STRING(path_bytes);
    int status, err = 0;
    ovs_safetensors *st = NULL;
    Py_BEGIN_ALLOW_THREADS
    status = ovs_safetensors_open(&st, path);
    if (status) err = errno;
    Py_END_ALLOW_THREADS
    if (status) {
        raise_open_error(status, err);
        goto error;
    }
    map->st = st;
    result = (PyObject *)file_wrap(type, map, path_str);
error:
    Py_XDECREF(map);
    Py_XDECREF(path_str);
    Py_XDECREF(path_bytes);
    return result;
}

static PyObject *file_from_buffer(PyObject *cls, PyObject *obj) {
    MappingObject *map = mapping_alloc();
    PyObject *result = NULL;
    if (!map) return NULL;
    if (PyObject_GetBuffer(obj, &map->buffer, PyBUF_SIMPLE) < 0) goto error;
    map->has_buffer = 1;
    int status;
    ovs_safetensors *st = NULL;
    OVS_PY_NOGIL(status, ovs_safetensors_parse(&st, map->buffer.buf, (size_t)map->buffer.len));
    if (ovs_py_status(status)) goto error;
    map->st = st;
    result = (PyObject *)file_wrap((PyTypeObject *)cls, map, Py_None);
error:
    Py_DECREF(map);
    return result;
}

/* A new reference to the open mapping, or NULL with ValueError after close(). Methods hold
 * their own reference so that nothing they call (allocation, GC, another thread while the GIL
 * is released) can unmap the file under them by closing it. */
static MappingObject *file_acquire(FileObject *self) {
    if (!self->map) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on a closed SafeTensorsFile");
        return NULL;
    }
    Py_INCREF(self->map);
    return self->map;
}

/* Index of tensor `name`, or -1 with TypeError/KeyError set. */
static int64_t file_lookup(MappingObject *map, PyObject *name) {
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "tensor name must be str, got %.100s", Py_TYPE(name)->tp_name);
        return -1;
    }
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(name, &len);
    if (!s) return -1;
    int64_t i = (strlen(s) == (size_t)len) ? ovs_safetensors_find(map->st, s) : -1;
    if (i < 0) PyErr_SetObject(PyExc_KeyError, name);
    return i;
}

static PyObject *shape_tuple(const ovs_safetensors_entry *e) {
    PyObject *t = PyTuple_New(e->ndim);
    if (!t) return NULL;
    for (int d = 0; d < e->ndim; d++) {
        PyObject *v = PyLong_FromLongLong(e->shape[d]);
        if (!v) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, d, v);
    }
    return t;
}

static int numpy_type(ovs_dtype dtype) {
    switch (dtype) {
    case OVS_DTYPE_F32: return NPY_FLOAT32;
    case OVS_DTYPE_F16: return NPY_FLOAT16;
    case OVS_DTYPE_BF16: return NPY_UINT16;  /* NumPy has no bfloat16: the raw bits */
    case OVS_DTYPE_F64: return NPY_FLOAT64;
    case OVS_DTYPE_I64: return NPY_INT64;
    case OVS_DTYPE_I32: return NPY_INT32;
    case OVS_DTYPE_I16: return NPY_INT16;
    case OVS_DTYPE_I8: return NPY_INT8;
    case OVS_DTYPE_U64: return NPY_UINT64;
    case OVS_DTYPE_U32: return NPY_UINT32;
    case OVS_DTYPE_U16: return NPY_UINT16;
    case OVS_DTYPE_U8: return NPY_UINT8;
    case OVS_DTYPE_BOOL: return NPY_BOOL;
    default: return -1;
    }
}

/* A read-only array over the tensor's bytes whose base keeps `map` alive. */
static PyObject *make_view(MappingObject *map, const ovs_safetensors_entry *e, int typenum) {
    npy_intp dims[OVS_MAX_DIMS];  /* (ndim,) */
    for (int d = 0; d < e->ndim; d++) dims[d] = (npy_intp)e->shape[d];
    PyArray_Descr *descr = PyArray_DescrFromType(typenum);
    if (!descr) return NULL;
    /* flags 0: not writeable; NumPy computes contiguity and alignment itself. */
    PyObject *arr = PyArray_NewFromDescr(&PyArray_Type, descr, e->ndim, dims, NULL,
                                         (void *)e->data, 0, NULL);
    if (!arr) return NULL;
    Py_INCREF(map);
    if (PyArray_SetBaseObject((PyArrayObject *)arr, (PyObject *)map) < 0) {  /* steals map */
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

static PyObject *file_keys(FileObject *self, PyObject *unused) {
    MappingObject *map = file_acquire(self);
    if (!map) return NULL;
    int64_t n = ovs_safetensors_count(map->st);
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (int64_t i = 0; list && i < n; i++) {
        PyObject *s = PyUnicode_FromString(ovs_safetensors_entry_at(map->st, i)->name);
        if (!s) break;
        PyList_SET_ITEM(list, (Py_ssize_t)i, s);
    }
    return OVS_PY_FINISH(0, list, map);
}

/* The entry of tensor `name` (its index in *index) with a new reference to the open mapping in
 * *map, or NULL with the exception (ValueError after close(), TypeError, KeyError). */
static const ovs_safetensors_entry *file_entry(FileObject *self, PyObject *name,
                                               MappingObject **map, int64_t *index) {
    if (!(*map = file_acquire(self))) return NULL;
    if ((*index = file_lookup(*map, name)) < 0) {
        Py_CLEAR(*map);
        return NULL;
    }
    return ovs_safetensors_entry_at((*map)->st, *index);
}

static PyObject *file_info(FileObject *self, PyObject *name) {
    MappingObject *map;
    int64_t i;
    const ovs_safetensors_entry *e = file_entry(self, name, &map, &i);
    if (!e) return NULL;
    PyObject *shape = shape_tuple(e);
    PyObject *result = shape ? Py_BuildValue("(sN)", ovs_dtype_name(e->dtype), shape) : NULL;
    Py_DECREF(map);
    return result;
}

/* A new array of tensor i read from the file or converted from the buffer: float32 (raw 0) or
 * its stored type (raw 1). */
static PyObject *read_tensor(MappingObject *map, int64_t i, int typenum, int raw) {
    const ovs_safetensors_entry *e = ovs_safetensors_entry_at(map->st, i);
    npy_intp dims[OVS_MAX_DIMS];  /* (ndim,) */
    for (int d = 0; d < e->ndim; d++) dims[d] = (npy_intp)e->shape[d];
    PyObject *out = PyArray_SimpleNew(e->ndim, dims, typenum);
    if (!out) return NULL;
    void *dst = PyArray_DATA((PyArrayObject *)out);  /* (numel,) */
    int status, err = 0;
    Py_BEGIN_ALLOW_THREADS
    status = raw ? ovs_safetensors_read_raw(dst, map->st, i) : ovs_safetensors_read_f32(dst, map->st, i);
    if (status) err = errno;
    Py_END_ALLOW_THREADS
    if (status) {
        Py_DECREF(out);
        return raise_open_error(status, err);
    }
    return out;
}

/* get (raw 0: float32) and get_raw (raw 1: the stored type): a zero-copy view of a buffer where
 * possible, else a new array read from the file / converted. */
static PyObject *file_read(FileObject *self, PyObject *name, int raw) {
    MappingObject *map;
    int64_t i;
    const ovs_safetensors_entry *e = file_entry(self, name, &map, &i);
    if (!e) return NULL;
    int typenum = raw ? numpy_type(e->dtype) : NPY_FLOAT32;
    int view = e->data && (raw || (e->dtype == OVS_DTYPE_F32 &&
                                   ((uintptr_t)e->data % sizeof(float)) == 0));
    PyObject *out = typenum < 0 ? PyErr_Format(PyExc_NotImplementedError,
                                               "dtype %s has no NumPy equivalent",
                                               ovs_dtype_name(e->dtype))
                    : view ? make_view(map, e, typenum) : read_tensor(map, i, typenum, raw);
    Py_DECREF(map);
    return out;
}

static PyObject *file_get(FileObject *self, PyObject *name) { return file_read(self, name, 0); }

static PyObject *file_get_raw(FileObject *self, PyObject *name) { return file_read(self, name, 1); }

static PyObject *file_get_metadata(FileObject *self, void *closure) {
    MappingObject *map = file_acquire(self);
    if (!map) return NULL;
    PyObject *d = PyDict_New();
    for (int64_t i = 0; d && i < ovs_safetensors_meta_count(map->st); i++) {
        const ovs_safetensors_meta *m = ovs_safetensors_meta_at(map->st, i);
        PyObject *v = PyUnicode_FromString(m->value);
        if (!v || PyDict_SetItemString(d, m->key, v) < 0) {
            Py_XDECREF(v);
            break;
        }
        Py_DECREF(v);
    }
    return OVS_PY_FINISH(0, d, map);
}

static PyObject *file_get_closed(FileObject *self, void *closure) {
    return PyBool_FromLong(self->map == NULL);
}

static PyObject *file_get_nbytes(FileObject *self, void *closure) {
    MappingObject *map = file_acquire(self);
    if (!map) return NULL;
    PyObject *n = PyLong_FromSize_t(ovs_safetensors_size(map->st));
    Py_DECREF(map);
    return n;
}

static PyObject *file_close(FileObject *self, PyObject *unused) {
    Py_CLEAR(self->map);
    Py_RETURN_NONE;
}

static PyObject *file_enter(FileObject *self, PyObject *unused) {
    MappingObject *map = file_acquire(self);
    if (!map) return NULL;
    Py_DECREF(map);
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *file_exit(FileObject *self, PyObject *args) {
    Py_CLEAR(self->map);
    Py_RETURN_FALSE;
}

static Py_ssize_t file_len(FileObject *self) {
    MappingObject *map = file_acquire(self);
    if (!map) return -1;
    Py_ssize_t n = (Py_ssize_t)ovs_safetensors_count(map->st);
    Py_DECREF(map);
    return n;
}

static int file_contains(FileObject *self, PyObject *name) {
    MappingObject *map = file_acquire(self);
    int found = 0;
    if (!map) return -1;
    if (PyUnicode_Check(name)) {
        Py_ssize_t len;
        const char *s = PyUnicode_AsUTF8AndSize(name, &len);
        if (!s)
            found = -1;
        else
            found = strlen(s) == (size_t)len && ovs_safetensors_find(map->st, s) >= 0;
    }
    Py_DECREF(map);
    return found;
}

static PyObject *file_iter(FileObject *self) {
    PyObject *keys = file_keys(self, NULL);
    if (!keys) return NULL;
    PyObject *it = PyObject_GetIter(keys);
    Py_DECREF(keys);
    return it;
}

static PyObject *file_repr(FileObject *self) {
    if (!self->map) return PyUnicode_FromFormat("<SafeTensorsFile %R (closed)>", self->path);
    return PyUnicode_FromFormat("<SafeTensorsFile %R: %lld tensors>", self->path,
                                (long long)ovs_safetensors_count(self->map->st));
}

static PyMethodDef file_methods[] = {
    {"from_buffer", (PyCFunction)file_from_buffer, METH_O | METH_CLASS,
     "from_buffer(data) -> SafeTensorsFile over a bytes-like object (kept referenced)."},
    {"keys", (PyCFunction)file_keys, METH_NOARGS, "keys() -> list of tensor names in file order."},
    {"info", (PyCFunction)file_info, METH_O,
     "info(name) -> (dtype, shape): the stored dtype ('F32', 'BF16', ...) and shape tuple."},
    {"get", (PyCFunction)file_get, METH_O,
     "get(name) -> float32 ndarray. From a file: read now into a new array (OSError if the file\n"
     "changed since it was opened). From a buffer: a read-only zero-copy view for aligned F32\n"
     "tensors, otherwise a new array converted from the stored dtype."},
    {"get_raw", (PyCFunction)file_get_raw, METH_O,
     "get_raw(name) -> ndarray of the stored dtype (BF16 as uint16 bits): read now from a file\n"
     "into a new array, a read-only zero-copy view of a buffer."},
    {"close", (PyCFunction)file_close, METH_NOARGS,
     "close() -> None. Later calls raise ValueError; the mapping itself is released when the\n"
     "last array viewing it is gone."},
    {"__enter__", (PyCFunction)file_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)file_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef file_getset[] = {
    {"metadata", (getter)file_get_metadata, NULL, "The __metadata__ table as a new dict.", NULL},
    {"closed", (getter)file_get_closed, NULL, "True after close().", NULL},
    {"nbytes", (getter)file_get_nbytes, NULL, "Size of the file in bytes.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef file_members[] = {
    {"path", T_OBJECT, offsetof(FileObject, path), READONLY, "The path (None for from_buffer)."},
    {NULL, 0, 0, 0, NULL},
};

static PySequenceMethods file_as_sequence = {
    .sq_length = (lenfunc)file_len,
    .sq_contains = (objobjproc)file_contains,
};

static PyTypeObject FileType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ovs._core.SafeTensorsFile",
    .tp_basicsize = sizeof(FileObject),
    .tp_dealloc = (destructor)file_dealloc,
    .tp_repr = (reprfunc)file_repr,
    .tp_as_sequence = &file_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "SafeTensorsFile(path): a safetensors file whose header is read and validated now;\n"
              "each tensor is read from the file when asked for. A file rewritten, truncated or\n"
              "replaced since the open raises OSError(ESTALE, '... changed since it was opened').\n\n"
              "Raises OSError when the file cannot be read and ovs.WeightFileError when it is\n"
              "malformed. Tensors come out as NumPy arrays: get() float32, get_raw() as stored.",
    .tp_iter = (getiterfunc)file_iter,
    .tp_methods = file_methods,
    .tp_members = file_members,
    .tp_getset = file_getset,
    .tp_new = file_new,
};

ovs_safetensors *ovs_py_safetensors_of(PyObject *obj, PyObject **owner) {
    *owner = NULL;
    if (!PyObject_TypeCheck(obj, &FileType)) {
        PyErr_Format(PyExc_TypeError, "expected an ovs._core.SafeTensorsFile, got %.100s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    MappingObject *map = file_acquire((FileObject *)obj);
    if (!map) return NULL;
    *owner = (PyObject *)map;
    return map->st;
}

int ovs_py_register_io(PyObject *m) {
    if (ovs_py_add_type(m, NULL, &MappingType) < 0) return -1;
    return ovs_py_add_type(m, "SafeTensorsFile", &FileType);
}
