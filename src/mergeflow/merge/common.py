"""Helpers shared by the merge methods: task vectors, flattening, and putting a result back."""

from __future__ import annotations

import torch

COMPUTE = torch.float32


def floating(pretrained: dict[str, torch.Tensor]) -> list[str]:
    """Keys that merge (floating point); other tensors are copied from ``pretrained``."""
    return [k for k, v in pretrained.items() if v.is_floating_point()]


def task_vectors(pretrained, experts) -> dict[str, dict[str, torch.Tensor]]:
    """``T_k = θ_k − θ_pre`` per task, for every floating key, in float32."""
    keys = floating(pretrained)
    return {task: {k: sd[k].to(COMPUTE) - pretrained[k].to(COMPUTE) for k in keys} for task, sd in experts.items()}


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


def kth_smallest(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest value (1-based) of a flat tensor; ``torch.quantile`` refuses large inputs."""
    k = max(1, min(int(k), x.numel()))
    return torch.kthvalue(x, k).values
