"""Zero-shot text classifiers: prompt templates, synonyms, and an embedding cache."""
from __future__ import annotations

import hashlib
import os
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from .model import Model


def _check_class_names(class_names) -> list[str]:
    if isinstance(class_names, str):
        raise TypeError("class_names must be a list of strings, not one string "
                        f"(did you mean [{class_names!r}] or {class_names.split(',')!r}?)")
    try:
        names = list(class_names)
    except TypeError:
        raise TypeError(f"class_names must be a list of strings, got {type(class_names).__name__}") from None
    if not names:
        raise ValueError("class_names is empty: give at least one class name")
    for i, n in enumerate(names):
        if not isinstance(n, str):
            raise TypeError(f"class_names[{i}] must be str, got {type(n).__name__}: {n!r}")
        if not n.strip():
            raise ValueError(f"class_names[{i}] is empty or whitespace")
    return names


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


def build_classifier(model: "Model", class_names: Sequence[str], templates="imagenet80", *,
                     cache_dir=None) -> np.ndarray:
    from .classnames import split_synonyms
    from .templates import get_templates

    names = _check_class_names(class_names)
    tmpl = get_templates(templates)
    tkey = hashlib.sha256("\x1f".join(tmpl).encode()).hexdigest()[:16]
    digest = model.weights_digest()[:16]
    disk = _disk_dir(cache_dir)
    cache = model._text_cache
    out = np.empty((len(names), model.embed_dim_text), np.float32)
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
                    if v.shape == (model.embed_dim_text,) and np.isfinite(v).all():
                        cache[key] = v.astype(np.float32)
                        out[i] = cache[key]
                        continue
                except (OSError, ValueError, EOFError):
                    pass  # unreadable (e.g. truncated) cache entry: recompute and overwrite
        missing.setdefault(name, []).append(i)
    if missing:
        prompts: list[str] = []
        spans: list[tuple[str, int, int]] = []
        for name in missing:
            syn = split_synonyms(name) or [name.strip()]
            start = len(prompts)
            prompts += [t.format(s) for s in syn for t in tmpl]
            spans.append((name, start, len(prompts)))
        emb = _normalize(model.encode_text(prompts))
        for name, a, b in spans:
            v = _normalize(emb[a:b].mean(axis=0)).astype(np.float32)
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
