/* The ovs._core extension module: creates the exception types and lets each part register. */
#define OVS_PY_MODULE_C
#include "python/pyovs.h"

PyObject *ovs_py_Error = NULL;
PyObject *ovs_py_WeightError = NULL;

PyObject *ovs_py_raise(int status) {
    const char *msg = ovs_last_error();
    if (!msg || !*msg) msg = ovs_status_name(status);
    PyObject *type;
    switch (status) {
    case OVS_ERR_NOMEM: type = PyExc_MemoryError; break;
    case OVS_ERR_IO: type = PyExc_OSError; break;
    case OVS_ERR_FORMAT: type = ovs_py_WeightError; break;
    case OVS_ERR_MISSING: type = PyExc_KeyError; break;
    case OVS_ERR_ARG:
    case OVS_ERR_SHAPE:
    case OVS_ERR_OVERFLOW: type = PyExc_ValueError; break;
    case OVS_ERR_UNSUPPORTED: type = PyExc_NotImplementedError; break;
    default: type = ovs_py_Error; break;
    }
    PyErr_SetString(type, msg);
    return NULL;
}

int ovs_py_status(int st) {
    if (!st) return 0;
    ovs_py_raise(st);
    return -1;
}

int ovs_py_add_type(PyObject *m, const char *name, PyTypeObject *type) {
    if (PyType_Ready(type) < 0) return -1;
    if (!name) return 0;
    Py_INCREF(type);
    if (PyModule_AddObject(m, name, (PyObject *)type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

PyArrayObject *ovs_py_float_array(PyObject *obj, int ndim, const char *what) {
    if (!PyArray_Check(obj) && !PySequence_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy array, got %.100s", what,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    if (PyArray_Check(obj)) {
        int tn = PyArray_TYPE((PyArrayObject *)obj);
        if (!(PyTypeNum_ISFLOAT(tn) || PyTypeNum_ISINTEGER(tn)) || tn == NPY_LONGDOUBLE) {
            PyErr_Format(PyExc_TypeError, "%s must have a real numeric dtype, got %R", what,
                         (PyObject *)PyArray_DESCR((PyArrayObject *)obj));
            return NULL;
        }
    }
    PyArrayObject *a = (PyArrayObject *)PyArray_FROMANY(obj, NPY_FLOAT32, 0, 0,
                                                        NPY_ARRAY_CARRAY_RO | NPY_ARRAY_FORCECAST);
    if (!a) return NULL;
    if (ndim >= 0 && PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have %d dimensions, got %d", what, ndim,
                     PyArray_NDIM(a));
        Py_DECREF(a);
        return NULL;
    }
    return a;
}

PyArrayObject *ovs_py_uint8_image(PyObject *obj, const char *what, int64_t *row_stride,
                                  int64_t *pixel_stride) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy uint8 array (H, W, 3), got %.100s", what,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != NPY_UINT8) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype uint8 (0..255 RGB), got %S; convert float "
                     "images in 0..1 with (img * 255).round().astype(np.uint8)", what,
                     (PyObject *)PyArray_DESCR(a));
        return NULL;
    }
    char shape[160];
    ovs_py_shape_str(shape, sizeof shape, PyArray_NDIM(a), PyArray_DIMS(a));
    const int nd = PyArray_NDIM(a);
    if (nd != 3 || PyArray_DIM(a, 2) != 3) {
        const char *hint = "";
        if (nd == 3 && PyArray_DIM(a, 2) == 4) hint = " (drop the alpha channel: img[..., :3])";
        else if (nd == 2 || (nd == 3 && PyArray_DIM(a, 2) == 1))
            hint = " (grayscale: replicate it, np.dstack([g, g, g]))";
        PyErr_Format(PyExc_ValueError, "%s must be (H, W, 3) RGB, got shape %s%s", what, shape, hint);
        return NULL;
    }
    if (PyArray_DIM(a, 0) == 0 || PyArray_DIM(a, 1) == 0) {
        PyErr_Format(PyExc_ValueError, "%s is empty: shape %s", what, shape);
        return NULL;
    }
    if (PyArray_STRIDE(a, 2) == 1 && PyArray_STRIDE(a, 1) >= 3 && PyArray_STRIDE(a, 0) >= 1) {
        Py_INCREF(a);
    } else {   /* channels not adjacent, or negative / zero strides: a C-ordered copy */
        a = (PyArrayObject *)PyArray_FROMANY(obj, NPY_UINT8, 3, 3, NPY_ARRAY_CARRAY_RO);
        if (!a) return NULL;
    }
    *row_stride = PyArray_STRIDE(a, 0);
    *pixel_stride = PyArray_STRIDE(a, 1);
    return a;
}

static PyObject *py_last_error(PyObject *self, PyObject *args) { (void)args;
    return PyUnicode_FromString(ovs_last_error());
}

static PyObject *py_set_num_threads(PyObject *self, PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0 || n > 1024) {
        PyErr_Format(PyExc_ValueError, "number of threads must be in 0..1024 (0 = all cores), got %ld", n);
        return NULL;
    }
    ovs_set_num_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *args) { (void)args;
    return PyLong_FromLong(ovs_get_num_threads());
}

int ovs_py_parse_act(const char *name, int allow_none, ovs_act *act) {
    const ovs_act_info *a = ovs_act_by_name(name);
    if (a && (allow_none || a->act != OVS_ACT_NONE)) {
        *act = a->act;
        return 0;
    }
    char names[256] = "";
    int64_t n, k = 0, nk = 0;
    const ovs_act_info *t = ovs_act_table(&n);
    for (int64_t i = 0; i < n; i++) nk += allow_none || t[i].act != OVS_ACT_NONE;
    for (int64_t i = 0; i < n; i++) {
        if (!allow_none && t[i].act == OVS_ACT_NONE) continue;
        size_t len = strlen(names);
        snprintf(names + len, sizeof names - len, "%s'%s'", k == 0 ? "" : k == nk - 1 ? " or " : ", ", t[i].name);
        k++;
    }
    PyErr_Format(PyExc_ValueError, "act must be %s, got '%s'", names, name);
    return -1;
}

PyObject *ovs_py_table(int64_t n, PyObject *(*row)(int64_t i, const void *table), const void *table) {
    PyObject *out = PyTuple_New((Py_ssize_t)n);
    for (int64_t i = 0; out && i < n; i++) {
        PyObject *r = row(i, table);
        if (!r) Py_CLEAR(out);
        else PyTuple_SET_ITEM(out, (Py_ssize_t)i, r);
    }
    return out;
}

static PyObject *act_row(int64_t i, const void *table) {
    const ovs_act_info *a = (const ovs_act_info *)table + i;
    return Py_BuildValue("{s:s,s:O,s:s}", "name", a->name, "tower_mlp", a->tower_mlp ? Py_True : Py_False,
                         "summary", a->summary);
}

/* activations() -> tuple of dicts, the activations table (include/ovs/ops.h). */
static PyObject *py_activations(PyObject *self, PyObject *args) {
    int64_t n;
    const ovs_act_info *t = ovs_act_table(&n);
    return ovs_py_table(n, act_row, t);
}

static PyObject *py_build_info(PyObject *self, PyObject *args) { (void)args;
#ifdef _OPENMP
    int omp = 1;
#else
    int omp = 0;
#endif
    return Py_BuildValue("{s:s,s:O}", "blas", OVS_BLAS_NAME, "openmp", omp ? Py_True : Py_False);
}

static PyMethodDef core_methods[] = {
    OVS_PY_ROW(py_, last_error, METH_NOARGS, "() -> message of the last C error on this thread."),
    OVS_PY_ROW(py_, set_num_threads, METH_O, "(n): set threads for OpenBLAS and ovs loops."),
    OVS_PY_ROW(py_, get_num_threads, METH_NOARGS, "() -> threads in use."),
    OVS_PY_ROW(py_, build_info, METH_NOARGS, "() -> how the extension was built."),
    OVS_PY_ROW(py_, activations, METH_NOARGS,
               "() -> tuple of dicts, the activations table (include/ovs/ops.h): name, tower_mlp "
               "(an MLP activation of the CLIP towers), summary"),
    {NULL, NULL, 0, NULL},
};

int ovs_py_register_core(PyObject *m) { return PyModule_AddFunctions(m, core_methods); }

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "ovs._core", "ovs C engine.", -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__core(void) {
    import_array();
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    ovs_py_Error = PyErr_NewException("ovs.OvsError", PyExc_RuntimeError, NULL);
    ovs_py_WeightError = PyErr_NewException("ovs.WeightFileError", PyExc_ValueError, NULL);
    if (!ovs_py_Error || !ovs_py_WeightError) goto error;
    ovs_set_num_threads(0); /* all cores for ovs's loops, OpenBLAS single-threaded */
    ovs_malloc_return_large((size_t)1 << 20); /* freed activations go back to the system */
    Py_INCREF(ovs_py_Error);
    Py_INCREF(ovs_py_WeightError);
    if (PyModule_AddObject(m, "OvsError", ovs_py_Error) < 0) goto error;
    if (PyModule_AddObject(m, "WeightFileError", ovs_py_WeightError) < 0) goto error;
#define OVS_PY_PART_REGISTER(part) ovs_py_register_##part,
    static int (*const parts[])(PyObject *) = {OVS_PY_PARTS(OVS_PY_PART_REGISTER)};
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
        if (parts[i](m) < 0) goto error;
    return m;
error:
    Py_DECREF(m);
    return NULL;
}
