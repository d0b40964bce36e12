/* Python objects wrapping the C towers (shared with the segmentation-head bindings). */
#ifndef OVS_PY_MODELS_H
#define OVS_PY_MODELS_H

#include "python/pyovs.h"
#include "ovs/models.h"
#include <pythread.h>

/* A name -> tensor table from Python: arrays borrowed (kept alive in `keep`), and tensors of
 * safetensors files read on demand (the table is then the models' source: a tensor a model
 * packs or folds is read into scratch and freed, one it uses as is is read once into `kept`). */
typedef struct {
    PyObject *keep;           /* list of the float32 arrays, name strings and file owners */
    ovs_tensor *items;        /* (count,) */
    struct ovs_safetensors **files;  /* (count,) reader of a file-backed item, else NULL */
    int64_t *entries;         /* (count,) its index in that file */
    float **kept;             /* (count,) file-backed items made resident, owned */
    ovs_tensor_source source;
    ovs_sparse_tensor *sparse;  /* (map.nsparse,) */
    ovs_tensor_map map;
} ovs_py_weights;

typedef struct {
    PyObject_HEAD
    ovs_py_weights weights;
    PyThread_type_lock lock;  /* one forward at a time on this model */
    int kind;                 /* OVS_PY_RESNET / OVS_PY_VIT / OVS_PY_TEXT */
    union {
        ovs_resnet *resnet;
        ovs_vit *vit;
        ovs_text *text;
    } m;
} ovs_py_model;

/* Fill *w from a dict {name: array or (SafeTensorsFile, tensor name)}: float arrays become
 * C-contiguous float32, zero-copy when they already are (NaN/inf raise ValueError); a file's
 * tensor is not read now (its NaN/inf check comes when a model reads it); non-float values and
 * non-float file tensors are skipped; a 4-tuple (shape, values, colidx, rowptr) is a CSR weight
 * (ovs.prune.SparseWeight.csr_tuple: float32 values, uint16 or int32 column indices, int64 row
 * pointers; checked by ovs_sparse_tensor_check where it is used). -1 with an exception on failure (w is then empty).
 * ovs_py_weights_clear releases it. The table must not be used by two threads at once. */
int ovs_py_weights_from_dict(ovs_py_weights *w, PyObject *dict);
void ovs_py_weights_clear(ovs_py_weights *w);

enum { OVS_PY_RESNET = 1, OVS_PY_VIT = 2, OVS_PY_TEXT = 3 };

extern PyTypeObject ovs_py_ResNetType, ovs_py_ViTType, ovs_py_TextType;

/* An object built on a model it borrows (_core.Segmenter, _core.DeepLabHead): a strong reference
 * to the model, which keeps the weights the C object borrows alive and whose lock guards them,
 * and the C object, freed by free_c (NULL until initialised). */
typedef struct {
    PyObject_HEAD
    ovs_py_model *model;
    union {
        struct ovs_segmenter *seg;
        ovs_deeplab *deeplab;
        void *any;
    } c;
    void (*free_c)(void *c);
} ovs_py_on_model;

/* tp_dealloc of the ovs_py_on_model types. */
void ovs_py_on_model_dealloc(ovs_py_on_model *self);
/* The end of such an object's tp_init once its C object is made: free_c will free it, and self
 * keeps a new reference to pm. */
void ovs_py_on_model_keep(ovs_py_on_model *self, ovs_py_model *pm, void (*free_c)(void *c));

/* Lock a model around pure-C work; call with the GIL released. */
#define OVS_MODEL_LOCK(obj) PyThread_acquire_lock((obj)->lock, WAIT_LOCK)
#define OVS_MODEL_UNLOCK(obj) PyThread_release_lock((obj)->lock)
/* OVS_PY_NOGIL holding obj's lock: one forward at a time on a model (or block). */
#define OVS_PY_LOCKED(obj, st, call)                                                        \
    do {                                                                                    \
        Py_BEGIN_ALLOW_THREADS                                                              \
        OVS_MODEL_LOCK(obj);                                                                \
        (st) = (call);                                                                      \
        OVS_MODEL_UNLOCK(obj);                                                              \
        Py_END_ALLOW_THREADS                                                                \
    } while (0)

/* (N, 3, H, W) float32 images from any array-like; NULL with an exception otherwise. */
PyArrayObject *ovs_py_images(PyObject *obj);

#endif
