"""`ovs eval` / ovs.evaluate end to end on synthetic datasets in each exact layout (written by
tests/data/make_datasets.py) with the random-weight fixture models (tests/_generated):

* every preset through the CLI: the confusion matrix written equals one recomputed here from
  ovs.Segmenter's label maps and detectron2's NumPy bincount (tests/test_metrics.py), and the
  reported scores are those of ovs.metrics on it;
* a run killed mid-way (SIGKILL of the subprocess) resumes from its per-image file and ends with
  the matrix of an uninterrupted run; other settings refuse to resume;
* worker processes and a local Ray cluster (started here, num_cpus=2) give bit-identical
  matrices to the single-process run;
* bad options fail with clear errors (--sparsity without ovs.prune).
Settings are chosen for speed: bare templates, short side 64, whole-image inference.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import ovs
from ovs import cli
from ovs import metrics as M

from conftest import load_test_module

HERE = Path(__file__).resolve().parent
FAST = ["--templates", "bare", "--short-side", "64", "--window", "whole", "--no-progress"]
FAST_KW = dict(templates="bare", short_side=64, window="whole", progress=False)
MODELS = {"vit": ("vit_tiny", "naclip"), "rn": ("rn_tiny", "maskclip")}


def _gen():
    return load_test_module("data/make_datasets.py", "ovs_tests_make_datasets")


def check_framework_eval(tmp_path, model, path, method: str) -> None:
    """`ovs eval --method <framework>` on a converted file (the method's own templates): the
    confusion matrix is the one of Segmenter.segment over the dataset (tiny detectron2-layout
    data, tests/data/make_datasets.py)."""
    from test_metrics import d2_confusion

    _gen().make(tmp_path / "d2", "voc-20", images=2, size=(20, 28))
    out = tmp_path / "res.json"
    rc = cli.main(["eval", "--dataset", "voc-20", "--root", str(tmp_path / "d2"), "--model", str(path),
                   "--method", method, "--short-side", "64",
                   "--out", str(out), "--threads", "1", "--no-progress"])
    assert rc == 0
    conf = np.load(tmp_path / "res.confusion.npy")
    ds = ovs.datasets.load_dataset("voc-20", tmp_path / "d2")
    seg = ovs.Segmenter(model, method, short_side=64)
    ref = np.zeros_like(conf)
    for i in range(len(ds)):
        image, gt = ds[i]
        ref += d2_confusion(seg.segment(image, ds.prompts()), gt, ds.num_classes, ds.ignore_label)
    np.testing.assert_array_equal(conf, ref)
    assert json.loads(out.read_text())["settings"]["method"] == method


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("d2")
    for name in _gen().LAYOUTS:
        _gen().make(root, name, images=2, size=(20, 28))
    return root


def _model_args(fixtures_dir, manifest, kind):
    name, method = MODELS[kind]
    return str(fixtures_dir / f"{name}.safetensors"), manifest["models"][name]["act"], method


@pytest.mark.parametrize("dataset,kind", [("ade20k-150", "vit"), ("ade20k-847", "rn"), ("pascal-context-59", "rn"),
                                          ("pascal-context-459", "vit"), ("voc-20", "vit"), ("voc-21", "rn")])
def test_cli_end_to_end(tmp_path, data_root, fixtures_dir, manifest, load_model, dataset, kind, capsys):
    from test_metrics import d2_confusion

    path, act, method = _model_args(fixtures_dir, manifest, kind)
    out = tmp_path / "res.json"
    rc = cli.main(["eval", "--dataset", dataset, "--root", str(data_root), "--model", path, "--act", act,
                   "--method", method, "--out", str(out), "--threads", "1"] + FAST)
    assert rc == 0
    printed = capsys.readouterr().out
    rep = json.loads(out.read_text())
    conf = np.load(tmp_path / "res.confusion.npy")
    ds = ovs.datasets.load_dataset(dataset, data_root)
    # ovs eval applies the method's preset for the dataset (ovs.presets); explicit options win
    preset = dataset if dataset in ovs.presets.PRESETS else None
    seg = ovs.Segmenter(load_model(MODELS[kind][0]), method=method, templates="bare", short_side=64, window=None,
                        preset=preset)
    ref = np.zeros_like(conf)
    for i in range(len(ds)):
        image, gt = ds[i]
        ref += d2_confusion(seg.segment(image, ds.prompts()), gt, ds.num_classes, ds.ignore_label)
    np.testing.assert_array_equal(conf, ref)
    s = M.scores(ref)
    assert rep["scores"]["mIoU"] == pytest.approx(s["mIoU"], rel=1e-12)
    assert rep["scores"]["mIoU_union"] == pytest.approx(s["mIoU_union"], rel=1e-12)
    assert rep["scores"]["class_names"] == [n[0] for n in ds.class_names]
    iou = np.array([np.nan if v is None else v for v in rep["scores"]["IoU"]])
    np.testing.assert_array_equal(iou, s["IoU"])
    assert rep["settings"]["dataset"] == dataset and rep["timing"]["images"] == len(ds) == 2
    assert rep["model"]["digest"] == ovs.evaluate.__globals__["model_digest"](load_model(MODELS[kind][0]))
    assert rep["pixels"]["ignored"] == sum(int((ds.label(i) == ds.ignore_label).sum()) for i in range(len(ds)))
    md = (tmp_path / "res.md").read_text()
    assert f"| {ds.num_classes - 1} | {ds.class_names[-1][0]} |" in md and "mIoU" in md
    lines = (tmp_path / "res.images.jsonl").read_text().splitlines()
    assert len(lines) == 1 + len(ds)
    assert f"{dataset}: mIoU " in printed


def test_resume_after_kill(tmp_path, fixtures_dir, manifest):
    root = tmp_path / "d2"
    _gen().make(root, "voc-21", images=10, size=(60, 80))
    path, act, method = _model_args(fixtures_dir, manifest, "vit")
    args = ["--dataset", "voc-21", "--root", str(root), "--model", path, "--act", act, "--method", method,
            "--threads", "1", "--templates", "bare", "--short-side", "224", "--window", "whole", "--no-progress"]
    out = tmp_path / "killed.json"
    state = tmp_path / "killed.images.jsonl"
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "ovs", "eval", *args, "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=HERE.parent)
    deadline = time.time() + 120
    while time.time() < deadline:
        if state.exists() and len(state.read_text().splitlines()) >= 3:   # header + 2 images
            break
        if proc.poll() is not None:
            break
        time.sleep(0.005)
    still_running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert still_running, "the run finished before it could be killed; use more images"
    assert not out.exists()
    done = len([ln for ln in state.read_text().splitlines()[1:] if ln.strip()])
    assert 2 <= done < 10
    with open(state, "a") as f:
        f.write('{"index": 9, "id": "pascal_voc_00')   # a record cut off by the kill
    assert cli.main(["eval", *args, "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["timing"]["resumed"] >= done and rep["timing"]["resumed"] + rep["timing"]["evaluated_now"] == 10
    # same totals as an uninterrupted run
    assert cli.main(["eval", *args, "--out", str(tmp_path / "whole.json")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "killed.confusion.npy"), np.load(tmp_path / "whole.confusion.npy"))
    # resuming a finished run evaluates nothing; other settings refuse the file
    assert cli.main(["eval", *args, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["timing"]["evaluated_now"] == 0
    with pytest.raises(ValueError, match="other settings .* --restart"):
        ovs.evaluate("voc-21", path, method, root=root, act=act, out=out, threads=1, templates="bare",
                     short_side=100, window="whole", progress=False)


def test_workers_and_ray_match_single_process(tmp_path, data_root, fixtures_dir, manifest):
    ray = pytest.importorskip("ray")
    path, act, method = _model_args(fixtures_dir, manifest, "vit")
    kw = dict(root=data_root, act=act, threads=1, **FAST_KW)
    single = ovs.evaluate("pascal-context-59", path, method, **kw)
    procs = ovs.evaluate("pascal-context-59", path, method, workers=2, **kw)
    np.testing.assert_array_equal(procs["confusion"], single["confusion"])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(HERE.parent)}})
    try:
        distributed = ovs.evaluate("pascal-context-59", path, method, ray=True, out=tmp_path / "ray.json", **kw)
    finally:
        ray.shutdown()
    assert distributed["ray"]["actors"] == 2 and distributed["ray"]["cluster_cpus"] == 2
    np.testing.assert_array_equal(distributed["confusion"], single["confusion"])
    assert single["confusion"][:-1].sum() > 0
    assert distributed["model"]["digest"] == single["model"]["digest"]
    assert distributed["scores"] == single["scores"]


def test_bad_options(tmp_path, data_root, fixtures_dir, manifest, capsys):
    path, act, method = _model_args(fixtures_dir, manifest, "vit")
    if importlib.util.find_spec("ovs.prune") is None:
        with pytest.raises(RuntimeError, match="sparsity needs ovs.prune"):
            ovs.evaluate("voc-21", path, method, root=data_root, sparsity=0.9)
        with pytest.raises(SystemExit, match="sparsity needs ovs.prune"):
            cli.main(["eval", "--dataset", "voc-21", "--root", str(data_root), "--model", path, "--sparsity", "0.9"])
    with pytest.raises(ValueError, match="sparsity must be a fraction"):
        ovs.evaluate("voc-21", path, method, root=data_root, sparsity=1.5)
    with pytest.raises(ValueError, match="limit must be an int >= 1, got 0"):
        ovs.evaluate("voc-21", path, method, root=data_root, limit=0)
    with pytest.raises(ValueError, match="convention"):
        ovs.evaluate("voc-21", path, method, root=data_root, convention="mean")
    with pytest.raises(TypeError, match="unknown option"):
        ovs.evaluate("voc-21", path, method, root=data_root, sigma=3)
    assert cli.main(["eval", "--dataset", "voc-21", "--root", str(tmp_path / "none"), "--model", path]) == 2
    assert "dataset root directory not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["eval", "--dataset", "coco", "--model", path])
    # --limit evaluates the first N images only; the caller's thread setting is restored
    before = ovs.get_num_threads()
    rep = ovs.evaluate("voc-21", path, method, root=data_root, act=act, limit=1, threads=before + 1, **FAST_KW)
    assert rep["timing"]["images"] == 1 and rep["timing"]["threads_per_worker"] == before + 1
    assert ovs.get_num_threads() == before
