"""PCB merging: parameter competition balancing (intra- and inter-task scores, drop, rescale)."""

from __future__ import annotations

import torch

from mergeflow.merge.common import (
    CHUNK,
    add_scaled,
    floating,
    kth_smallest,
    kth_smallest_many,
    stacked_task_vectors,
    unflatten,
)
from mergeflow.merge.registry import HParam, alpha, register


def _minmax(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
    return (x - lo) / (hi - lo).clamp(min=1e-12)


def _sorted_at(row: torch.Tensor, index: int) -> torch.Tensor:
    """``sorted(row)[index]`` (0-based) without sorting."""
    return kth_smallest(row, index + 1)


def pcb_vector(tau: torch.Tensor, ratio: float, chunk: int = CHUNK) -> torch.Tensor:
    """The merged vector of PCB for flattened task vectors ``tau`` (tasks × entries).

    Elementwise work runs over column chunks and the row thresholds come from :func:`kth_smallest` (no
    sort), so the peak is ``tau`` plus the score matrix plus a chunk: 8 ViT-B/32 task vectors fit in 8 GB.
    Two passes over ``tau`` after the thresholds: the min-max ranges of the clamped magnitudes and of the
    floored scores need none of their own, since a clamp and a floor are monotone (the range of
    ``clamp(x, lo, hi)`` is the clamped range of ``x``).
    """
    n, d = tau.shape
    lo, hi, cm_lo, cm_hi = (tau.new_empty(n, 1) for _ in range(4))
    for i, row in enumerate(tau):
        magnitude = row.abs()
        lo[i], hi[i] = kth_smallest_many(magnitude, [int(0.0001 * d) + 1, max(int(0.9999 * d) - 1, 0) + 1])
        cm_lo[i], cm_hi[i] = magnitude.min().clamp(lo[i, 0], hi[i, 0]), magnitude.max().clamp(lo[i, 0], hi[i, 0])
    cm_range = (cm_hi - cm_lo).clamp(min=1e-12)
    bounds = list(zip(lo[:, 0].tolist(), hi[:, 0].tolist(), strict=True))  # float32 values, exact as floats

    def clamped(part: torch.Tensor) -> torch.Tensor:
        """``clamp(|part|, lo, hi)`` row by row with scalar bounds: a contiguous pass per row, where bounds
        broadcast from a column are several times slower."""
        out = part.abs()
        for row, (low, high) in zip(out, bounds, strict=True):
            row.clamp_(low, high)
        return out

    score = torch.empty_like(tau)
    s_min, s_max = [], []
    for start in range(0, d, chunk):
        part = tau[:, start:start + chunk]
        intra = clamped(part).sub_(cm_lo).div_(cm_range).pow_(2).mul_(n).exp_()
        inter = torch.mul(part, part.sum(0, keepdim=True)).tanh_()
        out = torch.mul(intra, inter, out=score[:, start:start + chunk])
        s_min.append(out.amin(1))
        s_max.append(out.amax(1))
    floor = torch.stack([_sorted_at(s, min(int((1 - ratio) * d), d - 1)) for s in score])[:, None]
    s_lo = torch.maximum(torch.stack(s_min, 1).amin(1, keepdim=True), floor)
    s_hi = torch.maximum(torch.stack(s_max, 1).amax(1, keepdim=True), floor)
    s_range = (s_hi - s_lo).clamp(min=1e-12)
    merged = tau.new_empty(d)
    for start in range(0, d, chunk):
        part = tau[:, start:start + chunk]
        weight = torch.maximum(score[:, start:start + chunk], floor).sub_(s_lo).div_(s_range)
        merged[start:start + chunk] = (weight * torch.sign(part)).mul_(clamped(part)).sum(0) / weight.sum(0).clamp(
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
