"""Find model weights by name: local folders, the Hugging Face cache, or a download from the hub.

``resolve_weights("RN50")`` returns the path of ``open_clip_model.safetensors`` for OpenAI's
CLIP RN50 (Hugging Face repo ``timm/resnet50_clip.openai``), looking in order at:

1. ``$OVS_WEIGHTS_DIR/<name>.safetensors`` or ``$OVS_WEIGHTS_DIR/<org>--<repo>/<file>``;
2. the Hugging Face hub cache (``cache_dir`` argument, ``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or
   ``~/.cache/huggingface/hub``) -- the cache open_clip and timm share, so weights they already
   downloaded are not downloaded again;
3. a download through ``huggingface_hub.hf_hub_download``, which brings its cache layout,
   ``HF_TOKEN``, ``HF_ENDPOINT`` mirrors and ``HF_HUB_OFFLINE``. ovs then checks the file's
   sha256 against the digest the hub announced (the blob's name in the cache) and that it
   parses as safetensors; a file failing either is removed from the cache.

Downloads that stall are abandoned: if no progress is seen for ``timeout`` seconds (progress is
reported by huggingface_hub per 10 MB chunk; single network reads also time out after
``$HF_HUB_DOWNLOAD_TIMEOUT``, 10 s by default) a :class:`WeightsUnavailableError` is raised.
huggingface_hub downloads into ``blobs/<etag>.<random>.incomplete`` and removes that file when a
download fails; a file left behind by a killed process is never reused, so ovs removes such
leftovers of the repo it downloads once they are older than :data:`STALE_INCOMPLETE_SECONDS`.

Offline mode (``offline=True``, ``OVS_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) and network failures
raise :class:`WeightsUnavailableError` explaining how to supply the file by hand.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Callable

__all__ = ["KNOWN_WEIGHTS", "KnownWeights", "WeightsUnavailableError", "resolve_weights",
           "weights_url", "hf_cache_dir"]

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_STALL_TIMEOUT = 120.0      # seconds without download progress before giving up
CONNECT_TIMEOUT = 10.0             # seconds to open a first connection to the hub
STALE_INCOMPLETE_SECONDS = 3600.0  # age after which a repo's *.incomplete leftovers are removed
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class KnownWeights:
    """A named set of public weights on the Hugging Face hub, and its architecture."""

    name: str                       # canonical name, e.g. "RN50"
    repo: str                       # "timm/resnet50_clip.openai"
    filename: str                   # "open_clip_model.safetensors"
    aliases: tuple[str, ...] = ()   # other accepted names
    #: the architecture as open_clip configures it (ovs.weights.random_state_dict builds it)
    config: dict = dataclasses.field(default_factory=dict, compare=False)
    act: str = "quickgelu"          # the MLP activation these weights were trained with


#: The named architectures, the one table of them: ovs.load(name), the CLI's --model help,
#: ovs.weights.random_state_dict (RANDOM_ARCHS).
KNOWN_WEIGHTS: dict[str, KnownWeights] = {
    "RN50": KnownWeights("RN50", "timm/resnet50_clip.openai", "open_clip_model.safetensors",
                         ("RN50-quickgelu",),
                         dict(vision="resnet", layers=(3, 4, 6, 3), width=64, heads=32,
                              image_size=224, embed_dim=1024)),
    "ViT-B-16": KnownWeights("ViT-B-16", "timm/vit_base_patch16_clip_224.openai",
                             "open_clip_model.safetensors", ("ViT-B/16", "ViT-B-16-quickgelu"),
                             dict(vision="vit", layers=12, width=768, patch=16, image_size=224,
                                  embed_dim=512)),
}


class WeightsUnavailableError(OSError):
    """Weights could not be found locally nor downloaded (offline, or a network failure)."""


ProgressCallback = Callable[[int, "int | None"], None]


def known_weights(name: str) -> KnownWeights | None:
    """The KNOWN_WEIGHTS entry a name or alias (any case) refers to, or None."""
    for spec in KNOWN_WEIGHTS.values():
        if name == spec.name or name in spec.aliases:
            return spec
    low = name.lower()
    for spec in KNOWN_WEIGHTS.values():
        if low == spec.name.lower() or low in (a.lower() for a in spec.aliases):
            return spec
    return None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _is_offline(offline: bool | None) -> bool:
    if offline is not None:
        return bool(offline)
    return _truthy(os.environ.get("OVS_OFFLINE")) or _truthy(os.environ.get("HF_HUB_OFFLINE"))




def hf_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hugging Face hub cache: ``cache_dir``, ``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or
    ``~/.cache/huggingface/hub`` (read at each call, so setting them at run time works)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    hub = os.environ.get("HF_HUB_CACHE")
    if not hub:
        home = os.environ.get("HF_HOME")
        hub = os.path.join(home, "hub") if home else "~/.cache/huggingface/hub"
    return Path(hub).expanduser()


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def weights_url(spec: KnownWeights) -> str:
    from urllib.parse import quote

    return f"{_endpoint()}/{spec.repo}/resolve/main/{quote(spec.filename)}"


def _looks_like_path(s: str) -> bool:
    return (os.sep in s or "/" in s or (os.altsep is not None and os.altsep in s)
            or s.startswith(("~", ".")) or s.lower().endswith(
                (".safetensors", ".pt", ".pth", ".bin", ".ckpt")))


def resolve_weights(name_or_path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                    offline: bool | None = None, verify: bool = False,
                    progress: bool | ProgressCallback = False,
                    timeout: float = DEFAULT_STALL_TIMEOUT) -> Path:
    """The local path of a weight file, downloading known weights when needed.

    name_or_path: an existing file (returned as is), or a name from KNOWN_WEIGHTS ("RN50",
                  "ViT-B-16", or an alias such as "ViT-B/16").
    cache_dir:    the Hugging Face hub cache folder (default $HF_HUB_CACHE, $HF_HOME/hub or
                  ~/.cache/huggingface/hub).
    offline:      never use the network (default: $OVS_OFFLINE or $HF_HUB_OFFLINE).
    verify:       also re-hash an already cached file against the digest it was stored under
                  (a fresh download is always checked).
    progress:     True shows huggingface_hub's progress bar on stderr; a callable gets
                  (bytes_done, bytes_total or None) after every chunk.
    timeout:      seconds without download progress after which the download is abandoned.

    Raises FileNotFoundError for a path that does not exist, ValueError for an unknown name and
    WeightsUnavailableError when the weights are neither local nor downloadable.
    """
    raw = os.fspath(name_or_path)
    if not isinstance(raw, str):
        raw = os.fsdecode(raw)
    expanded = os.path.expanduser(raw)
    if os.path.isfile(expanded):
        return Path(expanded)
    spec = None if isinstance(name_or_path, os.PathLike) else known_weights(raw)
    if spec is None:
        if isinstance(name_or_path, os.PathLike) or _looks_like_path(raw):
            if os.path.isdir(expanded):
                raise IsADirectoryError(
                    f"weights path {raw!r} is a directory; pass the weight file itself "
                    f"(e.g. {os.path.join(raw, 'open_clip_model.safetensors')!r})")
            raise FileNotFoundError(f"weight file {raw!r} does not exist (known names: "
                                    f"{_known_names()})")
        raise ValueError(f"unknown weights {raw!r}: pass a file path or one of {_known_names()}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")

    local = _find_local(spec, raw)
    if local is not None:
        return local

    from huggingface_hub import try_to_load_from_cache

    cache = hf_cache_dir(cache_dir)
    url = weights_url(spec)
    cached = try_to_load_from_cache(spec.repo, spec.filename, cache_dir=cache)
    problem = ""
    if isinstance(cached, str) and os.path.isfile(cached):
        problem = _check_file(Path(cached), spec.filename, verify)
        if not problem:
            return Path(cached)
        _remove_cached(Path(cached))
    if _is_offline(offline):
        reason = "offline mode is on (offline=True, OVS_OFFLINE or HF_HUB_OFFLINE)"
        if problem:
            reason += f"; the cached copy failed its check ({problem}) and was removed"
        raise WeightsUnavailableError(_unavailable_message(spec, raw, url, reason))
    unreachable = _unreachable(timeout=min(float(timeout), CONNECT_TIMEOUT))
    if unreachable:
        raise WeightsUnavailableError(_unavailable_message(spec, raw, url, unreachable))
    path = _download(spec, cache, progress=progress, timeout=float(timeout), url=url, name=raw)
    problem = _check_file(path, spec.filename, verify=True)
    if problem:
        _remove_cached(path)
        raise WeightsUnavailableError(_unavailable_message(
            spec, raw, url, f"the downloaded file failed its check: {problem}; it was removed "
            "from the cache"))
    return path


def _known_names() -> str:
    names = []
    for spec in KNOWN_WEIGHTS.values():
        names.append(spec.name)
        names.extend(spec.aliases)
    return ", ".join(repr(n) for n in names)


def _unavailable_message(spec: KnownWeights, name: str, url: str, reason: str) -> str:
    return (
        f"cannot get weights {name!r} ({spec.repo}/{spec.filename}) from {url}: {reason}.\n"
        f"To supply the file by hand, download {spec.filename} from {url} on a machine with "
        f"network access, then either\n"
        f"  - pass its path: ovs.load(\"/path/{spec.filename}\") (CLI: --model /path/{spec.filename}),"
        f"\n  - or put it at $OVS_WEIGHTS_DIR/{spec.name}.safetensors and set OVS_WEIGHTS_DIR."
    )


def _find_local(spec: KnownWeights, given: str) -> Path | None:
    folder = os.environ.get("OVS_WEIGHTS_DIR")
    if not folder:
        return None
    root = Path(folder).expanduser()
    candidates = [root / f"{spec.name}.safetensors"]
    for alias in (given, *spec.aliases):
        if re.fullmatch(r"[A-Za-z0-9_.\-]+", alias):
            candidates.append(root / f"{alias}.safetensors")
    candidates.append(root / spec.repo.replace("/", "--") / spec.filename)
    for c in candidates:
        if c.is_file():
            return c
    return None


# --------------------------------------------------------------------------- checks
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(_CHUNK)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _check_file(path: Path, filename: str, verify: bool) -> str:
    """"" if the cached file is usable, else the problem. The hub stores an LFS file under its
    sha256 (blobs/<sha256>): with verify, the content must hash to that name."""
    if verify:
        blob = os.path.basename(os.path.realpath(path))
        if _SHA256_RE.fullmatch(blob):
            got = _sha256_file(path)
            if got != blob:
                return (f"sha256 mismatch: the hub announced {blob}, the file has {got} "
                        "(corrupted transfer or proxy)")
    if filename.endswith(".safetensors"):
        from . import _core

        try:
            with _core.SafeTensorsFile(str(path)):
                pass
        except (OSError, ValueError) as exc:
            return f"not a valid safetensors file: {exc}"
    return ""


def _remove_cached(path: Path) -> None:
    """Remove a bad file from the hub cache: the blob and the snapshot link to it."""
    blob = os.path.realpath(path)
    for p in (blob, path):
        try:
            os.unlink(p)
        except OSError:
            pass


def _remove_stale_incomplete(cache: Path, spec: KnownWeights) -> None:
    """Remove ``*.incomplete`` files of this repo left by killed downloads (huggingface_hub
    gives each download a unique one and never reuses it)."""
    blobs = cache / ("models--" + spec.repo.replace("/", "--")) / "blobs"
    try:
        entries = list(os.scandir(blobs))
    except OSError:
        return
    now = time.time()
    for e in entries:
        if e.name.endswith(".incomplete"):
            try:
                if now - e.stat(follow_symlinks=False).st_mtime > STALE_INCOMPLETE_SECONDS:
                    os.unlink(e.path)
            except OSError:
                pass


# --------------------------------------------------------------------------- download
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy")


def _unreachable(timeout: float) -> str:
    """Why the hub endpoint cannot be reached at all ("" if a TCP connection opens, or if a proxy
    is configured and the endpoint's host is not ours to test). huggingface_hub retries a refused
    connection or a failed name lookup with back-off for ~25 s; this answers in one attempt."""
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(v) or os.environ.get(v.upper()) for v in _PROXY_VARS):
        return ""
    parts = urlsplit(_endpoint())
    host = parts.hostname
    if not host:
        return ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return ""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return (f"network error (cannot connect to {host}:{port}: {exc}; if this machine has no "
                "network, set OVS_OFFLINE=1 to skip the attempt)")
    return ""


def _download(spec: KnownWeights, cache: Path, *, progress, timeout: float, url: str,
              name: str) -> Path:
    """hf_hub_download in a worker thread, abandoned when it makes no progress for `timeout`
    seconds (huggingface_hub's own timeouts are per network read: a server trickling one
    byte a second would hold it forever)."""
    from huggingface_hub import hf_hub_download
    from tqdm import tqdm

    _remove_stale_incomplete(cache, spec)
    state = {"last": time.monotonic(), "result": None, "error": None}
    callback = progress if callable(progress) else None

    class Watch(tqdm):
        """Progress bar hook: records the time of the last progress, forwards it."""

        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            kwargs["disable"] = progress is not True
            kwargs.setdefault("file", sys.stderr)
            super().__init__(*args, **kwargs)
            self.done = int(kwargs.get("initial") or 0)  # self.n stays 0 when disabled
            state["last"] = time.monotonic()

        def update(self, n=1):
            state["last"] = time.monotonic()
            self.done += int(n or 0)
            super().update(n)
            if callback is not None:
                callback(self.done, int(self.total) if self.total else None)

    def work():
        try:
            state["result"] = hf_hub_download(
                spec.repo, spec.filename, cache_dir=cache, endpoint=_endpoint(),
                tqdm_class=Watch, library_name="ovs",
                library_version=_version())
        except BaseException as exc:  # noqa: BLE001 -- handed to the calling thread
            state["error"] = exc

    worker = threading.Thread(target=work, name="ovs-download", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
        if worker.is_alive() and time.monotonic() - state["last"] > timeout:
            raise WeightsUnavailableError(_unavailable_message(
                spec, name, url, f"no progress for {timeout:g} s (the hub did not answer "
                "or the transfer stalled; resolve_weights(timeout=...) sets the limit)"))
    exc = state["error"]
    if exc is not None:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise exc
        raise WeightsUnavailableError(_unavailable_message(
            spec, name, url, _describe(exc))) from exc
    return Path(state["result"])


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("ovs")
    except Exception:  # noqa: BLE001 -- running from a source tree
        return "dev"


def _describe(exc: BaseException) -> str:
    """A short reason for a huggingface_hub / httpx failure."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if isinstance(exc, HfHubHTTPError) and getattr(exc, "response", None) is not None:
        return f"HTTP {exc.response.status_code} {exc.response.reason_phrase}"
    if isinstance(exc, LocalEntryNotFoundError):
        cause = exc.__cause__ or exc.__context__
        detail = f": {type(cause).__name__}: {cause}" if cause is not None else ""
        return f"network error (the hub cannot be reached{detail})"
    return f"network error: {type(exc).__name__}: {exc}"
