"""The notebooks in notebooks/ run end to end (nbclient + ipykernel) with OVS_NB_SMALL=1, offline
(so they use generated random weights, unless real ones are cached, and say which), and every figure they save is a non-empty
PNG of the size nbsetup.FIG_SIZE promises. A cell error fails the test with the cell's traceback.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import nbformat  # the test extra installs nbformat, nbclient and ipykernel
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
NB_DIR = REPO / "notebooks"
sys.path.insert(0, str(NB_DIR))
import nbsetup  # noqa: E402

# notebook -> figures it must write (name -> expected (width, height); None: checked separately)
NOTEBOOKS = {
    "quickstart.ipynb": {"quickstart_overlay": None, "quickstart_methods": nbsetup.FIG_SIZE,
                         "quickstart_speed": nbsetup.FIG_SIZE},
    "layer_selection.ipynb": {"alpha_per_layer": nbsetup.FIG_SIZE, "alpha_pruning": nbsetup.FIG_SIZE,
                              "training_flops": nbsetup.FIG_SIZE},
    "accuracy_vs_flops.ipynb": {"miou_vs_gflops": nbsetup.FIG_SIZE,
                                "miou_vs_latency": nbsetup.FIG_SIZE,
                                "flops_vs_sparsity": nbsetup.FIG_SIZE},
}


@pytest.fixture(scope="module")
def nb_env(tmp_path_factory):
    """One weight cache for all notebooks (each architecture is generated once), figures in a
    temporary folder, offline, small settings."""
    root = tmp_path_factory.mktemp("notebooks")
    env = {"OVS_NB_SMALL": "1", "OVS_OFFLINE": "1", "OVS_NB_CACHE": str(root / "cache"),
           "OVS_NB_FIGURES": str(root / "figures"), "OVS_NB_REPORTS": str(root / "reports"),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(NB_DIR), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out and "text/plain" in out["data"]:
                parts.append(out["data"]["text/plain"])
    return "\n".join(parts)


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_notebook_runs(name, nb_env):
    nb = nbformat.read(NB_DIR / name, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NB_DIR)}})
    client.execute()          # raises CellExecutionError (with the traceback) on any cell error
    text = _outputs_text(nb)
    # offline: generated weights, unless the real ones are already in the local cache
    assert "GENERATED RANDOM weights" in text or ": real weights from" in text, \
        "the notebook must say which weights it runs on"
    for fig, size in NOTEBOOKS[name].items():
        path = nb_env / "figures" / f"{fig}.png"
        assert path.is_file() and path.stat().st_size > 0, f"{name} did not write {path.name}"
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("RGB"))
        if size is not None:
            assert im.size == size, f"{path.name}: {im.size} != {size}"
        assert arr.std() > 5, f"{path.name} is blank"
        # something beyond the white background is drawn in most of the figure's quarters
        h, w = arr.shape[:2]
        quarters = [arr[: h // 2, : w // 2], arr[: h // 2, w // 2:], arr[h // 2:, : w // 2], arr[h // 2:, w // 2:]]
        assert sum((q < 230).any(axis=2).mean() > 0.01 for q in quarters) >= 3, f"{path.name} is mostly empty"
    if name == "quickstart.ipynb":
        with Image.open(nb_env / "figures" / "quickstart_overlay.png") as im:
            photo = Image.open(nbsetup.EXAMPLE_IMAGE)
            assert im.height == photo.height and im.width > photo.width  # photo + legend panel
