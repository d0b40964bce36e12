"""Where the RN50 trunk's time goes, layer by layer: ovs against ONNX Runtime on the same shapes.

    python benchmarks/profile_rn50.py [--size 224|448] [--threads 1] [--rounds 5] [--out FILE]

A diagnostic, not an A/B benchmark (bench_image.py is the one that times whole towers in separate
worker processes): one process, both engines at --threads threads, alternating rounds.

  ONNX Runtime  the open_clip RN50 trunk (stem + layer1..4, the module bench_image's trunk case
                exports; the tests' rn50 fixture weights, resized positional embedding at 448)
                with SessionOptions.enable_profiling: per node its kernel time (ORT runs the convs
                in its NCHWc layout with BatchNorm, the residual add and ReLU fused).
  ovs           the same op sequence as ovs_resnet_trunk, each op alone on random data of the
                layer's shape (input and residual 64-byte aligned, as the trunk's arena
                activations): _core.op_conv2d on a weight packed once (as a model holds it),
                bias + ReLU, the residual for every conv3, AVX-512/AVX2 as the CPU offers;
                timed by `repeat` inside C (the call's own output array allocated once), minus a
                single call; the AvgPools by _core.op_avgpool2d (their output array is allocated
                per call: an upper bound). One thread: the calling thread's CPU time (preemption
                on a shared machine inflates it far less than the wall clock); more: wall time.

Per layer the minimum over the rounds, the ratio ovs/ORT and the sums. Run it on a quiet machine
for figures; under load only the ratios of layers timed in the same round mean anything.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import _harness as H
import bench_image as B
from ab_conv import aligned


def ort_node_layer(node: str) -> str:
    """ORT profile node name -> our layer name (open_clip module path below 'visual.')."""
    m = re.match(r"/(layer\d)/(layer\d\.\d+)/(.*)", node)
    if not m:
        stem = re.match(r"/act(\d)/", node)
        if stem:
            return f"conv{stem.group(1)}"
        return "avgpool" if node.startswith("/avgpool") else node
    blk, rest = m.group(2), m.group(3)
    for prefix, name in (("act1", "conv1"), ("act2", "conv2"), ("conv3", "conv3"),
                         ("downsample/downsample.0", "downsample.0"),
                         ("downsample/-1", "downsample.-1"), ("avgpool", "avgpool")):
        if rest.startswith(prefix):
            return f"{blk}.{name}"
    return node


def ort_profile(path: str, x: np.ndarray, threads: int, reps: int, prefix: str) -> dict[str, float]:
    """Minimum kernel time (s) per layer over `reps` profiled runs of the ONNX model."""
    sess = H.ort_session(path, threads, profile_prefix=prefix)
    for _ in range(2):
        sess.run(None, {"x": x})
    for _ in range(reps):
        sess.run(None, {"x": x})
    prof = sess.end_profiling()
    with open(prof) as f:
        events = json.load(f)
    os.remove(prof)
    runs: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            runs.setdefault(ort_node_layer(e["name"][:-len("_kernel_time")]), []).append(e["dur"] * 1e-6)
    return {k: min(v[-reps:]) for k, v in runs.items()}


class OursLayers:
    """The trunk's ops on random data of each layer's shape (see the module docstring)."""

    def __init__(self, size: int, threads: int, repeat: int = 6):
        H.in_process_engines(threads)   # ovs from this checkout, at `threads` (torch too)
        from ovs import _core

        self.core, self.repeat = _core, repeat
        self.clock = time.thread_time if threads == 1 else time.perf_counter
        rng = np.random.default_rng(B.SEED + size)
        self.items = []   # (name, kind, flops, call(n))
        convs = B.resnet_conv_layers(image_size=size)
        for c, (w, b) in zip(convs, B.folded_conv_weights(convs)):
            # 64-byte aligned, as the trunk's arena activations (ab_conv.aligned)
            x = aligned(rng.standard_normal((1, c["C"], c["H"], c["W"]), dtype=np.float32))
            res = (aligned(rng.standard_normal((1, c["K"], c["P"], c["Q"]), dtype=np.float32))
                   if c["name"].startswith("layer") and c["name"].endswith("conv3") else None)
            pk = _core.op_conv2d_pack(w).reshape(-1)
            kind = (f"{c['R']}x{c['S']}{'/' + str(c['stride']) if c['stride'] > 1 else ''} "
                    f"{c['C']}->{c['K']} @{c['H']}" + (" +res" if res is not None else ""))

            def call(n, x=x, w=w, b=b, res=res, pk=pk, c=c):
                return _core.op_conv2d(x, w, b, res, stride=c["stride"], padding=c["pad"], act="relu",
                                       prepacked=pk, repeat=n)
            self.items.append((c["name"], kind, c["flops"], call))
            pools = []
            if c["name"] == "conv3":       # the stem's AvgPool(2)
                pools.append(("avgpool", c["K"], c["P"]))
            if c["name"].endswith(".0.conv2") and c["name"] != "layer1.0.conv2":
                blk = c["name"][:-len("conv2")]
                pools += [(blk + "avgpool", c["K"], c["P"]), (blk + "downsample.-1", 2 * c["C"], c["P"])]
            for name, ch, hw in pools:
                y = rng.standard_normal((1, ch, hw, hw), dtype=np.float32)
                self.items.append((name, f"avgpool 2 {ch} @{hw}", 0,
                                   lambda n, y=y: [_core.op_avgpool2d(y, 2) for _ in range(n)]))

    def time_round(self) -> dict[str, float]:
        out = {}
        for name, _, _, call in self.items:
            call(1)
            t0 = self.clock()
            call(self.repeat)
            t1 = self.clock()
            call(1)
            t2 = self.clock()
            d = (t1 - t0) - (t2 - t1)
            if d > 0:   # else the single call was slowed more than the repeated one: no sample
                out[name] = d / (self.repeat - 1)
        return out


def export_trunk(size: int, tmp: str) -> tuple[str, np.ndarray]:
    """The open_clip RN50 trunk at `size` exported to ONNX from the fixture weights."""
    import torch

    weights = H.resolve_weights([], ["rn50"])["rn50"]
    if size == 448:
        model, _ = B._rn50_448_weights(weights, tmp)
    else:
        model = B._open_clip_model("rn50", weights)
    x = B.image_input(size)
    path = H.export_onnx(H.clip_resnet_trunk(model.visual), torch.from_numpy(x), str(Path(tmp) / "trunk.onnx"))
    return path, x


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224, choices=(224, 448))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ort-reps", type=int, default=10, help="profiled ORT runs per round")
    ap.add_argument("--out", help="write the table as JSON here")
    args = ap.parse_args(argv)
    if args.threads < 1 or args.rounds < 1 or args.ort_reps < 1:
        ap.error("--threads, --rounds and --ort-reps must be >= 1")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    with tempfile.TemporaryDirectory(prefix="ovs-profile-rn50-") as tmp:
        path, x = export_trunk(args.size, tmp)
        ours = OursLayers(args.size, args.threads)
        best_o: dict[str, float] = {}
        best_p: dict[str, float] = {}
        for r in range(args.rounds):
            for k, v in ort_profile(path, x, args.threads, args.ort_reps, str(Path(tmp) / f"p{r}")).items():
                best_p[k] = min(best_p.get(k, v), v)
            for k, v in ours.time_round().items():
                best_o[k] = min(best_o.get(k, v), v)
    rows, table = [], []
    for name, kind, flops, _ in ours.items:
        o, p = best_o.get(name, float("nan")), best_p.get(name)
        rows.append({"layer": name, "shape": kind, "ovs_ms": o * 1e3, "ort_ms": p * 1e3 if p else None,
                     "ratio": o / p if p else None, "ovs_gflops": flops / o / 1e9 if flops and o else None})
        table.append([name, kind, f"{o * 1e3:.3f}", f"{p * 1e3:.3f}" if p else "-",
                      f"{o / p:.2f}" if p else "-", f"{flops / o / 1e9:.0f}" if flops and o else ""])
    extra = {k: v for k, v in best_p.items() if k not in best_o}
    so, sp = sum(best_o.values()), sum(best_p.values())
    missing = [name for name, *_ in ours.items if name not in best_o]
    if missing:
        print(f"no valid ovs sample (machine too busy) for: {', '.join(missing)}")
    table.append(["sum", "", f"{so * 1e3:.2f}", f"{sp * 1e3:.2f}", f"{so / sp:.2f}", ""])
    print(f"RN50 trunk {args.size}x{args.size}, {args.threads} thread(s), min of {args.rounds} rounds "
          f"(load average {os.getloadavg()[0]:.1f}); ORT nodes not matched: "
          f"{', '.join(f'{k} {v * 1e3:.3f} ms' for k, v in extra.items()) or 'none'}")
    print(H.fmt_table(table, ["layer", "shape", "ovs ms", "ORT ms", "ovs/ORT", "ovs GFLOP/s"]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"size": args.size, "threads": args.threads, "rounds": args.rounds,
                       "layers": rows, "ort_unmatched_ms": {k: v * 1e3 for k, v in extra.items()},
                       "sum_ms": {"ovs": so * 1e3, "ort": sp * 1e3}}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
