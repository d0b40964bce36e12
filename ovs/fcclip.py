"""FC-CLIP (Yu et al., NeurIPS 2023) with the CLIP RN50 backbone on the ovs C engine.

Wiring as github.com/bytedance/fc-clip (commit 2b0bbe2), config
``fcclip_convnext_large_eval_ade20k_r50.yaml`` (CLIP RN50 OpenAI, EMBED_DIM 1024,
ENSEMBLE_ON_VALID_MASK True, α = 0.4, β = 0.8, 250 queries, 9 decoder layers):

- ``backbone.extract_features_resnet``: the frozen CLIP ModifiedResNet trunk (C, _core.ResNet)
  gives res2..res5; res5 is also ``clip_vis_dense``.
- ``MSDeformAttnPixelDecoder`` and ``MultiScaleMaskedTransformerDecoder`` with FC-CLIP's class
  head (C, ovs._m2f): class embeddings ``class_embed(decoder_norm(x) + proj(mask pooling))``.
- in-vocabulary logits (``get_classification_logits``): cosine of the class embeddings with the
  text classifier (one row per synonym: the 14 ViLD templates' normalised embeddings averaged
  and normalised; max over a class's synonyms) times min(exp(logit_scale), 100), the
  L2-normalised void embedding last.
- out-of-vocabulary logits: the last layer's mask logits resized bilinearly to res5's extent,
  ``visual_prediction_forward_resnet``: CLIP's attention pool run densely with one query (the
  mean of res5 + the class position) per mask, attending only to that mask's pixels (> 0)
  (C, ovs_fcclip_mask_pool); the same text classifier with CLIP's own logit scale.
- geometric ensemble: softmax of each (void dropped), in^(1-α)·out^α for classes that overlap
  the COCO-panoptic training vocabulary, in^(1-β)·out^β otherwise, α = β = 0 on masks with no
  pixel at res5 (ENSEMBLE_ON_VALID_MASK); void probability from the in-vocabulary softmax.
- semantic inference after detectron2's ``sem_seg_postprocess`` of the masks (upsampled to the
  padded input, cropped, resized to the image): Σ_q softmax(log(p + 1e-8))[:-1] · sigmoid(mask)
  (C, ovs_mask_semantic: band by band of output rows, the (Q, H, W) masks never held).
"""
from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import numpy as np

from . import _core
from .weights import c_weights
from .frameworks import (FRAMEWORKS, FrameworkModel, _clip_resnet_expected, _clip_text_expected, _count,
                         _dim, _text_model, detectron2_preprocess, _mask2former_forward, mask_semantic)

# FC-CLIP's MODEL.PIXEL_MEAN / PIXEL_STD: CLIP's mean and std on 0..255 (RGB)
CLIP_MEAN_255 = (122.7709383, 116.7460125, 104.09373615)
CLIP_STD_255 = (68.5005327, 66.6321579, 70.32316305)
PD = "sem_seg_head.pixel_decoder."
PR = "sem_seg_head.predictor."
HEADS = 8            # MASK_FORMER.NHEADS: decoder and deformable encoder
POINTS = 4           # MSDeformAttn n_points (fixed in fc-clip's pixel decoder)
LEVELS = 3           # res3..res5 in the deformable encoder


def fcclip_expected(sd: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Every tensor of a converted FC-CLIP file (ovs names) with its shape; the architecture
    comes from a few anchor shapes (trunk width, conv_dim, queries, FFN widths, embedding)."""
    out: dict[str, tuple[int, ...]] = {}
    _clip_resnet_expected(sd, "visual.", out)
    w = _dim(sd, "visual.layer1.0.conv1.weight", 1, 64)
    chans = [4 * (w << s) for s in range(4)]                 # res2..res5
    c5 = chans[3]
    e = _dim(sd, "text_projection", 1, 1024)
    grid2 = _dim(sd, "visual.attnpool.positional_embedding", 0, 50)
    out["visual.attnpool.positional_embedding"] = (grid2, c5)
    for p in ("q", "k", "v"):
        out[f"visual.attnpool.{p}_proj.weight"] = (c5, c5)
        out[f"visual.attnpool.{p}_proj.bias"] = (c5,)
    out["visual.attnpool.c_proj.weight"] = (e, c5)
    out["visual.attnpool.c_proj.bias"] = (e,)
    out["logit_scale"] = _scalar_shape(sd, "logit_scale")
    out.update(_clip_text_expected(sd, "", e))
    # pixel decoder (MSDeformAttnPixelDecoder)
    d = _dim(sd, PD + "input_proj.0.0.weight", 0, 256)
    md = _dim(sd, PD + "mask_features.weight", 0, 256)
    for i, c in enumerate(reversed(chans[1:])):             # res5, res4, res3
        out[f"{PD}input_proj.{i}.0.weight"] = (d, c, 1, 1)
        for s in ("0.bias", "1.weight", "1.bias"):
            out[f"{PD}input_proj.{i}.{s}"] = (d,)
    out[PD + "transformer.level_embed"] = (LEVELS, d)
    fe = _dim(sd, PD + "transformer.encoder.layers.0.linear1.weight", 0, 1024)
    for j in range(max(_count(sd, PD + "transformer.encoder.layers"), 1)):
        b = f"{PD}transformer.encoder.layers.{j}."
        for name, rows in (("sampling_offsets", HEADS * LEVELS * POINTS * 2),
                           ("attention_weights", HEADS * LEVELS * POINTS),
                           ("value_proj", d), ("output_proj", d)):
            out[f"{b}self_attn.{name}.weight"] = (rows, d)
            out[f"{b}self_attn.{name}.bias"] = (rows,)
        _linear_ln(out, b, "linear1", fe, d, "linear2", "norm1", "norm2")
    out[PD + "adapter_1.weight"] = (d, chans[0], 1, 1)
    out[PD + "layer_1.weight"] = (d, d, 3, 3)
    for s in ("adapter_1", "layer_1"):
        out[f"{PD}{s}.norm.weight"] = out[f"{PD}{s}.norm.bias"] = (d,)
    out[PD + "mask_features.weight"] = (md, d, 1, 1)
    out[PD + "mask_features.bias"] = (md,)
    # transformer decoder (FCCLIPTransformerDecoder, in_channels == hidden_dim: no input_proj)
    q = _dim(sd, PR + "query_feat.weight", 0, 250)
    out[PR + "query_feat.weight"] = out[PR + "query_embed.weight"] = (q, d)
    out[PR + "level_embed.weight"] = (LEVELS, d)
    fd = _dim(sd, PR + "transformer_ffn_layers.0.linear1.weight", 0, 2048)
    for i in range(max(_count(sd, PR + "transformer_self_attention_layers"), 1)):
        for kind, attn in (("self", "self_attn"), ("cross", "multihead_attn")):
            b = f"{PR}transformer_{kind}_attention_layers.{i}."
            out[f"{b}{attn}.in_proj_weight"] = (3 * d, d)
            out[f"{b}{attn}.in_proj_bias"] = (3 * d,)
            out[f"{b}{attn}.out_proj.weight"] = (d, d)
            out[f"{b}{attn}.out_proj.bias"] = (d,)
            out[f"{b}norm.weight"] = out[f"{b}norm.bias"] = (d,)
        _linear_ln(out, f"{PR}transformer_ffn_layers.{i}.", "linear1", fd, d, "linear2", "norm")
    out[PR + "decoder_norm.weight"] = out[PR + "decoder_norm.bias"] = (d,)
    for k, rows in enumerate((d, d, md)):
        out[f"{PR}mask_embed.layers.{k}.weight"] = (rows, d)
        out[f"{PR}mask_embed.layers.{k}.bias"] = (rows,)
    for k, rows in enumerate((d, d, e)):
        out[f"{PR}class_embed.layers.{k}.weight"] = (rows, d)
        out[f"{PR}class_embed.layers.{k}.bias"] = (rows,)
    out[PR + "_mask_pooling_proj.0.weight"] = out[PR + "_mask_pooling_proj.0.bias"] = (d,)
    out[PR + "_mask_pooling_proj.1.weight"] = (d, d)
    out[PR + "_mask_pooling_proj.1.bias"] = (d,)
    out[PR + "logit_scale"] = _scalar_shape(sd, PR + "logit_scale")
    out["void_embedding.weight"] = (1, e)
    return out


def _scalar_shape(sd, name) -> tuple[int, ...]:
    """A 0-d parameter; readers and writers may store it as (1,)."""
    v = sd.get(name)
    return tuple(np.shape(v)) if v is not None and np.size(v) == 1 and np.ndim(v) <= 1 else ()


def _linear_ln(out, b, l1, f, d, l2, *norms) -> None:
    out[f"{b}{l1}.weight"] = (f, d)
    out[f"{b}{l1}.bias"] = (f,)
    out[f"{b}{l2}.weight"] = (d, f)
    out[f"{b}{l2}.bias"] = (d,)
    for n in norms:
        out[f"{b}{n}.weight"] = out[f"{b}{n}.bias"] = (d,)


_TRAIN = None


def coco_panoptic_synonyms() -> frozenset[str]:
    """FC-CLIP's training vocabulary: every synonym of the 133 COCO-panoptic classes
    (coco_panoptic_with_prompt_eng.txt); a test class overlaps it if a synonym is in it."""
    global _TRAIN
    if _TRAIN is None:
        from .classnames import _DIR, _read

        entries = _read(os.path.join(_DIR, "coco_panoptic_133.txt"))
        _TRAIN = frozenset(s for i, syn in entries.items() if syn != ["invalid_class_id"]
                           for s in syn)
    return _TRAIN


class TextRows(np.ndarray):
    """FC-CLIP's text classifier: (S + 1, E) rows, one per synonym then the void embedding,
    each L2-normalised; ``groups[s]`` is the class of synonym row s and ``overlap[c]`` says
    whether class c shares a synonym with the training vocabulary."""
    groups: np.ndarray
    overlap: np.ndarray

    def __array_finalize__(self, obj):
        self.groups = getattr(obj, "groups", None)
        self.overlap = getattr(obj, "overlap", None)


def _normalize(x: np.ndarray) -> np.ndarray:
    """torch.nn.functional.normalize (eps 1e-12) along the last axis."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def classification_logits(x: np.ndarray, text: TextRows, logit_scale: float) -> np.ndarray:
    """fc-clip get_classification_logits: (Q, E) embeddings -> (Q, C + 1) float64, the max over
    each class's synonym rows, the void row last."""
    p = logit_scale * (_normalize(x.astype(np.float64)) @ np.asarray(text, np.float64).T)
    C = len(text.overlap)
    out = np.full((x.shape[0], C + 1), -np.inf)
    np.maximum.at(out.T, text.groups, p[:, :-1].T)
    out[:, C] = p[:, -1]
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class FCCLIPModel(FrameworkModel):
    """FC-CLIP with the CLIP RN50 backbone (see the module docstring for the wiring)."""

    arch = "fcclip"
    act = "quickgelu"

    def __init__(self, state_dict, *, name: str | None = None, sparse: str = "auto",
                 alpha: float = 0.4, beta: float = 0.8):
        self.framework = FRAMEWORKS["fcclip"]
        super().__init__(state_dict, name=name)
        sd = self._sd
        if sparse not in ("auto", "dense", "all"):
            raise ValueError(f"sparse must be 'auto', 'dense' or 'all', got {sparse!r}")
        for nm, v in (("alpha", alpha), ("beta", beta)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ValueError(f"{nm} must be a number in [0, 1], got {v!r}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.width = _dim(sd, "visual.layer1.0.conv1.weight", 1, 0)
        self.layers = tuple(_count(sd, f"visual.layer{s + 1}") for s in range(4))
        chans = tuple(4 * (self.width << s) for s in range(4))
        self._trunk = _core.ResNet(
            c_weights(sd, lambda k: k.startswith("visual.") and ".attnpool." not in k),
            "visual.", self.layers, self.width, 0, 0, 0, False)
        d = _dim(sd, PD + "input_proj.0.0.weight", 0, 0)
        md = _dim(sd, PD + "mask_features.weight", 0, 0)
        from ._m2f import PixelDecoder, TransformerDecoder

        self.pixel_decoder = PixelDecoder(
            c_weights(sd, lambda k: k.startswith(PD)), chans, conv_dim=d, mask_dim=md,
            enc_layers=_count(sd, PD + "transformer.encoder.layers"), heads=HEADS, points=POINTS,
            ffn_dim=_dim(sd, PD + "transformer.encoder.layers.0.linear1.weight", 0, 0))
        self.queries = _dim(sd, PR + "query_feat.weight", 0, 0)
        self.dec_layers = _count(sd, PR + "transformer_self_attention_layers")
        self.embed_dim = _dim(sd, "text_projection", 1, 0)
        self.decoder = TransformerDecoder(
            c_weights(sd, lambda k: k.startswith(PR)), in_channels=d, hidden_dim=d,
            queries=self.queries, heads=HEADS,
            ffn_dim=_dim(sd, PR + "transformer_ffn_layers.0.linear1.weight", 0, 0),
            layers=self.dec_layers, mask_dim=md, class_layers=3, class_dim=self.embed_dim,
            fcclip_class_head=True)
        # CLIP's attention pool, run per mask (visual_prediction_forward_resnet)
        ap = "visual.attnpool."
        self._pos = sd[ap + "positional_embedding"].astype(np.float64)
        grid = math.isqrt(self._pos.shape[0] - 1)
        if grid * grid + 1 != self._pos.shape[0]:
            raise ValueError(f"{ap}positional_embedding has {self._pos.shape[0]} rows, expected "
                             "grid * grid + 1")
        self._grid = grid
        self._proj = {p: (sd[f"{ap}{p}_proj.weight"], sd[f"{ap}{p}_proj.bias"]) for p in "qkvc"}
        self.pool_heads = (self.width * 32) // 64      # open_clip ModifiedResNet: width * 32 // 64
        self.text = _text_model(sd)
        if self.text.embed_dim_text != self.embed_dim:
            raise ValueError(f"text_projection gives {self.text.embed_dim_text}-d embeddings, "
                             f"the class head {self.embed_dim}-d")
        self.void = np.ascontiguousarray(sd["void_embedding.weight"].reshape(1, -1))
        self.clip_logit_scale = self._scale(sd["logit_scale"], "logit_scale")
        self.logit_scale = self._scale(sd[PR + "logit_scale"], PR + "logit_scale")
        from .prune import auto_sparse_mode

        self._sparse_mode = sparse
        mode = auto_sparse_mode(sd, sparse, tower=self._trunk)
        if mode != "dense":
            self._trunk.sparsify(mode, 512, 512)

    def _with_weights(self, sd: Mapping[str, np.ndarray]):
        """A new FC-CLIP model on other weights with the same settings (ovs.prune rebuilds with it)."""
        return type(self)(sd, name=self.name, sparse=self._sparse_mode, alpha=self.alpha, beta=self.beta)

    @staticmethod
    def _scale(v: np.ndarray, name: str) -> float:
        """min(exp(logit_scale), 100) as get_classification_logits."""
        s = float(np.exp(min(np.float64(v.reshape(())), 700.0)))
        if not math.isfinite(s):
            raise ValueError(f"{name} is not finite")
        return min(s, 100.0)

    def __repr__(self) -> str:
        name = f"{self.name!r}, " if self.name else ""
        return (f"ovs.FCCLIPModel({name}CLIP ResNet(layers={list(self.layers)}, width={self.width}), "
                f"queries={self.queries}, decoder layers={self.dec_layers}, "
                f"embed_dim={self.embed_dim}, alpha={self.alpha}, beta={self.beta})")

    # ------------------------------------------------------------ text
    def text_rows(self, class_names: Sequence[str], templates="vild") -> TextRows:
        """FC-CLIP's text classifier for class_names (each "name, synonym, ..."), see TextRows."""
        from .classnames import split_synonyms

        syn = [[s for s in split_synonyms(n) if s] or [n.strip()] for n in class_names]
        flat = [s for ss in syn for s in ss]
        cls = self.text.text_classifier(flat, templates)     # per synonym: template mean, normalised
        rows = np.concatenate([cls.astype(np.float64), _normalize(self.void.astype(np.float64))])
        out = np.ascontiguousarray(rows, dtype=np.float32).view(TextRows)
        out.groups = np.repeat(np.arange(len(syn)), [len(s) for s in syn])
        train = coco_panoptic_synonyms()
        out.overlap = np.array([not train.isdisjoint(s) for s in syn])
        return out

    # ------------------------------------------------------------ image
    def forward(self, x: np.ndarray) -> dict:
        """The network on one normalised, padded image (1, 3, H, W): mask logits (Q, H/4, W/4),
        class embeddings (Q, E), res5 (C5, H/32, W/32)."""
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4 or x.shape[:2] != (1, 3):
            raise ValueError(f"expected a float32 (1, 3, H, W) image, got {getattr(x, 'shape', x)!r}")
        if x.shape[2] % 32 or x.shape[3] % 32 or min(x.shape[2:]) < 32:
            raise ValueError(f"image sides must be positive multiples of 32, got {x.shape[2]}x{x.shape[3]}")
        res5, cls, masks = _mask2former_forward(self._trunk, self.pixel_decoder, self.decoder, x)
        return {"masks": masks[0], "class_embed": cls[0, -1], "res5": res5[0]}

    def mask_pool(self, res5: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """visual_prediction_forward_resnet: (Q, E) CLIP embeddings of each mask (the mask logits
        resized to res5's extent; pixels > 0 attended) and the (Q,) bool "mask has a pixel".
        In C (ovs_fcclip_mask_pool: the query folded into the key projection, so the (HW, C)
        keys are never formed)."""
        (wq, bq), (wk, bk), (wv, bv), (wc, bc) = (self._proj[p] for p in "qkvc")
        return _core.fcclip_mask_pool(res5, masks, self._pos, wq, bq, wk, bk, wv, bv, wc, bc,
                                      self.pool_heads)

    def class_probs(self, out: dict, text: TextRows) -> np.ndarray:
        """(Q, C) float64: softmax over the classes of log(p + 1e-8) with p the ensembled class
        probabilities times (1 - void) and the void probability (fcclip.py inference), void
        dropped, as semantic_inference reads it."""
        C = len(text.overlap)
        mask_cls = classification_logits(out["class_embed"], text, self.logit_scale)
        pooled, valid = self.mask_pool(out["res5"], out["masks"])
        out_vocab = classification_logits(pooled, text, self.clip_logit_scale)
        out_p = _softmax(out_vocab[:, :C])
        in_p = _softmax(mask_cls[:, :C])
        ov = text.overlap[None, :].astype(np.float64)
        vm = valid[:, None].astype(np.float64)
        a, b = self.alpha * vm, self.beta * vm
        with np.errstate(divide="ignore", invalid="ignore"):
            seen = np.log(in_p ** (1 - a) * out_p ** a) * ov
            unseen = np.log(in_p ** (1 - b) * out_p ** b) * (1 - ov)
        cls = seen + unseen
        void = _softmax(mask_cls)[:, C:]
        probs = np.concatenate([_softmax(cls) * (1 - void), void], axis=1)
        return _softmax(np.log(probs + 1e-8))[:, :C]

    def semantic(self, image: np.ndarray, text: TextRows, *, short: int, max_size: int,
                 divisor: int, out_size: tuple[int, int] | None = None,
                 labels: bool = False) -> np.ndarray:
        """FC-CLIP's semantic scores (C, H, W) float32 at out_size (default: the image's), or
        with labels=True their (H, W) int32 argmax, computed band by band without the scores."""
        x, (nh, nw) = detectron2_preprocess(image, short, max_size, divisor, CLIP_MEAN_255,
                                            CLIP_STD_255)
        out = self.forward(x)
        probs = self.class_probs(out, text)                                     # (Q, C)
        return mask_semantic(out["masks"], probs, nh, nw, upsampled=x.shape[2:],
                             out_size=out_size or image.shape[:2], labels=labels)

    # the Segmenter asks lowres(kind="labels") for segment(): labels at the image's size
    streams_labels = True

    def lowres(self, image: np.ndarray, text: TextRows, kind: str, *, short: int,
               max_size: int, divisor: int) -> np.ndarray:
        """The Segmenter's hook: FC-CLIP's semantic scores at the image's size (the masks are
        resized before the inference, as sem_seg_postprocess_before_inference); kind "labels":
        their (H, W) int32 argmax (segment(), never holding the (C, H, W) scores)."""
        return self.semantic(image, text, short=short, max_size=max_size, divisor=divisor,
                             labels=(kind == "labels"))
