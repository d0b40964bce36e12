"""CLIP preprocessing in C (encode_image(uint8, preprocess=True)) against open_clip's
image_transform(224, is_train=False) on PIL images (Pillow bicubic resize of the shorter side,
centre crop, /255, CLIP mean/std).

The fixture holds each uint8 image and the tensor open_clip's transform makes of it; both go
through the same ovs model (image_size 224), one with preprocess=True, one with
preprocess=False. Besides the embedding, the first-stage features (ResNet res2, ViT block 0) are
compared: they are local, so a few pixels off by one grey level already exceed the tolerance
(see conftest.py).
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_close, npz_json

MODELS = ("rn50", "vitb16")  # image_size 224, the size the fixture was preprocessed for


def _first_stage(feats: dict, arch: str) -> np.ndarray:
    return feats["res2"] if arch == "resnet" else feats["tokens"][0]


@pytest.fixture(scope="module")
def pre(reference):
    return reference("preprocess.npz")


@pytest.fixture(scope="module")
def names(pre):
    return npz_json(pre, "names")


@pytest.fixture(scope="module")
def reference_features(load_model, pre, names):
    """ovs features of open_clip's preprocessed tensors, per model (computed once)."""
    cache = {}

    def get(name):
        if name not in cache:
            pixels = np.stack([pre[f"{n}_pixels"] for n in names])   # (6, 3, 224, 224)
            cache[name] = load_model(name).image_features(pixels, preprocess=False)
        return cache[name]

    return get


@pytest.mark.parametrize("name", MODELS)
def test_single_images_match_open_clip_preprocessing(name, load_model, manifest, pre, names,
                                                     reference_features):
    model = load_model(name)
    assert model.image_size == manifest["preprocess"]["image_size"], model.image_size
    arch = manifest["models"][name]["arch"]
    ref = reference_features(name)
    for i, n in enumerate(names):
        img = pre[f"{n}_image"]
        feats = model.image_features(img, preprocess=True)
        assert_close(feats["embed"], ref["embed"][i:i + 1], name=f"{name}/{n} {img.shape}/embed")
        first = _first_stage(feats, arch)
        want = _first_stage(ref, arch)[i:i + 1]
        assert_close(first, want, name=f"{name}/{n} {img.shape}/first stage")
        if i == 0:  # encode_image takes the same path (all images: the list test below)
            emb = model.encode_image(img, preprocess=True)
            assert emb.dtype == np.float32 and emb.shape == (1, model.embed_dim), emb.shape
            assert_close(emb, ref["embed"][i:i + 1], name=f"{name}/{n}/encode_image")


def test_list_of_differently_sized_images(load_model, pre, names, reference_features):
    model = load_model("rn50")
    images = [pre[f"{n}_image"] for n in names]
    assert len({im.shape for im in images}) == len(images)
    out = model.encode_image(images, preprocess=True)
    assert out.shape == (len(images), model.embed_dim), out.shape
    assert_close(out, reference_features("rn50")["embed"], name="rn50/list of images")


def test_batch_array_and_memory_layouts(load_model, pre):
    """(N, H, W, 3) batches, and non-contiguous / Fortran / read-only uint8 images give what a
    contiguous single image gives (the boundary is model-independent: the tiny ResNet)."""
    model = load_model("rn_tiny")
    img = pre["odd333x517_image"]
    untouched = img.copy()
    want = model.encode_image(np.ascontiguousarray(img), preprocess=True)
    assert want.shape == (1, model.embed_dim), want.shape
    batch = model.encode_image(np.stack([img, img]), preprocess=True)
    assert batch.shape == (2, model.embed_dim), batch.shape
    assert_close(batch, np.concatenate([want, want]), name="rn_tiny/(2, H, W, 3) batch")
    assert_close(model.encode_image(img[None], preprocess=True), want, name="rn_tiny/(1, H, W, 3)")

    flipped = np.ascontiguousarray(img[:, ::-1])
    readonly = img.copy()
    readonly.flags.writeable = False
    wide = np.zeros((img.shape[0], img.shape[1], 6), np.uint8)
    wide[..., ::2] = img
    for label, v in {"negative column stride": flipped[:, ::-1],
                     "fortran-ordered": np.asfortranarray(img),
                     "strided channels": wide[..., ::2],
                     "read-only": readonly}.items():
        assert np.array_equal(v, img)
        assert_close(model.encode_image(v, preprocess=True), want, name=f"rn_tiny/{label} image")
    assert np.array_equal(img, untouched), "encode_image modified its input"


def test_bad_images_raise(load_model, pre):
    model = load_model("rn_tiny")
    img = pre["sq224_image"]

    for label, bad in {"int64 image": img.astype(np.int64),
                       "uint16 image": img.astype(np.uint16)}.items():
        with pytest.raises(TypeError, match=f"uint8.*got {bad.dtype}"):
            model.encode_image(bad, preprocess=True)
            pytest.fail(f"{label} accepted with preprocess=True")
    # Float RGB must be in [0, 1] (the README's contract); 0..255 floats are refused.
    with pytest.raises(ValueError, match=r"\[0, 1\] \(got range"):
        model.encode_image(img.astype(np.float32), preprocess=True)
    np.testing.assert_array_equal(model.encode_image(img.astype(np.float64) / 255),
                                  model.encode_image(img))

    for label, bad in {"4 channels": np.concatenate([img, img[..., :1]], axis=-1),
                       "2 channels": img[..., :2],
                       "channels first": np.ascontiguousarray(img.transpose(2, 0, 1)),
                       "zero height": img[:0], "zero width": img[:, :0],
                       "rank 5": img[None, None], "rank 1": img[0, 0],
                       "empty list": []}.items():
        with pytest.raises(ValueError):
            model.encode_image(bad, preprocess=True)
            pytest.fail(f"{label} {np.shape(bad)} accepted with preprocess=True")

    with pytest.raises((TypeError, ValueError)):
        model.encode_image([img, img[..., :2]], preprocess=True)
        pytest.fail("a list holding a 2-channel image was accepted")


def test_grayscale_is_refused_or_converted_like_pil(load_model, pre):
    """(H, W) uint8: either ValueError, or the documented conversion to RGB (as PIL's
    Image.convert("RGB") of an "L" image: the grey value in all three channels)."""
    model = load_model("rn_tiny")
    gray = pre["land480x640_image"][..., 1].copy()
    try:
        out = model.encode_image(gray, preprocess=True)
    except ValueError:
        return
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    assert_close(out, model.encode_image(rgb, preprocess=True), name="grayscale vs replicated RGB")
