"""TIES merging: trim, elect sign, disjoint merge."""

from __future__ import annotations

import torch

from mergeflow.merge.common import CHUNK, add_scaled, floating, kth_smallest, stacked_task_vectors, unflatten
from mergeflow.merge.registry import HParam, alpha, register

TIES_HPARAMS = {
    "alpha": alpha(0.3),
    "density": HParam(0.2, float, "fraction of each task vector's entries kept", low=0.0, high=1.0),
    "merge_func": HParam("sum", str, "disjoint merge: sum or mean", choices=("sum", "mean")),
}


def trim_(tau: torch.Tensor, density: float) -> torch.Tensor:
    """In place, per row of ``tau`` (tasks × entries): keep the entries whose magnitude is at least the
    (d − ⌊density·d⌋)-th smallest (1-based), zero the rest."""
    d = tau.shape[1]
    k = d - int(density * d)
    if k > 0:
        for row in tau:
            magnitude = row.abs()
            row.masked_fill_(magnitude < kth_smallest(magnitude, k), 0.0)
    return tau


def trim(flat: torch.Tensor, density: float) -> torch.Tensor:
    """:func:`trim_` of one flat vector, on a copy."""
    return trim_(flat[None].clone(), density)[0]


def elected_signs(trimmed: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """``sign(Σ_k trimmed_k)`` per entry (0 where the tasks cancel), over column chunks."""
    d = trimmed.shape[1]
    elected = trimmed.new_empty(d)
    for start in range(0, d, chunk):
        elected[start:start + chunk] = torch.sign(trimmed[:, start:start + chunk].sum(0))
    return elected


def ties_vector(trimmed: torch.Tensor, merge_func: str, chunk: int = CHUNK, tie_sign: float | None = None
                ) -> torch.Tensor:
    """Sign election and disjoint merge of ``trimmed`` (tasks × entries), over column chunks. Entries whose
    tasks cancel take the sign of the whole elected vector's sum (``tie_sign``: that sign computed over the
    whole model, for a part of it)."""
    d = trimmed.shape[1]
    elected = elected_signs(trimmed, chunk)
    if tie_sign is None:  # float64: a float32 sum of ±1 over more than 2²⁴ entries is not exact
        tie_sign = float(torch.sign(elected.sum(dtype=torch.float64)))
    elected[elected == 0] = tie_sign
    merged = trimmed.new_empty(d)
    for start in range(0, d, chunk):
        part, sign = trimmed[:, start:start + chunk], elected[start:start + chunk]
        agree = (part != 0) & (torch.sign(part) == sign)
        total = (part * agree).sum(0)
        if merge_func == "mean":
            total = total / agree.sum(0).clamp(min=1)
        merged[start:start + chunk] = total
    return merged


def ties_globals(parts, *, density: float, **_) -> dict:
    """What TIES computes over the whole model, from its parts one at a time (a streamed merge): each task's
    trim threshold (the ``(d − ⌊density·d⌋)``-th smallest ``|T_k|``, exact) and the sign that breaks ties.

    ``parts()`` yields ``(pretrained, experts)`` state dicts covering the model once. The threshold comes
    from a histogram of the magnitudes' top 16 bits (their order is the floats' order), then the one bucket
    that holds it read again and searched; the tie sign from the elected signs of the trimmed parts. Three
    passes over the files, never more than one part's task vectors in memory.
    """
    hist, total = None, 0
    for pre, experts in parts():
        keys = floating(pre)
        if not keys:
            continue
        bits = stacked_task_vectors(pre, experts, keys).abs_().view(torch.int32) >> 16
        counts = torch.stack([torch.bincount(row, minlength=1 << 15) for row in bits])
        hist = counts if hist is None else hist + counts
        total += bits.shape[1]
    k = total - int(density * total)
    if hist is None or k <= 0:
        return {"thresholds": [None] * (0 if hist is None else hist.shape[0]), "tie_sign": None}
    cumulative = hist.cumsum(1)
    buckets = [int(torch.searchsorted(row, k)) for row in cumulative]  # the first bucket reaching k entries
    before = [int(cumulative[i, b - 1]) if b else 0 for i, b in enumerate(buckets)]
    found: list[list[torch.Tensor]] = [[] for _ in buckets]
    for pre, experts in parts():
        keys = floating(pre)
        if keys:
            magnitude = stacked_task_vectors(pre, experts, keys).abs_()
            bits = magnitude.view(torch.int32) >> 16
            for i, b in enumerate(buckets):
                found[i].append(magnitude[i][bits[i] == b])
    thresholds = [kth_smallest(torch.cat(f), k - n) for f, n in zip(found, before, strict=True)]
    signs = torch.zeros((), dtype=torch.float64)
    for pre, experts in parts():
        keys = floating(pre)
        if keys:
            trimmed = trim_with(stacked_task_vectors(pre, experts, keys), thresholds)
            signs += elected_signs(trimmed).sum(dtype=torch.float64)
    return {"thresholds": thresholds, "tie_sign": float(torch.sign(signs))}


def trim_with(tau: torch.Tensor, thresholds: list) -> torch.Tensor:
    """In place: each task's entries below its threshold (None: keep all) zeroed, as :func:`trim_` does."""
    for row, threshold in zip(tau, thresholds, strict=True):
        if threshold is not None:
            row.masked_fill_(row.abs() < threshold, 0.0)
    return tau


@register("ties", "TIES-Merging", "Yadav et al., TIES-Merging, NeurIPS 2023", TIES_HPARAMS, scale="alpha",
          per_unit=True, row_kinds=("linear", "scale", "shift", "embedding", "other"), prepare=ties_globals)
def ties(pretrained, experts, stats=None, diagnostics=None, *, alpha, density, merge_func, thresholds=None,
         tie_sign=None):
    """``θ_pre + α · disjoint_merge(elect(trim(T_k)))`` over the whole flattened task vectors; for a part of
    the model, the whole model's ``thresholds`` and ``tie_sign`` (:func:`ties_globals`)."""
    keys = floating(pretrained)
    tau = stacked_task_vectors(pretrained, experts, keys)
    tau = trim_(tau, density) if thresholds is None else trim_with(tau, thresholds)
    return add_scaled(pretrained, unflatten(ties_vector(tau, merge_func, tie_sign=tie_sign), pretrained, keys), alpha)
