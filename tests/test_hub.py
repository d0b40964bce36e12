"""ovs.hub.resolve_weights and ovs.load by name, downloading through huggingface_hub from a
loopback server (127.0.0.1 only, bounded, stopped by each test) that emulates the two requests
hf_hub_download makes: a HEAD on <endpoint>/<repo>/resolve/main/<file> answered as the hub
answers it for an LFS file (302 to a CDN URL with X-Repo-Commit, X-Linked-Etag = sha256,
X-Linked-Size), then a GET of the CDN URL."""
import hashlib
import http.server
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import ovs
from ovs import hub
from ovs.hub import KNOWN_WEIGHTS, WeightsUnavailableError, resolve_weights
from ovs.weights import load_state_dict, save_safetensors

REPO = "timm/resnet50_clip.openai"
FILE = "open_clip_model.safetensors"
PATH = f"/{REPO}/resolve/main/{FILE}"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
MAX_REQUESTS = 50


class Server:
    """A loopback hub for one file; records (method, path, headers) of each request.

    mode: "ok" (302 to /cdn/blob as the hub does for LFS files), "direct" (200 with the ETag on
    the resolve URL itself), "bad-digest" (announces a wrong sha256), "truncated" (the body
    stops half way, Content-Length says more), "404", "trickle" (one byte every 50 ms)."""

    def __init__(self, body: bytes):
        self.body = body
        self.digest = hashlib.sha256(body).hexdigest()
        self.mode = "ok"
        self.hits = []
        self.stopping = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _head(self, send_body):
                server.hits.append((self.command, self.path, dict(self.headers)))
                if len(server.hits) > MAX_REQUESTS:
                    raise RuntimeError("too many requests")
                mode = server.mode
                body = server.body
                digest = "0" * 64 if mode == "bad-digest" else server.digest
                if mode == "404" or self.path not in (PATH, "/cdn/blob"):
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path == PATH and mode != "direct":
                    self.send_response(302)
                    self.send_header("Location", f"{server.url}/cdn/blob")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("X-Linked-Etag", f'"{digest}"')
                    self.send_header("X-Linked-Size", str(len(body)))
                    self.send_header("ETag", '"d41d8cd98f00b204e9800998ecf8427e"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{digest}"')
                self.end_headers()
                if not send_body:
                    return
                if mode == "truncated":
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                elif mode == "trickle":
                    for i in range(len(body)):
                        if server.stopping.wait(0.05):
                            break
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                    self.close_connection = True
                else:
                    self.wfile.write(body)

            def do_HEAD(self):
                self._head(False)

            def do_GET(self):
                self._head(True)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def paths(self):
        """The requests for the file (huggingface_hub may also call other /api routes)."""
        return [(m, p) for m, p, _ in self.hits if p in (PATH, "/cdn/blob")]

    def close(self):
        self.stopping.set()
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
                "HF_ENDPOINT", "HF_TOKEN", "http_proxy", "HTTP_PROXY", "https_proxy",
                "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return monkeypatch


@pytest.fixture
def server(weights_bytes, env):
    s = Server(weights_bytes)
    env.setenv("HF_ENDPOINT", s.url)
    yield s
    s.close()


def cache_files(cache: Path):
    """Files (and links) in a hub cache, without huggingface_hub's lock files."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")
                  if (p.is_file() or p.is_symlink()) and ".locks" not in p.parts)


def snapshot(cache: Path):
    return cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT / FILE


def test_known_names_and_aliases():
    assert KNOWN_WEIGHTS["RN50"].repo == REPO
    assert KNOWN_WEIGHTS["ViT-B-16"].repo == "timm/vit_base_patch16_clip_224.openai"
    for spec in KNOWN_WEIGHTS.values():
        assert spec.filename == FILE
    for alias, name in [("RN50-quickgelu", "RN50"), ("ViT-B/16", "ViT-B-16"),
                        ("ViT-B-16-quickgelu", "ViT-B-16"), ("rn50", "RN50")]:
        assert hub.known_weights(alias) is KNOWN_WEIGHTS[name]


@pytest.mark.parametrize("mode", ["ok", "direct"])
def test_download_into_the_hf_cache_then_no_network(server, env, tmp_path, weights_bytes, mode):
    server.mode = mode
    env.setenv("HF_TOKEN", "hf_test_token")
    cache = tmp_path / "hf"
    seen = []
    p = resolve_weights("RN50", timeout=10, progress=lambda done, total: seen.append((done, total)))
    assert p == snapshot(cache) and p.read_bytes() == weights_bytes
    # huggingface_hub's layout: the blob is named by the sha256 the hub announced.
    assert os.path.basename(os.path.realpath(p)) == server.digest
    assert seen and seen[-1] == (len(weights_bytes), len(weights_bytes))
    blob = "/cdn/blob" if mode == "ok" else PATH
    assert server.paths()[0] == ("HEAD", PATH)
    assert [r for r in server.paths() if r[0] == "GET"] == [("GET", blob)]
    for _, path, headers in server.hits:  # through huggingface_hub, with HF_TOKEN
        headers = {k.lower(): v for k, v in headers.items()}
        if path in (PATH, "/cdn/blob"):
            assert "hf_hub/" in headers.get("user-agent", ""), headers
            assert headers.get("authorization") == "Bearer hf_test_token", headers
    assert sorted(load_state_dict(p)) == ["logit_scale", "visual.conv1.weight"]
    assert not [f for f in cache_files(cache) if f.endswith(".incomplete")]
    # Later calls (alias, verify) use the cache without any request, even offline.
    server.hits.clear()
    assert resolve_weights("RN50-quickgelu", timeout=10) == p
    assert resolve_weights("RN50", verify=True, offline=True) == p
    assert server.hits == []


def test_open_clip_cache_is_shared(env, tmp_path, weights_bytes):
    """A file huggingface_hub (e.g. through open_clip) already downloaded is used as is."""
    from huggingface_hub import hf_hub_download

    s = Server(weights_bytes)
    try:
        got = hf_hub_download(REPO, FILE, cache_dir=tmp_path / "shared", endpoint=s.url)
    finally:
        s.close()
    assert resolve_weights("RN50", cache_dir=tmp_path / "shared", offline=True) == Path(got)


def test_wrong_digest_is_removed(server, tmp_path):
    server.mode = "bad-digest"
    with pytest.raises(WeightsUnavailableError, match="sha256 mismatch") as info:
        resolve_weights("RN50", timeout=10)
    assert server.url in str(info.value)
    assert [f for f in cache_files(tmp_path / "hf") if "blobs" in f or "snapshots" in f] == []


def test_corrupted_cached_file(server, tmp_path, weights_bytes):
    p = resolve_weights("RN50", timeout=10)
    blob = Path(os.path.realpath(p))
    corrupt = bytearray(weights_bytes)
    corrupt[-1] ^= 0xFF
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(corrupt))
    # Without verify the (still parseable) file is used; verify notices, removes and downloads.
    assert resolve_weights("RN50", offline=True) == p
    with pytest.raises(WeightsUnavailableError, match="sha256 mismatch"):
        resolve_weights("RN50", offline=True, verify=True)
    assert not p.exists()
    assert resolve_weights("RN50", verify=True, timeout=10) == p
    assert p.read_bytes() == weights_bytes


def test_truncated_body_leaves_nothing(server, tmp_path):
    server.mode = "truncated"
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_weights("RN50", timeout=30)
    assert "network error" in str(info.value) or "onsistency" in str(info.value), info.value
    assert [f for f in cache_files(tmp_path / "hf") if "blobs" in f or "snapshots" in f] == []


def test_not_safetensors_and_404(env, tmp_path):
    s = Server(b"<html>login page</html>")
    env.setenv("HF_ENDPOINT", s.url)
    try:
        with pytest.raises(WeightsUnavailableError, match="not a valid safetensors"):
            resolve_weights("RN50", timeout=10)
        assert [f for f in cache_files(tmp_path / "hf") if "snapshots" in f] == []
        s.mode = "404"
        with pytest.raises(WeightsUnavailableError, match="HTTP 404"):
            resolve_weights("RN50", timeout=10)
    finally:
        s.close()


def test_trickling_server_is_abandoned(server, tmp_path):
    """1 byte every 50 ms never trips a per-read timeout; the stall limit ends it."""
    server.mode = "trickle"
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="no progress for 1.5 s"):
        resolve_weights("RN50", timeout=1.5)
    assert time.monotonic() - start < 10
    # The abandoned transfer ends once the server goes away, and leaves no file behind.
    server.close()
    for t in threading.enumerate():
        if t.name == "ovs-download":
            t.join(30)
            assert not t.is_alive()
    assert [f for f in cache_files(tmp_path / "hf") if "blobs" in f or "snapshots" in f] == []


def test_stale_incomplete_files_are_removed(server, tmp_path):
    blobs = tmp_path / "hf" / f"models--{REPO.replace('/', '--')}" / "blobs"
    blobs.mkdir(parents=True)
    old = blobs / f"{'a' * 64}.1234abcd.incomplete"
    fresh = blobs / f"{'b' * 64}.5678abcd.incomplete"
    old.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y")
    t = time.time() - hub.STALE_INCOMPLETE_SECONDS - 10
    os.utime(old, (t, t))
    resolve_weights("RN50", timeout=10)
    assert not old.exists(), "a killed download's leftover was kept"
    assert fresh.exists(), "a possibly active download's file was removed"


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
    # huggingface_hub retries a refused connection for ~25 s; ovs answers after one attempt.
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    env.setenv("HF_ENDPOINT", url)
    t0 = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_weights("RN50")
    assert time.monotonic() - t0 < 10
    msg = str(info.value)
    check_unavailable_message(msg)
    assert f"{url}{PATH}" in msg and f"cannot connect to 127.0.0.1:{port}" in msg
    assert "OVS_OFFLINE=1" in msg
    assert isinstance(info.value, OSError)


def test_unanswering_endpoint_hits_the_stall_limit(env, tmp_path):
    # A server that accepts the connection and never answers: the stall limit gives up.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        env.setenv("HF_ENDPOINT", url)
        with pytest.raises(WeightsUnavailableError, match="no progress for 2 s.*did not answer"):
            resolve_weights("RN50", timeout=2)
    finally:
        sock.close()


@pytest.mark.parametrize("how", ["OVS_OFFLINE", "HF_HUB_OFFLINE", "argument"])
def test_offline(server, env, tmp_path, how):
    if how == "argument":
        kwargs = {"offline": True}
    else:
        env.setenv(how, "1")
        kwargs = {}
    with pytest.raises(WeightsUnavailableError, match="offline") as info:
        resolve_weights("RN50", timeout=10, **kwargs)
    check_unavailable_message(str(info.value))
    assert server.hits == []
    # offline=False overrides the environment.
    if how != "argument":
        assert resolve_weights("RN50", offline=False, timeout=10)
        assert [r for r in server.paths() if r[0] == "GET"] == [("GET", "/cdn/blob")]


def test_weights_dir_lookup(env, tmp_path, weights_bytes):
    folder = tmp_path / "weights"
    folder.mkdir()
    env.setenv("OVS_WEIGHTS_DIR", str(folder))
    env.setenv("OVS_OFFLINE", "1")
    (folder / "RN50.safetensors").write_bytes(weights_bytes)
    assert resolve_weights("RN50") == folder / "RN50.safetensors"
    assert resolve_weights("RN50-quickgelu") == folder / "RN50.safetensors"
    nested = folder / "timm--vit_base_patch16_clip_224.openai" / FILE
    nested.parent.mkdir()
    nested.write_bytes(weights_bytes)
    assert resolve_weights("ViT-B/16") == nested
    nested.unlink()
    with pytest.raises(WeightsUnavailableError, match="offline"):
        resolve_weights("ViT-B-16")


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
    with pytest.raises(ValueError, match="timeout must be a positive number.*-1"):
        resolve_weights("RN50", timeout=-1)


# ------------------------------------------------------------------------------ ovs.load by name
@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    monkeypatch.setenv("OVS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    monkeypatch.delenv("OVS_WEIGHTS_DIR", raising=False)
    return tmp_path


def test_load_offline_unavailable(offline_env):
    with pytest.raises(WeightsUnavailableError) as info:
        ovs.load("RN50")
    msg = str(info.value)
    for part in ("open_clip_model.safetensors", "OVS_WEIGHTS_DIR", "RN50.safetensors", "offline"):
        assert part in msg, f"{part!r} missing from: {msg}"


def test_load_from_weights_dir(offline_env, fixtures_dir, monkeypatch):
    rn_path = fixtures_dir / "rn_tiny.safetensors"
    wdir = offline_env / "weights"
    wdir.mkdir()
    (wdir / "RN50.safetensors").symlink_to(rn_path)
    monkeypatch.setenv("OVS_WEIGHTS_DIR", str(wdir))
    model = ovs.load("RN50")
    assert model.arch == "resnet"
    assert model.act == KNOWN_WEIGHTS["RN50"].act == "quickgelu"   # recorded with the hub name
    assert "act='quickgelu'" in repr(model)
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    want = ovs.load(rn_path, act="quickgelu").encode_image(image)
    assert np.array_equal(model.encode_image(image), want)
    # Another activation for weights whose activation is known: allowed, but not silently.
    with pytest.warns(UserWarning, match=r"RN50 weights were trained with act='quickgelu'; act='gelu'"):
        other = ovs.load("RN50", act="gelu")
    assert other.act == "gelu"
