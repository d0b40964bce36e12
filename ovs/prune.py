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

import json
import math
import os
import re
from typing import Any, Mapping

import numpy as np

__all__ = ["LAYOUTS", "prunable", "magnitude", "iterative", "masks", "apply", "transfer",
           "detect_layout", "save_masks", "load_masks", "fold_pruned", "sparsity", "SparseWeight",
           "save_sparse", "unpack_sparse"]

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
    zeros = sum(np.size(state_dict[n]) - _nnz(state_dict[n]) for n in names)
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


# ------------------------------------------------------------------ sparse (CSR) weight files
SPARSE_KEY = "ovs-sparse"   # the __metadata__ entry of a file written by save_sparse
SPARSE_VERSION = 1
_CSR_PARTS = (".csr_values", ".csr_colidx", ".csr_rowptr")
_CSR_DTYPES = {".csr_values": ("F32",), ".csr_colidx": ("U16", "I32"), ".csr_rowptr": ("I32", "I64")}


class SparseWeight:
    """A float32 weight of dense `shape` held as compressed sparse rows: the matrix is
    (shape[0], prod(shape[1:])); the non-zeros of row r are values[rowptr[r]:rowptr[r+1]] at
    columns colidx[...] (ascending). What ovs.load gives for a weight stored by save_sparse: an
    ovs.Model builds its conv straight from it (the dense weight is never made when the conv
    runs sparse); ``np.asarray(w)`` / ``w.dense()`` build the dense array on demand."""

    __slots__ = ("shape", "values", "colidx", "rowptr")
    dtype = np.dtype(np.float32)

    def __init__(self, shape, values: np.ndarray, colidx: np.ndarray, rowptr: np.ndarray):
        self.shape = tuple(int(s) for s in shape)
        self.values, self.colidx, self.rowptr = values, colidx, rowptr

    @classmethod
    def from_dense(cls, a) -> "SparseWeight":
        a = np.asarray(a, dtype=np.float32)
        if a.ndim < 2:
            raise ValueError(f"a sparse weight needs >= 2 dims, got shape {a.shape}")
        m = a.reshape(a.shape[0], -1)
        rows, cols = np.nonzero(m)                  # row-major: columns ascending in each row
        rowptr = np.zeros(m.shape[0] + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=m.shape[0]), out=rowptr[1:])
        return cls(a.shape, np.ascontiguousarray(m[rows, cols]),
                   cols.astype(np.uint16 if m.shape[1] <= 65536 else np.int32),
                   rowptr.astype(np.int32 if rows.size < 2 ** 31 else np.int64))

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: int(np.prod(self.shape)))
    nnz = property(lambda self: int(self.values.size))
    nbytes = property(lambda self: self.values.nbytes + self.colidx.nbytes + self.rowptr.nbytes)

    def dense(self) -> np.ndarray:
        """The dense float32 array (a new read-only array; zeros included)."""
        rows, cols = self.shape[0], self.size // max(self.shape[0], 1)
        out = np.zeros(rows * cols, np.float32)
        r = np.repeat(np.arange(rows, dtype=np.int64), np.diff(self.rowptr.astype(np.int64)))
        out[r * cols + self.colidx] = self.values
        out = out.reshape(self.shape)
        out.setflags(write=False)
        return out

    def __array__(self, dtype=None, copy=None):
        d = self.dense()
        return d if dtype is None else d.astype(dtype)

    def csr_tuple(self) -> tuple:
        """(shape, values, colidx, rowptr as int64): the form _core.ResNet takes."""
        return self.shape, self.values, self.colidx, self.rowptr.astype(np.int64)

    def __repr__(self) -> str:
        return f"SparseWeight(shape={self.shape}, nnz={self.nnz})"


def _nnz(a) -> int:
    return a.nnz if isinstance(a, SparseWeight) else int(np.count_nonzero(a))


def save_sparse(model, path: str | os.PathLike, names=None) -> list[str]:
    """Write a (pruned) model or state dict as safetensors with the weights in `names`
    (default prunable(model)) stored as CSR wherever that is smaller than dense: for a weight
    `<n>`, `<n>.csr_values` (float32), `<n>.csr_colidx` (uint16, int32 past 65536 columns) and
    `<n>.csr_rowptr` (int32, int64 past 2^31 non-zeros), its dense shape in the file's
    __metadata__ under "ovs-sparse" (JSON {"format": "csr", "version": 1, "tensors": {<n>:
    {"shape": [...]}}}). Every other tensor is written dense. ovs.load reads it back (the convs
    built sparse without a dense copy). Returns the names stored as CSR."""
    from .weights import save_safetensors

    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        raise ValueError(f"sparse weight files are .safetensors, got {path!r}")
    sd = _state_dict_of(model)
    # dict.items: a model's StateDict would densify SparseWeights on item access
    raw = dict(dict.items(sd)) if isinstance(sd, dict) else dict(sd)
    names = prunable(raw) if names is None else _check_names(raw, names)
    out, tensors = {}, {}
    chosen = set()
    for n in names:
        v = raw[n]
        w = v if isinstance(v, SparseWeight) else SparseWeight.from_dense(v)
        if w.nbytes < w.size * 4:
            chosen.add(n)
            tensors[n] = {"shape": list(w.shape)}
            out[n + ".csr_values"], out[n + ".csr_colidx"], out[n + ".csr_rowptr"] = (
                w.values, w.colidx, w.rowptr)
    for k, v in raw.items():
        if k not in chosen:
            out[k] = np.asarray(v)
    meta = {SPARSE_KEY: json.dumps({"format": "csr", "version": SPARSE_VERSION, "tensors": tensors})}
    save_safetensors(out, path, metadata=meta)
    return sorted(chosen)


def _safetensors_header(path: str) -> dict:
    """The JSON header of a safetensors file (names, dtypes, shapes, __metadata__); the C
    reader has already validated the file when this is called from unpack_sparse."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > 100 << 20:
            raise ValueError(f"{path!r}: safetensors header of {n} bytes")
        return json.loads(f.read(n))


def unpack_sparse(sd: Mapping[str, Any], path: str | os.PathLike) -> Mapping[str, Any]:
    """The state dict read from `path` with each CSR weight of a save_sparse file (the three
    `<n>.csr_*` tensors) replaced by one SparseWeight `<n>`, after checking it strictly against
    the "ovs-sparse" metadata: ValueError naming the tensor for malformed JSON, an unknown
    format/version, a shape the arrays do not fit, wrong dtypes, row pointers that do not run
    monotonically from 0 to nnz, column indices out of range or not ascending in a row,
    non-finite values, and CSR tensors the metadata does not list (or the reverse). A file
    without the metadata and without CSR tensors: `sd` itself is returned (only its names are
    read, so a lazily loaded state dict stays lazy)."""
    path = os.fspath(path)
    parts = [k for k in sd if k.endswith(_CSR_PARTS)]
    from .weights import detect_format

    if detect_format(path) != "safetensors":
        if parts:
            raise ValueError(f"{path!r}: CSR tensors ({parts[0]!r}) outside a safetensors file")
        return sd
    header = _safetensors_header(path)
    meta = header.get("__metadata__") or {}
    raw = meta.get(SPARSE_KEY) if isinstance(meta, dict) else None
    if raw is None:
        if parts:
            raise ValueError(f"{path!r} holds CSR tensors ({parts[0]!r}) but no {SPARSE_KEY!r} "
                             "metadata giving their shapes")
        return sd
    where = f"{path!r}: the {SPARSE_KEY!r} metadata"
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, TypeError, RecursionError) as exc:
        raise ValueError(f"{where} is not valid JSON ({type(exc).__name__}: {exc})") from None
    if (not isinstance(doc, dict) or doc.get("format") != "csr" or
            type(doc.get("version")) is not int or doc["version"] != SPARSE_VERSION):
        raise ValueError(f"{where} must be an object with format 'csr' and version "
                         f"{SPARSE_VERSION}, got {str(doc)[:100]!r}")
    tensors = doc.get("tensors")
    if not isinstance(tensors, dict):
        raise ValueError(f"{where} has no 'tensors' object")
    sparse, claimed = {}, set()
    for name, entry in tensors.items():
        sparse[name] = _check_csr(name, entry, sd, header, path)
        claimed.update(name + p for p in _CSR_PARTS)
    stray = sorted(set(parts) - claimed)
    if stray:
        raise ValueError(f"{where} does not list the CSR tensor {stray[0]!r}")
    from .weights import FileStateDict

    if isinstance(sd, FileStateDict):   # the dense tensors stay in the file, read on demand
        return sd.select(lambda k: not k.endswith(_CSR_PARTS)).replace(sparse)
    out = {k: v for k, v in sd.items() if not k.endswith(_CSR_PARTS)}
    out.update(sparse)
    return out


def _check_csr(name: str, entry, sd, header, path) -> SparseWeight:
    def bad(msg):
        return ValueError(f"{path!r}: sparse weight {name!r}: {msg}")

    shape = entry.get("shape") if isinstance(entry, dict) else None
    if (not isinstance(shape, list) or not 2 <= len(shape) <= 8 or
            not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in shape)):
        raise bad(f"metadata shape must be a list of 2..8 ints >= 0, got {str(entry)[:80]!r}")
    if name in sd:
        raise bad("stored both dense and as CSR")
    arrays = {}
    for part in _CSR_PARTS:
        key = name + part
        info = header.get(key)
        if key not in sd or not isinstance(info, dict):
            raise bad(f"the tensor {key!r} is missing")
        if info.get("dtype") not in _CSR_DTYPES[part] or np.ndim(sd[key]) != 1:
            raise bad(f"{key!r} must be a 1-D {' or '.join(_CSR_DTYPES[part])} tensor, got "
                      f"{info.get('dtype')} of shape {info.get('shape')}")
        arrays[part] = np.asarray(sd[key])
    values, colidx, rowptr = (arrays[p] for p in _CSR_PARTS)
    rows, cols = shape[0], math.prod(shape[1:])
    if cols >= 2 ** 31 or rows * cols >= 2 ** 40:
        raise bad(f"dense shape {shape} is too large")
    nnz = values.size
    if colidx.size != nnz:
        raise bad(f"{nnz} values but {colidx.size} column indices")
    if rowptr.size != rows + 1:
        raise bad(f"{rowptr.size} row pointers for {rows} rows (shape {shape}): expected {rows + 1}")
    rp = rowptr.astype(np.int64)
    if rp[0] != 0 or rp[-1] != nnz:
        raise bad(f"row pointers run from {rp[0]} to {rp[-1]}, expected 0 to nnz = {nnz}")
    if (np.diff(rp) < 0).any():
        raise bad("row pointers are not monotone")
    c = colidx.astype(np.int64)
    if nnz and (c.min() < 0 or c.max() >= cols):
        raise bad(f"column index {int(c.max() if c.max() >= cols else c.min())} out of range "
                  f"0..{cols - 1}")
    starts = np.zeros(nnz, bool)
    starts[rp[:-1][rp[:-1] < nnz]] = True
    if nnz > 1 and ((np.diff(c) <= 0) & ~starts[1:]).any():
        raise bad("column indices are not strictly ascending within a row")
    if not np.isfinite(values).all():
        raise bad("values hold NaN or infinity")
    return SparseWeight(shape, values, colidx, rowptr)
