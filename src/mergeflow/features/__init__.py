"""Per-layer statistics for the data-dependent merge methods: exemplars, hooks, Fisher and gradients."""

from mergeflow.features.stats import TaskStats

__all__ = ["TaskStats"]
