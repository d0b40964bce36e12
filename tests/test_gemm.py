"""The packed-weight GEMM (csrc/ops/gemm*.c).

What is proved here:
* the packed layout is the one ops.h documents (built independently with numpy);
* the result is correct: against a float64 numpy product and torch's linear (tolerance policy of
  conftest.py), with bias / residual (also aliased) / activations fused;
* determinism by construction: every output element is one fmaf chain in increasing c, so a row
  is bitwise the same whatever the batch it is in (M in 1..300), its position, the thread count
  and the ISA path (portable C vs the CPU's SIMD kernels), and equal to the naive twin.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovs import _core
from conftest import assert_close, inject_alloc_failures

NR = 16
M_SIZES = [1, 2, 5, 7, 13, 64, 197, 300]


def cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def simd_isas() -> list[str]:
    """The SIMD kernel families this CPU can run, from /proc/cpuinfo (independent of ovs)."""
    flags = cpu_flags()
    out = []
    if {"avx2", "fma"} <= flags:
        out.append("avx2")
    if "avx512f" in flags:
        out.append("avx512")
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def restore_runtime():
    threads = _core.get_num_threads()
    yield
    _core.gemm_set_isa("auto")
    _core.set_num_threads(threads)


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def pack_reference(w: np.ndarray) -> np.ndarray:
    """ops.h layout: packed[p, c, j] = W[p*NR + j, c], zero rows past K."""
    K, C = w.shape
    P = -(-K // NR)
    padded = np.zeros((P * NR, C), np.float32)
    padded[:K] = w
    return np.ascontiguousarray(padded.reshape(P, NR, C).transpose(0, 2, 1))


@pytest.mark.parametrize("K,C", [(1, 1), (16, 3), (17, 5), (40, 37), (0, 4), (5, 0)])
def test_pack_layout(rng, K, C):
    w = rand(rng, K, C)
    got = _core.op_matrix_pack(w)
    assert got.shape == (-(-K // NR), C, NR)
    assert np.array_equal(got, pack_reference(w))


@pytest.mark.parametrize("M,C,K", [(1, 1, 1), (5, 37, 40), (13, 64, 16), (197, 96, 50)])
def test_naive_twin_against_float64(rng, M, C, K):
    a, w = rand(rng, M, C), rand(rng, K, C)
    ref = a.astype(np.float64) @ w.astype(np.float64).T
    naive = _core.op_gemm_packed_naive(a, pack_reference(w), K)
    assert_close(naive, ref, name="packed naive")
    fast = _core.op_matmul_wt(a, w, packed=True)
    assert_close(fast, ref, name="packed fast")
    assert np.array_equal(fast, naive), "fast packed GEMM differs bitwise from its naive twin"
    prepacked = _core.op_gemm_packed(a, _core.op_matrix_pack(w), K)
    assert np.array_equal(prepacked, naive), "op_gemm_packed on a pre-packed weight"


# C = 1100: the chain cut into 256-step slices with a partial last one; K = 40 / 70: an odd
# number of 16-wide panels (the AVX-512 kernel's 32-wide tiles end on a 16-wide one); C = 5:
# fewer columns than one packing transpose block.
@pytest.mark.parametrize("C,K", [(37, 40), (768, 200), (1100, 70), (5, 33)])
def test_rows_bitwise_independent_of_batch_threads_and_isa(rng, restore_runtime, C, K):
    big = rand(rng, max(M_SIZES), C)
    w = rand(rng, K, C, scale=0.1)
    ref64 = big.astype(np.float64) @ w.astype(np.float64).T
    full = _core.op_matmul_wt(big, w, packed=True)
    assert_close(full, ref64, name="packed GEMM vs float64")
    naive = _core.op_gemm_packed_naive(big, pack_reference(w), K)
    assert np.array_equal(full, naive), "fast vs naive twin"
    for isa in ["portable"] + simd_isas():
        _core.gemm_set_isa(isa)
        assert _core.gemm_isa() == isa
        for threads in (1, 2, 3):
            _core.set_num_threads(threads)
            for M in M_SIZES:
                # The first M rows alone, and the same rows in reversed order (other positions).
                got = _core.op_matmul_wt(big[:M], w, packed=True)
                assert np.array_equal(got, full[:M]), f"isa={isa} threads={threads} M={M}"
                rev = _core.op_matmul_wt(np.ascontiguousarray(big[:M][::-1]), w, packed=True)
                assert np.array_equal(rev[::-1], full[:M]), f"reversed isa={isa} M={M}"


@pytest.mark.parametrize("act", ["none", "relu", "gelu", "quickgelu"])
def test_packed_linear_epilogue(rng, restore_runtime, act):
    M, C, K = 70, 45, 50
    x, w, b, r = rand(rng, M, C), rand(rng, K, C, scale=0.2), rand(rng, K), rand(rng, M, K)
    lin = F.linear(torch.from_numpy(x).double(), torch.from_numpy(w).double(),
                   torch.from_numpy(b).double()) + torch.from_numpy(r).double()
    ref = {"none": lambda t: t, "relu": torch.relu, "gelu": F.gelu,
           "quickgelu": lambda t: t * torch.sigmoid(1.702 * t)}[act](lin).numpy()
    outs = []
    for isa in ["portable"] + simd_isas():
        _core.gemm_set_isa(isa)
        for alias in (False, True):
            got = _core.op_linear(x, w, b, r, act=act, packed=True, residual_alias=alias)
            assert_close(got, ref, name=f"packed linear isa={isa} alias={alias}")
            outs.append(got)
        # A row's result does not depend on the rest of the batch, epilogue included.
        one = _core.op_linear(x[3:4], w, b, r[3:4], act=act, packed=True)
        assert np.array_equal(one[0], outs[-1][3])
    for got in outs[1:]:
        assert np.array_equal(got, outs[0]), "ISA paths / residual aliasing differ bitwise"
    naive = _core.op_linear(x, w, b, r, act=act, packed=True, naive=True)
    assert_close(naive, ref, name="naive linear on a packed weight")


def test_packed_gemm_allocation_failure(rng, restore_runtime):
    # The workspace (packed rows of `a`, partial sums of sliced chains) is one block, kept per
    # calling thread between calls: a call allocates it only when the thread has none as large.
    a, w = rand(rng, 50, 1100), rand(rng, 40, 1100)
    packed = _core.op_matrix_pack(w)
    _core.set_num_threads(2)

    def fresh():
        _core.gemm_release_workspace()
        return _core.op_gemm_packed(a, packed, 40)

    n = inject_alloc_failures(fresh, "packed GEMM")
    assert n == 1, n
    ref = _core.op_gemm_packed(a, packed, 40)
    _core.debug_fail_alloc(1)
    try:   # a kept workspace: nothing to allocate, nothing to fail
        assert np.array_equal(_core.op_gemm_packed(a, packed, 40), ref)
    finally:
        _core.debug_fail_alloc(0)
    _core.gemm_release_workspace()
    _core.debug_fail_alloc(1)
    try:
        with pytest.raises(MemoryError, match="out of memory for the workspace"):
            _core.op_gemm_packed(a, packed, 40)
    finally:
        _core.debug_fail_alloc(0)
    # A larger call needs a larger block; the smaller one is freed, not kept beside it.
    big = rand(rng, 300, 1100)
    assert np.array_equal(_core.op_gemm_packed(big, packed, 40),
                          _core.op_gemm_packed_naive(big, pack_reference(w), 40))


def test_packed_matmul_alpha_beta_strided_out(rng):
    M, C, K = 9, 20, 33
    a, w = rand(rng, M, C), rand(rng, K, C)
    base = rand(rng, M, 2 * K)
    out = base.copy()
    view = out[:, 5:5 + K]
    res = _core.op_matmul_wt(a, w, alpha=0.5, beta=2.0, out=view, packed=True)
    ref = 0.5 * (a.astype(np.float64) @ w.astype(np.float64).T) + 2.0 * base[:, 5:5 + K]
    assert_close(res, ref, name="alpha/beta into a strided view")
    assert np.array_equal(out[:, :5], base[:, :5]) and np.array_equal(out[:, 5 + K:], base[:, 5 + K:])


def test_packed_zero_sizes(rng):
    w = rand(rng, 4, 3)
    assert _core.op_linear(np.zeros((0, 3), np.float32), w, packed=True).shape == (0, 4)
    b = rand(rng, 4)
    got = _core.op_linear(np.zeros((2, 0), np.float32), np.zeros((4, 0), np.float32), b,
                          act="relu", packed=True)
    assert np.array_equal(got, np.maximum(np.broadcast_to(b, (2, 4)), 0))


def test_isa_selection_errors(restore_runtime):
    with pytest.raises(ValueError, match="'sse9'"):
        _core.gemm_set_isa("sse9")
    with pytest.raises(TypeError, match="int"):
        _core.gemm_set_isa(3)
    for isa in ("avx2", "avx512"):
        if isa in simd_isas():
            assert _core.gemm_set_isa(isa) == isa
        else:
            with pytest.raises(Exception, match="does not support"):
                _core.gemm_set_isa(isa)
    # auto picks the widest kernels the CPU has.
    expected = (["portable"] + simd_isas())[-1]
    assert _core.gemm_set_isa("auto") == expected
    with pytest.raises(ValueError, match="packed must have shape"):
        _core.op_gemm_packed_naive(np.zeros((2, 3), np.float32), np.zeros((1, 3, NR), np.float32), 20)


def test_fma_peak_probe_rates_and_arguments(restore_runtime):
    """_core.op_fma_peak (ovs_fma_peak), the ceiling bench_image.py reports towers against: on
    every ISA this CPU runs, at 1 and 2 threads, a finite positive rate below any core's
    (~400 GFLOP/s a thread: 2 FMA pipes x 16 lanes x 2 FLOPs x 6 GHz; a loop optimised away
    would time ~0 s and give orders of magnitude more); bad arguments raise."""
    for isa in ["portable"] + simd_isas():
        _core.gemm_set_isa(isa)
        for threads in (1, 2):
            g = _core.op_fma_peak(threads, 2_000_000)
            assert np.isfinite(g) and 0.0 < g < 1000.0 * threads, (isa, threads, g)
    for threads, iters in ((0, 10), (-1, 10), (1, 0), (1, -5)):
        with pytest.raises(ValueError, match="fma_peak"):
            _core.op_fma_peak(threads, iters)
    with pytest.raises(TypeError):
        _core.op_fma_peak(1.5, 10)
