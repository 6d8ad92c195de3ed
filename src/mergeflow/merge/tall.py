"""TALL masks and Consensus merging: per-task masks of the summed task vector, chosen on validation."""

from __future__ import annotations

import torch

from mergeflow.errors import MergeflowError
from mergeflow.merge.common import add_scaled, floating, task_vectors
from mergeflow.merge.registry import HParam, alpha, register
from mergeflow.merge.task_aware import MaskedTaskModels

PAPER = "Wang et al., Localizing Task Information for Improved Model Merging and Compression, ICML 2024"
LAMBDAS = HParam([0.2, 0.3, 0.4, 0.5, 0.6], list, "candidate λ_t of each task's mask, chosen on its validation split",
                 low=0.0, high=10.0, min_items=1)


def tall_mask(own: torch.Tensor, total: torch.Tensor, lam: float) -> torch.Tensor:
    """``m_t = |T_t| > λ_t |T_MTL − T_t|``, elementwise."""
    return own.abs() > lam * (total - own).abs()


def masks_at(vectors: dict[str, dict[str, torch.Tensor]], total: dict[str, torch.Tensor],
             lambdas: dict[str, float]) -> dict[str, dict[str, torch.Tensor]]:
    """Every task's mask per tensor at its ``lambdas[t]``."""
    return {t: {k: tall_mask(vectors[t][k], total[k], lambdas[t]) for k in total} for t in lambdas}


def choose_lambdas(pretrained, vectors, total, candidates: list[float], data, diagnostics) -> dict[str, float]:
    """Per task, the candidate whose model ``θ_pre + m_t ⊙ T_MTL`` scores best on that task's validation
    split (the smaller λ on a tie)."""
    if data is None or data.val_accuracy is None:
        raise MergeflowError("TALL masks choose λ_t on validation: the merge needs the tasks' validation splits")
    if not candidates:
        raise MergeflowError("lambdas is empty: no λ_t to choose")
    chosen, curves = {}, {}
    for t in vectors:
        curve = []
        for lam in candidates:
            masked = {k: total[k] * tall_mask(vectors[t][k], total[k], lam) for k in total}
            score = data.val_accuracy(add_scaled(pretrained, masked, 1.0), t)
            curve.append({"lambda": float(lam), "val_accuracy": score})
        best = max(curve, key=lambda p: (p["val_accuracy"], -p["lambda"]))
        chosen[t], curves[t] = best["lambda"], curve
    if diagnostics is not None:
        diagnostics["lambdas"] = chosen
        diagnostics["lambda_curves"] = curves
    return chosen


def _summed(pretrained, experts):
    vectors = task_vectors(pretrained, experts)
    keys = floating(pretrained)
    return vectors, {k: sum(vectors[t][k] for t in vectors) for k in keys}


@register("tall_masks", "TALL masks", PAPER, {"lambdas": LAMBDAS}, task_aware=True, uses=("validation",))
def tall_masks(pretrained, experts, stats=None, diagnostics=None, data=None, *, lambdas):
    """``θ_t = θ_pre + m_t ⊙ T_MTL`` with ``T_MTL = Σ_t T_t``; λ_t of each mask chosen on validation."""
    vectors, total = _summed(pretrained, experts)
    chosen = choose_lambdas(pretrained, vectors, total, lambdas, data, diagnostics)
    return MaskedTaskModels(total, masks_at(vectors, total, chosen), dict.fromkeys(vectors, 1.0))


@register("consensus", "Consensus TA", PAPER,
          {"alpha": alpha(0.3), "k": HParam(2, int, "masks that must agree to keep an entry", low=0),
           "lambdas": LAMBDAS},
          scale="alpha", uses=("validation",))
def consensus(pretrained, experts, stats=None, diagnostics=None, data=None, *, alpha, k, lambdas):
    """``θ_pre + α (m ⊙ T_MTL)`` with ``m`` the entries at least ``k`` TALL masks keep."""
    vectors, total = _summed(pretrained, experts)
    masks = masks_at(vectors, total, choose_lambdas(pretrained, vectors, total, lambdas, data, diagnostics))
    kept = {key: total[key] * (sum(masks[t][key].to(torch.int32) for t in masks) >= k) for key in total}
    if diagnostics is not None:
        n = sum(v.numel() for v in total.values())
        diagnostics["kept_fraction"] = sum(int((v != 0).sum()) for v in kept.values()) / max(1, n)
    return add_scaled(pretrained, kept, alpha)
