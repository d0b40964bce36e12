"""Weight files to NumPy arrays, without PyTorch.

``load_state_dict(path)`` reads, chosen by the file's magic bytes (never its suffix):

* **safetensors** through the C reader (``_core.SafeTensorsFile``), which reads the file into
  private memory (a loaded model never depends on the file staying unchanged): aligned float32
  tensors come back as read-only zero-copy views of that copy;
* **PyTorch zip checkpoints** (``torch.save`` since torch 1.6: ``.pt``/``.pth``/``.bin``) and
  **TorchScript archives** (``torch.jit.save``, e.g. OpenAI's CLIP ``.pt`` files) through a
  restricted unpickler that can only rebuild tensors and plain containers. Every other global a
  pickle names (``os.system``, ``builtins.eval``, a model class, ...) is refused with
  :class:`ovs.WeightFileError` before anything is called.

Legacy (pre-1.6, non-zip) ``torch.save`` files and plain pickles are refused.

Floating-point tensors are returned as float32 (float16 / bfloat16 / float64 converted); integer
and bool tensors keep their dtype.
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
import stat
import tempfile
import zipfile
from typing import Any, Mapping

import numpy as np

from ._core import SafeTensorsFile, WeightFileError

__all__ = ["load_state_dict", "save_safetensors", "detect_format", "SafeTensorsFile",
           "WeightFileError"]

_FLOAT_KINDS = ("F32", "F16", "BF16", "F64")
_MAX_EXPANDED_ELEMENTS = 1 << 28  # a stride-0 view may not materialise more than this
_MAX_SCRIPT_MODULES = 1 << 20     # module paths walked in a TorchScript archive
_LEGACY_TORCH_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


# --------------------------------------------------------------------------- format detection
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def require_regular_file(path: str | os.PathLike, what: str = "weights") -> None:
    """Raise FileNotFoundError, IsADirectoryError or OSError(EINVAL) naming the kind of file
    unless ``path`` is a regular file (checked with stat, before any open: opening a FIFO blocks
    until a writer appears and a device such as /dev/zero never ends)."""
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"{what} file {path!r} does not exist") from None
    if stat.S_ISREG(mode):
        return
    kind = next((k for test, k in _FILE_KINDS if test(mode)), "not a regular file")
    exc = IsADirectoryError if stat.S_ISDIR(mode) else OSError
    raise exc(errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL,
              f"cannot read {what} from {path!r}: it is {kind}; pass a regular file")


def _open_nonblocking(path, flags):
    """open() that cannot block on a FIFO swapped in after require_regular_file's stat."""
    fd = os.open(path, flags | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"cannot read {path!r}: not a regular file")
    return fd


def detect_format(path: str | os.PathLike) -> str:
    """The container format of ``path`` from its first bytes: ``"safetensors"``, ``"zip"`` (a
    torch.save checkpoint or TorchScript archive), ``"legacy-torch"``, ``"pickle"`` or
    ``"unknown"``. Raises OSError if the file cannot be read or is not a regular file."""
    require_regular_file(path)
    with open(path, "rb", opener=_open_nonblocking) as f:
        head = f.read(16)
        size = os.fstat(f.fileno()).st_size
    if len(head) >= 9 and head[8:9] == b"{":
        # A plausible header length: the C reader then reports truncation precisely.
        if int.from_bytes(head[:8], "little") <= max(size - 8, 100 << 20):
            return "safetensors"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:1] == b"\x80" and len(head) >= 2 and 2 <= head[1] <= 5:
        if head[2:4] == b"\x8a\x0a" and head[4:14] == _LEGACY_TORCH_MAGIC:
            return "legacy-torch"
        return "pickle"
    return "unknown"


# --------------------------------------------------------------------------- public API
def load_state_dict(path: str | os.PathLike, *, key: str | None = None,
                    skip_unknown_objects: bool = False) -> dict[str, np.ndarray]:
    """Read the tensors of a weight file into ``{name: ndarray}``.

    path:  a safetensors file, a PyTorch zip checkpoint or a TorchScript archive.
    key:   take the tensor dictionary stored under this top-level key of a checkpoint (without
           it, a checkpoint that is a tensor dict is used as is, and otherwise the tensor dict
           under "state_dict" or "model" (detectron2) is taken).
    skip_unknown_objects: for training checkpoints that also pickle other objects (optimizer
           schedulers, config classes): replace objects of non-allowlisted classes by inert
           placeholders instead of refusing the file. They are never constructed or called, and
           their content is dropped; a selected tensor dict may not contain them.

    A leading "module." (DataParallel) is stripped when every name has it. Float tensors become
    float32 (read-only views where possible); integer/bool tensors keep their dtype.
    Raises OSError (cannot read) or ovs.WeightFileError (malformed, unsupported or refused).
    """
    path = os.fspath(path)
    fmt = detect_format(path)
    if fmt == "safetensors":
        if key is not None:
            raise WeightFileError(f"{path!r} is a safetensors file: key={key!r} applies only to "
                                  "nested PyTorch checkpoints")
        state = _load_safetensors(path)
    elif fmt == "zip":
        obj = _TorchZip(path, skip_unknown_objects).load()
        state = _select_state_dict(obj, key, path)
    elif fmt == "legacy-torch":
        raise WeightFileError(
            f"{path!r} uses PyTorch's legacy (pre-1.6, non-zip) torch.save format, which ovs does "
            "not read. Re-save it with a current torch: torch.save(torch.load(path), new_path), or "
            "convert it to safetensors.")
    elif fmt == "pickle":
        raise WeightFileError(
            f"{path!r} is a plain pickle, not a weight file. Pickles can run arbitrary code and "
            "are refused; convert it to safetensors (ovs.weights.save_safetensors) or save it "
            "with torch.save.")
    else:
        raise WeightFileError(
            f"{path!r} is not a safetensors file, a PyTorch zip checkpoint or a TorchScript "
            "archive (unrecognised leading bytes)")
    return _strip_module_prefix(state)


def save_safetensors(tensors: Mapping[str, np.ndarray], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` as a safetensors file, atomically (temporary file + rename).

    Layout as the reference implementation writes it: tensors ordered by decreasing item size,
    then name (so every tensor is aligned to its item size), the JSON header padded with spaces
    to a multiple of 8 bytes. Arrays may be non-contiguous or big-endian; they are written
    C-ordered little-endian. bool, (u)int8-64, float16/32/64 and ml_dtypes.bfloat16 are allowed.
    """
    path = os.fspath(path)
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("metadata must be a dict of str to str")
    arrays = []
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {type(name).__name__}")
        if name == "__metadata__" or "\0" in name:
            raise ValueError(f"invalid tensor name {name!r}")
        arr = np.asarray(value)
        code = _safetensors_dtype(arr.dtype, name)
        # (np.ascontiguousarray would turn 0-d arrays into 1-d ones)
        arr = np.asarray(arr, dtype=arr.dtype.newbyteorder("<")
                         if arr.dtype.byteorder == ">" else arr.dtype, order="C")
        arrays.append((name, code, arr))
    arrays.sort(key=lambda t: (-t[2].dtype.itemsize, t[0]))

    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, code, arr in arrays:
        header[name] = {"dtype": code, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(text).to_bytes(8, "little"))
            f.write(text)
            for _, _, arr in arrays:
                if arr.nbytes:
                    f.write(arr.reshape(-1).view(np.uint8).data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


_NUMPY_TO_SAFETENSORS = {
    "float32": "F32", "float16": "F16", "float64": "F64", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8",
    "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL",
}


def _safetensors_dtype(dtype: np.dtype, name: str) -> str:
    code = _NUMPY_TO_SAFETENSORS.get(dtype.name)
    if code is None:
        raise TypeError(f"tensor {name!r}: dtype {dtype} cannot be stored in safetensors "
                        f"(allowed: {', '.join(_NUMPY_TO_SAFETENSORS)})")
    return code


# --------------------------------------------------------------------------- safetensors
def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    out = {}
    with SafeTensorsFile(path) as f:
        for name in f.keys():
            dtype, _ = f.info(name)
            if dtype in _FLOAT_KINDS:
                out[name] = f.get(name)
            elif dtype == "BOOL":
                out[name] = f.get_raw(name).view(np.uint8) != 0  # any non-zero byte is True
            else:
                out[name] = f.get_raw(name)
    return out


# --------------------------------------------------------------------------- selection
def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


def _select_state_dict(obj: Any, key: str | None, path: str) -> dict[str, np.ndarray]:
    if isinstance(obj, _ScriptObject) and obj._archive is not None:  # a TorchScript module
        if key is not None:
            raise WeightFileError(f"{path!r} is a TorchScript archive: key={key!r} applies only "
                                  "to nested PyTorch checkpoints")
        return obj._state_dict()
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


def _strip_module_prefix(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    prefix = "module."
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


# --------------------------------------------------------------------------- torch zip files
class _StorageType:
    """What the pickle's ``torch.FloatStorage`` (etc.) global resolves to: only a dtype."""

    def __init__(self, name: str, dtype: str):
        self.name = name
        self.dtype = dtype  # a key of _DTYPES

    def __repr__(self):
        return f"<storage type {self.name}>"


class _TorchDtype:
    """What ``torch.float32`` (etc.) resolves to."""

    def __init__(self, name: str, dtype: str):
        self.name = name
        self.dtype = dtype

    def __repr__(self):
        return f"<torch dtype {self.name}>"


class _Storage:
    """Raw bytes of one storage record and its element type."""

    def __init__(self, key: str, data: np.ndarray, dtype: str):
        self.key = key
        self.data = data    # (nbytes,) uint8, read-only
        self.dtype = dtype


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
    _state: Any = None  # set by BUILD (pickle calls __setstate__)

    def __init__(self, *args, **kwargs):
        self._args = args

    def __setstate__(self, state):
        self._state = state

    def __repr__(self):
        return f"<placeholder {self._qualname}>"

    def _state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers of a TorchScript module tree, named as
        ``torch.jit.load(path).state_dict()`` names them: own parameters, own buffers, then each
        submodule depth-first (a submodule reachable under two names appears under both)."""
        classes = self._archive._classes if self._archive else {}
        out: dict[str, np.ndarray] = {}
        stack = [(self, "", frozenset())]  # (module, name prefix, ids of its ancestors)
        budget = _MAX_SCRIPT_MODULES
        while stack:
            obj, prefix, ancestors = stack.pop()
            budget -= 1
            if budget < 0:
                raise WeightFileError(f"TorchScript archive: more than {_MAX_SCRIPT_MODULES} "
                                      "module paths")
            state = obj._state if isinstance(obj._state, dict) else {}
            info = classes.get(obj._qualname)
            if info is not None:
                names = list(info[0]) + list(info[1])
            else:  # no class source in the archive: every tensor attribute
                names = [k for k, v in state.items() if isinstance(v, np.ndarray)]
            for n in names:
                v = state.get(n)
                if isinstance(v, np.ndarray):
                    out[prefix + n] = v
            inner = ancestors | {id(obj)}
            children = [(v, prefix + k + ".", inner) for k, v in state.items()
                        if isinstance(v, _ScriptObject) and isinstance(k, str)
                        and id(v) not in inner  # a cycle
                        and classes.get(v._qualname, (0, 0, True))[2]]
            stack.extend(reversed(children))
        return out


class _Refused(Exception):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose globals are an allowlist of inert rebuild functions and markers."""

    def __init__(self, data: bytes, archive: "_TorchZip"):
        super().__init__(io.BytesIO(data))
        self._archive = archive

    def find_class(self, module: str, name: str):
        a = self._archive
        # Protocol 0-2 pickles spell some globals the Python 2 way (__builtin__.eval,
        # commands.call for subprocess.call): use the Python 3 names for matching and messages.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        full = f"{module}.{name}"
        if module == "torch._utils":
            fn = {"_rebuild_tensor_v2": a._rebuild_tensor_v2,
                  "_rebuild_tensor_v3": a._rebuild_tensor_v3,
                  "_rebuild_parameter": a._rebuild_parameter,
                  "_rebuild_parameter_with_state": a._rebuild_parameter_with_state}.get(name)
            if fn is not None:
                return fn
        elif module == "torch._tensor" and name == "_rebuild_from_type_v2":
            return a._rebuild_from_type_v2
        elif module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        elif module in ("torch", "torch.storage") and name in _STORAGE_TYPES:
            return _StorageType(name, _STORAGE_TYPES[name])
        elif module == "torch" and name in _TORCH_DTYPES:
            return _TorchDtype(name, _TORCH_DTYPES[name])
        elif module == "torch" and name == "Size":
            return _torch_size
        elif module == "torch" and name == "device":
            return _torch_device
        elif (module, name) in (("torch", "Tensor"), ("torch.nn.parameter", "Parameter"),
                                ("torch.nn", "Parameter")):
            return _TENSOR_TYPES[name]
        elif module in ("builtins", "__builtin__") and name in ("set", "frozenset"):
            return set if name == "set" else frozenset
        elif module == "_codecs" and name == "encode":
            return _codecs_encode
        elif module == "torch.jit._pickle" and name in _JIT_PICKLE:
            return _JIT_PICKLE[name]
        elif module == "__torch__" or module.startswith("__torch__."):
            return a._placeholder(full)
        if a.skip_unknown_objects and not _always_refused(module):
            return a._placeholder(full, script=False)
        raise _Refused(full)

    def persistent_load(self, pid):
        return self._archive._persistent_load(pid)


def _always_refused(module: str) -> bool:
    """Modules never replaced by placeholders even with skip_unknown_objects, so that files
    trying to run code are reported as such."""
    root = module.split(".")[0]
    return root in {"builtins", "__builtin__", "os", "posix", "nt", "subprocess", "sys",
                    "importlib", "runpy", "shutil", "socket", "pty", "code", "ctypes",
                    "pickle", "_pickle", "marshal", "types", "functools", "operator", "io",
                    "webbrowser", "commands", "platform", "multiprocessing", "asyncio"}


def _torch_size(dims=()):
    return tuple(int(d) for d in dims)


def _torch_device(*args):
    return ":".join(str(a) for a in args)


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise _Refused(f"_codecs.encode({type(obj).__name__}, {encoding!r})")
    return obj.encode(encoding)


class _TensorTypeMarker:
    def __init__(self, name):
        self.name = name


_TENSOR_TYPES = {"Tensor": _TensorTypeMarker("Tensor"), "Parameter": _TensorTypeMarker("Parameter")}

_JIT_PICKLE = {
    "build_intlist": list, "build_floatlist": list, "build_boollist": list,
    "build_doublelist": list, "build_tensorlist": list,
    "restore_type_tag": lambda value, type_str=None: value,
}


def _int_tuple(v, what: str, key: str) -> tuple[int, ...]:
    if not isinstance(v, (tuple, list)) or len(v) > 64 or not all(
            type(x) is int and x >= 0 for x in v):
        raise WeightFileError(f"tensor on storage {key!r}: {what} must be a tuple of "
                              f"non-negative ints, got {type(v).__name__}")
    return tuple(v)


class _TorchZip:
    """One torch zip archive being read: storages, class metadata, rebuild functions."""

    def __init__(self, path: str, skip_unknown_objects: bool = False):
        self.path = path
        self.skip_unknown_objects = skip_unknown_objects
        self._storages: dict[str, np.ndarray] = {}
        self._classes: dict[str, tuple[list[str], list[str], bool]] = {}
        self._placeholders: dict[str, type] = {}
        self._zip: zipfile.ZipFile | None = None
        self._prefix = ""
        self._big_endian = False

    def _fail(self, msg: str) -> WeightFileError:
        return WeightFileError(f"{self.path!r}: {msg}")

    # ---- reading
    def load(self) -> Any:
        try:
            with zipfile.ZipFile(self.path) as zf:
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
            value = self._read_small(order, 16).decode("ascii", "replace").strip()
            if value not in ("little", "big"):
                raise self._fail(f"unknown byteorder record {value!r}")
            self._big_endian = value == "big"
        self._read_classes(zf, names)
        data = self._read_small(pkls[0], 1 << 30)
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

    def _read_small(self, name: str, limit: int) -> bytes:
        info = self._zip.getinfo(name)
        if info.file_size > limit:
            raise self._fail(f"record {name} is {info.file_size} bytes (limit {limit})")
        return self._zip.read(info)

    def _read_classes(self, zf: zipfile.ZipFile, names: list[str]) -> None:
        """Parameter/buffer lists of TorchScript classes from the archive's code/ sources."""
        code = self._prefix + "code/"
        for n in names:
            if not (n.startswith(code) and n.endswith(".py")):
                continue
            rel = n[len(code):-3]
            if not rel.startswith("__torch__"):
                continue
            module = rel.replace("/", ".")
            try:
                text = self._read_small(n, 16 << 20).decode("utf-8", "replace")
            except WeightFileError:
                continue
            for cls, base, body in _iter_classes(text):
                params = _string_list(body, "__parameters__")
                buffers = _string_list(body, "__buffers__")
                self._classes[f"{module}.{cls}"] = (params or [], buffers or [],
                                                    base == "Module")

    def _placeholder(self, qualname: str, script: bool = True) -> type:
        cls = self._placeholders.get(qualname)
        if cls is None:
            cls = type(qualname.rsplit(".", 1)[-1], (_ScriptObject,),
                       {"_qualname": qualname, "_archive": self if script else None,
                        "__module__": __name__})
            self._placeholders[qualname] = cls
        return cls

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
            raw = np.frombuffer(self._zip.read(info), dtype=np.uint8)
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
        if func not in (self._rebuild_tensor_v2, self._rebuild_tensor_v3,
                        self._rebuild_parameter, self._rebuild_parameter_with_state):
            raise self._fail("_rebuild_from_type_v2 with an unsupported rebuild function")
        if new_type not in _TENSOR_TYPES.values() or not isinstance(args, tuple):
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
        if numel == 0:
            arr = np.empty(size, dtype=npdtype)
        else:
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
                arr = np.ascontiguousarray(np.lib.stride_tricks.as_strided(
                    elems[offset:], shape=size,
                    strides=tuple(s * npdtype.itemsize for s in stride), writeable=False))
        return _to_output_dtype(arr, dtype)


def _to_output_dtype(arr: np.ndarray, dtype: str) -> np.ndarray:
    """float16/bfloat16/float64 -> float32; other types native byte order, unchanged."""
    if dtype == "bf16":
        bits = arr.astype(np.uint32) << 16
        return bits.view(np.float32)
    if dtype in ("f2", "f8"):
        return arr.astype(np.float32)
    if not arr.dtype.isnative:
        return arr.astype(arr.dtype.newbyteorder("="))
    return arr


_CLASS_RE = re.compile(r"class\s+(\w+)\s*\(\s*([\w.]+)\s*\)\s*:")


def _iter_classes(text: str):
    """(name, base, body) of each top-level class in TorchScript's serialized Python source."""
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
    m = re.search(r"^\s+" + field + r"\s*=\s*\[([^\]]*)\]", body, re.M)
    if not m:
        return None
    return [json.loads(f'"{s}"') for s in re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(1))]
