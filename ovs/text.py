"""Zero-shot text classifiers: prompt templates, synonyms, and an embedding cache.

Prompt ensembles share their prefix: every class name in "a photo of a {}." starts with the
tokens <start_of_text> a photo of a, and with causal attention those tokens' hidden states do
not depend on what follows. ``encode_prompts`` runs each template's prefix once (keeping every
layer's keys and values) and then only the class-name, suffix and end-of-text tokens of each
prompt, in batches, against that cache.

The functions take what they use explicitly, as open_clip's ``build_zero_shot_classifier`` takes
its model and tokenizer: ``text`` is a C text tower (``model.text``: ``forward``, ``prefix``,
``forward_prefixed``, ``config``), and ``build_classifier`` gets the embedding cache and the
weights' digest that keys it. This module does not know ``ovs.Model``; ``Model.encode_tokens``,
``encode_prompts`` and ``text_classifier`` call it with their own tower and cache.
"""
from __future__ import annotations

import hashlib
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _str_list(values, what: str, hint: str, blank_ok: bool) -> list[str]:
    """values as a non-empty list of str; TypeError / ValueError naming `what` and the entry."""
    if isinstance(values, str):
        raise TypeError(f"{what} must be a list of strings, not one string (did you mean {hint})")
    try:
        out = list(values)
    except TypeError:
        raise TypeError(f"{what} must be a list of strings, got {type(values).__name__}") from None
    if not out:
        raise ValueError(f"{what} is empty: give at least one {what[:-1].replace('_', ' ')}")
    for i, n in enumerate(out):
        if not isinstance(n, str):
            raise TypeError(f"{what}[{i}] must be str, got {type(n).__name__}: {n!r}")
        if not blank_ok and not n.strip():
            raise ValueError(f"{what}[{i}] is empty or whitespace")
    return out


def _check_class_names(class_names) -> list[str]:
    hint = (f"[{class_names!r}] or {class_names.split(',')!r}?" if isinstance(class_names, str)
            else "")
    return _str_list(class_names, "class_names", hint, blank_ok=False)



def _normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _disk_dir(cache_dir) -> Path | None:
    if cache_dir is None:
        env = os.environ.get("OVS_CACHE_DIR")
        if not env:
            return None
        cache_dir = Path(env) / "text"
    return Path(cache_dir)


# Prompts whose shared prefix is shorter than this many tokens (<start_of_text> alone, e.g. the
# template "{}") run the plain path: there is nothing to share.
MIN_PREFIX_TOKENS = 2
# The progress bar appears only once encoding has taken this long (tqdm's `delay`).
PROGRESS_DELAY_S = 3.0


def template_prefix(template: str, context: int) -> np.ndarray:
    """The candidate shared prefix of a template: the token ids of its text before "{}", with
    <start_of_text> and without <end_of_text> (int32, at least 1 id)."""
    from .tokenizer import tokenize

    ids = tokenize([template.split("{}", 1)[0]], context_length=context)[0]
    return ids[:int(ids.argmax())]


def prefix_plan(names: Sequence[str], templates="imagenet80", context: int = 77) -> np.ndarray:
    """(len(names), len(templates)) int: the number of leading tokens of each prompt
    template.format(name) that encode_prompts takes from the template's shared prefix cache (0:
    the prompt runs the plain path), for a text tower of `context` positions."""
    from .templates import get_templates

    tmpl = get_templates(templates)
    names = _check_prompt_names(names)
    ids = _tokenize_prompts(context, names, tmpl)
    return _plan(context, ids, tmpl)[0].reshape(len(names), len(tmpl))


def token_positions(names: Sequence[str], templates="imagenet80", context: int = 77) -> dict:
    """How many token positions the text tower runs for every prompt template.format(name):
    "full_context" (every prompt at all `context` positions, as open_clip), "end_of_text" (each
    prompt up to its end-of-text token: ovs's plain path) and "shared_prefix" (each template's
    prefix once plus the rest of each prompt: encode_prompts). The work of the linear layers,
    2 * (4 * width^2 + 2 * width * mlp) FLOPs per position and layer, scales with these counts
    (attention adds 4 * width * queries * keys per layer, small at these lengths)."""
    from .templates import get_templates

    tmpl = get_templates(templates)
    names = _check_prompt_names(names)
    ids = _tokenize_prompts(context, names, tmpl)
    plan, _, eot = _plan(context, ids, tmpl)
    j = np.arange(len(ids)) % len(tmpl)
    prefixes = {(int(a), int(p)) for a, p in zip(j, plan) if p > 0}
    return {"prompts": len(ids), "full_context": len(ids) * context,
            "end_of_text": int((eot + 1).sum()),
            "shared_prefix": int((eot + 1 - plan).sum()) + sum(p for _, p in prefixes),
            "prefixes": len(prefixes), "plain_path_prompts": int((plan == 0).sum())}


def _check_prompt_names(names) -> list[str]:
    hint = f"[{names!r}]?" if isinstance(names, str) else ""
    return _str_list(names, "names", hint, blank_ok=True)


def _tokenize_prompts(context: int, names: list[str], tmpl: list[str]) -> np.ndarray:
    """(len(names) * len(tmpl), context) ids, name-major: row i*len(tmpl) + j = tmpl[j] with names[i]."""
    from .tokenizer import tokenize

    return tokenize([t.format(n) for n in names for t in tmpl], context_length=context)


def _plan(context: int, ids: np.ndarray, tmpl: list[str]):
    """Per row of ids (name-major over tmpl): the prefix length P taken from its template's cache
    (0 = plain path), and the templates' candidate prefixes.

    The prefix of a prompt is the longest common token prefix of the prompt and its template's
    candidate, so it depends on that prompt and template only (never on the other names in the
    call: results do not depend on the batch), is compared on tokens (a name whose first token
    would merge with the template's text before "{}" shortens it), and stops before the prompt's
    end-of-text token (its largest id), which must stay in the part that is run per prompt."""
    nt = len(tmpl)
    eot = ids.argmax(axis=1)
    plan = np.zeros(len(ids), np.int64)
    cands = []
    for j, t in enumerate(tmpl):
        cand = template_prefix(t, context)
        cands.append(cand)
        rows = np.arange(j, len(ids), nt)
        L = len(cand)
        eq = ids[rows, :L] == cand[None, :]
        lcp = np.where(eq.all(axis=1), L, eq.argmin(axis=1))
        p = np.minimum(lcp, eot[rows])
        running_max = np.maximum.accumulate(cand)
        ok = (p >= MIN_PREFIX_TOKENS) & (running_max[np.maximum(p - 1, 0)] < ids[rows, eot[rows]])
        plan[rows[ok]] = p[ok]
    return plan, cands, eot


def encode_tokens(text: Any, ids, *, truncate: bool = True, batch_size: int = 256) -> np.ndarray:
    """Text embeddings (N, embed_dim) of token ids (N, context) by the text tower `text`, not
    normalised.

    With truncate (the default), rows are grouped by their end-of-text position and each
    group runs in chunks of batch_size only up to that position (identical to full-length
    computation: attention is causal). A row is therefore always computed at its own
    length, whatever else is in the call, so its embedding does not depend on the batch it
    came with (the GEMM kernels give each row the same arithmetic at any batch size)."""
    cfg = text.config()
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"token ids must be integers, got dtype {ids.dtype}")
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2:
        raise ValueError(f"token ids must be (N, context), got shape {ids.shape}")
    ctx = cfg["context"]
    if ids.shape[1] == 0 or ids.shape[1] > ctx:
        raise ValueError(f"token ids must have 1..{ctx} columns, got {ids.shape[1]}")
    if ids.size and (ids.min() < 0 or ids.max() >= cfg["vocab"]):
        raise ValueError(f"token ids must be in 0..{cfg['vocab'] - 1}, "
                         f"got range {ids.min()}..{ids.max()}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = np.ascontiguousarray(ids, dtype=np.int32)
    out = np.empty((ids.shape[0], cfg["embed_dim"]), np.float32)
    if ids.shape[0] == 0:
        return out
    eot = ids.argmax(axis=1)
    order = np.argsort(eot, kind="stable")
    bounds = np.flatnonzero(np.diff(eot[order])) + 1 if truncate else np.empty(0, np.intp)
    for group in np.split(order, bounds):
        for start in range(0, len(group), batch_size):
            rows = group[start:start + batch_size]
            out[rows] = text.forward(np.ascontiguousarray(ids[rows]), truncate)
    return out


def encode_prompts(text: Any, names: Sequence[str], templates="imagenet80", *,
                   share_prefix: bool = True, batch_size: int = 256,
                   progress: bool = False) -> np.ndarray:
    """(len(names), len(templates), embed_dim) float32: the embedding by the text tower `text`
    of every prompt template.format(name), not normalised; equal to encode_tokens of the
    tokenized prompts (float rounding aside). With share_prefix, each template's leading tokens run once and only the
    rest of each prompt runs per prompt (see prefix_plan); share_prefix=False is the plain path.
    progress: a tqdm bar on stderr when this takes over PROGRESS_DELAY_S seconds (never when
    stderr is not a terminal)."""
    from .templates import get_templates

    tmpl = get_templates(templates)
    names = _check_prompt_names(names)
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    cfg = text.config()
    context = cfg["context"]
    ids = _tokenize_prompts(context, names, tmpl)
    out = np.empty((len(ids), cfg["embed_dim"]), np.float32)
    if share_prefix:
        plan, cands, eot = _plan(context, ids, tmpl)
    else:
        plan, cands, eot = np.zeros(len(ids), np.int64), [], ids.argmax(axis=1)
    bar = _progress_bar(len(ids), progress)
    try:
        plain = np.flatnonzero(plan == 0)
        for rows in _chunks(plain, eot, batch_size):
            out[rows] = encode_tokens(text, ids[rows], batch_size=batch_size)
            bar.update(len(rows))
        nt = len(tmpl)
        for j in range(nt):
            rows_j = np.arange(j, len(ids), nt)
            for p in np.unique(plan[rows_j]):
                if p == 0:
                    continue
                kv = text.prefix(np.ascontiguousarray(cands[j][:p]))
                for rows in _chunks(rows_j[plan[rows_j] == p], eot, batch_size):
                    e = int(eot[rows[0]])
                    out[rows] = text.forward_prefixed(kv, np.ascontiguousarray(ids[rows, p:e + 1]))
                    bar.update(len(rows))
    finally:
        bar.close()
    return out.reshape(len(names), len(tmpl), -1)


def _chunks(rows: np.ndarray, eot: np.ndarray, batch_size: int):
    """rows split by end-of-text position (each chunk runs at its own length), then in pieces
    of at most batch_size."""
    order = rows[np.argsort(eot[rows], kind="stable")]
    bounds = np.flatnonzero(np.diff(eot[order])) + 1
    for group in np.split(order, bounds):
        for start in range(0, len(group), batch_size):
            yield group[start:start + batch_size]


def _progress_bar(total: int, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="prompt", desc="ovs: encoding prompts", file=sys.stderr,
                delay=PROGRESS_DELAY_S, leave=False, dynamic_ncols=True,
                disable=None if progress else True)


def build_classifier(text: Any, class_names: Sequence[str], templates="imagenet80", *,
                     cache: dict, digest: str, cache_dir=None, progress: bool = True) -> np.ndarray:
    """Zero-shot classifier (C, embed_dim) by the text tower `text` (see Model.text_classifier).
    cache: the in-memory embeddings, {(template-set key, class name): (embed_dim,) float32},
    filled here; digest: the text weights' digest (Model.weights_digest), which keys the disk
    cache under cache_dir (or $OVS_CACHE_DIR/text when set)."""
    from .classnames import split_synonyms
    from .templates import get_templates

    names = _check_class_names(class_names)
    tmpl = get_templates(templates)
    tkey = hashlib.sha256("\x1f".join(tmpl).encode()).hexdigest()[:16]
    digest = digest[:16]
    dim = text.config()["embed_dim"]
    disk = _disk_dir(cache_dir)
    out = np.empty((len(names), dim), np.float32)
    missing: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        key = (tkey, name)
        if key in cache:
            out[i] = cache[key]
            continue
        if disk is not None:
            f = disk / digest / tkey / (hashlib.sha1(name.encode()).hexdigest() + ".npy")
            if f.is_file():
                try:
                    v = np.load(f)
                    if v.shape == (dim,) and np.isfinite(v).all():
                        cache[key] = v.astype(np.float32)
                        out[i] = cache[key]
                        continue
                except (OSError, ValueError, EOFError):
                    pass  # unreadable (e.g. truncated) cache entry: recompute and overwrite
        missing.setdefault(name, []).append(i)
    if missing:
        synonyms = {name: split_synonyms(name) or [name.strip()] for name in missing}
        unique = list(dict.fromkeys(s for syn in synonyms.values() for s in syn))
        index = {s: i for i, s in enumerate(unique)}
        # (synonyms, templates, E): each prompt L2-normalised
        emb = _normalize(encode_prompts(text, unique, tmpl, progress=progress))
        for name, syn in synonyms.items():
            rows = emb[[index[s] for s in syn]].reshape(-1, emb.shape[-1])  # synonym-major
            v = _normalize(rows.mean(axis=0)).astype(np.float32)
            cache[(tkey, name)] = v
            for i in missing[name]:
                out[i] = v
            if disk is not None and not _save_entry(disk / digest / tkey, name, v):
                disk = None  # the disk cache is an optimisation: keep going without it
    return out


def _save_entry(folder: Path, name: str, v: np.ndarray) -> bool:
    """Write one cache entry atomically (unique temporary name per process and thread, then
    rename); False, with a warning, if the folder cannot be written."""
    f = folder / (hashlib.sha1(name.encode()).hexdigest() + ".npy")
    tmp = f.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp.npy")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        np.save(tmp, v)
        os.replace(tmp, f)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        warnings.warn(f"ovs: cannot write the text-embedding cache in {folder} ({exc}); "
                      "continuing without it", RuntimeWarning, stacklevel=4)
        return False
    return True
