/* The ops production Python calls (ovs/image.py, ovs/segment.py, ovs/frameworks.py):
 * _core.resize_u8_pil, _core.normalize_u8, _core.resize_u8_normalize (CLIP preprocessing of uint8
 * RGB images), _core.resize, _core.pamr, _core.linear. Each converts its array arguments (a copy
 * only when needed), checks shapes with ValueErrors naming the argument, allocates the output
 * with the GIL held and runs the C op without it. `naive=True`, where accepted, selects the
 * plain twin; the tests reach these functions also as _core.op_<name> (py_testops.c). */
#include "python/pyovs.h"

#include "ovs/ops.h"

#include <string.h>

/* ---------------------------------------------------------------- linear */
PyObject *ovs_py_linear(PyObject *self, PyObject *args, PyObject *kw) {
    int st = -1;
    static char *kwlist[] = {"x", "w", "b", "residual", "act", "naive", "residual_alias",
                             "packed", NULL};
    PyObject *x_obj, *w_obj, *b_obj = Py_None, *r_obj = Py_None;
    const char *act_name = "none";
    int naive = 0, alias = 0, packed = 0;
    float *wbuf = NULL;
    ovs_act act;
    PyArrayObject *x = NULL, *w = NULL, *b = NULL, *r = NULL, *out = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OOsppp", kwlist, &x_obj, &w_obj, &b_obj,
                                     &r_obj, &act_name, &naive, &alias, &packed))
        return NULL;
    if (ovs_py_parse_act(act_name, 1, &act)) return NULL;
    if (!(x = ovs_py_float_array(x_obj, -1, "x")) || !(w = ovs_py_float_array(w_obj, 2, "w")) ||
        ovs_py_opt_array(b_obj, 1, "b", &b))
        goto done;
    int nd = PyArray_NDIM(x);
    if (nd < 1) {
        PyErr_SetString(PyExc_ValueError, "x must have at least 1 dimension (..., C)");
        goto done;
    }
    npy_intp C = PyArray_DIM(x, nd - 1), K = PyArray_DIM(w, 0), M = 1;
    for (int i = 0; i < nd - 1; i++) M *= PyArray_DIM(x, i);
    npy_intp wshape[2] = {K, C}, bshape[1] = {K};
    if (ovs_py_check_shape(w, "w", 2, wshape) || (b && ovs_py_check_shape(b, "b", 1, bshape))) goto done;
    npy_intp dims[NPY_MAXDIMS];
    memcpy(dims, PyArray_DIMS(x), (size_t)nd * sizeof(npy_intp));
    dims[nd - 1] = K;
    if (ovs_py_opt_array(r_obj, nd, "residual", &r) || (r && ovs_py_check_shape(r, "residual", nd, dims)))
        goto done;
    if (!(out = ovs_py_new_float(nd, dims))) goto done;
    const float *res = F32_OR_NULL(r);
    if (r && alias) {
        /* Exercise the in-place residual path: out starts as the residual. */
        memcpy(F32(out), F32(r), (size_t)PyArray_NBYTES(r));
        res = F32(out);
    }
    ovs_matrix wm;
    if (ovs_py_weight_matrix(&wm, &wbuf, w, K, C, packed)) goto done;
    OVS_PY_NOGIL(st, (naive ? ovs_linear_forward_naive : ovs_linear_forward)(
                         F32(out), F32(x), &wm, F32_OR_NULL(b), res, M, C, K, act));
done:
    ovs_free(wbuf);
    return OVS_PY_FINISH(st, out, x, w, b, r);
}

/* ---------------------------------------------------------------- resize, images */
PyObject *ovs_py_resize(PyObject *self, PyObject *args, PyObject *kw) {
    int st = -1;
    static char *kwlist[] = {"x", "size", "mode", "align_corners", "naive", NULL};
    PyObject *x_obj, *size_obj;
    const char *mode = "bilinear";
    int align = 0, naive = 0;
    int64_t size[2], NC, H, W;
    PyArrayObject *x = NULL, *out = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|spp", kwlist, &x_obj, &size_obj, &mode, &align,
                                     &naive))
        return NULL;
    int cubic;
    if (!strcmp(mode, "bilinear")) cubic = 0;
    else if (!strcmp(mode, "bicubic")) cubic = 1;
    else {
        PyErr_Format(PyExc_ValueError, "mode must be 'bilinear' or 'bicubic', got '%s'", mode);
        return NULL;
    }
    if (ovs_py_pair(size_obj, "size", 0, size)) return NULL;
    if (!(x = ovs_py_float_array(x_obj, -1, "x")) || ovs_py_planes_hw(x, "x", &NC, &H, &W) ||
        !(out = ovs_py_new_like_planes(x, size[0], size[1])))
        goto done;
    if (naive)
        OVS_PY_NOGIL(st, (cubic ? ovs_resize_bicubic_naive : ovs_resize_bilinear_naive)(
                             F32(out), F32(x), NC, H, W, size[0], size[1], align));
    else
        OVS_PY_NOGIL(st, (cubic ? ovs_resize_bicubic : ovs_resize_bilinear)(
                             F32(out), F32(x), NC, H, W, size[0], size[1], align));
done:
    return OVS_PY_FINISH(st, out, x);
}

PyObject *ovs_py_resize_u8_pil(PyObject *self, PyObject *args, PyObject *kw) {
    int st = -1;
    static char *kwlist[] = {"img", "size", NULL};
    PyObject *img_obj, *size_obj;
    int64_t size[2], rs, ps;
    PyArrayObject *img = NULL, *out = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO", kwlist, &img_obj, &size_obj)) return NULL;
    if (ovs_py_pair(size_obj, "size", 0, size)) return NULL;
    if (!(img = ovs_py_uint8_image(img_obj, "img", &rs, &ps))) return NULL;
    npy_intp dims[3] = {size[0], size[1], 3};
    if (!(out = (PyArrayObject *)PyArray_SimpleNew(3, dims, NPY_UINT8))) goto done;
    OVS_PY_NOGIL(st, ovs_resize_u8_pil_bicubic((uint8_t *)PyArray_DATA(out),
                                               (const uint8_t *)PyArray_DATA(img),
                                               PyArray_DIM(img, 0), PyArray_DIM(img, 1), rs, ps,
                                               size[0], size[1]));
done:
    return OVS_PY_FINISH(st, out, img);
}

PyObject *ovs_py_normalize_u8(PyObject *self, PyObject *args, PyObject *kw) {
    int st = -1;
    static char *kwlist[] = {"img", "crop_box", "mean", "std", "scale255", NULL};
    PyObject *img_obj, *box_obj, *mean_obj, *std_obj;
    int scale255 = 0;
    float mean[3], std[3];
    int64_t rs, ps, box[4];
    PyArrayObject *img = NULL, *out = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|p", kwlist, &img_obj, &box_obj, &mean_obj,
                                     &std_obj, &scale255))
        return NULL;
    if (ovs_py_rgb(mean_obj, "mean", mean) || ovs_py_rgb(std_obj, "std", std)) return NULL;
    if (!(img = ovs_py_uint8_image(img_obj, "img", &rs, &ps))) return NULL;
    int64_t H = PyArray_DIM(img, 0), W = PyArray_DIM(img, 1);
    if (box_obj == Py_None) {
        box[0] = box[1] = 0;
        box[2] = H;
        box[3] = W;
    } else {
        if (ovs_py_int64_n(box_obj, 4, PyExc_ValueError, "crop_box",
                           "must be None or (top, left, height, width)", box))
            goto done;
        if (box[0] < 0 || box[1] < 0 || box[2] < 0 || box[3] < 0 || box[0] + box[2] > H ||
            box[1] + box[3] > W) {
            PyErr_Format(PyExc_ValueError,
                         "crop_box (top %lld, left %lld, height %lld, width %lld) must lie "
                         "inside the %lldx%lld image",
                         (long long)box[0], (long long)box[1], (long long)box[2],
                         (long long)box[3], (long long)H, (long long)W);
            goto done;
        }
    }
    npy_intp dims[3] = {3, box[2], box[3]};
    if (!(out = ovs_py_new_float(3, dims))) goto done;
    OVS_PY_NOGIL(st, ovs_normalize_u8(F32(out), (const uint8_t *)PyArray_DATA(img), H, W, rs, ps,
                                      box[0], box[1], box[2], box[3], mean, std, scale255));
done:
    return OVS_PY_FINISH(st, out, img);
}

PyObject *ovs_py_resize_u8_normalize(PyObject *self, PyObject *args, PyObject *kw) {
    int st = -1;
    static char *kwlist[] = {"img", "size", "mean", "std", NULL};
    PyObject *img_obj, *size_obj, *mean_obj, *std_obj;
    float mean[3], std[3];
    int64_t rs, ps, size[2];
    PyArrayObject *img = NULL, *out = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO", kwlist, &img_obj, &size_obj, &mean_obj,
                                     &std_obj))
        return NULL;
    if (ovs_py_pair(size_obj, "size", 1, size) || ovs_py_rgb(mean_obj, "mean", mean) ||
        ovs_py_rgb(std_obj, "std", std))
        return NULL;
    if (!(img = ovs_py_uint8_image(img_obj, "img", &rs, &ps))) return NULL;
    npy_intp dims[3] = {3, size[0], size[1]};
    if (!(out = ovs_py_new_float(3, dims))) goto done;
    OVS_PY_NOGIL(st, ovs_resize_bilinear_u8_normalize(F32(out), (const uint8_t *)PyArray_DATA(img),
                                                      PyArray_DIM(img, 0), PyArray_DIM(img, 1), rs,
                                                      ps, size[0], size[1], mean, std));
done:
    return OVS_PY_FINISH(st, out, img);
}

/* ---------------------------------------------------------------- PAMR */
PyObject *ovs_py_pamr(PyObject *self, PyObject *args, PyObject *kw) {
    int st = -1;
    static char *kwlist[] = {"mask", "image", "steps", "dilations", "naive", NULL};
    PyObject *m_obj, *i_obj, *d_obj = NULL;
    long long steps;
    int naive = 0;
    int64_t dil[16] = {8, 16}, nd = 2;
    PyArrayObject *m = NULL, *img = NULL, *out = NULL;
    float *scratch = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOL|Op", kwlist, &m_obj, &i_obj, &steps, &d_obj,
                                     &naive))
        return NULL;
    if (ovs_py_int64_seq(d_obj, "dilations", dil, 16, &nd)) return NULL;
    if (!(m = ovs_py_float_array(m_obj, 3, "mask (C, H, W)")) ||
        !(img = ovs_py_float_array(i_obj, 3, "image (K, H, W)")))
        goto done;
    const int64_t C = PyArray_DIM(m, 0), H = PyArray_DIM(m, 1), W = PyArray_DIM(m, 2),
                  K = PyArray_DIM(img, 0);
    if (PyArray_DIM(img, 1) != H || PyArray_DIM(img, 2) != W) {
        PyErr_Format(PyExc_ValueError, "image (K, H, W) must have the mask's size %lldx%lld, got "
                     "%lldx%lld", (long long)H, (long long)W, (long long)PyArray_DIM(img, 1),
                     (long long)PyArray_DIM(img, 2));
        goto done;
    }
    if (!(out = ovs_py_new_like_planes(m, H, W))) goto done;
    if (!naive && ovs_py_scratch(ovs_pamr_scratch_floats(C, H, W, nd), &scratch)) goto done;
    if (naive)
        OVS_PY_NOGIL(st, ovs_pamr_forward_naive(F32(out), F32(m), F32(img), C, K, H, W, dil, nd,
                                                steps));
    else
        OVS_PY_NOGIL(st, ovs_pamr_forward(F32(out), F32(m), F32(img), C, K, H, W, dil, nd, steps,
                                          scratch));
done:
    ovs_free(scratch);
    return OVS_PY_FINISH(st, out, m, img);
}

static PyMethodDef ops_methods[] = {
    OVS_PY_OPS(OVS_PY_OP_PRODUCTION)
    {NULL, NULL, 0, NULL},
};

int ovs_py_register_ops(PyObject *m) { return PyModule_AddFunctions(m, ops_methods); }
