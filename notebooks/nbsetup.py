"""Shared setup of the notebooks in this folder: settings, weights, figures, timing.

* ``SMALL``: true when ``OVS_NB_SMALL=1`` (the test suite sets it: smaller images, fewer
  repetitions and sparsity levels, so all notebooks run in about a minute on 2 cores).
* ``weights_file(name)``: the real OpenAI weights ("RN50", "ViT-B-16") when ovs can find or
  download them; otherwise a file of *generated random* weights with open_clip's layout
  (``ovs.weights.random_state_dict``), cached in ``$OVS_NB_CACHE`` (default
  ``~/.cache/ovs/generated``), and a printed notice saying so. With generated weights, FLOPs,
  parameter counts and speeds are those of the real architecture; labels, α values and any
  accuracy are not meaningful.
* ``save_figure(fig, name)``: a matplotlib figure as ``$OVS_NB_FIGURES/<name>.png`` (default
  ``figures/`` next to the notebooks) at exactly ``FIG_SIZE`` pixels.
* ``interleaved(fns, repeat)``: median seconds of each callable, measured alternately.
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import ovs
from ovs.hub import WeightsUnavailableError, resolve_weights
from ovs.weights import random_state_dict, save_safetensors

SMALL = os.environ.get("OVS_NB_SMALL", "") not in ("", "0")
FIG_DIR = Path(os.environ.get("OVS_NB_FIGURES", "figures"))
CACHE_DIR = Path(os.environ.get("OVS_NB_CACHE", Path.home() / ".cache" / "ovs" / "generated"))
FIG_DPI = 100
FIG_INCHES = (8.0, 4.5)
FIG_SIZE = (int(FIG_INCHES[0] * FIG_DPI), int(FIG_INCHES[1] * FIG_DPI))   # (800, 450) pixels
EXAMPLE_IMAGE = Path(ovs.__file__).resolve().parent / "data" / "example_cat.jpg"

GENERATED: dict[str, bool] = {}   # name -> True when the notebook runs on generated weights


def weights_file(name: str) -> Path:
    """Path of the weights for "RN50" / "ViT-B-16": real if available, else generated."""
    try:
        path = Path(resolve_weights(name, progress=False))
        GENERATED[name] = False
        print(f"{name}: real weights from {path}")
        return path
    except WeightsUnavailableError as exc:
        reason = str(exc).splitlines()[0]
    path = CACHE_DIR / f"{name}-random-seed0.safetensors"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(random_state_dict(name, seed=0), path,
                         metadata={"generated_by": "ovs.weights.random_state_dict(seed=0)"})
    GENERATED[name] = True
    print(f"{name}: REAL WEIGHTS UNAVAILABLE ({reason})\n"
          f"  -> using GENERATED RANDOM weights with open_clip's {name} layout ({path}).\n"
          "     FLOPs, parameters and speeds are those of the real model; labels, alpha values\n"
          "     and accuracies computed from these weights are NOT meaningful.")
    return path


def load(name: str) -> ovs.Model:
    return ovs.load(weights_file(name))


def save_figure(fig, name: str) -> Path:
    """Save at FIG_SIZE pixels (no tight bounding box, so the size is fixed) and close."""
    FIG_DIR.mkdir(parents=True, exist_ok=True)
    fig.set_size_inches(*FIG_INCHES)
    fig.tight_layout()
    path = FIG_DIR / f"{name}.png"
    fig.savefig(path, dpi=FIG_DPI)
    print(f"saved {path}")
    return path


def interleaved(fns: dict, repeat: int, warmup: int = 1) -> dict[str, float]:
    """Median wall seconds of each callable, run in turn (ABAB...) after warm-up calls, so a
    busy moment of the machine hits every candidate alike."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def machine() -> str:
    """CPU model, cores and the ISA ovs's GEMM kernels use."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical cores, ovs threads {ovs.get_num_threads()}, "
            f"GEMM kernels {ovs._core.gemm_isa()}")
