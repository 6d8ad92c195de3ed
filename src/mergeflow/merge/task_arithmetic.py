"""Task arithmetic: add the scaled sum of the task vectors."""

from __future__ import annotations

from mergeflow.merge.common import add_scaled, task_vectors
from mergeflow.merge.registry import alpha, register


def summed(vectors):
    keys = next(iter(vectors.values())).keys()
    return {k: sum(tv[k] for tv in vectors.values()) for k in keys}


@register("task_arithmetic", "Task Arithmetic", "Ilharco et al., Editing models with task arithmetic, ICLR 2023",
          {"alpha": alpha(0.3)}, scale="alpha", per_unit=True,
          row_kinds=("linear", "scale", "shift", "embedding", "other"))
def task_arithmetic(pretrained, experts, stats=None, diagnostics=None, *, alpha):
    """``θ_pre + α Σ_k T_k``."""
    return add_scaled(pretrained, summed(task_vectors(pretrained, experts)), alpha)
