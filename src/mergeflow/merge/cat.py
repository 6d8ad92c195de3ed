"""CAT Merging: conflict-aware trimming of task vectors (algorithms.md §2)."""

from __future__ import annotations

import torch

from mergeflow.errors import MergeflowError
from mergeflow.merge.common import add_scaled, task_vectors
from mergeflow.merge.registry import HParam, Need, register
from mergeflow.merge.task_arithmetic import summed
from mergeflow.merge.units import as_matrix, from_matrix, is_layernorm, is_linear, is_shift, row_blocks

CAT_HPARAMS = {
    "alpha": HParam(0.4, float, "task-vector scale (statistics are recorded at this scale)", low=0.0, high=10.0,
                    open_low=True),
    "c": HParam(4, int, "basis size per linear unit and task", low=0),
    "lambda": HParam(5.0, float, "trade-off of drift removed against own effect lost (linear units)", low=0.0),
    "c_ln": HParam(4, int, "dimensions trimmed per LayerNorm and task", low=0),
    "lambda_ln": HParam(10.0, float, "trade-off for LayerNorm scale units", low=0.0),
    "c_shift": HParam(4, int, "dimensions each task protects per shift unit", low=0),
    "exemplars": HParam(2, int, "exemplars per task for the Grams", low=1, pipeline=True),
    "split_qkv": HParam(True, bool, "trim q, k, v of in_proj_weight as three units"),
    "eig_order": HParam("top", str, "top (the paper) or bottom (one port of the official code)",
                        choices=("top", "bottom")),
    "rescale": HParam(False, bool, "restore each task vector's norm after every trim (the official code)"),
    "linear_extra": HParam([], list, "conv1 and/or proj as extra linear units", choices=("conv1", "proj")),
}


def gram_factor(gram: torch.Tensor, rows: int, generator: torch.Generator) -> torch.Tensor:
    """``L`` with ``L Lᵀ = G``; for ``rows < d`` a randomized range finder makes it exact and cheap."""
    d = gram.shape[0]
    if rows < d:
        probe = torch.randn(d, rows + 8, generator=generator, dtype=gram.dtype)
        q, _ = torch.linalg.qr(gram @ probe)
        vals, vecs = torch.linalg.eigh(q.t() @ gram @ q)
        vecs = q @ vecs
    else:
        vals, vecs = torch.linalg.eigh(gram)
    keep = vals > vals.abs().max().clamp(min=1e-30) * 1e-10
    return vecs[:, keep] * vals[keep].sqrt()


def cat_basis(ws: list[torch.Tensor], factors: list[torch.Tensor], k: int, c: int, lam: float, order: str,
              own_all: list[torch.Tensor] | None = None):
    """Eigen-pairs of ``M_k = Σ_{i≠k} W_i (G_k − λ G_i) W_iᵀ`` chosen by ``order``; returns (basis, values, spectrum).

    ``own_all[i] = W_i L_i`` does not depend on ``k``: callers looping over k pass it once.
    """
    others = [i for i in range(len(ws)) if i != k]
    d_out = ws[0].shape[0]
    if not others or c == 0:
        return ws[0].new_zeros(d_out, 0), ws[0].new_zeros(0), ws[0].new_zeros(0)
    drift = [ws[i] @ factors[k] for i in others]  # W_i L_k: the drift term's factor
    own = [own_all[i] if own_all is not None else ws[i] @ factors[i] for i in others]  # W_i L_i
    width = sum(a.shape[1] for a in drift + own)
    if order == "bottom" or d_out <= width:
        m = sum(a @ a.t() for a in drift) - lam * sum(b @ b.t() for b in own)
        vals, vecs = torch.linalg.eigh(m)
    else:  # M_k = Z S Zᵀ with Z = [drift, own]: solve in the span of Z
        z = torch.cat(drift + own, dim=1)
        q, r = torch.linalg.qr(z)
        signs = torch.cat([z.new_ones(sum(a.shape[1] for a in drift)), z.new_full((sum(b.shape[1] for b in own),), -lam)])
        vals, u = torch.linalg.eigh((r * signs) @ r.t())
        vecs = q @ u
    if order == "top":
        idx = torch.argsort(vals, descending=True)[:c]
        idx = idx[vals[idx] > 0]
    else:
        idx = torch.argsort(vals)[:c]
    return vecs[:, idx], vals[idx], vals


def _trim_linear(key, vectors, tasks, stats, hp, generator, diag):
    blocks = row_blocks(key, as_matrix(key, vectors[tasks[0]][key]).shape[0], hp["split_qkv"])
    for t in tasks:
        if key not in stats[t].gram:
            raise MergeflowError(f"CAT: statistics of task {t!r} have no Gram for {key}")
    factors = [gram_factor(stats[t].gram[key].float(), stats[t].rows.get(key, 10**9), generator) for t in tasks]
    mats = {t: as_matrix(key, vectors[t][key]).clone() for t in tasks}
    for b, rows in enumerate(blocks):
        ws = [mats[t][rows] for t in tasks]
        own_all = [w @ f for w, f in zip(ws, factors, strict=True)]
        bases = []
        for k, t in enumerate(tasks):
            basis, chosen, spectrum = cat_basis(ws, factors, k, hp["c"], hp["lambda"], hp["eig_order"], own_all)
            bases.append(basis)
            positive = spectrum[spectrum > 0].sum()
            unit = key if len(blocks) == 1 else f"{key}[{'qkv'[b]}]"
            diag.setdefault(unit, {})[t] = {"eigenvalues": chosen.tolist(),
                                            "energy": float(chosen.clamp(min=0).sum() / positive) if positive > 0 else 0.0}
        for i, t in enumerate(tasks):
            w = ws[i].clone()
            for k in range(len(tasks)):
                if k == i or bases[k].shape[1] == 0:
                    continue
                norm = w.norm()
                w = w - bases[k] @ (bases[k].t() @ w)
                if hp["rescale"] and w.norm() > 0:
                    w = w * (norm / w.norm())
            mats[t][rows] = w
    for t in tasks:
        vectors[t][key] = from_matrix(key, mats[t], vectors[t][key])


def _apply_masks(key, vectors, tasks, masks, rescale):
    """Zero ``T_i`` on task k's mask for every i ≠ k, in task order."""
    for i, t in enumerate(tasks):
        v = vectors[t][key].clone()
        for k, mask in enumerate(masks):
            if k == i or not mask.any():
                continue
            norm = v.norm()
            v = v.masked_fill(mask.reshape(v.shape), 0.0)
            if rescale and v.norm() > 0:
                v = v * (norm / v.norm())
        vectors[t][key] = v


def _top_positive(score: torch.Tensor, count: int) -> torch.Tensor:
    mask = torch.zeros_like(score, dtype=torch.bool)
    if count > 0:
        idx = torch.argsort(score, descending=True)[:count]
        mask[idx[score[idx] > 0]] = True
    return mask


def _ln_masks(key, vectors, tasks, stats, hp):
    energy = []
    for t in tasks:
        if key not in stats[t].sqnorm:
            raise MergeflowError(f"CAT: statistics of task {t!r} have no sqnorm for {key}")
        energy.append(stats[t].sqnorm[key].float() / max(stats[t].rows.get(key, 1), 1))
    masks = []
    for k in range(len(tasks)):
        s = sum(vectors[tasks[i]][key] ** 2 * (energy[k] - hp["lambda_ln"] * energy[i])
                for i in range(len(tasks)) if i != k)
        masks.append(_top_positive(s, hp["c_ln"]) if len(tasks) > 1 else torch.zeros_like(energy[k], dtype=torch.bool))
    return masks


def _shift_masks(key, vectors, tasks, c_shift):
    masks = []
    for t in tasks:
        mag = vectors[t][key].reshape(-1).abs()
        mask = torch.zeros_like(mag, dtype=torch.bool)
        if c_shift > 0:
            mask[torch.argsort(mag, descending=True)[:c_shift]] = True
        masks.append(mask)
    return masks


@register("cat", "CAT Merging", "Sun et al., CAT Merging: a training-free approach for resolving conflicts in "
          "model merging, ICML 2025", CAT_HPARAMS, needs=(Need("gram", "alpha", "exemplars"),))
def cat(pretrained, experts, stats=None, diagnostics=None, **hp):
    """Trim each task vector of the components that conflict with other tasks, then task arithmetic.

    All bases and masks come from the untrimmed vectors; then every ``T_i`` is trimmed by every other
    task's basis or mask in task order.
    """
    vectors = task_vectors(pretrained, experts)
    tasks = list(vectors)
    generator = torch.Generator().manual_seed(0)
    extra = tuple(hp["linear_extra"])
    eig_diag: dict = {}
    masks = {}
    for key in list(vectors[tasks[0]]):
        if is_linear(key, extra):
            continue
        if is_layernorm(key):
            masks[key] = _ln_masks(key, vectors, tasks, stats, hp)
        elif is_shift(key):
            masks[key] = _shift_masks(key, vectors, tasks, hp["c_shift"])
    for key in list(vectors[tasks[0]]):
        if is_linear(key, extra):
            _trim_linear(key, vectors, tasks, stats, hp, generator, eig_diag)
    for key, unit_masks in masks.items():
        _apply_masks(key, vectors, tasks, unit_masks, hp["rescale"])
    if diagnostics is not None:
        diagnostics["units"] = eig_diag
        diagnostics["ln_masked"] = {k: [int(m.sum()) for m in v] for k, v in masks.items() if is_layernorm(k)}
    return add_scaled(pretrained, summed(vectors), hp["alpha"])
