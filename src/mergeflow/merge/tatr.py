"""TATR: task-arithmetic trust region — drop the entries where other tasks' gradients meet a task vector."""

from __future__ import annotations

import math

import torch

from mergeflow.merge.common import add_scaled, flatten, kth_smallest, task_vectors, unflatten
from mergeflow.merge.registry import HParam, Need, alpha, register
from mergeflow.merge.task_arithmetic import summed


def trust_region_mask(grads: torch.Tensor, vectors: torch.Tensor, quantile: float) -> torch.Tensor:
    """``Ω = Σ_{i≠j} |g_i| ∘ |T_j|``; True where Ω is at most its ``quantile`` (the entries kept)."""
    g, t = grads.abs(), vectors.abs()
    omega = g.sum(0) * t.sum(0) - (g * t).sum(0)
    threshold = kth_smallest(omega, math.ceil(quantile * omega.numel()))
    return omega <= threshold


@register("tatr", "TATR", "Sun et al., Task arithmetic in trust region, ICLR 2025",
          {"alpha": alpha(0.3), "quantile": HParam(0.99, float, "Ω quantile above which entries drop", low=0.0, high=1.0),
           "variant": HParam("gradient", str, "gradient (|g_i| at θ_pre) or zeroshot (|T_i|)",
                             choices=("gradient", "zeroshot")),
           "examples": HParam(128, int, "examples per task for the gradients", low=1, pipeline=True)},
          needs=(Need("grad", 0.0, "examples", when=lambda hp: hp["variant"] == "gradient"),), scale="alpha")
def tatr(pretrained, experts, stats=None, diagnostics=None, *, alpha, quantile, variant, **_):
    """Zero every task vector where Ω is above its quantile, then task arithmetic."""
    vectors = task_vectors(pretrained, experts)
    tasks = list(vectors)
    keys = list(vectors[tasks[0]])
    flat = torch.stack([flatten(vectors[t], keys) for t in tasks])
    if variant == "gradient":
        grads = torch.stack([flatten({k: stats[t].grad[k].float() for k in keys}, keys) for t in tasks])
    else:
        grads = flat
    keep = trust_region_mask(grads, flat, quantile)
    if diagnostics is not None:
        diagnostics["dropped_fraction"] = float(1 - keep.float().mean())
    masked = {t: unflatten(flat[i] * keep, vectors[t], keys) for i, t in enumerate(tasks)}
    return add_scaled(pretrained, summed(masked), alpha)
