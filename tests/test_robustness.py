"""Robustness: allocation-failure injection, reference and memory leaks, threads, text input
edge cases and the text-embedding cache (memory, disk, damaged, concurrent). Segmenter API edge
cases are in test_segment_api.py, the command line in test_cli.py, weight files (safetensors,
corrupt or incomplete files through ovs.load) in test_weights.py, torch/TorchScript files in
test_torch_reader.py, weights by name (hub, offline, $OVS_WEIGHTS_DIR) in test_hub.py.

Failure injection: conftest.inject_alloc_failures(fn) fails each C allocation of one call of
fn in turn (``_core.debug_fail_alloc``): the call must either succeed with the same result or
raise MemoryError -- never crash, never raise anything else -- and a normal call afterwards must
give the first run's result again.
"""
from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import ovs
from ovs import _core
from ovs.weights import load_state_dict

from conftest import assert_same, inject_alloc_failures

PAGE = os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def vit_path(fixtures_dir) -> Path:
    return fixtures_dir / "vit_tiny.safetensors"


@pytest.fixture(scope="module")
def rn_path(fixtures_dir) -> Path:
    return fixtures_dir / "rn_tiny.safetensors"


@pytest.fixture(scope="module")
def vit(vit_path):
    """A private tiny ViT (module scope: tests here never modify it)."""
    return ovs.load(vit_path, act="gelu")


@pytest.fixture(scope="module")
def rn(rn_path):
    return ovs.load(rn_path, act="gelu")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)


def _rel(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)) if a.size else 0.0


# ------------------------------------------------------------------------------ 1. failure injection
@pytest.fixture
def restore_threads():
    n = ovs.get_num_threads()
    yield
    ovs.set_num_threads(n)


@pytest.fixture
def one_thread():
    """Deterministic allocation counts, and no OpenMP barrier contention on a busy machine in the
    long loops (threads are the subject of test_num_threads_* and test_two_*)."""
    n = ovs.get_num_threads()
    ovs.set_num_threads(1)
    yield
    ovs.set_num_threads(n)


def test_fail_alloc_counter_resets():
    _core.debug_fail_alloc(0)
    try:
        ovs.tokenize(["a photo of a cat."])
        assert _core.debug_fail_alloc(0) > 0
        assert _core.debug_fail_alloc(0) == 0  # nothing allocated between the two calls
    finally:
        _core.debug_fail_alloc(0)


@pytest.fixture(scope="module")
def state_dicts(fixtures_dir):
    return {name: load_state_dict(fixtures_dir / f"{name}.safetensors")
            for name in ("vit_tiny", "rn_tiny")}


@pytest.mark.parametrize("name", ["vit_tiny", "rn_tiny"])
def test_fail_alloc_model_build(fixtures_dir, state_dicts, name, image, one_thread):
    path = fixtures_dir / f"{name}.safetensors"
    sd = state_dicts[name]
    words = ["a photo of a cat.", "grass"]

    def outputs(m):
        return {"image": m.encode_image(image), "text": m.encode_text(words)}

    inject_alloc_failures(lambda: ovs.Model(sd, act="gelu"), f"ovs.Model({name})", outputs)
    inject_alloc_failures(lambda: ovs.load(path, act="gelu"), f"ovs.load({name})", outputs)


@pytest.mark.parametrize("name", ["vit_tiny", "rn_tiny"])
def test_fail_alloc_encode(state_dicts, name, image, one_thread):
    sd = state_dicts[name]
    fresh = lambda: ovs.Model(sd, act="gelu")  # noqa: E731
    batch = np.stack([image, image[::-1]])
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    inject_alloc_failures(lambda m: m.encode_image(batch), f"{name}.encode_image", setup=fresh)
    inject_alloc_failures(lambda m: m.image_features(x), f"{name}.image_features", setup=fresh)
    texts = ["a photo of a cat.", "a dog", ""]
    inject_alloc_failures(lambda m: m.encode_text(texts), f"{name}.encode_text", setup=fresh)
    # A warmed-up model allocates nothing for an input that fits its arenas, and a bigger
    # input grows them: fail those allocations too.
    def warm():
        m = fresh()
        m.encode_image(image)
        return m

    big = np.random.default_rng(2).standard_normal((3, 3, 96, 128)).astype(np.float32)
    inject_alloc_failures(lambda m: m.image_features(big), f"{name}.image_features (arena growth)", setup=warm)


def test_fail_alloc_text_classifier(state_dicts, one_thread):
    def setup():
        return ovs.Model(state_dicts["vit_tiny"], act="gelu")  # empty text cache and arenas

    inject_alloc_failures(lambda m: m.text_classifier(["cat", "sofa, couch"], templates="simple"),
            "text_classifier", setup=setup)


@pytest.mark.parametrize("name,method,threads", [("vit_tiny", "naclip", 1),
                                                 ("vit_tiny", "naclip", 2),
                                                 ("vit_tiny", "sclip", 1),
                                                 ("rn_tiny", "maskclip", 1)])
def test_fail_alloc_segment(state_dicts, image, name, method, threads, restore_threads):
    ovs.set_num_threads(threads)
    names = ["cat", "grass", "sky"]
    base = ovs.Model(state_dicts[name], act="gelu")
    cls = base.text_classifier(names)
    digest = base.weights_digest()

    def setup(**kw):
        def build():
            model = ovs.Model(state_dicts[name], act="gelu")
            model._digest = digest  # same weights: skip re-hashing the text tower
            # Small processing size and windows: the windowed pipeline (several crops,
            # padding) runs in milliseconds. The classifier is cached, so that the count
            # covers the image pipeline.
            for n, row in zip(names, cls):
                model.text_cache[(_templates_key("imagenet80"), n)] = row
            return ovs.Segmenter(model, method=method, **kw)
        return build

    win = setup(short_side=48, window=(32, 16))
    inject_alloc_failures(lambda s: s.segment(image, names), f"{method}.segment", setup=win)
    if threads > 1:
        return  # the rest is thread-independent; slow when other processes share the cores
    inject_alloc_failures(lambda s: s.predict(image, names), f"{method}.predict", setup=win)
    whole = setup(short_side=None, window=None)
    inject_alloc_failures(lambda s: s.logits(image, names), f"{method}.logits (whole image)", setup=whole)
    # Segmenter construction itself (C head objects).
    model = ovs.Model(state_dicts[name], act="gelu")
    inject_alloc_failures(lambda: ovs.Segmenter(model, method=method, short_side=48, window=(32, 16)),
            f"Segmenter({method})", lambda s: s.segment(image, names))


@pytest.mark.parametrize("names,kw,stage", [
    (["cat", "grass", "sky"], {}, r"label stage: block buffers of 3 classes"),          # ovs_seg_labels
    (["cat", "grass"], {}, r"label stage: row buffer of 2 classes"),                   # its naive twin
    (["cat", "grass", "sky"], {"area_threshold": 0.4}, r"grouped label stage: row buffer of 3 queries"),
])
def test_fail_alloc_label_stage_worker_message(vit, image, names, kw, stage, restore_threads):
    """Every thread of the label stage's parallel region allocates its own buffers. A failed
    allocation on any of them -- the worker thread's too -- must reach the caller as a MemoryError
    with that thread's own message (what ran out and its size), not a generic or stale one: at 2
    threads, twice as many allocations fail with it as at 1 thread."""
    seg = ovs.Segmenter(vit, method="naclip", short_side=None, window=None, **kw)
    pattern = re.compile(stage + r": out of memory \(injected failure, \d+ bytes\)")

    def region_failures(threads):
        ovs.set_num_threads(threads)
        ref = seg.segment(image, names)  # warm: arenas sized, text classifier cached
        _core.debug_fail_alloc(0)
        assert np.array_equal(seg.segment(image, names), ref)
        n = _core.debug_fail_alloc(0)
        hits = 0
        try:
            for i in range(1, n + 1):
                _core.debug_fail_alloc(i)
                try:
                    out = seg.segment(image, names)
                except MemoryError as err:
                    msg = str(err)
                    if msg.startswith(stage.split(":")[0] + ":"):  # a failure in the region
                        assert pattern.fullmatch(msg), msg
                        hits += 1
                    continue
                finally:
                    _core.debug_fail_alloc(0)
                assert np.array_equal(out, ref), f"allocation {i}/{n} failed, call succeeded"
        finally:
            _core.debug_fail_alloc(0)
        assert np.array_equal(seg.segment(image, names), ref)
        return hits

    one = region_failures(1)
    assert one >= 1, f"no allocation of the {stage!r} region failed"
    assert region_failures(2) == 2 * one


def _templates_key(templates) -> str:
    import hashlib

    from ovs.templates import get_templates

    return hashlib.sha256("\x1f".join(get_templates(templates)).encode()).hexdigest()[:16]


def test_fail_alloc_tokenize(one_thread):
    long_word = "x" * 5000  # longer than the tokenizer's stack buffer: heap path
    texts = ["a photo of a cat.", "ünïcödé text &amp; more", long_word, ""]
    inject_alloc_failures(lambda: ovs.tokenize(texts), "tokenize")
    from ovs.tokenizer import Tokenizer

    inject_alloc_failures(lambda: Tokenizer().encode("a photo of a cat"), "Tokenizer()")


# ------------------------------------------------------------------------------ 2. leaks
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _refcounts(objs):
    return [sys.getrefcount(o) for o in objs]


def test_refcounts_unchanged(vit, rn, image, one_thread):
    names = ["cat", "grass", "sky"]
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    xf = np.asfortranarray(x)
    ids = ovs.tokenize(["a photo of a cat.", "dog"])
    texts = ["a photo of a cat.", "dog"]
    seg = ovs.Segmenter(vit, short_side=None, window=None)
    seg_rn = ovs.Segmenter(rn, short_side=None, window=None)
    low = seg.logits(image, names)
    low_cls = vit.text_classifier(names)
    bad_img = image.astype(np.float32)
    bad_img[0, 0, 0] = np.nan
    bad_x = x.copy()
    bad_x[0, 1, 2, 3] = np.inf

    def refs(out):
        if isinstance(out, dict):
            return sorted({sys.getrefcount(v) for v in out.values()}) + [sys.getrefcount(out)]
        return [sys.getrefcount(out)]

    def measure(out):  # the same call depth as fresh()
        return refs(out)

    baseline = {False: measure(np.empty(1)), True: measure({"a": np.empty(1), "b": np.empty(2)})}

    def fresh(out, what):
        """A returned object must be referenced by the caller only, as a new one is."""
        got = refs(out)
        expected = baseline[isinstance(out, dict)]
        assert got == expected, f"{what}: reference counts {got} != {expected} (a leaked result?)"

    def calls():
        fresh(vit.encode_image(image), "encode_image")
        fresh(vit.encode_image(x, preprocess=False), "encode_image(float)")
        fresh(vit.encode_image(xf, preprocess=False), "encode_image(Fortran)")
        fresh(rn.image_features(x), "image_features")
        fresh(vit.visual.forward(x, all_tokens=True, tokens=True), "ViT.forward")
        fresh(vit.encode_tokens(ids), "encode_tokens")
        fresh(vit.text.forward(ids, True), "TextTower.forward")
        fresh(vit.encode_text(texts), "encode_text")
        fresh(vit.text.prefix(ids[0, :3]), "TextTower.prefix")
        kv = vit.text.prefix(ids[0, :3])
        fresh(vit.text.forward_prefixed(kv, ids[:, 3:]), "TextTower.forward_prefixed")
        fresh(vit.encode_prompts(["cat", "dog"], "simple"), "encode_prompts")
        fresh(ovs.tokenize(texts), "tokenize")
        fresh(seg.segment(image, names), "segment")
        fresh(seg.predict(image, names), "predict")
        fresh(seg_rn.segment(image, names), "segment(rn)")
        fresh(seg._seg.logits(image, 24, 30, vit.mean, vit.std, low_cls), "Segmenter.logits")
        fresh(_core.seg_labels(low, 20, 30, logit_scale=40.0, bg_threshold=0.5, bg_label=-1),
              "seg_labels")
        fresh(_core.seg_upsample(low, 20, 30, logit_scale=40.0, softmax=True), "seg_upsample")
        for bad in (lambda: vit.encode_image(bad_img), lambda: seg.segment(bad_img, names),
                    lambda: vit.encode_image(x[:, :, :30], preprocess=False),
                    lambda: _core.seg_labels(low, 0, 5), lambda: seg.segment(image, ["a", 1]),
                    lambda: vit.encode_text(["a", None]), lambda: rn.image_features(bad_x),
                    lambda: vit.text.forward_prefixed(kv[:, :, 1:], ids[:, 3:]),
                    lambda: vit.text.prefix(ids[0, :0])):
            try:
                bad()
            except (TypeError, ValueError):
                pass
            else:
                raise AssertionError("a bad input was accepted")
        # Out-of-memory error paths (these calls allocate on every run; a warm model's forward
        # reuses its arenas).
        for oom in (lambda: _core.seg_labels(low, 20, 30, logit_scale=40.0),
                    lambda: ovs.tokenize(texts), lambda: ovs.Segmenter(vit, method="sclip")):
            _core.debug_fail_alloc(1)
            try:
                oom()
            except MemoryError:
                pass
            else:
                raise AssertionError("the injected allocation failure was not reported")
            finally:
                _core.debug_fail_alloc(0)

    objs = [image, x, xf, ids, texts, names, low, low_cls, bad_img, bad_x, vit, rn, seg, vit.visual,
            vit.text, seg._seg] + names + texts
    calls()
    before = _refcounts(objs)
    for _ in range(20):
        calls()
    after = _refcounts(objs)
    changed = [(i, b, a) for i, (b, a) in enumerate(zip(before, after)) if a != b]
    assert not changed, f"reference counts changed (index, before, after): {changed}"


def _rss_growth(fn, calls: int = 1000, warmup: int = 50) -> int:
    for _ in range(warmup):
        fn()
    start = _rss()
    for _ in range(calls):
        fn()
    return _rss() - start


def test_rss_flat_encode_image(vit, image, one_thread):
    small = image[:32, :32]
    growth = _rss_growth(lambda: vit.encode_image(small))
    assert growth < 3 << 20, f"RSS grew by {growth / 2**20:.1f} MiB over 1,000 encode_image calls"


def test_rss_flat_segment(vit, image, one_thread):
    names = ["cat", "grass", "sky"]
    seg = ovs.Segmenter(vit, short_side=None, window=None)
    small = image[:24, :32]
    growth = _rss_growth(lambda: seg.segment(small, names))
    assert growth < 3 << 20, f"RSS grew by {growth / 2**20:.1f} MiB over 1,000 segment calls"


# ------------------------------------------------------------------------------ 3. threads
def test_num_threads_same_results(vit, rn, image, restore_threads):
    x = np.random.default_rng(3).standard_normal((2, 3, 96, 96)).astype(np.float32)
    names = ["cat", "grass", "sky", "sofa, couch"]
    segs = [ovs.Segmenter(vit, method="naclip", short_side=112, window=(64, 32)),
            ovs.Segmenter(vit, method="clearclip", short_side=96, window=None),
            ovs.Segmenter(rn, method="maskclip", short_side=128, window=(96, 64))]
    texts = [f"a photo of a {w}." for w in ("cat", "dog", "very long " * 10 + "word")]

    def run():
        return {"vit_tokens": vit.image_features(x)["tokens"], "vit_embed": vit.encode_image(x, False),
                "rn": rn.image_features(x), "text": vit.encode_text(texts),
                **{f"seg_{s.method}": s.logits(image, names) for s in segs}}

    ovs.set_num_threads(1)
    assert ovs.get_num_threads() == 1
    one = run()
    ovs.set_num_threads(2)
    assert ovs.get_num_threads() == 2
    two = run()
    for k in one:
        for sub, a in (one[k].items() if isinstance(one[k], dict) else [("", one[k])]):
            b = two[k][sub] if sub else two[k]
            rel = _rel(b, a)
            assert rel <= 1e-5, f"{k}{sub}: 1 vs 2 threads differ, relative error {rel:.2e}"


def _concurrent(jobs, repeats: int = 3):
    """Run each job in its own thread, all released at once; returns each job's results."""
    barrier = threading.Barrier(len(jobs))
    results = [None] * len(jobs)
    errors = []

    def worker(k):
        try:
            barrier.wait()
            results[k] = [jobs[k]() for _ in range(repeats)]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    if errors:
        raise errors[0]
    return results


def test_two_threads_same_model(vit, image):
    names = ["cat", "grass", "sky"]
    seg = ovs.Segmenter(vit, short_side=64, window=(32, 16))
    other = image[::-1, ::2].copy()
    jobs = [lambda: vit.encode_image(image), lambda: vit.encode_image(other),
            lambda: seg.segment(image, names), lambda: seg.logits(other, names),
            lambda: vit.encode_text(["a photo of a cat.", "grass"])]
    expected = [job() for job in jobs]
    got = _concurrent(jobs)
    for k, (exp, res) in enumerate(zip(expected, got)):
        for r in res:
            assert_same(r, exp, f"job {k} run concurrently")


def test_two_models_do_not_interfere(vit_path, rn_path, image):
    a = ovs.load(vit_path, act="gelu")
    b = ovs.load(rn_path, act="gelu")
    names = ["cat", "grass"]
    sa = ovs.Segmenter(a, short_side=64, window=(32, 16))
    sb = ovs.Segmenter(b, short_side=64, window=(64, 32))
    jobs = [lambda: a.encode_image(image), lambda: b.encode_image(image),
            lambda: sa.predict(image, names), lambda: sb.predict(image, names)]
    expected = [job() for job in jobs]
    c = ovs.load(vit_path, act="gelu")  # a third model: loading it must not disturb the others
    c.set_weight("visual.ln_post.weight", np.zeros_like(c.state_dict["visual.ln_post.weight"]))
    for k, job in enumerate(jobs):
        assert_same(job(), expected[k], f"job {k} after loading another model")
    for k, res in enumerate(_concurrent(jobs)):
        for r in res:
            assert_same(r, expected[k], f"job {k} run concurrently with another model")


# ------------------------------------------------------------------------------ 5. text
@pytest.mark.parametrize("bad", [None, b"a photo", ["a photo", 3], ["ok", None], 42,
                                 np.array(["a", "b"])])
def test_text_bad_types(vit, bad):
    with pytest.raises(TypeError):
        ovs.tokenize(bad)
    with pytest.raises(TypeError):
        vit.encode_text(bad)


def test_text_empty_list(vit):
    ids = ovs.tokenize([])
    assert ids.shape == (0, 77) and ids.dtype == np.int32, (ids.shape, ids.dtype)
    emb = vit.encode_text([])
    assert emb.shape == (0, vit.embed_dim) and emb.dtype == np.float32, (emb.shape, emb.dtype)


def test_text_100kb(vit):
    rng = np.random.default_rng(4)
    words = ["".join(chr(c) for c in rng.integers(97, 123, rng.integers(1, 12)))
             for _ in range(20000)]
    text = " ".join(words)[:100_000]
    assert len(text) == 100_000
    ids = ovs.tokenize(text)
    head = ovs.tokenize(" ".join(words[:200]))  # the first 75 tokens come from these words
    assert_same(ids, head, "tokenize(100 kB) vs its first words")
    assert ids[0, -1] == 49407, "a truncated text must end with <end_of_text>"
    assert_same(vit.encode_text(text), vit.encode_text(" ".join(words[:200])), "encode_text(100 kB)")
    uni = "".join(chr(c) for c in rng.integers(0x20, 0x3000, 100_000))
    assert ovs.tokenize(uni).shape == (1, 77)


def test_templates_validation(vit):
    with pytest.raises(ValueError, match=r"\{\}"):
        vit.text_classifier(["cat"], templates=["a photo of a cat"])
    with pytest.raises(ValueError, match=r"\{\}"):
        vit.text_classifier(["cat"], templates=["a {} photo", "no placeholder"])
    with pytest.raises(ValueError):
        vit.text_classifier(["cat"], templates=[])
    with pytest.raises(ValueError):
        vit.text_classifier(["cat"], templates="no-such-template-set")


def _encode_text_calls(monkeypatch):
    """Prompts encoded by text_classifier (which encodes through ovs.text.encode_prompts)."""
    import ovs.text
    from ovs.templates import get_templates

    calls = []
    orig = ovs.text.encode_prompts

    def counting(text, names, templates="imagenet80", **kw):
        calls.append(len(names) * len(get_templates(templates)))
        return orig(text, names, templates, **kw)

    monkeypatch.setattr(ovs.text, "encode_prompts", counting)
    return calls


def test_text_cache(vit_path, tmp_path, monkeypatch, one_thread):
    import time

    monkeypatch.delenv("OVS_CACHE_DIR", raising=False)
    names = [f"class number {i}" for i in range(150)]
    model = ovs.load(vit_path, act="gelu")
    calls = _encode_text_calls(monkeypatch)
    t0 = time.perf_counter()
    first = model.text_classifier(names, templates="imagenet80", cache_dir=tmp_path)
    t1 = time.perf_counter()
    second = model.text_classifier(names, templates="imagenet80", cache_dir=tmp_path)
    t2 = time.perf_counter()
    assert sum(calls) == 150 * 80, f"encode_text saw {sum(calls)} prompts, expected 12,000"
    assert first.shape == (150, model.embed_dim)
    assert_same(second, first, "second text_classifier call")
    assert (t1 - t0) > 5 * (t2 - t1), \
        f"cached call took {t2 - t1:.3f}s vs {t1 - t0:.3f}s: the memory cache is not used"
    n_calls = len(calls)

    # A fresh model on the same weights reads the disk cache: no text encoding at all.
    fresh = ovs.load(vit_path, act="gelu")
    from_disk = fresh.text_classifier(names, templates="imagenet80", cache_dir=tmp_path)
    assert len(calls) == n_calls, "a fresh model re-encoded text despite the disk cache"
    assert_same(from_disk, first, "classifier from the disk cache")
    # $OVS_CACHE_DIR/text is the default disk location.
    monkeypatch.setenv("OVS_CACHE_DIR", str(tmp_path / "env"))
    fresh.text_classifier(["a class not seen yet"], templates="imagenet80")
    assert any((tmp_path / "env" / "text").rglob("*.npy")), "nothing written under $OVS_CACHE_DIR/text"
    monkeypatch.delenv("OVS_CACHE_DIR")
    n_calls = len(calls)

    # Changing a text weight changes the key: recomputed, different, and not from the disk.
    digest = fresh.weights_digest()
    w = fresh.state_dict["text_projection"] * 1.5 + 0.01
    fresh.set_weight("text_projection", w)
    assert fresh.weights_digest() != digest, "the cache key did not change after set_weight"
    changed = fresh.text_classifier(names[:5], templates="imagenet80", cache_dir=tmp_path)
    assert sum(calls[n_calls:]) == 5 * 80, "set_weight did not invalidate the cache"
    assert _rel(changed, first[:5]) > 1e-3, "classifier unchanged after set_weight on a text weight"
    # ... and an image weight does not touch the text cache key.
    digest = fresh.weights_digest()
    fresh.set_weight("visual.ln_post.bias", fresh.state_dict["visual.ln_post.bias"] + 1)
    assert fresh.weights_digest() == digest


def test_text_cache_damaged_or_unwritable(vit_path, tmp_path):
    """The disk cache is an optimisation: damaged entries are recomputed (and rewritten), and a
    cache folder that cannot be written gives a warning, not a failure."""
    import glob

    names = ["dog", "bird", "fish", "tree"]
    ref = ovs.load(vit_path, act="gelu").text_classifier(names, templates="simple",
                                                         cache_dir=tmp_path / "c")
    files = sorted(glob.glob(str(tmp_path / "c" / "**" / "*.npy"), recursive=True))
    assert len(files) == 4, files
    Path(files[0]).write_bytes(b"")
    Path(files[1]).write_bytes(Path(files[1]).read_bytes()[:100])
    Path(files[2]).write_bytes(np.random.default_rng(0).bytes(300))
    np.save(files[3], np.zeros(3, np.float32))  # wrong shape
    fresh = ovs.load(vit_path, act="gelu")
    got = fresh.text_classifier(names, templates="simple", cache_dir=tmp_path / "c")
    assert_same(got, ref, "classifier with damaged cache entries")
    again = ovs.load(vit_path, act="gelu").text_classifier(names, templates="simple",
                                                           cache_dir=tmp_path / "c")
    assert_same(again, ref, "classifier from the rewritten entries")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.warns(RuntimeWarning, match="cache"):
        got = ovs.load(vit_path, act="gelu").text_classifier(names, templates="simple",
                                                             cache_dir=blocker)
    assert_same(got, ref, "classifier with an unwritable cache folder")


def test_text_cache_concurrent_writers(vit_path, tmp_path, monkeypatch):
    """Two threads (separate models, same weights) writing the same entry at the same time."""
    barrier = threading.Barrier(2)
    orig_save = np.save
    waited = set()

    def lockstep_save(*args, **kw):
        orig_save(*args, **kw)
        me = threading.get_ident()
        if me not in waited:  # the entry's save: both temporary files exist before either rename
            waited.add(me)
            barrier.wait(timeout=30)  # a BrokenBarrierError fails the test: no concurrency

    monkeypatch.setattr(np, "save", lockstep_save)
    models = [ovs.load(vit_path, act="gelu") for _ in range(2)]
    for m in models:
        m.weights_digest()
    results = _concurrent([lambda m=m: m.text_classifier(["zebra"], templates="simple",
                                                         cache_dir=tmp_path) for m in models],
                          repeats=1)
    assert_same(results[0][0], results[1][0], "concurrent classifiers")
    assert not list(tmp_path.rglob("*.tmp.npy")), "temporary files left behind"
