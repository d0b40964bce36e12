"""ovs.metrics against independent NumPy implementations of the published definitions:

* detectron2 SemSegEvaluator (detectron2/evaluation/sem_seg_evaluation.py): `process` builds the
  matrix with np.bincount((C+1) * pred + gt) after mapping ignored GT to C (so its rows are
  predictions; ours is the transpose); `evaluate` in two versions: today's (commit f3c1bc1,
  July 2022: mean over classes present in GT) and v0.6's (denominator = classes in GT or
  prediction), written out below line by line;
* mmsegmentation's `intersect_and_union` / `total_intersect_and_union` + `mean_iou`
  (mmseg/core/evaluation/metrics.py): ignore pixels dropped, histograms of the intersection,
  prediction and label; IoU = intersect / union, mIoU = nanmean.

Where they agree: the confusion counts (bit for bit), per-class IoU of classes present in the
GT, ACC, pACC (mmseg aAcc), mACC. Where they differ (asserted below): a class predicted but
absent from the GT has IoU NaN in detectron2 and 0 in mmseg, so mmseg's mIoU equals detectron2
v0.6's ("union" convention), not today's ("present"). Float summaries: NumPy sums pairwise, our C
sequentially, so means agree to 1e-12 relative; per-class values are single divisions of equal
integers and agree exactly.
"""
from __future__ import annotations

import numpy as np
import pytest

import ovs
from ovs import metrics as M


# ------------------------------------------------------------------ independent references
def d2_confusion(pred, gt, C, ignore):
    """detectron2 SemSegEvaluator.process, transposed to rows = GT."""
    conf = np.zeros((C + 1, C + 1), dtype=np.int64)
    pred = np.array(pred, dtype=int)
    gt = np.array(gt, dtype=int)
    gt[gt == ignore] = C
    conf += np.bincount((C + 1) * pred.reshape(-1) + gt.reshape(-1), minlength=conf.size).reshape(conf.shape)
    return conf.T.copy()


def d2_evaluate(conf_gt_rows, version="main"):
    """detectron2 SemSegEvaluator.evaluate (main or v0.6) on a rows-GT matrix, in percent."""
    m = conf_gt_rows.T  # detectron2's layout: rows prediction
    C = m.shape[0] - 1
    acc = np.full(C, np.nan, dtype=float)
    iou = np.full(C, np.nan, dtype=float)
    tp = m.diagonal()[:-1].astype(float)
    pos_gt = np.sum(m[:-1, :-1], axis=0).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        class_weights = pos_gt / np.sum(pos_gt)
        pos_pred = np.sum(m[:-1, :-1], axis=1).astype(float)
        acc_valid = pos_gt > 0
        acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
        union = pos_gt + pos_pred - tp
        if version == "main":
            iou_valid = np.logical_and(acc_valid, union > 0)
            iou[iou_valid] = tp[iou_valid] / union[iou_valid]
            miou = np.sum(iou[iou_valid]) / np.sum(iou_valid)
            fiou = np.sum(iou[iou_valid] * class_weights[iou_valid])
        else:  # v0.6
            iou_valid = (pos_gt + pos_pred) > 0
            iou[acc_valid] = tp[acc_valid] / union[acc_valid]
            miou = np.sum(iou[acc_valid]) / np.sum(iou_valid)
            fiou = np.sum(iou[acc_valid] * class_weights[acc_valid])
        macc = np.sum(acc[acc_valid]) / np.sum(acc_valid)
        pacc = np.sum(tp) / np.sum(pos_gt)
    return {"mIoU": 100 * miou, "fwIoU": 100 * fiou, "mACC": 100 * macc, "pACC": 100 * pacc,
            "IoU": 100 * iou, "ACC": 100 * acc}


def mmseg_total(preds, gts, C, ignore):
    """mmseg total_intersect_and_union + mean_iou/mean_accuracy (NumPy port of the torch code:
    torch.histc(x, bins=C, min=0, max=C-1) == bincount for integer labels in range)."""
    ai = np.zeros(C); au = np.zeros(C); ap = np.zeros(C); al = np.zeros(C)
    for pred, label in zip(preds, gts):
        mask = label != ignore
        pred = pred[mask].astype(np.int64)
        label = label[mask].astype(np.int64)
        intersect = pred[pred == label]
        a_i = np.bincount(intersect, minlength=C)[:C].astype(float)
        a_p = np.bincount(pred, minlength=C)[:C].astype(float)
        a_l = np.bincount(label, minlength=C)[:C].astype(float)
        ai += a_i; ap += a_p; al += a_l; au += a_p + a_l - a_i
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = ai / au
        acc = ai / al
        return {"aAcc": 100 * ai.sum() / al.sum(), "IoU": 100 * iou, "Acc": 100 * acc,
                "mIoU": 100 * np.nanmean(iou) if np.isfinite(iou).any() else np.nan,
                "mAcc": 100 * np.nanmean(acc) if np.isfinite(acc).any() else np.nan}


def assert_scores(ours, ref, rtol=1e-12):
    np.testing.assert_array_equal(ours["IoU"], ref["IoU"])  # NaN where NaN, else bit-equal
    np.testing.assert_array_equal(ours["ACC"], ref["ACC"])
    for k in ("mIoU", "fwIoU", "mACC", "pACC"):
        a, b = ours[k], ref[k]
        assert (np.isnan(a) and np.isnan(b)) or abs(a - b) <= rtol * max(abs(b), 1e-300), (k, a, b)


# ------------------------------------------------------------------ cases
def random_case(rng, C, shape, gt_dtype, pred_dtype, ignore, p_ignore=0.1, absent=(), pred_only=()):
    gt = rng.integers(0, C, shape)
    for c in absent + pred_only:
        gt[gt == c] = (c + 1 + len(absent) + len(pred_only)) % C
    gt[rng.random(shape) < p_ignore] = ignore
    pred = rng.integers(0, C, shape)
    for c in absent:
        pred[pred == c] = (c + 1 + len(absent) + len(pred_only)) % C
    # predictions equal to the GT on half the pixels, so IoUs are not all tiny
    agree = (rng.random(shape) < 0.5) & (gt != ignore)
    pred[agree] = gt[agree]
    return pred.astype(pred_dtype), gt.astype(gt_dtype)


DTYPES = [(np.uint8, np.int32, 255), (np.uint16, np.int64, 65535), (np.int32, np.uint8, 255),
          (np.int64, np.uint16, -1), (np.uint8, np.int16, 255), (np.uint16, np.uint32, 65535)]


@pytest.mark.parametrize("gt_dtype,pred_dtype,ignore", DTYPES)
@pytest.mark.parametrize("C", [1, 2, 21, 150])
def test_random_parity(gt_dtype, pred_dtype, ignore, C):
    rng = np.random.default_rng(C * 7 + np.dtype(gt_dtype).itemsize)
    pred, gt = random_case(rng, C, (37, 53), gt_dtype, pred_dtype, ignore)
    ours = M.confusion(pred, gt, C, ignore)
    ref = d2_confusion(pred, gt, C, ignore)
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(M.confusion(pred, gt, C, ignore, naive=True), ref)
    assert ours.dtype == np.int64 and ours.shape == (C + 1, C + 1)
    assert ours[:, C].sum() == 0 and ours[C].sum() == (gt.astype(np.int64) == ignore).sum()
    s = M.scores(ours)
    assert_scores(s, d2_evaluate(ref, "main"))
    assert_scores(M.scores(ours, "union"), d2_evaluate(ref, "v0.6"))
    assert s["mIoU_present"] == s["mIoU"] and s["convention"] == "present"


def test_adversarial_cases():
    """All-ignore images, classes absent from the GT, predicted-only classes, perfect and
    all-wrong predictions: confusion and scores vs detectron2, accumulated over images."""
    rng = np.random.default_rng(0)
    C, ign = 12, 255
    images = []
    images.append((rng.integers(0, C, (9, 11)).astype(np.int32), np.full((9, 11), ign, np.uint8)))  # all ignore
    images.append(random_case(rng, C, (20, 30), np.uint8, np.int32, ign, absent=(3, 4), pred_only=(7,)))
    images.append(random_case(rng, C, (1, 1), np.uint8, np.int32, ign, p_ignore=0))               # one pixel
    g = rng.integers(0, C, (16, 16)).astype(np.uint8)
    g[g == 7] = 0
    images.append((g.astype(np.int32), g))                                                        # perfect
    images.append((((g.astype(np.int32) + 1) % C), g))                                            # all wrong
    images.append((np.zeros((0, 5), np.int32), np.zeros((0, 5), np.uint8)))                        # empty
    cm = M.ConfusionMatrix(C, ign)
    ref = np.zeros((C + 1, C + 1), np.int64)
    for pred, gt in images:
        one = M.confusion(pred, gt, C, ign)
        np.testing.assert_array_equal(one, d2_confusion(pred, gt, C, ign))
        cm.update(pred, gt)
        ref += d2_confusion(pred, gt, C, ign)
        for conv, ver in (("present", "main"), ("union", "v0.6")):
            assert_scores(M.scores(one, conv), d2_evaluate(d2_confusion(pred, gt, C, ign), ver))
    np.testing.assert_array_equal(cm.matrix, ref)
    s = cm.scores()
    assert_scores(s, d2_evaluate(ref, "main"))
    # class 7 is only ever predicted: NaN IoU, and the two conventions differ
    gt_counts, pred_counts = ref[:C, :C].sum(1), ref[:C, :C].sum(0)
    pred_only = np.flatnonzero((gt_counts == 0) & (pred_counts > 0))
    assert 7 in pred_only and np.isnan(s["IoU"][7])
    assert s["classes_seen"] > s["classes_present"]
    u = M.scores(ref, "union")
    assert u["mIoU"] < s["mIoU"]
    assert u["mIoU"] == pytest.approx(s["mIoU"] * s["classes_present"] / s["classes_seen"], rel=1e-12)


def test_all_ignore_scores_are_nan_like_detectron2():
    conf = M.confusion(np.zeros((4, 4), np.int32), np.full((4, 4), 255, np.uint8), 3, 255)
    s = M.scores(conf)
    ref = d2_evaluate(conf, "main")
    assert np.isnan(s["mIoU"]) and np.isnan(s["mACC"]) and np.isnan(s["pACC"]) and s["fwIoU"] == 0
    assert_scores(s, ref)
    assert np.isnan(s["IoU"]).all() and np.isnan(M.scores(conf, "union")["mIoU"])


def test_mmseg_agreement_and_documented_difference():
    rng = np.random.default_rng(5)
    C, ign = 30, 255
    preds, gts = [], []
    for i in range(4):
        p, g = random_case(rng, C, (24, 40), np.uint8, np.int64, ign, absent=(2, 9), pred_only=(11, 12))
        preds.append(p); gts.append(g)
    cm = M.ConfusionMatrix(C, ign)
    for p, g in zip(preds, gts):
        cm.update(p, g)
    ours, mm = cm.scores(), mmseg_total(preds, gts, C, ign)
    present = cm.matrix[:C, :C].sum(1) > 0
    np.testing.assert_array_equal(ours["IoU"][present], mm["IoU"][present])
    np.testing.assert_array_equal(ours["ACC"], mm["Acc"])
    assert ours["pACC"] == pytest.approx(mm["aAcc"], rel=1e-12)
    assert ours["mACC"] == pytest.approx(mm["mAcc"], rel=1e-12)
    only = (~present) & (cm.matrix[:C, :C].sum(0) > 0)
    assert only[11] and only[12]
    assert np.isnan(ours["IoU"][only]).all() and (mm["IoU"][only] == 0).all()  # the difference
    assert ours["mIoU_union"] == pytest.approx(mm["mIoU"], rel=1e-12)          # = detectron2 v0.6
    assert ours["mIoU"] > mm["mIoU"]


def test_layouts_fast_vs_naive_and_threads():
    """Non-contiguous, Fortran-order and multi-dimensional inputs; a map large enough for the
    threaded path equals the naive kernel and detectron2 bit for bit."""
    rng = np.random.default_rng(1)
    C = 150
    pred, gt = random_case(rng, C, (64, 80), np.uint8, np.int32, 255)
    ref = d2_confusion(pred, gt, C, 255)
    np.testing.assert_array_equal(M.confusion(np.asfortranarray(pred), np.asfortranarray(gt), C, 255), ref)
    big_p, big_g = random_case(rng, C, (128, 160), np.uint8, np.int32, 255)
    sub_p, sub_g = big_p[::2, ::2], big_g[::2, ::2]
    np.testing.assert_array_equal(M.confusion(sub_p, sub_g, C, 255), d2_confusion(sub_p, sub_g, C, 255))
    stack_p, stack_g = np.stack([pred, pred[::-1]]), np.stack([gt, gt[::-1]])
    np.testing.assert_array_equal(M.confusion(stack_p, stack_g, C, 255), 2 * ref)
    old = ovs.get_num_threads()
    try:
        ovs.set_num_threads(2)
        # blocky map of 2 Mpixel (above 4 * 151^2 and 2^18 per thread): the threaded path
        g = np.kron(rng.integers(0, C, (64, 128)), np.ones((32, 8), np.int64)).astype(np.uint8)
        g[rng.random(g.shape) < 0.02] = 255
        p = np.where(rng.random(g.shape) < 0.5, np.where(g == 255, 0, g), rng.integers(0, C, g.shape)).astype(np.int32)
        assert g.size >= 2 * 4 * (C + 1) ** 2
        fast = M.confusion(p, g, C, 255)
        np.testing.assert_array_equal(fast, M.confusion(p, g, C, 255, naive=True))
        np.testing.assert_array_equal(fast, d2_confusion(p, g, C, 255))
    finally:
        ovs.set_num_threads(old)


def test_merge_and_add():
    rng = np.random.default_rng(2)
    a, b = M.ConfusionMatrix(5, 255), M.ConfusionMatrix(5, 255)
    p1, g1 = random_case(rng, 5, (10, 10), np.uint8, np.int32, 255)
    p2, g2 = random_case(rng, 5, (7, 3), np.uint8, np.int32, 255)
    a.update(p1, g1); b.update(p2, g2)
    whole = d2_confusion(p1, g1, 5, 255) + d2_confusion(p2, g2, 5, 255)
    np.testing.assert_array_equal((a + b).matrix, whole)
    np.testing.assert_array_equal(a.merge(b.matrix).matrix, whole)
    with pytest.raises(ValueError, match=r"\(7, 7\)"):
        a.merge(np.zeros((7, 7), np.int64))


def test_bad_inputs():
    gt = np.zeros((3, 4), np.uint8)
    pred = np.zeros((3, 4), np.int32)
    gt[1, 2] = 9
    conf = np.zeros((6, 6), np.int64)
    cm = M.ConfusionMatrix(5, 255)
    with pytest.raises(ValueError, match=r"ground-truth label 9 at pixel 6 .*0\.\.4.*255"):
        cm.update(pred, gt)
    assert (cm.matrix == 0).all()  # unchanged after an error
    with pytest.raises(ValueError, match=r"ground-truth label 9"):
        M.confusion(pred, gt, 5, 255, naive=True)
    gt[1, 2] = 0
    pred[2, 3] = -1
    with pytest.raises(ValueError, match=r"predicted label -1 at pixel 11"):
        M.confusion(pred, gt, 5, 255)
    pred[2, 3] = 5
    with pytest.raises(ValueError, match=r"predicted label 5 at pixel 11"):
        M.confusion(pred, gt, 5, 255)
    with pytest.raises(ValueError, match=r"pred shape \(3, 5\) differs from gt shape \(3, 4\)"):
        M.confusion(np.zeros((3, 5), np.int32), gt, 5, 255)
    with pytest.raises(TypeError, match="float32"):
        M.confusion(pred.astype(np.float32), gt, 5, 255)
    with pytest.raises(TypeError, match="list"):
        M.confusion([[0]], gt, 5, 255)
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        M.confusion(pred, gt, 0, 255)
    with pytest.raises(TypeError, match="num_classes"):
        M.confusion(pred, gt, 2.5, 255)
    with pytest.raises(ValueError, match="convention"):
        M.scores(conf, "mean")
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        M.scores(np.zeros((2, 3), np.int64))
    with pytest.raises(TypeError, match="float64"):
        M.scores(np.zeros((3, 3)))
    neg = np.zeros((3, 3), np.int64); neg[1, 0] = -4
    with pytest.raises(ValueError, match=r"\(1, 0\) is negative \(-4\)"):
        M.scores(neg)
    # ignore_label=None: every GT value must be a class
    with pytest.raises(ValueError, match="ground-truth label 255"):
        M.confusion(np.zeros((1, 1), np.int32), np.full((1, 1), 255, np.uint8), 5, None)
    from ovs import _core
    with pytest.raises(TypeError, match="int64"):
        _core.confusion_accumulate(np.zeros((6, 6), np.int32), pred, gt, 5, 255)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.confusion_accumulate(np.zeros((6, 12), np.int64)[:, ::2], pred, gt, 5, 255)


def test_no_reference_leak():
    import sys
    pred = np.zeros((8, 8), np.int32); gt = np.zeros((8, 8), np.uint8)
    conf = np.zeros((4, 4), np.int64)
    from ovs import _core
    before = (sys.getrefcount(pred), sys.getrefcount(gt), sys.getrefcount(conf))
    for _ in range(1000):
        _core.confusion_accumulate(conf, pred, gt, 3, 255)
        _core.confusion_scores(conf, 3, 0)
    assert (sys.getrefcount(pred), sys.getrefcount(gt), sys.getrefcount(conf)) == before
    assert conf[0, 0] == 64 * 1000


def test_allocation_failure_is_a_clean_error():
    """The threaded path's private matrices come from ovs_calloc: a failed allocation raises
    MemoryError and leaves the matrix untouched."""
    from ovs import _core
    old = ovs.get_num_threads()
    try:
        ovs.set_num_threads(2)
        g = np.zeros((1024, 1024), np.uint8)
        p = np.zeros((1024, 1024), np.int32)
        conf = np.zeros((11, 11), np.int64)
        _core.debug_fail_alloc(1)
        try:
            with pytest.raises(MemoryError, match="private matrices"):
                _core.confusion_accumulate(conf, p, g, 10, 255)
        finally:
            _core.debug_fail_alloc(0)
        assert (conf == 0).all()
        _core.confusion_accumulate(conf, p, g, 10, 255)
        assert conf[0, 0] == g.size
    finally:
        ovs.set_num_threads(old)
