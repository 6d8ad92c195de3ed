"""Iso-CTS: isotropic merging in the common and task-specific subspaces (algorithms.md §7.1)."""

from __future__ import annotations

import math

import torch

from mergeflow.errors import MergeflowError
from mergeflow.merge.common import isotropic, merge_by_unit, polar_factor, top_singular
from mergeflow.merge.registry import HParam, alpha, register


def subspace_sizes(r: int, tasks: int, fraction: float) -> tuple[int, int]:
    """``(k, s)``: the common directions kept and each task's own, by the official code's rounding
    (``s = round((r − ⌊f·r⌋)/K)``, half to even; ``k = r − K·s``)."""
    s = round((r - math.floor(fraction * r)) / tasks)
    k = r - tasks * s
    if k < 0:
        raise MergeflowError(f"iso_cts: common_fraction {fraction} leaves no common subspace for a unit of rank "
                             f"{r} and {tasks} tasks (k = {k}); use a larger fraction")
    return k, s


def iso_cts_unit(vectors: list[torch.Tensor], fraction: float) -> torch.Tensor:
    """One 2-D unit's ``Δ = σ̄ · polar(U*) polar(V*)ᵀ`` (§7.1): the sum's top ``k`` directions and each task's
    top ``s`` outside them, every direction at the mean of the selected singular values.

    Only the triplets kept are computed (the top ``k`` of the sum, the top ``s`` of each residual: eigenpairs
    of the smaller float64 Gram), and the polar factors come from the ``r × r`` Grams: ``K + 3`` full SVDs per
    unit otherwise, most of whose triplets are thrown away (benchmarks/merge_speed.py)."""
    total = sum(vectors)
    if not any(bool(v.any()) for v in vectors):
        return torch.zeros_like(total)
    r = min(total.shape)
    k, s = subspace_sizes(r, len(vectors), fraction)
    if s == 0:
        return isotropic(total)
    u_c, sigma, v_c = top_singular(total, k) if k else (total.new_zeros(total.shape[0], 0), total.new_zeros(0),
                                                         total.new_zeros(total.shape[1], 0))
    us, vs, kept = [u_c], [v_c], sigma.sum()
    for t in vectors:
        residual = t - u_c @ (u_c.t() @ t)  # the task's own directions: the common output space removed
        p, mu, q = top_singular(residual, s)
        us.append(p)
        vs.append(q)
        kept = kept + mu.sum()
    return (kept / r) * (polar_factor(torch.cat(us, dim=1))[0] @ polar_factor(torch.cat(vs, dim=1))[0].t())


@register("iso_cts", "Iso-CTS", "Marczak et al., No task left behind: isotropic model merging with common and "
          "task-specific subspaces, ICML 2025 (arXiv 2502.04959)",
          {"alpha": alpha(1.5),
           "common_fraction": HParam(0.8, float, "share of the rank kept for the common subspace (1: Iso-C)",
                                     low=0.0, high=1.0, open_low=True)},
          scale="alpha", per_unit=True)
def iso_cts(pretrained, experts, stats=None, diagnostics=None, *, alpha, common_fraction):
    """2-D units: :func:`iso_cts_unit` of the task vectors; other parameters: the mean task vector."""
    return merge_by_unit(pretrained, experts,
                         lambda key, items: iso_cts_unit(items, common_fraction) if items[0].ndim == 2
                         else torch.stack(items).mean(0), alpha, "Iso-CTS", workers=None)
