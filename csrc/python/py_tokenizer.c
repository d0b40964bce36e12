/* Python bindings of the BPE tokenizer (include/ovs/tokenizer.h). ovs/tokenizer.py wraps these:
 * it reads the merges file, cleans the text and calls
 *   bpe_create(merges: bytes) -> capsule
 *   bpe_info(bpe) -> (vocab_size, sot, eot)
 *   bpe_encode(bpe, text: str) -> list[int]
 *   bpe_tokenize(bpe, texts: list | tuple of str, context: int) -> int32 array (N, context)
 *   bpe_token_bytes(bpe, ids) -> bytes (the tokens' bytes, concatenated)
 *   bpe_set_heap_threshold(bpe, n)   (test hook)
 * The text functions release the GIL while encoding. */
#include "python/pyovs.h"
#include "ovs/tokenizer.h"

#define BPE_CAPSULE "ovs.bpe"

static void bpe_capsule_free(PyObject *cap) {
    ovs_bpe_free(PyCapsule_GetPointer(cap, BPE_CAPSULE));
}

static ovs_bpe *bpe_from(PyObject *obj) {
    if (!PyCapsule_IsValid(obj, BPE_CAPSULE)) {
        PyErr_Format(PyExc_TypeError, "expected a tokenizer created by bpe_create, got %.100s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return PyCapsule_GetPointer(obj, BPE_CAPSULE);
}

static PyObject *py_bpe_create(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError, "merges must be bytes, got %.100s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    ovs_bpe *bpe = NULL;
    int st;
    OVS_PY_NOGIL(st, ovs_bpe_create(&bpe, view.buf, (size_t)view.len));
    PyBuffer_Release(&view);
    if (st) return ovs_py_raise(st);
    PyObject *cap = PyCapsule_New(bpe, BPE_CAPSULE, bpe_capsule_free);
    if (!cap) ovs_bpe_free(bpe);
    return cap;
}

static PyObject *py_bpe_info(PyObject *self, PyObject *arg) {
    ovs_bpe *bpe = bpe_from(arg);
    if (!bpe) return NULL;
    return Py_BuildValue("(Lii)", (long long)ovs_bpe_vocab_size(bpe), (int)ovs_bpe_sot(bpe),
                         (int)ovs_bpe_eot(bpe));
}

static PyObject *py_bpe_encode(PyObject *self, PyObject *args) {
    PyObject *cap, *text;
    if (!PyArg_ParseTuple(args, "OU:bpe_encode", &cap, &text)) return NULL;
    ovs_bpe *bpe = bpe_from(cap);
    if (!bpe) return NULL;
    Py_ssize_t len;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &len);
    if (!utf8) return NULL;
    /* Every token covers at least one byte, so len ids always suffice. */
    int32_t *ids = ovs_malloc((size_t)(len > 0 ? len : 1) * sizeof(int32_t));  /* (len,) */
    if (!ids) return ovs_py_raise(OVS_ERR_NOMEM);
    PyObject *result = NULL;
    int64_t n = 0;
    int st;
    Py_INCREF(text);  /* keeps utf8 alive without the GIL */
    OVS_PY_NOGIL(st, ovs_bpe_encode(bpe, utf8, (size_t)len, ids, (int64_t)len, &n));
    if (ovs_py_status(st)) goto error;
    result = PyList_New((Py_ssize_t)n);
    if (!result) goto error;
    for (int64_t i = 0; i < n; i++) {
        PyObject *v = PyLong_FromLong(ids[i]);
        if (!v) {
            Py_CLEAR(result);
            goto error;
        }
        PyList_SET_ITEM(result, (Py_ssize_t)i, v);
    }
error:
    Py_DECREF(text);
    ovs_free(ids);
    return result;
}

static PyObject *py_bpe_tokenize(PyObject *self, PyObject *args) {
    int st = -1;
    PyObject *cap, *seq;
    long long context;
    if (!PyArg_ParseTuple(args, "OOL:bpe_tokenize", &cap, &seq, &context)) return NULL;
    ovs_bpe *bpe = bpe_from(cap);
    if (!bpe) return NULL;
    if (!PyList_Check(seq) && !PyTuple_Check(seq)) {
        PyErr_Format(PyExc_TypeError, "texts must be a list or tuple of str, got %.100s",
                     Py_TYPE(seq)->tp_name);
        return NULL;
    }
    if (context < 2) {
        PyErr_Format(PyExc_ValueError, "context_length must be >= 2, got %lld", context);
        return NULL;
    }
    PyObject *items = NULL;         /* a tuple holding every text while the GIL is released */
    const char **texts = NULL;      /* (N,) */
    int64_t *lens = NULL;           /* (N,) */
    PyArrayObject *out = NULL;      /* (N, context) int32 */
    items = PySequence_Tuple(seq);
    if (!items) goto done;
    Py_ssize_t count = PyTuple_GET_SIZE(items);
    texts = ovs_malloc((size_t)(count > 0 ? count : 1) * sizeof *texts);
    lens = ovs_malloc((size_t)(count > 0 ? count : 1) * sizeof *lens);
    if (!texts || !lens) {
        ovs_py_raise(OVS_ERR_NOMEM);
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *t = PyTuple_GET_ITEM(items, i);
        if (!PyUnicode_Check(t)) {
            PyErr_Format(PyExc_TypeError, "texts[%zd] must be str, got %.100s", i, Py_TYPE(t)->tp_name);
            goto done;
        }
        Py_ssize_t len;
        texts[i] = PyUnicode_AsUTF8AndSize(t, &len);
        if (!texts[i]) goto done;
        lens[i] = (int64_t)len;
    }
    npy_intp dims[2] = {(npy_intp)count, (npy_intp)context};
    out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_INT32);
    if (!out) goto done;
    OVS_PY_NOGIL(st, ovs_tokenize_batch(bpe, texts, lens, (int64_t)count, (int64_t)context,
                                        (int32_t *)PyArray_DATA(out)));
done:
    ovs_free(texts);
    ovs_free(lens);
    return OVS_PY_FINISH(st, out, items);
}

static PyObject *py_bpe_token_bytes(PyObject *self, PyObject *args) {
    PyObject *cap, *ids;
    if (!PyArg_ParseTuple(args, "OO:bpe_token_bytes", &cap, &ids)) return NULL;
    ovs_bpe *bpe = bpe_from(cap);
    if (!bpe) return NULL;
    PyObject *fast = PySequence_Fast(ids, "ids must be a sequence of int");
    if (!fast) return NULL;
    PyObject *result = NULL;
    int st = -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast), total = 0;
    for (Py_ssize_t pass = 0; pass < 2; pass++) {  /* measure, then copy */
        char *dst = result ? PyBytes_AS_STRING(result) : NULL;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
            long long id = PyLong_AsLongLong(item);
            if (id == -1 && PyErr_Occurred()) {
                if (PyErr_ExceptionMatches(PyExc_TypeError))
                    PyErr_Format(PyExc_TypeError, "ids[%zd] must be an int, got %.100s", i,
                                 Py_TYPE(item)->tp_name);
                goto done;
            }
            const char *bytes;
            size_t len;
            if (id < INT32_MIN || id > INT32_MAX) {
                PyErr_Format(PyExc_ValueError, "ids[%zd] = %lld is outside the vocabulary", i, id);
                goto done;
            }
            if (ovs_bpe_token_bytes(bpe, (int32_t)id, &bytes, &len)) {
                PyErr_Format(PyExc_ValueError, "ids[%zd] = %lld is outside the vocabulary [0, %lld)",
                             i, id, (long long)ovs_bpe_vocab_size(bpe));
                goto done;
            }
            if (dst) {
                memcpy(dst, bytes, len);
                dst += len;
            } else {
                total += (Py_ssize_t)len;
            }
        }
        if (!result) {
            result = PyBytes_FromStringAndSize(NULL, total);
            if (!result) goto done;
        }
    }
    st = 0;
done:
    return OVS_PY_FINISH(st, result, fast);
}

static PyObject *py_bpe_set_heap_threshold(PyObject *self, PyObject *args) {
    PyObject *cap;
    long long n;
    if (!PyArg_ParseTuple(args, "OL:bpe_set_heap_threshold", &cap, &n)) return NULL;
    ovs_bpe *bpe = bpe_from(cap);
    if (!bpe) return NULL;
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "threshold must be >= 0, got %lld", n);
        return NULL;
    }
    ovs_bpe_set_heap_threshold(bpe, (int64_t)n);
    Py_RETURN_NONE;
}

static PyMethodDef tokenizer_methods[] = {
    {"bpe_create", py_bpe_create, METH_O, "bpe_create(merges: bytes) -> tokenizer capsule."},
    {"bpe_info", py_bpe_info, METH_O, "bpe_info(bpe) -> (vocab_size, sot, eot)."},
    {"bpe_encode", py_bpe_encode, METH_VARARGS, "bpe_encode(bpe, cleaned_text) -> list of ids."},
    {"bpe_tokenize", py_bpe_tokenize, METH_VARARGS,
     "bpe_tokenize(bpe, cleaned_texts, context) -> int32 array (N, context)."},
    {"bpe_token_bytes", py_bpe_token_bytes, METH_VARARGS,
     "bpe_token_bytes(bpe, ids) -> the tokens' bytes concatenated (word ends spelled </w>)."},
    {"bpe_set_heap_threshold", py_bpe_set_heap_threshold, METH_VARARGS,
     "Test hook: words of >= n symbols use the heap merge loop (0 = always)."},
    {NULL, NULL, 0, NULL},
};

int ovs_py_register_tokenizer(PyObject *m) { return PyModule_AddFunctions(m, tokenizer_methods); }
