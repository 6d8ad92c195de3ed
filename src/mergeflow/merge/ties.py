"""TIES merging: trim, elect sign, disjoint merge."""

from __future__ import annotations

import torch

from mergeflow.merge.common import add_scaled, flatten, kth_smallest, task_vectors, unflatten
from mergeflow.merge.registry import HParam, alpha, register

TIES_HPARAMS = {
    "alpha": alpha(0.3),
    "density": HParam(0.2, float, "fraction of each task vector's entries kept", low=0.0, high=1.0),
    "merge_func": HParam("sum", str, "disjoint merge: sum or mean", choices=("sum", "mean")),
}


def trim(flat: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the entries whose magnitude is at least the (d − ⌊density·d⌋)-th smallest (1-based)."""
    d = flat.numel()
    k = d - int(density * d)
    if k <= 0:
        return flat.clone()
    threshold = kth_smallest(flat.abs(), k)
    return torch.where(flat.abs() >= threshold, flat, torch.zeros_like(flat))


def ties_vector(trimmed: torch.Tensor, merge_func: str) -> torch.Tensor:
    """Sign election and disjoint merge of ``trimmed`` (tasks × entries)."""
    sign = torch.sign(trimmed.sum(0))
    sign[sign == 0] = torch.sign(sign.sum())
    agree = (trimmed != 0) & (torch.sign(trimmed) == sign)
    total = (trimmed * agree).sum(0)
    if merge_func == "mean":
        total = total / agree.sum(0).clamp(min=1)
    return total


def ties_delta(vectors, density: float, merge_func: str):
    keys = list(next(iter(vectors.values())).keys())
    flat = torch.stack([trim(flatten(tv, keys), density) for tv in vectors.values()])
    return unflatten(ties_vector(flat, merge_func), next(iter(vectors.values())), keys)


@register("ties", "TIES-Merging", "Yadav et al., TIES-Merging, NeurIPS 2023", TIES_HPARAMS, scale="alpha")
def ties(pretrained, experts, stats=None, diagnostics=None, *, alpha, density, merge_func):
    """``θ_pre + α · disjoint_merge(elect(trim(T_k)))`` over the whole flattened task vectors."""
    return add_scaled(pretrained, ties_delta(task_vectors(pretrained, experts), density, merge_func), alpha)
