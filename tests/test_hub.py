"""ovs.hub.resolve_weights against a local HTTP server on 127.0.0.1 (no real network)."""
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from ovs import hub
from ovs.hub import KNOWN_WEIGHTS, WeightsUnavailableError, resolve_weights
from ovs.weights import load_state_dict, save_safetensors

REPO = "timm/resnet50_clip.openai"
FILE = "open_clip_model.safetensors"
PATH = f"/{REPO}/resolve/main/{FILE}"


class Server:
    """A loopback HTTP server that serves one file and counts requests.

    mode: "ok" (200 with X-Linked-Etag), "redirect" (302 carrying X-Linked-Etag, then a CDN-like
    200 whose ETag is not a sha256), "redirect-bad" (the same with a wrong digest),
    "bad-digest", "truncated" (Content-Length larger than the body), "404"."""

    def __init__(self, body: bytes):
        self.body = body
        self.digest = hashlib.sha256(body).hexdigest()
        self.mode = "ok"
        self.hits = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.hits.append(self.path)
                mode = server.mode
                if mode == "404" or self.path not in (PATH, "/cdn/blob"):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if mode.startswith("redirect") and self.path == PATH:
                    digest = server.digest if mode == "redirect" else "1" * 64
                    self.send_response(302)
                    self.send_header("Location", "/cdn/blob")
                    self.send_header("X-Linked-Etag", f'"{digest}"')
                    self.send_header("X-Linked-Size", str(len(server.body)))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.body
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                if mode.startswith("redirect"):
                    self.send_header("ETag", '"d41d8cd98f00b204e9800998ecf8427e"')  # md5-like
                elif mode == "bad-digest":
                    self.send_header("X-Linked-Etag", '"' + "0" * 64 + '"')
                else:
                    self.send_header("X-Linked-Etag", f'"{server.digest}"')
                self.end_headers()
                if mode == "truncated":
                    body = body[: len(body) // 2]
                self.wfile.write(body)
                self.wfile.flush()
                if mode == "truncated":
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 5
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def weights_bytes(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "src.safetensors"
    save_safetensors({"visual.conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                      "logit_scale": np.array(4.6, np.float32)}, p)
    return p.read_bytes()


@pytest.fixture
def env(tmp_path, monkeypatch):
    for var in ("OVS_WEIGHTS_DIR", "OVS_CACHE_DIR", "OVS_OFFLINE", "HF_HUB_OFFLINE", "HF_HOME",
                "HF_ENDPOINT", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
                "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    return monkeypatch


@pytest.fixture
def server(weights_bytes, env):
    s = Server(weights_bytes)
    env.setenv("HF_ENDPOINT", s.url)
    yield s
    s.close()


def cache_files(cache: Path):
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())


def test_known_names_and_aliases():
    assert KNOWN_WEIGHTS["RN50"].repo == REPO
    assert KNOWN_WEIGHTS["ViT-B-16"].repo == "timm/vit_base_patch16_clip_224.openai"
    for spec in KNOWN_WEIGHTS.values():
        assert spec.filename == FILE
    for alias, name in [("RN50-quickgelu", "RN50"), ("ViT-B/16", "ViT-B-16"),
                        ("ViT-B-16-quickgelu", "ViT-B-16"), ("rn50", "RN50")]:
        assert hub._lookup(alias) is KNOWN_WEIGHTS[name]


def test_download_then_cache_without_network(server, env, tmp_path, weights_bytes, capsys):
    cache = tmp_path / "cache"
    # progress=True prints a line to stderr (only for large files: lower the bar for the test).
    env.setattr(hub, "_PROGRESS_MIN_BYTES", 0)
    resolve_weights("RN50", cache_dir=tmp_path / "other", progress=True, timeout=5)
    err = capsys.readouterr().err
    assert f"downloading {FILE}" in err and "100%" in err, err
    server.hits.clear()
    seen = []
    p = resolve_weights("RN50", cache_dir=cache, timeout=5,
                        progress=lambda done, total: seen.append((done, total)))
    assert p == cache / REPO / FILE
    assert p.read_bytes() == weights_bytes
    assert server.hits == [PATH]
    assert seen and seen[-1] == (len(weights_bytes), len(weights_bytes))
    sidecar = p.with_name(FILE + ".sha256").read_text()
    assert sidecar.startswith(f"{server.digest}  {FILE}\n"), sidecar
    assert cache_files(cache) == sorted([f"{REPO}/{FILE}", f"{REPO}/{FILE}.sha256"])
    assert sorted(load_state_dict(p)) == ["logit_scale", "visual.conv1.weight"]
    # Second call (alias, and via OVS_CACHE_DIR): no request.
    server.close()
    env.setenv("OVS_CACHE_DIR", str(cache))
    assert resolve_weights("RN50-quickgelu", timeout=5) == p
    assert resolve_weights("RN50", cache_dir=cache, verify=True, timeout=5) == p
    assert server.hits == [PATH]


def test_redirect_with_linked_etag(server, tmp_path, weights_bytes):
    server.mode = "redirect"
    p = resolve_weights("RN50", cache_dir=tmp_path / "c", timeout=5)
    assert p.read_bytes() == weights_bytes
    assert server.hits == [PATH, "/cdn/blob"]
    # The digest announced on the redirect is the one checked.
    server.mode = "redirect-bad"
    with pytest.raises(WeightsUnavailableError, match="sha256 mismatch"):
        resolve_weights("RN50", cache_dir=tmp_path / "c2", timeout=5)
    assert cache_files(tmp_path / "c2") == []


def test_cached_file_checks(server, tmp_path, weights_bytes):
    cache = tmp_path / "cache"
    p = resolve_weights("RN50", cache_dir=cache, timeout=5)
    # Same size, different content: only verify=True notices, and downloads again.
    corrupt = bytearray(weights_bytes)
    corrupt[-1] ^= 0xFF
    p.write_bytes(bytes(corrupt))
    assert resolve_weights("RN50", cache_dir=cache, timeout=5) == p
    assert len(server.hits) == 1
    assert resolve_weights("RN50", cache_dir=cache, verify=True, timeout=5) == p
    assert len(server.hits) == 2 and p.read_bytes() == weights_bytes
    # Wrong size: downloaded again without verify.
    p.write_bytes(weights_bytes[:-4])
    assert resolve_weights("RN50", cache_dir=cache, timeout=5) == p
    assert len(server.hits) == 3 and p.read_bytes() == weights_bytes
    # A file placed by hand without a sidecar is accepted if it is valid safetensors.
    p.with_name(FILE + ".sha256").unlink()
    assert resolve_weights("RN50", cache_dir=cache, offline=True) == p
    assert p.with_name(FILE + ".sha256").read_text().startswith(server.digest)


def test_wrong_digest_nothing_cached(server, tmp_path):
    server.mode = "bad-digest"
    cache = tmp_path / "cache"
    with pytest.raises(WeightsUnavailableError, match="sha256 mismatch") as info:
        resolve_weights("RN50", cache_dir=cache, timeout=5)
    assert server.url in str(info.value)
    assert cache_files(cache) == []


def test_truncated_body_nothing_cached(server, tmp_path):
    server.mode = "truncated"
    cache = tmp_path / "cache"
    with pytest.raises(WeightsUnavailableError, match="interrupted|truncated"):
        resolve_weights("RN50", cache_dir=cache, timeout=5)
    assert cache_files(cache) == []


def test_not_safetensors_nothing_cached(env, tmp_path):
    s = Server(b"<html>login page</html>")
    env.setenv("HF_ENDPOINT", s.url)
    try:
        cache = tmp_path / "cache"
        with pytest.raises(WeightsUnavailableError, match="not a valid safetensors"):
            resolve_weights("RN50", cache_dir=cache, timeout=5)
        assert cache_files(cache) == []
        s.mode = "404"
        with pytest.raises(WeightsUnavailableError, match="HTTP 404"):
            resolve_weights("RN50", cache_dir=cache, timeout=5)
    finally:
        s.close()


def closed_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def check_unavailable_message(msg):
    for frag in (FILE, "OVS_WEIGHTS_DIR", "RN50.safetensors", REPO, "ovs.load(", "--model"):
        assert frag in msg, f"{frag!r} missing from: {msg}"


def test_unreachable_endpoint(env, tmp_path):
    url = f"http://127.0.0.1:{closed_port()}"
    env.setenv("HF_ENDPOINT", url)
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_weights("RN50", cache_dir=tmp_path / "c", timeout=5)
    msg = str(info.value)
    check_unavailable_message(msg)
    assert f"{url}{PATH}" in msg and "network error" in msg
    assert isinstance(info.value, OSError)
    assert cache_files(tmp_path / "c") == []


@pytest.mark.parametrize("how", ["OVS_OFFLINE", "HF_HUB_OFFLINE", "argument"])
def test_offline(server, env, tmp_path, how):
    if how == "argument":
        kwargs = {"offline": True}
    else:
        env.setenv(how, "1")
        kwargs = {}
    with pytest.raises(WeightsUnavailableError, match="offline") as info:
        resolve_weights("RN50", cache_dir=tmp_path / "c", timeout=5, **kwargs)
    check_unavailable_message(str(info.value))
    assert server.hits == []
    # offline=False overrides the environment.
    if how != "argument":
        assert resolve_weights("RN50", cache_dir=tmp_path / "c", offline=False, timeout=5)
        assert server.hits == [PATH]


def test_weights_dir_lookup(env, tmp_path, weights_bytes):
    folder = tmp_path / "weights"
    folder.mkdir()
    env.setenv("OVS_WEIGHTS_DIR", str(folder))
    env.setenv("OVS_OFFLINE", "1")
    (folder / "RN50.safetensors").write_bytes(weights_bytes)
    assert resolve_weights("RN50", cache_dir=tmp_path / "c") == folder / "RN50.safetensors"
    assert resolve_weights("RN50-quickgelu") == folder / "RN50.safetensors"
    nested = folder / "timm--vit_base_patch16_clip_224.openai" / FILE
    nested.parent.mkdir()
    nested.write_bytes(weights_bytes)
    assert resolve_weights("ViT-B/16") == nested
    nested.unlink()
    with pytest.raises(WeightsUnavailableError, match="offline"):
        resolve_weights("ViT-B-16", cache_dir=tmp_path / "c")


def test_hf_hub_cache_lookup(env, tmp_path, weights_bytes):
    hub_dir = tmp_path / "hf"
    snap = hub_dir / "models--timm--resnet50_clip.openai" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / FILE).write_bytes(weights_bytes)
    (hub_dir / "models--timm--resnet50_clip.openai" / "refs").mkdir()
    (hub_dir / "models--timm--resnet50_clip.openai" / "refs" / "main").write_text("abc123")
    env.setenv("HF_HUB_CACHE", str(hub_dir))
    assert resolve_weights("RN50", cache_dir=tmp_path / "c", offline=True) == snap / FILE


def test_paths_and_unknown_names(env, tmp_path, weights_bytes):
    p = tmp_path / "my weights.safetensors"
    p.write_bytes(weights_bytes)
    assert resolve_weights(str(p)) == p
    assert resolve_weights(p) == p
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_weights(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        resolve_weights("nope.pt")
    with pytest.raises(FileNotFoundError):
        resolve_weights("./RN50")
    with pytest.raises(FileNotFoundError):
        resolve_weights(Path("RN50"))  # a Path is always a path, never a name
    with pytest.raises(IsADirectoryError):
        resolve_weights(tmp_path)
    with pytest.raises(ValueError, match="unknown weights 'RN101'.*'RN50'"):
        resolve_weights("RN101")
