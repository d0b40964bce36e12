"""Mask2Former blocks at FC-CLIP's sizes: ovs's C pixel decoder and transformer decoder vs
Hugging Face transformers' Mask2FormerPixelDecoder / Mask2FormerTransformerModule (PyTorch) on
the same random weights and inputs.

    python benchmarks/bench_m2f.py [--threads 2] [--repeat 5] [--side 512]

Sizes: CLIP RN50 features (res2..res5 channels 256/512/1024/2048 at strides 4..32 of a
side x side input), conv_dim = mask_dim = 256, 6 deformable encoder layers, 8 heads, 4 points;
decoder with 250 queries, 9 layers, FFN 2048 (FC-CLIP's configuration).
The peer builds the HF modules with random weights (fixed torch seed) and writes them, renamed
to the fc-clip names (tests/test_m2f.py's mapping), to a temporary .npz that ours loads.
Cases (one group, one pair of workers):
  pixel_decoder  features -> mask_features (checked ours vs peer)
  decoder        the pixel decoder's outputs -> mask logits of the last prediction (checked)
"""
from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
import time
from pathlib import Path

import _harness as H

CHANNELS = (256, 512, 1024, 2048)
HERE = Path(__file__).resolve().parent


def inputs(side: int):
    import numpy as np

    rng = np.random.default_rng(11)
    return [rng.standard_normal((1, c, side // s, side // s)).astype(np.float32)
            for c, s in zip(CHANNELS, (4, 8, 16, 32))]


def setup(side: str, group: str, params: dict):
    import numpy as np

    feats = inputs(params["side"])
    if side == "ours":
        from ovs import _m2f

        w = dict(np.load(params["peer_info"]["weights"]))
        pd = _m2f.PixelDecoder(w, CHANNELS)
        dec = _m2f.TransformerDecoder(w, queries=250, layers=9)
        mf, ms = pd(*feats)
        return {"pixel_decoder": H.Case(lambda: pd(*feats)[0]),
                "decoder": H.Case(lambda: dec(ms, mf)[2])}

    import torch

    sys.path.insert(0, str(HERE.parent / "tests"))
    import test_m2f as T
    from transformers import Mask2FormerConfig
    from transformers.models.mask2former import modeling_mask2former as hf

    cfg = Mask2FormerConfig(feature_size=256, mask_feature_size=256, hidden_dim=256,
                            encoder_feedforward_dim=1024, encoder_layers=6, num_attention_heads=8,
                            common_stride=4, feature_strides=[4, 8, 16, 32], dropout=0.0,
                            num_queries=250, decoder_layers=10, dim_feedforward=2048)
    pd = hf.Mask2FormerPixelDecoder(cfg, feature_channels=list(CHANNELS)).eval()
    tm = hf.Mask2FormerTransformerModule(in_features=256, config=cfg).eval()
    T.randomize(pd, 1)
    T.randomize(tm, 2)
    w = T.map_names(pd.state_dict(), T.HF_TO_FCCLIP_PIXEL_DECODER, "sem_seg_head.pixel_decoder.")
    w.update(T.predictor_weights(tm, "sem_seg_head.predictor.", 9))
    path = Path(tempfile.mkdtemp(prefix="bench_m2f_")) / "weights.npz"
    np.savez(path, **w)
    # ours reads the file during its setup, long before this worker exits
    atexit.register(shutil.rmtree, path.parent, ignore_errors=True)
    tf = [torch.from_numpy(f) for f in feats]
    with torch.no_grad():
        o = pd(tf)
    ms, mf = list(o.multi_scale_features), o.mask_features

    def run_pd():
        with torch.no_grad():
            return pd(tf).mask_features

    def run_dec():
        with torch.no_grad():
            return tm(ms, mf).masks_queries_logits[-1]

    return {"pixel_decoder": H.Case(run_pd), "decoder": H.Case(run_dec)}, {"weights": str(path)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    H.common_args(ap, repeat=5)
    ap.add_argument("--side", type=int, default=512, help="input side in pixels (multiple of 32)")
    args = ap.parse_args(argv)
    if args.side < 64 or args.side % 32:
        ap.error(f"--side must be a multiple of 32 and >= 64, got {args.side}")
    t0 = time.perf_counter()
    groups = [H.Group(f"m2f_{args.side}", {"side": args.side}, repeated=["pixel_decoder", "decoder"],
                      peer_first=True)]
    res = H.run(__file__, groups, args)
    return H.finish("bench_m2f", args, res, t0, {"side": args.side, "queries": 250, "decoder_layers": 9})


if __name__ == "__main__":
    sys.exit(main())
