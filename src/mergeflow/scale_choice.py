"""Choosing a merge scale on validation: a pure function of the validation curve."""

from __future__ import annotations

from mergeflow.errors import MergeflowError


def scale_rank(point: dict) -> tuple[float, float]:
    """Higher is better: the validation score, then the smaller scale (the smaller change to the base)."""
    return point["val_normalized"], -point["scale"]


def choose_scale(curve: list[dict]) -> dict:
    """The grid point with the best average normalised validation accuracy (the smaller scale on a tie),
    and whether it lies on the grid's edge (then the grid, not the method, may be what limits it)."""
    if not curve:
        raise MergeflowError("evaluate.scale_grid is empty: no scale to choose")
    best = max(curve, key=scale_rank)
    scales = [c["scale"] for c in curve]
    edge = len(scales) > 1 and best["scale"] in (min(scales), max(scales))
    return {"value": best["scale"], "on_edge": edge}

