"""The paper's trained OVS frameworks on the ovs C engine (DESIGN.md §3).

A framework checkpoint is first converted once (``ovs convert``, ovs/convert.py) into a
safetensors file with ovs's names; ``ovs.load`` recognises such a file and returns the
framework's model, which ``ovs.Segmenter(model, "<framework>")`` runs with the framework's own
preprocessing and inference:

    >>> model = ovs.load("deeplab_rn50.safetensors")        # from `ovs convert ... --framework deeplab`
    >>> seg = ovs.Segmenter(model, "deeplab")
    >>> labels = seg.segment(image, ["wall", "floor", "ceiling"])

One table (FRAMEWORKS) lists each framework once: the key that identifies its converted files,
its model class, the checkpoint converter (names and expected shapes) and its inference
defaults: DeepLabV3-OVS ("deeplab") and Han et al. ("han", the Mask2Former blocks of ovs._m2f
composed in Python).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import _core
from .weights import c_weights

IMAGENET_MEAN_255 = (123.675, 116.280, 103.530)   # detectron2 MODEL.PIXEL_MEAN (RGB, 0..255)
IMAGENET_STD_255 = (58.395, 57.120, 57.375)       # detectron2 MODEL.PIXEL_STD


class ConversionError(ValueError):
    """A checkpoint does not hold the tensors a framework needs (names and shapes in the message)."""


@dataclass(frozen=True)
class Framework:
    name: str
    signature: str                          # a converted file holds this tensor name
    model: Callable[..., Any]               # model class: model(state_dict, name=...)
    expected: Callable[[Mapping[str, np.ndarray]], dict[str, tuple[int, ...]]]
    rename: tuple[tuple[str, str], ...]     # checkpoint prefix -> ovs prefix, first match wins
    ignore: tuple[str, ...] = ()            # regexes of checkpoint names dropped silently
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


# ------------------------------------------------------------------ preprocessing
def resize_shortest_edge(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2 ResizeShortestEdge.get_output_shape: the shorter side to `short`, the longer
    capped at max_size, each rounded with int(x + 0.5)."""
    scale = short / min(h, w)
    newh, neww = (short, scale * w) if h < w else (scale * h, short)
    if max(newh, neww) > max_size:
        s = max_size / max(newh, neww)
        newh, neww = newh * s, neww * s
    return int(newh + 0.5), int(neww + 0.5)


def detectron2_preprocess(image: np.ndarray, short: int, max_size: int, divisor: int,
                          mean: Sequence[float], std: Sequence[float]):
    """As detectron2's test-time DatasetMapper + model: ResizeShortestEdge with Pillow's bilinear
    filter on the uint8 image (ResizeTransform), (x - mean) / std on 0..255 values, zero padding
    at the bottom and right to a multiple of `divisor` (ImageList.from_tensors).
    Returns ((1, 3, Hp, Wp) float32, (h, w) resized extent)."""
    from PIL import Image

    h, w = image.shape[:2]
    nh, nw = resize_shortest_edge(h, w, short, max_size) if short else (h, w)
    if (nh, nw) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    x = _core.normalize_u8(np.ascontiguousarray(image), None, np.asarray(mean, np.float32),
                              np.asarray(std, np.float32), True)
    hp = -(-nh // divisor) * divisor
    wp = -(-nw // divisor) * divisor
    out = np.zeros((1, 3, hp, wp), np.float32)
    out[0, :, :nh, :nw] = x
    return out, (nh, nw)


# ------------------------------------------------------------------ shared model plumbing
def _float32(sd: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    from .weights import FileStateDict

    if isinstance(sd, FileStateDict):
        return sd   # floats read as float32, read-only, when accessed
    out = {}
    for k, v in sd.items():
        a = np.asarray(v)
        if a.dtype.kind == "f":
            a = np.asarray(a, dtype=np.float32, order="C")   # 0-d stays 0-d
            a.setflags(write=False)
        out[str(k)] = a
    return out


def _count(keys, prefix: str) -> int:
    """Number of contiguous integer children prefix.<i>.* (ValueError naming a gap)."""
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    idx = {int(m.group(1)) for k in keys if (m := pat.match(k))}
    if not idx:
        return 0
    n = max(idx) + 1
    if len(idx) != n:
        raise ConversionError(f"{prefix}: blocks {sorted(set(range(n)) - idx)} are missing "
                              f"(found {sorted(idx)})")
    return n


def _text_model(sd: Mapping[str, np.ndarray], prefix: str = ""):
    """The CLIP text tower of a framework file, as a text-only ovs.Model (its classifier cache
    and tokenizer come with it)."""
    from .model import Model
    from .weights import FileStateDict, subset

    text = subset(sd, lambda k: k.startswith(prefix) and not k[len(prefix):].startswith(("visual.",))
                  and k[len(prefix):].split(".")[0] in ("token_embedding", "positional_embedding",
                                                        "transformer", "ln_final", "text_projection"))
    if prefix:
        text = (text.rename(lambda k: k[len(prefix):]) if isinstance(text, FileStateDict)
                else {k[len(prefix):]: v for k, v in text.items()})
    return Model(text)


def _check_images(images) -> np.ndarray:
    """A normalised, padded float32 (N, 3, H, W) batch with sides of at least 32."""
    if not isinstance(images, np.ndarray) or images.dtype.kind != "f":
        raise TypeError("images must be a float numpy array (N, 3, H, W)")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W) images, got shape {images.shape}")
    if images.shape[2] < 32 or images.shape[3] < 32:
        raise ValueError(f"image sides must be at least 32, got {images.shape[2]}x{images.shape[3]}")
    return np.ascontiguousarray(images, dtype=np.float32)


def _mask2former_forward(trunk, pixel_decoder, decoder, images: np.ndarray):
    """A ResNet trunk, a Mask2Former pixel decoder and its transformer decoder on normalised,
    padded images (N, 3, H, W): (res5 (N, C5, H/32, W/32), the decoder's class outputs, mask
    logits (N, Q, H/4, W/4)). Each stage's work buffers are freed once its outputs are out (the
    call's peak is the largest stage's, not the sum), and its inputs as soon as they are
    consumed."""
    f = trunk.forward(images, features=True, embed=False)
    trunk.release_workspace()
    res5 = f["res5"]
    mask_features, ms = pixel_decoder(f["res2"], f["res3"], f["res4"], res5)
    del f
    pixel_decoder.release_workspace()
    _, cls, masks = decoder(ms, mask_features)
    del ms, mask_features
    decoder.release_workspace()
    return res5, cls, masks


class FrameworkModel:
    """Base of the framework models: weights by ovs name, the framework's table entry."""
    framework: Framework

    def __init__(self, state_dict: Mapping[str, np.ndarray], *, name: str | None = None):
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping of names to arrays, got "
                            f"{type(state_dict).__name__}")
        self._sd = _float32(state_dict)
        self.name = name
        check_expected(self._sd, self.framework.expected(self._sd), what="weights")

    @property
    def state_dict(self) -> Mapping[str, np.ndarray]:
        """The weights by ovs name: a read-only ovs.weights.FileStateDict reading each tensor from
        the file on access for a model loaded from a file, otherwise a dict."""
        from .weights import FileStateDict

        return self._sd if isinstance(self._sd, FileStateDict) else dict(self._sd)

    def _init_classifier(self, sparse: str) -> None:
        """The CLIP text tower, the no-object embedding and exp(logit_scale) (after
        self.embed_dim is set); the trunk (self._trunk) starts dense or sparse as
        ovs.prune.auto_sparse_mode says."""
        from .prune import auto_sparse_mode

        sd = self._sd
        self.text = _text_model(sd)
        if self.text.embed_dim_text != self.embed_dim:
            raise ValueError(f"text_projection gives {self.text.embed_dim_text}-d embeddings, "
                             f"embed_proj {self.embed_dim}-d")
        self.no_object = np.ascontiguousarray(sd["non_object_embedding"].reshape(1, -1))
        self.logit_scale = float(np.exp(np.float64(sd["logit_scale"].reshape(()))))
        if not math.isfinite(self.logit_scale):
            raise ValueError(f"logit_scale {float(sd['logit_scale'])!r} overflows exp()")
        self._sparse_mode = sparse
        mode = auto_sparse_mode(sd, sparse, tower=self._trunk)
        if mode != "dense":
            self._trunk.sparsify(mode, 512, 512)

    def _with_weights(self, sd: Mapping[str, np.ndarray]):
        """A new model of the same framework on other weights (ovs.prune rebuilds with it)."""
        return type(self)(sd, name=self.name)

    def sparsify(self, mode: str = "auto", size: int = 512) -> list[dict]:
        """Dense or sparse kernel per conv of the framework's ResNet trunk (self._trunk), as
        ovs.Model.sparsify."""
        if mode not in ("auto", "dense", "all"):
            raise ValueError(f"mode must be 'auto', 'dense' or 'all', got {mode!r}")
        if not 32 <= int(size) <= 8192:
            raise ValueError(f"size must be in 32..8192, got {size}")
        self._trunk.sparsify(mode, int(size), int(size))
        self._sparse_mode = mode
        return self._trunk.convs()


# ------------------------------------------------------------------ DeepLabV3-OVS
RN50_LAYERS = (3, 4, 6, 3)
_BN = ("weight", "bias", "running_mean", "running_var")


def _bn(out: dict, name: str, n: int) -> None:
    for s in _BN:
        out[f"{name}.{s}"] = (n,)


def _clip_text_expected(sd: Mapping[str, np.ndarray], prefix: str, embed: int) -> dict:
    """Names and shapes of an OpenAI CLIP text tower (mask2former/clip_models.py
    CLIPTextEncoder, open_clip names) below prefix."""
    out: dict[str, tuple[int, ...]] = {}
    from .weights import shape_of

    tok = f"{prefix}token_embedding.weight"
    if tok not in sd:
        return {tok: ("V", "D")}
    vocab, d = shape_of(sd, tok)
    pos = f"{prefix}positional_embedding"
    ctx = shape_of(sd, pos)[0] if pos in sd and len(shape_of(sd, pos)) else 77
    out[tok] = (vocab, d)
    out[f"{prefix}positional_embedding"] = (ctx, d)
    out[f"{prefix}ln_final.weight"] = out[f"{prefix}ln_final.bias"] = (d,)
    out[f"{prefix}text_projection"] = (d, embed)
    layers = _count(sd, f"{prefix}transformer.resblocks")
    for i in range(max(layers, 1)):
        b = f"{prefix}transformer.resblocks.{i}."
        out[b + "attn.in_proj_weight"] = (3 * d, d)
        out[b + "attn.in_proj_bias"] = (3 * d,)
        out[b + "attn.out_proj.weight"] = (d, d)
        out[b + "attn.out_proj.bias"] = (d,)
        for ln in ("ln_1", "ln_2"):
            out[b + ln + ".weight"] = out[b + ln + ".bias"] = (d,)
        out[b + "mlp.c_fc.weight"] = (4 * d, d)
        out[b + "mlp.c_fc.bias"] = (4 * d,)
        out[b + "mlp.c_proj.weight"] = (d, 4 * d)
        out[b + "mlp.c_proj.bias"] = (d,)
    return out


def _dim(sd, name: str, axis: int, default: int) -> int:
    from .weights import shape_of

    shape = shape_of(sd, name) if name in sd else ()
    return int(shape[axis]) if len(shape) > axis else default


def _clip_resnet_expected(sd, prefix: str, out: dict) -> int:
    """Names and shapes of a CLIP ModifiedResNet trunk (3-conv stem, bottlenecks with a
    ``downsample.0`` conv / ``downsample.1`` BN shortcut; also zs3's DeepLab ResNet) below
    prefix, without the attention pool; the width and block counts are read from sd.
    Returns the res5 channel count."""
    w = _dim(sd, f"{prefix}layer1.0.conv1.weight", 1, 64)
    layers = [_count(sd, f"{prefix}layer{s + 1}") or RN50_LAYERS[s] for s in range(4)]
    for i, (k, c) in enumerate(((w // 2, 3), (w // 2, w // 2), (w, w // 2))):
        out[f"{prefix}conv{i + 1}.weight"] = (k, c, 3, 3)
        _bn(out, f"{prefix}bn{i + 1}", k)
    inplanes = w
    for s in range(4):
        planes = w << s
        for j in range(layers[s]):
            b = f"{prefix}layer{s + 1}.{j}"
            out[f"{b}.conv1.weight"] = (planes, inplanes, 1, 1)
            out[f"{b}.conv2.weight"] = (planes, planes, 3, 3)
            out[f"{b}.conv3.weight"] = (4 * planes, planes, 1, 1)
            _bn(out, f"{b}.bn1", planes)
            _bn(out, f"{b}.bn2", planes)
            _bn(out, f"{b}.bn3", 4 * planes)
            if j == 0:
                out[f"{b}.downsample.0.weight"] = (4 * planes, inplanes, 1, 1)
                _bn(out, f"{b}.downsample.1", 4 * planes)
            inplanes = 4 * planes
    return inplanes


def _logit_scale_shape(sd) -> tuple:
    """A 0-d parameter; readers and writers may store it as (1,)."""
    ls = sd.get("logit_scale")
    return tuple(np.shape(ls)) if ls is not None and np.size(ls) == 1 and np.ndim(ls) <= 1 else ()


def deeplab_expected(sd: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Every tensor of a converted DeepLabV3-OVS file with its shape. The architecture is read
    from a few anchor shapes (trunk width, ASPP width, embedding dim, text width); everything
    else must agree with them."""
    out: dict[str, tuple[int, ...]] = {}
    w = _dim(sd, "visual.layer1.0.conv1.weight", 1, 64)
    c5 = _clip_resnet_expected(sd, "visual.", out)
    a = _dim(sd, "aspp.aspp1.atrous_conv.weight", 0, 256)
    for i in range(4):
        out[f"aspp.aspp{i + 1}.atrous_conv.weight"] = (a, c5, 1, 1) if i == 0 else (a, c5, 3, 3)
        _bn(out, f"aspp.aspp{i + 1}.bn", a)
    out["aspp.global_avg_pool.1.weight"] = (a, c5, 1, 1)
    _bn(out, "aspp.global_avg_pool.2", a)
    ccat = _dim(sd, "aspp.conv1.weight", 1, 4 * a + c5)
    if ccat not in (5 * a, 4 * a + c5):
        ccat = 4 * a + c5   # report the OpenTrans width as the expected one
    out["aspp.conv1.weight"] = (a, ccat, 1, 1)
    _bn(out, "aspp.bn1", a)
    out["decoder.conv1.weight"] = (48, 4 * w, 1, 1)
    _bn(out, "decoder.bn1", 48)
    out["decoder.last_conv.0.weight"] = (a, a + 48, 3, 3)
    _bn(out, "decoder.last_conv.1", a)
    out["decoder.last_conv.4.weight"] = (a, a, 3, 3)
    _bn(out, "decoder.last_conv.5", a)
    e = _dim(sd, "embed_proj.weight", 0, 1024)
    out["embed_proj.weight"] = (e, a)
    out["embed_proj.bias"] = (e,)
    out["non_object_embedding"] = (1, e)
    out["logit_scale"] = _logit_scale_shape(sd)
    out.update(_clip_text_expected(sd, "", e))
    return out


class DeepLabModel(FrameworkModel):
    """DeepLabV3-OVS (OpenTrans ``OpenSegDeeplabv3Text``): the ZS3 DeepLab ResNet-50 trunk with
    the CLIP-style 3-conv stem at output stride 16, ASPP, DeepLabV3+ decoder, per-pixel
    embedding (ReLU, Linear 256 -> 1024), cosine with CLIP text embeddings of the bare class
    names plus a learned no-object embedding, times exp(logit_scale)."""

    def __init__(self, state_dict, *, name: str | None = None, sparse: str = "auto",
                 output_stride: int = 16):
        self.framework = FRAMEWORKS["deeplab"]
        super().__init__(state_dict, name=name)
        sd = self._sd
        if sparse not in ("auto", "dense", "all"):
            raise ValueError(f"sparse must be 'auto', 'dense' or 'all', got {sparse!r}")
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16 (OpenTrans uses 16), got {output_stride!r}")
        self.width = _dim(sd, "visual.layer1.0.conv1.weight", 1, 0)
        self.layers = tuple(_count(sd, f"visual.layer{s + 1}") for s in range(4))
        self.output_stride = output_stride
        vis = c_weights(sd, lambda k: k.startswith(("visual.", "aspp.", "decoder.", "embed_proj.")))
        self._trunk = _core.ResNet(vis, "visual.", self.layers, self.width, 0, 0, 0, False,
                                   style="deeplab", output_stride=output_stride)
        self._head = _core.DeepLabHead(self._trunk, "")
        self.embed_dim = int(self._head.info()["embed_dim"])
        self._init_classifier(sparse)

    arch = "deeplab"
    act = "quickgelu"   # the CLIP text tower's MLP activation (OpenAI weights)

    def __repr__(self) -> str:
        pool = "image pooling" if self._head.info()["image_pool"] else "res5 (OpenTrans)"
        name = f"{self.name!r}, " if self.name else ""
        return (f"ovs.DeepLabModel({name}ResNet(layers={list(self.layers)}, width={self.width}, "
                f"output_stride={self.output_stride}), ASPP fifth branch {pool}, "
                f"embed_dim={self.embed_dim})")

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Per-pixel embeddings (N, E, H/4, W/4) of normalised, padded images (N, 3, H, W)."""
        return self._head.forward(_check_images(images))

    def text_rows(self, class_names: Sequence[str], templates="bare") -> np.ndarray:
        """(C + 1, E): the classes' text embeddings then the no-object embedding, each divided by
        (its norm + 1e-7) as OpenTrans does."""
        cls = self.text.text_classifier(list(class_names), templates)
        rows = np.concatenate([cls, self.no_object], axis=0).astype(np.float64)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True) + 1e-7
        return np.ascontiguousarray(rows, dtype=np.float32)

    def lowres(self, image: np.ndarray, text: np.ndarray, kind: str, *, short: int,
               max_size: int, divisor: int) -> np.ndarray:
        """(C, h, w) at stride 4 of the padded input: "logits" (exp(logit_scale) * cosine) or
        "probs" (softmax over the classes and no-object, no-object dropped)."""
        x, _ = detectron2_preprocess(image, short, max_size, divisor, IMAGENET_MEAN_255,
                                     IMAGENET_STD_255)
        return self.classify(x, text, softmax=(kind == "probs"))[0, :-1]

    def classify(self, images: np.ndarray, text: np.ndarray, *, softmax: bool = False) -> np.ndarray:
        """(N, T, H/4, W/4) = _core.pixel_classify(self.embed(images), text, logit_scale) per
        image, computed in C band by band of pixels (embed_proj, normalisation, the text
        GEMM, optionally the softmax over T) without holding the (N, E, H/4, W/4) embeddings."""
        return self._head.classify(_check_images(images), text, self.logit_scale, softmax=softmax)


# ------------------------------------------------------------------ Han et al. (OpenSegMaskFormer)
HAN_PD = "sem_seg_head.pixel_decoder."
HAN_PRED = "sem_seg_head.predictor."
HAN_HEADS = 8   # MASK_FORMER.NHEADS: the deformable encoder's and the decoder's attention heads


def _han_arch(sd: Mapping[str, np.ndarray]) -> dict:
    """The Han et al. architecture read from anchor shapes (defaults: OpenTrans' config
    maskformer2_R50_bs16_50ep_voca_ground_perRegion.yaml)."""
    w = _dim(sd, "visual.layer1.0.conv1.weight", 1, 64)
    conv_dim = _dim(sd, HAN_PD + "input_proj.0.0.weight", 0, 256)
    aw = _dim(sd, HAN_PD + "transformer.encoder.layers.0.self_attn.attention_weights.weight", 0,
              HAN_HEADS * 3 * 4)
    hidden = _dim(sd, HAN_PRED + "query_feat.weight", 1, 256)
    return dict(
        in_channels=(4 * w, 8 * w, 16 * w, 32 * w), conv_dim=conv_dim,
        mask_dim=_dim(sd, HAN_PD + "mask_features.weight", 0, 256),
        enc_layers=_count(sd, HAN_PD + "transformer.encoder.layers") or 6,
        enc_ffn=_dim(sd, HAN_PD + "transformer.encoder.layers.0.linear1.weight", 0, 1024),
        points=max(aw // (HAN_HEADS * 3), 1),
        hidden=hidden, queries=_dim(sd, HAN_PRED + "query_feat.weight", 0, 100),
        dec_layers=_count(sd, HAN_PRED + "transformer_ffn_layers") or 9,
        dec_ffn=_dim(sd, HAN_PRED + "transformer_ffn_layers.0.linear1.weight", 0, 2048),
        embed_dim=_dim(sd, "embed_proj.weight", 0, 1024))


def han_expected(sd: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Every tensor of a converted Han et al. file with its shape: the CLIP RN50 trunk without
    its attention pool, the MSDeformAttn pixel decoder, the masked-attention decoder with the
    ``class_embed`` Linear (VISION_FEATURE "queryClass"), embed_proj, the no-object embedding,
    logit_scale and the CLIP text tower."""
    from ._m2f import decoder_expected, pixel_decoder_expected

    a = _han_arch(sd)
    out: dict[str, tuple[int, ...]] = {}
    _clip_resnet_expected(sd, "visual.", out)
    out.update(pixel_decoder_expected(HAN_PD, a["in_channels"], conv_dim=a["conv_dim"],
                                      mask_dim=a["mask_dim"], enc_layers=a["enc_layers"],
                                      heads=HAN_HEADS, points=a["points"], ffn_dim=a["enc_ffn"]))
    out.update(decoder_expected(HAN_PRED, in_channels=a["conv_dim"], hidden_dim=a["hidden"],
                                queries=a["queries"], ffn_dim=a["dec_ffn"], layers=a["dec_layers"],
                                mask_dim=a["mask_dim"], class_dim=a["hidden"]))
    e = a["embed_dim"]
    out["embed_proj.weight"] = (e, a["hidden"])
    out["embed_proj.bias"] = (e,)
    out["non_object_embedding"] = (1, e)
    out["logit_scale"] = _logit_scale_shape(sd)
    out.update(_clip_text_expected(sd, "", e))
    return out


def mask_semantic(masks: np.ndarray, probs: np.ndarray, h: int, w: int, *,
                  upsampled: tuple[int, int] | None = None,
                  out_size: tuple[int, int] | None = None, labels: bool = False) -> np.ndarray:
    """MaskFormer's semantic_inference after detectron2's sem_seg_postprocess of the masks, as
    Han et al. (OpenTrans) and FC-CLIP run it: masks (Q, hm, wm) mask logits at stride 4 of the
    padded input, probs (Q, C) class probabilities -> (C, H, W) float32 =
    sum_q probs[q, c] * sigmoid(resize(up(masks[q])[:h, :w], out_size)), with `up` the
    bilinear upsampling (align_corners=False) to `upsampled` (default (4 hm, 4 wm), the padded
    input), [:h, :w] the image's resized extent and `resize` bilinear to out_size (default
    (h, w): none). In C (ovs_mask_semantic), band by band of output rows: the (Q, H, W)
    upsampled masks are never held. labels=True: the (H, W) int32 argmax over the classes
    (the first of equal maxima) instead, without holding the (C, H, W) scores either."""
    return _core.mask_semantic(masks, probs, upsampled, (int(h), int(w)), out_size,
                               labels=bool(labels))


class HanModel(FrameworkModel):
    """Han et al.'s open-vocabulary MaskFormer (OpenTrans ``OpenSegMaskFormer``, VISION_FEATURE
    "queryClass"): the CLIP RN50 trunk without its attention pool (res2..res5), the MSDeformAttn
    pixel decoder, the masked-attention transformer decoder (100 queries, 9 layers), the last
    layer's ``class_embed`` (Linear 256 -> 256) then embed_proj (ReLU, Linear 256 -> 1024);
    cosine with the CLIP text embeddings of the bare class names plus a learned no-object
    embedding, times exp(logit_scale); semantic map sum_q softmax(class) * sigmoid(mask)."""

    arch = "han"
    act = "quickgelu"   # the CLIP text tower's MLP activation (OpenAI weights)

    def __init__(self, state_dict, *, name: str | None = None, sparse: str = "auto"):
        from ._m2f import PixelDecoder, TransformerDecoder

        self.framework = FRAMEWORKS["han"]
        super().__init__(state_dict, name=name)
        sd = self._sd
        if sparse not in ("auto", "dense", "all"):
            raise ValueError(f"sparse must be 'auto', 'dense' or 'all', got {sparse!r}")
        a = self.arch_config = _han_arch(sd)
        self.width = _dim(sd, "visual.layer1.0.conv1.weight", 1, 0)
        self.layers = tuple(_count(sd, f"visual.layer{s + 1}") for s in range(4))
        self.queries = a["queries"]
        vis = c_weights(sd, lambda k: k.startswith("visual."))
        self._trunk = _core.ResNet(vis, "visual.", self.layers, self.width, 0, 0, 0, False)
        del vis
        head = c_weights(sd, lambda k: k.startswith("sem_seg_head."))
        self._pixel_decoder = PixelDecoder(head, a["in_channels"], prefix=HAN_PD,
                                           conv_dim=a["conv_dim"], mask_dim=a["mask_dim"],
                                           enc_layers=a["enc_layers"], heads=HAN_HEADS,
                                           points=a["points"], ffn_dim=a["enc_ffn"])
        self._decoder = TransformerDecoder(head, prefix=HAN_PRED, in_channels=a["conv_dim"],
                                           hidden_dim=a["hidden"], queries=a["queries"],
                                           heads=HAN_HEADS, ffn_dim=a["dec_ffn"],
                                           layers=a["dec_layers"], mask_dim=a["mask_dim"],
                                           class_layers=1, class_dim=a["hidden"])
        self.embed_dim = a["embed_dim"]
        self._proj_w = np.ascontiguousarray(sd["embed_proj.weight"])
        self._proj_b = np.ascontiguousarray(sd["embed_proj.bias"])
        self._init_classifier(sparse)

    def __repr__(self) -> str:
        a = self.arch_config
        name = f"{self.name!r}, " if self.name else ""
        return (f"ovs.HanModel({name}ResNet(layers={list(self.layers)}, width={self.width}), "
                f"MSDeformAttn pixel decoder ({a['enc_layers']} layers), "
                f"{a['dec_layers']}-layer decoder, queries={a['queries']}, "
                f"embed_dim={self.embed_dim})")

    sparsify = DeepLabModel.sparsify
    text_rows = DeepLabModel.text_rows

    def forward(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised, padded images (N, 3, H, W) -> (query embeddings (N, Q, E) after
        embed_proj, mask logits (N, Q, H/4, W/4))."""
        _, cls, masks = _mask2former_forward(self._trunk, self._pixel_decoder, self._decoder,
                                            _check_images(images))
        q = np.ascontiguousarray(cls[:, -1])                    # (N, Q, D): the last layer's class_embed
        N, Q, D = q.shape
        emb = _core.linear(np.maximum(q, 0).reshape(N * Q, D), self._proj_w, self._proj_b)
        return emb.reshape(N, Q, -1), masks

    def class_logits(self, emb: np.ndarray, text: np.ndarray) -> np.ndarray:
        """(Q, T): exp(logit_scale) * cosine of the query embeddings (Q, E), each divided by
        (its norm + 1e-7), with the text rows."""
        v = emb.astype(np.float64)
        v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-7
        return (self.logit_scale * (v @ text.astype(np.float64).T)).astype(np.float32)

    def lowres(self, image: np.ndarray, text: np.ndarray, kind: str, *, short: int,
               max_size: int, divisor: int) -> np.ndarray:
        """(C, h, w) semantic scores at the resized image's extent (padding cropped): the sum
        over queries of softmax(class logits) without no-object times sigmoid(mask logits
        upsampled to the padded input). "logits" and "probs" are the same scores here (a
        mask-classification model has no per-pixel logits). kind "labels" (segment()): the
        (H, W) int32 argmax at the image's size, streamed band by band when the image was not
        resized (the scores then are at its size), else of the scores resized as predict()."""
        x, (h, w) = detectron2_preprocess(image, short, max_size, divisor, IMAGENET_MEAN_255,
                                          IMAGENET_STD_255)
        emb, masks = self.forward(x)
        lg = self.class_logits(emb[0], text).astype(np.float64)
        p = np.exp(lg - lg.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p = p[:, :-1].astype(np.float32)
        if kind != "labels":
            return mask_semantic(masks[0], p, h, w)
        H, W = image.shape[:2]
        if (h, w) == (H, W):
            return mask_semantic(masks[0], p, h, w, labels=True)
        return _core.seg_labels(mask_semantic(masks[0], p, h, w), H, W, logit_scale=1.0,
                                bg_threshold=0.0, bg_label=-1)

    # the Segmenter asks lowres(kind="labels") for segment(): labels at the image's size
    streams_labels = True


# ------------------------------------------------------------------ checks shared by convert and load
def check_expected(sd: Mapping[str, np.ndarray], expected: Mapping[str, tuple], *,
                   what: str = "checkpoint", renamed: Mapping[str, str] | None = None) -> None:
    """ConversionError listing every missing tensor, every wrong shape and every unexpected name
    (by the checkpoint's own name when `renamed` maps ovs names back to it)."""
    back = renamed or {}
    src = lambda k: f"{back[k]!r} (-> {k!r})" if k in back and back[k] != k else repr(k)  # noqa: E731
    from .weights import shape_of

    missing = [k for k in expected if k not in sd]
    shapes = [f"{src(k)}: {shape_of(sd, k)}, expected {tuple(expected[k])}"
              for k in expected if k in sd and shape_of(sd, k) != tuple(expected[k])]
    unexpected = [k for k in sd if k not in expected]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: " + ", ".join(src(k) for k in missing[:12])
                        + (" ..." if len(missing) > 12 else ""))
    if shapes:
        problems.append(f"{len(shapes)} with the wrong shape: " + "; ".join(shapes[:12])
                        + (" ..." if len(shapes) > 12 else ""))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: " + ", ".join(src(k) for k in unexpected[:12])
                        + (" ..." if len(unexpected) > 12 else ""))
    if problems:
        raise ConversionError(f"{what} does not match the expected tensors: " + "; ".join(problems))


FRAMEWORKS: dict[str, Framework] = {
    "deeplab": Framework(
        name="deeplab",
        signature="aspp.conv1.weight",
        model=DeepLabModel,
        expected=deeplab_expected,
        # OpenTrans OpenSegDeeplabv3Text state dict (mask2former/Deeplabv3.py)
        rename=(("backbone.", "visual."), ("aspp.", "aspp."), ("sem_seg_head.", "decoder."),
                ("embed_proj.1.", "embed_proj."), ("text_encoder.", ""),
                ("non_object_embedding", "non_object_embedding"), ("logit_scale", "logit_scale")),
        ignore=(r".*\.num_batches_tracked", r"pixel_(mean|std)"),
        # detectron2 defaults (INPUT.MIN_SIZE_TEST 800, MAX_SIZE_TEST 1333: the DeepLab config
        # sets neither), MASK_FORMER.SIZE_DIVISIBILITY 32, bare class names as OpenTrans tokenizes
        defaults=dict(short_side=800, max_size=1333, divisor=32, templates="bare"),
        description="DeepLabV3-OVS (OpenTrans OpenSegDeeplabv3Text), RN50 trunk, output stride 16",
    ),
    "han": Framework(
        name="han",
        signature="sem_seg_head.predictor.class_embed.weight",   # FC-CLIP's is an MLP (.layers.N)
        model=HanModel,
        expected=han_expected,
        # OpenTrans OpenSegMaskFormer state dict (mask2former/maskformer_model_voca.py):
        # CLIPResNetWithAttention as `backbone` (attnpool removed: VISION_FEATURE "queryClass"),
        # MaskFormerHead as `sem_seg_head`, CLIPTextEncoder as `text_encoder`
        rename=(("backbone.", "visual."), ("sem_seg_head.", "sem_seg_head."),
                ("embed_proj.1.", "embed_proj."), ("text_encoder.", ""),
                ("non_object_embedding", "non_object_embedding"), ("logit_scale", "logit_scale")),
        # the SetCriterion's class weights and an attention pool a checkpoint may still hold
        ignore=(r".*\.num_batches_tracked", r"pixel_(mean|std)", r"criterion\.empty_weight",
                r"backbone\.attnpool\..*"),
        # detectron2 defaults (the config sets no INPUT.MIN/MAX_SIZE_TEST), SIZE_DIVISIBILITY
        # 32, TEXT_ENCODER.PROMPT "{}" (bare class names)
        defaults=dict(short_side=800, max_size=1333, divisor=32, templates="bare"),
        description="Han et al. (OpenTrans OpenSegMaskFormer), CLIP RN50, Mask2Former head, 100 queries",
    ),
    "fcclip": Framework(
        name="fcclip",
        signature="sem_seg_head.predictor._mask_pooling_proj.1.weight",
        model=lambda sd, **kw: _fcclip().FCCLIPModel(sd, **kw),
        expected=lambda sd: _fcclip().fcclip_expected(sd),
        # bytedance/fc-clip FCCLIP state dict: backbone.clip_model is the open_clip CLIP model
        rename=(("backbone.clip_model.", ""), ("sem_seg_head.pixel_decoder.", "sem_seg_head.pixel_decoder."),
                ("sem_seg_head.predictor.", "sem_seg_head.predictor."),
                ("void_embedding.weight", "void_embedding.weight")),
        ignore=(r".*\.num_batches_tracked", r"pixel_(mean|std)", r"criterion\..*",
                r"backbone\.clip_model\.attn_mask"),
        # detectron2's test resize (INPUT.MIN_SIZE_TEST 800, MAX_SIZE_TEST 1333: FC-CLIP's configs
        # set neither), SIZE_DIVISIBILITY 32, ViLD's 14 templates (VILD_PROMPT)
        defaults=dict(short_side=800, max_size=1333, divisor=32, templates="vild"),
        description="FC-CLIP (bytedance/fc-clip), CLIP RN50 backbone, geometric ensemble",
    ),
}


def _fcclip():
    from . import fcclip

    return fcclip


def detect(sd: Mapping[str, Any]) -> Framework | None:
    """The framework whose converted files hold sd's signature tensor, if any."""
    for fw in FRAMEWORKS.values():
        if fw.signature in sd:
            return fw
    return None
