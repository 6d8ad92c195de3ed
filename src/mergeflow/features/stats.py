"""``TaskStats``: per-layer statistics of one task, keyed by the parameter name of the weight they serve."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mergeflow.errors import MergeflowError

_FIELDS = ("gram", "sqnorm", "rows", "fisher", "grad")


@dataclass
class TaskStats:
    """Statistics of one task's layers (see algorithms.md §1).

    Attributes:
        gram: ``Σ_rows x xᵀ`` of the input of every linear unit, ``(d_in, d_in)``.
        sqnorm: ``Σ_rows x̂²`` of the normalised input of every LayerNorm, ``(d,)``.
        rows: the number of rows summed, per parameter.
        fisher: diagonal Fisher per parameter (Fisher merging).
        grad: mean absolute gradient at ``θ_pre`` per parameter (TATR).
    """

    gram: dict[str, torch.Tensor] = field(default_factory=dict)
    sqnorm: dict[str, torch.Tensor] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    fisher: dict[str, torch.Tensor] = field(default_factory=dict)
    grad: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flatten to ``{"<field>/<param>": tensor}`` for safetensors (rows as int64 scalars)."""
        out = {}
        for name in _FIELDS:
            for key, value in getattr(self, name).items():
                out[f"{name}/{key}"] = torch.tensor(value, dtype=torch.int64) if name == "rows" else value
        return out

    def to(self, device: torch.device | str) -> TaskStats:
        """A copy with every tensor on ``device`` (the row counts are plain integers)."""
        moved = {name: {k: v.to(device) for k, v in getattr(self, name).items()}
                 for name in _FIELDS if name != "rows"}
        return TaskStats(rows=dict(self.rows), **moved)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], source: str = "statistics") -> TaskStats:
        stats = cls()
        for flat, value in tensors.items():
            name, _, key = flat.partition("/")
            if name not in _FIELDS or not key:
                raise MergeflowError(f"{source}: unexpected tensor {flat!r}; expected <{'|'.join(_FIELDS)}>/<param>")
            getattr(stats, name)[key] = int(value) if name == "rows" else value
        return stats

    def kinds(self) -> set[str]:
        """The statistics present: a subset of gram, sqnorm, fisher, grad."""
        return {name for name in ("gram", "sqnorm", "fisher", "grad") if getattr(self, name)}
