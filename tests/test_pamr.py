"""PAMR (pixel-adaptive mask refinement) against the original pamr.py, and Segmenter(pamr=...).

The reference is the NACLIP/SCLIP PAMR module re-typed in tests/reference/pamr_reference.py
(PyTorch). Tolerance policy: max |ours - ref| / max |ref| <= 1e-4 (float32 kernels against
float32 torch; the naive float64 twin against float64 torch); end to end, Segmenter(pamr=True)
against the reference pipeline (seg_reference.py's float64 logits, then torch PAMR with the
image NACLIP feeds it): logits within 1e-4 relative, labels equal on >= 99.9% of the pixels
whose reference top-2 gap exceeds twice the allowed logit error.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ovs
from ovs import _core

from conftest import load_reference

HERE = Path(__file__).resolve().parent
REL_TOL = 1e-4


R = load_reference("pamr_reference")


@pytest.fixture(autouse=True, scope="module")
def _torch_one_thread():
    """Small tensors: torch's thread pool only adds contention on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rel_err(got, want) -> float:
    want = np.asarray(want, np.float64)
    return float(np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-30))


def random_case(C, K, H, W, seed):
    rng = np.random.default_rng(seed)
    mask = rng.standard_normal((C, H, W)).astype(np.float32)
    image = rng.standard_normal((K, H, W)).astype(np.float32)
    return mask, image


# (C, K, H, W): odd sizes, sides smaller than the dilations (8, 16), single rows/columns/pixels
SHAPES = [(3, 3, 37, 53), (2, 3, 5, 7), (4, 3, 1, 9), (5, 3, 20, 1), (2, 3, 1, 1),
          (3, 1, 12, 17), (7, 3, 64, 45)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("steps", [1, 10])
def test_matches_pytorch_reference(shape, steps):
    mask, image = random_case(*shape, seed=sum(shape) + steps)
    ref = R.pamr(mask, image, steps, (8, 16))
    got = _core.op_pamr(mask, image, steps, (8, 16))
    assert got.shape == mask.shape and got.dtype == np.float32
    assert rel_err(got, ref) <= REL_TOL, rel_err(got, ref)
    ref64 = R.pamr(mask, image, steps, (8, 16), dtype=torch.float64)
    naive = _core.op_pamr(mask, image, steps, (8, 16), naive=True)
    assert rel_err(naive, ref64) <= 1e-6, rel_err(naive, ref64)


@pytest.mark.parametrize("dilations", [(1,), (2, 3, 5), (16, 8), (40,)])
def test_other_dilations_match_reference(dilations):
    mask, image = random_case(4, 3, 29, 31, seed=len(dilations))
    ref = R.pamr(mask, image, 3, dilations)
    got = _core.op_pamr(mask, image, 3, dilations)
    assert rel_err(got, ref) <= REL_TOL, rel_err(got, ref)


def test_fast_matches_naive_on_edge_inputs():
    rng = np.random.default_rng(5)
    H, W = 33, 41
    mask = rng.standard_normal((3, H, W)).astype(np.float32)
    cases = {
        "constant image (std 0)": np.full((3, H, W), 0.25, np.float32),
        "binary image": (rng.random((3, H, W)) > 0.5).astype(np.float32),
        "one bright pixel": np.pad(np.ones((3, 1, 1), np.float32), ((0, 0), (16, H - 17), (20, W - 21))),
        "huge values": rng.standard_normal((3, H, W)).astype(np.float32) * 1e6,
    }
    for what, image in cases.items():
        fast = _core.op_pamr(mask, image, 10)
        naive = _core.op_pamr(mask, image, 10, naive=True)
        ref = R.pamr(mask, image, 10, (8, 16), dtype=torch.float64)
        assert rel_err(fast, naive) <= 1e-5, (what, rel_err(fast, naive))
        assert rel_err(naive, ref) <= 1e-6, (what, rel_err(naive, ref))
    # a constant image gives uniform affinities: 10 steps of a 16-neighbour box average
    const = _core.op_pamr(mask, cases["constant image (std 0)"], 1)
    assert np.isfinite(const).all()


def test_zero_steps_copies_and_layouts():
    mask, image = random_case(3, 3, 10, 12, seed=1)
    np.testing.assert_array_equal(_core.op_pamr(mask, image, 0), mask)
    # Fortran-order and float64 inputs are converted, not misread
    got = _core.op_pamr(np.asfortranarray(mask), image.astype(np.float64), 4)
    np.testing.assert_array_equal(got, _core.op_pamr(mask, image, 4))


def test_independent_of_thread_count():
    mask, image = random_case(5, 3, 70, 90, seed=3)
    n = ovs.get_num_threads()
    try:
        ovs.set_num_threads(1)
        one = _core.op_pamr(mask, image, 10)
        lone = _core.seg_labels_pamr(mask[:, ::3, ::3].copy(), image, 10, logit_scale=40.0,
                                     bg_threshold=0.5)
        ovs.set_num_threads(2)
        two = _core.op_pamr(mask, image, 10)
        ltwo = _core.seg_labels_pamr(mask[:, ::3, ::3].copy(), image, 10, logit_scale=40.0,
                                     bg_threshold=0.5)
    finally:
        ovs.set_num_threads(n)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(lone, ltwo)


@pytest.mark.parametrize("size", [(24, 30), (50, 61)])
@pytest.mark.parametrize("bg", [0.0, 0.4])
def test_fused_labels_match_refine_then_label(size, bg):
    """seg_labels_pamr (class blocks folded into a running argmax) == upsample, op_pamr, then
    the plain label stage."""
    rng = np.random.default_rng(size[0])
    lr = (0.3 * rng.standard_normal((6, 13, 17))).astype(np.float32)
    H, W = size
    guide = rng.standard_normal((3, H, W)).astype(np.float32)
    fused = _core.seg_labels_pamr(lr, guide, 10, (8, 16), logit_scale=10.0, bg_threshold=bg,
                                  bg_label=0)
    refined = _core.op_pamr(_core.seg_upsample(lr, H, W, logit_scale=1.0, softmax=False), guide, 10)
    plain = _core.seg_labels_naive(refined, H, W, logit_scale=10.0, bg_threshold=bg, bg_label=0)
    assert (fused == plain).mean() >= 0.999
    if bg:
        assert 0 < (plain == 0).mean() < 1  # the threshold is exercised


# ---------------------------------------------------------------- argument errors
def test_op_errors():
    mask, image = random_case(2, 3, 8, 9, seed=0)
    with pytest.raises(ValueError, match="steps must be >= 0, got -1"):
        _core.op_pamr(mask, image, -1)
    with pytest.raises(ValueError, match="dilations must be >= 1, got 0"):
        _core.op_pamr(mask, image, 2, (8, 0))
    with pytest.raises(ValueError, match=r"dilations must hold 1..16 ints, got \(\)"):
        _core.op_pamr(mask, image, 2, ())
    with pytest.raises(TypeError, match=r"dilations must be ints, got \(8, 1.5\)"):
        _core.op_pamr(mask, image, 2, (8, 1.5))
    with pytest.raises(ValueError, match="mask's size 8x9, got 8x10"):
        _core.op_pamr(mask, np.zeros((3, 8, 10), np.float32), 2)
    with pytest.raises(ValueError, match="mask .C, H, W. must have 3 dimensions, got 2"):
        _core.op_pamr(mask[0], image, 2)
    with pytest.raises(ValueError, match="steps must be >= 0, got -3"):
        _core.seg_labels_pamr(mask, image, -3)


def test_c_layer_argument_checks():
    """The C entry points validate their own arguments (the bindings pre-empt most of this)."""
    msgs = {c[0]: (c[2], c[3]) for c in _core.op_debug_invalid_calls() if c[0].startswith("pamr")}
    assert {k: v[0] for k, v in msgs.items()} == dict.fromkeys(msgs, "bad argument") and len(msgs) == 9
    assert "steps must be >= 0, got -1" in msgs["pamr steps<0"][1]
    assert "dilations must be >= 1, got 0" in msgs["pamr dilation 0"][1]
    assert "need 1..16 dilations, got 0" in msgs["pamr no dilations"][1]
    assert msgs["pamr_naive C<0"][1].startswith("ovs_pamr_forward_naive: C must be >= 0")


@pytest.fixture(scope="module")
def vit(fixtures_dir):
    return ovs.load(fixtures_dir / "vit_tiny.safetensors", act="gelu")


@pytest.mark.parametrize("bad", [-1, 1.5, "10", 10.0, [10], np.float32(3)])
def test_segmenter_rejects_bad_pamr(vit, bad):
    with pytest.raises(ValueError, match=r"pamr must be .*got " + re.escape(repr(bad))):
        ovs.Segmenter(vit, "naclip", pamr=bad)


@pytest.mark.parametrize("value, steps", [(True, 10), (False, 0), (None, 0), (0, 0), (3, 3),
                                          (np.int64(7), 7), (np.True_, 10)])
def test_segmenter_pamr_values(vit, value, steps):
    seg = ovs.Segmenter(vit, "naclip", pamr=value)
    assert seg.pamr == steps
    assert f"pamr={steps})" in repr(seg)


def test_segmenter_pamr_consistency(vit):
    """segment() == argmax of logits() == argmax of predict() with PAMR on; PAMR changes them."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
    names = ["cat", "dog", "grass", "sky"]
    seg = ovs.Segmenter(vit, "naclip", short_side=32, window=None, pamr=True)
    plain = ovs.Segmenter(vit, "naclip", short_side=32, window=None)
    lg = seg.logits(image, names)
    assert lg.shape == (4, 45, 61)
    assert rel_err(lg, plain.logits(image, names)) > 1e-3  # refinement did something
    labels = seg.segment(image, names)
    assert (labels == lg.argmax(0)).mean() >= 0.999
    pr = seg.predict(image, names)
    np.testing.assert_allclose(pr.sum(0), 1, rtol=1e-5)
    assert (pr.argmax(0) == lg.argmax(0)).mean() >= 0.999
    # the refinement uses the image at the output size
    small = ovs.Segmenter(vit, "naclip", short_side=32, window=None, pamr=2,
                          output_size=(20, 30))
    assert small.segment(image, names).shape == (20, 30)


# ---------------------------------------------------------------- end to end vs the reference
SEG = load_reference("seg_reference")
# a resized ViT case (the guide is resized back to the input size) and two at the input size
E2E_CASES = ["naclip_odd_whole", "clearclip_small", "maskclip_rn50_small"]


@pytest.fixture(scope="module")
def seg_dir():
    return SEG.ensure_seg_fixtures(HERE / "_generated")


def reference_pamr_pipeline(fx) -> np.ndarray:
    """NACLIP's order on the reference logits: seg_logits at the input size, the normalised
    processing-size image bilinearly resized back to it, PAMR(10, (8, 16)) in float64."""
    image = fx["image"]
    h0, w0 = image.shape[:2]
    x = SEG.preprocess(image, fx["short_side"], torch.float64)
    if tuple(x.shape[-2:]) != (h0, w0):
        x = F.interpolate(x, size=(h0, w0), mode="bilinear", align_corners=False)
    mask = torch.from_numpy(fx["logits"]).to(torch.float64)[None]
    with torch.no_grad():
        return R.PAMR(10, (8, 16))(x, mask)[0].numpy()


@pytest.mark.parametrize("name", E2E_CASES)
def test_segmenter_pamr_matches_reference_pipeline(seg_dir, name):
    with np.load(seg_dir / f"seg_{name}.npz") as z:
        fx = {k: z[k] for k in z.files}
    short_side = int(fx["short_side"]) or None
    window = tuple(int(v) for v in fx["window"])
    model = ovs.load(str(seg_dir / f"seg_{str(fx['model'])}.safetensors"))
    seg = ovs.Segmenter(model, method=str(fx["method"]), short_side=short_side,
                        window=None if window == (0, 0) else window,
                        logit_scale=float(fx["logit_scale"]), templates=str(fx["templates"]),
                        pamr=True)
    names = [str(s) for s in fx["class_names"]]
    ref = reference_pamr_pipeline(fx)
    got = seg.logits(fx["image"], names)
    assert rel_err(got, ref) <= REL_TOL, rel_err(got, ref)
    assert rel_err(got, fx["logits"]) > 1e-3  # PAMR changed the logits
    labels = seg.segment(fx["image"], names)
    top2 = np.sort(ref, axis=0)[-2:]
    ok = (top2[1] - top2[0]) > 2 * REL_TOL * np.abs(ref).max()
    agree = (labels == ref.argmax(0))[ok].mean()
    assert ok.mean() > 0.9 and agree >= 0.999, (ok.mean(), agree)
    if name == "naclip_odd_whole":  # predict is the softmax of logits(): checked on the small cases
        return
    probs = seg.predict(fx["image"], names)
    want = torch.softmax(float(fx["logit_scale"]) * torch.from_numpy(ref), 0).numpy()
    assert rel_err(probs, want) <= REL_TOL * float(fx["logit_scale"]), rel_err(probs, want)


# ---------------------------------------------------------------- CLI
def _cli(*args):
    import os
    import subprocess

    env = dict(os.environ)
    env["PYTHONPATH"] = str(HERE.parent) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("OVS_MODEL", None)
    return subprocess.run([sys.executable, "-m", "ovs", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)


def test_cli_pamr(fixtures_dir, vit, tmp_path):
    from PIL import Image

    rgb = np.random.default_rng(6).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "img.png")
    names = ["cat", "grass", "sky"]
    common = ["segment", tmp_path / "img.png", "--classes", ",".join(names), "--model",
              fixtures_dir / "vit_tiny.safetensors", "--act", "gelu", "--threads", "1",
              "--short-side", "24", "--window", "whole", "--method", "naclip"]
    for flag, steps in ((["--pamr"], 10), (["--pamr", "3"], 3)):
        out = tmp_path / f"m{steps}.png"
        proc = _cli(*common, "--out", out, *flag)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert f"pamr={steps})" in proc.stderr, proc.stderr
        api = ovs.Segmenter(vit, "naclip", short_side=24, window=None,
                            pamr=steps).segment(rgb, names)
        with Image.open(out) as im:
            assert np.array_equal(np.asarray(im), api), "CLI labels differ from the API's"
    proc = _cli(*common, "--out", tmp_path / "bad.png", "--pamr", "-1")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "pamr must be" in proc.stderr and "-1" in proc.stderr, proc.stderr
    assert not (tmp_path / "bad.png").exists()


# ---------------------------------------------------------------- memory
MEMORY_CODE = r"""
import json, resource, sys
import numpy as np
from ovs import _core
C, Hh, Ww = 150, 768, 1024
rng = np.random.default_rng(0)
lowres = (0.1 * rng.standard_normal((C, 168, 224))).astype(np.float32)
guide = rng.standard_normal((3, Hh, Ww)).astype(np.float32)
try:  # reset the high-water mark; without it ru_maxrss is the lifetime peak (inputs included)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
labels = _core.seg_labels_pamr(lowres, guide, 1, (8, 16), logit_scale=40.0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"delta": (peak - base) * 1024, "shape": list(labels.shape)}))
"""


def test_label_stage_memory_is_bounded():
    """segment(pamr=...)'s label stage at 1024 x 768 with 150 classes stays within the bound
    documented in include/ovs/methods.h (affinity + two class blocks + 12 bytes a pixel), far
    below pamr.py's (C, 16, H, W) neighbour tensor (7.5 GB) and below (C, H, W) (472 MB).
    Peak RSS delta of the call in a fresh process (the steps do not change the memory)."""
    import json
    import os
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    proc = subprocess.run([sys.executable, "-c", MEMORY_CODE], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    C, HW = 150, 768 * 1024
    block = min(C, max(1, (1 << 25) // HW))
    bound = 4 * HW * (16 + 2 * block) + 12 * HW + (32 << 20)  # + 32 MB for the allocator, labels
    assert res["shape"] == [768, 1024]
    assert res["delta"] <= bound, (res["delta"] / 2**20, bound / 2**20)
    assert res["delta"] < 4 * C * HW, res["delta"] / 2**20


@pytest.mark.parametrize("what", ["op_pamr", "op_pamr naive", "seg_labels_pamr"])
def test_allocation_failures_raise_memoryerror(what):
    """Fail each C allocation in turn (_core.debug_fail_alloc): a MemoryError every time, and
    the next call gives the same result again."""
    mask, image = random_case(3, 3, 20, 24, seed=9)
    calls = {
        "op_pamr": lambda: _core.op_pamr(mask, image, 3),
        "op_pamr naive": lambda: _core.op_pamr(mask, image, 3, naive=True),
        "seg_labels_pamr": lambda: _core.seg_labels_pamr(mask[:, ::2, ::2].copy(), image, 3,
                                                         logit_scale=5.0, bg_threshold=0.5),
    }
    call = calls[what]
    try:
        _core.debug_fail_alloc(0)
        ref = call()
        n = _core.debug_fail_alloc(0)
        assert n >= 1
        for i in range(1, n + 1):
            _core.debug_fail_alloc(i)
            with pytest.raises(MemoryError):
                call()
            _core.debug_fail_alloc(0)
        np.testing.assert_array_equal(call(), ref)
    finally:
        _core.debug_fail_alloc(0)
