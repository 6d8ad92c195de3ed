"""RegMean: per linear unit, the least-squares fit of all experts' outputs on their own inputs."""

from __future__ import annotations

import torch

from mergeflow.families import Family
from mergeflow.families.open_clip_vit import OPEN_CLIP
from mergeflow.merge.common import COMPUTE
from mergeflow.merge.registry import HParam, Need, register


def shrink(gram: torch.Tensor, a: float) -> torch.Tensor:
    """``a·G + (1−a)·diag(G)``: off-diagonals shrunk by a."""
    return a * gram + (1 - a) * torch.diag(torch.diagonal(gram))


@register("regmean", "RegMean",
          "Jin et al., Dataless knowledge fusion by merging weights of language models, ICLR 2023",
          {"a": HParam(0.95, float, "off-diagonal scale of the Grams", low=0.0, high=1.0),
           "exemplars": HParam(256, int, "exemplars per task for the Grams", low=1, pipeline=True)},
          needs=(Need("gram", 1.0, "exemplars"),), per_unit=True, row_kinds=("embedding",))
def regmean(pretrained, experts, stats=None, diagnostics=None, family: Family = OPEN_CLIP, *, a, **_):
    """Linear units with statistics (optional ones too): ``W* = (Σ_k W_k G̃_k) · inv(Σ_k G̃_k)`` on whole
    weights; everything else: average."""
    tasks = list(experts)
    out = {}
    for k, v in pretrained.items():
        unit = family.unit(k)
        if not v.is_floating_point():
            out[k] = v.clone()
        elif unit.kind == "linear" and all(unit.site in stats[t].gram for t in tasks):
            grams = stacked_shrunk([stats[t].gram[unit.site] for t in tasks], a)
            out[k] = unit.from_matrix(regmean_linear(unit.matrix(v), [unit.matrix(experts[t][k]) for t in tasks],
                                                     grams), v).to(v.dtype)
        else:
            out[k] = torch.stack([experts[t][k].to(COMPUTE) for t in tasks]).mean(0).to(v.dtype)
    return out


def stacked_shrunk(grams: list[torch.Tensor], a: float) -> torch.Tensor:
    """The ``K`` Grams shrunk (:func:`shrink`) and stacked as one ``(K·d_in, d_in)`` matrix, written in place:
    the operand of :func:`regmean_linear`'s product, without a temporary per Gram."""
    d = grams[0].shape[0]
    dtype = torch.promote_types(grams[0].dtype, COMPUTE)
    out = torch.empty(len(grams) * d, d, dtype=dtype, device=grams[0].device)
    for block, gram in zip(out.split(d), grams, strict=True):
        gram = gram.to(dtype)
        torch.mul(gram, a, out=block)
        block.diagonal().add_(torch.diagonal(gram) * (1 - a))  # what adding (1−a)·diag(G) does to the diagonal
    return out


def regmean_linear(base: torch.Tensor, weights: list[torch.Tensor], grams: torch.Tensor) -> torch.Tensor:
    """``(Σ_k W_k G_k) · inv(Σ_k G_k)`` (float64), through ``W_pre + (Σ_k T_k G_k) · inv(Σ_k G_k)``; ``grams``
    the K Grams stacked, ``(K·d_in, d_in)``.

    The products ``T_k G_k`` (most of the work) are one matrix product in the Grams' precision — the statistics
    carry no more than that, and the task vectors' small scale keeps its round-off below the Grams' own; the
    solve is float64, by Cholesky (``Σ G`` is symmetric positive definite unless singular). A singular ``Σ G``
    takes the pseudo-inverse, ``W_pre · ΣG · pinv(ΣG) + (Σ_k T_k G_k) · pinv(ΣG)``: as the whole-weight formula,
    the part of ``W_pre`` that no input reaches is dropped.
    """
    dtype = grams.dtype
    pre = base.to(dtype)
    drift = (torch.cat([w.to(dtype) - pre for w in weights], dim=1) @ grams).double()
    blocks = grams.split(grams.shape[1])
    total = blocks[0].double()
    for block in blocks[1:]:  # in float64, task by task: the sum of the Grams each converted
        total.add_(block)
    factor, info = torch.linalg.cholesky_ex(total)
    if int(info) == 0:
        return base.double() + torch.cholesky_solve(drift.t(), factor).t()
    inverse = torch.linalg.pinv(total, hermitian=True)
    return base.double() @ (total @ inverse) + drift @ inverse
