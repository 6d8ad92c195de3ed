"""AWD: subtract one redundant vector that makes the task vectors nearly orthogonal, then task arithmetic
(algorithms.md §7.5; no official code: the loss and defaults as a third-party port quotes the paper)."""

from __future__ import annotations

import torch

from mergeflow.merge.common import COMPUTE, floating, stacked_task_vectors
from mergeflow.merge.registry import HParam, alpha, register


def awd_loss(gram: torch.Tensor, reg: float, delta_norm: float) -> tuple[float, torch.Tensor, torch.Tensor]:
    """``L`` from the Gram ``V Vᵀ`` of ``v_i = τ_i − δ``: ``mean_{i≠j} |c_ij| + a‖δ‖``; also ``c`` and the norms."""
    k = gram.shape[0]
    norms = gram.diagonal().clamp(min=0).sqrt()
    cos = gram / (norms[:, None] * norms[None, :]).clamp(min=1e-30)
    off = ~torch.eye(k, dtype=torch.bool, device=gram.device)
    return float(cos.abs()[off].sum() / (k * (k - 1)) + reg * delta_norm), cos, norms


_GRAM_CHUNK = 1 << 20  # columns of τ per float64 slice of the Gram (K × 8 MiB)


def redundant_vector(tau: torch.Tensor, *, reg: float, lr: float, steps: int, init: str = "zero",
                     losses: list | None = None) -> torch.Tensor:
    """``δ`` after ``steps`` steps of plain gradient descent on ``L`` for the rows of ``tau`` (K × N).

    ``δ`` never leaves the span of the task vectors: it starts there (zero, or their mean) and every gradient,
    ``Σ_i coef_i v_i + a δ/‖δ‖ = coefᵀτ − (Σ coef) δ + a δ/‖δ‖``, is a combination of the ``τ_i`` and ``δ``. So
    ``δ = wᵀτ`` is carried as its K coefficients ``w``, and a step is K × K arithmetic on the Gram ``ττᵀ``
    (``τδ = ττᵀw``, ``‖δ‖² = wᵀττᵀw``), accumulated once in float64: the model is read twice in all (the Gram
    and ``wᵀτ`` at the end), not twice per step.
    """
    k = tau.shape[0]
    tt = torch.zeros(k, k, dtype=torch.float64, device=tau.device)
    for start in range(0, tau.shape[1], _GRAM_CHUNK):  # float64 in slices: no float64 copy of the model
        part = tau[:, start:start + _GRAM_CHUNK].double()
        tt += part @ part.t()
    w = torch.full((k,), 1.0 / k if init == "mean" else 0.0, dtype=torch.float64, device=tau.device)
    off = ~torch.eye(k, dtype=torch.bool, device=tau.device)
    for _ in range(steps + (1 if losses is not None else 0)):
        td = tt @ w
        dd = float(w @ td)
        gram = tt - td[:, None] - td[None, :] + dd
        loss, cos, norms = awd_loss(gram, reg, max(dd, 0.0) ** 0.5)
        if losses is not None:
            losses.append(loss)
            if len(losses) > steps:
                break
        if k < 2:
            pair = torch.zeros(k, dtype=torch.float64, device=tau.device)
        else:
            sign = torch.sign(cos) * off
            inv = 1.0 / (norms[:, None] * norms[None, :]).clamp(min=1e-30)
            # d|c_ij|/dδ's coefficient on v_i, summed over j and over both orders of each pair
            pair = 2.0 / (k * (k - 1)) * (-sign * (inv - cos / norms[:, None].pow(2).clamp(min=1e-30))).sum(1)
        grad = pair - pair.sum() * w
        if dd > 0:
            grad = grad + reg * w / dd ** 0.5
        w = w - lr * grad
    dtype = torch.promote_types(tau.dtype, COMPUTE)
    return (w.to(dtype) @ tau.to(dtype)).to(tau.dtype)


@register("awd", "AWD", "Xiong et al., Multi-task model merging via adaptive weight disentanglement, "
          "arXiv 2411.18729",
          {"alpha": alpha(0.3, "task arithmetic's scale of the disentangled vectors (params.yaml: auto)"),
           "reg": HParam(0.1, float, "weight a of the norm penalty a·||δ||", low=0.0),
           "lr": HParam(0.01, float, "gradient-descent step β", low=0.0, high=100.0, open_low=True),
           "steps": HParam(300, int, "gradient-descent iterations", low=0, high=100000),
           "scope": HParam("model", str, "one δ for the flattened model, or one per tensor", choices=("model",
                                                                                                   "tensor")),
           "init": HParam("zero", str, "δ's start: zero, or the mean task vector (unverified)",
                          choices=("zero", "mean")),
           "keep_redundant": HParam(False, bool, "add δ back into the merged model"),
           "base": HParam("task_arithmetic", str, "how the disentangled vectors merge",
                          choices=("task_arithmetic", "ties"))},
          scale="alpha")
def awd(pretrained, experts, stats=None, diagnostics=None, **hp):
    """``θ_pre + α Σ_i (τ_i − δ)`` (or TIES of the ``τ_i − δ``); ``δ`` from :func:`redundant_vector`."""
    keys = floating(pretrained)
    groups = [keys] if hp["scope"] == "model" else [[k] for k in keys]
    shifted = {t: dict(sd) for t, sd in experts.items()}
    redundant = {}
    for group in groups:
        tau = stacked_task_vectors(pretrained, experts, group)
        delta = redundant_vector(tau, reg=hp["reg"], lr=hp["lr"], steps=hp["steps"], init=hp["init"])
        start = 0
        for key in group:
            n = pretrained[key].numel()
            part = delta[start:start + n].view(pretrained[key].shape)
            redundant[key] = part
            for t in experts:
                shifted[t][key] = (experts[t][key].to(COMPUTE) - part).to(pretrained[key].dtype)
            start += n
    if hp["base"] == "ties":
        from mergeflow.merge.ties import ties

        merged = ties(pretrained, shifted, alpha=hp["alpha"], density=0.2, merge_func="sum")
    else:
        merged = {k: (v.to(COMPUTE) + hp["alpha"] * sum(shifted[t][k].to(COMPUTE) - v.to(COMPUTE) for t in experts)
                      ).to(v.dtype) if k in redundant else v.clone() for k, v in pretrained.items()}
    if hp["keep_redundant"]:
        merged = {k: (v.to(COMPUTE) + hp["alpha"] * redundant[k]).to(v.dtype) if k in redundant else v
                  for k, v in merged.items()}
    return merged
