/* Python bindings of the segmentation heads: _core.heads (the heads table), _core.Segmenter,
 * _core.seg_labels, _core.seg_upsample. */
#include "python/py_models.h"
#include "ovs/methods.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static void segmenter_free_c(void *seg) { ovs_segmenter_free(seg); }

static int segmenter_init(ovs_py_on_model *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"model", "head", "crop", "stride", "sigma", "pd_thresh", "ks_thresh", NULL};
    PyObject *model;
    const char *head;
    long long crop = 0, stride = 0;
    double sigma = 5.0, pd_thresh = 0.0, ks_thresh = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Os|LLddd", kwlist, &model, &head, &crop, &stride, &sigma,
                                     &pd_thresh, &ks_thresh))
        return -1;
    if (!(pd_thresh >= 0.0 && pd_thresh <= 1.0) || !(ks_thresh >= 0.0 && ks_thresh <= 1.0)) {
        char msg[128];
        snprintf(msg, sizeof msg, "pd_thresh and ks_thresh must be in [0, 1], got %g, %g", pd_thresh, ks_thresh);
        PyErr_SetString(PyExc_ValueError, msg);
        return -1;
    }
    if (self->c.seg) {
        PyErr_SetString(PyExc_RuntimeError, "segmenter already initialised");
        return -1;
    }
    if (!PyObject_TypeCheck(model, &ovs_py_ResNetType) && !PyObject_TypeCheck(model, &ovs_py_ViTType)) {
        PyErr_Format(PyExc_TypeError, "model must be an ovs._core.ResNet or ViT, got %.100s", Py_TYPE(model)->tp_name);
        return -1;
    }
    ovs_py_model *pm = (ovs_py_model *)model;
    if (!pm->kind) {
        PyErr_SetString(PyExc_RuntimeError, "model not initialised");
        return -1;
    }
    ovs_seg_config cfg = {.head = ovs_head_by_name(head), .crop = crop, .stride = stride, .sigma = (float)sigma,
                          .pd_thresh = (float)pd_thresh, .ks_thresh = (float)ks_thresh};
    if (!cfg.head) {
        char names[256] = "";
        int64_t n;
        const ovs_head_info *t = ovs_head_table(&n);
        for (int64_t i = 0; i < n; i++)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "", t[i].name);
        PyErr_Format(PyExc_ValueError, "unknown head '%s' (%s)", head, names);
        return -1;
    }
    int rc = ovs_segmenter_create(&self->c.seg, pm->kind == OVS_PY_RESNET ? pm->m.resnet : NULL,
                                  pm->kind == OVS_PY_VIT ? pm->m.vit : NULL, &cfg);
    if (ovs_py_status(rc)) return -1;
    ovs_py_on_model_keep(self, pm, segmenter_free_c);
    return 0;
}

/* The image side's arguments of Segmenter.logits / .labels, checked: the image (a new reference
 * in *img), its strides, the processing size (Hp, Wp), mean, std and the classifier (*cls). */
typedef struct {
    PyArrayObject *img, *cls;
    int64_t rs, ps, H, W, C;
    long long Hp, Wp;
    float mean[3], std[3];
} seg_image_args;

static int seg_image_args_check(ovs_py_on_model *self, seg_image_args *a, PyObject *img_obj, PyObject *mean_obj,
                                PyObject *std_obj, PyObject *cls_obj) {
    if (ovs_py_rgb(mean_obj, "mean", a->mean) || ovs_py_rgb(std_obj, "std", a->std)) return -1;
    for (int i = 0; i < 3; i++)
        if (!(a->std[i] > 0) || !isfinite(a->mean[i])) {
            PyErr_Format(PyExc_ValueError, "std must be positive and mean finite");
            return -1;
        }
    if (!(a->img = ovs_py_uint8_image(img_obj, "image", &a->rs, &a->ps))) return -1;
    if (a->Hp <= 0 || a->Wp <= 0 || a->Hp > 65536 || a->Wp > 65536) {
        PyErr_Format(PyExc_ValueError, "processing size must be in 1..65536, got %lldx%lld", a->Hp, a->Wp);
        return -1;
    }
    if (!(a->cls = ovs_py_float_array(cls_obj, 2, "classifier (C, E)"))) return -1;
    int64_t E = ovs_segmenter_embed_dim(self->c.seg);
    a->C = PyArray_DIM(a->cls, 0);
    if (a->C == 0 || PyArray_DIM(a->cls, 1) != E) {
        PyErr_Format(PyExc_ValueError, "classifier must be (C >= 1, %lld), got (%zd, %zd)", (long long)E,
                     (Py_ssize_t)a->C, (Py_ssize_t)PyArray_DIM(a->cls, 1));
        return -1;
    }
    a->H = PyArray_DIM(a->img, 0), a->W = PyArray_DIM(a->img, 1);
    return 0;
}

static PyObject *segmenter_logits(ovs_py_on_model *self, PyObject *args, PyObject *kw) {
    int rc = -1;
    static char *kwlist[] = {"image", "out_h", "out_w", "mean", "std", "classifier", NULL};
    PyObject *img_obj, *mean_obj, *std_obj, *cls_obj, *out = NULL;
    seg_image_args a = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLLOOO", kwlist, &img_obj, &a.Hp, &a.Wp, &mean_obj,
                                     &std_obj, &cls_obj))
        return NULL;
    if (seg_image_args_check(self, &a, img_obj, mean_obj, std_obj, cls_obj)) goto done;
    npy_intp dims[3] = {a.C, a.Hp, a.Wp};
    if (!(out = PyArray_SimpleNew(3, dims, NPY_FLOAT32))) goto done;
    float *o = PyArray_DATA((PyArrayObject *)out);
    OVS_PY_LOCKED(self->model, rc, ovs_seg_logits(self->c.seg, o, PyArray_DATA(a.img), a.H, a.W, a.rs, a.ps,
                                                  a.Hp, a.Wp, a.mean, a.std, PyArray_DATA(a.cls), a.C));
done:
    return OVS_PY_FINISH(rc, out, a.img, a.cls);
}

/* labels(image, out_h, out_w, mean, std, classifier, H, W, logit_scale, bg_threshold, bg_label)
 * -> (labels int32 (H, W), nonfinite): ovs_seg_image_labels; nonfinite > 0 counts non-finite
 * logits (then the labels are not computed and the caller refuses). */
static PyObject *segmenter_labels(ovs_py_on_model *self, PyObject *args, PyObject *kw) {
    int rc = -1;
    static char *kwlist[] = {"image", "out_h", "out_w", "mean", "std", "classifier", "H", "W",
                             "logit_scale", "bg_threshold", "bg_label", NULL};
    PyObject *img_obj, *mean_obj, *std_obj, *cls_obj, *out = NULL;
    seg_image_args a = {0};
    long long OH, OW;
    double scale = 1.0, thr = 0.0;
    int bg_label = -1;
    int64_t nonfinite = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLLOOOLL|ddi", kwlist, &img_obj, &a.Hp, &a.Wp, &mean_obj,
                                     &std_obj, &cls_obj, &OH, &OW, &scale, &thr, &bg_label))
        return NULL;
    if (seg_image_args_check(self, &a, img_obj, mean_obj, std_obj, cls_obj)) goto done;
    if (OH <= 0 || OW <= 0 || OH > 65536 || OW > 65536) {
        PyErr_Format(PyExc_ValueError, "output size must be in 1..65536, got %lldx%lld", OH, OW);
        goto done;
    }
    npy_intp dims[2] = {OH, OW};
    if (!(out = PyArray_SimpleNew(2, dims, NPY_INT32))) goto done;
    int32_t *o = PyArray_DATA((PyArrayObject *)out);
    OVS_PY_LOCKED(self->model, rc, ovs_seg_image_labels(self->c.seg, o, PyArray_DATA(a.img), a.H, a.W, a.rs, a.ps,
                                                        a.Hp, a.Wp, a.mean, a.std, PyArray_DATA(a.cls), a.C, OH,
                                                        OW, (float)scale, (float)thr, bg_label, &nonfinite));
done:
    out = OVS_PY_FINISH(rc, out, a.img, a.cls);
    if (!out) return NULL;
    PyObject *res = Py_BuildValue("(NL)", out, (long long)nonfinite);
    return res;
}

static PyObject *segmenter_dense(ovs_py_on_model *self, PyObject *arg) {
    int rc = -1;
    PyArrayObject *x = ovs_py_images(arg);
    PyObject *out = NULL;
    if (!x) return NULL;
    if (PyArray_DIM(x, 0) != 1) {
        PyErr_SetString(PyExc_ValueError, "dense_features takes one image (1, 3, H, W)");
        goto done;
    }
    int64_t H = PyArray_DIM(x, 2), W = PyArray_DIM(x, 3), p = ovs_segmenter_patch(self->c.seg);
    if (H % p || W % p) {
        PyErr_Format(PyExc_ValueError, "image sides must be multiples of %lld, got %lldx%lld", (long long)p,
                     (long long)H, (long long)W);
        goto done;
    }
    npy_intp dims[3] = {H / p, W / p, ovs_segmenter_embed_dim(self->c.seg)};
    if (!(out = PyArray_SimpleNew(3, dims, NPY_FLOAT32))) goto done;
    const float *xd = PyArray_DATA(x);
    float *o = PyArray_DATA((PyArrayObject *)out);
    OVS_PY_LOCKED(self->model, rc, ovs_seg_dense_features(self->c.seg, o, xd, H, W));
done:
    return OVS_PY_FINISH(rc, out, x);
}

/* logits_at(image, out_h, out_w, mean, std, classifier, H, W, logit_scale=1.0, softmax=False)
 * -> (out float32 (C, H, W), nonfinite): ovs_seg_image_logits (nonfinite > 0: that many
 * non-finite low-resolution logits; the caller refuses). */
static PyObject *segmenter_logits_at(ovs_py_on_model *self, PyObject *args, PyObject *kw) {
    int rc = -1, softmax = 0;
    static char *kwlist[] = {"image", "out_h", "out_w", "mean", "std", "classifier", "H", "W",
                             "logit_scale", "softmax", NULL};
    PyObject *img_obj, *mean_obj, *std_obj, *cls_obj, *out = NULL;
    seg_image_args a = {0};
    long long OH, OW;
    double scale = 1.0;
    int64_t nonfinite = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLLOOOLL|dp", kwlist, &img_obj, &a.Hp, &a.Wp, &mean_obj,
                                     &std_obj, &cls_obj, &OH, &OW, &scale, &softmax))
        return NULL;
    if (seg_image_args_check(self, &a, img_obj, mean_obj, std_obj, cls_obj)) goto done;
    if (OH <= 0 || OW <= 0 || OH > 65536 || OW > 65536) {
        PyErr_Format(PyExc_ValueError, "output size must be in 1..65536, got %lldx%lld", OH, OW);
        goto done;
    }
    npy_intp dims[3] = {a.C, OH, OW};
    if (!(out = PyArray_SimpleNew(3, dims, NPY_FLOAT32))) goto done;
    float *o = PyArray_DATA((PyArrayObject *)out);
    OVS_PY_LOCKED(self->model, rc, ovs_seg_image_logits(self->c.seg, o, PyArray_DATA(a.img), a.H, a.W, a.rs, a.ps,
                                                        a.Hp, a.Wp, a.mean, a.std, PyArray_DATA(a.cls), a.C, OH,
                                                        OW, (float)scale, softmax, &nonfinite));
done:
    out = OVS_PY_FINISH(rc, out, a.img, a.cls);
    if (!out) return NULL;
    return Py_BuildValue("(NL)", out, (long long)nonfinite);
}

static PyObject *segmenter_release(ovs_py_on_model *self, PyObject *noargs) {
    Py_BEGIN_ALLOW_THREADS
    OVS_MODEL_LOCK(self->model);
    ovs_segmenter_release_workspace(self->c.seg);
    OVS_MODEL_UNLOCK(self->model);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef segmenter_methods[] = {
    {"release_workspace", (PyCFunction)segmenter_release, METH_NOARGS, "release_workspace" OVS_PY_RELEASE_DOC},
    {"logits", (PyCFunction)(void (*)(void))segmenter_logits, METH_VARARGS | METH_KEYWORDS,
     "logits(image uint8 (H,W,3), out_h, out_w, mean, std, classifier (C,E)) -> (C, out_h, out_w) cosine logits"},
    {"logits_at", (PyCFunction)(void (*)(void))segmenter_logits_at, METH_VARARGS | METH_KEYWORDS,
     "logits_at(image, out_h, out_w, mean, std, classifier, H, W, logit_scale=1.0, softmax=False) -> "
     "(out float32 (C, H, W), nonfinite): logits then seg_upsample in one call (the same floats), "
     "without the (C, out_h, out_w) logits; nonfinite > 0: that many non-finite logits"},
    {"labels", (PyCFunction)(void (*)(void))segmenter_labels, METH_VARARGS | METH_KEYWORDS,
     "labels(image, out_h, out_w, mean, std, classifier, H, W, logit_scale=1.0, bg_threshold=0.0, "
     "bg_label=-1) -> (labels int32 (H, W), nonfinite): logits then seg_labels in one call (the same "
     "labels); nonfinite > 0: that many non-finite logits, no labels"},
    {"dense_features", (PyCFunction)segmenter_dense, METH_O,
     "dense_features(x float32 (1,3,H,W)) -> (H/p, W/p, E) unnormalised dense features"},
    {NULL, NULL, 0, NULL},
};

static OVS_PY_TYPE(ovs_py_SegmenterType, "Segmenter", ovs_py_on_model, ovs_py_on_model_dealloc,
                   segmenter_init, segmenter_methods,
                   "Segmenter(model, head, crop=0, stride=0, sigma=5.0, pd_thresh=0.0, ks_thresh=0.0)");

/* The logits of a label stage as a new float32 (C, h, w) array in *lg (the caller releases it,
 * also on failure), with ValueErrors for an output size (H, W) outside 1..65536 or empty logits. */
static int stage_logits(PyObject *obj, const char *what, long long H, long long W, PyArrayObject **lg) {
    if (!(*lg = ovs_py_float_array(obj, 3, what))) return -1;
    if (H <= 0 || W <= 0 || H > 65536 || W > 65536) {
        PyErr_Format(PyExc_ValueError, "output size must be in 1..65536, got %lldx%lld", H, W);
        return -1;
    }
    if (PyArray_SIZE(*lg) == 0) {
        PyErr_SetString(PyExc_ValueError, "logits must not be empty");
        return -1;
    }
    return 0;
}

PyObject *ovs_py_seg_final(PyObject *args, PyObject *kw, int labels_mode) {
    int rc = -1;
    static char *kwlist[] = {"logits", "out_h", "out_w", "logit_scale", "bg_threshold", "bg_label", "softmax", NULL};
    PyObject *obj, *out = NULL;
    long long H, W;
    double scale = 1.0, thr = 0.0;
    int bg_label = -1, softmax = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLL|ddip", kwlist, &obj, &H, &W, &scale, &thr, &bg_label, &softmax))
        return NULL;
    PyArrayObject *lg = NULL;
    if (stage_logits(obj, "logits (C, h, w)", H, W, &lg)) goto done;
    int64_t C = PyArray_DIM(lg, 0), h = PyArray_DIM(lg, 1), w = PyArray_DIM(lg, 2);
    npy_intp d3[3] = {C, H, W}, d2[2] = {H, W};
    out = labels_mode ? PyArray_SimpleNew(2, d2, NPY_INT32) : PyArray_SimpleNew(3, d3, NPY_FLOAT32);
    if (!out) goto done;
    const float *ld = PyArray_DATA(lg);
    void *od = PyArray_DATA((PyArrayObject *)out);
    if (labels_mode)
        OVS_PY_NOGIL(rc, (labels_mode == 2 ? ovs_seg_labels_naive : ovs_seg_labels)(
                             od, ld, C, h, w, H, W, (float)scale, (float)thr, bg_label));
    else
        OVS_PY_NOGIL(rc, ovs_seg_upsample(od, ld, C, h, w, H, W, (float)scale, softmax));
done:
    return OVS_PY_FINISH(rc, out, lg);
}

OVS_PY_VARIANT(py_seg_labels, ovs_py_seg_final, 1)
OVS_PY_VARIANT(py_seg_upsample, ovs_py_seg_final, 0)

static PyObject *py_seg_labels_pamr(PyObject *self, PyObject *args, PyObject *kw) {
    int rc = -1;
    static char *kwlist[] = {"logits", "guide", "steps", "dilations", "logit_scale",
                             "bg_threshold", "bg_label", NULL};
    PyObject *l_obj, *g_obj, *d_obj = NULL, *out = NULL;
    long long steps;
    double scale = 1.0, thr = 0.0;
    int bg_label = -1;
    int64_t dil[16] = {8, 16}, nd = 2;
    PyArrayObject *lg = NULL, *gd = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOL|Oddi", kwlist, &l_obj, &g_obj, &steps, &d_obj,
                                     &scale, &thr, &bg_label))
        return NULL;
    if (ovs_py_int64_seq(d_obj, "dilations", dil, 16, &nd)) return NULL;
    if (!(lg = ovs_py_float_array(l_obj, 3, "logits (C, h, w)")) ||
        !(gd = ovs_py_float_array(g_obj, 3, "guide (K, H, W)")))
        goto done;
    const int64_t C = PyArray_DIM(lg, 0), h = PyArray_DIM(lg, 1), w = PyArray_DIM(lg, 2);
    const int64_t K = PyArray_DIM(gd, 0), H = PyArray_DIM(gd, 1), W = PyArray_DIM(gd, 2);
    if (C == 0 || h == 0 || w == 0 || K == 0 || H == 0 || W == 0) {
        PyErr_SetString(PyExc_ValueError, "logits and guide must not be empty");
        goto done;
    }
    npy_intp d2[2] = {H, W};
    if (!(out = PyArray_SimpleNew(2, d2, NPY_INT32))) goto done;
    int32_t *od = PyArray_DATA((PyArrayObject *)out);
    const float *ld = PyArray_DATA(lg), *gdd = PyArray_DATA(gd);
    OVS_PY_NOGIL(rc, ovs_seg_labels_pamr(od, ld, C, h, w, gdd, K, H, W, dil, nd, steps,
                                         (float)scale, (float)thr, bg_label));
done:
    return OVS_PY_FINISH(rc, out, lg, gd);
}


/* seg_labels_grouped(logits (Q,h,w), out_h, out_w, query_class (Q,) int32, num_classes, ...) */
PyObject *ovs_py_seg_grouped(PyObject *args, PyObject *kw, int naive) {
    int rc = -1;
    static char *kwlist[] = {"logits", "out_h", "out_w", "query_class", "num_classes", "logit_scale",
                             "prob_thd", "bg_label", "area_thd", NULL};
    PyObject *obj, *qobj, *out = NULL;
    PyArrayObject *lg = NULL, *qa = NULL;
    long long H, W, C;
    double scale = 1.0, thr = 0.0, area = -1.0;
    int bg_label = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OLLOL|ddid", kwlist, &obj, &H, &W, &qobj, &C, &scale, &thr,
                                     &bg_label, &area))
        return NULL;
    if (stage_logits(obj, "logits (Q, h, w)", H, W, &lg)) goto done;
    int64_t Q = PyArray_DIM(lg, 0), h = PyArray_DIM(lg, 1), w = PyArray_DIM(lg, 2);
    if (!(qa = (PyArrayObject *)PyArray_FROMANY(qobj, NPY_INT32, 1, 1, NPY_ARRAY_CARRAY_RO | NPY_ARRAY_FORCECAST)))
        goto done;
    if (PyArray_DIM(qa, 0) != Q) {
        PyErr_Format(PyExc_ValueError, "query_class must have one entry per query (%lld), got %zd", (long long)Q,
                     (Py_ssize_t)PyArray_DIM(qa, 0));
        goto done;
    }
    if (!isfinite(thr) || !isfinite(area) || area > 1.0) {
        char msg[128];
        snprintf(msg, sizeof msg, "prob_thd must be finite and area_thd <= 1 (negative = off), got %g, %g", thr, area);
        PyErr_SetString(PyExc_ValueError, msg);
        goto done;
    }
    npy_intp d2[2] = {H, W};
    if (!(out = PyArray_SimpleNew(2, d2, NPY_INT32))) goto done;
    const float *ld = PyArray_DATA(lg);
    const int32_t *qd = PyArray_DATA(qa);
    int32_t *od = PyArray_DATA((PyArrayObject *)out);
    OVS_PY_NOGIL(rc, (naive ? ovs_seg_labels_grouped_naive : ovs_seg_labels_grouped)(
                         od, ld, Q, h, w, H, W, qd, C, (float)scale, (float)thr, bg_label,
                         (float)area));
done:
    return OVS_PY_FINISH(rc, out, lg, qa);
}

OVS_PY_VARIANT(py_seg_labels_grouped, ovs_py_seg_grouped, 0)

static PyObject *py_seg_prompt_denoise(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"logits", "thresh", "scale", NULL};
    PyObject *obj;
    double thresh, scale = 100.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Od|d", kwlist, &obj, &thresh, &scale)) return NULL;
    PyArrayObject *lg = ovs_py_float_array(obj, 2, "logits (C, n)"), *out = NULL;
    int rc = -1;
    if (lg && (out = (PyArrayObject *)PyArray_NewCopy(lg, NPY_CORDER)))
        OVS_PY_NOGIL(rc, ovs_seg_prompt_denoise(F32(out), PyArray_DIM(out, 0), PyArray_DIM(out, 1),
                                                (float)scale, (float)thresh));
    return OVS_PY_FINISH(rc, out, lg);
}

static PyObject *py_seg_key_smooth(PyObject *self, PyObject *args, PyObject *kw) {
    int rc = -1;
    static char *kwlist[] = {"logits", "keys", "thresh", "scale", NULL};
    PyObject *obj, *kobj, *out = NULL;
    double thresh, scale = 100.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOd|d", kwlist, &obj, &kobj, &thresh, &scale)) return NULL;
    PyArrayObject *lg = NULL, *ka = NULL;
    if (!(lg = ovs_py_float_array(obj, 2, "logits (C, n)")) ||
        !(ka = ovs_py_float_array(kobj, 2, "keys (n, Dk)")))
        goto done;
    if (PyArray_DIM(ka, 0) != PyArray_DIM(lg, 1)) {
        PyErr_Format(PyExc_ValueError, "keys must have one row per position (%zd), got %zd",
                     (Py_ssize_t)PyArray_DIM(lg, 1), (Py_ssize_t)PyArray_DIM(ka, 0));
        goto done;
    }
    if (!(out = PyArray_NewCopy(lg, NPY_CORDER))) goto done;
    float *o = PyArray_DATA((PyArrayObject *)out);
    const float *kd = PyArray_DATA(ka);
    int64_t C = PyArray_DIM(lg, 0), n = PyArray_DIM(lg, 1), Dk = PyArray_DIM(ka, 1);
    OVS_PY_NOGIL(rc, ovs_seg_key_smooth(o, C, n, kd, Dk, (float)scale, (float)thresh));
done:
    return OVS_PY_FINISH(rc, out, lg, ka);
}

/* The tower bit mask as a tuple of "resnet" / "vit". */
static PyObject *towers_tuple(unsigned mask) {
    PyObject *names[2];
    Py_ssize_t k = 0;
    if (mask & OVS_TOWER_RESNET) names[k++] = PyUnicode_FromString("resnet");
    if (mask & OVS_TOWER_VIT) names[k++] = PyUnicode_FromString("vit");
    PyObject *t = PyTuple_New(k);
    for (Py_ssize_t i = 0; i < k; i++) {
        if (t && names[i]) PyTuple_SET_ITEM(t, i, names[i]);
        else Py_XDECREF(names[i]);
        if (!names[i]) Py_CLEAR(t);
    }
    return t;
}

static PyObject *flop_row(int64_t i, const void *table) {
    const ovs_head_flop_row *f = (const ovs_head_flop_row *)table + i;
    return Py_BuildValue("(ssLs)", f->name, f->kind, (long long)f->mult, f->dims);
}

/* The FLOP rows of a head as a tuple of (name, kind, mult, dims). */
static PyObject *flop_rows(const ovs_head_flop_row *f) {
    int64_t n = 0;
    while (f && f[n].name) n++;
    return ovs_py_table(n, flop_row, f);
}

static PyObject *head_row(int64_t i, const void *table) {
    const ovs_head_info *h = (const ovs_head_info *)table + i;
    enum { TOWERS, DEFAULT_FOR, FLOPS, WINDOW, SIGMA, NPARTS };
    PyObject *v[NPARTS] = {
        [TOWERS] = towers_tuple(h->towers),
        [DEFAULT_FOR] = towers_tuple(h->default_for),
        [FLOPS] = flop_rows(h->flops),
        [WINDOW] = h->crop ? Py_BuildValue("(LL)", (long long)h->crop, (long long)h->stride) : Py_NewRef(Py_None),
        [SIGMA] = (h->flags & OVS_HEAD_SIGMA) ? PyFloat_FromDouble(h->sigma) : Py_NewRef(Py_None),
    };
    PyObject *d = NULL;
    if (v[TOWERS] && v[DEFAULT_FOR] && v[FLOPS] && v[WINDOW] && v[SIGMA])
        d = Py_BuildValue("{s:s,s:s,s:s,s:O,s:O,s:L,s:z,s:O,s:O,s:L,s:O,s:d,s:O,s:s,s:O}",
                          "name", h->name, "title", h->title, "summary", h->summary,
                          "towers", v[TOWERS], "default_for", v[DEFAULT_FOR],
                          "min_layers", (long long)h->min_layers, "min_layers_why", h->min_layers_why,
                          "keep_residual", (h->flags & OVS_HEAD_KEEP_RESIDUAL) ? Py_True : Py_False,
                          "key_smoothing", (h->flags & OVS_HEAD_KEY_SMOOTHING) ? Py_True : Py_False,
                          "short_side", (long long)h->short_side, "window", v[WINDOW],
                          "logit_scale", (double)h->logit_scale, "sigma", v[SIGMA],
                          "templates", h->templates, "flops", v[FLOPS]);
    for (int k = 0; k < NPARTS; k++) Py_XDECREF(v[k]);
    return d;
}

/* heads() -> tuple of dicts, one per entry of ovs_head_table (include/ovs/methods.h). */
static PyObject *py_heads(PyObject *self, PyObject *unused) {
    int64_t n;
    const ovs_head_info *t = ovs_head_table(&n);
    return ovs_py_table(n, head_row, t);
}

static PyMethodDef methods_functions[] = {
    {"heads", py_heads, METH_NOARGS,
     "heads() -> tuple of dicts, the heads table (include/ovs/methods.h, csrc/methods/heads.c): name, "
     "title, summary, towers, default_for, min_layers, min_layers_why, keep_residual, key_smoothing, "
     "short_side, window, logit_scale, sigma (None: not a parameter), templates, flops (extra ViT FLOP "
     "rows: (name, kind, mult, dims))"},
    {"seg_key_smooth", (PyCFunction)(void (*)(void))py_seg_key_smooth, METH_VARARGS | METH_KEYWORDS,
     "seg_key_smooth(logits (C, n), keys (n, Dk), thresh, scale=100) -> copy with MaskCLIP's key smoothing applied"},
    {"seg_labels_grouped", (PyCFunction)(void (*)(void))py_seg_labels_grouped, METH_VARARGS | METH_KEYWORDS,
     "seg_labels_grouped(logits (Q,h,w), out_h, out_w, query_class (Q,), num_classes, logit_scale=1, prob_thd=0, "
     "bg_label=0, area_thd=-1) -> int32 (H, W): SCLIP's synonym max, area filter and probability threshold"},
    {"seg_prompt_denoise", (PyCFunction)(void (*)(void))py_seg_prompt_denoise, METH_VARARGS | METH_KEYWORDS,
     "seg_prompt_denoise(logits (C, n), thresh, scale=100) -> copy with MaskCLIP's prompt denoising applied"},
    {"seg_labels", (PyCFunction)(void (*)(void))py_seg_labels, METH_VARARGS | METH_KEYWORDS,
     "seg_labels(logits (C,h,w), out_h, out_w, logit_scale=1, bg_threshold=0, bg_label=-1) -> int32 (H, W)"},
    {"seg_labels_pamr", (PyCFunction)(void (*)(void))py_seg_labels_pamr, METH_VARARGS | METH_KEYWORDS,
     "seg_labels_pamr(logits (C,h,w), guide (K,H,W), steps, dilations=(8, 16), logit_scale=1, "
     "bg_threshold=0, bg_label=-1) -> int32 (H, W): seg_labels after PAMR at the guide's size"},
    {"seg_upsample", (PyCFunction)(void (*)(void))py_seg_upsample, METH_VARARGS | METH_KEYWORDS,
     "seg_upsample(logits (C,h,w), out_h, out_w, logit_scale=1, softmax=True) -> float32 (C, H, W)"},
    {NULL, NULL, 0, NULL},
};

int ovs_py_register_methods(PyObject *m) {
    if (ovs_py_add_type(m, "Segmenter", &ovs_py_SegmenterType) < 0) return -1;
    return PyModule_AddFunctions(m, methods_functions);
}
