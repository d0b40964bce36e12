/* Python bindings: text (placeholder until this part lands). */
#include "python/pyovs.h"

int ovs_py_register_text(PyObject *m) { (void)m; return 0; }
