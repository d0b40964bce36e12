"""Find model weights by name: local folders, a cache, or a download from the Hugging Face hub.

``resolve_weights("RN50")`` returns the path of ``open_clip_model.safetensors`` for OpenAI's
CLIP RN50 (Hugging Face repo ``timm/resnet50_clip.openai``), looking in order at:

1. ``$OVS_WEIGHTS_DIR/<name>.safetensors`` or ``$OVS_WEIGHTS_DIR/<org>--<repo>/<file>``;
2. the ovs cache, ``<cache>/<org>/<repo>/<file>`` with cache = ``cache_dir`` argument,
   ``$OVS_CACHE_DIR`` or ``~/.cache/ovs/weights`` (a ``<file>.sha256`` sidecar records the
   digest and size of a verified download);
3. a Hugging Face hub cache that already holds the file (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or
   ``~/.cache/huggingface/hub``, as left by open_clip / huggingface_hub);
4. a download from ``{$HF_ENDPOINT or https://huggingface.co}/<repo>/resolve/main/<file>``:
   streamed to a temporary file in the cache folder while hashing, checked against the sha256
   the server announces, checked to parse as safetensors, then renamed into place.

Offline mode (``offline=True``, ``OVS_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) and network failures
raise :class:`WeightsUnavailableError` explaining how to supply the file by hand.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

__all__ = ["KNOWN_WEIGHTS", "KnownWeights", "WeightsUnavailableError", "resolve_weights",
           "weights_url", "cache_root"]

DEFAULT_ENDPOINT = "https://huggingface.co"
_CHUNK = 1 << 20
_PROGRESS_MIN_BYTES = 8 << 20  # progress=True prints only for downloads at least this large


@dataclasses.dataclass(frozen=True)
class KnownWeights:
    """A named set of public weights on the Hugging Face hub."""

    name: str                       # canonical name, e.g. "RN50"
    repo: str                       # "timm/resnet50_clip.openai"
    filename: str                   # "open_clip_model.safetensors"
    aliases: tuple[str, ...] = ()   # other accepted names


KNOWN_WEIGHTS: dict[str, KnownWeights] = {
    "RN50": KnownWeights("RN50", "timm/resnet50_clip.openai", "open_clip_model.safetensors",
                         ("RN50-quickgelu",)),
    "ViT-B-16": KnownWeights("ViT-B-16", "timm/vit_base_patch16_clip_224.openai",
                             "open_clip_model.safetensors", ("ViT-B/16", "ViT-B-16-quickgelu")),
}


class WeightsUnavailableError(OSError):
    """Weights could not be found locally nor downloaded (offline, or a network failure)."""


ProgressCallback = Callable[[int, "int | None"], None]


def _lookup(name: str) -> KnownWeights | None:
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


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The ovs weight cache folder: ``cache_dir``, ``$OVS_CACHE_DIR`` or ~/.cache/ovs/weights."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("OVS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/ovs/weights").expanduser()


def weights_url(spec: KnownWeights) -> str:
    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    return f"{endpoint}/{spec.repo}/resolve/main/{urllib.parse.quote(spec.filename)}"


def _looks_like_path(s: str) -> bool:
    return (os.sep in s or "/" in s or (os.altsep is not None and os.altsep in s)
            or s.startswith(("~", ".")) or s.lower().endswith(
                (".safetensors", ".pt", ".pth", ".bin", ".ckpt")))


def resolve_weights(name_or_path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                    offline: bool | None = None, verify: bool = False,
                    progress: bool | ProgressCallback = False,
                    timeout: float = 30.0) -> Path:
    """The local path of a weight file, downloading known weights when needed.

    name_or_path: an existing file (returned as is), or a name from KNOWN_WEIGHTS ("RN50",
                  "ViT-B-16", or an alias such as "ViT-B/16").
    cache_dir:    the ovs cache folder (default $OVS_CACHE_DIR or ~/.cache/ovs/weights).
    offline:      never use the network (default: $OVS_OFFLINE or $HF_HUB_OFFLINE).
    verify:       re-hash a cached file against its recorded sha256 instead of checking its size.
    progress:     True prints a progress line to stderr for large downloads; a callable gets
                  (bytes_done, bytes_total or None) after every chunk.
    timeout:      seconds for connecting and for each network read.

    Raises FileNotFoundError for a path that does not exist, ValueError for an unknown name and
    WeightsUnavailableError when the weights are neither local nor downloadable.
    """
    raw = os.fspath(name_or_path)
    if not isinstance(raw, str):
        raw = os.fsdecode(raw)
    expanded = os.path.expanduser(raw)
    if os.path.isfile(expanded):
        return Path(expanded)
    spec = None if isinstance(name_or_path, os.PathLike) else _lookup(raw)
    if spec is None:
        if isinstance(name_or_path, os.PathLike) or _looks_like_path(raw):
            if os.path.isdir(expanded):
                raise IsADirectoryError(
                    f"weights path {raw!r} is a directory; pass the weight file itself "
                    f"(e.g. {os.path.join(raw, 'open_clip_model.safetensors')!r})")
            raise FileNotFoundError(f"weight file {raw!r} does not exist (known names: "
                                    f"{_known_names()})")
        raise ValueError(f"unknown weights {raw!r}: pass a file path or one of {_known_names()}")

    local = _find_local(spec, raw)
    if local is not None:
        return local

    final = cache_root(cache_dir) / spec.repo / spec.filename
    cached = _check_cached(final, verify)
    if cached == "ok":
        return final

    hf = _find_hf_cache(spec)
    if hf is not None:
        return hf

    url = weights_url(spec)
    if _is_offline(offline):
        reason = "offline mode is on (offline=True, OVS_OFFLINE or HF_HUB_OFFLINE)"
        if cached:
            reason += f"; the cached copy {final} failed its check ({cached})"
        raise WeightsUnavailableError(_unavailable_message(spec, raw, url, reason, final))
    try:
        _download(url, final, progress=progress, timeout=timeout)
    except _DownloadError as exc:
        raise WeightsUnavailableError(
            _unavailable_message(spec, raw, url, str(exc), final)) from exc.__cause__
    return final


def _known_names() -> str:
    names = []
    for spec in KNOWN_WEIGHTS.values():
        names.append(spec.name)
        names.extend(spec.aliases)
    return ", ".join(repr(n) for n in names)


def _unavailable_message(spec: KnownWeights, name: str, url: str, reason: str,
                         final: Path) -> str:
    return (
        f"cannot get weights {name!r} ({spec.repo}/{spec.filename}) from {url}: {reason}.\n"
        f"To supply the file by hand, download {spec.filename} from {url} on a machine with "
        f"network access, then either\n"
        f"  - pass its path: ovs.load(\"/path/{spec.filename}\") (CLI: --model /path/{spec.filename}),"
        f"\n  - or put it at $OVS_WEIGHTS_DIR/{spec.name}.safetensors and set OVS_WEIGHTS_DIR,"
        f"\n  - or copy it to {final}."
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


def _find_hf_cache(spec: KnownWeights) -> Path | None:
    hub = os.environ.get("HF_HUB_CACHE")
    if not hub:
        home = os.environ.get("HF_HOME")
        hub = os.path.join(home, "hub") if home else "~/.cache/huggingface/hub"
    repo_dir = Path(hub).expanduser() / ("models--" + spec.repo.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo_dir / "refs" / "main"
    order = []
    try:
        if ref.is_file():
            order.append(snapshots / ref.read_text().strip() / spec.filename)
        order.extend(sorted(snapshots.glob(f"*/{spec.filename}")))
    except OSError:
        return None
    for c in order:
        if c.is_file():
            return c
    return None


# --------------------------------------------------------------------------- cache records
def _sidecar(final: Path) -> Path:
    return final.with_name(final.name + ".sha256")


def _read_sidecar(final: Path) -> tuple[str, int | None] | None:
    try:
        text = _sidecar(final).read_text()
    except OSError:
        return None
    digest, size = None, None
    for line in text.splitlines():
        m = re.match(r"^([0-9a-f]{64})\s", line)
        if m and digest is None:
            digest = m.group(1)
        m = re.match(r"^#\s*size\s+(\d+)\s*$", line)
        if m:
            size = int(m.group(1))
    return (digest, size) if digest else None


def _write_sidecar(final: Path, digest: str, size: int) -> None:
    # sha256sum-compatible first line (`sha256sum -c` skips the '#' comment).
    _atomic_write_text(_sidecar(final), f"{digest}  {final.name}\n# size {size}\n")


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(_CHUNK)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _check_cached(final: Path, verify: bool) -> str:
    """"ok" if `final` is usable, "" if absent, else the reason it is not."""
    if not final.is_file():
        return ""
    record = _read_sidecar(final)
    size = final.stat().st_size
    if record is None:
        # Put there by hand (or an old download): accept it if it is a valid safetensors file,
        # and record its digest so later calls can check it.
        problem = _validate_file(final, final.name)
        if problem:
            return problem
        try:
            _write_sidecar(final, _sha256_file(final), size)
        except OSError:
            pass
        return "ok"
    digest, want_size = record
    if want_size is not None and size != want_size:
        return f"size {size} bytes, recorded {want_size}"
    if verify:
        got = _sha256_file(final)
        if got != digest:
            return f"sha256 {got} does not match the recorded {digest}"
    return "ok"


def _validate_file(path: Path, name: str) -> str:
    """"" if `path` parses as safetensors (or `name` is not one), else the problem."""
    if not name.endswith(".safetensors"):
        return ""
    from . import _core

    try:
        with _core.SafeTensorsFile(str(path)):
            pass
    except (OSError, ValueError) as exc:
        return f"not a valid safetensors file: {exc}"
    return ""


# --------------------------------------------------------------------------- download
class _DownloadError(Exception):
    pass


_SHA256_RE = re.compile(r'^(?:W/)?"?([0-9a-fA-F]{64})"?$')


def _announced_sha256(value: str | None) -> str | None:
    if not value:
        return None
    m = _SHA256_RE.match(value.strip())
    return m.group(1).lower() if m else None


class _RecordingRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Keeps X-Linked-Etag / X-Linked-Size from redirect responses: the hub sends them on the
    302 to its CDN, and the CDN's own ETag is not the file's sha256."""

    def __init__(self):
        super().__init__()
        self.linked_etag: str | None = None
        self.linked_size: str | None = None

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.linked_etag = headers.get("X-Linked-Etag") or self.linked_etag
        self.linked_size = headers.get("X-Linked-Size") or self.linked_size
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _download(url: str, final: Path, *, progress, timeout: float) -> None:
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _DownloadError(f"cannot create the cache folder {final.parent}: {exc}") from exc
    redirects = _RecordingRedirectHandler()
    opener = urllib.request.build_opener(redirects)
    request = urllib.request.Request(url, headers={"User-Agent": "ovs-weights/0.1",
                                                   "Accept-Encoding": "identity"})
    try:
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=final.name + ".", suffix=".part")
    except OSError as exc:
        raise _DownloadError(f"cannot write to the cache folder {final.parent}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = opener.open(request, timeout=timeout)
            except urllib.error.HTTPError as exc:
                raise _DownloadError(f"HTTP {exc.code} {exc.reason}") from exc
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise _DownloadError(f"network error: {reason}") from exc
            with response:
                headers = response.headers
                expected = (_announced_sha256(headers.get("X-Linked-Etag"))
                            or _announced_sha256(redirects.linked_etag)
                            or _announced_sha256(headers.get("ETag")))
                length = headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                linked = redirects.linked_size or headers.get("X-Linked-Size")
                if total is None and linked and linked.isdigit():
                    total = int(linked)
                digest, done = _stream(response, out, total, url, progress)
            out.flush()
            os.fsync(out.fileno())
        if total is not None and done != total:
            raise _DownloadError(f"download truncated: got {done} of {total} bytes")
        if expected and digest != expected:
            raise _DownloadError(f"sha256 mismatch: the server announced {expected}, the "
                                 f"downloaded file has {digest} (corrupted transfer or proxy)")
        problem = _validate_file(Path(tmp), final.name)
        if problem:
            raise _DownloadError(f"the downloaded file is {problem}")
        os.replace(tmp, final)
    except BaseException:
        _unlink(tmp)
        raise
    try:
        _write_sidecar(final, digest, done)
    except OSError:
        pass  # the file itself is valid; the digest is recomputed next time


def _stream(response, out, total: int | None, url: str, progress) -> tuple[str, int]:
    h = hashlib.sha256()
    done = 0
    callback = progress if callable(progress) else None
    printer = _ProgressLine(url, total) if progress is True and (
        total is None or total >= _PROGRESS_MIN_BYTES) else None
    try:
        while True:
            try:
                chunk = response.read(_CHUNK)
            except Exception as exc:  # IncompleteRead, timeouts, resets
                raise _DownloadError(f"download interrupted after {done} bytes: "
                                     f"{type(exc).__name__}: {exc}") from exc
            if not chunk:
                break
            h.update(chunk)
            out.write(chunk)
            done += len(chunk)
            if callback:
                callback(done, total)
            if printer:
                printer.update(done)
    finally:
        if printer:
            printer.finish(done)
    return h.hexdigest(), done


class _ProgressLine:
    def __init__(self, url: str, total: int | None):
        self.name = url.rsplit("/", 1)[-1]
        self.total = total
        self.start = time.monotonic()
        self.last = 0.0

    def _line(self, done: int) -> str:
        mb = done / 1e6
        rate = mb / max(time.monotonic() - self.start, 1e-6)
        if self.total:
            return (f"\rdownloading {self.name}: {mb:.1f}/{self.total / 1e6:.1f} MB "
                    f"({100 * done / self.total:.0f}%, {rate:.1f} MB/s)")
        return f"\rdownloading {self.name}: {mb:.1f} MB ({rate:.1f} MB/s)"

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= 0.5:
            self.last = now
            sys.stderr.write(self._line(done))
            sys.stderr.flush()

    def finish(self, done: int) -> None:
        sys.stderr.write(self._line(done) + "\n")
        sys.stderr.flush()
