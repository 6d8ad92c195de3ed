"""TATR: task-arithmetic trust region — drop the entries where other tasks' gradients meet a task vector."""

from __future__ import annotations

import math

import torch

from mergeflow.merge.common import COMPUTE, add_scaled, floating, kth_smallest
from mergeflow.merge.registry import HParam, Need, alpha, register


def cross_magnitude(grads: list[torch.Tensor], vectors: list[torch.Tensor]) -> torch.Tensor:
    """``Σ_{i≠j} |g_i| ∘ |T_j| = (Σ_i |g_i|) ∘ (Σ_j |T_j|) − Σ_i |g_i| ∘ |T_i|``: linear in the tasks."""
    g = [x.abs() for x in grads]
    t = [x.abs() for x in vectors]
    return sum(g) * sum(t) - sum(a * b for a, b in zip(g, t, strict=True))


@register("tatr", "TATR", "Sun et al., Task arithmetic in trust region, ICLR 2025",
          {"alpha": alpha(0.3),
           "quantile": HParam(0.99, float, "Ω quantile above which entries drop", low=0.0, high=1.0),
           "variant": HParam("gradient", str, "gradient (|g_i| at θ_pre) or zeroshot (|T_i|)",
                             choices=("gradient", "zeroshot")),
           "examples": HParam(128, int, "examples per task for the gradients", low=1, pipeline=True)},
          needs=(Need("grad", 0.0, "examples", when=lambda hp: hp["variant"] == "gradient"),), scale="alpha")
def tatr(pretrained, experts, stats=None, diagnostics=None, *, alpha, quantile, variant, **_):
    """Zero every task vector where Ω is above its quantile, then task arithmetic.

    The mask is shared by all tasks, so the masked sum is ``mask ∘ Σ_k T_k``: Ω is built one parameter at a
    time and only Ω and one parameter's task vectors are ever held, never the K flattened vectors.
    """
    keys = floating(pretrained)
    tasks = list(experts)
    flat = torch.empty(sum(pretrained[k].numel() for k in keys), dtype=COMPUTE, device=pretrained[keys[0]].device)
    omega, start = {}, 0
    for k in keys:
        vectors = [experts[t][k].to(COMPUTE) - pretrained[k].to(COMPUTE) for t in tasks]
        grads = [stats[t].grad[k].to(COMPUTE) for t in tasks] if variant == "gradient" else vectors
        omega[k] = flat[start:start + pretrained[k].numel()].view(pretrained[k].shape)
        omega[k].copy_(cross_magnitude(grads, vectors))
        start += pretrained[k].numel()
    threshold = kth_smallest(flat, math.ceil(quantile * flat.numel()))
    if diagnostics is not None:
        diagnostics["dropped_fraction"] = float((flat > threshold).sum()) / flat.numel()
    delta = {k: sum(experts[t][k].to(COMPUTE) - pretrained[k].to(COMPUTE) for t in tasks) * (omega[k] <= threshold)
             for k in keys}
    return add_scaled(pretrained, delta, alpha)
