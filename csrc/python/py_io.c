/* Python bindings: io (placeholder until this part lands). */
#include "python/pyovs.h"

int ovs_py_register_io(PyObject *m) { (void)m; return 0; }
