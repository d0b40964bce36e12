"""Sparse (CSR) convolution: fast kernel vs its naive twin vs torch.nn.functional.conv2d, and a
pruned RN50 run with sparse kernels vs the same zeroed weights run dense.

Tolerance: 1e-5 relative to the output's max magnitude for ops (float32 sums in a different
order), and the issue's ≤ 1e-5 max relative error on RN50 features for sparse vs dense."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ovs
import ovs.prune
from ovs import _core
from ovs.weights import load_state_dict

from test_gemm import restore_runtime, simd_isas  # noqa: F401 (fixture)

RTOL = 1e-5

# (N, C, H, W, K, R, pad, dilation, density)
CASES = [
    (2, 16, 9, 11, 8, 3, 1, 1, 0.2),      # 3x3 pad 1, odd sizes, batch 2
    (1, 64, 7, 7, 96, 1, 0, 1, 0.1),      # 1x1 on a 7x7 map (tail shorter than one tile)
    (1, 32, 20, 20, 40, 1, 0, 1, 0.5),    # 1x1, several full 64-pixel tiles + tail
    (1, 5, 6, 5, 3, 3, 2, 2, 0.6),        # dilation 2, pad 2
    (1, 8, 3, 3, 4, 3, 0, 1, 0.3),        # kernel as large as the input
    (1, 12, 8, 8, 6, 3, 1, 1, 0.0),       # an all-zero weight: output = bias
    (1, 12, 8, 8, 6, 5, 2, 1, 1.0),       # fully dense 5x5
    (1, 24, 10, 10, 7, 1, 0, 1, 0.15),    # 7 short rows, some empty: the kernel's slots refill,
                                          # retire and hand a row to a free slot in every order
]


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _case(rng, N, C, H, W, K, R, density):
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C, R, R)).astype(np.float32)
    w[rng.random(w.shape) >= density] = 0
    b = rng.standard_normal(K).astype(np.float32)
    return x, w, b


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("act", ["none", "relu", "gelu"])
def test_sparse_conv_fast_naive_torch(case, act):
    N, C, H, W, K, R, pad, dil, density = case
    rng = np.random.default_rng(hash(case) % 2**32)
    x, w, b = _case(rng, N, C, H, W, K, R, density)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                                     padding=pad, dilation=dil)
    ref = {"none": lambda t: t, "relu": torch.relu,
           "gelu": torch.nn.functional.gelu}[act](ref).numpy()
    fast = _core.op_conv2d_sparse(x, w, b, padding=pad, dilation=dil, act=act)
    naive = _core.op_conv2d_sparse(x, w, b, padding=pad, dilation=dil, act=act, naive=True)
    assert fast.shape == ref.shape
    assert _rel(fast, ref) <= RTOL, f"fast vs torch {_rel(fast, ref)}"
    assert _rel(naive, ref) <= RTOL, f"naive vs torch {_rel(naive, ref)}"
    assert _rel(fast, naive) <= RTOL


# Layouts of the fast kernel (csrc/ops/sparse.c): (N, C, H, W, K, R, pad, dilation, density);
# all but the last two large enough (non-zeros x grid positions >= 2^20, SP_PAR_MIN) to run on
# 2 threads when asked
LAYOUT_CASES = [
    (1, 16, 28, 28, 37, 3, 1, 1, 0.6),     # aligned shifted copies (row 30 -> 32), odd K
    (1, 16, 28, 28, 37, 3, 1, 1, 0.3),     # the same with few non-zeros: one unaligned copy
    (1, 8, 26, 26, 64, 3, 2, 2, 0.4),      # aligned copies shifted by the dilation
    (1, 24, 7, 7, 201, 3, 1, 1, 0.5),      # small map: one unaligned copy, one tile
    (1, 256, 12, 12, 40, 3, 1, 1, 0.6),    # many input-channel slices (resumed chains)
    (1, 64, 16, 20, 201, 1, 0, 1, 0.4),    # 1x1 read in place when aligned (G = 5 tiles of 20 lines)
    (1, 64, 16, 16, 201, 1, 0, 1, 0.4),    # 1x1 planes of 16 lines (2^k: L1 set conflicts): copied
                                           # to planes of 17
    (1, 64, 28, 28, 96, 1, 0, 1, 0.3),     # 1x1 in place, G = 12.25 tiles: the last one shifted
    (1, 512, 14, 14, 512, 1, 0, 1, 0.025), # 1x1 in place from unaligned planes (few non-zeros)
    # the last, partial tile run as 1-3 vectors of 16 (the narrow kernel: four rows together,
    # then the rest one by one)
    (1, 512, 14, 14, 97, 1, 0, 1, 0.2),    # 1x1, G = 196: 3 tiles + one vector (4 positions)
    (1, 512, 8, 14, 64, 1, 0, 1, 0.5),     # 1x1 in place, G = 112: 1 tile + three whole vectors
    (1, 96, 9, 9, 41, 3, 1, 1, 0.5),       # 3x3, one copy, grid 9 x 11 = 99: 1 tile + 3 vectors
    (1, 256, 7, 10, 33, 3, 1, 1, 0.6),     # 3x3, grid 7 x 12 = 84, several slices (resumed)
    (2, 40, 9, 9, 65, 1, 0, 1, 0.05),      # 1x1 copied to whole-line planes, batch 2
    (2, 16, 12, 12, 24, 3, 1, 1, 0.0),     # fully pruned: bias + residual + act only
]


@pytest.mark.parametrize("case", LAYOUT_CASES)
def test_sparse_conv_bitwise_across_threads_and_isas(restore_runtime, case):
    """Every output is one fmaf chain over its row's non-zeros in increasing column order:
    bitwise the same on every ISA path and at 1 and 2 threads; and within 1e-5 of torch."""
    N, C, H, W, K, R, pad, dil, density = case
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    x, w, b = _case(rng, N, C, H, W, K, R, density)
    r = rng.standard_normal((N, K, H + 2 * pad - dil * (R - 1), W + 2 * pad - dil * (R - 1))).astype(np.float32)
    want = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                                 torch.from_numpy(b), padding=pad, dilation=dil)
                      + torch.from_numpy(r)).numpy()
    if case not in LAYOUT_CASES[-2:]:   # the 2-thread runs below really split the work
        P, Wp = r.shape[2], W + 2 * pad
        assert np.count_nonzero(w) * P * Wp >= 2**20, "case too small for 2 threads (SP_PAR_MIN)"
    _core.gemm_set_isa("portable")
    _core.set_num_threads(1)
    ref = _core.op_conv2d_sparse(x, w, b, r, padding=pad, dilation=dil, act="relu")
    assert _rel(ref, want) <= RTOL, _rel(ref, want)
    # an input at a 64-byte boundary (read in place by 1x1 convs) and one off it (copied)
    buf = np.empty(x.size + 32, np.float32)
    lead = (-buf.ctypes.data // 4) % 16
    for shift in (lead, lead + 1):
        xa = buf[shift:shift + x.size].reshape(x.shape)
        xa[...] = x
        for isa in ["portable"] + simd_isas():
            _core.gemm_set_isa(isa)
            for threads in (1, 2):
                _core.set_num_threads(threads)
                got = _core.op_conv2d_sparse(xa, w, b, r, padding=pad, dilation=dil, act="relu")
                assert np.array_equal(got, ref), f"isa={isa} threads={threads} shift={shift}"
            # repeat > 1 runs through a plan (the tables built once, then reused), as models do
            got = _core.op_conv2d_sparse(xa, w, b, r, padding=pad, dilation=dil, act="relu", repeat=3)
            assert np.array_equal(got, ref), f"planned, isa={isa} shift={shift}"


# a padded 3x3 (copied input) and a 1x1 read in place whose last tile is computed shifted back
# over positions of the previous one (it must store only its own: the residual is the output)
@pytest.mark.parametrize("C, H, W, K, R, density", [(24, 10, 12, 16, 3, 0.3), (64, 14, 14, 48, 1, 0.02)])
def test_sparse_conv_residual_and_alias(C, H, W, K, R, density):
    rng = np.random.default_rng(1)
    x, w, b = _case(rng, 2, C, H, W, K, R, density)
    pad = R // 2
    r = rng.standard_normal((2, K, H, W)).astype(np.float32)
    ref = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                                torch.from_numpy(b), padding=pad)
                     + torch.from_numpy(r)).numpy()
    for alias in (False, True):
        got = _core.op_conv2d_sparse(x, w, b, r, padding=pad, act="relu", residual_alias=alias)
        assert _rel(got, ref) <= RTOL, f"alias={alias}: {_rel(got, ref)}"
    naive = _core.op_conv2d_sparse(x, w, b, r, padding=pad, act="relu", naive=True)
    assert _rel(naive, ref) <= RTOL


def test_sparse_conv_noncontiguous_input():
    rng = np.random.default_rng(2)
    x, w, b = _case(rng, 1, 8, 9, 9, 4, 3, 0.5)
    xf = np.asfortranarray(x)
    xs = np.concatenate([x, x], axis=3)[:, :, :, ::2]  # strided view
    ref = _core.op_conv2d_sparse(np.ascontiguousarray(x), w, b, padding=1)
    assert np.array_equal(_core.op_conv2d_sparse(xf, w, b, padding=1), ref)
    want = torch.nn.functional.conv2d(torch.from_numpy(np.ascontiguousarray(xs)), torch.from_numpy(w),
                                      torch.from_numpy(b), padding=1).numpy()
    assert _rel(_core.op_conv2d_sparse(xs, w, b, padding=1), want) <= RTOL


def test_sparse_conv_bad_inputs():
    x = np.zeros((1, 4, 5, 5), np.float32)
    w = np.ones((2, 4, 3, 3), np.float32)
    with pytest.raises(NotImplementedError, match="stride must be 1"):
        _core.op_conv2d_sparse(x, w, stride=2)
    # the naive twin does any stride (the model keeps strided convs dense)
    got = _core.op_conv2d_sparse(x, w, stride=2, naive=True)
    assert got.shape == (1, 2, 2, 2)
    with pytest.raises(ValueError, match="w must be"):
        _core.op_conv2d_sparse(x, np.ones((2, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        _core.op_conv2d_sparse(x, np.ones((2, 4, 7, 7), np.float32))
    with pytest.raises(ValueError, match="act must be"):
        _core.op_conv2d_sparse(x, w, act="tanh")
    with pytest.raises(ValueError, match="padding >= 0"):
        _core.op_conv2d_sparse(x, w, padding=-1)
    with pytest.raises(ValueError, match="b must have shape"):
        _core.op_conv2d_sparse(x, w, np.zeros(3, np.float32))


@pytest.fixture(scope="module")
def rn50_sd(fixtures_dir):
    return load_state_dict(fixtures_dir / "rn50.safetensors")


def test_rn50_sparse_equals_dense_of_zeroed_weights(rn50_sd, reference):
    """The issue's bar: sparse execution = dense execution of the same zeroed weights, max
    relative error <= 1e-5 on RN50 features (res2..res5 and the embedding)."""
    pruned = ovs.prune.magnitude(rn50_sd, sparsity=0.9, scope="layer")
    dense = ovs.Model(pruned, sparse="dense")
    sparse = ovs.Model(pruned, sparse="dense")
    table = sparse.sparsify("all")
    assert sum(c["sparse"] for c in table) == len(table) - 1  # all but the stride-2 stem conv
    x = reference("rn50_image.npz")["rect_b1_x"]
    a, b = dense.image_features(x), sparse.image_features(x)
    for k in ("res2", "res3", "res4", "res5", "embed"):
        err = _rel(b[k], a[k])
        assert err <= 1e-5, f"{k}: sparse vs dense max relative error {err}"
    # another input size: every sparse conv's plan (ops.h ovs_sparse_plan) is rebuilt for it
    x2 = reference("rn50_image.npz")["sq_b1_x"]
    a2, b2 = dense.image_features(x2), sparse.image_features(x2)
    for k in ("res5", "embed"):
        assert _rel(b2[k], a2[k]) <= 1e-5, f"{k} at {x2.shape}: {_rel(b2[k], a2[k])}"
    assert np.array_equal(sparse.image_features(x)["res5"], b["res5"])   # and back
    # memory proportional to the non-zeros: 6 bytes per non-zero + row pointers
    for c in table:
        if c["sparse"]:
            assert c["weight_bytes"] == 6 * c["nnz"] + 8 * (c["shape"][0] + 1), c
    # and back to dense gives the same weights (rebuilt from the CSR)
    sparse.sparsify("dense")
    assert not any(c["sparse"] for c in sparse.visual.convs())
    assert np.array_equal(sparse.image_features(x)["embed"], a["embed"])


def test_rn50_empty_conv2_blocks_equal_dense(rn50_sd, reference, restore_runtime):
    """Global magnitude pruning empties whole 3x3 convs (at 90%, every conv2 of layer2..4 of these
    weights): such a block's branch is a constant per image, computed once (csrc/models/resnet.c
    const_branch). With conv2 emptied also where the block has a stride-1 projection shortcut
    (layer1.0), no shortcut conv (layer1.2, layer3.3, layer4.2) and the pooled stride-2 one
    (layer2.0): sparse = dense of the same zeroed weights on a batch of two different images,
    at 1 and 2 threads bitwise alike."""
    pruned = dict(ovs.prune.magnitude(rn50_sd, sparsity=0.9, scope="global"))
    for blk in ("layer1.0", "layer1.2", "layer2.0", "layer3.3", "layer4.2"):
        pruned[f"visual.{blk}.conv2.weight"] = np.zeros_like(pruned[f"visual.{blk}.conv2.weight"])
    dense = ovs.Model(pruned, sparse="dense")
    sparse = ovs.Model(pruned, sparse="dense")
    table = sparse.sparsify("all")
    empty = [c["name"] for c in table if c["name"].endswith("conv2") and c["nnz"] == 0]
    assert len(empty) == 15, empty   # all but layer1.1's
    for key in ("rect_b1_x", "sq_b1_x"):
        x = reference("rn50_image.npz")[key]
        x = np.concatenate([x, x[:, :, ::-1]])   # two images: each branch is per image
        a = dense.image_features(x)
        runs = []
        for threads in (1, 2):
            ovs.set_num_threads(threads)
            runs.append(sparse.image_features(x))
        for k in ("res2", "res3", "res4", "res5", "embed"):
            err = _rel(runs[0][k], a[k])
            assert err <= RTOL, f"{k} at {x.shape}: sparse vs dense max relative error {err}"
            assert np.array_equal(runs[0][k], runs[1][k]), k
            assert not np.array_equal(runs[0][k][0], runs[0][k][1]), k
    # a branch's vector is computed once and kept; re-deciding the kernels drops it
    sparse.sparsify("dense")
    assert np.array_equal(sparse.image_features(x)["res5"], a["res5"])
    sparse.sparsify("all")
    assert np.array_equal(sparse.image_features(x)["res5"], runs[1]["res5"])


def test_long_chain_of_constant_branches(rn50_sd):
    """Consecutive constant branches apply their vectors in one pass, at most 8 at a time
    (resnet.c KB_CHAIN): a layer3 of 11 blocks (layer3.1's weights repeated, as a deeper ResNet
    has), every 3x3 of it emptied by global pruning, equals the dense run of the same zeros."""
    sd = dict(rn50_sd)
    for j in range(6, 11):
        for k, v in rn50_sd.items():
            if k.startswith("visual.layer3.1."):
                sd[k.replace("visual.layer3.1.", f"visual.layer3.{j}.")] = v
    pruned = ovs.prune.magnitude(sd, sparsity=0.9, scope="global")
    assert sum(not np.any(pruned[f"visual.layer3.{j}.conv2.weight"]) for j in range(11)) == 11
    dense = ovs.Model(pruned, sparse="dense")
    sparse = ovs.Model(pruned, sparse="all")
    assert sparse.config["vision"]["layers"] == (3, 4, 11, 3)
    x = np.random.default_rng(3).standard_normal((1, 3, 96, 128)).astype(np.float32)
    a, b = dense.image_features(x), sparse.image_features(x)
    for k in ("res3", "res4", "res5", "embed"):
        assert _rel(b[k], a[k]) <= RTOL, f"{k}: {_rel(b[k], a[k])}"


def test_rn50_pruned_matches_open_clip(rn50_sd, reference):
    """A pruned model on sparse kernels against open_clip (PyTorch) on the same zeroed weights."""
    import open_clip

    pruned = ovs.prune.magnitude(rn50_sd, sparsity=0.8)
    model = ovs.Model(pruned, sparse="all")
    ref_model = open_clip.create_model("RN50", pretrained=None).eval()
    missing, unexpected = ref_model.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in pruned.items()}, strict=False)
    assert not [k for k in missing if k.startswith("visual.")]
    x = reference("rn50_image.npz")["sq_b1_x"]
    with torch.no_grad():
        want = ref_model.encode_image(torch.from_numpy(x)).numpy()
    got = model.encode_image(x, preprocess=False)
    assert _rel(got, want) <= 1e-4, _rel(got, want)


def test_auto_calibration_never_keeps_a_slower_kernel(rn50_sd):
    """AUTO times each conv dense and sparse and keeps the sparse kernel only where it was at
    least 15% faster (SPARSE_MIN_GAIN in csrc/models/resnet_sparse.c). Timing-independent: the
    decisions are checked against the recorded timings, and the conv that must go sparse is one
    whose weight is all zeros (its sparse kernel only writes bias + ReLU: ~30x faster than the
    dense 3x3 conv on a 16x16 map, a margin no scheduling noise on a best of 5 closes)."""
    pruned = dict(ovs.prune.magnitude(rn50_sd, sparsity=0.9, scope="layer"))
    pruned["visual.layer1.0.conv2.weight"] = np.zeros_like(pruned["visual.layer1.0.conv2.weight"])
    model = ovs.Model(pruned, sparse="dense")
    table = model.sparsify("auto", size=64)
    timed = [c for c in table if c["dense_ms"] > 0]
    assert len(timed) == len(table) - 1, "every conv but the strided stem conv is timed"
    for c in table:
        if c["dense_ms"] == 0:
            assert not c["sparse"], c
        else:
            assert c["sparse_ms"] > 0, c
            assert c["sparse"] == (c["sparse_ms"] < 0.85 * c["dense_ms"]), c
    zero = next(c for c in table if c["name"] == "visual.layer1.0.conv2")
    assert zero["nnz"] == 0 and zero["sparse"], zero
    with pytest.raises(ValueError, match="size must be"):
        model.sparsify("auto", size=16)
    with pytest.raises(ValueError, match="mode must be"):
        model.sparsify("fast")
