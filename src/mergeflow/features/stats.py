"""``TaskStats``: per-layer statistics of one task, keyed by input site (the name of the first weight that
reads the input: :attr:`mergeflow.families.Unit.site`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mergeflow.errors import MergeflowError

_FIELDS = ("gram", "sqnorm", "rows", "counts", "fisher", "grad")
WEIGHTINGS = ("tokens", "task")


@dataclass
class TaskStats:
    """Statistics of one task's layers (see algorithms.md §1).

    Attributes:
        gram: ``Σ_rows x xᵀ`` of the input of every linear unit, ``(d_in, d_in)``.
        sqnorm: ``Σ_rows x̂²`` of the normalised input of every LayerNorm, ``(d,)``.
        rows: the number of rows summed, per site (always the true count: it bounds a Gram's rank).
        counts: how often each row of an embedding table was looked up, per site, ``(n_rows,)`` float64.
        fisher: diagonal Fisher per parameter (Fisher merging).
        grad: mean absolute gradient at ``θ_pre`` per parameter (TATR).
        weighting: ``tokens``: every statistic is a sum over rows, so a task with longer sequences weighs
            more; ``task``: ``gram``, ``sqnorm`` and ``counts`` of every site are divided by its row count,
            so that every task weighs alike (algorithms.md §8).
    """

    gram: dict[str, torch.Tensor] = field(default_factory=dict)
    sqnorm: dict[str, torch.Tensor] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    fisher: dict[str, torch.Tensor] = field(default_factory=dict)
    grad: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, torch.Tensor] = field(default_factory=dict)
    weighting: str = "tokens"

    def energy(self, site: str) -> torch.Tensor:
        """``sqnorm`` of ``site`` per row, whatever the weighting."""
        if self.weighting == "task":
            return self.sqnorm[site]
        return self.sqnorm[site] / max(self.rows.get(site, 1), 1)

    def row_weight(self, site: str | None) -> float:
        """How much this task weighs at ``site`` in a row-weighted mean: its row count under ``tokens`` (the
        largest count where the site has none, e.g. a bias), 1 under ``task``."""
        if self.weighting == "task":
            return 1.0
        if site is not None and site in self.rows:
            return float(self.rows[site])
        return float(max(self.rows.values())) if self.rows else 1.0

    def per_task(self) -> TaskStats:
        """These statistics under the ``task`` weighting (a copy; the row counts are kept)."""
        if self.weighting == "task":
            return self
        def norm(d):
            return {k: v / max(self.rows.get(k, 1), 1) for k, v in d.items()}
        return TaskStats(norm(self.gram), norm(self.sqnorm), dict(self.rows), dict(self.fisher), dict(self.grad),
                         {k: v / max(float(v.sum()), 1.0) for k, v in self.counts.items()}, "task")

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flatten to ``{"<field>/<param>": tensor}`` for safetensors (rows as int64 scalars)."""
        out = {}
        for name in _FIELDS:
            for key, value in getattr(self, name).items():
                out[f"{name}/{key}"] = torch.tensor(value, dtype=torch.int64) if name == "rows" else value
        if self.weighting != "tokens":
            out[f"weighting/{self.weighting}"] = torch.tensor(1, dtype=torch.int64)
        return out

    def to(self, device: torch.device | str) -> TaskStats:
        """A copy with every tensor on ``device`` (the row counts are plain integers)."""
        moved = {name: {k: v.to(device) for k, v in getattr(self, name).items()}
                 for name in _FIELDS if name != "rows"}
        return TaskStats(rows=dict(self.rows), weighting=self.weighting, **moved)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], source: str = "statistics") -> TaskStats:
        stats = cls()
        for flat, value in tensors.items():
            name, _, key = flat.partition("/")
            if name == "weighting" and key in WEIGHTINGS:
                stats.weighting = key
                continue
            if name not in _FIELDS or not key:
                raise MergeflowError(f"{source}: unexpected tensor {flat!r}; expected <{'|'.join(_FIELDS)}>/<param>")
            getattr(stats, name)[key] = int(value) if name == "rows" else value
        return stats

    def kinds(self) -> set[str]:
        """The statistics present: a subset of gram, sqnorm, fisher, grad."""
        return {name for name in ("gram", "sqnorm", "fisher", "grad") if getattr(self, name)}
