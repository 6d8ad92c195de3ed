"""What several stage groups share: the saved base, heads and experts, loaded and checked."""

from __future__ import annotations

from pathlib import Path

import torch

from mergeflow import paths
from mergeflow.config import Config
from mergeflow.errors import MergeflowError
from mergeflow.evaluate import accuracy
from mergeflow.io import check_recorded, load_tensors, read_json
from mergeflow.merge import check_inputs
from mergeflow.models import ImageClassifier, load_base
from mergeflow.models.classifier import check_head


def load_base_model():
    if not (paths.BASE / "config.json").is_file():
        raise MergeflowError(f"{paths.BASE}: not found; run `mergeflow base` first (or the whole pipeline)")
    log = paths.BASE / "log.json"
    if log.is_file():
        check_recorded(paths.base_weights(), read_json(log).get("weights_sha256"), log, "rerun `mergeflow base`")
    return load_base(paths.BASE)


def logit_scale(model) -> float:
    return float(model.logit_scale.detach().exp())


def load_head(task: str, n_classes: int | None = None) -> torch.Tensor:
    head = load_tensors(paths.head(task)).get("weight")
    if head is None:
        raise MergeflowError(f"{paths.head(task)}: no 'weight' tensor; rerun `mergeflow heads --task {task}`")
    if n_classes is not None:
        check_head(head, n_classes, str(paths.head(task)))
    return head


def classifier(visual, task: str, scale: float, n_classes: int | None = None):
    return ImageClassifier(visual, load_head(task, n_classes), scale)


def load_expert(task: str, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An expert's state dict, checked against the hash its log recorded and the base's image encoder."""
    log = paths.expert_log(task)
    if log.is_file():
        check_recorded(paths.expert(task), read_json(log).get("weights_sha256"), log,
                       f"rerun `mergeflow finetune --task {task}`")
    return load_expert_file(paths.expert(task), reference)


def load_expert_file(path: Path, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = load_tensors(path)
    try:
        check_inputs(reference, {path.stem: state})
    except MergeflowError as exc:
        raise MergeflowError(f"{path}: does not match the base: {exc}") from None
    return state


def accuracy_of(classifier, images, labels, cfg: Config, device) -> float:
    return accuracy(classifier, images, labels, batch_size=cfg.evaluate.batch_size, device=device)


def load_merged(run: str) -> dict:
    """A merge run's saved tensors, refused when they are not what its merge report recorded."""
    report = paths.merge_report(run)
    if report.is_file():
        check_recorded(paths.merged(run), read_json(report).get("model_sha256"),
                       report, f"rerun `mergeflow merge --method {run}`")
    return load_tensors(paths.merged(run))

