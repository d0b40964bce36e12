"""Spectral analysis (α of every layer): ovs.analyze vs WeightWatcher on the same weights.

    python benchmarks/bench_alpha.py [--repeat 3] [--threads 2] [--cases alpha_rn50,alpha_vitb16]

Per image tower (RN50, ViT-B/16; all their conv and linear layers), each group in a fresh pair
of workers with the same thread count:
  ours  ovs.analyze.alphas(state dict, prefix="visual.", xmin="peak_reference", max_aspect=0):
        spectra in C (float64 Gram + LAPACK dsyevd, layers in parallel) and the fits; it also
        analyses the q, k, v thirds of every attention in_proj_weight, which WeightWatcher does
        not see (extra work for ours);
  peer  weightwatcher.WeightWatcher(model=open_clip visual tower).analyze(
        fix_fingers="xmin_peak", pl_package="powerlaw") — WeightWatcher 0.7.7 with powerlaw 1.5,
        the combination whose xmin_peak path runs (see tests/test_analyze.py).
Both return the α of the layers WeightWatcher reports, in module order; the report's rel_err is
max |α_ours - α_ww| / max |α_ww| over them (times max |α_ww| <= 1e-3: every layer within 1e-3).
Loading the weights is outside the timed call on both sides. Target: ours <= 0.2x the peer.
"""
from __future__ import annotations

import argparse
import sys
import time

import _harness as H

TOWERS = ("rn50", "vitb16")


# ---------------------------------------------------------------------------- worker side
def setup(side: str, group: str, params: dict):
    name = group.split("_", 1)[1]
    path = params["weights"][name]
    if side == "ours":
        import numpy as np

        import ovs.analyze as oa
        from ovs.weights import load_state_dict

        sd = {k: v for k, v in load_state_dict(path).items() if k.startswith("visual.")}

        def run():
            recs = oa.alphas(sd, prefix="visual.", xmin="peak_reference", max_aspect=0, image_size=None)
            return np.array([r.alpha for r in recs if not r.part], dtype=np.float64)

        return {group: H.Case(run)}
    import logging
    import warnings

    import numpy as np
    import weightwatcher as ww
    from bench_image import _open_clip_model

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    visual = _open_clip_model(name, path).visual

    def run():
        df = ww.WeightWatcher(model=visual).analyze(fix_fingers="xmin_peak", pl_package="powerlaw")
        return np.asarray(df["alpha"].to_numpy(), dtype=np.float64)

    return {group: H.Case(run)}


# ---------------------------------------------------------------------------- parent side
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    H.common_args(ap, repeat=3)
    args = ap.parse_args(argv)
    weights = H.resolve_weights(args.weights, list(TOWERS))
    t0 = time.perf_counter()
    groups = [H.Group(f"alpha_{t}", {"weights": weights}, repeated=[f"alpha_{t}"],
                      meta={f"alpha_{t}": {"target_ratio": 0.2, "ours": "ovs.analyze.alphas",
                                           "peer": "weightwatcher 0.7.7 xmin_peak"}})
              for t in TOWERS]
    groups = H.select_groups(groups, args.cases)
    res = H.run(__file__, groups, args)
    return H.finish("bench_alpha", args, res, t0, {"weights": weights})


if __name__ == "__main__":
    sys.exit(main())
