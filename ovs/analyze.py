"""Heavy-tailed spectral analysis (α per layer) and principled choice of the layers to fine-tune.

    >>> import ovs.analyze as oa
    >>> recs = oa.alphas("RN50.safetensors", prefix="visual.")   # or an ovs.Model, a state dict
    >>> sel = oa.select_layers(recs, rule="median")                # freeze α < median
    >>> sel.freeze[:2], sel.flops["saving"]                        # names under open_clip naming
    >>> oa.to_json(recs, "alphas.json", selection=sel)

The spectra and the power-law fits run in C (csrc/analysis/, LAPACK from OpenBLAS, layers in
parallel); see include/ovs/analysis.h for the exact definitions, which follow WeightWatcher
(fix_fingers="xmin_peak") and the paper's code:

* a 2-D ``...weight`` is a linear layer (λ = σ²), a 4-D one a convolution (kernel-position slices
  scaled by √0.5, spectra pooled); attention ``in_proj_weight`` is split into its q, k and v
  thirds, each analysed as a linear (records with ``part`` "q"/"k"/"v");
* linears with max/min dimension ≥ 8 are skipped (``status`` "skipped: aspect ratio");
* eigenvalues ≤ 1e-5 are dropped (pruned weights), the tail is fitted with the Clauset MLE and
  the KS distance chooses xmin among the candidates of ``xmin``: "peak" (0.95p ≤ xmin ≤ 1.5p,
  p = peak of the log-histogram), "peak_reference" (the paper's/WeightWatcher's code, which
  compares λ with log10(0.95p)), or "all";
* a layer that cannot be fitted (non-finite weights, fewer than 2 eigenvalues left, all-zero,
  no fit) gets ``alpha`` NaN and a ``status`` saying why; the call does not fail.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from . import _core

XMIN_MODES = {"all": 0, "peak": 1, "peak_reference": 2}
METHODS = {"gram": 0, "svd": 1}
RULES = ("median", "fraction", "budget")
NAMINGS = ("open_clip", "detectron2")


@dataclass
class LayerAlpha:
    """One analysed weight (or one q/k/v third of an attention in_proj_weight)."""
    name: str                  # open_clip parameter name, e.g. "visual.layer1.0.conv1.weight"
    part: str                  # "" or "q" / "k" / "v" for in_proj_weight thirds
    kind: str                  # "linear" or "conv"
    shape: tuple               # shape of the analysed matrix / conv weight
    status: str                # "ok" or why there is no α
    alpha: float               # power-law exponent (NaN unless status == "ok")
    xmin: float                # chosen xmin
    D: float                   # KS distance at xmin
    sigma: float               # (α-1)/sqrt(num_tail)
    num_evals: int             # eigenvalues in the spectrum (before the 1e-5 threshold)
    num_kept: int              # eigenvalues > threshold (the fitted data)
    num_tail: int              # eigenvalues >= xmin
    lambda_max: float          # largest eigenvalue
    alpha_weighted: float      # α·log10(λmax)
    log_spectral_norm: float   # log10(λmax)
    bias: str | None = None    # name of the layer's bias parameter, if the weights have one
    flops: float | None = None # forward multiply-adds ×2 at the analysis input size (see layer_flops)

    @property
    def key(self) -> str:
        return f"{self.name}[{self.part}]" if self.part else self.name

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class Selection:
    """Which parameters to freeze and which to train, under one naming."""
    rule: str
    naming: str
    threshold: float | None          # α threshold used (median / fraction rules)
    freeze: list[str]                # parameter names (weights and their biases) to freeze
    train: list[str]                 # analysed parameter names left trainable
    frozen_layers: list[str] = field(default_factory=list)   # record keys judged well trained
    flops: dict = field(default_factory=dict)                # training-FLOPs accounting


# --------------------------------------------------------------------------- weights
def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor, without importing torch
        v = v.detach().cpu()
        if str(getattr(v, "dtype", "")) in ("torch.bfloat16", "torch.float16"):
            v = v.float()
        return v.numpy()
    return np.asarray(v)


def _state_dict(model_or_file: Any) -> dict[str, np.ndarray]:
    if isinstance(model_or_file, (str, os.PathLike)):
        from .weights import load_state_dict
        return load_state_dict(model_or_file)
    sd = getattr(model_or_file, "_sd", None)          # an ovs.Model
    if isinstance(sd, Mapping):
        return dict(sd)
    if hasattr(model_or_file, "state_dict") and callable(model_or_file.state_dict):  # torch.nn.Module
        return {k: _to_numpy(v) for k, v in model_or_file.state_dict().items()}
    if isinstance(model_or_file, Mapping):
        out = {}
        for k, v in model_or_file.items():
            if not isinstance(k, str):
                raise TypeError(f"state dict keys must be str, got {type(k).__name__} ({k!r})")
            out[k] = _to_numpy(v)
        return out
    raise TypeError("model_or_file must be a weight file path, an ovs.Model, a torch.nn.Module or a "
                    f"mapping of parameter names to arrays, got {type(model_or_file).__name__}")


def weight_layers(state_dict: Mapping[str, np.ndarray], prefix: str | Sequence[str] | None = None,
                  split_qkv: bool = True) -> list[tuple[str, str, np.ndarray]]:
    """The (name, part, matrix) triples analysed, in state-dict order: every floating 2-D or 4-D
    parameter whose name ends in "weight" (so 1-D norms, biases, positional/class embeddings and
    bare projection matrices such as visual.proj are not layers), in_proj_weight split in thirds."""
    prefixes = (prefix,) if isinstance(prefix, str) else tuple(prefix or ())
    out = []
    for name, v in state_dict.items():
        if prefixes and not name.startswith(prefixes):
            continue
        if not name.endswith("weight"):
            continue
        a = np.asarray(v)
        if a.ndim not in (2, 4) or a.dtype.kind != "f":
            continue
        if split_qkv and name.endswith("in_proj_weight") and a.ndim == 2 and a.shape[0] % 3 == 0:
            d = a.shape[0] // 3
            for i, part in enumerate("qkv"):
                out.append((name, part, a[i * d:(i + 1) * d]))
        else:
            out.append((name, "", a))
    return out


def _bias_name(name: str, sd: Mapping[str, Any]) -> str | None:
    cand = name[: -len("weight")] + "bias"
    return cand if cand in sd else None


# --------------------------------------------------------------------------- analysis
def alphas(model_or_file: Any, *, prefix: str | Sequence[str] | None = None, xmin: str = "peak",
           evals_thresh: float = 1e-5, conv_scale: float = math.sqrt(0.5), max_aspect: float = 8.0,
           split_qkv: bool = True, image_size: int | None = 224, method: str = "gram") -> list[LayerAlpha]:
    """α and the spectral statistics of every weight layer of a model or weight file.

    model_or_file: a .safetensors/.pth/.pt path (read with ovs.weights.load_state_dict), an
    ovs.Model, a torch.nn.Module or a mapping name -> array. prefix: analyse only names starting
    with it (e.g. "visual."). xmin: "peak" (default), "peak_reference" (the paper's code) or
    "all". max_aspect <= 0 analyses every linear. image_size: fill ``flops`` for open_clip
    RN/ViT/text layers at this input size (None: leave None). method: "gram" (eigenvalues of
    the smaller Gram matrix, default, faster) or "svd" (squared singular values); both float64.
    """
    if xmin not in XMIN_MODES:
        raise ValueError(f"xmin must be one of {sorted(XMIN_MODES)}, got {xmin!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    for label, v in (("evals_thresh", evals_thresh), ("conv_scale", conv_scale), ("max_aspect", max_aspect)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ValueError(f"{label} must be a finite number, got {v!r}")
    if evals_thresh < 0:
        raise ValueError(f"evals_thresh must be >= 0, got {evals_thresh!r}")
    if conv_scale <= 0:
        raise ValueError(f"conv_scale must be > 0, got {conv_scale!r}")
    sd = _state_dict(model_or_file)
    layers = weight_layers(sd, prefix, split_qkv)
    raw = _core.analyze_layers([(n, m) for n, _, m in layers], float(evals_thresh), float(conv_scale),
                               float(max_aspect), XMIN_MODES[xmin], METHODS[method])
    recs = []
    for (name, part, mat), (status, fit, num_evals, num_kept, lmax, aw, lsn) in zip(layers, raw):
        fst, alpha, x, D, sigma, num_tail, _ncand, _peak = fit
        ok = status == 0
        recs.append(LayerAlpha(
            name=name, part=part, kind="conv" if mat.ndim == 4 else "linear",
            shape=tuple(int(s) for s in mat.shape), status=_core.layer_status_name(status),
            alpha=alpha if ok else math.nan, xmin=x if ok else math.nan, D=D if ok else math.nan,
            sigma=sigma if ok else math.nan, num_evals=int(num_evals), num_kept=int(num_kept),
            num_tail=int(num_tail) if ok else 0, lambda_max=lmax,
            alpha_weighted=aw if ok else math.nan, log_spectral_norm=lsn,
            bias=_bias_name(name, sd)))
    if image_size is not None:
        fl = layer_flops(recs, image_size=image_size)
        for r in recs:
            r.flops = fl.get(r.key)
    return recs


# --------------------------------------------------------------------------- FLOPs
_RN = re.compile(r"^visual\.(?:conv([123])|layer([1-4])\.(\d+)\.(conv[123]|downsample\.0))\.weight$")
_RN_ATTNPOOL = re.compile(r"^visual\.attnpool\.([qkvc])_proj\.weight$")
_VIT_BLOCK = re.compile(r"^visual\.transformer\.resblocks\.\d+\.")
_TEXT_BLOCK = re.compile(r"^transformer\.resblocks\.\d+\.")


def _rn_output_size(r: LayerAlpha, image_size: int, strides: dict) -> int | None:
    m = _RN.match(r.name)
    if not m:
        return None
    s1 = -(-image_size // 2)                      # stem conv1, stride 2, pad 1
    if m.group(1):
        return s1
    size = s1 // 2                                # stem avgpool 2
    layer, block, conv = int(m.group(2)), int(m.group(3)), m.group(4)
    for L in range(1, layer):
        size //= strides.get(L, 2 if L > 1 else 1)
    stride = strides.get(layer, 2 if layer > 1 else 1)
    if block > 0:                                 # later blocks run at the reduced size
        size //= stride
        stride = 1
    if conv in ("conv1", "conv2"):
        return size                               # before the bottleneck's avgpool
    return size // stride                         # conv3 and downsample after avgpool(stride)


def layer_flops(records: Iterable[LayerAlpha], *, image_size: int = 224, text_tokens: int = 77) -> dict[str, float]:
    """Forward FLOPs (2 × multiply-adds) of each analysed layer of an open_clip CLIP at
    ``image_size`` (square) and ``text_tokens`` tokens, keyed by record key. Kept simple and
    local: convolutions of the ModifiedResNet (CLIP RN50 layout: stride in the bottleneck's
    avgpool, conv3/downsample at the reduced size), the attention pool (query = the mean token
    only for q; k/v on hw+1 tokens), ViT layers on (image/patch)²+1 tokens, text layers on
    ``text_tokens``. Layers it cannot place are left out."""
    if not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size must be an int >= 32, got {image_size!r}")
    recs = list(records)
    out: dict[str, float] = {}
    patch = next((r.shape[2] for r in recs if r.name == "visual.conv1.weight" and r.kind == "conv"
                  and r.shape[2] == r.shape[3] and r.shape[2] >= 8), None)  # ViT patch embedding
    for r in recs:
        if r.kind == "conv":
            o, i, kh, kw = r.shape
            if patch is not None and r.name == "visual.conv1.weight":
                hw = (image_size // patch) ** 2
            else:
                size = _rn_output_size(r, image_size, {})
                if size is None:
                    continue
                hw = size * size
            out[r.key] = 2.0 * o * i * kh * kw * hw
            continue
        o, i = r.shape
        m = _RN_ATTNPOOL.match(r.name)
        if m:
            final = (image_size // 32) ** 2 + 1
            tokens = 1 if m.group(1) in ("q", "c") else final
        elif _VIT_BLOCK.match(r.name) and patch is not None:
            tokens = (image_size // patch) ** 2 + 1
        elif _TEXT_BLOCK.match(r.name):
            tokens = text_tokens
        else:
            continue
        out[r.key] = 2.0 * o * i * tokens
    return out


def training_flops(records: Iterable[LayerAlpha], frozen_keys: Iterable[str]) -> dict:
    """Training FLOPs of the analysed layers per sample, as the paper counts a selection: a layer
    costs forward F plus backward 2F (input and weight gradients); a frozen layer's forward and
    backward are both counted as skipped. Layers without a FLOPs figure are not counted."""
    frozen = set(frozen_keys)
    total = saved = 0.0
    for r in records:
        if r.flops is None:
            continue
        total += 3.0 * r.flops
        if r.key in frozen:
            saved += 3.0 * r.flops
    return {"total": total, "frozen": saved, "remaining": total - saved,
            "saving": saved / total if total else 0.0}


# --------------------------------------------------------------------------- selection
_D2_STEM = re.compile(r"^visual\.(conv|bn)([123])\.(weight|bias)$")
_D2_BLOCK = re.compile(r"^visual\.layer([1-4])\.(\d+)\.(conv[123]|bn[123]|downsample\.[01])\.(weight|bias)$")


def to_detectron2(name: str, prefix: str = "backbone.") -> str:
    """An open_clip RN parameter name under detectron2's ResNet naming (what the paper's
    detectron2 frameworks call the CLIP RN50 backbone): visual.conv{1,2,3} -> stem.conv{1,2,3},
    visual.layerL.i.convJ -> res{L+1}.i.convJ, bnJ -> convJ.norm, downsample.0/.1 ->
    shortcut / shortcut.norm. Names outside the ResNet trunk raise ValueError."""
    m = _D2_STEM.match(name)
    if m:
        kind, j, leaf = m.groups()
        return f"{prefix}stem.conv{j}." + ("norm." if kind == "bn" else "") + leaf
    m = _D2_BLOCK.match(name)
    if m:
        L, i, part, leaf = m.groups()
        base = f"{prefix}res{int(L) + 1}.{i}."
        if part.startswith("conv"):
            return base + f"{part}.{leaf}"
        if part.startswith("bn"):
            return base + f"conv{part[2]}.norm.{leaf}"
        return base + ("shortcut." if part.endswith("0") else "shortcut.norm.") + leaf
    raise ValueError(f"{name!r} is not an open_clip ModifiedResNet trunk parameter (visual.conv*, "
                     "visual.layerN.*); detectron2 naming covers the backbone only")


def select_layers(records: Sequence[LayerAlpha], rule: str = "median", *, fraction: float = 0.5,
                  budget: float | None = None, naming: str = "open_clip",
                  prefix: str = "backbone.") -> Selection:
    """Names of the parameters to freeze and to train.

    rule="median" (the paper): freeze the layers whose α is below the median α of the fitted
    layers (heavy-tailed = already well trained). rule="fraction": freeze the ``fraction`` of
    fitted layers with the smallest α. rule="budget": keep training the layers with the largest α,
    in decreasing α, while their training FLOPs stay within ``budget`` (a fraction of all analysed
    layers' training FLOPs); freeze the rest (needs records with ``flops``).
    Layers without α (skipped or failed) are never frozen. An in_proj_weight is frozen only if
    all of its q, k, v thirds are. A frozen weight's bias is frozen with it.
    naming: "open_clip" or "detectron2" (to_detectron2, with ``prefix``).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if naming not in NAMINGS:
        raise ValueError(f"naming must be one of {NAMINGS}, got {naming!r}")
    recs = list(records)
    if not all(isinstance(r, LayerAlpha) for r in recs):
        raise TypeError("records must be LayerAlpha records from ovs.analyze.alphas()")
    fitted = [r for r in recs if r.ok and math.isfinite(r.alpha)]
    threshold = None
    if rule == "median":
        if fitted:
            threshold = float(np.median([r.alpha for r in fitted]))
        frozen = {r.key for r in fitted if r.alpha < threshold} if fitted else set()
    elif rule == "fraction":
        if not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
        order = sorted(fitted, key=lambda r: r.alpha)
        k = int(round(fraction * len(order)))
        frozen = {r.key for r in order[:k]}
        threshold = order[k - 1].alpha if k else None
    else:
        if not isinstance(budget, (int, float)) or not 0.0 <= budget <= 1.0:
            raise ValueError(f"budget must be a fraction of the training FLOPs in [0, 1], got {budget!r}")
        missing = [r.key for r in fitted if r.flops is None]
        if missing:
            raise ValueError(f"rule='budget' needs per-layer FLOPs; no figure for {missing[:3]} "
                             "(analyse an open_clip model with image_size set)")
        total = sum(3.0 * r.flops for r in recs if r.flops is not None)
        spent = sum(3.0 * r.flops for r in recs if r.flops is not None and not (r.ok and math.isfinite(r.alpha)))
        frozen = set()
        for r in sorted(fitted, key=lambda r: -r.alpha):
            if spent + 3.0 * r.flops <= budget * total:
                spent += 3.0 * r.flops
            else:
                frozen.add(r.key)
    # per parameter: frozen only when every record of the parameter is frozen
    by_param: dict[str, list[LayerAlpha]] = {}
    for r in recs:
        by_param.setdefault(r.name, []).append(r)
    freeze, train = [], []
    for name, rs in by_param.items():
        if all(r.key in frozen for r in rs):
            freeze.append(name)
            if rs[0].bias:
                freeze.append(rs[0].bias)
        else:
            train.append(name)
    frozen_keys = [r.key for r in recs if r.name in set(freeze)]
    if naming == "detectron2":
        freeze = [to_detectron2(n, prefix) for n in freeze]
        train = [to_detectron2(n, prefix) for n in train]
    return Selection(rule=rule, naming=naming, threshold=threshold, freeze=freeze, train=train,
                     frozen_layers=frozen_keys, flops=training_flops(recs, frozen_keys))


# --------------------------------------------------------------------------- export
def _json_number(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def to_dict(records: Iterable[LayerAlpha], selection: Selection | None = None) -> dict:
    layers = []
    for r in records:
        d = asdict(r)
        d["shape"] = list(r.shape)
        layers.append({k: _json_number(v) for k, v in d.items()})
    out: dict[str, Any] = {"layers": layers}
    if selection is not None:
        out["selection"] = asdict(selection)
    return out


def to_json(records: Iterable[LayerAlpha], path: str | os.PathLike | None = None,
            selection: Selection | None = None) -> str:
    """JSON text of the records (NaN -> null) and, if given, the selection; written to path if set."""
    text = json.dumps(to_dict(records, selection), indent=1, allow_nan=False)
    if path is not None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return text


def format_table(records: Iterable[LayerAlpha]) -> str:
    rows = [("layer", "alpha", "xmin", "D", "n_evals", "lambda_max", "alpha_w", "status")]
    for r in records:
        f = (lambda v, p: "-" if not math.isfinite(v) else f"{v:.{p}g}")
        rows.append((r.key, f(r.alpha, 4), f(r.xmin, 4), f(r.D, 3), str(r.num_evals),
                     f(r.lambda_max, 4), f(r.alpha_weighted, 4), r.status))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)


def plot_alphas(records: Sequence[LayerAlpha], path: str | os.PathLike,
                selection: Selection | None = None) -> None:
    """α per layer (in order) as a PNG/PDF/SVG via matplotlib; frozen layers in a second colour."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # optional dependency
        raise ImportError("plotting needs matplotlib: pip install matplotlib (or ovs[plot])") from exc
    recs = list(records)
    frozen = set(selection.frozen_layers) if selection else set()
    x = np.arange(len(recs))
    a = np.array([r.alpha for r in recs], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.12 * len(recs)), 3.5))
    col = ["tab:blue" if r.key in frozen else "tab:orange" for r in recs]
    ax.scatter(x, a, c=col, s=14)
    if selection is not None and selection.threshold is not None:
        ax.axhline(selection.threshold, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("layer (state-dict order)")
    ax.set_ylabel("alpha")
    ax.set_title("power-law alpha per layer" + (" (blue: frozen)" if selection else ""))
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=120)
    plt.close(fig)
