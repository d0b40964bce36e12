"""Weight files: the C safetensors reader, save_safetensors, and the restricted torch loader.

References are independent implementations computed here: the `safetensors` package, NumPy's
and torch's dtype conversions, torch.save / torch.jit.save / torch.jit.load.
"""
import collections
import gc
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from ovs import _core
from ovs.weights import WeightFileError, detect_format, load_state_dict, save_safetensors

SafeTensorsFile = _core.SafeTensorsFile

# torch.jit.* warn that they are deprecated; they are still the way these archives are made.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")


# --------------------------------------------------------------------------- helpers
def assert_same(got, want, what=""):
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    if got.dtype.kind == "f":
        bad = ~((got == want) | (np.isnan(got) & np.isnan(want)))
    else:
        bad = got != want
    if bad.any():
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        raise AssertionError(f"{what}: {int(bad.sum())} elements differ, max difference "
                             f"{np.nanmax(diff) if diff.size else 0}")


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
        rng.standard_normal(1000) * 10.0 ** rng.integers(-50, 50, 1000),
        [1e300, -1e300, 1e-300, 3.4028235e38, 3.4028236e38, 1.401298464324817e-45 / 2,
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
    f = SafeTensorsFile(p)
    v = f.get("a")
    assert not v.flags.writeable and v.flags.c_contiguous and v.flags.aligned
    with pytest.raises(ValueError):
        v[0, 0, 0] = 1.0
    with pytest.raises(ValueError):
        v.setflags(write=True)
    # Same memory as the mapping: a second view shares it.
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


def test_unaligned_f32_is_copied_correctly(tmp_path):
    vals = np.array([1.5, -2.25, 3e38, np.inf], np.float32)
    blob = st_bytes({"pad": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                     "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [1, 17]}},
                    b"\x07" + vals.tobytes())
    f = parse_both(tmp_path, blob)
    w = f.get("w")
    assert_same(w, vals.reshape(2, 2), "unaligned f32")
    assert w.flags.writeable and w.flags.aligned  # a fresh copy
    raw = f.get_raw("w")
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


BAD_HEADERS = [
    # (description, raw header bytes, data, expected message fragments)
    ("invalid JSON", b"{nope}", b"", ["invalid JSON"]),
    ("truncated JSON", b'{"a": {"dtype": "F32", "sha', b"", ["invalid JSON"]),
    ("array", b"[]", b"", ["must be a JSON object"]),
    ("string", b'"x"', b"", ["must be a JSON object"]),
    ("number", b"1", b"", ["must be a JSON object"]),
    ("trailing data", b'{} {}', b"", ["after the JSON value"]),
    ("unknown dtype", b'{"a": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}', b"\0",
     ["unsupported dtype 'F8_E4M3'"]),
    ("dtype not a string", b'{"a": {"dtype": 4, "shape": [1], "data_offsets": [0, 1]}}', b"\0",
     ["dtype must be a string"]),
    ("negative shape", b'{"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}}', b"\0",
     ["non-negative integer"]),
    ("float shape", b'{"a": {"dtype": "U8", "shape": [1.0], "data_offsets": [0, 1]}}', b"\0",
     ["not a fraction"]),
    ("exponent shape", b'{"a": {"dtype": "U8", "shape": [1e0], "data_offsets": [0, 1]}}', b"\0",
     ["not a fraction"]),
    ("leading zero", b'{"a": {"dtype": "U8", "shape": [01], "data_offsets": [0, 1]}}', b"\0",
     ["leading zero"]),
    ("shape not array", b'{"a": {"dtype": "U8", "shape": 1, "data_offsets": [0, 1]}}', b"\0",
     ["\"shape\" must be an array"]),
    ("rank 9", b'{"a": {"dtype": "U8", "shape": [1,1,1,1,1,1,1,1,1], "data_offsets": [0, 1]}}',
     b"\0", ["more than 8"]),
    ("shape overflow", b'{"a": {"dtype": "F32", "shape": [4611686018427387904, 4], '
                       b'"data_offsets": [0, 1]}}', b"\0", ["overflows"]),
    ("byte overflow", b'{"a": {"dtype": "F64", "shape": [4611686018427387904], '
                      b'"data_offsets": [0, 1]}}', b"\0", ["overflows"]),
    ("huge integer", b'{"a": {"dtype": "U8", "shape": [99999999999999999999], '
                     b'"data_offsets": [0, 1]}}', b"\0", ["larger than 2^63-1"]),
    ("numel mismatch", b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}',
     b"\0" * 8, ["hold 4 bytes but F32 shape needs 8"]),
    ("offsets beyond data", b'{"x": {"dtype": "F32", "shape": [1024], '
                            b'"data_offsets": [0, 4096]}}', b"\0" * 1024,
     ["tensor 'x': data_offsets [0, 4096] end beyond the data region (1024 bytes)"]),
    ("begin after end", b'{"a": {"dtype": "U8", "shape": [0], "data_offsets": [5, 4]}}',
     b"\0" * 8, ["begin after end"]),
    ("three offsets", b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1, 2]}}', b"\0",
     ["more than 2"]),
    ("one offset", b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [1]}}', b"\0",
     ["exactly 2"]),
    ("overlap", b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
                b'"b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}', b"\0" * 12,
     ["'a' [0, 8] and 'b' [4, 12] overlap"]),
    ("overlap contained", b'{"a": {"dtype": "U8", "shape": [10], "data_offsets": [0, 10]}, '
                          b'"c": {"dtype": "U8", "shape": [1], "data_offsets": [9, 10]}, '
                          b'"b": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}}',
     b"\0" * 10, ["overlap"]),
    ("duplicate name", b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
                       b'"a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}', b"\0\0",
     ["duplicate tensor name 'a'"]),
    ("duplicate field", b'{"a": {"dtype": "U8", "dtype": "U8", "shape": [1], '
                        b'"data_offsets": [0, 1]}}', b"\0", ["duplicate field"]),
    ("missing field", b'{"a": {"dtype": "U8", "shape": [1]}}', b"\0", ["missing \"data_offsets\""]),
    ("tensor not object", b'{"a": [1]}', b"", ["expected an object"]),
    ("metadata not strings", b'{"__metadata__": {"k": 1}}', b"", ["must be a string"]),
    ("metadata array", b'{"__metadata__": []}', b"", ["object of strings"]),
    ("duplicate metadata", b'{"__metadata__": {}, "__metadata__": {}}', b"", ["duplicate"]),
    ("duplicate metadata key", b'{"__metadata__": {"k": "1", "k": "2"}}', b"",
     ["duplicate \"__metadata__\" key 'k'"]),
    ("NUL in name", b'{"a\\u0000b": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}',
     b"\0", ["NUL"]),
    ("lone high surrogate", b'{"\\ud800": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}',
     b"\0", ["surrogate"]),
    ("lone low surrogate", b'{"\\udc00": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}',
     b"\0", ["surrogate"]),
    ("bad escape", b'{"\\q": {}}', b"", ["invalid escape"]),
    ("short \\u", b'{"\\u12": {}}', b"", ["4 hex digits"]),
    ("invalid UTF-8", b'{"\xff": {}}', b"", ["invalid UTF-8"]),
    ("overlong UTF-8", b'{"\xc0\xaf": {}}', b"", ["invalid UTF-8"]),
    ("UTF-8 surrogate", b'{"\xed\xa0\x80": {}}', b"", ["invalid UTF-8"]),
    ("control char", b'{"a\x01": {}}', b"", ["control character"]),
    ("unterminated string", b'{"abc', b"", ["unterminated string"]),
    ("bad literal", b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "x": tru}}',
     b"\0", ["invalid literal"]),
    ("bad number", b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "x": -}}', b"\0",
     ["invalid number"]),
    ("missing comma", b'{"a": {"dtype": "U8" "shape": [1]}}', b"", ["expected ',' or '}'"]),
    ("mismatched bracket", b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], '
                           b'"x": [1}}', b"\0", ["expected ',' or ']'"]),
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
