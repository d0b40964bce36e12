/* Python bindings of the Mask2Former ops and blocks (include/ovs/m2f.h):
 *   _core.m2f_pos_embed_sine, _core.m2f_msdeform_attn_core (naive=True for the twin; the tests
 *   reach them as _core.op_pos_embed_sine / op_msdeform_attn_core, py_testops.c),
 *   _core.m2f_msdeform_attn (one MSDeformAttn module from named weights),
 *   _core.M2FPixelDecoder, _core.M2FDecoder (blocks built once from a weights dict),
 *   _core.mask_semantic (MaskFormer's semantic inference, naive=True for the twin),
 *   _core.fcclip_mask_pool (FC-CLIP's per-mask attention pool, naive=True for the twin).
 * Arrays are converted to C-contiguous float32, outputs allocated with the GIL held, the C
 * work runs without it (one forward at a time per block object). */
#include "python/py_models.h"

#include "ovs/m2f.h"

#include <string.h>

static PyArrayObject *new_float(int nd, const npy_intp *dims) {
    return (PyArrayObject *)PyArray_ZEROS(nd, (npy_intp *)dims, NPY_FLOAT32, 0);
}

/* (L, 2) level shapes from a sequence of (H, W) pairs; each extent in 1..2^20. *S = the number
 * of positions over all levels. */
static int parse_shapes(PyObject *obj, int64_t *shapes, int64_t maxL, int64_t *L, int64_t *S) {
    PyObject *seq = PySequence_Check(obj) ? PySequence_Fast(obj, "shapes") : NULL;
    if (!seq) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "shapes must be a sequence of (H, W) pairs, got %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1 || n > maxL) {
        PyErr_Format(PyExc_ValueError, "shapes must list 1..%lld levels, got %zd", (long long)maxL, n);
        Py_DECREF(seq);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        long long hw[2];
        if (!PyArg_ParseTuple(pair, "LL", &hw[0], &hw[1])) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "shapes[%zd] must be a pair of ints, got %R", i, pair);
            Py_DECREF(seq);
            return -1;
        }
        if (hw[0] < 1 || hw[1] < 1 || hw[0] > (1 << 20) || hw[1] > (1 << 20)) {
            PyErr_Format(PyExc_ValueError, "shapes[%zd] = (%lld, %lld): each extent must be in "
                         "1..1048576", i, hw[0], hw[1]);
            Py_DECREF(seq);
            return -1;
        }
        shapes[2 * i] = hw[0];
        shapes[2 * i + 1] = hw[1];
    }
    *L = n;
    *S = 0;
    for (int64_t l = 0; l < n; l++) *S += shapes[2 * l] * shapes[2 * l + 1];
    Py_DECREF(seq);
    return 0;
}

/* ValueError if a has a NaN or infinity (it would silently poison every output). */
static int check_finite(PyArrayObject *a, const char *what) {
    npy_intp i = ovs_py_nonfinite(a);
    if (i < 0) return 0;
    PyErr_Format(PyExc_ValueError, "%s contains NaN or infinity (flat index %zd)", what, (Py_ssize_t)i);
    return -1;
}

/* ---------------------------------------------------------------- ops */
PyObject *ovs_py_pos_embed_sine(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"D", "H", "W", "temperature", "naive", NULL};
    long long D, H, W;
    float temperature = 10000.0f;
    int naive = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "LLL|fp", kwlist, &D, &H, &W, &temperature, &naive))
        return NULL;
    if (D < 0 || D % 4 || H < 0 || W < 0 || H > (1 << 20) || W > (1 << 20) || D > (1 << 16)) {
        PyErr_Format(PyExc_ValueError, "need D a multiple of 4 in 0..65536 and H, W in "
                     "0..1048576, got D = %lld, H = %lld, W = %lld", D, H, W);
        return NULL;
    }
    npy_intp dims[3] = {H, W, D};
    PyArrayObject *out = new_float(3, dims);
    if (!out) return NULL;
    int st;
    OVS_PY_NOGIL(st, (naive ? ovs_pos_embed_sine_naive : ovs_pos_embed_sine)(F32(out), D, H, W,
                                                                             temperature));
    return ovs_py_finish(st, (PyObject *)out, NULL, 0);
}

PyObject *ovs_py_msdeform_attn_core(PyObject *self, PyObject *args, PyObject *kw) {
    int st = -1;
    static char *kwlist[] = {"value", "shapes", "loc", "attn", "naive", NULL};
    PyObject *v_obj, *s_obj, *l_obj, *a_obj;
    int naive = 0;
    int64_t shapes[64], L, S;
    PyArrayObject *v = NULL, *loc = NULL, *at = NULL, *out = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|p", kwlist, &v_obj, &s_obj, &l_obj, &a_obj,
                                     &naive))
        return NULL;
    if (parse_shapes(s_obj, shapes, 32, &L, &S) < 0 ||
        !(v = ovs_py_float_array(v_obj, 3, "value (S, E, F)")) ||
        !(loc = ovs_py_float_array(l_obj, 5, "loc (Q, E, L, P, 2)")) ||
        !(at = ovs_py_float_array(a_obj, 4, "attn (Q, E, L, P)")))
        goto done;
    npy_intp E = PyArray_DIM(v, 1), F = PyArray_DIM(v, 2), Q = PyArray_DIM(loc, 0),
             P = PyArray_DIM(loc, 3);
    npy_intp vs[3] = {S, E, F}, ls[5] = {Q, E, L, P, 2}, as[4] = {Q, E, L, P};
    if (ovs_py_check_shape(v, "value", 3, vs) || ovs_py_check_shape(loc, "loc", 5, ls) ||
        ovs_py_check_shape(at, "attn", 4, as))
        goto done;
    npy_intp od[2] = {Q, E * F};
    if (!(out = new_float(2, od))) goto done;
    OVS_PY_NOGIL(st, (naive ? ovs_msdeform_attn_core_naive : ovs_msdeform_attn_core)(
                         F32(out), F32(v), shapes, L, F32(loc), F32(at), Q, E, F, P));
done:
    return OVS_PY_FINISH(st, out, v, loc, at);
}

/* m2f_msdeform_attn(weights, prefix, query (Q, D), input (S, D), ref (Q, L, 2), shapes, heads,
 * points) -> (Q, D) */
static PyObject *py_m2f_msdeform_attn(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"weights", "prefix", "query", "input", "ref", "shapes", "heads",
                             "points", NULL};
    PyObject *w_obj, *q_obj, *i_obj, *r_obj, *s_obj;
    const char *prefix;
    long long E, P;
    int64_t shapes[64], L, S;
    ovs_py_weights w;
    memset(&w, 0, sizeof w);
    PyArrayObject *q = NULL, *in = NULL, *ref = NULL, *out = NULL;
    float *scratch = NULL;
    int st = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OsOOOOLL", kwlist, &w_obj, &prefix, &q_obj,
                                     &i_obj, &r_obj, &s_obj, &E, &P))
        return NULL;
    if (parse_shapes(s_obj, shapes, 32, &L, &S) < 0 ||
        !(q = ovs_py_float_array(q_obj, 2, "query (Q, D)")) ||
        !(in = ovs_py_float_array(i_obj, 2, "input (S, D)")) ||
        !(ref = ovs_py_float_array(r_obj, 3, "ref (Q, L, 2)")))
        goto done;
    npy_intp Q = PyArray_DIM(q, 0), D = PyArray_DIM(q, 1);
    npy_intp is[2] = {S, D}, rs[3] = {Q, L, 2};
    if (ovs_py_check_shape(in, "input", 2, is) || ovs_py_check_shape(ref, "ref", 3, rs)) goto done;
    if (ovs_py_weights_from_dict(&w, w_obj) < 0) goto done;
    ovs_msdeform_attn m;
    if ((st = ovs_msdeform_attn_bind(&m, &w.map, prefix, D, E, L, P))) goto done;
    size_t ns = ovs_msdeform_attn_scratch_floats(&m, Q, S);
    if (ns == SIZE_MAX || !(scratch = ovs_malloc((ns ? ns : 1) * sizeof(float)))) {
        PyErr_NoMemory();
        goto done;
    }
    npy_intp od[2] = {Q, D};
    if (!(out = new_float(2, od))) goto done;
    OVS_PY_NOGIL(st, ovs_msdeform_attn_forward(&m, F32(out), F32(q), F32(in), F32(ref), NULL,
                                               shapes, Q, scratch));
done:
    ovs_free(scratch);
    ovs_py_weights_clear(&w);
    return OVS_PY_FINISH(st, out, q, in, ref);
}

/* ---------------------------------------------------------------- block objects */
typedef struct {
    PyObject_HEAD
    ovs_py_weights weights;
    PyThread_type_lock lock;
    ovs_m2f_pixel_decoder *pd;
    ovs_m2f_decoder *dec;
} py_m2f_block;

static void block_dealloc(py_m2f_block *self) {
    ovs_m2f_pixel_decoder_free(self->pd);
    ovs_m2f_decoder_free(self->dec);
    if (self->lock) PyThread_free_lock(self->lock);
    ovs_py_weights_clear(&self->weights);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int block_prepare(py_m2f_block *self, PyObject *weights) {
    if (self->pd || self->dec) {
        PyErr_SetString(PyExc_RuntimeError, "block already initialised");
        return -1;
    }
    if (ovs_py_weights_from_dict(&self->weights, weights) < 0) return -1;
    if (!(self->lock = PyThread_allocate_lock())) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int pd_init(py_m2f_block *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"weights", "prefix", "in_channels", "conv_dim", "mask_dim",
                             "enc_layers", "heads", "points", "ffn_dim", "groups", NULL};
    PyObject *weights;
    const char *prefix;
    ovs_m2f_pixel_decoder_config c = ovs_m2f_pixel_decoder_defaults();
    long long ch[4];
    long long cd = c.conv_dim, md = c.mask_dim, el = c.enc_layers, h = c.heads, p = c.points,
              ff = c.ffn_dim, g = c.groups;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Os(LLLL)|LLLLLLL", kwlist, &weights, &prefix,
                                     &ch[0], &ch[1], &ch[2], &ch[3], &cd, &md, &el, &h, &p, &ff, &g))
        return -1;
    if (block_prepare(self, weights) < 0) return -1;
    c.prefix = prefix;
    for (int s = 0; s < 4; s++) c.in_channels[s] = ch[s];
    c.conv_dim = cd, c.mask_dim = md, c.enc_layers = el, c.heads = h, c.points = p,
    c.ffn_dim = ff, c.groups = g;
    int st;
    OVS_PY_NOGIL(st, ovs_m2f_pixel_decoder_create(&self->pd, &c, &self->weights.map));   /* may read weights from a file */
    return ovs_py_status(st);
}

/* forward(res2, res3, res4, res5) with (N, C_s, H_s, W_s) arrays ->
 * (mask_features (N, mask_dim, H2, W2), (ms5, ms4, ms3) each (N, D, h, w)) */
static PyObject *pd_forward(py_m2f_block *self, PyObject *args) {
    if (!self->pd) {
        PyErr_SetString(PyExc_RuntimeError, "pixel decoder not initialised");
        return NULL;
    }
    PyObject *objs[4];
    if (!PyArg_ParseTuple(args, "OOOO", &objs[0], &objs[1], &objs[2], &objs[3])) return NULL;
    PyArrayObject *f[4] = {NULL, NULL, NULL, NULL}, *mf = NULL, *ms[3] = {NULL, NULL, NULL};
    PyObject *result = NULL;
    const ovs_m2f_pixel_decoder_config *c = ovs_m2f_pixel_decoder_get_config(self->pd);
    static const char *names[4] = {"res2", "res3", "res4", "res5"};
    for (int s = 0; s < 4; s++) {
        if (!(f[s] = ovs_py_float_array(objs[s], 4, names[s]))) goto done;
        npy_intp want[4] = {PyArray_DIM(f[0], 0), c->in_channels[s], -1, -1};
        if (ovs_py_check_shape(f[s], names[s], 4, want)) goto done;
        if (PyArray_DIM(f[s], 2) < 1 || PyArray_DIM(f[s], 3) < 1 || PyArray_DIM(f[s], 0) < 1) {
            PyErr_Format(PyExc_ValueError, "%s must not be empty", names[s]);
            goto done;
        }
        if (check_finite(f[s], names[s])) goto done;
    }
    npy_intp N = PyArray_DIM(f[0], 0);
    npy_intp md[4] = {N, c->mask_dim, PyArray_DIM(f[0], 2), PyArray_DIM(f[0], 3)};
    if (!(mf = new_float(4, md))) goto done;
    for (int l = 0; l < 3; l++) {
        npy_intp d[4] = {N, c->conv_dim, PyArray_DIM(f[3 - l], 2), PyArray_DIM(f[3 - l], 3)};
        if (!(ms[l] = new_float(4, d))) goto done;
    }
    int64_t hw[4][2];
    for (int s = 0; s < 4; s++) hw[s][0] = PyArray_DIM(f[s], 2), hw[s][1] = PyArray_DIM(f[s], 3);
    int st = 0;
    Py_BEGIN_ALLOW_THREADS
    OVS_MODEL_LOCK(self);
    for (npy_intp n = 0; n < N && !st; n++) {
        const float *feats[4];
        for (int s = 0; s < 4; s++)
            feats[s] = F32(f[s]) + n * PyArray_DIM(f[s], 1) * hw[s][0] * hw[s][1];
        float *outs[3];
        for (int l = 0; l < 3; l++)
            outs[l] = F32(ms[l]) + n * c->conv_dim * hw[3 - l][0] * hw[3 - l][1];
        st = ovs_m2f_pixel_decoder_forward(self->pd, feats, (const int64_t(*)[2])hw,
                                           F32(mf) + n * c->mask_dim * hw[0][0] * hw[0][1], outs);
    }
    OVS_MODEL_UNLOCK(self);
    Py_END_ALLOW_THREADS
    if (ovs_py_status(st)) goto done;
    result = Py_BuildValue("O(OOO)", mf, ms[0], ms[1], ms[2]);
done:
    for (int s = 0; s < 4; s++) Py_XDECREF(f[s]);
    for (int l = 0; l < 3; l++) Py_XDECREF(ms[l]);
    Py_XDECREF(mf);
    return result;
}

static int dec_init(py_m2f_block *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"weights", "prefix", "in_channels", "hidden_dim", "queries", "heads",
                             "ffn_dim", "layers", "mask_dim", "class_layers", "class_dim",
                             "fcclip_class_head", NULL};
    PyObject *weights;
    const char *prefix;
    ovs_m2f_decoder_config c = ovs_m2f_decoder_defaults();
    long long ic = c.in_channels, hd = c.hidden_dim, q = c.queries, h = c.heads, ff = c.ffn_dim,
              ly = c.layers, md = c.mask_dim, cl = c.class_layers, cd = c.class_dim;
    int fc = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Os|LLLLLLLLLp", kwlist, &weights, &prefix, &ic,
                                     &hd, &q, &h, &ff, &ly, &md, &cl, &cd, &fc))
        return -1;
    if (block_prepare(self, weights) < 0) return -1;
    c.prefix = prefix;
    c.in_channels = ic, c.hidden_dim = hd, c.queries = q, c.heads = h, c.ffn_dim = ff,
    c.layers = ly, c.mask_dim = md, c.class_layers = cl, c.class_dim = cd;
    c.fcclip_class_head = fc;
    int st;
    OVS_PY_NOGIL(st, ovs_m2f_decoder_create(&self->dec, &c, &self->weights.map));   /* may read weights from a file */
    return ovs_py_status(st);
}

/* forward(ms (3 arrays (N, in_channels, h, w)), mask_features (N, mask_dim, H, W),
 * all_masks=False) -> (hidden (N, L+1, Q, D), classes (N, L+1, Q, class_dim) or None,
 * masks (N, Q, H, W), or (N, L+1, Q, H, W) with all_masks) */
static PyObject *dec_forward(py_m2f_block *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"ms", "mask_features", "all_masks", NULL};
    if (!self->dec) {
        PyErr_SetString(PyExc_RuntimeError, "decoder not initialised");
        return NULL;
    }
    PyObject *ms_obj, *mf_obj;
    int all_masks = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|p", kwlist, &ms_obj, &mf_obj, &all_masks))
        return NULL;
    const ovs_m2f_decoder_config *c = ovs_m2f_decoder_get_config(self->dec);
    PyArrayObject *f[3] = {NULL, NULL, NULL}, *mf = NULL, *hid = NULL, *cls = NULL, *masks = NULL;
    PyObject *result = NULL, *seq = NULL;
    if (!(seq = PySequence_Check(ms_obj) ? PySequence_Fast(ms_obj, "ms") : NULL) ||
        PySequence_Fast_GET_SIZE(seq) != 3) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "ms must be a sequence of 3 arrays (res5, res4, res3 "
                     "levels), got %R", ms_obj);
        goto done;
    }
    if (!(mf = ovs_py_float_array(mf_obj, 4, "mask_features (N, mask_dim, H, W)"))) goto done;
    npy_intp N = PyArray_DIM(mf, 0), H = PyArray_DIM(mf, 2), W = PyArray_DIM(mf, 3);
    npy_intp mwant[4] = {-1, c->mask_dim, -1, -1};
    if (ovs_py_check_shape(mf, "mask_features", 4, mwant)) goto done;
    if (N < 1 || H < 1 || W < 1) {
        PyErr_SetString(PyExc_ValueError, "mask_features must not be empty");
        goto done;
    }
    if (check_finite(mf, "mask_features")) goto done;
    int64_t sizes[3][2];
    for (int l = 0; l < 3; l++) {
        static const char *names[3] = {"ms[0]", "ms[1]", "ms[2]"};
        if (!(f[l] = ovs_py_float_array(PySequence_Fast_GET_ITEM(seq, l), 4, names[l]))) goto done;
        npy_intp want[4] = {N, c->in_channels, -1, -1};
        if (ovs_py_check_shape(f[l], names[l], 4, want)) goto done;
        sizes[l][0] = PyArray_DIM(f[l], 2), sizes[l][1] = PyArray_DIM(f[l], 3);
        if (sizes[l][0] < 1 || sizes[l][1] < 1) {
            PyErr_Format(PyExc_ValueError, "%s must not be empty", names[l]);
            goto done;
        }
        if (check_finite(f[l], names[l])) goto done;
    }
    const npy_intp P = c->layers + 1, Q = c->queries, D = c->hidden_dim;
    npy_intp hd[4] = {N, P, Q, D};
    if (!(hid = new_float(4, hd))) goto done;
    if (c->class_layers > 0) {
        npy_intp cdd[4] = {N, P, Q, c->class_dim};
        if (!(cls = new_float(4, cdd))) goto done;
    }
    npy_intp md5[5] = {N, P, Q, H, W}, md4[4] = {N, Q, H, W};
    if (!(masks = all_masks ? new_float(5, md5) : new_float(4, md4))) goto done;
    int st = 0;
    Py_BEGIN_ALLOW_THREADS
    OVS_MODEL_LOCK(self);
    for (npy_intp n = 0; n < N && !st; n++) {
        const float *feats[3];
        for (int l = 0; l < 3; l++)
            feats[l] = F32(f[l]) + n * c->in_channels * sizes[l][0] * sizes[l][1];
        ovs_m2f_decoder_outputs o = {.hidden = F32(hid) + n * P * Q * D};
        if (cls) o.classes = F32(cls) + n * P * Q * c->class_dim;
        if (all_masks) o.masks_all = F32(masks) + n * P * Q * H * W;
        else o.masks = F32(masks) + n * Q * H * W;
        st = ovs_m2f_decoder_forward(self->dec, feats, (const int64_t(*)[2])sizes,
                                     F32(mf) + n * c->mask_dim * H * W, H, W, &o);
    }
    OVS_MODEL_UNLOCK(self);
    Py_END_ALLOW_THREADS
    if (ovs_py_status(st)) goto done;
    result = Py_BuildValue("OOO", hid, cls ? (PyObject *)cls : Py_None, masks);
done:
    Py_XDECREF(seq);
    for (int l = 0; l < 3; l++) Py_XDECREF(f[l]);
    Py_XDECREF(mf);
    Py_XDECREF(hid);
    Py_XDECREF(cls);
    Py_XDECREF(masks);
    return result;
}

/* release_workspace(): free the block's work buffers kept between calls. */
static PyObject *block_release(py_m2f_block *self, PyObject *unused) {
    if (!self->lock) Py_RETURN_NONE;
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(self->lock, WAIT_LOCK);
    ovs_m2f_pixel_decoder_release_workspace(self->pd);
    ovs_m2f_decoder_release_workspace(self->dec);
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef pd_methods[] = {
    {"forward", (PyCFunction)pd_forward, METH_VARARGS,
     "forward(res2, res3, res4, res5) -> (mask_features, (ms5, ms4, ms3))"},
    {"release_workspace", (PyCFunction)block_release, METH_NOARGS,
     "release_workspace(): free the work buffers kept between calls (the next forward\n"
     "allocates them again)."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef dec_methods[] = {
    {"forward", (PyCFunction)dec_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(ms, mask_features, all_masks=False) -> (hidden, classes or None, masks)"},
    {"release_workspace", (PyCFunction)block_release, METH_NOARGS,
     "release_workspace(): free the work buffers kept between calls (the next forward\n"
     "allocates them again)."},
    {NULL, NULL, 0, NULL},
};

static OVS_PY_TYPE(PixelDecoderType, "M2FPixelDecoder", py_m2f_block, block_dealloc, pd_init,
                   pd_methods,
                   "M2FPixelDecoder(weights, prefix, in_channels (res2..res5), conv_dim=256, "
                   "mask_dim=256, enc_layers=6, heads=8, points=4, ffn_dim=1024, groups=32)");

static OVS_PY_TYPE(DecoderType, "M2FDecoder", py_m2f_block, block_dealloc, dec_init, dec_methods,
                   "M2FDecoder(weights, prefix, in_channels=256, hidden_dim=256, queries=100, "
                   "heads=8, ffn_dim=2048, layers=9, mask_dim=256, class_layers=0, class_dim=0, "
                   "fcclip_class_head=False)");

/* ---------------------------------------------------------------- semantic inference */
/* mask_semantic(masks (Q, h, w), probs (Q, C), upsampled, crop, out_size, naive=False,
 * labels=False) -> (C, H, W): ovs_mask_semantic, or with labels=True (H, W) int32 argmax labels
 * (ovs_mask_semantic_labels); upsampled None = (4h, 4w), out_size None = crop. */
static PyObject *py_mask_semantic(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"masks", "probs", "upsampled", "crop", "out_size", "naive", "labels",
                             NULL};
    PyObject *m_obj, *p_obj, *up_obj, *crop_obj, *size_obj;
    int naive = 0, labels = 0, st = -1;
    PyArrayObject *masks = NULL, *probs = NULL, *out = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOO|pp", kwlist, &m_obj, &p_obj, &up_obj,
                                     &crop_obj, &size_obj, &naive, &labels))
        return NULL;
    int64_t up[2], crop[2], size[2];
    if (!(masks = ovs_py_float_array(m_obj, 3, "masks")) ||
        !(probs = ovs_py_float_array(p_obj, 2, "probs")))
        goto done;
    const int64_t Q = PyArray_DIM(masks, 0), h = PyArray_DIM(masks, 1), w = PyArray_DIM(masks, 2);
    const int64_t C = PyArray_DIM(probs, 1);
    if (Q < 1 || h < 1 || w < 1 || C < 1 || PyArray_DIM(probs, 0) != Q) {
        PyErr_Format(PyExc_ValueError, "masks (Q, h, w) and probs (Q, C) must be non-empty with "
                     "the same Q, got masks (%lld, %lld, %lld), probs (%lld, %lld)", (long long)Q,
                     (long long)h, (long long)w, (long long)PyArray_DIM(probs, 0), (long long)C);
        goto done;
    }
    up[0] = 4 * h;
    up[1] = 4 * w;
    if ((up_obj != Py_None && ovs_py_pair(up_obj, "upsampled", 1, up)) ||
        ovs_py_pair(crop_obj, "crop", 1, crop))
        goto done;
    size[0] = crop[0];
    size[1] = crop[1];
    if (size_obj != Py_None && ovs_py_pair(size_obj, "out_size", 1, size)) goto done;
    for (int i = 0; i < 2; i++)
        if (up[i] > 65536 || size[i] > 65536) {
            PyErr_Format(PyExc_ValueError, "upsampled %lldx%lld and out_size %lldx%lld must be at "
                         "most 65536 per side", (long long)up[0], (long long)up[1],
                         (long long)size[0], (long long)size[1]);
            goto done;
        }
    if (crop[0] > up[0] || crop[1] > up[1]) {
        PyErr_Format(PyExc_ValueError, "crop %lldx%lld must lie inside the upsampled %lldx%lld",
                     (long long)crop[0], (long long)crop[1], (long long)up[0], (long long)up[1]);
        goto done;
    }
    if (check_finite(masks, "masks") || check_finite(probs, "probs")) goto done;
    npy_intp dims[3] = {(npy_intp)C, (npy_intp)size[0], (npy_intp)size[1]};
    if (labels) {
        if (!(out = (PyArrayObject *)PyArray_EMPTY(2, dims + 1, NPY_INT32, 0))) goto done;
        int32_t *lp = PyArray_DATA(out);
        OVS_PY_NOGIL(st, (naive ? ovs_mask_semantic_labels_naive : ovs_mask_semantic_labels)(
                             lp, F32(masks), F32(probs), Q, h, w, C, up, crop, size));
        goto done;
    }
    if (!(out = ovs_py_new_float(3, dims))) goto done;
    OVS_PY_NOGIL(st, (naive ? ovs_mask_semantic_naive : ovs_mask_semantic)(
                         F32(out), F32(masks), F32(probs), Q, h, w, C, up, crop, size));
done:
    return OVS_PY_FINISH(st, out, masks, probs);
}

/* fcclip_mask_pool(res5 (C, h, w), masks (Q, Hm, Wm), pos (G*G+1, C), wq, bq, wk, bk, wv,
 * bv, wc (E, C), bc (E,), heads, naive=False) -> (pooled (Q, E), valid (Q,) bool). */
static PyObject *py_fcclip_mask_pool(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"res5", "masks", "pos", "wq", "bq", "wk", "bk", "wv", "bv", "wc",
                             "bc", "heads", "naive", NULL};
    static const char *names[11] = {"res5", "masks", "pos", "wq", "bq", "wk", "bk", "wv", "bv",
                                    "wc", "bc"};
    static const int ndims[11] = {3, 3, 2, 2, 1, 2, 1, 2, 1, 2, 1};
    PyObject *obj[11];
    PyArrayObject *a[11] = {NULL};
    long long heads;
    int naive = 0, st = -1;
    PyArrayObject *out = NULL, *valid = NULL;
    PyObject *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOOOOOL|p", kwlist, &obj[0], &obj[1], &obj[2],
                                     &obj[3], &obj[4], &obj[5], &obj[6], &obj[7], &obj[8], &obj[9],
                                     &obj[10], &heads, &naive))
        return NULL;
    for (int i = 0; i < 11; i++)
        if (!(a[i] = ovs_py_float_array(obj[i], ndims[i], names[i]))) goto done;
    const int64_t C = PyArray_DIM(a[0], 0), h = PyArray_DIM(a[0], 1), w = PyArray_DIM(a[0], 2);
    const int64_t Q = PyArray_DIM(a[1], 0), E = PyArray_DIM(a[9], 0);
    const int64_t G = (int64_t)sqrt((double)(PyArray_DIM(a[2], 0) - 1) + 0.5);
    if (C < 1 || h < 1 || w < 1 || Q < 1 || E < 1 || PyArray_DIM(a[1], 1) < 1 ||
        PyArray_DIM(a[1], 2) < 1) {
        PyErr_SetString(PyExc_ValueError, "res5 (C, h, w), masks (Q, Hm, Wm) and wc (E, C) must be "
                        "non-empty");
        goto done;
    }
    if (G < 1 || G * G + 1 != PyArray_DIM(a[2], 0)) {
        PyErr_Format(PyExc_ValueError, "pos must have G*G + 1 rows, got %lld",
                     (long long)PyArray_DIM(a[2], 0));
        goto done;
    }
    if (heads < 1 || C % heads) {
        PyErr_Format(PyExc_ValueError, "heads must divide C = %lld, got %lld", (long long)C, heads);
        goto done;
    }
    npy_intp cc[2] = {C, C}, c1[1] = {C}, pc[2] = {G * G + 1, C}, ec[2] = {E, C}, e1[1] = {E};
    if (ovs_py_check_shape(a[2], "pos", 2, pc) || ovs_py_check_shape(a[3], "wq", 2, cc) ||
        ovs_py_check_shape(a[4], "bq", 1, c1) || ovs_py_check_shape(a[5], "wk", 2, cc) ||
        ovs_py_check_shape(a[6], "bk", 1, c1) || ovs_py_check_shape(a[7], "wv", 2, cc) ||
        ovs_py_check_shape(a[8], "bv", 1, c1) || ovs_py_check_shape(a[9], "wc", 2, ec) ||
        ovs_py_check_shape(a[10], "bc", 1, e1) || check_finite(a[0], "res5") ||
        check_finite(a[1], "masks"))
        goto done;
    npy_intp od[2] = {Q, E}, vd[1] = {Q};
    if (!(out = ovs_py_new_float(2, od)) ||
        !(valid = (PyArrayObject *)PyArray_ZEROS(1, vd, NPY_BOOL, 0)))
        goto done;
    const ovs_fcclip_attnpool ap = {F32(a[2]), F32(a[3]), F32(a[4]), F32(a[5]), F32(a[6]),
                                    F32(a[7]), F32(a[8]), F32(a[9]), F32(a[10]), C, E, G, heads};
    uint8_t *vp = PyArray_DATA(valid);
    const int64_t Hm = PyArray_DIM(a[1], 1), Wm = PyArray_DIM(a[1], 2);
    OVS_PY_NOGIL(st, (naive ? ovs_fcclip_mask_pool_naive : ovs_fcclip_mask_pool)(
                         F32(out), vp, &ap, F32(a[0]), h, w, F32(a[1]), Q, Hm, Wm));
    if (st) {
        ovs_py_raise(st);
        goto done;
    }
    result = Py_BuildValue("OO", out, valid);
done:
    for (int i = 0; i < 11; i++) Py_XDECREF(a[i]);
    Py_XDECREF(out);
    Py_XDECREF(valid);
    return result;
}

#define KW OVS_PY_KW
static PyMethodDef m2f_methods[] = {
    OVS_PY_M2F_OPS(OVS_PY_OP_PRODUCTION)
    {"m2f_msdeform_attn", (PyCFunction)py_m2f_msdeform_attn, KW,
     "m2f_msdeform_attn(weights, prefix, query (Q, D), input (S, D), ref (Q, L, 2), shapes, "
     "heads, points) -> (Q, D)"},
    {"mask_semantic", (PyCFunction)py_mask_semantic, KW,
     "mask_semantic(masks (Q, h, w), probs (Q, C), upsampled, crop, out_size, naive=False, "
     "labels=False) -> (C, H, W): sum_q probs[q, c] sigmoid(resize(crop(upsample(masks[q])))) in "
     "bands of rows, or with labels=True its (H, W) int32 argmax; upsampled None = (4h, 4w), "
     "out_size None = crop"},
    {"fcclip_mask_pool", (PyCFunction)py_fcclip_mask_pool, KW,
     "fcclip_mask_pool(res5 (C, h, w), masks (Q, Hm, Wm), pos (G*G+1, C), wq, bq, wk, bk, wv, bv, "
     "wc (E, C), bc (E,), heads, naive=False) -> (pooled (Q, E), valid (Q,) bool): FC-CLIP's "
     "attention pool per mask"},
    {NULL, NULL, 0, NULL},
};

int ovs_py_register_m2f(PyObject *m) {
    if (ovs_py_add_type(m, "M2FPixelDecoder", &PixelDecoderType) < 0 ||
        ovs_py_add_type(m, "M2FDecoder", &DecoderType) < 0)
        return -1;
    return PyModule_AddFunctions(m, m2f_methods);
}
