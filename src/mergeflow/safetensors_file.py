"""Safetensors files read and written a tensor (or a block of a tensor's rows) at a time.

:class:`Reader` reads named tensors with ``os.pread`` instead of a memory map (every touched page of a mapped
file counts as the process's memory until the map closes, so a model read a layer at a time through
``safe_open`` would end with the whole file in the peak RSS). :func:`header` computes the header
``safetensors`` itself would write, so that a file can be written tensor by tensor at known offsets
(:func:`write_at`) and still be byte-identical to :func:`mergeflow.io.save_tensors` of the same tensors.
Used by the streamed merge, the layer-by-layer statistics and the Hugging Face folder loader.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

import torch

from mergeflow.errors import MergeflowError
from mergeflow.io import _METADATA_KEY, atomic_path
from mergeflow.models.community import SHARD_INDEX

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


class Reader:
    """Named tensors (or row ranges of them) from a safetensors file, read with ``os.pread`` on demand.

    No memory map (see the module's docstring; :mod:`mergeflow.data.split_file` reads splits so for the same
    reason). The header is checked before any read: known dtypes, offsets that match the shapes and lie inside
    the file."""

    _MAX_HEADER = 100 * 2**20

    def __init__(self, path: Path, what: str):
        self.path, self.what = Path(path), what
        if not self.path.is_file():
            raise MergeflowError(f"{what} {self.path}: file not found")
        size = self.path.stat().st_size
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            n = struct.unpack("<Q", os.pread(self._fd, 8, 0).ljust(8, b"\0"))[0]
            if not 2 <= n <= min(self._MAX_HEADER, size - 8):
                raise ValueError(f"header length {n} for a file of {size} bytes")
            header = json.loads(os.pread(self._fd, n, 8))
            self._start = 8 + n
            self.info, self._offsets = {}, {}
            for key, entry in header.items():
                if key == "__metadata__":
                    continue
                dtype, shape, (lo, hi) = entry["dtype"], [int(d) for d in entry["shape"]], entry["data_offsets"]
                if dtype not in DTYPES or any(d < 0 for d in shape):
                    raise ValueError(f"{key}: dtype {dtype} shape {shape}")
                if hi - lo != nbytes((dtype, shape)) or lo < 0 or self._start + hi > size:
                    raise ValueError(f"{key}: data offsets [{lo}, {hi}] do not fit its shape or the file")
                self.info[key], self._offsets[key] = (dtype, shape), lo
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            self.close()
            raise MergeflowError(f"{what} {self.path}: unreadable safetensors file ({exc})") from None
        self.keys = set(self.info)

    def close(self) -> None:
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)

    def __del__(self):
        if os is not None:  # at interpreter exit the module may be gone already
            self.close()

    def get(self, key: str, rows: slice | None = None) -> torch.Tensor:
        dtype, shape = self.info[key]
        first, count = (0, shape[0] if shape else 1) if rows is None else (rows.start, rows.stop - rows.start)
        row_bytes = nbytes((dtype, shape[1:])) if shape else nbytes((dtype, []))
        out = torch.empty([count, *shape[1:]] if shape else [], dtype=DTYPES[dtype])
        if not out.numel():
            return out
        buffer = memoryview(out.reshape(-1).view(torch.uint8).numpy())  # read straight into the tensor
        offset, done = self._start + self._offsets[key] + first * row_bytes, 0
        while done < len(buffer):  # one read returns at most ~2 GiB
            got = os.preadv(self._fd, [buffer[done:]], offset + done)
            if got <= 0:
                raise MergeflowError(f"{self.what} {self.path}: {key} is cut short")
            done += got
        return out


class ShardedReader:
    """A checkpoint in several safetensors shards, read as one (``model.safetensors.index.json``'s
    ``weight_map`` says which shard holds each tensor): the interface of :class:`Reader`."""

    def __init__(self, index: Path, what: str):
        from mergeflow.models.community import read_shard_index

        self.path, self.what = Path(index), what
        try:
            where = read_shard_index(self.path)
        except MergeflowError as exc:
            raise MergeflowError(f"{what} {exc}") from None
        self._shards = {file: Reader(file, what) for file in sorted(set(where.values()))}
        self._where, self.info = {}, {}
        for key, file in where.items():
            if key not in self._shards[file].info:
                self.close()
                raise MergeflowError(f"{what} {self.path}: {key} is mapped to {file.name}, which does not hold it")
            self._where[key], self.info[key] = self._shards[file], self._shards[file].info[key]
        self.keys = set(self.info)

    def get(self, key: str, rows: slice | None = None) -> torch.Tensor:
        return self._where[key].get(key, rows)

    def close(self) -> None:
        for reader in getattr(self, "_shards", {}).values():
            reader.close()


def open_weights(path: str | Path, what: str) -> Reader | ShardedReader:
    """A safetensors file, a shard index, or a Hugging Face folder holding either, as one reader."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", SHARD_INDEX):
            if (path / name).is_file():
                return open_weights(path / name, what)
        raise MergeflowError(f"{what} {path}: a folder without model.safetensors or {SHARD_INDEX}")
    if path.name.endswith(".index.json"):
        return ShardedReader(path, what)
    return Reader(path, what)


def nbytes(info: tuple[str, list[int]]) -> int:
    dtype, shape = info
    n = 1
    for s in shape:
        n *= s
    return n * torch.empty(0, dtype=DTYPES[dtype]).element_size()


def header_for(layout_order: list[str], info: dict[str, tuple[str, list[int]]], metadata: dict | None
            ) -> tuple[bytes, dict]:
    """The safetensors header for ``info`` (the order ``safetensors`` itself writes: found by saving one-element
    stand-ins, so it follows the installed version), with offsets from the real sizes."""
    from safetensors.torch import save

    stand_ins = {k: torch.zeros(1, dtype=DTYPES[info[k][0]]) for k in layout_order}
    probe = save(stand_ins)
    n = struct.unpack("<Q", probe[:8])[0]
    order = [k for k in json.loads(probe[8:8 + n]) if k != "__metadata__"]
    entries: dict[str, Any] = {}
    if metadata:
        entries["__metadata__"] = metadata
    layout, offset = {}, 0
    for key in order:
        dtype, shape = info[key]
        end = offset + nbytes(info[key])
        entries[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, end]}
        layout[key] = (dtype, shape, offset, end)
        offset = end
    text = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text, layout


def write_at(f: BinaryIO, offset: int, tensor: torch.Tensor) -> None:
    """``tensor``'s bytes (C order) at ``offset`` of the open file ``f``."""
    tensor = tensor.contiguous()
    f.seek(offset)
    if tensor.numel():
        f.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def concatenate(parts: list[Path], out: Path, metadata: dict[str, str] | None = None) -> None:
    """Write the tensors of several safetensors files into one, one tensor in memory at a time: the same bytes
    as :func:`mergeflow.io.save_tensors` of their union with ``metadata`` (a key in several parts must hold the
    same tensor: the first part's is written). Atomic, like every output."""
    readers = [Reader(Path(p), "part") for p in parts]
    try:
        source = {}
        for reader in readers:
            for key in reader.info:
                source.setdefault(key, reader)
        info = {k: r.info[k] for k, r in source.items()}
        header_meta = {_METADATA_KEY: json.dumps(dict(metadata), sort_keys=True)} if metadata else None
        header, layout = header_for(list(info), info, header_meta)
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            f.write(header)
            for key, (_, _, start, _) in layout.items():
                write_at(f, len(header) + start, source[key].get(key))
    finally:
        for reader in readers:
            reader.close()


