"""Shared fixtures and helpers for the ovs tests.

Reference data: tests/reference/make_fixtures.py computes open_clip (PyTorch) outputs of randomly
initialised CLIP models and writes them, with the models' weights, to tests/_generated/
(gitignored). The session fixture `fixtures_dir` (re)generates them only when the script or the
versions of torch / open_clip / Pillow ... change (about a minute on 2 cores, ~1.1 GB on disk).

Tolerance policy (one rule for every parity test, applied per tensor):

    max |ours - ref| / max(max |ref|, 1e-6) <= 1e-4

i.e. the worst absolute error relative to the tensor's own scale. float32 kernels that sum in a
different order than PyTorch (BLAS blocking, fused BatchNorm, threads) differ by ~1e-6 of the
scale; an indexing, layout or formula mistake is orders of magnitude above 1e-4. Use
`assert_close(ours, ref, name=...)`, which reports the max absolute and relative error and the
index of the worst element.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS_DIR = Path(__file__).resolve().parent
GENERATED_DIR = TESTS_DIR / "_generated"
RTOL = 1e-4


def load_reference(stem: str):
    """tests/reference/<stem>.py as a module (loaded once; the references are scripts too, so
    they are loaded by path rather than imported as a package)."""
    name = f"ovs_tests_{stem}"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent / "reference" / f"{stem}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _make_fixtures_module():
    name = "ovs_tests_make_fixtures"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TESTS_DIR / "reference" / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def assert_close(ours, ref, rtol: float = RTOL, name: str = "tensor") -> None:
    """Fail unless max|ours - ref| / max(max|ref|, 1e-6) <= rtol (see the module docstring)."""
    ours = np.asarray(ours)
    ref = np.asarray(ref)
    if ours.shape != ref.shape:
        raise AssertionError(f"{name}: shape {ours.shape} != reference shape {ref.shape}")
    if ours.size == 0:
        return
    if not np.isfinite(ours).all():
        bad = np.unravel_index(np.flatnonzero(~np.isfinite(ours))[0], ours.shape)
        raise AssertionError(f"{name}: non-finite value {ours[bad]} at index {tuple(map(int, bad))}")
    diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
    max_abs = float(diff[worst])
    scale = max(float(np.abs(ref).max()), 1e-6)
    rel = max_abs / scale
    if not rel <= rtol:
        raise AssertionError(
            f"{name}: max |ours - ref| = {max_abs:.3e} at index {tuple(map(int, worst))} "
            f"(ours {float(ours[worst]):.6g}, ref {float(ref[worst]):.6g}); scale max|ref| = "
            f"{scale:.4g}; relative error {rel:.3e} > {rtol:.1e}")


def load_npz(path) -> dict:
    """All arrays of an .npz file, loaded eagerly (no pickles)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def npz_json(arrays: dict, key: str):
    """Decode a 0-d string entry that holds JSON (e.g. the prompt list)."""
    return json.loads(str(arrays[key]))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """tests/_generated, holding up-to-date open_clip reference fixtures."""
    mf = _make_fixtures_module()
    # make_fixtures.py checks that open_clip in float32 fits within half of this tolerance.
    assert mf.TEST_RTOL == RTOL, f"make_fixtures.TEST_RTOL {mf.TEST_RTOL} != conftest.RTOL {RTOL}"
    return mf.ensure_fixtures(GENERATED_DIR)


@pytest.fixture(scope="session")
def manifest(fixtures_dir) -> dict:
    """Architecture facts and case lists recorded by make_fixtures.py."""
    return json.loads((fixtures_dir / "manifest.json").read_text())


@pytest.fixture(scope="session")
def load_model(fixtures_dir, manifest):
    """load_model(name) -> ovs model for a fixture model name, loaded once per session."""
    import ovs

    cache = {}

    def get(name: str):
        if name not in cache:
            act = manifest["models"][name]["act"]
            cache[name] = ovs.load(str(fixtures_dir / f"{name}.safetensors"), act=act)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def reference(fixtures_dir):
    """reference(filename) -> dict of arrays from fixtures_dir/filename, loaded once per session."""
    cache = {}

    def get(filename: str) -> dict:
        if filename not in cache:
            cache[filename] = load_npz(fixtures_dir / filename)
        return cache[filename]

    return get
