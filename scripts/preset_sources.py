"""Write tests/reference/preset_sources.txt: the config lines that ovs/presets.py cites, copied
from the original repositories at fixed commits, with their line numbers and URLs.

    python scripts/preset_sources.py [MIRROR_DIR]

MIRROR_DIR holds bare or normal git clones named owner+name/repo (default /work/.mirror), e.g.
    git clone https://github.com/wangf3014/SCLIP  $MIRROR_DIR/wangf3014+SCLIP/repo
tests/test_presets.py parses the values from this file (never from ovs/presets.py) and checks
the table against them. Only the lines that carry settings are kept (model dict, Resize /
img_scale, test mode, the segmentor's constructor defaults).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPOS = {
    "wangf3014/SCLIP": "b56bd3014b9e8a3ee3450bcfc53700a67d627b7a",
    "mc-lan/ClearCLIP": "ad68a404d55d48d27330b93554eb64a234ff717f",
    "sinahmr/NACLIP": "0cac3a651f753b11315ea799cfbfabf79da1bd76",
    "chongzhou96/MaskCLIP": "245d31f809be9c1938f8f30561b6bf9ed033d746",
}
CFGS = ["ade20k", "city_scapes", "coco_object", "coco_stuff164k", "context59", "context60", "voc20", "voc21"]
FILES = {
    "wangf3014/SCLIP": ["clip_segmentor.py"] + [f"configs/cfg_{c}.py" for c in CFGS],
    "mc-lan/ClearCLIP": ["clearclip_segmentor.py", "configs/base_config.py"] + [f"configs/cfg_{c}.py" for c in CFGS],
    "sinahmr/NACLIP": ["naclip.py"] + [f"configs/cfg_{c}.py" for c in CFGS],
    "chongzhou96/MaskCLIP": [
        "mmseg/models/decode_heads/maskclip_head.py",
        "configs/_base_/models/maskclip_vit16.py", "configs/_base_/models/maskclip_r50.py",
        "configs/_base_/datasets/ade20k.py", "configs/_base_/datasets/pascal_voc12_aug_20.py",
        "configs/_base_/datasets/coco-stuff164k.py", "configs/_base_/datasets/cityscapes.py",
        "configs/maskclip/maskclip_r50_512x512_ade20k.py", "configs/maskclip/maskclip_vit16_512x512_voc12aug_20.py",
        "configs/maskclip/maskclip_vit16_512x512_coco-stuff164k.py",
        "configs/maskclip/maskclip_vit16_1024x512_cityscapes.py"],
}
# lines worth keeping: settings, never the surrounding boilerplate
KEEP = re.compile(r"^(model = dict\(|\s+(name_path|logit_scale|prob_thd|area_thd|slide_crop|slide_stride|"
                  r"model_type|ignore_residual|pamr_steps|pd_thresh|ks_thresh|# ks_thresh|# pd_thresh)=|"
                  r".*type='Resize', scale=|.*img_scale\s*=|\s*test_cfg=|_base_ = |\s+'\.\./_base_/|"
                  r"\s*def __init__\(self, clip|\s+(arch|pamr_steps|prob_thd|vit_type|visual_projs_path)=|"
                  r"\s+prob_thd=|\s+visual_projs_path, vit=|\s+seg_pred\[|\s+seg_(logits|probs) = \(seg_(logits|probs) \* cls_index\)|"
                  r"\s+area_pred = |\s+seg_logits\[1:\] \*= )")


def show(mirror: Path, repo: str, commit: str, path: str) -> str:
    git = mirror / repo.replace("/", "+") / "repo"
    return subprocess.run(["git", "-C", str(git), "show", f"{commit}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def main(mirror: str = "/work/.mirror") -> None:
    out = ["# Excerpts of the original repositories' configs cited by ovs/presets.py.",
           "# Written by scripts/preset_sources.py; 'NNN: text' = line NNN of the file at the commit.", ""]
    for repo, files in FILES.items():
        commit = REPOS[repo]
        for path in files:
            text = show(Path(mirror), repo, commit, path)
            out.append(f"== {repo} {path}")
            out.append(f"# https://github.com/{repo}/blob/{commit}/{path}")
            lines = text.split("\n")
            keep: set[int] = set()
            for i, ln in enumerate(lines, 1):
                if KEEP.match(ln):
                    keep.add(i)
                    if "def __init__" in ln:  # a constructor signature may wrap: its continuation lines
                        j = i
                        while not lines[j - 1].rstrip().endswith(":") and j < len(lines):
                            j += 1
                            keep.add(j)
            out += [f"{i}: {lines[i - 1].rstrip()}" for i in sorted(keep)]
            out.append("")
    dst = Path(__file__).resolve().parent.parent / "tests" / "reference" / "preset_sources.txt"
    dst.write_text("\n".join(out), encoding="utf-8")
    print(f"wrote {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:])
