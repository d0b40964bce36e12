/* Python bindings of the packed-weight GEMM's test hooks (include/ovs/ops.h):
 * `_core.op_matrix_pack`, `_core.op_gemm_packed_naive`, `_core.gemm_set_isa`, `_core.gemm_isa`. */
#include "python/pyovs.h"

#include "ovs/ops.h"

#include <string.h>

/* op_matrix_pack(w (K, C)) -> packed (ceil(K/NR), C, NR) float32. */
static PyObject *py_op_matrix_pack(PyObject *self, PyObject *args, PyObject *kw) {
    int st = -1;
    static char *kwlist[] = {"w", NULL};
    PyObject *w_obj;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", kwlist, &w_obj)) return NULL;
    PyArrayObject *w = ovs_py_float_array(w_obj, 2, "w"), *out = NULL;
    if (!w) return NULL;
    npy_intp K = PyArray_DIM(w, 0), C = PyArray_DIM(w, 1);
    npy_intp dims[3] = {(K + OVS_PACK_NR - 1) / OVS_PACK_NR, C, OVS_PACK_NR};
    out = (PyArrayObject *)PyArray_EMPTY(3, dims, NPY_FLOAT32, 0);
    if (!out) goto done;
    OVS_PY_NOGIL(st, ovs_matrix_pack((float *)PyArray_DATA(out), (const float *)PyArray_DATA(w),
                                     K, C));
done:
    return OVS_PY_FINISH(st, out, w);
}

/* op_gemm_packed_naive(a (M, C), packed (P, C, NR), K, fast=False) -> (M, K); with fast the
 * packed-weight GEMM itself (ovs_matmul_wt on the packed matrix: weights packed once, for
 * benchmarks). */
static PyObject *gemm_packed(PyObject *args, PyObject *kw, int fast) {
    int st = -1;
    static char *kwlist[] = {"a", "packed", "K", NULL};
    PyObject *a_obj, *p_obj;
    long long K;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOL", kwlist, &a_obj, &p_obj, &K)) return NULL;
    PyArrayObject *a = NULL, *p = NULL, *out = NULL;
    if (!(a = ovs_py_float_array(a_obj, 2, "a")) || !(p = ovs_py_float_array(p_obj, 3, "packed")))
        goto done;
    npy_intp M = PyArray_DIM(a, 0), C = PyArray_DIM(a, 1);
    if (K < 0 || PyArray_DIM(p, 0) != (K + OVS_PACK_NR - 1) / OVS_PACK_NR ||
        PyArray_DIM(p, 1) != C || PyArray_DIM(p, 2) != OVS_PACK_NR) {
        PyErr_Format(PyExc_ValueError,
                     "packed must have shape (ceil(K/%d), C, %d) = (%lld, %lld, %d) for K = %lld, "
                     "got (%lld, %lld, %lld)",
                     OVS_PACK_NR, OVS_PACK_NR, (long long)((K + OVS_PACK_NR - 1) / OVS_PACK_NR),
                     (long long)C, OVS_PACK_NR, K, (long long)PyArray_DIM(p, 0),
                     (long long)PyArray_DIM(p, 1), (long long)PyArray_DIM(p, 2));
        goto done;
    }
    npy_intp dims[2] = {M, (npy_intp)K};
    if (!(out = (PyArrayObject *)PyArray_EMPTY(2, dims, NPY_FLOAT32, 0))) goto done;
    Py_BEGIN_ALLOW_THREADS
    if (fast) {
        ovs_matrix wm = ovs_matrix_packed((const float *)PyArray_DATA(p), K, C);
        st = ovs_matmul_wt((float *)PyArray_DATA(out), K, (const float *)PyArray_DATA(a), C, &wm,
                           M, 1.0f, 0.0f);
    } else {
        st = ovs_gemm_packed_naive((float *)PyArray_DATA(out), (const float *)PyArray_DATA(a),
                                   (const float *)PyArray_DATA(p), M, C, K);
    }
    Py_END_ALLOW_THREADS
done:
    return OVS_PY_FINISH(st, out, a, p);
}

OVS_PY_VARIANT(py_op_gemm_packed_naive, gemm_packed, 0)
OVS_PY_VARIANT(py_op_gemm_packed, gemm_packed, 1)

static PyObject *py_gemm_set_isa(PyObject *self, PyObject *arg) {
    static const struct { const char *name; ovs_gemm_isa_kind kind; } table[] = {
        {"auto", OVS_GEMM_ISA_AUTO}, {"portable", OVS_GEMM_ISA_PORTABLE},
        {"avx2", OVS_GEMM_ISA_AVX2}, {"avx512", OVS_GEMM_ISA_AVX512},
    };
    if (!PyUnicode_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "isa must be a str, got %.100s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (!strcmp(name, table[i].name)) {
            int st = ovs_gemm_set_isa(table[i].kind);
            if (st) return ovs_py_raise(st);
            return PyUnicode_FromString(ovs_gemm_isa_name());
        }
    PyErr_Format(PyExc_ValueError, "isa must be 'auto', 'portable', 'avx2' or 'avx512', got %R",
                 arg);
    return NULL;
}

static PyObject *py_gemm_isa(PyObject *self, PyObject *noargs) {
    return PyUnicode_FromString(ovs_gemm_isa_name());
}

static PyObject *py_gemm_release_workspace(PyObject *self, PyObject *noargs) {
    ovs_gemm_release_workspace();
    Py_RETURN_NONE;
}

static PyMethodDef gemm_methods[] = {
    OVS_PY_ROW(py_, op_matrix_pack, OVS_PY_KW,
               "(w) -> w (K, C) packed as (ceil(K/16), C, 16) panels for the GEMM kernels."),
    OVS_PY_ROW(py_, op_gemm_packed_naive, OVS_PY_KW,
               "(a, packed, K) -> a @ W.T from the packed W, one fmaf chain per element."),
    OVS_PY_ROW(py_, op_gemm_packed, OVS_PY_KW,
               "(a, packed, K) -> a @ W.T with the packed-weight GEMM on an already packed W."),
    OVS_PY_ROW(py_, gemm_set_isa, METH_O,
               "(name) -> name in use; 'auto', 'portable', 'avx2' or 'avx512' (test hook, "
               "process-wide; RuntimeError-like OvsError if the CPU lacks it)."),
    OVS_PY_ROW(py_, gemm_isa, METH_NOARGS, "() -> the packed GEMM's kernels in use."),
    OVS_PY_ROW(py_, gemm_release_workspace, METH_NOARGS,
               "() -> None: frees the calling thread's packed-GEMM workspace (kept between "
               "calls; test hook)."),
    {NULL, NULL, 0, NULL},
};

int ovs_py_register_gemm(PyObject *m) { return PyModule_AddFunctions(m, gemm_methods); }
