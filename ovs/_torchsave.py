"""Write a {name: float32 array} state dict as a PyTorch zip checkpoint without importing torch.

The layout is torch.save's (zip, stored): `<root>/data.pkl` (a protocol-2 pickle of an
OrderedDict of tensors, each `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False,
OrderedDict())` with the storage as persistent id ('storage', torch.FloatStorage, key, 'cpu',
numel)), `<root>/data/<key>` (raw little-endian storage bytes), `<root>/byteorder`,
`<root>/version`. The pickle is emitted opcode by opcode, so it names only those globals:
torch.load(weights_only=True) and ovs's restricted reader both accept it.
"""
from __future__ import annotations

import os
import pickle
import struct
import zipfile
from typing import Mapping

import numpy as np

_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.uint8): "ByteStorage",
            np.dtype(np.int64): "LongStorage", np.dtype(np.bool_): "BoolStorage"}


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return pickle.BINUNICODE + struct.pack("<I", len(b)) + b


def _int(v: int) -> bytes:
    if 0 <= v < 256:
        return pickle.BININT1 + bytes([v])
    if -(2 ** 31) <= v < 2 ** 31:
        return pickle.BININT + struct.pack("<i", v)
    b = int(v).to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return pickle.LONG1 + bytes([len(b)]) + b


def _tuple(items: list[bytes]) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def _ordered_dict() -> bytes:
    return _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE


def save_torch_state_dict(tensors: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    path = os.fspath(path)
    root = os.path.splitext(os.path.basename(path))[0] or "archive"
    arrays = []
    out = [pickle.PROTO + bytes([2]), _ordered_dict(), pickle.MARK]
    for key, (name, value) in enumerate(tensors.items()):
        a = np.ascontiguousarray(value)
        if a.dtype not in _STORAGE:
            raise TypeError(f"{name!r}: dtype {a.dtype} not supported (float32, uint8, int64, bool)")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        arrays.append(a)
        stride, acc = [], 1
        for d in reversed(a.shape):
            stride.append(acc)
            acc *= d
        stride.reverse()
        pid = _tuple([_str("storage"), _global("torch", _STORAGE[a.dtype]), _str(str(key)),
                      _str("cpu"), _int(a.size)]) + pickle.BINPERSID
        args = _tuple([pid, _int(0), _tuple([_int(d) for d in a.shape]),
                       _tuple([_int(s) for s in stride]), pickle.NEWFALSE, _ordered_dict()])
        out.append(_str(name) + _global("torch._utils", "_rebuild_tensor_v2") + args + pickle.REDUCE)
    out.append(pickle.SETITEMS + pickle.STOP)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(f"{root}/data.pkl", b"".join(out))
        z.writestr(f"{root}/byteorder", "little")
        for key, a in enumerate(arrays):
            z.writestr(f"{root}/data/{key}", a.tobytes())
        z.writestr(f"{root}/version", "3\n")
