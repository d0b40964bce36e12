/* TEST-ONLY bindings: never called by the ovs package (production bindings live in py_ops.c,
 * py_m2f.c and the model/method files). `_core.op_<name>(...)` exposes each op of
 * include/ovs/ops.h one by one, with `naive=True` selecting the plain twin, for the fast-vs-naive
 * tests (tests/test_ops*.py) and benchmarks; the test hooks (OVS_PY_TESTHOOKS): allocation-failure
 * injection (`_core.debug_fail_alloc`), the packed GEMM's ISA switch and workspace release, and
 * `_core.op_debug_invalid_calls`, which calls the C ops with invalid arguments. The production bindings are registered here too under
 * their op_ names (op_linear, op_resize, op_pamr, ...: the rows of OVS_PY_OPS / OVS_PY_M2F_OPS in
 * pyovs.h, the same functions) so the tests keep one naming scheme.
 * Arguments are parsed and checked with the shared helpers of pyovs.h (py_args.c). */
#include "python/pyovs.h"

#include "ovs/methods.h"
#include "ovs/ops.h"

#include <string.h>

/* ---------------------------------------------------------------- matmul */
/* op_matmul_wt (transposed != 0: out = alpha a @ w.T + beta out, w dense or packed) and op_matmul
 * (out = alpha a @ b + beta out, b's rows may be strided). */
static PyObject *matmul_binding(PyObject *args, PyObject *kw, int transposed) {
    int st = -1;
    static char *kw_wt[] = {"a", "w", "alpha", "beta", "out", "packed", "naive", NULL};
    static char *kw_ab[] = {"a", "b", "alpha", "beta", "out", "naive", NULL};
    PyObject *a_obj, *w_obj, *out_obj = Py_None;
    float alpha = 1.0f, beta = 0.0f;
    int packed = 0, naive = 0, ok;
    float *wbuf = NULL;
    PyArrayObject *a = NULL, *w = NULL, *out = NULL;
    if (transposed)
        ok = PyArg_ParseTupleAndKeywords(args, kw, "OO|ffOpp", kw_wt, &a_obj, &w_obj, &alpha,
                                         &beta, &out_obj, &packed, &naive);
    else
        ok = PyArg_ParseTupleAndKeywords(args, kw, "OO|ffOp", kw_ab, &a_obj, &w_obj, &alpha,
                                         &beta, &out_obj, &naive);
    if (!ok) return NULL;
    int64_t lda, ldb = 0, ldo;
    if (!(a = ovs_py_rows_array(a_obj, "a", &lda)) ||
        !(w = transposed ? ovs_py_float_array(w_obj, 2, "w") : ovs_py_rows_array(w_obj, "b", &ldb)))
        goto done;
    /* a (M, C); w (K, C) or b (C, K); out (M, K) */
    npy_intp M = PyArray_DIM(a, 0), C = PyArray_DIM(a, 1);
    npy_intp K = PyArray_DIM(w, transposed ? 0 : 1), Cw = PyArray_DIM(w, transposed ? 1 : 0);
    if (Cw != C) {
        PyErr_Format(PyExc_ValueError, "%s must have %lld %s (a's width), got %lld",
                     transposed ? "w" : "b", (long long)C, transposed ? "columns" : "rows",
                     (long long)Cw);
        goto done;
    }
    if (out_obj == Py_None) {
        npy_intp dims[2] = {M, K};
        if (!(out = (PyArrayObject *)PyArray_ZEROS(2, dims, NPY_FLOAT32, 0))) goto done;
        ldo = K;
    } else {
        /* Updated in place: must be a writable float32 (M, K) array with contiguous rows. */
        if (!PyArray_Check(out_obj) || PyArray_TYPE((PyArrayObject *)out_obj) != NPY_FLOAT32 ||
            !PyArray_ISWRITEABLE((PyArrayObject *)out_obj)) {
            PyErr_SetString(PyExc_TypeError, "out must be a writable float32 numpy array");
            goto done;
        }
        out = (PyArrayObject *)out_obj;
        Py_INCREF(out);
        npy_intp shape[2] = {M, K};
        if (ovs_py_check_shape(out, "out", 2, shape)) goto done;
        npy_intp s0 = PyArray_STRIDE(out, 0), s1 = PyArray_STRIDE(out, 1);
        if ((s1 != (npy_intp)sizeof(float) && K > 1) || s0 % (npy_intp)sizeof(float) != 0 ||
            s0 < K * (npy_intp)sizeof(float) || !PyArray_ISALIGNED(out)) {
            PyErr_SetString(PyExc_ValueError,
                            "out must have contiguous columns and non-overlapping rows");
            goto done;
        }
        ldo = s0 / (npy_intp)sizeof(float);
    }
    ovs_matrix wm;
    if (transposed && ovs_py_weight_matrix(&wm, &wbuf, w, K, C, packed)) goto done;
    if (transposed)
        OVS_PY_NOGIL(st, (naive ? ovs_matmul_wt_naive : ovs_matmul_wt)(F32(out), ldo, F32(a), lda,
                                                                      &wm, M, alpha, beta));
    else
        OVS_PY_NOGIL(st, (naive ? ovs_matmul_naive : ovs_matmul)(F32(out), ldo, F32(a), lda, F32(w),
                                                                ldb, M, C, K, alpha, beta));
done:
    ovs_free(wbuf);
    return OVS_PY_FINISH(st, out, a, w);
}

/* op_matmul_wt (w dense or packed) and op_matmul (b's rows may be strided). */
OVS_PY_VARIANT(py_op_matmul_wt, matmul_binding, 1)
OVS_PY_VARIANT(py_op_matmul, matmul_binding, 0)

/* ---------------------------------------------------------------- activations */
static PyObject *py_op_act(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "act", "naive", NULL};
    PyObject *x_obj;
    const char *act_name;
    int naive = 0;
    ovs_act act;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Os|p", kwlist, &x_obj, &act_name, &naive))
        return NULL;
    if (ovs_py_parse_act(act_name, 1, &act)) return NULL;
    PyArrayObject *y = ovs_py_float_copy(x_obj, "x");
    if (!y) return NULL;
    int64_t n = PyArray_SIZE(y);
    int st;
    OVS_PY_NOGIL(st, (naive ? ovs_act_forward_naive : ovs_act_forward)(F32(y), n, act));
    return ovs_py_finish(st, (PyObject *)y, NULL, 0);
}


/* ---------------------------------------------------------------- conv2d */
/* *p from the optional stride, padding and dilation (ints or pairs) and groups; -1 with a
 * Python exception on a bad value. */
static int conv_params_from(PyObject *stride_obj, PyObject *pad_obj, PyObject *dil_obj,
                            long long groups, ovs_conv2d_params *p) {
    int64_t stride[2] = {1, 1}, pad[2] = {0, 0}, dil[2] = {1, 1};
    if ((stride_obj && ovs_py_pair(stride_obj, "stride", 1, stride)) ||
        (pad_obj && ovs_py_pair(pad_obj, "padding", 0, pad)) ||
        (dil_obj && ovs_py_pair(dil_obj, "dilation", 1, dil)))
        return -1;
    if (groups < 1) {
        PyErr_Format(PyExc_ValueError, "groups must be >= 1, got %lld", groups);
        return -1;
    }
    *p = ovs_conv2d_defaults();
    p->stride_h = stride[0];
    p->stride_w = stride[1];
    p->pad_h = pad[0];
    p->pad_w = pad[1];
    p->dil_h = dil[0];
    p->dil_w = dil[1];
    p->groups = groups;
    return 0;
}

/* 1 when the data of the two arrays share a byte (contiguous extents; empty arrays never). */
static int arrays_overlap(PyArrayObject *a, PyArrayObject *b) {
    if (PyArray_NBYTES(a) == 0 || PyArray_NBYTES(b) == 0) return 0;
    const char *a0 = PyArray_DATA(a), *b0 = PyArray_DATA(b);
    return a0 < b0 + PyArray_NBYTES(b) && b0 < a0 + PyArray_NBYTES(a);
}

static PyObject *py_op_conv2d(PyObject *self, PyObject *args, PyObject *kw) {
    int st = -1;
    static char *kwlist[] = {"x",      "w",   "b",     "residual",       "stride",
                             "padding", "dilation", "groups", "act", "naive",
                             "residual_alias", "packed", "prepacked", "scratch", "algo",
                             "repeat", "out", "workspace", NULL};
    PyObject *x_obj, *w_obj, *b_obj = Py_None, *r_obj = Py_None, *pk_obj = Py_None;
    PyObject *out_obj = Py_None, *ws_obj = Py_None;
    PyObject *stride_obj = NULL, *pad_obj = NULL, *dil_obj = NULL;
    long long groups = 1, repeat = 1;
    const char *act_name = "none", *algo_name = "auto";
    int naive = 0, alias = 0, packed = 0, use_scratch = 1;
    ovs_act act;
    ovs_conv2d_params p;
    PyArrayObject *x = NULL, *w = NULL, *b = NULL, *r = NULL, *out = NULL, *pre = NULL;
    float *scratch = NULL, *pk = NULL;
    int own_scratch = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OOOOOLspppOpsLOO", kwlist, &x_obj, &w_obj,
                                     &b_obj, &r_obj, &stride_obj, &pad_obj, &dil_obj, &groups,
                                     &act_name, &naive, &alias, &packed, &pk_obj, &use_scratch,
                                     &algo_name, &repeat, &out_obj, &ws_obj))
        return NULL;
    if (repeat < 1 || (repeat > 1 && alias)) {
        PyErr_Format(PyExc_ValueError, "repeat must be >= 1 (1 with residual_alias), got %lld", repeat);
        return NULL;
    }
    /* algo: ovs_conv2d_params.algo ("auto" lets ovs_conv2d_forward choose; with naive=True
     * "auto" and "direct" are the direct conv, "winograd" / "winograd4" the Winograd twins) */
    ovs_conv2d_algo algo;
    if (!strcmp(algo_name, "auto")) algo = OVS_CONV2D_AUTO;
    else if (!strcmp(algo_name, "direct")) algo = OVS_CONV2D_DIRECT;
    else if (!strcmp(algo_name, "winograd")) algo = OVS_CONV2D_WINOGRAD;
    else if (!strcmp(algo_name, "winograd4")) algo = OVS_CONV2D_WINOGRAD4;
    else {
        PyErr_Format(PyExc_ValueError,
                     "algo must be 'auto', 'direct', 'winograd' or 'winograd4', got '%s'",
                     algo_name);
        return NULL;
    }
    if (ovs_py_parse_act(act_name, 1, &act) ||
        conv_params_from(stride_obj, pad_obj, dil_obj, groups, &p))
        return NULL;
    if (!(x = ovs_py_float_array(x_obj, 4, "x")) || !(w = ovs_py_float_array(w_obj, 4, "w")) ||
        ovs_py_opt_array(b_obj, 1, "b", &b))
        goto done;
    npy_intp N = PyArray_DIM(x, 0), C = PyArray_DIM(x, 1), H = PyArray_DIM(x, 2),
             W = PyArray_DIM(x, 3);
    npy_intp K = PyArray_DIM(w, 0), R = PyArray_DIM(w, 2), S = PyArray_DIM(w, 3);
    if (C % groups != 0 || K % groups != 0) {
        PyErr_Format(PyExc_ValueError,
                     "channels in (%lld) and out (%lld) must be divisible by groups = %lld",
                     (long long)C, (long long)K, groups);
        goto done;
    }
    npy_intp wshape[4] = {K, C / groups, R, S}, bshape[1] = {K};
    if (ovs_py_check_shape(w, "w", 4, wshape) || (b && ovs_py_check_shape(b, "b", 1, bshape))) goto done;
    if (R < 1 || S < 1) {
        PyErr_SetString(PyExc_ValueError, "w must have a non-empty kernel");
        goto done;
    }
    p.algo = algo;
    int64_t P = ovs_conv2d_out_size(H, R, p.stride_h, p.pad_h, p.dil_h);
    int64_t Q = ovs_conv2d_out_size(W, S, p.stride_w, p.pad_w, p.dil_w);
    if (P < 0 || Q < 0) {
        PyErr_Format(PyExc_ValueError,
                     "kernel %lldx%lld (dilation %lldx%lld) does not fit input %lldx%lld with "
                     "padding %lldx%lld",
                     (long long)R, (long long)S, (long long)p.dil_h, (long long)p.dil_w,
                     (long long)H, (long long)W, (long long)p.pad_h, (long long)p.pad_w);
        goto done;
    }
    npy_intp dims[4] = {N, K, P, Q};
    if (ovs_py_opt_array(r_obj, 4, "residual", &r) || (r && ovs_py_check_shape(r, "residual", 4, dims)))
        goto done;
    if (out_obj == Py_None) {
        if (!(out = ovs_py_new_float(4, dims))) goto done;
    } else {   /* written in place, as a model's arena: a writable C-contiguous float32 array */
        if (!PyArray_Check(out_obj) || PyArray_TYPE((PyArrayObject *)out_obj) != NPY_FLOAT32 ||
            !PyArray_ISWRITEABLE((PyArrayObject *)out_obj) ||
            !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)out_obj) ||
            !PyArray_ISALIGNED((PyArrayObject *)out_obj)) {
            PyErr_SetString(PyExc_TypeError,
                            "out must be a writable, aligned, C-contiguous float32 numpy array");
            goto done;
        }
        out = (PyArrayObject *)out_obj;
        Py_INCREF(out);
        if (ovs_py_check_shape(out, "out", 4, dims)) goto done;
        /* the conv reads x (and a residual other than out itself) while it writes out */
        if (arrays_overlap(out, x) || arrays_overlap(out, w) || (b && arrays_overlap(out, b)) ||
            (r && arrays_overlap(out, r) &&
             (PyArray_DATA(r) != PyArray_DATA(out) || alias))) {
            PyErr_SetString(PyExc_ValueError,
                            "out must not overlap x, w or b (a residual may be out itself)");
            goto done;
        }
    }
    if (ws_obj != Py_None) {   /* the caller's scratch, kept across calls as a model's arena */
        const size_t need = ovs_conv2d_scratch_floats(C, H, W, K, R, S, &p);
        if (!PyArray_Check(ws_obj) || PyArray_TYPE((PyArrayObject *)ws_obj) != NPY_FLOAT32 ||
            PyArray_NDIM((PyArrayObject *)ws_obj) != 1 ||
            !PyArray_ISWRITEABLE((PyArrayObject *)ws_obj) ||
            !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)ws_obj) ||
            !PyArray_ISALIGNED((PyArrayObject *)ws_obj)) {
            PyErr_SetString(PyExc_TypeError, "workspace must be a writable, aligned, contiguous "
                                             "1-D float32 numpy array");
            goto done;
        }
        if ((size_t)PyArray_DIM((PyArrayObject *)ws_obj, 0) < need) {
            PyErr_Format(PyExc_ValueError, "workspace has %lld floats, the conv needs %zu",
                         (long long)PyArray_DIM((PyArrayObject *)ws_obj, 0), need);
            goto done;
        }
        if (arrays_overlap((PyArrayObject *)ws_obj, out) ||
            arrays_overlap((PyArrayObject *)ws_obj, x) ||
            (r && arrays_overlap((PyArrayObject *)ws_obj, r))) {
            PyErr_SetString(PyExc_ValueError, "workspace must not overlap x, residual or out");
            goto done;
        }
        scratch = F32((PyArrayObject *)ws_obj);
        own_scratch = 0;
    } else if (!naive && use_scratch &&
               ovs_py_scratch(ovs_conv2d_scratch_floats(C, H, W, K, R, S, &p), &scratch))
        goto done;
    const float *res = F32_OR_NULL(r);
    if (r && alias) {
        memcpy(F32(out), F32(r), (size_t)PyArray_NBYTES(r));
        res = F32(out);
    }
    ovs_matrix wm = ovs_matrix_dense(F32(w), K, (C / groups) * R * S);
    if (packed) {   /* the weight packed first (ovs_conv2d_pack), as the models do at load */
        const int64_t L = (C / groups) * R * S;
        size_t n = ovs_conv2d_packed_floats(K, L, groups);
        if (n == SIZE_MAX || !(pk = ovs_malloc((n ? n : 1) * sizeof(float)))) {
            st = ovs_set_error(OVS_ERR_NOMEM, "op_conv2d: out of memory for the packed weight");
            goto done;
        }
        OVS_PY_NOGIL(st, ovs_conv2d_pack(pk, F32(w), K, L, groups));
        if (st) goto done;
        wm = ovs_conv2d_packed(pk, K, L, groups);
    }
    if (pk_obj != Py_None) {   /* packed earlier by op_conv2d_pack: w gives only the shape */
        const int64_t L = (C / groups) * R * S;
        if (packed) {
            PyErr_SetString(PyExc_ValueError, "packed and prepacked are exclusive");
            goto done;
        }
        if (!(pre = ovs_py_float_array(pk_obj, 1, "prepacked"))) goto done;
        if ((size_t)PyArray_DIM(pre, 0) != ovs_conv2d_packed_floats(K, L, groups)) {
            PyErr_Format(PyExc_ValueError, "prepacked has %lld floats, the packed w has %zu",
                         (long long)PyArray_DIM(pre, 0), ovs_conv2d_packed_floats(K, L, groups));
            goto done;
        }
        wm = ovs_conv2d_packed(F32(pre), K, L, groups);
    }
    if (naive)
        OVS_PY_NOGIL(st, ovs_conv2d_forward_naive(F32(out), F32(x), &wm, F32_OR_NULL(b), res, N, C,
                                                  H, W, K, R, S, &p, act));
    else
        for (long long i = 0; i < repeat; i++) {
            OVS_PY_NOGIL(st, ovs_conv2d_forward(F32(out), F32(x), &wm, F32_OR_NULL(b), res, N, C, H,
                                                W, K, R, S, &p, act, scratch));
            if (st) break;
        }
done:
    if (own_scratch) ovs_free(scratch);
    ovs_free(pk);
    return OVS_PY_FINISH(st, out, x, w, b, r, pre);
}

/* op_conv2d_scratch_floats(C, H, W, K, R, S, stride=1, padding=0, dilation=1, groups=1): what
 * ovs_conv2d_scratch_floats returns. */
static PyObject *py_op_conv2d_scratch_floats(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"C", "H", "W", "K", "R", "S", "stride", "padding", "dilation",
                             "groups", NULL};
    long long C, H, W, K, R, S, groups = 1;
    PyObject *stride_obj = NULL, *pad_obj = NULL, *dil_obj = NULL;
    ovs_conv2d_params p;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LLLLLL|OOOL", kwlist, &C, &H, &W, &K, &R, &S,
                                     &stride_obj, &pad_obj, &dil_obj, &groups) ||
        conv_params_from(stride_obj, pad_obj, dil_obj, groups, &p))
        return NULL;
    return PyLong_FromSize_t(ovs_conv2d_scratch_floats(C, H, W, K, R, S, &p));
}

/* op_conv2d_winograd_wins(N, C, H, W, K, R, S, padding): ovs_conv2d_winograd_wins for a
 * stride-1 undilated ungrouped conv: whether F(2x2) beats the direct conv for it (AUTO takes
 * it unless F(4x4) wins too: op_conv2d_auto_algo). */
static PyObject *py_op_conv2d_winograd_wins(PyObject *self, PyObject *args) {
    long long N, C, H, W, K, R, S, pad;
    (void)self;
    if (!PyArg_ParseTuple(args, "LLLLLLLL", &N, &C, &H, &W, &K, &R, &S, &pad)) return NULL;
    ovs_conv2d_params p = ovs_conv2d_defaults();
    p.pad_h = p.pad_w = pad;
    return PyBool_FromLong(ovs_conv2d_winograd_wins(N, C, H, W, K, R, S, &p));
}

/* op_conv2d_auto_algo(N, C, H, W, K, R, S, padding): ovs_conv2d_auto_algo for a stride-1
 * undilated ungrouped conv, as the algo name AUTO takes ('direct', 'winograd', 'winograd4'). */
static PyObject *py_op_conv2d_auto_algo(PyObject *self, PyObject *args) {
    long long N, C, H, W, K, R, S, pad;
    (void)self;
    if (!PyArg_ParseTuple(args, "LLLLLLLL", &N, &C, &H, &W, &K, &R, &S, &pad)) return NULL;
    ovs_conv2d_params p = ovs_conv2d_defaults();
    p.pad_h = p.pad_w = pad;
    const ovs_conv2d_algo a = ovs_conv2d_auto_algo(N, C, H, W, K, R, S, &p);
    return PyUnicode_FromString(a == OVS_CONV2D_WINOGRAD4  ? "winograd4"
                                : a == OVS_CONV2D_WINOGRAD ? "winograd"
                                                           : "direct");
}

/* op_conv2d_pack(w (K, Cg, R, S), groups=1, unpack=False, inplace=False): the packed weight
 * (flat; inplace: by ovs_conv2d_pack_inplace), or with unpack the weight packed then unpacked
 * (K, Cg, R, S). */
static PyObject *py_op_conv2d_pack(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"w", "groups", "unpack", "inplace", NULL};
    PyObject *w_obj;
    long long groups = 1;
    int unpack = 0, inplace = 0, st = -1;
    PyArrayObject *w = NULL, *out = NULL;
    float *pk = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|Lpp", kwlist, &w_obj, &groups, &unpack, &inplace))
        return NULL;
    if (!(w = ovs_py_float_array(w_obj, 4, "w"))) goto done;
    const int64_t K = PyArray_DIM(w, 0);
    const int64_t L = (int64_t)PyArray_DIM(w, 1) * PyArray_DIM(w, 2) * PyArray_DIM(w, 3);
    size_t n = ovs_conv2d_packed_floats(K, L, groups);
    if (n == SIZE_MAX) {
        PyErr_Format(PyExc_ValueError, "K = %lld must be divisible by groups = %lld (>= 1)",
                     (long long)K, groups);
        goto done;
    }
    if (unpack) {
        if (!(pk = ovs_malloc((n ? n : 1) * sizeof(float)))) {
            st = ovs_set_error(OVS_ERR_NOMEM, "op_conv2d_pack: out of memory");
            goto done;
        }
        if (!(out = ovs_py_new_float(4, PyArray_DIMS(w)))) goto done;
        ovs_matrix m = ovs_conv2d_packed(pk, K, L, groups);
        OVS_PY_NOGIL(st, ovs_conv2d_pack(pk, F32(w), K, L, groups));
        if (!st) OVS_PY_NOGIL(st, ovs_conv2d_unpack(F32(out), &m));
    } else {
        npy_intp dims[1] = {(npy_intp)n};
        if (!(out = ovs_py_new_float(1, dims))) goto done;
        if (inplace) {
            if (K > 0 && L > 0) memcpy(F32(out), F32(w), (size_t)(K * L) * sizeof(float));
            OVS_PY_NOGIL(st, ovs_conv2d_pack_inplace(F32(out), K, L, groups));
        } else {
            OVS_PY_NOGIL(st, ovs_conv2d_pack(F32(out), F32(w), K, L, groups));
        }
    }
done:
    ovs_free(pk);
    return OVS_PY_FINISH(st, out, w);
}

static PyObject *py_op_batchnorm_fold(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"w", "b", "gamma", "beta", "mean", "var", "eps", NULL};
    PyObject *w_obj, *b_obj, *g_obj, *be_obj, *m_obj, *v_obj;
    float eps = 1e-5f;
    PyArrayObject *w = NULL, *b = NULL, *g = NULL, *be = NULL, *m = NULL, *v = NULL;
    PyArrayObject *w_out = NULL, *b_out = NULL;
    PyObject *out = NULL;
    int st = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOO|f", kwlist, &w_obj, &b_obj, &g_obj,
                                     &be_obj, &m_obj, &v_obj, &eps))
        return NULL;
    if (!(w = ovs_py_float_array(w_obj, -1, "w")) || ovs_py_opt_array(b_obj, 1, "b", &b) ||
        !(g = ovs_py_float_array(g_obj, 1, "gamma")) ||
        !(be = ovs_py_float_array(be_obj, 1, "beta")) ||
        !(m = ovs_py_float_array(m_obj, 1, "mean")) || !(v = ovs_py_float_array(v_obj, 1, "var")))
        goto done;
    if (PyArray_NDIM(w) < 1) {
        PyErr_SetString(PyExc_ValueError, "w must have at least 1 dimension (K, ...)");
        goto done;
    }
    npy_intp K = PyArray_DIM(w, 0), kshape[1] = {K};
    int64_t L = K ? PyArray_SIZE(w) / K : 0;
    if ((b && ovs_py_check_shape(b, "b", 1, kshape)) || ovs_py_check_shape(g, "gamma", 1, kshape) ||
        ovs_py_check_shape(be, "beta", 1, kshape) || ovs_py_check_shape(m, "mean", 1, kshape) ||
        ovs_py_check_shape(v, "var", 1, kshape))
        goto done;
    /* w_out starts as a copy of w and is folded in place (the aliasing the header allows). */
    if (!(w_out = (PyArrayObject *)PyArray_NewCopy(w, NPY_CORDER)) ||
        !(b_out = ovs_py_new_float(1, kshape)))
        goto done;
    OVS_PY_NOGIL(st, ovs_batchnorm_fold(F32(w_out), F32(b_out), F32(w_out), F32_OR_NULL(b), F32(g),
                                        F32(be), F32(m), F32(v), eps, K, L));
    if (!st) out = Py_BuildValue("(OO)", w_out, b_out);
done:
    return OVS_PY_FINISH(st, out, w, b, g, be, m, v, w_out, b_out);
}

/* ---------------------------------------------------------------- pooling */
static PyObject *py_op_avgpool2d(PyObject *self, PyObject *args, PyObject *kw) {
    int st = -1;
    static char *kwlist[] = {"x", "kernel", "stride", "padding", "count_include_pad", "naive",
                             NULL};
    PyObject *x_obj, *k_obj, *s_obj = Py_None, *p_obj = NULL;
    int include_pad = 1, naive = 0;
    int64_t ker[2], str[2], pad[2] = {0, 0}, NC, H, W;
    PyArrayObject *x = NULL, *out = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OOpp", kwlist, &x_obj, &k_obj, &s_obj, &p_obj,
                                     &include_pad, &naive))
        return NULL;
    if (ovs_py_pair(k_obj, "kernel", 1, ker)) return NULL;
    if (s_obj == Py_None) {   /* torch: stride defaults to the kernel */
        str[0] = ker[0];
        str[1] = ker[1];
    } else if (ovs_py_pair(s_obj, "stride", 1, str)) {
        return NULL;
    }
    if (p_obj && ovs_py_pair(p_obj, "padding", 0, pad)) return NULL;
    if (pad[0] > ker[0] / 2 || pad[1] > ker[1] / 2) {
        PyErr_Format(PyExc_ValueError,
                     "padding (%lld, %lld) must be at most half the kernel (%lld, %lld)",
                     (long long)pad[0], (long long)pad[1], (long long)ker[0], (long long)ker[1]);
        return NULL;
    }
    if (!(x = ovs_py_float_array(x_obj, -1, "x")) || ovs_py_planes_hw(x, "x", &NC, &H, &W)) goto done;
    int64_t P = ovs_conv2d_out_size(H, ker[0], str[0], pad[0], 1);
    int64_t Q = ovs_conv2d_out_size(W, ker[1], str[1], pad[1], 1);
    if (P < 0 || Q < 0) {
        PyErr_Format(PyExc_ValueError, "kernel %lldx%lld does not fit input %lldx%lld",
                     (long long)ker[0], (long long)ker[1], (long long)H, (long long)W);
        goto done;
    }
    if (!(out = ovs_py_new_like_planes(x, P, Q))) goto done;
    OVS_PY_NOGIL(st, (naive ? ovs_avgpool2d_forward_naive : ovs_avgpool2d_forward)(
                         F32(out), F32(x), NC, H, W, ker[0], ker[1], str[0], str[1], pad[0],
                         pad[1], include_pad));
done:
    return OVS_PY_FINISH(st, out, x);
}

static PyObject *py_op_adaptive_avgpool2d(PyObject *self, PyObject *args, PyObject *kw) {
    int st = -1;
    static char *kwlist[] = {"x", "size", "naive", NULL};
    PyObject *x_obj, *size_obj;
    int naive = 0;
    int64_t size[2], NC, H, W;
    PyArrayObject *x = NULL, *out = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|p", kwlist, &x_obj, &size_obj, &naive))
        return NULL;
    if (ovs_py_pair(size_obj, "size", 0, size)) return NULL;
    if (!(x = ovs_py_float_array(x_obj, -1, "x")) || ovs_py_planes_hw(x, "x", &NC, &H, &W) ||
        !(out = ovs_py_new_like_planes(x, size[0], size[1])))
        goto done;
    OVS_PY_NOGIL(st, (naive ? ovs_adaptive_avgpool2d_forward_naive : ovs_adaptive_avgpool2d_forward)(
                         F32(out), F32(x), NC, H, W, size[0], size[1]));
done:
    return OVS_PY_FINISH(st, out, x);
}

/* ---------------------------------------------------------------- normalisation, softmax */
static PyObject *py_op_layernorm(PyObject *self, PyObject *args, PyObject *kw) {
    int st = -1;
    static char *kwlist[] = {"x", "weight", "bias", "eps", "naive", NULL};
    PyObject *x_obj, *w_obj = Py_None, *b_obj = Py_None;
    float eps = 1e-5f;
    int naive = 0;
    int64_t M, D;
    PyArrayObject *x = NULL, *w = NULL, *b = NULL, *out = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OOfp", kwlist, &x_obj, &w_obj, &b_obj, &eps,
                                     &naive))
        return NULL;
    if (!(x = ovs_py_float_array(x_obj, -1, "x")) || ovs_py_rows_d(x, "x", &M, &D) ||
        ovs_py_opt_array(w_obj, 1, "weight", &w) || ovs_py_opt_array(b_obj, 1, "bias", &b))
        goto done;
    npy_intp dshape[1] = {D};
    if ((w && ovs_py_check_shape(w, "weight", 1, dshape)) || (b && ovs_py_check_shape(b, "bias", 1, dshape)))
        goto done;
    if (!(out = ovs_py_new_float(PyArray_NDIM(x), PyArray_DIMS(x)))) goto done;
    OVS_PY_NOGIL(st, (naive ? ovs_layernorm_forward_naive : ovs_layernorm_forward)(
                         F32(out), F32(x), F32_OR_NULL(w), F32_OR_NULL(b), M, D, eps));
done:
    return OVS_PY_FINISH(st, out, x, w, b);
}

static PyObject *py_op_groupnorm(PyObject *self, PyObject *args, PyObject *kw) {
    int st = -1;
    static char *kwlist[] = {"x", "groups", "weight", "bias", "eps", "naive", NULL};
    PyObject *x_obj, *w_obj = Py_None, *b_obj = Py_None;
    long long G;
    float eps = 1e-5f;
    int naive = 0;
    PyArrayObject *x = NULL, *w = NULL, *b = NULL, *out = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OL|OOfp", kwlist, &x_obj, &G, &w_obj, &b_obj,
                                     &eps, &naive))
        return NULL;
    if (!(x = ovs_py_float_array(x_obj, -1, "x")) || ovs_py_opt_array(w_obj, 1, "weight", &w) ||
        ovs_py_opt_array(b_obj, 1, "bias", &b))
        goto done;
    int nd = PyArray_NDIM(x);
    if (nd < 2) {
        PyErr_Format(PyExc_ValueError, "x must have at least 2 dimensions (N, C, ...), got %d", nd);
        goto done;
    }
    npy_intp N = PyArray_DIM(x, 0), C = PyArray_DIM(x, 1), HW = 1;
    for (int i = 2; i < nd; i++) HW *= PyArray_DIM(x, i);
    if (G < 1 || C % G != 0) {
        PyErr_Format(PyExc_ValueError, "groups must be >= 1 and divide C = %lld, got %lld",
                     (long long)C, G);
        goto done;
    }
    npy_intp cshape[1] = {C};
    if ((w && ovs_py_check_shape(w, "weight", 1, cshape)) || (b && ovs_py_check_shape(b, "bias", 1, cshape)) ||
        !(out = ovs_py_new_float(nd, PyArray_DIMS(x))))
        goto done;
    OVS_PY_NOGIL(st, (naive ? ovs_groupnorm_forward_naive : ovs_groupnorm_forward)(
                         F32(out), F32(x), F32_OR_NULL(w), F32_OR_NULL(b), N, C, HW, G, eps));
done:
    return OVS_PY_FINISH(st, out, x, w, b);
}

static PyObject *py_op_softmax(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "naive", NULL};
    PyObject *x_obj;
    int naive = 0;
    int64_t M, D;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|p", kwlist, &x_obj, &naive)) return NULL;
    PyArrayObject *y = ovs_py_float_copy(x_obj, "x");
    if (!y) return NULL;
    if (ovs_py_rows_d(y, "x", &M, &D)) {
        Py_DECREF(y);
        return NULL;
    }
    int st;
    OVS_PY_NOGIL(st, (naive ? ovs_softmax_forward_naive : ovs_softmax_forward)(F32(y), M, D));
    return ovs_py_finish(st, (PyObject *)y, NULL, 0);
}

/* ---------------------------------------------------------------- folded one-query attention */
/* op_attention_folded(tok (N, T, C), q (N, C), wk (C, C), bk (C,), wv (C, C), bv (C,), heads,
 * scale, nkeys=None) -> (N, C): ovs_attention_folded on wk and wv packed here. */
static PyObject *py_op_attention_folded(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    int st = -1;
    static char *kwlist[] = {"tok", "q", "wk", "bk", "wv", "bv", "heads", "scale", "nkeys", NULL};
    PyObject *t_obj, *q_obj, *wk_obj, *bk_obj, *wv_obj, *bv_obj, *n_obj = Py_None;
    long long heads;
    float scale;
    PyArrayObject *tok = NULL, *q = NULL, *wk = NULL, *bk = NULL, *wv = NULL, *bv = NULL, *out = NULL;
    PyArrayObject *nk = NULL;
    float *pk = NULL, *pv = NULL, *work = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOLf|O", kwlist, &t_obj, &q_obj, &wk_obj, &bk_obj,
                                     &wv_obj, &bv_obj, &heads, &scale, &n_obj))
        return NULL;
    if (!(tok = ovs_py_float_array(t_obj, 3, "tok")) || !(q = ovs_py_float_array(q_obj, 2, "q")) ||
        !(wk = ovs_py_float_array(wk_obj, 2, "wk")) || !(bk = ovs_py_float_array(bk_obj, 1, "bk")) ||
        !(wv = ovs_py_float_array(wv_obj, 2, "wv")) || !(bv = ovs_py_float_array(bv_obj, 1, "bv")))
        goto done;
    const npy_intp N = PyArray_DIM(tok, 0), T = PyArray_DIM(tok, 1), C = PyArray_DIM(tok, 2);
    const npy_intp sq[2] = {N, C}, sw[2] = {C, C}, sb[1] = {C};
    if (ovs_py_check_shape(q, "q", 2, sq) || ovs_py_check_shape(wk, "wk", 2, sw) ||
        ovs_py_check_shape(wv, "wv", 2, sw) || ovs_py_check_shape(bk, "bk", 1, sb) ||
        ovs_py_check_shape(bv, "bv", 1, sb))
        goto done;
    if (heads < 1) {
        PyErr_Format(PyExc_ValueError, "heads must be >= 1, got %lld", heads);
        goto done;
    }
    if (n_obj != Py_None) {
        nk = (PyArrayObject *)PyArray_FROMANY(n_obj, NPY_INT64, 1, 1, NPY_ARRAY_IN_ARRAY);
        if (!nk) goto done;
        if (PyArray_DIM(nk, 0) != N) {
            PyErr_Format(PyExc_ValueError, "nkeys must have %zd entries, got %zd", (Py_ssize_t)N,
                         (Py_ssize_t)PyArray_DIM(nk, 0));
            goto done;
        }
    }
    const npy_intp od[2] = {N, C};
    if (!(out = ovs_py_new_float(2, od))) goto done;
    const size_t np_ = (size_t)((C + OVS_PACK_NR - 1) / OVS_PACK_NR) * OVS_PACK_NR * (size_t)C;
    const size_t nw = 2 * (size_t)N * (size_t)heads * (size_t)C + (size_t)N * (size_t)heads * (size_t)T;
    if (ovs_py_scratch(np_, &pk) || ovs_py_scratch(np_, &pv) || ovs_py_scratch(nw ? nw : 1, &work))
        goto done;
    const ovs_matrix mk = {OVS_MATRIX_PACKED, pk, C, C, 0}, mv = {OVS_MATRIX_PACKED, pv, C, C, 0};
    const int64_t *nkeys = nk ? (const int64_t *)PyArray_DATA(nk) : NULL;
    float *u = work, *mix = work + (size_t)N * heads * C, *sc = mix + (size_t)N * heads * C;
    OVS_PY_NOGIL(st, (st = ovs_matrix_pack(pk, F32(wk), C, C)) ? st
                     : (st = ovs_matrix_pack(pv, F32(wv), C, C)) ? st
                     : ovs_attention_folded(F32(out), F32(tok), N, T, nkeys, F32(q), &mk, F32(bk), &mv,
                                            F32(bv), heads, scale, u, sc, mix));
done:
    ovs_free(pk);
    ovs_free(pv);
    ovs_free(work);
    return OVS_PY_FINISH(st, out, tok, q, wk, bk, wv, bv, nk);
}

/* ---------------------------------------------------------------- SC-CLIP calibration */
/* op_lof_outliers(x (M, D), k=30, contamination=0.05, naive=False) -> (outlier bool (M,),
 * lof float64 (M,)) */
static PyObject *py_op_lof_outliers(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "k", "contamination", "naive", NULL};
    PyObject *x_obj;
    long long k = 30;
    float contamination = 0.05f;
    int naive = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|Lfp", kwlist, &x_obj, &k, &contamination, &naive))
        return NULL;
    PyArrayObject *x = ovs_py_float_array(x_obj, 2, "x"), *mask = NULL, *lof = NULL;
    PyObject *out = NULL;
    float *scratch = NULL;
    int st = -1;
    if (!x) return NULL;
    const int64_t M = PyArray_DIM(x, 0), D = PyArray_DIM(x, 1);
    if (k < 1) {
        PyErr_Format(PyExc_ValueError, "k must be >= 1, got %lld", k);
        goto done;
    }
    if (!(contamination >= 0.0f && contamination <= 1.0f)) {
        char buf[64];
        snprintf(buf, sizeof buf, "%g", (double)contamination);
        PyErr_Format(PyExc_ValueError, "contamination must be in [0, 1], got %s", buf);
        goto done;
    }
    npy_intp dims[1] = {(npy_intp)M};
    mask = (PyArrayObject *)PyArray_ZEROS(1, dims, NPY_BOOL, 0);
    lof = (PyArrayObject *)PyArray_ZEROS(1, dims, NPY_FLOAT64, 0);
    if (!mask || !lof) goto done;
    const size_t n = ovs_lof_scratch_floats(M, k);
    scratch = ovs_malloc((n ? n : 1) * sizeof(float));
    if (!scratch) {
        PyErr_NoMemory();
        goto done;
    }
    OVS_PY_NOGIL(st, (naive ? ovs_lof_outliers_naive : ovs_lof_outliers)(
                         (uint8_t *)PyArray_DATA(mask), (double *)PyArray_DATA(lof), F32(x), M, D,
                         k, contamination, scratch));
    if (!st) out = Py_BuildValue("(OO)", mask, lof);
done:
    ovs_free(scratch);
    return OVS_PY_FINISH(st, out, x, mask, lof);
}

/* op_neighbour_fill(x (H, W, D), outlier bool (H, W)) -> (H, W, D) */
static PyObject *py_op_neighbour_fill(PyObject *self, PyObject *args, PyObject *kw) {
    int st = -1;
    static char *kwlist[] = {"x", "outlier", NULL};
    PyObject *x_obj, *m_obj;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO", kwlist, &x_obj, &m_obj)) return NULL;
    PyArrayObject *x = ovs_py_float_array(x_obj, 3, "x"), *m = NULL, *out = NULL;
    if (!x) return NULL;
    m = (PyArrayObject *)PyArray_FROMANY(m_obj, NPY_BOOL, 2, 2, NPY_ARRAY_IN_ARRAY);
    if (!m) goto done;
    npy_intp want[2] = {PyArray_DIM(x, 0), PyArray_DIM(x, 1)};
    if (ovs_py_check_shape(m, "outlier", 2, want)) goto done;
    out = (PyArrayObject *)PyArray_ZEROS(3, PyArray_DIMS(x), NPY_FLOAT32, 0);
    if (!out) goto done;
    const int64_t H = want[0], W = want[1], D = PyArray_DIM(x, 2);
    OVS_PY_NOGIL(st, ovs_neighbour_fill(F32(out), F32(x), D, (const uint8_t *)PyArray_DATA(m), H, W,
                                        D));
done:
    return OVS_PY_FINISH(st, out, x, m);
}

/* op_similarity_aggregate(x (M, D), corr (M, M), beta, naive=False) -> (M, D) */
static PyObject *py_op_similarity_aggregate(PyObject *self, PyObject *args, PyObject *kw) {
    int st = -1;
    static char *kwlist[] = {"x", "corr", "beta", "naive", NULL};
    PyObject *x_obj, *c_obj;
    float beta;
    int naive = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOf|p", kwlist, &x_obj, &c_obj, &beta, &naive))
        return NULL;
    PyArrayObject *x = ovs_py_float_array(x_obj, 2, "x"), *c = NULL, *out = NULL;
    if (!x) return NULL;
    c = ovs_py_float_copy(c_obj, "corr");
    if (!c) goto done;
    const int64_t M = PyArray_DIM(x, 0), D = PyArray_DIM(x, 1);
    npy_intp want[2] = {(npy_intp)M, (npy_intp)M};
    if (ovs_py_check_shape(c, "corr", 2, want)) goto done;
    out = (PyArrayObject *)PyArray_ZEROS(2, PyArray_DIMS(x), NPY_FLOAT32, 0);
    if (!out) goto done;
    OVS_PY_NOGIL(st, (naive ? ovs_similarity_aggregate_naive : ovs_similarity_aggregate)(
                         F32(out), F32(x), D, F32(c), M, D, beta));
done:
    return OVS_PY_FINISH(st, out, x, c);
}

/* ---------------------------------------------------------------- attention */
static PyObject *py_op_attention(PyObject *self, PyObject *args, PyObject *kw) {
    int st = -1;
    static char *kwlist[] = {"q", "k", "v", "heads", "scale", "mask", "causal", "naive", NULL};
    PyObject *q_obj, *k_obj, *v_obj, *m_obj = Py_None;
    long long E;
    float scale;
    int causal = 0, naive = 0;
    int64_t ldq, ldk, ldv;
    PyArrayObject *q = NULL, *k = NULL, *v = NULL, *m = NULL, *out = NULL;
    float *scratch = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOLf|Opp", kwlist, &q_obj, &k_obj, &v_obj, &E,
                                     &scale, &m_obj, &causal, &naive))
        return NULL;
    if (!(q = ovs_py_rows_array(q_obj, "q", &ldq)) || !(k = ovs_py_rows_array(k_obj, "k", &ldk)) ||
        !(v = ovs_py_rows_array(v_obj, "v", &ldv)) || ovs_py_opt_array(m_obj, 2, "mask", &m))
        goto done;
    npy_intp T = PyArray_DIM(q, 0), D = PyArray_DIM(q, 1), U = PyArray_DIM(k, 0);
    if (E < 1 || D % E != 0) {
        PyErr_Format(PyExc_ValueError, "heads must be >= 1 and divide the width %lld, got %lld",
                     (long long)D, E);
        goto done;
    }
    npy_intp kshape[2] = {U, D}, mshape[2] = {T, U};
    if (ovs_py_check_shape(k, "k", 2, kshape) || ovs_py_check_shape(v, "v", 2, kshape) ||
        (m && ovs_py_check_shape(m, "mask", 2, mshape)))
        goto done;
    if (causal && T > U) {
        PyErr_Format(PyExc_ValueError, "causal attention needs at most as many queries as keys, "
                     "got %lld and %lld", (long long)T, (long long)U);
        goto done;
    }
    npy_intp dims[2] = {T, D};
    if (!(out = ovs_py_new_float(2, dims))) goto done;
    if (!naive && ovs_py_scratch((size_t)E * (size_t)T * (size_t)U, &scratch)) goto done;
    if (naive)
        OVS_PY_NOGIL(st, ovs_attention_forward_naive(F32(out), F32(q), ldq, F32(k), ldk, F32(v),
                                                     ldv, T, U, E, D / E, scale, F32_OR_NULL(m),
                                                     causal));
    else
        OVS_PY_NOGIL(st, ovs_attention_forward(F32(out), F32(q), ldq, F32(k), ldk, F32(v), ldv, T,
                                               U, E, D / E, scale, F32_OR_NULL(m), causal,
                                               scratch));
done:
    ovs_free(scratch);
    return OVS_PY_FINISH(st, out, q, k, v, m);
}

static PyObject *py_op_attention_probs(PyObject *self, PyObject *args, PyObject *kw) {
    int st = -1;
    static char *kwlist[] = {"a", "b", "scale", "mask", "causal", "naive", NULL};
    PyObject *a_obj, *b_obj, *m_obj = Py_None;
    float scale;
    int causal = 0, naive = 0;
    int64_t lda, ldb;
    PyArrayObject *a = NULL, *b = NULL, *m = NULL, *out = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOf|Opp", kwlist, &a_obj, &b_obj, &scale, &m_obj,
                                     &causal, &naive))
        return NULL;
    if (!(a = ovs_py_rows_array(a_obj, "a", &lda)) || !(b = ovs_py_rows_array(b_obj, "b", &ldb)) ||
        ovs_py_opt_array(m_obj, 2, "mask", &m))
        goto done;
    npy_intp T = PyArray_DIM(a, 0), F = PyArray_DIM(a, 1), U = PyArray_DIM(b, 0);
    npy_intp bshape[2] = {U, F}, mshape[2] = {T, U};
    if (ovs_py_check_shape(b, "b", 2, bshape) || (m && ovs_py_check_shape(m, "mask", 2, mshape))) goto done;
    if (causal && T > U) {
        PyErr_Format(PyExc_ValueError, "causal attention needs at most as many queries as keys, "
                     "got %lld and %lld", (long long)T, (long long)U);
        goto done;
    }
    if (!(out = ovs_py_new_float(2, mshape))) goto done;
    OVS_PY_NOGIL(st, (naive ? ovs_attention_probs_naive : ovs_attention_probs)(
                         F32(out), F32(a), lda, F32(b), ldb, T, U, F, scale, F32_OR_NULL(m), causal));
done:
    return OVS_PY_FINISH(st, out, a, b, m);
}






/* ---------------------------------------------------------------- argument errors */
static int add_case(PyObject *list, const char *label, int st) {
    PyObject *t = Py_BuildValue("(siss)", label, st, ovs_status_name(st),
                                st ? ovs_last_error() : "");
    if (!t) return -1;
    int r = PyList_Append(list, t);
    Py_DECREF(t);
    return r;
}

/* Calls every op with invalid sizes or arguments (never reaching memory: the checks come
 * first) and returns [(label, status, status name, message)] so that tests can check the C
 * layer's own validation, which the bindings above otherwise pre-empt. */
static PyObject *py_op_debug_invalid_calls(PyObject *self, PyObject *noargs) {
    PyObject *list = PyList_New(0);
    if (!list) return NULL;
    float buf[64] = {0};
    uint8_t img[48] = {0};
    ovs_matrix w22 = ovs_matrix_dense(buf, 2, 2), w11 = ovs_matrix_dense(buf, 1, 1);
    ovs_matrix w41 = ovs_matrix_dense(buf, 4, 1);
    ovs_matrix w_bad = w22;
    w_bad.format = (ovs_matrix_format)7;
    ovs_matrix w_conv = ovs_matrix_dense(buf, 1, 9);   /* (K=1, C=1 * 3 * 3) */
    ovs_conv2d_params p = ovs_conv2d_defaults(), p_stride0 = p, p_groups = p, p_algo = p;
    ovs_conv2d_params p_wino = p, p_wino_s2 = p, p_wino4_d2 = p;
    p_stride0.stride_h = 0;
    p_groups.groups = 2;
    p_algo.algo = (ovs_conv2d_algo)7;
    p_wino.algo = p_wino_s2.algo = OVS_CONV2D_WINOGRAD;
    p_wino_s2.stride_w = 2;
    p_wino4_d2.algo = OVS_CONV2D_WINOGRAD4;
    p_wino4_d2.dil_h = 2;
    float mean[3] = {0, 0, 0}, std1[3] = {1, 1, 1}, std0[3] = {1, 0, 1}, var[2] = {1, -2};
    const int64_t big = (int64_t)1 << 31;
#define CASE(label, expr)                                   \
    do {                                                    \
        if (add_case(list, label, (expr)) < 0) goto error;  \
    } while (0)
    CASE("matmul_wt M<0", ovs_matmul_wt(buf, 2, buf, 2, &w22, -1, 1.0f, 0.0f));
    CASE("matmul_wt lda<C", ovs_matmul_wt(buf, 2, buf, 1, &w22, 2, 1.0f, 0.0f));
    CASE("matmul_wt out NULL", ovs_matmul_wt(NULL, 2, buf, 2, &w22, 2, 1.0f, 0.0f));
    CASE("matmul_wt format", ovs_matmul_wt(buf, 2, buf, 2, &w_bad, 2, 1.0f, 0.0f));
    CASE("matmul K<0", ovs_matmul(buf, 2, buf, 2, buf, 2, 2, -1, 2, 1.0f, 0.0f));
    CASE("matmul ldb<N", ovs_matmul(buf, 2, buf, 2, buf, 1, 2, 2, 2, 1.0f, 0.0f));
    CASE("matmul b NULL", ovs_matmul(buf, 2, buf, 2, NULL, 2, 2, 2, 2, 1.0f, 0.0f));
    CASE("matmul_naive M<0", ovs_matmul_naive(buf, 2, buf, 2, buf, 2, -2, 2, 2, 1.0f, 0.0f));
    CASE("act n<0", ovs_act_forward(buf, -1, OVS_ACT_RELU));
    CASE("act unknown", ovs_act_forward(buf, 4, (ovs_act)99));
    CASE("act_naive n<0", ovs_act_forward_naive(buf, -1, OVS_ACT_GELU));
    CASE("linear M<0", ovs_linear_forward(buf, buf, &w22, NULL, NULL, -1, 2, 2, OVS_ACT_NONE));
    CASE("linear C<0", ovs_linear_forward(buf, buf, &w22, NULL, NULL, 2, -2, 2, OVS_ACT_NONE));
    CASE("linear weight shape", ovs_linear_forward(buf, buf, &w22, NULL, NULL, 2, 3, 2,
                                                   OVS_ACT_NONE));
    CASE("linear M*K overflow", ovs_linear_forward(buf, buf, &w41, NULL, NULL, INT64_MAX / 2, 1,
                                                   4, OVS_ACT_NONE));
    CASE("linear M > INT_MAX for BLAS", ovs_linear_forward(buf, buf, &w11, NULL, NULL, big, 1, 1,
                                                           OVS_ACT_NONE));
    CASE("linear_naive K<0", ovs_linear_forward_naive(buf, buf, &w22, NULL, NULL, 2, 2, -1,
                                                      OVS_ACT_NONE));
    CASE("conv N<0", ovs_conv2d_forward(buf, buf, &w_conv, NULL, NULL, -1, 1, 3, 3, 1, 3, 3, &p,
                                        OVS_ACT_NONE, buf));
    CASE("conv stride 0", ovs_conv2d_forward(buf, buf, &w_conv, NULL, NULL, 1, 1, 3, 3, 1, 3, 3,
                                             &p_stride0, OVS_ACT_NONE, buf));
    CASE("conv groups", ovs_conv2d_forward(buf, buf, &w_conv, NULL, NULL, 1, 1, 3, 3, 1, 3, 3,
                                           &p_groups, OVS_ACT_NONE, buf));
    CASE("conv kernel > input", ovs_conv2d_forward(buf, buf, &w_conv, NULL, NULL, 1, 1, 2, 2, 1,
                                                   3, 3, &p, OVS_ACT_NONE, buf));
    ovs_matrix w_cpk = ovs_conv2d_packed(buf, 1, 9, 1);   /* conv-packed, 1 group */
    CASE("conv packed groups", ovs_conv2d_forward(buf, buf, &w_cpk, NULL, NULL, 1, 2, 3, 3, 2, 3,
                                                  3, &p_groups, OVS_ACT_NONE, buf));
    CASE("conv packed to linear", ovs_linear_forward(buf, buf, &w_cpk, NULL, NULL, 1, 9, 1,
                                                     OVS_ACT_NONE));
    CASE("conv_pack K%groups", ovs_conv2d_pack(buf, buf, 3, 2, 2));
    CASE("conv_unpack dense", ovs_conv2d_unpack(buf, &w_conv));
    CASE("conv algo unknown", ovs_conv2d_forward(buf, buf, &w_conv, NULL, NULL, 1, 1, 3, 3, 1, 3,
                                                 3, &p_algo, OVS_ACT_NONE, buf));
    CASE("conv winograd stride 2", ovs_conv2d_forward(buf, buf, &w_conv, NULL, NULL, 1, 1, 3, 3,
                                                      1, 3, 3, &p_wino_s2, OVS_ACT_NONE, buf));
    ovs_matrix w_conv15 = ovs_matrix_dense(buf, 1, 15);   /* (K=1, C=1 * 3 * 5) */
    CASE("conv winograd 3x5", ovs_conv2d_forward(buf, buf, &w_conv15, NULL, NULL, 1, 1, 5, 5, 1,
                                                 3, 5, &p_wino, OVS_ACT_NONE, buf));
    CASE("conv winograd4 dilation 2", ovs_conv2d_forward(buf, buf, &w_conv, NULL, NULL, 1, 1, 5,
                                                         3, 1, 3, 3, &p_wino4_d2, OVS_ACT_NONE,
                                                         buf));
    CASE("conv_naive winograd4 dilation 2", ovs_conv2d_forward_naive(buf, buf, &w_conv, NULL,
                                                                     NULL, 1, 1, 5, 3, 1, 3, 3,
                                                                     &p_wino4_d2, OVS_ACT_NONE));
    CASE("conv_naive winograd stride 2", ovs_conv2d_forward_naive(buf, buf, &w_conv, NULL, NULL,
                                                                  1, 1, 3, 3, 1, 3, 3, &p_wino_s2,
                                                                  OVS_ACT_NONE));
    CASE("conv_naive H<0", ovs_conv2d_forward_naive(buf, buf, &w_conv, NULL, NULL, 1, 1, -3, 3, 1,
                                                    3, 3, &p, OVS_ACT_NONE));
    CASE("batchnorm_fold K<0", ovs_batchnorm_fold(buf, buf, buf, NULL, buf, buf, buf, buf, 1e-5f,
                                                  -1, 2));
    CASE("batchnorm_fold var<0", ovs_batchnorm_fold(buf, buf, buf, NULL, buf, buf, buf, var,
                                                    1e-5f, 2, 2));
    CASE("avgpool R=0", ovs_avgpool2d_forward(buf, buf, 1, 4, 4, 0, 2, 2, 2, 0, 0, 1));
    CASE("avgpool pad > R/2", ovs_avgpool2d_forward(buf, buf, 1, 4, 4, 2, 2, 2, 2, 2, 0, 1));
    CASE("avgpool_naive NC<0", ovs_avgpool2d_forward_naive(buf, buf, -1, 4, 4, 2, 2, 2, 2, 0, 0,
                                                           1));
    CASE("adaptive_avgpool P<0", ovs_adaptive_avgpool2d_forward(buf, buf, 1, 4, 4, -1, 2));
    CASE("adaptive_avgpool empty input", ovs_adaptive_avgpool2d_forward(buf, buf, 1, 0, 4, 2, 2));
    CASE("adaptive_avgpool_naive Q<0", ovs_adaptive_avgpool2d_forward_naive(buf, buf, 1, 4, 4, 2,
                                                                            -1));
    CASE("matmul_wt_naive lda<C", ovs_matmul_wt_naive(buf, 2, buf, 1, &w22, 2, 1.0f, 0.0f));
    CASE("attention_probs_naive causal T>U", ovs_attention_probs_naive(buf, buf, 2, buf, 2, 3, 2,
                                                                       2, 1.0f, NULL, 1));
    CASE("resize_bilinear_naive empty input", ovs_resize_bilinear_naive(buf, buf, 1, 0, 4, 2, 2,
                                                                        0));
    CASE("resize_bicubic_naive P<0", ovs_resize_bicubic_naive(buf, buf, 1, 4, 4, -1, 2, 0));
    CASE("layernorm D<0", ovs_layernorm_forward(buf, buf, NULL, NULL, 2, -1, 1e-5f));
    CASE("layernorm eps<0", ovs_layernorm_forward(buf, buf, NULL, NULL, 2, 2, -1.0f));
    CASE("layernorm_naive M<0", ovs_layernorm_forward_naive(buf, buf, NULL, NULL, -2, 2, 1e-5f));
    CASE("groupnorm G=0", ovs_groupnorm_forward(buf, buf, NULL, NULL, 1, 4, 4, 0, 1e-5f));
    CASE("groupnorm C%G", ovs_groupnorm_forward(buf, buf, NULL, NULL, 1, 4, 4, 3, 1e-5f));
    CASE("softmax M<0", ovs_softmax_forward(buf, -1, 4));
    CASE("softmax_naive D<0", ovs_softmax_forward_naive(buf, 4, -1));
    CASE("attention_probs T<0", ovs_attention_probs(buf, buf, 2, buf, 2, -1, 2, 2, 1.0f, NULL, 0));
    CASE("attention_probs lda<F", ovs_attention_probs(buf, buf, 1, buf, 2, 2, 2, 2, 1.0f, NULL,
                                                      0));
    CASE("attention_probs causal T>U", ovs_attention_probs(buf, buf, 2, buf, 2, 3, 2, 2, 1.0f,
                                                           NULL, 1));
    CASE("attention E<0", ovs_attention_forward(buf, buf, 4, buf, 4, buf, 4, 2, 2, -2, 2, 1.0f,
                                                NULL, 0, buf));
    CASE("attention ldv<D", ovs_attention_forward(buf, buf, 4, buf, 4, buf, 3, 2, 2, 2, 2, 1.0f,
                                                  NULL, 0, buf));
    CASE("attention scratch NULL", ovs_attention_forward(buf, buf, 4, buf, 4, buf, 4, 2, 2, 2, 2,
                                                         1.0f, NULL, 0, NULL));
    CASE("attention_naive U<0", ovs_attention_forward_naive(buf, buf, 4, buf, 4, buf, 4, 2, -2, 2,
                                                            2, 1.0f, NULL, 0));
    CASE("resize_bilinear P<0", ovs_resize_bilinear(buf, buf, 1, 4, 4, -1, 4, 0));
    CASE("resize_bilinear empty input", ovs_resize_bilinear(buf, buf, 1, 0, 4, 2, 2, 0));
    CASE("resize_bicubic W<0", ovs_resize_bicubic(buf, buf, 1, 4, -4, 2, 2, 1));
    CASE("resize_u8_pil H<0", ovs_resize_u8_pil_bicubic(img, img, -1, 4, 12, 3, 2, 2));
    CASE("resize_u8_pil pixel stride", ovs_resize_u8_pil_bicubic(img, img, 4, 4, 12, 2, 2, 2));
    CASE("resize_u8_pil empty input", ovs_resize_u8_pil_bicubic(img, img, 0, 4, 12, 3, 2, 2));
    CASE("normalize_u8 P<0", ovs_normalize_u8(buf, img, 4, 4, 12, 3, 0, 0, -1, 2, mean, std1, 0));
    CASE("normalize_u8 crop outside", ovs_normalize_u8(buf, img, 4, 4, 12, 3, 2, 0, 3, 2, mean,
                                                       std1, 0));
    CASE("normalize_u8 std 0", ovs_normalize_u8(buf, img, 4, 4, 12, 3, 0, 0, 2, 2, mean, std0,
                                                0));
    const int64_t dil2[2] = {8, 16}, dil0[2] = {8, 0};
    CASE("pamr H<0", ovs_pamr_forward(buf, buf, buf, 1, 3, -1, 4, dil2, 2, 10, buf));
    CASE("pamr steps<0", ovs_pamr_forward(buf, buf, buf, 1, 3, 2, 2, dil2, 2, -1, buf));
    CASE("pamr dilation 0", ovs_pamr_forward(buf, buf, buf, 1, 3, 2, 2, dil0, 2, 1, buf));
    CASE("pamr no dilations", ovs_pamr_forward(buf, buf, buf, 1, 3, 2, 2, dil2, 0, 1, buf));
    CASE("pamr K=0", ovs_pamr_forward(buf, buf, buf, 1, 0, 2, 2, dil2, 2, 1, buf));
    CASE("pamr scratch NULL", ovs_pamr_forward(buf, buf, buf, 1, 3, 2, 2, dil2, 2, 1, NULL));
    CASE("pamr_propagate scratch NULL", ovs_pamr_propagate(buf, buf, buf, 1, 2, 2, dil2, 2, 1,
                                                           NULL));
    CASE("pamr_affinity W<0", ovs_pamr_affinity(buf, buf, 3, 2, -2, dil2, 2));
    CASE("pamr_naive C<0", ovs_pamr_forward_naive(buf, buf, buf, -1, 3, 2, 2, dil2, 2, 1));
#undef CASE
    return list;
error:
    Py_DECREF(list);
    return NULL;
}


/* seg_window_average(smalls (nwin, C, gh, gw), origins int64 (nwin, 2), Hp, Wp, wh, ww, h, w,
 * naive=False) -> (C, Hp, Wp): ovs_seg_window_average, the windows' average of Segmenter.logits. */
static PyObject *py_seg_window_average(PyObject *self, PyObject *args, PyObject *kw) {
    int st = -1, naive = 0;
    static char *kwlist[] = {"smalls", "origins", "Hp", "Wp", "wh", "ww", "h", "w", "naive", "bounds", NULL};
    int want_bounds = 0;
    PyArrayObject *bnd = NULL;
    PyObject *s_obj, *o_obj;
    long long Hp, Wp, wh, ww, h, w;
    PyArrayObject *sm = NULL, *org = NULL, *out = NULL;
    int64_t *wy = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOLLLLLL|pp", kwlist, &s_obj, &o_obj, &Hp, &Wp, &wh, &ww, &h, &w,
                                     &naive, &want_bounds))
        return NULL;
    if (!(sm = ovs_py_float_array(s_obj, 4, "smalls"))) goto done;
    org = (PyArrayObject *)PyArray_FROMANY(o_obj, NPY_INT64, 2, 2, NPY_ARRAY_IN_ARRAY);
    if (!org) goto done;
    const npy_intp *d = PyArray_DIMS(sm);
    if (PyArray_DIM(org, 0) != d[0] || PyArray_DIM(org, 1) != 2) {
        PyErr_SetString(PyExc_ValueError, "origins must be (nwin, 2) for smalls (nwin, C, gh, gw)");
        goto done;
    }
    if (Hp <= 0 || Wp <= 0 || Hp * Wp > ((long long)1 << 40) / (d[1] > 0 ? d[1] : 1)) {
        PyErr_SetString(PyExc_ValueError, "Hp and Wp must be positive and the map not absurdly large");
        goto done;
    }
    if (!(wy = PyMem_Malloc(2 * (size_t)(d[0] > 0 ? d[0] : 1) * sizeof(int64_t)))) { PyErr_NoMemory(); goto done; }
    const int64_t *o = (const int64_t *)PyArray_DATA(org);
    for (npy_intp j = 0; j < d[0]; j++) wy[j] = o[2 * j], wy[d[0] + j] = o[2 * j + 1];
    npy_intp dims[3] = {d[1], (npy_intp)Hp, (npy_intp)Wp};
    if (!(out = ovs_py_new_float(3, dims))) goto done;
    if (want_bounds) {
        npy_intp bd[1] = {(npy_intp)ovs_seg_block_bounds_floats(d[1], Hp, Wp)};
        if (!(bnd = ovs_py_new_float(1, bd))) goto done;
    }
    OVS_PY_NOGIL(st, ovs_seg_window_average(F32(out), d[1], Hp, Wp, F32(sm), d[0], wy, wy + d[0], d[2], d[3], wh, ww,
                                            h, w, naive, bnd ? F32(bnd) : NULL));
done:
    PyMem_Free(wy);
    PyObject *res = OVS_PY_FINISH(st, out, sm, org);
    if (!want_bounds || !res) {
        Py_XDECREF(bnd);
        return res;
    }
    return Py_BuildValue("(NN)", res, (PyObject *)bnd);
}

/* seg_labels_bounded(logits (C, h, w), bounds, out_h, out_w, logit_scale=1, bg_threshold=0,
 * bg_label=-1): ovs_seg_labels_bounded with bounds from seg_window_average(..., bounds=True). */
static PyObject *py_seg_labels_bounded(PyObject *self, PyObject *args, PyObject *kw) {
    int st = -1;
    static char *kwlist[] = {"logits", "bounds", "out_h", "out_w", "logit_scale", "bg_threshold", "bg_label", NULL};
    PyObject *l_obj, *b_obj;
    long long H, W;
    double scale = 1.0, thr = 0.0;
    int bg_label = -1;
    PyArrayObject *lg = NULL, *bd = NULL, *out = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOLL|ddi", kwlist, &l_obj, &b_obj, &H, &W, &scale, &thr, &bg_label))
        return NULL;
    if (!(lg = ovs_py_float_array(l_obj, 3, "logits (C, h, w)")) || !(bd = ovs_py_float_array(b_obj, 1, "bounds")))
        goto done;
    const int64_t C = PyArray_DIM(lg, 0), h = PyArray_DIM(lg, 1), w = PyArray_DIM(lg, 2);
    if (C < 1 || h < 1 || w < 1 || H < 1 || W < 1 || H > 65536 || W > 65536 ||
        (size_t)PyArray_DIM(bd, 0) != ovs_seg_block_bounds_floats(C, h, w)) {
        PyErr_SetString(PyExc_ValueError, "seg_labels_bounded: empty logits, output size outside 1..65536 or "
                                          "bounds not of these logits' size");
        goto done;
    }
    npy_intp d2[2] = {H, W};
    if (!(out = (PyArrayObject *)PyArray_SimpleNew(2, d2, NPY_INT32))) goto done;
    OVS_PY_NOGIL(st, ovs_seg_labels_bounded(PyArray_DATA(out), F32(lg), C, h, w, H, W, (float)scale, (float)thr,
                                            bg_label, F32(bd)));
done:
    return OVS_PY_FINISH(st, out, lg, bd);
}

/* The naive twins of the label stages (py_methods.c parses them). */
OVS_PY_VARIANT(py_seg_labels_naive, ovs_py_seg_final, 2)
OVS_PY_VARIANT(py_seg_labels_grouped_naive, ovs_py_seg_grouped, 1)

/* ---------------------------------------------------------------- allocation failure injection */
static PyObject *py_debug_fail_alloc(PyObject *self, PyObject *arg) {
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    return PyLong_FromLongLong(ovs_debug_fail_alloc(n));
}

/* ---------------------------------------------------------------- packed-weight GEMM hooks */
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

/* op_fma_peak(threads, iters): GFLOP/s of ovs_fma_peak (the GIL released while it runs). */
static PyObject *py_op_fma_peak(PyObject *self, PyObject *args) {
    int threads;
    long long iters;
    (void)self;
    if (!PyArg_ParseTuple(args, "iL", &threads, &iters)) return NULL;
    double g = 0.0;
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = ovs_fma_peak(threads, (int64_t)iters, &g);
    Py_END_ALLOW_THREADS
    if (st) return ovs_py_raise(st);
    return PyFloat_FromDouble(g);
}

static PyObject *py_gemm_isa(PyObject *self, PyObject *noargs) {
    return PyUnicode_FromString(ovs_gemm_isa_name());
}

static PyObject *py_gemm_release_workspace(PyObject *self, PyObject *noargs) {
    ovs_gemm_release_workspace();
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- registration */
/* The test-only keyword bindings, X(name, doc after the name): py_<name> registered as
 * _core.<name>. */
#define OVS_PY_TESTOPS(X)                                                                   \
    X(op_lof_outliers, "(x (M, D), k=30, contamination=0.05, naive=False) -> (outlier "     \
      "bool, lof float64)")                                                                 \
    X(op_neighbour_fill, "(x (H, W, D), outlier bool (H, W)) -> (H, W, D)")                 \
    X(op_similarity_aggregate, "(x (M, D), corr (M, M), beta, naive=False) -> (M, D)")      \
    X(op_matmul_wt, "(a, w, alpha=1.0, beta=0.0, out=None, packed=False): out = alpha a "   \
      "@ w.T + beta out; packed=True packs w first and runs the packed-weight GEMM; "       \
      "naive=True the naive twin.")                                                         \
    X(op_matmul, "(a, b, alpha=1.0, beta=0.0, out=None, naive=False): out = alpha a @ b "   \
      "+ beta out; a's and b's rows may be strided (column slices).")                       \
    X(op_act, "(x, act, naive=False): act in 'none', 'relu', 'gelu', 'quickgelu', "         \
      "'sigmoid'.")                                                                         \
    X(op_conv2d, "(x, w, b=None, residual=None, stride=1, padding=0, dilation=1, "          \
      "groups=1, act='none', naive=False, residual_alias=False, packed=False, "             \
      "prepacked=None, scratch=True, algo='auto', repeat=1, out=None, workspace=None): "     \
      "packed packs w first; "                                                               \
      "prepacked is w packed earlier by op_conv2d_pack (w then gives the shape); scratch: "  \
      "pass scratch sized by ovs_conv2d_scratch_floats (as the models, from their arenas), " \
      "else NULL (the conv allocates its input copy); algo 'auto', 'direct', 'winograd' "   \
      "or 'winograd4' (ovs_conv2d_params.algo; naive=True: 'winograd' / 'winograd4' are "   \
      "the Winograd twins); repeat runs the fast conv that many times (timing); out: the "  \
      "(N, K, P, Q) float32 array written in place (returned); workspace: a 1-D float32 "   \
      "array of at least op_conv2d_scratch_floats floats used as that scratch (out and "    \
      "workspace kept across calls, as a model's arena).")                                  \
    X(op_conv2d_scratch_floats, "(C, H, W, K, R, S, stride=1, padding=0, dilation=1, "     \
      "groups=1): the scratch floats ovs_conv2d_forward may use (its input copy).")        \
    X(op_conv2d_pack, "(w, groups=1, unpack=False, inplace=False): the conv weight "        \
      "packed by ovs_conv2d_pack (flat; inplace: ovs_conv2d_pack_inplace), or packed and "  \
      "unpacked again.")                                                                    \
    X(op_batchnorm_fold, "(w, b, gamma, beta, mean, var, eps=1e-5) -> (w', b').")           \
    X(op_avgpool2d, "(x, kernel, stride=None, padding=0, count_include_pad=True, "          \
      "naive=False).")                                                                      \
    X(op_adaptive_avgpool2d, "(x, size, naive=False).")                                     \
    X(op_layernorm, "(x, weight=None, bias=None, eps=1e-5, naive=False) over the last "     \
      "dim.")                                                                               \
    X(op_groupnorm, "(x, groups, weight=None, bias=None, eps=1e-5, naive=False) for x "     \
      "(N, C, ...).")                                                                       \
    X(op_softmax, "(x, naive=False) over the last dim.")                                    \
    X(op_attention, "(q, k, v, heads, scale, mask=None, causal=False, naive=False); q "     \
      "(T, D), k and v (U, D), rows may be strided (column slices).")                       \
    X(op_attention_probs, "(a, b, scale, mask=None, causal=False, naive=False) -> "         \
      "softmax(scale a b^T + mask).")                                                       \
    X(seg_window_average, "(smalls (nwin, C, gh, gw), origins (nwin, 2), Hp, Wp, wh, ww, "  \
      "h, w, naive=False, bounds=False) -> (C, Hp, Wp): the windows' average of "           \
      "Segmenter.logits; bounds=True: (logits, the label stage's block bounds).")          \
    X(seg_labels_bounded, "(logits, bounds, out_h, out_w, logit_scale=1.0, "                \
      "bg_threshold=0.0, bg_label=-1): seg_labels given seg_window_average's bounds.")     \
    X(seg_labels_naive, "(same arguments): the test twin of seg_labels, every class at "    \
      "every pixel (same labels).")                                                         \
    X(seg_labels_grouped_naive, "(same arguments): the test twin of seg_labels_grouped, "   \
      "every probability materialised.")                                                    \
    X(op_attention_folded, "(tok, q, wk, bk, wv, bv, heads, scale, nkeys=None) -> (N, C): "  \
      "one query per sequence with k and v folded into it (ovs_attention_folded).")          \
    X(op_matrix_pack, "(w) -> w (K, C) packed as (ceil(K/16), C, 16) panels for the GEMM "  \
      "kernels.")                                                                           \
    X(op_gemm_packed_naive, "(a, packed, K) -> a @ W.T from the packed W, one fmaf chain "  \
      "per element.")                                                                       \
    X(op_gemm_packed, "(a, packed, K) -> a @ W.T with the packed-weight GEMM on an already " \
      "packed W.")
/* The test hooks taking positional or no arguments, X(name, flags, doc). */
#define OVS_PY_TESTHOOKS(X)                                                                 \
    X(op_conv2d_winograd_wins, METH_VARARGS, "(N, C, H, W, K, R, S, padding) -> bool: "     \
      "whether F(2x2) beats the direct conv for that stride-1 conv "                        \
      "(ovs_conv2d_winograd_wins; AUTO's choice: op_conv2d_auto_algo).")                    \
    X(op_conv2d_auto_algo, METH_VARARGS, "(N, C, H, W, K, R, S, padding) -> str: the path " \
      "algo AUTO takes for that stride-1 conv: 'direct', 'winograd' or 'winograd4' "        \
      "(ovs_conv2d_auto_algo).")                                                            \
    X(debug_fail_alloc, METH_O, "(n) -> allocations made since the last call; the n-th "    \
      "allocation from now fails (0 = off).")                                               \
    X(gemm_set_isa, METH_O, "(name) -> name in use; 'auto', 'portable', 'avx2' or "         \
      "'avx512' (process-wide; RuntimeError-like OvsError if the CPU lacks it).")           \
    X(gemm_isa, METH_NOARGS, "() -> the packed GEMM's kernels in use.")                     \
    X(op_fma_peak, METH_VARARGS, "(threads, iters) -> GFLOP/s: the FMA rate of the GEMM's "  \
      "ISA, iters rounds of 12 register-only vector FMAs on each thread (ovs_fma_peak).")    \
    X(gemm_release_workspace, METH_NOARGS, "() -> None: frees the calling thread's "        \
      "packed-GEMM workspace (kept between calls).")                                        \
    X(op_debug_invalid_calls, METH_NOARGS, "() -> [(label, status, name, message)]: every " \
      "op called with invalid arguments.")
#define OVS_PY_TESTOP_ROW(name, doc) OVS_PY_ROW(py_, name, OVS_PY_KW, doc),
#define OVS_PY_TESTHOOK_ROW(name, flags, doc) OVS_PY_ROW(py_, name, flags, doc),
static PyMethodDef testops_methods[] = {
    OVS_PY_TESTOPS(OVS_PY_TESTOP_ROW)
    OVS_PY_TESTHOOKS(OVS_PY_TESTHOOK_ROW)
    OVS_PY_OPS(OVS_PY_OP_TEST)
    OVS_PY_M2F_OPS(OVS_PY_OP_TEST)
    {NULL, NULL, 0, NULL},
};

int ovs_py_register_testops(PyObject *m) { return PyModule_AddFunctions(m, testops_methods); }
