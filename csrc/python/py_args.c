/* Argument parsing and array checking shared by the bindings (csrc/python/py_*.c), written once:
 * declared in pyovs.h, where each is described. */
#include "python/pyovs.h"

#include <math.h>
#include <string.h>

PyObject *ovs_py_seq_n(PyObject *obj, Py_ssize_t n, PyObject *exc, const char *what,
                       const char *must) {
    PyObject *seq = PySequence_Check(obj) ? PySequence_Fast(obj, what) : NULL;
    if (!seq || PySequence_Fast_GET_SIZE(seq) != n) {
        Py_XDECREF(seq);
        PyErr_Clear();
        PyErr_Format(exc, "%s %s, got %R", what, must, obj);
        return NULL;
    }
    return seq;
}

/* The n items of a fast sequence as int64s; strict: ints only (no bool, no __index__ objects),
 * TypeError "<what> must be ints, got <repr(obj)>" otherwise. Releases seq. */
static int seq_int64s(PyObject *seq, Py_ssize_t n, int strict, const char *what, PyObject *obj,
                      int64_t *out) {
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PySequence_Fast_GET_ITEM(seq, i);
        if (strict && (!PyLong_Check(v) || PyBool_Check(v))) {
            PyErr_Format(PyExc_TypeError, "%s must be ints, got %R", what, obj);
            Py_DECREF(seq);
            return -1;
        }
        long long x = PyLong_AsLongLong(v);
        if (x == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        out[i] = x;
    }
    Py_DECREF(seq);
    return 0;
}

int ovs_py_int64_n(PyObject *obj, Py_ssize_t n, PyObject *exc, const char *what,
                   const char *must, int64_t *out) {
    PyObject *seq = ovs_py_seq_n(obj, n, exc, what, must);
    return seq ? seq_int64s(seq, n, 0, what, obj, out) : -1;
}

int ovs_py_int64_seq(PyObject *obj, const char *what, int64_t *out, int max, int64_t *n) {
    if (!obj) return 0;
    PyObject *seq = PySequence_Check(obj) && !PyUnicode_Check(obj) ? PySequence_Fast(obj, what) : NULL;
    if (!seq) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a sequence of ints, got %R", what, obj);
        return -1;
    }
    Py_ssize_t len = PySequence_Fast_GET_SIZE(seq);
    if (len < 1 || len > max) {
        PyErr_Format(PyExc_ValueError, "%s must hold 1..%d ints, got %R", what, max, obj);
        Py_DECREF(seq);
        return -1;
    }
    if (seq_int64s(seq, len, 1, what, obj, out)) return -1;
    *n = len;
    return 0;
}

int ovs_py_rgb(PyObject *obj, const char *what, float out[3]) {
    PyObject *seq = ovs_py_seq_n(obj, 3, PyExc_ValueError, what, "must be a sequence of 3 numbers");
    if (!seq) return -1;
    for (int i = 0; i < 3; i++) {
        double v = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (v == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        out[i] = (float)v;
    }
    Py_DECREF(seq);
    return 0;
}

/* An int or a pair of ints into out[2]; each must be >= min. */
int ovs_py_pair(PyObject *obj, const char *what, long long min, int64_t out[2]) {
    if (PyLong_Check(obj)) {
        long long v = PyLong_AsLongLong(obj);
        if (v == -1 && PyErr_Occurred()) return -1;
        out[0] = out[1] = v;
    } else if (ovs_py_int64_n(obj, 2, PyExc_TypeError, what, "must be an int or a pair of ints", out)) {
        return -1;
    }
    if (out[0] < min || out[1] < min) {
        PyErr_Format(PyExc_ValueError, "%s must be >= %lld, got (%lld, %lld)", what, min,
                     (long long)out[0], (long long)out[1]);
        return -1;
    }
    return 0;
}

/* *out = None ? NULL : a C-contiguous float32 array of `ndim` dims (new reference). */
int ovs_py_opt_array(PyObject *obj, int ndim, const char *what, PyArrayObject **out) {
    *out = NULL;
    if (!obj || obj == Py_None) return 0;
    *out = ovs_py_float_array(obj, ndim, what);
    return *out ? 0 : -1;
}

void ovs_py_shape_str(char *buf, size_t cap, int nd, const npy_intp *shape) {
    size_t at = (size_t)snprintf(buf, cap, "(");
    for (int i = 0; i < nd && at < cap; i++)
        at += shape[i] < 0 ? (size_t)snprintf(buf + at, cap - at, i ? ", *" : "*")
                           : (size_t)snprintf(buf + at, cap - at, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (at < cap) snprintf(buf + at, cap - at, nd == 1 ? ",)" : ")");
}

/* ValueError unless a has the given shape (a negative extent: any). */
int ovs_py_check_shape(PyArrayObject *a, const char *what, int nd, const npy_intp *shape) {
    int ok = PyArray_NDIM(a) == nd;
    for (int i = 0; ok && i < nd; i++) ok = shape[i] < 0 || PyArray_DIM(a, i) == shape[i];
    if (ok) return 0;
    char want[128], got[128];
    ovs_py_shape_str(want, sizeof want, nd, shape);
    ovs_py_shape_str(got, sizeof got, PyArray_NDIM(a), PyArray_DIMS(a));
    PyErr_Format(PyExc_ValueError, "%s must have shape %s, got %s", what, want, got);
    return -1;
}

/* A 2-D float32 operand whose rows may be strided (a column slice of a wider array, as q/k/v
 * cut from an in_proj output): used in place when its columns are contiguous, converted to
 * a C-contiguous copy otherwise. *ld gets the row stride in floats. New reference. */
PyArrayObject *ovs_py_rows_array(PyObject *obj, const char *what, int64_t *ld) {
    if (PyArray_Check(obj)) {
        PyArrayObject *a = (PyArrayObject *)obj;
        if (PyArray_TYPE(a) == NPY_FLOAT32 && PyArray_NDIM(a) == 2 && PyArray_ISALIGNED(a) &&
            PyArray_ISNOTSWAPPED(a)) {
            npy_intp s0 = PyArray_STRIDE(a, 0), s1 = PyArray_STRIDE(a, 1);
            npy_intp cols = PyArray_DIM(a, 1);
            if (s1 == (npy_intp)sizeof(float) && s0 % (npy_intp)sizeof(float) == 0 &&
                s0 >= cols * (npy_intp)sizeof(float) && cols > 0) {
                Py_INCREF(a);
                *ld = s0 / (npy_intp)sizeof(float);
                return a;
            }
        }
    }
    PyArrayObject *a = ovs_py_float_array(obj, 2, what);
    if (a) *ld = PyArray_DIM(a, 1);
    return a;
}

npy_intp ovs_py_nonfinite(PyArrayObject *a) {
    const float *d = PyArray_DATA(a);
    npy_intp n = PyArray_SIZE(a);
    for (npy_intp i = 0; i < n; i++)
        if (!isfinite(d[i])) return i;
    return -1;
}

PyArrayObject *ovs_py_new_float(int nd, const npy_intp *dims) {
    return (PyArrayObject *)PyArray_SimpleNew(nd, (npy_intp *)dims, NPY_FLOAT32);
}

/* A new C-contiguous float32 copy of x (for ops that work in place). */
PyArrayObject *ovs_py_float_copy(PyObject *obj, const char *what) {
    PyArrayObject *a = ovs_py_float_array(obj, -1, what);
    if (!a) return NULL;
    PyArrayObject *c = (PyArrayObject *)PyArray_NewCopy(a, NPY_CORDER);
    Py_DECREF(a);
    return c;
}

/* Scratch for an op: n floats from ovs_malloc (MemoryError on failure); n == 0 gives NULL. */
int ovs_py_scratch(size_t n, float **out) {
    *out = NULL;
    if (n == 0) return 0;
    if (n == SIZE_MAX || n > SIZE_MAX / sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "scratch size overflows");
        return -1;
    }
    *out = ovs_malloc(n * sizeof(float));
    if (!*out) {
        ovs_py_raise(OVS_ERR_NOMEM);
        return -1;
    }
    return 0;
}

/* *wm = w (K, C) as a dense matrix, or, with packed != 0, as a packed copy in *buf (an
 * ovs_malloc'd block the caller frees after the op). Called with the GIL held. */
int ovs_py_weight_matrix(ovs_matrix *wm, float **buf, PyArrayObject *w, npy_intp K, npy_intp C,
                         int packed) {
    *buf = NULL;
    if (!packed) {
        *wm = ovs_matrix_dense(F32(w), K, C);
        return 0;
    }
    size_t n = ovs_matrix_packed_floats(K, C);
    if (n == SIZE_MAX || n > SIZE_MAX / sizeof(float) ||
        !(*buf = ovs_malloc((n ? n : 1) * sizeof(float)))) {
        PyErr_NoMemory();
        return -1;
    }
    int st = ovs_matrix_pack(*buf, F32(w), K, C);
    if (st) {
        ovs_free(*buf);
        *buf = NULL;
        ovs_py_raise(st);
        return -1;
    }
    *wm = ovs_matrix_packed(*buf, K, C);
    return 0;
}

/* x (..., H, W) as (planes, H, W); ValueError below 2 dims. */
int ovs_py_planes_hw(PyArrayObject *x, const char *what, int64_t *NC, int64_t *H, int64_t *W) {
    int nd = PyArray_NDIM(x);
    if (nd < 2) {
        PyErr_Format(PyExc_ValueError, "%s must have at least 2 dimensions (..., H, W), got %d",
                     what, nd);
        return -1;
    }
    *NC = 1;
    for (int i = 0; i < nd - 2; i++) *NC *= PyArray_DIM(x, i);
    *H = PyArray_DIM(x, nd - 2);
    *W = PyArray_DIM(x, nd - 1);
    return 0;
}

/* A new float32 array shaped like x but with the last two dims (P, Q). */
PyArrayObject *ovs_py_new_like_planes(PyArrayObject *x, int64_t P, int64_t Q) {
    int nd = PyArray_NDIM(x);
    npy_intp dims[NPY_MAXDIMS];
    memcpy(dims, PyArray_DIMS(x), (size_t)nd * sizeof(npy_intp));
    dims[nd - 2] = P;
    dims[nd - 1] = Q;
    return ovs_py_new_float(nd, dims);
}

/* x (..., D) as (M, D). */
int ovs_py_rows_d(PyArrayObject *x, const char *what, int64_t *M, int64_t *D) {
    int nd = PyArray_NDIM(x);
    if (nd < 1) {
        PyErr_Format(PyExc_ValueError, "%s must have at least 1 dimension", what);
        return -1;
    }
    *D = PyArray_DIM(x, nd - 1);
    *M = 1;
    for (int i = 0; i < nd - 1; i++) *M *= PyArray_DIM(x, i);
    return 0;
}

PyObject *ovs_py_finish(int st, PyObject *out, void *const *refs, size_t n) {
    for (size_t i = 0; i < n; i++) Py_XDECREF((PyObject *)refs[i]);
    if (st == 0 && !PyErr_Occurred()) return out;
    if (st > 0) ovs_py_raise(st);
    Py_XDECREF(out);
    return NULL;
}
