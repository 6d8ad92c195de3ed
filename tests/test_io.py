import subprocess
import sys

import pytest
import torch

from mergeflow.errors import MergeflowError
from mergeflow.io import hash_tensor, load_metadata, load_tensors, read_json, save_tensors, write_json


def test_roundtrip_and_no_temp_left(tmp_path):
    save_tensors(tmp_path / "a.safetensors", {"x": torch.arange(6).view(2, 3)}, {"k": "v"})
    assert torch.equal(load_tensors(tmp_path / "a.safetensors")["x"], torch.arange(6).view(2, 3))
    write_json(tmp_path / "m.json", {"a": float("nan"), "b": [1, 2]})
    assert read_json(tmp_path / "m.json") == {"a": None, "b": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "m.json"]


def test_same_tensors_and_metadata_give_the_same_bytes_in_every_process(tmp_path):
    # safetensors orders metadata keys by a per-process hash: two processes wrote one model as two files
    meta = {f"key{i}": f"value{i}" for i in range(6)}
    script = ("import sys, torch; from mergeflow.io import save_tensors; "
              f"save_tensors(sys.argv[1], {{'w': torch.arange(4.0)}}, {meta!r})")
    for name in ("a", "b", "c"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], check=True)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes() == (tmp_path / "c").read_bytes()
    assert load_metadata(tmp_path / "a") == meta


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "t.safetensors"
    save_tensors(path, {"x": torch.ones(100)})
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(MergeflowError, match="unreadable or truncated"):
        load_tensors(path)
    with pytest.raises(MergeflowError, match="file not found"):
        load_tensors(tmp_path / "missing.safetensors")


def test_hash_tensor_depends_on_content():
    assert hash_tensor(torch.tensor([1, 2])) != hash_tensor(torch.tensor([2, 1]))
