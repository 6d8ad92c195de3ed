"""What several stage groups share: the saved base, heads and experts, loaded and checked."""

from __future__ import annotations

from pathlib import Path

import torch

from mergeflow import paths
from mergeflow.config import Config
from mergeflow.errors import MergeflowError
from mergeflow.evaluate import accuracy
from mergeflow.io import load_tensors
from mergeflow.merge import check_inputs
from mergeflow.models import ImageClassifier, load_base
from mergeflow.models.classifier import check_head


def load_base_model():
    if not (paths.BASE / "config.json").is_file():
        raise MergeflowError(f"{paths.BASE}: not found; run `mergeflow base` first (or the whole pipeline)")
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
    """An expert's state dict, checked against the base's image encoder."""
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

