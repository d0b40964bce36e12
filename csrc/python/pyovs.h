/* Shared helpers of the CPython boundary (csrc/python/py_*.c files). Each part of the extension
 * registers its functions and types with ovs_py_register_<part>(module); module.c calls them.
 * Rules at this boundary (pydata/bottleneck style): new references to inputs, one `goto error`
 * exit, outputs allocated before the GIL is released, pure C work without the GIL. */
#ifndef OVS_PYOVS_H
#define OVS_PYOVS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#ifndef NPY_NO_DEPRECATED_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#endif
#ifndef PY_ARRAY_UNIQUE_SYMBOL
#define PY_ARRAY_UNIQUE_SYMBOL ovs_ARRAY_API
#endif
#ifndef OVS_PY_MODULE_C
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "ovs/ovs.h"
#include "ovs/ops.h"

/* Exception types created in module.c. */
extern PyObject *ovs_py_Error;          /* ovs.OvsError (RuntimeError) */
extern PyObject *ovs_py_WeightError;    /* ovs.WeightFileError (ValueError): bad weight files */

/* Turn an ovs_status into a Python exception carrying ovs_last_error(); returns NULL. */
PyObject *ovs_py_raise(int status);
/* 0 for st == 0; otherwise ovs_py_raise(st) and -1 (tp_init and helpers returning int). */
int ovs_py_status(int st);

/* Run `call` (pure C: no Python object touched) without the GIL; its status goes to st. */
#define OVS_PY_NOGIL(st, call)                                                              \
    do {                                                                                    \
        Py_BEGIN_ALLOW_THREADS                                                              \
        (st) = (call);                                                                      \
        Py_END_ALLOW_THREADS                                                                \
    } while (0)

/* The type objects of the bindings' classes, all alike: `static OVS_PY_TYPE(FooType, "Foo",
 * foo_struct, foo_dealloc, foo_init, foo_methods, "Foo(args): ...");` (tp_name "ovs._core.Foo",
 * created by PyType_GenericNew, initialised by tp_init). */
#define OVS_PY_TYPE(var, name, obj_struct, dealloc, init, methods, doc)                     \
    PyTypeObject var = {                                                                    \
        PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ovs._core." name,                         \
        .tp_basicsize = sizeof(obj_struct),                                                 \
        .tp_dealloc = (destructor)(dealloc),                                                \
        .tp_flags = Py_TPFLAGS_DEFAULT,                                                     \
        .tp_doc = doc,                                                                      \
        .tp_methods = methods,                                                              \
        .tp_init = (initproc)(init),                                                        \
        .tp_new = PyType_GenericNew,                                                        \
    }
/* PyType_Ready(type) and, with name != NULL, module attribute `name`; -1 with an exception. */
int ovs_py_add_type(PyObject *m, const char *name, PyTypeObject *type);

/* The C reader of an open _core.SafeTensorsFile and, in *owner, a new reference to the object
 * that keeps it alive (valid even after the file object is closed); NULL with TypeError or
 * ValueError (closed) otherwise. */
struct ovs_safetensors;
struct ovs_safetensors *ovs_py_safetensors_of(PyObject *obj, PyObject **owner);

/* A new reference to `obj` as a C-contiguous, aligned float32 array of `ndim` dims
 * (ndim < 0: any), converting dtype/order when needed (a copy only then). NULL + TypeError or
 * ValueError naming `what` otherwise. */
PyArrayObject *ovs_py_float_array(PyObject *obj, int ndim, const char *what);

/* The one validator of uint8 RGB images (H, W, 3) at the C boundary, with ovs/image.py's
 * messages (as_uint8_image): TypeError for a non-array or another dtype, ValueError for another
 * shape (hints for RGBA and grayscale) or an empty image. A new reference, used in place when
 * its channels are adjacent and its strides positive (strided views, Fortran order), a C-ordered
 * copy otherwise; *row_stride and *pixel_stride in bytes. */
PyArrayObject *ovs_py_uint8_image(PyObject *obj, const char *what, int64_t *row_stride,
                                  int64_t *pixel_stride);
/* A tuple of n rows, row(i, table) each (a new reference or NULL with an exception): the
 * C tables (_core.heads(), _core.activations()) as Python sees them. */
PyObject *ovs_py_table(int64_t n, PyObject *(*row)(int64_t i, const void *table), const void *table);

/* An act= argument by its name in the activations table (ovs_act_by_name); with allow_none 0,
 * "none" is refused too (a tower's MLP needs one). -1 + ValueError listing the names otherwise. */
int ovs_py_parse_act(const char *name, int allow_none, ovs_act *act);

/* A sequence of 1..max ints into out[0..*n); NULL-safe: obj NULL keeps out and *n. -1 + TypeError /
 * ValueError naming `what` otherwise. */
int ovs_py_int64_seq(PyObject *obj, const char *what, int64_t *out, int max, int64_t *n);

/* ---- argument parsing and array checking shared by the bindings (py_args.c) */
#define F32(a) ((float *)PyArray_DATA(a))
#define F32_OR_NULL(a) ((a) ? (float *)PyArray_DATA(a) : NULL)

/* obj as a fast sequence of exactly n items (a new reference), or NULL with `exc`
 * "<what> <must>, got <repr(obj)>" (any error of the conversion replaced). */
PyObject *ovs_py_seq_n(PyObject *obj, Py_ssize_t n, PyObject *exc, const char *what,
                       const char *must);
/* The n ints of such a sequence into out[0..n) (a non-int item: its TypeError). */
int ovs_py_int64_n(PyObject *obj, Py_ssize_t n, PyObject *exc, const char *what,
                   const char *must, int64_t *out);
/* The one validator of an RGB mean / std argument: a sequence of 3 numbers into out[3]
 * (ValueError "<what> must be a sequence of 3 numbers, got ..." otherwise). */
int ovs_py_rgb(PyObject *obj, const char *what, float out[3]);
/* An int or a pair of ints into out[2]; each must be >= min (TypeError / ValueError). */
int ovs_py_pair(PyObject *obj, const char *what, long long min, int64_t out[2]);
/* *out = None (or obj NULL) ? NULL : ovs_py_float_array(obj, ndim, what); -1 on error. */
int ovs_py_opt_array(PyObject *obj, int ndim, const char *what, PyArrayObject **out);
/* "(a, b, c)" (one dim: "(a,)"; a negative extent: "*") of a shape into buf. */
void ovs_py_shape_str(char *buf, size_t cap, int nd, const npy_intp *shape);
/* ValueError "<what> must have shape (..), got (..)" unless a has that shape (a negative extent in
 * shape: any, shown as *). */
int ovs_py_check_shape(PyArrayObject *a, const char *what, int nd, const npy_intp *shape);
/* A 2-D float32 operand whose rows may be strided (a column slice of a wider array): used in
 * place when its columns are contiguous, a C-contiguous copy otherwise; *ld = row stride in
 * floats. New reference. */
PyArrayObject *ovs_py_rows_array(PyObject *obj, const char *what, int64_t *ld);
/* Flat index of the first NaN or infinity of a float32 C array, -1 when all are finite (a
 * non-finite input would silently poison every output: callers raise ValueError naming it). */
npy_intp ovs_py_nonfinite(PyArrayObject *a);
/* A new uninitialised C-contiguous float32 array. */
PyArrayObject *ovs_py_new_float(int nd, const npy_intp *dims);
/* A new C-contiguous float32 copy of obj (for ops that work in place). */
PyArrayObject *ovs_py_float_copy(PyObject *obj, const char *what);
/* n floats of scratch from ovs_malloc (MemoryError on failure); n == 0 gives NULL. */
int ovs_py_scratch(size_t n, float **out);
/* *wm = w (K, C) as a dense matrix, or, with packed != 0, a packed copy in *buf (ovs_malloc'd,
 * the caller frees it after the op). GIL held. */
int ovs_py_weight_matrix(ovs_matrix *wm, float **buf, PyArrayObject *w, npy_intp K, npy_intp C,
                         int packed);
/* x (..., H, W) as (planes, H, W); ValueError below 2 dims. */
int ovs_py_planes_hw(PyArrayObject *x, const char *what, int64_t *NC, int64_t *H, int64_t *W);
/* A new float32 array shaped like x but with the last two dims (P, Q). */
PyArrayObject *ovs_py_new_like_planes(PyArrayObject *x, int64_t P, int64_t Q);
/* x (..., D) as (M, D); ValueError for a 0-d x. */
int ovs_py_rows_d(PyArrayObject *x, const char *what, int64_t *M, int64_t *D);

/* The one exit of a binding: releases the inputs refs[0..n) (NULL-safe), then returns out when
 * st == 0 and no Python exception is pending; otherwise releases out and returns NULL, raising
 * ovs_py_raise(st) when st > 0 (st <= 0: the Python exception already set). Bindings start with `int st = -1;`, `goto done` on any
 * error and end with `done: return OVS_PY_FINISH(st, out, x, w, ...);`. */
PyObject *ovs_py_finish(int st, PyObject *out, void *const *refs, size_t n);
#define OVS_PY_FINISH(st, out, ...)                                                         \
    ovs_py_finish((st), (PyObject *)(out), (void *const[]){__VA_ARGS__},                    \
                  sizeof((void *const[]){__VA_ARGS__}) / sizeof(void *))
#define OVS_PY_KW (METH_VARARGS | METH_KEYWORDS)
/* A method-table row: the C function <prefix><name> registered as "<name>" with `flags`, its
 * docstring the name followed by `sig` (the call's signature, then what it returns or does), so
 * that each row names its binding once: OVS_PY_ROW(py_, seg_labels, OVS_PY_KW, "(logits, ...)
 * -> ..."), OVS_PY_ROW(file_, keys, METH_NOARGS, "() -> ..."). */
#define OVS_PY_ROW(prefix, name, flags, sig)                                                \
    {#name, (PyCFunction)(void (*)(void))prefix##name, flags, #name sig}
/* The sig of every release_workspace() row (models, Mask2Former blocks). */
#define OVS_PY_RELEASE_DOC                                                                  \
    "(): free the work buffers kept between calls (the next forward allocates them again)."
/* A binding that is impl(args, kw, variant): the fast / naive (or other) variants of one
 * parser, e.g. OVS_PY_VARIANT(py_op_matmul_wt, matmul_binding, 1). */
#define OVS_PY_VARIANT(name, impl, variant)                                                 \
    static PyObject *name(PyObject *self, PyObject *args, PyObject *kw) {                   \
        return impl(args, kw, variant);                                                     \
    }

/* The label-stage parsers of py_methods.c, impl(args, kw, variant) (see OVS_PY_VARIANT):
 * seg_final 0 = seg_upsample, 1 = seg_labels, 2 = its naive twin; seg_grouped 0 =
 * seg_labels_grouped, 1 = its naive twin. py_testops.c registers the twins. */
PyObject *ovs_py_seg_final(PyObject *args, PyObject *kw, int labels_mode);
PyObject *ovs_py_seg_grouped(PyObject *args, PyObject *kw, int naive);

/* The production op bindings, X(prefix, name, doc after the name): the C function
 * ovs_py_<name>; py_ops.c registers OVS_PY_OPS as _core.<name>, py_m2f.c OVS_PY_M2F_OPS as
 * _core.m2f_<name> (prefix "m2f_"), and py_testops.c both again under their test names
 * (_core.op_<name>), the same functions: the tests keep one naming scheme and exercise what
 * production runs. */
#define OVS_PY_OPS(X)                                                                       \
    X("", linear,                                                                           \
      "(x, w, b=None, residual=None, act='none', naive=False, residual_alias=False, "       \
      "packed=False): x (..., C) @ w.T (K, C) + b, + residual, then act.")                  \
    X("", resize,                                                                           \
      "(x, size, mode='bilinear', align_corners=False, naive=False); x (..., H, W), "       \
      "size (P, Q).")                                                                       \
    X("", resize_u8_pil,                                                                    \
      "(img, size): uint8 (H, W, 3) -> (P, Q, 3), size = (P, Q) = (height, width), as PIL " \
      "Image.resize((Q, P), BICUBIC).")                                                     \
    X("", normalize_u8,                                                                     \
      "(img, crop_box, mean, std, scale255=False) -> float32 (3, h, w); crop_box = (top, "  \
      "left, height, width) or None.")                                                      \
    X("", resize_u8_normalize,                                                              \
      "(img uint8 (H,W,3), size (P,Q), mean, std) -> float32 (3,P,Q): "                     \
      "resize(normalize_u8(img, None, mean, std), size) without the (3,H,W) copy.")         \
    X("", pamr,                                                                             \
      "(mask (C,H,W), image (K,H,W), steps, dilations=(8, 16), naive=False) -> (C,H,W): "   \
      "pamr.PAMR(steps, dilations)(image[None], mask[None])[0].")
#define OVS_PY_M2F_OPS(X)                                                                   \
    X("m2f_", pos_embed_sine, "(D, H, W, temperature=10000, naive=False) -> (H, W, D)")     \
    X("m2f_", msdeform_attn_core,                                                           \
      "(value (S, E, F), shapes, loc (Q, E, L, P, 2), attn (Q, E, L, P), naive=False) -> "  \
      "(Q, E*F)")
#define OVS_PY_OP_DECL(prefix, name, doc)                                                   \
    PyObject *ovs_py_##name(PyObject *self, PyObject *args, PyObject *kw);
OVS_PY_OPS(OVS_PY_OP_DECL)
OVS_PY_M2F_OPS(OVS_PY_OP_DECL)
/* Method-table rows: OVS_PY_OPS(OVS_PY_OP_PRODUCTION) and OVS_PY_OPS(OVS_PY_OP_TEST), the
 * function ovs_py_<name> registered as <as><name>. */
#define OVS_PY_OP_ROW(as, name, doc)                                                        \
    {as #name, (PyCFunction)(void (*)(void))ovs_py_##name, OVS_PY_KW, as #name doc},
#define OVS_PY_OP_PRODUCTION(prefix, name, doc) OVS_PY_OP_ROW(prefix, name, doc)
#define OVS_PY_OP_TEST(prefix, name, doc) OVS_PY_OP_ROW("op_", name, doc)

/* The parts of the extension in the order module.c registers them: each registers its
 * functions and types with ovs_py_register_<part>(module) (0, or -1 with an exception). */
#define OVS_PY_PARTS(X)                                                                     \
    X(core) X(ops) X(testops) X(io) X(models) X(methods) X(tokenizer) X(analysis) X(metrics) \
    X(sparse) X(frameworks) X(m2f)
#define OVS_PY_PART_DECL(part) int ovs_py_register_##part(PyObject *m);
OVS_PY_PARTS(OVS_PY_PART_DECL)

#endif
