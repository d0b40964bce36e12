"""ovs.prune against torch.nn.utils.prune (the reference the paper's code uses): masks of global
and layer-wise L1 pruning, the iterative schedule, the pruning state-dict format both ways,
plain safetensors masks, and transfer between backbone layouts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.utils.prune as tprune

import ovs
import ovs.prune as P
from ovs.weights import load_state_dict

SHAPES = {"visual.conv2.weight": (8, 8, 3, 3), "visual.layer1.0.conv1.weight": (16, 8, 1, 1),
          "visual.layer1.0.conv2.weight": (16, 16, 3, 3),
          "visual.layer1.0.downsample.0.weight": (32, 8, 1, 1),
          "visual.layer2.1.conv3.weight": (64, 16, 1, 1)}


def _random_sd(seed=0):
    rng = np.random.default_rng(seed)
    # per-layer scales differ, as in a real network, so global and layer-wise masks differ
    sd = {n: (rng.standard_normal(s) * (0.5 + i)).astype(np.float32)
          for i, (n, s) in enumerate(SHAPES.items())}
    sd["visual.conv1.weight"] = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    sd["visual.bn1.weight"] = np.ones(8, np.float32)
    return sd


def _torch_modules(sd):
    mods = {}
    for n in SHAPES:
        w = torch.from_numpy(sd[n].copy())
        m = torch.nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], bias=False)
        with torch.no_grad():
            m.weight.copy_(w)
        mods[n] = m
    return mods


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.97])
def test_global_masks_equal_torch(p):
    sd = _random_sd()
    mods = _torch_modules(sd)
    tprune.global_unstructured([(m, "weight") for m in mods.values()],
                               pruning_method=tprune.L1Unstructured, amount=p)
    ours = P.masks(P.magnitude(sd, sparsity=p))
    assert set(ours) == set(SHAPES)            # default scope: every conv but visual.conv1
    for n, m in mods.items():
        want = m.weight_mask.numpy() != 0
        assert np.array_equal(ours[n], want), f"{n}: {np.sum(ours[n] != want)} entries differ"


@pytest.mark.parametrize("p", [0.3, 0.9])
def test_layerwise_masks_equal_torch(p):
    sd = _random_sd(1)
    mods = _torch_modules(sd)
    for m in mods.values():
        tprune.l1_unstructured(m, "weight", amount=p)
    ours = P.masks(P.magnitude(sd, sparsity=p, scope="layer"))
    for n, m in mods.items():
        assert np.array_equal(ours[n], m.weight_mask.numpy() != 0), n


def test_iterative_schedule_equals_repeated_torch_pruning():
    sd = _random_sd(2)
    mods = _torch_modules(sd)
    params = [(m, "weight") for m in mods.values()]
    torch_hist = []
    for _ in range(5):
        tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=0.2)
        kept = sum(int(m.weight_mask.sum()) for m in mods.values())
        torch_hist.append(1 - kept / sum(m.weight.numel() for m in mods.values()))
    pruned, hist = P.iterative(sd, amount=0.2, rounds=5)
    assert np.allclose(hist, torch_hist, atol=0), (hist, torch_hist)
    ours = P.masks(pruned)
    for n, m in mods.items():
        assert np.array_equal(ours[n], m.weight_mask.numpy() != 0), n
    assert abs(hist[-1] - (1 - 0.8 ** 5)) < 1e-3


def test_torch_pruning_state_dict_read(tmp_path):
    """A state dict saved by torch after torch.nn.utils.prune: load_masks gets its masks and
    fold_pruned its effective weights, through the restricted reader."""
    sd = _random_sd(3)
    mods = torch.nn.ModuleDict({n.replace(".", "_"): m for n, m in _torch_modules(sd).items()})
    tprune.global_unstructured([(m, "weight") for m in mods.values()],
                               pruning_method=tprune.L1Unstructured, amount=0.6)
    path = tmp_path / "pruned.pth"
    torch.save(mods.state_dict(), path)
    masks = P.load_masks(path)
    assert set(masks) == {k + ".weight" for k in mods.keys()}
    for k, m in mods.items():
        assert np.array_equal(masks[k + ".weight"], m.weight_mask.numpy() != 0)
    folded = P.fold_pruned(load_state_dict(path))
    for k, m in mods.items():
        assert np.array_equal(folded[k + ".weight"], m.weight.detach().numpy())
        assert k + ".weight_orig" not in folded


def test_torch_pruning_state_dict_write(tmp_path):
    """save_masks(.pth) writes torch's format without torch; torch loads it (weights_only) into
    modules pruned with the same parametrisation."""
    sd = _random_sd(4)
    pruned = P.magnitude(sd, sparsity=0.7)
    masks = P.masks(pruned)
    path = tmp_path / "masks.pth"
    P.save_masks(masks, path, weights=sd)
    loaded = torch.load(path, weights_only=True)
    mods = _torch_modules(sd)
    for n, m in mods.items():
        tprune.identity(m, "weight")           # creates weight_orig / weight_mask
        base = n[: -len(".weight")]
        m.load_state_dict({"weight_orig": loaded[base + ".weight_orig"],
                           "weight_mask": loaded[base + ".weight_mask"]})
        m(torch.zeros(1, m.in_channels, 3, 3))  # the forward pre-hook recomputes weight
        assert np.array_equal(m.weight.detach().numpy(), pruned[n]), n
    # masks only, read back by ovs
    P.save_masks(masks, tmp_path / "only.pth")
    back = P.load_masks(tmp_path / "only.pth")
    assert set(back) == set(masks) and all(np.array_equal(back[k], masks[k]) for k in masks)


def test_safetensors_masks_round_trip(tmp_path):
    from safetensors.numpy import load_file

    masks = P.masks(P.magnitude(_random_sd(5), sparsity=0.5))
    P.save_masks(masks, tmp_path / "m.safetensors")
    raw = load_file(str(tmp_path / "m.safetensors"))      # the independent reader
    assert set(raw) == set(masks)
    for k in masks:
        assert raw[k].dtype == np.uint8 and np.array_equal(raw[k] != 0, masks[k])
    back = P.load_masks(tmp_path / "m.safetensors")
    assert all(np.array_equal(back[k], masks[k]) for k in masks)
    with pytest.raises(ValueError, match="must end in"):
        P.save_masks(masks, tmp_path / "m.npz")


def test_apply_and_errors():
    sd = _random_sd(6)
    masks = P.masks(P.magnitude(sd, sparsity=0.5))
    applied = P.apply(sd, masks)
    for k, m in masks.items():
        assert np.array_equal(applied[k], np.where(m, sd[k], 0))
    assert np.array_equal(applied["visual.conv1.weight"], sd["visual.conv1.weight"])
    bad = dict(masks)
    bad["visual.conv2.weight"] = np.ones((8, 8, 1, 1), bool)
    with pytest.raises(ValueError, match="visual.conv2.weight"):
        P.apply(sd, bad)
    with pytest.raises(KeyError, match="no such parameter"):
        P.apply(sd, {"visual.nope.weight": np.ones(3, bool)})
    with pytest.raises(ValueError, match="other than 0 and 1"):
        P.apply(sd, {"visual.conv2.weight": np.full((8, 8, 3, 3), 0.5, np.float32)})
    with pytest.raises(ValueError, match="sparsity must be in"):
        P.magnitude(sd, sparsity=1.5)
    with pytest.raises(TypeError, match="sparsity must be a number"):
        P.magnitude(sd, sparsity="0.9")
    with pytest.raises(ValueError, match="scope must be"):
        P.magnitude(sd, scope="row")
    with pytest.raises(ValueError, match="rounds must be"):
        P.iterative(sd, rounds=0)
    with pytest.raises(KeyError, match="visual.x"):
        P.magnitude(sd, names=["visual.x"])


def test_transfer_between_layouts(load_model, fixtures_dir):
    model = load_model("rn_tiny")
    masks = P.masks(P.magnitude(model, sparsity=0.9))
    # the paper's scope on RN50-like layout: 2 stem convs + 3 per block + 1 shortcut per stage
    v = model.config["vision"]
    assert len(masks) == 2 + 3 * sum(v["layers"]) + 4
    for layout in ("fc-clip", "han", "deeplab", "detectron2"):
        moved = P.transfer(masks, layout)
        assert P.detect_layout(list(moved)) == ("han" if layout == "deeplab" else layout)
        back = P.transfer(moved, "open_clip")
        assert set(back) == set(masks)
        assert all(np.array_equal(back[k], masks[k]) for k in masks)
    d2 = P.transfer(masks, "detectron2")
    assert "backbone.res2.0.shortcut.weight" in d2 and "backbone.stem.conv2.weight" in d2
    assert np.array_equal(d2["backbone.res3.0.shortcut.weight"],
                          masks["visual.layer2.0.downsample.0.weight"])
    # OpenTrans' DeepLabV3-OVS checkpoint names (tests/reference/deeplab_reference.py builds
    # the module): its backbone is zs3's ResNet under `backbone.`, as Han et al.'s
    dl = P.transfer(masks, "deeplab")
    assert dl.keys() == P.transfer(masks, "han").keys()
    assert "backbone.conv2.weight" in dl and "backbone.layer1.0.downsample.0.weight" in dl
    assert np.array_equal(dl["backbone.layer2.0.downsample.0.weight"],
                          masks["visual.layer2.0.downsample.0.weight"])
    fc = P.transfer(masks, "fc-clip")
    assert "backbone.clip_model.visual.layer4.0.downsample.0.weight" in fc
    # a target model: the open_clip RN50 state dict under FC-CLIP's names has other shapes than
    # rn_tiny, and the mismatch names the parameter
    rn50 = load_state_dict(fixtures_dir / "rn50.safetensors")   # open_clip RN50's state dict
    target = {"backbone.clip_model." + k: v for k, v in rn50.items()}
    with pytest.raises(ValueError, match=r"shape mismatch for 'backbone\.clip_model\.visual\.conv2\.weight'"):
        P.transfer(masks, target)
    with pytest.raises(ValueError, match="unknown layout"):
        P.transfer(masks, "mmseg")


def test_transfer_onto_a_target_state_dict(load_model):
    model = load_model("rn_tiny")
    masks = P.masks(P.magnitude(model, sparsity=0.8))
    target = {"backbone." + k[len("visual."):]: v for k, v in model.state_dict.items()
              if k.startswith("visual.")}
    moved = P.transfer(masks, target)
    assert P.detect_layout(target) == "han"
    pruned_target = P.apply(target, moved)
    for k in masks:
        t = "backbone." + k[len("visual."):]
        assert np.array_equal(pruned_target[t] != 0, masks[k] & (target[t] != 0))


def test_pruned_model_is_a_model_and_loads_from_pth(load_model, reference, tmp_path):
    """magnitude() returns an ovs.Model; a torch-pruning checkpoint (weight_orig/weight_mask)
    loads with ovs.load and runs with sparse kernels chosen automatically."""
    model = load_model("rn_tiny")
    pruned = P.magnitude(model, sparsity=0.9)
    assert isinstance(pruned, ovs.Model) and pruned.config == model.config
    assert abs(P.sparsity(P.masks(pruned)) - 0.9) < 1e-3
    x = reference("rn_tiny_image.npz")["sq_b1_x"]
    emb = pruned.encode_image(x, preprocess=False)
    # write it as torch.nn.utils.prune would: orig weights + masks, everything else plain
    sd = {k: np.asarray(v) for k, v in model.state_dict.items()}
    masks = P.masks(pruned)
    from ovs._torchsave import save_torch_state_dict

    out = {k: v for k, v in sd.items() if k not in masks and v.dtype == np.float32}
    for k, m in masks.items():
        out[k[:-len(".weight")] + ".weight_orig"] = sd[k]
        out[k[:-len(".weight")] + ".weight_mask"] = m.astype(np.float32)
    path = tmp_path / "finetuned.pth"
    save_torch_state_dict(out, path)
    loaded = ovs.load(str(path), act=model.act)
    assert np.array_equal(loaded.encode_image(x, preprocess=False), emb) or \
        np.abs(loaded.encode_image(x, preprocess=False) - emb).max() <= 1e-5 * np.abs(emb).max()
    assert loaded._sparse_mode == "auto"


def test_cli_prune_and_flops(fixtures_dir, tmp_path, capsys):
    import json

    from ovs.cli import main

    src = str(fixtures_dir / "rn_tiny.safetensors")
    masks_path, out_path = tmp_path / "m.pth", tmp_path / "pruned.safetensors"
    assert main(["prune", src, "--sparsity", "0.8", "--masks", str(masks_path),
                 "--out", str(out_path)]) == 0
    sd = load_state_dict(src)
    want = P.masks(P.magnitude(sd, sparsity=0.8))
    got = P.load_masks(masks_path)
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)
    loaded = torch.load(masks_path, weights_only=True)        # torch reads what we wrote
    k0 = next(iter(want))[: -len(".weight")]
    assert np.array_equal(loaded[k0 + ".weight_orig"].numpy(), sd[k0 + ".weight"])
    capsys.readouterr()
    assert main(["flops", str(out_path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    import ovs.flops as F

    rows = F.count(load_state_dict(out_path))
    assert rep["total"] == F.total(rows) and rep["total_sparse"] == F.total(rows, sparse=True)
    assert rep["total_sparse"] < rep["total"]
    assert main(["prune", src, "--sparsity", "2"]) == 2      # a clear error, exit code 2


def test_deeplab_layout_names_opentrans_checkpoints(load_model):
    """Masks moved to the "deeplab" layout name parameters of OpenTrans' DeepLabV3-OVS module
    (the reference built from its code), with the same shapes as the CLIP RN50 trunk's."""
    from conftest import load_reference

    ref = load_reference("deeplab_reference")
    ckpt = {k: tuple(v.shape) for k, v in ref.full().state_dict().items()}
    rn50 = {k: v for k, v in load_model("rn50").state_dict().items()}
    masks = {k: np.ones(v.shape, bool) for k, v in rn50.items() if k in P.prunable(rn50)}
    dl = P.transfer(masks, "deeplab")
    missing = [k for k in dl if k not in ckpt]
    assert not missing, missing[:5]
    assert all(ckpt[k] == dl[k].shape for k in dl)
