"""Semantic-segmentation metrics exactly as detectron2's SemSegEvaluator computes them.

    >>> import numpy as np, ovs.metrics as M
    >>> gt = np.array([[0, 1], [255, 1]], np.uint8)
    >>> pred = np.array([[0, 0], [1, 1]], np.int32)
    >>> conf = M.confusion(pred, gt, num_classes=2, ignore_label=255)   # int64 (3, 3)
    >>> s = M.scores(conf)                # mIoU, fwIoU, mACC, pACC in percent, IoU per class
    >>> round(s["mIoU"], 6), s["IoU"].tolist()
    (50.0, [50.0, 50.0])

The confusion matrix is (C+1, C+1) int64, ROWS = GROUND TRUTH, COLUMNS = PREDICTION (the
transpose of detectron2's internal `_conf_matrix`, whose rows are predictions). Ground-truth
pixels equal to `ignore_label` are counted in row C (detectron2 maps them to label C); they,
like column C (never used: predictions must be class indices), take no part in any score.
Counting runs in C (csrc/metrics/confusion.c); matrices of separate images, threads or
machines are simply added (`ConfusionMatrix.update` / `merge`, or `+`).

Scores (`scores`), as fractions times 100 like detectron2 reports them:
- IoU_c = TP_c / (GT_c + PRED_c - TP_c) for classes with ground-truth pixels (GT_c > 0); NaN for
  the others, including classes that are only predicted;
- ACC_c = TP_c / GT_c (NaN where GT_c = 0); mACC the mean over classes present in the GT;
- pACC = sum TP / sum GT; fwIoU = sum over present classes of IoU_c * GT_c / sum GT.
- mIoU has two conventions (the trap that moved FC-CLIP's PC-459 score from 18.2 to 13.8):
  * ``"present"`` (default) — mean over classes present in the ground truth: detectron2 since
    commit f3c1bc1 (July 2022) up to today;
  * ``"union"`` — the same sum divided by the number of classes present in the ground truth OR
    the prediction, i.e. a class that is predicted but absent from every ground-truth map counts
    as IoU 0: detectron2 v0.6 (the last release wheel, Nov 2021) and mmsegmentation's
    ``nanmean(intersect / union)``. With many classes (PC-459, A-847) "union" is much lower.
  `scores` returns both: ``mIoU`` (the chosen convention) and ``mIoU_present`` / ``mIoU_union``.
Empty cases follow detectron2's NumPy arithmetic: a mean over nothing is NaN, fwIoU over no
class is 0.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _core

__all__ = ["confusion", "scores", "ConfusionMatrix", "CONVENTIONS", "format_table"]

CONVENTIONS = {"present": 0, "union": 1}
_LABEL_DTYPES = (np.uint8, np.uint16, np.int32, np.int64)


def _as_labels(a, what: str) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{what} must be a numpy array of integer labels, got {type(a).__name__}")
    if a.dtype.kind not in "iub":
        raise TypeError(f"{what} must have an integer dtype, got {a.dtype}")
    if a.dtype.type in _LABEL_DTYPES:
        return a
    if a.dtype.kind == "u" and a.dtype.itemsize == 8 and a.size and a.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{what} holds the value {int(a.max())}, too large for a label")
    return a.astype(np.int64)


def _check_int(value, what: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


class ConfusionMatrix:
    """A streaming (C+1, C+1) int64 confusion matrix: `update(pred, gt)` per image, `merge` or
    `+` partial matrices (other threads, processes, machines), `scores()` at the end."""

    def __init__(self, num_classes: int, ignore_label: int | None = 255):
        self.num_classes = _check_int(num_classes, "num_classes", 1)
        if ignore_label is not None:
            ignore_label = _check_int(ignore_label, "ignore_label")
        self.ignore_label = ignore_label
        self.matrix = np.zeros((self.num_classes + 1,) * 2, np.int64)

    def update(self, pred, gt, *, naive: bool = False) -> "ConfusionMatrix":
        """Add one prediction / ground-truth pair of the same shape (the prediction at the
        ground truth's resolution)."""
        pred = _as_labels(pred, "pred")
        gt = _as_labels(gt, "gt")
        # An ignore label no uint/int value can equal: any out-of-range GT value is an error.
        ignore = self.ignore_label if self.ignore_label is not None else np.iinfo(np.int64).min
        _core.confusion_accumulate(self.matrix, pred, gt, self.num_classes, ignore, naive=naive)
        return self

    def merge(self, other) -> "ConfusionMatrix":
        m = other.matrix if isinstance(other, ConfusionMatrix) else np.asarray(other)
        if m.shape != self.matrix.shape or m.dtype.kind not in "iu":
            raise ValueError(f"cannot merge a {m.dtype} {m.shape} matrix into a {self.matrix.shape} one")
        self.matrix += m.astype(np.int64)
        return self

    def __add__(self, other) -> "ConfusionMatrix":
        out = ConfusionMatrix(self.num_classes, self.ignore_label)
        out.matrix = self.matrix.copy()
        return out.merge(other)

    def scores(self, convention: str = "present") -> dict[str, Any]:
        return scores(self.matrix, convention)


def confusion(pred, gt, num_classes: int, ignore_label: int | None = 255, *, naive: bool = False) -> np.ndarray:
    """int64 (C+1, C+1) confusion matrix of one or a stack of label maps: rows ground truth,
    columns prediction; ground-truth `ignore_label` pixels in row C. `pred` and `gt` are integer
    arrays of one shape, pred values in 0..C-1 and gt values in 0..C-1 or `ignore_label`
    (anything else raises ValueError naming the pixel and value). `naive=True` runs the plain
    reference kernel."""
    return ConfusionMatrix(num_classes, ignore_label).update(pred, gt, naive=naive).matrix


def scores(conf, convention: str = "present") -> dict[str, Any]:
    """detectron2 SemSegEvaluator scores of a (C+1, C+1) confusion matrix, in percent:
    ``mIoU``, ``fwIoU``, ``mACC``, ``pACC``, ``IoU`` and ``ACC`` (float64 (C,), NaN for classes
    absent from the ground truth), ``mIoU_present`` and ``mIoU_union`` (both conventions, see
    the module docstring; ``mIoU`` is the one named by `convention`), ``classes_present``,
    ``classes_seen`` (in ground truth or prediction) and ``convention``."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(map(repr, CONVENTIONS))}, got {convention!r}")
    m = np.asarray(conf)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError(f"confusion matrix must be square (C+1, C+1) with C >= 1, got shape {m.shape}")
    if m.dtype.kind not in "iu":
        raise TypeError(f"confusion matrix must hold integer counts, got dtype {m.dtype}")
    m = np.ascontiguousarray(m, dtype=np.int64)
    C = m.shape[0] - 1
    out = {}
    for name, code in CONVENTIONS.items():
        miou, fwiou, macc, pacc, present, seen, iou, acc = _core.confusion_scores(m, C, code)
        out[name] = miou
    res: dict[str, Any] = {
        "mIoU": 100 * out[convention],
        "fwIoU": 100 * fwiou,
        "mACC": 100 * macc,
        "pACC": 100 * pacc,
        "IoU": 100 * iou,
        "ACC": 100 * acc,
        "mIoU_present": 100 * out["present"],
        "mIoU_union": 100 * out["union"],
        "classes_present": int(present),
        "classes_seen": int(seen),
        "convention": convention,
    }
    return res


def format_table(result: dict[str, Any], class_names: list[str] | None = None) -> str:
    """A Markdown table of the summary scores and the per-class IoU / ACC (NaN shown as "-")."""
    def f(v):
        return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.2f}"
    lines = ["| mIoU | fwIoU | mACC | pACC | mIoU (union convention) |", "|---|---|---|---|---|",
             f"| {f(result['mIoU'])} | {f(result['fwIoU'])} | {f(result['mACC'])} | {f(result['pACC'])} "
             f"| {f(result['mIoU_union'])} |", "", "| id | class | IoU | ACC |", "|---|---|---|---|"]
    iou, acc = list(result["IoU"]), list(result["ACC"])
    for k in range(len(iou)):
        name = class_names[k] if class_names else str(k)
        lines.append(f"| {k} | {name} | {f(float(iou[k]) if iou[k] is not None else None)} "
                     f"| {f(float(acc[k]) if acc[k] is not None else None)} |")
    return "\n".join(lines) + "\n"
