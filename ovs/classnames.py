"""Class names of the benchmark datasets, with the synonyms FC-CLIP encodes.

    >>> from ovs.classnames import load_classnames
    >>> names = load_classnames("pascal_voc_20")
    >>> names[0]
    ['aeroplane', 'airplane', 'aeroplanes', 'airplanes']

The lists come from FC-CLIP (ovs/data/classnames/README.md). ``load_classnames(d)[k]`` is the
synonym list of ground-truth label k of dataset d, first name first:
- "ade20k_150", "ade20k_847", "pascal_ctx_59", "pascal_ctx_459": label k is line ID k+1 of the
  file (ID 0, "invalid_class_id", is not a class);
- "pascal_voc_21": label k is ID k, label 0 is background (with the stuff synonyms FC-CLIP uses);
- "pascal_voc_20": VOC without background, label k is ID k+1 of the VOC-21 file.
"""
from __future__ import annotations

import os

__all__ = ["DATASETS", "load_classnames", "split_synonyms"]

_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "classnames")

# dataset -> (file, ID of label 0, number of classes)
_SPECS = {
    "ade20k_150": ("ade20k_150.txt", 1, 150),
    "ade20k_847": ("ade20k_847.txt", 1, 847),
    "pascal_ctx_59": ("pascal_ctx_59.txt", 1, 59),
    "pascal_ctx_459": ("pascal_ctx_459.txt", 1, 459),
    "pascal_voc_21": ("pascal_voc_21.txt", 0, 21),
    "pascal_voc_20": ("pascal_voc_21.txt", 1, 20),
}
DATASETS = tuple(_SPECS)


def split_synonyms(names: str) -> list[str]:
    """FC-CLIP's split of a class entry into synonyms: ", " -> ",", split on ",", strip.

    >>> split_synonyms("sofa, couch,lounge")
    ['sofa', 'couch', 'lounge']
    """
    if not isinstance(names, str):
        raise TypeError(f"names must be str, got {type(names).__name__}")
    return [s.strip() for s in names.replace(", ", ",").split(",")]


def _read(path: str) -> dict[int, list[str]]:
    entries: dict[int, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            ident, sep, names = line.partition(":")
            if not sep or not ident.strip().isdigit():
                raise ValueError(f"{path}:{lineno}: expected 'ID:name[,synonym...]', got {line!r}")
            if int(ident) in entries:
                raise ValueError(f"{path}:{lineno}: class ID {int(ident)} appears twice")
            entries[int(ident)] = split_synonyms(names)
    return entries


def load_classnames(dataset: str) -> list[list[str]]:
    """Synonym lists indexed by ground-truth label (see the module docstring for the IDs)."""
    if dataset not in _SPECS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    file, first_id, count = _SPECS[dataset]
    path = os.path.join(_DIR, file)
    entries = _read(path)
    missing = [i for i in range(first_id, first_id + count) if i not in entries]
    if missing:
        raise ValueError(f"{path}: class IDs {missing[:5]} are missing")
    return [list(entries[i]) for i in range(first_id, first_id + count)]
