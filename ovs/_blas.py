"""Load OpenBLAS before the C extension so its symbols resolve.

The extension links against ``libscipy_openblas.so`` from the pinned ``scipy-openblas32`` wheel.
That library lives in site-packages, not on the loader's search path, so it is opened here with
RTLD_GLOBAL; the extension's dependency then resolves to the already-loaded copy.
"""
from __future__ import annotations

import ctypes
import os


def preload() -> str | None:
    try:
        import scipy_openblas32 as sob
    except ImportError:  # built against a system OpenBLAS (OVS_BLAS=system)
        return None
    path = os.path.join(sob.get_lib_dir(), sob.get_library(fullname=True))
    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    return path
