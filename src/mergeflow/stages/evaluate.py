"""The evaluate stage: test accuracy of zero-shot, the experts or a merge run on every task."""

from __future__ import annotations

import copy
from pathlib import Path

from mergeflow import paths
from mergeflow.config import Config
from mergeflow.data.prepared import load_prepared
from mergeflow.device import resolve
from mergeflow.evaluate import accuracy, summarise
from mergeflow.geometry import task_vector_geometry
from mergeflow.io import hash_file, load_metadata, read_json, write_json
from mergeflow.merge.task_aware import AdaptedEncoder, from_tensors
from mergeflow.models.factory import load_visual_state
from mergeflow.stages.common import classifier, load_base_model, load_expert, load_merged, logit_scale


def evaluate(cfg: Config, model_name: str) -> Path:
    """Test accuracy of ``zeroshot``, ``individual`` or a merge run on every task.

    Writes ``reports/metrics/<model>.json`` (numbers only: the DVC metric) and
    ``reports/evaluation/<model>.json`` (how they were produced).
    """
    device = resolve(cfg.device)
    model, _ = load_base_model()
    pre = model.visual.state_dict()
    scale = logit_scale(model)
    visual = copy.deepcopy(model.visual)
    per_task_part = None  # a task-aware result: each task scored with its own part
    if model_name not in ("zeroshot", "individual"):
        cfg.run(model_name)

        state = load_merged(model_name)
        layout = load_metadata(paths.merged(model_name)).get("task_aware")
        if layout:
            per_task_part = from_tensors(state, layout)
        else:
            load_visual_state(visual, state, str(paths.merged(model_name)))
    per_task, inputs = {}, {}
    for t in cfg.tasks:
        images, labels = load_prepared(t, "test")
        encoder = visual
        if model_name == "individual":
            visual.load_state_dict(load_expert(t, pre))
            inputs[str(paths.expert(t))] = hash_file(paths.expert(t))
        elif per_task_part is not None:
            load_visual_state(visual, per_task_part.state(pre, t), str(paths.merged(model_name)))
            if per_task_part.kind == "adapted":
                encoder = AdaptedEncoder(visual, per_task_part.adapter(t))
        acc = accuracy(classifier(encoder, t, scale, None), images, labels, batch_size=cfg.evaluate.batch_size,
                       device=device)
        per_task[t] = {"accuracy": acc, "count": int(len(labels))}
    individual, run_report = None, None
    if model_name not in ("zeroshot", "individual"):
        individual = {t: {"accuracy": a}
                      for t, a in read_json(paths.metrics("individual"), {"accuracy": dict})["accuracy"].items()}
        inputs[str(paths.merged(model_name))] = hash_file(paths.merged(model_name))
        run_report = read_json(paths.merge_report(model_name))
    summary = summarise(per_task, individual)
    # the metrics file holds numbers only, so that `dvc metrics diff` and `dvc exp show` compare accuracies;
    # what produced them (device, inputs, counts, task-vector geometry) goes beside it, in reports/evaluation
    numbers = {"average": summary["average"]}
    if individual:
        numbers.update(normalized=summary["normalized"], drop_std=summary["drop_std"])
    if run_report is not None:
        if isinstance(run_report["scale"]["value"], (int, float)):
            numbers["scale"] = run_report["scale"]["value"]
        numbers["merge_wall_s"] = run_report["wall_s"]
    numbers["accuracy"] = {t: v["accuracy"] for t, v in per_task.items()}
    record = {"model": model_name, "device": str(device), "count": {t: v["count"] for t, v in per_task.items()}}
    if individual:
        record["normalized_per_task"] = summary["normalized_per_task"]
    if model_name == "individual":
        record["task_vectors"] = task_vector_geometry(pre, {t: load_expert(t, pre) for t in cfg.tasks})
    record["inputs"] = inputs
    write_json(paths.evaluation(model_name), record)
    write_json(paths.metrics(model_name), numbers)
    return paths.metrics(model_name)

