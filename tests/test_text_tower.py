"""Text tower against open_clip on random-weight models (tokens from open_clip.tokenize, embeddings
from encode_text); text_classifier against normalise-mean-normalise in NumPy over those
embeddings. Tolerance: see conftest.py.
"""
from __future__ import annotations

import numpy as np
import pytest

import ovs
from conftest import assert_close, npz_json

MODELS = ("rn50", "vitb16", "rn_tiny", "vit_tiny")
TINY = ("rn_tiny", "vit_tiny")


def _expected_classifier(ref: dict, classes, templates) -> np.ndarray:
    """(C, E): per class, L2-normalise each template's embedding, average, L2-normalise."""
    index = {p: i for i, p in enumerate(npz_json(ref, "prompts"))}
    rows = []
    for c in classes:
        prompts = [t.format(c) for t in templates]
        missing = [p for p in prompts if p not in index]
        assert not missing, f"fixture lacks prompts {missing[:3]}: regenerate the fixtures"
        e = ref["embed"][[index[p] for p in prompts]].astype(np.float64)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        mean = e.mean(axis=0)
        rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows).astype(np.float32)


def test_tokenize_matches_open_clip(reference):
    ref = reference("rn_tiny_text.npz")  # the largest prompt set
    prompts = npz_json(ref, "prompts")
    ids = ovs.tokenize(prompts)
    assert isinstance(ids, np.ndarray) and ids.dtype == np.int32, f"{type(ids)} {ids.dtype}"
    assert ids.shape == ref["tokens"].shape, (ids.shape, ref["tokens"].shape)
    bad = np.flatnonzero((ids != ref["tokens"]).any(axis=1))
    if bad.size:
        i = int(bad[0])
        j = int(np.flatnonzero(ids[i] != ref["tokens"][i])[0])
        raise AssertionError(
            f"{bad.size} of {len(prompts)} prompts tokenised differently, first {prompts[i]!r} "
            f"at position {j}: ours {ids[i, max(j - 2, 0):j + 3].tolist()}, open_clip "
            f"{ref['tokens'][i, max(j - 2, 0):j + 3].tolist()}")


@pytest.mark.parametrize("name", MODELS)
def test_encode_tokens_matches_open_clip(name, load_model, reference, manifest):
    ref = reference(f"{name}_text.npz")
    model = load_model(name)
    out = model.encode_tokens(ref["tokens"])
    assert isinstance(out, np.ndarray) and out.dtype == np.float32, f"{type(out)} {out.dtype}"
    assert out.shape == (len(ref["tokens"]), manifest["models"][name]["embed_dim"])
    assert_close(out, ref["embed"], name=f"{name}/encode_tokens(int64)")
    rows = slice(None) if name in TINY else slice(0, 8)  # int32 ids (as ovs.tokenize gives)
    out32 = model.encode_tokens(ref["tokens"][rows].astype(np.int32))
    assert_close(out32, ref["embed"][rows], name=f"{name}/encode_tokens(int32)")


@pytest.mark.parametrize("name", MODELS)
def test_encode_text_matches_open_clip(name, load_model, reference):
    ref = reference(f"{name}_text.npz")
    out = load_model(name).encode_text(npz_json(ref, "prompts"))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32, f"{type(out)} {out.dtype}"
    assert_close(out, ref["embed"], name=f"{name}/encode_text")


@pytest.mark.parametrize("name", MODELS)
def test_text_rows_do_not_depend_on_the_batch(name, load_model, reference):
    """Short, empty and over-long prompts alone equal their rows in the full batch (the batch's
    longest prompt must not change the others)."""
    ref = reference(f"{name}_text.npz")
    model = load_model(name)
    prompts = npz_json(ref, "prompts")
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    for i in (prompts.index("cat"), prompts.index(""), longest):
        one = model.encode_text([prompts[i]])
        assert one.shape == (1, ref["embed"].shape[1])
        assert_close(one[0], ref["embed"][i], name=f"{name}: {prompts[i][:30]!r} alone")
    pair = model.encode_tokens(ref["tokens"][[longest, prompts.index("cat")]])
    assert_close(pair[1], ref["embed"][prompts.index("cat")], name=f"{name}: 'cat' after a long prompt")


@pytest.mark.parametrize("name", MODELS)
def test_text_classifier_with_given_templates(name, load_model, reference, manifest):
    ref = reference(f"{name}_text.npz")
    classes = manifest["classifier"]["classes"]
    templates = manifest["classifier"]["templates"]
    got = load_model(name).text_classifier(list(classes), templates=list(templates))
    assert isinstance(got, np.ndarray) and got.dtype == np.float32, f"{type(got)} {got.dtype}"
    assert got.shape == (len(classes), manifest["models"][name]["embed_dim"])
    assert_close(got, _expected_classifier(ref, classes, templates), name=f"{name}/text_classifier")


@pytest.mark.parametrize("name", TINY)
def test_text_classifier_default_imagenet80_templates(name, load_model, reference, manifest):
    """The default templates are open_clip's 80 OpenAI ImageNet templates (the fixture holds
    their prompts, written by open_clip's own template functions)."""
    ref = reference(f"{name}_text.npz")
    classes = manifest["classifier"]["classes"]
    templates = manifest["imagenet_templates"]
    assert len(templates) == 80
    expected = _expected_classifier(ref, classes, templates)
    model = load_model(name)
    assert_close(model.text_classifier(list(classes)), expected, name=f"{name}/imagenet80 default")
    assert_close(model.text_classifier(list(classes), templates="imagenet80"), expected,
                 name=f"{name}/imagenet80 by name")


@pytest.mark.parametrize("name", TINY)
def test_text_classifier_empty_class_list_raises(name, load_model):
    with pytest.raises(ValueError):
        load_model(name).text_classifier([])


@pytest.mark.parametrize("name", TINY)
def test_bad_token_ids_raise(name, load_model, reference, manifest):
    model = load_model(name)
    tokens = reference(f"{name}_text.npz")["tokens"][:2]
    vocab = manifest["models"][name]["text"]["vocab"]
    too_big = tokens.copy()
    too_big[1, 1] = vocab
    negative = tokens.copy()
    negative[0, 1] = -1
    too_long = np.concatenate([tokens, tokens[:, :1]], axis=1)
    for label, bad in {f"id {vocab}": too_big, "id -1": negative, "78 positions": too_long,
                       "rank 3": tokens[None]}.items():
        with pytest.raises(ValueError):
            model.encode_tokens(bad)
            pytest.fail(f"{label} accepted")
    for label, bad in {"float ids": tokens.astype(np.float32), "None": None}.items():
        with pytest.raises(TypeError):
            model.encode_tokens(bad)
            pytest.fail(f"{label} accepted")
    with pytest.raises(TypeError):
        model.encode_text(["a cat", 3])


@pytest.mark.parametrize("name", MODELS)
def test_full_length_path_matches_end_token_truncation(name, load_model, reference):
    """The naive path (all 77 positions, truncate=False) against open_clip, and against the
    default path that stops at each chunk's last end-of-text token."""
    ref = reference(f"{name}_text.npz")
    model = load_model(name)
    rows = slice(None) if name in TINY else slice(0, 8)
    full = model.encode_tokens(ref["tokens"][rows], truncate=False)
    assert_close(full, ref["embed"][rows], name=f"{name}/encode_tokens(truncate=False)")
    short = model.encode_tokens(ref["tokens"][rows], truncate=True)
    assert_close(short, full, name=f"{name}/truncated vs full length")


@pytest.mark.parametrize("name", ["rn_tiny", "vitb16"])
def test_embeddings_do_not_depend_on_the_batch_or_call_history(fixtures_dir, manifest, name):
    """A prompt's embedding is the same bits whether it is encoded alone, among prompts of other
    lengths, at another position, with another thread count, or after other calls; so the
    classifier cache cannot make results depend on which call came first."""
    path, act = fixtures_dir / f"{name}.safetensors", manifest["models"][name]["act"]
    model = ovs.load(path, act=act)
    target = "a photo of a traffic cone."
    others = ["cat", "a very long prompt " * 6 + "with many tokens in it", "a photo of a dog.",
              "wet asphalt", target, "x"] * 7
    alone = model.encode_text([target])[0]
    threads = ovs.get_num_threads()
    try:
        for n_threads in (1, 2):
            ovs.set_num_threads(n_threads)
            for batch in ([target] + others, others + [target], others[:3] + [target] + others[3:]):
                emb = model.encode_text(batch)
                for row in np.flatnonzero(np.array(batch) == target):
                    assert np.array_equal(emb[row], alone), (
                        f"{n_threads} threads, row {row} of {len(batch)}: max diff "
                        f"{np.abs(emb[row] - alone).max():.3e}")
    finally:
        ovs.set_num_threads(threads)
    first = ovs.load(path, act=act).text_classifier(["traffic cone", "cat"], templates="simple")
    other = ovs.load(path, act=act)
    other.text_classifier(["cat", "dog", "wet asphalt"], templates="simple")
    later = other.text_classifier(["dog", "traffic cone"], templates="simple")
    assert np.array_equal(first[0], later[1]), "the classifier depends on the call history"
