"""AdaMerging: merging coefficients learned by entropy minimisation on unlabeled test images."""

from __future__ import annotations

import torch
from tqdm import tqdm

from mergeflow.errors import MergeflowError
from mergeflow.merge.common import floating, stacked_task_vectors, task_vectors, unflatten
from mergeflow.merge.registry import HParam, register
from mergeflow.merge.ties import trim_

PAPER = "Yang et al., AdaMerging: Adaptive Model Merging for Multi-Task Learning, ICLR 2024"


def ties_trimmed(pretrained, experts, density: float) -> dict[str, dict[str, torch.Tensor]]:
    """AdaMerging++'s task vectors: each trimmed to its top ``density`` by magnitude, then only the entries
    that agree with the elected sign (the sign of the trimmed vectors' sum) kept; not summed."""
    keys = floating(pretrained)
    tau = trim_(stacked_task_vectors(pretrained, experts, keys), density)
    elected = torch.sign(tau.sum(0))
    tau *= (torch.sign(tau) == elected) & (tau != 0)
    return {t: unflatten(row, pretrained, keys) for t, row in zip(experts, tau, strict=True)}


def combine(pretrained: dict[str, torch.Tensor], stacked: dict[str, torch.Tensor],
            coefficients: torch.Tensor) -> dict[str, torch.Tensor]:
    """``θ_pre + Σ_k clamp(Λ[l, k], 0, 1) T_k`` with ``l`` the tensor's row of Λ (one row: task-wise)."""
    lam = coefficients.clamp(0.0, 1.0)
    out = {}
    for row, (key, tau) in enumerate(stacked.items()):
        c = lam[row if lam.shape[0] > 1 else 0].view(-1, *([1] * (tau.ndim - 1)))
        out[key] = pretrained[key].to(tau.dtype) + (c * tau).sum(0)
    return out


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy of ``softmax(logits)`` over the batch."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


HPARAMS = {
    "granularity": HParam("layer", str, "one coefficient per task (task) or per task and tensor (layer)",
                          choices=("task", "layer")),
    "trim": HParam("none", str, "none: plain task vectors; ties: AdaMerging++ (TIES-trimmed, sign-elected)",
                   choices=("none", "ties")),
    "density": HParam(0.2, float, "share of each task vector kept by the ++ trim", low=0.0, high=1.0),
    "init": HParam(0.3, float, "initial value of every coefficient", low=0.0, high=1.0),
    "lr": HParam(1e-3, float, "Adam's learning rate on the coefficients", low=0.0, open_low=True),
    "steps": HParam(500, int, "optimisation steps", low=0),
    "batch_size": HParam(16, int, "unlabeled images of each task per step", low=1),
    "unlabeled": HParam("test", str, "split whose images (without labels) drive the entropy: test as in the "
                        "paper, or val", choices=("test", "val"), pipeline=True),
    "seed": HParam(0, int, "seed of the image sampling", low=0),
}


@register("adamerging", "AdaMerging", PAPER, HPARAMS, uses=("unlabeled",), training=True)
def adamerging(pretrained, experts, stats=None, diagnostics=None, data=None, *, granularity, trim, density, init, lr,
               steps, batch_size, seed):
    """``θ = θ_pre + Σ_k clamp(Λ[l,k], 0, 1)·T_k``; only Λ is trained (Adam), to minimise the summed mean
    prediction entropy of every task's frozen head on its unlabeled images."""
    if data is None or not data.unlabeled:
        raise MergeflowError("adamerging: needs unlabeled images of every task")
    vectors = ties_trimmed(pretrained, experts, density) if trim == "ties" else task_vectors(pretrained, experts)
    keys = floating(pretrained)
    tasks = list(experts)
    stacked = {k: torch.stack([vectors[t][k] for t in tasks]) for k in keys}
    rows = len(keys) if granularity == "layer" else 1
    device = next(iter(stacked.values())).device
    coefficients = torch.full((rows, len(tasks)), float(init), device=device, requires_grad=True)
    optimizer = torch.optim.Adam([coefficients], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    frozen = {k: v for k, v in pretrained.items()}
    losses = []
    for _ in tqdm(range(steps), desc=f"adamerging ({granularity}-wise)", mininterval=2.0):
        weights = {**frozen, **combine(pretrained, stacked, coefficients)}
        batch = {t: data.sample(t, batch_size, generator) for t in tasks}
        loss = sum(entropy(logits) for logits in data.logits_of_tasks(weights, batch).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        merged = combine(pretrained, stacked, coefficients)
    out = {k: merged[k].to(v.dtype) if k in merged else v.clone() for k, v in pretrained.items()}
    if diagnostics is not None:
        lam = coefficients.detach().clamp(0, 1).cpu()
        diagnostics["loss"] = {"first": losses[0] if losses else None, "last": losses[-1] if losses else None,
                               "every_50": losses[::50]}
        diagnostics["coefficients"] = ({t: float(lam[0, i]) for i, t in enumerate(tasks)} if rows == 1 else
                                       {t: {"mean": float(lam[:, i].mean()), "min": float(lam[:, i].min()),
                                            "max": float(lam[:, i].max())} for i, t in enumerate(tasks)})
        diagnostics["unlabeled_split"] = data.unlabeled_split
    return out
