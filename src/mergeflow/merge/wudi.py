"""WUDI-Merging: task vectors as stand-ins for each unit's inputs, a short Adam run (algorithms.md §7.2)."""

from __future__ import annotations

import torch

from mergeflow.families import Family
from mergeflow.families.open_clip_vit import OPEN_CLIP
from mergeflow.merge.common import merge_by_unit
from mergeflow.merge.registry import HParam, alpha, register


def wudi_terms(vectors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """``A = Σ_k w_k T_kᵀT_k``, ``B = Σ_k w_k T_k T_kᵀ T_k`` with ``w_k = 1/‖T_k‖²`` (a zero vector weighs 0):
    the loss ``L(τ) = Σ_k w_k ‖(τ − T_k) T_kᵀ‖²`` has the gradient ``2(τA − B)``."""
    weights = [1.0 / float(t.pow(2).sum()) if t.any() else 0.0 for t in vectors]
    a = sum(w * (t.t() @ t) for w, t in zip(weights, vectors, strict=True))
    b = sum(w * ((t @ t.t()) @ t) for w, t in zip(weights, vectors, strict=True))
    return a, b, weights


def wudi_loss(tau: torch.Tensor, vectors: list[torch.Tensor], weights: list[float]) -> float:
    return float(sum(w * ((tau - t) @ t.t()).pow(2).sum() for w, t in zip(weights, vectors, strict=True)))


def wudi_unit(vectors: list[torch.Tensor], steps: int, lr: float, losses: list | None = None) -> torch.Tensor:
    """``τ`` after ``steps`` Adam steps on ``L`` from ``τ⁽⁰⁾ = Σ_k T_k`` (the early-stopped iterate is the
    method, not the minimiser), with the closed-form gradient."""
    a, b, weights = wudi_terms(vectors)
    tau = torch.nn.Parameter(sum(vectors).clone())
    opt = torch.optim.Adam([tau], lr=lr, betas=(0.9, 0.999), eps=1e-8)
    for _ in range(steps):
        if losses is not None:
            losses.append(wudi_loss(tau.detach(), vectors, weights))
        tau.grad = 2.0 * (tau.detach() @ a - b)
        opt.step()
    return tau.detach()


@register("wudi", "WUDI-Merging", "Cheng et al., Whoever started the interference should end it: guiding data-free "
          "model merging via task vectors, ICML 2025 (arXiv 2503.08099)",
          {"alpha": alpha(1.0, "scale of the optimised task vector (the paper tunes none: 1)"),
           "steps": HParam(300, int, "Adam steps per unit", low=0, high=100000),
           "lr": HParam(1e-5, float, "Adam's learning rate", low=0.0, high=1.0, open_low=True),
           "units": HParam("linear", str, "linear: the adapter's linear units (the official code); all2d: every "
                           "2-D tensor (FusionBench)", choices=("linear", "all2d")),
           "others": HParam("pretrained", str, "every other parameter: pretrained (no task vector, the official "
                            "code) or mean (the mean task vector, FusionBench)", choices=("pretrained", "mean")),
           "split_qkv": HParam(False, bool, "optimise q, k, v of a packed in_proj_weight as three units")},
          scale="alpha", per_unit=True)
def wudi(pretrained, experts, stats=None, diagnostics=None, family: Family = OPEN_CLIP, **hp):
    """Per unit ``θ_pre + α τ⁽steps⁾``; the rest ``θ_pre`` (or ``+ α·mean T_k`` with ``others: mean``)."""
    def delta(key: str, items: list[torch.Tensor]) -> torch.Tensor:
        unit = family.unit(key).resolved()
        optimised = items[0].ndim == 2 and (hp["units"] == "all2d" or unit.kind == "linear")
        if not optimised:
            return torch.stack(items).mean(0) if hp["others"] == "mean" else torch.zeros_like(items[0])
        out = torch.empty_like(items[0])
        for rows in unit.row_blocks(items[0].shape[0], hp["split_qkv"]):
            out[rows] = wudi_unit([t[rows] for t in items], hp["steps"], hp["lr"])
        return out

    return merge_by_unit(pretrained, experts, delta, hp["alpha"], "WUDI")
