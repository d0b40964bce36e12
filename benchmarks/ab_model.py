"""Two builds' image towers side by side in one process: RN50 trunk / encode_image, ViT-B/16.

    python benchmarks/ab_model.py --base /work/main [--new .] [--cases rn50_224_trunk ...] [--threads 1 2] [--rounds 25]

Imports the `ovs` package of each checkout (each built in place) under its own name into the
same process, loads the same weights with each (the random-weight fixtures of bench_image.py,
or --weights), and times the two builds' calls alternately, call by call: at 1 thread by the
calling thread's CPU time, at more by the wall clock. A model-level counterpart of ab_conv.py and
ab_labels.py: on a shared VM, separate processes' times of a whole tower moved by 10-20% from
run to run (Zen 4, 2026-12-06), more than most changes to be measured; alternating in one
process leaves a few percent. Prints per case and thread count the two builds' medians and
minima, the median of the per-round ratios new / base, and the largest difference between the
two builds' outputs relative to the largest |output| (0 unless a change alters the rounding).

Cases: rn50_224_trunk, rn50_448_trunk (stem + layer1..4 to res5, as bench_image's trunk case;
the trunk takes any size, so 448 runs on the 224 model), rn50_224 and vitb16_224 (encode_image);
all by default.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import _harness as H
from bench_image import image_input

CASES = ("rn50_224_trunk", "rn50_448_trunk", "rn50_224", "vitb16_224")


def load_package(checkout: str, name: str):
    """The `ovs` package of `checkout` (its extension built in place), imported as `name`."""
    root = Path(checkout).resolve() / "ovs"
    if not list(root.glob("_core*.so")):
        raise SystemExit(f"no built ovs/_core*.so under {checkout} (build it in place first)")
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def case_call(pkg, case: str, weights: dict):
    """The timed call of `case` on a model that `pkg` loads."""
    model, size = case.split("_")[:2]
    size = int(size)
    m = pkg.load(weights[model], progress=False)
    x = image_input(size)
    if case.endswith("_trunk"):
        vis = m.visual
        return lambda: vis.forward(x, features=True, embed=False, stages=("res5",))["res5"]
    return lambda: m.encode_image(x, preprocess=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="checkout of the reference build")
    ap.add_argument("--new", default=".", help="checkout of the build under test")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--weights", action="append", default=[], metavar="DIR|NAME=FILE",
                    help="as bench_image.py's (default: the tests' random-weight fixtures)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or min(args.threads) < 1:
        ap.error("--rounds and --threads must be >= 1")
    weights = H.resolve_weights(args.weights, sorted({c.split("_")[0] for c in args.cases}))
    pkgs = {"base": load_package(args.base, "ovs_ab_base"), "new": load_package(args.new, "ovs_ab_new")}
    print(f"base {args.base}, new {args.new}; {args.rounds} alternated rounds per case")
    print("| case | threads | base ms med (min) | new ms med (min) | new / base | max rel diff |\n"
          "|---|---|---|---|---|---|")
    for case in args.cases:
        calls = {k: case_call(p, case, weights) for k, p in pkgs.items()}
        for threads in args.threads:
            for p in pkgs.values():
                p._core.set_num_threads(threads)
            clock = time.thread_time if threads == 1 else time.perf_counter
            for f in calls.values():   # warm: arenas, packed weights, page faults
                f(), f()
            t, out = {k: [] for k in calls}, {}
            for _ in range(args.rounds):
                for k, f in calls.items():
                    t0 = clock()
                    out[k] = np.asarray(f())
                    t[k].append(clock() - t0)
            ratio = statistics.median(n / b for b, n in zip(t["base"], t["new"]))
            diff = float(np.abs(out["new"] - out["base"]).max() / max(np.abs(out["base"]).max(), 1e-30))
            b, n = t["base"], t["new"]
            print(f"| {case} | {threads} | {statistics.median(b) * 1e3:.2f} ({min(b) * 1e3:.2f}) | "
                  f"{statistics.median(n) * 1e3:.2f} ({min(n) * 1e3:.2f}) | {ratio:.3f} | {diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
