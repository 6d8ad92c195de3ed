"""The merge stage: one configured run, its statistics checked against the inputs they were computed from,
an ``auto`` scale chosen on the validation splits (:mod:`mergeflow.scale_choice`)."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from torch.func import functional_call
from tqdm import tqdm

from mergeflow import paths
from mergeflow.config import Config
from mergeflow.data.prepared import load_prepared
from mergeflow.device import resolve
from mergeflow.errors import MergeflowError
from mergeflow.features.stats import TaskStats
from mergeflow.io import hash_file, hash_file_cached, load_metadata, load_tensors, read_json, save_tensors, write_json
from mergeflow.merge import METHODS
from mergeflow.merge import merge as do_merge
from mergeflow.merge.context import TaskData
from mergeflow.models.classifier import normalize_images
from mergeflow.scale_choice import choose_scale, scale_rank
from mergeflow.stages.common import (
    accuracy_of,
    classifier,
    load_base_model,
    load_expert,
    load_head,
    load_merged,
    logit_scale,
)
from mergeflow.stages.evaluate import evaluate  # noqa: F401  (`merge --evaluate` scores the run in one process)


def load_stats(variant: str, task: str, scale: float | None = None):
    file = paths.features(variant, task, scale)
    rebuild = f"`mergeflow features --variant {variant}`"
    if not file.is_file():
        raise MergeflowError(f"{file}: not found; run {rebuild}")
    _check_recorded_inputs(file, rebuild)
    return TaskStats.from_tensors(load_tensors(file), str(file))


def _check_recorded_inputs(file: Path, rebuild: str) -> None:
    """Refuse statistics computed from another base, expert or exemplar list than the ones there now."""
    meta = load_metadata(file)
    task = meta.get("task")
    recorded = {"base_sha256": paths.base_weights(), "expert_sha256": paths.expert(task) if task else None,
                "exemplars_sha256": Path(meta["exemplars"]) if "exemplars" in meta else None}
    for key, source in recorded.items():
        if key in meta and source is not None and (not source.is_file() or hash_file_cached(source) != meta[key]):
            raise MergeflowError(f"{file}: stale, computed from another {source} than the one there now; "
                                 f"rebuild it with {rebuild}")


def _run_stats(cfg: Config, run, scale: float | None = None) -> dict | None:
    """Every task's statistics for ``run`` (the variants' fields joined); ``scale`` picks a grid variant's file."""
    if not run.variants:
        return None
    stats = {}
    for t in cfg.tasks:
        parts = [load_stats(v.name, t, scale if v.is_grid else None) for v in run.variants]
        merged_stats = parts[0]
        for extra in parts[1:]:
            for field in ("gram", "sqnorm", "rows", "fisher", "grad"):
                getattr(merged_stats, field).update(getattr(extra, field))
        stats[t] = merged_stats
    return stats


def _val_sets(cfg: Config):
    """Every task's validation split in memory (at most ``data.max_val`` images each): an ``auto`` scale
    scores them once per grid value."""
    sets = {}
    for t in cfg.tasks:
        images, labels = load_prepared(t, "val")
        sets[t] = (images[:], labels)
    return sets


def _val_normalized(cfg: Config, model, visual, state: dict, val: dict, expert_val: dict, device) -> float:
    visual.load_state_dict(state)
    norm = []
    for t, (x, y) in val.items():
        acc = accuracy_of(classifier(visual, t, logit_scale(model)), x, y, cfg, device)
        norm.append(acc / expert_val[t] if expert_val[t] > 0 else 0.0)
    return sum(norm) / len(norm)


def _merge_once(run, spec, hp, pre, experts, stats, device, data=None) -> tuple[dict, dict, float]:
    dev_pre = {k: v.to(device) for k, v in pre.items()}
    dev_experts = {t: {k: v.to(device) for k, v in sd.items()} for t, sd in experts.items()}
    dev_stats = stats
    if stats is not None and device.type != "cpu":
        dev_stats = {t: s.to(device) for t, s in stats.items()}
    diagnostics: dict = {}
    start = time.time()
    merged = do_merge(run.method, dev_pre, dev_experts, stats=dev_stats, diagnostics=diagnostics, data=data, **hp)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.time() - start
    if spec.task_aware:
        return merged, diagnostics, wall
    return {k: v.cpu() for k, v in merged.items()}, diagnostics, wall


def _task_data(cfg: Config, spec, hp: dict, model, device):
    """The encoder, heads and data the methods that run the model read (:class:`TaskData`)."""


    encoder = copy.deepcopy(model.visual).to(device).eval().requires_grad_(False)

    def encode(weights, images):
        return functional_call(encoder, weights, (normalize_images(images.to(device)),))

    split = hp.get("unlabeled", "test")
    unlabeled = {t: load_prepared(t, split)[0] for t in cfg.tasks} if "unlabeled" in spec.uses else {}
    val_accuracy = None
    if "validation" in spec.uses:
        val, scratch = _val_sets(cfg), copy.deepcopy(model.visual)

        def val_accuracy(weights, task):
            scratch.load_state_dict({k: v.cpu() for k, v in weights.items()})
            return accuracy_of(classifier(scratch, task, logit_scale(model)), *val[task], cfg, device)

    merged = {}
    if "merged" in spec.uses:
        merged[hp["base"]] = {k: v.to(device) for k, v in load_merged(hp["base"]).items()}
    heads = {t: load_head(t).to(device) for t in cfg.tasks}
    return TaskData(encode, heads, logit_scale(model), unlabeled, split, val_accuracy, merged)


def merge(cfg: Config, run_name: str) -> Path:
    """Merge with one configured run; an ``auto`` scale is chosen on the validation splits.

    For most methods the merged task vector is linear in the scale: one merge at scale 1 is rescaled to
    every grid value. A method whose statistics are recorded at the scale (CAT's α) merges once per
    non-zero grid value with that value's statistics; scale 0 is the pre-trained model.
    """
    run = cfg.run(run_name)
    spec = METHODS[run.method]
    device = resolve(cfg.device)
    model, _ = load_base_model()
    pre = {k: v.clone() for k, v in model.visual.state_dict().items()}
    experts = {t: load_expert(t, pre) for t in cfg.tasks}
    hp = dict(run.hparams)
    scale_key = spec.scale
    auto = scale_key is not None and hp[scale_key] == "auto"
    per_scale = auto and any(v.is_grid for v in run.variants)
    scale_info = {"name": scale_key, "value": hp.get(scale_key) if scale_key else None, "chosen_by": "fixed"}
    data = _task_data(cfg, spec, hp, model, device) if spec.uses else None
    if not auto:
        merged, diagnostics, wall = _merge_once(run, spec, hp, pre, experts, _run_stats(cfg, run), device, data)
    else:
        val = _val_sets(cfg)
        expert_val = {t: read_json(paths.expert_log(t), {"val_accuracy": (int, float)})["val_accuracy"]
                      for t in cfg.tasks}
        scratch = copy.deepcopy(model.visual)
        curve, kept, wall = [], None, 0.0  # kept: the best per-scale merge so far (one model in memory)
        if not per_scale:
            one, diagnostics, wall = _merge_once(run, spec, {**hp, scale_key: 1.0}, pre, experts,
                                                 _run_stats(cfg, run), device, data)
            delta = {k: one[k].float() - pre[k].float() for k in pre if pre[k].is_floating_point()}
        for s in tqdm(cfg.evaluate.scale_grid, desc=f"{run.name}: {scale_key} on validation", mininterval=2.0):
            s = float(s)
            if per_scale:
                if s == 0.0:
                    state, diag, w = pre, {}, 0.0
                else:
                    state, diag, w = _merge_once(run, spec, {**hp, scale_key: s}, pre, experts,
                                                 _run_stats(cfg, run, s), device, data)
                wall += w
            else:
                state = {k: (pre[k].float() + s * delta[k]).to(pre[k].dtype) if k in delta else pre[k] for k in pre}
            curve.append({"scale": s, "val_normalized": _val_normalized(cfg, model, scratch, state, val, expert_val,
                                                                        device)})
            if per_scale and (kept is None or scale_rank(curve[-1]) > scale_rank(kept[0])):
                kept = (curve[-1], state, diag)
        choice = choose_scale(curve)
        best = choice["value"]
        if per_scale:
            _, merged, diagnostics = kept
        else:
            merged = {k: (pre[k].float() + best * delta[k]).to(pre[k].dtype) if k in delta else pre[k] for k in pre}
        scale_info = {"name": scale_key, "value": best, "chosen_by": "validation", "on_edge": choice["on_edge"],
                      "grid": curve}
    inputs = {str(paths.base_weights()): hash_file(paths.base_weights())}
    inputs.update({str(paths.expert(t)): hash_file(paths.expert(t)) for t in cfg.tasks})
    for v in run.variants:
        scales = [s for s in cfg.evaluate.scale_grid if float(s) != 0.0] if v.is_grid else [None]
        for t in cfg.tasks:
            for s in scales:
                inputs[str(paths.features(v.name, t, s))] = hash_file(paths.features(v.name, t, s))
    if "merged" in spec.uses:
        inputs[str(paths.merged(hp["base"]))] = hash_file(paths.merged(hp["base"]))
    extra_bytes = 0
    if spec.task_aware:  # a shared part and a per-task part, in one file (masks bit-packed)
        tensors, layout = merged.to_tensors()
        extra_bytes = merged.extra_bytes()
        save_tensors(paths.merged(run.name), tensors, {"run": run.name, "method": run.method, "task_aware": layout})
    else:
        save_tensors(paths.merged(run.name), merged, {"run": run.name, "method": run.method})
    write_json(paths.merge_report(run.name), {
        "run": run.name, "method": run.method, "pretty": spec.pretty, "paper": spec.paper,
        "hyperparameters": run.hparams, "sweep": list(run.sweep) if run.sweep else None, "scale": scale_info,
        "variants": [v.name for v in run.variants], "wall_s": round(wall, 3), "device": str(device),
        "task_aware": spec.task_aware, "extra_bytes": extra_bytes, "training": spec.training,
        "unlabeled_split": data.unlabeled_split if data is not None and data.unlabeled else None,
        "diagnostics": diagnostics, "inputs": inputs, "model_sha256": hash_file(paths.merged(run.name))})
    return paths.merged(run.name)
