"""PAMR (pixel-adaptive mask refinement): ovs's C kernel against the original PyTorch module.

(a) Time, interleaved (benchmarks/_harness.py): _core.op_pamr against NACLIP's pamr.PAMR (re-typed
    in tests/reference/pamr_reference.py, float32) on the same random logits and image, 10 steps
    at dilations (8, 16) as NACLIP runs it, same thread count. Target: ratio <= 0.5.
(b) Memory (--memory, ours only): the label stage Segmenter.segment(pamr=True) runs
    (_core.seg_labels_pamr) on a 2048 x 1536 image with 150 classes, in a fresh subprocess,
    peak RSS delta of the call. Target: <= 1 GiB. The PyTorch module cannot run this size here:
    each step forms a (C, 16, H, W) tensor, 150 * 16 * 2048 * 1536 * 4 bytes = 30 GB.

    python benchmarks/bench_pamr.py                 # (a), ~5 min on 2 quiet cores (the peer is slow)
    python benchmarks/bench_pamr.py --memory        # (a) and (b); (b) ~15 s on 2 quiet cores
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

import _harness as H

GROUPS = {  # group -> (classes, H, W)
    "pamr_voc21_512x683": (21, 512, 683),
    "pamr_ade150_224x298": (150, 224, 298),
}
STEPS, DILATIONS = 10, (8, 16)


def make_inputs(C, Hh, Ww, seed=0):
    rng = np.random.default_rng(seed)
    mask = (0.1 * rng.standard_normal((C, Hh, Ww))).astype(np.float32)
    image = rng.standard_normal((3, Hh, Ww)).astype(np.float32)
    return mask, image


# ---------------------------------------------------------------------------- worker side
def setup(side: str, group: str, params: dict):
    mask, image = make_inputs(*GROUPS[group])
    if side == "ours":
        from ovs import _core

        return {group: H.Case(lambda: _core.op_pamr(mask, image, STEPS, DILATIONS))}
    import torch

    R = H.load_reference("pamr_reference")

    module = R.PAMR(STEPS, DILATIONS)
    x, m = torch.from_numpy(image)[None], torch.from_numpy(mask)[None]

    def run():
        with torch.no_grad():
            return module(x, m)[0]

    return {group: H.Case(run)}


# ---------------------------------------------------------------------------- memory (b)
MEMORY_CODE = r"""
import json, resource, sys, time
import numpy as np
import ovs
from ovs import _core
threads, C, Hh, Ww, hp, wp = map(int, sys.argv[1:7])
ovs.set_num_threads(threads)
rng = np.random.default_rng(0)
lowres = (0.1 * rng.standard_normal((C, hp, wp))).astype(np.float32)  # (C, Hp, Wp) as segment()
guide = rng.standard_normal((3, Hh, Ww)).astype(np.float32)             # (3, H, W)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, c0 = time.perf_counter(), time.process_time()
labels = _core.seg_labels_pamr(lowres, guide, 10, (8, 16), logit_scale=40.0)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_delta_mib": (peak - base) / 1024, "wall_s": wall, "cpu_s": cpu,
                  "labels": list(labels.shape), "classes_used": int(len(np.unique(labels)))}))
"""


def memory_check(threads: int) -> dict:
    C, Hh, Ww = 150, 1536, 2048
    hp, wp = 336, 448  # NACLIP's short side 336 for a 4:3 image
    env = dict(os.environ, PYTHONPATH=str(H.REPO_ROOT), OMP_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-c", MEMORY_CODE, str(threads), str(C), str(Hh),
                           str(Ww), str(hp), str(wp)], capture_output=True, text=True, env=env,
                          check=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(classes=C, size=[Hh, Ww], lowres=[hp, wp], threads=threads,
               target_mib=1024, torch_neighbour_tensor_gb=C * 16 * Hh * Ww * 4 / 1e9)
    return res


# ---------------------------------------------------------------------------- parent side
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    H.common_args(ap, repeat=5)
    ap.add_argument("--memory", action="store_true", help="also (b): 2048x1536, 150 classes")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    groups = []
    for g, (C, Hh, Ww) in GROUPS.items():
        groups.append(H.Group(g, {}, repeated=[g], meta={g: {
            "classes": C, "size": [Hh, Ww], "steps": STEPS, "dilations": list(DILATIONS),
            "target_ratio": 0.5}}))
    groups = H.select_groups(groups, args.cases)
    res = H.run(__file__, groups, args)
    memory = memory_check(args.threads) if args.memory else None
    notes = ["target (a): time ratio <= 0.5"]
    if memory:
        notes.append(f"(b) seg_labels_pamr 2048x1536, 150 classes, {args.threads} thread(s): peak RSS "
                     f"delta {memory['peak_delta_mib']:.0f} MiB (target <= 1024), {memory['wall_s']:.1f}s "
                     f"wall, {memory['cpu_s']:.1f}s CPU; the torch module would need "
                     f"{memory['torch_neighbour_tensor_gb']:.0f} GB per step")
    return H.finish("bench_pamr", args, res, t0, {"steps": STEPS, "dilations": list(DILATIONS)}, notes,
                    memory=memory)


if __name__ == "__main__":
    sys.exit(main())
