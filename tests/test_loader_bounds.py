"""The checkpoint loader against files that try to crash, exhaust or stall it (issue 32), each attack class
built here by hand: every case must end quickly in one MergeflowError naming the file, or load correctly."""

import io
import pickle
import struct
import time
import tracemalloc
import zipfile

import pytest
import torch

from mergeflow.errors import MergeflowError
from mergeflow.models import community, safe_pickle
from mergeflow.models.safe_pickle import load_object

P = pickle  # opcodes: pickle.GLOBAL, pickle.MARK, ...


def _proto(body: bytes) -> bytes:
    return P.PROTO + b"\x02" + body + P.STOP


def _write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _refused(path, match: str, seconds: float = 5.0, peak_mb: float = 64.0):
    """``load_object(path)`` raises a one-line MergeflowError naming the file, in bounded time and memory."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(MergeflowError, match=match) as info:
            load_object(path)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - start < seconds
    assert peak < peak_mb * 2 ** 20, peak
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    return info.value


def _torch_zip(tmp_path, name, tensors_pickle: bytes, entries: dict[str, bytes], compress=zipfile.ZIP_STORED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("archive/data.pkl", tensors_pickle)
        archive.writestr("archive/byteorder", b"little")
        for entry, blob in entries.items():
            archive.writestr(f"archive/{entry}", blob, compress_type=compress)
    return _write(tmp_path, name, buf.getvalue())


def _tensor_pickle(size: tuple, stride: tuple, offset: int = 0, numel: int = 1) -> bytes:
    """The pickle torch writes for one float tensor on storage ``0``."""
    def ints(xs):
        return P.MARK + b"".join(P.BININT + struct.pack("<i", x) for x in xs) + P.TUPLE
    storage = (P.MARK + P.BINUNICODE + struct.pack("<I", 7) + b"storage" + P.GLOBAL + b"torch\nFloatStorage\n"
               + P.BINUNICODE + struct.pack("<I", 1) + b"0" + P.BINUNICODE + struct.pack("<I", 3) + b"cpu"
               + P.BININT + struct.pack("<i", numel) + P.TUPLE + P.BINPERSID)
    return _proto(P.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n" + P.MARK + storage + P.BININT
                  + struct.pack("<i", offset) + ints(size) + ints(stride) + P.NEWFALSE + P.EMPTY_DICT + P.TUPLE
                  + P.REDUCE)


# --- memory amplification -----------------------------------------------------------------------------------
def test_zero_strides_cannot_materialise_more_than_the_storage(tmp_path):
    path = _torch_zip(tmp_path, "zero.pt", _tensor_pickle((50000, 50000), (0, 0)), {"data/0": b"\0" * 4})
    _refused(path, "would materialise 2500000000 elements from a storage of 1")


def test_a_view_past_its_storage_or_with_negative_strides_is_refused(tmp_path):
    path = _torch_zip(tmp_path, "past.pt", _tensor_pickle((4,), (1,), offset=2, numel=4), {"data/0": b"\0" * 16})
    _refused(path, r"reaches element 6 of a storage of 4")
    honest = _torch_zip(tmp_path, "honest.pt", _tensor_pickle((2, 2), (2, 1), numel=4),
                        {"data/0": struct.pack("<4f", 1, 2, 3, 4)})
    assert torch.equal(load_object(honest), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))


def test_a_huge_allowed_constructor_call_is_refused(tmp_path):
    data = _proto(P.GLOBAL + b"builtins\nbytearray\n" + P.BININT + struct.pack("<i", 2 ** 31 - 1) + P.TUPLE1
                  + P.REDUCE)
    _refused(_write(tmp_path, "big.pkl", data), r"refused bytearray\(2147483647\)")


def test_zip_entries_declaring_more_than_the_file_can_hold_are_never_inflated(tmp_path):
    zeros = b"\0" * (64 << 20)  # deflates to ~64 KB
    path = _torch_zip(tmp_path, "bomb.pt", _tensor_pickle((1,), (1,)), {"data/0": zeros}, zipfile.ZIP_DEFLATED)
    _refused(path, r"the archive's entries declare \d+ bytes, over 8x the file's")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("archive/data.pkl", _tensor_pickle((1,), (1,)))
        archive.writestr("archive/byteorder", b"little" * 1000, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("archive/data/0", b"\0" * 4)
    _refused(_write(tmp_path, "order.pt", buf.getvalue()), r"archive entry archive/byteorder declares 6000 bytes, "
                                                            r"over the 16 allowed")


# --- exceptions other than the loader's own -------------------------------------------------------------------
def test_an_unsupported_compression_method_is_one_line(tmp_path):
    path = _torch_zip(tmp_path, "method.pt", _tensor_pickle((1,), (1,)), {"data/0": b"\0" * 4})
    data = bytearray(path.read_bytes())
    for signature, at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # the method field of every header
        start = 0
        while (start := data.find(signature, start)) >= 0:
            data[start + at:start + at + 2] = struct.pack("<H", 99)
            start += 4
    _refused(_write(tmp_path, "method99.pt", bytes(data)), r"unreadable checkpoint \(NotImplementedError")


def test_a_build_on_an_allowed_object_is_one_line(tmp_path):
    # inside a zip checkpoint, where only the loader's own error types used to be caught
    data = _proto(P.GLOBAL + b"torch\nfloat32\n" + P.EMPTY_DICT + P.BINUNICODE + struct.pack("<I", 1) + b"x"
                  + P.NONE + P.SETITEM + P.BUILD)
    path = _torch_zip(tmp_path, "build.pt", data, {})
    _refused(path, r"unreadable checkpoint \(AttributeError: 'torch.dtype' object has no attribute '__dict__'")


def test_a_module_record_that_contains_itself_is_one_line(tmp_path):
    # a task_vectors-style pickled module whose _modules holds the module itself: its state dict never ends
    body = (P.GLOBAL + b"src.modeling\nImageEncoder\n" + P.EMPTY_TUPLE + P.NEWOBJ + P.BINPUT + b"\x00"
            + P.EMPTY_DICT + P.BINUNICODE + struct.pack("<I", 8) + b"_modules" + P.EMPTY_DICT
            + P.BINUNICODE + struct.pack("<I", 4) + b"self" + P.BINGET + b"\x00" + P.SETITEM + P.SETITEM + P.BUILD)
    path = _write(tmp_path, "loop.pt", _proto(body))
    with pytest.raises(MergeflowError, match=r"module self contains itself") as info:
        community.read_model("task_vectors", path)
    assert "\n" not in str(info.value)


# --- exponential walks --------------------------------------------------------------------------------------
def test_shared_nested_tuples_in_a_legacy_file_are_walked_once(tmp_path):
    nested = ()
    for _ in range(80):  # 2^80 paths, 80 objects: pickle's memo keeps the file tiny
        nested = (nested, nested)
    data = b"".join(pickle.dumps(x, protocol=2) for x in (safe_pickle._LEGACY_MAGIC, 1001, {}, nested, []))
    start = time.perf_counter()
    out = load_object(_write(tmp_path, "tuples.pt", data))
    assert time.perf_counter() - start < 2 and out[0] is out[1]


def test_module_records_fanning_out_to_shared_children_are_bounded(tmp_path):
    # record i has two submodules, both record i-1: 2^40 paths through 40 records
    body = P.GLOBAL + b"src.modeling\nLeaf\n" + P.EMPTY_TUPLE + P.NEWOBJ + P.BINPUT + b"\x00"
    for i in range(1, 41):
        body += (P.GLOBAL + b"src.modeling\nBlock\n" + P.EMPTY_TUPLE + P.NEWOBJ + P.EMPTY_DICT
                 + P.BINUNICODE + struct.pack("<I", 8) + b"_modules" + P.EMPTY_DICT
                 + P.BINUNICODE + struct.pack("<I", 1) + b"a" + P.BINGET + bytes([i - 1]) + P.SETITEM
                 + P.BINUNICODE + struct.pack("<I", 1) + b"b" + P.BINGET + bytes([i - 1]) + P.SETITEM
                 + P.SETITEM + P.BUILD + P.BINPUT + bytes([i]))
    path = _write(tmp_path, "fan.pt", _proto(body))
    start = time.perf_counter()
    with pytest.raises(MergeflowError, match=r"over 65536 tensors and modules in the tree") as info:
        community.read_model("task_vectors", path)
    assert time.perf_counter() - start < 5 and "\n" not in str(info.value)


# --- loader state -------------------------------------------------------------------------------------------
def test_a_file_cannot_change_the_loaders_functions(tmp_path):
    before = safe_pickle._rebuild_tensor.__defaults__
    slots = (P.MARK + P.NONE + P.EMPTY_DICT + P.BINUNICODE + struct.pack("<I", 12) + b"__defaults__"
             + P.MARK + P.BININT1 + b"\x07" + P.TUPLE + P.SETITEM + P.TUPLE)
    data = _proto(P.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n" + slots + P.BUILD)
    _refused(_write(tmp_path, "defaults.pkl", data), r"refused to change the loader's _rebuild_tensor")
    assert safe_pickle._rebuild_tensor.__defaults__ == before
    honest = _torch_zip(tmp_path, "after.pt", _tensor_pickle((1,), (1,)), {"data/0": struct.pack("<f", 2.5)})
    assert load_object(honest).tolist() == [2.5]


# --- safetensors and Hugging Face folders -------------------------------------------------------------------
def _safetensors(tmp_path, name: str, header: dict, data: bytes):
    import json

    blob = json.dumps(header).encode()
    return _write(tmp_path, name, struct.pack("<Q", len(blob)) + blob + data)


@pytest.mark.parametrize("header,data,name", [
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "truncated"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 800]}}, b"\0" * 8, "offsets past the end"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlapping"),
    ({"w": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 8]}}, b"\0" * 8, "absurd shape"),
])
def test_malformed_safetensors_are_one_line_before_any_large_allocation(tmp_path, header, data, name):
    from mergeflow.io import load_tensors

    path = _safetensors(tmp_path, name.replace(" ", "_") + ".safetensors", header, data)
    tracemalloc.start()
    with pytest.raises(MergeflowError, match="unreadable or truncated safetensors file") as info:
        load_tensors(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(path) in str(info.value) and "\n" not in str(info.value) and peak < 16 * 2 ** 20


def test_a_config_with_absurd_sizes_is_refused_before_building(tmp_path):
    from mergeflow.families import get_family
    from mergeflow.io import save_tensors, write_json

    hf = get_family("hf-encoder")
    cfg = {"model_type": "bert", "vocab_size": 30, "hidden_size": 8, "num_hidden_layers": 1,
           "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 12}
    save_tensors(tmp_path / "model.safetensors", hf.build(cfg).state_dict())
    write_json(tmp_path / "config.json", {**cfg, "intermediate_size": 10 ** 9})
    with pytest.raises(MergeflowError, match=r"config.json: intermediate_size is 1000000000 but the weights have 16"):
        hf.load(tmp_path)
    write_json(tmp_path / "config.json", cfg)
    assert hf.load(tmp_path).config.hidden_size == 8
    big = tmp_path / "clip"
    big.mkdir()
    (big / "config.json").write_text("{" + " " * (2 << 20) + "}")
    with pytest.raises(MergeflowError, match=r"config.json: over 1048576 bytes"):
        community.read_model("hf", big)


def test_a_storage_entry_larger_than_its_storage_is_refused(tmp_path):
    path = _torch_zip(tmp_path, "wide.pt", _tensor_pickle((1,), (1,), numel=1), {"data/0": b"\0" * 4096})
    _refused(path, r"archive entry archive/data/0 declares 4096 bytes for a storage of 1 torch.float32 elements")
