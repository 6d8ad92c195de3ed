"""Iso-C: isotropic merging in the common subspace (flatten the spectrum of the summed task vector)."""

from __future__ import annotations

import torch

from mergeflow.merge.common import add_scaled, task_vectors
from mergeflow.merge.registry import alpha, register


def isotropic(m: torch.Tensor) -> torch.Tensor:
    """``U diag(mean σ) Vᵀ`` of ``m``."""
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    return s.mean() * (u @ vh)


@register("iso_c", "Iso-C", "Marczak et al., No task left behind: isotropic model merging, ICML 2025",
          {"alpha": alpha(1.0)}, scale="alpha")
def iso_c(pretrained, experts, stats=None, diagnostics=None, *, alpha):
    """2-D weights: ``U diag(mean σ) Vᵀ`` of ``Σ_k T_k``; other parameters: the mean task vector."""
    vectors = task_vectors(pretrained, experts)
    tasks = list(vectors)
    delta = {}
    for k in vectors[tasks[0]]:
        items = [vectors[t][k] for t in tasks]
        delta[k] = isotropic(sum(items)) if items[0].ndim == 2 else torch.stack(items).mean(0)
    return add_scaled(pretrained, delta, alpha)
