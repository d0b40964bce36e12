"""Benchmark datasets in detectron2's layouts, and a generic folder dataset.

    >>> from ovs.datasets import load_dataset
    >>> ds = load_dataset("ade20k-150")                   # root: $DETECTRON2_DATASETS
    >>> len(ds), ds.num_classes, ds.ignore_label, ds.class_names[0][:2]
    (2000, 150, 255, ['wall', 'walls'])
    >>> image, label = ds[0]                              # uint8 (H, W, 3), int label map (H, W)

Presets (one table, `PRESETS`; root = `$DETECTRON2_DATASETS`; label k = class k, ignore as
listed; the class lists with synonyms are ovs.classnames's, as FC-CLIP ships them):

| name | images | labels | classes | ignore |
|---|---|---|---|---|
| ade20k-150 | ADEChallengeData2016/images/validation/*.jpg | ADEChallengeData2016/annotations_detectron2/validation/*.png (uint8) | 150 | 255 |
| ade20k-847 | ADE20K_2021_17_01/images_detectron2/validation/*.jpg | ADE20K_2021_17_01/annotations_detectron2/validation/*.tif (uint16) | 847 | 65535 |
| pascal-context-59 | VOCdevkit/VOC2010/JPEGImages/<id>.jpg, ids from VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt | VOCdevkit/VOC2010/SegmentationClassContext/<id>.png (uint8) | 59 | 255 |
| pascal-context-459 | as pascal-context-59 | VOCdevkit/VOC2010/SegmentationClassContext_459/<id>.png or .tif (uint16) | 459 | 65535 |
| voc-20 | pascal_voc_d2/images/validation/*.jpg | pascal_voc_d2/annotations_pascal20/validation/*.png | 20 | 255 |
| voc-21 | pascal_voc_d2/images/validation/*.jpg | pascal_voc_d2/annotations_pascal21/validation/*.png (0 = background) | 21 | 255 |

Pascal Context also reads FC-CLIP's layout when the VOC2010 one is absent:
`pascal_ctx_d2/images/validation/*.jpg` with `pascal_ctx_d2/annotations_ctx59/validation/*.png` /
`annotations_ctx459/validation/*.tif`. Images and labels are paired by file stem, as
detectron2's `load_sem_seg` does; every image needs its label file.

Label files: 8-bit PNG (grey or palette: the palette index is the label), 16-bit PNG or TIFF.
A value that is neither a class (0..C-1) nor the ignore label raises ValueError naming the file,
the value and how many pixels hold it; a missing directory, list or label file raises
FileNotFoundError naming the path.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["PRESETS", "Dataset", "FolderDataset", "load_dataset", "read_label", "default_root"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LABEL_EXTS = (".png", ".tif", ".tiff")


@dataclass(frozen=True)
class Layout:
    images: str                  # image folder, relative to the root
    labels: str                  # label folder, relative to the root
    list_file: str | None = None  # a file of image ids (one per line) selecting the images
    image_ext: str = ".jpg"
    label_exts: tuple[str, ...] = (".png",)


@dataclass(frozen=True)
class Preset:
    classnames: str              # ovs.classnames dataset key
    num_classes: int
    ignore_label: int
    layouts: tuple[Layout, ...]  # tried in order: the first whose image folder exists is used
    description: str = ""


_VOC2010 = "VOCdevkit/VOC2010"
_CTX_LIST = f"{_VOC2010}/ImageSets/SegmentationContext/val.txt"

PRESETS: dict[str, Preset] = {
    "ade20k-150": Preset("ade20k_150", 150, 255, (
        Layout("ADEChallengeData2016/images/validation", "ADEChallengeData2016/annotations_detectron2/validation"),),
        "ADE20K SceneParsing validation, 2,000 images"),
    "ade20k-847": Preset("ade20k_847", 847, 65535, (
        Layout("ADE20K_2021_17_01/images_detectron2/validation",
               "ADE20K_2021_17_01/annotations_detectron2/validation", label_exts=(".tif",)),),
        "ADE20K full (2021_17_01) validation, 2,000 images"),
    "pascal-context-59": Preset("pascal_ctx_59", 59, 255, (
        Layout(f"{_VOC2010}/JPEGImages", f"{_VOC2010}/SegmentationClassContext", _CTX_LIST),
        Layout("pascal_ctx_d2/images/validation", "pascal_ctx_d2/annotations_ctx59/validation")),
        "Pascal Context validation, 5,105 images"),
    "pascal-context-459": Preset("pascal_ctx_459", 459, 65535, (
        Layout(f"{_VOC2010}/JPEGImages", f"{_VOC2010}/SegmentationClassContext_459", _CTX_LIST,
               label_exts=(".png", ".tif")),
        Layout("pascal_ctx_d2/images/validation", "pascal_ctx_d2/annotations_ctx459/validation",
               label_exts=(".tif", ".png"))),
        "Pascal Context full validation, 5,105 images"),
    "voc-20": Preset("pascal_voc_20", 20, 255, (
        Layout("pascal_voc_d2/images/validation", "pascal_voc_d2/annotations_pascal20/validation"),),
        "Pascal VOC 2012 validation without background, 1,449 images"),
    "voc-21": Preset("pascal_voc_21", 21, 255, (
        Layout("pascal_voc_d2/images/validation", "pascal_voc_d2/annotations_pascal21/validation"),),
        "Pascal VOC 2012 validation with background (label 0), 1,449 images"),
}


def default_root() -> str:
    """$DETECTRON2_DATASETS, or "datasets" (detectron2's default) when unset."""
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


def read_label(path: str | os.PathLike, num_classes: int | None = None, ignore_label: int | None = None) -> np.ndarray:
    """A label map (H, W) as uint8 / uint16 / int32 from an 8-bit (grey or palette) or 16-bit
    PNG or TIFF. With num_classes, values other than 0..C-1 and ignore_label raise ValueError
    naming the file."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"label file not found: {p}")
    try:
        with Image.open(p) as im:
            if im.mode in ("L", "P"):
                lab = np.asarray(im, dtype=np.uint8)
            elif im.mode.startswith("I;16"):
                lab = np.asarray(im).astype(np.uint16)
            elif im.mode in ("I", "I;32"):
                lab = np.asarray(im, dtype=np.int32)
            else:
                raise ValueError(f"{p}: a label map must be an 8-bit grey/palette or 16-bit image, got "
                                 f"Pillow mode {im.mode!r} (colour-coded label images need converting to ids)")
    except UnidentifiedImageError:
        raise ValueError(f"{p} is not an image file Pillow can read") from None
    if lab.ndim != 2:
        raise ValueError(f"{p}: a label map must be 2-D, got shape {lab.shape}")
    if num_classes is not None:
        check_labels(lab, num_classes, ignore_label, p)
    return lab


def check_labels(lab: np.ndarray, num_classes: int, ignore_label: int | None, where) -> None:
    """ValueError naming `where` unless every value is a class index or the ignore label."""
    if lab.size == 0:
        return
    lo, hi = int(lab.min()), int(lab.max())
    if lo >= 0 and hi < num_classes:
        return
    bad = (lab < 0) | (lab >= num_classes)
    if ignore_label is not None:
        bad &= lab != ignore_label
    if not bad.any():
        return
    vals, counts = np.unique(lab[bad], return_counts=True)
    shown = ", ".join(f"{int(v)} ({int(c)} px)" for v, c in zip(vals[:5], counts[:5]))
    more = f" and {len(vals) - 5} more values" if len(vals) > 5 else ""
    ign = f" or the ignore label {ignore_label}" if ignore_label is not None else ""
    raise ValueError(f"{where}: label values outside the class range 0..{num_classes - 1}{ign}: {shown}{more}")


@dataclass
class Dataset:
    """Image / label pairs with their class list. `ds[i]` -> (uint8 (H, W, 3) image, label map);
    `ds.items[i]` = (id, image path, label path)."""
    name: str
    class_names: list[list[str]]          # (C,) synonym lists, first name first
    ignore_label: int | None
    items: list[tuple[str, Path, Path]]   # (id, image, label)
    root: Path | None = None
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.image(i), self.label(i)

    def image(self, i: int) -> np.ndarray:
        from .cli import read_image

        return read_image(self.items[i][1])

    def label(self, i: int) -> np.ndarray:
        return read_label(self.items[i][2], self.num_classes, self.ignore_label)

    def prompts(self, synonyms: bool = True) -> list[str]:
        """Class names as ovs.Segmenter takes them: "name,synonym,..." (encoded and averaged)
        or only the first name."""
        return [",".join(s) if synonyms else s[0] for s in self.class_names]

    def __repr__(self) -> str:
        return (f"ovs.datasets.Dataset({self.name!r}, {len(self)} images, {self.num_classes} classes, "
                f"ignore {self.ignore_label}, root {str(self.root)!r})")


def _require_dir(path: Path, what: str, hint: str = "") -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} directory not found: {path}{hint}")


def _pair(image_dir: Path, label_dir: Path, stems: Sequence[str] | None, image_exts, label_exts):
    items = []
    if stems is None:
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in image_exts and p.is_file())
    else:
        images = []
        for s in stems:
            cands = [image_dir / f"{s}{e}" for e in image_exts]
            found = next((c for c in cands if c.is_file()), None)
            if found is None:
                raise FileNotFoundError(f"image file not found: {cands[0]} (listed in the split file)")
            images.append(found)
    for img in images:
        lab = next((label_dir / f"{img.stem}{e}" for e in label_exts if (label_dir / f"{img.stem}{e}").is_file()),
                   None)
        if lab is None:
            raise FileNotFoundError(f"label file not found for image {img}: expected "
                                    f"{label_dir / (img.stem + label_exts[0])}")
        items.append((img.stem, img, lab))
    return items


def load_dataset(name: str, root: str | os.PathLike | None = None) -> Dataset:
    """A preset (see PRESETS) read from `root` (default $DETECTRON2_DATASETS)."""
    from .classnames import load_classnames

    if name not in PRESETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(PRESETS)} "
                         "(or use ovs.datasets.FolderDataset for your own data)")
    preset = PRESETS[name]
    base = Path(root if root is not None else default_root())
    _require_dir(base, "dataset root", " (pass --root or set $DETECTRON2_DATASETS)")
    layout = next((lay for lay in preset.layouts if (base / lay.images).is_dir()), None)
    if layout is None:
        tried = " or ".join(str(base / lay.images) for lay in preset.layouts)
        raise FileNotFoundError(f"{name}: image directory not found: {tried} (prepare the dataset as "
                                "detectron2 does, under $DETECTRON2_DATASETS)")
    _require_dir(base / layout.labels, f"{name} label")
    stems = None
    if layout.list_file:
        lst = base / layout.list_file
        if not lst.is_file():
            raise FileNotFoundError(f"{name}: split list not found: {lst}")
        stems = [ln.strip() for ln in lst.read_text().splitlines() if ln.strip()]
    items = _pair(base / layout.images, base / layout.labels, stems, (layout.image_ext,) + IMAGE_EXTS,
                  layout.label_exts)
    names = load_classnames(preset.classnames)
    assert len(names) == preset.num_classes
    return Dataset(name, names, preset.ignore_label, items, base,
                   {"layout": layout.images, "labels": layout.labels, "description": preset.description})


def FolderDataset(images: str | os.PathLike, labels: str | os.PathLike, class_names,
                  ignore_label: int | None = 255, name: str = "folder") -> Dataset:
    """Your own data: a folder of images and a folder of label maps (same stems; PNG/TIFF ids),
    and the class list: a list of names ("sofa,couch" = synonyms) or lists of synonyms, or a
    text file with one class per line (optionally "ID:name,synonym", as ovs/data/classnames)."""
    from .classnames import split_synonyms

    img_dir, lab_dir = Path(images), Path(labels)
    _require_dir(img_dir, "image")
    _require_dir(lab_dir, "label")
    if isinstance(class_names, (str, os.PathLike)):
        path = Path(class_names)
        if not path.is_file():
            raise FileNotFoundError(f"class list file not found: {path}")
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        entries = []
        for ln in lines:
            ident, sep, rest = ln.partition(":")
            entries.append(rest if sep and ident.strip().isdigit() else ln)
        names = [split_synonyms(e) for e in entries]
    else:
        names = [split_synonyms(c) if isinstance(c, str) else [str(s) for s in c] for c in class_names]
    if not names or any(not n or not n[0] for n in names):
        raise ValueError(f"class_names must be a non-empty list of non-empty names, got {class_names!r}")
    items = _pair(img_dir, lab_dir, None, IMAGE_EXTS, LABEL_EXTS)
    if not items:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTS)}) in {img_dir}")
    return Dataset(name, names, ignore_label, items, img_dir.parent, {"images": str(img_dir), "labels": str(lab_dir)})
