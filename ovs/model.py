"""CLIP models on the ovs C engine: load weights, infer the architecture, encode images and text.

    >>> import ovs
    >>> model = ovs.load("RN50")                 # or a path to an open_clip state dict
    >>> emb = model.encode_image(image_uint8)    # (1, 1024) float32
    >>> cls = model.text_classifier(["cat", "dog"], templates="imagenet80")

Weights stay addressed by their open_clip names (``model.state_dict``) and can be swapped one
tensor at a time (``model.set_weight``); the affected tower is rebuilt in C. A model loaded from
a safetensors file holds its weights once, in the C towers' layouts: ``model.state_dict`` is then
a read-only ovs.weights.FileStateDict that reads a tensor from the file when it is accessed.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from . import _core
from . import text as _text

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: The MLP activations of the CLIP towers (Model(act=), the CLI's --act), from the C activations
#: table (csrc/ops/act.c): "quickgelu" (OpenAI weights), "gelu".
ACTIVATIONS = tuple(a["name"] for a in _core.activations() if a["tower_mlp"])


def _count_blocks(keys: Iterable[str], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"resblocks\.(\d+)\.")
    idx = {int(m.group(1)) for k in keys if (m := pat.match(k))}
    return _contiguous(idx, prefix + "resblocks")


def _contiguous(idx: set[int], what: str) -> int:
    """len(idx) when idx is {0, ..., n-1}; otherwise a ValueError naming the gap."""
    if not idx:
        return 0
    n = max(idx) + 1
    if len(idx) != n:
        gaps = sorted(set(range(n)) - idx)
        raise ValueError(f"{what}: block indices {sorted(idx)[:8]}{'...' if len(idx) > 8 else ''} "
                         f"are not 0..{n - 1} (missing {gaps[:8]}); a stray or misnamed key such "
                         f"as '{what}.{max(idx)}.*'?")
    return n


def _grid_rows(npos: int, name: str) -> int:
    """The square grid side g of a positional embedding with 1 + g*g rows."""
    grid = int(round(math.sqrt(npos - 1))) if npos >= 2 else 0
    if grid < 1 or grid * grid + 1 != npos:
        raise ValueError(f"{name} has {npos} rows, not 1 + a square grid (e.g. 50 = 1 + 7*7)")
    return grid


def infer_config(sd: Mapping[str, np.ndarray], *, vision_heads: int | None = None,
                 text_heads: int | None = None) -> dict[str, Any]:
    """The CLIP architecture implied by an open_clip state dict's names and shapes (the rules of
    open_clip's ``build_model_from_openai_state_dict``: heads = width // 64 for ViTs and text,
    width * 32 // 64 for the ResNet attention pool, unless given)."""
    from .weights import shape_of

    def shape(name: str) -> tuple[int, ...]:
        if name not in sd:
            raise KeyError(f"state dict has no '{name}': not an open_clip CLIP model "
                           f"(first keys: {sorted(sd)[:5]})")
        return tuple(int(s) for s in shape_of(sd, name))

    cfg: dict[str, Any] = {}
    keys = list(sd)
    if "visual.proj" in sd or "visual.class_embedding" in sd:
        width, _, patch, _ = shape("visual.conv1.weight")
        grid = _grid_rows(shape("visual.positional_embedding")[0], "visual.positional_embedding")
        embed = shape("visual.proj")[1] if "visual.proj" in sd else 0
        cfg["vision"] = dict(arch="vit", width=width, patch=patch, grid=grid, embed_dim=embed,
                             layers=_count_blocks(keys, "visual.transformer."),
                             heads=vision_heads or max(1, width // 64), image_size=patch * grid)
    elif "visual.conv1.weight" in sd and "visual.layer1.0.conv1.weight" in sd:
        layers = []
        for b in range(1, 5):
            pat = re.compile(rf"visual\.layer{b}\.(\d+)\.")
            idx = {int(m.group(1)) for k in keys if (m := pat.match(k))}
            if not idx:
                raise KeyError(f"state dict has no visual.layer{b}.*: not a CLIP ModifiedResNet")
            layers.append(_contiguous(idx, f"visual.layer{b}"))
        width = shape("visual.layer1.0.conv1.weight")[0]
        attnpool = "visual.attnpool.positional_embedding" in sd
        grid = embed = 0
        if attnpool:
            grid = _grid_rows(shape("visual.attnpool.positional_embedding")[0],
                              "visual.attnpool.positional_embedding")
            embed = shape("visual.attnpool.c_proj.weight")[0]
        cfg["vision"] = dict(arch="resnet", layers=tuple(layers), width=width, grid=grid,
                             embed_dim=embed, attnpool=attnpool,
                             heads=vision_heads or max(1, width * 32 // 64),
                             image_size=grid * 32 if grid else 224)
    if "token_embedding.weight" in sd:
        vocab, width = shape("token_embedding.weight")
        cfg["text"] = dict(width=width, vocab=vocab, context=shape("positional_embedding")[0],
                           embed_dim=shape("text_projection")[1],
                           layers=_count_blocks(keys, "transformer."),
                           heads=text_heads or max(1, width // 64))
    if not cfg:
        raise ValueError("the state dict holds neither a CLIP image tower (visual.*) nor a text "
                         f"tower (token_embedding.weight); first keys: {sorted(sd)[:5]}")
    return cfg


class StateDict(dict):
    """A plain dict of the weights that can also be called, so that ``model.state_dict()`` (the
    torch / open_clip spelling) and ``model.state_dict[name]`` both work. A weight the model
    holds sparse (ovs.prune.SparseWeight, from a save_sparse file) comes out dense, built on
    access."""

    def __call__(self) -> "StateDict":
        return self

    def __getitem__(self, name):
        return _dense(dict.__getitem__(self, name))

    def get(self, name, default=None):
        return self[name] if name in self else default

    def values(self):
        return [_dense(v) for v in dict.values(self)]

    def items(self):
        return [(k, _dense(v)) for k, v in dict.items(self)]


def _dense(v):
    from .prune import SparseWeight

    return v.dense() if isinstance(v, SparseWeight) else v


class Model:
    """A CLIP model (image tower and/or text tower) running on the ovs C engine."""

    def __init__(self, state_dict: Mapping[str, np.ndarray], *, act: str = "quickgelu",
                 vision_heads: int | None = None, text_heads: int | None = None,
                 name: str | None = None, sparse: str = "auto"):
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
        if not isinstance(state_dict, Mapping):
            raise TypeError("state_dict must be a mapping of open_clip names to arrays, got "
                            f"{type(state_dict).__name__} (use ovs.load(path) for files)")
        from .weights import FileStateDict

        # attn_mask: a TorchScript/open_clip buffer (-inf above the diagonal), rebuilt in C
        if isinstance(state_dict, FileStateDict):   # read from the file as the towers build
            self._sd: Mapping[str, np.ndarray] = state_dict.select(
                lambda k: not k.endswith("attn_mask"))
            self._non_float = {k: self._sd.dtype(k) for k in self._sd
                               if self._sd.dtype(k).kind != "f"}
        else:
            from .prune import SparseWeight

            self._sd = {}
            # dict.items: a model's StateDict would densify the SparseWeights it holds
            items = dict.items(state_dict) if isinstance(state_dict, dict) else state_dict.items()
            for k, v in items:
                if str(k).endswith("attn_mask"):
                    continue
                if isinstance(v, SparseWeight):  # kept sparse (a conv of a save_sparse file)
                    self._sd[str(k)] = v
                    continue
                a = np.asarray(v)
                if a.dtype.kind == "f":
                    a = np.asarray(a, dtype=np.float32, order="C")   # 0-d stays 0-d
                    if a.flags.writeable and a is v:
                        a = a.copy()
                    a.setflags(write=False)
                self._sd[str(k)] = a
            self._non_float = {k: a.dtype for k, a in self._sd.items() if a.dtype.kind != "f"}
        self.act = act
        self.name = name
        self.config = infer_config(self._sd, vision_heads=vision_heads, text_heads=text_heads)
        self.mean = np.array(CLIP_MEAN, np.float32)
        self.std = np.array(CLIP_STD, np.float32)
        v, t = self.config.get("vision"), self.config.get("text")
        if v and t and v["embed_dim"] and v["embed_dim"] != t["embed_dim"]:
            raise ValueError(f"image embedding dim {v['embed_dim']} != text embedding dim "
                             f"{t['embed_dim']} (visual projection vs text_projection shapes)")
        if sparse not in ("auto", "dense", "all"):
            raise ValueError(f"sparse must be 'auto', 'dense' or 'all', got {sparse!r}")
        self._sparse_mode = sparse
        self._visual = self._explain(self._build_visual) if "vision" in self.config else None
        self._text = self._explain(self._build_text) if "text" in self.config else None
        self._digest: str | None = None
        self._text_cache: dict[tuple, np.ndarray] = {}

    # ------------------------------------------------------------ construction
    # Each tower gets only its own tensors: building a tower reads (checks, packs) every tensor
    # it is given, and a tower built later must not page back in the weights an earlier one
    # packed and released.
    def _tower_weights(self, visual: bool) -> dict:
        from .prune import SparseWeight
        from .weights import c_weights

        w = c_weights(self._sd, lambda k: k.startswith("visual.") == visual)
        # SparseWeights go to the C ResNet as CSR (its convs take them); elsewhere dense
        resnet = visual and self.config["vision"]["arch"] == "resnet"
        for k, a in w.items():
            if isinstance(a, SparseWeight):
                w[k] = a.csr_tuple() if resnet and a.ndim == 4 else a.dense()
        return w

    def _explain(self, build):
        """build(); a weight the C model reports missing that is present with an integer or
        bool dtype becomes a TypeError saying so (the C side only sees float tensors)."""
        try:
            return build()
        except KeyError as exc:
            m = re.search(r"'([^']+)' is missing", str(exc))
            if m and m.group(1) in self._non_float:
                raise TypeError(f"weight {m.group(1)!r} has dtype {self._non_float[m.group(1)]}; "
                                "CLIP weights must be floating point") from None
            raise

    def _build_visual(self):
        v = self.config["vision"]
        sd = self._tower_weights(True)
        if v["arch"] == "vit":
            return _core.ViT(sd, "visual.", v["width"], v["heads"], v["patch"], v["grid"],
                             v["embed_dim"], self.act)
        net = _core.ResNet(sd, "visual.", v["layers"], v["width"], v["embed_dim"],
                           v["heads"], v["grid"], v["attnpool"])
        from .prune import auto_sparse_mode

        mode = auto_sparse_mode(self._sd, self._sparse_mode, tower=net)
        if mode != "dense" or any(isinstance(a, tuple) and len(a) == 4 for a in sd.values()):  # CSR convs
            net.sparsify(mode, v["image_size"], v["image_size"])
        return net

    def sparsify(self, mode: str = "auto", size: int | None = None) -> list[dict]:
        """Choose per conv of a ResNet image tower between the dense and the sparse (CSR) kernel:
        "auto" times both on this CPU at the conv's input size for a size x size image (default
        the model's image size) and keeps the faster; "all" makes every stride-1 conv sparse;
        "dense" reverts. Returns the per-conv table (name, shape, nnz, sparse, weight_bytes,
        dense_ms, sparse_ms). Models are built with sparse="auto", which calls this when the
        image tower's convs are at least 30% zeros."""
        vis = self._need_visual()
        if self.config["vision"]["arch"] != "resnet":
            raise ValueError("sparse kernels are implemented for ResNet image towers only")
        if mode not in ("auto", "dense", "all"):
            raise ValueError(f"mode must be 'auto', 'dense' or 'all', got {mode!r}")
        size = int(size or self.image_size)
        if not 32 <= size <= 8192:
            raise ValueError(f"size must be in 32..8192, got {size}")
        vis.sparsify(mode, size, size)
        self._sparse_mode = mode
        return vis.convs()

    def _build_text(self):
        t = self.config["text"]
        return _core.TextTower(self._tower_weights(False), "", t["width"], t["heads"], t["context"], t["vocab"],
                               t["embed_dim"], self.act)

    @property
    def state_dict(self) -> Mapping[str, np.ndarray]:
        """The weights by open_clip name (read-only arrays): ``model.state_dict()`` as in torch /
        open_clip (``model.state_dict[name]`` works too). For a model loaded from a safetensors
        file, a read-only ovs.weights.FileStateDict that reads each tensor from the file when
        accessed; otherwise a dict."""
        from .weights import FileStateDict

        return self._sd if isinstance(self._sd, FileStateDict) else StateDict(self._sd)

    def set_weight(self, name: str, value: np.ndarray) -> None:
        """Replace one weight (same shape) and rebuild the tower that uses it."""
        from .weights import shape_of, updated

        if name not in self._sd:
            raise KeyError(f"no weight named {name!r}")
        old_shape = shape_of(self._sd, name)
        a = np.array(value, dtype=np.float32, copy=True)
        if a.shape != old_shape:
            raise ValueError(f"{name}: new shape {a.shape} != current shape {old_shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{name}: the new value contains NaN or infinity")
        a.setflags(write=False)
        old = self._sd
        self._sd = updated(self._sd, {name: a})
        try:
            if name.startswith("visual."):
                self._visual = self._build_visual()
            else:
                self._text = self._build_text()
                self._digest = None
                self._text_cache.clear()
        except Exception:
            self._sd = old
            raise

    # ------------------------------------------------------------ properties
    @property
    def visual(self):
        """The image tower in C (``_core.ViT`` or ``_core.ResNet``), None for a text-only
        model. Rebuilt (a new object) when set_weight changes an image weight."""
        return self._visual

    @property
    def text(self):
        """The text tower in C (``_core.TextTower``: forward, prefix, forward_prefixed, config),
        None for an image-only model; what the ``ovs.text`` functions take. Rebuilt (a new
        object) when set_weight changes a text weight."""
        return self._text

    @property
    def text_cache(self) -> dict:
        """The in-memory text-embedding cache of text_classifier: {(template-set key, class
        name): (embed_dim,) float32}. Cleared when a text weight changes."""
        return self._text_cache

    @property
    def arch(self) -> str:
        return self.config["vision"]["arch"] if "vision" in self.config else "text"

    @property
    def embed_dim(self) -> int:
        if "vision" in self.config and self.config["vision"]["embed_dim"]:
            return int(self.config["vision"]["embed_dim"])
        return int(self.config["text"]["embed_dim"])

    @property
    def image_size(self) -> int:
        return int(self.config["vision"]["image_size"])

    @property
    def patch_size(self) -> int:
        """Input sides must be multiples of this (the ViT patch, 32 for ResNets)."""
        v = self.config["vision"]
        return int(v["patch"]) if v["arch"] == "vit" else 32

    def __repr__(self) -> str:
        parts = []
        v = self.config.get("vision")
        if v and v["arch"] == "vit":
            parts.append(f"ViT(width={v['width']}, layers={v['layers']}, heads={v['heads']}, "
                         f"patch={v['patch']}, image_size={v['image_size']})")
        elif v:
            parts.append(f"ModifiedResNet(layers={list(v['layers'])}, width={v['width']}, "
                         f"attnpool_heads={v['heads']}, image_size={v['image_size']})")
        t = self.config.get("text")
        if t:
            parts.append(f"TextTransformer(width={t['width']}, layers={t['layers']}, "
                         f"heads={t['heads']})")
        name = f"{self.name!r}, " if self.name else ""
        return f"ovs.Model({name}{', '.join(parts)}, embed_dim={self.embed_dim}, act={self.act!r})"

    # ------------------------------------------------------------ images
    def _need_visual(self):
        if self._visual is None:
            raise ValueError("this model has no image tower (no visual.* weights)")
        return self._visual

    def preprocess(self, images) -> np.ndarray:
        """CLIP preprocessing in C, equal to open_clip's on a PIL image: bicubic resize (Pillow's
        antialiased filter) of the shorter side to image_size, centre crop, /255, mean/std.
        Accepts uint8 (H, W, 3), (N, H, W, 3) or a list of (H, W, 3), or the same as float RGB in
        [0, 1] (rounded to uint8 first); returns (N, 3, S, S)."""
        from .image import as_uint8_images, clip_preprocess

        imgs = as_uint8_images(images)
        return clip_preprocess(imgs, self.image_size, self.mean, self.std)

    def _as_input(self, x, preprocess: bool) -> np.ndarray:
        if preprocess:
            return self.preprocess(x)
        if not isinstance(x, np.ndarray):
            raise TypeError(f"with preprocess=False the input must be a float32 numpy array "
                            f"(N, 3, H, W), got {type(x).__name__}")
        if x.dtype.kind != "f":
            raise TypeError(f"with preprocess=False the input must be float (N, 3, H, W) "
                            f"normalised images, got dtype {x.dtype}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) float images, got shape {x.shape}")
        if x.shape[0] == 0:
            raise ValueError("the image batch is empty (N = 0)")
        p = self.patch_size
        h, w = x.shape[2], x.shape[3]
        if h < p or w < p or h % p or w % p:
            raise ValueError(f"image sides must be positive multiples of {p} for this "
                             f"{self.arch} model, got {h}x{w}; pad or resize, or use "
                             "preprocess=True on uint8 images")
        return x

    def encode_image(self, images, preprocess: bool = True) -> np.ndarray:
        """Image embeddings (N, embed_dim), not normalised (as open_clip's encode_image)."""
        vis = self._need_visual()
        x = self._as_input(images, preprocess)
        if self.config["vision"]["arch"] == "resnet" and not self.config["vision"]["attnpool"]:
            raise ValueError("this ResNet has no attention pool: use image_features()")
        out = vis.forward(x)["embed"]
        if not np.isfinite(out).all():
            raise ValueError("the image embeddings contain NaN or infinity: the model's "
                                     "weights overflow float32 (e.g. huge values in a projection "
                                     "or norm); check the weight file")
        return out

    def image_features(self, images, preprocess: bool = False) -> dict[str, np.ndarray]:
        """Intermediate features. ResNets: res2..res5 (N, C, h, w) and embed; ViTs: tokens
        (L, N, 1 + gh*gw, width), the output of every block, and embed."""
        vis = self._need_visual()
        x = self._as_input(images, preprocess)
        if self.config["vision"]["arch"] == "vit":
            out = vis.forward(x, all_tokens=True)
            return {"tokens": out["block_tokens"], "embed": out["embed"]}
        return vis.forward(x, features=True)

    # ------------------------------------------------------------ text
    def _need_text(self):
        if self._text is None:
            raise ValueError("this model has no text tower (no token_embedding.weight)")
        return self._text

    def encode_tokens(self, ids, *, truncate: bool = True, batch_size: int = 256) -> np.ndarray:
        """Text embeddings (N, embed_dim) of token ids (N, context), not normalised.

        With truncate (the default), rows are grouped by their end-of-text position and each
        group runs in chunks of batch_size only up to that position (identical to full-length
        computation: attention is causal). A row is therefore always computed at its own
        length, whatever else is in the call, so its embedding does not depend on the batch it
        came with (the GEMM kernels give each row the same arithmetic at any batch size)."""
        return _text.encode_tokens(self._need_text(), ids, truncate=truncate, batch_size=batch_size)

    @property
    def embed_dim_text(self) -> int:
        return int(self.config["text"]["embed_dim"])

    def encode_text(self, texts: str | Sequence[str], **kw) -> np.ndarray:
        """Text embeddings (N, embed_dim) of raw strings, not normalised."""
        from .tokenizer import tokenize

        return self.encode_tokens(tokenize(texts, context_length=self.config["text"]["context"]), **kw)

    def weights_digest(self) -> str:
        """sha256 over the text tower's weights (names, shapes, bytes): the cache key."""
        if self._digest is None:
            import hashlib

            h = hashlib.sha256()
            for k in sorted(self._sd):
                if k.startswith("visual."):
                    continue
                a = _dense(self._sd[k])
                h.update(k.encode())
                h.update(str(a.shape).encode())
                h.update(np.ascontiguousarray(a).data)
            h.update(self.act.encode())
            self._digest = h.hexdigest()
        return self._digest

    def encode_prompts(self, names: Sequence[str], templates="imagenet80", *,
                       share_prefix: bool = True, batch_size: int = 256,
                       progress: bool = False) -> np.ndarray:
        """Text embeddings (len(names), len(templates), embed_dim) of every prompt
        template.format(name), not normalised: encode_text of those prompts, with each template's
        shared leading tokens ("<start_of_text> a photo of a") computed once and only the rest of
        each prompt run per prompt (share_prefix=False: the plain path). See ovs.text."""
        return _text.encode_prompts(self._need_text(), names, templates, share_prefix=share_prefix,
                                    batch_size=batch_size, progress=progress)

    def text_classifier(self, class_names: Sequence[str], templates="imagenet80", *,
                        cache_dir: str | os.PathLike | None = None,
                        progress: bool = True) -> np.ndarray:
        """Zero-shot classifier (C, embed_dim): per class, every synonym ("sofa, couch") in every
        template is encoded and L2-normalised, the mean taken and L2-normalised again. Embeddings
        are cached per (weights digest, template set, class name) in memory and, with
        cache_dir (or $OVS_CACHE_DIR/text when set), on disk. Prompts are encoded with
        encode_prompts (shared template prefixes run once). progress: a tqdm bar on stderr when
        encoding takes more than a few seconds and stderr is a terminal."""
        return _text.build_classifier(self._need_text(), class_names, templates, cache=self._text_cache,
                                      digest=self.weights_digest(), cache_dir=cache_dir,
                                      progress=progress)


def load(name_or_path: str | os.PathLike, *, act: str | None = None,
         vision_heads: int | None = None, text_heads: int | None = None,
         cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Model:
    """Load a CLIP model.

    name_or_path: "RN50" or "ViT-B-16" (OpenAI weights, downloaded once from the Hugging Face hub
    into the cache and verified), or a path to a .safetensors / .pt / .pth / .bin file holding an
    open_clip CLIP state dict, or a framework file written by `ovs convert` (then the framework's
    model, e.g. ovs.frameworks.DeepLabModel, is returned).
    act: the MLP activation, "quickgelu" or "gelu". Known hub names record theirs (OpenAI's RN50 and
    ViT-B-16: "quickgelu"; another act for them warns); for a file the default is "quickgelu" (as
    OpenAI's weights and open_clip's "-quickgelu" models); weights of open_clip models without
    "-quickgelu" in their name (e.g. LAION's ViT-B-16) need act="gelu". The weights cannot tell: the
    wrong one gives silently different outputs. `repr(model)` shows the one in use.
    Offline, a WeightsUnavailableError says which file to fetch and where to put it
    ($OVS_WEIGHTS_DIR) or how to pass its path.
    """
    from .hub import known_weights, resolve_weights
    from .weights import open_state_dict, require_regular_file

    raw = os.path.expanduser(os.fspath(name_or_path))
    spec = None if os.path.exists(raw) or isinstance(name_or_path, os.PathLike) else known_weights(raw)
    if spec is not None and act is not None and act != spec.act:
        warnings.warn(f"{spec.name} weights were trained with act={spec.act!r}; act={act!r} gives "
                      "different (wrong) outputs", stacklevel=2)
    if os.path.exists(raw) and not os.path.isfile(raw) and not os.path.isdir(raw):
        require_regular_file(raw)  # a FIFO or a device: say so (not "does not exist")
    path = resolve_weights(name_or_path, cache_dir=cache_dir, progress=progress)
    from .prune import unpack_sparse

    read = open_state_dict(path)   # safetensors: read tensor by tensor as the towers build
    sd = unpack_sparse(read, path)  # CSR weights of a save_sparse file, checked (SparseWeight)
    if any(k.endswith(".weight_orig") for k in sd):
        from .prune import fold_pruned

        sd = fold_pruned(sd)  # a checkpoint fine-tuned with torch.nn.utils.prune masks
    from .frameworks import detect

    fw = detect(sd)
    if fw is not None:  # a file written by `ovs convert`: that framework's model
        if sd is not read:  # frameworks take dense weights
            sd = {k: _dense(v) for k, v in sd.items()}
        return fw.model(sd, name=str(name_or_path))
    return Model(sd, act=act or (spec.act if spec is not None else "quickgelu"), vision_heads=vision_heads, text_heads=text_heads,
                 name=str(name_or_path))
