"""ovs_attention_folded (csrc/ops/attention.c): one query per sequence with the key and value
projections folded into the query side, as the RN50 attention pool and the transformers' last
block run it. Checked against the unfolded attention written out in float64 NumPy
(k = tok Wk^T + bk, v = tok Wv^T + bv, softmax(q k^T * scale) v per head), with and without a
per-sequence key count (the text tower's causal end-of-text row), at 1 and 2 threads (bitwise
equal), and its argument errors."""
from __future__ import annotations

import numpy as np
import pytest

import ovs
from ovs import _core


def problem(rng, N, T, C):
    f = lambda *s, scale=1.0: (rng.standard_normal(s) * scale).astype(np.float32)
    return dict(tok=f(N, T, C), q=f(N, C), wk=f(C, C, scale=C ** -0.5), bk=f(C, scale=0.1),
                wv=f(C, C, scale=C ** -0.5), bv=f(C, scale=0.1))


def unfolded(p, heads, scale, nkeys=None):
    tok, q = p["tok"].astype(np.float64), p["q"].astype(np.float64)
    N, T, C = tok.shape
    F = C // heads
    k = tok @ p["wk"].astype(np.float64).T + p["bk"]
    v = tok @ p["wv"].astype(np.float64).T + p["bv"]
    out = np.zeros((N, C))
    for n in range(N):
        t = T if nkeys is None else nkeys[n]
        for e in range(heads):
            h = slice(e * F, (e + 1) * F)
            s = k[n, :t, h] @ q[n, h] * scale
            w = np.exp(s - s.max())
            out[n, h] = (w / w.sum()) @ v[n, :t, h]
    return out


@pytest.mark.parametrize("N,T,C,heads", [(1, 50, 64, 4), (3, 7, 64, 2), (2, 197, 128, 8), (4, 1, 32, 2)])
@pytest.mark.parametrize("causal", [False, True])
def test_folded_equals_unfolded(N, T, C, heads, causal):
    rng = np.random.default_rng(N * 1000 + T)
    p = problem(rng, N, T, C)
    scale = (C // heads) ** -0.5
    nkeys = np.array([1 + (n * 5) % T for n in range(N)], np.int64) if causal else None
    ref = unfolded(p, heads, scale, nkeys)
    try:
        outs = []
        for threads in (1, 2):
            ovs.set_num_threads(threads)
            outs.append(_core.op_attention_folded(**p, heads=heads, scale=scale, nkeys=nkeys))
    finally:
        ovs.set_num_threads(2)
    assert np.array_equal(outs[0], outs[1]), "the thread count changed the result"
    err = np.abs(outs[0] - ref).max() / np.abs(ref).max()
    assert err <= 1e-5, f"max relative difference {err:.2e}"


def test_folded_argument_errors():
    rng = np.random.default_rng(0)
    p = problem(rng, 2, 5, 48)
    with pytest.raises(ValueError, match="multiple of 16"):   # heads of 12 channels
        _core.op_attention_folded(**p, heads=4, scale=0.3)
    p = problem(rng, 2, 5, 32)
    for bad in ([0, 3], [1, 6]):
        with pytest.raises(ValueError, match="attends"):
            _core.op_attention_folded(**p, heads=2, scale=0.3, nkeys=np.array(bad, np.int64))
    with pytest.raises(ValueError, match="nkeys"):
        _core.op_attention_folded(**p, heads=2, scale=0.3, nkeys=np.array([1], np.int64))
    with pytest.raises(ValueError, match="wk"):
        _core.op_attention_folded(**{**p, "wk": p["wk"][:16]}, heads=2, scale=0.3)
