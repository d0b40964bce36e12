"""ovs.flops against fvcore's FlopCountAnalysis (PyPI fvcore, the counter the paper's FLOPs use)
on open_clip's RN50 and ViT-B/16 modules: totals within 1% and per operator kind; sparse
counts against non-zeros x output positions measured with forward hooks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ovs.flops as F
import ovs.prune as P


def _fvcore(module, *inputs):
    from fvcore.nn import FlopCountAnalysis

    f = FlopCountAnalysis(module, inputs)
    f.unsupported_ops_warnings(False)
    f.uncalled_modules_warnings(False)
    return f.total(), dict(f.by_operator())


class _Text(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, t):
        return self.m.encode_text(t)


def _kinds(rows, fvcore_names):
    got = {}
    for r in rows:
        if r.kind in ("attention", "add", "embedding"):
            continue
        got[r.kind] = got.get(r.kind, 0) + r.macs
    return {k: v for k, v in got.items() if k in fvcore_names or v}


@pytest.mark.parametrize("arch,size", [("RN50", 224), ("ViT-B-16", 224)])
def test_counts_equal_fvcore(arch, size):
    import open_clip

    torch.manual_seed(0)
    m = open_clip.create_model(arch, pretrained=None).eval()
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    # traced with autograd on: under no_grad, nn.MultiheadAttention takes a fused fast path
    # whose projections fvcore does not see
    ref_total, ref_ops = _fvcore(m.visual, torch.zeros(1, 3, size, size))
    rows = F.count(sd, image_size=size)
    ours = F.total(rows, fvcore=True)
    assert abs(ours - ref_total) <= 0.01 * ref_total, (ours, ref_total)
    kinds = _kinds(rows, ref_ops)
    assert set(kinds) == set(ref_ops), (kinds, ref_ops)
    for k, v in ref_ops.items():
        assert abs(kinds[k] - v) <= 0.01 * v, f"{k}: ours {kinds[k]} fvcore {v}"
    if arch == "RN50" and size == 224:   # the text tower, 3 prompts of 77 tokens
        t_total, _ = _fvcore(_Text(m), torch.zeros(3, 77, dtype=torch.long))
        trows = F.count(sd, num_texts=3)
        vis = F.total(rows, fvcore=True)
        assert abs(F.total(trows, fvcore=True) - vis - t_total) <= 0.01 * t_total
    # parameters: every parameter of the image tower (not the BatchNorm statistics buffers)
    n_vis = sum(p.numel() for p in m.visual.parameters())
    assert F.params(rows) == n_vis


def test_sparse_counts_from_hooks(fixtures_dir):
    """Sparse-effective MACs of a pruned RN50 = sum over convs of nnz(weight) x output positions,
    the positions measured by forward hooks on open_clip's module."""
    import open_clip

    torch.manual_seed(1)
    m = open_clip.create_model("RN50", pretrained=None).eval()
    sd = {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}
    pruned = P.magnitude(sd, sparsity=0.9)
    positions = {}
    hooks = []
    for name, mod in m.visual.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            hooks.append(mod.register_forward_hook(
                lambda mod, i, o, name=name: positions.__setitem__("visual." + name, o.shape[2] * o.shape[3])))
    with torch.no_grad():
        m.visual(torch.zeros(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    want = sum(np.count_nonzero(pruned[n + ".weight"]) * positions[n] for n in positions)
    rows = F.count(pruned, image_size=224)
    got = sum(r.sparse_macs for r in rows if r.kind == "conv")
    assert abs(got - want) <= 1e-6 * want + len(positions), (got, want)
    dense = sum(r.macs for r in rows if r.kind == "conv")
    assert got < 0.2 * dense
    assert F.params(rows, sparse=True) < F.params(rows)


def test_heads_and_errors(fixtures_dir):
    from ovs.weights import load_state_dict

    sd = load_state_dict(fixtures_dir / "rn50.safetensors")
    base = F.total(F.count(sd, image_size=448))
    rows = F.count(sd, image_size=448, head="maskclip", num_classes=150)
    g = (448 // 32) ** 2
    extra = g * 2048 * 2048 + g * 2048 * 1024 + g * 1024 * 150
    assert F.total(rows) - base == extra
    with pytest.raises(ValueError, match="needs a ViT"):
        F.count(sd, head="scclip", num_classes=3)
    with pytest.raises(ValueError, match="multiples of 32"):
        F.count(sd, image_size=200)
    with pytest.raises(ValueError, match="needs a ViT"):
        F.count(sd, head="naclip", num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        F.count(sd, head="maskclip")
    with pytest.raises(TypeError, match="ovs.Model or an open_clip state dict"):
        F.count([1, 2])
    assert "total" in F.table(rows)


def test_scclip_head_extra_work():
    """SC-CLIP's rows over a ViT/16 trunk: LOF + 2 similarity maps + 3 aggregations (6 g^2 D),
    the fusion attention pass (g D 3D + 2 g^2 D + g D^2), projection, classifier."""
    import open_clip

    m = open_clip.CLIP(embed_dim=64, vision_cfg=dict(layers=12, width=128, head_width=64,
                                                     patch_size=16, image_size=224),
                       text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1,
                                     layers=1))
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    base = F.total(F.count(sd, image_size=224))
    g, D, E, C = 196, 128, 64, 5
    naclip = F.total(F.count(sd, image_size=224, head="naclip", num_classes=C)) - base
    assert naclip == g * D * E + g * E * C
    scclip = F.total(F.count(sd, image_size=224, head="scclip", num_classes=C)) - base
    assert scclip - naclip == 6 * g * g * D + g * D * 3 * D + 2 * g * g * D + g * D * D
