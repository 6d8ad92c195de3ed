"""Read torch checkpoints that hold whole pickled objects, without running anything from the file.

Community checkpoints (task_vectors, TALL masks) are pickled ``nn.Module`` objects: ``torch.load`` with
``weights_only=True`` refuses them ("Unsupported global: src.modeling.ImageEncoder"), and plain
``torch.load`` / ``pickle.load`` would call whatever the file names. Here the unpickler resolves only:

* the functions that rebuild tensors and storages, replaced by our own that copy bytes into tensors;
* a few inert builtins (``OrderedDict``, ``set``, ``slice``, ...) and torch's dtype/size constants;
* classes of the modules that such checkpoints are made of (open_clip, ``torch.nn``, torchvision transforms,
  the task_vectors code ``src.*``) as :class:`Record` placeholders: fresh classes that only store the
  arguments and state the file gives them. Nothing is imported from those modules and nothing is called.

Any other global is refused with an error that names it. Three containers are read: torch's zip format,
torch's legacy (pre-1.6) format and a raw ``pickle.dump`` (whose storages are nested legacy blobs).
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mergeflow.errors import MergeflowError

# Modules whose classes become inert records: what task_vectors/TALL objects are built from.
INERT_PREFIXES = ("open_clip", "src", "torch.nn.modules", "torchvision.transforms", "clip", "modeling",
                  "PIL.Image")

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}
_DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
                "float", "double", "half", "long", "int")
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class Record:
    """An object of a class the file names, reduced to what the file says about it (never its code)."""

    _module = ""
    _name = ""
    args: tuple = ()  # NEWOBJ makes records without __init__: these class-level defaults stand in
    kwargs: dict = {}  # noqa: RUF012 - never mutated, replaced per instance
    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    @classmethod
    def qualname(cls) -> str:
        return f"{cls._module}.{cls._name}"

    def attrs(self) -> dict:
        """The instance's ``__dict__`` as pickled (``(dict, slots)`` states give their dict)."""
        state = getattr(self, "state", None)
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict | type(None)):
            state = state[0]
        return state if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"<record {self.qualname()}>"


class _Guarded:
    """What ``find_class`` hands out for an allowed function: a fresh wrapper per lookup, with no state a
    file can change. A BUILD opcode on it (which would set attributes, e.g. a function's defaults, for the
    rest of the process) is refused."""

    __slots__ = ("target",)

    def __init__(self, target):
        object.__setattr__(self, "target", target)

    def __call__(self, *args, **kwargs):
        return self.target(*args, **kwargs)

    def __setstate__(self, state):
        raise MergeflowError(f"checkpoint: refused to change the loader's {getattr(self.target, '__name__', '?')}")

    def __setattr__(self, name, value):
        raise MergeflowError("checkpoint: refused to change the loader's functions")


# Allowed constructors a file may call with a size: the largest size each may make.
MAX_BYTEARRAY = 1 << 20


def _bytearray(*args):
    if args and isinstance(args[0], int) and not isinstance(args[0], bool) and args[0] > MAX_BYTEARRAY:
        raise MergeflowError(f"checkpoint: refused bytearray({args[0]}): over {MAX_BYTEARRAY} bytes")
    return bytearray(*args)


def _record_class(module: str, name: str) -> type[Record]:
    return type(name.replace(".", "_"), (Record,), {"_module": module, "_name": name, "__module__": __name__})


class _Storage:
    """A storage's raw bytes and element type (filled later for the legacy format)."""

    def __init__(self, dtype: torch.dtype, data: bytes | None = None):
        self.dtype, self.data = dtype, data


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _check_view(numel: int, offset, size, stride) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """The view's shape, strides and offset as ints, refused before any allocation when it reaches past
    its storage or would materialise more elements than the storage holds (zero or overlapping strides)."""
    try:
        size, stride, offset = tuple(int(x) for x in size), tuple(int(x) for x in stride), int(offset)
    except (TypeError, ValueError):
        raise MergeflowError("checkpoint: a tensor's size, stride or offset is not a list of integers") from None
    if len(size) != len(stride) or any(x < 0 for x in (*size, *stride, offset)):
        raise MergeflowError(f"checkpoint: a tensor's size {size} and stride {stride} (offset {offset}) are not a "
                             "view (negative, or of different lengths)")
    elements = 1
    for x in size:
        elements *= x
    if elements == 0:
        return size, stride, offset
    extent = offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True)) + 1
    if extent > numel:
        raise MergeflowError(f"checkpoint: a tensor of size {size} and stride {stride} reaches element {extent} of "
                             f"a storage of {numel}")
    if elements > numel:
        raise MergeflowError(f"checkpoint: a tensor of size {size} would materialise {elements} elements from a "
                             f"storage of {numel} (zero or overlapping strides)")
    return size, stride, offset


def _tensor_from_storage(storage: _Storage, offset: int, size, stride) -> torch.Tensor:
    if storage.data is None:
        raise MergeflowError("checkpoint: a tensor refers to a storage the file never provides")
    item = torch.empty(0, dtype=storage.dtype).element_size()
    if len(storage.data) % item:
        raise MergeflowError(f"checkpoint: a storage of {len(storage.data)} bytes is not whole {storage.dtype} items")
    numel = len(storage.data) // item
    size, stride, offset = _check_view(numel, offset, size, stride)
    if len(storage.data) == 0:
        return torch.empty(size, dtype=storage.dtype)
    data = storage.data if isinstance(storage.data, bytearray | memoryview) else bytearray(storage.data)
    if isinstance(data, memoryview) and data.readonly:
        data = bytearray(data)
    flat = torch.frombuffer(data, dtype=storage.dtype)  # shares the bytes read from the file: no copy
    contiguous = tuple(torch.empty(size, device="meta").stride()) if size else ()
    elements = 1
    for x in size:
        elements *= x
    if offset == 0 and elements == numel and stride == contiguous:
        return flat.view(size)  # the whole storage in order, as torch writes most tensors
    try:
        return torch.as_strided(flat, size, stride, offset).clone()  # a part: at most the storage's size
    except RuntimeError as exc:
        raise MergeflowError(f"checkpoint: a tensor does not fit its storage ({exc})") from None


class _LazyTensor:
    """A tensor of the legacy format: its storage's bytes come after the object's pickle."""

    def __init__(self, storage: _Storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def build(self) -> torch.Tensor:
        return _tensor_from_storage(self.storage, self.offset, self.size, self.stride)


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    if not isinstance(storage, _Storage):
        raise MergeflowError(f"checkpoint: a tensor is built from {type(storage).__name__}, not a storage")
    if storage.data is None:
        return _LazyTensor(storage, offset, size, stride)
    return _tensor_from_storage(storage, offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    if not isinstance(data, torch.Tensor | _LazyTensor):
        raise MergeflowError(f"checkpoint: a parameter holds {type(data).__name__}, not a tensor")
    return data


def _rebuild_from_type(func, _new_type, args, _state):
    func = func.target if isinstance(func, _Guarded) else func
    if func not in (_rebuild_tensor, _rebuild_parameter):
        raise MergeflowError("checkpoint: a tensor subclass is rebuilt by an unexpected function")
    return func(*args)


def _codecs_encode(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise MergeflowError("checkpoint: refused _codecs.encode with arguments other than (str, 'latin1')")
    return text.encode("latin1")


def _reconstructor(cls, base, state):
    if not (isinstance(cls, type) and issubclass(cls, Record)):
        raise MergeflowError(f"checkpoint: refused copyreg._reconstructor of {cls!r}")
    obj = cls()
    if state is not None:
        obj.args = (state,)
    return obj


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch.nn.parameter", "Parameter"): "Parameter",  # only ever the type argument of _rebuild_from_type_v2
    ("torch", "Tensor"): "Tensor",
    ("torch", "Size"): tuple,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): _bytearray,
    ("builtins", "object"): object,
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _reconstructor,
}


def _check_opcodes(stream, source: str) -> None:
    """Scan the pickle at ``stream``'s position without building anything, then rewind.

    C's unpickler sizes its memo by the largest index a PUT names: one ``LONG_BINPUT 2**31`` in a 20 kB file
    reserves gigabytes. No honest pickle stores more objects than it has opcodes, so a larger index is refused.
    """
    import pickletools

    start = stream.tell()
    count = 0
    for opcode, arg, _pos in pickletools.genops(stream):
        count += 1
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and (not isinstance(arg, int) or not 0 <= arg <= count):
            raise MergeflowError(f"{source}: a pickle memo index {arg} in a pickle of {count} opcodes")
    stream.seek(start)


class SafeUnpickler(pickle.Unpickler):
    """Resolves only the globals listed above; storages come from ``storages`` (persistent ids)."""

    def __init__(self, file, source: str, storage_for=None):
        _check_opcodes(file, source)
        super().__init__(file, encoding="utf-8")
        self.source, self.storage_for = source, storage_for

    def find_class(self, module: str, name: str):
        # protocol-2 files name Python 2's modules (__builtin__, copy_reg): read them as Python 3's
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED:
            found = _ALLOWED[(module, name)]
            # functions are wrapped afresh (a file cannot change them); types and names are immutable
            return _Guarded(found) if callable(found) and not isinstance(found, type) else found
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _DTYPE_NAMES:
            return getattr(torch, name)
        if module == "torch.storage" and name == "_load_from_bytes":
            return _Guarded(lambda blob: _storage_from_blob(blob, self.source))
        if any(module == p or module.startswith(p + ".") for p in INERT_PREFIXES):
            return _record_class(module, name)
        raise MergeflowError(f"{self.source}: refused to load global {module}.{name} (not a tensor, storage or "
                             "model class; nothing from the file was run)")

    def persistent_load(self, pid):
        if self.storage_for is None:
            raise MergeflowError(f"{self.source}: unexpected persistent id in a plain pickle")
        if isinstance(pid, tuple) and len(pid) == 4 and _ascii(pid[0]) == "module":
            return pid[1]  # the legacy format's record of a module's class and source: the class (a record)
        if not isinstance(pid, tuple) or not pid or _ascii(pid[0]) != "storage":
            raise MergeflowError(f"{self.source}: unknown persistent id {pid!r:.80}")
        return self.storage_for(pid[1:])


def _ascii(value) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def _dtype_of(storage_type, source: str) -> torch.dtype:
    if not isinstance(storage_type, _StorageType):
        raise MergeflowError(f"{source}: a storage of unknown type {storage_type!r:.80}")
    return storage_type.dtype


# What a zip checkpoint's entries may declare (uncompressed): ``byteorder`` is "little" or "big"; all entries
# together at most ZIP_EXPANSION times the file (torch stores entries uncompressed: 1x; deflated tensors of
# real weights shrink by well under 2x), plus a small allowance for tiny files.
MAX_BYTEORDER = 16
ZIP_EXPANSION = 8
ZIP_ALLOWANCE = 1 << 20


def _read_entry(archive: zipfile.ZipFile, name: str, limit: int, source: str) -> bytes:
    """An entry's bytes, read as a stream and never past ``limit`` nor past what the entry declares."""
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise MergeflowError(f"{source}: archive entry {name} declares {info.file_size} bytes, over the {limit} "
                             "allowed")
    raw = memoryview(np.empty(info.file_size, dtype=np.uint8))  # filled by the read: no zeroing pass
    if info.compress_type == zipfile.ZIP_STORED:
        return _read_stored(archive, info, raw, source)
    with archive.open(info) as stream:
        got = stream.readinto(raw)
        extra = stream.read(1)
    if got != info.file_size or extra:
        raise MergeflowError(f"{source}: archive entry {name} holds {'more' if extra else got} bytes, not the "
                             f"{info.file_size} it declares")
    return raw


def _read_stored(archive: zipfile.ZipFile, info: zipfile.ZipInfo, out: memoryview, source: str) -> memoryview:
    """An uncompressed entry (torch writes all of them so) read straight into ``out`` from the file, without
    zipfile's intermediate copies and CRC pass: the imported file's SHA-256 is what the pipeline records."""
    fp = archive.fp
    fp.seek(info.header_offset)
    header = fp.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise MergeflowError(f"{source}: archive entry {info.filename} has no local header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    fp.seek(info.header_offset + 30 + name_len + extra_len)
    if info.compress_size != info.file_size or fp.readinto(out) != info.file_size:
        raise MergeflowError(f"{source}: archive entry {info.filename} holds fewer bytes than the "
                             f"{info.file_size} it declares")
    return out


def _load_zip(file, size: int, source: str) -> Any:
    """A torch zip checkpoint from ``file`` (a path or a binary stream of ``size`` bytes)."""
    with zipfile.ZipFile(file) as archive:
        infos = archive.infolist()
        names = [i.filename for i in infos]
        declared = sum(i.file_size for i in infos)
        budget = ZIP_EXPANSION * size + ZIP_ALLOWANCE
        if declared > budget:
            raise MergeflowError(f"{source}: the archive's entries declare {declared} bytes, over {ZIP_EXPANSION}x "
                                 f"the file's {size}")
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise MergeflowError(f"{source}: a zip file without data.pkl (not a torch checkpoint)")
        prefix = pkl[0][: -len("data.pkl")]
        order = prefix + "byteorder"
        if order in names and _read_entry(archive, order, MAX_BYTEORDER, source) != b"little":
            raise MergeflowError(f"{source}: big-endian checkpoints are not supported")
        cache: dict[str, _Storage] = {}

        def storage_for(args):
            storage_type, key, _location, numel = args[:4]
            key = _ascii(key)
            if key not in cache:
                entry = f"{prefix}data/{key}"
                if entry not in names:
                    raise MergeflowError(f"{source}: storage {key} missing from the archive")
                dtype = _dtype_of(storage_type, source)
                # the entry may hold no more than the storage the pickle describes (torch writes it exactly)
                nbytes = int(numel) * torch.empty(0, dtype=dtype).element_size() if isinstance(numel, int) else -1
                if archive.getinfo(entry).file_size > max(nbytes, 0):
                    raise MergeflowError(f"{source}: archive entry {entry} declares {archive.getinfo(entry).file_size}"
                                         f" bytes for a storage of {numel} {dtype} elements")
                cache[key] = _Storage(dtype, _read_entry(archive, entry, budget, source))
            return cache[key]

        return SafeUnpickler(io.BytesIO(_read_entry(archive, pkl[0], budget, source)), source, storage_for).load()


def remaining(stream) -> int:
    """Bytes left in a seekable stream."""
    here = stream.tell()
    end = stream.seek(0, io.SEEK_END)
    stream.seek(here)
    return end - here


def _load_legacy(stream, source: str) -> Any:
    """torch's pre-1.6 format: magic, protocol, system info, the object, its storage keys, then raw storages."""
    plain = lambda: SafeUnpickler(stream, source).load()  # noqa: E731 - the header pickles hold only numbers
    if plain() != _LEGACY_MAGIC:
        raise MergeflowError(f"{source}: not a torch checkpoint (no magic number)")
    plain()  # protocol version
    plain()  # system info (endianness, type sizes)
    storages: dict[str, _Storage] = {}
    views: list[tuple[_Storage, _Storage, int, int]] = []

    def storage_for(args):
        storage_type, root_key, _location, _numel, view = args
        root_key = _ascii(root_key)
        dtype = _dtype_of(storage_type, source)
        root = storages.setdefault(root_key, _Storage(dtype))
        if view is None:
            return root
        _view_key, offset, size = view
        part = _Storage(dtype)
        views.append((part, root, int(offset), int(size)))
        return part

    obj = SafeUnpickler(stream, source, storage_for).load()
    keys = plain()
    for key in keys:
        key = _ascii(key)
        if key not in storages:
            raise MergeflowError(f"{source}: storage {key} listed but never used")
        head = stream.read(8)
        if len(head) != 8:
            raise MergeflowError(f"{source}: truncated storage {key}")
        (count,) = struct.unpack("<q", head)
        item = torch.empty(0, dtype=storages[key].dtype).element_size()
        if not 0 <= count * item <= remaining(stream):
            raise MergeflowError(f"{source}: truncated storage {key}")
        raw = bytearray(count * item)
        if stream.readinto(raw) != len(raw):
            raise MergeflowError(f"{source}: truncated storage {key}")
        storages[key].data = raw
    for part, root, offset, size in views:
        item = torch.empty(0, dtype=root.dtype).element_size()
        part.data = memoryview(root.data)[offset * item:(offset + size) * item] if root.data is not None else None
    return _materialise(obj, {})


def _materialise(obj: Any, done: dict[int, Any]) -> Any:
    """``obj`` with every :class:`_LazyTensor` built. Every object is visited once (``done`` maps an
    object's id to its result), so structures shared many times cost their size, not their paths."""
    if id(obj) in done:
        return done[id(obj)]
    if isinstance(obj, _LazyTensor):
        done[id(obj)] = obj.build()
    elif isinstance(obj, tuple):
        done[id(obj)] = obj  # a tuple that contains itself (through a list) resolves to itself
        done[id(obj)] = type(obj)(_materialise(v, done) for v in obj) if type(obj) is tuple else obj
    elif isinstance(obj, dict):
        done[id(obj)] = obj
        for k in list(obj):
            obj[k] = _materialise(obj[k], done)
    elif isinstance(obj, list):
        done[id(obj)] = obj
        obj[:] = [_materialise(v, done) for v in obj]
    elif isinstance(obj, Record):
        done[id(obj)] = obj
        obj.args = _materialise(obj.args, done)
        obj.kwargs = _materialise(dict(obj.kwargs), done)
        obj.state = _materialise(obj.state, done)
    else:
        return obj
    return done[id(obj)]


def _storage_from_blob(blob: bytes, source: str) -> _Storage:
    """A storage pickled inside a raw pickle: a nested torch file (legacy or zip) holding only the storage."""
    if not isinstance(blob, bytes | bytearray):
        raise MergeflowError(f"{source}: a nested storage blob that is not bytes")
    inner = load_object_bytes(bytes(blob), f"{source} (nested storage)")
    if not isinstance(inner, _Storage):
        raise MergeflowError(f"{source}: a nested blob holds {type(inner).__name__}, not a storage")
    return inner


class _Capped(io.RawIOBase):
    """A file read as a stream whose reads never ask for more than the file has left: a buffered file
    allocates what ``read(n)`` asks for before it knows there is less, and a pickle's length fields are
    the file's to choose."""

    def __init__(self, raw, size: int):
        super().__init__()
        self.raw, self.size = raw, size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.raw.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def _left(self, n: int | None) -> int:
        left = max(0, self.size - self.raw.tell())
        return left if n is None or n < 0 else min(n, left)

    def read(self, n: int | None = -1) -> bytes:
        return self.raw.read(self._left(n))

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        return self.raw.readinto(view[:self._left(len(view))])

    def readline(self, limit: int | None = -1) -> bytes:
        return self.raw.readline(self._left(limit))


def load_object_bytes(data: bytes, source: str) -> Any:
    """The object in a torch checkpoint's bytes (zip, legacy or raw pickle), with inert records for modules."""
    return _load_stream(io.BytesIO(data), len(data), source)


def _load_stream(stream, size: int, source: str) -> Any:
    """The object in a seekable binary stream holding a checkpoint of ``size`` bytes (read, never whole)."""
    try:
        if stream.read(4) == b"PK\x03\x04":
            stream.seek(0)
            return _load_zip(stream, size, source)
        stream.seek(0)
        try:
            first = SafeUnpickler(stream, source).load()
        except MergeflowError:
            raise  # a refused global: its own message
        except Exception as exc:  # noqa: BLE001 - any malformed pickle is a user error
            raise MergeflowError(f"{source}: not a torch checkpoint or pickle ({type(exc).__name__}: {exc})") from None
        if first == _LEGACY_MAGIC:
            stream.seek(0)
            return _load_legacy(stream, source)
        return first
    except MergeflowError as exc:
        if str(exc).startswith(source):
            raise
        raise MergeflowError(f"{source}: {str(exc).removeprefix('checkpoint: ')}") from exc
    except Exception as exc:  # noqa: BLE001 - the one boundary: whatever a file makes go wrong is bad input
        raise MergeflowError(f"{source}: unreadable checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from exc


def load_object(path: str | Path) -> Any:
    """:func:`load_object_bytes` of a file."""
    path = Path(path)
    if not path.is_file():
        raise MergeflowError(f"{path}: not found")
    size = path.stat().st_size
    with path.open("rb") as stream:
        return _load_stream(_Capped(stream, size), size, str(path))
