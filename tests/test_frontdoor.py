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
    # loaded from a safetensors file: a read-only mapping reading each tensor from the file
    assert isinstance(sd, ovs.weights.FileStateDict) and sd.keys() == model.state_dict.keys()
    name = "visual.proj"
    np.testing.assert_array_equal(sd[name], model.state_dict[name])
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
    assert list(segment.HEAD_TABLE) == list(segment.METHODS) == list(flops.HEADS)
    # the README's methods table is the heads table (csrc/methods/heads.c), row for row
    readme = (PKG.parent / "README.md").read_text()
    want = readme_methods_table()
    assert want in readme, "README's methods table differs from the heads table; it should read:\n" + want


def readme_methods_table() -> str:
    """The README's "Methods and their defaults" table, written from the heads table."""
    from ovs import _core

    tower = {"resnet": "RN50", "vit": "ViT"}
    lines = ["| method | towers | short side | window | logit scale | templates |",
             "|---|---|---|---|---|---|"]
    for h in _core.heads():
        name = f"`{h['name']}`" + "".join(f" (default for {tower[t]})" for t in h["default_for"])
        towers = ", ".join(tower[t] for t in h["towers"])
        towers += f", ≥ {h['min_layers']} blocks" if h["min_layers"] else ""
        window = "whole image" if h["window"] is None else "{} / {}".format(*h["window"])
        lines.append(f"| {name} | {towers} | {h['short_side']} | {window} | {h['logit_scale']:g} | "
                     f"{h['templates']} |")
    return "\n".join(lines) + "\n"


# Where each concept's names may be spelled: its one table (the C tables are read through
# _core.heads() / _core.activations()), plus files holding a *different* table keyed by them.
# Any other file of ovs/, csrc/ or include/ naming two or more of them (string constants outside
# docstrings and comments) is a second list, the thing that made a new head touch six files.
NAME_HOMES = {
    "heads": ({"csrc/methods/heads.c"},
              # dataset presets: settings per (method, dataset), checked against METHODS
              {"ovs/presets.py"}),
    "activations": ({"csrc/ops/act.c"}, set()),
    "architectures": ({"ovs/hub.py"}, set()),
}


def _string_constants(path: Path) -> list[str]:
    import ast
    import re

    text = path.read_text()
    if path.suffix != ".py":
        text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
        text = re.sub(r"//[^\n]*", "", text)
        return re.findall(r'"((?:[^"\\\n]|\\.)*)"', text)
    tree = ast.parse(text)
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_each_head_activation_and_architecture_is_named_in_one_table():
    from ovs import _core
    from ovs.hub import KNOWN_WEIGHTS

    names = {"heads": {h["name"] for h in _core.heads()},
             # "none" is also a template set's name: the activations that are only activations
             "activations": {a["name"] for a in _core.activations()} - {"none"},
             "architectures": {n for k in KNOWN_WEIGHTS.values() for n in (k.name, *k.aliases)}}
    root = PKG.parent
    files = [*root.glob("ovs/**/*.py"), *root.glob("csrc/**/*.[ch]"), *root.glob("include/**/*.h")]
    assert len(files) > 50
    found: dict[str, dict[str, set[str]]] = {c: {} for c in names}
    for f in files:
        consts = set(_string_constants(f))
        for concept, ns in names.items():
            if len(hit := consts & ns) >= 2:
                found[concept][f.relative_to(root).as_posix()] = hit
    for concept, (table, other_tables) in NAME_HOMES.items():
        assert table <= set(found[concept]), f"the {concept} table moved: {sorted(found[concept])}"
        extra = set(found[concept]) - table - other_tables
        assert not extra, (f"{concept} named outside their table ({', '.join(table)}): "
                           + "; ".join(f"{f}: {sorted(found[concept][f])}" for f in sorted(extra)))


def test_the_heads_table_is_consistent():
    from ovs import _core
    from ovs.templates import NAMES

    from ovs.frameworks import FRAMEWORKS

    heads = _core.heads()
    assert [h["name"] for h in heads] == list(ovs.METHODS)
    assert not set(ovs.METHODS) & set(FRAMEWORKS)   # Segmenter(method=) resolves either, unambiguously
    for tower in ("resnet", "vit"):   # one default per tower, and it runs there
        defaults = [h["name"] for h in heads if tower in h["default_for"]]
        assert len(defaults) == 1, (tower, defaults)
        assert tower in next(h for h in heads if h["name"] == defaults[0])["towers"]
    for h in heads:
        assert h["towers"] and set(h["towers"]) <= {"resnet", "vit"}, h
        assert h["templates"] in NAMES, h
        assert h["short_side"] > 0 and h["logit_scale"] > 0, h
        assert h["window"] is None or 0 < h["window"][1] <= h["window"][0], h
        assert (h["min_layers"] > 0) == (h["min_layers_why"] is not None), h
        assert h["sigma"] is None or h["sigma"] > 0, h
        for name, kind, mult, dims in h["flops"]:
            assert kind in ("matmul", "linear", "attention") and mult >= 1 and set(dims) <= set("gDE"), h
    assert [a["name"] for a in _core.activations() if a["tower_mlp"]] == list(ovs.model.ACTIVATIONS)


def test_the_c_bindings_read_the_heads_table(load_model):
    """Names, towers, block counts, key smoothing and sigma: each check of the C segmenter comes
    from the heads table."""
    import re

    from ovs import _core

    vit, rn = load_model("vit_tiny"), load_model("rn_tiny")
    layers = vit.config["vision"]["layers"]
    names = ", ".join(h["name"] for h in _core.heads())
    with pytest.raises(ValueError, match=re.escape(f"unknown head 'nope' ({names})")):
        _core.Segmenter(vit._visual, "nope")
    for h in _core.heads():
        if "resnet" not in h["towers"]:
            with pytest.raises(ValueError, match=f"{h['title']} runs on ViT towers only, not on a ResNet"):
                _core.Segmenter(rn._visual, h["name"])
        if h["min_layers"] > layers:
            with pytest.raises(ValueError, match=re.escape(
                    f"{h['title']} needs a ViT with at least {h['min_layers']} blocks "
                    f"({h['min_layers_why']}), this one has {layers}")):
                _core.Segmenter(vit._visual, h["name"])
            continue
        if not h["key_smoothing"]:
            with pytest.raises(ValueError, match=re.escape(
                    f"key smoothing (ks_thresh) is not part of the {h['title']} head")):
                _core.Segmenter(vit._visual, h["name"], 0, 0, 5.0, 0.0, 0.5)
        else:
            _core.Segmenter(vit._visual, h["name"], 0, 0, 5.0, 0.0, 0.5)
        if h["sigma"] is not None:
            with pytest.raises(ValueError, match=f"{h['title']} sigma must be positive, got 0"):
                _core.Segmenter(vit._visual, h["name"], 0, 0, 0.0)
        else:   # a sigma the head does not read is not checked
            _core.Segmenter(vit._visual, h["name"], 0, 0, 0.0)
