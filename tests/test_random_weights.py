"""ovs.weights.random_state_dict: the generated state dicts have exactly open_clip's tensor
names, shapes and dtypes (open_clip builds the reference), and ovs builds and runs them."""
from __future__ import annotations

import numpy as np
import pytest

import ovs
from ovs.weights import random_state_dict


@pytest.mark.parametrize("name", ["RN50", "ViT-B-16"])
def test_layout_equals_open_clip(name):
    import open_clip

    ref = open_clip.create_model(name, pretrained=None).state_dict()
    ours = random_state_dict(name, seed=1)
    want = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in ref.items()
            if not k.endswith("attn_mask")}
    got = {k: (tuple(v.shape), str(v.dtype)) for k, v in ours.items()}
    assert set(got) == set(want), (f"missing {sorted(set(want) - set(got))[:5]}, "
                                   f"extra {sorted(set(got) - set(want))[:5]}")
    bad = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not bad, f"shape/dtype differ: {list(bad.items())[:5]}"
    for k, v in ours.items():
        assert np.isfinite(v).all(), k
    if name == "RN50":   # ovs builds and runs it
        emb = ovs.Model(ours).encode_image(
            (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
        assert emb.shape == (1, 1024) and np.isfinite(emb).all() and np.abs(emb).max() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="no generator for architecture 'ViT-L-14'"):
        random_state_dict("ViT-L-14")
    with pytest.raises(ValueError, match="seed must be an int >= 0, got -1"):
        random_state_dict("RN50", seed=-1)
