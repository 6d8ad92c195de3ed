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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mergeflow.errors import MergeflowError
from mergeflow.families import Family, get_family
from mergeflow.features.stats import TaskStats
from mergeflow.io import _METADATA_KEY, atomic_path
from mergeflow.safetensors_file import Reader, header_for, nbytes, open_weights, write_at


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


def plan(name: str, base: Path, experts: dict[str, Path], family: str | Family = "open_clip",
         block_mib: float = 32.0, metadata: dict[str, str] | None = None) -> tuple[Plan, Reader, dict[str, Reader]]:
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
    out.header, out.layout = header_for(merged_keys, pre.info, header_meta)
    budget = block_mib * 2**20
    for keys in family.layer_groups(merged_keys):
        size = sum(nbytes(pre.info[k]) for k in keys)
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


def _group_stats(files: dict[str, Reader], group: Group, family: Family) -> dict[str, TaskStats]:
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


def _check_stat_files(spec, hp: dict, experts: dict[str, Reader], files: dict[str, Reader]) -> None:
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
    stat_files = {t: Reader(Path(p), f"statistics of {t!r}") for t, p in (stats or {}).items()}
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
                _, shape, start, end = the_plan.layout[key]
                first_row = 0 if group.rows is None else group.rows.start * (end - start) // shape[0]
                write_at(f, data_start + start + first_row, merged[key])
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
