"""The front door as a newcomer meets it: importing from the source tree, the public surface."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

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
