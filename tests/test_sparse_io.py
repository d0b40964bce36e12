"""Pruned models stored sparse: ovs.prune.save_sparse writes the pruned convs as CSR in
safetensors, ovs.load checks the file strictly and builds those convs straight in the sparse
kernel form. The round trip must give the dense pruned model's outputs bitwise (the same
folded non-zeros in the same order), and every malformed file a ValueError naming the tensor.

The CSR arrays are checked against torch's own CSR conversion (Tensor.to_sparse_csr)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import safetensors.numpy
import torch

import ovs
import ovs.prune as P
from ovs import _core
from ovs.weights import load_state_dict, save_safetensors

CONV = "visual.layer1.0.conv2.weight"


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
    """(pruned ovs.Model at 90%, path of its save_sparse file, names stored as CSR)."""
    sd = load_state_dict(fixtures_dir / "rn_tiny.safetensors")
    pruned = P.magnitude(ovs.Model(sd, sparse="dense"), sparsity=0.9)
    return pruned


@pytest.fixture()
def tiny_file(tiny, tmp_path):
    path = tmp_path / "pruned.safetensors"
    names = P.save_sparse(tiny, path)
    return path, names


def _features(model, x):
    return {k: v for k, v in model.image_features(x).items()}


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_weight_matches_torch_csr(tiny):
    w = np.asarray(tiny.state_dict[CONV])
    sw = P.SparseWeight.from_dense(w)
    ref = torch.from_numpy(w.reshape(w.shape[0], -1).copy()).to_sparse_csr()
    assert np.array_equal(sw.rowptr, ref.crow_indices().numpy())
    assert np.array_equal(sw.colidx, ref.col_indices().numpy())
    assert np.array_equal(sw.values, ref.values().numpy())
    assert sw.colidx.dtype == np.uint16 and sw.rowptr.dtype == np.int32
    assert np.array_equal(sw.dense(), w) and np.array_equal(np.asarray(sw), w)
    assert sw.nnz == np.count_nonzero(w) and sw.shape == w.shape


@pytest.mark.parametrize("mode", ["all", "auto", "dense"])
def test_round_trip_bitwise(tiny, tiny_file, mode):
    path, names = tiny_file
    assert names and set(names) <= set(P.prunable(tiny))
    loaded = ovs.load(path)
    held = loaded._sd.refs() if hasattr(loaded._sd, "refs") else loaded._sd   # not densified
    assert all(isinstance(held[n], P.SparseWeight) for n in names)
    x = np.random.default_rng(1).random((2, 3, 96, 96), dtype=np.float32)
    loaded.sparsify(mode)
    tiny.sparsify(mode)
    a, b = _features(tiny, x), _features(loaded, x)
    assert a.keys() == b.keys()
    # "auto" times the kernels: the two models may choose differently for a conv (noise), and
    # then agree to the sparse-vs-dense tolerance; with the same choices, bitwise
    same = [c["sparse"] for c in tiny.visual.convs()] == [c["sparse"] for c in loaded.visual.convs()]
    for k in a:
        if same:
            assert np.array_equal(a[k], b[k]), k
        else:
            assert np.abs(a[k] - b[k]).max() <= 1e-5 * np.abs(a[k]).max(), k
    convs = {c["name"]: c for c in loaded.visual.convs()}
    if mode == "all":
        # every stride-1 conv stored as CSR runs sparse; its memory is the CSR's
        for n in names:
            c = convs[n[: -len(".weight")]]
            if c["sparse"]:
                assert c["weight_bytes"] == 6 * c["nnz"] + 8 * (c["shape"][0] + 1)
        assert sum(c["sparse"] for c in convs.values()) > 0
    if mode == "dense":
        assert not any(c["sparse"] for c in convs.values())
    # the state dict gives the dense arrays, as the dense pruned model's
    for n in names:
        v = loaded.state_dict[n]
        assert isinstance(v, np.ndarray) and np.array_equal(v, tiny.state_dict[n])
    assert np.array_equal(dict(loaded.state_dict.items())[names[0]], tiny.state_dict[names[0]])
    assert loaded.weights_digest() == tiny.weights_digest()


def test_loaded_sparse_model_prunes_saves_and_masks(tiny, tiny_file, tmp_path):
    path, names = tiny_file
    loaded = ovs.load(path)
    masks = P.masks(loaded)
    assert all(np.array_equal(masks[n], np.asarray(tiny.state_dict[n]) != 0) for n in masks)
    # saving a loaded model writes its CSR arrays again: same tensors
    again = tmp_path / "again.safetensors"
    assert P.save_sparse(loaded, again) == names
    a, b = load_state_dict(path), load_state_dict(again)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    more = P.magnitude(loaded, sparsity=0.95)                # prune further from the sparse form
    assert P.sparsity(P.masks(more)) == pytest.approx(0.95, abs=1e-3)
    assert P.masks(P.apply(loaded, masks))[names[0]].sum() == masks[names[0]].sum()


def test_file_size_proportional_to_nonzeros(fixtures_dir, tmp_path):
    """At 90% sparsity the CSR file of the pruned convs is < 0.3x the dense file."""
    sd = load_state_dict(fixtures_dir / "rn50.safetensors")
    names = P.prunable(sd)
    convs = P.magnitude({n: sd[n] for n in names}, sparsity=0.9, names=names)
    dense, sparse = tmp_path / "dense.safetensors", tmp_path / "csr.safetensors"
    save_safetensors(convs, dense)
    stored = P.save_sparse(convs, sparse, names=names)
    # global pruning leaves a few layers more than 2/3 dense: those stay dense (smaller)
    assert set(stored) <= set(names) and len(stored) >= len(names) - 8
    for n in set(names) - set(stored):
        assert np.count_nonzero(convs[n]) * 6 >= convs[n].size * 4 - 8 * (convs[n].shape[0] + 1)
    ratio = os.path.getsize(sparse) / os.path.getsize(dense)
    assert ratio < 0.3, ratio
    back = P.unpack_sparse(load_state_dict(sparse), sparse)
    assert all(np.array_equal(np.asarray(back[n]), convs[n]) for n in names)


def test_save_sparse_keeps_dense_what_csr_would_not_shrink(tiny, tmp_path):
    sd = dict(tiny.state_dict.items())
    sd[CONV] = np.where(np.isfinite(sd[CONV]), 1.0, 0).astype(np.float32)   # fully dense
    names = P.save_sparse(sd, tmp_path / "x.safetensors")
    smaller = [n for n in P.prunable(sd)
               if 6 * np.count_nonzero(sd[n]) + 4 * (sd[n].shape[0] + 1) < 4 * sd[n].size]
    assert CONV not in names and names == sorted(smaller)
    with pytest.raises(ValueError, match="safetensors"):
        P.save_sparse(sd, tmp_path / "x.pth")


# ------------------------------------------------------------------ corrupt files
def _parts(tiny):
    w = P.SparseWeight.from_dense(np.asarray(tiny.state_dict[CONV]))
    return {".csr_values": w.values, ".csr_colidx": w.colidx, ".csr_rowptr": w.rowptr}, list(w.shape)


def _write(path, tensors, meta):
    safetensors.numpy.save_file(tensors, str(path), metadata=meta)
    return path


def _meta(shape, name=CONV, **extra):
    doc = {"format": "csr", "version": 1, "tensors": {name: {"shape": shape}}}
    doc.update(extra)
    return {"ovs-sparse": json.dumps(doc)}


def _corrupt_cases(parts, shape):
    v, c, r = parts[".csr_values"], parts[".csr_colidx"], parts[".csr_rowptr"]
    rows_bad = r.copy()
    rows_bad[3], rows_bad[4] = rows_bad[4], rows_bad[3] - 1        # not monotone
    desc = c.copy()
    j = int(r[1])                                                  # a row with >= 2 entries
    while r[np.searchsorted(r, j, side="right")] - j < 2:
        j = int(r[np.searchsorted(r, j, side="right")])
    desc[j], desc[j + 1] = desc[j + 1], desc[j]
    nan = v.copy()
    nan[5] = np.nan
    cols = int(np.prod(shape[1:]))
    far = c.astype(np.int32)
    far[0] = cols
    return {
        "not valid JSON": ({}, {"ovs-sparse": "{not json"}),
        "version": ({}, {"ovs-sparse": json.dumps({"format": "csr", "version": 7, "tensors": {}})}),
        "RecursionError": ({}, {"ovs-sparse": "[" * 100000}),
        "got \"{'format': 'csr', 'version': True": (
            {}, {"ovs-sparse": json.dumps({"format": "csr", "version": True, "tensors": {}})}),
        "too large": ({}, _meta([shape[0], 10 ** 30, 1, 1])),
        "no 'tensors'": ({}, {"ovs-sparse": json.dumps({"format": "csr", "version": 1})}),
        "metadata shape": ({}, _meta([64, "a", 3, 3])),
        "row pointers for": ({}, _meta([shape[0] + 1] + shape[1:])),
        "column indices": ({".csr_colidx": c[:-1]}, None),
        "run from": ({".csr_values": v[:-1], ".csr_colidx": c[:-1]}, None),
        "not monotone": ({".csr_rowptr": rows_bad}, None),
        "out of range": ({".csr_colidx": far}, None),
        "out of range ": ({}, _meta([shape[0], 1, 1, 1])),
        "ascending": ({".csr_colidx": desc}, None),
        "NaN": ({".csr_values": nan}, None),
        "F32": ({".csr_values": v.astype(np.float64)}, None),
        "U16 or I32": ({".csr_colidx": c.astype(np.int64)}, None),
        "I32 or I64": ({".csr_rowptr": r.astype(np.float32)}, None),
        "1-D": ({".csr_rowptr": r.reshape(1, -1)}, None),
        "missing": ({".csr_rowptr": None}, None),
        "both dense": ({"": np.zeros(shape, np.float32)}, None),
    }


def test_every_corrupt_file_raises_naming_the_tensor(tiny, tmp_path):
    parts, shape = _parts(tiny)
    for i, (msg, (change, meta)) in enumerate(_corrupt_cases(parts, shape).items()):
        tensors = {CONV + k: a for k, a in parts.items()}
        for k, a in change.items():
            if a is None:
                del tensors[CONV + k]
            else:
                tensors[CONV + k] = a
        path = _write(tmp_path / f"bad{i}.safetensors", tensors, meta or _meta(shape))
        with pytest.raises(ValueError, match="ovs-sparse|" + repr(CONV)) as e:
            P.unpack_sparse(load_state_dict(path), path)
        assert msg.strip() in str(e.value), (msg, str(e.value))
    # CSR tensors without metadata, and stray ones the metadata does not list
    tensors = {CONV + k: a for k, a in parts.items()}
    path = _write(tmp_path / "nometa.safetensors", tensors, None)
    with pytest.raises(ValueError, match="no 'ovs-sparse' metadata"):
        P.unpack_sparse(load_state_dict(path), path)
    tensors["visual.x.weight.csr_values"] = parts[".csr_values"]
    path = _write(tmp_path / "stray.safetensors", tensors, _meta(shape))
    with pytest.raises(ValueError, match="does not list the CSR tensor 'visual.x.weight.csr_values'"):
        P.unpack_sparse(load_state_dict(path), path)
    # the valid file passes
    path = _write(tmp_path / "ok.safetensors", {CONV + k: a for k, a in parts.items()}, _meta(shape))
    ok = P.unpack_sparse(load_state_dict(path), path)
    assert np.array_equal(np.asarray(ok[CONV]), tiny.state_dict[CONV])


def test_ovs_load_refuses_a_corrupt_sparse_model(tiny, tiny_file, tmp_path):
    path, _ = tiny_file
    sd = load_state_dict(path)
    sd[CONV + ".csr_colidx"] = sd[CONV + ".csr_colidx"][::-1].copy()
    with safetensors.safe_open(str(path), "np") as f:
        meta = f.metadata()
    bad = _write(tmp_path / "bad.safetensors", sd, meta)
    with pytest.raises(ValueError, match=repr(CONV)):
        ovs.load(bad)


def test_c_side_checks_csr_itself(tiny):
    """The C model never trusts the arrays: the Python checks bypassed, a malformed CSR
    handed to _core.ResNet raises instead of reading out of bounds."""
    m = tiny
    v = m.config["vision"]
    base = {k: a for k, a in m._sd.items() if k.startswith("visual.")}
    w = P.SparseWeight.from_dense(np.asarray(base[CONV]))
    shape, val, col, rp = w.csr_tuple()
    far = col.astype(np.int32)
    far[-1] = 10 ** 6
    back = rp.copy()
    back[2] = back[1] - 1
    short = rp.copy()
    short[-1] -= 1
    unsorted = col.copy()
    unsorted[[0, 1]] = unsorted[[1, 0]]
    for bad, what in [((shape, val, far, rp), "column"), ((shape, val, col, back), "monotone"),
                      ((shape, val, col, short), "row pointers"),
                      ((shape, val, unsorted, rp), "ascending"),
                      ((shape, val[:-1], col, rp), "values"),
                      (((shape[0] * 2,) + shape[1:], val, col, rp), "row pointers"),
                      (((shape[0], shape[1], 1, 1), val, col, np.asarray(rp)), "shape")]:
        sd = dict(base)
        sd[CONV] = bad
        with pytest.raises(ValueError, match=what):
            _core.ResNet(sd, "visual.", v["layers"], v["width"], v["embed_dim"], v["heads"],
                         v["grid"], v["attnpool"])
    sd = dict(base)
    sd[CONV] = (shape, val, col, rp)            # the well-formed one builds
    _core.ResNet(sd, "visual.", v["layers"], v["width"], v["embed_dim"], v["heads"], v["grid"],
                 v["attnpool"])


def test_cli_prune_csr(fixtures_dir, tmp_path):
    from ovs.cli import main

    src = str(fixtures_dir / "rn_tiny.safetensors")
    out = tmp_path / "p.safetensors"
    assert main(["prune", src, "--sparsity", "0.9", "--out", str(out), "--csr"]) == 0
    with safetensors.safe_open(str(out), "np") as f:
        doc = json.loads(f.metadata()["ovs-sparse"])
    assert doc["format"] == "csr" and CONV in doc["tensors"]
    want = P.magnitude(load_state_dict(src), sparsity=0.9)
    got = ovs.load(out)
    assert all(np.array_equal(got.state_dict[k], want[k]) for k in P.prunable(want))
    assert main(["prune", src, "--csr"]) == 2                  # --csr without --out


def test_sparse_build_survives_every_allocation_failure(tiny):
    """Building the ResNet from CSR weights, going all-sparse and running it: each C allocation
    failed in turn gives MemoryError or the same output, never a crash or a leak-driven
    difference."""
    from conftest import inject_alloc_failures

    v = tiny.config["vision"]
    sd = {k: (P.SparseWeight.from_dense(a).csr_tuple() if k in P.prunable(tiny) else a)
          for k, a in tiny._sd.items() if k.startswith("visual.")}
    x = np.random.default_rng(3).random((1, 3, 64, 64), dtype=np.float32)

    def run():
        net = _core.ResNet(sd, "visual.", v["layers"], v["width"], v["embed_dim"], v["heads"],
                           v["grid"], v["attnpool"])
        net.sparsify("all", 64, 64)
        return net.forward(x)

    assert inject_alloc_failures(run, "sparse ResNet build") > 10
