"""Prompt ensembles with a shared prefix (ovs.text.encode_prompts): each template's leading tokens
run once, with every layer's keys/values cached, and only the rest of each prompt runs per prompt.

References: open_clip's own tokenizer and encode_text (float64) on the rn_tiny fixture weights
(tests/reference/make_fixtures.py builds that model with open_clip, pretrained=None), and ovs's
plain path (share_prefix=False, itself checked against open_clip in test_text_tower.py).
Tolerance: 1e-5 of each tensor's scale (tighter than conftest's 1e-4 policy: the shortcut must
not cost accuracy).
"""
from __future__ import annotations

import io
import sys

import numpy as np
import pytest

import ovs
import ovs.text
from conftest import assert_close, load_reference
from ovs.templates import get_templates

RTOL = 1e-5
NAME = "rn_tiny"   # text tower: width 128, 2 heads, 2 layers, GELU

# Class names with unusual tokenisation.
NAMES = [
    "cat", "traffic cone", "",                       # empty
    "猫", "кошка", "θάλασσα", "🐈 emoji",            # non-Latin
    "very " * 60 + "long name",                      # cut at 77 tokens
    "'s garden", "-shaped thing", "3d printer",      # a contraction, punctuation and a digit first
    "Café Ünïcödé", "  spaced   out  ",              # lower-casing / accents, whitespace
]
# Templates beyond the named sets: a name that merges with the template's text ("a{}"), a
# template whose prefix itself is cut at 77 tokens, punctuation before the name, a bare name.
EXTRA_TEMPLATES = ["a photo of a{}.", "word " * 80 + "{}.", "a ({})", "{}"]
# Against open_clip: the ViLD set, the simple one and every 8th ImageNet template (its long and
# short ones); every named set in full runs against ovs's plain path below.
OPEN_CLIP_TEMPLATES = (EXTRA_TEMPLATES + get_templates("vild") + get_templates("simple")
                       + get_templates("imagenet80")[::8])


@pytest.fixture(scope="module")
def model(load_model):
    return load_model(NAME)


@pytest.fixture(scope="module")
def open_clip_reference(fixtures_dir):
    """encode_text(prompts) -> float64 embeddings from open_clip on the fixture's weights."""
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import load_file

    oc, _ = load_reference("make_fixtures")._build(NAME)
    oc.load_state_dict(load_file(str(fixtures_dir / f"{NAME}.safetensors")))
    oc = oc.double().eval()

    def encode(prompts):
        with torch.no_grad():
            return oc.encode_text(open_clip.tokenize(prompts)).numpy()

    return encode


def test_prefix_plan_follows_the_tokens(model):
    """Where each prompt splits: "a photo of a {}." keeps <start_of_text> a photo of a (5 tokens)
    for every name; "a photo of a{}." only 4 when the name merges with the "a" before it (and 5
    when the name starts with "'s" or "-", which the tokenizer splits off); the 80-word template
    keeps 76 tokens (cut at the context, the end-of-text token alone runs per prompt); "a ({})"
    loses "(" when what follows it is punctuation too ("('", "(-", "()" are single tokens);
    "{}" has nothing to share (plain path)."""
    templates = ["a photo of a {}.", "a photo of a{}.", "word " * 80 + "{}.", "a ({})", "{}"]
    names = ["cat", "'s garden", "-shaped thing", "", "very " * 60 + "long name"]
    plan = ovs.text.prefix_plan(names, templates, model.config["text"]["context"])
    expected = np.array([[5, 4, 76, 3, 0],
                         [5, 5, 76, 2, 0],
                         [5, 5, 76, 2, 0],
                         [5, 5, 76, 2, 0],
                         [5, 4, 76, 3, 0]])
    assert np.array_equal(plan, expected), plan
    # The shared tokens are the prompt's own first tokens.
    for i, n in enumerate(names):
        for j, t in enumerate(templates):
            row, p = ovs.tokenize([t.format(n)])[0], plan[i, j]
            assert p < row.argmax() + 1
            assert np.array_equal(row[:p], ovs.text.template_prefix(t, 77)[:p])


def test_encode_prompts_matches_open_clip(model, open_clip_reference):
    prompts = [t.format(n) for n in NAMES for t in OPEN_CLIP_TEMPLATES]
    ref = open_clip_reference(prompts).reshape(len(NAMES), len(OPEN_CLIP_TEMPLATES), -1)
    got = model.encode_prompts(NAMES, OPEN_CLIP_TEMPLATES)
    assert got.dtype == np.float32 and got.shape == ref.shape, (got.dtype, got.shape)
    shared = ovs.text.prefix_plan(NAMES, OPEN_CLIP_TEMPLATES, model.config["text"]["context"]) > 0
    assert shared.mean() > 0.9, f"only {shared.mean():.0%} of the prompts took the prefix path"
    assert_close(got, ref, rtol=RTOL, name="encode_prompts vs open_clip")
    for i, name in enumerate(NAMES):   # per name: a bad row must not hide in the global scale
        assert_close(got[i], ref[i], rtol=RTOL, name=f"{name[:20]!r} vs open_clip")


@pytest.mark.parametrize("templates", ["imagenet80", "vild", "simple", "bare", EXTRA_TEMPLATES])
def test_prefix_path_equals_plain_path(model, templates):
    fast = model.encode_prompts(NAMES, templates)
    plain = model.encode_prompts(NAMES, templates, share_prefix=False)
    assert_close(fast, plain, rtol=RTOL, name=f"{templates}: prefix vs plain")
    tmpl = get_templates(templates)
    direct = model.encode_text([t.format(n) for n in NAMES for t in tmpl])
    assert np.array_equal(plain.reshape(direct.shape), direct), "share_prefix=False is not encode_text"


def test_classifier_matches_open_clip(model, open_clip_reference):
    """text_classifier (prefix path) against normalise-mean-normalise over open_clip's
    embeddings, synonyms included."""
    classes = ["sofa, couch", "猫"]
    tmpl = get_templates("imagenet80")
    rows = []
    for c in classes:
        syn = [s.strip() for s in c.replace(", ", ",").split(",")]
        e = open_clip_reference([t.format(s) for s in syn for t in tmpl])
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        m = e.mean(axis=0)
        rows.append(m / np.linalg.norm(m))
    fresh = ovs.Model(model.state_dict, act=model.act)   # no cached embeddings
    assert_close(fresh.text_classifier(classes), np.stack(rows), rtol=RTOL, name="classifier")


def test_rows_do_not_depend_on_the_batch_or_threads(model):
    """A prompt's embedding is the same bits alone or among other names (other prompt lengths,
    other positions), with 1 or 2 threads."""
    target = "traffic cone"
    others = ["cat", "very " * 60 + "long name", "", "猫", "wet asphalt"]
    threads = ovs.get_num_threads()
    try:
        ovs.set_num_threads(1)
        alone = model.encode_prompts([target], "imagenet80")[0]
        for n_threads in (1, 2):
            ovs.set_num_threads(n_threads)
            for batch in ([target] + others, others + [target], others[:2] + [target] + others[2:]):
                got = model.encode_prompts(batch, "imagenet80", batch_size=3)[batch.index(target)]
                assert np.array_equal(got, alone), (
                    f"{n_threads} threads, position {batch.index(target)}: max diff "
                    f"{np.abs(got - alone).max():.3e}")
    finally:
        ovs.set_num_threads(threads)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar(model, monkeypatch):
    """Shown on a terminal once encoding is slower than PROGRESS_DELAY_S (0 here), never with
    progress=False or when stderr is not a terminal."""
    monkeypatch.setattr(ovs.text, "PROGRESS_DELAY_S", 0.0)
    names = ["cat", "dog", "wet asphalt"]
    for stream, progress, shown in ((_Terminal(), True, True), (_Terminal(), False, False),
                                    (io.StringIO(), True, False)):
        monkeypatch.setattr(sys, "stderr", stream)
        fresh = ovs.Model(model.state_dict, act=model.act)
        fresh.text_classifier(names, progress=progress)
        text = stream.getvalue()
        assert ("prompt" in text) == shown, (progress, stream.isatty(), text[-200:])
        if shown:
            assert f"/{3 * 80} " in text, text[-200:]


def test_bad_inputs_raise(model):
    with pytest.raises(TypeError, match="not one string"):
        model.encode_prompts("cat")
    with pytest.raises(ValueError, match="names is empty"):
        model.encode_prompts([])
    with pytest.raises(TypeError, match=r"names\[1\] must be str, got int"):
        model.encode_prompts(["cat", 3])
    with pytest.raises(ValueError, match="exactly one"):
        model.encode_prompts(["cat"], ["no placeholder"])
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        model.encode_prompts(["cat"], batch_size=0)
    text = model.text
    with pytest.raises(ValueError, match="a prefix must have 1..76 tokens, got 77"):
        text.prefix(np.zeros(77, np.int32))
    with pytest.raises(ValueError, match="a prefix must have 1..76 tokens, got 0"):
        text.prefix(np.zeros(0, np.int32))
    with pytest.raises(ValueError, match=r"outside 0\.\.49407"):
        text.prefix(np.array([49406, 49408], np.int32))
    with pytest.raises(TypeError, match="prefix ids must be an integer"):
        text.prefix(np.zeros(3, np.float32))
    kv = text.prefix(np.array([49406, 320], np.int32))
    assert kv.shape == (2, 2, 256) and kv.dtype == np.float32
    suffix = np.array([[2368, 49407]], np.int32)
    with pytest.raises(ValueError, match="prefix cache must be float32"):
        text.forward_prefixed(kv.astype(np.float64), suffix)
    with pytest.raises(ValueError, match="prefix cache must be float32"):
        text.forward_prefixed(kv[:, :, :128], suffix)
    with pytest.raises(ValueError, match="do not fit"):
        text.forward_prefixed(kv, np.zeros((1, 76), np.int32))
    with pytest.raises(ValueError, match="suffix ids must have 2 dimension"):
        text.forward_prefixed(kv, suffix[0])
    with pytest.raises(ValueError, match=r"token id -1 at \[0, 1\]"):
        text.forward_prefixed(kv, np.array([[2368, -1]], np.int32))
    assert text.forward_prefixed(kv, suffix[:0]).shape == (0, model.embed_dim_text)


def test_token_positions():
    """Positions the tower runs: 'a photo of a cat.' is <start_of_text> a photo of a | cat . <end>
    (5 shared + 3), "{}" has nothing to share."""
    names, templates = ["cat", "traffic cone"], ["a photo of a {}.", "{}"]
    lengths = [int(r.argmax()) + 1 for r in ovs.tokenize([t.format(n) for n in names for t in templates])]
    assert lengths == [8, 3, 9, 4], lengths
    got = ovs.text.token_positions(names, templates)
    assert got == {"prompts": 4, "full_context": 4 * 77, "end_of_text": 24,
                   "shared_prefix": 5 + (8 - 5) + (9 - 5) + 3 + 4, "prefixes": 1,
                   "plain_path_prompts": 2}, got
