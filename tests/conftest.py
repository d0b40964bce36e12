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

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS_DIR = Path(__file__).resolve().parent
GENERATED_DIR = TESTS_DIR / "_generated"
REFERENCE_DIR = TESTS_DIR / "reference"
RTOL = 1e-4


def load_test_module(relpath: str, name: str):
    """The Python file tests/<relpath> (a data generator) as the module `name`, loaded once per
    session (cached in sys.modules)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TESTS_DIR / relpath)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_reference(stem: str):
    """tests/reference/<stem>.py as the module `stem`. The references are scripts too and import
    each other by that bare name (`import seg_reference`), as the benchmarks do: their folder
    joins sys.path and each is loaded once."""
    if str(REFERENCE_DIR) not in sys.path:
        sys.path.append(str(REFERENCE_DIR))
    return importlib.import_module(stem)


def framework_test_images() -> list:
    """Two small test images for the framework tests: a smooth 150x200 one (at short side 128:
    resized to 128x171, padded to 128x192) and a random 300x90 one (its long side capped)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:150, 0:200]
    smooth = np.stack([(np.sin(yy / 9.0) * 120 + 128), (np.cos(xx / 13.0) * 120 + 128),
                       ((yy + xx) % 256)], -1).astype(np.uint8)
    return [smooth, rng.integers(0, 256, (300, 90, 3), dtype=np.uint8)]


class FrameworkCase:
    """What the framework tests (test_fcclip.py, test_han.py, test_deeplab.py) share: the PyTorch
    reference tests/reference/<stem>.py (`R`: small(seed), save_checkpoint(model, path)), the
    Segmenter method, and a small detectron2 resize for speed (the framework default is 800 /
    1333). A test module names its case `FW`; the `pair` fixture reads it."""

    SHORT, MAX = 128, 192

    def __init__(self, stem: str, method: str, requires=("torch",)):
        for module in requires:   # the reference's dependencies: skip the test module without them
            pytest.importorskip(module)
        self.R = load_reference(stem)
        self.method = method

    def convert(self, ref, tmp, stem: str) -> Path:
        """ref's detectron2 checkpoint (R.save_checkpoint) under tmp, then `ovs convert
        --framework <method>` of it; returns the converted file."""
        from ovs.cli import main as cli_main

        ck, out = tmp / f"{stem}.pth", tmp / f"{stem}.safetensors"
        self.R.save_checkpoint(ref, ck)
        assert cli_main(["convert", str(ck), "--framework", self.method, "-o", str(out)]) == 0
        return out

    def load_pruned(self, ref, tmp, model_class):
        """ref (with pruned trunk weights) converted and loaded as model_class(..., sparse="all"):
        its trunk runs through the sparse kernels (all but a few strided convs)."""
        import ovs.weights

        model = model_class(ovs.weights.load_state_dict(self.convert(ref, tmp, "pruned")), sparse="all")
        convs = model._trunk.convs()
        assert sum(c["sparse"] for c in convs) >= len(convs) - 8   # strided convs stay dense
        return model

    def pair(self, tmp_path_factory):
        """(reference R.small(seed=0), the ovs model of its converted checkpoint, that file)."""
        import ovs

        ref = self.R.small(seed=0)
        path = self.convert(ref, tmp_path_factory.mktemp(self.method), self.method)
        return ref, ovs.load(path), path

    def segmenter(self, model):
        """Segmenter(model, method) at the small resize (short side SHORT, long side <= MAX)."""
        import ovs

        seg = ovs.Segmenter(model, self.method, short_side=self.SHORT)
        seg.max_size = self.MAX
        return seg

    def assert_thread_count_invariant(self, model, image, names) -> None:
        """Segmenter.predict at 1 and 2 threads: equal to float32 rounding (1e-5; the C trunk's
        and heads' GEMMs split work by thread, the rest is serial)."""
        import ovs

        n = ovs.get_num_threads()
        try:
            ovs.set_num_threads(1)
            one = self.segmenter(model).predict(image, names)
            ovs.set_num_threads(2)
            two = self.segmenter(model).predict(image, names)
        finally:
            ovs.set_num_threads(n)
        assert_close(two, one, rtol=1e-5, name="scores, 2 vs 1 thread")

    @staticmethod
    def assert_rejects_bad_images(forward) -> None:
        """forward (a framework model's network entry, ovs.frameworks._check_images) refuses
        uint8 images and sides below 32 with clear errors."""
        with pytest.raises(TypeError, match="images must be a float numpy array"):
            forward(np.zeros((1, 3, 64, 64), np.uint8))
        with pytest.raises(ValueError, match="at least 32, got 16x64"):
            forward(np.zeros((1, 3, 16, 64), np.float32))

    def check_segmenter_and_cli(self, model, path, image, names, tmp_path, other_method: str) -> None:
        """Segmenter refuses a window and another method's name; `ovs segment --method <method>`
        of the converted file writes Segmenter.segment's label map."""
        import ovs
        from ovs.cli import main as cli_main
        from PIL import Image

        with pytest.raises(ValueError, match="window does not apply"):
            ovs.Segmenter(model, self.method, window=(224, 112))
        with pytest.raises(ValueError, match=f"use method='{self.method}'"):
            ovs.Segmenter(model, other_method)
        Image.fromarray(image).save(tmp_path / "im.png")
        # ';' separates classes when a name holds a comma (synonyms)
        classes = (";" if any("," in n for n in names) else ",").join(names)
        rc = cli_main(["segment", str(tmp_path / "im.png"), "--model", str(path), "--method",
                       self.method, "--classes", classes, "--short-side", str(self.SHORT),
                       "--out", str(tmp_path / "mask.png")])
        assert rc == 0
        got = np.asarray(Image.open(tmp_path / "mask.png"))
        seg = ovs.Segmenter(model, self.method, short_side=self.SHORT)
        np.testing.assert_array_equal(got, seg.segment(image, names).astype(got.dtype))


@pytest.fixture(scope="module")
def pair(request, tmp_path_factory):
    """The framework test module's FW.pair(): (reference model, converted ovs model, its file)."""
    return request.module.FW.pair(tmp_path_factory)


def assert_conversion_errors(state_dict: dict, framework: str, cases) -> None:
    """Each case (changes, pattern): state_dict with `changes` applied ({key: array, or None to
    delete the key}) must fail ovs.convert.convert_state_dict(..., framework) with a
    ConversionError whose message matches the regular expression `pattern`."""
    import ovs.convert
    from ovs.frameworks import ConversionError

    for changes, pattern in cases:
        bad = dict(state_dict)
        for k, v in changes.items():
            if v is None:
                del bad[k]
            else:
                bad[k] = v
        with pytest.raises(ConversionError, match=pattern):
            ovs.convert.convert_state_dict(bad, framework)


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


def assert_same(got, want, what: str = "") -> None:
    """Identical results: same shape, dtype and values (NaN equals NaN); dicts key by key. For
    the same code path on the same data (a reloaded file, a retried call)."""
    if isinstance(got, dict):
        assert got.keys() == want.keys(), f"{what}: keys {sorted(got)} != {sorted(want)}"
        for k in got:
            assert_same(got[k], want[k], f"{what}[{k}]")
        return
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    if got.dtype.kind in "fc":
        bad = ~((got == want) | (np.isnan(got) & np.isnan(want)))
    else:
        bad = got != want
    if bad.any():
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} elements differ, max "
                             f"difference {np.nanmax(diff) if diff.size else 0:.3e}")


def inject_alloc_failures(fn, what: str, result=lambda r: r, setup=None) -> int:
    """Fail every C allocation of fn() in turn; returns their count.

    ``_core.debug_fail_alloc(i)`` makes the i-th C allocation from now fail (0 = off) and returns
    how many allocations were made since the previous call. We count the allocations N of one
    call, then fail each of the N in turn: the call must either succeed with the same result
    (result(out), compared with assert_same) or raise MemoryError -- never crash, never raise
    anything else -- and a normal call afterwards must give the first run's result again.

    setup: builds fn's argument before every run, outside the counted region (e.g. a fresh
    model, whose workspace arenas are still empty: a warmed-up model reuses its arenas and
    allocates nothing, so failing "its" allocations would test nothing)."""
    from ovs import _core

    def run():
        if setup is None:
            _core.debug_fail_alloc(0)
            return fn()
        arg = setup()
        _core.debug_fail_alloc(0)
        return fn(arg)

    _core.debug_fail_alloc(0)
    try:
        ref = result(run())
        n = _core.debug_fail_alloc(0)
        assert n >= 1, f"{what}: no C allocation counted: nothing to inject"
        failed = 0
        for i in range(1, n + 1):
            arg = setup() if setup is not None else None
            _core.debug_fail_alloc(i)
            try:
                out = fn(arg) if setup is not None else fn()
            except MemoryError:
                failed += 1
                continue
            finally:
                _core.debug_fail_alloc(0)
            # A failure the code recovered from (e.g. an arena it could not shrink) must not
            # change the result.
            assert_same(result(out), ref, f"{what} (allocation {i}/{n} failed, call succeeded)")
        assert failed > 0, f"{what}: none of the {n} injected allocation failures was reported"
        assert_same(result(run()), ref, f"{what} after {n} injected failures")
        return n
    finally:
        _core.debug_fail_alloc(0)


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
    mf = load_reference("make_fixtures")
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
