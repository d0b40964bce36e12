"""Mask2Former blocks shared by FC-CLIP and Han et al. (internal; the frameworks wire them).

The C blocks (include/ovs/m2f.h) read weights by the detectron2 / fc-clip state-dict names,
below a prefix (``sem_seg_head.pixel_decoder.`` and ``sem_seg_head.predictor.`` in FC-CLIP and
OpenTrans checkpoints). Hugging Face ``transformers`` names the same tensors differently; the
tests map them as follows (HF module-relative name -> fc-clip name below the prefix):

Pixel decoder (``Mask2FormerPixelDecoder`` -> ``MSDeformAttnPixelDecoder``)::

    input_projections.{i}.0.{weight,bias}            input_proj.{i}.0.{weight,bias}   i: res5, res4, res3
    input_projections.{i}.1.{weight,bias}            input_proj.{i}.1.{weight,bias}   (GroupNorm)
    level_embed                                      transformer.level_embed
    encoder.layers.{j}.self_attn.{sampling_offsets,attention_weights,value_proj,output_proj}.*
                                                     transformer.encoder.layers.{j}.self_attn.<same>.*
    encoder.layers.{j}.self_attn_layer_norm.*        transformer.encoder.layers.{j}.norm1.*
    encoder.layers.{j}.fc1.* / fc2.*                 transformer.encoder.layers.{j}.linear1.* / linear2.*
    encoder.layers.{j}.final_layer_norm.*            transformer.encoder.layers.{j}.norm2.*
    adapter_1.0.weight / adapter_1.1.*               adapter_1.weight / adapter_1.norm.*
    layer_1.0.weight / layer_1.1.*                   layer_1.weight / layer_1.norm.*
    mask_projection.*                                mask_features.*

Transformer decoder (``Mask2FormerTransformerModule`` -> ``MultiScaleMaskedTransformerDecoder``)::

    queries_features.weight                          query_feat.weight
    queries_embedder.weight                          query_embed.weight
    level_embed.weight                               level_embed.weight
    input_projections.{l}.*  (only if in != hidden)  input_proj.{l}.*
    decoder.layers.{i}.cross_attn.{in_proj_weight,in_proj_bias,out_proj.*}
                                                     transformer_cross_attention_layers.{i}.multihead_attn.<same>
    decoder.layers.{i}.cross_attn_layer_norm.*       transformer_cross_attention_layers.{i}.norm.*
    decoder.layers.{i}.self_attn.{q,k,v}_proj.*      transformer_self_attention_layers.{i}.self_attn.in_proj_{weight,bias}
                                                     (q, k, v concatenated along rows)
    decoder.layers.{i}.self_attn.out_proj.*          transformer_self_attention_layers.{i}.self_attn.out_proj.*
    decoder.layers.{i}.self_attn_layer_norm.*        transformer_self_attention_layers.{i}.norm.*
    decoder.layers.{i}.fc1.* / fc2.*                 transformer_ffn_layers.{i}.linear1.* / linear2.*
    decoder.layers.{i}.final_layer_norm.*            transformer_ffn_layers.{i}.norm.*
    decoder.layernorm.*                              decoder_norm.*
    decoder.mask_predictor.mask_embedder.{k}.0.*     mask_embed.layers.{k}.*
    (class head, outside the module)                 class_embed.* (Linear) or class_embed.layers.{k}.* (MLP)

FC-CLIP's class head (``fcclip_class_head=True``): ``class_embed`` reads ``decoder_norm(x) +
_mask_pooling_proj(mask pooling of mask_features)``, with ``_mask_pooling_proj.{0,1}.*`` (LayerNorm,
Linear) below the predictor prefix; the returned class embeddings are before
``get_classification_logits`` (L2 normalisation, logit scale, max over templates), which needs
the text classifier and is left to the framework.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ovs import _core
from ovs.weights import c_weights

PIXEL_DECODER_PREFIX = "sem_seg_head.pixel_decoder."
PREDICTOR_PREFIX = "sem_seg_head.predictor."


def position_embedding_sine(dim: int, height: int, width: int,
                            temperature: float = 10000.0) -> np.ndarray:
    """Mask2Former's ``PositionEmbeddingSine(dim // 2, normalize=True)`` as an (H, W, dim) array
    (torch's (1, dim, H, W) output permuted to channels last)."""
    return _core.m2f_pos_embed_sine(int(dim), int(height), int(width), float(temperature))


def msdeform_attn_core(value: np.ndarray, shapes: Sequence[tuple[int, int]], loc: np.ndarray,
                       attn: np.ndarray) -> np.ndarray:
    """``ms_deform_attn_core_pytorch`` for one image: value (S, E, F), loc (Q, E, L, P, 2) in
    [0, 1], attn (Q, E, L, P) -> (Q, E*F)."""
    return _core.m2f_msdeform_attn_core(value, [tuple(s) for s in shapes], loc, attn)


def msdeform_attn(weights: Mapping[str, np.ndarray], prefix: str, query: np.ndarray,
                  inputs: np.ndarray, reference_points: np.ndarray,
                  shapes: Sequence[tuple[int, int]], heads: int, points: int) -> np.ndarray:
    """One ``MSDeformAttn`` module (weights ``prefix + sampling_offsets.weight`` etc.) on one
    image: query (Q, D) with its positional embedding added, inputs (S, D), reference points
    (Q, L, 2) -> (Q, D)."""
    return _core.m2f_msdeform_attn(c_weights(weights), prefix, query, inputs, reference_points,
                                   [tuple(s) for s in shapes], int(heads), int(points))


class PixelDecoder:
    """``MSDeformAttnPixelDecoder``: 3 deformable-encoder levels (res3-res5) and an FPN step to
    stride 4. ``forward(res2, res3, res4, res5)`` takes (N, C, H, W) float32 maps and returns
    ``(mask_features (N, mask_dim, H2, W2), (ms5, ms4, ms3))`` with ``ms*`` (N, conv_dim, h, w),
    the multi-scale features the transformer decoder reads (lowest resolution first)."""

    def __init__(self, weights: Mapping[str, np.ndarray], in_channels: Sequence[int], *,
                 prefix: str = PIXEL_DECODER_PREFIX, conv_dim: int = 256, mask_dim: int = 256,
                 enc_layers: int = 6, heads: int = 8, points: int = 4, ffn_dim: int = 1024,
                 groups: int = 32):
        if len(in_channels) != 4:
            raise ValueError(f"in_channels must give res2..res5 channels (4 ints), got {in_channels!r}")
        self._block = _core.M2FPixelDecoder(c_weights(weights), prefix, tuple(int(c) for c in in_channels),
                                            conv_dim, mask_dim, enc_layers, heads, points, ffn_dim,
                                            groups)

    def forward(self, res2, res3, res4, res5):
        return self._block.forward(res2, res3, res4, res5)

    __call__ = forward

    def release_workspace(self) -> None:
        """Free the work buffers kept between calls (the next call allocates them again)."""
        self._block.release_workspace()


class TransformerDecoder:
    """``MultiScaleMaskedTransformerDecoder`` (masked attention, ``layers`` = DEC_LAYERS - 1).
    ``forward(ms, mask_features, all_masks=False)`` with ``ms`` the pixel decoder's three maps
    returns ``(hidden (N, layers+1, Q, D), classes (N, layers+1, Q, class_dim) or None,
    masks)``: the ``decoder_norm`` outputs of every prediction, the optional class head
    (``class_layers`` 1 = Linear ``class_embed``, k > 1 = MLP ``class_embed.layers.*``), and
    the mask logits of the last prediction (N, Q, H, W) or of all (N, layers+1, Q, H, W)."""

    def __init__(self, weights: Mapping[str, np.ndarray], *, prefix: str = PREDICTOR_PREFIX,
                 in_channels: int = 256, hidden_dim: int = 256, queries: int = 100,
                 heads: int = 8, ffn_dim: int = 2048, layers: int = 9, mask_dim: int = 256,
                 class_layers: int = 0, class_dim: int = 0, fcclip_class_head: bool = False):
        self._block = _core.M2FDecoder(c_weights(weights), prefix, in_channels, hidden_dim, queries,
                                       heads, ffn_dim, layers, mask_dim, class_layers, class_dim,
                                       bool(fcclip_class_head))

    def forward(self, ms, mask_features, all_masks: bool = False):
        return self._block.forward(list(ms), mask_features, all_masks=all_masks)

    __call__ = forward

    def release_workspace(self) -> None:
        """Free the work buffers kept between calls (the next call allocates them again)."""
        self._block.release_workspace()


# ------------------------------------------------------------------ expected tensors (ovs convert)
def _ln(out: dict, name: str, n: int) -> None:
    out[f"{name}.weight"] = out[f"{name}.bias"] = (n,)


def _linear(out: dict, name: str, o: int, i: int) -> None:
    out[f"{name}.weight"] = (o, i)
    out[f"{name}.bias"] = (o,)


def pixel_decoder_expected(prefix: str, in_channels: Sequence[int], *, conv_dim: int,
                           mask_dim: int, enc_layers: int, heads: int, points: int,
                           ffn_dim: int, levels: int = 3) -> dict[str, tuple[int, ...]]:
    """Every tensor ``MSDeformAttnPixelDecoder`` (detectron2 Mask2Former names) holds below
    prefix, with its shape; in_channels: res2..res5."""
    out: dict[str, tuple[int, ...]] = {}
    D = conv_dim
    for i, c in enumerate(reversed(in_channels[1:])):   # input_proj.0 reads res5
        out[f"{prefix}input_proj.{i}.0.weight"] = (D, c, 1, 1)
        out[f"{prefix}input_proj.{i}.0.bias"] = (D,)
        _ln(out, f"{prefix}input_proj.{i}.1", D)
    out[f"{prefix}transformer.level_embed"] = (levels, D)
    for j in range(enc_layers):
        b = f"{prefix}transformer.encoder.layers.{j}."
        _linear(out, b + "self_attn.sampling_offsets", heads * levels * points * 2, D)
        _linear(out, b + "self_attn.attention_weights", heads * levels * points, D)
        _linear(out, b + "self_attn.value_proj", D, D)
        _linear(out, b + "self_attn.output_proj", D, D)
        _ln(out, b + "norm1", D)
        _linear(out, b + "linear1", ffn_dim, D)
        _linear(out, b + "linear2", D, ffn_dim)
        _ln(out, b + "norm2", D)
    out[f"{prefix}mask_features.weight"] = (mask_dim, D, 1, 1)
    out[f"{prefix}mask_features.bias"] = (mask_dim,)
    out[f"{prefix}adapter_1.weight"] = (D, in_channels[0], 1, 1)
    _ln(out, f"{prefix}adapter_1.norm", D)
    out[f"{prefix}layer_1.weight"] = (D, D, 3, 3)
    _ln(out, f"{prefix}layer_1.norm", D)
    return out


def decoder_expected(prefix: str, *, in_channels: int, hidden_dim: int, queries: int,
                     ffn_dim: int, layers: int, mask_dim: int, class_dim: int = 0,
                     levels: int = 3) -> dict[str, tuple[int, ...]]:
    """Every tensor ``MultiScaleMaskedTransformerDecoder`` holds below prefix, with its shape
    (a Linear ``class_embed`` hidden_dim -> class_dim when class_dim > 0)."""
    out: dict[str, tuple[int, ...]] = {}
    D = hidden_dim
    out[f"{prefix}query_feat.weight"] = out[f"{prefix}query_embed.weight"] = (queries, D)
    out[f"{prefix}level_embed.weight"] = (levels, D)
    if in_channels != D:
        for l in range(levels):
            out[f"{prefix}input_proj.{l}.weight"] = (D, in_channels, 1, 1)
            out[f"{prefix}input_proj.{l}.bias"] = (D,)
    for i in range(layers):
        for kind, attn in (("self", "self_attn"), ("cross", "multihead_attn")):
            b = f"{prefix}transformer_{kind}_attention_layers.{i}."
            out[b + attn + ".in_proj_weight"] = (3 * D, D)
            out[b + attn + ".in_proj_bias"] = (3 * D,)
            _linear(out, b + attn + ".out_proj", D, D)
            _ln(out, b + "norm", D)
        b = f"{prefix}transformer_ffn_layers.{i}."
        _linear(out, b + "linear1", ffn_dim, D)
        _linear(out, b + "linear2", D, ffn_dim)
        _ln(out, b + "norm", D)
    _ln(out, f"{prefix}decoder_norm", D)
    if class_dim:
        _linear(out, f"{prefix}class_embed", class_dim, D)
    for k in range(3):
        _linear(out, f"{prefix}mask_embed.layers.{k}", mask_dim if k == 2 else D, D)
    return out
