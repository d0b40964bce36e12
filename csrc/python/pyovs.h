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

int ovs_py_register_core(PyObject *m);
int ovs_py_register_ops(PyObject *m);
int ovs_py_register_io(PyObject *m);
int ovs_py_register_models(PyObject *m);
int ovs_py_register_methods(PyObject *m);
int ovs_py_register_tokenizer(PyObject *m);
int ovs_py_register_analysis(PyObject *m);
int ovs_py_register_metrics(PyObject *m);
int ovs_py_register_gemm(PyObject *m);
int ovs_py_register_sparse(PyObject *m);
int ovs_py_register_frameworks(PyObject *m);
int ovs_py_register_m2f(PyObject *m);

#endif
