"""Device choice: ``auto`` is CUDA when present, else CPU."""

from __future__ import annotations

import torch

from mergeflow.errors import MergeflowError


def resolve(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MergeflowError("device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)
