"""Weight files: the C safetensors reader and save_safetensors, and corrupt or incomplete model
files through ovs.load (the restricted torch-zip / TorchScript reader is tested in
test_torch_reader.py, weights by name in test_hub.py).

References are independent implementations computed here: the `safetensors` package, NumPy's
and torch's dtype conversions.
"""
import gc
import json
import os
import struct
import sys
import threading

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

import ovs
from ovs import _core
from ovs.weights import WeightFileError, detect_format, load_state_dict, save_safetensors

from conftest import assert_same, inject_alloc_failures

SafeTensorsFile = _core.SafeTensorsFile


# --------------------------------------------------------------------------- helpers
def st_bytes(header, data=b"", *, raw_header=None, pad=True):
    """A safetensors image from a header object (or raw header bytes) and a data region."""
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def parse_both(tmp_path, blob):
    """Open `blob` through a file and through from_buffer; return the file object."""
    p = tmp_path / "x.safetensors"
    p.write_bytes(blob)
    a = SafeTensorsFile(p)
    b = SafeTensorsFile.from_buffer(blob)
    assert a.keys() == b.keys()
    return a


def expect_format_error(tmp_path, blob, *fragments):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(blob)
    for opener in (lambda: SafeTensorsFile(p), lambda: SafeTensorsFile.from_buffer(blob)):
        with pytest.raises(WeightFileError) as info:
            opener()
        msg = str(info.value)
        for frag in fragments:
            assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


ALL_NUMPY = {
    "f32": np.float32, "f16": np.float16, "f64": np.float64, "i64": np.int64, "i32": np.int32,
    "i16": np.int16, "i8": np.int8, "u8": np.uint8, "u16": np.uint16, "u32": np.uint32,
    "u64": np.uint64, "b": np.bool_,
}
ST_NAME = {np.float32: "F32", np.float16: "F16", np.float64: "F64", np.int64: "I64",
           np.int32: "I32", np.int16: "I16", np.int8: "I8", np.uint8: "U8", np.uint16: "U16",
           np.uint32: "U32", np.uint64: "U64", np.bool_: "BOOL"}


def sample_tensors(rng):
    out = {}
    for name, dt in ALL_NUMPY.items():
        shape = (3, 5, 2)
        if dt is np.bool_:
            a = rng.random(shape) > 0.5
        elif np.issubdtype(dt, np.floating):
            a = (rng.standard_normal(shape) * 100).astype(dt)
        else:
            info = np.iinfo(dt)
            a = rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
        out[name] = a
    out["scalar"] = np.array(3.5, np.float32)
    out["empty"] = np.zeros((0, 4), np.float32)
    out["odd_u8"] = np.arange(7, dtype=np.uint8)  # makes later tensors misaligned in some orders
    return out


# --------------------------------------------------------------------------- safetensors reading
def test_roundtrip_all_dtypes_vs_safetensors_package(tmp_path):
    rng = np.random.default_rng(0)
    tensors = sample_tensors(rng)
    p = tmp_path / "ref.safetensors"
    safetensors.numpy.save_file(tensors, str(p), metadata={"format": "np", "é": "ü\u2603"})
    with SafeTensorsFile(p) as f:
        assert sorted(f.keys()) == sorted(tensors)
        assert len(f) == len(tensors) and "f32" in f and "nope" not in f and 3 not in f
        assert f.metadata == {"format": "np", "é": "ü\u2603"}
        for name, want in tensors.items():
            dtype, shape = f.info(name)
            assert dtype == ST_NAME[want.dtype.type] and shape == want.shape, name
            assert_same(f.get_raw(name), want, name)
            assert_same(f.get(name), want.astype(np.float32), name)
    # Our writer, read back by the reference package.
    q = tmp_path / "ours.safetensors"
    save_safetensors(tensors, q, metadata={"k": "v"})
    back = safetensors.numpy.load_file(str(q))
    assert sorted(back) == sorted(tensors)
    for name, want in tensors.items():
        assert_same(back[name], want, name)
    with safetensors.safe_open(str(q), "np") as f:
        assert f.metadata() == {"k": "v"}


def test_bf16_roundtrip_with_torch(tmp_path):
    t = torch.randn(4, 6).to(torch.bfloat16)
    p = tmp_path / "bf.safetensors"
    safetensors.torch.save_file({"w": t}, str(p))
    with SafeTensorsFile(p) as f:
        assert f.info("w") == ("BF16", (4, 6))
        assert_same(f.get("w"), t.float().numpy(), "bf16 -> f32")
        assert_same(f.get_raw("w"), t.view(torch.int16).numpy().view(np.uint16), "bf16 bits")
    sd = load_state_dict(p)
    assert_same(sd["w"], t.float().numpy(), "load_state_dict bf16")


def test_f16_and_bf16_conversion_every_bit_pattern(tmp_path):
    bits = np.arange(65536, dtype=np.uint16)
    p = tmp_path / "halves.safetensors"
    with open(p, "wb") as fh:
        hdr = {"h": {"dtype": "F16", "shape": [65536], "data_offsets": [0, 131072]},
               "b": {"dtype": "BF16", "shape": [65536], "data_offsets": [131072, 262144]},
               "o": {"dtype": "F16", "shape": [65535], "data_offsets": [262145, 393215]}}
        fh.write(st_bytes(hdr, bits.tobytes() + bits.tobytes() + b"\0" + bits[1:].tobytes()))
    with SafeTensorsFile(p) as f:
        h = f.get("h")
        # NumPy: exact for every pattern including subnormals, infinities and NaN payloads.
        want = bits.view(np.float16).astype(np.float32)
        np.testing.assert_array_equal(h.view(np.uint32), want.view(np.uint32),
                                      err_msg="f16 bits differ from numpy")
        # torch agrees on every non-NaN value (subnormals included).
        tw = torch.from_numpy(bits.view(np.int16).copy()).view(torch.float16).float().numpy()
        finite = ~np.isnan(tw)
        assert_same(h[finite], tw[finite], "f16 vs torch")
        assert np.isnan(h[~finite]).all()
        assert np.isinf(h[bits == 0x7C00]).all() and h[bits == 0x0001][0] == 2.0 ** -24
        b = f.get("b")
        tb = torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16).float().numpy()
        np.testing.assert_array_equal(b.view(np.uint32)[~np.isnan(tb)],
                                      tb.view(np.uint32)[~np.isnan(tb)], err_msg="bf16 vs torch")
        assert np.isnan(b[np.isnan(tb)]).all()
        # Unaligned (odd offset) half data converts the same.
        np.testing.assert_array_equal(f.get("o").view(np.uint32), want[1:].view(np.uint32))


def test_f64_and_int64_rounding_like_numpy_astype(tmp_path):
    rng = np.random.default_rng(1)
    f64 = np.concatenate([
        rng.standard_normal(1000) * 10.0 ** rng.integers(-50, 38, 1000),
        [1e-300, 3.4028235e38, -3.40282356e38, 1.401298464324817e-45 / 2,
         1.401298464324817e-45 * 0.75, 1 + 2 ** -24, 1 + 3 * 2 ** -24, np.inf, -np.inf, np.nan,
         -0.0, 2 ** -149 * 1.5]])
    i64 = np.concatenate([rng.integers(-2 ** 63, 2 ** 63 - 1, 1000, dtype=np.int64),
                          np.array([2 ** 24 + 1, 2 ** 53 + 1, -(2 ** 63), 2 ** 63 - 1],
                                   np.int64)])
    u64 = np.array([2 ** 64 - 1, 2 ** 63 + 12345, 0, 1], np.uint64)
    p = tmp_path / "wide.safetensors"
    safetensors.numpy.save_file({"d": f64, "i": i64, "u": u64}, str(p))
    with SafeTensorsFile(p) as f, np.errstate(over="ignore"):
        assert_same(f.get("d"), f64.astype(np.float32), "f64 -> f32")
        assert_same(f.get("i"), i64.astype(np.float32), "i64 -> f32")
        assert_same(f.get("u"), u64.astype(np.float32), "u64 -> f32")
    # A finite float64 that rounds past float32's largest value is refused, not made infinite.
    for big in (1e300, -1e300, 3.4028236e38, 2.0 ** 128):
        safetensors.numpy.save_file({"d": np.array([0.0, big])}, str(p))
        with SafeTensorsFile(p) as f, pytest.raises(WeightFileError, match="beyond float32"):
            f.get("d")


def test_bool_bytes_other_than_one_are_true(tmp_path):
    blob = st_bytes({"b": {"dtype": "BOOL", "shape": [4], "data_offsets": [0, 4]}},
                    bytes([0, 1, 2, 255]))
    f = parse_both(tmp_path, blob)
    assert_same(f.get("b"), np.array([0, 1, 1, 1], np.float32), "bool -> f32")
    sd = load_state_dict(tmp_path / "x.safetensors")
    assert_same(sd["b"], np.array([False, True, True, True]), "bool state dict")


def test_zero_copy_view_read_only_and_outlives_file(tmp_path):
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    p = tmp_path / "v.safetensors"
    save_safetensors({"a": a, "b": a[0] * 2}, p)
    f = SafeTensorsFile.from_buffer(p.read_bytes())
    v = f.get("a")
    assert not v.flags.writeable and v.flags.c_contiguous and v.flags.aligned
    with pytest.raises(ValueError):
        v[0, 0, 0] = 1.0
    with pytest.raises(ValueError):
        v.setflags(write=True)
    # Same memory as the buffer: a second view shares it.
    assert np.shares_memory(v, f.get("a"))
    raw = f.get_raw("a")
    assert not raw.flags.writeable
    f.close()
    assert f.closed
    with pytest.raises(ValueError, match="closed"):
        f.get("a")
    with pytest.raises(ValueError, match="closed"):
        f.keys()
    f.close()  # idempotent
    del f
    gc.collect()
    assert_same(v, a, "view after close and del")
    assert_same(raw, a, "raw view after close and del")
    # Context manager; no view kept: the mapping goes with the file.
    with SafeTensorsFile(p) as g:
        assert g.get("b").sum() == (a[0] * 2).sum()
    with pytest.raises(ValueError):
        g.info("a")


def test_file_tensors_are_read_on_demand(tmp_path):
    """From a path, each get() reads the tensor from the file into a new array."""
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    p = tmp_path / "v.safetensors"
    save_safetensors({"a": a, "h": a.astype(np.float16)}, p)
    f = SafeTensorsFile(p)
    v, w = f.get("a"), f.get("a")
    assert_same(v, a, "first read")
    assert not np.shares_memory(v, w) and v.flags.owndata
    assert_same(f.get_raw("h"), a.astype(np.float16), "raw f16")
    f.close()
    assert_same(v, a, "array after close")
def test_unaligned_f32_is_copied_correctly(tmp_path):
    vals = np.array([1.5, -2.25, 3e38, np.inf], np.float32)
    blob = st_bytes({"pad": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                     "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [1, 17]}},
                    b"\x07" + vals.tobytes())
    f = parse_both(tmp_path, blob)
    w = f.get("w")
    assert_same(w, vals.reshape(2, 2), "unaligned f32")
    assert w.flags.writeable and w.flags.aligned  # a fresh copy
    assert_same(f.get_raw("w"), vals.reshape(2, 2), "raw read from the file")
    raw = SafeTensorsFile.from_buffer(blob).get_raw("w")
    assert not raw.flags.aligned
    assert_same(raw, vals.reshape(2, 2), "unaligned raw view")


def test_header_strings_escapes_and_unknown_fields(tmp_path):
    names = ["plain", "é\u2603", "emoji \U0001F600", 'quote"back\\slash/\t\n', "\u00ff\u0100"]
    # json.dumps escapes non-ASCII as \uXXXX (surrogate pairs for the emoji).
    header = {n: {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1], "extra": [1, {"x": []}]}
              for i, n in enumerate(names)}
    header["__metadata__"] = {"k\u00e9": "v\U0001F600"}
    for raw in (json.dumps(header).encode(), json.dumps(header, ensure_ascii=False).encode()):
        blob = st_bytes(None, bytes(range(len(names))), raw_header=b"\n " + raw + b"\t\r\n")
        f = parse_both(tmp_path, blob)
        assert f.keys() == names
        assert f.metadata == {"k\u00e9": "v\U0001F600"}
        for i, n in enumerate(names):
            assert f.get_raw(n)[0] == i
    # Empty header and null metadata are valid.
    assert parse_both(tmp_path, st_bytes({})).keys() == []
    f = parse_both(tmp_path, st_bytes({"__metadata__": None}))
    assert f.metadata == {} and len(f) == 0


def test_missing_name_and_bad_name_type(tmp_path):
    f = parse_both(tmp_path, st_bytes({"a": {"dtype": "U8", "shape": [], "data_offsets": [0, 1]}},
                                      b"\x05"))
    with pytest.raises(KeyError):
        f.get("b")
    with pytest.raises(KeyError):
        f.get("a\0")
    with pytest.raises(TypeError):
        f.info(3)
    assert f.get("a").shape == () and f.get("a") == 5


def _t(name=b"a", dtype=b'"U8"', shape=b"[1]", offsets=b"[0, 1]", extra=b"") -> bytes:
    """One tensor entry of a raw header, its JSON fragments as given (so each may be malformed)."""
    return (b'"' + name + b'": {"dtype": ' + dtype + b', "shape": ' + shape + b', "data_offsets": ' +
            offsets + extra + b"}")


def _hdr(*tensors: bytes) -> bytes:
    """A raw header of the given tensor entries (default: one valid U8 tensor 'a')."""
    return b"{" + b", ".join(tensors or (_t(),)) + b"}"


BAD_HEADERS = [
    # (description, raw header bytes, data, expected message fragments)
    ("invalid JSON", b"{nope}", b"", ["invalid JSON"]),
    ("truncated JSON", b'{"a": {"dtype": "F32", "sha', b"", ["invalid JSON"]),
    ("array", b"[]", b"", ["must be a JSON object"]),
    ("string", b'"x"', b"", ["must be a JSON object"]),
    ("number", b"1", b"", ["must be a JSON object"]),
    ("trailing data", b'{} {}', b"", ["after the JSON value"]),
    ("unknown dtype", _hdr(_t(dtype=b'"F8_E4M3"')), b"\0", ["unsupported dtype 'F8_E4M3'"]),
    ("dtype not a string", _hdr(_t(dtype=b"4")), b"\0", ["dtype must be a string"]),
    ("negative shape", _hdr(_t(shape=b"[-1]")), b"\0", ["non-negative integer"]),
    ("float shape", _hdr(_t(shape=b"[1.0]")), b"\0", ["not a fraction"]),
    ("exponent shape", _hdr(_t(shape=b"[1e0]")), b"\0", ["not a fraction"]),
    ("leading zero", _hdr(_t(shape=b"[01]")), b"\0", ["leading zero"]),
    ("shape not array", _hdr(_t(shape=b"1")), b"\0", ["\"shape\" must be an array"]),
    ("rank 9", _hdr(_t(shape=b"[1,1,1,1,1,1,1,1,1]")), b"\0", ["more than 8"]),
    ("shape overflow", _hdr(_t(dtype=b'"F32"', shape=b"[4611686018427387904, 4]")), b"\0",
     ["overflows"]),
    ("byte overflow", _hdr(_t(dtype=b'"F64"', shape=b"[4611686018427387904]")), b"\0", ["overflows"]),
    ("huge integer", _hdr(_t(shape=b"[99999999999999999999]")), b"\0", ["larger than 2^63-1"]),
    ("numel mismatch", _hdr(_t(dtype=b'"F32"', shape=b"[2]", offsets=b"[0, 4]")), b"\0" * 8,
     ["hold 4 bytes but F32 shape needs 8"]),
    ("offsets beyond data", _hdr(_t(b"x", b'"F32"', b"[1024]", b"[0, 4096]")), b"\0" * 1024,
     ["tensor 'x': data_offsets [0, 4096] end beyond the data region (1024 bytes)"]),
    ("begin after end", _hdr(_t(shape=b"[0]", offsets=b"[5, 4]")), b"\0" * 8, ["begin after end"]),
    ("three offsets", _hdr(_t(offsets=b"[0, 1, 2]")), b"\0", ["more than 2"]),
    ("one offset", _hdr(_t(offsets=b"[1]")), b"\0", ["exactly 2"]),
    ("overlap", _hdr(_t(b"a", b'"F32"', b"[2]", b"[0, 8]"), _t(b"b", b'"F32"', b"[2]", b"[4, 12]")),
     b"\0" * 12, ["'a' [0, 8] and 'b' [4, 12] overlap"]),
    ("overlap contained", _hdr(_t(b"a", shape=b"[10]", offsets=b"[0, 10]"),
                               _t(b"c", offsets=b"[9, 10]"), _t(b"b", shape=b"[2]", offsets=b"[2, 4]")),
     b"\0" * 10, ["overlap"]),
    ("duplicate name", _hdr(_t(), _t(offsets=b"[1, 2]")), b"\0\0", ["duplicate tensor name 'a'"]),
    ("duplicate field", _hdr(_t(dtype=b'"U8", "dtype": "U8"')), b"\0", ["duplicate field"]),
    ("missing field", b'{"a": {"dtype": "U8", "shape": [1]}}', b"\0", ["missing \"data_offsets\""]),
    ("tensor not object", b'{"a": [1]}', b"", ["expected an object"]),
    ("metadata not strings", b'{"__metadata__": {"k": 1}}', b"", ["must be a string"]),
    ("metadata array", b'{"__metadata__": []}', b"", ["object of strings"]),
    ("duplicate metadata", b'{"__metadata__": {}, "__metadata__": {}}', b"", ["duplicate"]),
    ("duplicate metadata key", b'{"__metadata__": {"k": "1", "k": "2"}}', b"",
     ["duplicate \"__metadata__\" key 'k'"]),
    ("NUL in name", _hdr(_t(b"a\\u0000b")), b"\0", ["NUL"]),
    ("lone high surrogate", _hdr(_t(b"\\ud800")), b"\0", ["surrogate"]),
    ("lone low surrogate", _hdr(_t(b"\\udc00")), b"\0", ["surrogate"]),
    ("bad escape", b'{"\\q": {}}', b"", ["invalid escape"]),
    ("short \\u", b'{"\\u12": {}}', b"", ["4 hex digits"]),
    ("invalid UTF-8", b'{"\xff": {}}', b"", ["invalid UTF-8"]),
    ("overlong UTF-8", b'{"\xc0\xaf": {}}', b"", ["invalid UTF-8"]),
    ("UTF-8 surrogate", b'{"\xed\xa0\x80": {}}', b"", ["invalid UTF-8"]),
    ("control char", b'{"a\x01": {}}', b"", ["control character"]),
    ("unterminated string", b'{"abc', b"", ["unterminated string"]),
    ("bad literal", _hdr(_t(extra=b', "x": tru')), b"\0", ["invalid literal"]),
    ("bad number", _hdr(_t(extra=b', "x": -')), b"\0", ["invalid number"]),
    ("missing comma", b'{"a": {"dtype": "U8" "shape": [1]}}', b"", ["expected ',' or '}'"]),
    ("mismatched bracket", _hdr(_t(extra=b', "x": [1')), b"\0", ["expected ',' or ']'"]),
]


@pytest.mark.parametrize("desc,raw,data,frags", BAD_HEADERS, ids=[b[0] for b in BAD_HEADERS])
def test_malformed_headers(tmp_path, desc, raw, data, frags):
    expect_format_error(tmp_path, st_bytes(None, data, raw_header=raw), *frags)


@pytest.mark.parametrize("where", ["top", "field", "metadata"])
def test_deep_nesting_is_rejected_without_recursion(tmp_path, where):
    deep = b"[" * 100000
    raw = {"top": deep,
           "field": b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "x": ' + deep,
           "metadata": b'{"__metadata__": {"k": ' + deep}[where]
    frag = {"top": "must be a JSON object", "field": "nesting deeper than 64",
            "metadata": "must be a string"}[where]
    expect_format_error(tmp_path, st_bytes(None, b"\0", raw_header=raw), frag)
    # 64 levels of an ignored field are fine, 65 are not.
    ok = b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "x": ' + b"[" * 64 + \
        b"]" * 64 + b"}}"
    assert parse_both(tmp_path, st_bytes(None, b"\0", raw_header=ok)).keys() == ["a"]
    too = ok.replace(b"[" * 64, b"[" * 65).replace(b"]" * 64, b"]" * 65)
    expect_format_error(tmp_path, st_bytes(None, b"\0", raw_header=too), "nesting deeper")


def test_size_problems(tmp_path):
    expect_format_error(tmp_path, b"", "shorter than the 8-byte header length")
    expect_format_error(tmp_path, b"\x02" * 7, "7 bytes")
    expect_format_error(tmp_path, struct.pack("<Q", 100) + b"{}", "beyond the end of the file")
    expect_format_error(tmp_path, struct.pack("<Q", 2 ** 64 - 1) + b"{}" * 8, "beyond the end")
    # Truncated data region: the header promises 16 bytes, 9 are there.
    good = st_bytes({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16)
    expect_format_error(tmp_path, good[:-7], "end beyond the data region (9 bytes)")


def test_header_length_limit(tmp_path):
    # A sparse file just over 100 MiB whose header length is over the limit.
    p = tmp_path / "huge.safetensors"
    n = (100 << 20) + 8
    with open(p, "wb") as fh:
        fh.write(struct.pack("<Q", n) + b"{")
        fh.truncate(n + 8)
    with pytest.raises(WeightFileError, match="exceeds the 104857600-byte limit"):
        SafeTensorsFile(p)


def test_io_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        SafeTensorsFile(tmp_path / "missing.safetensors")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        SafeTensorsFile(tmp_path)
    with pytest.raises(OSError):
        SafeTensorsFile("/dev/null")  # not a regular file
    with pytest.raises(TypeError):
        SafeTensorsFile(3)
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "missing.pt")
    with pytest.raises(IsADirectoryError):
        load_state_dict(tmp_path)


def test_fuzz_mutations_only_raise_clean_errors(tmp_path):
    rng = np.random.default_rng(1234)
    tensors = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "h": np.ones(5, np.float16),
               "i": np.arange(3, dtype=np.int64), "\u00e9\u2603": np.zeros((2, 1), np.uint8)}
    p = tmp_path / "seed.safetensors"
    save_safetensors(tensors, p, metadata={"k": "v", "x": "\\u"})
    seed = p.read_bytes()
    n_header = 8 + int.from_bytes(seed[:8], "little")
    accepted = 0
    for it in range(3000):
        b = bytearray(seed)
        kind = it % 5
        if kind == 0:    # flip bytes anywhere in the header (incl. its length)
            for _ in range(rng.integers(1, 4)):
                b[rng.integers(0, n_header)] = rng.integers(0, 256)
        elif kind == 1:  # truncate
            del b[rng.integers(0, len(b)):]
        elif kind == 2:  # replace a header byte with a JSON-significant one
            b[rng.integers(8, n_header)] = ord(rng.choice(list('{}[],:"\\0123456789-.eu ')))
        elif kind == 3:  # insert or delete header bytes, fixing the length field half the time
            at = int(rng.integers(8, n_header))
            if rng.random() < 0.5:
                b[at:at] = bytes([rng.integers(0, 256)])
            else:
                del b[at]
            if rng.random() < 0.5:
                b[:8] = struct.pack("<Q", n_header - 8 + (len(b) - len(seed)))
        else:            # mutate digits of numbers (shapes/offsets)
            digits = [i for i in range(8, n_header) if chr(b[i]).isdigit()]
            for _ in range(rng.integers(1, 3)):
                b[digits[rng.integers(0, len(digits))]] = ord(str(rng.integers(0, 10)))
        blob = bytes(b)
        try:
            f = SafeTensorsFile.from_buffer(blob)
        except WeightFileError:
            continue
        accepted += 1
        # Whatever is accepted is valid JSON and every tensor can be read.
        json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")])
        for name in f.keys():
            dtype, shape = f.info(name)
            assert f.get(name).shape == shape
            assert f.get_raw(name).shape == shape
        f.metadata
    assert 0 < accepted < 3000


def test_allocation_failures_are_clean(tmp_path):
    p = tmp_path / "m.safetensors"
    save_safetensors({f"t{i}": np.full((3,), i, np.float32) for i in range(100)}, p,
                     metadata={"a": "b"})
    i = 1
    while True:
        _core.debug_fail_alloc(i)
        try:
            f = SafeTensorsFile(p)
        except MemoryError:
            i += 1
            assert i < 1000
            continue
        finally:
            _core.debug_fail_alloc(0)
        break
    assert i > 3  # several allocations were each made to fail
    assert len(f) == 100 and f.get("t7")[0] == 7


def test_no_reference_leaks(tmp_path):
    p = tmp_path / "r.safetensors"
    save_safetensors({"a": np.ones((4, 4), np.float32), "h": np.ones(3, np.float16)}, p,
                     metadata={"k": "v"})
    f = SafeTensorsFile(p)
    for _ in range(10):  # warm up
        f.get("a"), f.get("h"), f.get_raw("h"), f.info("a"), f.keys(), f.metadata
    before = sys.getrefcount(f)
    for _ in range(1000):
        f.get("a"), f.get("h"), f.get_raw("h"), f.info("a"), f.keys(), f.metadata
        try:
            f.get("zz")
        except KeyError:
            pass
    gc.collect()
    assert sys.getrefcount(f) == before


def test_concurrent_reads(tmp_path):
    p = tmp_path / "c.safetensors"
    big = np.random.default_rng(0).standard_normal((256, 1024)).astype(np.float16)
    save_safetensors({"h": big}, p)
    f = SafeTensorsFile(p)
    want = big.astype(np.float32)
    errors = []

    def work():
        try:
            for _ in range(20):
                assert_same(f.get("h"), want, "threaded f16")
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    f.close()  # closing while other threads convert must not unmap under them
    for t in threads:
        t.join()
    assert all(isinstance(e, ValueError) and "closed" in str(e) for e in errors), errors


# --------------------------------------------------------------------------- save_safetensors
def test_save_safetensors_layout_and_atomicity(tmp_path):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((6, 5)).astype(np.float32)
    tensors = {"t": base.T, "f": np.asfortranarray(base), "be": base.astype(">f4"),
               "u8": np.arange(3, dtype=np.uint8), "d": base.astype(np.float64)[::2]}
    p = tmp_path / "o.safetensors"
    p.write_bytes(b"old")
    save_safetensors(tensors, p, metadata={"m": "1"})
    blob = p.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    assert n % 8 == 0 and blob[8 + n - 1:8 + n] in (b"}", b" ")
    header = json.loads(blob[8:8 + n])
    for name, info in header.items():
        if name != "__metadata__":
            itemsize = np.dtype(ALL_NUMPY[{"F32": "f32", "F64": "f64", "U8": "u8"}[
                info["dtype"]]]).itemsize
            assert info["data_offsets"][0] % itemsize == 0, name
    back = safetensors.numpy.load_file(str(p))
    for name, want in tensors.items():
        assert_same(back[name], want.astype(want.dtype.newbyteorder("=")), name)
    assert sorted(os.listdir(tmp_path)) == ["o.safetensors"]  # no temporary files left
    with pytest.raises(TypeError, match="cannot be stored"):
        save_safetensors({"o": np.array([object()])}, tmp_path / "bad.safetensors")
    with pytest.raises(TypeError, match="metadata"):
        save_safetensors({}, tmp_path / "bad.safetensors", metadata={"a": 1})
    assert sorted(os.listdir(tmp_path)) == ["o.safetensors"]


def test_load_state_dict_safetensors(tmp_path):
    rng = np.random.default_rng(4)
    tensors = sample_tensors(rng)
    p = tmp_path / "s.safetensors"
    save_safetensors(tensors, p)
    sd = load_state_dict(p)
    assert sorted(sd) == sorted(tensors)
    for name, want in tensors.items():
        got = sd[name]
        if want.dtype.kind == "f":
            assert_same(got, want.astype(np.float32), name)
        else:
            assert_same(got, want, name)
    assert not sd["f32"].flags.writeable  # zero-copy view
    assert detect_format(p) == "safetensors"
    with pytest.raises(WeightFileError, match="key"):
        load_state_dict(p, key="model")


# --------------------------------------------------------------------------- model files
@pytest.fixture(scope="module")
def vit_path(fixtures_dir):
    return fixtures_dir / "vit_tiny.safetensors"


def test_fail_alloc_reading_a_model_file(vit_path):
    def read():
        with _core.SafeTensorsFile(str(vit_path)) as f:
            return {k: np.array(f.get(k)) for k in f.keys()[:6]}

    inject_alloc_failures(read, "SafeTensorsFile")
    data = vit_path.read_bytes()

    def read_buffer():
        f = _core.SafeTensorsFile.from_buffer(data)
        try:
            return {k: np.array(f.get(k)) for k in f.keys()[-3:]}
        finally:
            f.close()

    inject_alloc_failures(read_buffer, "SafeTensorsFile.from_buffer")


@pytest.fixture(scope="module")
def vit_sd(vit_path):
    return load_state_dict(vit_path)


def _expect_load_error(path, types, match=None):
    with pytest.raises(types, match=match) as info:
        ovs.load(path, act="gelu")
    assert str(path.name) in str(info.value) or not isinstance(info.value, ovs.WeightFileError), \
        f"the message does not name the file: {info.value}"
    return info.value


def test_load_truncated_safetensors(vit_path, tmp_path):
    raw = vit_path.read_bytes()
    for cut in (4, 8, 20, len(raw) // 2, len(raw) - 1):
        p = tmp_path / f"cut{cut}.safetensors"
        p.write_bytes(raw[:cut])
        _expect_load_error(p, ovs.WeightFileError)


def test_load_header_outside_file(tmp_path):
    p = tmp_path / "outside.safetensors"
    p.write_bytes(st_bytes({"visual.proj": {"dtype": "F32", "shape": [4, 4],
                                           "data_offsets": [0, 64]}}, b"\0" * 16, pad=False))
    _expect_load_error(p, ovs.WeightFileError, match="beyond|outside|exceed|trunc")
    p.write_bytes(st_bytes({"a": {"dtype": "F32", "shape": [2**40, 2**40],
                                 "data_offsets": [0, 16]}}, b"\0" * 16, pad=False))
    _expect_load_error(p, ovs.WeightFileError)
    p.write_bytes(struct.pack("<Q", 10**12) + b'{"a": 1}')
    _expect_load_error(p, (ovs.WeightFileError,))
    p.write_bytes(st_bytes({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, pad=False))
    _expect_load_error(p, ovs.WeightFileError)


def test_load_random_bytes(tmp_path):
    rng = np.random.default_rng(5)
    for k, size in enumerate((0, 1, 100, 100_000)):
        p = tmp_path / f"random{k}.safetensors"
        p.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        _expect_load_error(p, ovs.WeightFileError)


@pytest.mark.parametrize("name", ["visual.conv1.weight", "visual.transformer.resblocks.1.mlp.c_fc.weight",
                                  "ln_final.weight", "transformer.resblocks.0.attn.in_proj_bias"])
def test_load_bad_state_dict(vit_sd, tmp_path, name):
    missing = {k: v for k, v in vit_sd.items() if k != name}
    p = tmp_path / "missing.safetensors"
    save_safetensors(missing, p)
    with pytest.raises(KeyError, match=name.replace(".", r"\.")):
        ovs.load(p, act="gelu")
    wrong = dict(vit_sd)
    wrong[name] = np.zeros(vit_sd[name].shape[:-1] + (vit_sd[name].shape[-1] + 1,), np.float32)
    save_safetensors(wrong, p)
    with pytest.raises(ValueError, match="shape"):
        ovs.load(p, act="gelu")
    nan = dict(vit_sd)
    nan[name] = np.array(vit_sd[name])
    nan[name].flat[nan[name].size // 2] = np.nan
    save_safetensors(nan, p)
    with pytest.raises(ValueError, match="NaN"):
        ovs.load(p, act="gelu")
