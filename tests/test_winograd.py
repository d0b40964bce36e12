"""Winograd F(2x2, 3x3) and F(4x4, 3x3) convolution (csrc/ops/winograd.c), taken by
ovs_conv2d_forward for algo="winograd" / "winograd4" and, for large 3x3 stride-1 maps,
algo="auto" (the default; ovs_conv2d_auto_algo chooses among direct, F(2x2) and F(4x4)).
Every test below runs for both tile sizes unless it says otherwise.

What is proved here:
* correctness against torch.nn.functional.conv2d in float64 (an independent exact-enough
  reference) on odd map sizes, 1x1 and 2x2 maps, padding 0/1/2 (also per axis), batches,
  channel counts that fill no micro-tile and chunks of tiles that straddle tile rows, with bias,
  residual (also aliased to the output) and every activation fused;
* the naive twin (ovs_conv2d_forward_naive with algo WINOGRAD: the transforms written as the
  matrix products G g G^T, B^T d B, A^T M A, plain loops) is itself within the same tolerance of
  torch, and the fast path equals it (==) wherever both use the same activation code (none,
  ReLU): the tiling, chunking, packing, the transforms' hand-written forms are exact rewrites;
* bitwise the same at 1 and 2 threads, on every ISA path this CPU has, for dense weights and
  weights conv-packed at load (the models' form), on a map of many chunks;
* AUTO takes F(4x4) for C >= 128 from ~46x46 up and C >= 256 from 28x28, F(2x2) where only
  its rule holds (bitwise the
  forced results) and the direct implicit GEMM on small maps; DIRECT is the direct path
  whatever the map; both ways of cutting the work (chunks of tiles; on maps of at most 128
  tiles, per image and block of output channels) are covered by the cases below;
* bad arguments are clear exceptions (stride 2, dilation, groups, 5x5 forced to Winograd; an
  unknown algo), allocation failures are MemoryErrors that leave no state behind.

Tolerance: max|ours - ref| / max|ref| <= 2e-6 against float64. Each transformed product M is one
float32 fmaf chain over C channels (the direct path's chain is over 9C taps), and the
transforms add at most 4 roundings on each side with coefficients 0, +-1/2, +-1 (exact
products), so the error is of the order of the direct float32 conv's (measured: <= 5e-7 here,
the direct path 3e-7..1e-6 on the same cases); 2e-6 is 20x below the models' parity bar
(conftest.RTOL = 1e-4). The activations GELU / QuickGELU / sigmoid differ between the fast
(ops_expf) and naive (libm) code by a few ulp: compared at 1e-6 there.

F(4x4) (points 0, 1, -1, 1/2, -2): its transforms have coefficients up to 8 and inexact
fractions (1/3, 1/15, ...), and each M element's rounding is amplified by A^T on the way out, so
its error is a few times the direct conv's: measured 0.8e-6..4e-6 here (the direct path
0.3e-6..1.7e-6, F(2x2) 0.2e-6..0.7e-6); bounded by TOL4 = 1e-5 against float64 and against
the direct path, still 10x below the models' parity bar. In a model the error grows with the
depth after the conv: F(4x4) on RN50's C = 32 / 64 convs would take its res5 error at 448^2
past the bar (see ovs_conv2d_auto_algo), so AUTO keeps it to C >= 128; with that, the RN50
tower's res5 error against open_clip goes from 2.6e-5..4.0e-5 to 3.2e-5..3.8e-5 at 224^2
(tests/test_image_towers.py) and, in float64, from 4.8e-5 to 6.9e-5 at 448^2 (tested below).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovs import _core
from conftest import assert_close, inject_alloc_failures
from test_gemm import rand, restore_runtime, rng, simd_isas  # noqa: F401 (fixtures)

TOL = 2e-6
TOL4 = 1e-5
ALGOS = ["winograd", "winograd4"]
TOLS = {"winograd": TOL, "winograd4": TOL4}

# N, C, H, W, K, padding
CASES = [
    (1, 16, 12, 13, 20, 1),       # odd width, K = 20 (no multiple of 6/12)
    (2, 5, 7, 9, 13, 0),          # unpadded, odd sizes, batch 2
    (1, 3, 1, 1, 4, 1),           # 1x1 map (only the centre tap reads input)
    (1, 7, 2, 2, 5, 1),           # 2x2 map: one tile
    (1, 1, 3, 3, 1, 0),           # one channel, one output pixel
    (1, 40, 33, 31, 30, 2),       # padding 2: outputs larger than the input
    (1, 9, 10, 17, 14, (0, 2)),   # per-axis padding
    (2, 24, 19, 45, 26, 1),       # tile rows of 23 tiles: panels straddle rows and images
    (1, 70, 6, 7, 100, 1),        # K over several micro-tiles, C not a multiple of anything
    (1, 300, 14, 15, 40, 1),      # a long chain over C (the decoder's 304): error still ~C-free
]


def make(rng, case):
    N, C, H, W, K, pad = case
    return rand(rng, N, C, H, W), rand(rng, K, C, 3, 3, scale=0.3), rand(rng, K), pad


def torch64(x, w, b, pad, r=None, act="none"):
    pad = pad if isinstance(pad, tuple) else (pad, pad)
    y = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(),
                 None if b is None else torch.from_numpy(b).double(), padding=pad)
    if r is not None:
        y = y + torch.from_numpy(r).double()
    y = {"none": lambda t: t, "relu": torch.relu, "gelu": F.gelu, "sigmoid": torch.sigmoid,
         "quickgelu": lambda t: t * torch.sigmoid(1.702 * t)}[act](y)
    return y.numpy()


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_winograd_vs_torch_and_twin(rng, case, algo):
    x, w, b, pad = make(rng, case)
    tol = TOLS[algo]
    got = _core.op_conv2d(x, w, b, padding=pad, algo=algo)
    twin = _core.op_conv2d(x, w, b, padding=pad, algo=algo, naive=True)
    ref = torch64(x, w, b, pad)
    assert_close(got, ref, tol, name=f"{algo} vs torch float64")
    assert_close(twin, ref, tol, name=f"naive {algo} twin vs torch float64")
    assert np.array_equal(got, twin)
    assert_close(got, _core.op_conv2d(x, w, b, padding=pad, algo="direct"), tol,
                 name=f"{algo} vs the direct conv")
    no_bias = _core.op_conv2d(x, w, None, padding=pad, algo=algo)
    assert_close(no_bias, torch64(x, w, None, pad), tol, name="no bias")
    assert np.array_equal(no_bias, _core.op_conv2d(x, w, None, padding=pad, algo=algo,
                                                   naive=True))


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CASES[:3] + CASES[5:6] + CASES[7:8], ids=str)
@pytest.mark.parametrize("act", ["none", "relu", "gelu", "quickgelu", "sigmoid"])
def test_winograd_fused_bias_residual_act(rng, case, act, algo):
    x, w, b, pad = make(rng, case)
    r = rand(rng, *_core.op_conv2d(x, w, padding=pad, algo="direct").shape)
    ref = torch64(x, w, b, pad, r, act)
    twin = _core.op_conv2d(x, w, b, r, padding=pad, act=act, algo=algo, naive=True)
    for alias in (False, True):
        got = _core.op_conv2d(x, w, b, r, padding=pad, act=act, residual_alias=alias,
                              algo=algo)
        assert_close(got, ref, TOLS[algo], name=f"{act} alias={alias} vs torch float64")
        if act in ("none", "relu"):
            assert np.array_equal(got, twin), f"{act} alias={alias}: fast != naive twin"
        else:
            assert_close(got, twin, 1e-6, name=f"{act} alias={alias} vs naive twin")


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("shape", [(1, 16, 70, 66, 24), (2, 40, 23, 37, 13), (1, 40, 13, 15, 29)], ids=str)
def test_winograd_bitwise_across_threads_isas_and_packing(rng, restore_runtime, shape, algo):
    # F(2x2): 1155 and 456 tiles, F(4x4): 306 and 120: several chunks of tiles, so 2 threads
    # split the work; 13x15 (56 / 16 tiles of one image): the per-image K split, whose threads
    # share the image's input transform
    N, C, H, W, K = shape
    x, w, b = rand(rng, N, C, H, W), rand(rng, K, C, 3, 3, scale=0.2), rand(rng, K)
    r = rand(rng, N, K, H, W)
    _core.gemm_set_isa("portable")
    _core.set_num_threads(1)
    ref = _core.op_conv2d(x, w, b, r, padding=1, act="relu", algo=algo)
    assert_close(ref, torch64(x, w, b, 1, r, "relu"), TOLS[algo], name="many chunks vs torch")
    pk = _core.op_conv2d_pack(w, 1)
    for isa in ["portable"] + simd_isas():
        _core.gemm_set_isa(isa)
        for threads in (1, 2):
            _core.set_num_threads(threads)
            for how in (dict(), dict(prepacked=pk), dict(packed=True, residual_alias=True)):
                got = _core.op_conv2d(x, w, b, r, padding=1, act="relu", algo=algo, **how)
                assert np.array_equal(got, ref), f"isa={isa} threads={threads} {list(how)}"
    # each image alone is bitwise its slice of the batch
    for i in range(N):
        one = _core.op_conv2d(x[i:i + 1], w, b, r[i:i + 1], padding=1, act="relu", algo=algo)
        assert np.array_equal(one, ref[i:i + 1]), f"image {i} alone != in the batch"


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("hw", [(12, 44), (24, 24), (4, 20), (16, 16), (28, 28), (14, 14), (16, 52),
                                (12, 28), (2, 2)], ids=str)
def test_winograd_partial_last_panel_pair(rng, restore_runtime, hw, algo):
    # the last panel pair of a chunk's GEMM covers only its tiles (a 16-wide call for its first
    # panel, the narrow kernel for 1..4 tiles past it, or the full 32-wide call): F(4x4) tiles
    # 33, 36, 5, 16, 49, 16, 52, 21, 1 and F(2x2) 132, 144, 20, 64, 196, 49, 208, 84, 1 leave
    # every kind of tail (1-4, 5-15, 16, 17-20, 21-31, full); K = 20 ends in a short block
    H, W = hw
    x, w, b = rand(rng, 1, 24, H, W), rand(rng, 20, 24, 3, 3, scale=0.2), rand(rng, 20)
    r = rand(rng, 1, 20, H, W)
    twin = _core.op_conv2d(x, w, b, r, padding=1, act="relu", algo=algo, naive=True)
    assert_close(twin, torch64(x, w, b, 1, r, "relu"), TOLS[algo], name="twin vs torch")
    for isa in ["portable"] + simd_isas():
        _core.gemm_set_isa(isa)
        for threads in (1, 2):
            _core.set_num_threads(threads)
            got = _core.op_conv2d(x, w, b, r, padding=1, act="relu", algo=algo)
            assert np.array_equal(got, twin), f"isa={isa} threads={threads}"


def test_auto_takes_winograd_on_large_maps_only(rng):
    # DeepLab's decoder shape class (a 3x3 conv at 96x96) and RN50's 256 channels at 28x28:
    # F(4x4); RN50's layer1 at 448^2 (64 channels at 112x112), 256 channels at 14x14 and 512
    # at 7x7: F(2x2); small maps (512 channels at 5x5, 128 at 10x10, 64 at 14x14): direct
    x, w, b = rand(rng, 1, 128, 96, 96), rand(rng, 128, 128, 3, 3, scale=0.05), rand(rng, 128)
    assert _core.op_conv2d_winograd_wins(1, 128, 96, 96, 128, 3, 3, 1)
    assert not _core.op_conv2d_winograd_wins(1, 128, 10, 10, 128, 3, 3, 1)
    assert not _core.op_conv2d_winograd_wins(1, 128, 96, 96, 128, 3, 5, 1)
    assert _core.op_conv2d_auto_algo(1, 128, 96, 96, 128, 3, 3, 1) == "winograd4"
    assert _core.op_conv2d_auto_algo(1, 256, 28, 28, 256, 3, 3, 1) == "winograd4"
    assert _core.op_conv2d_auto_algo(1, 64, 112, 112, 64, 3, 3, 1) == "winograd"
    assert _core.op_conv2d_auto_algo(1, 256, 14, 14, 256, 3, 3, 1) == "winograd"
    assert _core.op_conv2d_auto_algo(1, 512, 7, 7, 512, 3, 3, 1) == "winograd"
    assert _core.op_conv2d_auto_algo(1, 512, 5, 5, 512, 3, 3, 1) == "direct"
    assert _core.op_conv2d_auto_algo(1, 64, 14, 14, 64, 3, 3, 1) == "direct"
    assert _core.op_conv2d_auto_algo(1, 128, 10, 10, 128, 3, 3, 1) == "direct"
    assert _core.op_conv2d_auto_algo(1, 128, 96, 96, 128, 3, 5, 1) == "direct"
    auto = _core.op_conv2d(x, w, b, padding=1)
    assert np.array_equal(auto, _core.op_conv2d(x, w, b, padding=1, algo="winograd4"))
    direct = _core.op_conv2d(x, w, b, padding=1, algo="direct")
    assert not np.array_equal(auto, direct)   # really two paths
    assert_close(auto, direct, TOL4, name="auto vs direct")
    x2, w2 = rand(rng, 1, 64, 112, 112), rand(rng, 64, 64, 3, 3, scale=0.05)
    auto2 = _core.op_conv2d(x2, w2, padding=1)
    assert np.array_equal(auto2, _core.op_conv2d(x2, w2, padding=1, algo="winograd"))
    assert not np.array_equal(auto2, _core.op_conv2d(x2, w2, padding=1, algo="winograd4"))
    xs = np.ascontiguousarray(x[:, :, :10, :10])
    assert np.array_equal(_core.op_conv2d(xs, w, b, padding=1),
                          _core.op_conv2d(xs, w, b, padding=1, algo="direct"))
    # and convs Winograd does not cover stay direct under AUTO
    assert np.array_equal(_core.op_conv2d(x, w, b, padding=1, stride=2),
                          _core.op_conv2d(x, w, b, padding=1, stride=2, algo="direct"))


def test_auto_is_batch_invariant(rng):
    # the choice depends on one image's size: an image's result is the same alone or in a batch
    # (tests/test_preprocess.py compares batch-of-6 and single-image features)
    x, w, b = rand(rng, 3, 128, 60, 58), rand(rng, 128, 128, 3, 3, scale=0.05), rand(rng, 128)
    # chunks of tiles at 60x58, the per-image K split at 30x30 (256 channels), direct at 10x10
    x2, w2 = rand(rng, 3, 256, 30, 30), rand(rng, 128, 256, 3, 3, scale=0.03)
    assert _core.op_conv2d_auto_algo(1, 128, 60, 58, 128, 3, 3, 1) == "winograd4"
    assert _core.op_conv2d_auto_algo(3, 256, 30, 30, 128, 3, 3, 1) == "winograd4"
    assert _core.op_conv2d_auto_algo(100, 128, 10, 10, 128, 3, 3, 1) == "direct"
    for xs, ws in ((x, w), (x2, w2), (np.ascontiguousarray(x[:, :, :10, :10]), w)):
        batch = _core.op_conv2d(xs, ws, b, padding=1)
        for i in range(len(xs)):
            assert np.array_equal(_core.op_conv2d(xs[i:i + 1], ws, b, padding=1), batch[i:i + 1])


def test_winograd_bad_inputs(rng):
    x, w = rand(rng, 1, 4, 9, 9), rand(rng, 6, 4, 3, 3)
    with pytest.raises(ValueError,
                       match="algo must be 'auto', 'direct', 'winograd' or 'winograd4'"):
        _core.op_conv2d(x, w, algo="fft")
    for naive, algo in ((False, "winograd"), (True, "winograd"), (False, "winograd4"),
                        (True, "winograd4")):
        with pytest.raises(NotImplementedError, match="Winograd covers 3x3 convs of stride 1"):
            _core.op_conv2d(x, w, stride=2, algo=algo, naive=naive)
        with pytest.raises(NotImplementedError, match="dilation 2x2"):
            _core.op_conv2d(x, w, dilation=2, padding=2, algo=algo, naive=naive)
        with pytest.raises(NotImplementedError, match="groups 2"):
            _core.op_conv2d(x, rand(rng, 6, 2, 3, 3), groups=2, algo=algo, naive=naive)
        with pytest.raises(NotImplementedError, match="this one is 5x5"):
            _core.op_conv2d(x, rand(rng, 6, 4, 5, 5), algo=algo, naive=naive)
    # the checks every conv makes come first
    with pytest.raises(ValueError, match="does not fit"):
        _core.op_conv2d(rand(rng, 1, 4, 2, 2), w, algo="winograd4")
    # empty work is a no-op
    for algo in ALGOS:
        assert _core.op_conv2d(rand(rng, 0, 4, 9, 9), w, padding=1, algo=algo).shape == \
            (0, 6, 9, 9)


@pytest.mark.parametrize("algo", ALGOS)
def test_winograd_allocation_failure(rng, restore_runtime, algo):
    x, w, b = rand(rng, 1, 16, 40, 30), rand(rng, 20, 16, 3, 3, scale=0.2), rand(rng, 20)
    _core.set_num_threads(2)
    inject_alloc_failures(lambda: _core.op_conv2d(x, w, b, padding=1, algo=algo),
                          f"{algo} conv")
    # the first allocation: the transforms' workspace (no binding scratch; the calling thread's
    # kept workspace released, so the call must allocate it)
    _core.gemm_release_workspace()
    _core.debug_fail_alloc(1)
    try:
        with pytest.raises(MemoryError, match="out of memory for the Winograd transforms"):
            _core.op_conv2d(x, w, b, padding=1, algo=algo, scratch=False)
    finally:
        _core.debug_fail_alloc(0)


def test_deeplab_full_width_on_winograd_matches_pytorch(tmp_path):
    """Model parity with AUTO taking Winograd: DeepLabV3-OVS at RN50 widths (stem 32/64,
    decoder 304 -> 256 -> 256, the convs of issue 11) on a 256x256 input, where the stem's
    stride-1 3x3 convs (128x128) run on the direct conv / F(2x2) and the decoder's (64x64) on
    F(4x4), against the PyTorch
    reference (tests/reference/deeplab_reference.py) on identical random weights, converted
    from its detectron2 checkpoint: the parity bar of the framework tests (conftest.RTOL)."""
    from conftest import FrameworkCase
    import ovs

    fw = FrameworkCase("deeplab_reference", "deeplab")
    R = fw.R
    # real trunk / ASPP / decoder widths, a small text tower (not on this path)
    ref = R.randomize(R.DeepLabOVS(width=64, aspp_planes=256, embed_dim=64, text_width=128,
                                   text_layers=1, text_heads=2), 0)
    model = ovs.load(fw.convert(ref, tmp_path, "deeplab_wide"))
    assert _core.op_conv2d_auto_algo(1, 304, 64, 64, 256, 3, 3, 1) == "winograd4"   # decoder's
    x = np.random.default_rng(5).standard_normal((1, 3, 256, 256)).astype(np.float32)
    with torch.no_grad():
        emb, (h, w) = ref.pixel_embeddings(torch.from_numpy(x))
    ours = model.embed(x)
    assert ours.shape == (1, 64, h, w)
    assert_close(ours[0].reshape(64, -1).T, emb[0].numpy(), name="pixel embeddings")


def test_rn50_448_on_auto_winograd_matches_open_clip(load_model, fixtures_dir):
    """The error budget AUTO's F(4x4) choice is drawn against: the CLIP RN50 tower at 448^2 (no
    fixture at that size), where the most F(4x4) layers run (layer2 to layer4.0: 128 channels
    at 112x112 down to 512 at 28x28), against open_clip's ModifiedResNet on the same weights in
    float64: every stage within the models' parity bar (conftest.RTOL; measured res5 6.9e-5,
    4.8e-5 with the direct path and F(2x2) only)."""
    import open_clip
    from safetensors.torch import load_file

    assert _core.op_conv2d_auto_algo(1, 256, 28, 28, 256, 3, 3, 1) == "winograd4"
    ref = open_clip.create_model("RN50-quickgelu", pretrained=None)
    ref.load_state_dict(load_file(str(fixtures_dir / "rn50.safetensors")))
    visual = ref.visual.double().eval()
    x = np.random.default_rng(7).standard_normal((1, 3, 448, 448)).astype(np.float32)
    ours = load_model("rn50").visual.forward(x, features=True, embed=False)
    with torch.no_grad():
        h = visual.stem(torch.from_numpy(x).double())
        for i in range(1, 5):
            h = getattr(visual, f"layer{i}")(h)
            assert_close(ours[f"res{i + 1}"], h.numpy(), name=f"RN50 448^2 res{i + 1}")
