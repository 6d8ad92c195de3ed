"""A bounded fuzz of the checkpoint loader (issue 32): honest files of every container mutated (bit flips,
truncation, duplicated or inserted opcodes, lying zip entry sizes) and generated pickles. Every case must end
within seconds, with Python-side peak memory bounded by the file's size, in either a loaded object or the
one-line MergeflowError naming the file; never another exception. ``MERGEFLOW_FUZZ_CASES`` runs more."""

import os
import pickle
import random
import struct
import time
import tracemalloc

import pytest
import torch

import community_fakes as fakes
from mergeflow.errors import MergeflowError
from mergeflow.models.safe_pickle import load_object

CASES = int(os.environ.get("MERGEFLOW_FUZZ_CASES", "400"))
OPCODES = [bytes([c]) for c in b"()]}.0abcdeghijklmnoprstuxN\x80\x81\x82\x85\x86\x87\x88\x89\x8a\x94\x95"]


def _honest(tmp_path):
    """A small pickled module (task_vectors' shape) in the zip, legacy and raw containers, and a state dict."""
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    return [fakes.save(module, tmp_path / f"module.{c}", c).read_bytes() for c in ("zip", "legacy", "raw")] + [
        fakes.save(module.state_dict(), tmp_path / "state.zip", "zip").read_bytes()]


def _mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0:  # bit flips
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncation
        del data[rng.randrange(1, len(data)):]
    elif kind == 2:  # an opcode inserted
        data[rng.randrange(len(data)):0] = rng.choice(OPCODES)
    elif kind == 3:  # a span duplicated (pickle opcodes repeated)
        i = rng.randrange(len(data))
        data[i:i] = data[i:i + rng.randint(1, 64)]
    elif kind == 4:  # a zip entry's declared sizes lie
        at = data.find(b"PK\x01\x02")
        if at >= 0:
            data[at + 24:at + 28] = struct.pack("<I", rng.choice([0, 1, 2 ** 31, 2 ** 32 - 1, rng.randrange(2 ** 20)]))
    else:  # a random integer written over four bytes
        i = rng.randrange(max(1, len(data) - 4))
        data[i:i + 4] = struct.pack("<i", rng.choice([-1, 0, 2 ** 31 - 1, rng.randrange(-2 ** 31, 2 ** 31)]))
    return bytes(data)


def _generated(rng: random.Random) -> bytes:
    """A pickle of random opcodes and arguments (mostly garbage; sometimes a valid tiny object)."""
    body = b"".join(rng.choice(OPCODES) + bytes(rng.randrange(256) for _ in range(rng.randrange(4)))
                    for _ in range(rng.randint(1, 40)))
    return pickle.PROTO + b"\x02" + body + pickle.STOP


def test_fuzzed_checkpoints_end_quickly_in_an_object_or_one_line(tmp_path):
    rng = random.Random(0)
    honest = _honest(tmp_path)
    slowest, peak_ratio, outcomes = 0.0, 0.0, {"loaded": 0, "refused": 0}
    for case in range(CASES):
        data = _generated(rng) if case % 5 == 4 else _mutate(rng.choice(honest), rng)
        path = tmp_path / f"case{case}.pt"
        path.write_bytes(data)
        tracemalloc.start()
        start = time.perf_counter()
        try:
            load_object(path)
            outcomes["loaded"] += 1
        except MergeflowError as exc:
            message = str(exc)
            assert message.startswith(str(path)) and "\n" not in message, (case, message)
            outcomes["refused"] += 1
        finally:
            elapsed = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        slowest = max(slowest, elapsed)
        peak_ratio = max(peak_ratio, peak / max(len(data), 1))
        assert elapsed < 5, (case, elapsed)
        assert peak < 16 * 2 ** 20 + 64 * len(data), (case, peak)
        path.unlink()
    print(f"\nfuzz: {CASES} cases, {outcomes}, slowest {slowest * 1000:.1f} ms, "
          f"largest peak {peak_ratio:.1f}x the file")
    assert outcomes["refused"] > CASES // 2


@pytest.mark.parametrize("container", ["zip", "legacy", "raw"])
def test_honest_files_still_load(tmp_path, container):
    module = torch.nn.Linear(4, 3)
    obj = load_object(fakes.save(module, tmp_path / f"m.{container}", container))
    from mergeflow.models.community import module_state

    assert torch.equal(module_state(obj)["weight"], module.weight.detach())
