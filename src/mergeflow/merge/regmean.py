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
            grams = [shrink(stats[t].gram[unit.site].double(), a) for t in tasks]
            rhs = sum(unit.matrix(experts[t][k]).double() @ g for t, g in zip(tasks, grams, strict=True))
            total = sum(grams)
            try:
                merged = torch.linalg.solve(total, rhs.t()).t()  # total is symmetric
            except RuntimeError:  # singular: fall back to the pseudo-inverse
                merged = rhs @ torch.linalg.pinv(total, hermitian=True)
            out[k] = unit.from_matrix(merged, v).to(v.dtype)
        else:
            out[k] = torch.stack([experts[t][k].to(COMPUTE) for t in tasks]).mean(0).to(v.dtype)
    return out
