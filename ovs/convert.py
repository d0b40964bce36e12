"""``ovs convert``: a framework's training checkpoint -> one safetensors file ovs.load reads.

    ovs convert model_final.pth --framework deeplab -o deeplab_rn50.safetensors

The checkpoint (detectron2's ``{"model": state_dict, ...}`` or a bare state dict, pickled by
torch.save) is read with ovs's restricted reader (ovs.torch_reader: tensors only, no code runs).
Names are mapped by the framework's table entry (ovs.frameworks.FRAMEWORKS): the CLIP image
trunk gets open_clip's names (``visual.*``, so pruning masks of CLIP RN50 apply as they are), the
CLIP text tower open_clip's text names. BatchNorm statistics are kept under their own names and
folded into the convs when the model is loaded (as for every ovs ResNet). Every expected tensor
is checked for presence and shape; missing, mis-shaped and unexpected tensors are reported by
their checkpoint names in one ConversionError.
"""
from __future__ import annotations

import os
import re
from typing import Mapping

import numpy as np

from .frameworks import FRAMEWORKS, ConversionError, check_expected

__all__ = ["convert", "convert_state_dict", "ConversionError"]


def convert_state_dict(sd: Mapping[str, np.ndarray], framework: str
                       ) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors by ovs name, report) for a checkpoint state dict of `framework`."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; known: {', '.join(sorted(FRAMEWORKS))}")
    fw = FRAMEWORKS[framework]
    if not isinstance(sd, Mapping) or not sd:
        raise ConversionError("the checkpoint holds no tensors")
    ignore = [re.compile(p + r"\Z") for p in fw.ignore]
    out: dict[str, np.ndarray] = {}
    back: dict[str, str] = {}
    ignored, unmatched = [], []
    for name, value in sd.items():
        if any(rx.match(name) for rx in ignore):
            ignored.append(name)
            continue
        for src, dst in fw.rename:
            if name.startswith(src):
                new = dst + name[len(src):]
                break
        else:
            unmatched.append(name)
            continue
        if new in out:
            raise ConversionError(f"{name!r} and {back[new]!r} both map to {new!r}")
        a = np.asarray(value)
        if a.dtype.kind not in "f":
            raise ConversionError(f"{name!r} has dtype {a.dtype}; the {framework} weights are "
                                  "floating point")
        if not np.isfinite(a).all():
            raise ConversionError(f"{name!r} contains NaN or infinity")
        out[new] = np.ascontiguousarray(a, dtype=np.float32)
        back[new] = name
    if unmatched:
        known = ", ".join(src for src, _ in fw.rename)
        raise ConversionError(f"{len(unmatched)} unexpected tensor(s) for {framework}: "
                              + ", ".join(repr(k) for k in unmatched[:12])
                              + (" ..." if len(unmatched) > 12 else "")
                              + f" (known prefixes: {known})")
    expected = fw.expected(out)
    for k in expected:   # name missing tensors as the checkpoint would have them
        if k not in back:
            back[k] = _source_name(fw, k)
    check_expected(out, expected, what=f"the {framework} checkpoint", renamed=back)
    report = dict(framework=framework, tensors=len(out), ignored=ignored,
                  parameters=int(sum(a.size for a in out.values())))
    return out, report


def _source_name(fw, new: str) -> str:
    """The checkpoint name that would map to ovs name `new` (the rename rules reversed)."""
    for src, dst in sorted(fw.rename, key=lambda r: -len(r[1])):
        if new.startswith(dst):
            return src + new[len(dst):]
    return new


def convert(checkpoint: str | os.PathLike, framework: str, output: str | os.PathLike) -> dict:
    """Convert `checkpoint` (.pth/.pt/.bin or .safetensors) of `framework` to the safetensors
    file `output`; returns the report (tensor count, parameters, ignored names)."""
    from .weights import load_state_dict, save_safetensors

    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; known: {', '.join(sorted(FRAMEWORKS))}")
    src = os.fspath(checkpoint)
    if not os.path.isfile(src):
        raise FileNotFoundError(f"checkpoint not found: {src}")
    sd = load_state_dict(src, skip_unknown_objects=True)
    tensors, report = convert_state_dict(sd, framework)
    save_safetensors(tensors, output, metadata={"ovs_framework": framework,
                                                "source": os.path.basename(src)})
    report["output"] = os.fspath(output)
    return report


# ------------------------------------------------------------------ CLI
def cmd_convert(args) -> int:
    import sys

    rep = convert(args.checkpoint, args.framework, args.output)
    print(f"ovs: {args.checkpoint} -> {rep['output']}: {rep['tensors']} tensors, "
          f"{rep['parameters'] / 1e6:.1f}M parameters ({args.framework})"
          + (f"; ignored {len(rep['ignored'])} ({', '.join(rep['ignored'][:3])}"
             f"{' ...' if len(rep['ignored']) > 3 else ''})" if rep["ignored"] else ""),
          file=sys.stderr)
    return 0


def add_convert_parser(sub) -> None:
    c = sub.add_parser("convert", help="convert a framework checkpoint (detectron2 .pth) to an ovs "
                       "safetensors file")
    c.add_argument("checkpoint", help="the training checkpoint (.pth / .pt / .safetensors)")
    c.add_argument("--framework", required=True, choices=sorted(FRAMEWORKS),
                   help="which framework the checkpoint belongs to")
    c.add_argument("-o", "--output", required=True, help="the .safetensors file to write")
    c.set_defaults(func=cmd_convert)
