"""The features stage: per-layer statistics of each task's exemplars (Grams, Fisher, gradients)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from mergeflow import paths
from mergeflow.config import Config, Variant
from mergeflow.data.prepared import load_prepared
from mergeflow.device import resolve
from mergeflow.errors import MergeflowError
from mergeflow.features.collect import collect_stats, fisher_diagonal, mean_abs_gradient
from mergeflow.features.stats import TaskStats
from mergeflow.io import hash_file, read_json, save_tensors
from mergeflow.stages.common import classifier, load_base_model, load_expert, logit_scale


def _scaled_visual(model, task: str, scale: float):
    """A copy of the base's image encoder at ``θ_pre + scale · T_task``."""
    visual = copy.deepcopy(model.visual)
    if scale != 0.0:
        pre = visual.state_dict()
        expert = load_expert(task, pre)
        visual.load_state_dict({k: (pre[k].float() + scale * (expert[k].float() - pre[k].float())).to(pre[k].dtype)
                                for k in pre})
    return visual


def features(cfg: Config, task: str, variant: str) -> Path:
    """Statistics ``variant`` of ``task``: Grams/energies, Fisher or gradients, on its first n exemplars.

    A grid variant (scale ``auto``) is one file per non-zero value of ``evaluate.scale_grid``.
    """
    v = Variant.parse(variant)
    model, _ = load_base_model()  # once: a grid variant scales the same base once per grid value
    if not v.is_grid:
        return _features_at(cfg, model, task, v, v.scale_value, paths.features(variant, task))
    out = paths.features(variant, task)
    for scale in cfg.evaluate.scale_grid:
        if float(scale) != 0.0:
            _features_at(cfg, model, task, v, float(scale), paths.features(variant, task, scale))
    return out.parent


def _features_at(cfg: Config, model, task: str, v: Variant, scale: float, out: Path) -> Path:
    device = resolve(cfg.device)
    ex_file = paths.exemplars(task) if v.seed == cfg.exemplars.seed else paths.EXEMPLARS / f"{task}.seed{v.seed}.json"
    listing = read_json(ex_file, {"count": int, "indices": list})
    if v.count > listing["count"]:
        raise MergeflowError(f"variant {v.name}: {v.count} exemplars asked but {ex_file} lists {listing['count']}; "
                             "raise exemplars.pool")
    images, labels = load_prepared(task, "train")
    chosen = listing["indices"][:v.count]
    if len(chosen) < v.count or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(labels)
                                        for i in chosen):
        raise MergeflowError(f"{ex_file}: indices must be {v.count} or more integers in [0, {len(labels)}) (the "
                             f"train split); rerun `mergeflow exemplars --task {task}`")
    idx = torch.tensor(chosen, dtype=torch.int64)
    images, labels = images[idx], labels[idx]
    visual = _scaled_visual(model, task, scale).to(device)
    dtype = torch.float64 if cfg.features.dtype == "float64" else torch.float32
    stats = TaskStats()
    if v.kind == "gram":
        bs = cfg.features.batch_size
        stats = collect_stats(visual, (images[i:i + bs] for i in range(0, len(images), bs)), dtype=dtype, device=device)
    elif v.kind == "fisher":
        clf = classifier(visual, task, logit_scale(model))
        stats.fisher = fisher_diagonal(clf, images, labels if cfg.features.fisher_labels else None, device=device,
                                       seed=v.seed)
    else:
        clf = classifier(visual, task, logit_scale(model))
        stats.grad = mean_abs_gradient(clf, images, labels, batch_size=cfg.features.batch_size, device=device)
    meta = {"variant": v.name, "task": task, "scale": scale, "exemplars": str(ex_file),
            "exemplars_sha256": hash_file(ex_file), "base_sha256": hash_file(paths.base_weights())}
    if scale != 0.0:
        meta["expert_sha256"] = hash_file(paths.expert(task))
    save_tensors(out, stats.to_tensors(), meta)
    return out

