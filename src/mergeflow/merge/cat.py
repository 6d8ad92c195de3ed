"""CAT Merging: conflict-aware trimming of task vectors (algorithms.md §2)."""

from __future__ import annotations

import numpy as np
import torch

from mergeflow.errors import MergeflowError
from mergeflow.families import Family, Unit
from mergeflow.families.open_clip_vit import OPEN_CLIP
from mergeflow.merge.common import add_outer_lower_, extreme_eigh, merge_by_unit
from mergeflow.merge.registry import HParam, Need, register

CAT_HPARAMS = {
    "alpha": HParam(0.4, float, "task-vector scale (statistics are recorded at this scale; auto: one set of "
                    "statistics and one merge per value of evaluate.scale_grid, the best on validation kept)",
                    low=0.0, high=10.0, open_low=True, auto=True),
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
    "vocabulary": HParam("skip", str, "an untied vocabulary projection (lm_head): skip (summed untrimmed, as task "
                         "arithmetic) or trim (as any linear unit)", choices=("skip", "trim")),
}


def gram_factor(gram: torch.Tensor, rows: int) -> torch.Tensor:
    """``L`` with ``L Lᵀ = G``, at most ``rows`` columns wide when ``rows < d``.

    A Gram of ``rows`` feature rows has rank at most ``rows``, so a pivoted Cholesky factorisation is exact
    after that many steps and costs ``d · rows²`` instead of the ``d²`` products of a range finder. The
    steps run in float64 on the host: each is a handful of vector operations, for which NumPy's per-call
    cost is far below torch's. Without a row count
    (``rows ≥ d``) the factor comes from a full eigendecomposition, its null space dropped.
    """
    d = gram.shape[0]
    if rows >= d:
        vals, vecs = torch.linalg.eigh(gram)
        keep = vals > vals.abs().max().clamp(min=1e-30) * 1e-10
        return vecs[:, keep] * vals[keep].sqrt()
    g = gram.detach().cpu().numpy()
    residual = np.diagonal(g).astype(np.float64)  # diagonal of G − L Lᵀ so far
    tol = residual.max() * 1e-10
    factor = np.zeros((rows, d))  # row j is column j of L
    done = 0
    while done < rows:
        pivot = int(residual.argmax())
        if residual[pivot] <= tol:
            break
        col = g[pivot].astype(np.float64)  # G is symmetric: row = column
        if done:
            col -= factor[:done, pivot] @ factor[:done]
        col *= 1.0 / np.sqrt(residual[pivot])
        factor[done] = col
        residual -= col * col
        residual[pivot] = 0.0
        done += 1
    return torch.from_numpy(factor[:done].T.copy()).to(device=gram.device, dtype=gram.dtype)


# An eigenvalue of M_k counts as positive above this share of its scale, tr Σ_{i≠k} W_i (G_k + λ G_i) W_iᵀ:
# below it, a float32 eigensolver's round-off decides the sign, and a null-space direction of a rank-deficient
# M_k (few exemplar rows, a zero Gram) would be trimmed at random.
POSITIVE = 1e-5


def cat_bases(ws: list[torch.Tensor], factors: list[torch.Tensor], c: int, lam: float, order: str):
    """For every task k, the basis of ``M_k = Σ_{i≠k} W_i (G_k − λ G_i) W_iᵀ`` chosen by ``order``.

    ``factors[k] = L_k`` with ``L_k L_kᵀ = G_k``. Returns, per k, ``(basis, eigenvalues, drift)`` with
    ``drift = tr Σ_{i≠k} W_i G_k W_iᵀ``, the whole drift the other tasks cause on task k's inputs.

    ``M_k`` is never built from the d_in × d_in Grams: one product ``[W_1; …; W_K] [L_1 … L_K]`` gives
    every ``W_i L_j``; the drift term is ``Y_k Y_kᵀ`` with ``Y_k = [W_i L_k]_{i≠k}`` and the own term
    ``X_k X_kᵀ`` with ``X_k = [W_i L_i]_{i≠k}``. When ``d_out`` is at most their joint width, ``M_k`` is
    formed (d_out²) and only its c extreme eigenpairs are computed; otherwise the problem is solved in
    the span of ``[Y_k, X_k]``: a Householder QR ``Q R``, the width-sized ``R diag(1, −λ) Rᵀ``, and ``Q``
    applied to the c chosen vectors only.
    """
    n = len(ws)
    d_out = ws[0].shape[0]
    if n < 2 or c == 0:
        return [(ws[0].new_zeros(d_out, 0), ws[0].new_zeros(0), 0.0) for _ in ws]
    offsets = [0]
    for f in factors:
        offsets.append(offsets[-1] + f.shape[1])
    # every L_jᵀ W_iᵀ in one (Σr × d_in)·(d_in × K·d_out) product (one large product beats K small ones),
    # laid out so that each (i, j) block's rows are contiguous: the gathers below copy whole rows
    products = torch.cat(factors, dim=1).t() @ torch.stack(ws).reshape(n * d_out, -1).t()
    blocks = [products[offsets[j]:offsets[j + 1]] for j in range(n)]  # row j: [L_jᵀ W_iᵀ]_i, contiguous
    own = [blocks[i][:, i * d_out:(i + 1) * d_out] for i in range(n)]  # L_iᵀ W_iᵀ
    # ‖W_i L_j‖² for every pair, in one pass: row j, column i
    energy = torch.stack([torch.linalg.vector_norm(b.view(len(b), n, d_out), dim=(0, 2)) ** 2 for b in blocks])
    own_total = None
    out = []
    for k in range(n):
        others = [i for i in range(n) if i != k]
        drift_trace = float(energy[k].sum() - energy[k, k])
        scale = drift_trace + lam * sum(float(energy[i, i]) for i in others)
        w_drift = (n - 1) * (offsets[k + 1] - offsets[k])
        width = w_drift + sum(offsets[i + 1] - offsets[i] for i in others)
        if order == "bottom" or d_out <= width:
            if own_total is None:
                own_total = add_outer_lower_(products.new_zeros(d_out, d_out), torch.cat(own).t())
            # Σ_i W_i G_k W_iᵀ (every i: blocks[k] is contiguous, no gather) − λ Σ_i W_i G_i W_iᵀ, then the
            # i = k terms put right: − W_k G_k W_kᵀ + λ W_k G_k W_kᵀ
            m = add_outer_lower_(own_total * -lam, blocks[k].view(len(blocks[k]) * n, d_out).t())
            vals, vecs = extreme_eigh(add_outer_lower_(m, own[k].t(), lam - 1.0), c, order)
        else:
            # zᵀ = [Y_k, X_k]ᵀ filled in place, so that z is column-major, as LAPACK wants it: no copy in geqrf
            zt = products.new_empty(width, d_out)
            rows_k = len(blocks[k])
            torch.index_select(blocks[k].view(rows_k, n, d_out), 1, torch.tensor(others, device=products.device),
                               out=zt[:w_drift].view(rows_k, n - 1, d_out))
            row = w_drift
            for i in others:
                zt[row:row + own[i].shape[0]] = own[i]
                row += own[i].shape[0]
            z = zt.t()
            a, tau = torch.geqrf(z)
            r = a[:width].triu()
            # R diag(1…, −λ…) Rᵀ by column blocks: the drift block of R is upper triangular (zero below w_drift)
            reduced = add_outer_lower_(r.new_zeros(width, width), r[:, w_drift:], -lam)
            reduced[:w_drift, :w_drift] += add_outer_lower_(r.new_zeros(w_drift, w_drift), r[:w_drift, :w_drift])
            vals, u = extreme_eigh(reduced, c, "top")
            u = u.to(z.device)
            vecs = torch.ormqr(a, tau, torch.cat([u, u.new_zeros(d_out - width, u.shape[1])]))
        vals, vecs = vals.to(ws[0].device), vecs.to(ws[0].device)
        if order == "top":
            idx = torch.argsort(vals, descending=True)
            idx = idx[vals[idx] > POSITIVE * scale]
        else:
            idx = torch.argsort(vals)
        out.append((vecs[:, idx], vals[idx], drift_trace))
    return out


def ordered_projection(bases: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, V)`` with ``I − U Vᵀ = (I − B_m B_mᵀ) ⋯ (I − B_1 B_1ᵀ)``, the projections in the given order
    (width Σ c: never a d_out × d_out matrix)."""
    u = torch.cat(bases, dim=1)
    v = u.clone()
    done = bases[0].shape[1]
    for basis in bases[1:]:
        # (I − B Bᵀ)(I − U Vᵀ) = I − [U, B] [V, B − V (Uᵀ B)]ᵀ
        v[:, done:done + basis.shape[1]] -= v[:, :done] @ (u[:, :done].t() @ basis)
        done += basis.shape[1]
    return u, v


def project_out(w: torch.Tensor, bases: list[torch.Tensor], rescale: bool) -> torch.Tensor:
    """``W ← (I − B_k B_kᵀ) W`` for each basis in order; with ``rescale``, ``W``'s norm is restored after each.

    Without rescaling the ordered product of projections is applied at once (:func:`ordered_projection`):
    one pass over ``W`` instead of K − 1.
    """
    bases = [b for b in bases if b.shape[1]]
    if not bases:
        return w
    if rescale:
        for basis in bases:
            norm = w.norm()
            w = w - basis @ (basis.t() @ w)
            if w.norm() > 0:
                w = w * (norm / w.norm())
        return w
    u, v = ordered_projection(bases)
    return w - u @ (v.t() @ w)


def trimmed_total(ws: list[torch.Tensor], bases: list[torch.Tensor], rescale: bool) -> torch.Tensor:
    """``Σ_i W_i`` after each ``W_i`` is trimmed by every other task's basis in task order.

    Without rescaling the trimmed vectors are never formed: ``Σ_i (I − U_i V_iᵀ) W_i =
    Σ_i W_i − [U_1 … U_K] [V_1ᵀ W_1; …; V_Kᵀ W_K]``, one product as wide as all the bases together.
    """
    others = [[b for k, b in enumerate(bases) if k != i and b.shape[1]] for i in range(len(ws))]
    if rescale:
        return torch.stack([project_out(w, o, True) for w, o in zip(ws, others, strict=True)]).sum(0)
    total = ws[0].clone()
    for w in ws[1:]:
        total += w
    pairs = [(ordered_projection(o), w) for o, w in zip(others, ws, strict=True) if o]
    if pairs:
        u = torch.cat([u for (u, _), _ in pairs], dim=1)
        coefficients = torch.cat([v.t() @ w for (_, v), w in pairs])
        total.addmm_(u, coefficients, alpha=-1.0)
    return total


def _trim_linear(key: str, unit: Unit, mats: list[torch.Tensor], tasks: list[str], stats, hp, diag) -> torch.Tensor:
    """``Σ_i T_i`` of one linear unit after CAT's trimming, from the task vectors' ``(d_out, d_in)`` views."""
    site = unit.site
    for t in tasks:
        if site not in stats[t].gram:
            raise MergeflowError(f"CAT: statistics of task {t!r} have no Gram for {site}")
    factors = [gram_factor(stats[t].gram[site].to(mats[0]), stats[t].rows.get(site, 10**9)) for t in tasks]
    total = torch.empty_like(mats[0])
    for b, rows in enumerate(unit.row_blocks(mats[0].shape[0], hp["split_qkv"])):
        ws = [m[rows] for m in mats]
        bases = cat_bases(ws, factors, hp["c"], hp["lambda"], hp["eig_order"])
        unit = key if rows.stop - rows.start == mats[0].shape[0] else f"{key}[{'qkv'[b]}]"
        for t, (_, chosen, drift) in zip(tasks, bases, strict=True):
            diag.setdefault(unit, {})[t] = {"eigenvalues": chosen.tolist(),
                                            "energy": float(chosen.sum()) / drift if drift > 0 else 0.0}
        total[rows] = trimmed_total(ws, [basis for basis, _, _ in bases], hp["rescale"])
    return total


def _apply_masks(vectors: list[torch.Tensor], masks: list[torch.Tensor], rescale: bool) -> list[torch.Tensor]:
    """Zero ``T_i`` on task k's mask for every i ≠ k, in task order."""
    out = []
    for i, v in enumerate(vectors):
        for k, mask in enumerate(masks):
            if k == i or not mask.any():
                continue
            norm = v.norm()
            v = v.masked_fill(mask.reshape(v.shape), 0.0)
            if rescale and v.norm() > 0:
                v = v * (norm / v.norm())
        out.append(v)
    return out


def _top_positive(score: torch.Tensor, count: int) -> torch.Tensor:
    mask = torch.zeros_like(score, dtype=torch.bool)
    if count > 0:
        idx = torch.argsort(score, descending=True)[:count]
        mask[idx[score[idx] > 0]] = True
    return mask


def _ln_masks(site: str, vectors: list[torch.Tensor], tasks: list[str], stats, hp) -> list[torch.Tensor]:
    energy = []
    for t in tasks:
        if site not in stats[t].sqnorm:
            raise MergeflowError(f"CAT: statistics of task {t!r} have no sqnorm for {site}")
        energy.append(stats[t].energy(site).to(vectors[0]))
    if len(tasks) < 2:
        return [torch.zeros_like(vectors[0], dtype=torch.bool)]
    return [_top_positive(sum(vectors[i] ** 2 * (energy[k] - hp["lambda_ln"] * energy[i])
                              for i in range(len(tasks)) if i != k), hp["c_ln"]) for k in range(len(tasks))]


def _shift_masks(vectors: list[torch.Tensor], c_shift: int) -> list[torch.Tensor]:
    masks = []
    for v in vectors:
        mag = v.reshape(-1).abs()
        mask = torch.zeros_like(mag, dtype=torch.bool)
        if c_shift > 0:
            mask[torch.argsort(mag, descending=True)[:c_shift]] = True
        masks.append(mask)
    return masks


@register("cat", "CAT Merging", "Sun et al., CAT Merging: a training-free approach for resolving conflicts in "
          "model merging, ICML 2025", CAT_HPARAMS, needs=(Need("gram", "alpha", "exemplars"),), scale="alpha",
          per_unit=True, row_kinds=("embedding",))
def cat(pretrained, experts, stats=None, diagnostics=None, family: Family = OPEN_CLIP, **hp):
    """Trim each task vector of the components that conflict with other tasks, then task arithmetic.

    A unit's bases and masks come from its untrimmed vectors; then every ``T_i`` is trimmed by every
    other task's basis or mask in task order. Units are independent: only the K task vectors of the units
    in progress are held, and on CPU as many units run side by side as torch has threads. Embeddings and
    parameters without statistics are summed untrimmed (algorithms.md §2, §8).
    """
    tasks = list(experts)
    extra = tuple(hp["linear_extra"])
    eig_diag: dict = {}
    ln_masked = {}

    def trimmed_sum(key: str, vecs: list[torch.Tensor]) -> torch.Tensor:
        unit = family.unit(key).resolved(extra, vocabulary=hp["vocabulary"] == "trim")
        if unit.kind == "linear":
            total = _trim_linear(key, unit, [unit.matrix(v) for v in vecs], tasks, stats, hp, eig_diag)
            return unit.from_matrix(total, vecs[0])
        if unit.kind == "scale":
            masks = _ln_masks(unit.site, vecs, tasks, stats, hp)
            ln_masked[key] = [int(m.sum()) for m in masks]
            vecs = _apply_masks(vecs, masks, hp["rescale"])
        elif unit.kind == "shift":
            vecs = _apply_masks(vecs, _shift_masks(vecs, hp["c_shift"]), hp["rescale"])
        return torch.stack(vecs).sum(0)

    merged = merge_by_unit(pretrained, experts, trimmed_sum, hp["alpha"], "CAT", workers=None)
    if diagnostics is not None:  # in parameter order (q, k, v within in_proj), whichever thread finished first
        position = {key: i for i, key in enumerate(pretrained)}

        def place(unit: str) -> tuple[int, int]:
            key, _, block = unit.partition("[")
            return position[key], "qkv".find(block[:1])

        diagnostics["units"] = {unit: eig_diag[unit] for unit in sorted(eig_diag, key=place)}
        diagnostics["ln_masked"] = {key: ln_masked[key] for key in sorted(ln_masked, key=place)}
    return merged
