"""A prepared split on disk, written image by image and read by index: never a whole split in memory.

The file is standard safetensors (``safetensors.safe_open`` and ``load_file`` read it): ``labels`` (N,) I64,
then ``images`` (N, 3, S, S) U8, and our one-key metadata (:func:`mergeflow.io.save_tensors`). SVHN's
73 257 training images at 224 px are 11 GB, so :class:`SplitWriter` writes the header first and then each
image's bytes as they are decoded, and :class:`LazyImages` reads the rows a batch asks for with
``os.pread`` (no memory map: pages a process has touched would count as its memory). The bytes depend only
on the images, labels and metadata, so both engines write identical files.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

from mergeflow.errors import MergeflowError
from mergeflow.io import _METADATA_KEY, atomic_path


def _header(n: int, size: int, metadata: dict | None) -> bytes:
    labels_bytes, image_bytes = 8 * n, 3 * size * size * n
    header = {"labels": {"dtype": "I64", "shape": [n], "data_offsets": [0, labels_bytes]},
              "images": {"dtype": "U8", "shape": [n, 3, size, size],
                         "data_offsets": [labels_bytes, labels_bytes + image_bytes]}}
    if metadata:
        header["__metadata__"] = {_METADATA_KEY: json.dumps(dict(metadata), sort_keys=True)}
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(raw)) + raw


class SplitWriter:
    """Write ``n`` images of ``size`` px one at a time (``put``), atomically: the file appears on ``close``."""

    def __init__(self, path: str | os.PathLike, n: int, size: int, metadata: dict | None = None):
        self.path, self.n, self.size = Path(path), n, size
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._file = open(self._tmp, "wb")  # noqa: SIM115 (closed in close())
        self._header = _header(n, size, metadata)
        self._file.write(self._header + bytes(8 * n))  # labels are written last, over these zeros
        self._labels = np.zeros(n, np.int64)
        self._next = 0

    def put(self, image: np.ndarray, label: int) -> None:
        if self._next >= self.n:
            raise MergeflowError(f"{self.path}: more than the {self.n} images announced")
        if image.shape != (3, self.size, self.size) or image.dtype != np.uint8:
            raise MergeflowError(f"{self.path}: image {self._next} is {image.dtype} {image.shape}, "
                                 f"expected uint8 (3, {self.size}, {self.size})")
        self._file.write(np.ascontiguousarray(image).tobytes())
        self._labels[self._next] = label
        self._next += 1

    @property
    def labels(self) -> np.ndarray:
        """The labels put so far (all of them once every image is in)."""
        return self._labels[:self._next]

    def close(self) -> np.ndarray:
        """Finish the file; the labels written."""
        try:
            if self._next != self.n:
                raise MergeflowError(f"{self.path}: {self._next} images written, {self.n} announced")
            self._file.seek(len(self._header))
            self._file.write(self._labels.astype("<i8").tobytes())
            self._file.close()
        except BaseException as exc:
            self._file.close()
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._atomic.__exit__(None, None, None)
        return self._labels

    def abort(self) -> None:
        self._file.close()
        try:
            self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)
        except RuntimeError:
            pass


def _layout(path: Path) -> tuple[int, dict]:
    """(offset of the data, the header's entries) of a safetensors file, or an error naming the file."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100_000_000:
                raise ValueError("header length out of range")
            header = json.loads(f.read(length))
    except FileNotFoundError:
        raise MergeflowError(f"{path}: file not found (run the stage that produces it first)") from None
    except (OSError, ValueError, struct.error) as exc:
        raise MergeflowError(f"{path}: unreadable or truncated safetensors file ({exc})") from None
    return 8 + length, header


class LazyImages:
    """The ``images`` of a split file, indexed like a tensor (int, slice, index list or tensor) and read on demand."""

    def __init__(self, path: str | os.PathLike, start: int, shape: tuple[int, ...]):
        self.path, self._start, self.shape = Path(path), start, tuple(shape)
        self.dtype = torch.uint8
        self._row = int(np.prod(self.shape[1:]))
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def _read(self, first: int, count: int) -> bytes:
        want = count * self._row
        data = os.pread(self._fd, want, self._start + first * self._row)
        if len(data) != want:
            raise MergeflowError(f"{self.path}: truncated (rows {first}..{first + count - 1} missing)")
        return data

    def __getitem__(self, key) -> torch.Tensor:
        n = self.shape[0]
        if isinstance(key, int | np.integer):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {key} out of range for {n} images")
            return torch.frombuffer(bytearray(self._read(i, 1)), dtype=torch.uint8).view(self.shape[1:])
        if isinstance(key, slice):
            first, stop, step = key.indices(n)
            if step == 1:
                count = max(0, stop - first)
                buf = bytearray(self._read(first, count)) if count else bytearray()
                return torch.frombuffer(buf, dtype=torch.uint8).view(count, *self.shape[1:]) if count else \
                    torch.empty((0, *self.shape[1:]), dtype=torch.uint8)
            key = range(first, stop, step)
        index = torch.as_tensor(key, dtype=torch.int64).reshape(-1)
        if len(index) and (int(index.min()) < -n or int(index.max()) >= n):
            raise IndexError(f"index out of range for {n} images")
        out = torch.empty((len(index), *self.shape[1:]), dtype=torch.uint8)
        flat = out.view(len(index), -1).numpy()
        for j, i in enumerate(index.tolist()):
            flat[j] = np.frombuffer(self._read(i % n, 1), dtype=np.uint8)
        return out


def open_split(path: str | os.PathLike) -> tuple[LazyImages, torch.Tensor]:
    """``(images, labels)`` of a split file: images read on demand, labels (8 bytes each) in memory."""
    path = Path(path)
    start, header = _layout(path)
    images, labels = header.get("images"), header.get("labels")
    if not images or not labels or images.get("dtype") != "U8" or labels.get("dtype") != "I64" \
            or len(images.get("shape", [])) != 4 or images["shape"][1] != 3 \
            or labels.get("shape") != images["shape"][:1]:
        raise MergeflowError(f"{path}: not a prepared split (expected uint8 'images' N×3×S×S and int64 'labels' N)")
    n = images["shape"][0]
    lo, hi = labels["data_offsets"]
    with open(path, "rb") as f:
        f.seek(start + lo)
        raw = f.read(hi - lo)
    if len(raw) != 8 * n:
        raise MergeflowError(f"{path}: unreadable or truncated safetensors file (labels cut short)")
    lazy = LazyImages(path, start + images["data_offsets"][0], tuple(images["shape"]))
    if os.path.getsize(path) < start + images["data_offsets"][1]:
        raise MergeflowError(f"{path}: unreadable or truncated safetensors file (images cut short)")
    return lazy, torch.from_numpy(np.frombuffer(raw, dtype="<i8").astype(np.int64))
