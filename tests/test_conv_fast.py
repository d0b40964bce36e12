"""The implicit-GEMM convolution (csrc/ops/conv.c, conv_implicit): every conv runs on the
packed-GEMM micro-kernels (ops/gemm.h, gather form) over the zero-padded input split into its
stride phases, no im2col; taps that only read padding are skipped. Every call here forces it
(algo="direct"); the Winograd path that AUTO takes on large 3x3 maps is tests/test_winograd.py's.

What is proved here:
* correctness against torch.nn.functional.conv2d and against the naive twin (float64
  accumulation), over the shapes the path takes: padding, dilation, strides (the stride phases:
  RN50's and DeepLab's stride-2 3x3 and 1x1 convs, a 7x7 stem, ViT's 16x16 patch conv, mixed
  per-axis strides), large dilations on small maps (ASPP: taps and whole pixels that read only
  padding, per-row blocks), rectangular kernels, groups,
  1x1 unpadded (the input planes read directly), rows narrower than a 16-wide block, a partial
  last block, output channels not a multiple of any micro-tile height, long tap chains cut into
  slices (each resumed from the stored partial sums), fused bias / residual
  (also aliased to the output) / activations;
* exactness by construction: without bias and activation every output is bitwise the fmaf chain
  over the taps l = (c, r, s) in increasing order, i.e. the packed GEMM's naive twin
  (_core.op_gemm_packed_naive) applied to an im2col matrix built here with numpy;
* the result is bitwise the same at 1 and 2 threads and on every ISA path (portable C, AVX2+FMA,
  AVX-512) this CPU has;
* weights packed once (ovs_conv2d_pack / _inplace, the models' form): the layout against one
  built with numpy, the same whatever ISA packs it, unpacked back exactly, and a conv on it
  bitwise the dense weight's on every ISA and thread count (packed under one ISA, run under
  each); its allocation failures are MemoryErrors;
* the path is really taken (an allocation failure inside it surfaces as MemoryError) and its
  allocation failures leave no partial state (the next call is bitwise the same).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovs import _core
from conftest import assert_close, inject_alloc_failures
from test_gemm import rand, restore_runtime, rng, simd_isas  # noqa: F401 (fixtures)


def conv(*args, **kwargs):
    """The direct implicit GEMM whatever the shape (AUTO may take Winograd on large 3x3 maps,
    tests/test_winograd.py)."""
    return _core.op_conv2d(*args, algo="direct", **kwargs)

# N, C, H, W, K, R, S, padding, dilation, groups[, stride]
CASES = [
    (1, 8, 12, 13, 20, 3, 3, 1, 1, 1),      # 3x3 pad 1, K = 20 (not a multiple of 6/12/16)
    (2, 6, 9, 7, 13, 3, 3, 1, 1, 1),        # rows narrower than a block, batch 2
    (1, 5, 11, 17, 7, 3, 3, 2, 2, 1),       # dilation 2
    (1, 12, 10, 10, 25, 1, 1, 0, 1, 1),     # 1x1 unpadded: the input planes directly
    (1, 4, 6, 40, 9, 1, 3, (0, 1), 1, 1),   # rectangular kernel, wide rows
    (1, 8, 8, 9, 12, 3, 3, 1, 1, 2),        # groups
    (1, 3, 12, 20, 4, 5, 5, 2, 1, 1),       # 5x5
    (1, 16, 1, 7, 30, 3, 3, 1, 1, 1),       # fewer positions than one block
    (1, 128, 6, 9, 20, 3, 3, 1, 1, 1),      # L = 1152 > 2 x 512: the chain cut into tap slices
    (1, 1100, 5, 6, 14, 1, 1, 0, 1, 1),     # 1x1 with L = 1100 sliced, tail block
    # strides: the stride phases
    (1, 3, 33, 30, 32, 3, 3, 1, 1, 1, 2),   # CLIP RN50 stem conv1, odd height
    (2, 8, 14, 15, 20, 3, 3, 1, 1, 1, 2),   # DeepLab's strided 3x3 (layer2..4 first block)
    (1, 16, 14, 13, 24, 1, 1, 0, 1, 1, 2),  # DeepLab's strided 1x1 shortcut: one phase used
    (1, 3, 37, 41, 10, 7, 7, 3, 1, 1, 2),   # 7x7 stride-2 stem
    (1, 3, 48, 32, 20, 16, 16, 0, 1, 1, 16),  # ViT-B/16 patch embedding
    (1, 6, 13, 12, 9, 3, 3, 2, 2, 1, 2),    # stride 2 and dilation 2
    (1, 5, 15, 16, 7, 3, 5, (1, 2), (1, 3), 1, (2, 1)),  # per-axis stride/pad/dilation
    (1, 8, 12, 11, 12, 3, 3, 1, 1, 2, 2),   # groups and stride
    (1, 128, 11, 9, 14, 3, 3, 1, 1, 1, 2),  # L = 1152 sliced, strided
    (1, 9, 10, 10, 6, 3, 3, 1, 1, 1, 3),    # stride 3 (phases of unequal extents)
    # dilations: DeepLab OS16/OS8 layer4, ASPP rates on small maps
    (1, 16, 12, 12, 18, 3, 3, 2, 2, 1),     # OS16 layer4 (dilation 2)
    (1, 16, 12, 13, 18, 3, 3, 4, 4, 1),     # OS8 layer4 (dilation 4)
    (1, 24, 9, 11, 20, 3, 3, 6, 6, 1),      # ASPP rate 6 on 9x11: per-row blocks, skipped taps
    (1, 24, 9, 11, 20, 3, 3, 12, 12, 1),    # rate 12 > map: only the centre tap reads input
    (2, 20, 32, 32, 13, 3, 3, 18, 18, 1),   # rate 18 on 32x32 (DeepLab at 512^2), batch 2
    (1, 40, 40, 27, 30, 3, 3, 18, 18, 1),   # rate 18 on 40x27 (short side 640), odd width
    (1, 1100, 6, 7, 14, 3, 3, 6, 6, 1),     # skipped taps in a sliced chain (L = 9900)
    (1, 7, 6, 5, 11, 1, 1, 1, 1, 1),        # 1x1 padded: border pixels read only padding
    (1, 4, 5, 70, 9, 3, 3, (1, 30), (1, 20), 1),  # wide padding and dilation along one axis
    # the narrow kernel (the few positions left at the end of a small map, up to 4 row groups)
    (1, 20, 7, 7, 100, 1, 1, 0, 1, 1),      # 1x1 on 7x7: 32 + 16 + 1 position, 9 micro-tiles
    (1, 1100, 7, 7, 30, 1, 1, 0, 1, 1),     # the same sliced (L = 1100), through the tail copy
    (1, 40, 14, 14, 50, 1, 1, 0, 1, 1),     # 14x14: 6 x 32 + 4 positions
    (1, 6, 2, 3, 20, 3, 3, 30, 30, 1),      # per-row blocks of 3 positions, wide padding
    # compact columns: small padded maps with K >= 64 run as a 1x1 conv over their im2col
    (1, 24, 7, 7, 72, 3, 3, 1, 1, 1),       # RN50 224's layer4 3x3 class: 49 columns, not 64
    (2, 10, 5, 6, 64, 3, 3, 2, 2, 1),       # dilation 2, batch 2 (one image's columns at a time)
    (1, 8, 4, 4, 80, 5, 5, 2, 1, 1),        # 5x5 on 4x4
]
COMPACT = CASES[-3:]


def pair(v):
    return v if isinstance(v, tuple) else (v, v)


def make(rng, case):
    N, C, H, W, K, R, S, pad, dil, groups = case[:10]
    stride = case[10] if len(case) > 10 else 1
    x = rand(rng, N, C, H, W)
    w = rand(rng, K, C // groups, R, S, scale=0.3)
    return x, w, rand(rng, K), dict(stride=stride, padding=pad, dilation=dil, groups=groups)


def im2col_gemm_naive(x, w, stride, pad, dil):
    """out (K, P*Q) of image 0, group 1: the packed GEMM's naive fmaf chain over an im2col
    matrix built with numpy, taps (c, r, s) in increasing order."""
    _, C, H, W = x.shape
    K, _, R, S = w.shape
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(pad), pair(dil)
    xp = np.pad(x[0], ((0, 0), (ph, ph), (pw, pw)))
    P = (H + 2 * ph - dh * (R - 1) - 1) // sh + 1
    Q = (W + 2 * pw - dw * (S - 1) - 1) // sw + 1
    cols = np.stack([xp[c, r * dh:r * dh + (P - 1) * sh + 1:sh,
                        s * dw:s * dw + (Q - 1) * sw + 1:sw].reshape(-1)
                     for c in range(C) for r in range(R) for s in range(S)], axis=1)  # (PQ, L)
    packed = _core.op_matrix_pack(np.ascontiguousarray(w.reshape(K, -1)))
    out = _core.op_gemm_packed_naive(np.ascontiguousarray(cols), packed, K)   # (PQ, K)
    return np.ascontiguousarray(out.T).reshape(1, K, P, Q)


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_implicit_conv_vs_torch_and_naive(rng, case):
    x, w, b, kw = make(rng, case)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), **kw)
    got = conv(x, w, b, **kw)
    assert_close(got, ref, name="conv vs torch")
    assert_close(got, conv(x, w, b, naive=True, **kw), name="conv vs naive")
    r = rand(rng, *ref.shape)
    for act in ("relu", "gelu", "quickgelu"):
        for alias in (False, True):
            got = conv(x, w, b, r, act=act, residual_alias=alias, **kw)
            want = conv(x, w, b, r, act=act, naive=True, **kw)
            assert_close(got, want, name=f"conv {act} residual alias={alias}")


@pytest.mark.parametrize("case", [c for c in CASES if c[9] == 1], ids=str)
def test_implicit_conv_is_the_fmaf_chain(rng, case):
    x, w, _, kw = make(rng, case)
    got = conv(x[:1], w, None, stride=kw["stride"], padding=kw["padding"],
                          dilation=kw["dilation"])
    want = im2col_gemm_naive(x[:1], w, kw["stride"], kw["padding"], kw["dilation"])
    assert np.array_equal(got, want)


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_implicit_conv_bitwise_across_threads_and_isas(rng, restore_runtime, case):
    # also the weight packed once (ovs_conv2d_pack, as the models at load; packed under one ISA,
    # run under each) and packed just before the call: bitwise the dense weight's result
    x, w, b, kw = make(rng, case)
    r = rand(rng, *conv(x, w, b, **kw).shape)
    _core.gemm_set_isa("portable")
    _core.set_num_threads(1)
    ref = conv(x, w, b, r, act="relu", **kw)
    pk = _core.op_conv2d_pack(w, kw["groups"])
    for isa in ["portable"] + simd_isas():
        _core.gemm_set_isa(isa)
        for threads in (1, 2):
            _core.set_num_threads(threads)
            for how in (dict(), dict(prepacked=pk), dict(packed=True),
                        dict(packed=True, residual_alias=True), dict(scratch=False)):
                got = conv(x, w, b, r, act="relu", **how, **kw)
                assert np.array_equal(got, ref), f"isa={isa} threads={threads} {list(how)}"


@pytest.mark.parametrize("act", ["none", "relu", "gelu", "quickgelu"])
@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[5], CASES[9]], ids=str)
def test_conv_epilogue_bitwise_across_isas(rng, restore_runtime, case, act):
    # the SIMD epilogues (ops/gemm.h store: bias, residual, activation; masked row tails) equal
    # the portable one bit for bit, with and without bias and residual, with NaN, infinities
    # and signed zeros in the residual; and stay within rounding of torch
    x, w, b, kw = make(rng, case)
    w[1] = 0.0                                   # an output channel whose chains are exactly 0
    r = rand(rng, *conv(x, w, b, **kw).shape)
    r.reshape(-1)[::7] = -0.0
    r.reshape(-1)[3::11] = np.nan
    r.reshape(-1)[5::13] = np.inf
    r.reshape(-1)[6::17] = -np.inf
    _core.gemm_set_isa("portable")
    want = {(bb is None, rr is None): conv(x, w, bb, rr, act=act, **kw)
            for bb in (b, None) for rr in (r, None)}
    for isa in simd_isas():
        _core.gemm_set_isa(isa)
        for bb in (b, None):
            for rr in (r, None):
                got = conv(x, w, bb, rr, act=act, **kw)
                assert np.array_equal(got.view(np.uint32),
                                      want[bb is None, rr is None].view(np.uint32)), \
                    f"{isa} bias={bb is not None} residual={rr is not None}"
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), None, **kw)
    fn = {"none": lambda t: t, "relu": torch.relu, "gelu": F.gelu,
          "quickgelu": lambda t: t * torch.sigmoid(1.702 * t)}[act]
    assert_close(want[True, True], fn(ref).numpy(), name=f"no bias, {act}")


@pytest.mark.parametrize("kw", [dict(padding=1), dict(padding=1, stride=2),
                                dict(padding=12, dilation=12)], ids=str)
def test_implicit_conv_bitwise_across_threads_large(rng, restore_runtime, kw):
    # big enough for the parallel region to split positions and output channels across tasks
    x, w, b = rand(rng, 1, 64, 30, 31), rand(rng, 96, 64, 3, 3, scale=0.1), rand(rng, 96)
    _core.set_num_threads(1)
    one = conv(x, w, b, act="relu", **kw)
    _core.set_num_threads(2)
    assert np.array_equal(conv(x, w, b, act="relu", **kw), one)
    assert_close(one, torch.relu(F.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                          torch.from_numpy(b), **kw)), name="large")


@pytest.mark.parametrize("threads", [2, 3])
def test_implicit_conv_sliced_chains_bitwise_across_threads(rng, restore_runtime, threads):
    # L = 128*9 > 1024: the chains are cut into slices kept in per-thread tiles; blocks and
    # micro-tiles dealt out evenly over a task count rounded to whole rounds of threads (100
    # output channels: a short last micro-tile; 9 blocks: uneven groups)
    x, w, b = rand(rng, 1, 128, 15, 17), rand(rng, 100, 128, 3, 3, scale=0.05), rand(rng, 100)
    r = rand(rng, 1, 100, 15, 17)
    _core.set_num_threads(1)
    one = _core.op_conv2d(x, w, b, r, padding=1, act="relu", algo="direct")
    _core.set_num_threads(threads)
    assert np.array_equal(_core.op_conv2d(x, w, b, r, padding=1, act="relu", algo="direct"), one)
    want = torch.relu(F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                               padding=1) + torch.from_numpy(r))
    assert_close(one, want, name="sliced")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_conv_input_copy_in_scratch(rng, restore_runtime, case):
    # the conv copies its input into the scratch sized by ovs_conv2d_scratch_floats (as the
    # models' arenas): the binding's one scratch allocation replaces the conv's own, for every
    # geometry (stride phases, padding, dilation, groups, the raw conv's tail block) and ISA
    x, w, b, kw = make(rng, case)
    (_, C, H, W), (K, _, R, S) = x.shape, w.shape
    (sh, sw), (ph, pw), (dh, dw) = pair(kw["stride"]), pair(kw["padding"]), pair(kw["dilation"])
    cg = C // kw["groups"]
    if (sh, sw, ph, pw) == (1, 1, 0, 0):   # the (L, 32) copy of the last block
        want = cg * R * S * 32
    else:   # the kept stride phases of the padded input + 32 floats of slack
        na, nb = len({r * dh % sh for r in range(R)}), len({s * dw % sw for s in range(S)})
        want = cg * na * nb * -(-(H + 2 * ph) // sh) * -(-(W + 2 * pw) // sw) + 32
    if case in COMPACT:   # the (L, P*Q) columns (whole lines), then the 1x1 conv's (L, 32) copy
        P = (H + 2 * ph - dh * (R - 1) - 1) // sh + 1
        Q = (W + 2 * pw - dw * (S - 1) - 1) // sw + 1
        want = max(want, -(-cg * R * S * P * Q // 16) * 16 + cg * R * S * 32)
    assert _core.op_conv2d_scratch_floats(C, H, W, K, R, S, **kw) == want
    for isa in ["portable"] + simd_isas():
        _core.gemm_set_isa(isa)
        counts = {}
        for scratch in (True, False):
            _core.debug_fail_alloc(0)
            conv(x, w, b, scratch=scratch, **kw)
            counts[scratch] = _core.debug_fail_alloc(0)
        assert counts[True] == counts[False], (isa, counts)


@pytest.mark.parametrize("case", [CASES[0], CASES[10], CASES[24]], ids=str)
def test_conv_out_and_workspace_kept_by_the_caller(rng, case):
    # out= and workspace= (a model's arena, kept across calls: bench_image's kernel case) give
    # the same bits as fresh arrays, call after call, whatever the buffers held before
    x, w, b, kw = make(rng, case)
    (N, C, H, W), (K, _, R, S) = x.shape, w.shape
    want = conv(x, w, b, act="relu", **kw)
    out = np.full(want.shape, np.nan, np.float32)
    ws = np.full(_core.op_conv2d_scratch_floats(C, H, W, K, R, S, **kw) + 5, np.nan, np.float32)
    for algo in ("direct", "auto"):
        for _ in range(2):
            got = _core.op_conv2d(x, w, b, act="relu", algo=algo, out=out, workspace=ws, **kw)
            assert got is out
            np.testing.assert_array_equal(got, want)
    res = rand(rng, *want.shape)
    out[...] = res   # a residual that is out itself
    got = conv(x, w, b, residual=out, out=out, workspace=ws, **kw)
    np.testing.assert_array_equal(got, conv(x, w, b, residual=res, **kw))
    with pytest.raises(ValueError, match="out must have shape"):
        conv(x, w, b, out=np.empty((N, K + 1) + want.shape[2:], np.float32), **kw)
    with pytest.raises(TypeError, match="out must be a writable"):
        conv(x, w, b, out=np.empty(want.shape, np.float64), **kw)
    with pytest.raises(TypeError, match="out must be a writable"):
        conv(x, w, b, out=np.empty(want.shape[::-1], np.float32).T, **kw)
    with pytest.raises(ValueError, match="workspace has"):
        conv(x, w, b, workspace=ws[:ws.size - 6], **kw)
    with pytest.raises(TypeError, match="workspace must be"):
        conv(x, w, b, workspace=ws.reshape(1, -1), **kw)
    buf = np.zeros(out.size + ws.size, np.float32)   # workspace starting inside out
    with pytest.raises(ValueError, match="workspace must not overlap"):
        conv(x, w, b, out=buf[:out.size].reshape(out.shape), workspace=buf[out.size - 1:], **kw)
    if x.size >= out.size:   # out over the input it reads
        with pytest.raises(ValueError, match="out must not overlap"):
            conv(x, w, b, out=x.ravel()[:out.size].reshape(out.shape), **kw)


@pytest.mark.parametrize("case", [CASES[0], CASES[10], CASES[24], COMPACT[0]], ids=str)
def test_implicit_conv_allocation_failure(rng, restore_runtime, case):
    # with the caller's scratch (the models') and without (the conv allocates its input copy)
    x, w, b, kw = make(rng, case)
    _core.set_num_threads(2)
    for scratch in (True, False):
        inject_alloc_failures(lambda: conv(x, w, b, scratch=scratch, **kw),
                              f"conv {case} scratch={scratch}")
    _core.debug_fail_alloc(1)
    try:
        with pytest.raises(MemoryError, match="ovs_conv2d_forward: out of memory"):
            conv(x, w, b, scratch=False, **kw)
    finally:
        _core.debug_fail_alloc(0)


# ---------------------------------------------------------------- weights packed at load
def conv_pack_numpy(w, groups):
    """The packed layout of include/ovs/ops.h (ovs_conv2d_pack), built independently."""
    K, L, MR = w.shape[0], int(np.prod(w.shape[1:])), 12
    Kg = K // groups
    blocks = []
    for g in range(groups):
        wg = w.reshape(K, L)[g * Kg:(g + 1) * Kg]
        padded = np.zeros((-(-Kg // MR) * MR, L), np.float32)
        padded[:Kg] = wg
        blocks.append(padded.reshape(-1, MR, L).transpose(0, 2, 1).ravel())
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


@pytest.mark.parametrize("shape,groups", [((20, 8, 3, 3), 1), ((13, 6, 3, 3), 1),
                                          ((12, 4, 3, 3), 2), ((30, 5, 1, 1), 3),
                                          ((48, 7, 1, 1), 2), ((24, 3, 3, 3), 1),
                                          ((7, 1100, 1, 1), 1), ((0, 3, 3, 3), 1)], ids=str)
def test_conv_pack_layout_and_unpack(rng, restore_runtime, shape, groups):
    w = rand(rng, *shape)
    want = conv_pack_numpy(w, groups)
    for isa in ["portable"] + simd_isas():   # the packing is the same whatever the kernels
        _core.gemm_set_isa(isa)
        for threads in (1, 2):
            _core.set_num_threads(threads)
            assert np.array_equal(_core.op_conv2d_pack(w, groups), want), f"{isa} {threads}"
            assert np.array_equal(_core.op_conv2d_pack(w, groups, inplace=True), want), \
                f"in place: {isa} {threads}"
    assert np.array_equal(_core.op_conv2d_pack(w, groups, unpack=True), w)
    with pytest.raises(ValueError, match="divisible by groups"):
        _core.op_conv2d_pack(rand(rng, 5, 2, 1, 1), 2)


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_packed_conv_naive_twin_and_bad_size(rng, case):
    # the naive twin reads the packed layout back exactly; a packed weight of the wrong size
    x, w, b, kw = make(rng, case)
    r = rand(rng, *conv(x, w, b, **kw).shape)
    pk = _core.op_conv2d_pack(w, kw["groups"])
    assert np.array_equal(conv(x, w, b, r, naive=True, packed=True, **kw),
                          conv(x, w, b, r, naive=True, **kw))
    with pytest.raises(ValueError, match="prepacked has"):
        conv(x, w, b, prepacked=pk[:-1], **kw)


@pytest.mark.parametrize("case", [CASES[0], CASES[5], CASES[10], CASES[24]], ids=str)
def test_packed_conv_allocation_failure(rng, restore_runtime, case):
    x, w, b, kw = make(rng, case)
    _core.set_num_threads(2)
    inject_alloc_failures(lambda: conv(x, w, b, packed=True, **kw),
                          f"packed conv {case}")
    inject_alloc_failures(lambda: _core.op_conv2d_pack(w, kw["groups"], unpack=True),
                          f"conv pack {case}")
    inject_alloc_failures(lambda: _core.op_conv2d_pack(w, kw["groups"], inplace=True),
                          f"conv pack in place {case}")
