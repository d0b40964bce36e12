"""Command line: `ovs segment IMAGE --classes "cat,dog,grass" --out mask.png [--overlay o.png]`.

Also available as `python -m ovs`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from .flops import HEADS
from .hub import KNOWN_WEIGHTS
from .image import read_image  # noqa: F401  (ovs.cli.read_image, as before)
from .model import ACTIVATIONS
from .segment import method_choices
from .templates import NAMES as TEMPLATE_NAMES
from .visualize import _save_atomic, overlay, palette, save_label_png  # noqa: F401 (re-exported)

_ARCHS = " | ".join(KNOWN_WEIGHTS)  # the named architectures, for --model's help


def _parse_classes(text: str) -> list[str]:
    """"cat,dog,grass" or "sofa|couch; table" style lists: ';' separates classes when present
    (so ',' can carry synonyms), otherwise ','."""
    sep = ";" if ";" in text else ","
    names = [c.strip() for c in text.split(sep) if c.strip()]
    if not names:
        raise SystemExit("ovs: --classes is empty; give class names like --classes \"cat,dog,grass\"")
    return names


def _output_folder(arg: str, option: str, n_images: int) -> Path | None:
    """The folder that receives <stem>_mask.png / <stem>_overlay.png files, or None when `arg`
    names one output file. A folder is an existing directory or a path ending in a separator
    (created); several images need one."""
    if os.path.isdir(arg):
        return Path(arg)
    if arg.endswith(("/", os.sep)):
        Path(arg).mkdir(parents=True, exist_ok=True)
        return Path(arg)
    if n_images > 1:
        raise SystemExit(f"ovs: with several images, {option} must be a folder (an existing "
                         f"one, or a path ending in '/' to create it), got {arg!r}")
    return None


def _same_file(a: Path, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _check_outputs(outputs: dict, inputs: list[str]) -> None:
    """Before any work: no output may be an input image (it would be replaced by a mask) or
    name the same file as another output, and every output folder must exist and be writable."""
    seen = {}
    for out, option in outputs.items():
        for src in inputs:
            if _same_file(out, src):
                raise SystemExit(f"ovs: {option} {str(out)!r} is the input image {src!r}; refusing "
                                 "to overwrite it (choose another output path)")
        real = os.path.realpath(out)
        if real in seen and seen[real] != option:
            raise SystemExit(f"ovs: --out and --overlay both write {str(out)!r}")
        seen[real] = option
        folder = out.parent if str(out.parent) else Path(".")
        if not folder.is_dir():
            raise SystemExit(f"ovs: the folder of {option} {str(out)!r} does not exist: {str(folder)!r}")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise SystemExit(f"ovs: cannot write {option} {str(out)!r}: folder {str(folder)!r} is "
                             "not writable")
        if out.is_dir():
            raise SystemExit(f"ovs: {option} {str(out)!r} is a directory")


def _summary(labels: np.ndarray, names: list[str]) -> str:
    """"cat 61.8%, wall 30.2%, ignored 8.0%": classes present by decreasing share of the pixels."""
    valid = labels >= 0
    if not valid.any():
        return "every pixel ignored (no class above --bg-threshold)" if labels.size else "empty image"
    counts = np.bincount(labels[valid].ravel(), minlength=len(names))
    parts = [f"{names[k]} {100 * counts[k] / labels.size:.1f}%" for k in np.argsort(-counts, kind="stable")
             if counts[k]]
    if not valid.all():
        parts.append(f"ignored {100 * (~valid).sum() / labels.size:.1f}%")
    return ", ".join(parts)


def cmd_segment(args: argparse.Namespace) -> int:
    import ovs

    names = _parse_classes(args.classes)
    paths = args.images
    for path in paths:  # before loading the model: fail fast on a typo
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file not found: {path}")
    out_dir = _output_folder(args.out, "--out", len(paths))
    overlay_dir = _output_folder(args.overlay, "--overlay", len(paths)) if args.overlay else None
    stems = [Path(p).stem for p in paths]
    outputs = {}  # every file this run will write -> the option that names it
    for stem in stems:
        outputs[out_dir / f"{stem}_mask.png" if out_dir else Path(args.out)] = "--out"
        if args.overlay:
            outputs[overlay_dir / f"{stem}_overlay.png" if overlay_dir else Path(args.overlay)] = "--overlay"
    _check_outputs(outputs, paths)
    if (out_dir or overlay_dir) and len(set(stems)) < len(stems):
        dup = sorted({s for s in stems if stems.count(s) > 1})
        raise SystemExit(f"ovs: several images are named {', '.join(dup)}: their outputs in the "
                         "folder would overwrite each other; rename or run them separately")
    if args.pamr is not None:  # before loading the model: fail fast on --pamr -1
        from ovs.segment import pamr_steps

        pamr_steps(args.pamr)
    if args.threads is not None:
        ovs.set_num_threads(args.threads)
    t0 = time.perf_counter()
    print(f"ovs: loading model {args.model} ...", file=sys.stderr, flush=True)
    model = ovs.load(args.model, act=args.act)
    kwargs = {}
    if args.short_side is not None:
        kwargs["short_side"] = args.short_side or None
    if args.pamr is not None:
        kwargs["pamr"] = args.pamr
    if args.window is not None:
        kwargs["window"] = None if args.window == "whole" else tuple(int(v) for v in args.window.split(","))
    seg = ovs.Segmenter(model, method=args.method, templates=args.templates,
                        bg_threshold=args.bg_threshold, logit_scale=args.logit_scale,
                        preset=args.preset, synonym_mode=args.synonym_mode, area_threshold=args.area_threshold,
                        bg_label=args.bg_label, prompt_denoise=args.prompt_denoise,
                        key_smoothing=args.key_smoothing, **kwargs)
    if seg.preset_skipped:
        print(f"ovs: preset {args.preset!r} also sets {seg.preset_skipped}, which this ovs does not "
              "support yet", file=sys.stderr)
    print(f"ovs: {model!r}\novs: {seg!r} (model ready in {time.perf_counter() - t0:.1f}s)",
          file=sys.stderr, flush=True)
    for i, path in enumerate(paths):
        image = read_image(path)
        t1 = time.perf_counter()
        labels = seg.segment(image, names)
        dt = time.perf_counter() - t1
        stem = Path(path).stem
        out = out_dir / f"{stem}_mask.png" if out_dir else Path(args.out)
        save_label_png(labels, out, len(names))
        msg = f"ovs: [{i + 1}/{len(paths)}] {path} {image.shape[1]}x{image.shape[0]} -> {out} ({dt:.2f}s)"
        if args.overlay:
            ov = overlay_dir / f"{stem}_overlay.png" if overlay_dir else Path(args.overlay)
            _save_atomic(overlay(image, labels, names), ov)
            msg += f", overlay {ov}"
        print(msg, file=sys.stderr, flush=True)
        print(f"{path}: {_summary(labels, names)}")
    return 0


# --------------------------------------------------------------------------- ovs analyze
def cmd_analyze(args: argparse.Namespace) -> int:
    from . import analyze as oa

    if args.threads is not None:
        from . import set_num_threads
        set_num_threads(args.threads)
    recs = oa.alphas(args.file, prefix=args.prefix or None, xmin=args.xmin,
                     max_aspect=args.max_aspect, image_size=args.image_size)
    if not recs:
        raise ValueError(f"{args.file}: no 2-D/4-D weight parameters"
                         + (f" under prefix {args.prefix!r}" if args.prefix else ""))
    sel = None
    if args.select:
        sel = oa.select_layers(recs, args.select, fraction=args.fraction, budget=args.budget,
                               naming=args.naming)
    print(oa.format_table(recs))
    ok = [r for r in recs if r.ok]
    print(f"\n{len(recs)} layers, {len(ok)} fitted"
          + (f", median alpha {sorted(r.alpha for r in ok)[len(ok) // 2]:.4g}" if ok else ""))
    if sel is not None:
        f = sel.flops
        print(f"selection ({sel.rule}): freeze {len(sel.frozen_layers)} layers "
              f"({len(sel.freeze)} parameters), train {len(sel.train)}; training FLOPs of the "
              f"analysed layers {f['total'] / 1e9:.2f} G/sample -> {f['remaining'] / 1e9:.2f} G "
              f"(saving {100 * f['saving']:.1f}%)")
    if args.json:
        oa.to_json(recs, args.json, selection=sel)
        print(f"wrote {args.json}")
    if args.plot:
        oa.plot_alphas(recs, args.plot, selection=sel)
        print(f"wrote {args.plot}")
    return 0


def _add_analyze_parser(sub) -> None:
    a = sub.add_parser("analyze", help="power-law alpha of every weight layer (heavy-tailed spectral analysis)")
    a.add_argument("file", help="weight file (.safetensors, .pt, .pth)")
    a.add_argument("--prefix", default="", help='analyse only parameters starting with this, e.g. "visual."')
    a.add_argument("--xmin", choices=["peak", "peak_reference", "all"], default="peak",
                   help="xmin candidates: peak (default), peak_reference (the paper's code), all")
    a.add_argument("--max-aspect", type=float, default=8.0, help="skip linears with max/min dim >= this (<= 0: never)")
    a.add_argument("--image-size", type=int, default=224, help="input size for the FLOPs of the selection")
    a.add_argument("--select", choices=["median", "fraction", "budget"], default=None,
                   help="also choose the layers to freeze")
    a.add_argument("--fraction", type=float, default=0.5, help="for --select fraction")
    a.add_argument("--budget", type=float, default=None, help="for --select budget: training-FLOPs fraction to keep")
    a.add_argument("--naming", choices=["open_clip", "detectron2"], default="open_clip")
    a.add_argument("--json", default=None, help="write the records (and selection) as JSON")
    a.add_argument("--plot", default=None, help="plot alpha per layer to this image (needs matplotlib)")
    a.add_argument("--threads", type=int, default=None)
    a.set_defaults(func=cmd_analyze)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ovs", description="Open-vocabulary semantic segmentation on the CPU.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("segment", help="segment images with class names you choose")
    s.add_argument("images", nargs="+", help="image file(s) (JPEG, PNG, ...; grayscale/RGBA converted)")
    s.add_argument("--classes", required=True, help='class names, e.g. "cat,dog,grass" (use ";" to separate classes if names hold commas for synonyms)')
    s.add_argument("--model", default=os.environ.get("OVS_MODEL", "ViT-B-16"),
                   help=f"{_ARCHS} (downloaded once) | path to an open_clip .safetensors/.pt file (default: $OVS_MODEL or ViT-B-16)")
    s.add_argument("--method", choices=method_choices(), default=None,
                   help="default: naclip for ViT, maskclip for RN50, the framework of a converted file")
    s.add_argument("--out", required=True, help="label PNG to write (pixel = class index, 255 = ignored, "
                   "VOC palette shifted by one; 16-bit with 65535 = ignored above 255 classes), or a "
                   "folder (an existing one or a path ending in '/') for <name>_mask.png files; a "
                   "folder with several images")
    s.add_argument("--overlay", help="colour overlay PNG with a legend, or a folder as for --out")
    s.add_argument("--templates", default=None, help=f"{' | '.join(TEMPLATE_NAMES)} (default: the method's)")
    s.add_argument("--short-side", type=int, default=None, help="resize the shorter side (0 = keep)")
    s.add_argument("--window", default=None, help='"crop,stride" or "whole"')
    s.add_argument("--logit-scale", type=float, default=None)
    s.add_argument("--bg-threshold", type=float, default=None, help="low-confidence pixels become background/ignored")
    s.add_argument("--preset", default=None, metavar="DATASET",
                   help="the method's published settings for a dataset (see ovs.presets): "
                        "ade20k-150, cityscapes, coco-object, coco-stuff, pascal-context-59, pascal-context-60, "
                        "voc-20, voc-21; explicit options override it")
    s.add_argument("--synonym-mode", choices=["mean", "max"], default=None,
                   help="'a, b' classes: average the synonyms' embeddings (mean) or score the best synonym (max, SCLIP)")
    s.add_argument("--area-threshold", type=float, default=None, help="SCLIP's area_thd (class 0 = background)")
    s.add_argument("--bg-label", type=int, default=None, help="label of low-confidence pixels (default 0 if the "
                   "first class is 'background', else -1 = 255 in the PNG)")
    s.add_argument("--prompt-denoise", type=float, default=None, help="MaskCLIP's pd_thresh (e.g. 0.5)")
    s.add_argument("--key-smoothing", type=float, default=None, help="MaskCLIP's ks_thresh (e.g. 1.0; --method maskclip)")
    s.add_argument("--pamr", nargs="?", type=int, const=10, default=None, metavar="STEPS",
                   help="refine the logits with PAMR at dilations (8, 16), NACLIP's setting "
                        "(default 10 steps)")
    s.add_argument("--act", choices=ACTIVATIONS, default=None, help="MLP activation of the weights (default quickgelu = OpenAI)")
    s.add_argument("--threads", type=int, default=None)
    s.set_defaults(func=cmd_segment)
    _add_analyze_parser(sub)
    from .evaluate import add_eval_parser

    add_eval_parser(sub)
    add_efficiency_commands(sub)
    from .convert import add_convert_parser

    add_convert_parser(sub)
    return p


# ------------------------------------------------------------------ ovs flops / ovs prune
def _load_state_dict_any(src: str):
    from .hub import resolve_weights
    from .prune import fold_pruned, unpack_sparse
    from .weights import load_state_dict

    path = resolve_weights(src)
    sd = unpack_sparse(load_state_dict(path), path)
    return fold_pruned(sd) if any(k.endswith(".weight_orig") for k in sd) else sd


def cmd_flops(args) -> int:
    from . import flops

    sd = _load_state_dict_any(args.model)
    rows = flops.count(sd, image_size=args.size, batch=args.batch, num_texts=args.texts,
                       head=args.head, num_classes=args.classes)
    if args.json:
        import json

        print(json.dumps({"convention": "1 MAC = 1 FLOP (fvcore)",
                          "total": flops.total(rows), "total_sparse": flops.total(rows, sparse=True),
                          "total_fvcore": flops.total(rows, fvcore=True),
                          "params": flops.params(rows), "params_nonzero": flops.params(rows, sparse=True),
                          "layers": [dict(name=r.name, kind=r.kind, macs=r.macs, params=r.params,
                                          density=r.density, sparse_macs=r.sparse_macs) for r in rows]},
                         indent=1))
    else:
        print(flops.table(rows, per_layer=not args.summary))
    return 0


def cmd_prune(args) -> int:
    from . import prune
    from .weights import save_safetensors

    if args.csr and not args.out:
        raise ValueError("--csr needs --out (the file to write)")
    sd = _load_state_dict_any(args.model)
    if args.rounds:
        pruned, hist = prune.iterative(sd, amount=args.amount, rounds=args.rounds, scope=args.scope)
        for i, h in enumerate(hist, 1):
            print(f"round {i}: sparsity {h:.4f}", file=sys.stderr)
    else:
        pruned = prune.magnitude(sd, sparsity=args.sparsity, scope=args.scope)
    masks = prune.masks(pruned)
    if args.masks:
        out_masks = prune.transfer(masks, args.layout) if args.layout else masks
        prune.save_masks(out_masks, args.masks, weights=None if args.layout else sd)
        print(f"wrote {len(out_masks)} masks to {args.masks}", file=sys.stderr)
    if args.out:
        if args.csr:
            n = len(prune.save_sparse(pruned, args.out))
            print(f"wrote the pruned model to {args.out} ({n} convs as CSR)", file=sys.stderr)
        else:
            save_safetensors({k: np.asarray(v) for k, v in pruned.items()}, args.out)
            print(f"wrote the pruned model to {args.out}", file=sys.stderr)

    print(f"sparsity {prune.sparsity(masks):.4f} over {len(masks)} convs")
    return 0


def add_efficiency_commands(sub) -> None:
    f = sub.add_parser("flops", help="multiply-accumulates and parameters per layer (1 MAC = 1 FLOP)")
    f.add_argument("model", help=f"{_ARCHS} | path to an open_clip weight file (pruned ones too)")
    f.add_argument("--size", type=int, default=None, help="image side (default: the model's)")
    f.add_argument("--batch", type=int, default=1)
    f.add_argument("--texts", type=int, default=0, help="also count the text tower for this many prompts")
    f.add_argument("--head", choices=list(HEADS), default=None)
    f.add_argument("--classes", type=int, default=0, help="classes for --head's classifier")
    f.add_argument("--summary", action="store_true", help="totals only")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_flops)
    p = sub.add_parser("prune", help="global/layer-wise magnitude pruning of the image tower's convs")
    p.add_argument("model", help="RN50 | path to an open_clip weight file")
    p.add_argument("--sparsity", type=float, default=0.9, help="one-shot sparsity (default 0.9)")
    p.add_argument("--rounds", type=int, default=0, help="iterative: this many rounds of --amount")
    p.add_argument("--amount", type=float, default=0.1, help="fraction of remaining weights per round")
    p.add_argument("--scope", choices=["global", "layer"], default="global")
    p.add_argument("--masks", help="write masks (.pth: torch.nn.utils.prune format, .safetensors: plain)")
    p.add_argument("--layout", default=None, help="rename masks for a framework: fc-clip | han | deeplab (OpenTrans, named as han) | detectron2")
    p.add_argument("--out", help="write the pruned open_clip state dict (.safetensors)")
    p.add_argument("--csr", action="store_true", help="--out stores the pruned convs as CSR "
                   "(size ~ non-zeros; ovs.load builds them sparse)")
    p.set_defaults(func=cmd_prune)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, OSError, KeyError) as exc:
        print(f"ovs: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
