"""DARE: random drop and rescale of each task vector, then task arithmetic or TIES."""

from __future__ import annotations

import torch

from mergeflow.merge.common import COMPUTE, add_scaled, floating, stacked_task_vectors, unflatten
from mergeflow.merge.registry import HParam, register
from mergeflow.merge.ties import TIES_HPARAMS, ties_vector, trim_


def drop_and_rescale_(tau: torch.Tensor, shapes: list[torch.Size], p: float,
                      generator: torch.Generator) -> torch.Tensor:
    """In place on ``tau`` (tasks × entries): zero each entry with probability p, divide the rest by 1 − p.

    The masks are drawn task by task, parameter by parameter (``shapes`` in flattening order), from a CPU
    generator, so they depend neither on how the vectors are laid out nor on the device they are on."""
    for row in tau:
        start = 0
        for shape in shapes:
            segment = row[start:start + shape.numel()]
            keep = torch.rand(shape, generator=generator).reshape(-1) >= p
            segment.mul_(keep.to(segment.device)).div_(1.0 - p)
            start += shape.numel()
    return tau


@register("dare", "DARE", "Yu et al., Language models are Super Mario, ICML 2024",
          {**TIES_HPARAMS,
           "p": HParam(0.9, float, "drop probability", low=0.0, high=1.0, open_high=True),
           "base": HParam("task_arithmetic", str, "merge after dropping", choices=("task_arithmetic", "ties")),
           "seed": HParam(0, int, "seed of the drop masks", low=0)},
          scale="alpha")
def dare(pretrained, experts, stats=None, diagnostics=None, *, alpha, density, merge_func, p, base, seed):
    """Drop entries with probability p, rescale survivors by 1/(1−p) (seeded per task), then merge."""
    keys = floating(pretrained)
    generator = torch.Generator().manual_seed(seed)
    if base == "task_arithmetic":
        return add_scaled(pretrained, dropped_sum(pretrained, experts, keys, p, generator), alpha)
    tau = stacked_task_vectors(pretrained, experts, keys)
    drop_and_rescale_(tau, [pretrained[k].shape for k in keys], p, generator)
    return add_scaled(pretrained, unflatten(ties_vector(trim_(tau, density), merge_func), pretrained, keys), alpha)


def dropped_sum(pretrained, experts, keys: list[str], p: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``Σ_k`` of the dropped and rescaled task vectors, accumulated task by task: one model-sized sum held,
    not the (tasks × entries) stack TIES needs. The masks are drawn in :func:`drop_and_rescale_`'s order and
    the tasks added in order, so the sum is the stacked path's bit for bit."""
    total: dict[str, torch.Tensor] = {}
    for sd in experts.values():
        for k in keys:
            keep = torch.rand(pretrained[k].shape, generator=generator) >= p
            vector = (sd[k].to(COMPUTE) - pretrained[k].to(COMPUTE)).mul_(keep.to(sd[k].device)).div_(1.0 - p)
            if k in total:
                total[k].add_(vector)
            else:
                total[k] = vector
    return total
