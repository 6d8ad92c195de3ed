"""LOT Merging: the layer-wise task vector that minimises feature drift, in closed form (algorithms.md §3)."""

from __future__ import annotations

import torch

from mergeflow.families import Family
from mergeflow.families.open_clip_vit import OPEN_CLIP
from mergeflow.merge.common import COMPUTE, merge_by_unit, symmetric_eigh
from mergeflow.merge.registry import HParam, Need, alpha, register


def lot_linear(vectors: list[torch.Tensor], grams: list[torch.Tensor]) -> torch.Tensor:
    """``T* = (Σ_k T_k G_k) · pinv(Σ_k G_k)``: one eigendecomposition per unit, not one per task.

    Computed in the Grams' precision (float32 unless the features stage accumulated float64): the
    statistics carry no more than that, and the pseudo-inverse's cut-off follows it: directions below
    ``d · eps(dtype)`` of the largest eigenvalue are round-off, not features, and stay untouched.
    """
    dtype = torch.promote_types(grams[0].dtype, vectors[0].dtype)
    rhs = torch.cat([t.to(dtype) for t in vectors], dim=1) @ torch.cat([g.to(dtype) for g in grams], dim=0)
    vals, vecs = symmetric_eigh(sum(g.to(dtype) for g in grams))
    vals, vecs = vals.to(rhs.device), vecs.to(rhs.device)
    keep = vals > vals.max().clamp(min=0) * grams[0].shape[0] * torch.finfo(grams[0].dtype).eps
    basis = vecs[:, keep]
    return ((rhs @ basis) / vals[keep]) @ basis.t()


def lot_scale(vectors: list[torch.Tensor], energies: list[torch.Tensor]) -> torch.Tensor:
    """``t*[d] = Σ_k e_k[d] T_k[d] / Σ_k e_k[d]``; the plain mean where every energy is zero."""
    e = torch.stack([x.double() for x in energies])
    t = torch.stack([x.double() for x in vectors])
    total = e.sum(0)
    weighted = (e * t).sum(0) / total.clamp(min=1e-30)
    return torch.where(total > 0, weighted, t.mean(0))


def lot_embedding(vectors: list[torch.Tensor], counts: list[torch.Tensor]) -> torch.Tensor:
    """Per row ``r``: ``t*[r] = Σ_k c_k[r] T_k[r] / Σ_k c_k[r]``, the count-weighted mean; a row no exemplar
    looked up gets the plain mean of the ``T_k[r]`` (the objective does not see it)."""
    return lot_scale(vectors, [c.view(-1, *[1] * (v.ndim - 1)).expand_as(v) for c, v in zip(counts, vectors,
                                                                                          strict=True)])


def lot_tied_embedding(vectors: list[torch.Tensor], counts: list[torch.Tensor],
                       grams: list[torch.Tensor]) -> torch.Tensor:
    """A token table that is also the output projection (tied embeddings): per row ``v``,

    ``t*[v] = (Σ_k T_k[v] (c_k[v] I + G_k)) · pinv(Σ_k c_k[v] I + Σ_k G_k)``,

    the minimiser of the drift of both roles over the same tokens: ``c_k[v] ‖t − T_k[v]‖²`` of the lookups of
    row ``v`` and ``(t − T_k[v]) G_k (t − T_k[v])ᵀ`` of that row's logit (``G_k`` the Gram of the projection's
    input). One eigendecomposition of ``ΣG = QΛQᵀ`` serves every row: ``pinv(C_v I + ΣG) = Q (C_v + Λ)⁺ Qᵀ``.
    """
    dtype = torch.promote_types(grams[0].dtype, vectors[0].dtype)
    device = vectors[0].device
    t = [x.to(dtype) for x in vectors]
    c = [x.to(device=device, dtype=dtype).view(-1, 1) for x in counts]
    g = [x.to(device=device, dtype=dtype) for x in grams]
    numerator = sum(ck * tk + tk @ gk for ck, tk, gk in zip(c, t, g, strict=True))
    vals, vecs = symmetric_eigh(sum(g))
    vals, vecs = vals.to(device), vecs.to(device)
    denominator = sum(c) + vals.view(1, -1)  # (rows, d): C_v + λ_i
    tol = denominator.max().clamp(min=0) * grams[0].shape[0] * torch.finfo(grams[0].dtype).eps
    inverse = torch.where(denominator > tol, 1.0 / denominator.clamp(min=tol), torch.zeros_like(denominator))
    return ((numerator @ vecs) * inverse) @ vecs.t()


@register("lot", "LOT Merging", "Sun et al., Towards minimizing feature drift in model merging: layer-wise task "
          "vector fusion, NeurIPS 2025 (arXiv 2505.23859)",
          {"lambda": alpha(1.2, "scale of the merged task vector"),
           "exemplars": HParam(64, int, "exemplars per task for the Grams", low=1, pipeline=True)},
          needs=(Need("gram", 1.0, "exemplars"),), scale="lambda", per_unit=True,
          row_kinds=("embedding", "linear"))
def lot(pretrained, experts, stats=None, diagnostics=None, family: Family = OPEN_CLIP, **hp):
    """Linear units: Gram-weighted least squares; normalisation scales: energy-weighted mean; embeddings:
    count-weighted mean per row (a table tied to the output projection: both roles, :func:`lot_tied_embedding`);
    the rest: row-weighted mean."""
    tasks = list(experts)

    def solution(key: str, items: list[torch.Tensor]) -> torch.Tensor:
        like = items[0]
        unit = family.unit(key).resolved()
        site = unit.site
        if unit.kind == "linear" and all(site in stats[t].gram for t in tasks):
            matrix = lot_linear([unit.matrix(x) for x in items], [stats[t].gram[site] for t in tasks])
            return unit.from_matrix(matrix, like).to(COMPUTE)
        if unit.kind == "scale" and all(site in stats[t].sqnorm for t in tasks):
            return lot_scale(items, [stats[t].sqnorm[site] for t in tasks]).to(COMPUTE)
        if unit.kind == "embedding" and all(site in stats[t].counts for t in tasks):
            counts = [stats[t].counts[site].to(like.device) for t in tasks]
            out = unit.output_site
            if out is not None and out not in pretrained and all(out in stats[t].gram for t in tasks):
                return lot_tied_embedding(items, counts, [stats[t].gram[out] for t in tasks]).to(COMPUTE)
            return lot_embedding(items, counts).to(COMPUTE)
        w = torch.tensor([stats[t].row_weight(site) for t in tasks], dtype=torch.float64, device=like.device)
        return (torch.stack([x.double() for x in items]) * w.view(-1, *[1] * like.ndim)).sum(0).div(w.sum()).to(COMPUTE)

    return merge_by_unit(pretrained, experts, solution, hp["lambda"], "LOT", workers=None)
