"""Every fast C op against its naive twin (csrc/ops/naive.c), one table, one test per row.

As ncnn's test_layer: a row names the op, its fast and naive bindings, an input generator and a
tolerance. Each row runs the fast op at 1 and 2 threads (results must be identical: work is
split so that every value has one fixed evaluation order) and the naive twin once, then checks

    max |fast - naive| <= tol * max(1, max |naive|)

The naive twins are plain loops in double precision straight from each op's definition, so
this checks the fast kernels' tiling, vectorisation, tables and threading, not the definitions
themselves: tests/test_ops.py (and test_gemm, test_sparse, test_m2f, test_pamr, test_scclip)
check the ops against PyTorch. Sizes are chosen to cross the ops' threading thresholds
(OPS_PAR_MIN = 32768 elements, 2e6 multiply-adds for a split sgemm) while the naive loops stay
fast. A new op with a naive twin gets one row here.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

import ovs
from ovs import _core


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def strided_cols(rng, rows, cols, offset=3):
    """A (rows, cols) float32 view whose rows are strided (a column slice of a wider array)."""
    return rand(rng, rows, cols + 2 * offset)[:, offset:offset + cols]


def sparse_weight(rng, K, C, R, density):
    w = rand(rng, K, C, R, R, scale=0.2)
    w[rng.random(w.shape) >= density] = 0.0
    return w


def pamr_case(rng, C, K, H, W):
    mask = rng.random((C, H, W)).astype(np.float32)
    return mask / mask.sum(0, keepdims=True), rand(rng, K, H, W)


def msdeform_case(rng, shapes, Q, E, F, P):
    L, S = len(shapes), sum(h * w for h, w in shapes)
    loc = rng.uniform(-0.3, 1.3, (Q, E, L, P, 2)).astype(np.float32)   # inside and outside
    attn = rng.random((Q, E, L, P)).astype(np.float32)
    attn /= attn.reshape(Q, E, -1).sum(-1)[:, :, None, None]
    return (rand(rng, S, E, F), shapes, loc, attn), {}


def aggregate_case(rng, M, D):
    x = rand(rng, M, D)
    n = x / np.linalg.norm(x, axis=1, keepdims=True)
    return (x, n @ n.T, 0.2), {}


@dataclass(frozen=True)
class Twin:
    name: str
    fast: Callable
    naive: Callable
    make: Callable   # rng -> (args, kwargs) for both
    tol: float = 1e-5


def with_naive(fn):
    return lambda *a, **kw: fn(*a, naive=True, **kw)


def row(name, fn, make, tol=1e-5, naive=None):
    return Twin(name, fn, naive or with_naive(fn), make, tol)


def gemm_packed_case(rng, M, C, K):
    a, w = rand(rng, M, C), rand(rng, K, C, scale=0.1)
    return (a, _core.op_matrix_pack(w), K), {}


TWINS = [
    *[row(f"act-{a}", _core.op_act, lambda r, a=a: ((rand(r, 40_003, scale=4.0), a), {}))
      for a in ("none", "relu", "gelu", "quickgelu", "sigmoid")],
    *[row(f"linear-{fmt}", _core.op_linear,
          lambda r, p=p: ((rand(r, 3, 90, 128), rand(r, 96, 128, scale=0.1), rand(r, 96),
                           rand(r, 3, 90, 96)), dict(act="gelu", packed=p)))
      for fmt, p in (("dense", False), ("packed", True))],
    row("linear-residual-alias", _core.op_linear,
        lambda r: ((rand(r, 70, 33), rand(r, 17, 33), None, rand(r, 70, 17)),
                   dict(act="quickgelu", residual_alias=True))),
    # large enough for the dense product to be cut into blocks (the cut must not depend on the
    # thread count: OpenBLAS rounds a block differently from the whole product)
    row("matmul-large", _core.op_matmul,
        lambda r: ((rand(r, 500, 512), rand(r, 512, 512, scale=0.05)), {})),
    *[row(f"matmul_wt-{fmt}", _core.op_matmul_wt,
          lambda r, p=p: ((strided_cols(r, 300, 120), rand(r, 80, 120, scale=0.1), 0.5, 2.0,
                           rand(r, 300, 80)), dict(packed=p)))
      for fmt, p in (("dense", False), ("packed", True))],
    row("matmul", _core.op_matmul,
        lambda r: ((strided_cols(r, 300, 120), strided_cols(r, 120, 70), 0.5, 2.0,
                    rand(r, 300, 70)), {})),
    row("gemm_packed", _core.op_gemm_packed, lambda r: gemm_packed_case(r, 200, 70, 37),
        naive=_core.op_gemm_packed_naive),
    row("conv2d-3x3-relu", _core.op_conv2d,
        lambda r: ((rand(r, 2, 8, 23, 21), rand(r, 12, 8, 3, 3, scale=0.2), rand(r, 12)),
                   dict(padding=1, act="relu", algo="direct"))),
    # Winograd F(2x2, 3x3) against its naive twin (the same algorithm as plain loops; equal
    # up to the activation's code, tests/test_winograd.py)
    row("conv2d-winograd", _core.op_conv2d,
        lambda r: ((rand(r, 2, 20, 29, 27), rand(r, 24, 20, 3, 3, scale=0.2), rand(r, 24),
                    rand(r, 2, 24, 29, 27)), dict(padding=1, act="gelu", algo="winograd"))),
    # Winograd F(4x4, 3x3) the same way
    row("conv2d-winograd4", _core.op_conv2d,
        lambda r: ((rand(r, 2, 20, 29, 27), rand(r, 24, 20, 3, 3, scale=0.2), rand(r, 24),
                    rand(r, 2, 24, 29, 27)), dict(padding=1, act="gelu", algo="winograd4"))),
    row("conv2d-grouped-strided-dilated", _core.op_conv2d,
        lambda r: ((rand(r, 1, 8, 30, 27), rand(r, 12, 4, 3, 3, scale=0.2), rand(r, 12),
                    rand(r, 1, 12, 15, 12)),
                   dict(stride=2, padding=(1, 0), dilation=(1, 2), groups=2, act="gelu"))),
    row("conv2d-1x1-residual-alias", _core.op_conv2d,
        lambda r: ((rand(r, 2, 16, 15, 17), rand(r, 24, 16, 1, 1, scale=0.2), None,
                    rand(r, 2, 24, 15, 17)), dict(residual_alias=True))),
    row("conv2d_sparse", _core.op_conv2d_sparse,
        lambda r: ((rand(r, 2, 8, 21, 19), sparse_weight(r, 12, 8, 3, 0.3), rand(r, 12),
                    rand(r, 2, 12, 21, 19)), dict(padding=2, dilation=2, act="relu"))),
    *[row(f"avgpool2d-pad{inc}", _core.op_avgpool2d,
          lambda r, inc=inc: ((rand(r, 4, 16, 33, 30), (3, 2), (2, 1), (1, 1)),
                              dict(count_include_pad=inc)))
      for inc in (True, False)],
    *[row(f"adaptive_avgpool2d-{P}x{Q}", _core.op_adaptive_avgpool2d,
          lambda r, P=P, Q=Q: ((rand(r, 8, 32, 21, 19), (P, Q)), {}))
      for P, Q in ((7, 5), (1, 1), (30, 40))],
    row("layernorm", _core.op_layernorm,
        lambda r: ((rand(r, 300, 200, scale=3.0) + 100.0, rand(r, 200), rand(r, 200), 1e-5), {})),
    row("groupnorm", _core.op_groupnorm,
        lambda r: ((rand(r, 2, 64, 17, 19, scale=2.0) + 3.0, 32, rand(r, 64), rand(r, 64), 1e-5),
                   {})),
    row("softmax", _core.op_softmax, lambda r: ((rand(r, 300, 257, scale=5.0),), {})),
    row("attention-mask", _core.op_attention,
        lambda r: ((strided_cols(r, 60, 64), strided_cols(r, 77, 64), strided_cols(r, 77, 64),
                    4, 0.125, rand(r, 60, 77)), {})),
    row("attention-causal", _core.op_attention,
        lambda r: ((rand(r, 50, 96), rand(r, 70, 96), rand(r, 70, 96), 8, 0.3, None, True), {})),
    # more keys than the packed GEMM's chain slice (512): the probabilities @ v chains are cut
    row("attention-long", _core.op_attention,
        lambda r: ((strided_cols(r, 40, 128), strided_cols(r, 600, 128), strided_cols(r, 600, 128),
                    2, 0.125), {})),
    row("attention_probs-mask", _core.op_attention_probs,
        lambda r: ((strided_cols(r, 190, 24), strided_cols(r, 230, 24), 0.2, rand(r, 190, 230)),
                   {})),
    row("attention_probs-causal", _core.op_attention_probs,
        lambda r: ((rand(r, 150, 32), rand(r, 240, 32), 0.5), dict(causal=True))),
    *[row(f"resize-{mode}-align{ac}-{P}x{Q}", _core.op_resize,
          lambda r, mode=mode, ac=ac, P=P, Q=Q: ((rand(r, 2, 3, 37, 29), (P, Q)),
                                                 dict(mode=mode, align_corners=ac)))
      for mode in ("bilinear", "bicubic") for ac in (False, True)
      for P, Q in ((91, 300), (13, 7), (1, 1))],
    row("pamr", _core.op_pamr, lambda r: (pamr_case(r, 3, 3, 37, 53) + (10, (8, 16)), {})),
    row("lof_outliers", _core.op_lof_outliers,
        lambda r: ((rand(r, 300, 24),), dict(k=30, contamination=0.05))),
    row("similarity_aggregate", _core.op_similarity_aggregate, lambda r: aggregate_case(r, 196, 64)),
    row("pos_embed_sine", _core.op_pos_embed_sine, lambda r: ((256, 24, 31), {})),
    row("msdeform_attn_core", _core.op_msdeform_attn_core,
        lambda r: msdeform_case(r, [(16, 20), (8, 10), (4, 5)], 300, 4, 16, 4)),
]


def as_arrays(result):
    return [np.asarray(x) for x in (result if isinstance(result, tuple) else (result,))]


def run(fn, make, seed):
    args, kwargs = make(np.random.default_rng(seed))
    return as_arrays(fn(*args, **kwargs))


@pytest.mark.parametrize("twin", TWINS, ids=lambda t: t.name)
def test_fast_matches_naive_at_1_and_2_threads(twin):
    seed = zlib.crc32(twin.name.encode())
    old = ovs.get_num_threads()
    try:
        fast = []
        for n in (1, 2):
            ovs.set_num_threads(n)
            fast.append(run(twin.fast, twin.make, seed))
    finally:
        ovs.set_num_threads(old)
    naive = run(twin.naive, twin.make, seed)
    for i, (one, two, ref) in enumerate(zip(*fast, naive)):
        what = f"{twin.name} output {i}"
        assert one.shape == ref.shape and one.dtype == ref.dtype, what
        if ref.dtype == bool:
            assert np.array_equal(one, two) and np.array_equal(one, ref), f"{what}: masks differ"
            continue
        assert np.array_equal(one, two, equal_nan=True), f"{what}: 1 vs 2 threads differ"
        assert_close(one, ref, f"{what}: fast vs naive", twin.tol)


def assert_close(got, ref, what, tol):
    scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
    err = float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max(initial=0.0))
    assert err <= tol * scale, f"{what}: max |diff| = {err:.3g} > {tol:g} * {scale:.3g}"


def test_table_covers_every_naive_binding():
    """Every binding with a naive twin has a row: a new twin cannot go untested."""
    have = {t.fast for t in TWINS}
    with_twin = {getattr(_core, n) for n in dir(_core)
                 if n.startswith("op_") and "naive=False" in (getattr(_core, n).__doc__ or "")}
    with_twin.add(_core.op_gemm_packed)
    assert len(with_twin) >= 15, sorted(f.__name__ for f in with_twin)
    missing = sorted(f.__name__ for f in with_twin - have)
    assert not missing, f"ops with a naive twin but no row in TWINS: {missing}"
