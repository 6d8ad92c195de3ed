"""CAT Merging: conflict-aware trimming of task vectors (algorithms.md §2)."""

from __future__ import annotations

import torch

from mergeflow.errors import MergeflowError
from mergeflow.merge.common import add_outer_lower_, extreme_eigh, merge_by_unit
from mergeflow.merge.registry import HParam, Need, register
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
    """``L`` with ``L Lᵀ = G``; for ``rows < d`` a randomized range finder makes it exact and cheap.

    A Gram of ``rows`` feature rows has rank at most ``rows``: the range finder's 8 extra directions carry
    only round-off, and dropping them keeps every later product and eigenproblem ``rows`` wide, not
    ``rows + 8`` (CAT's QR and reduced eigenproblems cost the square of that width).
    """
    d = gram.shape[0]
    if rows < d:
        probe = torch.randn(d, rows + 8, generator=generator, dtype=gram.dtype).to(gram.device)
        q, _ = torch.linalg.qr(gram @ probe)
        vals, vecs = torch.linalg.eigh(q.t() @ gram @ q)
        vals, vecs = vals[-rows:], q @ vecs[:, -rows:]
    else:
        vals, vecs = torch.linalg.eigh(gram)
    keep = vals > vals.abs().max().clamp(min=1e-30) * 1e-10
    return vecs[:, keep] * vals[keep].sqrt()


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
    # every L_jᵀ W_iᵀ in one (Σr × d_in)·(d_in × K·d_out) product (2.5× faster than K products on a 2-core
    # CPU), laid out so that each (i, j) block's rows are contiguous: the gathers below copy whole rows
    products = torch.cat(factors, dim=1).t() @ torch.stack(ws).reshape(n * d_out, -1).t()

    def rows_of(j: int, tasks: list[int]) -> torch.Tensor:
        """``[W_i L_j]_{i in tasks}`` transposed: (len(tasks)·r_j × d_out)."""
        part = products[offsets[j]:offsets[j + 1]].view(-1, n, d_out)
        return part[:, tasks].reshape(-1, d_out)

    own = [products[offsets[i]:offsets[i + 1], i * d_out:(i + 1) * d_out] for i in range(n)]
    own_total = None
    out = []
    for k in range(n):
        others = [i for i in range(n) if i != k]
        drift = rows_of(k, others).t()
        drift_trace = float(drift.square().sum())
        width = drift.shape[1] + sum(offsets[i + 1] - offsets[i] for i in others)
        if order == "bottom" or d_out <= width:
            if own_total is None:
                everything = torch.cat(own)
                own_total = everything.t() @ everything
            m = torch.addmm(own_total, own[k].t(), own[k], beta=-lam, alpha=lam)  # −λ (Σ_i O_i O_iᵀ − O_k O_kᵀ)
            vals, vecs = extreme_eigh(add_outer_lower_(m, drift), c, order)  # + Y Yᵀ
        else:
            own_k = torch.cat([own[i] for i in others])
            z = torch.cat([drift.t(), own_k]).t()  # column-major, as LAPACK wants it: no copy in geqrf
            a, tau = torch.geqrf(z)
            width, w_drift = z.shape[1], drift.shape[1]
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
            idx = idx[vals[idx] > 0]
        else:
            idx = torch.argsort(vals)
        out.append((vecs[:, idx], vals[idx], drift_trace))
    return out


def project_out(w: torch.Tensor, bases: list[torch.Tensor], rescale: bool) -> torch.Tensor:
    """``W ← (I − B_k B_kᵀ) W`` for each basis in order; with ``rescale``, ``W``'s norm is restored after each.

    Without rescaling the ordered product of projections is accumulated as ``I − U Vᵀ`` (width Σ c) and
    applied once: one pass over ``W`` instead of K − 1.
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
    u = torch.cat(bases, dim=1)
    v = u.clone()
    done = bases[0].shape[1]
    for basis in bases[1:]:
        # (I − B Bᵀ)(I − U Vᵀ) = I − [U, B] [V, B − V (Uᵀ B)]ᵀ
        v[:, done:done + basis.shape[1]] -= v[:, :done] @ (u[:, :done].t() @ basis)
        done += basis.shape[1]
    return w - u @ (v.t() @ w)


def _trim_linear(key: str, mats: list[torch.Tensor], tasks: list[str], stats, hp, generator, diag) -> None:
    """Trim the task vectors' ``(d_out, d_in)`` views ``mats`` of one linear unit in place."""
    for t in tasks:
        if key not in stats[t].gram:
            raise MergeflowError(f"CAT: statistics of task {t!r} have no Gram for {key}")
    factors = [gram_factor(stats[t].gram[key].to(mats[0]), stats[t].rows.get(key, 10**9), generator) for t in tasks]
    for b, rows in enumerate(row_blocks(key, mats[0].shape[0], hp["split_qkv"])):
        ws = [m[rows] for m in mats]
        bases = cat_bases(ws, factors, hp["c"], hp["lambda"], hp["eig_order"])
        unit = key if rows.stop - rows.start == mats[0].shape[0] else f"{key}[{'qkv'[b]}]"
        for t, (_, chosen, drift) in zip(tasks, bases, strict=True):
            diag.setdefault(unit, {})[t] = {"eigenvalues": chosen.tolist(),
                                            "energy": float(chosen.sum()) / drift if drift > 0 else 0.0}
        trimmed = [project_out(w, [basis for k, (basis, _, _) in enumerate(bases) if k != i], hp["rescale"])
                   for i, w in enumerate(ws)]
        for m, w in zip(mats, trimmed, strict=True):
            m[rows] = w


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


def _ln_masks(key: str, vectors: list[torch.Tensor], tasks: list[str], stats, hp) -> list[torch.Tensor]:
    energy = []
    for t in tasks:
        if key not in stats[t].sqnorm:
            raise MergeflowError(f"CAT: statistics of task {t!r} have no sqnorm for {key}")
        energy.append(stats[t].sqnorm[key].to(vectors[0]) / max(stats[t].rows.get(key, 1), 1))
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
          "model merging, ICML 2025", CAT_HPARAMS, needs=(Need("gram", "alpha", "exemplars"),))
def cat(pretrained, experts, stats=None, diagnostics=None, **hp):
    """Trim each task vector of the components that conflict with other tasks, then task arithmetic.

    A unit's bases and masks come from its untrimmed vectors; then every ``T_i`` is trimmed by every
    other task's basis or mask in task order. Units are independent, so they are processed one at a
    time: only one parameter's K task vectors are ever held.
    """
    tasks = list(experts)
    generator = torch.Generator().manual_seed(0)
    extra = tuple(hp["linear_extra"])
    eig_diag: dict = {}
    ln_masked = {}

    def trimmed_sum(key: str, vecs: list[torch.Tensor]) -> torch.Tensor:
        if is_linear(key, extra):
            mats = [as_matrix(key, v).clone() for v in vecs]
            _trim_linear(key, mats, tasks, stats, hp, generator, eig_diag)
            vecs = [from_matrix(key, m, v) for m, v in zip(mats, vecs, strict=True)]
        elif is_layernorm(key):
            masks = _ln_masks(key, vecs, tasks, stats, hp)
            ln_masked[key] = [int(m.sum()) for m in masks]
            vecs = _apply_masks(vecs, masks, hp["rescale"])
        elif is_shift(key):
            vecs = _apply_masks(vecs, _shift_masks(vecs, hp["c_shift"]), hp["rescale"])
        return torch.stack(vecs).sum(0)

    merged = merge_by_unit(pretrained, experts, trimmed_sum, hp["alpha"], "CAT")
    if diagnostics is not None:
        diagnostics["units"] = eig_diag
        diagnostics["ln_masked"] = ln_masked
    return merged
