/* Python bindings of the towers: _core.ResNet, _core.ViT, _core.TextTower. */
#include "python/py_models.h"

#include "ovs/io.h"

#include <math.h>
#include <string.h>

/* ---------------------------------------------------------------- weights table */
void ovs_py_weights_clear(ovs_py_weights *w) {
    Py_CLEAR(w->keep);
    for (int64_t i = 0; w->kept && i < w->map.count; i++) ovs_free(w->kept[i]);
    PyMem_Free(w->kept);
    PyMem_Free(w->files);
    PyMem_Free(w->entries);
    PyMem_Free(w->items);
    PyMem_Free(w->sparse);
    w->items = NULL;
    w->kept = NULL;
    w->files = NULL;
    w->entries = NULL;
    w->map.items = NULL;
    w->map.count = 0;
    w->map.source = NULL;
    w->sparse = NULL;
    w->map.sparse = NULL;
    w->map.nsparse = 0;
}

/* Keep a C-contiguous array of `type` and `ndim` made from obj in w->keep; NULL on error. */
static PyArrayObject *keep_array(ovs_py_weights *w, PyObject *obj, int type, int ndim,
                                 const char *name, const char *what) {
    PyArrayObject *a = (PyArrayObject *)PyArray_FROMANY(obj, type, ndim, ndim, NPY_ARRAY_CARRAY_RO);
    if (!a) {
        PyErr_Format(PyExc_ValueError, "sparse weight '%s': %s must be a %d-D array of %s", name,
                     what, ndim, type == NPY_FLOAT32 ? "float32" : "integers");
        return NULL;
    }
    int bad = PyList_Append(w->keep, (PyObject *)a) < 0;
    Py_DECREF(a);
    return bad ? NULL : a;
}

/* One (shape, values, colidx, rowptr) tuple into t (the arrays kept alive in w->keep). */
static int sparse_from_tuple(ovs_py_weights *w, ovs_sparse_tensor *t, const char *name,
                             PyObject *tup) {
    memset(t, 0, sizeof *t);
    t->name = name;
    PyObject *shape = PyTuple_GET_ITEM(tup, 0);
    if (!PyTuple_Check(shape) || PyTuple_GET_SIZE(shape) < 1 || PyTuple_GET_SIZE(shape) > OVS_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "sparse weight '%s': shape must be a tuple of 1..%d ints",
                     name, OVS_MAX_DIMS);
        return -1;
    }
    t->ndim = (int)PyTuple_GET_SIZE(shape);
    for (int d = 0; d < t->ndim; d++) {
        long long e = PyLong_AsLongLong(PyTuple_GET_ITEM(shape, d));
        if (e == -1 && PyErr_Occurred()) return -1;
        if (e < 0) {
            PyErr_Format(PyExc_ValueError, "sparse weight '%s': negative extent", name);
            return -1;
        }
        t->shape[d] = e;
    }
    PyArrayObject *val, *col, *rp;
    if (!(val = keep_array(w, PyTuple_GET_ITEM(tup, 1), NPY_FLOAT32, 1, name, "values"))) return -1;
    PyObject *c = PyTuple_GET_ITEM(tup, 2);
    int u16 = PyArray_Check(c) && PyArray_TYPE((PyArrayObject *)c) == NPY_UINT16;
    if (!(col = keep_array(w, c, u16 ? NPY_UINT16 : NPY_INT32, 1, name, "colidx"))) return -1;
    if (!(rp = keep_array(w, PyTuple_GET_ITEM(tup, 3), NPY_INT64, 1, name, "rowptr"))) return -1;
    t->nnz = PyArray_DIM(val, 0);
    if (PyArray_DIM(col, 0) != t->nnz || PyArray_DIM(rp, 0) != t->shape[0] + 1) {
        PyErr_Format(PyExc_ValueError, "sparse weight '%s': %zd values, %zd column indices and %zd "
                     "row pointers for %lld rows", name, (Py_ssize_t)t->nnz,
                     (Py_ssize_t)PyArray_DIM(col, 0), (Py_ssize_t)PyArray_DIM(rp, 0),
                     (long long)t->shape[0]);
        return -1;
    }
    t->val = (const float *)PyArray_DATA(val);
    t->row_ptr = (const int64_t *)PyArray_DATA(rp);
    if (u16)
        t->col16 = (const uint16_t *)PyArray_DATA(col);
    else
        t->col32 = (const int32_t *)PyArray_DATA(col);
    return 0;
}

/* The source callbacks of a table with file-backed items (no Python calls: run without the GIL). */
static int weights_read(void *ctx, int64_t i, float *dst) {
    ovs_py_weights *w = ctx;
    const ovs_tensor *t = &w->items[i];
    int rc = ovs_safetensors_read_f32(dst, w->files[i], w->entries[i]);
    if (rc) return rc;
    int64_t n = ovs_tensor_numel(t);
    for (int64_t k = 0; k < n; k++)   /* a non-finite weight would silently poison every output */
        if (!isfinite(dst[k]))
            return ovs_set_error(OVS_ERR_ARG, "weight '%s' contains NaN or infinity at flat index %lld",
                                 t->name, (long long)k);
    return OVS_OK;
}

static int weights_keep(void *ctx, int64_t i, const float **data) {
    ovs_py_weights *w = ctx;
    if (!w->kept[i]) {
        size_t bytes;
        if (ovs_mul_size(&bytes, (size_t)ovs_tensor_numel(&w->items[i]), sizeof(float)))
            return ovs_set_error(OVS_ERR_OVERFLOW, "weight '%s' is too large", w->items[i].name);
        float *buf = ovs_malloc(bytes ? bytes : 1);
        if (!buf) return OVS_ERR_NOMEM;
        int rc = weights_read(ctx, i, buf);
        if (rc) {
            ovs_free(buf);
            return rc;
        }
        w->kept[i] = buf;
        w->items[i].data = buf;
    }
    *data = w->kept[i];
    return OVS_OK;
}

static int is_float_dtype(ovs_dtype d) {
    return d == OVS_DTYPE_F32 || d == OVS_DTYPE_F16 || d == OVS_DTYPE_BF16 || d == OVS_DTYPE_F64;
}

/* Item *t for (file, key): 1 = added, 0 = skipped (not a float tensor), -1 = error. */
static int weights_add_file_item(ovs_py_weights *w, int64_t i, PyObject *ref, const char *name) {
    PyObject *fobj = PyTuple_GET_ITEM(ref, 0), *key = PyTuple_GET_ITEM(ref, 1), *owner = NULL;
    if (!PyUnicode_Check(key)) {
        PyErr_Format(PyExc_TypeError, "weight '%s': a file reference is (SafeTensorsFile, str), "
                     "got a %.100s name", name, Py_TYPE(key)->tp_name);
        return -1;
    }
    ovs_safetensors *st = ovs_py_safetensors_of(fobj, &owner);
    if (!st) return -1;
    int bad = PyList_Append(w->keep, owner) < 0;
    Py_DECREF(owner);
    if (bad) return -1;
    const char *k = PyUnicode_AsUTF8(key);
    int64_t e = k ? ovs_safetensors_find(st, k) : -1;
    if (e < 0) {
        if (k) PyErr_Format(PyExc_KeyError, "weight '%s': the file has no tensor '%s'", name, k);
        return -1;
    }
    const ovs_safetensors_entry *ent = ovs_safetensors_entry_at(st, e);
    if (!is_float_dtype(ent->dtype)) return 0;
    ovs_tensor *t = &w->items[i];
    t->name = name;
    t->data = NULL;
    t->ndim = ent->ndim;
    for (int d = 0; d < t->ndim; d++) t->shape[d] = ent->shape[d];
    w->files[i] = st;
    w->entries[i] = e;
    return 1;
}

/* Build the table from a dict {name: array or (SafeTensorsFile, key)}; see py_models.h. */
int ovs_py_weights_from_dict(ovs_py_weights *w, PyObject *dict) {
    memset(w, 0, sizeof *w);
    if (!PyDict_Check(dict)) {
        PyErr_Format(PyExc_TypeError, "weights must be a dict of name -> numpy array, got %.100s",
                     Py_TYPE(dict)->tp_name);
        return -1;
    }
    Py_ssize_t n = PyDict_Size(dict), pos = 0, i = 0;
    size_t cap = n > 0 ? (size_t)n : 1;
    int lazy = 0;
    w->keep = PyList_New(0);
    w->items = PyMem_Calloc(cap, sizeof(ovs_tensor));
    w->files = PyMem_Calloc(cap, sizeof *w->files);
    w->entries = PyMem_Calloc(cap, sizeof *w->entries);
    w->kept = PyMem_Calloc(cap, sizeof *w->kept);
    w->sparse = PyMem_Calloc(cap, sizeof(ovs_sparse_tensor));
    Py_ssize_t ns = 0;
    if (!w->keep || !w->items || !w->files || !w->entries || !w->kept || !w->sparse) {
        PyErr_NoMemory();
        goto error;
    }
    PyObject *key, *value;
    while (PyDict_Next(dict, &pos, &key, &value)) {
        if (!PyUnicode_Check(key)) {
            PyErr_Format(PyExc_TypeError, "weight names must be str, got %.100s", Py_TYPE(key)->tp_name);
            goto error;
        }
        if (PyTuple_Check(value) && PyTuple_GET_SIZE(value) == 4) {
            const char *name = PyUnicode_AsUTF8(key);
            if (!name || PyList_Append(w->keep, key) < 0 ||
                sparse_from_tuple(w, &w->sparse[ns++], name, value) < 0)
                goto error;
            continue;
        }
        if (PyTuple_Check(value) && PyTuple_GET_SIZE(value) == 2) {
            if (PyList_Append(w->keep, key) < 0) goto error;
            const char *name = PyUnicode_AsUTF8(key);
            int added = name ? weights_add_file_item(w, i, value, name) : -1;
            if (added < 0) goto error;
            i += added;
            lazy |= added;
            continue;
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
        npy_intp k = ovs_py_nonfinite(a);
        if (k >= 0) {
            PyErr_Format(PyExc_ValueError, "weight '%s' contains NaN or infinity at flat index %zd",
                         name, (Py_ssize_t)k);
            goto error;
        }
    }
    w->map.items = w->items;
    w->map.count = i;
    if (lazy) {
        w->source.read = weights_read;
        w->source.keep = weights_keep;
        w->source.ctx = w;
        w->map.source = &w->source;
    }
    w->map.sparse = w->sparse;
    w->map.nsparse = ns;
    return 0;
error:
    w->map.count = i;
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

void ovs_py_on_model_dealloc(ovs_py_on_model *self) {
    if (self->free_c) self->free_c(self->c.any);
    Py_XDECREF(self->model);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

void ovs_py_on_model_keep(ovs_py_on_model *self, ovs_py_model *pm, void (*free_c)(void *c)) {
    self->free_c = free_c;
    Py_INCREF(pm);
    self->model = pm;
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

/* The end of an __init__: the C create's status, and the model's kind once it succeeded. */
static int model_created(ovs_py_model *self, int rc, int kind) {
    if (ovs_py_status(rc)) return -1;
    self->kind = kind;
    return 0;
}

/* A new dict of the non-NULL values (the outputs a forward was asked for). */
static PyObject *outputs_dict(int n, const char *const *names, PyObject *const *values) {
    PyObject *d = PyDict_New();
    for (int i = 0; d && i < n; i++)
        if (values[i] && PyDict_SetItemString(d, names[i], values[i]) < 0) Py_CLEAR(d);
    return d;
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
    npy_intp i = ovs_py_nonfinite(a);
    if (i >= 0) {
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
    int rc;
    OVS_PY_NOGIL(rc, ovs_resnet_create(&self->m.resnet, &cfg, &self->weights.map));   /* may read weights from a file */
    return model_created(self, rc, OVS_PY_RESNET);
}

/* want[s] = 1 for the stages res2..res5 named in `stages` (None: all four). */
static int resnet_stages(PyObject *stages, const char *const *names, int want[4]) {
    for (int s = 0; s < 4; s++) want[s] = stages == NULL || stages == Py_None;
    if (stages == NULL || stages == Py_None) return 0;
    PyObject *seq = PyUnicode_Check(stages) ? NULL
                                            : PySequence_Fast(stages, "stages must be a sequence of "
                                                                      "'res2'..'res5'");
    if (!seq && !PyUnicode_Check(stages)) return -1;
    const Py_ssize_t n = seq ? PySequence_Fast_GET_SIZE(seq) : 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = seq ? PySequence_Fast_GET_ITEM(seq, i) : stages;
        const char *name = PyUnicode_Check(item) ? PyUnicode_AsUTF8(item) : NULL;
        int s = 0;
        while (name && s < 4 && strcmp(name, names[s])) s++;
        if (!name || s == 4) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "stages: %R is not one of 'res2', 'res3', 'res4', 'res5'",
                             item);
            Py_XDECREF(seq);
            return -1;
        }
        want[s] = 1;
    }
    Py_XDECREF(seq);
    return 0;
}

static PyObject *resnet_forward(ovs_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"images", "features", "embed", "stages", NULL};
    static const char *names[5] = {"res2", "res3", "res4", "res5", "embed"};
    PyObject *obj, *result = NULL, *res[5] = {NULL};   /* res2..res5, embed */
    PyObject *stages = NULL;
    int features = 0, want_embed = 1, rc = -1, want[4];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|ppO", kwlist, &obj, &features, &want_embed, &stages))
        return NULL;
    if (self->kind != OVS_PY_RESNET) return PyErr_Format(PyExc_RuntimeError, "model not initialised");
    if (stages && stages != Py_None && !features) {
        PyErr_SetString(PyExc_ValueError, "stages selects among the features: pass features=True");
        return NULL;
    }
    if (resnet_stages(stages, names, want) < 0) return NULL;
    const ovs_resnet_config *cfg = ovs_resnet_get_config(self->m.resnet);
    if (want_embed && !cfg->has_attnpool) want_embed = 0;
    PyArrayObject *x = ovs_py_images(obj);
    if (!x) return NULL;
    npy_intp N = PyArray_DIM(x, 0), H = PyArray_DIM(x, 2), W = PyArray_DIM(x, 3);
    ovs_resnet_outputs out = {{NULL}, NULL};
    if (features)
        for (int s = 0; s < 4; s++) {
            if (!want[s]) continue;   /* not copied out */
            int64_t C, h, w;
            if (ovs_py_status(ovs_resnet_feature_shape(self->m.resnet, s, H, W, &C, &h, &w))) goto done;
            npy_intp dims[4] = {N, C, h, w};
            if (!(res[s] = new_array(4, dims))) goto done;
            out.res[s] = PyArray_DATA((PyArrayObject *)res[s]);
        }
    if (want_embed) {
        npy_intp dims[2] = {N, cfg->embed_dim};
        if (!(res[4] = new_array(2, dims))) goto done;
        out.embed = PyArray_DATA((PyArrayObject *)res[4]);
    }
    const float *data = PyArray_DATA(x);
    OVS_PY_LOCKED(self, rc, ovs_resnet_forward(self->m.resnet, data, N, H, W, &out));
    if (!rc) result = outputs_dict(5, names, res);
done:
    return OVS_PY_FINISH(rc, result, x, res[0], res[1], res[2], res[3], res[4]);
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
    OVS_PY_LOCKED(self, rc, ovs_resnet_sparsify(self->m.resnet, mode, H, W));
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

static PyObject *resnet_release(ovs_py_model *self, PyObject *unused) {
    if (self->kind != OVS_PY_RESNET) return PyErr_Format(PyExc_RuntimeError, "model not initialised");
    Py_BEGIN_ALLOW_THREADS
    OVS_MODEL_LOCK(self);
    ovs_resnet_release_workspace(self->m.resnet);
    OVS_MODEL_UNLOCK(self);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef resnet_methods[] = {
    {"release_workspace", (PyCFunction)resnet_release, METH_NOARGS,
     "release_workspace(): free the work buffers kept between calls (the next forward\n"
     "allocates them again); for a trunk whose features feed other blocks."},
    {"sparsify", (PyCFunction)(void (*)(void))resnet_sparsify, METH_VARARGS | METH_KEYWORDS,
     "sparsify(mode, H=224, W=224): hold each conv dense or sparse ('dense', 'all', 'auto')"},
    {"convs", (PyCFunction)resnet_convs, METH_NOARGS, "Per-conv storage and calibration as dicts."},
    {"forward", (PyCFunction)(void (*)(void))resnet_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(images, features=False, embed=True, stages=None) -> dict of res2..res5 (N, C, h, w)\n"
     "and embed (N, D); stages (with features=True): the feature maps to return, e.g. ('res5',)\n"
     "(default all four; each returned map is a copy out of the work buffers)."},
    {"config", (PyCFunction)resnet_config, METH_NOARGS, "The architecture as a dict."},
    {NULL, NULL, 0, NULL},
};

OVS_PY_TYPE(ovs_py_ResNetType, "ResNet", ovs_py_model, model_dealloc, resnet_init, resnet_methods,
            "ResNet(weights, prefix, layers, width, embed_dim=0, heads=0, grid=0, attnpool=True, "
            "style='clip', output_stride=32)");

/* ---------------------------------------------------------------- ViT and text tower */
/* ViT(weights, prefix, width, heads, patch, grid, embed_dim=0, act='quickgelu') and
 * TextTower(weights, prefix, width, heads, context, vocab, embed_dim=0, act='quickgelu'): one
 * parser, the two ints after heads named per tower. */
static int tower_init(ovs_py_model *self, PyObject *args, PyObject *kw, int kind) {
    static char *vit_kw[] = {"weights", "prefix", "width", "heads", "patch", "grid", "embed_dim",
                             "act", NULL};
    static char *text_kw[] = {"weights", "prefix", "width", "heads", "context", "vocab",
                              "embed_dim", "act", NULL};
    PyObject *weights;
    const char *prefix, *act = "quickgelu";
    long long width, heads, n2, n3, embed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OsLLLL|Ls", kind == OVS_PY_VIT ? vit_kw : text_kw,
                                     &weights, &prefix, &width, &heads, &n2, &n3, &embed, &act))
        return -1;
    ovs_act a;
    if (ovs_py_parse_act(act, 0, &a) || model_prepare(self, weights) < 0) return -1;
    int rc;
    if (kind == OVS_PY_VIT) {
        ovs_vit_config cfg = {.prefix = prefix, .width = width, .heads = heads, .patch = n2,
                              .grid = n3, .embed_dim = embed, .act = a};
        OVS_PY_NOGIL(rc, ovs_vit_create(&self->m.vit, &cfg, &self->weights.map));   /* may read weights from a file */
    } else {
        ovs_text_config cfg = {.prefix = prefix, .width = width, .heads = heads, .context = n2,
                               .vocab = n3, .embed_dim = embed, .act = a};
        OVS_PY_NOGIL(rc, ovs_text_create(&self->m.text, &cfg, &self->weights.map));
    }
    return model_created(self, rc, kind);
}

static int vit_init(ovs_py_model *self, PyObject *args, PyObject *kw) {
    return tower_init(self, args, kw, OVS_PY_VIT);
}

static int text_init(ovs_py_model *self, PyObject *args, PyObject *kw) {
    return tower_init(self, args, kw, OVS_PY_TEXT);
}

static PyObject *vit_forward(ovs_py_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"images", "blocks", "all_tokens", "embed", "tokens", NULL};
    static const char *names[3] = {"tokens", "block_tokens", "embed"};
    PyObject *obj, *result = NULL, *res[3] = {NULL};   /* tokens, block_tokens, embed */
    long long blocks = -1;
    int want_all = 0, want_embed = 1, want_tokens = 0, rc = -1;
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
        goto done;
    }
    npy_intp T = 1 + (H / cfg->patch) * (W / cfg->patch), D = cfg->width;
    npy_intp dt[3] = {N, T, D}, da[4] = {blocks, N, T, D};
    npy_intp de[2] = {N, cfg->embed_dim > 0 ? cfg->embed_dim : D};
    if ((want_tokens && !(res[0] = new_array(3, dt))) || (want_all && !(res[1] = new_array(4, da))) ||
        (want_embed && !(res[2] = new_array(2, de))))
        goto done;
    ovs_vit_outputs out = {NULL, NULL, NULL};
    out.tokens = res[0] ? PyArray_DATA((PyArrayObject *)res[0]) : NULL;
    out.block_tokens = res[1] ? PyArray_DATA((PyArrayObject *)res[1]) : NULL;
    out.embed = res[2] ? PyArray_DATA((PyArrayObject *)res[2]) : NULL;
    const float *data = PyArray_DATA(x);
    OVS_PY_LOCKED(self, rc, ovs_vit_forward(self->m.vit, data, N, H, W, blocks, &out));
    if (!rc) result = outputs_dict(3, names, res);
done:
    return OVS_PY_FINISH(rc, result, x, res[0], res[1], res[2]);
}

/* config() of a ViT or a TextTower: the two towers' configs differ in two fields. */
static PyObject *tower_config(ovs_py_model *self, PyObject *unused) {
    if (self->kind != OVS_PY_VIT && self->kind != OVS_PY_TEXT)
        return PyErr_Format(PyExc_RuntimeError, "model not initialised");
    const ovs_vit_config *v = self->kind == OVS_PY_VIT ? ovs_vit_get_config(self->m.vit) : NULL;
    const ovs_text_config *t = v ? NULL : ovs_text_get_config(self->m.text);
    return Py_BuildValue("{s:s,s:L,s:L,s:L,s:L,s:L,s:L,s:z}", "prefix", v ? v->prefix : t->prefix,
                         "width", (long long)(v ? v->width : t->width),
                         "layers", (long long)(v ? v->layers : t->layers),
                         "heads", (long long)(v ? v->heads : t->heads),
                         v ? "patch" : "context", (long long)(v ? v->patch : t->context),
                         v ? "grid" : "vocab", (long long)(v ? v->grid : t->vocab),
                         "embed_dim", (long long)(v ? v->embed_dim : t->embed_dim),
                         "act", ovs_act_name(v ? v->act : t->act));
}

static PyMethodDef vit_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))vit_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(images, blocks=-1, all_tokens=False, embed=True, tokens=False) -> dict"},
    {"config", (PyCFunction)tower_config, METH_NOARGS, "The architecture as a dict."},
    {NULL, NULL, 0, NULL},
};

OVS_PY_TYPE(ovs_py_ViTType, "ViT", ovs_py_model, model_dealloc, vit_init, vit_methods,
            "ViT(weights, prefix, width, heads, patch, grid, embed_dim=0, act='quickgelu')");

/* ---------------------------------------------------------------- text */
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
    OVS_PY_LOCKED(self, rc, ovs_text_forward(self->m.text, o, data, N, S, truncate));
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
    OVS_PY_LOCKED(self, rc, ovs_text_prefix(self->m.text, o, data, P));
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
    OVS_PY_LOCKED(self, rc, ovs_text_forward_prefixed(self->m.text, o, cache, P, data, N, S));
done:
    return OVS_PY_FINISH(rc, out, kv, ids);
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
    {"config", (PyCFunction)tower_config, METH_NOARGS, "The architecture as a dict."},
    {NULL, NULL, 0, NULL},
};

OVS_PY_TYPE(ovs_py_TextType, "TextTower", ovs_py_model, model_dealloc, text_init, text_methods,
            "TextTower(weights, prefix, width, heads, context, vocab, embed_dim=0, "
            "act='quickgelu')");

int ovs_py_register_models(PyObject *m) {
    PyTypeObject *types[3] = {&ovs_py_ResNetType, &ovs_py_ViTType, &ovs_py_TextType};
    const char *names[3] = {"ResNet", "ViT", "TextTower"};
    for (int i = 0; i < 3; i++)
        if (ovs_py_add_type(m, names[i], types[i]) < 0) return -1;
    return 0;
}
