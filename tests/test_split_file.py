"""Prepared split files: streamed writes, reads by index, and standard safetensors on disk."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mergeflow.data.split_file import SplitWriter, open_split
from mergeflow.errors import MergeflowError
from mergeflow.io import load_metadata


def _write(path, n=7, size=4, seed=0, metadata=None):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    labels = rng.integers(0, 5, n)
    writer = SplitWriter(path, n, size, metadata)
    for img, lab in zip(images, labels, strict=True):
        writer.put(img, int(lab))
    writer.close()
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def test_a_streamed_split_is_a_standard_safetensors_file(tmp_path):
    images, labels = _write(tmp_path / "s.safetensors", metadata={"task": "t"})
    plain = load_file(str(tmp_path / "s.safetensors"))
    assert torch.equal(plain["images"], images) and torch.equal(plain["labels"], labels)
    assert load_metadata(tmp_path / "s.safetensors") == {"task": "t"}


def test_the_same_split_gives_the_same_bytes(tmp_path):
    _write(tmp_path / "a.safetensors")
    _write(tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_lazy_images_index_like_a_tensor(tmp_path):
    images, labels = _write(tmp_path / "s.safetensors")
    lazy, read_labels = open_split(tmp_path / "s.safetensors")
    assert torch.equal(read_labels, labels) and len(lazy) == 7 and lazy.shape == tuple(images.shape)
    assert torch.equal(lazy[3], images[3]) and torch.equal(lazy[-1], images[-1])
    assert torch.equal(lazy[2:5], images[2:5]) and torch.equal(lazy[5:100], images[5:])
    assert torch.equal(lazy[::2], images[::2]) and lazy[4:4].shape == (0, 3, 4, 4)
    idx = torch.tensor([6, 0, 0, 3])
    assert torch.equal(lazy[idx], images[idx]) and torch.equal(lazy[[1, 2]], images[[1, 2]])
    with pytest.raises(IndexError):
        lazy[7]
    with pytest.raises(IndexError):
        lazy[torch.tensor([0, 9])]


def test_bad_splits_are_named(tmp_path):
    writer = SplitWriter(tmp_path / "short.safetensors", 3, 4)
    writer.put(np.zeros((3, 4, 4), np.uint8), 0)
    with pytest.raises(MergeflowError, match="1 images written, 3 announced"):
        writer.close()
    assert not (tmp_path / "short.safetensors").exists()  # nothing half-written is left behind
    writer = SplitWriter(tmp_path / "shape.safetensors", 1, 4)
    with pytest.raises(MergeflowError, match=r"image 0 is uint8 \(3, 5, 5\), expected uint8 \(3, 4, 4\)"):
        writer.put(np.zeros((3, 5, 5), np.uint8), 0)
    writer.abort()
    assert not (tmp_path / "shape.safetensors").exists()
    _write(tmp_path / "s.safetensors")
    data = (tmp_path / "s.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-10])
    with pytest.raises(MergeflowError, match="truncated"):
        open_split(tmp_path / "cut.safetensors")
    from mergeflow.io import save_tensors

    save_tensors(tmp_path / "other.safetensors", {"weight": torch.zeros(2, 2)})
    with pytest.raises(MergeflowError, match="not a prepared split"):
        open_split(tmp_path / "other.safetensors")
    with pytest.raises(MergeflowError, match="file not found"):
        open_split(tmp_path / "missing.safetensors")
