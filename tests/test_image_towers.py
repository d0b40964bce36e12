"""Image towers (ModifiedResNet, ViT) against open_clip on random-weight models.

References come from tests/reference/make_fixtures.py (open_clip's own forward at the training
size; an explicit forward with bicubically resized positional embeddings, cross-checked against
open_clip, for the non-square cases). Tolerance: see conftest.py.
"""
from __future__ import annotations

import numpy as np
import pytest

import ovs
from ovs import _core
from conftest import assert_close
from test_gemm import restore_runtime, simd_isas  # noqa: F401 (fixture)

MODELS = ("rn50", "vitb16", "rn_tiny", "vit_tiny")
TINY = ("rn_tiny", "vit_tiny")
CASES = ("sq_b1", "sq_b4", "rect_b1")


def _feature_keys(arch: str) -> tuple:
    return ("res2", "res3", "res4", "res5", "embed") if arch == "resnet" else ("tokens", "embed")


def _assert_features_close(feats: dict, ref: dict, prefix: str, keys, what: str) -> None:
    missing = [k for k in keys if k not in feats]
    assert not missing, f"{what}: image_features lacks {missing} (has {sorted(feats)})"
    for k in keys:
        got = feats[k]
        assert isinstance(got, np.ndarray) and got.dtype == np.float32, \
            f"{what}/{k}: expected a float32 ndarray, got {type(got).__name__} " \
            f"{getattr(got, 'dtype', None)}"
        want = ref[f"{prefix}{k}"]
        if k == "tokens":  # one tensor per block
            assert got.shape == want.shape, f"{what}/tokens: shape {got.shape} != {want.shape}"
            for layer in range(want.shape[0]):
                assert_close(got[layer], want[layer], name=f"{what}/tokens[block {layer}]")
        else:
            assert_close(got, want, name=f"{what}/{k}")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", MODELS)
def test_encode_image_matches_open_clip(name, case, load_model, reference, manifest):
    ref = reference(f"{name}_image.npz")
    x = ref[f"{case}_x"]
    out = load_model(name).encode_image(x, preprocess=False)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32, f"got {type(out)} {out.dtype}"
    assert out.shape == (x.shape[0], manifest["models"][name]["embed_dim"])
    assert_close(out, ref[f"{case}_embed"], name=f"{name}/{case}/embed")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", MODELS)
def test_image_features_match_open_clip(name, case, load_model, reference, manifest):
    ref = reference(f"{name}_image.npz")
    feats = load_model(name).image_features(ref[f"{case}_x"])
    assert isinstance(feats, dict), f"image_features returned {type(feats).__name__}"
    keys = _feature_keys(manifest["models"][name]["arch"])
    _assert_features_close(feats, ref, f"{case}_", keys, f"{name}/{case}")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", ("vitb16", "vit_tiny"))
def test_vit_embedding_from_class_token_rows_equals_full_last_block(name, case, load_model, reference):
    """The embedding alone runs the last block for the class tokens only (their queries, attention,
    out-projection and MLP; every token's keys and values): the same embedding as the full last
    block (which image_features runs, with every block's tokens) up to float rounding."""
    x = reference(f"{name}_image.npz")[f"{case}_x"]
    vis = load_model(name).visual
    alone = vis.forward(x)["embed"]
    full = vis.forward(x, all_tokens=True)["embed"]
    err = float(np.abs(alone - full).max() / np.abs(full).max())
    assert err <= 1e-6, f"{name}/{case}: class-token-only last block differs by {err:.2e}"


@pytest.mark.parametrize("name", ("rn50", "rn_tiny"))
def test_resnet_forward_returns_the_selected_stages(name, load_model, reference):
    # forward(features=True, stages=...) copies out only the named feature maps (a trunk
    # consumer that needs res5 alone skips the other copies): each equals open_clip's and,
    # bitwise, the same map of the full forward
    ref = reference(f"{name}_image.npz")
    x = ref["sq_b1_x"]
    vis = load_model(name).visual
    full = vis.forward(x, features=True, embed=False)
    for stages in (("res5",), ["res2", "res4"], "res3"):
        got = vis.forward(x, features=True, embed=False, stages=stages)
        want = {stages} if isinstance(stages, str) else set(stages)
        assert set(got) == want, f"{name}: stages={stages!r} returned {sorted(got)}"
        for k in want:
            assert_close(got[k], ref[f"sq_b1_{k}"], name=f"{name}/{k} (stages={stages!r})")
            assert np.array_equal(got[k], full[k]), f"{name}/{k}: differs from the full forward"
    with_embed = vis.forward(x, features=True, stages=("res5",))
    assert set(with_embed) == {"res5", "embed"}
    assert np.array_equal(with_embed["embed"], vis.forward(x)["embed"])
    for bad, exc in ((("res6",), ValueError), (("res5", 5), ValueError), (5, TypeError)):
        with pytest.raises(exc, match="stages"):
            vis.forward(x, features=True, stages=bad)
    with pytest.raises(ValueError, match="features=True"):
        vis.forward(x, stages=("res5",))


@pytest.mark.parametrize("name", TINY)
def test_weights_packed_at_load_serve_every_isa(name, fixtures_dir, reference, manifest,
                                                restore_runtime):
    # conv and linear weights are packed once at load in a layout every ISA's kernels read: a
    # model loaded under one ISA gives bitwise the same output under every other (no repacking)
    x = reference(f"{name}_image.npz")["sq_b4_x"]
    path, act = str(fixtures_dir / f"{name}.safetensors"), manifest["models"][name]["act"]
    outs = {}
    for load_isa in ["portable"] + simd_isas():
        _core.gemm_set_isa(load_isa)
        model = ovs.load(path, act=act)
        for run_isa in ["portable"] + simd_isas():
            _core.gemm_set_isa(run_isa)
            outs[load_isa, run_isa] = model.encode_image(x, preprocess=False)
    ref = outs["portable", "portable"]
    for key, out in outs.items():
        assert np.array_equal(out, ref), f"{name}: loaded under {key[0]}, run under {key[1]}"


@pytest.mark.parametrize("name", MODELS)
def test_batch_of_one_equals_batch_of_four(name, load_model, reference, manifest):
    ref = reference(f"{name}_image.npz")
    model = load_model(name)
    x = ref["sq_b4_x"]
    full = model.encode_image(x, preprocess=False)
    for i in range(x.shape[0]) if name in TINY else (0, x.shape[0] - 1):
        one = model.encode_image(x[i:i + 1], preprocess=False)
        assert one.shape == (1, full.shape[1])
        assert_close(one[0], full[i], name=f"{name}: image {i} alone vs in a batch of 4")
    if name in TINY:  # every intermediate output too (cheap on the tiny models)
        feats = model.image_features(x)
        keys = _feature_keys(manifest["models"][name]["arch"])
        for i in range(x.shape[0]):
            one = model.image_features(x[i:i + 1])
            for k in keys:
                got, want = (one[k][:, 0], feats[k][:, i]) if k == "tokens" else (one[k][0], feats[k][i])
                assert_close(got, want, name=f"{name}: {k} of image {i} alone vs in a batch")


@pytest.mark.parametrize("name", MODELS)
def test_memory_layouts_give_the_same_result(name, load_model, reference):
    ref = reference(f"{name}_image.npz")
    model = load_model(name)
    x = ref["sq_b4_x"][:2] if name in TINY else ref["sq_b1_x"]
    untouched = x.copy()
    base = model.encode_image(np.ascontiguousarray(x), preprocess=False)
    wide = np.zeros(x.shape[:3] + (2 * x.shape[3],), np.float32)
    wide[..., ::2] = x
    flipped = np.ascontiguousarray(x[:, :, ::-1])
    readonly = x.copy()
    readonly.flags.writeable = False
    variants = {
        "fortran-ordered": np.asfortranarray(x),
        "strided (every other column)": wide[..., ::2],
        "channels-last memory": np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),
        "negative row stride": flipped[:, :, ::-1],
        "read-only": readonly,
    }
    if name not in TINY:  # the boundary is the same for every model: keep the big ones short
        variants = {k: variants[k] for k in ("fortran-ordered", "strided (every other column)")}
    for label, v in variants.items():
        assert np.array_equal(v, x)
        out = model.encode_image(v, preprocess=False)
        assert_close(out, base, name=f"{name}: {label} input")
    if name in TINY:
        reversed_batch = model.encode_image(x[::-1], preprocess=False)
        assert_close(reversed_batch, base[::-1], name=f"{name}: batch with negative stride")
    assert np.array_equal(x, untouched), "encode_image modified its input"


@pytest.mark.parametrize("name", TINY)
def test_bad_image_arrays_raise(name, load_model, reference, manifest):
    model = load_model(name)
    info = manifest["models"][name]
    x = reference(f"{name}_image.npz")["sq_b1_x"]
    s, step = info["image_size"], info["patch"]

    for label, bad in {"int32": x.astype(np.int32), "bool": x > 0,
                       "complex64": x.astype(np.complex64), "None": None,
                       "object": np.array([[None]], dtype=object)}.items():
        with pytest.raises(TypeError):
            model.encode_image(bad, preprocess=False)
            pytest.fail(f"{label} input accepted")

    nan = x.copy()
    nan[0, 1, 2, 3] = np.nan
    inf = x.copy()
    inf[0, 2, 1, 0] = -np.inf
    bad_values = {
        "rank 3": x[0], "rank 5": x[None], "rank 2": x[0, 0],
        "4 channels": np.concatenate([x, x[:, :1]], axis=1), "1 channel": x[:, :1],
        "zero height": x[:, :, :0], "zero width": x[..., :0],
        f"height not a multiple of {step}": np.zeros((1, 3, s + step // 2, s), np.float32),
        f"width not a multiple of {step}": np.zeros((1, 3, s, s - step // 2), np.float32),
        "NaN": nan, "-inf": inf,
    }
    for label, bad in bad_values.items():
        for fn in (model.encode_image, model.image_features):
            with pytest.raises(ValueError):
                fn(bad, preprocess=False)
                pytest.fail(f"{fn.__name__}: {label} input {np.shape(bad)} accepted")


@pytest.mark.parametrize("name", TINY)
def test_empty_batch_and_float64(name, load_model, reference, manifest):
    """N=0 raises ValueError naming the empty batch; float64 input is converted (equal to the
    float32 result)."""
    model = load_model(name)
    x = reference(f"{name}_image.npz")["sq_b1_x"]
    s = manifest["models"][name]["image_size"]
    with pytest.raises(ValueError, match=r"empty \(N = 0\)"):
        model.encode_image(np.zeros((0, 3, s, s), np.float32), preprocess=False)
    out = model.encode_image(x.astype(np.float64), preprocess=False)
    assert out.dtype == np.float32
    assert_close(out, model.encode_image(x, preprocess=False), name=f"{name}: float64 input")


@pytest.mark.parametrize("name", MODELS)
def test_architecture_inferred_from_weights(name, load_model, manifest):
    info = manifest["models"][name]
    model = load_model(name)
    assert model.arch == info["arch"], (model.arch, info["arch"])
    assert isinstance(model.embed_dim, int) and model.embed_dim == info["embed_dim"], \
        (model.embed_dim, info["embed_dim"])
    assert isinstance(model.image_size, int) and model.image_size == info["image_size"], \
        (model.image_size, info["image_size"])
    text = repr(model)
    assert info["arch"] in text.lower(), f"repr does not name the architecture: {text!r}"


def test_activation_choice_is_used(fixtures_dir, reference):
    """The tiny ViT is a GELU model: loading it as QuickGELU must change the results (by far
    more than the tolerance), and an unknown activation is refused."""
    image = reference("vit_tiny_image.npz")
    text = reference("vit_tiny_text.npz")
    wrong = ovs.load(str(fixtures_dir / "vit_tiny.safetensors"), act="quickgelu")
    for what, out, want in (
            ("image", wrong.encode_image(image["sq_b1_x"], preprocess=False), image["sq_b1_embed"]),
            ("text", wrong.encode_tokens(text["tokens"]), text["embed"])):
        rel = float(np.abs(out - want).max() / np.abs(want).max())
        assert rel > 1e-3, f"{what}: QuickGELU and GELU give nearly the same embedding ({rel:.2e})"
    with pytest.raises(ValueError):
        ovs.load(str(fixtures_dir / "vit_tiny.safetensors"), act="relu6")


@pytest.mark.parametrize("heads", [8, 16, 64])
def test_resnet_attention_pool_any_head_width(heads, fixtures_dir, reference):
    """The ResNet attention pool with the tiny model's weights split into 8, 16 or 64 heads
    (head widths 64 and 32: k and v folded into the query side, csrc/models/resnet.c
    attnpool_folded; width 8, not whole packed panels: k and v of every token) against
    open_clip's ModifiedResNet built with those heads."""
    import torch
    from open_clip.modified_resnet import ModifiedResNet

    from ovs.weights import load_state_dict

    sd = load_state_dict(fixtures_dir / "rn_tiny.safetensors")
    x = reference("rn_tiny_image.npz")["sq_b4_x"]
    ref = ModifiedResNet([1, 2, 1, 1], 48, heads, image_size=96, width=16).eval()
    ref.load_state_dict({k[len("visual."):]: torch.from_numpy(np.array(v)) for k, v in sd.items()
                         if k.startswith("visual.")})
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    got = ovs.Model(sd, vision_heads=heads).encode_image(x, preprocess=False)
    assert_close(got, want, name=f"{heads} heads")


def _rewrite(fixtures_dir, tmp_path, name, edit):
    from safetensors.numpy import load_file, save_file

    state = load_file(str(fixtures_dir / f"{name}.safetensors"))
    edit(state)
    path = tmp_path / f"{name}_edited.safetensors"
    save_file(state, str(path))
    return str(path)


@pytest.mark.parametrize("name,key", [
    ("rn_tiny", "visual.layer2.1.conv2.weight"),
    ("rn_tiny", "visual.attnpool.k_proj.bias"),
    ("vit_tiny", "visual.transformer.resblocks.1.attn.in_proj_weight"),
    ("vit_tiny", "visual.ln_post.weight"),
    ("vit_tiny", "transformer.resblocks.1.mlp.c_fc.weight"),
])
def test_missing_key_raises(name, key, fixtures_dir, tmp_path, manifest):
    def drop(state):
        assert key in state, f"fixture lacks {key}"
        del state[key]

    path = _rewrite(fixtures_dir, tmp_path, name, drop)
    with pytest.raises((ValueError, KeyError, ovs.OvsError)) as err:
        ovs.load(path, act=manifest["models"][name]["act"])
    assert key in str(err.value), f"error does not name the missing key {key}: {err.value}"


@pytest.mark.parametrize("name,key", [
    ("rn_tiny", "visual.layer1.0.bn2.running_var"),
    ("rn_tiny", "visual.attnpool.c_proj.weight"),
    ("vit_tiny", "visual.transformer.resblocks.1.mlp.c_fc.bias"),
    ("vit_tiny", "text_projection"),
])
def test_wrong_shape_raises(name, key, fixtures_dir, tmp_path, manifest):
    def shrink(state):
        state[key] = np.ascontiguousarray(state[key][..., :-1])

    path = _rewrite(fixtures_dir, tmp_path, name, shrink)
    with pytest.raises((ValueError, ovs.OvsError)) as err:
        ovs.load(path, act=manifest["models"][name]["act"])
    assert key in str(err.value), f"error does not name the mis-shaped tensor {key}: {err.value}"


def test_missing_file_raises(tmp_path):
    with pytest.raises((OSError, ValueError)):
        ovs.load(str(tmp_path / "absent.safetensors"))
