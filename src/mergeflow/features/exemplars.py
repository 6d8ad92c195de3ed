"""Seeded sampling of unlabeled exemplars from a task's prepared train split."""

from __future__ import annotations

import torch

from mergeflow.errors import MergeflowError


def sample_exemplars(n_train: int, count: int, seed: int) -> list[int]:
    """The first ``count`` entries of a seeded permutation of the train split (nested across counts)."""
    if count > n_train:
        raise MergeflowError(f"{count} exemplars asked but the train split has only {n_train} samples; "
                             "lower exemplars.pool")
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
    return perm[:count].tolist()
