"""Weight-name mapping between Hugging Face transformers' Mask2Former modules and the
detectron2 / Mask2Former names (fc-clip, OpenTrans), and random weights for them; shared by
tests/test_m2f.py and the framework references (tests/reference/han_reference.py). The mapping
is also the docstring of ovs/_m2f.py."""
from __future__ import annotations

import re

import torch


def randomize(module: torch.nn.Module, seed: int, offset_bias: float = 2.0):
    """Random weights with unit-scale activations; sampling-offset biases of a few pixels so
    that some samples fall outside the maps (zero padding is exercised)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            elif "norm" in name and name.endswith("weight") or re.search(r"\.1\.weight$", name):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif "sampling_offsets" in name:
                p.copy_(offset_bias * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            if name.endswith("level_embed"):
                p.copy_(torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------- name mapping (HF -> fc-clip)
def _per_layer(hf: str, sublayers: dict[str, str], into: str = "") -> list[tuple[str, str]]:
    """Rows for HF's `<hf>.layers.N.<sublayer>.`: -> `<into><name>.` with N for {} (ovs/_m2f.py's
    table, one row per sublayer, in the order given)."""
    return [(rf"^{hf}\.layers\.(\d+)\.{re.escape(sub)}\.", (into + name).format(r"\1") + ".")
            for sub, name in sublayers.items()]


HF_TO_FCCLIP_PIXEL_DECODER = [
    (r"^input_projections\.(\d)\.", r"input_proj.\1."),
    (r"^level_embed$", "transformer.level_embed"),
    *_per_layer("encoder", {"self_attn_layer_norm": "norm1", "final_layer_norm": "norm2", "fc1": "linear1",
                            "fc2": "linear2", "self_attn": "self_attn"}, into="transformer.encoder.layers.{}."),
    (r"^adapter_1\.0\.", "adapter_1."),
    (r"^adapter_1\.1\.", "adapter_1.norm."),
    (r"^layer_1\.0\.", "layer_1."),
    (r"^layer_1\.1\.", "layer_1.norm."),
    (r"^mask_projection\.", "mask_features."),
]

HF_TO_FCCLIP_PREDICTOR = [
    (r"^queries_features\.", "query_feat."),
    (r"^queries_embedder\.", "query_embed."),
    (r"^level_embed\.", "level_embed."),
    (r"^input_projections\.(\d)\.", r"input_proj.\1."),
    *_per_layer("decoder", {
        "cross_attn": "transformer_cross_attention_layers.{}.multihead_attn",
        "cross_attn_layer_norm": "transformer_cross_attention_layers.{}.norm",
        "self_attn.out_proj": "transformer_self_attention_layers.{}.self_attn.out_proj",
        "self_attn_layer_norm": "transformer_self_attention_layers.{}.norm",
        "fc1": "transformer_ffn_layers.{}.linear1",
        "fc2": "transformer_ffn_layers.{}.linear2",
        "final_layer_norm": "transformer_ffn_layers.{}.norm"}),
    (r"^decoder\.layernorm\.", "decoder_norm."),
    (r"^decoder\.mask_predictor\.mask_embedder\.(\d)\.0\.", r"mask_embed.layers.\1."),
]


def map_names(state, table, prefix):
    out = {}
    for name, t in state.items():
        for pat, rep in table:
            new, n = re.subn(pat, rep, name)
            if n:
                out[prefix + new] = t.detach().numpy().copy()
                break
        else:
            raise AssertionError(f"unmapped HF weight {name}")
    return out


def predictor_weights(module, prefix, layers):
    sd = dict(module.state_dict())
    # HF's self-attention has separate q/k/v projections; nn.MultiheadAttention packs them.
    for i in range(layers):
        p = f"decoder.layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            packed = torch.cat([sd.pop(f"{p}{x}_proj.{kind}") for x in "qkv"])
            sd[f"__packed{i}.{kind}"] = packed
    w = map_names({k: v for k, v in sd.items() if not k.startswith("__packed")},
                  HF_TO_FCCLIP_PREDICTOR, prefix)
    for i in range(layers):
        for kind in ("weight", "bias"):
            w[f"{prefix}transformer_self_attention_layers.{i}.self_attn.in_proj_{kind}"] = \
                sd[f"__packed{i}.{kind}"].detach().numpy().copy()
    return w


def checkpoint_main(small, full, save_checkpoint, doc: str, argv=None) -> None:
    """The command line of a framework reference: write its random detectron2 checkpoint
    (`python tests/reference/<framework>_reference.py OUT.pth [--full] [--seed N]`)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--full", action="store_true", help="the real sizes (default: the small test model)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    save_checkpoint(full(a.seed) if a.full else small(a.seed), a.out)
    print(a.out)
