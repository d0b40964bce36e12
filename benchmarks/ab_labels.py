"""Two builds of the label stage side by side in one process: 847 / 10 classes, per build.

    python benchmarks/ab_labels.py --base /work/main [--new .] [--rounds 41] [--outputs 512x683 2048x2731]
                                   [--classes 10 847] [--bg-threshold 0.3]

Loads the `_core` extension of each checkout (built in place) into the same process, writes with
each build its own logits and block bounds (bench_labels.smooth_logits: a 21x28 patch grid per
class upsampled to 336x448, 10 and 847 classes, the same grid for both builds) and times
`seg_labels_bounded` (segment()'s label stage, bench_labels' logit scale, no
bg_threshold unless --bg-threshold is given) at one thread by the calling thread's CPU time, the
calls of a round in turn.
On a shared VM the wall time of separate processes moved by +-25% from run to run (Zen 4,
2026-12-06), more than the changes to be measured; interleaving in one process and the CPU clock
leave a few percent. Each round checks that the two builds give the same labels. Prints per
build the medians and minima, the median of the rounds' ratios of the last class count to the
first (847 / 10 by default: issue 16's target is 1.5) and the median per-round ratio new / base
at each class count.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from ab_conv import load_core
from bench_labels import LOWRES, SCALE, smooth_logits

CLASSES = (10, 847)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="checkout of the reference build")
    ap.add_argument("--new", default=".", help="checkout of the build under test")
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--outputs", nargs="+", default=["512x683", "2048x2731"], help="HxW output sizes")
    ap.add_argument("--classes", type=int, nargs="+", default=list(CLASSES), help="class counts")
    ap.add_argument("--bg-threshold", type=float, default=0.0,
                    help="segment()'s bg_threshold (default 0: argmax only)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    if min(args.classes) < 1:
        ap.error("--classes must be >= 1")
    if not 0.0 <= args.bg_threshold <= 1.0:
        ap.error("--bg-threshold must be in [0, 1]")
    classes = list(args.classes)
    sizes = []
    for o in args.outputs:
        try:
            H, W = map(int, o.lower().split("x"))
        except ValueError:
            ap.error(f"--outputs {o!r} is not HxW")
        if H < 1 or W < 1:
            ap.error(f"--outputs {o!r}: sizes must be positive")
        sizes.append((H, W))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ovs  # noqa: F401  (loads the shared libraries both extensions link)

    cores = {"base": load_core(args.base), "new": load_core(args.new)}
    h, w = LOWRES
    data = {(name, C): smooth_logits(C, h, w, np.random.default_rng(C), core=core)
            for C in classes for name, core in cores.items()}
    print(f"1 thread, thread CPU time, {args.rounds} interleaved rounds (load average "
          f"{os.getloadavg()[0]:.1f}); base {args.base}, new {args.new}; logits {h}x{w}; "
          f"bg_threshold {args.bg_threshold}")
    print("| output | build | " + " | ".join(f"{C} classes ms (min)" for C in classes) +
          f" | {classes[-1]} / {classes[0]} |\n|---|---|" + "---|" * (len(classes) + 1))
    ratios = []
    for H, W in sizes:
        times = {key: [] for key in data}
        for _ in range(args.rounds):
            labels = {}
            for (name, C), (lr, bounds) in data.items():
                core = cores[name]
                t0 = time.thread_time()
                labels[name, C] = core.seg_labels_bounded(lr, bounds, H, W, logit_scale=SCALE,
                                                          bg_threshold=args.bg_threshold)
                times[name, C].append(time.thread_time() - t0)
            for C in classes:
                if not np.array_equal(labels["base", C], labels["new", C]):
                    raise SystemExit(f"{C} classes to {H}x{W}: the two builds' labels differ")
        for name in cores:
            a, b = times[name, classes[0]], times[name, classes[-1]]
            r = statistics.median(y / x for x, y in zip(a, b))
            cells = " | ".join(f"{statistics.median(times[name, C]) * 1e3:.2f} ({min(times[name, C]) * 1e3:.2f})"
                               for C in classes)
            print(f"| {H}x{W} | {name} | {cells} | {r:.2f} |")
        ratios.append(((H, W), {C: statistics.median(n / b for b, n in zip(times["base", C], times["new", C]))
                                for C in classes}))
    for (H, W), r in ratios:
        print(f"{H}x{W}: new / base " + ", ".join(f"{C} classes {v:.3f}" for C, v in r.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
