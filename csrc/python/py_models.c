/* Python bindings: models (placeholder until this part lands). */
#include "python/pyovs.h"

int ovs_py_register_models(PyObject *m) { (void)m; return 0; }
