"""Magnitude pruning of CLIP image towers, masks, and their transfer between frameworks.

The paper's subnetwork (DESIGN.md §2): global unstructured L1-magnitude pruning of every conv of
the CLIP RN50 image encoder except the stem's first conv, 10% of the remaining weights per round:

    >>> import ovs, ovs.prune
    >>> model = ovs.load("RN50")
    >>> pruned, history = ovs.prune.iterative(model, amount=0.1, rounds=21)  # history: sparsity per round
    >>> pruned = ovs.prune.magnitude(model, sparsity=0.9)      # one shot, same masks as torch's
    >>> masks = ovs.prune.masks(pruned)                         # {"visual.layer1.0.conv1.weight": bool array}
    >>> ovs.prune.save_masks(masks, "rn50_masks.pth")           # torch.nn.utils.prune state-dict format
    >>> fc = ovs.prune.transfer(masks, "fc-clip")               # {"backbone.clip_model.visual...": mask}

Masks agree with ``torch.nn.utils.prune.global_unstructured(params, L1Unstructured, amount=p)``
(the k = round(p * n) smallest |w| of the still-unpruned entries go), ties aside.

Transfer works by parameter *role* (stem conv i, block (stage, index) conv j, the block's
shortcut conv): each backbone layout is one entry of LAYOUTS giving the name of each role.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

__all__ = ["LAYOUTS", "prunable", "magnitude", "iterative", "masks", "apply", "transfer",
           "detect_layout", "save_masks", "load_masks", "fold_pruned", "sparsity"]

# One entry per backbone layout: the parameter name of each role of a CLIP-style ResNet.
#   stem: the 3 stem convs (i = 1..3); conv: bottleneck conv j (1..3) of block b of stage s
#   (s = 1..4 as open_clip's layer1..layer4); down: the block's shortcut (projection) conv.
LAYOUTS: dict[str, dict[str, str]] = {
    # open_clip ModifiedResNet: downsample = Sequential("-1" AvgPool, "0" Conv, "1" BN)
    "open_clip": {"stem": "visual.conv{i}.weight",
                  "conv": "visual.layer{s}.{b}.conv{j}.weight",
                  "down": "visual.layer{s}.{b}.downsample.0.weight"},
    # FC-CLIP (bytedance/fc-clip, fcclip/modeling/backbone/clip.py): the open_clip model is
    # `self.clip_model` of the detectron2 backbone `model.backbone`
    "fc-clip": {"stem": "backbone.clip_model.visual.conv{i}.weight",
                "conv": "backbone.clip_model.visual.layer{s}.{b}.conv{j}.weight",
                "down": "backbone.clip_model.visual.layer{s}.{b}.downsample.0.weight"},
    # Han et al. / OpenTrans OpenSegMaskFormer: CLIPResNetWithAttention (mask2former/clip_models.py)
    # as `model.backbone`, CLIP's own module names without "visual."
    "han": {"stem": "backbone.conv{i}.weight",
            "conv": "backbone.layer{s}.{b}.conv{j}.weight",
            "down": "backbone.layer{s}.{b}.downsample.0.weight"},
    # DeepLabV3-OVS of OpenTrans (OpenSegDeeplabv3Text): zs3's ResNet as `model.backbone`, the
    # same parameter names as "han" (so detect_layout reports "han" for both)
    "deeplab": {"stem": "backbone.conv{i}.weight",
                "conv": "backbone.layer{s}.{b}.conv{j}.weight",
                "down": "backbone.layer{s}.{b}.downsample.0.weight"},
    # detectron2's own ResNet with the 3-conv DeepLab stem (e.g. its DeepLab project): stages
    # res2..res5, the projection shortcut is `shortcut` (a Conv2d with its norm inside)
    "detectron2": {"stem": "backbone.stem.conv{i}.weight",
                   "conv": "backbone.res{s1}.{b}.conv{j}.weight",
                   "down": "backbone.res{s1}.{b}.shortcut.weight"},
}


def _template_regex(template: str) -> re.Pattern:
    pat = re.escape(template)
    for field in ("i", "j", "s", "s1", "b"):
        pat = pat.replace(re.escape("{" + field + "}"), rf"(?P<{field}>\d+)")
    return re.compile(pat + r"\Z")


_REGEX = {name: {role: _template_regex(t) for role, t in table.items()}
          for name, table in LAYOUTS.items()}


def _role_of(name: str, layout: str) -> tuple | None:
    """('stem', i) / ('conv', s, b, j) / ('down', s, b) for a parameter name in a layout."""
    for role, rx in _REGEX[layout].items():
        m = rx.match(name)
        if not m:
            continue
        g = {k: int(v) for k, v in m.groupdict().items()}
        if "s1" in g:
            g["s"] = g.pop("s1") - 1
        if role == "stem":
            return ("stem", g["i"])
        if role == "conv":
            return ("conv", g["s"], g["b"], g["j"])
        return ("down", g["s"], g["b"])
    return None


def _name_of(role: tuple, layout: str) -> str:
    t = LAYOUTS[layout]
    if role[0] == "stem":
        return t["stem"].format(i=role[1])
    if role[0] == "conv":
        return t["conv"].format(s=role[1], s1=role[1] + 1, b=role[2], j=role[3])
    return t["down"].format(s=role[1], s1=role[1] + 1, b=role[2])


def detect_layout(names) -> str:
    """The layout in LAYOUTS that names every conv-role parameter in `names` (a layout name, an
    iterable of parameter names, a state dict or a Model). Layouts with the same names ("han" and
    "deeplab") are reported as the first of them in LAYOUTS."""
    if isinstance(names, str):
        if names not in LAYOUTS:
            raise ValueError(f"unknown layout {names!r}; known: {sorted(LAYOUTS)}")
        return names
    keys = list(_state_dict_of(names)) if not isinstance(names, (list, tuple, set)) else list(names)
    best, best_n = None, 0
    for layout in LAYOUTS:
        n = sum(_role_of(k, layout) is not None for k in keys)
        if n > best_n:
            best, best_n = layout, n
    if best is None:
        raise ValueError("no known backbone layout matches these parameter names (first: "
                         f"{sorted(keys)[:3]}); known layouts: {sorted(LAYOUTS)}")
    return best


# ------------------------------------------------------------------ selecting and pruning
def _state_dict_of(obj) -> Mapping[str, Any]:
    from .frameworks import FrameworkModel
    from .model import Model

    if isinstance(obj, (Model, FrameworkModel)):
        return obj.state_dict
    if isinstance(obj, Mapping):
        return obj
    raise TypeError(f"expected an ovs.Model or a state dict (mapping name -> array), got "
                    f"{type(obj).__name__}")


def prunable(model) -> list[str]:
    """The paper's default scope: every 4-D conv weight of the image tower (`visual.*`) except
    the stem's first conv (`visual.conv1.weight`, which is the patch embedding of a ViT)."""
    from .weights import shape_of

    sd = _state_dict_of(model)
    names = [k for k in sd if k.startswith("visual.") and k.endswith(".weight")
             and len(shape_of(sd, k)) == 4 and k != "visual.conv1.weight"]
    if not names:
        raise ValueError("this model has no conv weight to prune besides the stem's first conv "
                         "(a ViT or a text-only model): pass names=[...] explicitly")
    return names


def _check_names(sd: Mapping[str, Any], names) -> list[str]:
    if isinstance(names, str):
        raise TypeError("names must be a list of parameter names, not a single string")
    from .weights import dtype_of

    out = []
    for n in names:
        if n not in sd:
            raise KeyError(f"no parameter named {n!r} in the model")
        dt = dtype_of(sd, n)
        if dt.kind != "f":
            raise TypeError(f"parameter {n!r} is not a float tensor (dtype {dt})")
        out.append(n)
    if not out:
        raise ValueError("names is empty: nothing to prune")
    return out


def _check_fraction(x, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.floating, np.integer)):
        raise TypeError(f"{what} must be a number in [0, 1], got {type(x).__name__}")
    x = float(x)
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {x}")
    return x


def _prune_round(weights: list[np.ndarray], current: list[np.ndarray], amount: float,
                 scope: str) -> list[np.ndarray]:
    """One round: remove round(amount * alive) of the alive entries with the smallest |w|,
    over all tensors together (global) or per tensor (layer)."""
    def prune_group(ws, ms):
        mag = np.concatenate([np.abs(w).ravel() for w in ws])
        alive = np.concatenate([m.ravel() for m in ms])
        idx = np.flatnonzero(alive)
        k = round(amount * idx.size)   # as torch.nn.utils.prune._compute_nparams_toprune
        new = alive.copy()
        if k > 0:
            order = np.argpartition(mag[idx], k - 1)[:k] if k < idx.size else np.arange(idx.size)
            new[idx[order]] = False
        out, at = [], 0
        for w in ws:
            out.append(new[at:at + w.size].reshape(w.shape))
            at += w.size
        return out

    if scope == "global":
        return prune_group(weights, current)
    return [prune_group([w], [m])[0] for w, m in zip(weights, current)]


def _rebuild(model, sd: Mapping[str, np.ndarray]):
    from .frameworks import FrameworkModel
    from .model import Model

    if isinstance(model, FrameworkModel):   # e.g. a DeepLab whose trunk was pruned
        return model._with_weights(sd)

    if isinstance(model, Model):
        v, t = model.config.get("vision"), model.config.get("text")
        new = Model(sd, act=model.act, vision_heads=v["heads"] if v else None,
                    text_heads=t["heads"] if t else None, name=model.name, sparse="auto")
        return new
    return sd


def _run(model, names, schedule, scope):
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    from .weights import updated

    sd = _state_dict_of(model)   # a file-backed state dict stays one: only the pruned are new
    names = prunable(sd) if names is None else _check_names(sd, names)
    weights = [np.asarray(sd[n], dtype=np.float32) for n in names]
    current = [np.ones(w.shape, bool) for w in weights]
    history = []
    total = sum(w.size for w in weights)
    for amount in schedule:
        current = _prune_round(weights, current, amount, scope)
        history.append(1.0 - sum(int(m.sum()) for m in current) / total)
    sd = updated(sd, {n: np.where(m, w, np.float32(0)).astype(np.float32)
                      for n, w, m in zip(names, weights, current)})
    return _rebuild(model, sd), history


def magnitude(model, sparsity: float = 0.9, scope: str = "global", names=None):
    """Prune `sparsity` of the weights in `names` (default: prunable(model)) by L1 magnitude,
    globally over all of them or per layer ("layer"). Returns a new ovs.Model (sparse kernels
    chosen per layer) or, for a state dict, a new state dict."""
    sparsity = _check_fraction(sparsity, "sparsity")
    return _run(model, names, [sparsity], scope)[0]


def iterative(model, amount: float = 0.1, rounds: int = 21, scope: str = "global", names=None):
    """`rounds` rounds of removing `amount` of the remaining weights (the paper: 10%, ~21 rounds
    for ~89% sparsity). Returns (pruned model or state dict, [sparsity after each round])."""
    amount = _check_fraction(amount, "amount")
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    return _run(model, names, [amount] * int(rounds), scope)


def masks(model, names=None) -> dict[str, np.ndarray]:
    """{parameter name: bool array, True = kept} of the non-zero entries of `names`
    (default prunable(model))."""
    sd = _state_dict_of(model)
    names = prunable(sd) if names is None else _check_names(sd, names)
    return {n: np.asarray(sd[n]) != 0 for n in names}


def sparsity(mask_dict: Mapping[str, np.ndarray]) -> float:
    """Fraction of zeros over all masks."""
    total = sum(np.size(m) for m in mask_dict.values())
    return 1.0 - sum(int(np.count_nonzero(m)) for m in mask_dict.values()) / max(total, 1)


def _as_mask(name: str, m) -> np.ndarray:
    a = np.asarray(m)
    if a.dtype == bool:
        return a
    if a.dtype.kind not in "biuf":
        raise TypeError(f"mask {name!r} must be bool or 0/1 numbers, got dtype {a.dtype}")
    if not np.isin(a, (0, 1)).all():
        raise ValueError(f"mask {name!r} holds values other than 0 and 1")
    return a != 0


def apply(model, mask_dict: Mapping[str, np.ndarray]):
    """Zero the weights where the mask is False. Mask names must exist with the same shapes.
    Returns a new ovs.Model (or state dict)."""
    from .weights import shape_of, updated

    sd = _state_dict_of(model)
    if not isinstance(mask_dict, Mapping):
        raise TypeError(f"masks must be a mapping name -> array, got {type(mask_dict).__name__}")
    new = {}
    for name, m in mask_dict.items():
        if name not in sd:
            raise KeyError(f"mask for {name!r} but the model has no such parameter "
                           f"(masks from another layout? use ovs.prune.transfer)")
        m = _as_mask(name, m)
        if m.shape != shape_of(sd, name):
            raise ValueError(f"mask for {name!r} has shape {m.shape}, the parameter "
                             f"{shape_of(sd, name)}")
        w = np.asarray(sd[name], dtype=np.float32)
        new[name] = np.where(m, w, np.float32(0)).astype(np.float32)
    return _rebuild(model, updated(sd, new))


def transfer(mask_dict: Mapping[str, np.ndarray], target, *, source: str | None = None
             ) -> dict[str, np.ndarray]:
    """Rename masks from their backbone layout (detected, or `source`) to the target's, role by
    role. target: a layout name (see LAYOUTS), or a model / state dict whose layout is detected
    and whose parameter shapes the masks must match (ValueError naming the parameter)."""
    from .weights import shape_of

    src = detect_layout(list(mask_dict)) if source is None else detect_layout(source)
    check = None
    if isinstance(target, str):
        dst = detect_layout(target)
    else:
        check = _state_dict_of(target)
        dst = detect_layout(list(check))
    out = {}
    for name, m in mask_dict.items():
        role = _role_of(name, src)
        if role is None:
            raise ValueError(f"mask {name!r} is not a conv of the {src!r} layout: cannot transfer it")
        new = _name_of(role, dst)
        m = _as_mask(name, m)
        if check is not None:
            if new not in check:
                raise KeyError(f"{name!r} maps to {new!r}, which the target model lacks")
            if shape_of(check, new) != m.shape:
                raise ValueError(f"shape mismatch for {new!r} (from {name!r}): mask {m.shape}, "
                                 f"target parameter {shape_of(check, new)}")
        out[new] = m
    return out


def auto_sparse_mode(state_dict: Mapping[str, np.ndarray], mode: str, tower=None) -> str:
    """The mode a new model's ResNet starts in: "auto" becomes "dense" unless the prunable
    convs are at least 30% zeros (an unpruned model skips the calibration). With the built
    ResNet tower (``_core.ResNet``) the zeros are counted from its convs (the non-zeros of the
    folded weights: a weight is zero there exactly when it is in the state dict, or when its
    BatchNorm scale is zero), so a file-backed state dict is not read again."""
    if mode != "auto":
        return mode
    try:
        names = prunable(state_dict)
    except ValueError:
        return "dense"
    if tower is not None:
        wanted = {n[: -len(".weight")] for n in names}
        convs = [c for c in tower.convs() if c["name"] in wanted]
        if len(convs) == len(wanted):
            total = sum(int(np.prod(c["shape"])) for c in convs)
            zeros = total - sum(int(c["nnz"]) for c in convs)
            return "auto" if total and zeros / total >= 0.3 else "dense"
    total = sum(np.size(state_dict[n]) for n in names)
    zeros = sum(np.size(state_dict[n]) - np.count_nonzero(state_dict[n]) for n in names)
    return "auto" if total and zeros / total >= 0.3 else "dense"


# ------------------------------------------------------------------ files
def fold_pruned(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A state dict saved by torch.nn.utils.prune (`<m>.weight_orig` + `<m>.weight_mask`) as a
    plain one (`<m>.weight` = orig * mask); other entries unchanged."""
    out = {}
    for k, v in state_dict.items():
        if k.endswith(".weight_mask"):
            base = k[: -len("_mask")]
            if base + "_orig" not in state_dict:
                raise ValueError(f"{k!r} has no matching {base + '_orig'!r}")
            continue
        if k.endswith(".weight_orig"):
            base = k[: -len("_orig")]
            mk = base + "_mask"
            if mk not in state_dict:
                raise ValueError(f"{k!r} has no matching {mk!r}")
            m = _as_mask(mk, state_dict[mk])
            w = np.asarray(v, dtype=np.float32)
            if m.shape != w.shape:
                raise ValueError(f"{mk!r} has shape {m.shape}, {k!r} {w.shape}")
            out[base] = np.where(m, w, np.float32(0)).astype(np.float32)
            continue
        out[k] = v
    return out


def save_masks(mask_dict: Mapping[str, np.ndarray], path: str | os.PathLike, *,
               weights: Mapping[str, np.ndarray] | Any = None) -> None:
    """Write masks. `.safetensors`: {name: uint8 0/1} (plain). `.pth`/`.pt`: the state-dict
    format of torch.nn.utils.prune, `<m>.weight_mask` (float32 0/1) for each `<m>.weight` and,
    if `weights` (a model or state dict) is given, `<m>.weight_orig` too; written without torch
    (ovs._torchsave), readable by torch.load(weights_only=True)."""
    path = os.fspath(path)
    items = {n: _as_mask(n, m) for n, m in mask_dict.items()}
    if path.endswith(".safetensors"):
        from .weights import save_safetensors

        save_safetensors({n: np.ascontiguousarray(m, dtype=np.uint8) for n, m in items.items()},
                         path, metadata={"format": "ovs-masks"})
        return
    if not path.endswith((".pth", ".pt")):
        raise ValueError(f"mask file must end in .safetensors, .pth or .pt, got {path!r}")
    from ._torchsave import save_torch_state_dict

    sd = _state_dict_of(weights) if weights is not None else None
    out = {}
    for n, m in items.items():
        if not n.endswith(".weight"):
            raise ValueError(f"the PyTorch pruning format needs '<module>.weight' names, got {n!r}")
        base = n[: -len(".weight")]
        if sd is not None:
            if n not in sd:
                raise KeyError(f"weights have no {n!r}")
            out[base + ".weight_orig"] = np.asarray(sd[n], dtype=np.float32)
        out[base + ".weight_mask"] = m.astype(np.float32)
    save_torch_state_dict(out, path)


def load_masks(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Masks from a file written by save_masks, by torch.nn.utils.prune (a state dict holding
    `<m>.weight_mask`, also nested under "state_dict"/"model") or a plain safetensors of 0/1
    tensors. Read with ovs's restricted reader (no code runs from the file)."""
    from .weights import load_state_dict

    sd = load_state_dict(path)
    pruned = {k: v for k, v in sd.items() if k.endswith(".weight_mask")}
    if pruned:
        return {k[: -len("_mask")]: _as_mask(k, v) for k, v in pruned.items()}
    return {k: _as_mask(k, v) for k, v in sd.items()}
