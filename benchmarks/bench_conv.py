"""Stride-1 3x3 convolutions alone, per layer shape: Winograd F(2x2,3x3) and F(4x4,3x3) vs the
direct implicit GEMM (all ovs, csrc/ops/winograd.c and conv.c) vs PyTorch's conv2d.

    python benchmarks/bench_conv.py [--threads 1] [--repeat 7] [--cases rn50_224,rn50_448,deeplab_512]

The shapes are the stride-1 3x3 convs of CLIP RN50 at 224^2 and 448^2 (stem, and the first and
other blocks of each stage: ModifiedResNet puts its stride in an average pool, so every 3x3
after the stem's first is stride 1) and of DeepLabV3-OVS at 512^2 (stem, layer1..3, the
decoder's two 3x3 convs at 128x128), batch 1, padding 1, weights conv-packed as the models hold
them. Compared in one interleaved run, per repetition:
  winograd  _core.op_conv2d(..., algo="winograd")     F(2x2)   (ovs sides: output and scratch
                                                            kept across calls, out= / workspace=)
  winograd4 _core.op_conv2d(..., algo="winograd4")    F(4x4)
  direct    _core.op_conv2d(..., algo="direct")
  torch     torch.nn.functional.conv2d, if torch is installed
Every repetition also checks both Winograd sides against direct (max-normalised difference
<= 1e-5 for F(2x2), 2e-5 for F(4x4): float32 convs within ~2e-6 / ~1e-5 of float64 at these
widths). Each case says which path AUTO (the models' setting) takes for it
(_core.op_conv2d_auto_algo: direct, winograd or winograd4): the crossover this script
measures. Ratios ("X_over": side X's time over each other side's) are medians of
per-repetition ratios. On a shared machine read the CPU-time ratios ("cpu_over", process CPU
time: preemption by other processes does not inflate it).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import _harness as H

# name: (C, H, W, K) of a stride-1 3x3 conv, padding 1
CASES = {
    "rn50_224": {
        "stem2 32->32 @112": (32, 112, 112, 32), "stem3 32->64 @112": (32, 112, 112, 64),
        "layer1 64 @56": (64, 56, 56, 64), "layer2.0 128 @56": (128, 56, 56, 128),
        "layer2 128 @28": (128, 28, 28, 128), "layer3.0 256 @28": (256, 28, 28, 256),
        "layer3 256 @14": (256, 14, 14, 256), "layer4.0 512 @14": (512, 14, 14, 512),
        "layer4 512 @7": (512, 7, 7, 512)},
    "rn50_448": {
        "stem3 32->64 @224": (32, 224, 224, 64), "layer1 64 @112": (64, 112, 112, 64),
        "layer2.0 128 @112": (128, 112, 112, 128), "layer2 128 @56": (128, 56, 56, 128),
        "layer3.0 256 @56": (256, 56, 56, 256), "layer3 256 @28": (256, 28, 28, 256),
        "layer4.0 512 @28": (512, 28, 28, 512), "layer4 512 @14": (512, 14, 14, 512)},
    "deeplab_512": {
        "stem3 32->64 @256": (32, 256, 256, 64), "layer1 64 @128": (64, 128, 128, 64),
        "layer2 128 @64": (128, 64, 64, 128), "layer3 256 @32": (256, 32, 32, 256),
        "decoder 304->256 @128": (304, 128, 128, 256), "decoder 256 @128": (256, 128, 128, 256)},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ",".join(CASES))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    groups = args.cases.split(",")
    unknown = [g for g in groups if g not in CASES]
    if unknown:
        raise SystemExit(f"--cases: unknown {unknown}; choose from {','.join(CASES)}")
    _, torch = H.in_process_engines(args.threads)   # this checkout's ovs
    from ovs import _core

    rng = np.random.default_rng(0)
    cases = []
    for group in groups:
        for layer, (C, H_, W_, K) in CASES[group].items():
            x = rng.standard_normal((1, C, H_, W_)).astype(np.float32)
            w = (rng.standard_normal((K, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
            pk = _core.op_conv2d_pack(w, 1)
            # each side's output and input-copy scratch kept across calls, as a model's arena
            # (fresh arrays per call measured their page faults, more at 2 threads)
            ws = np.empty(_core.op_conv2d_scratch_floats(C, H_, W_, K, 3, 3, padding=1), np.float32)
            outs = {algo: np.empty((1, K, H_, W_), np.float32)
                    for algo in ("winograd", "winograd4", "direct")}
            sides = {algo: (lambda a=algo: _core.op_conv2d(x, w, padding=1, prepacked=pk, algo=a,
                                                          out=outs[a], workspace=ws))
                     for algo in ("winograd", "winograd4", "direct")}
            if torch is not None:
                tx, tw = torch.from_numpy(x), torch.from_numpy(w)
                sides["torch"] = lambda: torch.nn.functional.conv2d(tx, tw, padding=1)
            for f in sides.values():   # warm-up
                f()
            wall = {k: [] for k in sides}
            cpu = {k: [] for k in sides}
            for _ in range(args.repeat):
                out = {}
                for k, f in sides.items():   # interleaved
                    c0, t0 = time.process_time(), time.perf_counter()
                    out[k] = f()
                    wall[k].append(time.perf_counter() - t0)
                    cpu[k].append(time.process_time() - c0)
                for algo, bound in (("winograd", 1e-5), ("winograd4", 2e-5)):
                    diff = np.abs(out[algo] - out["direct"]).max() / np.abs(out["direct"]).max()
                    assert diff <= bound, f"{group} {layer}: {algo} vs direct {diff:.2e}"
            rec = {"group": group, "layer": layer, "shape": [C, H_, W_, K],
                   "gmac": 9 * C * K * H_ * W_ / 1e9,
                   "auto": _core.op_conv2d_auto_algo(1, C, H_, W_, K, 3, 3, 1),
                   "median_s": {k: statistics.median(v) for k, v in wall.items()},
                   "cpu_median_s": {k: statistics.median(v) for k, v in cpu.items()},
                   "fast_over": {f"{s}/{k}": statistics.median(a / b for a, b in zip(wall[s], v))
                                 for s in ("winograd", "winograd4")
                                 for k, v in wall.items() if k != s},
                   "cpu_over": {f"{s}/{k}": statistics.median(a / b for a, b in zip(cpu[s], v))
                                for s in ("winograd", "winograd4")
                                for k, v in cpu.items() if k != s}}
            cases.append(rec)
            shown = ("winograd/direct", "winograd4/direct", "winograd4/winograd")
            print(f"{group:11s} {layer:22s} auto={rec['auto']:9s} "
                  + "  ".join(f"{k} {v * 1e3:8.2f} ms" for k, v in rec["median_s"].items())
                  + "  " + " ".join(f"{k} {rec['fast_over'][k]:.2f}" for k in shown)
                  + "  (cpu: " + " ".join(f"{rec['cpu_over'][k]:.2f}" for k in shown) + ")",
                  flush=True)
    report = {"benchmark": "conv", "machine": H.machine_info(args.threads, {}), "cases": cases}
    print("wrote", H.write_json(report, args.out, "bench_conv"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
