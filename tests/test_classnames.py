"""ovs.classnames: the shipped benchmark class lists (FC-CLIP's files, one line per label with its
synonyms) and the synonym split used by text classifiers."""
import os

import pytest

from ovs.classnames import DATASETS, load_classnames, split_synonyms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _raw_lines(file):
    with open(os.path.join(ROOT, "ovs", "data", "classnames", file), encoding="utf-8") as f:
        return {int(line.split(":", 1)[0]): line.rstrip("\n").split(":", 1)[1] for line in f if line.strip()}


@pytest.mark.parametrize("dataset, count, file, first_id", [
    ("ade20k_150", 150, "ade20k_150.txt", 1), ("ade20k_847", 847, "ade20k_847.txt", 1),
    ("pascal_ctx_59", 59, "pascal_ctx_59.txt", 1), ("pascal_ctx_459", 459, "pascal_ctx_459.txt", 1),
    ("pascal_voc_21", 21, "pascal_voc_21.txt", 0), ("pascal_voc_20", 20, "pascal_voc_21.txt", 1),
])
def test_load_classnames(dataset, count, file, first_id):
    names = load_classnames(dataset)
    raw = _raw_lines(file)
    assert len(names) == count
    for label, synonyms in enumerate(names):
        # FC-CLIP's split of the line with ID label + first_id
        assert synonyms == [s.strip() for s in raw[label + first_id].replace(", ", ",").split(",")]
        assert all(synonyms)


def test_classname_conventions():
    assert set(DATASETS) == {"ade20k_150", "ade20k_847", "pascal_ctx_59", "pascal_ctx_459",
                             "pascal_voc_21", "pascal_voc_20"}
    assert load_classnames("ade20k_150")[0][0] == "wall"
    assert load_classnames("pascal_voc_21")[0][0] == "background"
    assert load_classnames("pascal_voc_20") == load_classnames("pascal_voc_21")[1:]
    assert load_classnames("pascal_voc_20")[-1][0] == "tvmonitor"
    assert split_synonyms("sofa, couch") == ["sofa", "couch"]
    assert split_synonyms("a,b, c ,d") == ["a", "b", "c", "d"]
    assert split_synonyms("single") == ["single"]
    with pytest.raises(ValueError, match="unknown dataset"):
        load_classnames("coco")
    with pytest.raises(TypeError):
        split_synonyms(None)
