"""PCB merging: parameter competition balancing (intra- and inter-task scores, drop, rescale)."""

from __future__ import annotations

import torch

from mergeflow.merge.common import add_scaled, flatten, kth_smallest, task_vectors, unflatten
from mergeflow.merge.registry import HParam, alpha, register


def _minmax(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
    return (x - lo) / (hi - lo).clamp(min=1e-12)


def _sorted_at(row: torch.Tensor, index: int) -> torch.Tensor:
    """``sorted(row)[index]`` (0-based) without sorting."""
    return kth_smallest(row, index + 1)


def pcb_vector(tau: torch.Tensor, ratio: float) -> torch.Tensor:
    """The merged vector of PCB for flattened task vectors ``tau`` (tasks × entries)."""
    n, d = tau.shape
    mag = tau.abs()
    lo = torch.stack([_sorted_at(m, int(0.0001 * d)) for m in mag])[:, None]
    hi = torch.stack([_sorted_at(m, max(int(0.9999 * d) - 1, 0)) for m in mag])[:, None]
    clamped_mag = torch.minimum(torch.maximum(mag, lo), hi)
    tau_c = torch.sign(tau) * clamped_mag
    intra = torch.exp(n * _minmax(clamped_mag) ** 2)
    inter = torch.tanh(tau * tau.sum(0, keepdim=True))
    score = intra * inter
    floor = torch.stack([_sorted_at(s, min(int((1 - ratio) * d), d - 1)) for s in score])[:, None]
    score = _minmax(torch.maximum(score, floor))
    return (score * tau_c).sum(0) / score.sum(0).clamp(min=1e-12)


@register("pcb", "PCB Merging", "Du et al., Parameter competition balancing for model merging, NeurIPS 2024",
          {"lambda": alpha(1.0, "scale of the merged vector"),
           "ratio": HParam(0.1, float, "fraction of entries kept per task", low=0.0, high=1.0, open_low=True)},
          scale="lambda")
def pcb(pretrained, experts, stats=None, diagnostics=None, *, ratio, **hp):
    """``θ_pre + λ · Σ_t score_t ∘ τ_t / Σ_t score_t`` over the whole flattened task vectors."""
    vectors = task_vectors(pretrained, experts)
    like = next(iter(vectors.values()))
    keys = list(like)
    tau = torch.stack([flatten(tv, keys) for tv in vectors.values()])
    return add_scaled(pretrained, unflatten(pcb_vector(tau, ratio), like, keys), hp["lambda"])
