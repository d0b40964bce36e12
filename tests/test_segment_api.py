"""ovs.Segmenter API edge cases: sizes, batches, class lists, bad inputs, options, methods.

Numerical parity with the original methods lives in test_segment_parity.py; here the tiny
random-weight fixtures check shapes, ranges, consistency between segment / predict / logits and
the errors raised for bad input. Most tests use short_side=None and window=None (whole image at
its own size) so that each call takes milliseconds.
"""
from __future__ import annotations

import re

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ovs

NAMES = ["cat", "grass", "sky"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Results do not depend on threads (test_robustness checks 1 vs 2); one thread keeps this
    file fast when other processes share the cores."""
    n = ovs.get_num_threads()
    ovs.set_num_threads(1)
    yield
    ovs.set_num_threads(n)


@pytest.fixture(scope="module")
def vit(fixtures_dir):
    return ovs.load(fixtures_dir / "vit_tiny.safetensors", act="gelu")


@pytest.fixture(scope="module")
def rn(fixtures_dir):
    return ovs.load(fixtures_dir / "rn_tiny.safetensors", act="gelu")


@pytest.fixture(scope="module")
def fast(vit):
    """Whole image at its own size: the cheapest configuration."""
    return ovs.Segmenter(vit, short_side=None, window=None)


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _check_labels(labels, shape, n_classes, allow_bg=False):
    assert isinstance(labels, np.ndarray) and labels.dtype == np.int32, \
        f"labels: {type(labels).__name__} {getattr(labels, 'dtype', None)}"
    assert labels.shape == shape, f"labels shape {labels.shape} != {shape}"
    lo = -1 if allow_bg else 0
    assert labels.min() >= lo and labels.max() < n_classes, \
        f"labels range {labels.min()}..{labels.max()} outside {lo}..{n_classes - 1}"


# ------------------------------------------------------------------------------ sizes
@pytest.mark.parametrize("method", ["naclip", "maskclip"])
def test_odd_size_default_settings(vit, rn, method):
    """Default settings (short side 336, sliding windows): the map has the input's exact size
    and equals the argmax of predict()."""
    model = vit if method == "naclip" else rn
    seg = ovs.Segmenter(model, method=method)
    image = _img(333, 517)
    labels = seg.segment(image, NAMES)
    _check_labels(labels, (333, 517), 3)
    probs = seg.predict(image, NAMES)
    assert probs.shape == (3, 333, 517)
    agree = float((probs.argmax(0) == labels).mean())
    assert agree == 1.0, f"segment() disagrees with argmax(predict()) on {1 - agree:.2%} of pixels"


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (7, 5), (2, 19), (9, 8)])
@pytest.mark.parametrize("settings", [dict(short_side=None, window=None),
                                      dict(short_side=None, window=(224, 112)),
                                      dict(short_side=None, window=(4, 2)),
                                      dict(short_side=24, window=(16, 8))])
def test_tiny_images(vit, rn, shape, settings):
    """Images smaller than a window and smaller than one patch are padded: a valid map."""
    for model in (vit, rn):
        seg = ovs.Segmenter(model, method="maskclip", **settings)
        image = _img(*shape, seed=shape[0] * 100 + shape[1])
        labels = seg.segment(image, NAMES)
        _check_labels(labels, shape, 3)
        probs = seg.predict(image, NAMES)
        assert probs.shape == (3, *shape) and np.isfinite(probs).all()
        np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
        assert (probs.argmax(0) == labels).all()


def test_tiny_image_default_settings(vit):
    seg = ovs.Segmenter(vit)  # naclip, short side 336: a 1x1 image becomes 336x336
    for shape in ((1, 1), (5, 7)):
        _check_labels(seg.segment(_img(*shape), NAMES), shape, 3)


def test_extreme_aspect_ratio(vit):
    """A 2x3000 strip: the long side is capped (2048, as the originals' mmseg Resize), so the
    processing size stays bounded instead of 336x504000."""
    seg = ovs.Segmenter(vit, short_side=336, window=(224, 224))
    labels = seg.segment(_img(2, 3000), NAMES)
    _check_labels(labels, (2, 3000), 3)
    from ovs.segment import processing_size

    assert processing_size(2, 3000, 336) == (1, 2048)
    assert processing_size(3000, 2, 336) == (2048, 1)
    assert processing_size(333, 517, 336) == (336, 522)  # the cap leaves usual images alone


LARGE_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import ovs

    def hwm():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc/self/status")

    ovs.set_num_threads(1)
    model = ovs.load(sys.argv[1], act="gelu")
    names = [f"thing {i}" for i in range(150)]
    seg = ovs.Segmenter(model, templates="bare")
    seg.segment(np.zeros((64, 64, 3), np.uint8), names)  # classifier cached, code paths warm
    image = np.random.default_rng(0).integers(0, 256, (2048, 1536, 3), dtype=np.uint8)
    before = hwm()
    labels = seg.segment(image, names)
    growth = hwm() - before
    print(json.dumps({"growth": growth, "shape": list(labels.shape), "dtype": str(labels.dtype),
                      "min": int(labels.min()), "max": int(labels.max()),
                      "distinct": int(len(np.unique(labels)))}))
""")


def test_large_image_bounded_memory(fixtures_dir):
    """2048x1536 with 150 classes: segment() never materialises (C, H, W) = 1.8 GiB; the peak
    RSS grows by the low-resolution logits and workspaces only. Run in a fresh process so that
    VmHWM (the peak) measures this call alone."""
    env = dict(os.environ, PYTHONPATH=str(Path(ovs.__file__).parent.parent))
    proc = subprocess.run([sys.executable, "-c", LARGE_SCRIPT,
                           str(fixtures_dir / "vit_tiny.safetensors")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["shape"] == [2048, 1536] and out["dtype"] == "int32", out
    assert 0 <= out["min"] and out["max"] < 150 and out["distinct"] > 1, out
    dense = 150 * 2048 * 1536 * 4
    assert out["growth"] < dense / 10, \
        f"peak RSS grew by {out['growth'] / 2**20:.0f} MiB (dense (C, H, W) = {dense / 2**20:.0f} MiB)"


# ------------------------------------------------------------------------------ classes
def test_many_classes(vit):
    names = [f"generated class {i}" for i in range(1100)]
    seg = ovs.Segmenter(vit, short_side=None, window=None, templates="bare")
    image = _img(17, 23)
    probs = seg.predict(image, names)
    assert probs.shape == (1100, 17, 23)
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
    labels = seg.segment(image, names)
    _check_labels(labels, (17, 23), 1100)
    assert (labels == probs.argmax(0)).all()
    assert len(np.unique(labels)) > 1


def test_duplicate_names(fast):
    image = _img(30, 41)
    names = ["cat", "grass", "cat", "sky", "grass", " cat", "sky "]
    probs = fast.predict(image, names)
    logits = fast.logits(image, names)
    for a, b in ((0, 2), (1, 4), (0, 5), (3, 6)):
        assert np.array_equal(probs[a], probs[b]), f"probability rows {a} and {b} differ"
        assert np.array_equal(logits[a], logits[b]), f"logit rows {a} and {b} differ"
    labels = fast.segment(image, names)
    assert not np.isin(labels, [2, 4, 5, 6]).any(), "argmax must pick the first of duplicate names"
    assert (labels == probs.argmax(0)).all()


@pytest.mark.parametrize("names,exc,match", [
    ([], ValueError, "empty"), (["cat", 3], TypeError, "got 3 "),
    (["cat", None], TypeError, "got None "), ("cat", TypeError, "got str 'cat'"),
    ("cat,dog", TypeError, "got str 'cat,dog'"), (None, TypeError, "got NoneType"),
    (["cat", "  "], ValueError, r"class_names\[1\] is empty"), (42, TypeError, "got int")])
def test_bad_class_names(fast, names, exc, match):
    for call in (fast.segment, fast.predict, fast.logits):
        with pytest.raises(exc, match=match):
            call(_img(8, 8), names)


def test_class_name_sequences(fast):
    image = _img(12, 20)
    ref = fast.segment(image, NAMES)
    for names in (tuple(NAMES), iter(NAMES), np.array(NAMES), (n for n in NAMES)):
        assert np.array_equal(fast.segment(image, names), ref), type(names).__name__


# ------------------------------------------------------------------------------ images
def test_bad_images(fast):
    image = _img(16, 16)
    nan = image.astype(np.float32) / 255
    nan[3, 4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fast.segment(nan, NAMES)
    inf = image.astype(np.float64) / 255
    inf[0, 0, 0] = np.inf
    with pytest.raises(ValueError):
        fast.segment(inf, NAMES)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fast.segment(image.astype(np.float32), NAMES)  # 0..255 floats
    with pytest.raises(TypeError, match="int16"):
        fast.segment(image.astype(np.int16), NAMES)
    for bad in (None, image.tolist()):
        with pytest.raises(TypeError):
            fast.segment(bad, NAMES)
    with pytest.raises(FileNotFoundError, match="image file not found: no-such-image.png"):
        fast.segment("no-such-image.png", NAMES)  # a str is a path (as a PIL image is an image)
    for bad in (image[..., 0], image[..., :2], np.dstack([image, image[..., :1]]),
                image[:0], image[:, :0], np.zeros((0, 8, 8, 3), np.uint8)):
        with pytest.raises(ValueError):
            fast.segment(bad, NAMES)
    with pytest.raises(ValueError):
        fast.segment([], NAMES)


def test_image_layouts(fast):
    """Float [0, 1] images, Fortran order and strided views give the uint8 C-order result."""
    image = _img(21, 34)
    ref = fast.predict(image, NAMES)
    variants = {"float32": image.astype(np.float32) / 255, "float64": image / 255.0,
                "fortran": np.asfortranarray(image),
                "strided": np.repeat(image, 2, axis=1)[:, ::2],
                "negative stride": image[::-1][::-1], "bgr->rgb view": image[..., ::-1][..., ::-1]}
    for name, v in variants.items():
        got = fast.predict(v, NAMES)
        assert np.array_equal(got, ref), f"{name}: max diff {np.abs(got - ref).max():.3e}"


def test_batches(fast):
    batch = np.stack([_img(20, 28, seed=k) for k in range(3)])
    labels = fast.segment(batch, NAMES)
    assert isinstance(labels, np.ndarray) and labels.shape == (3, 20, 28)
    probs = fast.predict(batch, NAMES)
    assert probs.shape == (3, 3, 20, 28)
    for k in range(3):
        assert np.array_equal(labels[k], fast.segment(batch[k], NAMES)), f"batch item {k}"
        assert np.array_equal(probs[k], fast.predict(batch[k], NAMES)), f"batch item {k}"
    images = [_img(20, 28), _img(9, 40, seed=1), _img(33, 5, seed=2)]
    for call in (fast.segment, fast.predict, fast.logits):
        outs = call(images, NAMES)
        assert isinstance(outs, list) and len(outs) == 3
        for im, out in zip(images, outs):
            assert out.shape[-2:] == im.shape[:2]
            assert np.array_equal(out, call(im, NAMES))
    assert isinstance(fast.segment(tuple(images), NAMES), list)


# ------------------------------------------------------------------------------ options
def test_output_size(vit):
    image = _img(30, 41)
    seg = ovs.Segmenter(vit, short_side=None, window=None, output_size=(7, 90))
    labels = seg.segment(image, NAMES)
    probs = seg.predict(image, NAMES)
    logits = seg.logits(image, NAMES)
    assert labels.shape == (7, 90) and probs.shape == (3, 7, 90) and logits.shape == (3, 7, 90)
    assert (labels == probs.argmax(0)).all()
    ls = 40.0
    soft = np.exp(ls * (logits - logits.max(0)))
    np.testing.assert_allclose(probs, soft / soft.sum(0), atol=1e-5)
    batch = seg.segment([image, _img(50, 9)], NAMES)
    assert [b.shape for b in batch] == [(7, 90), (7, 90)]
    for bad in ((0, 5), (5,), (5, -1), "ab", 5, (2.7, 3.9)):
        with pytest.raises(ValueError, match=re.escape(f"got {bad!r}")):
            ovs.Segmenter(vit, output_size=bad)


def test_bg_threshold(vit, fast):
    image = _img(30, 41)
    probs = fast.predict(image, NAMES)
    top = probs.max(0)
    for thr in (float(np.quantile(top, 0.3)) + 1e-4, float(np.quantile(top, 0.8)) + 1e-4):
        seg = ovs.Segmenter(vit, short_side=None, window=None, bg_threshold=thr)
        labels = seg.segment(image, NAMES)
        expected = np.where(top < thr, -1, probs.argmax(0))
        assert (labels == expected).all(), f"bg_threshold={thr}: {(labels != expected).sum()} pixels differ"
        assert (labels == -1).any() and (labels >= 0).any()
        # First class named "background": low-confidence pixels get 0 instead of -1.
        bg_names = ["background", "grass", "sky"]
        bg_probs = fast.predict(image, bg_names)
        bg_labels = seg.segment(image, bg_names)
        expected = np.where(bg_probs.max(0) < thr, 0, bg_probs.argmax(0))
        assert (bg_labels == expected).all()
        # predict / logits are unaffected by the threshold.
        assert np.array_equal(seg.predict(image, NAMES), probs)
    none = ovs.Segmenter(vit, short_side=None, window=None, bg_threshold=0.0)
    assert np.array_equal(none.segment(image, NAMES), probs.argmax(0))
    everything = ovs.Segmenter(vit, short_side=None, window=None, bg_threshold=1.0)
    assert (everything.segment(image, NAMES) == -1).all()
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            ovs.Segmenter(vit, bg_threshold=bad)


@pytest.mark.parametrize("method", ["maskclip", "sclip", "clearclip", "naclip"])
def test_predict_and_logits_ranges(vit, method):
    seg = ovs.Segmenter(vit, method=method, short_side=48, window=(32, 16))
    image = _img(37, 61)
    probs = seg.predict(image, NAMES)
    assert probs.dtype == np.float32 and probs.shape == (3, 37, 61)
    assert probs.min() >= 0 and probs.max() <= 1
    err = float(np.abs(probs.sum(0) - 1).max())
    assert err < 1e-5, f"{method}: probabilities sum to 1 within {err:.2e}"
    logits = seg.logits(image, NAMES)
    assert logits.dtype == np.float32 and logits.shape == (3, 37, 61)
    assert logits.min() >= -1 - 1e-5 and logits.max() <= 1 + 1e-5, \
        f"{method}: cosine logits in {logits.min()}..{logits.max()}"
    assert (seg.segment(image, NAMES) == probs.argmax(0)).all()


def test_methods_per_architecture(vit, rn):
    for method in ovs.METHODS:
        if method == "scclip":  # reads blocks 3..9: the 3-block test ViT is too shallow
            with pytest.raises(ValueError, match="at least 11 blocks.*has 3"):
                ovs.Segmenter(vit, method=method, short_side=None, window=None)
            continue
        seg = ovs.Segmenter(vit, method=method, short_side=None, window=None)
        assert seg.method == method
        _check_labels(seg.segment(_img(16, 24), NAMES), (16, 24), 3)
    assert ovs.Segmenter(vit).method == "naclip"
    assert ovs.Segmenter(rn).method == "maskclip"
    _check_labels(ovs.Segmenter(rn, short_side=None).segment(_img(40, 70), NAMES), (40, 70), 3)
    for method in ("sclip", "clearclip", "naclip", "scclip"):
        with pytest.raises(ValueError, match="maskclip"):
            ovs.Segmenter(rn, method=method)


def test_unknown_method(vit):
    with pytest.raises(ValueError) as info:
        ovs.Segmenter(vit, method="segformer")
    for m in ovs.METHODS:
        assert m in str(info.value), f"{m!r} not listed in: {info.value}"
    assert "segformer" in str(info.value)
    with pytest.raises(ValueError):
        ovs.Segmenter(vit, method="NACLIP ")
    with pytest.raises(TypeError):
        ovs.Segmenter("not a model")


@pytest.mark.parametrize("kw", [dict(window=(0, 0)), dict(window=(224, 0)), dict(window=(100, 200)),
                                dict(window=(-224, 112)), dict(window=(224,)),
                                dict(window=(224, 112, 56)), dict(window="224,112"),
                                dict(window=224), dict(short_side=0), dict(short_side=-5),
                                dict(short_side=33.5), dict(logit_scale=0),
                                dict(logit_scale=float("nan")), dict(logit_scale=-1),
                                dict(templates="nope"), dict(templates=["no placeholder"])])
def test_setting_validation(vit, kw):
    with pytest.raises((ValueError, TypeError)) as info:
        ovs.Segmenter(vit, **kw)
    value = next(iter(kw.values()))
    key = next(iter(kw))
    assert key.split("_")[0] in str(info.value) or repr(value) in str(info.value) \
        or str(value) in str(info.value), f"message does not name {key}={value!r}: {info.value}"


def test_set_weight_updates_segmenter(fixtures_dir):
    path = fixtures_dir / "vit_tiny.safetensors"
    model = ovs.load(path, act="gelu")
    seg = ovs.Segmenter(model, method="naclip", short_side=None, window=None)
    image = _img(32, 40)
    before = seg.logits(image, NAMES)
    rng = np.random.default_rng(7)
    # An image weight: the head is rebuilt on the new tower.
    name = "visual.transformer.resblocks.2.attn.in_proj_weight"
    w = model.state_dict[name]
    model.set_weight(name, w + 0.05 * rng.standard_normal(w.shape).astype(np.float32))
    after = seg.logits(image, NAMES)
    ref_model = ovs.Model(model.state_dict, act="gelu")
    ref = ovs.Segmenter(ref_model, method="naclip", short_side=None, window=None).logits(image, NAMES)
    assert np.abs(after - before).max() > 1e-3, "the segmenter still uses the old image weights"
    np.testing.assert_allclose(after, ref, rtol=0, atol=1e-6)
    # A text weight: the classifier (cached) is recomputed.
    model.set_weight("text_projection", model.state_dict["text_projection"][:, ::-1].copy())
    after_text = seg.logits(image, NAMES)
    ref_model = ovs.Model(model.state_dict, act="gelu")
    ref = ovs.Segmenter(ref_model, method="naclip", short_side=None, window=None).logits(image, NAMES)
    assert np.abs(after_text - after).max() > 1e-3, "the segmenter still uses the old text weights"
    np.testing.assert_allclose(after_text, ref, rtol=0, atol=1e-6)


def test_setting_types_are_checked(load_model):
    model = load_model("vit_tiny")
    for bad in [dict(short_side=True), dict(short_side=3.5), dict(window=(32.7, 16)),
                dict(window=(32, True)), dict(window="32,16")]:
        with pytest.raises(ValueError):
            ovs.Segmenter(model, method="naclip", **bad)
            pytest.fail(f"{bad} accepted")
    with pytest.raises(TypeError):
        ovs.Model([1, 2])


# ------------------------------------------------------------------------------ one-call labels
@pytest.mark.parametrize("method", ["maskclip", "sclip", "clearclip", "naclip", "scclip"])
def test_segment_one_call_equals_logits_then_labels(vit, rn, method, fixtures_dir):
    """segment() computes the label map in one C call (Segmenter.labels: the logits stay inside,
    the label stage's block bounds are taken as they are written); it gives, bit for bit, the
    labels of the two-step path (Segmenter.logits, then seg_labels) on odd sizes, with windows,
    output_size and the background threshold."""
    from ovs import _core
    from ovs.segment import processing_size

    models = (vit, rn) if method == "maskclip" else (vit,)
    if method == "scclip":  # needs >= 11 blocks
        models = (ovs.load(fixtures_dir / "vitb16.safetensors"),)
    for model in models:
        cases = [(dict(short_side=48, window=(32, 19)), (61, 45), 37),
                 (dict(short_side=None, window=None), (33, 17), 5),
                 (dict(short_side=40, window=(24, 24), bg_threshold=0.4, output_size=(70, 30)), (40, 90), 11),
                 (dict(short_side=32, window=(16, 8), bg_threshold=0.9), (32, 32), 151)]
        for kw, shape, C in cases[2:3] if method == "scclip" else cases:
            seg = ovs.Segmenter(model, method=method, **kw)
            names = [f"class {i}" for i in range(C)]
            image = _img(*shape, seed=C)
            labels = seg.segment(image, names)
            cls = seg.classifier(names)
            hp, wp = processing_size(*shape, seg.short_side)
            lr = seg._core_seg().logits(image, hp, wp, model.mean, model.std, cls)
            H, W = seg.output_size or shape
            ref = _core.seg_labels(lr, H, W, logit_scale=seg.logit_scale, bg_threshold=float(seg.bg_threshold or 0),
                                   bg_label=seg._resolve_bg_label(names))
            assert np.array_equal(labels, ref), f"{method} {kw}: {(labels != ref).sum()} labels differ"
            if seg.bg_threshold is None:  # (a duplicate's softmax term counts twice)
                # duplicate classes take the two-step path: same labels, the first of each
                assert np.array_equal(seg.segment(image, names + names[:2]), labels)


def test_segment_one_call_errors(vit):
    from ovs import _core

    seg = ovs.Segmenter(vit, method="maskclip", short_side=None, window=(16, 8))
    image = _img(20, 30)
    cls = seg.classifier(NAMES)
    core = seg._core_seg()
    for bad in (dict(H=0, W=5), dict(H=5, W=70000)):
        with pytest.raises(ValueError, match="output size"):
            core.labels(image, 20, 30, vit.mean, vit.std, cls, **bad)
    with pytest.raises(ValueError, match="classifier"):
        core.labels(image, 20, 30, vit.mean, vit.std, cls[:, :3], 20, 30)
    # non-finite logits are refused with the two-step path's message
    nan_cls = cls.copy()
    nan_cls[1, 0] = np.nan
    labels, bad = core.labels(image, 20, 30, vit.mean, vit.std, nan_cls, 20, 30)
    assert bad == 20 * 30
    # every allocation of the call failing in turn: MemoryError, then it works again
    ref = seg.segment(image, NAMES)
    for n in range(1, 40):
        _core.debug_fail_alloc(n)
        try:
            got = seg.segment(image, NAMES)
        except MemoryError:
            continue
        finally:
            _core.debug_fail_alloc(0)
        assert np.array_equal(got, ref)
    assert np.array_equal(seg.segment(image, NAMES), ref)
    seg.release_workspace()  # the kept logits freed; the next call allocates them again
    assert np.array_equal(seg.segment(image, NAMES), ref)


@pytest.mark.parametrize("method", ["maskclip", "naclip"])
def test_logits_and_predict_one_call_equal_two_steps(vit, rn, method):
    """logits() / predict() resize each class's averaged plane straight into the output
    (Segmenter.logits_at): the same floats as Segmenter.logits at the processing size followed by
    seg_upsample, bit for bit; area_threshold still applies; non-finite logits are refused."""
    from ovs import _core
    from ovs.segment import processing_size

    for model in ((vit, rn) if method == "maskclip" else (vit,)):
        for kw, shape in [(dict(short_side=48, window=(32, 19)), (61, 45)),
                          (dict(short_side=None, window=None, output_size=(50, 20)), (33, 17)),
                          (dict(short_side=40, window=(24, 24), area_threshold=0.2), (40, 90))]:
            seg = ovs.Segmenter(model, method=method, **kw)
            image = _img(*shape, seed=3)
            cls = seg.classifier(NAMES)
            hp, wp = processing_size(*shape, seg.short_side)
            lr = seg._core_seg().logits(image, hp, wp, model.mean, model.std, cls)
            H, W = seg.output_size or shape
            ref = _core.seg_upsample(lr, H, W, logit_scale=1.0, softmax=False)
            assert seg.logits(image, NAMES).tobytes() == ref.tobytes()
            p = _core.seg_upsample(lr, H, W, logit_scale=seg.logit_scale, softmax=True)
            if seg.area_threshold is not None:
                p = ovs.segment.area_filter(p, seg.area_threshold)
            assert seg.predict(image, NAMES).tobytes() == p.tobytes()
    seg = ovs.Segmenter(vit, method=method, short_side=None, window=None)
    cls = seg.classifier(NAMES).copy()
    cls[0, 0] = np.inf
    out, bad = seg._core_seg().logits_at(_img(16, 16), 16, 16, vit.mean, vit.std, cls, 20, 20)
    assert bad > 0
