"""Peak RSS of loading a model from a safetensors file, per model, against its weight bytes.

    python benchmarks/bench_memory.py [--out results.json] [--file NAME=PATH ...]

Without --file: RN50 and ViT-B-16 with random weights at their real sizes
(ovs.weights.random_state_dict, saved to a temporary safetensors file). --file adds any file
ovs.load reads (a CLIP model or a framework file from `ovs convert`, e.g. the
deeplab/han/fcclip_rn50_random.safetensors bench_frameworks.py writes).

Each model is loaded in a fresh interpreter: after `import ovs` its RSS is the baseline and the
high-water mark is reset (/proc/self/clear_refs); after ovs.load the peak (VmHWM) and the RSS are
read from /proc/self/status. Reported per model (JSON): weight bytes (float tensors counted as
float32, as ovs holds them), load_peak_ratio = (peak - baseline) / weight bytes (issue 9's target
<= 1.1), process_peak_ratio = peak / weight bytes (the interpreter, NumPy and ovs included), and
resident_ratio = (RSS after the load - baseline) / weight bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

WORKER = textwrap.dedent("""
    import json, sys, numpy as np, ovs
    from ovs.weights import FileStateDict

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

    path = sys.argv[1]
    sd = FileStateDict(path)
    weight_bytes = sum(int(np.prod(sd.shape(k))) * (4 if sd.dtype(k).kind == "f" else sd.dtype(k).itemsize)
                       for k in sd)
    del sd
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    base = status("VmRSS")
    model = ovs.load(path)
    peak, rss = status("VmHWM"), status("VmRSS")
    print(json.dumps(dict(model=type(model).__name__, weight_bytes=weight_bytes, baseline=base,
                          peak=peak, rss=rss)))
""")


def measure(path: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", WORKER, path], capture_output=True, text=True,
                          env=env, cwd=str(REPO_ROOT))
    if proc.returncode:
        raise RuntimeError(f"loading {path} failed:\n{proc.stderr[-2000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    w = r["weight_bytes"]
    r.update(load_peak_ratio=(r["peak"] - r["baseline"]) / w, process_peak_ratio=r["peak"] / w,
             resident_ratio=(r["rss"] - r["baseline"]) / w)
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", action="append", default=[], metavar="NAME=PATH",
                    help="also measure this weight file (repeatable)")
    ap.add_argument("--no-random", action="store_true", help="skip the random RN50 / ViT-B-16")
    ap.add_argument("--out", default=None, help="write the JSON here too")
    args = ap.parse_args(argv)
    files = {}
    for spec in args.file:
        name, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"--file takes NAME=PATH, got {spec!r}")
        files[name] = path
    results = {}
    with tempfile.TemporaryDirectory(prefix="ovs-bench-memory-") as tmp:
        if not args.no_random:
            sys.path.insert(0, str(REPO_ROOT))
            from ovs.weights import random_state_dict, save_safetensors

            for arch in ("RN50", "ViT-B-16"):
                p = os.path.join(tmp, f"{arch}.safetensors")
                save_safetensors(random_state_dict(arch), p)
                files = {arch: p, **files}
        for name, path in files.items():
            r = measure(path)
            results[name] = r
            print(f"{name}: {r['model']}, weights {r['weight_bytes'] / 2**20:.0f} MiB: load peak "
                  f"{r['load_peak_ratio']:.3f}x, process peak {r['process_peak_ratio']:.3f}x, resident "
                  f"{r['resident_ratio']:.3f}x (baseline {r['baseline'] / 2**20:.0f} MiB)", file=sys.stderr)
    report = {"bench": "bench_memory", "target_load_peak_ratio": 1.1, "models": results}
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
