"""Text towers: ovs vs open_clip encoding 1,000 prompts, same weights.

    python benchmarks/bench_text.py [--towers vitb16|rn50|rn50,vitb16] [--repeat 5] [--peer-batch 256]

Prompts: the first synonym of each ADE20K-150 class (ovs.classnames.load_classnames("ade20k_150"))
in each of the first 7 ImageNet templates (ovs.templates.IMAGENET_TEMPLATES), class-major,
trimmed from 1,050 to exactly 1,000.

Per tower (--towers: RN50's and/or ViT-B/16's text transformer, each group in a fresh pair of
workers; the two have the same architecture, 12 layers of width 512, so the default runs only
ViT-B/16's to keep the run near 5 minutes: the peer needs ~60-110 s per 1,000 prompts here):
  ours  model.encode_text(prompts): ovs's tokenizer + tower (length-sorted chunks of 256 rows,
        each run only up to its longest end-of-text token);
  peer  open_clip.get_tokenizer(name)(prompts) + model.encode_text(ids) under torch.no_grad(),
        in batches of --peer-batch rows (default 256; 0 = all 1,000 at once) over the full
        77-token context, as open_clip does.
Both timings include tokenisation. Warm-up: one call on the first 256 prompts per side. The
default --repeat is 5 (not 7) for the same reason.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import _harness as H

N_PROMPTS = 1000
N_TEMPLATES = 7
WARMUP_PROMPTS = 256


def make_prompts() -> list[str]:
    from ovs.classnames import load_classnames
    from ovs.templates import IMAGENET_TEMPLATES

    names = [syn[0] for syn in load_classnames("ade20k_150")]
    prompts = [t.format(n) for n in names for t in IMAGENET_TEMPLATES[:N_TEMPLATES]]
    return prompts[:N_PROMPTS]


# ---------------------------------------------------------------------------- worker side
def setup(side: str, group: str, params: dict):
    name = group.split("_", 1)[1]
    path = params["weights"][name]
    prompts = params["prompts"]
    warm = prompts[:WARMUP_PROMPTS]
    if side == "ours":
        import ovs

        model = ovs.load(path, progress=False)
        return {group: H.Case(lambda: model.encode_text(prompts), lambda: model.encode_text(warm))}
    import open_clip
    import torch
    from bench_image import _open_clip_model

    model = _open_clip_model(name, path)
    tokenizer = open_clip.get_tokenizer(H.OPEN_CLIP_NAMES[name])
    batch = params["peer_batch"] or len(prompts)

    def encode(texts):
        with torch.no_grad():
            ids = tokenizer(texts)
            return torch.cat([model.encode_text(ids[i:i + batch]) for i in range(0, len(ids), batch)])

    return {group: H.Case(lambda: encode(prompts), lambda: encode(warm))}


# ---------------------------------------------------------------------------- parent side
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    H.common_args(ap, repeat=5)
    ap.add_argument("--peer-batch", type=int, default=256,
                    help="open_clip encode_text batch size (0 = all prompts at once; default 256)")
    ap.add_argument("--towers", default="vitb16", help="comma-separated: rn50, vitb16 (default vitb16)")
    ap.add_argument("--prompts", type=int, default=N_PROMPTS,
                    help=f"the first N of the {N_PROMPTS} prompts (default all; python -m benchmarks --quick: 128)")
    args = ap.parse_args(argv)
    if not 1 <= args.prompts <= N_PROMPTS:
        raise SystemExit(f"--prompts must be in 1..{N_PROMPTS}, got {args.prompts}")
    towers = [t.strip() for t in args.towers.split(",") if t.strip()]
    bad = [t for t in towers if t not in H.MODEL_FILES]
    if bad or not towers:
        raise SystemExit(f"--towers: unknown {bad}; valid: rn50, vitb16")
    weights = H.resolve_weights(args.weights, towers)
    prompts = make_prompts()[: args.prompts]
    t0 = time.perf_counter()
    groups = [H.Group(f"text_{t}", {"weights": weights, "prompts": prompts, "peer_batch": args.peer_batch},
                      repeated=[f"text_{t}"],
                      meta={f"text_{t}": {"prompts": len(prompts), "peer_batch": args.peer_batch or len(prompts),
                                          "ours_batch": 256, "target_ratio": 0.2}})
              for t in towers]
    groups = H.select_groups(groups, args.cases)
    res = H.run_groups(Path(__file__).resolve(), groups, threads=args.threads, repeat=args.repeat,
                       warmup=args.warmup, env=H.worker_env(args))
    report = {"script": "bench_text", "machine": H.machine_info(args.threads, res["workers"], H.worker_env(args)),
              "settings": {"repeat": args.repeat, "warmup": args.warmup, "threads": args.threads,
                           "weights": weights, "prompts": len(prompts), "first_prompts": prompts[:3],
                           "peer_batch": args.peer_batch or len(prompts), "order": "ABAB",
                           "warmup_prompts": WARMUP_PROMPTS, "wall_s": time.perf_counter() - t0},
              "workers": res["workers"], "cases": res["cases"]}
    path = H.write_json(report, args.out, "bench_text")
    print()
    print(H.fmt_table(H.case_rows(res["cases"]), H.CASE_HEADER))
    for c in res["cases"]:
        print(f"{c['case']}: prompts/s ours {len(prompts) / c['ours']['median_s']:.0f}, "
              f"peer {len(prompts) / c['peer']['median_s']:.0f} (target ratio <= 0.2)")
    print(f"\nwrote {path}  ({time.perf_counter() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
