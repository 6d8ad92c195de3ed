"""EMR-Merging: elect a unified task vector, then a mask and a rescaler per task (task-aware)."""

from __future__ import annotations

import torch

from mergeflow.merge.common import COMPUTE, floating
from mergeflow.merge.registry import register
from mergeflow.merge.task_aware import MaskedTaskModels


def elect(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(``T_uni``, agreement masks) of stacked task vectors (tasks × …).

    ``σ = sign(Σ_t T_t)`` with 0 → −1; ``T_uni = σ ⊙ max_{t: T_t σ > 0} |T_t|``; ``m_t = T_t ⊙ σ > 0``.
    """
    sigma = torch.sign(stack.sum(0))
    sigma[sigma == 0] = -1
    agree = stack * sigma > 0
    return sigma * (stack.abs() * agree).amax(0), agree


@register("emr", "EMR-Merging", "Huang et al., EMR-Merging: Tuning-Free High-Performance Model Merging, "
          "NeurIPS 2024", {}, task_aware=True)
def emr(pretrained, experts, stats=None, diagnostics=None, data=None):
    """``θ_t = θ_pre + λ_t · m_t ⊙ T_uni`` with ``λ_t = Σ_n mean|T_t[n]| / Σ_n mean|m_t[n] ⊙ T_uni[n]|``."""
    keys = floating(pretrained)
    tasks = list(experts)
    vector, masks = {}, {t: {} for t in tasks}
    own = dict.fromkeys(tasks, 0.0)
    kept = dict.fromkeys(tasks, 0.0)
    for key in keys:  # one parameter's task vectors at a time, never the K whole task vectors
        base = pretrained[key].to(COMPUTE)
        stack = torch.stack([experts[t][key].to(COMPUTE) - base for t in tasks])
        uni, agree = elect(stack)
        vector[key] = uni
        for i, t in enumerate(tasks):
            masks[t][key] = agree[i]
            own[t] += float(stack[i].abs().mean(dtype=torch.float64))
            kept[t] += float((uni * agree[i]).abs().mean(dtype=torch.float64))
    scales = {t: own[t] / kept[t] if kept[t] > 0 else 0.0 for t in tasks}
    if diagnostics is not None:
        diagnostics["rescalers"] = scales
        diagnostics["mask_density"] = {t: _density(masks[t]) for t in tasks}
    return MaskedTaskModels(vector, masks, scales)


def _density(masks: dict[str, torch.Tensor]) -> float:
    total = sum(m.numel() for m in masks.values())
    return sum(int(m.sum()) for m in masks.values()) / max(1, total)
