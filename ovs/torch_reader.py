"""PyTorch zip checkpoints and TorchScript archives to NumPy arrays, without PyTorch and without
running anything the file names.

``read_torch_zip(path)`` reads ``torch.save`` files (zip format, torch >= 1.6: ``.pt``, ``.pth``,
``.bin``) and ``torch.jit.save`` archives (e.g. OpenAI's CLIP ``.pt`` files) and returns the
tensor dictionary they hold. ``ovs.weights.load_state_dict`` calls it for zip files.

What a file can make this reader do (the threat model):

* **Globals** (the names a pickle asks the unpickler to import): only an allowlist of inert data
  constructors -- tensor rebuild functions, storage and dtype markers, ``OrderedDict``,
  ``set``/``frozenset``, ``torch.Size``, ``torch.device`` and TorchScript's list builders. Every
  other global (``os.system``, ``builtins.eval``, a model class, ...) is refused with
  :class:`ovs.WeightFileError` before anything is called. TorchScript classes (``__torch__.*``)
  and, with ``skip_unknown_objects``, other classes become inert placeholder classes made for
  this one archive. Allowed globals are handed to the pickle wrapped in objects that cannot be
  modified, so nothing in a file can change module state.
* **BUILD** (``__setstate__`` / attribute setting) is applied only to objects this unpickler
  created itself: placeholder instances (their state is recorded, never interpreted as code) and
  ``OrderedDict`` instances (``state_dict()._metadata``). On anything else it is refused. The
  copyreg extension opcodes (``EXT1/2/4``), which would write to a process-wide cache, are
  refused.
* **Memory**: every byte materialised from the file -- records read from the zip (``data.pkl``,
  ``code/``, storages), copies made for strided or broadcast (stride-0) tensors, float16 /
  bfloat16 / float64 to float32 conversions, the pickle's objects (64 bytes per opcode) and
  placeholder classes -- counts against one budget of ``4 x file size + 16 MiB``, and never more
  than :data:`MAX_MATERIALISED_BYTES` (64 GiB). A file that needs more is refused with a
  :class:`ovs.WeightFileError` saying so before the allocation. ``data.pkl`` may not exceed
  :data:`MAX_PICKLE_BYTES`. The pickle's memo is a dict, so a huge memo index costs nothing.
* **Time**: every loop is bounded by the input size: the unpickler is iterative and reads each
  opcode once, the TorchScript sources are scanned line by line without backtracking regexes,
  and the walk over a TorchScript module tree is charged per step against a budget proportional
  to the pickle and source sizes (a module shared under many names cannot make it exponential).

Floating-point tensors are returned as float32 (float16 / bfloat16 / float64 converted); integer
and bool tensors keep their dtype (native byte order).
"""
from __future__ import annotations

import _compat_pickle
import collections
import errno
import io
import json
import math
import os
import pickle
import re
import struct
import zipfile
from typing import Any

import numpy as np

from ._core import WeightFileError

__all__ = ["read_torch_zip", "MAX_MATERIALISED_BYTES", "MAX_PICKLE_BYTES",
           "BUDGET_FILE_FACTOR", "BUDGET_BASE_BYTES"]

MAX_MATERIALISED_BYTES = 64 << 30  # absolute cap on bytes materialised from one file
BUDGET_FILE_FACTOR = 4             # ... and at most this many times the file size
BUDGET_BASE_BYTES = 16 << 20       # ... plus this much
MAX_PICKLE_BYTES = 64 << 20        # data.pkl (decompressed)
MAX_CODE_BYTES = 16 << 20          # one TorchScript code/ source (decompressed)
_PICKLE_OP_BYTES = 64              # charged per pickle opcode (about one small object)
_PLACEHOLDER_BYTES = 2048          # charged per placeholder class (a type object and its dict)
_OPS_PER_CHARGE = 4096             # opcodes counted between two charges
_MAX_EXPANDED_ELEMENTS = 1 << 28   # a stride-0 view may not materialise more than this
_MAX_NAME_CHARS = 4096             # a TorchScript parameter name (module path included)


# --------------------------------------------------------------------------- public entry
def read_torch_zip(path: str, *, key: str | None = None,
                   skip_unknown_objects: bool = False) -> dict[str, np.ndarray]:
    """The tensor dictionary of a torch.save zip checkpoint or a TorchScript archive.

    key: take the tensor dict stored under this top-level key of a checkpoint (TorchScript
    archives have none); without it a tensor dict is used as is, and otherwise the one under
    "state_dict" or "model". See :func:`ovs.weights.load_state_dict` for skip_unknown_objects.
    Raises OSError (cannot read) or ovs.WeightFileError (malformed, refused, or over a limit).
    """
    obj = _TorchZip(path, skip_unknown_objects).load()
    return _select_state_dict(obj, key, path)


# --------------------------------------------------------------------------- selection
def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


def _select_state_dict(obj: Any, key: str | None, path: str) -> dict[str, np.ndarray]:
    if isinstance(obj, _ScriptObject) and obj._archive is not None:  # a TorchScript module
        if key is not None:
            raise WeightFileError(f"{path!r} is a TorchScript archive: key={key!r} applies only "
                                  "to nested PyTorch checkpoints")
        return obj._archive._script_state_dict(obj)
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            have = sorted(str(k) for k in obj) if isinstance(obj, dict) else []
            raise WeightFileError(f"{path!r}: no key {key!r} at the top of the checkpoint "
                                  f"(keys: {have[:20]})")
        obj = obj[key]
        if not _is_tensor_dict(obj):
            raise WeightFileError(f"{path!r}: checkpoint[{key!r}] is a {type(obj).__name__}, "
                                  "not a dict of tensors")
        return dict(obj)
    if _is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, dict):
        for k in ("state_dict", "model"):
            if k in obj and _is_tensor_dict(obj[k]):
                return dict(obj[k])
        have = [str(k) for k in obj][:20]
        raise WeightFileError(
            f"{path!r}: the checkpoint is a dict without a tensor dict under 'state_dict' or "
            f"'model' (top-level keys: {have}); pass key=... to choose one")
    raise WeightFileError(f"{path!r}: the checkpoint holds a {type(obj).__name__}, not a dict of "
                          "tensors")


# --------------------------------------------------------------------------- markers
class _StorageType:
    """What the pickle's ``torch.FloatStorage`` (etc.) global resolves to: only a dtype."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: str):
        self.name = name
        self.dtype = dtype  # a key of _DTYPES

    def __repr__(self):
        return f"<storage type {self.name}>"


class _TorchDtype:
    """What ``torch.float32`` (etc.) resolves to."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: str):
        self.name = name
        self.dtype = dtype

    def __repr__(self):
        return f"<torch dtype {self.name}>"


class _Storage:
    """Raw bytes of one storage record and its element type."""

    __slots__ = ("key", "data", "dtype")

    def __init__(self, key: str, data: np.ndarray, dtype: str):
        self.key = key
        self.data = data    # (nbytes,) uint8, read-only
        self.dtype = dtype


class _Global:
    """An allowed global as the pickle sees it: callable, but without attributes to set, items
    to assign or state to build (the unpickler refuses BUILD on it)."""

    __slots__ = ("_fn", "_name")

    def __init__(self, fn, name: str):
        self._fn = fn
        self._name = name

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def __repr__(self):
        return f"<allowed global {self._name}>"


# numpy equivalents; "bf16" is read as uint16 bits and widened to float32.
_DTYPES = {"f4": "<f4", "f8": "<f8", "f2": "<f2", "bf16": "<u2", "i8": "<i8", "i4": "<i4",
           "i2": "<i2", "i1": "i1", "u1": "u1", "u2": "<u2", "u4": "<u4", "u8": "<u8",
           "bool": "?"}
_STORAGE_TYPES = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "bf16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "bool", "UntypedStorage": "u1",
}
_TORCH_DTYPES = {
    "float32": "f4", "float": "f4", "float64": "f8", "double": "f8", "float16": "f2",
    "half": "f2", "bfloat16": "bf16", "int64": "i8", "long": "i8", "int32": "i4", "int": "i4",
    "int16": "i2", "short": "i2", "int8": "i1", "uint8": "u1", "uint16": "u2", "uint32": "u4",
    "uint64": "u8", "bool": "bool",
}


class _ScriptObject:
    """Inert stand-in for a TorchScript class (``__torch__.*``) or, with skip_unknown_objects,
    any refused class. Records constructor arguments and pickled state; has no behaviour."""

    _qualname = "?"
    _archive: "_TorchZip | None" = None
    _args: tuple = ()
    _state: Any = None  # set by BUILD

    def __init__(self, *args, **kwargs):
        self._args = args

    def __repr__(self):
        return f"<placeholder {self._qualname}>"


class _Refused(Exception):
    pass


def _always_refused(module: str) -> bool:
    """Modules never replaced by placeholders even with skip_unknown_objects, so that files
    trying to run code are reported as such."""
    root = module.split(".")[0]
    return root in {"builtins", "__builtin__", "os", "posix", "nt", "subprocess", "sys",
                    "importlib", "runpy", "shutil", "socket", "pty", "code", "ctypes",
                    "pickle", "_pickle", "marshal", "types", "functools", "operator", "io",
                    "webbrowser", "commands", "platform", "multiprocessing", "asyncio",
                    "copyreg", "copy_reg"}


def _torch_size(dims=()):
    return tuple(int(d) for d in dims)


def _torch_device(*args):
    return ":".join(str(a) for a in args)


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise _Refused(f"_codecs.encode({type(obj).__name__}, {encoding!r})")
    return obj.encode(encoding)


def _restore_type_tag(value, type_str=None):
    return value


class _TensorTypeMarker:
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


_TENSOR_TYPES = {"Tensor": _TensorTypeMarker("Tensor"), "Parameter": _TensorTypeMarker("Parameter")}

_JIT_PICKLE = {
    "build_intlist": list, "build_floatlist": list, "build_boollist": list,
    "build_doublelist": list, "build_tensorlist": list, "restore_type_tag": _restore_type_tag,
}

# Fixed globals (module, name) -> the object handed to the pickle.
_FIXED_GLOBALS = {
    ("collections", "OrderedDict"): _Global(collections.OrderedDict, "collections.OrderedDict"),
    ("torch", "Size"): _Global(_torch_size, "torch.Size"),
    ("torch", "device"): _Global(_torch_device, "torch.device"),
    ("builtins", "set"): _Global(set, "builtins.set"),
    ("builtins", "frozenset"): _Global(frozenset, "builtins.frozenset"),
    ("_codecs", "encode"): _Global(_codecs_encode, "_codecs.encode"),
    **{("torch", n): m for n, m in _TENSOR_TYPES.items()},
    ("torch.nn.parameter", "Parameter"): _TENSOR_TYPES["Parameter"],
    ("torch.nn", "Parameter"): _TENSOR_TYPES["Parameter"],
    **{("torch.jit._pickle", n): _Global(f, f"torch.jit._pickle.{n}")
       for n, f in _JIT_PICKLE.items()},
}


# --------------------------------------------------------------------------- the unpickler
def _counted(fn):
    def op(self):
        self._ops += 1
        if self._ops >= _OPS_PER_CHARGE:
            self._archive._charge(self._ops * _PICKLE_OP_BYTES, "the pickle's objects")
            self._ops = 0
        fn(self)
    return op


class _RestrictedUnpickler(pickle._Unpickler):
    """Python's pure-Python unpickler (a dict memo, every opcode visible) whose globals are an
    allowlist of inert rebuild functions and markers, and whose BUILD applies only to objects
    it created."""

    def __init__(self, data: bytes, archive: "_TorchZip"):
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._ops = 0
        self._size = len(data)

    def find_class(self, module: str, name: str):
        a = self._archive
        # Protocol 0-2 pickles spell some globals the Python 2 way (__builtin__.eval,
        # commands.call for subprocess.call): use the Python 3 names for matching and messages.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        full = f"{module}.{name}"
        fixed = _FIXED_GLOBALS.get((module, name))
        if fixed is not None:
            return fixed
        if module in ("torch._utils", "torch._tensor"):
            fn = a._rebuilders.get(name)
            if fn is not None:
                return fn
        elif module in ("torch", "torch.storage") and name in _STORAGE_TYPES:
            return _StorageType(name, _STORAGE_TYPES[name])
        elif module == "torch" and name in _TORCH_DTYPES:
            return _TorchDtype(name, _TORCH_DTYPES[name])
        elif module == "__torch__" or module.startswith("__torch__."):
            return a._placeholder(full)
        if a.skip_unknown_objects and not _always_refused(module):
            return a._placeholder(full, script=False)
        raise _Refused(full)

    def persistent_load(self, pid):
        return self._archive._persistent_load(pid)

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, _ScriptObject):
            inst._state = state  # recorded; only _script_state_dict reads it, as data
            return
        if type(inst) is collections.OrderedDict and isinstance(state, dict) and all(
                type(k) is str for k in state):
            vars(inst).update(state)  # state_dict()._metadata
            return
        raise _Refused(f"BUILD (set state) on {type(inst).__name__}")

    def _refuse_ext(self):
        raise _Refused("copyreg extension opcode")

    def load_bytearray8(self):
        # pickle.py allocates the declared length before reading it: bound it by the pickle.
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self._size:
            raise self._archive._fail(
                f"corrupt pickle: BYTEARRAY8 declares {n} bytes in a {self._size}-byte pickle")
        b = bytearray(n)
        if self.readinto(b) != n:
            raise pickle.UnpicklingError("pickle data was truncated")
        self.append(b)

    dispatch = {k: _counted(f) for k, f in pickle._Unpickler.dispatch.items()}
    dispatch[pickle.BUILD[0]] = _counted(load_build)
    dispatch[pickle.BYTEARRAY8[0]] = _counted(load_bytearray8)
    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _refuse_ext
    del _op


def _int_tuple(v, what: str, key: str) -> tuple[int, ...]:
    if not isinstance(v, (tuple, list)) or len(v) > 64 or not all(
            type(x) is int and x >= 0 for x in v):
        raise WeightFileError(f"tensor on storage {key!r}: {what} must be a tuple of "
                              f"non-negative ints, got {type(v).__name__}")
    return tuple(v)


# --------------------------------------------------------------------------- the archive
class _TorchZip:
    """One torch zip archive being read: storages, class metadata, rebuild functions, and the
    budget of bytes it may materialise."""

    def __init__(self, path: str, skip_unknown_objects: bool = False):
        self.path = path
        self.skip_unknown_objects = skip_unknown_objects
        self._storages: dict[str, np.ndarray] = {}
        self._classes: dict[str, tuple[list[str], list[str], bool]] = {}
        self._placeholders: dict[str, type] = {}
        self._zip: zipfile.ZipFile | None = None
        self._prefix = ""
        self._big_endian = False
        self._file_size = 0
        self._budget = 0
        self._used = 0
        self._input_bytes = 0  # data.pkl + code/ bytes: sizes the TorchScript walk
        self._rebuilders = {
            "_rebuild_tensor_v2": _Global(self._rebuild_tensor_v2, "_rebuild_tensor_v2"),
            "_rebuild_tensor_v3": _Global(self._rebuild_tensor_v3, "_rebuild_tensor_v3"),
            "_rebuild_parameter": _Global(self._rebuild_parameter, "_rebuild_parameter"),
            "_rebuild_parameter_with_state": _Global(self._rebuild_parameter_with_state,
                                                     "_rebuild_parameter_with_state"),
            "_rebuild_from_type_v2": _Global(self._rebuild_from_type_v2, "_rebuild_from_type_v2"),
        }

    def _fail(self, msg: str) -> WeightFileError:
        return WeightFileError(f"{self.path!r}: {msg}")

    def _charge(self, nbytes: int, what: str) -> None:
        """Count nbytes about to be materialised; refuse once the file's budget is exceeded."""
        self._used += nbytes
        if self._used > self._budget:
            raise self._fail(
                f"{what} would bring the memory materialised from this {self._file_size}-byte "
                f"file to {self._used} bytes, over its limit of {self._budget} "
                f"({BUDGET_FILE_FACTOR} x the file size + {BUDGET_BASE_BYTES >> 20} MiB, at most "
                f"{MAX_MATERIALISED_BYTES >> 30} GiB; ovs.torch_reader): refusing a file that "
                "expands far beyond its size (convert it to safetensors if it is genuine)")

    # ---- reading
    def load(self) -> Any:
        try:
            with open(self.path, "rb") as f:
                self._file_size = os.fstat(f.fileno()).st_size
                self._budget = min(MAX_MATERIALISED_BYTES,
                                   BUDGET_FILE_FACTOR * self._file_size + BUDGET_BASE_BYTES)
                with zipfile.ZipFile(f) as zf:
                    self._zip = zf
                    return self._load(zf)
        except (WeightFileError, MemoryError):
            raise
        except OSError as exc:
            if exc.errno not in (None, errno.EINVAL):
                raise
            # zipfile seeking to a corrupt offset, or a record that ends early
            raise self._fail(f"corrupt zip archive: {exc}") from None
        except zipfile.BadZipFile as exc:
            raise self._fail(f"corrupt zip archive: {exc}") from None
        except Exception as exc:  # zlib.error, struct.error, ... from a malformed archive
            raise self._fail(f"malformed archive: {type(exc).__name__}: {exc}") from None
        finally:
            self._zip = None

    def _load(self, zf: zipfile.ZipFile) -> Any:
        names = zf.namelist()
        pkls = [n for n in names if n == "data.pkl" or
                (n.endswith("/data.pkl") and n.count("/") == 1)]
        if len(pkls) != 1:
            raise self._fail("not a PyTorch checkpoint: expected exactly one '<archive>/data.pkl' "
                             f"in the zip, found {len(pkls)}")
        self._prefix = pkls[0][: -len("data.pkl")]
        order = self._prefix + "byteorder"
        if order in names:
            value = self._read_record(order, 16).decode("ascii", "replace").strip()
            if value not in ("little", "big"):
                raise self._fail(f"unknown byteorder record {value!r}")
            self._big_endian = value == "big"
        self._read_classes(names)
        data = self._read_record(pkls[0], MAX_PICKLE_BYTES)
        self._input_bytes += len(data)
        try:
            return _RestrictedUnpickler(data, self).load()
        except _Refused as exc:
            raise self._fail(
                f"refusing to load global '{exc}' from {pkls[0]}: only tensors and plain "
                "containers can be read (the file may be malicious, or it pickles whole Python "
                "objects rather than a state dict). Nothing in it was executed."
                + ("" if self.skip_unknown_objects else
                   " If it is a trusted training checkpoint with extra objects, "
                   "load_state_dict(..., skip_unknown_objects=True) ignores them.")) from None
        except (WeightFileError, MemoryError):
            raise
        except RecursionError:
            raise self._fail(f"{pkls[0]} is nested too deeply") from None
        except Exception as exc:
            raise self._fail(f"corrupt {pkls[0]}: {type(exc).__name__}: {exc}") from None

    def _read_record(self, name: str, limit: int) -> bytes:
        """A zip record's bytes, refused (before decompressing) if over `limit` or the budget."""
        info = self._zip.getinfo(name)
        if info.file_size > limit:
            raise self._fail(f"record {name} is {info.file_size} bytes (limit {limit})")
        self._charge(info.file_size, f"record {name} ({info.file_size} bytes)")
        return self._zip.read(info)

    def _read_classes(self, names: list[str]) -> None:
        """Parameter/buffer lists of TorchScript classes from the archive's code/ sources."""
        code = self._prefix + "code/"
        for n in names:
            if not (n.startswith(code) and n.endswith(".py")):
                continue
            rel = n[len(code):-3]
            if not rel.startswith("__torch__"):
                continue
            module = rel.replace("/", ".")
            text = self._read_record(n, MAX_CODE_BYTES).decode("utf-8", "replace")
            self._input_bytes += len(text)
            for cls, base, body in _iter_classes(text):
                params = _string_list(body, "__parameters__")
                buffers = _string_list(body, "__buffers__")
                self._classes[f"{module}.{cls}"] = (params or [], buffers or [],
                                                    base == "Module")

    def _placeholder(self, qualname: str, script: bool = True) -> type:
        cls = self._placeholders.get(qualname)
        if cls is None:
            self._charge(_PLACEHOLDER_BYTES + len(qualname), f"placeholder class {qualname}")
            cls = type(qualname.rsplit(".", 1)[-1], (_ScriptObject,),
                       {"_qualname": qualname, "_archive": self if script else None,
                        "__module__": __name__})
            self._placeholders[qualname] = cls
        return cls

    # ---- TorchScript module tree
    def _script_state_dict(self, root: _ScriptObject) -> dict[str, np.ndarray]:
        """Parameters and buffers of a TorchScript module tree, named as
        ``torch.jit.load(path).state_dict()`` names them: own parameters, own buffers, then each
        submodule depth-first (a submodule reachable under two names appears under both).

        Every step is charged (names produced, state entries looked at) against a budget
        proportional to the pickle and code sizes, so a module shared under many names (a
        diamond-shaped graph has exponentially many paths) ends with an error, not a hang."""
        steps = 16 * self._input_bytes + (1 << 20)
        out: dict[str, np.ndarray] = {}
        on_path: set[int] = set()
        stack: list[tuple[Any, str]] = [(root, "")]  # (module, name prefix) or (None, id)
        while stack:
            obj, prefix = stack.pop()
            if obj is None:  # leaving a module
                on_path.discard(prefix)
                continue
            state = obj._state if isinstance(obj._state, dict) else {}
            info = self._classes.get(obj._qualname)
            names = list(info[0]) + list(info[1]) if info is not None else [
                k for k, v in state.items() if isinstance(k, str) and isinstance(v, np.ndarray)]
            steps -= 1 + len(state) + len(names) * (1 + len(prefix))
            if steps < 0:
                raise self._fail("the TorchScript module tree has too many paths for the size of "
                                 "the archive (a module shared under many names?)")
            if len(prefix) > _MAX_NAME_CHARS:
                raise self._fail(f"TorchScript module path longer than {_MAX_NAME_CHARS} "
                                 f"characters: {prefix[:80]}...")
            for n in names:
                v = state.get(n)
                if isinstance(v, np.ndarray):
                    out[prefix + n] = v
            on_path.add(id(obj))
            stack.append((None, id(obj)))
            children = [(v, prefix + k + ".") for k, v in state.items()
                        if isinstance(v, _ScriptObject) and isinstance(k, str)
                        and id(v) not in on_path  # a cycle
                        and self._classes.get(v._qualname, (0, 0, True))[2]]
            stack.extend(reversed(children))
        return out

    # ---- storages
    def _persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise self._fail(f"unsupported persistent id {type(pid).__name__} "
                             f"{pid[0] if isinstance(pid, tuple) and pid else ''!r}")
        _, stype, key, _location, numel = pid[:5]
        if not isinstance(stype, _StorageType):
            raise self._fail(f"storage {key!r}: unsupported storage type {stype!r}")
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,128}", key):
            raise self._fail(f"invalid storage key {key!r}")
        if type(numel) is not int or numel < 0:
            raise self._fail(f"storage {key!r}: invalid element count {numel!r}")
        itemsize = np.dtype(_DTYPES[stype.dtype]).itemsize
        raw = self._storages.get(key)
        if raw is None:
            name = f"{self._prefix}data/{key}"
            try:
                info = self._zip.getinfo(name)
            except KeyError:
                raise self._fail(f"storage record {name} is missing") from None
            if info.compress_type != zipfile.ZIP_STORED:
                raise self._fail(f"storage record {name} is compressed (torch writes storages "
                                 "uncompressed)")
            if info.file_size < numel * itemsize:
                raise self._fail(f"storage record {name} has {info.file_size} bytes, the pickle "
                                 f"needs {numel} x {itemsize}")
            raw = np.frombuffer(self._read_record(name, MAX_MATERIALISED_BYTES), dtype=np.uint8)
            self._storages[key] = raw
        elif raw.size < numel * itemsize:
            raise self._fail(f"storage {key!r} has {raw.size} bytes, the pickle needs "
                             f"{numel} x {itemsize}")
        return _Storage(key, raw, stype.dtype)

    # ---- rebuild functions named by the pickle
    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad=False,
                           backward_hooks=None, metadata=None):
        if not isinstance(storage, _Storage):
            raise self._fail(f"_rebuild_tensor_v2 expects a storage, got "
                             f"{type(storage).__name__}")
        return self._tensor(storage, storage.dtype, storage_offset, size, stride)

    def _rebuild_tensor_v3(self, storage, storage_offset, size, stride, requires_grad,
                           backward_hooks, dtype, metadata=None):
        if not isinstance(storage, _Storage) or not isinstance(dtype, _TorchDtype):
            raise self._fail("_rebuild_tensor_v3 expects a storage and a torch dtype")
        return self._tensor(storage, dtype.dtype, storage_offset, size, stride)

    def _rebuild_parameter(self, data, requires_grad=True, backward_hooks=None):
        if not isinstance(data, np.ndarray):
            raise self._fail(f"_rebuild_parameter expects a tensor, got {type(data).__name__}")
        return data

    def _rebuild_parameter_with_state(self, data, requires_grad, backward_hooks, state):
        return self._rebuild_parameter(data)

    def _rebuild_from_type_v2(self, func, new_type, args, state):
        tensor_rebuilders = [self._rebuilders[n] for n in (
            "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
            "_rebuild_parameter_with_state")]
        if not any(func is r for r in tensor_rebuilders):
            raise self._fail("_rebuild_from_type_v2 with an unsupported rebuild function")
        if not any(new_type is t for t in _TENSOR_TYPES.values()) or not isinstance(args, tuple):
            raise self._fail("tensor subclasses are not supported")
        return func(*args)

    def _tensor(self, storage: _Storage, dtype: str, offset, size, stride) -> np.ndarray:
        key = storage.key
        if type(offset) is not int or offset < 0:
            raise self._fail(f"tensor on storage {key!r}: invalid storage offset {offset!r}")
        size = _int_tuple(size, "size", key)
        stride = _int_tuple(stride, "stride", key)
        if len(size) != len(stride):
            raise self._fail(f"tensor on storage {key!r}: size {size} and stride {stride} differ "
                             "in length")
        npdtype = np.dtype(_DTYPES[dtype])
        if self._big_endian and npdtype.itemsize > 1:
            npdtype = npdtype.newbyteorder(">")
        count = storage.data.size // npdtype.itemsize
        elems = storage.data[: count * npdtype.itemsize].view(npdtype)  # (count,)
        numel = math.prod(size)  # exact Python ints: no overflow
        converts = dtype in ("bf16", "f2", "f8") or not npdtype.isnative
        if numel == 0:
            return _to_output_dtype(np.empty(size, dtype=npdtype), dtype)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= count:
            raise self._fail(f"tensor on storage {key!r}: offset {offset}, size {size}, "
                             f"stride {stride} reach element {last} but the storage holds "
                             f"{count}")
        contiguous = all(s == math.prod(size[i + 1:])
                         for i, (n, s) in enumerate(zip(size, stride)) if n > 1)
        if contiguous:
            arr = elems[offset: offset + numel].reshape(size)
        else:
            # Broadcast views (stride 0) are materialised; refuse absurd expansions.
            if numel > max(count, 1) and numel > _MAX_EXPANDED_ELEMENTS:
                raise self._fail(f"tensor on storage {key!r}: size {size} with stride "
                                 f"{stride} expands {count} stored elements to {numel}")
            self._charge(numel * npdtype.itemsize,
                         f"tensor on storage {key!r} (size {size}, stride {stride}, expands "
                         f"{count} stored elements to {numel})")
            arr = np.ascontiguousarray(np.lib.stride_tricks.as_strided(
                elems[offset:], shape=size,
                strides=tuple(s * npdtype.itemsize for s in stride), writeable=False))
        if converts:
            self._charge(numel * 4 if dtype in ("bf16", "f2", "f8") else numel * npdtype.itemsize,
                         f"converting the tensor on storage {key!r} (size {size}) to "
                         + ("float32" if dtype in ("bf16", "f2", "f8") else "native byte order"))
        return _to_output_dtype(arr, dtype, self._fail, key)


def _to_output_dtype(arr: np.ndarray, dtype: str, fail=WeightFileError, key: str = "?") -> np.ndarray:
    """float16/bfloat16/float64 -> float32; other types native byte order, unchanged."""
    if dtype == "bf16":
        bits = arr.astype(np.uint32) << 16
        return bits.view(np.float32)
    if dtype == "f2":
        return arr.astype(np.float32)
    if dtype == "f8":
        with np.errstate(over="ignore"):
            out = arr.astype(np.float32)
        bad = np.isinf(out) & np.isfinite(arr)
        if bad.any():
            v = arr[bad].flat[0]
            raise fail(
                f"the float64 tensor on storage {key!r} holds {int(bad.sum())} finite value(s) beyond float32's range "
                f"(e.g. {v!r}); ovs computes in float32 and would turn them into infinity")
        return out
    if not arr.dtype.isnative:
        return arr.astype(arr.dtype.newbyteorder("="))
    return arr


# --------------------------------------------------------------------------- TorchScript code
_CLASS_RE = re.compile(r"class\s+(\w+)\s*\(\s*([\w.]+)\s*\)\s*:")
_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _iter_classes(text: str):
    """(name, base, body) of each top-level class in TorchScript's serialized Python source.
    One pass over the lines; the class regex has no nested quantifiers (linear per line)."""
    current = None  # (name, base, body lines)
    for line in text.split("\n"):
        if line and not line[0].isspace():
            if current:
                yield current[0], current[1], "\n".join(current[2])
            m = _CLASS_RE.match(line)
            current = (m.group(1), m.group(2), []) if m else None
        elif current:
            current[2].append(line)
    if current:
        yield current[0], current[1], "\n".join(current[2])


def _string_list(body: str, field: str) -> list[str] | None:
    """The strings of ``<indent>field = [ "a", "b", ]`` in a class body (the list may span
    lines), or None. Linear: the pattern can only start at a line start and its indent class
    excludes newlines, so each attempt is bounded by one line; the list ends at the next "]"."""
    m = re.compile(r"^[ \t]+" + re.escape(field) + r"[ \t]*=[ \t]*\[", re.M).search(body)
    if not m:
        return None
    close = body.find("]", m.end())
    if close < 0:
        return None
    return [json.loads(f'"{s}"') for s in _QUOTED_RE.findall(body, m.end(), close)]
