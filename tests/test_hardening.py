"""Regression tests for the defects of a hostile-input review (issue 7 §1): weight files changed
under a loaded model, thread settings across Python threads, odd paths (FIFOs, devices), huge or
float images, non-finite outputs and precise error messages. Each test failed before its fix.

Tests that crash or block by nature (SIGBUS, a FIFO that never gets a writer) or that measure the
process (threads, peak RSS) run a short script in a fresh interpreter.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ovs
from ovs.weights import load_state_dict, save_safetensors

ROOT = Path(__file__).resolve().parent.parent


def run_script(code: str, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that imports this checkout's ovs."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("OMP_NUM_THREADS", None)
    e.update({k: str(v) for k, v in env.items()})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, cwd=str(ROOT), env=e)


def check(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, (f"exit code {proc.returncode}\nstdout:\n{proc.stdout}\n"
                                  f"stderr:\n{proc.stderr[-3000:]}")
    return proc.stdout


# ------------------------------------------------------------------------------ threads
def test_set_num_threads_is_process_wide():
    """ovs.set_num_threads(n) called on one Python thread sets the OpenMP team size of the
    parallel regions run by every other thread (omp_set_num_threads alone is per thread). The
    team size is observed as the OS threads that a worker's first parallel region creates."""
    code = """
        import os, sys, threading, numpy as np, ovs
        from ovs import _core

        n, where = int(sys.argv[1]), sys.argv[2]
        x = np.ones((4000, 1000), np.float32)
        res = {}

        def tasks():
            return len(os.listdir("/proc/self/task"))

        def work():
            if where == "worker":
                ovs.set_num_threads(n)
            before = tasks()
            for _ in range(3):
                _core.op_softmax(x)
            res["new"] = tasks() - before

        if where == "main":
            ovs.set_num_threads(n)
        t = threading.Thread(target=work)
        t.start()
        t.join()
        print(res["new"], ovs.get_num_threads())
    """
    got = {}
    for n, where in ((1, "main"), (3, "main"), (4, "worker")):
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(n), where],
                              capture_output=True, text=True, timeout=120, cwd=str(ROOT),
                              env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"})
        got[n, where] = tuple(int(v) for v in check(proc).split())
    assert got == {(1, "main"): (0, 1), (3, "main"): (2, 3), (4, "worker"): (3, 4)}, (
        "(extra OS threads started by a worker thread's parallel region, get_num_threads()) "
        f"after set_num_threads(n) on the main thread or on the worker: {got}")


# ------------------------------------------------------------------------------ weight files
@pytest.fixture(scope="module")
def vit_path(fixtures_dir) -> Path:
    return fixtures_dir / "vit_tiny.safetensors"


@pytest.mark.parametrize("change", ["truncate", "overwrite"])
def test_weight_file_changed_after_load(vit_path, tmp_path, change):
    """A loaded model keeps its weights when the file is truncated (with a mapping: SIGBUS on
    the next call, which kills the interpreter) or rewritten in place (with a mapping: silently
    different results); its state dict, read from the file on access, then refuses with OSError
    instead of returning other weights."""
    path = tmp_path / "model.safetensors"
    path.write_bytes(vit_path.read_bytes())
    proc = run_script(f"""
        import os, numpy as np, ovs
        path = {str(path)!r}
        model = ovs.load(path, act="gelu")
        sd = model.state_dict
        img = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
        seg = ovs.Segmenter(model, short_side=None, window=None)
        names = ["cat", "grass"]
        before = (model.encode_image(img), seg.logits(img, names))
        size = os.path.getsize(path)
        if {change!r} == "truncate":
            os.truncate(path, 4096)
        else:
            with open(path, "r+b") as f:  # same inode, every data byte changed
                f.seek(4096)
                f.write(os.urandom(size - 4096))
        after = (model.encode_image(img), seg.logits(img, names))
        assert all(np.array_equal(a, b) for a, b in zip(before, after)), "results changed"
        for k in list(sd)[:3]:
            try:
                sd[k]
            except OSError as e:
                assert "changed since it was opened" in str(e), e
            else:
                raise AssertionError(f"{{k}} was read from the changed file")
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (
        f"after {change} of the weight file: exit code {proc.returncode} "
        f"(negative = killed by signal {-proc.returncode if proc.returncode < 0 else ''})\n"
        f"{proc.stderr[-2000:]}")


@pytest.mark.parametrize("call", ["ovs.load", "load_state_dict", "SafeTensorsFile"])
def test_fifo_weight_path_refused(tmp_path, call):
    """A FIFO without a writer made open() block forever, and ovs.load called it "does not
    exist": it is refused at once, naming what it is. Run in a subprocess with a timeout so
    that a regression hangs one test, not the suite."""
    fifo = tmp_path / "weights.safetensors"
    os.mkfifo(fifo)
    proc = run_script(f"""
        import ovs
        from ovs.weights import load_state_dict, SafeTensorsFile
        try:
            {call}({str(fifo)!r})
        except OSError as exc:
            print(type(exc).__name__, exc)
    """, timeout=60)
    out = check(proc)
    assert out.startswith("OSError") and "FIFO (named pipe)" in out and "regular file" in out, out


@pytest.mark.parametrize("call", ["ovs.load", "load_state_dict", "SafeTensorsFile"])
def test_device_and_directory_weight_paths_refused(tmp_path, call):
    fn = {"ovs.load": ovs.load, "load_state_dict": load_state_dict,
          "SafeTensorsFile": ovs.weights.SafeTensorsFile}[call]
    with pytest.raises(OSError, match=r"/dev/zero.*character device.*regular file"):
        fn("/dev/zero")
    with pytest.raises(IsADirectoryError, match="directory"):
        fn(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        fn(tmp_path / "nope.safetensors")


# ------------------------------------------------------------------------------ messages
@pytest.fixture(scope="module")
def vit(vit_path):
    return ovs.load(vit_path, act="gelu")


@pytest.fixture(scope="module")
def vit_sd(vit_path):
    return load_state_dict(vit_path)


IMG = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", [5, (2.7, 3.9), (0, 4), (4,), "ab", (True, 3)])
def test_output_size_validated(vit, size):
    import re

    with pytest.raises(ValueError, match=re.escape(f"two positive ints, got {size!r}")):
        ovs.Segmenter(vit, output_size=size)


@pytest.mark.parametrize("names,match", [(None, "list of str, got NoneType"),
                                         ("cat", "list of str, got str 'cat'"),
                                         (["cat", 3], "must be str, got 3")])
@pytest.mark.parametrize("call", ["segment", "predict", "logits"])
def test_class_names_validated(vit, names, match, call):
    seg = ovs.Segmenter(vit, short_side=None, window=None)
    with pytest.raises(TypeError, match=match):
        getattr(seg, call)(IMG, names)


def _save(sd, tmp_path, name="m.safetensors"):
    p = tmp_path / name
    save_safetensors(sd, p)
    return p


def test_zero_row_positional_embedding(vit_sd, tmp_path):
    sd = dict(vit_sd)
    sd["visual.positional_embedding"] = np.zeros((0, vit_sd["visual.positional_embedding"].shape[1]),
                                                 np.float32)
    with pytest.raises(ValueError, match=r"visual\.positional_embedding has 0 rows, not 1 \+ a square grid"):
        ovs.load(_save(sd, tmp_path), act="gelu")


def test_int_tensor_under_float_name(vit_sd, tmp_path):
    sd = dict(vit_sd)
    sd["visual.ln_post.weight"] = np.ones(vit_sd["visual.ln_post.weight"].shape, np.int64)
    with pytest.raises(TypeError, match=r"'visual\.ln_post\.weight' has dtype int64; CLIP weights "
                                        "must be floating point"):
        ovs.load(_save(sd, tmp_path), act="gelu")


def test_stray_block_index(vit_sd, tmp_path):
    sd = dict(vit_sd)
    sd["visual.transformer.resblocks.99.ln_1.weight"] = np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"visual\.transformer\.resblocks: block indices .* are "
                                         r"not 0\.\.99 .*resblocks\.99"):
        ovs.load(_save(sd, tmp_path), act="gelu")


def test_overflowing_weights_raise(vit_sd, tmp_path):
    """3e38 in a projection: predict/segment/encode_image returned NaN silently."""
    sd = dict(vit_sd)
    proj = np.array(vit_sd["visual.proj"])
    proj[:] = 3e38
    sd["visual.proj"] = proj
    model = ovs.load(_save(sd, tmp_path), act="gelu")
    seg = ovs.Segmenter(model, short_side=None, window=None, templates="bare")
    for call in (seg.predict, seg.segment, seg.logits):
        with pytest.raises(ValueError, match="NaN or infinite.*overflow float32"):
            call(IMG, ["cat", "dog"])
    with pytest.raises(ValueError, match="NaN or infinity.*overflow float32"):
        model.encode_image(IMG)


def test_encode_image_accepts_float_rgb(vit):
    """The README: float RGB in [0, 1] is accepted (rounded to uint8, as segment() does)."""
    f = IMG.astype(np.float64) / 255
    np.testing.assert_array_equal(vit.encode_image(f), vit.encode_image(IMG))
    np.testing.assert_array_equal(vit.encode_image(f.astype(np.float32)[None]),
                                  vit.encode_image(IMG[None]))
    np.testing.assert_array_equal(vit.encode_image([f, f]), vit.encode_image([IMG, IMG]))
    with pytest.raises(ValueError, match=r"\[0, 1\] \(got range 0\.\.255\)"):
        vit.encode_image(IMG.astype(np.float32))
    bad = f.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        vit.encode_image(bad)


# ------------------------------------------------------------------------------ huge inputs
def test_huge_image_memory_bounded(vit_path):
    """predict(10000 x 10000 image, output_size=(100, 100)) converted the whole input to float
    before resizing (1.2 GB here, 4.8 GB at 20000 x 20000): the resize now reads the uint8 input
    directly. The image is np.zeros, whose pages only count once touched, so the peak RSS growth
    measures what ovs itself touches."""
    out = check(run_script(f"""
        import resource, numpy as np, ovs
        model = ovs.load({str(vit_path)!r}, act="gelu")
        seg = ovs.Segmenter(model, short_side=64, window=None, templates="bare",
                            output_size=(100, 100))
        seg.predict(np.zeros((64, 64, 3), np.uint8), ["cat", "dog"])  # warm up
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        probs = seg.predict(np.zeros((10000, 10000, 3), np.uint8), ["cat", "dog"])
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
        print(grown // 1024, *probs.shape)
    """))
    grown_mb, c, h, w = (int(v) for v in out.split())
    assert (c, h, w) == (2, 100, 100)
    assert grown_mb < 200, f"peak RSS grew by {grown_mb} MB for a (100, 100) result"


# ------------------------------------------------------------------------------ untested API
def test_set_weight_errors(vit_path):
    model = ovs.load(vit_path, act="gelu")
    w = model.state_dict["visual.proj"]
    with pytest.raises(KeyError, match="no weight named 'visual.nope'"):
        model.set_weight("visual.nope", w)
    with pytest.raises(ValueError, match=r"visual\.proj: new shape \(3, 4\) != current shape"):
        model.set_weight("visual.proj", np.zeros((3, 4), np.float32))
    bad = np.array(w)
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="visual.proj: the new value contains NaN or infinity"):
        model.set_weight("visual.proj", bad)
    np.testing.assert_array_equal(model.state_dict["visual.proj"], w)  # unchanged after errors


def test_progress_and_classifier(vit, capsys):
    names = ["cat", "sofa, couch"]
    seg = ovs.Segmenter(vit, short_side=None, window=None, templates="simple", progress=True)
    seg.segment([IMG, IMG[:20]], names)
    err = capsys.readouterr().err
    assert "segmented 2/2 image(s)" in err and "(56x40)" in err, err
    cls = seg.classifier(names)
    np.testing.assert_array_equal(cls, vit.text_classifier(names, templates="simple"))
    # Independent of the cache: the mean of the L2-normalised prompt embeddings, normalised.
    emb = vit.encode_text(["a photo of a sofa.", "a photo of a couch."])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    want = emb.mean(0) / np.linalg.norm(emb.mean(0))
    np.testing.assert_allclose(cls[1], want, atol=1e-6)
    quiet = ovs.Segmenter(vit, short_side=None, window=None, templates="simple")
    quiet.segment(IMG, names)
    assert capsys.readouterr().err == ""


def test_sigma_reaches_naclip_only(vit):
    names = ["cat", "grass"]
    a, b = (ovs.Segmenter(vit, method="naclip", short_side=None, window=None, sigma=s,
                          templates="bare").logits(IMG, names) for s in (1.0, 50.0))
    assert np.abs(a - b).max() > 1e-4, "sigma does not change NACLIP's logits"
    assert ovs.Segmenter(vit, method="naclip").sigma == 5.0
