"""File I/O: safetensors weights and statistics, JSON metrics and manifests, content hashes.

Every writer goes through :func:`atomic_path`: the data is written to a temporary file beside the target
and renamed into place, so an interrupted stage never leaves a file that looks finished. Nothing here
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
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished temporary folder onto ``target`` (whatever was there is removed first)."""
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
        save_file(payload, str(tmp), metadata=header)


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


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; missing or malformed is a :class:`MergeflowError`."""
    path = Path(path)
    if not path.is_file():
        raise MergeflowError(f"{path}: file not found (run the stage that produces it first)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MergeflowError(f"{path}: malformed JSON ({exc})") from None


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
