"""ovs: open-vocabulary semantic segmentation with a C engine (CLIP on the CPU, no PyTorch)."""
from __future__ import annotations

from . import _blas

_blas.preload()

from . import _core  # noqa: E402
from ._core import OvsError, WeightFileError  # noqa: E402

__version__ = "0.1.0"


def set_num_threads(n: int) -> None:
    """Threads for OpenBLAS and ovs's own loops (0 = all cores). Results do not depend on it
    beyond float rounding."""
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    return _core.get_num_threads()


__all__ = ["OvsError", "WeightFileError", "set_num_threads", "get_num_threads"]
