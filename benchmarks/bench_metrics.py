"""Confusion-matrix accumulation: ovs's C kernel vs detectron2's NumPy bincount, same maps.

    python benchmarks/bench_metrics.py [--threads 1] [--repeat 7]

Target (issue 13): >= 200 Mpixel/s on one core (the default --threads 1).
Cases (4 Mpixel each, 2048 x 2048, generated from a fixed seed on both sides):
  ade150_blocky   uint8 ground truth (150 classes, 5% ignore 255) made of 16x16-pixel blocks,
                  int32 prediction equal to it on 70% of the blocks: the run structure of real
                  label maps;
  ade150_random   i.i.d. labels per pixel (the worst case for run-length merging);
  ade847_blocky   uint16 ground truth, 847 classes, ignore 65535 (ADE20K-847 / PC-459 style).
  ours  ovs.metrics.ConfusionMatrix.update(pred, gt)   (C kernel, conf[gt, pred] += 1)
  peer  detectron2 SemSegEvaluator.process's arithmetic: gt = gt.astype(int); gt[gt == ignore]
        = C; conf += np.bincount((C + 1) * pred + gt, minlength=(C + 1)**2).reshape(...)
The check compares the two matrices (ours is the transpose of detectron2's).
"""
from __future__ import annotations

import argparse
import sys
import time

import _harness as H

SIDE = 2048
CASES = {"ade150_blocky": (150, 255, "uint8", True), "ade150_random": (150, 255, "uint8", False),
         "ade847_blocky": (847, 65535, "uint16", True)}


def make_maps(name: str):
    import numpy as np

    C, ignore, dtype, blocky = CASES[name]
    rng = np.random.default_rng(13)
    if blocky:
        g = rng.integers(0, C, (SIDE // 16, SIDE // 16))
        g[rng.random(g.shape) < 0.05] = ignore
        p = np.where(rng.random(g.shape) < 0.7, np.where(g == ignore, 0, g), rng.integers(0, C, g.shape))
        gt = np.kron(g, np.ones((16, 16), np.int64))
        pred = np.kron(p, np.ones((16, 16), np.int64))
    else:
        gt = rng.integers(0, C, (SIDE, SIDE))
        gt[rng.random(gt.shape) < 0.05] = ignore
        pred = rng.integers(0, C, (SIDE, SIDE))
    return gt.astype(dtype), pred.astype(np.int32), C, ignore


def setup(side: str, group: str, params: dict):
    import numpy as np

    gt, pred, C, ignore = make_maps(group)
    if side == "ours":
        from ovs.metrics import ConfusionMatrix

        def run():
            cm = ConfusionMatrix(C, ignore)
            cm.update(pred, gt)
            return cm.matrix
        return {group: H.Case(run)}

    def run_d2():
        conf = np.zeros((C + 1, C + 1), np.int64)
        g = np.array(gt, dtype=int)
        g[g == ignore] = C
        conf += np.bincount((C + 1) * pred.reshape(-1).astype(int) + g.reshape(-1),
                            minlength=conf.size).reshape(conf.shape)
        return conf.T.copy()  # rows ground truth, as ours
    return {group: H.Case(run_d2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    H.common_args(ap, repeat=7)
    ap.set_defaults(threads=1)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    groups = [H.Group(name, {}, repeated=[name], meta={name: {"pixels": SIDE * SIDE, "classes": CASES[name][0]}})
              for name in CASES]
    groups = H.select_groups(groups, args.cases)
    res = H.run(__file__, groups, args)
    px = SIDE * SIDE
    notes = [f"{c['case']}: Mpixel/s ours {px / c['ours']['median_s'] / 1e6:.0f}, "
             f"peer {px / c['peer']['median_s'] / 1e6:.0f} (target: ours >= 200 on one core)"
             for c in res["cases"]]
    return H.finish("bench_metrics", args, res, t0, {"side": SIDE}, notes)


if __name__ == "__main__":
    sys.exit(main())
