"""The paper's frameworks end to end: ovs vs the PyTorch reference on the same weights.

    python benchmarks/bench_frameworks.py [--repeat 5] [--threads 2] [--cases deeplab,han,fcclip]
    python benchmarks/bench_frameworks.py --peer ort [--cases deeplab]

Each framework at its real sizes with random weights (every parameter and BatchNorm statistic
random), from its reference's `full(seed=0)`:
  deeplab  DeepLabV3-OVS (OpenTrans; trunk width 64, ASPP 256, embedding 1024, CLIP text tower
           512 x 12), tests/reference/deeplab_reference.py
  han      Han et al. (OpenTrans OpenSegMaskFormer; CLIP RN50 trunk, MSDeformAttn pixel decoder
           256-d x 6 layers, 100 queries x 9 decoder layers, embedding 1024, CLIP text 512 x 12),
           tests/reference/han_reference.py (open_clip + transformers modules)
  fcclip   FC-CLIP (RN50 sizes, 250 queries x 9 decoder layers, CLIP text 512 x 12),
           tests/reference/fcclip_reference.py; timed: the whole fc-clip inference (both
           classifiers, the geometric ensemble, masks resized to the image, the semantic einsum)
The peer worker builds the PyTorch model and saves it as a detectron2 checkpoint with OpenTrans'
key names; the ours worker converts that file with ovs.convert (as `ovs convert --framework
<name>`) and loads the result.

Cases, 150 classes (the ADE20K-150 names, first synonym), one image each:
  <name>_512   a 512 x 512 image, short side 512 (no resize, no padding)
  <name>_640   a 640 x 853 (4:3) image at short side 640 (padded to 640 x 864)
Timed call: image (uint8) -> class scores (150, H, W) at the image's size, i.e. detectron2
preprocessing, the network, the classifier (DeepLab: per-pixel cosine and softmax with the
no-object embedding; Han: per-query cosine, softmax, sum_q softmax * sigmoid(upsampled mask))
and the resize back. ours: ovs.Segmenter(model, name).predict; peer: the reference's
`semantic()` path with the class text embeddings computed once (ours caches them too). Both
sides use the same thread count (--threads). FLOPs: ovs.flops (fvcore's convention) next to the
paper's dense figure (DeepLabV3 241.3 G, Han et al. 268.2 G, FC-CLIP 200.1 G; DESIGN.md §6).

--peer ort (ONNX Runtime, PyPI onnxruntime): DeepLab and Han et al. The peer worker builds the
same PyTorch reference and exports per case with torch.onnx.export (opset 17, fixed shapes)
everything the torch peer times after the preprocessing, with the class text embeddings as a
constant of the graph (as the cached classifier on our side): DeepLab's network, per-pixel
cosine, softmax with the no-object embedding, crop and bilinear resize to the image; Han's
network (transformers' MSDeformAttn and masked-attention decoder trace to plain ops and
GridSample; its double-typed sampling grids are cast to float in the graph, as ONNX Runtime
has float GridSample kernels only), class logits, softmax, mask upsampling, sigmoid, the
query sum, crop and resize. It then frees the torch model and runs an InferenceSession with
intra_op_num_threads = --threads (recorded as "threads" in each case's JSON entry). The
preprocessing is the reference's, as the torch peer's. The worker still has torch imported
(the harness's peer convention, as bench_image.py), which counts in its RSS. FC-CLIP is not
exported: its inference is not one module (the CLIP attention pool per mask over
data-dependent masks, two classifiers and the geometric ensemble in the reference's Python),
so --peer ort with --cases fcclip is refused.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import _harness as H

FRAMEWORKS = ("deeplab", "han", "fcclip")
ORT_FRAMEWORKS = ("deeplab", "han")   # the frameworks exported to ONNX for --peer ort (see above)
SIZES = {"512": ((512, 512), 512), "640": ((640, 853), 640)}
MAX_SIZE = 1333
PAPER_GFLOPS = {"deeplab": 241.3, "han": 268.2, "fcclip": 200.1}


def _cases(fw: str) -> dict:
    return {f"{fw}_{k}": v for k, v in SIZES.items()}


def _image(hw):
    import numpy as np

    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(0)
    img = np.stack([np.sin(yy / 23.0) * 100 + 128, np.cos(xx / 31.0) * 100 + 128,
                    (yy + 2 * xx) % 256], -1) + rng.normal(0, 12, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- worker side
def _setup_fcclip(side: str, params: dict):
    """FC-CLIP at RN50 sizes (tests/reference/fcclip_reference.py `full(seed=0)`: 250 queries,
    9 decoder layers, CLIP text 512 x 12). Timed: image -> semantic scores (150, H, W) at the
    image's size; both sides hold the text classifier (ViLD templates) computed once."""
    names = params["names"]
    if side == "peer":
        import torch

        from ovs.fcclip import coco_panoptic_synonyms

        R = H.load_reference("fcclip_reference")
        model = R.full(seed=0)
        ck = Path(params["dir"]) / "fcclip_rn50_random.pth"
        R.save_checkpoint(model, ck)
        train = coco_panoptic_synonyms()
        with torch.no_grad():
            cached = model.get_text_classifier(names)
        model.get_text_classifier = lambda _names: cached

        def run(hw, short):
            img = _image(hw)
            return lambda: R.semantic(model, img, names, train, short, MAX_SIZE)[0]
        return {c: H.Case(run(hw, s)) for c, (hw, s) in _cases("fcclip").items()}, {"checkpoint": str(ck)}

    import ovs
    import ovs.convert

    out = Path(params["dir"]) / "fcclip_rn50_random.safetensors"
    t0 = time.perf_counter()
    ovs.convert.convert(params["peer_info"]["checkpoint"], "fcclip", out)
    t_convert = time.perf_counter() - t0
    model = ovs.load(out)
    segs = {}
    for c, (hw, short) in _cases("fcclip").items():
        seg = ovs.Segmenter(model, "fcclip", short_side=short)
        seg.classifier(names)
        segs[c] = (seg, _image(hw))
    return ({c: H.Case(lambda s=s, im=im: s.predict(im, names)) for c, (s, im) in segs.items()},
            {"convert_s": t_convert})


def _onnx_float_grids(path: str) -> int:
    """Cast double inputs of GridSample nodes to float in an exported graph (transformers'
    MSDeformAttn traces its sampling grids in double; ONNX Runtime has float GridSample
    kernels only, and torch's grid_sample computes in float). Returns the casts added."""
    import onnx
    from onnx import TensorProto, helper, shape_inference

    m = onnx.load(path)
    inferred = shape_inference.infer_shapes(m)
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    nodes, k = [], 0
    for n in m.graph.node:
        if n.op_type == "GridSample":
            for i in (0, 1):
                if types.get(n.input[i]) == TensorProto.DOUBLE:
                    out = f"{n.input[i]}_float{k}"
                    k += 1
                    nodes.append(helper.make_node("Cast", [n.input[i]], [out], to=TensorProto.FLOAT))
                    n.input[i] = out
        nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.save(m, path)
    return k


def _ort_cases(fw: str, R, model, text, params: dict, cases: dict | None = None) -> dict:
    """ONNX Runtime peer (DeepLab, Han et al.): per case (`cases`, default _cases(fw): name ->
    ((h, w), short side)), everything the torch peer times after
    the preprocessing, exported with the class text embeddings as a constant (DeepLab: logits
    -> softmax without no-object -> crop -> resize to the image; Han: network, class logits,
    softmax, masks upsampled to the padded input, sigmoid, the query sum, crop, resize to the
    image); the torch model is dropped once every case is exported."""
    import gc

    import torch
    import torch.nn.functional as F

    class Scores(torch.nn.Module):
        def __init__(self, size, out_hw):
            super().__init__()
            self.model, self.size, self.out_hw = model, size, out_hw
            self.register_buffer("text", text.clone())

        def forward(self, x):
            if fw == "deeplab":
                cls, (h, w) = self.model.logits(x, self.text)
                p = F.softmax(cls[0], dim=-1)[..., :-1]
                r = p.reshape(h, w, -1).permute(2, 0, 1)
            else:
                emb, masks = self.model(x)
                p = F.softmax(self.model.class_logits(emb, self.text)[0], dim=-1)[..., :-1]
                m = F.interpolate(masks, size=x.shape[-2:], mode="bilinear", align_corners=False)
                r = torch.einsum("qc,qhw->chw", p, m[0].sigmoid())
            r = r[:, : self.size[0], : self.size[1]]
            return F.interpolate(r[None], size=self.out_hw, mode="bilinear", align_corners=False)[0]

    sessions = {}
    for c, (hw, short) in (cases or _cases(fw)).items():
        img = _image(hw)
        x, size = R.preprocess(img, short, MAX_SIZE)
        path = str(Path(params["dir"]) / f"{c}.onnx")
        H.export_onnx(Scores(size, img.shape[:2]).eval(), x, path)
        _onnx_float_grids(path)
        sessions[c] = (H.ort_session(path, params["threads"]), img, short)
    del model
    gc.collect()

    def run(sess, img, short):
        def call():
            x, _ = R.preprocess(img, short, MAX_SIZE)
            return sess.run(None, {"x": x.numpy()})[0]
        return call
    return {c: H.Case(run(*v)) for c, v in sessions.items()}


def deeplab_scores(R, model, img, text, short: int):
    """The PyTorch peer's DeepLab call: preprocessing, the network's per-pixel logits, softmax
    without the no-object column, crop, bilinear resize to the image: (C, H, W) scores."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        x, size = R.preprocess(img, short, MAX_SIZE)
        cls, (h, w) = model.logits(x, text)
        p = F.softmax(cls[0], dim=-1)[..., :-1]
        r = p.reshape(h, w, -1).permute(2, 0, 1)[:, : size[0], : size[1]]
        return F.interpolate(r[None], size=img.shape[:2], mode="bilinear", align_corners=False)[0]


def setup(side: str, group: str, params: dict):
    if group == "fcclip":
        return _setup_fcclip(side, params)
    names = params["names"]
    fw = group
    if side == "peer":
        import torch

        R = H.load_reference(f"{fw}_reference")
        model = R.full(seed=0)
        ck = Path(params["dir"]) / f"{fw}_rn50_random.pth"
        R.save_checkpoint(model, ck)
        with torch.no_grad():
            text = model.text_encoder.encode(names)
        if H.peer_is_ort():
            return _ort_cases(fw, R, model, text, params), {"checkpoint": str(ck)}

        def run(hw, short):
            img = _image(hw)

            def call_deeplab():
                return deeplab_scores(R, model, img, text, short)

            def call_han():
                return R.semantic_from_text(model, img, text, short, MAX_SIZE)[0]
            return call_han if fw == "han" else call_deeplab
        cases = {c: H.Case(run(hw, s)) for c, (hw, s) in _cases(fw).items()}
        return cases, {"checkpoint": str(ck)}

    import ovs
    import ovs.convert

    info = params["peer_info"]
    out = Path(params["dir"]) / f"{fw}_rn50_random.safetensors"
    t0 = time.perf_counter()
    ovs.convert.convert(info["checkpoint"], fw, out)
    t_convert = time.perf_counter() - t0
    model = ovs.load(out)
    segs = {}
    for c, (hw, short) in _cases(fw).items():
        seg = ovs.Segmenter(model, fw, short_side=short)
        seg.classifier(names)   # the text embeddings once, as the peer
        segs[c] = (seg, _image(hw))
    cases = {c: H.Case(lambda s=s, im=im: s.predict(im, names)) for c, (s, im) in segs.items()}
    return cases, {"convert_s": t_convert}


def flops_table(converted: Path, n_classes: int, fw: str) -> dict:
    """Analytic FLOPs (fvcore convention) of each case's padded input, from the weights alone."""
    import ovs.flops
    from ovs.frameworks import resize_shortest_edge
    from ovs.weights import load_state_dict

    sd = load_state_dict(converted)
    out = {}
    for c, (hw, short) in _cases(fw).items():
        nh, nw = resize_shortest_edge(*hw, short, MAX_SIZE)
        padded = (-(-nh // 32) * 32, -(-nw // 32) * 32)
        rows = ovs.flops.count(sd, image_size=padded, num_classes=n_classes)
        out[c] = {"input": list(padded), "gflops_fvcore": ovs.flops.total(rows, fvcore=True) / 1e9,
                  "mparams": ovs.flops.params(rows) / 1e6}
    return out


# ---------------------------------------------------------------------------- parent side
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    H.common_args(ap, repeat=5)
    args = ap.parse_args(argv)
    if args.peer == "ort":
        asked = [c.strip() for c in (args.cases or ",".join(ORT_FRAMEWORKS)).split(",") if c.strip()]
        if any(c not in ORT_FRAMEWORKS for c in asked):
            raise SystemExit(f"--peer ort: only {', '.join(ORT_FRAMEWORKS)} is exported to ONNX "
                             f"(see the docstring), got --cases {','.join(asked)}")
        args.cases = ",".join(asked)
    from ovs.classnames import load_classnames

    names = [syn[0] for syn in load_classnames("ade20k_150")]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ovs-bench-frameworks-") as tmp:
        groups = [H.Group(fw, {"names": names, "dir": tmp, "threads": args.threads},
                          repeated=list(_cases(fw)),
                          peer_first=True,
                          meta={c: {"image": list(hw), "short_side": s, "max_size": MAX_SIZE,
                                    "classes": len(names), "paper_dense_gflops": PAPER_GFLOPS[fw],
                                    "peer": args.peer, "threads": args.threads}
                                for c, (hw, s) in _cases(fw).items()})
                  for fw in FRAMEWORKS]
        groups = H.select_groups(groups, args.cases)
        res = H.run(__file__, groups, args)
        flops = {}
        for g in groups:
            flops.update(flops_table(Path(tmp) / f"{g.name}_rn50_random.safetensors", len(names), g.name))
    for c in res["cases"]:
        c["flops"] = flops.get(c["case"])
    notes = [f"{c['case']}: input {fl['input'][0]}x{fl['input'][1]}: {fl['gflops_fvcore']:.1f} GFLOPs "
             f"(fvcore convention), {fl['mparams']:.1f} M params; paper (dense): "
             f"{PAPER_GFLOPS[c['case'].split('_')[0]]} G"
             for c in res["cases"] if (fl := c.get("flops"))]
    return H.finish("bench_frameworks", args, res, t0, {"classes": len(names)}, notes)


if __name__ == "__main__":
    sys.exit(main())
