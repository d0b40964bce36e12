"""The label stage (ovs_seg_labels keeps per low-resolution cell only the classes that can win
there) against its naive twin (every class at every pixel): labels must be identical, bit for
bit, including ties, near-ties, all-equal logits, non-finite values and the background threshold.
"""
import numpy as np
import pytest

from ovs import _core

SIZES = [(7, 9, 50, 61), (20, 30, 97, 83), (1, 1, 5, 5), (1, 8, 3, 40), (33, 17, 200, 100),
         (12, 12, 12, 12), (40, 30, 20, 15)]


def _both(lr, H, W, **kw):
    fast = _core.seg_labels(lr, H, W, **kw)
    naive = _core.seg_labels_naive(lr, H, W, **kw)
    bad = np.argwhere(fast != naive)
    assert not bad.size, (f"{len(bad)} pixels differ, first at {tuple(bad[0])}: fast "
                          f"{fast[tuple(bad[0])]} naive {naive[tuple(bad[0])]} ({lr.shape} -> {H}x{W}, {kw})")
    return fast


def _cases(rng, C, h, w):
    noise = rng.standard_normal((C, h, w)).astype(np.float32)
    smooth_grid = rng.standard_normal((C, max(h // 4, 1), max(w // 4, 1))).astype(np.float32) * 0.03
    smooth = _core.seg_upsample(smooth_grid, h, w, logit_scale=1.0, softmax=False)
    ties = np.round(noise * 2) / 2
    near = noise.copy()
    near[1] = near[0]
    near[2] = np.nextafter(near[0], np.float32(np.inf))
    near[-1] = np.nextafter(near[0], np.float32(-np.inf))
    return {"noise": noise, "smooth": smooth, "ties": ties, "equal": np.zeros_like(noise),
            "near-ties": near}


@pytest.mark.parametrize("C", [3, 10, 151])
@pytest.mark.parametrize("size", SIZES)
def test_labels_equal_naive(C, size):
    h, w, H, W = size
    rng = np.random.default_rng(C * 1000 + h)
    for name, lr in _cases(rng, C, h, w).items():
        _both(lr, H, W)
        _both(lr, H, W, logit_scale=40.0, bg_threshold=0.3, bg_label=-1)
        _both(lr, H, W, logit_scale=50.0, bg_threshold=0.05, bg_label=0)
        _both(lr * 10, H, W, logit_scale=100.0, bg_threshold=0.9, bg_label=-1)


@pytest.mark.parametrize("C", [16, 24, 40, 151])
@pytest.mark.parametrize("size", [(48, 64, 37, 50), (30, 44, 29, 43), (64, 80, 16, 20), (17, 90, 9, 31)])
def test_downsampled_labels_equal_naive(C, size):
    """Fewer output pixels than cells (an image smaller than the processing size): from 16
    classes (24 with bg_threshold) the blocks' and cells' candidates, most cells without a pixel
    of their own; integer and non-integer factors, one much thinner than the other."""
    h, w, H, W = size
    rng = np.random.default_rng(C * 7 + h)
    for name, lr in _cases(rng, C, h, w).items():
        _both(lr, H, W)
        _both(lr, H, W, logit_scale=40.0, bg_threshold=0.3, bg_label=-1)
        _both(lr * 10, H, W, logit_scale=100.0, bg_threshold=0.9, bg_label=C)


def test_bg_threshold_decisions_close_to_the_threshold():
    """Pixels whose top probability sits right at the threshold take the exact path."""
    rng = np.random.default_rng(3)
    lr = rng.standard_normal((20, 10, 12)).astype(np.float32) * 0.01
    naive = _core.seg_labels_naive(lr, 90, 96, logit_scale=40.0)
    probs = _core.seg_upsample(lr, 90, 96, logit_scale=40.0, softmax=True).max(axis=0)
    for thr in np.quantile(probs, [0.1, 0.5, 0.9]):
        labels = _both(lr, 90, 96, logit_scale=40.0, bg_threshold=float(thr), bg_label=-1)
        assert 0 < (labels == -1).mean() < 1
        assert np.array_equal(labels[labels >= 0], naive[labels >= 0])


@pytest.mark.parametrize("shape,out,nan,pinf,ninf", [
    ((6, 8, 9), (64, 72), (0, 0, 0), (3, 4, 4), (5, 7, 8)),
    ((50, 30, 44), (121, 177), (3, 17, 33), (10, 8, 8), (20, 29, 43)),  # several blocks
    # few classes at under 3 output pixels per cell: labels_bg_rows with bg_threshold
    ((10, 8, 9), (12, 13), (0, 0, 0), (3, 4, 4), (5, 7, 8)),
    ((20, 30, 44), (45, 66), (3, 17, 33), (10, 8, 8), (19, 29, 43)),
])
def test_non_finite_cells_fall_back_to_every_class(shape, out, nan, pinf, ninf):
    rng = np.random.default_rng(shape[0])
    lr = rng.standard_normal(shape).astype(np.float32)
    lr[nan], lr[pinf], lr[ninf] = np.nan, np.inf, -np.inf
    if shape[0] > 6:
        lr[:, 0:2, 20:23] = np.inf  # inf - inf in every class of a few cells
    _both(lr, *out)
    _both(lr, *out, logit_scale=40.0, bg_threshold=0.5, bg_label=-1)
    # spread probabilities: background nearly everywhere, except where a NaN makes the naive
    # kernel's sum NaN (1 / NaN < threshold is false: the argmax stays)
    _both(lr * 0.001, *out, logit_scale=40.0, bg_threshold=0.5, bg_label=-1)


def test_many_classes_large_output():
    """847 classes (ADE-847) at a large output: the regime the cell bound is for."""
    rng = np.random.default_rng(5)
    grid = (rng.standard_normal((847, 6, 8)) * 0.03 + rng.standard_normal((847, 1, 1)) * 0.02).astype(np.float32)
    lr = _core.seg_upsample(grid, 48, 64, logit_scale=1.0, softmax=False)
    _both(lr, 480, 640, logit_scale=40.0)
    _both(lr, 480, 640, logit_scale=40.0, bg_threshold=0.2, bg_label=-1)


# ---- the block level (8 x 8 cells): bounds across block edges, spikes, odd sizes, threads
BLOCK_SIZES = [(37, 29, 150, 121), (17, 64, 35, 300), (1, 30, 5, 200), (30, 1, 200, 5), (40, 30, 41, 30),
               (9, 9, 100, 100), (24, 40, 24, 41)]


def _spiky(rng, C, h, w):
    """Smooth logits where single values (often on block-edge rows / columns, shared by two
    blocks) of random classes jump above every other class: the block bound must keep them."""
    lr = rng.standard_normal((C, h, w)).astype(np.float32) * 0.01
    lr += rng.standard_normal((C, 1, 1)).astype(np.float32) * 0.05
    for _ in range(12):
        k = rng.integers(C)
        y = min(8 * rng.integers(0, h // 8 + 1), h - 1) if rng.random() < 0.6 else rng.integers(h)
        x = min(8 * rng.integers(0, w // 8 + 1), w - 1) if rng.random() < 0.6 else rng.integers(w)
        lr[k, y, x] = lr[:, y, x].max() + np.float32(rng.choice([1e-6, 1e-3, 0.5]))
    return lr


@pytest.mark.parametrize("size", BLOCK_SIZES)
def test_block_bounds_equal_naive(size):
    h, w, H, W = size
    rng = np.random.default_rng(h * 100 + w)
    cases = dict(_cases(rng, 40, h, w), spiky=_spiky(rng, 40, h, w), spiky_many=_spiky(rng, 300, h, w))
    for name, lr in cases.items():
        _both(lr, H, W)
        _both(lr, H, W, logit_scale=40.0, bg_threshold=0.3, bg_label=-1)
        _both(lr, H, W, logit_scale=100.0, bg_threshold=0.02, bg_label=7)


def test_spike_class_wins_where_it_peaks():
    """A class that exceeds the rest at one low-resolution value only (on a block corner row and
    column) is the label at the output pixel closest to it."""
    rng = np.random.default_rng(8)
    lr = rng.standard_normal((200, 33, 41)).astype(np.float32) * 0.01
    lr[123, 16, 24] = 1.0
    labels = _both(lr, 132, 164)
    assert labels[16 * 4 + 1, 24 * 4 + 1] == 123 and (labels == 123).sum() < 200


def test_background_blocks_and_close_calls_in_large_maps():
    """Many classes: whole blocks and cells below the threshold (the shortcut), and thresholds at
    quantiles of the true top probability (the exact path near the threshold)."""
    rng = np.random.default_rng(10)
    grid = (rng.standard_normal((120, 5, 7)) * 0.05 + rng.standard_normal((120, 1, 1)) * 0.03).astype(np.float32)
    lr = _core.seg_upsample(grid, 40, 56, logit_scale=1.0, softmax=False)
    probs = _core.seg_upsample(lr, 160, 224, logit_scale=40.0, softmax=True).max(axis=0)
    for thr in [*np.quantile(probs, [0.02, 0.5, 0.98]), 0.99]:
        labels = _both(lr, 160, 224, logit_scale=40.0, bg_threshold=float(thr), bg_label=-1)
        assert np.array_equal(labels == -1, probs < thr) or abs((labels == -1).mean() - (probs < thr).mean()) < 1e-3


def test_thread_count_does_not_change_labels():
    import ovs

    rng = np.random.default_rng(11)
    lr = _spiky(rng, 150, 50, 70)
    before = ovs.get_num_threads()
    try:
        out = {}
        for t in (1, 2):
            ovs.set_num_threads(t)
            out[t] = (_core.seg_labels(lr, 230, 310), _core.seg_labels(lr, 230, 310, logit_scale=40.0, bg_threshold=0.2))
    finally:
        ovs.set_num_threads(before)
    assert all(np.array_equal(a, b) for a, b in zip(out[1], out[2]))
    _both(lr, 230, 310, logit_scale=40.0, bg_threshold=0.2)


def test_thresholds_at_pixel_probabilities_take_the_exact_sum():
    """bg_threshold equal (to float precision) to pixels' own top probabilities: the brackets
    cannot decide there and the naive kernel's double sum must."""
    rng = np.random.default_rng(12)
    grid = (rng.standard_normal((30, 4, 5)) * 0.05).astype(np.float32)
    lr = _core.seg_upsample(grid, 24, 30, logit_scale=1.0, softmax=False)
    probs = _core.seg_upsample(lr, 96, 120, logit_scale=40.0, softmax=True).max(axis=0)
    for y, x in [(0, 0), (50, 61), (95, 119), (33, 7)]:
        _both(lr, 96, 120, logit_scale=40.0, bg_threshold=float(probs[y, x]), bg_label=-1)
        _both(lr, 96, 120, logit_scale=40.0, bg_threshold=float(np.nextafter(probs[y, x], np.float32(1))), bg_label=-1)


@pytest.mark.parametrize("C", [3, 10, 31])
def test_cells_background_nowhere_take_the_argmax(C):
    """With bg_threshold, a cell whose every candidate's term at its cell maximum (and the dropped
    classes' bracket) keeps the sum below 1 / bg_threshold is background nowhere: one candidate
    fills its pixels, several take the argmax's row runs (>= 3 output pixels per cell). Thresholds
    from low (most cells decided so) to high, and at pixels' own top probabilities, among them
    pixels on the low-resolution grid (a corner, where the cell maximum is reached exactly)."""
    rng = np.random.default_rng(20 + C)
    grid = (rng.standard_normal((C, 5, 7)) * 0.05 + rng.standard_normal((C, 1, 1)) * 0.02).astype(np.float32)
    lr = _core.seg_upsample(grid, 20, 28, logit_scale=1.0, softmax=False)
    H, W = 100, 140   # 5 output pixels per cell
    probs = _core.seg_upsample(lr, H, W, logit_scale=40.0, softmax=True).max(axis=0)
    thresholds = [*np.quantile(probs, [0.01, 0.3, 0.7, 0.99]), 1.0 / C + 1e-3]
    thresholds += [float(probs[y, x]) for y, x in [(2, 2), (52, 67), (97, 137)]]
    for thr in thresholds:
        labels = _both(lr, H, W, logit_scale=40.0, bg_threshold=float(thr), bg_label=-1)
        assert 0 <= (labels == -1).mean() <= 1
    _both(lr * 3, H, W, logit_scale=100.0, bg_threshold=0.5, bg_label=C)


def test_exp_behind_the_softmax_brackets_is_within_its_budget():
    """The bg_threshold brackets bound exp with ops_expf and a 3e-5 relative slack of which the
    float arguments' rounding takes ~1.05e-5 (pipeline.c, exp_up / exp_lo): ops_expf itself must
    stay far below the rest. Read through op_softmax of rows (x, 0), whose ratio of outputs is
    ops_expf(x) up to two roundings, against float64 exp over the brackets' range [-87, 0]."""
    x = np.concatenate([np.linspace(-87.0, 0.0, 200001), -np.logspace(-8, np.log10(87.0), 2001)])
    x = x.astype(np.float32)
    sm = _core.op_softmax(np.stack([x, np.zeros_like(x)], axis=1))
    got = sm[:, 0].astype(np.float64) / sm[:, 1].astype(np.float64)
    rel = np.abs(got / np.exp(x.astype(np.float64)) - 1.0)
    assert rel.max() < 1e-6, f"ops_expf relative error {rel.max():.2e}"


# ---------------------------------------------------------------- the windows' average
# Segmenter.logits averages its windows' upsampled (C, gh, gw) logits; ovs_seg_window_average does
# it separably per class (bitwise equal to its element-by-element twin) and is what Segmenter.logits
# calls. Window grids as mmseg's slide_inference lays them out (ovs_seg_logits).
def _grid(Hp, Wp, crop, stride, p):
    """(origins (n, 2), (gh, gw), (wh, ww), (h, w)) of ovs_seg_logits' windows."""
    if crop <= 0:
        h, w, orig = Hp, Wp, [(0, 0)]
    else:
        gh_ = max(Hp - crop + stride - 1, 0) // stride + 1
        gw_ = max(Wp - crop + stride - 1, 0) // stride + 1
        orig = []
        for i in range(gh_):
            for j in range(gw_):
                y2, x2 = min(i * stride + crop, Hp), min(j * stride + crop, Wp)
                orig.append((max(y2 - crop, 0), max(x2 - crop, 0)))
        h, w = min(crop, Hp), min(crop, Wp)
    wh, ww = -(-h // p) * p, -(-w // p) * p
    return np.array(orig, np.int64), (wh // p, ww // p), (wh, ww), (h, w)


def _upsample64(plane, wh, ww):
    """Bilinear (align_corners=False) upsampling in float64, numpy only: an independent reference."""
    def taps(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        l1 = src - i0
        return i0, i1, 1.0 - l1, l1
    y0, y1, a0, a1 = taps(plane.shape[0], wh)
    x0, x1, b0, b1 = taps(plane.shape[1], ww)
    p = plane.astype(np.float64)
    rows = p[y0] * a0[:, None] + p[y1] * a1[:, None]
    return rows[:, x0] * b0 + rows[:, x1] * b1


WINDOW_GRIDS = [  # Hp, Wp, crop, stride, patch
    (336, 336, 224, 112, 16), (336, 522, 224, 112, 16), (448, 336, 336, 112, 16), (97, 400, 224, 112, 16),
    (50, 61, 32, 19, 16), (146, 300, 224, 112, 32), (29, 31, 0, 0, 16), (64, 64, 0, 0, 32), (17, 5, 8, 3, 4)]


@pytest.mark.parametrize("grid", WINDOW_GRIDS)
@pytest.mark.parametrize("C", [1, 5, 37])
def test_window_average_equals_twin(grid, C):
    Hp, Wp, crop, stride, p = grid
    origins, (gh, gw), (wh, ww), (h, w) = _grid(Hp, Wp, crop, stride, p)
    rng = np.random.default_rng(C + Hp)
    smalls = rng.standard_normal((len(origins), C, gh, gw)).astype(np.float32)
    smalls[..., 0, 0] = -0.0  # signed zeros keep their bits
    args = (origins, Hp, Wp, wh, ww, h, w)
    fast = _core.seg_window_average(smalls, *args)
    naive = _core.seg_window_average(smalls, *args, naive=True)
    assert fast.shape == (C, Hp, Wp)
    assert fast.tobytes() == naive.tobytes(), "separable average differs from its twin in some bit"
    # independent float64 reference: mmseg's slide_inference (upsample, crop, sum, / count)
    acc = np.zeros((C, Hp, Wp))
    cnt = np.zeros((Hp, Wp))
    for (y, x), sm in zip(origins, smalls):
        for k in range(C):
            acc[k, y:y + h, x:x + w] += _upsample64(sm[k], wh, ww)[:h, :w]
        cnt[y:y + h, x:x + w] += 1
    ref = acc / cnt
    assert np.abs(fast - ref).max() <= 1e-5 * max(np.abs(ref).max(), 1.0)


def test_window_average_threads_and_nonfinite():
    import ovs
    origins, (gh, gw), (wh, ww), (h, w) = _grid(200, 150, 96, 40, 16)
    rng = np.random.default_rng(3)
    smalls = rng.standard_normal((len(origins), 9, gh, gw)).astype(np.float32)
    smalls[0, 2, 1, 1] = np.nan
    smalls[-1, 4, 0, 0] = np.inf
    args = (origins, 200, 150, wh, ww, h, w)
    old = ovs.get_num_threads()
    try:
        ovs.set_num_threads(1)
        one = _core.seg_window_average(smalls, *args)
        ovs.set_num_threads(2)
        two = _core.seg_window_average(smalls, *args)
    finally:
        ovs.set_num_threads(old)
    naive = _core.seg_window_average(smalls, *args, naive=True)
    assert one.tobytes() == two.tobytes() == naive.tobytes()
    assert np.isnan(one[2]).any() and np.isinf(one[4]).any() and np.isfinite(one[0]).all()


def test_window_average_rejects_bad_windows():
    sm = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(Exception, match="leaves the"):
        _core.seg_window_average(sm, np.array([[0, 0], [10, 0]]), 16, 16, 16, 16, 16, 16)
    with pytest.raises(Exception, match="in no window"):
        _core.seg_window_average(sm, np.array([[0, 0], [0, 0]]), 16, 20, 16, 16, 16, 16)
    with pytest.raises(ValueError, match="origins"):
        _core.seg_window_average(sm, np.array([[0, 0]]), 16, 16, 16, 16, 16, 16)
    with pytest.raises(Exception, match="inconsistent"):
        _core.seg_window_average(sm, np.array([[0, 0], [0, 0]]), 16, 16, 8, 8, 16, 16)


@pytest.mark.parametrize("grid", [(336, 336, 224, 112, 16), (97, 400, 224, 112, 16), (50, 61, 32, 19, 16),
                                  (29, 31, 0, 0, 16), (17, 5, 8, 3, 4)])
@pytest.mark.parametrize("C", [2, 7, 151])
def test_labels_with_written_bounds_equal(grid, C):
    """The block bounds taken while the windows' average is written (Segmenter.labels' path) give
    the labels seg_labels gives from its own streaming pass, on every adversarial case, with and
    without the background threshold, up- and downsampled."""
    Hp, Wp, crop, stride, p = grid
    origins, (gh, gw), (wh, ww), (h, w) = _grid(Hp, Wp, crop, stride, p)
    rng = np.random.default_rng(C * 7 + Hp)
    n = len(origins)
    noise = rng.standard_normal((n, C, gh, gw)).astype(np.float32)
    near = noise.copy()
    near[:, 1] = near[:, 0]
    near[:, -1] = np.nextafter(near[:, 0], np.float32(np.inf))
    smooth = (noise * 0.03 + rng.standard_normal((1, C, 1, 1)) * 0.02).astype(np.float32)
    cases = {"noise": noise, "ties": np.round(noise * 2) / 2, "equal": np.zeros_like(noise),
             "near": near, "smooth": smooth}
    nan = noise.copy()
    nan[0, 1, 0, 0] = np.nan
    cases["nan"] = nan
    for name, sm in cases.items():
        lr, bounds = _core.seg_window_average(sm, origins, Hp, Wp, wh, ww, h, w, bounds=True)
        assert lr.tobytes() == _core.seg_window_average(sm, origins, Hp, Wp, wh, ww, h, w).tobytes()
        for H, W in [(Hp * 2 + 1, Wp * 3 - 1), (max(Hp // 3, 1), max(Wp // 2, 1)), (Hp, Wp)]:
            for kw in ({}, dict(logit_scale=40.0, bg_threshold=0.3, bg_label=0),
                       dict(logit_scale=100.0, bg_threshold=0.9)):
                ref = _core.seg_labels(lr, H, W, **kw)
                got = _core.seg_labels_bounded(lr, bounds, H, W, **kw)
                assert np.array_equal(got, ref), f"{name} {H}x{W} {kw}: {(got != ref).sum()} labels differ"


def test_labels_bounded_rejects_foreign_sizes():
    lr = np.zeros((3, 20, 20), np.float32)
    with pytest.raises(ValueError, match="bounds"):
        _core.seg_labels_bounded(lr, np.zeros(5, np.float32), 40, 40)
    with pytest.raises(Exception, match="no block bounds"):
        _core.seg_window_average(np.zeros((1, 3, 2, 2), np.float32), np.zeros((1, 2), np.int64), 32, 32, 32, 32, 32, 32,
                                 naive=True, bounds=True)


def test_row_runs_with_crossings_and_near_ties():
    """Large upsampling (each cell's row runs pruned to the classes that can win along them):
    ramps that cross inside cells, a copy one ulp above, a constant at the crossing value."""
    h, w = 6, 8
    x = np.arange(w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.arange(h, dtype=np.float32)[:, None].repeat(w, 1)
    a = x * np.float32(0.1) + y * np.float32(0.01)
    b = (np.float32(w - 1) - x) * np.float32(0.1)
    lr = np.stack([a, b, np.nextafter(a, np.float32(np.inf)), np.full_like(a, 0.35), b.copy()]).astype(np.float32)
    for H, W in [(60, 80), (13, 41), (31, 64)]:
        for scale in (1.0, 1e-6, 1e6):
            _both(lr * np.float32(scale), H, W)


def test_cells_dominated_pairwise_at_large_upsampling():
    """8 or more output pixels per cell: a candidate that the cell's leading class beats at all
    four corners by more than the rounding leaves (cell_dominated_out). Copies of the leading
    values lowered by 0 (a tie), one ulp and a few block margins, and a ramp crossing them inside
    cells, at several scales: the naive labels, bit for bit."""
    rng = np.random.default_rng(11)
    h, w = 20, 36
    grid = (rng.standard_normal((4, 5, 9)) * 0.03).astype(np.float32)
    base = _core.seg_upsample(grid, h, w, logit_scale=1.0, softmax=False)
    top = base.max(0)
    m = 16 * np.finfo(np.float32).eps * float(np.abs(base).max())   # about the block margin
    # the lowered copies first: where their interpolated value rounds to the leader's, the
    # tie goes to them (the lower class index)
    planes = [np.nextafter(top, np.float32(-np.inf))[None]]
    for d in (0.0, 1e-9, m, 2 * m, 2.9 * m, 3.1 * m, 4 * m, 10 * m):
        planes.append((top - np.float32(d))[None])
    planes.append(base)
    x = np.arange(w, dtype=np.float32)[None, :].repeat(h, 0)
    planes.append((top + (x - np.float32(w / 2)) * np.float32(m))[None])   # crosses inside cells
    lr = np.concatenate(planes).astype(np.float32)
    for H, W in [(200, 360), (161, 290), (400, 700)]:
        for scale in (1.0, 1e-4, 1e4):
            _both(np.ascontiguousarray(lr * np.float32(scale)), H, W)


def test_allocation_failures_are_clean_errors():
    """Every C allocation of the label stage failed in turn (its per-thread block and cell
    buffers, and the cell candidate lists that grow past their first size: near-tied logits
    make every class a candidate of every cell): MemoryError or the same labels, never a crash."""
    from conftest import inject_alloc_failures

    rng = np.random.default_rng(7)
    lr = (1.0 + 1e-7 * rng.standard_normal((40, 20, 27))).astype(np.float32)
    for thr in (0.0, 0.3):
        n = inject_alloc_failures(lambda: _core.seg_labels(lr, 61, 83, logit_scale=40.0, bg_threshold=thr),
                                  f"seg_labels bg_threshold={thr}")
        assert n >= 2
