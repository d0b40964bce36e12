/* Python bindings of the metrics (include/ovs/metrics.h), used by ovs/metrics.py:
 *   _core.confusion_accumulate(conf, pred, gt, num_classes, ignore_label, naive=False)
 *   _core.confusion_scores(conf, num_classes, convention) -> (miou, fwiou, macc, pacc,
 *                                                              present, seen, iou, acc)
 * Label maps must be uint8/uint16/int32/int64 arrays of one shape (made C-contiguous, a copy
 * only when needed); conf a writable C-contiguous int64 (C+1, C+1) array, updated in place. */
#include "python/pyovs.h"

#include "ovs/metrics.h"

static int label_type(PyArrayObject *a, ovs_label_type *t) {
    switch (PyArray_TYPE(a)) {
    case NPY_UINT8: *t = OVS_LABEL_U8; return 0;
    case NPY_UINT16: *t = OVS_LABEL_U16; return 0;
    case NPY_INT32: *t = OVS_LABEL_I32; return 0;
    case NPY_INT64: *t = OVS_LABEL_I64; return 0;
    default: return -1;
    }
}

/* A new reference to obj as a C-contiguous array of one of the four label types. */
static PyArrayObject *label_array(PyObject *obj, const char *what, ovs_label_type *t) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy array, got %.100s", what, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    if (label_type((PyArrayObject *)obj, t) < 0) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype uint8, uint16, int32 or int64, got %R", what,
                     (PyObject *)PyArray_DESCR((PyArrayObject *)obj));
        return NULL;
    }
    return (PyArrayObject *)PyArray_FROMANY(obj, PyArray_TYPE((PyArrayObject *)obj), 0, 0, NPY_ARRAY_CARRAY_RO);
}

/* num_classes must be >= 1 and conf a (writable,) C-contiguous int64 (C+1, C+1) array. */
static int check_conf(PyObject *obj, long long C, int writable) {
    if (C < 1) {
        PyErr_Format(PyExc_ValueError, "num_classes must be >= 1, got %lld", C);
        return -1;
    }
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "confusion matrix must be a numpy array, got %.100s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != NPY_INT64) {
        PyErr_Format(PyExc_TypeError, "confusion matrix must have dtype int64, got %R", (PyObject *)PyArray_DESCR(a));
        return -1;
    }
    if (PyArray_NDIM(a) != 2 || PyArray_DIM(a, 0) != C + 1 || PyArray_DIM(a, 1) != C + 1) {
        PyErr_Format(PyExc_ValueError, "confusion matrix must have shape (%lld, %lld) for %lld classes", C + 1,
                     C + 1, C);
        return -1;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a) || (writable && !PyArray_ISWRITEABLE(a))) {
        PyErr_SetString(PyExc_ValueError, "confusion matrix must be a C-contiguous, aligned (writable) array");
        return -1;
    }
    return 0;
}

static PyObject *py_confusion_accumulate(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"conf", "pred", "gt", "num_classes", "ignore_label", "naive", NULL};
    PyObject *conf_obj, *pred_obj, *gt_obj;
    long long C, ignore;
    int naive = 0, st = -1;
    PyArrayObject *pred = NULL, *gt = NULL;
    ovs_label_type pt, gtt;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOLL|p", kwlist, &conf_obj, &pred_obj, &gt_obj, &C, &ignore,
                                     &naive))
        return NULL;
    if (check_conf(conf_obj, C, 1) < 0) return NULL;
    if (!(pred = label_array(pred_obj, "pred", &pt)) || !(gt = label_array(gt_obj, "gt", &gtt)))
        goto done;
    if (!PyArray_SAMESHAPE(pred, gt)) {
        PyObject *ps = PyObject_GetAttrString((PyObject *)pred, "shape");
        PyObject *gs = PyObject_GetAttrString((PyObject *)gt, "shape");
        if (ps && gs)
            PyErr_Format(PyExc_ValueError,
                         "pred shape %R differs from gt shape %R: predictions are compared at the ground "
                         "truth's resolution",
                         ps, gs);
        Py_XDECREF(ps);
        Py_XDECREF(gs);
        goto done;
    }
    int64_t P = (int64_t)PyArray_SIZE(gt);
    int64_t *conf = (int64_t *)PyArray_DATA((PyArrayObject *)conf_obj);
    const void *pd = PyArray_DATA(pred), *gd = PyArray_DATA(gt);
    OVS_PY_NOGIL(st, (naive ? ovs_confusion_accumulate_naive : ovs_confusion_accumulate)(
                         conf, pd, pt, gd, gtt, P, C, ignore));
done:
    return OVS_PY_FINISH(st, Py_NewRef(Py_None), pred, gt);
}

static PyObject *py_confusion_scores(PyObject *self, PyObject *args) {
    PyObject *conf_obj, *iou = NULL, *acc = NULL, *out = NULL;
    long long C;
    int convention, st = -1;
    if (!PyArg_ParseTuple(args, "OLi", &conf_obj, &C, &convention)) return NULL;
    if (check_conf(conf_obj, C, 0) < 0) return NULL;
    npy_intp dim = (npy_intp)C;
    if (!(iou = PyArray_SimpleNew(1, &dim, NPY_FLOAT64)) || !(acc = PyArray_SimpleNew(1, &dim, NPY_FLOAT64)))
        goto done;
    ovs_seg_scores s;
    const int64_t *conf = (const int64_t *)PyArray_DATA((PyArrayObject *)conf_obj);
    double *io = (double *)PyArray_DATA((PyArrayObject *)iou), *ac = (double *)PyArray_DATA((PyArrayObject *)acc);
    OVS_PY_NOGIL(st, ovs_confusion_scores(&s, io, ac, conf, C, (ovs_miou_convention)convention));
    if (!st)
        out = Py_BuildValue("ddddLLOO", s.miou, s.fwiou, s.macc, s.pacc, (long long)s.classes_present,
                            (long long)s.classes_seen, iou, acc);
done:
    return OVS_PY_FINISH(st, out, iou, acc);
}

static PyMethodDef metrics_methods[] = {
    {"confusion_accumulate", (PyCFunction)(void (*)(void))py_confusion_accumulate, METH_VARARGS | METH_KEYWORDS,
     "conf (C+1, C+1) int64 += confusion counts of (pred, gt); rows GT, columns prediction."},
    {"confusion_scores", py_confusion_scores, METH_VARARGS,
     "detectron2 SemSegEvaluator scores of a confusion matrix (fractions)."},
    {NULL, NULL, 0, NULL},
};

int ovs_py_register_metrics(PyObject *m) { return PyModule_AddFunctions(m, metrics_methods); }
