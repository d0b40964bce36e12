"""Fuzz targets: ovs's parsers and entry points fed hostile bytes.

Each target is a function ``target(data: bytes) -> None`` run by atheris (see fuzz/run.py). A
target calls ovs the way a user would and treats only the documented failures as fine:

    safetensors  ovs._core.SafeTensorsFile (C reader) on the bytes, every tensor read back,
                 and ovs.load_state_dict and a FileStateDict (tensors read on demand) on the
                 same bytes as a file (see safetensors_file: raw files, or header + data with
                 the length prefix recomputed), then the file changed under the mapping
                 (reads must refuse with OSError ESTALE).                  WeightFileError
    torch        ovs.load_state_dict on a torch.save zip checkpoint whose members (data.pkl,
                 data/<key>, byteorder, ...) come from the input; the zip itself is rebuilt
                 around them so CRCs stay valid and the fuzzer reaches the pickle reader.
                 skip_unknown_objects set by the last byte.                 WeightFileError
    torchscript  the same for TorchScript archives (torch.jit.save: code/__torch__/*.py,
                 constants.pkl, data.pkl).                                  WeightFileError
    tokenizer    ovs.tokenize and the C BPE (bpe_encode / bpe_tokenize / bpe_token_bytes) on
                 arbitrary text (any code point, lone surrogates, NUL) and token ids;
                 checks the output's shape, SOT/EOT and id range.     ValueError, TypeError
    image        Model.encode_image and Segmenter.segment/predict of a tiny random CLIP model
                 on odd arrays: any dtype, rank 0..5, empty and 1-pixel sides, strided,
                 Fortran-order, read-only, big-endian, NaN/inf, lists, and odd settings
                 (output_size, bg_threshold).                          ValueError, TypeError

Anything else -- another exception type, a crash (SIGSEGV, a sanitizer report), a hang (libFuzzer
-timeout) or memory growth past -rss_limit_mb -- is a finding. Input for the members-container
targets (torch, torchscript) is a sequence of records ``u8 name length, name, u32 LE data length,
data``; fuzz/make_seeds.py converts real torch files into it.
"""
from __future__ import annotations

import errno
import io
import os
import struct
import sys
import warnings
import zipfile

import numpy as np

import ovs
from ovs import WeightFileError, _core
from ovs.prune import SparseWeight, unpack_sparse
from ovs.weights import load_state_dict, open_state_dict

HERE = os.path.dirname(os.path.abspath(__file__))
# The tiny model the image target needs (written by make_seeds.py next to the corpora).
TINY_MODEL_ENV = "OVS_FUZZ_MODEL"


# ----------------------------------------------------------------------------- helpers
class _MemFile:
    """A file in memory (memfd) with a path other code can open(): no disk traffic per input."""

    def __init__(self):
        self.fd = os.memfd_create("ovs-fuzz")
        self.path = f"/proc/self/fd/{self.fd}"

    def write(self, data: bytes) -> str:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        return self.path


_MEM = None


def _memfile() -> _MemFile:
    global _MEM
    if _MEM is None:
        _MEM = _MemFile()
    return _MEM


def pack_members(members: list[tuple[str, bytes]]) -> bytes:
    """The members-container encoding of zip members (the inverse of unpack_members)."""
    out = bytearray()
    for name, data in members:
        raw = name.encode("utf-8")[:255]
        out += bytes([len(raw)]) + raw + struct.pack("<I", len(data)) + data
    return bytes(out)


def unpack_members(data: bytes) -> list[tuple[str, bytes]]:
    """Records of the members container; a truncated last record is cut to what is there."""
    members, i = [], 0
    while i < len(data) and len(members) < 64:
        n = data[i]
        name = data[i + 1: i + 1 + n].decode("utf-8", "replace")
        i += 1 + n
        (size,) = struct.unpack("<I", data[i: i + 4].ljust(4, b"\0"))
        i += 4
        members.append((name, data[i: i + size]))
        i += size
    return members


def build_zip(members: list[tuple[str, bytes]]) -> bytes:
    """A zip archive (stored, as torch writes it) holding `members`; duplicate names dropped."""
    buf = io.BytesIO()
    seen = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            for name, data in members:
                if not name or name in seen:
                    continue
                seen.add(name)
                zf.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


# ----------------------------------------------------------------------------- safetensors
def safetensors_file(data: bytes) -> bytes:
    """The file a safetensors input stands for. First byte even: the rest is the file as is.
    Odd: the rest is `<JSON header>\n<data region>` and the 8-byte header length is computed, so
    mutations that grow or shrink the header still reach the JSON and tensor checks."""
    if not data:
        return data
    if data[0] & 1 == 0:
        return data[1:]
    header, _, payload = data[1:].partition(b"\n")
    return len(header).to_bytes(8, "little") + header + payload


def target_safetensors(data: bytes) -> None:
    data = safetensors_file(data)
    try:
        f = _core.SafeTensorsFile.from_buffer(data)
    except WeightFileError:
        pass
    else:
        with f:
            meta = f.metadata
            assert isinstance(meta, dict)
            for name in f.keys():
                dtype, shape = f.info(name)
                raw = f.get_raw(name)
                try:
                    arr = f.get(name)
                except WeightFileError as exc:  # the one refusal a parsed header still allows
                    assert dtype == "F64" and "beyond float32's range" in str(exc), exc
                    continue
                assert tuple(arr.shape) == tuple(shape) == raw.shape, (name, shape, arr.shape)
                assert arr.dtype == np.float32, (name, arr.dtype)
    # The file path: magic-byte detection, open + fstat, the header only, then every tensor read
    # on demand (pread + identity check), through load_state_dict and through a FileStateDict.
    path = _memfile().write(data)
    try:
        sd = load_state_dict(path)
    except WeightFileError:
        return
    for name, arr in sd.items():
        assert isinstance(name, str) and isinstance(arr, np.ndarray), name
    # CSR weights of an "ovs-sparse" file (ovs.prune.save_sparse): checked, or a ValueError
    try:
        sparse = unpack_sparse(sd, path)
    except ValueError:
        sparse = {}
    for name, w in sparse.items():
        if isinstance(w, SparseWeight):
            assert w.dense().shape == w.shape, name
    lazy = open_state_dict(path)
    assert sorted(lazy) == sorted(sd)
    for name in lazy:
        assert lazy.shape(name) == sd[name].shape and lazy.dtype(name) == sd[name].dtype, name
        assert np.array_equal(lazy[name], sd[name], equal_nan=sd[name].dtype.kind == "f"), name
    # The same file grown by a byte: a read must refuse (OSError ESTALE), never return data.
    os.pwrite(_memfile().fd, b"\0", len(data))
    for name in list(lazy)[:4]:
        try:
            lazy[name]
        except OSError as exc:
            assert exc.errno == errno.ESTALE and "changed since it was opened" in str(exc), exc
        else:
            raise AssertionError(f"{name!r} read from a file that changed")


# ----------------------------------------------------------------------------- torch zips
def _load_members(data: bytes) -> None:
    path = _memfile().write(build_zip(unpack_members(data)))
    skip = bool(data[-1] & 1) if data else False  # skip_unknown_objects from the last byte
    try:
        sd = load_state_dict(path, skip_unknown_objects=skip)
    except WeightFileError:
        return
    for name, arr in sd.items():
        assert isinstance(name, str) and isinstance(arr, np.ndarray), name


def target_torch(data: bytes) -> None:
    _load_members(data)


def target_torchscript(data: bytes) -> None:
    _load_members(data)


# ----------------------------------------------------------------------------- tokenizer
_TOKENIZER = None


def target_tokenizer(data: bytes) -> None:
    import atheris

    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = ovs.tokenizer.default_tokenizer()
    tok = _TOKENIZER
    fdp = atheris.FuzzedDataProvider(data)
    context = fdp.ConsumeIntInRange(0, 80)
    ids_in = fdp.ConsumeIntListInRange(fdp.ConsumeIntInRange(0, 8), -2, tok.vocab_size + 1)
    mode = fdp.ConsumeIntInRange(0, 2)
    text = fdp.ConsumeUnicode(fdp.remaining_bytes()) if mode else \
        fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())

    # The public entry point: cleaning (ftfy rules) + C BPE.
    try:
        out = ovs.tokenize([text, text[::-1]], context_length=context)
    except (ValueError, TypeError):
        if context >= 2 and mode == 0:
            raise  # a valid context and well-formed text must tokenize
    else:
        assert out.shape == (2, context) and out.dtype == np.int32, (out.shape, out.dtype)
        # checked as Python ints: atheris hooks every comparison operator of this (instrumented)
        # module, and comparing NumPy arrays there grew the process by ~1 KB per execution (an
        # out-of-memory finding after ~6 M executions; tests/test_fuzz_harness.py)
        for row in out.tolist():
            assert row[0] == tok.sot_token_id, row
            assert row.count(tok.eot_token_id) == 1, row
            assert all(0 <= i < tok.vocab_size for i in row), row

    # The C tokenizer directly on uncleaned text: any code point, NUL, lone surrogates.
    try:
        ids = _core.bpe_encode(tok._bpe, text)
    except UnicodeEncodeError:
        assert mode, "only text with surrogates may fail to encode"
        return
    assert all(0 <= i < tok.vocab_size for i in ids), ids
    back = _core.bpe_token_bytes(tok._bpe, ids)
    assert isinstance(back, bytes)
    try:
        _core.bpe_token_bytes(tok._bpe, ids_in)
    except ValueError:
        assert any(not 0 <= i < tok.vocab_size for i in ids_in), ids_in
    try:
        _core.bpe_tokenize(tok._bpe, [text], context)
    except ValueError:
        assert context < 2, context


# ----------------------------------------------------------------------------- images
_SETTINGS = (("naclip", 16, (16, 8)), ("maskclip", None, None), ("clearclip", 24, (16, 16)),
             ("sclip", 8, (16, 8)))
_DTYPES = [np.uint8, np.float32, np.float64, np.float16, np.int16, np.int64, np.bool_,
           np.uint16, np.complex64, np.dtype(">f4"), np.dtype(">u2"), object]
_IMAGE = None


def _tiny_model():
    global _IMAGE
    if _IMAGE is None:
        path = os.environ.get(TINY_MODEL_ENV) or os.path.join(HERE, "_corpus", "tiny_vit.safetensors")
        if not os.path.exists(path):
            sys.exit(f"the image target needs a tiny model: run fuzz/make_seeds.py first "
                     f"(looked for {path}; set ${TINY_MODEL_ENV} to use another)")
        _IMAGE = ovs.load(path, act="gelu")
    return _IMAGE


def _array(fdp) -> object:
    # uint8 half of the time (the accepted type: reaches the C pipeline), else anything
    dtype = np.uint8 if fdp.ConsumeBool() else _DTYPES[fdp.ConsumeIntInRange(0, len(_DTYPES) - 1)]
    ndim = fdp.ConsumeIntInRange(0, 5)
    shape = []
    for d in range(ndim):
        small = fdp.ConsumeIntInRange(0, 40)
        shape.append(3 if d == ndim - 1 and fdp.ConsumeBool() else small)
    n = int(np.prod(shape)) if shape else 1
    if n > 20000:
        shape = [min(s, 4) for s in shape]
        n = int(np.prod(shape)) if shape else 1
    raw = fdp.ConsumeBytes(n * 8)
    values = np.frombuffer(raw.ljust(n * 8, b"\0"), dtype="<f8")[:n]
    kind = fdp.ConsumeIntInRange(0, 3)
    if kind == 1:
        values = np.where(np.isfinite(values), values, 0.5)
    if kind == 2:  # pixel-like values
        values = np.frombuffer(raw.ljust(n, b"\0")[:n], dtype=np.uint8).astype(np.float64)
    if kind == 3:
        values = np.frombuffer(raw.ljust(n, b"\0")[:n], dtype=np.uint8) / 255.0
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = values.astype(dtype).reshape(shape) if dtype is not object else \
            values.astype(object).reshape(shape)
    layout = fdp.ConsumeIntInRange(0, 5)
    if layout == 1:
        arr = np.asfortranarray(arr)
    elif layout == 2 and arr.ndim:
        arr = arr[::-1]
    elif layout == 3 and arr.ndim >= 2:
        arr = np.repeat(arr, 2, axis=0)[::2]  # strided view
    elif layout == 4:
        arr.setflags(write=False)
    elif layout == 5 and arr.ndim:
        arr = arr.tolist()  # nested lists
    return arr


def target_image(data: bytes) -> None:
    import atheris

    model = _tiny_model()
    fdp = atheris.FuzzedDataProvider(data)
    method, short_side, window = _SETTINGS[fdp.ConsumeIntInRange(0, len(_SETTINGS) - 1)]
    how = fdp.ConsumeIntInRange(0, 3)
    output_size = None if fdp.ConsumeBool() else (fdp.ConsumeIntInRange(-1, 40),
                                                  fdp.ConsumeIntInRange(-1, 40))
    bg_threshold = None if fdp.ConsumeBool() else fdp.ConsumeFloat()
    names = ["cat", "dog", "sofa, couch"][: fdp.ConsumeIntInRange(1, 3)]
    x = _array(fdp)
    if how == 3:  # a list of images
        x = [x, _array(fdp)]
    try:
        if how == 0:
            emb = model.encode_image(x)
            assert emb.ndim == 2 and emb.shape[1] == model.embed_dim, emb.shape
            assert np.isfinite(emb).all(), "non-finite embedding"
            return
        seg = ovs.Segmenter(model, method=method, short_side=short_side, window=window,
                            templates="bare", output_size=output_size, bg_threshold=bg_threshold)
        if how == 1:
            labels = seg.segment(x, names)
            for lab in labels if isinstance(labels, list) else [labels]:
                assert lab.dtype == np.int32, lab.dtype
                # NumPy functions, not comparison operators on arrays (see target_tokenizer)
                assert np.all(np.greater_equal(lab, -1) & np.less(lab, len(names))), np.unique(lab)
        else:
            probs = seg.predict(x, names)
            for p in probs if isinstance(probs, list) else [probs]:
                assert p.shape[-3] == len(names), p.shape
                assert np.isfinite(p).all(), "non-finite probabilities"
    except (ValueError, TypeError):
        pass


TARGETS = {
    "safetensors": target_safetensors,
    "torch": target_torch,
    "torchscript": target_torchscript,
    "tokenizer": target_tokenizer,
    "image": target_image,
}
