"""Merge methods: one module per method, each a pure function over state dicts, and a registry.

>>> from mergeflow.merge import METHODS, merge
>>> merged = merge("cat", pretrained, experts, stats=stats, alpha=0.4, c=4)  # doctest: +SKIP

Adding a method:

1. One module with the pure function, registered with :func:`mergeflow.merge.registry.register`: its name,
   paper, hyper-parameters (:class:`HParam`: default, type, range — the params schema is built from them),
   the statistics it needs (:class:`Need`) and the hyper-parameter that scales it, if any.
2. Its registration: the module's import below; or, for a method kept in another package, an entry point
   in the group ``mergeflow.methods`` (``halfway = my_package.halfway``), loaded here.
3. To run it by default: its name in ``merge.methods`` of params.yaml (and a block of hyper-parameters),
   then ``mergeflow dag`` writes its stage into dvc.yaml; Snakemake needs nothing more.

tests/test_e2e.py registers a throw-away method this way and runs it through both engines.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from mergeflow.errors import MergeflowError
from mergeflow.families import Family, get_family
from mergeflow.merge import (  # noqa: F401  (each import registers its method)
    adamerging,
    awd,
    cart,
    cat,
    dare,
    doge_ta,
    emr,
    fisher,
    iso_c,
    iso_cts,
    lot,
    pcb,
    regmean,
    surgery,
    tall,
    task_arithmetic,
    tatr,
    ties,
    tsv,
    weight_averaging,
    wudi,
)
from mergeflow.merge.context import TaskData
from mergeflow.merge.plugins import load_plugins
from mergeflow.merge.registry import METHODS, HParam, MethodSpec, Need
from mergeflow.merge.task_aware import AdaptedModel, MaskedTaskModels

load_plugins()

__all__ = ["METHODS", "AdaptedModel", "HParam", "MaskedTaskModels", "MethodSpec", "Need", "TaskData", "merge",
           "check_inputs"]


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise MergeflowError(f"unknown merge method {name!r}; known: {', '.join(METHODS)}") from None


def _finite(t: torch.Tensor) -> bool:
    # max and min propagate NaN and are ±Inf when any entry is: two reductions, no boolean tensor as large as t
    return not t.is_floating_point() or not t.numel() or bool(torch.isfinite(t.amax()) & torch.isfinite(t.amin()))


def _check_finite(where: str, sd: dict[str, torch.Tensor]) -> None:
    for key, t in sd.items():
        if not _finite(t):
            raise MergeflowError(f"{where}: {key} contains NaN or Inf")


def check_inputs(pretrained: dict[str, torch.Tensor], experts: dict[str, dict[str, torch.Tensor]]) -> None:
    """Experts must match ``pretrained`` key for key in shape and dtype, and every tensor must be finite."""
    if not experts:
        raise MergeflowError("no experts to merge")
    _check_finite("pretrained", pretrained)
    for task, sd in experts.items():
        missing = [k for k in pretrained if k not in sd]
        extra = [k for k in sd if k not in pretrained]
        if missing or extra:
            key = (missing or extra)[0]
            raise MergeflowError(f"expert {task!r}: key {key} {'missing' if missing else 'not in pretrained'}")
        for key, ref in pretrained.items():
            t = sd[key]
            if t.shape != ref.shape:
                raise MergeflowError(
                    f"expert {task!r}: {key} has shape {tuple(t.shape)}, pretrained {tuple(ref.shape)}")
            if t.dtype != ref.dtype:
                raise MergeflowError(f"expert {task!r}: {key} has dtype {t.dtype}, pretrained {ref.dtype}")
        _check_finite(f"expert {task!r}", sd)


def _check_stats(spec: MethodSpec, hp: dict[str, Any], experts, stats) -> None:
    kinds = spec.stat_kinds(hp)
    if not kinds:
        return
    if stats is None:
        raise MergeflowError(f"{spec.name} needs statistics ({', '.join(sorted(kinds))}) but none were given")
    for task in experts:
        if task not in stats:
            raise MergeflowError(f"{spec.name}: no statistics for task {task!r}")
        have = stats[task].kinds()
        for kind in sorted(kinds):
            if kind not in have:
                raise MergeflowError(f"{spec.name}: statistics of task {task!r} lack {kind!r}")
        for name in ("gram", "sqnorm", "counts", "fisher", "grad"):
            for key, t in getattr(stats[task], name).items():
                if not _finite(t):
                    raise MergeflowError(f"{spec.name}: {name} of task {task!r} for {key} contains NaN or Inf")


def _takes_family(fn) -> bool:
    return "family" in inspect.signature(fn).parameters


def merge(name: str, pretrained: dict[str, torch.Tensor], experts: dict[str, dict[str, torch.Tensor]],
          stats: dict | None = None, diagnostics: dict | None = None, data: TaskData | None = None,
          family: str | Family = "open_clip", **hyperparameters: Any
          ) -> dict[str, torch.Tensor] | MaskedTaskModels | AdaptedModel:
    """Merge ``experts`` into one state dict with method ``name``.

    Args:
        name: a key of :data:`METHODS`.
        pretrained: ``θ_pre`` as a state dict.
        experts: task → state dict with the same keys, shapes and dtypes.
        stats: task → :class:`mergeflow.features.TaskStats`, for the methods that need them.
        diagnostics: if a dict, methods record what they chose (CAT: eigenvalues per unit).
        data: the encoder and data, for the methods whose spec ``uses`` them (AdaMerging, Surgery, TALL).
        family: the model family's adapter (:mod:`mergeflow.families`), or its name: what every parameter
            is. Per-task heads are left out of the merge (each task keeps its expert's), index buffers are
            copied from ``pretrained``; methods that treat units by kind receive it as ``family=``.
        **hyperparameters: overrides of the registry defaults (``lambda`` via ``**{"lambda": 5.0}``).

    Returns:
        A state dict with ``pretrained``'s keys but its heads, with their shapes and dtypes; for a
        ``task_aware`` method a :class:`MaskedTaskModels` or :class:`AdaptedModel` covering every task.
    """
    spec = get_method(name)
    hp = spec.resolve(hyperparameters)
    if spec.scale and hp[spec.scale] == "auto":
        raise MergeflowError(f"{name}: {spec.scale}='auto' is resolved by the merge stage; pass a number here")
    return merge_part(spec, hp, pretrained, experts, stats, diagnostics, data, get_family(family), check_stats=True)


def merge_part(spec: MethodSpec, hp: dict[str, Any], pretrained, experts, stats, diagnostics, data, family: Family,
               check_stats: bool):
    """:func:`merge` with resolved hyper-parameters (plus a ``prepare`` step's results, which pass through);
    ``check_stats`` False for a part of a model (a streamed group: a layer without linear units has no Gram,
    which its caller checked for the whole model)."""
    name = spec.name
    kinds = {k: family.unit(k).kind for sd in (pretrained, *experts.values()) for k in sd}
    copied = {k: v for k, v in pretrained.items() if kinds[k] == "excluded"}
    pretrained = {k: v for k, v in pretrained.items() if kinds[k] not in ("head", "excluded")}
    experts = {t: {k: v for k, v in sd.items() if kinds[k] not in ("head", "excluded")} for t, sd in experts.items()}
    check_inputs(pretrained, experts)
    if check_stats:
        _check_stats(spec, hp, experts, stats)
    kwargs = {k: v for k, v in hp.items() if k not in spec.hparams or not spec.hparams[k].pipeline}
    if spec.uses:
        if data is None:
            raise MergeflowError(f"{name} runs the encoder ({', '.join(spec.uses)}): pass data=TaskData(...)")
        kwargs["data"] = data
    if _takes_family(spec.fn):
        kwargs["family"] = family
    out = spec.fn(pretrained, experts, stats=stats, diagnostics=diagnostics, **kwargs)
    if spec.task_aware:
        missing = [t for t in experts if t not in out.tasks]
        if missing:
            raise MergeflowError(f"{name}: no per-task part for task {missing[0]!r}")
        return out
    for key, ref in pretrained.items():
        assert out[key].shape == ref.shape and out[key].dtype == ref.dtype, key
    return {**{k: out[k] for k in pretrained}, **{k: v.clone() for k, v in copied.items()}}
