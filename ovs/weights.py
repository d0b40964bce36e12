"""Weight files to NumPy arrays, without PyTorch.

``load_state_dict(path)`` reads, chosen by the file's magic bytes (never its suffix):

* **safetensors** through the C reader (``_core.SafeTensorsFile``), which reads the file into
  private memory (a loaded model never depends on the file staying unchanged): aligned float32
  tensors come back as read-only zero-copy views of that copy;
* **PyTorch zip checkpoints** (``torch.save`` since torch 1.6: ``.pt``/``.pth``/``.bin``) and
  **TorchScript archives** (``torch.jit.save``, e.g. OpenAI's CLIP ``.pt`` files) through a
  restricted unpickler that can only rebuild tensors and plain containers (``ovs.torch_reader``,
  which documents what a file can and cannot make it do). Every other global a pickle names
  (``os.system``, ``builtins.eval``, a model class, ...) is refused with
  :class:`ovs.WeightFileError` before anything is called, and the memory a file may expand to
  is bounded by its size.

Legacy (pre-1.6, non-zip) ``torch.save`` files and plain pickles are refused.

Floating-point tensors are returned as float32 (float16 / bfloat16 / float64 converted, rounding
to nearest; a finite float64 value that would round to infinity is refused with WeightFileError,
stored infinities stay); integer and bool tensors keep their dtype.
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from typing import Mapping

import numpy as np

from ._core import SafeTensorsFile, WeightFileError
from .torch_reader import read_torch_zip

__all__ = ["load_state_dict", "save_safetensors", "detect_format", "SafeTensorsFile",
           "WeightFileError"]

_FLOAT_KINDS = ("F32", "F16", "BF16", "F64")
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
        state = read_torch_zip(path, key=key, skip_unknown_objects=skip_unknown_objects)
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
    """Write ``tensors`` as a safetensors file through the ``safetensors`` package (its NumPy
    API), atomically: a temporary file in the same folder, flushed, then renamed into place.

    Arrays may be non-contiguous, Fortran-ordered or big-endian; they are written C-ordered
    little-endian. bool, (u)int8-64, float16/32/64 and ml_dtypes.bfloat16 are allowed; names
    must be str, metadata a dict of str to str.
    """
    import safetensors.numpy

    path = os.fspath(path)
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("metadata must be a dict of str to str")
        metadata = dict(metadata)
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {type(name).__name__}")
        if name == "__metadata__" or "\0" in name:
            raise ValueError(f"invalid tensor name {name!r}")
        arr = np.asarray(value)
        _safetensors_dtype(arr.dtype, name)
        # The package writes each array's buffer as is: it must be C-contiguous (and is
        # byte-swapped by the package when big-endian). np.ascontiguousarray would turn 0-d
        # arrays into 1-d ones.
        arrays[name] = np.asarray(arr, order="C")

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.close(fd)
        safetensors.numpy.save_file(arrays, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
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
def _strip_module_prefix(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    prefix = "module."
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state
