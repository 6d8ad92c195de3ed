"""Task-vector geometry: each expert's distance from the base and the angles between task vectors."""

from __future__ import annotations

import torch


def task_vector_norm_ratio(pre: dict[str, torch.Tensor], expert: dict[str, torch.Tensor]) -> float:
    """``‖T‖ / ‖θ_pre‖`` over the image encoder's floating-point weights."""
    num = sum(float((expert[k].double() - v.double()).pow(2).sum()) for k, v in pre.items() if v.is_floating_point())
    den = sum(float(v.double().pow(2).sum()) for v in pre.values() if v.is_floating_point())
    return (num / den) ** 0.5 if den > 0 else float("inf")


def task_vector_geometry(pre: dict[str, torch.Tensor], experts: dict[str, dict[str, torch.Tensor]]) -> dict:
    """Each task vector's size relative to the base and the pairwise cosines between task vectors."""
    keys = [k for k, v in pre.items() if v.is_floating_point()]
    vecs = torch.stack([torch.cat([(sd[k].double() - pre[k].double()).flatten() for k in keys])
                        for sd in experts.values()])
    unit = vecs / vecs.norm(dim=1, keepdim=True).clamp(min=1e-300)
    cos = unit @ unit.t()
    tasks = list(experts)
    pairs = {f"{a}|{b}": float(cos[i, j]) for i, a in enumerate(tasks) for j, b in enumerate(tasks) if i < j}
    return {"norm_ratio": {t: task_vector_norm_ratio(pre, experts[t]) for t in tasks}, "cosine": pairs}

