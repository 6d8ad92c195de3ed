"""TSV-Merge: task singular vectors, decorrelated by orthogonalising the concatenated bases."""

from __future__ import annotations

import torch

from mergeflow.merge.common import merge_by_unit, polar_factor, top_singular
from mergeflow.merge.registry import alpha, register


def polar(m: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor ``U Vᵀ`` of ``m``."""
    return polar_factor(m)[0]


def tsv_matrix(deltas: list[torch.Tensor]) -> torch.Tensor:
    """Keep each task's top ⌊r/K⌋ singular triplets (at least 1), orthogonalise, rebuild."""
    k = len(deltas)
    r = max(1, min(deltas[0].shape) // k)
    us, ss, vs = zip(*(top_singular(d, r) for d in deltas), strict=True)
    u, s, v = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1)
    return (polar(u) * s) @ polar(v).t()


@register("tsv", "TSV-Merge", "Gargiulo et al., Task singular vectors, CVPR 2025", {"alpha": alpha(1.0)}, scale="alpha",
          per_unit=True)
def tsv(pretrained, experts, stats=None, diagnostics=None, *, alpha):
    """2-D weights: orthogonalised task singular vectors; other parameters: the mean task vector."""
    return merge_by_unit(pretrained, experts,
                         lambda key, items: tsv_matrix(items) if items[0].ndim == 2 else torch.stack(items).mean(0),
                         alpha, "TSV", workers=None)
