"""The task registry: one :class:`TaskSpec` per task name, registered by the module that defines it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from mergeflow.errors import MergeflowError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TaskSpec:
    """A classification task.

    Attributes:
        name: registry key, also the folder name under ``data/raw`` and ``data/prepared``.
        classnames: human-readable class names (used in zero-shot prompts), in label order. Empty when
            the dataset itself defines them (read from the raw folder by ``classnames_from``).
        templates: prompt templates with one ``{}`` for the class name.
        fetch: ``fetch(raw_dir, options)`` puts the raw data into ``raw_dir`` (download or generate).
        load: ``load(raw_dir, split)`` returns ``(dataset, classnames)`` with split in train|test;
            validation is carved out of train by :func:`load_split`, the task_vectors protocol.
        layout: what ``raw_dir`` must hold, for error messages.
        kind: ``offline`` (generated or bundled, no network) or ``real``.
    """

    name: str
    templates: Sequence[str]
    fetch: Callable[[Path, dict], None]
    load: Callable[[Path, str], tuple[Dataset, list[str]]]
    layout: str
    classnames: Sequence[str] = field(default_factory=tuple)
    kind: str = "offline"


TASKS: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    """Add a task to :data:`TASKS` (names are unique)."""
    if spec.name in TASKS:
        raise ValueError(f"task {spec.name!r} registered twice")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """The spec of a task; an unknown name is a :class:`MergeflowError` listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise MergeflowError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None


def val_indices(n_train: int, val_fraction: float = 0.1, max_val: int = 5000, seed: int = 0) -> torch.Tensor:
    """Indices of the validation part of a train split: ``min(⌊fraction·n⌋, max_val)``, seeded.

    The task_vectors protocol: validation is 10 % of train, at most 5000, and is the second part of
    ``torch.utils.data.random_split(train, [n - n_val, n_val], generator=Generator().manual_seed(seed))``,
    so the same images as theirs; the rest stays train. Returned sorted, so that a split's order never
    depends on the permutation.
    """
    n_val = min(int(n_train * val_fraction), max_val)
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
    return perm[n_train - n_val:].sort().values


def split_indices(n_train: int, split: str, val_fraction: float, max_val: int, seed: int) -> torch.Tensor:
    """Indices into the raw train set for ``train`` (without validation) or ``val``."""
    val = val_indices(n_train, val_fraction, max_val, seed)
    if split == "val":
        return val
    keep = torch.ones(n_train, dtype=torch.bool)
    keep[val] = False
    return keep.nonzero().flatten()


def load_split(
    name: str,
    split: str,
    root: str | Path,
    *,
    val_fraction: float = 0.1,
    max_val: int = 5000,
    seed: int = 0,
) -> Dataset:
    """A task's split as a ``Dataset`` of ``(PIL.Image, int)``, read from ``root/<name>``.

    ``classnames`` of the returned dataset are set as an attribute for the caller's convenience.
    """
    spec = get_task(name)
    if split not in SPLITS:
        raise MergeflowError(f"unknown split {split!r} for task {name!r}; expected one of {', '.join(SPLITS)}")
    raw_dir = Path(root) / name
    if not raw_dir.is_dir():
        raise MergeflowError(
            f"{raw_dir}: raw data of task {name!r} not found; run `mergeflow fetch --task {name}` "
            f"or put it there laid out as: {spec.layout}"
        )
    if split == "test":
        dataset, classnames = spec.load(raw_dir, "test")
    else:
        full, classnames = spec.load(raw_dir, "train")
        idx = split_indices(len(full), split, val_fraction, max_val, seed)
        dataset = Subset(full, idx.tolist())
    dataset.classnames = list(spec.classnames) or classnames
    return dataset
