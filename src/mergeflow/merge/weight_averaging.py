"""Weight averaging: the mean of the experts."""

from __future__ import annotations

from mergeflow.merge.common import COMPUTE
from mergeflow.merge.registry import register


@register("weight_averaging", "Weight Averaging", "Wortsman et al., Model soups, ICML 2022", {},
          per_unit=True, row_kinds=("linear", "scale", "shift", "embedding", "other"))
def weight_averaging(pretrained, experts, stats=None, diagnostics=None):
    """``mean_k θ_k``.

    Summed into one accumulator expert by expert, then divided: no (K × parameter) stack is built, and the
    float32 result is bit for bit the stacked mean's (same order of additions).
    """
    states = list(experts.values())
    out = {}
    for k, v in pretrained.items():
        if v.is_floating_point():
            total = states[0][k].to(COMPUTE, copy=True)
            for sd in states[1:]:
                total.add_(sd[k])
            out[k] = total.div_(len(states)).to(v.dtype)
        else:
            out[k] = v.clone()
    return out
