"""TIES merging: trim, elect sign, disjoint merge."""

from __future__ import annotations

import torch

from mergeflow.merge.common import CHUNK, add_scaled, floating, kth_smallest, stacked_task_vectors, unflatten
from mergeflow.merge.registry import HParam, alpha, register

TIES_HPARAMS = {
    "alpha": alpha(0.3),
    "density": HParam(0.2, float, "fraction of each task vector's entries kept", low=0.0, high=1.0),
    "merge_func": HParam("sum", str, "disjoint merge: sum or mean", choices=("sum", "mean")),
}


def trim_(tau: torch.Tensor, density: float) -> torch.Tensor:
    """In place, per row of ``tau`` (tasks × entries): keep the entries whose magnitude is at least the
    (d − ⌊density·d⌋)-th smallest (1-based), zero the rest."""
    d = tau.shape[1]
    k = d - int(density * d)
    if k > 0:
        for row in tau:
            magnitude = row.abs()
            row.masked_fill_(magnitude < kth_smallest(magnitude, k), 0.0)
    return tau


def trim(flat: torch.Tensor, density: float) -> torch.Tensor:
    """:func:`trim_` of one flat vector, on a copy."""
    return trim_(flat[None].clone(), density)[0]


def ties_vector(trimmed: torch.Tensor, merge_func: str, chunk: int = CHUNK) -> torch.Tensor:
    """Sign election and disjoint merge of ``trimmed`` (tasks × entries), over column chunks."""
    d = trimmed.shape[1]
    elected = trimmed.new_empty(d)
    for start in range(0, d, chunk):
        elected[start:start + chunk] = torch.sign(trimmed[:, start:start + chunk].sum(0))
    # float64: a float32 sum of ±1 over more than 2²⁴ entries is not exact
    elected[elected == 0] = torch.sign(elected.sum(dtype=torch.float64)).to(elected.dtype)
    merged = trimmed.new_empty(d)
    for start in range(0, d, chunk):
        part, sign = trimmed[:, start:start + chunk], elected[start:start + chunk]
        agree = (part != 0) & (torch.sign(part) == sign)
        total = (part * agree).sum(0)
        if merge_func == "mean":
            total = total / agree.sum(0).clamp(min=1)
        merged[start:start + chunk] = total
    return merged


@register("ties", "TIES-Merging", "Yadav et al., TIES-Merging, NeurIPS 2023", TIES_HPARAMS, scale="alpha")
def ties(pretrained, experts, stats=None, diagnostics=None, *, alpha, density, merge_func):
    """``θ_pre + α · disjoint_merge(elect(trim(T_k)))`` over the whole flattened task vectors."""
    keys = floating(pretrained)
    tau = trim_(stacked_task_vectors(pretrained, experts, keys), density)
    return add_scaled(pretrained, unflatten(ties_vector(tau, merge_func), pretrained, keys), alpha)
