"""Streamed merging: one group of parameters (a layer, or a block of a vocabulary table's rows) of the base and
every expert in memory at a time, read from safetensors files and written into the merged file in place.

For a method whose rule is per unit (``MethodSpec.per_unit``), merging the model one group at a time is the
same computation as merging it whole, so the result is byte-identical to :func:`mergeflow.merge.merge`
followed by :func:`mergeflow.io.save_tensors` (``tests/test_stream.py``); peak memory is about one group ×
(K + 2) plus that group's statistics, whatever the model's depth. Groups: every parameter under one numbered
block (``...layers.7.``, ``...resblocks.7.``, ``...h.7.``) together; every other parameter alone, except that a
token table travels with the output projection it may be tied to (both have one row per vocabulary entry).
A group larger than ``block_mib`` is cut into row blocks when the method merges those units' rows
independently (``MethodSpec.row_kinds``: an embedding's rows under LOT's count rule, any row under task
arithmetic); the row blocks of a table and its projection line up.

The output is written to a temporary file (header first, computed from the base's header with the layout
``safetensors`` itself uses; then each group's tensors at their offsets) and renamed when complete: a merge
killed midway leaves nothing a rerun would take for finished.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mergeflow.errors import MergeflowError
from mergeflow.families import Family, get_family
from mergeflow.features.stats import TaskStats
from mergeflow.io import _METADATA_KEY, atomic_path
from mergeflow.models.community import SHARD_INDEX

_LAYER = re.compile(r"^(.*?\.\d+)\.")  # the numbered block a parameter belongs to
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_NAMES = {v: k for k, v in _DTYPES.items()}


@dataclass
class Group:
    """Parameters merged together: ``keys``, all of them cut to ``rows`` (None: whole)."""

    keys: list[str]
    rows: slice | None = None


@dataclass
class Plan:
    groups: list[Group] = field(default_factory=list)
    layout: dict[str, tuple[str, list[int], int, int]] = field(default_factory=dict)  # key → dtype, shape, start, end
    header: bytes = b""


class _Reader:
    """Named tensors (or row ranges of them) from a safetensors file, read with ``os.pread`` on demand.

    No memory map: every page of a mapped file that a process has touched counts as its memory until the map
    closes, so reading a model a layer at a time through ``safe_open`` would end with every file's size in
    the peak RSS (the same reason as :mod:`mergeflow.data.split_file`). The header is checked before any
    read: known dtypes, offsets that match the shapes and lie inside the file."""

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
                if dtype not in _DTYPES or any(d < 0 for d in shape):
                    raise ValueError(f"{key}: dtype {dtype} shape {shape}")
                if hi - lo != _nbytes((dtype, shape)) or lo < 0 or self._start + hi > size:
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
        row_bytes = _nbytes((dtype, shape[1:])) if shape else _nbytes((dtype, []))
        out = torch.empty([count, *shape[1:]] if shape else [], dtype=_DTYPES[dtype])
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


class _ShardedReader:
    """A checkpoint in several safetensors shards, read as one (``model.safetensors.index.json``'s
    ``weight_map`` says which shard holds each tensor): the interface of :class:`_Reader`."""

    def __init__(self, index: Path, what: str):
        from mergeflow.models.community import read_shard_index

        self.path, self.what = Path(index), what
        try:
            where = read_shard_index(self.path)
        except MergeflowError as exc:
            raise MergeflowError(f"{what} {exc}") from None
        self._shards = {file: _Reader(file, what) for file in sorted(set(where.values()))}
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


def open_weights(path: str | Path, what: str) -> _Reader | _ShardedReader:
    """A safetensors file, a shard index, or a Hugging Face folder holding either, as one reader."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", SHARD_INDEX):
            if (path / name).is_file():
                return open_weights(path / name, what)
        raise MergeflowError(f"{what} {path}: a folder without model.safetensors or {SHARD_INDEX}")
    if path.name.endswith(".index.json"):
        return _ShardedReader(path, what)
    return _Reader(path, what)


def layer_groups(keys: list[str], family: Family) -> list[list[str]]:
    """Keys grouped by numbered block; every other key alone, a token table with its output projection."""
    by_block: dict[str, list[str]] = {}
    order: list[str] = []
    present = set(keys)
    partner = {}
    for key in keys:
        site = family.unit(key).output_site
        if site is not None and site in present:
            partner[site] = key
    for key in keys:
        m = _LAYER.match(key)
        name = m.group(1) if m else partner.get(key, key)
        if name not in by_block:
            by_block[name] = []
            order.append(name)
        by_block[name].append(key)
    return [by_block[name] for name in order]


def _nbytes(info: tuple[str, list[int]]) -> int:
    dtype, shape = info
    n = 1
    for s in shape:
        n *= s
    return n * torch.empty(0, dtype=_DTYPES[dtype]).element_size()


def _header(layout_order: list[str], info: dict[str, tuple[str, list[int]]], metadata: dict | None
            ) -> tuple[bytes, dict]:
    """The safetensors header for ``info`` (the order ``safetensors`` itself writes: found by saving one-element
    stand-ins, so it follows the installed version), with offsets from the real sizes."""
    from safetensors.torch import save

    stand_ins = {k: torch.zeros(1, dtype=_DTYPES[info[k][0]]) for k in layout_order}
    probe = save(stand_ins)
    n = struct.unpack("<Q", probe[:8])[0]
    order = [k for k in json.loads(probe[8:8 + n]) if k != "__metadata__"]
    entries: dict[str, Any] = {}
    if metadata:
        entries["__metadata__"] = metadata
    layout, offset = {}, 0
    for key in order:
        dtype, shape = info[key]
        end = offset + _nbytes(info[key])
        entries[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, end]}
        layout[key] = (dtype, shape, offset, end)
        offset = end
    text = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text, layout


def concatenate(parts: list[Path], out: Path, metadata: dict[str, str] | None = None) -> None:
    """Write the tensors of several safetensors files into one, one tensor in memory at a time: the same bytes
    as :func:`mergeflow.io.save_tensors` of their union with ``metadata`` (a key in several parts must hold the
    same tensor: the first part's is written). Atomic, like every output."""
    readers = [_Reader(Path(p), "part") for p in parts]
    try:
        source = {}
        for reader in readers:
            for key in reader.info:
                source.setdefault(key, reader)
        info = {k: r.info[k] for k, r in source.items()}
        header_meta = {_METADATA_KEY: json.dumps(dict(metadata), sort_keys=True)} if metadata else None
        header, layout = _header(list(info), info, header_meta)
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            f.write(header)
            for key, (_, _, start, _) in layout.items():
                tensor = source[key].get(key)
                f.seek(len(header) + start)
                f.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    finally:
        for reader in readers:
            reader.close()


def plan(name: str, base: Path, experts: dict[str, Path], family: str | Family = "open_clip",
         block_mib: float = 32.0, metadata: dict[str, str] | None = None) -> tuple[Plan, _Reader, dict[str, _Reader]]:
    """Check the files against each other (headers only) and plan the groups and the output's layout."""
    from mergeflow.merge import get_method

    spec = get_method(name)
    if not spec.per_unit:
        per_unit = ", ".join(sorted(n for n, s in _methods().items() if s.per_unit))
        raise MergeflowError(f"{name}: its rule is not per unit, so it cannot be streamed; methods that can: "
                             f"{per_unit}")
    family = get_family(family)
    pre = open_weights(base, "base")
    readers = {t: open_weights(p, f"expert {t!r}") for t, p in experts.items()}
    if not readers:
        raise MergeflowError("no experts to merge")
    ordered = sorted(pre.keys)
    kinds = {k: family.unit(k).kind for k in ordered}
    merged_keys = [k for k in ordered if kinds[k] != "head"]
    for task, r in readers.items():
        for key in merged_keys:
            if kinds[key] == "excluded":
                continue
            if key not in r.keys:
                raise MergeflowError(f"expert {task!r} ({r.path}): tensor {key} missing (the base has it)")
            if r.info[key] != pre.info[key]:
                raise MergeflowError(f"expert {task!r}: {key} is {r.info[key][0]} {r.info[key][1]}, the base's "
                                     f"{pre.info[key][0]} {pre.info[key][1]}")
    out = Plan()
    header_meta = {_METADATA_KEY: json.dumps(dict(metadata), sort_keys=True)} if metadata else None
    out.header, out.layout = _header(merged_keys, pre.info, header_meta)
    budget = block_mib * 2**20
    for keys in layer_groups(merged_keys, family):
        size = sum(_nbytes(pre.info[k]) for k in keys)
        lengths = {pre.info[k][1][0] if pre.info[k][1] else 0 for k in keys}
        splittable = (size > budget and len(lengths) == 1 and 0 not in lengths
                      and all(kinds[k] in spec.row_kinds for k in keys))
        if not splittable:
            out.groups.append(Group(keys))
            continue
        (length,) = lengths
        step = max(1, int(length * budget // size))
        out.groups.extend(Group(keys, slice(s, min(s + step, length))) for s in range(0, length, step))
    return out, pre, readers


def _methods():
    from mergeflow.merge import METHODS

    return METHODS


def _group_stats(files: dict[str, _Reader], group: Group, family: Family) -> dict[str, TaskStats]:
    """Each task's statistics for the sites of ``group`` (every row count: a row-weighted mean's fallback
    reads them all), row-cut like the group."""
    wanted: dict[str, slice | None] = {}
    for key in group.keys:
        unit = family.unit(key)
        for site in (unit.site, unit.output_site):
            if site is not None:
                for name in ("gram", "sqnorm"):
                    wanted[f"{name}/{site}"] = None
                wanted[f"counts/{site}"] = group.rows
        for name in ("fisher", "grad"):
            wanted[f"{name}/{key}"] = group.rows
    out = {}
    for task, reader in files.items():
        tensors = {k: reader.get(k) for k in reader.keys if k.startswith(("rows/", "weighting/"))}
        for k, rows in wanted.items():
            if k in reader.keys:
                tensors[k] = reader.get(k, rows)
        out[task] = TaskStats.from_tensors(tensors, str(reader.path))
    return out


def _check_stat_files(spec, hp: dict, experts: dict[str, _Reader], files: dict[str, _Reader]) -> None:
    """Every task has a statistics file holding each kind the method needs (checked once, on the headers)."""
    kinds = spec.stat_kinds(hp)
    if not kinds:
        return
    if not files:
        raise MergeflowError(f"{spec.name} needs statistics ({', '.join(sorted(kinds))}) but none were given")
    for task in experts:
        if task not in files:
            raise MergeflowError(f"{spec.name}: no statistics for task {task!r}")
        have = {k.partition("/")[0] for k in files[task].keys}
        for kind in sorted(kinds - have):
            raise MergeflowError(f"{spec.name}: statistics of task {task!r} ({files[task].path}) lack {kind!r}")


def merge_streamed(name: str, base: str | Path, experts: dict[str, str | Path], out: str | Path,
                   stats: dict[str, str | Path] | None = None, family: str | Family = "open_clip",
                   block_mib: float = 32.0, metadata: dict[str, str] | None = None, **hyperparameters: Any) -> dict:
    """Merge the experts' safetensors files into ``out`` one group at a time (see the module's docstring).

    Args:
        name: a method of the registry whose rule is per unit.
        base, experts: ``θ_pre`` and each task's expert (the same keys, shapes, dtypes): safetensors files, shard
            indexes (``model.safetensors.index.json``) or Hugging Face folders holding either.
        out: the merged file (written atomically; heads left out, index buffers copied, as :func:`merge`).
        stats: per task, the statistics file (:meth:`TaskStats.to_tensors`), for methods that need them.
        block_mib: the largest group read at once before a vocabulary-sized table is cut into row blocks.
        metadata: stored in the header as :func:`mergeflow.io.save_tensors` stores it.

    Returns:
        ``{"groups": n, "row_blocks": m}``.
    """
    from mergeflow.merge import get_method, merge_part

    fam = get_family(family)
    spec = get_method(name)
    hp = spec.resolve(hyperparameters)
    if spec.scale and hp[spec.scale] == "auto":
        raise MergeflowError(f"{name}: {spec.scale}='auto' is resolved by the merge stage; pass a number here")
    kwargs = {k: v for k, v in hp.items() if not spec.hparams[k].pipeline}
    the_plan, pre, readers = plan(name, Path(base), {t: Path(p) for t, p in experts.items()}, fam, block_mib, metadata)
    stat_files = {t: _Reader(Path(p), f"statistics of {t!r}") for t, p in (stats or {}).items()}
    _check_stat_files(spec, hp, readers, stat_files)

    def read(group: Group):
        sub_pre = {k: pre.get(k, group.rows) for k in group.keys}
        sub_experts = {t: {k: r.get(k, group.rows) for k in group.keys if fam.unit(k).kind != "excluded"}
                       for t, r in readers.items()}
        return sub_pre, sub_experts

    if spec.prepare is not None:  # the method's whole-model quantities first, from the parts
        def parts():
            for group in the_plan.groups:
                sub_pre, sub_experts = read(group)
                merged_keys = [k for k in group.keys if fam.unit(k).kind not in ("head", "excluded")]
                yield ({k: sub_pre[k] for k in merged_keys},
                       {t: {k: sd[k] for k in merged_keys} for t, sd in sub_experts.items()})

        kwargs.update(spec.prepare(parts, **kwargs))
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        f.write(the_plan.header)
        data_start = len(the_plan.header)
        for group in tqdm(the_plan.groups, desc=f"{name} (streamed)", unit="group", leave=False, mininterval=5.0):
            sub_pre, sub_experts = read(group)
            if any(sub_experts[t] for t in sub_experts):
                sub_stats = _group_stats(stat_files, group, fam) if stat_files else None
                merged = merge_part(spec, kwargs, sub_pre, sub_experts, sub_stats, None, None, fam, check_stats=False)
            else:  # index buffers only: copied from the base
                sub_stats, merged = None, sub_pre
            for key in group.keys:
                dtype, shape, start, end = the_plan.layout[key]
                tensor = merged[key].contiguous()
                raw = tensor.reshape(-1).view(torch.uint8).numpy() if tensor.numel() else b""
                offset = start
                if group.rows is not None:
                    row_bytes = (end - start) // shape[0]
                    offset += group.rows.start * row_bytes
                f.seek(data_start + offset)
                f.write(raw if isinstance(raw, bytes) else raw.tobytes())
            del sub_pre, sub_experts, sub_stats, merged
        f.flush()
    return {"groups": len(the_plan.groups), "row_blocks": sum(g.rows is not None for g in the_plan.groups)}


# what a merged model folder takes from its base's folder: the configuration and the tokenizer, not the weights
_FOLDER_FILES = (".json", ".txt", ".model", ".tiktoken")


def merge_to_folder(name: str, base: str | Path, experts: dict[str, str | Path], out: str | Path, **options: Any
                    ) -> dict:
    """:func:`merge_streamed` into ``<out>/model.safetensors``, beside the base folder's configuration and
    tokenizer files: a Hugging Face folder ``from_pretrained`` loads. ``out`` must not exist or be empty (a
    folder of yours is never replaced); it appears when complete."""
    import shutil
    import tempfile

    base, out = Path(base), Path(out)
    if not base.is_dir():
        raise MergeflowError(f"{out}: a merged model folder needs the base as a Hugging Face folder (its configuration "
                             f"and tokenizer are copied), not {base}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MergeflowError(f"{out}: exists and is not an empty folder; a merged model folder is written only where "
                             "nothing is")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        report = merge_streamed(name, base, experts, tmp / "model.safetensors", **options)
        for file in sorted(base.iterdir()):
            if file.is_file() and file.name.endswith(_FOLDER_FILES) and not file.name.endswith(".index.json"):
                shutil.copyfile(file, tmp / file.name)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report
