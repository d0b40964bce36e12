"""Reference fixtures for the CLIP tower parity tests, computed with open_clip (an independent
implementation) on randomly initialised models.

    python tests/reference/make_fixtures.py --out tests/_generated [--force]

or, from the tests, `ensure_fixtures(outdir)`, which regenerates only when the stamp (sha256 of
this file plus the versions of torch, open_clip and the other packages the outputs depend on)
differs from DIR/STAMP. This is the only place that imports torch / open_clip.

Files written to DIR:
    <model>.safetensors   full open_clip state dict (open_clip names; floating tensors float32,
                          BatchNorm `num_batches_tracked` kept as int64 as open_clip has them)
    <model>_image.npz     per case c in CASES: c_x (N, 3, H, W) input, c_embed (N, E) =
                          encode_image (not normalised); ResNets c_res2..c_res5 (N, C, h, w) =
                          outputs of visual.layer1..layer4; ViTs c_tokens (L, N, T, D) = output of
                          every residual block, batch-first, class token first
    <model>_text.npz      prompts (0-d str: JSON list), tokens (P, 77) int64 = open_clip.tokenize,
                          embed (P, E) = encode_text (not normalised)
    preprocess.npz        names (0-d str: JSON list); per name n: n_image (H, W, 3) uint8 and
                          n_pixels (3, 224, 224) float32 = open_clip.image_transform(224,
                          is_train=False)(PIL.Image.fromarray(image))
    manifest.json         architecture facts read from the open_clip modules (arch, act,
                          embed_dim, image_size, widths, heads...), case shapes, prompt sets
    STAMP                 written last

Models ("rn50", "vitb16": the real architectures; "rn_tiny", "vit_tiny": small ones with GELU).
The tiny towers keep open_clip's head width of 64 (heads = width / 64), the rule under which the
number of heads can be inferred from a state dict; a 16-wide head could not be told apart.

Random init is made harder to pass by accident: open_clip zeroes every bottleneck bn3.weight
and the attention in-projection / out-projection biases, and leaves BatchNorm / LayerNorm at
identity. Here every BatchNorm gets weight U(0.5, 1.5), bias N(0, 0.1), and running statistics
calibrated on a forward pass of unrelated images (running_mean = mean + N(0, 0.1) * std,
running_var = var * U(0.5, 1.5), per channel); without the calibration the default-init convs
shrink the signal layer by layer and the output would hardly depend on the input. Every
LayerNorm gets weight U(0.8, 1.2), bias N(0, 0.05); attention biases get N(0, 0.05), and the
query/key projections are scaled by QK_SCALE so attention is not nearly uniform. The script
then checks that no floating tensor of the state dict is constant, and that every stored output
is finite with max |x| in [0.1, 1000].

Precision: every stored output is computed in float64 from exactly the stored float32 weights
and float32 inputs, then rounded to float32, so the references carry no float32 rounding of
their own. Random deep ReLU networks amplify rounding (open_clip's own float32 RN50 is ~2e-5 off
at res5); the script measures open_clip's float32 forward against the stored tensors (the
single-image cases and the text embeddings), records the errors in the manifest
(open_clip_float32_rel_err) and fails if one exceeds half the tests' tolerance.

Non-square cases: open_clip's positional embeddings are fixed to the training grid, so those
references come from an explicit forward written below (the modules' weights and blocks reused,
the spatial part (1, D, g, g) of the positional embedding resized with F.interpolate(bicubic,
align_corners=False), class position kept). At the training size the explicit forward is checked
against open_clip's own encode_image / block outputs; at the non-square sizes it is checked
against open_clip's own forward run with the resized positional embedding swapped in for the
duration of the call (and restored).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import hashlib
import json
import os
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

MODELS = ("rn50", "vitb16", "rn_tiny", "vit_tiny")
CASES = ("sq_b1", "sq_b4", "rect_b1")
PREPROCESS_SIZE = 224
STAMP_NAME = "STAMP"
MANIFEST_NAME = "manifest.json"

# Stored-output sanity bounds (max |x| per tensor).
ACT_MIN, ACT_MAX = 0.1, 1000.0
# Multiplier of the attention query and key projections (see _randomise).
QK_SCALE = 1.6
# Errors are relative: max |a - b| / max |b| per tensor.
# The explicit float64 forward must match open_clip's float64 forward to this.
SELF_CHECK_RTOL = 1e-9
# The tests' tolerance (tests/conftest.py); open_clip in float32 must stay within half of it
# of the stored (float64-computed) references, so a float32 implementation can pass.
TEST_RTOL = 1e-4
FLOAT32_BUDGET = TEST_RTOL / 2

# Dependencies whose behaviour is baked into the fixtures.
_STAMP_DISTS = ("torch", "open_clip_torch", "torchvision", "pillow", "numpy", "safetensors",
                "ftfy", "regex")

# (H, W) of the preprocessing images: square, landscape, odd sizes, portrait, very wide, tiny.
PREPROCESS_SHAPES = {
    "sq224": (224, 224),
    "land480x640": (480, 640),
    "odd333x517": (333, 517),
    "port100x60": (100, 60),
    "wide300x1024": (300, 1024),
    "tiny7x9": (7, 9),
}

# Prompts for the text_classifier tests: these classes x templates are in every text fixture,
# and the tiny models' fixtures also hold the classes x open_clip's 80 ImageNet templates.
CLASSIFIER_CLASSES = ("cat", "traffic cone")
CLASSIFIER_TEMPLATES = ("a photo of a {}.", "a blurry photo of the {}.", "itap of a {}.")

BASE_PROMPTS = (
    # class names
    "cat", "dog", "person", "traffic cone", "wet asphalt", "sky", "potted plant", "tv monitor",
    # templates
    "a photo of a dog.", "a bad photo of a person.", "a sculpture of the sky.",
    "a photo of many potted plants.", "there is a wet asphalt in the scene.",
    # case, whitespace, punctuation, digits, html entities (ftfy / whitespace cleanup)
    "A PHOTO OF A CAT", "  multiple   spaces\tand\ttabs\nand newlines  ",
    "don't stop!!! ... ok?", "1234567890 3.14159 2024-11-27", "fish &amp; chips",
    "it's a 'quoted' \"word\"", "hyphen-ated_under_scored/slashed", "x",
    # unicode
    "café crème brûlée", "naïve résumé façade", "東京タワーの写真", "a photo of a 🐱 cat 🚦",
    "Ünïcödé ßtraße", "Ελληνικά κείμενο", "Привет мир", "مرحبا بالعالم",
    # empty, near and over the 77-token context
    "",
    "a photo of a " + "very " * 68 + "big cat.",
    "a photo of a " + "very " * 80 + "big cat.",
    " ".join(f"word{i}" for i in range(60)),
    "supercalifragilisticexpialidocious" * 8,
)


# ---------------------------------------------------------------------------------- stamping

def compute_stamp() -> str:
    """sha256 of this script's source and of the versions its outputs depend on (no torch import)."""
    h = hashlib.sha256(Path(__file__).resolve().read_bytes())
    for dist in _STAMP_DISTS:
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = "absent"
        h.update(f"\n{dist}=={version}".encode())
    return h.hexdigest()


def expected_files() -> list[str]:
    files = [MANIFEST_NAME, "preprocess.npz"]
    for name in MODELS:
        files += [f"{name}.safetensors", f"{name}_image.npz", f"{name}_text.npz"]
    return files


def fixtures_current(outdir: Path) -> bool:
    stamp = outdir / STAMP_NAME
    if not stamp.is_file() or stamp.read_text().strip() != compute_stamp():
        return False
    return all((outdir / f).is_file() for f in expected_files())


def ensure_fixtures(outdir, force: bool = False, verbose: bool = False) -> Path:
    """Make sure DIR holds fixtures made by this script with the installed packages; return DIR.

    Safe against concurrent callers (an flock on DIR/.lock serialises generation)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    with open(outdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and fixtures_current(outdir):
            return outdir
        (outdir / STAMP_NAME).unlink(missing_ok=True)
        generate(outdir, verbose=verbose)
        _write_atomic(outdir / STAMP_NAME, lambda p: Path(p).write_text(compute_stamp() + "\n"))
    return outdir


def _write_atomic(path: Path, writer) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_npz(path: Path, arrays: dict) -> None:
    def writer(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    _write_atomic(path, writer)


# ---------------------------------------------------------------------------------- generation

def generate(outdir: Path, verbose: bool = False) -> None:
    import torch

    log = print if verbose else (lambda *a, **k: None)
    torch.set_num_threads(2)
    manifest = {"models": {}, "cases": list(CASES), "test_rtol": TEST_RTOL,
                "classifier": {"classes": list(CLASSIFIER_CLASSES),
                               "templates": list(CLASSIFIER_TEMPLATES)},
                "imagenet_templates": _imagenet_templates()}
    t0 = time.perf_counter()
    with torch.no_grad():
        for seed, name in enumerate(MODELS):
            t = time.perf_counter()
            manifest["models"][name] = _make_model_fixtures(name, seed, outdir, log)
            log(f"[{name}] done in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        manifest["preprocess"] = _make_preprocess_fixtures(outdir)
        log(f"[preprocess] done in {time.perf_counter() - t:.1f} s")
    _write_atomic(outdir / MANIFEST_NAME,
                  lambda p: Path(p).write_text(json.dumps(manifest, indent=1, ensure_ascii=False)))
    log(f"fixtures written to {outdir} in {time.perf_counter() - t0:.1f} s")


def _imagenet_templates() -> list[str]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    out = []
    for t in OPENAI_IMAGENET_TEMPLATES:
        s = t("{}")
        for c in CLASSIFIER_CLASSES:
            if s.format(c) != t(c):
                raise RuntimeError(f"template {s!r} does not fill like open_clip's")
        out.append(s)
    return out


def _build(name: str):
    """(model, act) for a fixture name; open_clip modules, pretrained=None (random init)."""
    import open_clip
    from open_clip.model import CLIP

    if name == "rn50":
        return open_clip.create_model("RN50-quickgelu", pretrained=None), "quickgelu"
    if name == "vitb16":
        return open_clip.create_model("ViT-B-16-quickgelu", pretrained=None), "quickgelu"
    text_cfg = dict(context_length=77, vocab_size=49408, width=128, heads=2, layers=2)
    if name == "rn_tiny":
        vision_cfg = dict(layers=[1, 2, 1, 1], width=16, head_width=64, image_size=96)
        return CLIP(embed_dim=48, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=False), "gelu"
    if name == "vit_tiny":
        vision_cfg = dict(layers=3, width=128, head_width=64, patch_size=8, image_size=32)
        return CLIP(embed_dim=40, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=False), "gelu"
    raise ValueError(name)


def _image_shapes(name: str, image_size: int) -> dict:
    rect = {"rn50": (192, 288), "vitb16": (160, 240), "rn_tiny": (64, 128), "vit_tiny": (24, 48)}
    s = image_size
    return {"sq_b1": (1, 3, s, s), "sq_b4": (4, 3, s, s), "rect_b1": (1, 3) + rect[name]}


def _make_model_fixtures(name: str, seed: int, outdir: Path, log) -> dict:
    import torch
    from open_clip.modified_resnet import ModifiedResNet
    from safetensors.torch import save_file

    torch.manual_seed(1000 + seed)
    rng = np.random.default_rng(1000 + seed)
    model, act = _build(name)
    model = model.float().eval()
    visual = model.visual
    is_resnet = isinstance(visual, ModifiedResNet)
    if is_resnet:
        image_size = int(visual.image_size)
        patch = 32
    else:
        assert visual.image_size[0] == visual.image_size[1]
        image_size = int(visual.image_size[0])
        patch = int(visual.patch_size[0])
        if not visual.transformer.batch_first:
            raise RuntimeError("expected a batch-first open_clip transformer")

    _randomise(model, rng)
    if is_resnet:
        _calibrate_batchnorm(visual, _images(rng, (2, 3, image_size, image_size)), rng)
    state = _state_dict_for_file(model)
    _check_not_constant(state)
    # References are computed in float64 from exactly the stored float32 weights and inputs
    # (so they carry no float32 rounding of their own); open_clip's float32 forward is kept as a
    # yardstick of what a float32 implementation can reach.
    model64 = copy.deepcopy(model).double()
    float32_err = {}

    # -------- image cases
    shapes = _image_shapes(name, image_size)
    image_arrays = {}
    for case, shape in shapes.items():
        if shape[2] % patch or shape[3] % patch:
            raise RuntimeError(f"{name}/{case}: {shape} not a multiple of {patch}")
        x = _images(rng, shape)
        square = shape[2] == shape[3] == image_size
        what = f"{name}/{case}"
        # The batch of 4 is neither cross-checked nor measured in float32 (time): its images go
        # through exactly the same code as the batch of 1.
        full = case != "sq_b4"
        outs = _image_reference(model64, x.double(), is_resnet, square, log, what, full)
        outs32 = _open_clip_outputs(model, x, is_resnet, square) if full else {}
        image_arrays[f"{case}_x"] = x.numpy()
        for k, v in outs.items():
            image_arrays[f"{case}_{k}"] = v.float().contiguous().numpy()
            if full:
                float32_err[f"{case}_{k}"] = _rel_err(outs32[k].double(), v)

    # -------- text cases
    import open_clip

    prompts = list(BASE_PROMPTS)
    prompts += [t.format(c) for c in CLASSIFIER_CLASSES for t in CLASSIFIER_TEMPLATES]
    if name in ("rn_tiny", "vit_tiny"):
        prompts += [t.format(c) for c in CLASSIFIER_CLASSES for t in _imagenet_templates()]
    prompts = list(dict.fromkeys(prompts))  # unique, order kept
    tokens = open_clip.tokenize(prompts)
    if tokens.dtype != torch.int64 or tokens.shape != (len(prompts), 77):
        raise RuntimeError(f"unexpected tokens {tokens.dtype} {tuple(tokens.shape)}")
    text_embed = model64.encode_text(tokens)
    float32_err["text_embed"] = _rel_err(model.encode_text(tokens).double(), text_embed)
    text_arrays = {"prompts": np.array(json.dumps(prompts, ensure_ascii=False)),
                   "tokens": tokens.numpy(), "embed": text_embed.float().numpy()}
    del model64

    for key, arr in list(image_arrays.items()) + [("text_embed", text_arrays["embed"])]:
        if key.endswith("_x"):
            continue
        _check_range(arr, f"{name}/{key}")
        f32 = f"{float32_err[key]:.1e}" if key in float32_err else "-"
        log(f"[{name}] {key:16s} {str(arr.shape):22s} max|x| {np.abs(arr).max():9.3f} "
            f"std {arr.std():8.4f}  open_clip float32 rel err {f32}")
    worst = max(float32_err, key=float32_err.get)
    if not float32_err[worst] <= FLOAT32_BUDGET:
        raise RuntimeError(f"{name}/{worst}: open_clip float32 is {float32_err[worst]:.2e} from the "
                           f"float64 reference, over the budget {FLOAT32_BUDGET:g}: the random "
                           f"model amplifies rounding too much for the test tolerance")

    _write_atomic(outdir / f"{name}.safetensors", lambda p: save_file(state, str(p)))
    _save_npz(outdir / f"{name}_image.npz", image_arrays)
    _save_npz(outdir / f"{name}_text.npz", text_arrays)

    info = {
        "arch": "resnet" if is_resnet else "vit",
        "act": act,
        "embed_dim": int(text_embed.shape[1]),
        "image_size": image_size,
        "patch": patch,
        "image_cases": {c: list(s) for c, s in shapes.items()},
        "text": {"width": int(model.transformer.width),
                 "layers": len(model.transformer.resblocks),
                 "heads": int(model.transformer.resblocks[0].attn.num_heads),
                 "context": int(model.context_length), "vocab": int(model.vocab_size)},
        "num_prompts": len(prompts),
        "int64_keys": sorted(k for k, v in state.items() if v.dtype == torch.int64),
        "dropped_keys": [],
        "open_clip_float32_rel_err": float32_err,
    }
    if is_resnet:
        info["vision"] = {"layers": [len(getattr(visual, f"layer{i}")) for i in range(1, 5)],
                          "width": int(visual.conv3.out_channels),
                          "heads": int(visual.attnpool.num_heads),
                          "grid": image_size // 32}
    else:
        info["vision"] = {"layers": len(visual.transformer.resblocks),
                          "width": int(visual.conv1.out_channels),
                          "heads": int(visual.transformer.resblocks[0].attn.num_heads),
                          "grid": image_size // patch}
    if info["embed_dim"] != int(visual.output_dim):
        raise RuntimeError("image and text embedding sizes differ")
    return info


# ---------------------------------------------------------------------------------- weights

def _randomise(model, rng) -> None:
    import torch
    from torch import nn

    def set_(t, values):
        t.copy_(torch.from_numpy(np.asarray(values, dtype=np.float32)).reshape(t.shape))

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            set_(m.weight, rng.uniform(0.5, 1.5, c))
            set_(m.bias, rng.normal(0.0, 0.1, c))
            set_(m.running_mean, rng.normal(0.0, 0.1, c))
            set_(m.running_var, rng.uniform(0.5, 1.5, c))
        elif isinstance(m, nn.LayerNorm):
            c = m.weight.numel()
            set_(m.weight, rng.uniform(0.8, 1.2, c))
            set_(m.bias, rng.normal(0.0, 0.05, c))
        elif isinstance(m, nn.MultiheadAttention):
            # Sharper attention than the init's nearly uniform one (logits std ~0.5 -> ~1.3).
            d = m.embed_dim
            m.in_proj_weight[:2 * d].mul_(QK_SCALE)
            set_(m.in_proj_bias, rng.normal(0.0, 0.05, m.in_proj_bias.numel()))
            set_(m.out_proj.bias, rng.normal(0.0, 0.05, m.out_proj.bias.numel()))


def _calibrate_batchnorm(visual, x, rng) -> None:
    """Set each BatchNorm's running statistics from its actual input (one eval-mode pass; a
    pre-hook runs before each BN so later layers see already calibrated earlier ones)."""
    import torch
    from torch import nn

    def hook(module, args):
        inp = args[0]
        mean = inp.mean(dim=(0, 2, 3))
        var = inp.var(dim=(0, 2, 3), unbiased=False).clamp_min(1e-4)
        c = mean.numel()
        noise = torch.from_numpy(rng.normal(0.0, 0.1, c).astype(np.float32))
        scale = torch.from_numpy(rng.uniform(0.5, 1.5, c).astype(np.float32))
        module.running_mean.copy_(mean + noise * var.sqrt())
        module.running_var.copy_(var * scale)

    handles = [m.register_forward_pre_hook(hook) for m in visual.modules()
               if isinstance(m, nn.BatchNorm2d)]
    try:
        visual(x)
    finally:
        for h in handles:
            h.remove()


def _state_dict_for_file(model) -> dict:
    import torch

    out = {}
    for k, v in model.state_dict().items():
        if not isinstance(v, torch.Tensor) or v.numel() == 0:
            raise RuntimeError(f"unexpected state-dict entry {k!r}")
        v = v.detach()
        v = v.to(torch.float32) if v.is_floating_point() else v.to(torch.int64)
        out[k] = v.contiguous().clone()
    return out


def _check_not_constant(state: dict) -> None:
    const = [k for k, v in state.items()
             if v.is_floating_point() and v.numel() > 1 and bool((v == v.reshape(-1)[0]).all())]
    if const:
        raise RuntimeError(f"constant tensors left after randomisation: {const}")


def _check_range(arr: np.ndarray, what: str) -> None:
    if not np.isfinite(arr).all():
        raise RuntimeError(f"{what}: non-finite values")
    m = float(np.abs(arr).max())
    if not ACT_MIN <= m <= ACT_MAX:
        raise RuntimeError(f"{what}: max |x| = {m:g} outside [{ACT_MIN}, {ACT_MAX}]")


# ---------------------------------------------------------------------------------- images

def _images(rng, shape):
    """Normalised-image-like float32 tensors: smooth random structure plus pixel noise."""
    import torch
    import torch.nn.functional as F

    n, c, h, w = shape
    low = torch.from_numpy(rng.standard_normal((n, c, h // 8 + 2, w // 8 + 2)).astype(np.float32))
    smooth = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    noise = torch.from_numpy(rng.standard_normal((n, c, h, w)).astype(np.float32))
    x = smooth + 0.4 * noise
    return (x / x.std()).contiguous()


def _resize_pos(pos, gh: int, gw: int):
    """Positional embedding (1 + g*g, D) -> (1 + gh*gw, D): bicubic on the spatial part."""
    import torch
    import torch.nn.functional as F

    t, d = pos.shape
    g = int(round((t - 1) ** 0.5))
    if g * g != t - 1:
        raise RuntimeError(f"positional embedding with {t} rows is not 1 + g*g")
    grid = pos[1:].reshape(1, g, g, d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(gh * gw, d)], dim=0)


def _attnpool_explicit(ap, x):
    """open_clip AttentionPool2d written out: x (N, C, H, W) -> (N, out)."""
    import torch

    n, c, h, w = x.shape
    tokens = x.reshape(n, c, h * w).transpose(1, 2)                        # (N, HW, C)
    tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)   # (N, 1+HW, C)
    tokens = tokens + _resize_pos(ap.positional_embedding, h, w)
    e = ap.num_heads
    f = c // e
    q = tokens[:, :1] @ ap.q_proj.weight.T + ap.q_proj.bias                # (N, 1, C)
    k = tokens @ ap.k_proj.weight.T + ap.k_proj.bias                       # (N, T, C)
    v = tokens @ ap.v_proj.weight.T + ap.v_proj.bias                       # (N, T, C)
    q = q.reshape(n, 1, e, f).transpose(1, 2) * f ** -0.5                  # (N, E, 1, F)
    k = k.reshape(n, -1, e, f).transpose(1, 2)                             # (N, E, T, F)
    v = v.reshape(n, -1, e, f).transpose(1, 2)                             # (N, E, T, F)
    att = torch.softmax(q @ k.transpose(-1, -2), dim=-1)                   # (N, E, 1, T)
    o = (att @ v).transpose(1, 2).reshape(n, c)                            # (N, C)
    return o @ ap.c_proj.weight.T + ap.c_proj.bias


def _resnet_explicit(visual, x) -> dict:
    out = {}
    h = visual.stem(x)
    for i in range(1, 5):
        h = getattr(visual, f"layer{i}")(h)
        out[f"res{i + 1}"] = h.clone()
    out["embed"] = _attnpool_explicit(visual.attnpool, h)
    return out


def _vit_explicit(visual, x) -> dict:
    import torch

    h = visual.conv1(x)                                                    # (N, D, gh, gw)
    n, d, gh, gw = h.shape
    h = h.reshape(n, d, gh * gw).transpose(1, 2)                           # (N, gh*gw, D)
    cls = visual.class_embedding.reshape(1, 1, d).expand(n, 1, d)
    h = torch.cat([cls, h], dim=1) + _resize_pos(visual.positional_embedding, gh, gw)
    h = visual.ln_pre(h)
    tokens = []
    for blk in visual.transformer.resblocks:
        h = blk(h)
        tokens.append(h)
    embed = visual.ln_post(h[:, 0]) @ visual.proj
    return {"tokens": torch.stack(tokens), "embed": embed}                 # (L, N, T, D)


def _open_clip_forward(model, x, is_resnet: bool) -> dict:
    """open_clip's own forward (encode_image) with forward hooks for the intermediate outputs."""
    import torch

    visual = model.visual
    mods = ([getattr(visual, f"layer{i}") for i in range(1, 5)] if is_resnet
            else list(visual.transformer.resblocks))
    got = []
    handles = [m.register_forward_hook(lambda mod, a, o: got.append(o.clone())) for m in mods]
    try:
        embed = model.encode_image(x)
    finally:
        for hd in handles:
            hd.remove()
    if is_resnet:
        out = {f"res{i + 2}": t for i, t in enumerate(got)}
    else:
        out = {"tokens": torch.stack(got)}
    out["embed"] = embed
    return out


@contextlib.contextmanager
def _swapped_pos(module, new_pos):
    """Temporarily give `module` (AttentionPool2d or VisionTransformer) another positional table."""
    import torch

    old = module.positional_embedding
    module.positional_embedding = torch.nn.Parameter(new_pos, requires_grad=False)
    try:
        yield
    finally:
        module.positional_embedding = old


def _open_clip_outputs(model, x, is_resnet: bool, square: bool) -> dict:
    """open_clip's forward; off the training grid with the resized positional table swapped in."""
    if square:
        return _open_clip_forward(model, x, is_resnet)
    visual = model.visual
    if is_resnet:
        g = (x.shape[2] // 32, x.shape[3] // 32)
        target = visual.attnpool
    else:
        g = (x.shape[2] // visual.patch_size[0], x.shape[3] // visual.patch_size[1])
        target = visual
    with _swapped_pos(target, _resize_pos(target.positional_embedding, *g)):
        return _open_clip_forward(model, x, is_resnet)


def _rel_err(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-6))


def _image_reference(model, x, is_resnet: bool, square: bool, log, what: str,
                     cross_check: bool = True) -> dict:
    """Reference outputs for one case; the explicit forward is cross-checked against open_clip.

    Stored: open_clip's own outputs at the training size, the explicit forward elsewhere."""
    if square and not cross_check:
        return _open_clip_outputs(model, x, is_resnet, square)
    explicit = _resnet_explicit(model.visual, x) if is_resnet else _vit_explicit(model.visual, x)
    ref = _open_clip_outputs(model, x, is_resnet, square)
    for k in ref:
        err = _rel_err(explicit[k], ref[k])
        log(f"[{what}] explicit vs open_clip {k}: rel err {err:.2e}")
        if explicit[k].shape != ref[k].shape or not err <= SELF_CHECK_RTOL:
            raise RuntimeError(f"{what}: explicit forward differs from open_clip on {k}: "
                               f"shape {tuple(explicit[k].shape)} vs {tuple(ref[k].shape)}, "
                               f"rel err {err:.3e}")
    return ref if square else explicit


# ---------------------------------------------------------------------------------- preprocess

def _preprocess_image(rng, h: int, w: int) -> np.ndarray:
    """uint8 (h, w, 3): smooth gradients and waves, sharp-edged blocks, saturated areas, noise."""
    yy, xx = np.meshgrid(np.linspace(0.0, 1.0, h), np.linspace(0.0, 1.0, w), indexing="ij")
    img = np.empty((h, w, 3), np.float64)
    for c in range(3):
        fx, fy = rng.uniform(1.0, 6.0, 2)
        phase = rng.uniform(0, 2 * np.pi)
        img[..., c] = (128 + 90 * np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
                       + 60 * (xx - yy) * rng.choice([-1.0, 1.0]))
    for _ in range(4):  # blocks with hard edges, some saturated at 0 or 255
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        y1, x1 = y0 + rng.integers(1, max(2, h // 3)), x0 + rng.integers(1, max(2, w // 3))
        img[y0:y1, x0:x1] = rng.choice([0.0, 255.0, 400.0, -100.0], size=3)
    img += rng.normal(0.0, 6.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _make_preprocess_fixtures(outdir: Path) -> dict:
    import open_clip
    from PIL import Image

    transform = open_clip.image_transform(PREPROCESS_SIZE, is_train=False)
    rng = np.random.default_rng(7)
    arrays = {"names": np.array(json.dumps(list(PREPROCESS_SHAPES)))}
    for name, (h, w) in PREPROCESS_SHAPES.items():
        img = _preprocess_image(rng, h, w)
        pixels = transform(Image.fromarray(img)).numpy().astype(np.float32)
        if pixels.shape != (3, PREPROCESS_SIZE, PREPROCESS_SIZE):
            raise RuntimeError(f"{name}: open_clip preprocessing gave {pixels.shape}")
        arrays[f"{name}_image"] = img
        arrays[f"{name}_pixels"] = pixels
    _save_npz(outdir / "preprocess.npz", arrays)
    return {"image_size": PREPROCESS_SIZE, "names": list(PREPROCESS_SHAPES),
            "transform": repr(transform)}


# ---------------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--force", action="store_true", help="regenerate even if the stamp matches")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    out = ensure_fixtures(args.out, force=args.force, verbose=True)
    total = 0
    for f in expected_files():
        size = (out / f).stat().st_size
        total += size
        print(f"{size / 2**20:10.1f} MiB  {f}")
    print(f"{total / 2**20:10.1f} MiB  total; {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
