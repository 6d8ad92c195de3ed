"""Task arithmetic: add the scaled sum of the task vectors."""

from __future__ import annotations

from mergeflow.merge.common import COMPUTE, add_scaled, floating
from mergeflow.merge.registry import alpha, register


def summed_task_vectors(pretrained, experts) -> dict:
    """``Σ_k T_k`` per floating key in float32, added task by task into one accumulator: the K task vectors
    are never held together, and the additions are those of summing them in task order."""
    states = list(experts.values())
    out = {}
    for k in floating(pretrained):
        base = pretrained[k].to(COMPUTE)
        total = states[0][k].to(COMPUTE) - base
        for sd in states[1:]:
            total.add_(sd[k].to(COMPUTE) - base)
        out[k] = total
    return out


@register("task_arithmetic", "Task Arithmetic", "Ilharco et al., Editing models with task arithmetic, ICLR 2023",
          {"alpha": alpha(0.3)}, scale="alpha", per_unit=True,
          row_kinds=("linear", "scale", "shift", "embedding", "other"))
def task_arithmetic(pretrained, experts, stats=None, diagnostics=None, *, alpha):
    """``θ_pre + α Σ_k T_k``."""
    return add_scaled(pretrained, summed_task_vectors(pretrained, experts), alpha)
