/* Python bindings: tokenizer (placeholder until this part lands). */
#include "python/pyovs.h"

int ovs_py_register_tokenizer(PyObject *m) { (void)m; return 0; }
