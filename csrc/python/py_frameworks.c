/* Python bindings of the paper's frameworks: _core.DeepLabHead (on a _core.ResNet trunk) and
 * _core.pixel_classify. */
#include "python/py_models.h"

#include <string.h>

static void deeplab_free_c(void *head) { ovs_deeplab_free(head); }

/* DeepLabHead(trunk, prefix=""): the head's weights come from the trunk's weight table (the
 * dict the ResNet was built from must hold them too); the head borrows them from there, so the
 * trunk, which it references, keeps them alive. */
static int deeplab_init(ovs_py_on_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"trunk", "prefix", NULL};
    PyObject *trunk;
    const char *prefix = "";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|s", kwlist, &trunk, &prefix)) return -1;
    if (self->c.deeplab) {
        PyErr_SetString(PyExc_RuntimeError, "DeepLabHead already initialised");
        return -1;
    }
    if (!PyObject_TypeCheck(trunk, &ovs_py_ResNetType) || !((ovs_py_model *)trunk)->kind) {
        PyErr_Format(PyExc_TypeError, "trunk must be an initialised ovs._core.ResNet, got %.100s",
                     Py_TYPE(trunk)->tp_name);
        return -1;
    }
    ovs_py_model *pm = (ovs_py_model *)trunk;
    ovs_deeplab_config cfg = {.prefix = prefix};
    int rc;
    /* The trunk's lock: its weight table may read (and keep) tensors from a file. */
    OVS_PY_LOCKED(pm, rc, ovs_deeplab_create(&self->c.deeplab, pm->m.resnet, &cfg, &pm->weights.map));
    if (ovs_py_status(rc)) return -1;
    ovs_py_on_model_keep(self, pm, deeplab_free_c);
    return 0;
}

static PyObject *deeplab_forward(ovs_py_on_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"images", NULL};
    PyObject *obj;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", kwlist, &obj)) return NULL;
    if (!self->c.deeplab) return PyErr_Format(PyExc_RuntimeError, "DeepLabHead not initialised");
    PyArrayObject *x = ovs_py_images(obj);
    if (!x) return NULL;
    npy_intp N = PyArray_DIM(x, 0), H = PyArray_DIM(x, 2), W = PyArray_DIM(x, 3);
    int64_t h, w;
    PyArrayObject *out = NULL;
    int rc = ovs_deeplab_out_shape(self->c.deeplab, H, W, &h, &w);
    if (rc) goto done;
    npy_intp dims[4] = {N, ovs_deeplab_embed_dim(self->c.deeplab), h, w};
    if (!(out = ovs_py_new_float(4, dims))) goto done;   /* rc 0 + MemoryError */
    OVS_PY_LOCKED(self->model, rc, ovs_deeplab_forward(self->c.deeplab, F32(out), F32(x), N, H, W));
done:
    return OVS_PY_FINISH(rc, out, x);
}

/* classify(images (N, 3, H, W), text (T, E), scale, softmax=False) -> (N, T, h, w):
 * ovs_deeplab_classify, the embedding and its text classification band by band. */
static PyObject *deeplab_classify(ovs_py_on_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"images", "text", "scale", "softmax", NULL};
    PyObject *xo, *to;
    double scale;
    int softmax = 0, st = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOd|p", kwlist, &xo, &to, &scale, &softmax))
        return NULL;
    if (!self->c.deeplab) return PyErr_Format(PyExc_RuntimeError, "DeepLabHead not initialised");
    PyArrayObject *x = NULL, *t = NULL, *out = NULL;
    if (!(x = ovs_py_images(xo)) || !(t = ovs_py_float_array(to, 2, "text (T, E)"))) goto done;
    const npy_intp E = ovs_deeplab_embed_dim(self->c.deeplab), T = PyArray_DIM(t, 0);
    if (T < 1 || PyArray_DIM(t, 1) != E) {
        PyErr_Format(PyExc_ValueError, "text must be (T >= 1, %zd), got (%zd, %zd)", (Py_ssize_t)E,
                     (Py_ssize_t)T, (Py_ssize_t)PyArray_DIM(t, 1));
        goto done;
    }
    npy_intp N = PyArray_DIM(x, 0), H = PyArray_DIM(x, 2), W = PyArray_DIM(x, 3);
    int64_t h, w;
    if ((st = ovs_deeplab_out_shape(self->c.deeplab, H, W, &h, &w))) goto done;
    st = -1;
    npy_intp dims[4] = {N, T, h, w};
    if (!(out = ovs_py_new_float(4, dims))) goto done;
    OVS_PY_LOCKED(self->model, st, ovs_deeplab_classify(self->c.deeplab, F32(out), F32(x), N, H, W,
                                                        F32(t), T, (float)scale, softmax));
done:
    return OVS_PY_FINISH(st, out, x, t);
}

static PyObject *deeplab_info(ovs_py_on_model *self, PyObject *unused) {
    if (!self->c.deeplab) return PyErr_Format(PyExc_RuntimeError, "DeepLabHead not initialised");
    return Py_BuildValue("{s:L,s:O}", "embed_dim", (long long)ovs_deeplab_embed_dim(self->c.deeplab),
                         "image_pool", ovs_deeplab_image_pool(self->c.deeplab) ? Py_True : Py_False);
}

static PyMethodDef deeplab_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))deeplab_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(images (N, 3, H, W)) -> per-pixel embeddings (N, E, h, w), h, w = res2's extent"},
    {"classify", (PyCFunction)(void (*)(void))deeplab_classify, METH_VARARGS | METH_KEYWORDS,
     "classify(images (N, 3, H, W), text (T, E), scale, softmax=False) -> (N, T, h, w): "
     "pixel_classify(forward(images)) without holding the (N, E, h, w) embeddings"},
    {"info", (PyCFunction)deeplab_info, METH_NOARGS, "embed_dim and the ASPP fifth-branch variant"},
    {NULL, NULL, 0, NULL},
};

static OVS_PY_TYPE(ovs_py_DeepLabType, "DeepLabHead", ovs_py_on_model, ovs_py_on_model_dealloc,
                   deeplab_init, deeplab_methods,
                   "DeepLabHead(trunk, prefix=''): ASPP + DeepLabV3+ decoder + embedding on a "
                   "ResNet(style='deeplab') trunk built from the same weights dict");

/* pixel_classify(embed (E, h, w), text (T, E), scale, softmax=False, naive=False) -> (T, h, w) */
static PyObject *py_pixel_classify(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"embed", "text", "scale", "softmax", "naive", NULL};
    PyObject *eo, *to, *out = NULL;
    double scale;
    int softmax = 0, naive = 0, rc = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOd|pp", kwlist, &eo, &to, &scale, &softmax, &naive))
        return NULL;
    PyArrayObject *e = ovs_py_float_array(eo, 3, "embed (E, h, w)"), *t = NULL;
    if (!e) return NULL;
    if (!(t = ovs_py_float_array(to, 2, "text (T, E)"))) goto done;
    npy_intp E = PyArray_DIM(e, 0), h = PyArray_DIM(e, 1), w = PyArray_DIM(e, 2), T = PyArray_DIM(t, 0);
    if (PyArray_DIM(t, 1) != E) {
        PyErr_Format(PyExc_ValueError, "text has %zd columns, the embeddings %zd channels",
                     (Py_ssize_t)PyArray_DIM(t, 1), (Py_ssize_t)E);
        goto done;
    }
    if (T == 0 || E == 0) {
        PyErr_Format(PyExc_ValueError, "need at least one text row and one channel, got T=%zd, E=%zd",
                     (Py_ssize_t)T, (Py_ssize_t)E);
        goto done;
    }
    npy_intp dims[3] = {T, h, w};
    if (!(out = PyArray_SimpleNew(3, dims, NPY_FLOAT32))) goto done;
    const float *ed = PyArray_DATA(e), *td = PyArray_DATA(t);
    float *od = PyArray_DATA((PyArrayObject *)out);
    OVS_PY_NOGIL(rc, (naive ? ovs_pixel_classify_naive : ovs_pixel_classify)(
                         od, ed, E, (int64_t)h * w, td, T, (float)scale, softmax));
done:
    return OVS_PY_FINISH(rc, out, e, t);
}

static PyMethodDef framework_functions[] = {
    {"pixel_classify", (PyCFunction)(void (*)(void))py_pixel_classify, METH_VARARGS | METH_KEYWORDS,
     "pixel_classify(embed (E, h, w), text (T, E), scale, softmax=False, naive=False) -> (T, h, w): "
     "scale * cosine of each pixel's embedding with the (L2-normalised) text rows, optionally "
     "softmaxed over T"},
    {NULL, NULL, 0, NULL},
};

int ovs_py_register_frameworks(PyObject *m) {
    if (ovs_py_add_type(m, "DeepLabHead", &ovs_py_DeepLabType) < 0) return -1;
    return PyModule_AddFunctions(m, framework_functions);
}
