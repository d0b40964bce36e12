"""The restricted torch-zip / TorchScript reader (ovs.torch_reader, through
ovs.weights.load_state_dict and ovs.load).

References are independent: torch.save / torch.jit.save / torch.jit.load and open_clip models
built here. The hostile-file tests craft pickles and archives by hand and check that nothing
runs, nothing in ovs changes, memory stays within the documented budget (tracemalloc peaks,
which count NumPy's and the pickle machinery's allocations) and every parser loop stays linear.
"""
import collections
import io
import os
import pickle
import struct
import subprocess
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch

import ovs
from ovs import torch_reader
from ovs.weights import WeightFileError, detect_format, load_state_dict, save_safetensors

from conftest import assert_close, assert_same

# torch.jit.* warn that they are deprecated; they are still the way these archives are made.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")


# --------------------------------------------------------------------------- torch checkpoints
def torch_reference(t):
    t = t.detach()
    return t.float().numpy() if t.is_floating_point() else t.numpy()


def make_state_dict():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=g)
    shared = torch.randn(40, generator=g)
    return collections.OrderedDict([
        ("f32", torch.randn(3, 4, generator=g)),
        ("f16", torch.randn(5, 3, generator=g).half()),
        ("bf16", torch.randn(2, 7, generator=g).bfloat16()),
        ("f64", torch.randn(4, generator=g).double()),
        ("transposed", base.t()),
        ("sliced", base[1:5:2, 3:]),
        ("shared_a", shared[:10].view(2, 5)),
        ("shared_b", shared[10:34].view(4, 6).t()),
        ("shared_c", shared[::3]),
        ("expanded", torch.randn(3, 1, generator=g).expand(3, 4)),
        ("half_t", torch.randn(4, 6, generator=g).half().t()),
        ("bf16_slice", torch.randn(8, 8, generator=g).bfloat16()[2:6, ::2]),
        ("param", torch.nn.Parameter(torch.randn(3, generator=g))),
        ("long", torch.arange(7)),
        ("int8", torch.arange(-3, 3, dtype=torch.int8)),
        ("bool", torch.tensor([True, False, True])),
        ("scalar", torch.tensor(2.5)),
        ("num_batches_tracked", torch.tensor(17)),
        ("empty", torch.zeros(0, 3)),
        ("uint16", torch.arange(5).to(torch.uint16)),
    ])


def check_state(got, want, what):
    assert list(got) == list(want), f"{what}: names {list(got)} != {list(want)}"
    for name, t in want.items():
        ref = torch_reference(t)
        if ref.dtype == np.float64:
            ref = ref.astype(np.float32)
        assert_same(got[name], ref, f"{what}: {name}")
        assert got[name].flags.c_contiguous, name


def test_torch_zip_checkpoint(tmp_path):
    sd = make_state_dict()
    p = tmp_path / "sd.pth"
    torch.save(sd, p)
    assert detect_format(p) == "zip"
    check_state(load_state_dict(p), sd, "torch.save")
    # Nested: detectron2 {"model": sd, ...}, {"state_dict": sd}, explicit key, "module." prefix.
    torch.save({"model": sd, "iteration": 90000, "__author__": "x"}, tmp_path / "d2.pth")
    check_state(load_state_dict(tmp_path / "d2.pth"), sd, "detectron2")
    torch.save({"state_dict": sd, "epoch": 3, "cfg": {"lr": 0.1, "tags": {"a", "b"}}},
               tmp_path / "ck.pt")
    check_state(load_state_dict(tmp_path / "ck.pt"), sd, "state_dict")
    torch.save({"ema": sd, "raw": sd}, tmp_path / "two.pt")
    with pytest.raises(WeightFileError, match="pass key="):
        load_state_dict(tmp_path / "two.pt")
    check_state(load_state_dict(tmp_path / "two.pt", key="ema"), sd, "key=")
    with pytest.raises(WeightFileError, match="no key 'nope'"):
        load_state_dict(tmp_path / "two.pt", key="nope")
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "dp.bin")
    check_state(load_state_dict(tmp_path / "dp.bin"), sd, "module. prefix")
    mixed = {"module.a": torch.ones(1), "b": torch.ones(1)}
    torch.save(mixed, tmp_path / "mixed.pt")
    assert list(load_state_dict(tmp_path / "mixed.pt")) == ["module.a", "b"]


def test_torch_module_state_dict(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                              torch.nn.Linear(4, 2).half())
    p = tmp_path / "net.pt"
    torch.save(net.state_dict(), p)
    check_state(load_state_dict(p), net.state_dict(), "module state_dict")


def test_big_endian_archive(tmp_path):
    sd = {"a": torch.randn(3, 4), "h": torch.randn(5).half(), "l": torch.arange(4)}
    src = tmp_path / "le.pt"
    torch.save(sd, src)
    dst = tmp_path / "be.pt"
    with zipfile.ZipFile(src) as zin:
        # torch.save numbers storages in order of appearance: 0 -> a, 1 -> h, 2 -> l
        itemsizes = {"0": 4, "1": 2, "2": 8}
        with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                data = zin.read(info)
                if info.filename == "le/byteorder":
                    data = b"big"
                elif info.filename.startswith("le/data/"):
                    k = info.filename.rsplit("/", 1)[1]
                    data = np.frombuffer(data, f"<u{itemsizes[k]}").byteswap().tobytes()
                zout.writestr(info.filename, data)
    check_state(load_state_dict(dst), sd, "big-endian")


class ScriptSub(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.register_buffer("buf", torch.arange(4.0))
        self.plain = torch.zeros(3)  # a plain tensor attribute: not in state_dict

    def forward(self, x):
        return self.lin(x) + self.buf[:2].sum() + self.plain.sum()


class ScriptNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.sub = ScriptSub()
        self.bn = torch.nn.BatchNorm1d(2)
        self.scale = torch.nn.Parameter(torch.randn(2, 2).half())
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(2)])
        self.seq = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(),
                                       torch.nn.Linear(2, 2, bias=False))

    def forward(self, x):
        y = self.bn(self.sub(x))
        for b in self.blocks:
            y = b(y)
        return self.seq(y) @ self.scale.float()


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_archive(tmp_path, how):
    torch.manual_seed(0)
    net = ScriptNet().eval()
    net.bn.running_mean.uniform_()
    sm = torch.jit.script(net) if how == "script" else torch.jit.trace(net, torch.randn(4, 3))
    p = tmp_path / f"{how}.pt"
    torch.jit.save(sm, str(p))
    want = torch.jit.load(str(p)).state_dict()
    got = load_state_dict(p)
    check_state(got, want, how)
    # No non-persistent buffers here, so also exactly the eager module's state dict.
    check_state(got, net.state_dict(), f"{how} vs eager")
    assert "sub.plain" not in got and "seq.2.bias" not in got
    with pytest.raises(WeightFileError, match="TorchScript"):
        load_state_dict(p, key="model")


# --------------------------------------------------------------------------- refused files
def write_checkpoint_zip(path, pkl_bytes, storages=(), prefix="archive"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", pkl_bytes)
        z.writestr(f"{prefix}/byteorder", "little")
        for key, data in storages:
            z.writestr(f"{prefix}/data/{key}", data)
        z.writestr(f"{prefix}/version", "3\n")


class Evil:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def evil_pickles(marker):
    cmd = f"touch {marker}"
    return {
        "os.system": pickle.dumps({"w": Evil(os.system, cmd)}, protocol=2),
        "builtins.eval": pickle.dumps(Evil(eval, f"open({str(marker)!r}, 'w')"), protocol=2),
        "builtins.exec": pickle.dumps(Evil(exec, f"open({str(marker)!r}, 'w')"), protocol=4),
        "builtins.getattr": pickle.dumps(Evil(getattr, Evil(__import__, "os"), "system"),
                                         protocol=2),
        "subprocess.call": pickle.dumps(Evil(subprocess.call, ["touch", str(marker)]),
                                        protocol=2),
        "nested in tensor args": pickle.dumps(
            {"w": Evil(torch._utils._rebuild_tensor_v2, Evil(os.system, cmd), 0, (1,), (1,),
                       False, collections.OrderedDict())}, protocol=2),
    }


@pytest.mark.parametrize("kind", list(evil_pickles("M")))
@pytest.mark.parametrize("skip", [False, True])
def test_malicious_pickles_are_refused_and_never_run(tmp_path, kind, skip):
    marker = tmp_path / "MARKER"
    pkl = evil_pickles(marker)[kind]
    p = tmp_path / "evil.pt"
    write_checkpoint_zip(p, pkl)
    with pytest.raises(WeightFileError, match="refusing to load global") as info:
        load_state_dict(p, skip_unknown_objects=skip)
    msg = str(info.value)
    expected = {"os.system": ("posix.system", "os.system"), "builtins.eval": ("builtins.eval",),
                "builtins.exec": ("builtins.exec",), "builtins.getattr": ("builtins.getattr",),
                "subprocess.call": ("subprocess.call",),
                "nested in tensor args": ("posix.system", "os.system")}[kind]
    assert any(e in msg for e in expected), msg
    assert not marker.exists()
    # Same pickle as a TorchScript-looking archive.
    write_checkpoint_zip(p, pkl, prefix="model")
    with zipfile.ZipFile(p, "a") as z:
        z.writestr("model/code/__torch__.py", "class M(Module):\n  __parameters__ = []\n")
    with pytest.raises(WeightFileError, match="refusing"):
        load_state_dict(p, skip_unknown_objects=skip)
    assert not marker.exists()


def test_whole_pickled_module_and_unknown_classes(tmp_path):
    p = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), p)  # a full module, not a state dict
    with pytest.raises(WeightFileError, match="torch.nn.modules.linear.Linear"):
        load_state_dict(p)
    # A training checkpoint with an extra harmless object loads only with skip_unknown_objects.
    import datetime
    sd = {"w": torch.randn(2, 3)}
    torch.save({"model": sd, "when": datetime.date(2024, 1, 1)}, p)
    with pytest.raises(WeightFileError, match="datetime.date"):
        load_state_dict(p)
    check_state(load_state_dict(p, skip_unknown_objects=True), sd, "skip_unknown_objects")
    # ... but the placeholders never count as tensors.
    torch.save({"model": {"w": datetime.date(2024, 1, 1)}}, p)
    with pytest.raises(WeightFileError, match="without a tensor dict"):
        load_state_dict(p, skip_unknown_objects=True)


def test_legacy_plain_pickle_and_unknown_formats(tmp_path):
    p = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, p, _use_new_zipfile_serialization=False)
    assert detect_format(p) == "legacy-torch"
    with pytest.raises(WeightFileError, match="legacy"):
        load_state_dict(p)
    q = tmp_path / "plain.pkl"
    q.write_bytes(pickle.dumps({"w": np.ones(2)}, protocol=2))
    with pytest.raises(WeightFileError, match="plain pickle"):
        load_state_dict(q)
    r = tmp_path / "junk.bin"
    r.write_bytes(b"hello world, not weights")
    with pytest.raises(WeightFileError, match="not a safetensors file"):
        load_state_dict(r)
    r.write_bytes(b"")
    with pytest.raises(WeightFileError):
        load_state_dict(r)
    z = tmp_path / "other.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(WeightFileError, match="data.pkl"):
        load_state_dict(z)


def test_corrupt_torch_archives(tmp_path):
    sd = {"w": torch.randn(4, 4), "v": torch.randn(3)}
    p = tmp_path / "ok.pt"
    torch.save(sd, p)
    blob = p.read_bytes()
    # Truncations and byte flips of a real checkpoint: clean errors (or, rarely, the same data).
    rng = np.random.default_rng(5)
    for i in range(150):
        b = bytearray(blob)
        if i % 2:
            del b[rng.integers(0, len(b)):]
        else:
            for _ in range(3):
                b[rng.integers(0, len(b))] = rng.integers(0, 256)
        q = tmp_path / "bad.pt"
        q.write_bytes(bytes(b))
        try:
            got = load_state_dict(q)
        except WeightFileError:
            continue
        for k, v in got.items():
            assert isinstance(v, np.ndarray)

    class StoragePickler(pickle.Pickler):
        def persistent_id(self, obj):
            return obj if isinstance(obj, tuple) and obj and obj[0] == "storage" else None

    def tensor_pickle(size, stride, offset=0, numel=4):
        buf = io.BytesIO()
        pid = ("storage", torch.FloatStorage, "0", "cpu", numel)
        StoragePickler(buf, protocol=2).dump(
            {"w": Evil(torch._utils._rebuild_tensor_v2, pid, offset, size, stride, False,
                       collections.OrderedDict())})
        return buf.getvalue()

    data = np.arange(4, dtype=np.float32).tobytes()
    write_checkpoint_zip(p, tensor_pickle((2, 2), (2, 1)), [("0", data)])
    assert_same(load_state_dict(p)["w"], np.arange(4, dtype=np.float32).reshape(2, 2), "crafted")
    cases = [
        (tensor_pickle((2, 3), (3, 1)), [("0", data)], "reach element"),
        (tensor_pickle((2, 2), (2, 1), offset=1), [("0", data)], "reach element"),
        (tensor_pickle((4,), (1,), numel=5), [("0", data)], "has 16 bytes"),
        (tensor_pickle((2, 2), (2, 1)), [], "missing"),
        (tensor_pickle((2, -2), (2, 1)), [("0", data)], "non-negative"),
        (tensor_pickle((2, 2), (2, 1.5)), [("0", data)], "non-negative"),
        (tensor_pickle((2, 2), (2,)), [("0", data)], "differ in length"),
        (tensor_pickle((1 << 20, 1 << 20), (0, 0)), [("0", data)], "expands 4 stored elements"),
    ]
    for pkl, storages, frag in cases:
        write_checkpoint_zip(p, pkl, storages)
        with pytest.raises(WeightFileError, match=frag):
            load_state_dict(p)
    write_checkpoint_zip(p, b"\x80\x02}q\x00(X", [])  # truncated pickle
    with pytest.raises(WeightFileError, match="corrupt"):
        load_state_dict(p)


# --------------------------------------------------------------------------- hostile archives
# Hand-assembled pickle opcodes (protocol 2).
def _global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _unicode(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _peak_bytes(fn):
    """(result or exception, peak bytes traced while fn ran)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 -- returned to the caller, which checks it
            out = exc
        return out, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def _tensor_pickle_entries(entries):
    """A pickle of {name: tensor} where each tensor is (storage key, numel, size, stride)."""
    class StoragePickler(pickle.Pickler):
        def persistent_id(self, obj):
            return obj if isinstance(obj, tuple) and obj and obj[0] == "storage" else None

    buf = io.BytesIO()
    StoragePickler(buf, protocol=2).dump({
        name: Evil(torch._utils._rebuild_tensor_v2, ("storage", torch.FloatStorage, key, "cpu",
                                                     numel), 0, size, stride, False,
                   collections.OrderedDict())
        for name, (key, numel, size, stride) in entries.items()})
    return buf.getvalue()


def test_stride0_tensors_are_capped_in_total(tmp_path):
    # Each tensor is under the per-tensor cap (2^28 elements), together they are 512 MiB from a
    # file of a few hundred bytes.
    p = tmp_path / "broadcast.pt"
    pkl = _tensor_pickle_entries({f"w{i}": ("0", 1, (1 << 24,), (0,)) for i in range(8)})
    write_checkpoint_zip(p, pkl, [("0", np.ones(1, np.float32).tobytes())])
    assert p.stat().st_size < 2000
    err, peak = _peak_bytes(lambda: load_state_dict(p))
    assert isinstance(err, WeightFileError), err
    assert "over its limit" in str(err) and "expands 1 stored elements" in str(err), err
    assert peak < 24 << 20, f"peak {peak >> 20} MiB while refusing"
    # The budget is 4 x file size + 16 MiB: a 2 MiB broadcast of a small file still loads.
    pkl = _tensor_pickle_entries({"w": ("0", 1, (512, 1024), (0, 0))})
    write_checkpoint_zip(p, pkl, [("0", np.full(1, 2.5, np.float32).tobytes())])
    assert_same(load_state_dict(p)["w"], np.full((512, 1024), 2.5, np.float32), "broadcast")


def test_huge_memo_index_costs_nothing(tmp_path):
    # PROTO 2, EMPTY_TUPLE, LONG_BINPUT 50,000,000, STOP: 9 bytes.
    pkl = b"\x80\x02)r" + struct.pack("<I", 50_000_000) + b"."
    assert len(pkl) == 9
    p = tmp_path / "memo.pt"
    write_checkpoint_zip(p, pkl)
    err, peak = _peak_bytes(lambda: load_state_dict(p))
    assert isinstance(err, WeightFileError) and "holds a tuple" in str(err), err
    assert peak < 8 << 20, f"peak {peak >> 20} MiB for a 9-byte pickle"


def test_deflated_pickle_bomb_is_refused_before_decompressing(tmp_path):
    # 48 MiB of zero bytes inside one BINBYTES opcode, deflated to ~50 KB.
    n = 48 << 20
    p = tmp_path / "deflated.pt"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("archive/data.pkl", "w", force_zip64=True) as f:
            f.write(b"\x80\x04\x8e" + struct.pack("<Q", n))
            chunk = bytes(1 << 20)
            for _ in range(n >> 20):
                f.write(chunk)
            f.write(b".")
    assert p.stat().st_size < 1 << 20
    err, peak = _peak_bytes(lambda: load_state_dict(p))
    assert isinstance(err, WeightFileError), err
    assert "data.pkl" in str(err) and "over its limit" in str(err), err
    assert peak < 8 << 20, f"peak {peak >> 20} MiB while refusing"


def test_pickle_object_amplification_is_capped(tmp_path):
    # 2 M EMPTY_DICT opcodes (one byte each, deflated to a few KB) would build 2 M dicts.
    p = tmp_path / "dicts.pt"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + b"}" * (2 << 20) + b".")
    err, peak = _peak_bytes(lambda: load_state_dict(p))
    assert isinstance(err, WeightFileError) and "pickle's objects" in str(err), err
    assert peak < 32 << 20, f"peak {peak >> 20} MiB while refusing"


def _module_state():
    """Defaults, attribute dicts and class namespaces of everything in ovs's weight readers."""
    import ovs.weights as weights

    seen = {}

    def visit(key, v, depth=0):
        if id(v) in seen or depth > 2:
            return
        snap = (getattr(v, "__defaults__", None), getattr(v, "__kwdefaults__", None),
                sorted(map(str, vars(v))) if hasattr(v, "__dict__") else None)
        seen[id(v)] = (key, repr(snap))
        if isinstance(v, dict):
            for k, x in v.items():
                visit(f"{key}[{k!r}]", x, depth + 1)
        for slot in getattr(type(v), "__slots__", ()):
            if hasattr(v, slot):
                visit(f"{key}.{slot}", getattr(v, slot), depth + 1)
        if callable(v) and hasattr(v, "__func__"):
            visit(f"{key}.__func__", v.__func__, depth + 1)

    for mod in (weights, torch_reader, collections):
        for name, v in sorted(vars(mod).items()):
            if not name.startswith("__"):
                visit(f"{mod.__name__}.{name}", v)
    return sorted(seen.values())


BUILD_TARGETS = [("torch", "Size"), ("torch", "device"), ("torch", "Tensor"),
                 ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
                 ("collections", "OrderedDict"), ("torch", "FloatStorage"), ("torch", "float32"),
                 ("torch.jit._pickle", "restore_type_tag"), ("torch.jit._pickle", "build_intlist"),
                 ("builtins", "set")]


@pytest.mark.parametrize("target", BUILD_TARGETS, ids=lambda t: ".".join(t))
@pytest.mark.parametrize("how", ["dict", "slots"])
def test_build_cannot_modify_allowed_globals(tmp_path, target, how):
    # GLOBAL target; state; BUILD; STOP. "dict" state updates target.__dict__, "slots" state
    # (None, {...}) calls setattr -- e.g. replacing a function's __defaults__.
    entries = b"}" + _unicode("__defaults__") + b"K\x07\x85" + b"s"  # {"__defaults__": (7,)}
    state = entries if how == "dict" else b"N" + entries + b"\x86"
    pkl = b"\x80\x02" + _global(*target) + state + b"b."
    p = tmp_path / "build.pt"
    write_checkpoint_zip(p, pkl)
    before = _module_state()
    with pytest.raises(WeightFileError, match=r"BUILD \(set state\)"):
        load_state_dict(p)
    assert _module_state() == before, "a weight file changed ovs's module state"
    # Same inside a TorchScript-looking archive, and with skip_unknown_objects.
    write_checkpoint_zip(p, pkl, prefix="model")
    with pytest.raises(WeightFileError, match=r"BUILD \(set state\)"):
        load_state_dict(p, skip_unknown_objects=True)
    assert _module_state() == before


def test_build_on_a_placeholder_class_is_refused(tmp_path):
    # BUILD on the placeholder *class* (not an instance) would set class attributes.
    pkl = b"\x80\x02" + _global("__torch__", "M") + b"}" + _unicode("_qualname") + \
        _unicode("x") + b"sb."
    p = tmp_path / "cls.pt"
    write_checkpoint_zip(p, pkl, prefix="model")
    with pytest.raises(WeightFileError, match=r"BUILD \(set state\) on type"):
        load_state_dict(p)


def _script_archive(path, code: str, pkl: bytes = None):
    """A TorchScript-looking archive: code/__torch__.py plus a data.pkl holding one module."""
    if pkl is None:  # __torch__.M() with an empty state
        pkl = b"\x80\x02" + _global("__torch__", "M") + b")\x81}b."
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("model/data.pkl", pkl)
        z.writestr("model/code/__torch__.py", code)
        z.writestr("model/version", "3\n")


@pytest.mark.parametrize("code", [
    "class M(Module):\n" + "\n" * 60_000 + "  __parameters__ = []\n",
    "class M(Module):\n" + " \n\t\n" * 30_000 + "  __buffers__ = []\n",
    "class " + "A" * 2_000_000 + "\n",
    "class M(Module):\n  __parameters__ = [\"" + "a\\\\" * 1_000_000 + "\n]\n",
    "class M(Module):\n" + "  __parameters__ = x\n" * 200_000,
    "class M(Module):\n  __parameters__ = [" + "\"a\", " * 500_000,
], ids=["blank-lines", "whitespace-lines", "long-class-line", "long-string", "many-fields",
        "unclosed-list"])
def test_torchscript_sources_are_parsed_in_linear_time(tmp_path, code):
    p = tmp_path / "slow.pt"
    _script_archive(p, code)
    start = time.perf_counter()
    try:
        load_state_dict(p)
    except WeightFileError:
        pass  # refusing is fine; hanging is not
    elapsed = time.perf_counter() - start
    # Linear scanning takes well under 0.5 s here; the quadratic regex took minutes.
    assert elapsed < 5.0, f"{elapsed:.1f} s for {len(code)} characters of source"


def test_shared_submodules_cannot_make_the_walk_exponential(tmp_path):
    # 60 levels, each module holding the next one under two names: 2^60 module paths from a
    # pickle of a few KB (a diamond chain, not a cycle).
    levels = 60
    code = "".join(f"class L{i}(Module):\n  __parameters__ = [\"w\", ]\n" for i in range(levels))
    # Innermost first; memo 0 holds the latest module. Level i: Li() with state
    # {"a": memo0, "b": memo0}, then memo 0 = it.
    pkl = b"\x80\x02" + _global("__torch__", f"L{levels - 1}") + b")\x81}b" + b"q\x000"
    for i in range(levels - 2, -1, -1):
        pkl += _global("__torch__", f"L{i}") + b")\x81}(" + _unicode("a") + b"h\x00" + \
            _unicode("b") + b"h\x00" + b"ub" + b"q\x000"
    pkl += b"h\x00."
    p = tmp_path / "diamond.pt"
    _script_archive(p, code, pkl)
    start = time.perf_counter()
    with pytest.raises(WeightFileError, match="too many paths"):
        load_state_dict(p)
    assert time.perf_counter() - start < 5.0


def test_script_module_state_with_non_string_keys(tmp_path, monkeypatch):
    # A TorchScript module object whose class is not in code/ and whose state dict has a
    # non-string key next to a tensor (found by fuzz/run.py torchscript: TypeError while naming
    # the entries). Non-string keys are not parameter names: skipped.
    import types

    mod = types.ModuleType("__torch__")

    class M:
        pass
    M.__module__, M.__qualname__ = "__torch__", "M"
    mod.M = M
    monkeypatch.setitem(__import__("sys").modules, "__torch__", mod)

    tensor = Evil(torch._utils._rebuild_tensor_v2, ("storage", torch.FloatStorage, "0", "cpu", 2),
                  0, (2,), (1,), False, collections.OrderedDict())

    class Obj:
        def __reduce__(self):
            return M, (), {7: tensor, "w": tensor}

    class StoragePickler(pickle.Pickler):
        def persistent_id(self, obj):
            return obj if isinstance(obj, tuple) and obj and obj[0] == "storage" else None

    buf = io.BytesIO()
    StoragePickler(buf, protocol=2).dump(Obj())
    p = tmp_path / "keys.pt"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as z:
        z.writestr("model/data.pkl", buf.getvalue())
        z.writestr("model/code/__torch__.py", "class Other(Module):\n  __parameters__ = []\n")
        z.writestr("model/data/0", np.array([1.5, -2.0], np.float32).tobytes())
        z.writestr("model/version", "3\n")
    sd = load_state_dict(p)
    assert list(sd) == ["w"]
    assert_same(sd["w"], np.array([1.5, -2.0], np.float32), "w")


def test_copyreg_extension_opcodes_are_refused(tmp_path):
    p = tmp_path / "ext.pt"
    write_checkpoint_zip(p, b"\x80\x02\x82\x01.")  # EXT1 1
    with pytest.raises(WeightFileError, match="extension"):
        load_state_dict(p)


@pytest.mark.parametrize("declared", [1 << 40, (1 << 64) - 1, 100])
def test_bytearray8_length_is_bounded_by_the_pickle(tmp_path, declared):
    # PROTO 5, BYTEARRAY8 <declared> with 3 bytes following: pickle.py would allocate the
    # declared length first (a 1 TiB bytearray -> MemoryError; found by fuzz/run.py torch).
    p = tmp_path / "ba8.pt"
    write_checkpoint_zip(p, b"\x80\x05\x96" + struct.pack("<Q", declared) + b"abc.")
    err, peak = _peak_bytes(lambda: load_state_dict(p))
    assert isinstance(err, WeightFileError), err
    assert peak < 8 << 20, f"peak {peak >> 20} MiB while refusing"


def test_bytearray8_that_fits_still_loads(tmp_path):
    p = tmp_path / "ba8ok.pt"
    # {"w": <tensor>} is what a state dict holds; here a plain bytearray is not a tensor, so the
    # reader refuses the container later, not the opcode: the message says what it holds.
    write_checkpoint_zip(p, b"\x80\x05\x96" + struct.pack("<Q", 3) + b"abc.")
    with pytest.raises(WeightFileError) as exc:
        load_state_dict(p)
    assert "BYTEARRAY8" not in str(exc.value)


def test_float64_beyond_float32_range_is_refused(tmp_path):
    p = tmp_path / "f64.pt"
    torch.save({"w": torch.tensor([1.0, 1e300], dtype=torch.float64)}, p)
    with pytest.raises(WeightFileError, match="beyond float32"):
        load_state_dict(p)
    # Infinities stored as such are data (e.g. an attention mask), not an overflow.
    torch.save({"m": torch.tensor([0.0, -float("inf")], dtype=torch.float64)}, p)
    assert_same(load_state_dict(p)["m"], np.array([0.0, -np.inf], np.float32), "inf mask")
    st = tmp_path / "f64.safetensors"
    save_safetensors({"w": np.array([1.0, -1e39], np.float64)}, st)
    with pytest.raises(WeightFileError, match="beyond float32"):
        load_state_dict(st)
    save_safetensors({"m": np.array([3.0e38, -np.inf], np.float64)}, st)
    assert_same(load_state_dict(st)["m"], np.array([3.0e38, -np.inf], np.float32), "in range")


# --------------------------------------------------------------------------- ovs.load end to end
def _tiny_openai_clip(arch):
    """A tiny open_clip CLIP with QuickGELU (as OpenAI's), random weights, eval mode."""
    from open_clip.model import CLIP

    torch.manual_seed(3)
    text_cfg = dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=2)
    if arch == "vit":
        vision_cfg = dict(layers=2, width=64, head_width=64, patch_size=8, image_size=32)
    else:
        vision_cfg = dict(layers=[1, 1, 1, 1], width=16, head_width=64, image_size=64)
    model = CLIP(embed_dim=32, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=True).eval()
    with torch.no_grad():  # open_clip zero-initialises some tensors: make every one count
        for name, t in model.named_parameters():
            if t.ndim == 1 and ("bias" in name or "ln" in name or "bn" in name):
                t.add_(0.1 * torch.randn_like(t))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_ovs_load_pt_and_torchscript_clip_end_to_end(tmp_path, arch):
    """ovs.load on a torch.save state dict and on an OpenAI-style TorchScript archive
    (torch.jit.script of the whole CLIP model, as OpenAI's ViT-B-16.pt is): the same weights as
    the safetensors route, the same outputs, and open_clip's outputs within tolerance."""
    import safetensors.torch

    model = _tiny_openai_clip(arch)
    sd = model.state_dict()
    st, pt, jit = tmp_path / "m.safetensors", tmp_path / "m.pt", tmp_path / "openai.pt"
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    torch.save(sd, pt)
    torch.jit.save(torch.jit.script(model), str(jit))
    assert detect_format(jit) == "zip"

    size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) \
        else model.visual.image_size
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    texts = ["a photo of a cat", "a diagram"]
    import open_clip

    with torch.no_grad():
        want_image = model.encode_image(torch.from_numpy(x)).numpy()
        want_text = model.encode_text(open_clip.tokenize(texts)).numpy()

    models = {route: ovs.load(path) for route, path in
              [("safetensors", st), ("torch.save", pt), ("torchscript", jit)]}
    ref = models["safetensors"]
    assert ref.arch == arch
    for route, m in models.items():
        assert m.arch == arch, route
        for name, w in ref.state_dict.items():
            assert_same(m.state_dict[name], w, f"{route}: {name}")
        img = m.encode_image(x, preprocess=False)
        txt = m.encode_text(texts)
        assert_same(img, ref.encode_image(x, preprocess=False), f"{route}: image")
        assert_same(txt, ref.encode_text(texts), f"{route}: text")
        assert_close(img, want_image, name=f"{route}: image vs open_clip")
        assert_close(txt, want_text, name=f"{route}: text vs open_clip")


def _expect_load_error(path, match):
    with pytest.raises(ovs.WeightFileError, match=match) as info:
        ovs.load(path, act="gelu")
    assert path.name in str(info.value), f"the message does not name the file: {info.value}"
    return info.value


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_load_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"visual.proj": _Evil(marker)}, protocol=2))
        zf.writestr("archive/version", "3\n")
    err = _expect_load_error(p, match="system")
    assert not marker.exists(), "the pickle's payload was executed"
    assert "executed" in str(err)
    p.write_bytes(pickle.dumps(_Evil(marker)))  # a bare pickle, not a zip
    _expect_load_error(p, match="pickle")
    assert not marker.exists(), "the pickle's payload was executed"
