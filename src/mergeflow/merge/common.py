"""Helpers shared by the merge methods: task vectors, flattening, and putting a result back."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed

import torch
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from mergeflow.merge.lapack import syevd_lower, syevx_lower, syrk_lower

COMPUTE = torch.float32
CHUNK = 1 << 22  # columns per pass of the elementwise work over stacked task vectors (16 MiB a row)


def floating(pretrained: dict[str, torch.Tensor]) -> list[str]:
    """Keys that merge (floating point); other tensors are copied from ``pretrained``."""
    return [k for k, v in pretrained.items() if v.is_floating_point()]


def task_vectors(pretrained, experts) -> dict[str, dict[str, torch.Tensor]]:
    """``T_k = θ_k − θ_pre`` per task, for every floating key, in float32."""
    keys = floating(pretrained)
    return {task: {k: sd[k].to(COMPUTE) - pretrained[k].to(COMPUTE) for k in keys} for task, sd in experts.items()}


def stacked_task_vectors(pretrained, experts, keys: list[str]) -> torch.Tensor:
    """The flattened task vectors of ``keys`` as one (tasks × entries) float32 matrix, filled in place:
    no per-task copy is held next to it (8 ViT-B/32 vectors are 2.8 GB)."""
    sizes = [pretrained[k].numel() for k in keys]
    out = torch.empty(len(experts), sum(sizes), dtype=COMPUTE, device=pretrained[keys[0]].device)
    for row, sd in zip(out, experts.values(), strict=True):
        start = 0
        for k, size in zip(keys, sizes, strict=True):
            torch.sub(sd[k].reshape(-1).to(COMPUTE), pretrained[k].reshape(-1).to(COMPUTE), out=row[start:start + size])
            start += size
    return out


def merge_by_unit(pretrained, experts, delta: Callable[[str, list[torch.Tensor]], torch.Tensor], scale: float,
                  desc: str, workers: int | None = 1) -> dict[str, torch.Tensor]:
    """``θ_pre + scale · delta(key, [T_1 … T_K])`` one parameter at a time, for methods whose units are
    independent: only ``workers`` parameters' K task vectors are held at once, never all of them.
    Non-floating tensors are copied. On CPU, ``workers > 1`` (``None``: as many as torch has threads) runs
    units side by side on threads (:func:`run_threaded`); ``delta`` must then be safe to call from several
    threads. On a GPU units always run one at a time."""
    tasks = list(experts)

    def unit(key: str) -> torch.Tensor:
        pre = pretrained[key]
        if not pre.is_floating_point():
            return pre.clone()
        dtype = torch.promote_types(pre.dtype, COMPUTE)  # float32, or float64 for float64 weights
        base = pre.to(dtype)
        return (base + scale * delta(key, [experts[t][key].to(dtype) - base for t in tasks])).to(pre.dtype)

    keys = list(pretrained)
    workers = torch.get_num_threads() if workers is None else workers
    if workers > 1 and all(v.device.type == "cpu" for v in pretrained.values()):
        return run_threaded(unit, keys, {k: pretrained[k].numel() for k in keys}, workers, desc)
    return {key: unit(key) for key in tqdm(keys, desc=desc, unit="param", leave=False, mininterval=5.0)}


def run_threaded(fn: Callable[[str], torch.Tensor], keys: list[str], sizes: dict[str, int], workers: int,
                 desc: str) -> dict[str, torch.Tensor]:
    """``{key: fn(key)}``, the keys spread over ``workers`` threads, each running its torch and BLAS calls on
    one core.

    One core per unit and several units at once beats every core on one unit when a unit's work is
    dominated by calls that cannot use two cores well (memory-bound eigensolvers on matrices of a few
    hundred rows). Each unit's arithmetic is single-threaded, so its result does not depend on which
    thread ran it or when. Largest units go first so that the threads finish together.
    """
    threads = torch.get_num_threads()
    results = {}
    try:
        with threadpool_limits(1, user_api="blas"), \
                ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            futures = {pool.submit(fn, key): key for key in sorted(keys, key=lambda k: -sizes[k])}
            try:
                for done in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="param", leave=False,
                                 mininterval=5.0):
                    results[futures[done]] = done.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    finally:
        torch.set_num_threads(threads)  # the workers' setting is process-wide for threads started later
    return {key: results[key] for key in keys}


def add_scaled(pretrained, delta: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """``θ_pre + scale · delta``, cast back to ``pretrained``'s dtypes; keys missing in delta are copied."""
    out = {}
    for k, v in pretrained.items():
        if k in delta:
            out[k] = (v.to(COMPUTE) + scale * delta[k]).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def flatten(vectors: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    return torch.cat([vectors[k].reshape(-1) for k in keys])


def unflatten(flat: torch.Tensor, like: dict[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for k in keys:
        n = like[k].numel()
        out[k] = flat[i:i + n].reshape(like[k].shape)
        i += n
    return out


_SELECT_BY_HISTOGRAM = 1 << 22  # entries from which a histogram pass beats kthvalue's copy and partition


def kth_smallest(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest value (1-based) of a flat tensor; ``torch.quantile`` refuses large inputs."""
    return kth_smallest_many(x, [k])[0]


def kth_smallest_many(x: torch.Tensor, ks: list[int]) -> list[torch.Tensor]:
    """The ``k``-th smallest values (1-based) of a flat tensor, for every ``k`` of ``ks``.

    On a large float32 CPU tensor, a histogram of the top 16 bits of each value's order-preserving integer
    key (for floats of one sign their bits' order is their order; negative ones are flipped) finds the bucket
    that holds each k-th value, and ``kthvalue`` runs on that bucket alone: the same value (a signed zero
    aside) for one pass of integer work, shared by every ``k``, instead of a partition of the whole tensor.
    """
    ks = [max(1, min(int(k), x.numel())) for k in ks]
    if x.numel() < _SELECT_BY_HISTOGRAM or x.dtype != torch.float32 or x.device.type != "cpu":
        return [torch.kthvalue(x, k).values for k in ks]
    bits = x.contiguous().view(torch.int32)
    bucket = bits >> 31  # all ones for a negative value: its other bits flipped, so that larger means larger
    bucket.bitwise_and_(0x7FFFFFFF).bitwise_xor_(bits).bitwise_right_shift_(16).add_(1 << 15)
    cumulative = torch.bincount(bucket, minlength=1 << 16).cumsum_(0)
    out = []
    for k in ks:
        b = int(torch.searchsorted(cumulative, k))  # the first bucket that reaches k entries
        before = int(cumulative[b - 1]) if b else 0
        out.append(torch.kthvalue(x[bucket == b], k - before).values)
    return out


def symmetric_eigh(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All eigenpairs of a symmetric matrix, ascending; only its lower triangle is read. On CPU LAPACK's
    ``syevd``, faster than ``torch.linalg.eigh`` there (benchmarks/merge_speed.py) and without the GIL
    (:mod:`mergeflow.merge.lapack`), so units on threads run side by side."""
    if m.device.type == "cpu" and m.dtype in (torch.float32, torch.float64):
        vals, vecs = syevd_lower(m.numpy())
        return torch.from_numpy(vals), torch.from_numpy(vecs)
    return torch.linalg.eigh(m)


def add_outer_lower_(m: torch.Tensor, a: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """``m += alpha · a aᵀ`` in place, guaranteed in ``m``'s lower triangle only.

    On CPU, BLAS ``syrk`` computes one triangle: half the flops of the full product, which is what
    :func:`extreme_eigh` reads; it runs without the GIL (:mod:`mergeflow.merge.lapack`). Elsewhere (or for a
    non-contiguous ``m``) the full product is added.
    """
    if m.device.type == "cpu" and m.dtype in (torch.float32, torch.float64) and m.is_contiguous() \
            and a.dtype == m.dtype:
        syrk_lower(m.numpy(), a.numpy(), alpha)
        return m
    return m.addmm_(a, a.t(), alpha=alpha)


def column_gram(m: torch.Tensor) -> torch.Tensor:
    """``mᵀm`` in ``m``'s dtype, its lower triangle only where that is cheaper (CPU: BLAS ``syrk``, half the
    flops of the product); what :func:`symmetric_eigh` and :func:`extreme_eigh` read."""
    return add_outer_lower_(m.new_zeros(m.shape[1], m.shape[1]), m.t())


def extreme_eigh(m: torch.Tensor, c: int, order: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``c`` largest (``top``) or smallest (``bottom``) eigenpairs of a symmetric matrix, ascending.
    Only the lower triangle of ``m`` is read.

    On CPU, LAPACK's ``syevx`` for an index subset skips the vectors nobody asked for, and it runs without
    the GIL (:mod:`mergeflow.merge.lapack`). On a GPU the full ``eigh`` is the fast one.
    """
    n = m.shape[0]
    c = min(c, n)
    if c <= 0:  # LAPACK refuses an empty index range
        return m.new_zeros(0), m.new_zeros(n, 0)
    lo, hi = (n - c, n - 1) if order == "top" else (0, c - 1)
    if m.device.type == "cpu" and m.dtype in (torch.float32, torch.float64):
        vals, vecs = syevx_lower(m.numpy(), lo, hi)
        return torch.from_numpy(vals), torch.from_numpy(vecs)
    vals, vecs = torch.linalg.eigh(m)
    return vals[lo:hi + 1], vecs[:, lo:hi + 1]


# An eigendecomposition of the float64 Gram is exact to float32 while σ_min / σ_max stays above this; below it
# the Gram loses the small singular values and an SVD takes over.
GRAM_RCOND = 1e-5


def polar_factor(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The orthogonal polar factor ``U Vᵀ`` of ``m = U Σ Vᵀ`` and its singular values (descending).

    Through the eigendecomposition of the smaller float64 Gram, ``m (mᵀm)^{-1/2}``, cheaper than an SVD of
    a tall ``m``; an SVD when ``m`` is close to rank-deficient.
    """
    if m.shape[0] < m.shape[1]:
        q, s = polar_factor(m.t())
        return q.t(), s
    md = m.double()
    vals, vecs = symmetric_eigh(column_gram(md))
    s = vals.clamp(min=0).sqrt().flip(0)
    if s[-1] <= GRAM_RCOND * s[0]:
        u, s, vh = torch.linalg.svd(m.to(COMPUTE), full_matrices=False)
        return u @ vh, s
    vecs = vecs.to(m.device)
    inverse_root = (vecs / vals.sqrt().to(m.device)) @ vecs.t()  # (mᵀm)^{-1/2}: r × r, one tall product left
    return (md @ inverse_root).to(m.dtype), s.to(m.dtype)


def isotropic(m: torch.Tensor) -> torch.Tensor:
    """``U diag(mean σ) Vᵀ`` of ``m``: its spectrum flattened (Iso-C, and Iso-CTS where it falls back to it)."""
    q, s = polar_factor(m)
    return s.mean() * q


def top_singular(m: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top ``r`` singular triplets of ``m``: ``U_r`` (m×r), ``σ_r`` (descending), ``V_r`` (n×r).

    From the ``r`` largest eigenpairs of the smaller float64 Gram (``V = eigvecs``, ``U = m V / σ``), cheaper
    than a full SVD of a tall ``m``; an SVD when ``σ_r`` is too small next to ``σ_1`` for the Gram to resolve it.
    """
    if m.shape[0] < m.shape[1]:
        v, s, u = top_singular(m.t(), r)
        return u, s, v
    md = m.double()
    gram = column_gram(md)
    if 3 * r > gram.shape[0]:  # a third of the spectrum or more: all of it by divide and conquer is cheaper
        vals, vecs = symmetric_eigh(gram)
        vals, vecs = vals[vals.shape[0] - r:], vecs[:, vecs.shape[1] - r:]
    else:
        vals, vecs = extreme_eigh(gram, r, "top")
    vals, vecs = vals.flip(0), vecs.flip(1).to(m.device)
    s = vals.clamp(min=0).sqrt()
    if s[-1] <= GRAM_RCOND * s[0] or s[0] == 0:
        u, s, vh = torch.linalg.svd(m.to(COMPUTE), full_matrices=False)
        return u[:, :r], s[:r], vh[:r].t()
    return (md @ (vecs / s.to(m.device))).to(m.dtype), s.to(m.dtype), vecs.to(m.dtype)
