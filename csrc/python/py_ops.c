/* Python bindings: ops (placeholder until this part lands). */
#include "python/pyovs.h"

int ovs_py_register_ops(PyObject *m) { (void)m; return 0; }
