"""Fisher merging: per-entry average weighted by each expert's diagonal Fisher."""

from __future__ import annotations

import torch

from mergeflow.merge.common import COMPUTE
from mergeflow.merge.registry import HParam, Need, register

FLOOR = 1e-6


@register("fisher", "Fisher Merging", "Matena & Raffel, Merging models with Fisher-weighted averaging, NeurIPS 2022",
          {"examples": HParam(256, int, "training examples per task for the Fisher", low=1, pipeline=True)},
          needs=(Need("fisher", 1.0, "examples"),))
def fisher(pretrained, experts, stats=None, diagnostics=None, **_):
    """``Σ_k F_k θ_k / Σ_k F_k`` with each model's Fisher divided by its global L2 norm, floored at 1e-6."""
    tasks = list(experts)
    norms = {t: torch.sqrt(sum((f.to(COMPUTE) ** 2).sum() for f in stats[t].fisher.values())).clamp(min=1e-30)
             for t in tasks}
    out = {}
    for k, v in pretrained.items():
        if not v.is_floating_point():
            out[k] = v.clone()
            continue
        thetas = torch.stack([experts[t][k].to(COMPUTE) for t in tasks])
        if all(k in stats[t].fisher for t in tasks):
            weights = torch.stack([(stats[t].fisher[k].to(COMPUTE) / norms[t]).clamp(min=FLOOR) for t in tasks])
            out[k] = ((weights * thetas).sum(0) / weights.sum(0)).to(v.dtype)
        else:
            out[k] = thetas.mean(0).to(v.dtype)
    return out
