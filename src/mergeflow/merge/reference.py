"""Plain CAT and LOT, loop by loop from the formulas of ``docs/algorithms.md`` (sections 2 and 3).

These are the readable oracles of the fast implementations in :mod:`mergeflow.merge.cat` and
:mod:`mergeflow.merge.lot`, which avoid forming ``M_k``, factor the Grams, solve in a span, fuse the ordered
projections and run units on threads. Here every quantity is formed explicitly, in float64, one task at a
time, in the order the specification states it. Slow on purpose; used by the tests, never by the pipeline.
"""

from __future__ import annotations

import torch

from mergeflow.families import Family
from mergeflow.families.open_clip_vit import OPEN_CLIP
from mergeflow.merge.cat import POSITIVE


def _vectors(pretrained, experts) -> dict[str, dict[str, torch.Tensor]]:
    return {t: {k: sd[k].double() - v.double() for k, v in pretrained.items() if v.is_floating_point()}
            for t, sd in experts.items()}


def _merged(pretrained, summed: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    return {k: (v.double() + scale * summed[k]).to(v.dtype) if k in summed else v.clone()
            for k, v in pretrained.items()}


# --- CAT ----------------------------------------------------------------------------------------------
def cat_basis(ws: list[torch.Tensor], grams: list[torch.Tensor], k: int, c: int, lam: float,
              order: str) -> torch.Tensor:
    """Task k's basis: eigenvectors of ``M_k = Σ_{i≠k} W_i (G_k − λ G_i) W_iᵀ``.

    ``top``: the c largest eigenvalues, only the positive ones (above ``POSITIVE`` of the scale
    ``tr Σ_{i≠k} W_i (G_k + λ G_i) W_iᵀ``, where round-off ends); ``bottom``: the c smallest (the ascending
    order one port of the official code takes).
    """
    d_out = ws[0].shape[0]
    if len(ws) < 2 or c == 0:
        return torch.zeros(d_out, 0, dtype=torch.float64)
    m = torch.zeros(d_out, d_out, dtype=torch.float64)
    scale = 0.0
    for i, w in enumerate(ws):
        if i != k:
            m += w @ (grams[k] - lam * grams[i]) @ w.t()
            scale += float(torch.trace(w @ (grams[k] + lam * grams[i]) @ w.t()))
    vals, vecs = torch.linalg.eigh(m)  # ascending
    if order == "bottom":
        return vecs[:, :c]
    chosen = [j for j in reversed(range(d_out))][:c]
    chosen = [j for j in chosen if vals[j] > POSITIVE * scale]
    return vecs[:, chosen]


def _trim_in_order(v: torch.Tensor, steps: list, rescale: bool) -> torch.Tensor:
    """Apply each step (a function of the vector) in order; with ``rescale`` restore the norm after each."""
    for step in steps:
        norm = v.norm()
        v = step(v)
        if rescale and v.norm() > 0:
            v = v * (norm / v.norm())
    return v


def cat_reference(pretrained, experts, stats, *, alpha, c, lam, c_ln, lambda_ln, c_shift, split_qkv=True,
                  eig_order="top", rescale=False, linear_extra=(), vocabulary="skip",
                  family: Family = OPEN_CLIP) -> dict[str, torch.Tensor]:
    """CAT Merging as specified: bases and masks from the untrimmed vectors, then every ``T_i`` trimmed by
    every other task's basis or mask in task order, then ``θ_pre + α Σ_i T_i``."""
    tasks = list(experts)
    n = len(tasks)
    vectors = _vectors(pretrained, experts)
    summed = {}
    for key in vectors[tasks[0]]:
        vecs = [vectors[t][key] for t in tasks]
        unit = family.unit(key).resolved(tuple(linear_extra), vocabulary=vocabulary == "trim")
        if unit.kind == "linear":
            mats = [unit.matrix(v) for v in vecs]
            grams = [stats[t].gram[unit.site].double() for t in tasks]
            total = torch.zeros_like(mats[0])
            for rows in unit.row_blocks(mats[0].shape[0], split_qkv):
                ws = [m[rows] for m in mats]
                bases = [cat_basis(ws, grams, k, c, lam, eig_order) for k in range(n)]
                for i, w in enumerate(ws):
                    steps = [lambda x, b=b: x - b @ (b.t() @ x) for k, b in enumerate(bases) if k != i and b.shape[1]]
                    total[rows] += _trim_in_order(w, steps, rescale)
            summed[key] = unit.from_matrix(total, vecs[0])
            continue
        if unit.kind == "scale":
            energy = [stats[t].energy(unit.site).double() for t in tasks]
            masks = []
            for k in range(n):
                score = torch.zeros_like(vecs[0])
                for i in range(n):
                    if i != k:
                        score += vecs[i] ** 2 * (energy[k] - lambda_ln * energy[i])
                masks.append(_top_positive(score, c_ln if n > 1 else 0))
        elif unit.kind == "shift":
            masks = [_top_positive(v.abs().flatten() + 1.0, c_shift) for v in vecs]  # + 1: zeros may be chosen
        else:
            summed[key] = sum(vecs)
            continue
        total = torch.zeros_like(vecs[0])
        for i, v in enumerate(vecs):
            steps = [lambda x, m=m: x.masked_fill(m.reshape(x.shape), 0.0) for k, m in enumerate(masks)
                     if k != i and m.any()]
            total += _trim_in_order(v, steps, rescale)
        summed[key] = total
    return _merged(pretrained, summed, alpha)


def _top_positive(score: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` entries with the largest score, among those with a positive score."""
    mask = torch.zeros(score.numel(), dtype=torch.bool)
    order = sorted(range(score.numel()), key=lambda j: -float(score.flatten()[j]))
    for j in order[:count]:
        if score.flatten()[j] > 0:
            mask[j] = True
    return mask.view(score.shape)


# --- LOT ----------------------------------------------------------------------------------------------
def lot_reference(pretrained, experts, stats, *, lam, family: Family = OPEN_CLIP) -> dict[str, torch.Tensor]:
    """LOT Merging as specified: per linear unit ``(Σ_k W_k G_k) pinv(Σ_k G_k)``, per normalisation scale the
    ``sqnorm``-weighted mean, per embedding row the count-weighted mean (the plain mean for a row no task
    looked up; a table tied to the output projection: each row's least squares over both roles), elsewhere
    the row-weighted mean; then ``θ_pre + λ T*``."""
    tasks = list(experts)
    vectors = _vectors(pretrained, experts)
    summed = {}
    for key in vectors[tasks[0]]:
        vecs = [vectors[t][key] for t in tasks]
        unit = family.unit(key).resolved()
        site = unit.site
        if unit.kind == "linear" and all(site in stats[t].gram for t in tasks):
            grams = [stats[t].gram[site].double() for t in tasks]
            rhs = sum(unit.matrix(v) @ g for v, g in zip(vecs, grams, strict=True))
            total = sum(grams)
            cutoff = total.shape[0] * torch.finfo(stats[tasks[0]].gram[site].dtype).eps
            solution = rhs @ torch.linalg.pinv(total, rtol=cutoff, hermitian=True)
            summed[key] = unit.from_matrix(solution, vecs[0])
        elif (unit.kind == "embedding" and unit.output_site is not None and unit.output_site not in pretrained
              and all(site in stats[t].counts and unit.output_site in stats[t].gram for t in tasks)):
            # tied to the output projection: each row's own system, (Σ_k T_k[v] A_k[v]) pinv(Σ_k A_k[v]) with
            # A_k[v] = c_k[v] I + G_k
            grams = [stats[t].gram[unit.output_site].double() for t in tasks]
            counts = [stats[t].counts[site].double() for t in tasks]
            eye = torch.eye(grams[0].shape[0], dtype=torch.float64)
            rows = []
            for v in range(vecs[0].shape[0]):
                a = [c[v] * eye + g for c, g in zip(counts, grams, strict=True)]
                rhs = sum(x[v].double() @ ak for x, ak in zip(vecs, a, strict=True))
                cutoff = eye.shape[0] * torch.finfo(stats[tasks[0]].gram[unit.output_site].dtype).eps
                rows.append(rhs @ torch.linalg.pinv(sum(a), rtol=cutoff, hermitian=True))
            summed[key] = torch.stack(rows)
        elif unit.kind in ("scale", "embedding") and all(site in getattr(stats[t], "sqnorm" if unit.kind == "scale"
                                                                         else "counts") for t in tasks):
            if unit.kind == "scale":
                energy = [stats[t].sqnorm[site].double() for t in tasks]
            else:  # one count per table row, the same for every entry of the row
                energy = [stats[t].counts[site].double().view(-1, 1).expand_as(vecs[0]) for t in tasks]
            weight = sum(energy)
            weighted = sum(e * v for e, v in zip(energy, vecs, strict=True)) / weight.clamp(min=1e-30)
            summed[key] = torch.where(weight > 0, weighted, sum(vecs) / len(vecs))
        else:
            if stats[tasks[0]].weighting == "task":
                rows = [1.0 for _ in tasks]
            else:
                rows = [float(stats[t].rows.get(site or key, max(stats[t].rows.values(), default=1))) for t in tasks]
            summed[key] = sum(r * v for r, v in zip(rows, vecs, strict=True)) / sum(rows)
    return _merged(pretrained, summed, lam)
