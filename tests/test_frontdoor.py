"""The front door as a newcomer meets it: importing from the source tree, the public surface."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ovs

PKG = Path(ovs.__file__).resolve().parent


def test_import_from_an_unbuilt_source_tree_says_what_to_do(tmp_path):
    # A source checkout without the built extension, run from its root (where the quick start
    # runs): the tree shadows the installed package. Python's own message is "circular import".
    (tmp_path / "setup.py").write_text("")
    shutil.copytree(PKG, tmp_path / "ovs", ignore=shutil.ignore_patterns("_core.*", "__pycache__"))
    # An editable install adds a finder that would still locate _core: leave it out, as in a
    # regular install.
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
            "if 'editable' not in repr(f).lower()]; import ovs")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode != 0
    assert "imported from its source tree" in r.stderr and "pip install -e ." in r.stderr, r.stderr
    assert "circular import" not in r.stderr, r.stderr


def test_state_dict_is_called_as_in_torch(load_model):
    model = load_model("vit_tiny")
    sd = model.state_dict()
    assert isinstance(sd, dict) and sd.keys() == model.state_dict.keys()
    name = "visual.proj"
    assert sd[name] is model.state_dict[name]
    assert not sd[name].flags.writeable
    # The torch spelling round-trips through ovs.Model.
    again = ovs.Model(model.state_dict(), act=model.act)
    assert again.state_dict().keys() == sd.keys()


def test_images_as_paths_and_pil_images(load_model, tmp_path):
    """segment/predict/logits and encode_image take a file path or a PIL image too (open_clip
    users pass PIL images); they give exactly what the decoded array gives."""
    from PIL import Image

    model = load_model("vit_tiny")
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    pil = Image.open(path)
    seg = ovs.Segmenter(model, "maskclip", short_side=None, window=None)
    names = ["cat", "dog"]
    want = seg.segment(arr, names)
    for im in (str(path), path, pil, pil.convert("RGBA"), pil.convert("P")):
        if getattr(im, "mode", "RGB") == "P":  # palette quantisation changes the pixels
            continue
        np.testing.assert_array_equal(seg.segment(im, names), want)
    np.testing.assert_array_equal(seg.predict(path, names), seg.predict(arr, names))
    np.testing.assert_array_equal(seg.segment([path, arr], names)[0], want)
    np.testing.assert_array_equal(model.encode_image(pil), model.encode_image(arr))
    np.testing.assert_array_equal(model.encode_image([str(path), arr])[0], model.encode_image(arr)[0])
    with pytest.raises(FileNotFoundError, match="image file not found"):
        seg.segment(tmp_path / "missing.png", names)
    (tmp_path / "not.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not an image file Pillow can read"):
        seg.segment(tmp_path / "not.png", names)


def test_segmenter_help_and_repr_say_what_the_defaults_are(load_model):
    import pydoc

    text = pydoc.render_doc(ovs.Segmenter, renderer=pydoc.plaintext)
    assert "short_side=<method default>" in text and "object object at" not in text
    seg = ovs.Segmenter(load_model("vit_tiny"), "naclip")
    r = repr(seg)
    assert "sigma=5.0" in r and "short_side=336" in r and "window=(224, 112)" in r


def test_every_method_is_everywhere_it_must_be():
    """A head is one METHODS/DEFAULTS entry plus its C function: the CLI's choices, the FLOP
    counter and the README table must all know it (the CLI reads the tables)."""
    import re

    from ovs import flops, segment
    from ovs.cli import build_parser
    from ovs.frameworks import FRAMEWORKS

    assert set(segment.DEFAULTS) == set(segment.METHODS)
    assert set(flops.HEADS) == set(segment.METHODS)
    assert segment.method_choices() == list(segment.METHODS) + list(FRAMEWORKS)
    help_text = build_parser().parse_known_args(["segment", "x", "--classes", "a", "--out", "o"])
    assert help_text  # parses
    sub = build_parser()._subparsers._group_actions[0].choices["segment"]
    method = next(a for a in sub._actions if a.dest == "method")
    assert list(method.choices) == segment.method_choices()
    readme = (PKG.parent / "README.md").read_text()
    for m in segment.METHODS:
        assert re.search(rf"^\| `{m}`", readme, re.M), f"README methods table lacks {m}"
