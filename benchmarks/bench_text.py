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

--classifier (group classifier_<tower>): a cold zero-shot classifier for the 150 ADE20K-150
classes (first synonyms) x the 80 ImageNet templates = 12,000 prompts.
  ours  model.text_classifier(names, "imagenet80") with the in-memory cache emptied before every
        call (shared template prefixes run once, ovs.text.encode_prompts), all 150 classes;
  peer  open_clip.zero_shot_classifier.build_zero_shot_classifier(model, tokenizer, names,
        templates, num_classes_per_batch=10) (full 77-token context) on the first
        --peer-classes classes only (default 10 = 800 prompts: all 150 would take ~20 minutes
        per call here); its time is scaled by 150 / --peer-classes (it is linear in the class
        count: every prompt costs the same 77 positions) and the report keeps the raw times.
The outputs compared are the first --peer-classes rows of both classifiers.
"""
from __future__ import annotations

import argparse
import sys
import time

import _harness as H

N_PROMPTS = 1000
N_CLASSIFIER_TEMPLATES = 80
N_TEMPLATES = 7
WARMUP_PROMPTS = 256


def make_prompts() -> list[str]:
    from ovs.classnames import load_classnames
    from ovs.templates import IMAGENET_TEMPLATES

    names = [syn[0] for syn in load_classnames("ade20k_150")]
    prompts = [t.format(n) for n in names for t in IMAGENET_TEMPLATES[:N_TEMPLATES]]
    return prompts[:N_PROMPTS]


def classifier_names() -> list[str]:
    from ovs.classnames import load_classnames

    return [syn[0] for syn in load_classnames("ade20k_150")]


# ---------------------------------------------------------------------------- worker side
def setup_classifier(side: str, name: str, path: str, params: dict):
    names = classifier_names()
    k = params["peer_classes"]
    if side == "ours":
        import ovs

        model = ovs.load(path, progress=False)

        def cold(subset):
            model.text_cache.clear()
            return model.text_classifier(subset, "imagenet80", progress=False)

        return H.Case(lambda: cold(names)[:k], lambda: cold(names[:k]))
    import open_clip
    import torch
    from bench_image import _open_clip_model
    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    from ovs.templates import IMAGENET_TEMPLATES

    model = _open_clip_model(name, path)
    tokenizer = open_clip.get_tokenizer(H.OPEN_CLIP_NAMES[name])

    def build(subset):
        with torch.no_grad():  # (D, C) -> (C, D) as ours
            return build_zero_shot_classifier(model, tokenizer, subset, IMAGENET_TEMPLATES,
                                              num_classes_per_batch=10).T

    return H.Case(lambda: build(names[:k]), lambda: build(names[:1]))


def setup(side: str, group: str, params: dict):
    name = group.split("_", 1)[1]
    if group.startswith("classifier_"):
        return {group: setup_classifier(side, name, params["weights"][name], params)}
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
    ap.add_argument("--classifier", action="store_true",
                    help="also time the cold imagenet80 x ADE-150 classifier (12,000 prompts)")
    ap.add_argument("--peer-classes", type=int, default=10,
                    help="classes the peer encodes in the classifier case (time scaled to 150)")
    ap.add_argument("--prompts", type=int, default=N_PROMPTS,
                    help=f"the first N of the {N_PROMPTS} prompts (default all; python -m benchmarks --quick: 128)")
    args = ap.parse_args(argv)
    if not 1 <= args.peer_classes <= 150:
        raise SystemExit(f"--peer-classes must be in 1..150, got {args.peer_classes}")
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
    n_cls = len(classifier_names())
    scale = n_cls / args.peer_classes
    from ovs.text import token_positions

    positions = token_positions(classifier_names(), "imagenet80")
    width, mlp, layers = 512, 2048, 12   # both CLIP text towers
    gflop = {k: 2 * (4 * width * width + 2 * width * mlp) * layers * positions[k] / 1e9
             for k in ("full_context", "end_of_text", "shared_prefix")}
    if args.classifier:
        groups += [H.Group(f"classifier_{t}", {"weights": weights, "peer_classes": args.peer_classes},
                           repeated=[f"classifier_{t}"],
                           meta={f"classifier_{t}": {
                               "prompts": n_cls * N_CLASSIFIER_TEMPLATES, "classes": n_cls,
                               "templates": N_CLASSIFIER_TEMPLATES, "peer_classes": args.peer_classes,
                               "peer_time_scale": scale, "target_ratio": 0.05,
                               "token_positions": positions, "linear_gflop": gflop}})
                   for t in towers]
    groups = H.select_groups(groups, args.cases)
    res = H.run(__file__, groups, args)
    notes = []
    for c in res["cases"]:
        if c["case"].startswith("classifier_"):
            _scale_peer(c, scale)
        n = c.get("prompts", len(prompts))
        notes.append(f"{c['case']}: prompts/s ours {n / c['ours']['median_s']:.0f}, "
                     f"peer {n / c['peer']['median_s']:.0f} (target ratio <= {c['target_ratio']})"
                     + (f"; peer timed on {c['peer_classes']} classes and scaled x{c['peer_time_scale']:g}"
                        if "peer_time_scale" in c else ""))
        if "token_positions" in c:
            tp, g = c["token_positions"], c["linear_gflop"]
            notes.append(f"  token positions: open_clip {tp['full_context']:,}, end-of-text truncation "
                         f"{tp['end_of_text']:,}, shared prefixes {tp['shared_prefix']:,} "
                         f"({1 - tp['shared_prefix'] / tp['end_of_text']:.0%} fewer); linear-layer GFLOP "
                         f"{g['full_context']:.0f} / {g['end_of_text']:.0f} / {g['shared_prefix']:.0f}")
    return H.finish("bench_text", args, res, t0,
                    {"weights": weights, "prompts": len(prompts), "first_prompts": prompts[:3],
                     "peer_batch": args.peer_batch or len(prompts), "warmup_prompts": WARMUP_PROMPTS},
                    notes)


def _scale_peer(c: dict, scale: float) -> None:
    """The classifier case's peer ran on a subset of the classes: scale its times to all of
    them (raw values kept under peer_raw) and recompute the ratios."""
    import statistics

    c["peer_raw"] = dict(c["peer"])
    for k in ("median_s", "mean_s", "min_s", "max_s", "time_s"):
        if isinstance(c["peer"].get(k), (int, float)):
            c["peer"][k] = c["peer"][k] * scale
    if isinstance(c["peer"].get("times_s"), list):
        c["peer"]["times_s"] = [t * scale for t in c["peer"]["times_s"]]
    c["pair_ratios"] = [r / scale for r in c["pair_ratios"]]
    c["ratio_median_of_pairs"] = statistics.median(c["pair_ratios"])
    c["ratio_of_medians"] = c["ratio_of_medians"] / scale


if __name__ == "__main__":
    sys.exit(main())
