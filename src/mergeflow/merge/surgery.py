"""Representation Surgery: per-task adapters that pull a merged model's features toward the expert's."""

from __future__ import annotations

import torch
from tqdm import tqdm

from mergeflow.errors import MergeflowError
from mergeflow.merge.registry import HParam, register
from mergeflow.merge.task_aware import AdaptedModel, OutputAdapter

PAPER = "Yang et al., Representation Surgery for Multi-Task Model Merging, ICML 2024"

HPARAMS = {
    "base": HParam("task_arithmetic", str, "the merge run whose model gets the adapters"),
    "rank": HParam(16, int, "adapter rank r", low=1),
    "lr": HParam(1e-3, float, "Adam's learning rate", low=0.0, open_low=True),
    "steps": HParam(500, int, "optimisation steps per task", low=0),
    "batch_size": HParam(16, int, "unlabeled images per step", low=1),
    "unlabeled": HParam("test", str, "split whose images (without labels) are matched: test as in the paper, or val",
                        choices=("test", "val"), pipeline=True),
    "seed": HParam(0, int, "seed of the adapters' initialisation and of the batches", low=0),
}


@torch.no_grad()
def features(data, weights: dict[str, torch.Tensor], images, batch: int = 256) -> torch.Tensor:
    """The encoder output of every image (computed once: the encoder stays frozen)."""
    return torch.cat([data.encode(weights, images[i:i + batch]) for i in range(0, len(images), batch)])


def fit_adapter(source: torch.Tensor, target: torch.Tensor, *, rank: int, lr: float, steps: int, batch_size: int,
                generator: torch.Generator) -> tuple[OutputAdapter, list[float]]:
    """An adapter trained with its own Adam to minimise the mean ‖z′ − target‖₁ over batches of ``source``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=generator)))
        adapter = OutputAdapter(source.shape[1], rank).to(source.device)
    optimizer = torch.optim.Adam(adapter.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        index = torch.randint(len(source), (batch_size,), generator=generator).to(source.device)
        loss = (adapter(source[index]) - target[index]).abs().sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return adapter, losses


@register("surgery", "Representation Surgery", PAPER, HPARAMS, task_aware=True, uses=("unlabeled", "merged"),
          training=True)
def surgery(pretrained, experts, stats=None, diagnostics=None, data=None, *, base, rank, lr, steps, batch_size, seed):
    """The ``base`` run's merged encoder, and per task ``z' = z − relu(z W_downᵀ) W_upᵀ`` (``W_up`` starts at 0)
    trained toward expert ``t``'s output on unlabeled images of ``t``."""
    if data is None or base not in data.merged or not data.unlabeled:
        raise MergeflowError(f"surgery: needs the merged model of run {base!r} and unlabeled images of every task")
    shared = data.merged[base]
    generator = torch.Generator().manual_seed(seed)
    adapters, curves = {}, {}
    for task, expert in tqdm(experts.items(), desc="surgery: adapters", mininterval=2.0):
        images = data.unlabeled[task]
        source, target = features(data, shared, images), features(data, expert, images)
        adapter, losses = fit_adapter(source, target, rank=rank, lr=lr, steps=steps, batch_size=batch_size,
                                      generator=generator)
        adapters[task] = (adapter.down.detach().cpu(), adapter.up.detach().cpu())
        curves[task] = {"first": losses[0] if losses else None, "last": losses[-1] if losses else None}
    if diagnostics is not None:
        diagnostics["loss"] = curves
        diagnostics["unlabeled_split"] = data.unlabeled_split
    return AdaptedModel({k: shared[k] for k in pretrained}, adapters)
