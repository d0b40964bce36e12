"""The command line: `python -m ovs segment IMAGE... --classes ... --out ... [--overlay ...]`.

Runs the real entry point in a subprocess (exit codes, files written, messages) on the shipped
example photo and on PNGs written here (grayscale, 16-bit grayscale, RGBA), with the tiny
random-weight ViT fixture as --model.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ovs
from ovs.cli import read_image

REPO = Path(ovs.__file__).resolve().parent.parent
CAT = REPO / "ovs" / "data" / "example_cat.jpg"
CLASSES = "cat,grass,sky"


@pytest.fixture(scope="module")
def model_path(fixtures_dir) -> Path:
    return fixtures_dir / "vit_tiny.safetensors"


def run_cli(*args, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.pop("OVS_MODEL", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "ovs", *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=300)


def segment_args(model_path, *images, out, extra=(), threads=1):
    """One thread except where the default matters: results do not depend on it, and it keeps
    the runs fast when other processes share the cores."""
    return ["segment", *images, "--classes", CLASSES, "--model", model_path, "--act", "gelu",
            "--out", out, *(["--threads", str(threads)] if threads else []), *extra]


def check_mask(path: Path, size: tuple[int, int], n_classes: int) -> np.ndarray:
    """An indexed PNG of the image's size whose values are class indices (or 255)."""
    assert path.is_file(), f"{path} was not written"
    with Image.open(path) as im:
        assert im.mode == "P", f"{path}: mode {im.mode}, expected an indexed (P) PNG"
        assert im.size == size, f"{path}: size {im.size} != image size {size}"
        values = np.asarray(im)
    bad = values[(values >= n_classes) & (values != 255)]
    assert bad.size == 0, f"{path}: values {np.unique(bad)} are not class indices"
    return values


def check_overlay(path: Path, size: tuple[int, int]) -> None:
    assert path.is_file(), f"{path} was not written"
    with Image.open(path) as im:
        assert im.width > size[0], f"{path}: width {im.width} leaves no room for a legend"
        assert im.height >= size[1]


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit code {proc.returncode}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr


def assert_fails(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode != 0, f"expected a failure, got exit code 0\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, f"a traceback instead of a message:\n{proc.stderr}"
    for f in fragments:
        assert f in proc.stderr, f"{f!r} not in the error message:\n{proc.stderr}"


# ------------------------------------------------------------------------------ the main job
def test_segment_example_cat(model_path, tmp_path):
    proc = run_cli(*segment_args(model_path, CAT, out="mask.png", threads=None,
                                 extra=["--overlay", "overlay.png"]), cwd=tmp_path)
    assert_ok(proc)
    with Image.open(CAT) as im:
        size = im.size
    mask = check_mask(tmp_path / "mask.png", size, 3)
    check_overlay(tmp_path / "overlay.png", size)
    # The file holds exactly what the Python API computes with the same defaults.
    model = ovs.load(model_path, act="gelu")
    labels = ovs.Segmenter(model).segment(read_image(CAT), CLASSES.split(","))
    assert np.array_equal(mask, labels), f"{int((mask != labels).sum())} pixels differ from the API"
    assert "cat" in proc.stdout or "grass" in proc.stdout or "sky" in proc.stdout, proc.stdout


def test_grayscale_and_rgba_png(model_path, tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (45, 70), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    rgba = rng.integers(0, 256, (33, 51, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    for name, size in (("gray", (70, 45)), ("rgba", (51, 33))):
        proc = run_cli(*segment_args(model_path, tmp_path / f"{name}.png",
                                     out=tmp_path / f"{name}_mask.png",
                                     extra=["--overlay", tmp_path / f"{name}_ov.png",
                                            "--short-side", "64"]))
        assert_ok(proc)
        check_mask(tmp_path / f"{name}_mask.png", size, 3)
        check_overlay(tmp_path / f"{name}_ov.png", size)


def test_read_image_modes(tmp_path):
    """Grayscale is replicated, alpha composited on white, 16-bit and float data scaled (not
    clipped to white)."""
    rng = np.random.default_rng(1)
    g8 = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(g8, mode="L").save(tmp_path / "g8.png")
    expected = np.repeat(g8[:, :, None], 3, axis=2)
    assert np.array_equal(read_image(tmp_path / "g8.png"), expected)
    Image.fromarray(g8.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # 16-bit PNG
    got = read_image(tmp_path / "g16.png")
    assert np.array_equal(got, expected), \
        f"16-bit grayscale: max diff {np.abs(got.astype(int) - expected).max()}"
    Image.fromarray(g8.astype(np.float32) / 255).save(tmp_path / "f.tiff")  # float in [0, 1]
    got = read_image(tmp_path / "f.tiff")
    assert np.abs(got.astype(int) - expected).max() <= 1
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    a = rgba[..., 3:].astype(np.float64) / 255
    comp = rgba[..., :3] * a + 255 * (1 - a)
    got = read_image(tmp_path / "a.png")
    assert got.shape == (20, 30, 3) and np.abs(got - comp).max() <= 1.0
    (tmp_path / "not_an_image.png").write_bytes(b"hello")
    with pytest.raises(ValueError, match="not an image"):
        read_image(tmp_path / "not_an_image.png")


def test_several_images_to_folder(model_path, tmp_path):
    rng = np.random.default_rng(2)
    paths = []
    for k, shape in enumerate(((40, 60), (61, 37))):
        p = tmp_path / f"img{k}.png"
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(p)
        paths.append((p, shape))
    out = tmp_path / "masks"
    out.mkdir()
    overlays = tmp_path / "new" / "overlays"  # does not exist: a trailing "/" creates it
    proc = run_cli(*segment_args(model_path, *[p for p, _ in paths], out=out,
                                 extra=["--overlay", f"{overlays}/", "--short-side", "64"]))
    assert_ok(proc)
    for p, (h, w) in paths:
        check_mask(out / f"{p.stem}_mask.png", (w, h), 3)
        check_overlay(overlays / f"{p.stem}_overlay.png", (w, h))
    # Several images with --out naming one file: refused before any work.
    proc = run_cli(*segment_args(model_path, *[p for p, _ in paths], out=tmp_path / "one.png"))
    assert_fails(proc, "folder")
    assert not (tmp_path / "one.png").exists()


def test_more_than_255_classes(model_path, tmp_path):
    """Label values above 255 do not fit an indexed PNG: a 16-bit PNG is written."""
    classes = ";".join(f"thing {i}" for i in range(300))
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(img)
    proc = run_cli("segment", img, "--classes", classes, "--model", model_path, "--act", "gelu",
                   "--out", tmp_path / "m.png", "--short-side", "0", "--window", "whole",
                   "--templates", "bare", "--threads", "1")
    assert_ok(proc)
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "I;16", f"mode {im.mode}: not a 16-bit PNG"
        assert im.size == (40, 24)
        values = np.asarray(im)
    model = ovs.load(model_path, act="gelu")
    seg = ovs.Segmenter(model, short_side=None, window=None, templates="bare")
    labels = seg.segment(read_image(img), classes.split(";"))
    assert labels.max() > 255, "the case does not exercise labels above 255"
    assert np.array_equal(values.astype(np.int64), labels), "PNG labels differ from the API's"


def test_options_reach_the_segmenter(model_path, tmp_path):
    """--method, --logit-scale and --bg-threshold (-1 -> 255 in the PNG) give the API's labels."""
    img = tmp_path / "img.png"
    rgb = np.random.default_rng(4).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(img)
    model = ovs.load(model_path, act="gelu")
    names = CLASSES.split(",")
    opts = ["--short-side", "0", "--window", "whole", "--templates", "bare"]
    probs = ovs.Segmenter(model, method="clearclip", short_side=None, window=None,
                          templates="bare", logit_scale=7.0).predict(rgb, names)
    thr = float(np.median(probs.max(0)))  # about half of the pixels fall below it
    api = ovs.Segmenter(model, method="clearclip", short_side=None, window=None,
                        templates="bare", logit_scale=7.0, bg_threshold=thr).segment(rgb, names)
    assert 0 < (api == -1).mean() < 1
    proc = run_cli(*segment_args(model_path, img, out=tmp_path / "m.png",
                                 extra=[*opts, "--method", "clearclip", "--logit-scale", "7",
                                        "--bg-threshold", repr(thr)]))
    assert_ok(proc)
    png = check_mask(tmp_path / "m.png", (56, 40), 3).astype(np.int64)
    assert np.array_equal(png, np.where(api < 0, 255, api)), "CLI labels differ from the API's"
    assert "method='clearclip'" in proc.stderr and "logit_scale=7.0" in proc.stderr, proc.stderr


def test_ovs_model_environment_default(model_path, tmp_path):
    """Without --model, $OVS_MODEL names the weights."""
    proc = run_cli("segment", CAT, "--classes", CLASSES, "--act", "gelu", "--out",
                   tmp_path / "m.png", "--threads", "1", env={"OVS_MODEL": str(model_path)})
    assert_ok(proc)
    assert f"loading model {model_path}" in proc.stderr, proc.stderr
    with Image.open(CAT) as im:
        check_mask(tmp_path / "m.png", im.size, 3)


def test_console_script_entry_point(model_path, tmp_path):
    """The `ovs` console script's target (pyproject: ovs.cli:main) run as a program."""
    code = "import sys; from ovs.cli import main; sys.exit(main())"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code, *map(str, segment_args(
        model_path, CAT, out=tmp_path / "m.png"))], capture_output=True, text=True, env=env,
        timeout=300)
    assert_ok(proc)
    proc = subprocess.run([sys.executable, "-c", code, "segment", str(tmp_path / "nope.jpg"),
                           "--classes", "a", "--out", str(tmp_path / "x.png")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "not found" in proc.stderr, (proc.returncode, proc.stderr)


# ------------------------------------------------------------------------------ failures
def test_refuses_to_overwrite_the_input(model_path, tmp_path):
    """--out/--overlay naming an input image (or a link to it) is refused before any work and
    the photo is left intact (it was replaced by the mask, or truncated to 0 bytes)."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(CAT.read_bytes())
    link = tmp_path / "link.jpg"
    link.symlink_to(photo)
    png = tmp_path / "photo.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(png)
    original = png.read_bytes()
    for img, out, extra in ((photo, photo, []), (photo, link, []), (png, png, []),
                            (photo, tmp_path / "m.png", ["--overlay", str(photo)])):
        before = img.read_bytes()
        proc = run_cli(*segment_args(model_path, img, out=out, extra=extra))
        assert_fails(proc, "refusing to overwrite", str(img.name))
        assert "loading model" not in proc.stderr, "the check came after loading the model"
        assert img.read_bytes() == before, f"{img} was modified"
    assert png.read_bytes() == original


def test_output_written_atomically(model_path, tmp_path, monkeypatch):
    """An existing output is replaced only by a complete file: when the save fails, the old file
    is intact and no temporary file remains."""
    old = tmp_path / "old.jpg"
    old.write_bytes(CAT.read_bytes())
    before = old.read_bytes()
    # A .jpg output: PNG data is written under that name (the format is PNG, never truncated).
    proc = run_cli(*segment_args(model_path, CAT, out=old))
    assert_ok(proc)
    with Image.open(old) as im:
        assert im.format == "PNG"
    old.write_bytes(before)
    from ovs import cli

    def disk_full(self, fp, *args, **kw):  # half a file written, then an error
        if isinstance(fp, (str, os.PathLike)):
            Path(fp).write_bytes(b"\x89PNG partial")
        else:
            fp.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        cli.save_label_png(np.zeros((8, 8), np.int32), old, 3)
    assert old.read_bytes() == before, "a failed save damaged the existing file"
    assert [p.name for p in tmp_path.iterdir()] == ["old.jpg"], list(tmp_path.iterdir())


def test_output_folder_checked_before_work(model_path, tmp_path):
    proc = run_cli(*segment_args(model_path, CAT, out=tmp_path / "missing" / "m.png"))
    assert_fails(proc, "does not exist", "missing")
    assert "loading model" not in proc.stderr
    proc = run_cli(*segment_args(model_path, CAT, out=tmp_path / "m.png",
                                 extra=["--overlay", str(tmp_path / "nodir" / "o.png")]))
    assert_fails(proc, "nodir")
    assert "loading model" not in proc.stderr


def test_decompression_bomb_png(model_path, tmp_path):
    """A small PNG declaring 20000 x 20000 pixels: a clear error, not Pillow's traceback."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    assert bomb.stat().st_size < 200
    with pytest.raises(ValueError, match=r"bomb\.png.*too large"):
        read_image(bomb)
    proc = run_cli(*segment_args(model_path, bomb, out=tmp_path / "m.png"))
    assert_fails(proc, "bomb.png", "too large")
    assert proc.returncode == 2


def test_missing_image(model_path, tmp_path):
    proc = run_cli(*segment_args(model_path, tmp_path / "nope.jpg", out=tmp_path / "m.png"))
    assert_fails(proc, "nope.jpg", "not found")
    assert "loading model" not in proc.stderr, "the model was loaded before checking the inputs"
    proc = run_cli(*segment_args(model_path, CAT, tmp_path / "nope.jpg", out=f"{tmp_path}/"))
    assert_fails(proc, "nope.jpg")
    assert not list(tmp_path.glob("*_mask.png")), "outputs written before the error"


@pytest.mark.parametrize("classes", ["", " , ,", ";"])
def test_empty_classes(model_path, tmp_path, classes):
    proc = run_cli("segment", CAT, "--classes", classes, "--model", model_path, "--out",
                   tmp_path / "m.png")
    assert_fails(proc, "--classes")


def test_bad_options(model_path, tmp_path):
    proc = run_cli(*segment_args(model_path, CAT, out=tmp_path / "m.png",
                                 extra=["--method", "segformer"]))
    assert_fails(proc, "segformer")
    proc = run_cli(*segment_args(model_path, CAT, out=tmp_path / "m.png", extra=["--window", "0,5"]))
    assert_fails(proc, "window")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    proc = run_cli(*segment_args(bad, CAT, out=tmp_path / "m.png"))
    assert_fails(proc, "bad.safetensors")


def test_offline_unknown_weights(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {"OVS_OFFLINE": "1", "OVS_CACHE_DIR": str(cache), "HF_HUB_CACHE": str(tmp_path / "hf"),
           "HF_HOME": str(tmp_path / "hfhome"), "OVS_WEIGHTS_DIR": ""}
    proc = run_cli("segment", CAT, "--classes", CLASSES, "--model", "RN50", "--out",
                   tmp_path / "m.png", env=env)
    assert_fails(proc, "RN50", "OVS_WEIGHTS_DIR", "open_clip_model.safetensors", "offline")
    assert not (tmp_path / "m.png").exists()


# ------------------------------------------------------------------------------ entry points
def test_help_and_entry_point():
    proc = run_cli("--help")
    assert_ok(proc)
    assert "segment" in proc.stdout
    proc = run_cli("segment", "--help")
    assert_ok(proc)
    for opt in ("--classes", "--model", "--out", "--overlay", "--method", "--act"):
        assert opt in proc.stdout, f"{opt} missing from `ovs segment --help`"
    assert run_cli().returncode != 0  # no command: usage error
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.get("ovs") == "ovs.cli:main", scripts
    from ovs import cli

    assert callable(cli.main)
