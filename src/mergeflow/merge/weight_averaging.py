"""Weight averaging: the mean of the experts."""

from __future__ import annotations

import torch

from mergeflow.merge.common import COMPUTE
from mergeflow.merge.registry import register


@register("weight_averaging", "Weight Averaging", "Wortsman et al., Model soups, ICML 2022", {},
          per_unit=True, row_kinds=("linear", "scale", "shift", "embedding", "other"))
def weight_averaging(pretrained, experts, stats=None, diagnostics=None):
    """``mean_k θ_k``."""
    out = {}
    for k, v in pretrained.items():
        if v.is_floating_point():
            out[k] = torch.stack([sd[k].to(COMPUTE) for sd in experts.values()]).mean(0).to(v.dtype)
        else:
            out[k] = v.clone()
    return out
