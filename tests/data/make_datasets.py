"""Write small synthetic benchmark datasets in the exact detectron2 layouts ovs.datasets reads.

    python tests/data/make_datasets.py ROOT [--datasets ade20k-150,voc-21] [--images 3] [--size 40x56]

For each dataset: `--images` JPEG photos (smooth random colour fields) and label maps of the
preset's file type (8-bit PNG, 16-bit PNG or 16-bit TIFF) made of random rectangles of random
classes over the whole class range (highest ids included), with ignore-label pixels; Pascal
Context also gets its ImageSets/SegmentationContext/val.txt (plus an unlisted extra image that
must not be read). Deterministic for a seed. Used by tests/test_datasets.py and tests/test_eval.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

# name -> (image dir, label dir, label ext, label dtype, classes, ignore, list file or None)
LAYOUTS = {
    "ade20k-150": ("ADEChallengeData2016/images/validation", "ADEChallengeData2016/annotations_detectron2/validation",
                   ".png", np.uint8, 150, 255, None),
    "ade20k-847": ("ADE20K_2021_17_01/images_detectron2/validation",
                   "ADE20K_2021_17_01/annotations_detectron2/validation", ".tif", np.uint16, 847, 65535, None),
    "pascal-context-59": ("VOCdevkit/VOC2010/JPEGImages", "VOCdevkit/VOC2010/SegmentationClassContext", ".png",
                          np.uint8, 59, 255, "VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt"),
    "pascal-context-459": ("VOCdevkit/VOC2010/JPEGImages", "VOCdevkit/VOC2010/SegmentationClassContext_459", ".png",
                           np.uint16, 459, 65535, "VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt"),
    "voc-20": ("pascal_voc_d2/images/validation", "pascal_voc_d2/annotations_pascal20/validation", ".png",
               np.uint8, 20, 255, None),
    "voc-21": ("pascal_voc_d2/images/validation", "pascal_voc_d2/annotations_pascal21/validation", ".png",
               np.uint8, 21, 255, None),
}


def label_map(rng, h: int, w: int, classes: int, ignore: int, dtype) -> np.ndarray:
    lab = np.full((h, w), rng.integers(0, classes), np.int64)
    for _ in range(8):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        lab[y0:y0 + rng.integers(2, h), x0:x0 + rng.integers(2, w)] = rng.integers(0, classes)
    lab[0, 0] = classes - 1                        # the highest class id occurs
    lab[rng.random((h, w)) < 0.05] = ignore
    return lab.astype(dtype)


def photo(rng, h: int, w: int) -> np.ndarray:
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def save_label(lab: np.ndarray, path: Path) -> None:
    im = Image.fromarray(lab)  # uint8 -> "L", uint16 -> "I;16"
    im.save(path)


def make(root, name: str, images: int = 3, size: tuple[int, int] = (40, 56), seed: int = 0) -> dict:
    """Write dataset `name` under root; returns {image id: label map written} of the images the
    dataset contains (in order)."""
    img_dir, lab_dir, ext, dtype, classes, ignore, list_file = LAYOUTS[name]
    root = Path(root)
    rng = np.random.default_rng([seed, list(LAYOUTS).index(name)])
    (root / img_dir).mkdir(parents=True, exist_ok=True)
    (root / lab_dir).mkdir(parents=True, exist_ok=True)
    # the two Pascal Context variants (and the two VOC variants) label the same images
    prefix = {"pascal-context-59": "pascal_context", "pascal-context-459": "pascal_context",
              "voc-20": "pascal_voc", "voc-21": "pascal_voc"}.get(name, name.replace("-", "_"))
    ids = [f"{prefix}_{i:04d}" for i in range(images)]
    extra = [f"{prefix}_unlisted"] if list_file else []
    labels = {}
    for k, ident in enumerate(ids + extra):
        h, w = size if k % 2 == 0 else (size[1], size[0])   # portrait and landscape
        Image.fromarray(photo(rng, h, w)).save(root / img_dir / f"{ident}.jpg", quality=90)
        labels[ident] = label_map(rng, h, w, classes, ignore, dtype)
        save_label(labels[ident], root / lab_dir / f"{ident}{ext}")
    if list_file:
        (root / list_file).parent.mkdir(parents=True, exist_ok=True)
        (root / list_file).write_text("".join(f"{i}\n" for i in ids))
    return {i: labels[i] for i in ids}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("--datasets", default=",".join(LAYOUTS))
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--size", default="40x56", help="HxW of the first image (others alternate orientation)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    for name in args.datasets.split(","):
        ids = make(args.root, name.strip(), args.images, (h, w), args.seed)
        print(f"{name}: {len(ids)} images under {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
