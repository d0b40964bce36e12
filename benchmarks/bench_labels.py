"""The label stage alone: low-resolution logits (C, h, w) -> label map (H, W).

    python benchmarks/bench_labels.py [--threads 2] [--repeat 5] [--classes 10,150,847] [--outputs 512x683,2048x2731]

Logits are smooth like real ones: per class a random 21x28 patch grid (std 0.03 plus a per-class
offset of std 0.02, the spread of CLIP cosine logits), bilinearly upsampled to 336x448 (the
processing size of a 3:4 photo at short side 336) by the windows' average segment() runs
(_core.seg_window_average, one window), which also takes the label stage's per-block class
bounds as it writes them. Outputs 512x683 and 2048x2731 (the photo's own size), with and without
bg_threshold. Compared in one interleaved run:
  fast    _core.seg_labels_bounded (candidate classes per low-resolution cell, from the bounds
          taken while the logits were written: the label stage of segment(); exact)
  stream  _core.seg_labels         (the same, taking the bounds in its own pass over (C, h, w):
          the label stage of a user's seg_labels(logits) call)
  naive   _core.seg_labels_naive   (every class at every pixel; what ovs did before)
  torch   F.interpolate(bilinear, align_corners=False) + argmax, if torch is installed
          (skipped above 150 classes at 2048: it needs C x H x W floats, 19 GB for 847)
Every repetition checks fast == stream == naive; above 150 classes at 2048 the naive twin
(seconds per call) runs once, untimed, for that check. Ratios are medians of per-repetition
ratios; the summary lines give the fast kernel's 847-class time over its 10-class time (target
<= 1.5; calls of both alternated in one loop, the median of the pairs' ratios), and the writing
pass's extra time for the bounds (window average with and without them, timed separately). bench_segment.py's "labels" group measures the same calls
(smooth_logits, label_call) at the sizes segment() meets for 512^2 and 2048^2 images.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import _harness as H


LOWRES = (336, 448)      # processing size of a 3:4 photo at short side 336
SCALE, THRESHOLDS = 40.0, (0.0, 0.3)


def smooth_logits(C: int, h: int, w: int, rng, bounds: bool = True, core=None):
    """(C, h, w) float32 logits smooth like real ones: per class a random 21x28 patch grid (std
    0.03 plus a per-class offset of std 0.02), bilinearly upsampled to (h, w) by segment()'s
    windows' average (one window); with bounds, (logits, their block bounds) as segment() takes
    them while writing the logits. core: the `_core` extension that writes them (default ovs's;
    ab_labels.py passes each build's own)."""
    if core is None:
        from ovs import _core as core

    grid = (rng.standard_normal((C, 21, 28)) * 0.03 + rng.standard_normal((C, 1, 1)) * 0.02).astype(np.float32)
    return core.seg_window_average(grid[None], np.zeros((1, 2), np.int64), h, w, h, w, h, w, bounds=bounds)


def label_call(lr, H_: int, W_: int, thr: float, naive: bool = False, bounds=None):
    """The label stage as segment() runs it (logit scale 40): with the bounds taken while the
    logits were written (bounds given), streaming its own (bounds None), or the naive twin."""
    from ovs import _core

    if bounds is not None:
        return lambda: _core.seg_labels_bounded(lr, bounds, H_, W_, logit_scale=SCALE, bg_threshold=thr)
    f = _core.seg_labels_naive if naive else _core.seg_labels
    return lambda: f(lr, H_, W_, logit_scale=SCALE, bg_threshold=thr)


def writing_cost(C: int, h: int, w: int, rng, repeat: int) -> dict:
    """Median seconds of the windows' average with and without the bounds (one window, 21x28 ->
    (h, w)): what taking the bounds adds to the pass that writes the logits."""
    from ovs import _core

    grid = (rng.standard_normal((1, C, 21, 28)) * 0.03).astype(np.float32)
    org = np.zeros((1, 2), np.int64)
    t = {False: [], True: []}
    for _ in range(repeat):
        for b in (False, True):
            t0 = time.perf_counter()
            _core.seg_window_average(grid, org, h, w, h, w, h, w, bounds=b)
            t[b].append(time.perf_counter() - t0)
    return {"average_s": statistics.median(t[False]), "average_and_bounds_s": statistics.median(t[True])}


def class_scaling(data: dict, outputs, pairs: int) -> list:
    """The fast label stage with 847 classes over 10, as the median of per-pair ratios of calls
    alternated in one loop (the cases above run one class count after another, so a drift of the
    machine's speed between them would enter their ratio)."""
    res = []
    if not (10 in data and 847 in data):
        return res
    for H_, W_ in outputs:
        for thr in THRESHOLDS:
            calls = {C: label_call(lr, H_, W_, thr, bounds=b) for C, (lr, b) in data.items()}
            t = {C: [] for C in calls}
            for _ in range(pairs):
                for C, f in calls.items():
                    t0 = time.perf_counter()
                    f()
                    t[C].append(time.perf_counter() - t0)
            ratio = statistics.median(a / b for a, b in zip(t[847], t[10]))
            res.append({"out": [H_, W_], "bg_threshold": thr, "pairs": pairs,
                        "median_s": {C: statistics.median(v) for C, v in t.items()}, "ratio_847_over_10": ratio})
            print(f"{H_}x{W_} thr={thr}: 847 classes / 10 classes = {ratio:.2f} (median of {pairs} "
                  f"alternated pairs; target 1.5)", flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--classes", default="10,150,847")
    ap.add_argument("--outputs", default="512x683,2048x2731", help="output sizes HxW, comma-separated")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    try:
        outputs = [tuple(int(v) for v in o.lower().split("x")) for o in args.outputs.split(",")]
        if not all(len(o) == 2 and min(o) >= 1 for o in outputs):
            raise ValueError
    except ValueError:
        raise SystemExit(f"--outputs: expected sizes like 512x683,2048x2731, got {args.outputs!r}") from None
    _, torch = H.in_process_engines(args.threads)
    rng = np.random.default_rng(0)
    cases, data = [], {}
    for C in [int(c) for c in args.classes.split(",")]:
        lr, bounds = smooth_logits(C, *LOWRES, rng)
        if C in (10, 847):
            data[C] = lr, bounds
        written = writing_cost(C, *LOWRES, rng, args.repeat)
        print(f"C={C:4d} windows' average {LOWRES[0]}x{LOWRES[1]}: {written['average_s']:.3f}s, with the "
              f"bounds {written['average_and_bounds_s']:.3f}s", flush=True)
        for H_, W_ in outputs:
            for thr in THRESHOLDS:
                big = C * H_ * W_ > 150 * 2048 * 2731
                sides = {"fast": label_call(lr, H_, W_, thr, bounds=bounds),
                         "stream": label_call(lr, H_, W_, thr)}
                if not big:
                    sides["naive"] = label_call(lr, H_, W_, thr, naive=True)
                if torch is not None and thr == 0 and C * H_ * W_ <= 150 * 2048 * 2731:
                    t = torch.from_numpy(lr)[None]
                    sides["torch"] = lambda: torch.nn.functional.interpolate(
                        t, size=(H_, W_), mode="bilinear", align_corners=False)[0].argmax(0)
                times = {k: [] for k in sides}
                for _ in range(args.repeat):
                    out = {}
                    for k, f in sides.items():  # interleaved
                        t0 = time.perf_counter()
                        out[k] = f()
                        times[k].append(time.perf_counter() - t0)
                    assert np.array_equal(out["fast"], out["stream"]), "fast and streaming labels differ"
                    if not big:
                        assert np.array_equal(out["fast"], out["naive"]), "fast and naive labels differ"
                if big:  # the naive twin takes seconds here: checked once, untimed
                    assert np.array_equal(out["fast"], label_call(lr, H_, W_, thr, naive=True)()), \
                        "fast and naive labels differ"
                rec = {"classes": C, "out": [H_, W_], "bg_threshold": thr, "writing": written,
                       "median_s": {k: statistics.median(v) for k, v in times.items()},
                       "fast_over": {k: statistics.median(a / b for a, b in zip(times["fast"], v))
                                     for k, v in times.items() if k != "fast"}}
                cases.append(rec)
                print(f"C={C:4d} {H_}x{W_} thr={thr}: " + "  ".join(
                    f"{k} {v:.3f}s" for k, v in rec["median_s"].items()) + "  fast/" + " fast/".join(
                    f"{k} {v:.3f}" for k, v in rec["fast_over"].items()), flush=True)
    scaling = class_scaling(data, outputs, max(3 * args.repeat, 15))
    report = {"benchmark": "labels", "machine": H.machine_info(args.threads, {}), "cases": cases,
              "scaling": scaling}
    print("wrote", H.write_json(report, args.out, "bench_labels"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
