"""ovs: open-vocabulary semantic segmentation with a C engine (CLIP on the CPU, no PyTorch).

    >>> import ovs
    >>> model = ovs.load("ViT-B-16")                  # OpenAI weights, downloaded once
    >>> seg = ovs.Segmenter(model)                    # NACLIP by default for ViTs
    >>> labels = seg.segment(image, ["cat", "sofa, couch", "floor"])   # int32 (H, W)
    >>> ovs.overlay(image, labels, ["cat", "sofa, couch", "floor"])    # PIL image with a legend
    >>> seg.show(image, ["cat", "sofa, couch", "floor"])               # the same, in one call
"""
from __future__ import annotations

import os as _os

# OpenMP threads sleep instead of spinning between parallel regions: on a machine whose cores
# are shared with other processes, spinning threads made 2-thread runs many times slower than
# 1-thread runs (libgomp's default spins ~3 ms). They first spin briefly (GOMP_SPINCOUNT 2000,
# ~20 us): waking a sleeping thread costs more than that in a VM, and a forward opens ~80
# regions (RN50 224^2 at 2 threads, quiet Zen 5: 42 -> 38 ms). Set before the extension (and its
# libgomp) loads; the caller's settings win (an OMP_WAIT_POLICY of their own keeps libgomp's spin).
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    _os.environ.setdefault("GOMP_SPINCOUNT", "2000")

from . import _blas  # noqa: E402

_blas.preload()

try:
    from . import _core  # noqa: E402
except ImportError as _exc:
    _here = _os.path.dirname(_os.path.abspath(__file__))
    if _os.path.exists(_os.path.join(_os.path.dirname(_here), "setup.py")) and not any(
            f.startswith("_core.") for f in _os.listdir(_here)):
        raise ImportError(
            f"ovs is being imported from its source tree ({_here}), where the C extension "
            "ovs._core has not been built. Either run Python from another directory so that the "
            "installed ovs is imported, or build it in place with `pip install -e .`") from None
    raise ImportError(f"ovs's C extension failed to load: {_exc}") from _exc
from ._core import OvsError, WeightFileError  # noqa: E402
from .model import Model, infer_config, load  # noqa: E402
from .segment import METHODS, Segmenter  # noqa: E402
from .visualize import overlay  # noqa: E402
from .tokenizer import tokenize  # noqa: E402
from . import metrics  # noqa: E402
from . import classnames, presets  # noqa: E402
from .evaluate import evaluate  # noqa: E402  (the function; the module stays sys.modules["ovs.evaluate"])

__version__ = "0.1.0"


def set_num_threads(n: int) -> None:
    """Threads for OpenBLAS and ovs's own loops (0 = all cores). Results do not depend on it
    beyond float rounding."""
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    return _core.get_num_threads()


__all__ = ["Model", "load", "infer_config", "Segmenter", "METHODS", "tokenize", "OvsError",
           "WeightFileError", "overlay", "set_num_threads", "get_num_threads", "evaluate", "metrics",
           "presets", "classnames"]
