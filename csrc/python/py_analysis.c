/* Python bindings of the spectral analysis: _core.analyze_layers, _core.esd, _core.powerlaw_fit.
 * ovs/analyze.py builds the user-facing records from the tuples returned here. */
#include "python/pyovs.h"
#include "ovs/analysis.h"

#include <math.h>

/* (status, alpha, xmin, D, sigma, num_tail, num_candidates, peak) */
static PyObject *fit_tuple(const ovs_powerlaw *f) {
    return Py_BuildValue("(iddddLLd)", f->status, f->alpha, f->xmin, f->D, f->sigma,
                         (long long)f->num_tail, (long long)f->num_candidates, f->peak);
}

static int parse_mode(int mode) {
    if (mode < OVS_XMIN_ALL || mode > OVS_XMIN_PEAK_REFERENCE) {
        PyErr_Format(PyExc_ValueError, "xmin_mode must be 0 (all), 1 (peak) or 2 (peak, reference code), got %d", mode);
        return -1;
    }
    return 0;
}

static int parse_method(int method) {
    if (method != OVS_ESD_GRAM && method != OVS_ESD_SVD) {
        PyErr_Format(PyExc_ValueError, "method must be 0 (Gram) or 1 (SVD), got %d", method);
        return -1;
    }
    return 0;
}

/* analyze_layers(layers, evals_thresh, conv_scale, max_aspect, xmin_mode) -> list of
 * (status, fit tuple, num_evals, num_kept, lambda_max, alpha_weighted, log_spectral_norm);
 * layers: a sequence of (name, array) with 2-D or 4-D float arrays. */
static PyObject *py_analyze_layers(PyObject *self, PyObject *args) {
    PyObject *seq_in;
    ovs_esd_options opt;
    ovs_esd_options_default(&opt);
    if (!PyArg_ParseTuple(args, "Odddi|i", &seq_in, &opt.evals_thresh, &opt.conv_scale, &opt.max_aspect,
                          &opt.xmin_mode, &opt.method))
        return NULL;
    if (parse_mode(opt.xmin_mode) < 0 || parse_method(opt.method) < 0) return NULL;
    PyObject *seq = PySequence_Fast(seq_in, "layers must be a sequence of (name, array) pairs");
    if (!seq) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject **keep = NULL;     /* (2*count,) names and arrays we hold while the GIL is released */
    ovs_tensor *layers = NULL;  /* (count,) */
    ovs_layer_alpha *res = NULL;/* (count,) */
    PyObject *out = NULL;
    Py_ssize_t held = 0;
    int rc = -1;
    keep = PyMem_Calloc((size_t)(2 * count + 1), sizeof(PyObject *));
    layers = PyMem_Calloc((size_t)count + 1, sizeof(ovs_tensor));
    res = PyMem_Calloc((size_t)count + 1, sizeof(ovs_layer_alpha));
    if (!keep || !layers || !res) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *name, *arr_in;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_Format(PyExc_TypeError, "layers[%zd] must be a (name, array) tuple, got %.100s", i,
                         Py_TYPE(item)->tp_name);
            goto done;
        }
        name = PyTuple_GET_ITEM(item, 0);
        arr_in = PyTuple_GET_ITEM(item, 1);
        if (!PyUnicode_Check(name)) {
            PyErr_Format(PyExc_TypeError, "layers[%zd] name must be a str, got %.100s", i, Py_TYPE(name)->tp_name);
            goto done;
        }
        Py_INCREF(name);
        keep[held++] = name;
        PyArrayObject *a = ovs_py_float_array(arr_in, -1, "layer weight");
        if (!a) goto done;
        keep[held++] = (PyObject *)a;
        int nd = PyArray_NDIM(a);
        if (nd != 2 && nd != 4) {
            PyErr_Format(PyExc_ValueError, "layer %U must be 2-D (linear) or 4-D (conv), got %d dims", name, nd);
            goto done;
        }
        const char *cname = PyUnicode_AsUTF8(name);
        if (!cname) goto done;
        layers[i].name = cname;
        layers[i].data = (const float *)PyArray_DATA(a);
        layers[i].ndim = nd;
        for (int d = 0; d < nd; d++) layers[i].shape[d] = (int64_t)PyArray_DIM(a, d);
    }
    OVS_PY_NOGIL(rc, ovs_analyze_layers(res, layers, (int64_t)count, &opt));
    if (rc || !(out = PyList_New(count))) goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        const ovs_layer_alpha *r = &res[i];
        PyObject *ft = fit_tuple(&r->fit);
        if (!ft) goto done;
        PyObject *t = Py_BuildValue("(iNLLddd)", r->status, ft, (long long)r->num_evals,
                                    (long long)r->num_kept, r->lambda_max, r->alpha_weighted,
                                    r->log_spectral_norm);
        if (!t) goto done;
        PyList_SET_ITEM(out, i, t);
    }
done:
    for (Py_ssize_t i = 0; i < held; i++) Py_DECREF(keep[i]);
    PyMem_Free(keep);
    PyMem_Free(layers);
    PyMem_Free(res);
    return OVS_PY_FINISH(rc, out, seq);
}

/* esd(weight, conv_scale) -> float64 array of every eigenvalue of the spectrum, ascending */
static PyObject *py_esd(PyObject *self, PyObject *args) {
    PyObject *w_in;
    double conv_scale;
    int method = OVS_ESD_GRAM;
    if (!PyArg_ParseTuple(args, "Od|i", &w_in, &conv_scale, &method)) return NULL;
    if (parse_method(method) < 0) return NULL;
    if (!isfinite(conv_scale) || !(conv_scale > 0)) {
        PyErr_Format(PyExc_ValueError, "conv_scale must be a finite number > 0, got %g", conv_scale);
        return NULL;
    }
    PyArrayObject *a = ovs_py_float_array(w_in, -1, "weight"), *out = NULL;
    if (!a) return NULL;
    int rc = -1;
    ovs_tensor t = {.name = "weight", .data = (const float *)PyArray_DATA(a), .ndim = PyArray_NDIM(a)};
    if (t.ndim != 2 && t.ndim != 4) {
        PyErr_Format(PyExc_ValueError, "weight must be 2-D (linear) or 4-D (conv), got %d dims", t.ndim);
        goto done;
    }
    for (int d = 0; d < t.ndim; d++) t.shape[d] = (int64_t)PyArray_DIM(a, d);
    int64_t n = ovs_esd_size(&t);
    if (n < 0) {
        rc = OVS_ERR_ARG;
        goto done;
    }
    npy_intp dims[1] = {(npy_intp)n};
    if (!(out = (PyArrayObject *)PyArray_SimpleNew(1, dims, NPY_FLOAT64))) goto done;
    OVS_PY_NOGIL(rc, ovs_esd_compute((double *)PyArray_DATA(out), &t, conv_scale, method));
done:
    return OVS_PY_FINISH(rc, out, a);
}

/* powerlaw_fit(evals, xmin_mode, naive) -> fit tuple; evals: 1-D, ascending, all > 0 */
static PyObject *py_powerlaw_fit(PyObject *self, PyObject *args) {
    PyObject *e_in;
    int mode, naive;
    if (!PyArg_ParseTuple(args, "Oip", &e_in, &mode, &naive)) return NULL;
    if (parse_mode(mode) < 0) return NULL;
    PyArrayObject *e = (PyArrayObject *)PyArray_FROMANY(e_in, NPY_FLOAT64, 1, 1, NPY_ARRAY_CARRAY_RO);
    if (!e) return NULL;
    ovs_powerlaw f;
    const double *data = (const double *)PyArray_DATA(e);
    int64_t n = (int64_t)PyArray_DIM(e, 0);
    int rc;
    OVS_PY_NOGIL(rc, (naive ? ovs_powerlaw_fit_naive : ovs_powerlaw_fit)(&f, data, n, mode));
    Py_DECREF(e);
    if (rc) return ovs_py_raise(rc);
    return fit_tuple(&f);
}

static PyObject *py_layer_status_name(PyObject *self, PyObject *arg) {
    long s = PyLong_AsLong(arg);
    if (s == -1 && PyErr_Occurred()) return NULL;
    return PyUnicode_FromString(ovs_layer_status_name((int)s));
}

static PyMethodDef analysis_methods[] = {
    {"analyze_layers", py_analyze_layers, METH_VARARGS,
     "analyze_layers(layers, evals_thresh, conv_scale, max_aspect, xmin_mode, method=0) -> per-layer tuples"},
    {"esd", py_esd, METH_VARARGS, "esd(weight, conv_scale, method=0) -> all eigenvalues, ascending (float64); method 0 Gram, 1 SVD"},
    {"powerlaw_fit", py_powerlaw_fit, METH_VARARGS,
     "powerlaw_fit(evals, xmin_mode, naive) -> (status, alpha, xmin, D, sigma, num_tail, num_candidates, peak)"},
    {"layer_status_name", py_layer_status_name, METH_O, "Description of a per-layer status code."},
    {NULL, NULL, 0, NULL},
};

int ovs_py_register_analysis(PyObject *m) { return PyModule_AddFunctions(m, analysis_methods); }
