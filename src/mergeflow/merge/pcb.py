"""PCB merging: parameter competition balancing (intra- and inter-task scores, drop, rescale)."""

from __future__ import annotations

import torch

from mergeflow.merge.common import CHUNK, add_scaled, floating, kth_smallest, stacked_task_vectors, unflatten
from mergeflow.merge.registry import HParam, alpha, register


def _minmax(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
    return (x - lo) / (hi - lo).clamp(min=1e-12)


def _sorted_at(row: torch.Tensor, index: int) -> torch.Tensor:
    """``sorted(row)[index]`` (0-based) without sorting."""
    return kth_smallest(row, index + 1)


def pcb_vector(tau: torch.Tensor, ratio: float, chunk: int = CHUNK) -> torch.Tensor:
    """The merged vector of PCB for flattened task vectors ``tau`` (tasks × entries).

    Elementwise work runs over column chunks and the row thresholds come from :func:`kth_smallest` (no sort), so
    the peak is ``tau`` plus the score matrix plus a chunk: 8 ViT-B/32 task vectors fit in 8 GB.
    """
    n, d = tau.shape
    bounds = []
    for row in tau:
        magnitude = row.abs()
        bounds.append((_sorted_at(magnitude, int(0.0001 * d)), _sorted_at(magnitude, max(int(0.9999 * d) - 1, 0))))
    lo = torch.stack([b[0] for b in bounds])[:, None]
    hi = torch.stack([b[1] for b in bounds])[:, None]

    def clamped(part: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.maximum(part.abs(), lo), hi)

    def row_range(fn) -> tuple[torch.Tensor, torch.Tensor]:
        mins, maxs = [], []
        for start in range(0, d, chunk):
            x = fn(start)
            mins.append(x.amin(1))
            maxs.append(x.amax(1))
        return torch.stack(mins, 1).amin(1, keepdim=True), torch.stack(maxs, 1).amax(1, keepdim=True)

    cm_lo, cm_hi = row_range(lambda s: clamped(tau[:, s:s + chunk]))
    score = torch.empty_like(tau)
    for start in range(0, d, chunk):
        part = tau[:, start:start + chunk]
        intra = torch.exp(n * ((clamped(part) - cm_lo) / (cm_hi - cm_lo).clamp(min=1e-12)) ** 2)
        score[:, start:start + chunk] = intra * torch.tanh(part * part.sum(0, keepdim=True))
    floor = torch.stack([_sorted_at(s, min(int((1 - ratio) * d), d - 1)) for s in score])[:, None]
    s_lo, s_hi = row_range(lambda s: torch.maximum(score[:, s:s + chunk], floor))
    merged = tau.new_empty(d)
    for start in range(0, d, chunk):
        part = tau[:, start:start + chunk]
        weight = (torch.maximum(score[:, start:start + chunk], floor) - s_lo) / (s_hi - s_lo).clamp(min=1e-12)
        merged[start:start + chunk] = (weight * torch.sign(part) * clamped(part)).sum(0) / weight.sum(0).clamp(
            min=1e-12)
    return merged


@register("pcb", "PCB Merging", "Du et al., Parameter competition balancing for model merging, NeurIPS 2024",
          {"lambda": alpha(1.0, "scale of the merged vector"),
           "ratio": HParam(0.1, float, "fraction of entries kept per task", low=0.0, high=1.0, open_low=True)},
          scale="lambda")
def pcb(pretrained, experts, stats=None, diagnostics=None, *, ratio, **hp):
    """``θ_pre + λ · Σ_t score_t ∘ τ_t / Σ_t score_t`` over the whole flattened task vectors."""
    keys = floating(pretrained)
    tau = stacked_task_vectors(pretrained, experts, keys)
    like = {k: pretrained[k] for k in keys}
    return add_scaled(pretrained, unflatten(pcb_vector(tau, ratio), like, keys), hp["lambda"])
