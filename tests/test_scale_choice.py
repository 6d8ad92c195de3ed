"""Choosing a scale on validation, the task-vector geometry and the papers' claims — pure functions."""

import pandas as pd
import pytest
import torch

from mergeflow.errors import MergeflowError
from mergeflow.geometry import task_vector_geometry, task_vector_norm_ratio
from mergeflow.report.claims import check_claims
from mergeflow.scale_choice import choose_scale


def _curve(values):
    return [{"scale": s, "val_normalized": v} for s, v in values]


def test_choose_scale_takes_the_best_and_flags_the_grid_edges():
    assert choose_scale(_curve([(0, 0.5), (0.3, 0.9), (1.0, 0.7)])) == {"value": 0.3, "on_edge": False}
    assert choose_scale(_curve([(0, 0.9), (0.3, 0.8), (1.0, 0.7)])) == {"value": 0, "on_edge": True}
    assert choose_scale(_curve([(0, 0.5), (0.3, 0.8), (1.0, 0.9)])) == {"value": 1.0, "on_edge": True}
    # a tie goes to the smaller scale (the smaller change to the pre-trained model)
    assert choose_scale(_curve([(0.5, 0.8), (0.3, 0.8), (1.0, 0.1)]))["value"] == 0.3
    assert choose_scale(_curve([(0.3, 0.8)])) == {"value": 0.3, "on_edge": False}


def test_choose_scale_refuses_an_empty_grid():
    with pytest.raises(MergeflowError, match="scale_grid is empty"):
        choose_scale([])


def test_task_vector_geometry_by_hand():
    pre = {"w": torch.tensor([3.0, 4.0]), "step": torch.tensor([1])}
    experts = {"a": {"w": torch.tensor([3.3, 4.0]), "step": torch.tensor([1])},
               "b": {"w": torch.tensor([3.0, 3.6]), "step": torch.tensor([1])},
               "c": {"w": torch.tensor([2.7, 4.0]), "step": torch.tensor([1])}}
    geo = task_vector_geometry(pre, experts)
    assert geo["norm_ratio"] == pytest.approx({"a": 0.06, "b": 0.08, "c": 0.06})
    assert geo["cosine"] == pytest.approx({"a|b": 0.0, "a|c": -1.0, "b|c": 0.0})
    assert task_vector_norm_ratio(pre, pre) == 0.0


def _summary(**avg):
    return pd.DataFrame([{"model": m, "average": a, "drop_std": d} for m, (a, d) in avg.items()])


def test_claims_report_held_failed_and_not_run():
    s = _summary(zeroshot=(0.5, None), individual=(0.9, None), task_arithmetic=(0.7, 0.05), ties=(0.72, 0.06),
                 pcb=(0.71, 0.04), cat=(0.75, 0.02), lot=(0.74, 0.03), **{"lot--exemplars-4": (0.73, 0.03)})
    claims = {c.text: c for c in check_claims(s, {64: "lot", 4: "lot--exemplars-4"})}
    assert claims["Task arithmetic beats the zero-shot model"].outcome == "held"
    assert claims["TIES beats task arithmetic"].outcome == "held"
    pcb = claims["PCB beats TIES"]
    assert pcb.outcome == "failed" and pcb.evidence == "pcb 71.0 vs ties 72.0 (-1.0 points)"
    assert claims["LOT beats CAT"].outcome == "failed"
    assert claims["CAT and LOT have the lowest standard deviation of per-task drops"].outcome == "held"
    assert claims["LOT improves as exemplars grow"].outcome == "held"
    assert claims["LOT improves as exemplars grow"].evidence == "4: 73.0 → 64: 74.0"
    swept = pd.concat([s, _summary(**{"cat--lambda-1.0": (0.76, 0.02), "cat--c-2": (0.70, 0.02)})])
    lost = {c.text: c for c in check_claims(swept.assign(average=swept["average"].where(swept["model"] != "cat", 0.6)),
                                            {64: "lot"})}
    assert lost["CAT beats task arithmetic"].evidence == ("cat 60.0 vs task_arithmetic 70.0 (-10.0 points); sweep runs "
                                                          "above task_arithmetic: cat--lambda-1.0 76.0")
    missing = {c.text: c for c in check_claims(s[s["model"] != "pcb"], {64: "lot"})}
    assert missing["PCB beats TIES"].outcome == "not run"
    assert missing["LOT improves as exemplars grow"].outcome == "not run"
