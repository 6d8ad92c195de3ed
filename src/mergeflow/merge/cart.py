"""CART: centred arithmetic with rank-reduced task vectors (algorithms.md §7.3)."""

from __future__ import annotations

import math

import torch

from mergeflow.families import Family
from mergeflow.families.open_clip_vit import OPEN_CLIP
from mergeflow.merge.common import merge_by_unit, top_singular
from mergeflow.merge.registry import HParam, alpha, register


def low_rank(m: torch.Tensor, ratio: float) -> torch.Tensor:
    """``m``'s best rank-``q`` approximation, ``q = max(1, ⌊ratio · r⌋)``: only the ``q`` triplets kept are
    computed (eigenpairs of the smaller Gram), not a full SVD."""
    q = max(1, math.floor(ratio * min(m.shape)))
    u, s, v = top_singular(m, q)
    return (u * s) @ v.t()


def cart_delta(vectors: list[torch.Tensor], ratio: float, lam: float, linear: bool) -> torch.Tensor:
    """``T̄ + λ Σ_k LR(T_k − T̄)``; for a parameter that is not a linear unit ``LR`` is the identity, so the
    centred vectors cancel and it ends at the weight average."""
    mean = torch.stack(vectors).mean(0)
    if not linear:
        return mean
    return mean + lam * sum(low_rank(v - mean, ratio) for v in vectors)


@register("cart", "CART", "Choi et al., Revisiting weight averaging for model merging (CART: centered arithmetic "
          "with rank-reduced task vectors), arXiv 2412.12153",
          {"lambda": alpha(2.0, "scale of the low-rank centred task vectors added to the weight average"),
           "rank_ratio": HParam(0.12, float, "share of each linear unit's rank kept", low=0.0, high=1.0,
                                open_low=True)},
          scale="lambda", per_unit=True)
def cart(pretrained, experts, stats=None, diagnostics=None, family: Family = OPEN_CLIP, **hp):
    """``θ_pre + T̄ + λ Σ_k LR(T_k − T̄)`` per linear unit (the family's, whole); the weight average elsewhere."""
    ratio, lam = hp["rank_ratio"], hp["lambda"]
    return merge_by_unit(pretrained, experts,
                         lambda key, items: cart_delta(items, ratio, lam, family.unit(key).resolved().kind == "linear"
                                                       and items[0].ndim == 2), 1.0, "CART", workers=None)
