"""DARE: random drop and rescale of each task vector, then task arithmetic or TIES."""

from __future__ import annotations

import torch

from mergeflow.merge.common import add_scaled, task_vectors
from mergeflow.merge.registry import HParam, register
from mergeflow.merge.task_arithmetic import summed
from mergeflow.merge.ties import TIES_HPARAMS, ties_delta


def drop_and_rescale(vector: dict[str, torch.Tensor], p: float, generator: torch.Generator):
    return {k: v * (torch.rand(v.shape, generator=generator) >= p) / (1.0 - p) for k, v in vector.items()}


@register("dare", "DARE", "Yu et al., Language models are Super Mario, ICML 2024",
          {**TIES_HPARAMS,
           "p": HParam(0.9, float, "drop probability", low=0.0, high=0.999),
           "base": HParam("task_arithmetic", str, "merge after dropping", choices=("task_arithmetic", "ties")),
           "seed": HParam(0, int, "seed of the drop masks", low=0)},
          scale="alpha")
def dare(pretrained, experts, stats=None, diagnostics=None, *, alpha, density, merge_func, p, base, seed):
    """Drop entries with probability p, rescale survivors by 1/(1−p) (seeded per task), then merge."""
    vectors = task_vectors(pretrained, experts)
    gen = torch.Generator().manual_seed(seed)
    dropped = {task: drop_and_rescale(tv, p, gen) for task, tv in vectors.items()}
    delta = summed(dropped) if base == "task_arithmetic" else ties_delta(dropped, density, merge_func)
    return add_scaled(pretrained, delta, alpha)
