"""Iso-C: isotropic merging in the common subspace (flatten the spectrum of the summed task vector)."""

from __future__ import annotations

import torch

from mergeflow.merge.common import isotropic, merge_by_unit
from mergeflow.merge.registry import alpha, register


@register("iso_c", "Iso-C", "Marczak et al., No task left behind: isotropic model merging, ICML 2025",
          {"alpha": alpha(1.0)}, scale="alpha", per_unit=True)
def iso_c(pretrained, experts, stats=None, diagnostics=None, *, alpha):
    """2-D weights: ``U diag(mean σ) Vᵀ`` of ``Σ_k T_k``; other parameters: the mean task vector."""
    return merge_by_unit(pretrained, experts,
                         lambda key, items: isotropic(sum(items)) if items[0].ndim == 2 else torch.stack(items).mean(0),
                         alpha, "Iso-C", workers=None)
