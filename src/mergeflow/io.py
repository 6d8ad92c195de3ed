"""File I/O: safetensors weights and statistics, JSON metrics and manifests, content hashes.

Every writer goes through :func:`atomic_path`: the data is written to a temporary file beside the target
and renamed into place, so an interrupted stage never leaves a file that looks finished. Temporary files and
folders are created private (``mkstemp``/``mkdtemp``: mode 0600/0700) and given the umask's mode before
they are renamed into place, so that results are as readable as any file the user creates. Nothing here
pickles.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

from mergeflow.errors import MergeflowError

if TYPE_CHECKING:  # torch is imported where tensors are read or written: the report needs only JSON
    import torch

_CHUNK = 1 << 20
_METADATA_KEY = "mergeflow"
# Our JSON files (metrics, manifests, exemplar lists, merge records) are kilobytes to a few megabytes; a
# larger one is not ours (a symlink to a huge file, say) and is refused before it is read into memory.
MAX_JSON_BYTES = 256 << 20


def umask() -> int:
    """The process's umask (read by setting it, the only way POSIX offers, and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_mode(path: str | os.PathLike) -> None:
    """Give a file (0666) or folder (0777) made by ``mkstemp``/``mkdtemp`` the mode the umask allows."""
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        publish_mode(tmp_path)
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished temporary folder onto ``target`` (whatever was there is removed first)."""
    publish_mode(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def save_tensors(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Save a flat name → tensor mapping as safetensors, atomically, with the same bytes for the same input.

    safetensors writes its metadata from a hash map, in an order that changes from process to process, so
    two keys made the same model two different files (and two content hashes); the metadata is therefore
    stored as one key, ``mergeflow``, holding sorted JSON (:func:`load_metadata` reads it back).
    """
    from safetensors.torch import save_file

    payload = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    header = {_METADATA_KEY: json.dumps(dict(metadata), sort_keys=True)} if metadata else None
    with atomic_path(path) as tmp:
        try:
            save_file(payload, str(tmp), metadata=header)
        except SafetensorError as exc:  # the writer's I/O errors (a full disk, a file-size limit) come as this
            raise MergeflowError(f"{path}: could not write ({str(exc).splitlines()[0][:200]})") from None


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing, truncated or corrupt file is a :class:`MergeflowError`."""
    path = Path(path)
    if not path.is_file():
        raise MergeflowError(f"{path}: file not found (run the stage that produces it first)")
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise MergeflowError(f"{path}: unreadable or truncated safetensors file ({exc})") from None


def load_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors header: ours as :func:`save_tensors` wrote it, others' as stored."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            header = dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise MergeflowError(f"{path}: unreadable or truncated safetensors file ({exc})") from None
    return json.loads(header[_METADATA_KEY]) if set(header) == {_METADATA_KEY} else header


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist") and hasattr(value, "dim"):  # a torch.Tensor, without importing torch
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as null so every reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON (sorted keys, 2-space indent), atomically."""
    text = json.dumps(_finite(json.loads(json.dumps(data, default=_json_default))), indent=2, sort_keys=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def read_json(path: str | os.PathLike, shape: Mapping[str, Any] | None = None) -> Any:
    """Read a JSON file; missing, oversized, malformed or not of ``shape`` is a :class:`MergeflowError`.

    ``shape`` maps the keys a reader needs to their type (a tuple of types, or a nested mapping for an
    object): valid JSON of another shape is refused here, naming the file and the key, rather than as a
    ``KeyError`` deep inside the reader.
    """
    path = Path(path)
    if not path.is_file():
        raise MergeflowError(f"{path}: file not found (run the stage that produces it first)")
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise MergeflowError(f"{path}: {size} bytes, more than any JSON file mergeflow writes "
                             f"({MAX_JSON_BYTES >> 20} MiB); not read")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MergeflowError(f"{path}: malformed JSON ({exc})") from None
    except RecursionError:
        raise MergeflowError(f"{path}: malformed JSON (nested too deeply)") from None
    if shape is not None:
        check_shape(data, shape, str(path))
    return data


def check_shape(data: Any, shape: Mapping[str, Any], where: str, prefix: str = "") -> None:
    """Raise :class:`MergeflowError` naming ``where`` and the key when ``data`` lacks a key of ``shape``
    or holds a value of another type (see :func:`read_json`)."""
    if not isinstance(data, dict):
        raise MergeflowError(f"{where}: {prefix.rstrip('.') or 'the top level'} must be a JSON object, "
                             f"not {type(data).__name__}")
    for key, kind in shape.items():
        if key not in data:
            raise MergeflowError(f"{where}: key {prefix}{key} missing (not a file this stage writes, or corrupt)")
        if isinstance(kind, Mapping):
            check_shape(data[key], kind, where, f"{prefix}{key}.")
            continue
        kinds = kind if isinstance(kind, tuple) else (kind,)
        value = data[key]
        numeric = (int in kinds or float in kinds) and isinstance(value, int | float)
        if isinstance(value, bool) and bool not in kinds or not (isinstance(value, kinds) or numeric):
            names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise MergeflowError(f"{where}: key {prefix}{key} = {str(value)[:60]!r} must be {names}")


def hash_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


_HASHES: dict[tuple[str, int, int], str] = {}


def hash_file_cached(path: str | os.PathLike) -> str:
    """:func:`hash_file`, remembered per process for a file of unchanged size and modification time (a
    merge checks the same expert against every grid value's statistics)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = hash_file(path)
    return _HASHES[key]


def check_recorded(path: str | os.PathLike, sha256: str | None, record: str | os.PathLike, remedy: str) -> None:
    """Refuse ``path`` when its SHA-256 is not the one ``record`` holds for it (recorded when it was written):
    a stage run directly, outside an engine that would have noticed the change, reads only what it should."""
    if sha256 is None:
        return
    if not Path(path).is_file():
        raise MergeflowError(f"{path}: file not found (run the stage that produces it first)")
    if hash_file_cached(path) != sha256:
        raise MergeflowError(f"{path}: changed since it was written (its SHA-256 is not the one {record} recorded); "
                             f"{remedy}")


def hash_path(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of a folder's relative file names and contents in sorted order."""
    path = Path(path)
    if path.is_file():
        return hash_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(hash_file(file).encode())
    return digest.hexdigest()


def hash_tensor(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and raw bytes (e.g. of an index list)."""
    import torch

    tensor = tensor.detach().contiguous().cpu()
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
