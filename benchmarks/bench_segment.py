"""Segmentation: ovs.Segmenter vs the PyTorch reference (tests/reference/seg_reference.py) on the
same weights, one 512x512 image, the 150 ADE20K class names.

    python benchmarks/bench_segment.py [--threads 2] [--repeat 7] [--cold none|all|GROUP,...]

Image: ovs/data/example_cat.jpg resized to 512x512 (Pillow bicubic). Classes: the first synonym
of each ADE20K-150 class. Each method runs with its defaults (ovs.segment.DEFAULTS: short side,
window, logit scale, templates; NACLIP sigma 5), one group (a fresh worker pair) per method:
maskclip_rn50, maskclip_vitb16, sclip_vitb16, clearclip_vitb16, naclip_vitb16, scclip_vitb16
(peer: tests/reference/scclip_reference.py, SC-CLIP's own functions re-typed in torch).

(a) image side, "<group>": the logits call with the text classifier already computed, timed
    --repeat times, interleaved. ours: seg.logits(image, classes) (classifier cached in the
    model); peer: seg_reference.reference_logits(model, image, classifier, method, short_side,
    window, dtype=torch.float32) with the classifier precomputed. Both return (150, 512, 512)
    float32 cosine logits. Targets: ours <= 0.8x the time and <= 0.5x the peak RSS.
(b) cold call, "<group>_cold" (groups named by --cold): the first call of a fresh model, text
    classifier included, with the method's templates (imagenet80: 150 x 80 = 12,000 prompts),
    run once per side before (a). ours: seg.logits(image, classes) on an empty text cache; peer:
    seg_reference.text_classifier(model, classes, templates, torch.float32) + reference_logits.
    The classifier it builds is then the one (a) uses. In groups without a cold call, (a) uses a
    classifier built untimed at setup with templates "simple" (the image side does not depend
    on which templates built the (C, D) classifier); the JSON records which ("classifier").
(c) label stage, group "labels" (no model): segment()'s last step, low-resolution logits ->
    label map (with the block bounds segment() takes while writing the logits; bench_labels.py
    also times that writing pass and the label stage streaming its own bounds), as for a 512x512 and a 2048x2048 image (processing size 336x336 at short side 336,
    output 512x512 / 2048x2048), with 10 / 150 / 847 classes, bg_threshold 0 and 0.3. Logits
    and calls are bench_labels.py's (smooth_logits, label_call). Both workers run ovs: ours
    with C classes, the "peer" with 10 classes at the same size and threshold, so the ratio is
    the C-class time over the 10-class time, interleaved. Target: 847 classes <= 1.5x.
--peer ort: the peer's per-window image tower (seg_reference.dense_features with the method's
last block) runs in ONNX Runtime (exported with torch.onnx.export from the same weights,
intra_op_num_threads = --threads), the window loop, class products and interpolation stay in
torch; image side only (--cold none), SC-CLIP's group left out (its reference does not export).
A cold call costs minutes (2 x 12,000 prompts through a text tower, ~2-5 min per group on 2
cores), so the default run has none (about 5 minutes in all); --cold naclip_vitb16 adds the
package's default method, --cold all every group.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import _harness as H

IMAGE_SIZE = 512
GROUPS = {  # group -> (model, method)
    "maskclip_rn50": ("rn50", "maskclip"),
    "maskclip_vitb16": ("vitb16", "maskclip"),
    "sclip_vitb16": ("vitb16", "sclip"),
    "clearclip_vitb16": ("vitb16", "clearclip"),
    "naclip_vitb16": ("vitb16", "naclip"),
    "scclip_vitb16": ("vitb16", "scclip"),
}
DEFAULT_COLD = "none"
LABELS = {"group": "labels", "lowres": 336, "outputs": [512, 2048], "classes": [10, 150, 847],
          "base_classes": 10}


def make_image(path: Path) -> Path:
    """The example photo resized to IMAGE_SIZE^2, saved as .npy for both sides."""
    from PIL import Image

    src = H.REPO_ROOT / "ovs" / "data" / "example_cat.jpg"
    with Image.open(src) as im:
        img = np.asarray(im.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC))
    np.save(path, np.ascontiguousarray(img, dtype=np.uint8))
    return path


def class_names() -> list[str]:
    from ovs.classnames import load_classnames

    return [syn[0] for syn in load_classnames("ade20k_150")]


# ---------------------------------------------------------------------------- worker side
def label_case_name(C: int, size: int, thr: float) -> str:
    return f"labels_{C}c_{size}px_thr{thr:g}"


def label_cases(side: str, params: dict) -> dict:
    """Group "labels": ours with C classes, the peer with base_classes, same size and threshold."""
    from bench_labels import THRESHOLDS, label_call, smooth_logits

    h = params["lowres"]
    lrs: dict[int, np.ndarray] = {}
    cases = {}
    for C in params["classes"]:
        n = C if side == "ours" else params["base_classes"]
        if n not in lrs:
            lrs[n] = smooth_logits(n, h, h, np.random.default_rng(n))
        for size in params["outputs"]:
            for thr in THRESHOLDS:
                call = label_call(lrs[n][0], size, size, thr, bounds=lrs[n][1])
                cases[label_case_name(C, size, thr)] = H.Case(_no_sample(call))
    return cases


def _no_sample(call):
    """The call, returning None: the sides' labels differ by construction (other classes), so
    there is no ours-vs-peer check; tests/test_label_stage.py checks the labels."""
    def run():
        call()
    return run


def setup(side: str, group: str, params: dict):
    if group == LABELS["group"]:
        return label_cases(side, params)
    name, method = GROUPS[group]
    path = params["weights"][name]
    image = np.load(params["image"])
    names = params["classes"]
    d = params["settings"]
    cold = params["cold"]
    window = tuple(d["window"]) if d["window"] else None
    if side == "ours":
        import ovs

        model = ovs.load(path, progress=False)
        seg = ovs.Segmenter(model, method)  # the method's defaults
        if (seg.short_side, seg.window, seg.templates) != (d["short_side"], window, d["templates"]):
            raise RuntimeError(f"Segmenter defaults {seg!r} differ from {d}")
        cases = {}
        if cold:
            cases[group + "_cold"] = H.Case(lambda: seg.logits(image, names))
            run_seg = seg
        else:
            run_seg = ovs.Segmenter(model, method, templates="simple")
            run_seg.classifier(names)  # cached in the model: not timed
        cases[group] = H.Case(lambda: run_seg.logits(image, names))
        return cases
    import torch
    from bench_image import _open_clip_model

    R = H.load_reference("seg_reference")
    SR = H.load_reference("scclip_reference") if method == "scclip" else None

    model = _open_clip_model(name, path)
    state: dict = {}
    if H.peer_is_ort():
        if method == "scclip":
            raise RuntimeError("--peer ort: SC-CLIP's reference does not export (run it with --peer torch)")
        _ort_dense_features(R, model, params)

    def logits():
        if method == "scclip":
            return SR.reference_logits(model, image, state["cls"], d["short_side"], window,
                                       dtype=torch.float32)
        return R.reference_logits(model, image, state["cls"], method, d["short_side"], window,
                                  dtype=torch.float32)

    def cold_call():
        state["cls"] = R.text_classifier(model, names, d["templates"], torch.float32)
        return logits()

    cases = {}
    if cold:
        cases[group + "_cold"] = H.Case(cold_call)
    else:
        # templates "simple", single-synonym names: one prompt per class, so the reference
        # classifier is the L2-normalised embedding; encoded in one batch (seg_reference's
        # per-class loop gives the same rows, only slower).
        import open_clip

        tmpl = R.template_set("simple")[0]
        emb = R._encode_text(model, open_clip.tokenize([tmpl.format(n) for n in names]), torch.float32)
        state["cls"] = emb / emb.norm(dim=-1, keepdim=True)
    cases[group] = H.Case(logits)
    return cases


def _ort_dense_features(R, model, params: dict) -> None:
    """--peer ort: the reference's per-window tower (seg_reference.dense_features: the image
    tower with the method's last block, padded window -> (gh, gw, D)) runs in ONNX Runtime,
    exported with torch.onnx.export from the same weights, one session per window shape
    (exported on first use, i.e. in the warm-up run). The rest of reference_logits (windows,
    normalisation, class products, interpolation) stays in torch: this worker process swaps
    R.dense_features for the ORT-backed one."""
    import torch

    torch_features = R.dense_features
    sessions: dict = {}

    class Tower(torch.nn.Module):
        def __init__(self, method):
            super().__init__()
            self.visual = model.visual  # registers the weights
            self.method = method

        def forward(self, x):
            return torch_features(model, x, self.method)

    def ort_features(model_, x, method, body_cache=None, key=None):
        k = (method, tuple(x.shape))
        if k not in sessions:
            path = str(Path(params["tmpdir"]) / f"{method}_{'x'.join(map(str, x.shape))}.onnx")
            sessions[k] = H.ort_session(H.export_onnx(Tower(method).eval(), x.float(), path),
                                        params["threads"])
        out = sessions[k].run(None, {"x": np.ascontiguousarray(x.numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(out).to(x.dtype)

    R.dense_features = ort_features


# ---------------------------------------------------------------------------- parent side
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    H.common_args(ap)
    ap.add_argument("--cold", default=DEFAULT_COLD,
                    help=f"groups that also get the cold call (b): comma list, 'all' or 'none' "
                         f"(default {DEFAULT_COLD})")
    args = ap.parse_args(argv)
    from ovs.segment import DEFAULTS

    cold = set(GROUPS) if args.cold == "all" else set() if args.cold == "none" else \
        {c.strip() for c in args.cold.split(",") if c.strip()}
    if cold - set(GROUPS):
        raise SystemExit(f"--cold: unknown {sorted(cold - set(GROUPS))}; valid: {', '.join(GROUPS)}, all, none")
    names = class_names()
    t0 = time.perf_counter()
    peer = getattr(args, "peer", "torch")
    with tempfile.TemporaryDirectory(prefix="ovs-bench-seg-") as tmp:
        image = make_image(Path(tmp) / "image.npy")
        groups = []
        for g, (model, method) in GROUPS.items():
            d = {k: v for k, v in DEFAULTS[method].items()}
            d["window"] = list(d["window"]) if d["window"] else None
            cls_tmpl = d["templates"] if g in cold else "simple"
            meta = {"model": model, "method": method, "settings": d, "image": [IMAGE_SIZE, IMAGE_SIZE],
                    "classes": len(names)}
            groups.append(H.Group(
                g, {"weights": None, "image": str(image), "classes": names, "settings": d,
                    "cold": g in cold, "tmpdir": tmp, "threads": args.threads},
                repeated=[g], once=[g + "_cold"] if g in cold else [],
                meta={g: dict(meta, part="image side (classifier cached)", classifier=cls_tmpl,
                              target_ratio=0.8, target_peak_rss_ratio=0.5),
                      g + "_cold": dict(meta, part="cold call incl. text classifier",
                                        classifier=d["templates"])}))
        from bench_labels import THRESHOLDS

        label_names = [label_case_name(C, n, t) for C in LABELS["classes"] for n in LABELS["outputs"]
                       for t in THRESHOLDS]
        groups.append(H.Group(LABELS["group"], dict(LABELS), repeated=label_names, meta={
            label_case_name(C, n, t): {"part": "label stage (seg_labels)", "classes": C,
                                       "lowres": [LABELS["lowres"]] * 2, "out": [n, n], "bg_threshold": t,
                                       "peer": f"ovs seg_labels with {LABELS['base_classes']} classes",
                                       "target_ratio": 1.5}
            for C in LABELS["classes"] for n in LABELS["outputs"] for t in THRESHOLDS}))
        groups = H.select_groups(groups, args.cases)
        if peer == "ort":  # SC-CLIP's reference (LOF, attention rewiring) is not exported
            groups = [g for g in groups if g.name not in GROUPS or GROUPS[g.name][1] != "scclip"]
            if cold:
                raise SystemExit("--peer ort times the image side only: use --cold none")
        weights = H.resolve_weights(args.weights, sorted({GROUPS[g.name][0] for g in groups if g.name in GROUPS}))
        for g in groups:
            g.params["weights"] = weights
        res = H.run(__file__, groups, args)
    return H.finish("bench_segment", args, res, t0,
                    {"weights": weights, "image": "ovs/data/example_cat.jpg resized to 512x512",
                     "classes": "ade20k_150 first synonyms", "cold": sorted(cold)},
                    ["targets (a): time ratio <= 0.8, peak RSS ratio <= 0.5; (c) labels: 847 classes "
                     "<= 1.5x 10 classes"])


if __name__ == "__main__":
    sys.exit(main())
