/* Python bindings of the towers: _core.ResNet, _core.ViT, _core.TextTower. */
#include "python/py_models.h"

#include <math.h>
#include <string.h>

/* ---------------------------------------------------------------- weights table */
void ovs_py_weights_clear(ovs_py_weights *w) {
    Py_CLEAR(w->keep);
    PyMem_Free(w->items);
    w->items = NULL;
    w->map.items = NULL;
    w->map.count = 0;
}

/* Build the table from a dict {name: array}; float arrays become C-contiguous float32
 * (zero-copy when they already are); other values are ignored. */
int ovs_py_weights_from_dict(ovs_py_weights *w, PyObject *dict) {
    memset(w, 0, sizeof *w);
    if (!PyDict_Check(dict)) {
        PyErr_Format(PyExc_TypeError, "weights must be a dict of name -> numpy array, got %.100s",
                     Py_TYPE(dict)->tp_name);
        return -1;
    }
    Py_ssize_t n = PyDict_Size(dict), pos = 0, i = 0;
    w->keep = PyList_New(0);
    w->items = PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof(ovs_tensor));
    if (!w->keep || !w->items) {
        PyErr_NoMemory();
        goto error;
    }
    PyObject *key, *value;
    while (PyDict_Next(dict, &pos, &key, &value)) {
        if (!PyUnicode_Check(key)) {
            PyErr_Format(PyExc_TypeError, "weight names must be str, got %.100s", Py_TYPE(key)->tp_name);
            goto error;
        }
        if (!PyArray_Check(value)) continue;
        int tn = PyArray_TYPE((PyArrayObject *)value);
        if (!PyTypeNum_ISFLOAT(tn) || tn == NPY_LONGDOUBLE) continue;
        if (PyArray_NDIM((PyArrayObject *)value) > OVS_MAX_DIMS) continue;
        PyArrayObject *a = (PyArrayObject *)PyArray_FROMANY(value, NPY_FLOAT32, 0, 0,
                                                            NPY_ARRAY_CARRAY_RO | NPY_ARRAY_FORCECAST);
        if (!a) goto error;
        int bad = PyList_Append(w->keep, (PyObject *)a) < 0 || PyList_Append(w->keep, key) < 0;
        Py_DECREF(a);
        if (bad) goto error;
        const char *name = PyUnicode_AsUTF8(key);
        if (!name) goto error;
        ovs_tensor *t = &w->items[i++];
        t->name = name;
        t->data = (const float *)PyArray_DATA(a);
        t->ndim = PyArray_NDIM(a);
        for (int d = 0; d < t->ndim; d++) t->shape[d] = PyArray_DIM(a, d);
        /* a non-finite weight would silently poison every output */
        npy_intp numel = PyArray_SIZE(a);
        for (npy_intp k = 0; k < numel; k++)
            if (!isfinite(t->data[k])) {
                PyErr_Format(PyExc_ValueError, "weight '%s' contains NaN or infinity at flat index %zd",
                             name, (Py_ssize_t)k);
                goto error;
            }
    }
    w->map.items = w->items;
    w->map.count = i;
    return 0;
error:
    ovs_py_weights_clear(w);
    return -1;
}

/* ---------------------------------------------------------------- common object plumbing */
static void model_dealloc(ovs_py_model *self) {
    switch (self->kind) {
    case OVS_PY_RESNET: ovs_resnet_free(self->m.resnet); break;
    case OVS_PY_VIT: ovs_vit_free(self->m.vit); break;
    case OVS_PY_TEXT: ovs_text_free(self->m.text); break;
    default: break;
    }
    if (self->lock) PyThread_free_lock(self->lock);
    ovs_py_weights_clear(&self->weights);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int model_prepare(ovs_py_model *self, PyObject *weights) {
    if (self->kind) {
        PyErr_SetString(PyExc_RuntimeError, "model already initialised");
        return -1;
    }
    if (ovs_py_weights_from_dict(&self->weights, weights) < 0) return -1;
    self->lock = PyThread_allocate_lock();
    if (!self->lock) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

PyArrayObject *ovs_py_images(PyObject *obj) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "images must be a numpy array, got %.100s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = ovs_py_float_array(obj, 4, "images (N, 3, H, W)");
    if (!a) return NULL;
    if (PyArray_DIM(a, 1) != 3) {
        PyErr_Format(PyExc_ValueError, "images must be (N, 3, H, W), got %zd channels", (Py_ssize_t)PyArray_DIM(a, 1));
        goto error;
    }
    if (PyArray_DIM(a, 0) == 0 || PyArray_DIM(a, 2) == 0 || PyArray_DIM(a, 3) == 0) {
        PyErr_SetString(PyExc_ValueError, "images must not be empty");
        goto error;
    }
    const float *d = PyArray_DATA(a);
    npy_intp n = PyArray_SIZE(a);
    for (npy_intp i = 0; i < n; i++)
        if (!isfinite(d[i])) {
            PyErr_Format(PyExc_ValueError, "images contain NaN or infinity (flat index %zd)", (Py_ssize_t)i);
            goto error;
        }
    return a;
error:
    Py_DECREF(a);
    return NULL;
}

static PyObject *new_array(int nd, npy_intp *dims) {
    return PyArray_SimpleNew(nd, dims, NPY_FLOAT32);
}

/* ---------------------------------------------------------------- ResNet */
static int resnet_init(ovs_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"weights", "prefix", "layers", "width", "embed_dim", "heads", "grid",
                             "attnpool", "style", "output_stride", NULL};
    PyObject *weights;
    const char *prefix = "visual.", *style = "clip";
    long long l[4], width, embed = 0, heads = 0, grid = 0, os = 32;
    int attnpool = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Os(LLLL)L|LLLpsL", kwlist, &weights, &prefix, &l[0],
                                     &l[1], &l[2], &l[3], &width, &embed, &heads, &grid, &attnpool,
                                     &style, &os))
        return -1;
    int st;
    if (!strcmp(style, "clip")) st = OVS_RESNET_CLIP;
    else if (!strcmp(style, "deeplab")) st = OVS_RESNET_DEEPLAB;
    else {
        PyErr_Format(PyExc_ValueError, "style must be 'clip' or 'deeplab', got '%s'", style);
        return -1;
    }
    if (model_prepare(self, weights) < 0) return -1;
    ovs_resnet_config cfg = {.prefix = prefix, .layers = {l[0], l[1], l[2], l[3]}, .width = width,
                             .embed_dim = embed, .heads = heads, .grid = grid,
                             .has_attnpool = attnpool, .style = st, .output_stride = os};
    int rc = ovs_resnet_create(&self->m.resnet, &cfg, &self->weights.map);
    if (rc) {
        ovs_py_raise(rc);
        return -1;
    }
    self->kind = OVS_PY_RESNET;
    return 0;
}

static PyObject *resnet_forward(ovs_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"images", "features", "embed", NULL};
    PyObject *obj, *result = NULL, *res[4] = {NULL}, *embed = NULL;
    int features = 0, want_embed = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|pp", kwlist, &obj, &features, &want_embed)) return NULL;
    if (self->kind != OVS_PY_RESNET) return PyErr_Format(PyExc_RuntimeError, "model not initialised");
    const ovs_resnet_config *cfg = ovs_resnet_get_config(self->m.resnet);
    if (want_embed && !cfg->has_attnpool) want_embed = 0;
    PyArrayObject *x = ovs_py_images(obj);
    if (!x) return NULL;
    npy_intp N = PyArray_DIM(x, 0), H = PyArray_DIM(x, 2), W = PyArray_DIM(x, 3);
    ovs_resnet_outputs out = {{NULL}, NULL};
    int rc;
    if (features)
        for (int s = 0; s < 4; s++) {
            int64_t C, h, w;
            if ((rc = ovs_resnet_feature_shape(self->m.resnet, s, H, W, &C, &h, &w))) {
                ovs_py_raise(rc);
                goto error;
            }
            npy_intp dims[4] = {N, C, h, w};
            if (!(res[s] = new_array(4, dims))) goto error;
            out.res[s] = PyArray_DATA((PyArrayObject *)res[s]);
        }
    if (want_embed) {
        npy_intp dims[2] = {N, cfg->embed_dim};
        if (!(embed = new_array(2, dims))) goto error;
        out.embed = PyArray_DATA((PyArrayObject *)embed);
    }
    const float *data = PyArray_DATA(x);
    Py_BEGIN_ALLOW_THREADS
    OVS_MODEL_LOCK(self);
    rc = ovs_resnet_forward(self->m.resnet, data, N, H, W, &out);
    OVS_MODEL_UNLOCK(self);
    Py_END_ALLOW_THREADS
    if (rc) {
        ovs_py_raise(rc);
        goto error;
    }
    if (!(result = PyDict_New())) goto error;
    static const char *names[4] = {"res2", "res3", "res4", "res5"};
    for (int s = 0; s < 4; s++)
        if (res[s] && PyDict_SetItemString(result, names[s], res[s]) < 0) goto error;
    if (embed && PyDict_SetItemString(result, "embed", embed) < 0) goto error;
    Py_DECREF(x);
    for (int s = 0; s < 4; s++) Py_XDECREF(res[s]);
    Py_XDECREF(embed);
    return result;
error:
    Py_XDECREF(result);
    Py_DECREF(x);
    for (int s = 0; s < 4; s++) Py_XDECREF(res[s]);
    Py_XDECREF(embed);
    return NULL;
}

static PyObject *resnet_config(ovs_py_model *self, PyObject *unused) {
    if (self->kind != OVS_PY_RESNET) return PyErr_Format(PyExc_RuntimeError, "model not initialised");
    const ovs_resnet_config *c = ovs_resnet_get_config(self->m.resnet);
    return Py_BuildValue("{s:s,s:(LLLL),s:L,s:L,s:L,s:L,s:O,s:s,s:L}", "prefix", c->prefix, "layers",
                         (long long)c->layers[0], (long long)c->layers[1], (long long)c->layers[2],
                         (long long)c->layers[3], "width", (long long)c->width, "embed_dim",
                         (long long)c->embed_dim, "heads", (long long)c->heads, "grid",
                         (long long)c->grid, "attnpool", c->has_attnpool ? Py_True : Py_False,
                         "style", c->style == OVS_RESNET_DEEPLAB ? "deeplab" : "clip",
                         "output_stride", (long long)c->output_stride);
}

/* sparsify(mode, H=224, W=224): mode "dense", "all" or "auto" (time both kernels per conv at
 * an (H, W) input and keep the faster). */
static PyObject *resnet_sparsify(ovs_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"mode", "H", "W", NULL};
    const char *mode_name;
    long long H = 224, W = 224;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s|LL", kwlist, &mode_name, &H, &W)) return NULL;
    if (self->kind != OVS_PY_RESNET) return PyErr_Format(PyExc_RuntimeError, "model not initialised");
    ovs_sparse_mode mode;
    if (!strcmp(mode_name, "dense")) mode = OVS_SPARSE_DENSE;
    else if (!strcmp(mode_name, "all")) mode = OVS_SPARSE_ALL;
    else if (!strcmp(mode_name, "auto")) mode = OVS_SPARSE_AUTO;
    else return PyErr_Format(PyExc_ValueError, "mode must be 'dense', 'all' or 'auto', got '%s'", mode_name);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    OVS_MODEL_LOCK(self);
    rc = ovs_resnet_sparsify(self->m.resnet, mode, H, W);
    OVS_MODEL_UNLOCK(self);
    Py_END_ALLOW_THREADS
    if (rc) return ovs_py_raise(rc);
    Py_RETURN_NONE;
}

/* convs() -> list of dicts: name, shape, nnz, sparse, weight_bytes, dense_ms, sparse_ms */
static PyObject *resnet_convs(ovs_py_model *self, PyObject *unused) {
    if (self->kind != OVS_PY_RESNET) return PyErr_Format(PyExc_RuntimeError, "model not initialised");
    int64_t n = ovs_resnet_conv_count(self->m.resnet);
    PyObject *list = PyList_New(0);
    if (!list) return NULL;
    for (int64_t i = 0; i < n; i++) {
        ovs_conv_info c;
        int rc = ovs_resnet_conv_info(self->m.resnet, i, &c);
        if (rc) {
            Py_DECREF(list);
            return ovs_py_raise(rc);
        }
        PyObject *d = Py_BuildValue("{s:s,s:(LLLL),s:L,s:O,s:n,s:d,s:d}", "name", c.name, "shape",
                                    (long long)c.K, (long long)c.C, (long long)c.R, (long long)c.S,
                                    "nnz", (long long)c.nnz, "sparse", c.sparse ? Py_True : Py_False,
                                    "weight_bytes", (Py_ssize_t)c.weight_bytes, "dense_ms", c.dense_ms,
                                    "sparse_ms", c.sparse_ms);
        if (!d || PyList_Append(list, d) < 0) {
            Py_XDECREF(d);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(d);
    }
    return list;
}

static PyMethodDef resnet_methods[] = {
    {"sparsify", (PyCFunction)(void (*)(void))resnet_sparsify, METH_VARARGS | METH_KEYWORDS,
     "sparsify(mode, H=224, W=224): hold each conv dense or sparse ('dense', 'all', 'auto')"},
    {"convs", (PyCFunction)resnet_convs, METH_NOARGS, "Per-conv storage and calibration as dicts."},
    {"forward", (PyCFunction)(void (*)(void))resnet_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(images, features=False, embed=True) -> dict of res2..res5 (N, C, h, w) and embed (N, D)"},
    {"config", (PyCFunction)resnet_config, METH_NOARGS, "The architecture as a dict."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject ovs_py_ResNetType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ovs._core.ResNet",
    .tp_basicsize = sizeof(ovs_py_model),
    .tp_dealloc = (destructor)model_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ResNet(weights, prefix, layers, width, embed_dim=0, heads=0, grid=0, attnpool=True, style='clip', output_stride=32)",
    .tp_methods = resnet_methods,
    .tp_init = (initproc)resnet_init,
    .tp_new = PyType_GenericNew,
};

/* ---------------------------------------------------------------- ViT */
static int vit_init(ovs_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"weights", "prefix", "width", "heads", "patch", "grid", "embed_dim",
                             "act", NULL};
    PyObject *weights;
    const char *prefix = "visual.", *act = "quickgelu";
    long long width, heads, patch, grid, embed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OsLLLL|Ls", kwlist, &weights, &prefix, &width,
                                     &heads, &patch, &grid, &embed, &act))
        return -1;
    ovs_act a;
    if (ovs_py_parse_act(act, 0, &a)) return -1;
    if (model_prepare(self, weights) < 0) return -1;
    ovs_vit_config cfg = {.prefix = prefix, .width = width, .heads = heads, .patch = patch,
                          .grid = grid, .embed_dim = embed, .act = a};
    int rc = ovs_vit_create(&self->m.vit, &cfg, &self->weights.map);
    if (rc) {
        ovs_py_raise(rc);
        return -1;
    }
    self->kind = OVS_PY_VIT;
    return 0;
}

static PyObject *vit_forward(ovs_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"images", "blocks", "all_tokens", "embed", "tokens", NULL};
    PyObject *obj, *result = NULL, *tokens = NULL, *all = NULL, *embed = NULL;
    long long blocks = -1;
    int want_all = 0, want_embed = 1, want_tokens = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|Lppp", kwlist, &obj, &blocks, &want_all,
                                     &want_embed, &want_tokens))
        return NULL;
    if (self->kind != OVS_PY_VIT) return PyErr_Format(PyExc_RuntimeError, "model not initialised");
    const ovs_vit_config *cfg = ovs_vit_get_config(self->m.vit);
    if (blocks < 0) blocks = cfg->layers;
    if (blocks > cfg->layers)
        return PyErr_Format(PyExc_ValueError, "blocks must be <= %lld", (long long)cfg->layers);
    if (blocks != cfg->layers) want_embed = 0;
    PyArrayObject *x = ovs_py_images(obj);
    if (!x) return NULL;
    npy_intp N = PyArray_DIM(x, 0), H = PyArray_DIM(x, 2), W = PyArray_DIM(x, 3);
    if (H < cfg->patch || W < cfg->patch) {
        PyErr_Format(PyExc_ValueError, "images must be at least one patch (%lld px), got %zdx%zd",
                     (long long)cfg->patch, (Py_ssize_t)H, (Py_ssize_t)W);
        Py_DECREF(x);
        return NULL;
    }
    npy_intp T = 1 + (H / cfg->patch) * (W / cfg->patch), D = cfg->width;
    ovs_vit_outputs out = {NULL, NULL, NULL};
    if (want_tokens) {
        npy_intp dims[3] = {N, T, D};
        if (!(tokens = new_array(3, dims))) goto error;
        out.tokens = PyArray_DATA((PyArrayObject *)tokens);
    }
    if (want_all) {
        npy_intp dims[4] = {blocks, N, T, D};
        if (!(all = new_array(4, dims))) goto error;
        out.block_tokens = PyArray_DATA((PyArrayObject *)all);
    }
    if (want_embed) {
        npy_intp dims[2] = {N, cfg->embed_dim > 0 ? cfg->embed_dim : D};
        if (!(embed = new_array(2, dims))) goto error;
        out.embed = PyArray_DATA((PyArrayObject *)embed);
    }
    const float *data = PyArray_DATA(x);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    OVS_MODEL_LOCK(self);
    rc = ovs_vit_forward(self->m.vit, data, N, H, W, blocks, &out);
    OVS_MODEL_UNLOCK(self);
    Py_END_ALLOW_THREADS
    if (rc) {
        ovs_py_raise(rc);
        goto error;
    }
    if (!(result = PyDict_New())) goto error;
    if (tokens && PyDict_SetItemString(result, "tokens", tokens) < 0) goto error;
    if (all && PyDict_SetItemString(result, "block_tokens", all) < 0) goto error;
    if (embed && PyDict_SetItemString(result, "embed", embed) < 0) goto error;
    Py_DECREF(x);
    Py_XDECREF(tokens);
    Py_XDECREF(all);
    Py_XDECREF(embed);
    return result;
error:
    Py_XDECREF(result);
    Py_DECREF(x);
    Py_XDECREF(tokens);
    Py_XDECREF(all);
    Py_XDECREF(embed);
    return NULL;
}

static PyObject *vit_config(ovs_py_model *self, PyObject *unused) {
    if (self->kind != OVS_PY_VIT) return PyErr_Format(PyExc_RuntimeError, "model not initialised");
    const ovs_vit_config *c = ovs_vit_get_config(self->m.vit);
    return Py_BuildValue("{s:s,s:L,s:L,s:L,s:L,s:L,s:L,s:z}", "prefix", c->prefix, "width",
                         (long long)c->width, "layers", (long long)c->layers, "heads",
                         (long long)c->heads, "patch", (long long)c->patch, "grid",
                         (long long)c->grid, "embed_dim", (long long)c->embed_dim, "act",
                         ovs_act_name(c->act));
}

static PyMethodDef vit_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))vit_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(images, blocks=-1, all_tokens=False, embed=True, tokens=False) -> dict"},
    {"config", (PyCFunction)vit_config, METH_NOARGS, "The architecture as a dict."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject ovs_py_ViTType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ovs._core.ViT",
    .tp_basicsize = sizeof(ovs_py_model),
    .tp_dealloc = (destructor)model_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ViT(weights, prefix, width, heads, patch, grid, embed_dim=0, act='quickgelu')",
    .tp_methods = vit_methods,
    .tp_init = (initproc)vit_init,
    .tp_new = PyType_GenericNew,
};

/* ---------------------------------------------------------------- text */
static int text_init(ovs_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"weights", "prefix", "width", "heads", "context", "vocab",
                             "embed_dim", "act", NULL};
    PyObject *weights;
    const char *prefix = "", *act = "quickgelu";
    long long width, heads, context, vocab, embed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OsLLLL|Ls", kwlist, &weights, &prefix, &width,
                                     &heads, &context, &vocab, &embed, &act))
        return -1;
    ovs_act a;
    if (ovs_py_parse_act(act, 0, &a)) return -1;
    if (model_prepare(self, weights) < 0) return -1;
    ovs_text_config cfg = {.prefix = prefix, .width = width, .heads = heads, .context = context,
                           .vocab = vocab, .embed_dim = embed, .act = a};
    int rc = ovs_text_create(&self->m.text, &cfg, &self->weights.map);
    if (rc) {
        ovs_py_raise(rc);
        return -1;
    }
    self->kind = OVS_PY_TEXT;
    return 0;
}

static PyObject *text_forward(ovs_py_model *self, PyObject *args, PyObject *kw) {
    int rc = -1;
    static char *kwlist[] = {"ids", "truncate", NULL};
    PyObject *obj, *out = NULL;
    int truncate = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|p", kwlist, &obj, &truncate)) return NULL;
    if (self->kind != OVS_PY_TEXT) return PyErr_Format(PyExc_RuntimeError, "model not initialised");
    if (!PyArray_Check(obj) || !PyTypeNum_ISINTEGER(PyArray_TYPE((PyArrayObject *)obj)))
        return PyErr_Format(PyExc_TypeError, "token ids must be an integer numpy array (N, S)");
    PyArrayObject *ids = (PyArrayObject *)PyArray_FROMANY(obj, NPY_INT32, 2, 2,
                                                          NPY_ARRAY_CARRAY_RO | NPY_ARRAY_FORCECAST);
    if (!ids) return NULL;
    const ovs_text_config *cfg = ovs_text_get_config(self->m.text);
    npy_intp dims[2] = {PyArray_DIM(ids, 0), cfg->embed_dim};
    if (!(out = new_array(2, dims))) goto done;
    const int32_t *data = PyArray_DATA(ids);
    float *o = PyArray_DATA((PyArrayObject *)out);
    int64_t N = PyArray_DIM(ids, 0), S = PyArray_DIM(ids, 1);
    Py_BEGIN_ALLOW_THREADS
    OVS_MODEL_LOCK(self);
    rc = ovs_text_forward(self->m.text, o, data, N, S, truncate);
    OVS_MODEL_UNLOCK(self);
    Py_END_ALLOW_THREADS
done:
    return OVS_PY_FINISH(rc, out, ids);
}

/* Integer ids as an int32 C array of rank nd, or NULL with a TypeError/ValueError. */
static PyArrayObject *text_ids(PyObject *obj, int nd, const char *what) {
    if (!PyArray_Check(obj) || !PyTypeNum_ISINTEGER(PyArray_TYPE((PyArrayObject *)obj))) {
        PyErr_Format(PyExc_TypeError, "%s must be an integer numpy array", what);
        return NULL;
    }
    if (PyArray_NDIM((PyArrayObject *)obj) != nd) {
        PyErr_Format(PyExc_ValueError, "%s must have %d dimension(s), got %d", what, nd,
                     PyArray_NDIM((PyArrayObject *)obj));
        return NULL;
    }
    return (PyArrayObject *)PyArray_FROMANY(obj, NPY_INT32, nd, nd,
                                            NPY_ARRAY_CARRAY_RO | NPY_ARRAY_FORCECAST);
}

static PyObject *text_prefix(ovs_py_model *self, PyObject *args) {
    int rc = -1;
    PyObject *obj, *out = NULL;
    if (!PyArg_ParseTuple(args, "O", &obj)) return NULL;
    if (self->kind != OVS_PY_TEXT) return PyErr_Format(PyExc_RuntimeError, "model not initialised");
    PyArrayObject *ids = text_ids(obj, 1, "prefix ids");
    if (!ids) return NULL;
    const ovs_text_config *cfg = ovs_text_get_config(self->m.text);
    int64_t P = PyArray_DIM(ids, 0);
    if (P < 1 || P >= cfg->context) {
        PyErr_Format(PyExc_ValueError, "a prefix must have 1..%lld tokens, got %lld",
                     (long long)(cfg->context - 1), (long long)P);
        goto done;
    }
    npy_intp dims[3] = {cfg->layers, P, 2 * cfg->width};
    if (!(out = new_array(3, dims))) goto done;
    const int32_t *data = PyArray_DATA(ids);
    float *o = PyArray_DATA((PyArrayObject *)out);
    Py_BEGIN_ALLOW_THREADS
    OVS_MODEL_LOCK(self);
    rc = ovs_text_prefix(self->m.text, o, data, P);
    OVS_MODEL_UNLOCK(self);
    Py_END_ALLOW_THREADS
done:
    return OVS_PY_FINISH(rc, out, ids);
}

static PyObject *text_forward_prefixed(ovs_py_model *self, PyObject *args) {
    int rc = -1;
    PyObject *kv_obj, *obj, *out = NULL;
    PyArrayObject *kv = NULL, *ids = NULL;
    if (!PyArg_ParseTuple(args, "OO", &kv_obj, &obj)) return NULL;
    if (self->kind != OVS_PY_TEXT) return PyErr_Format(PyExc_RuntimeError, "model not initialised");
    const ovs_text_config *cfg = ovs_text_get_config(self->m.text);
    if (!PyArray_Check(kv_obj) || PyArray_TYPE((PyArrayObject *)kv_obj) != NPY_FLOAT32 ||
        PyArray_NDIM((PyArrayObject *)kv_obj) != 3 ||
        PyArray_DIM((PyArrayObject *)kv_obj, 0) != cfg->layers ||
        PyArray_DIM((PyArrayObject *)kv_obj, 2) != 2 * cfg->width)
        return PyErr_Format(PyExc_ValueError, "the prefix cache must be float32 (%lld, P, %lld) "
                            "as returned by prefix()", (long long)cfg->layers,
                            (long long)(2 * cfg->width));
    if (!(kv = (PyArrayObject *)PyArray_FROMANY(kv_obj, NPY_FLOAT32, 3, 3, NPY_ARRAY_CARRAY_RO)))
        return NULL;
    if (!(ids = text_ids(obj, 2, "suffix ids"))) goto done;
    int64_t P = PyArray_DIM(kv, 1), N = PyArray_DIM(ids, 0), S = PyArray_DIM(ids, 1);
    npy_intp dims[2] = {N, cfg->embed_dim};
    if (!(out = new_array(2, dims))) goto done;
    const int32_t *data = PyArray_DATA(ids);
    const float *cache = PyArray_DATA(kv);
    float *o = PyArray_DATA((PyArrayObject *)out);
    Py_BEGIN_ALLOW_THREADS
    OVS_MODEL_LOCK(self);
    rc = ovs_text_forward_prefixed(self->m.text, o, cache, P, data, N, S);
    OVS_MODEL_UNLOCK(self);
    Py_END_ALLOW_THREADS
done:
    return OVS_PY_FINISH(rc, out, kv, ids);
}

static PyObject *text_config(ovs_py_model *self, PyObject *unused) {
    if (self->kind != OVS_PY_TEXT) return PyErr_Format(PyExc_RuntimeError, "model not initialised");
    const ovs_text_config *c = ovs_text_get_config(self->m.text);
    return Py_BuildValue("{s:s,s:L,s:L,s:L,s:L,s:L,s:L,s:z}", "prefix", c->prefix, "width",
                         (long long)c->width, "layers", (long long)c->layers, "heads",
                         (long long)c->heads, "context", (long long)c->context, "vocab",
                         (long long)c->vocab, "embed_dim", (long long)c->embed_dim, "act",
                         ovs_act_name(c->act));
}

static PyMethodDef text_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))text_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(ids int (N, S), truncate=True) -> float32 (N, embed_dim)"},
    {"prefix", (PyCFunction)text_prefix, METH_VARARGS,
     "prefix(ids int (P,)) -> float32 (layers, P, 2*width): each layer's keys|values of a "
     "shared prompt prefix"},
    {"forward_prefixed", (PyCFunction)text_forward_prefixed, METH_VARARGS,
     "forward_prefixed(kv, ids int (N, S)) -> float32 (N, embed_dim): embeddings of the prompts "
     "prefix + ids[n], the prefix given by its cache kv from prefix()"},
    {"config", (PyCFunction)text_config, METH_NOARGS, "The architecture as a dict."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject ovs_py_TextType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ovs._core.TextTower",
    .tp_basicsize = sizeof(ovs_py_model),
    .tp_dealloc = (destructor)model_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "TextTower(weights, prefix, width, heads, context, vocab, embed_dim=0, act='quickgelu')",
    .tp_methods = text_methods,
    .tp_init = (initproc)text_init,
    .tp_new = PyType_GenericNew,
};

int ovs_py_register_models(PyObject *m) {
    PyTypeObject *types[3] = {&ovs_py_ResNetType, &ovs_py_ViTType, &ovs_py_TextType};
    const char *names[3] = {"ResNet", "ViT", "TextTower"};
    for (int i = 0; i < 3; i++) {
        if (PyType_Ready(types[i]) < 0) return -1;
        Py_INCREF(types[i]);
        if (PyModule_AddObject(m, names[i], (PyObject *)types[i]) < 0) {
            Py_DECREF(types[i]);
            return -1;
        }
    }
    return 0;
}
