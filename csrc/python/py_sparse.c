/* Python bindings of the sparse ops (tests and benchmarks): _core.op_conv2d_sparse. The
 * per-model switch (ResNet.sparsify / ResNet.convs) lives with the model bindings. */
#include "python/pyovs.h"

#include <string.h>

#include "ovs/ops.h"

#define F32(a) ((float *)PyArray_DATA(a))

/* op_conv2d_sparse(x, w, b=None, residual=None, stride=1, padding=0, dilation=1, act="none",
 *                  naive=False, residual_alias=False, repeat=1) -> (N, K, P, Q)
 * w is a dense (K, C, R, S) array; its non-zeros are stored as CSR and the sparse kernel runs
 * (repeat times, for timing the kernel without the CSR build; not with a residual alias; with
 * repeat > 1 through a plan, ovs_conv2d_sparse_forward_planned, as the models run it). */
static PyObject *py_op_conv2d_sparse(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    int st = -1;
    static char *kwlist[] = {"x", "w", "b", "residual", "stride", "padding", "dilation", "act",
                             "naive", "residual_alias", "repeat", NULL};
    PyObject *x_obj, *w_obj, *b_obj = Py_None, *r_obj = Py_None;
    long long stride = 1, pad = 0, dil = 1;
    const char *act_name = "none";
    int naive = 0, alias = 0;
    long long repeat = 1;
    ovs_act act;
    PyArrayObject *x = NULL, *w = NULL, *b = NULL, *r = NULL, *out = NULL;
    float *scratch = NULL;
    ovs_csr csr;
    ovs_sparse_plan plan;
    memset(&csr, 0, sizeof csr);
    memset(&plan, 0, sizeof plan);
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OOLLLsppL", kwlist, &x_obj, &w_obj, &b_obj,
                                     &r_obj, &stride, &pad, &dil, &act_name, &naive, &alias,
                                     &repeat))
        return NULL;
    if (ovs_py_parse_act(act_name, 1, &act)) return NULL;
    if (repeat < 1 || (repeat > 1 && alias)) {
        PyErr_Format(PyExc_ValueError, "repeat must be >= 1 (1 with residual_alias), got %lld", repeat);
        return NULL;
    }
    if (stride < 1 || pad < 0 || dil < 1) {
        PyErr_Format(PyExc_ValueError, "need stride >= 1, padding >= 0, dilation >= 1; got %lld, %lld, %lld",
                     stride, pad, dil);
        return NULL;
    }
    if (!(x = ovs_py_float_array(x_obj, 4, "x")) || !(w = ovs_py_float_array(w_obj, 4, "w")))
        goto done;
    if (b_obj != Py_None && !(b = ovs_py_float_array(b_obj, 1, "b"))) goto done;
    npy_intp N = PyArray_DIM(x, 0), C = PyArray_DIM(x, 1), H = PyArray_DIM(x, 2), W = PyArray_DIM(x, 3);
    npy_intp K = PyArray_DIM(w, 0), R = PyArray_DIM(w, 2), S = PyArray_DIM(w, 3);
    if (PyArray_DIM(w, 1) != C || R < 1 || S < 1) {
        PyErr_Format(PyExc_ValueError, "w must be (K, %zd, R, S) with R, S >= 1, got (%zd, %zd, %zd, %zd)",
                     (Py_ssize_t)C, (Py_ssize_t)K, (Py_ssize_t)PyArray_DIM(w, 1), (Py_ssize_t)R,
                     (Py_ssize_t)S);
        goto done;
    }
    if (b && PyArray_DIM(b, 0) != K) {
        PyErr_Format(PyExc_ValueError, "b must have shape (%zd,), got (%zd,)", (Py_ssize_t)K,
                     (Py_ssize_t)PyArray_DIM(b, 0));
        goto done;
    }
    ovs_conv2d_params p = ovs_conv2d_defaults();
    p.stride_h = p.stride_w = stride;
    p.pad_h = p.pad_w = pad;
    p.dil_h = p.dil_w = dil;
    int64_t P = ovs_conv2d_out_size(H, R, stride, pad, dil), Q = ovs_conv2d_out_size(W, S, stride, pad, dil);
    if (P < 0 || Q < 0) {
        PyErr_Format(PyExc_ValueError, "kernel %zdx%zd does not fit input %zdx%zd with padding %lld",
                     (Py_ssize_t)R, (Py_ssize_t)S, (Py_ssize_t)H, (Py_ssize_t)W, pad);
        goto done;
    }
    npy_intp dims[4] = {N, K, P, Q};
    if (r_obj != Py_None) {
        if (!(r = ovs_py_float_array(r_obj, 4, "residual"))) goto done;
        for (int d = 0; d < 4; d++)
            if (PyArray_DIM(r, d) != dims[d]) {
                PyErr_Format(PyExc_ValueError, "residual must have shape (%zd, %zd, %zd, %zd)",
                             (Py_ssize_t)N, (Py_ssize_t)K, (Py_ssize_t)P, (Py_ssize_t)Q);
                goto done;
            }
    }
    if (!(out = (PyArrayObject *)PyArray_SimpleNew(4, dims, NPY_FLOAT32))) goto done;
    st = ovs_csr_from_dense(&csr, F32(w), K, C * R * S);
    if (st) goto done;
    if (!naive) {
        size_t n = ovs_conv2d_sparse_scratch_floats(C, H, W, K, R, S, csr.nnz, &p);
        if (n == SIZE_MAX || n > SIZE_MAX / sizeof(float)) {
            PyErr_SetString(PyExc_ValueError, "scratch size overflows");
            goto done;
        }
        if (!(scratch = ovs_malloc((n ? n : 1) * sizeof(float)))) {
            ovs_py_raise(OVS_ERR_NOMEM);
            goto done;
        }
    }
    const float *res = r ? F32(r) : NULL;
    if (r && alias) {
        memcpy(F32(out), F32(r), (size_t)PyArray_NBYTES(r));
        res = F32(out);
    }
    const float *bias = b ? F32(b) : NULL;
    Py_BEGIN_ALLOW_THREADS
    if (naive)
        st = ovs_conv2d_sparse_forward_naive(F32(out), F32(x), &csr, bias, res, N, C, H, W, K, R,
                                             S, &p, act);
    else if (repeat == 1)
        st = ovs_conv2d_sparse_forward(F32(out), F32(x), &csr, bias, res, N, C, H, W, K, R, S,
                                       &p, act, scratch);
    else   /* as a model runs it: the tables built on the first call, reused by the others */
        for (long long i = 0; i < repeat && !st; i++)  /* st == 0 here (the CSR was built) */
            st = ovs_conv2d_sparse_forward_planned(F32(out), F32(x), &csr, bias, res, N, C, H, W,
                                                   K, R, S, &p, act, scratch, &plan);
    ovs_sparse_plan_free(&plan);
    Py_END_ALLOW_THREADS
done:
    ovs_csr_free(&csr);
    ovs_free(scratch);
    return OVS_PY_FINISH(st, out, x, w, b, r);
}

static PyMethodDef sparse_methods[] = {
    {"op_conv2d_sparse", (PyCFunction)(void (*)(void))py_op_conv2d_sparse, METH_VARARGS | METH_KEYWORDS,
     "op_conv2d_sparse(x, w, b=None, residual=None, stride=1, padding=0, dilation=1, act='none', "
     "naive=False, residual_alias=False, repeat=1): conv with w's non-zeros stored as CSR (the "
     "fast kernel run repeat times)"},
    {NULL, NULL, 0, NULL},
};

int ovs_py_register_sparse(PyObject *m) { return PyModule_AddFunctions(m, sparse_methods); }
