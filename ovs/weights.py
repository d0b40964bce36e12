"""Weight files to NumPy arrays, without PyTorch.

``load_state_dict(path)`` reads, chosen by the file's magic bytes (never its suffix):

* **safetensors** through the C reader (``_core.SafeTensorsFile``), which validates the header
  at open and reads each tensor from the file when asked for (a file changed since the open
  raises OSError instead of giving other weights);
* **PyTorch zip checkpoints** (``torch.save`` since torch 1.6: ``.pt``/``.pth``/``.bin``) and
  **TorchScript archives** (``torch.jit.save``, e.g. OpenAI's CLIP ``.pt`` files) through a
  restricted unpickler that can only rebuild tensors and plain containers (``ovs.torch_reader``,
  which documents what a file can and cannot make it do). Every other global a pickle names
  (``os.system``, ``builtins.eval``, a model class, ...) is refused with
  :class:`ovs.WeightFileError` before anything is called, and the memory a file may expand to
  is bounded by its size.

Legacy (pre-1.6, non-zip) ``torch.save`` files and plain pickles are refused.

``open_state_dict(path)`` is what ``ovs.load`` uses: for safetensors a :class:`FileStateDict`, a
read-only mapping that reads each tensor from the file on access and keeps nothing, so that a
model built from it holds its weights once (in the layout of its C kernels); other formats as
``load_state_dict``.

Floating-point tensors are returned as float32 (float16 / bfloat16 / float64 converted, rounding
to nearest; a finite float64 value that would round to infinity is refused with WeightFileError,
stored infinities stay); integer and bool tensors keep their dtype.
"""
from __future__ import annotations

import errno
import os
import stat
from typing import Mapping

import numpy as np

from ._core import SafeTensorsFile, WeightFileError
from ._files import write_atomic
from .hub import KNOWN_WEIGHTS
from .torch_reader import read_torch_zip

__all__ = ["load_state_dict", "open_state_dict", "FileStateDict", "save_safetensors",
           "random_state_dict", "detect_format", "SafeTensorsFile", "WeightFileError"]

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

    write_atomic(path, lambda tmp: safetensors.numpy.save_file(arrays, tmp, metadata=metadata),
                 fsync=True)


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
def _read_tensor(f: SafeTensorsFile, key: str) -> np.ndarray:
    """Tensor `key` of f as ovs returns it (floats as float32, BOOL as bool, integers as
    stored), read-only."""
    dtype, _ = f.info(key)
    if dtype in _FLOAT_KINDS:
        a = f.get(key)
    elif dtype == "BOOL":
        a = f.get_raw(key).view(np.uint8) != 0  # any non-zero byte is True
    else:
        a = f.get_raw(key)
    a.setflags(write=False)
    return a


_NUMPY_OF = {"BOOL": np.dtype(bool), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
             "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U64": np.dtype(np.uint64),
             "U32": np.dtype(np.uint32), "U16": np.dtype(np.uint16), "U8": np.dtype(np.uint8)}


class FileStateDict(Mapping):
    """A read-only state dict over a safetensors file: names, shapes and dtypes come from the
    header; ``sd[name]`` reads the tensor from the file each time (a new read-only array: floats
    as float32, BOOL as bool, integers as stored) and nothing is kept, so holding one costs only
    the header. OSError if the file changed since it was opened.

    Entries may also be arrays in memory (``replace``: a pruned weight, a swapped one), and the
    names may differ from the file's (``rename``). ``shape(name)`` / ``dtype(name)`` answer
    without reading; ``refs()`` gives the C model constructors the file's tensors to read when
    they build (see ovs._core weights tables). ``sd()`` returns sd itself, so code written for
    torch's ``model.state_dict()`` works on ``model.state_dict`` too."""

    def __init__(self, file: SafeTensorsFile | str | os.PathLike, entries=None):
        if not isinstance(file, SafeTensorsFile):
            file = SafeTensorsFile(os.fspath(file))
        self._file = file
        # name -> the file's tensor name (str) or an array in memory
        self._entries: dict[str, str | np.ndarray] = (
            {k: k for k in file.keys()} if entries is None else dict(entries))

    # ---- Mapping
    def __getitem__(self, name: str) -> np.ndarray:
        v = self._entries[name]
        if isinstance(v, str):
            return _read_tensor(self._file, v)
        return v.dense() if hasattr(v, "csr_tuple") else v   # ovs.prune.SparseWeight: dense

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __call__(self) -> "FileStateDict":
        return self

    def __repr__(self) -> str:
        return f"<FileStateDict {self.path!r}: {len(self)} tensors, read on access>"

    # ---- without reading
    @property
    def path(self) -> str | None:
        return self._file.path

    @property
    def file(self) -> SafeTensorsFile:
        return self._file

    def shape(self, name: str) -> tuple[int, ...]:
        v = self._entries[name]
        return tuple(self._file.info(v)[1]) if isinstance(v, str) else tuple(np.shape(v))

    def dtype(self, name: str) -> np.dtype:
        """The dtype sd[name] will have."""
        v = self._entries[name]
        if not isinstance(v, str):
            return v.dtype if hasattr(v, "dtype") else np.asarray(v).dtype
        code = self._file.info(v)[0]
        return np.dtype(np.float32) if code in _FLOAT_KINDS else _NUMPY_OF[code]

    def in_memory(self, name: str) -> bool:
        return not isinstance(self._entries[name], str)

    # ---- derived views (share the open file)
    def select(self, keep) -> "FileStateDict":
        """The entries whose name satisfies keep(name)."""
        return FileStateDict(self._file, {k: v for k, v in self._entries.items() if keep(k)})

    def rename(self, fn) -> "FileStateDict":
        """The entries under the names fn(name) (ValueError if two collide)."""
        out = {}
        for k, v in self._entries.items():
            new = fn(k)
            if new in out:
                raise ValueError(f"two tensors would be named {new!r}")
            out[new] = v
        return FileStateDict(self._file, out)

    def replace(self, updates: Mapping[str, np.ndarray]) -> "FileStateDict":
        """A new mapping with `updates` (arrays kept in memory, read-only) replacing or adding
        entries; the others still read from the file."""
        out = dict(self._entries)
        for k, v in updates.items():
            if hasattr(v, "csr_tuple"):   # an ovs.prune.SparseWeight stays sparse
                out[str(k)] = v
                continue
            a = np.asarray(v)
            if a.flags.writeable:
                a = a.copy()
                a.setflags(write=False)
            out[str(k)] = a
        return FileStateDict(self._file, out)

    def refs(self, keep=None) -> dict:
        """{name: (SafeTensorsFile, file name) or array} of the entries (those keep(name)
        accepts): what the C constructors take to read each tensor while they build."""
        return {k: (self._file, v) if isinstance(v, str) else v
                for k, v in self._entries.items() if keep is None or keep(k)}

    def to_dict(self) -> dict[str, np.ndarray]:
        """Every tensor read into memory."""
        return {k: self[k] for k in self._entries}


def shape_of(sd: Mapping[str, np.ndarray], name: str) -> tuple[int, ...]:
    """The shape of sd[name] (KeyError if absent), without reading a file-backed tensor."""
    if isinstance(sd, FileStateDict):
        return sd.shape(name)
    return tuple(np.shape(sd[name]))


def dtype_of(sd: Mapping[str, np.ndarray], name: str) -> np.dtype:
    """The dtype of sd[name], without reading a file-backed tensor."""
    if isinstance(sd, FileStateDict):
        return sd.dtype(name)
    return np.asarray(sd[name]).dtype


def subset(sd: Mapping[str, np.ndarray], keep) -> Mapping[str, np.ndarray]:
    """The entries of sd whose name satisfies keep(name): a FileStateDict stays one (nothing
    read), any other mapping becomes a dict."""
    if isinstance(sd, FileStateDict):
        return sd.select(keep)
    return {k: v for k, v in sd.items() if keep(k)}


def updated(sd: Mapping[str, np.ndarray], updates: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """sd with `updates` replacing or adding entries: a FileStateDict reads the rest from its
    file still, any other mapping becomes a new dict."""
    if isinstance(sd, FileStateDict):
        return sd.replace(updates)
    return {**sd, **updates}


def c_weights(sd: Mapping[str, np.ndarray], keep=None) -> dict:
    """The weights table for the C model constructors (``_core.ResNet(weights, ...)``, ...):
    {name: array, or (SafeTensorsFile, file name) for a tensor the constructor reads itself}."""
    if isinstance(sd, FileStateDict):
        return sd.refs(keep)
    return {k: v for k, v in sd.items() if keep is None or keep(k)}


def open_state_dict(path: str | os.PathLike, *, skip_unknown_objects: bool = False
                    ) -> Mapping[str, np.ndarray]:
    """The tensors of a weight file as a mapping: a FileStateDict for safetensors (read on
    access), otherwise ``load_state_dict(path)``. A leading "module." is stripped as there."""
    path = os.fspath(path)
    if detect_format(path) != "safetensors":
        return load_state_dict(path, skip_unknown_objects=skip_unknown_objects)
    sd = FileStateDict(path)
    prefix = "module."
    if len(sd) and all(k.startswith(prefix) for k in sd):
        sd = sd.rename(lambda k: k[len(prefix):])
    return sd


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    with SafeTensorsFile(path) as f:
        return {name: _read_tensor(f, name) for name in f.keys()}


# --------------------------------------------------------------------------- selection
def _strip_module_prefix(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    prefix = "module."
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


# --------------------------------------------------------------------------- generated weights
#: Architectures random_state_dict can generate, as open_clip configures them: the named
#: architectures of ovs.hub.KNOWN_WEIGHTS.
RANDOM_ARCHS: dict[str, dict] = {k.name: k.config for k in KNOWN_WEIGHTS.values()}
_TEXT = dict(layers=12, width=512, context=77, vocab=49408)


def random_state_dict(name: str = "ViT-B-16", *, seed: int = 0) -> dict[str, np.ndarray]:
    """A randomly initialised CLIP state dict with open_clip's names and shapes for `name`
    ("RN50" or "ViT-B-16"): the same tensors open_clip.create_model(name).state_dict() holds.

    For demonstrations and speed/FLOPs measurements where the real weights cannot be
    downloaded: the model runs at the real architecture's cost, but its outputs (labels,
    embeddings, α of its layers) mean nothing. Values are drawn uniformly with zero mean and
    standard deviation 1/sqrt(fan_in) for matrices, sqrt(2/fan_in) for convolutions (He), the
    scales open_clip uses for embeddings; norms identity (bottleneck bn3 scale 0.5 to keep the
    residual stream tame), biases 0; float32, ~0.6 GB for ViT-B-16.
    """
    if name not in RANDOM_ARCHS:
        raise ValueError(f"no generator for architecture {name!r}; known: {sorted(RANDOM_ARCHS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    cfg = RANDOM_ARCHS[name]
    rng = np.random.default_rng(int(seed))
    sd: dict[str, np.ndarray] = {}

    def normal(shape, std):   # uniform with standard deviation std: 2-3x faster to draw
        a = rng.random(shape, dtype=np.float32)
        a -= np.float32(0.5)
        a *= np.float32(std * 12 ** 0.5)
        return a

    def linear(n, out_f, in_f, bias=True):
        sd[n + ".weight"] = normal((out_f, in_f), in_f ** -0.5)
        if bias:
            sd[n + ".bias"] = np.zeros(out_f, np.float32)

    def norm(n, c, bn=False, scale=1.0):
        sd[n + ".weight"] = np.full(c, scale, np.float32)
        sd[n + ".bias"] = np.zeros(c, np.float32)
        if bn:
            sd[n + ".running_mean"] = np.zeros(c, np.float32)
            sd[n + ".running_var"] = np.ones(c, np.float32)
            sd[n + ".num_batches_tracked"] = np.zeros((), np.int64)

    def conv(n, k, c, r):
        sd[n + ".weight"] = normal((k, c, r, r), (2.0 / (c * r * r)) ** 0.5)

    def transformer(prefix, layers, width):
        for i in range(layers):
            p = f"{prefix}resblocks.{i}."
            norm(p + "ln_1", width)
            sd[p + "attn.in_proj_weight"] = normal((3 * width, width), width ** -0.5)
            sd[p + "attn.in_proj_bias"] = np.zeros(3 * width, np.float32)
            linear(p + "attn.out_proj", width, width)
            norm(p + "ln_2", width)
            linear(p + "mlp.c_fc", 4 * width, width)
            linear(p + "mlp.c_proj", width, 4 * width)

    # text tower (same for both): open_clip's order of tensors
    T = _TEXT
    sd["positional_embedding"] = normal((T["context"], T["width"]), 0.01)
    sd["text_projection"] = normal((T["width"], cfg["embed_dim"]), T["width"] ** -0.5)
    sd["logit_scale"] = np.array(np.log(1 / 0.07), np.float32)
    if cfg["vision"] == "resnet":
        w = cfg["width"]
        conv("visual.conv1", w // 2, 3, 3); norm("visual.bn1", w // 2, bn=True)
        conv("visual.conv2", w // 2, w // 2, 3); norm("visual.bn2", w // 2, bn=True)
        conv("visual.conv3", w, w // 2, 3); norm("visual.bn3", w, bn=True)
        inplanes = w
        for s, blocks in enumerate(cfg["layers"]):
            planes = w << s
            for b in range(blocks):
                p = f"visual.layer{s + 1}.{b}."
                conv(p + "conv1", planes, inplanes, 1); norm(p + "bn1", planes, bn=True)
                conv(p + "conv2", planes, planes, 3); norm(p + "bn2", planes, bn=True)
                conv(p + "conv3", planes * 4, planes, 1); norm(p + "bn3", planes * 4, bn=True, scale=0.5)
                if b == 0:   # stride 2 or a channel change: projection shortcut
                    conv(p + "downsample.0", planes * 4, inplanes, 1)
                    norm(p + "downsample.1", planes * 4, bn=True)
                inplanes = planes * 4
        C, g = inplanes, cfg["image_size"] // 32
        sd["visual.attnpool.positional_embedding"] = normal((g * g + 1, C), C ** -0.5)
        for proj in ("k_proj", "q_proj", "v_proj"):
            linear(f"visual.attnpool.{proj}", C, C)
        linear("visual.attnpool.c_proj", cfg["embed_dim"], C)
    else:
        D, P = cfg["width"], cfg["patch"]
        g = cfg["image_size"] // P
        sd["visual.class_embedding"] = normal((D,), D ** -0.5)
        sd["visual.positional_embedding"] = normal((g * g + 1, D), D ** -0.5)
        sd["visual.proj"] = normal((D, cfg["embed_dim"]), D ** -0.5)
        sd["visual.conv1.weight"] = normal((D, 3, P, P), (3 * P * P) ** -0.5)
        norm("visual.ln_pre", D)
        transformer("visual.transformer.", cfg["layers"], D)
        norm("visual.ln_post", D)
    transformer("transformer.", T["layers"], T["width"])
    sd["token_embedding.weight"] = normal((T["vocab"], T["width"]), 0.02)
    norm("ln_final", T["width"])
    return sd
