"""Two builds of the direct (implicit-GEMM) conv side by side in one process, per layer shape.

    python benchmarks/ab_conv.py --base /work/main [--new .] [--rounds 30] [--shape C,K,H,R,stride,pad,res ...]

Loads the `_core` extension of each checkout (built in place) into the same process and times
`_core.op_conv2d(..., algo="direct", act="relu")` on a conv-packed weight, alternating the two
builds call by call (each sample: one warm call, then 4 calls on one output array minus one
call, so that the fresh output array's page faults cancel), at one thread: the calling thread's
CPU time, the minimum over the rounds. The input and residual are 64-byte aligned, as a
model's activations are (NumPy's large arrays are not: on Intel cores their split vector loads
cost up to a tenth of a 1x1 conv; the output array still is NumPy's). Interleaving per call keeps the two builds under
the same machine load, which makes the ratio usable on a shared machine where absolute figures
are not. A shape is C,K,H,R,stride,pad,res: C -> K channels, an H x H map, an R x R kernel,
res 1 for a residual input (the bottleneck's conv3).
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

# the large-map stride-1 3x3 convs (RN50 448^2 stem, DeepLabV3 512^2) and RN50's residual 1x1s
DEFAULT_SHAPES = ["32,32,112,3,1,1,0", "32,32,160,3,1,1,0", "32,32,224,3,1,1,0",
                  "32,32,256,3,1,1,0", "32,64,224,3,1,1,0", "64,64,112,3,1,1,0",
                  "64,256,56,1,1,0,1", "64,256,112,1,1,0,1", "128,512,28,1,1,0,1",
                  "256,1024,14,1,1,0,1"]


REPEAT = 4   # calls per timed sample (see main)


def load_core(checkout: str):
    """The `_core` extension built in place in `checkout`, as a module of its own."""
    found = glob.glob(str(Path(checkout) / "ovs" / "_core*.so"))
    if not found:
        raise SystemExit(f"no built ovs/_core*.so under {checkout} (build it in place first)")
    spec = importlib.util.spec_from_file_location("_core", found[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.set_num_threads(1)
    return mod


def aligned(a: np.ndarray, align: int = 64) -> np.ndarray:
    """A copy of `a` whose data starts on an `align`-byte boundary, as the models' activations
    (arena blocks) do; NumPy's large arrays start 16 bytes past one, so every 64-byte vector
    load of them straddles two cache lines (on Intel cores a split load costs two)."""
    buf = np.empty(a.nbytes + align, dtype=np.uint8)
    off = (-buf.ctypes.data) % align
    out = buf[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="checkout of the reference build")
    ap.add_argument("--new", default=".", help="checkout of the build under test")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--shape", action="append", help="C,K,H,R,stride,pad,res (repeatable)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ovs  # noqa: F401  (loads the shared libraries both extensions link)

    cores = {"base": load_core(args.base), "new": load_core(args.new)}
    rng = np.random.default_rng(0)
    items = []
    for s in args.shape or DEFAULT_SHAPES:
        try:
            C, K, H, R, st, pad, r = map(int, s.split(","))
        except ValueError:
            ap.error(f"--shape {s!r} is not C,K,H,R,stride,pad,res")
        x = aligned(rng.standard_normal((1, C, H, H), dtype=np.float32))
        w = rng.standard_normal((K, C, R, R), dtype=np.float32) * 0.1
        b = rng.standard_normal(K, dtype=np.float32)
        P = (H + 2 * pad - R) // st + 1
        res = aligned(rng.standard_normal((1, K, P, P), dtype=np.float32)) if r else None
        calls = {}
        for name, core in cores.items():
            pk = core.op_conv2d_pack(w).reshape(-1)
            calls[name] = (lambda n, core=core, x=x, w=w, b=b, res=res, pk=pk, st=st, pad=pad:
                           core.op_conv2d(x, w, b, res, stride=st, padding=pad, act="relu",
                                          prepacked=pk, algo="direct", repeat=n))
        ya, yb = calls["base"](1), calls["new"](1)
        if not np.array_equal(ya, yb):
            print(f"note: {s}: the two builds' outputs differ (max {np.abs(ya - yb).max():.3g})")
        label = f"{C}->{K} {R}x{R}{'/' + str(st) if st > 1 else ''} @{H}" + (" +res" if r else "")
        items.append((label, 2 * K * C * R * R * P * P, calls))
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):
        for label, _, calls in items:
            for name, f in calls.items():
                # repeat=REPEAT calls on one output array minus a single call: the output's
                # allocation and first-touch page faults (a fresh array per Python call) cancel
                f(1)
                t0 = time.thread_time()
                f(REPEAT)
                t1 = time.thread_time()
                f(1)
                t = ((t1 - t0) - (time.thread_time() - t1)) / (REPEAT - 1)
                if t > 0:
                    best[(label, name)] = min(best.get((label, name), t), t)
    print(f"1 thread, thread CPU time, min of {args.rounds} interleaved rounds "
          f"(load average {os.getloadavg()[0]:.1f}); base {args.base}, new {args.new}")
    print("| shape | base ms (GFLOP/s) | new ms (GFLOP/s) | base/new |\n|---|---|---|---|")
    for label, flops, _ in items:
        a, b = best[(label, "base")], best[(label, "new")]
        print(f"| {label} | {a * 1e3:.3f} ({flops / a / 1e9:.0f}) | {b * 1e3:.3f} "
              f"({flops / b / 1e9:.0f}) | {a / b:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
