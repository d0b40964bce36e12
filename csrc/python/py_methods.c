/* Python bindings: methods (placeholder until this part lands). */
#include "python/pyovs.h"

int ovs_py_register_methods(PyObject *m) { (void)m; return 0; }
