"""Iso-CTS: isotropic merging in the common and task-specific subspaces (algorithms.md §7.1)."""

from __future__ import annotations

import math

import torch

from mergeflow.errors import MergeflowError
from mergeflow.merge.common import (
    GRAM_RCOND,
    add_outer_lower_,
    column_gram,
    extreme_eigh,
    isotropic,
    merge_by_unit,
    polar_factor,
    symmetric_eigh,
    top_singular,
)
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


def _residual_triplets(t: torch.Tensor, u: torch.Tensor, u64: torch.Tensor | None, s: int,
                       complement: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top ``s`` singular triplets of ``(I − u uᵀ) t`` (``u`` orthonormal columns; ``u64`` the same in
    float64), without forming the residual.

    Where the common directions fill most of the output side (``complement``: an orthonormal basis of the
    rest, a few columns), the residual is ``complement · (complementᵀ t)`` and its SVD that of that small
    factor. Otherwise (a tall unit: the common directions are a thin slice of a long output side) from the
    float64 Gram ``tᵀt − (uᵀt)ᵀ(uᵀt)``, which is the residual's: about the cost of forming the residual in
    float32 and taking its Gram, and more accurate. Where that Gram cannot resolve the ``s``-th value, the
    residual is formed and :func:`top_singular` decides.
    """
    if complement is not None:
        a, mu, q = top_singular(complement.t() @ t, s)
        return complement @ a, mu, q
    td = t.double()
    projected = u64.t() @ td
    gram = add_outer_lower_(column_gram(td), projected.t(), alpha=-1.0)
    vals, vecs = extreme_eigh(gram, s, "top")
    vals, vecs = vals.flip(0), vecs.flip(1)
    mu = vals.clamp(min=0).sqrt()
    if mu[0] == 0 or mu[-1] <= GRAM_RCOND * mu[0] * 10:  # the difference of two Grams: keep a margin
        return top_singular(t - u @ (u.t() @ t), s)
    q = vecs.to(t.dtype)  # the left vectors R q / μ in float32: a product of s columns, not a cancellation
    p = (t @ q - u @ (projected @ vecs).to(t.dtype)) / mu.to(t.dtype)
    return p, mu.to(t.dtype), q


def iso_cts_unit(vectors: list[torch.Tensor], fraction: float) -> torch.Tensor:
    """One 2-D unit's ``Δ = σ̄ · polar(U*) polar(V*)ᵀ`` (§7.1): the sum's top ``k`` directions and each task's
    top ``s`` outside them, every direction at the mean of the selected singular values.

    Only the triplets kept are computed (the top ``k`` of the sum, the top ``s`` of each residual: eigenpairs
    of a small float64 Gram, :func:`_residual_triplets`), and the polar factors come from the ``r × r`` Grams:
    ``K + 3`` full SVDs per unit otherwise, most of whose triplets are thrown away (benchmarks/merge_speed.py)."""
    total = sum(vectors)
    if not any(bool(v.any()) for v in vectors):
        return torch.zeros_like(total)
    rows, cols = total.shape
    r = min(rows, cols)
    k, s = subspace_sizes(r, len(vectors), fraction)
    if s == 0:
        return isotropic(total)
    complement = None
    if k == 0:
        u_c, sigma, v_c = total.new_zeros(rows, 0), total.new_zeros(0), total.new_zeros(cols, 0)
    elif rows <= cols:
        # the output side is the short one: one eigendecomposition of total·totalᵀ gives the common directions
        # and the basis of the rest
        u_c, sigma, v_c, complement = _common_and_rest(total, k)
    else:
        u_c, sigma, v_c = top_singular(total, k)
    own_u, vs, kept = [], [v_c], sigma.sum()
    u64 = u_c.double() if complement is None else None
    for t in vectors:
        p, mu, q = _residual_triplets(t, u_c, u64, s, complement)
        own_u.append(p)
        vs.append(q)
        kept = kept + mu.sum()
    # U* = [U_c, P] with P ⟂ U_c (each task's directions come from its residual outside U_c) and U_c
    # orthonormal, so U*ᵀU* = diag(I, PᵀP) and polar(U*) = [U_c, polar(P)]: a K·s-column polar factor in
    # place of an r-column one
    u_star = torch.cat([u_c, polar_factor(torch.cat(own_u, dim=1))[0]], dim=1)
    return (kept / r) * (u_star @ polar_factor(torch.cat(vs, dim=1))[0].t())


def _common_and_rest(total: torch.Tensor, k: int):
    """The top ``k`` singular triplets of a wide (or square) ``total`` and an orthonormal basis of the
    output directions they leave out, from all eigenpairs of its float64 row Gram; :func:`top_singular` and
    no basis (the residuals are then formed) where the Gram cannot resolve ``σ_k``."""
    td = total.double()
    vals, vecs = symmetric_eigh(column_gram(td.t()))
    sigma = vals.flip(0).clamp(min=0).sqrt()[:k]
    if sigma[0] == 0 or sigma[-1] <= GRAM_RCOND * sigma[0]:
        return (*top_singular(total, k), None)
    u = vecs.flip(1)[:, :k]
    v = (td.t() @ u) / sigma
    rest = vecs[:, :vecs.shape[1] - k]
    return u.to(total.dtype), sigma.to(total.dtype), v.to(total.dtype), rest.to(total.dtype)


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
