"""Where every artifact lives, relative to the project root; the engines' rule files use the same layout."""

from __future__ import annotations

from pathlib import Path

PREPARED = Path("data/prepared")
EXEMPLARS = Path("data/exemplars")
FEATURES = Path("data/features")
BASE = Path("models/base")
HEADS = Path("models/heads")
EXPERTS = Path("models/experts")
MERGED = Path("models/merged")
IMPORTED = Path("models/imported")  # community checkpoints converted by `mergeflow import`
COMMUNITY = Path("models/community")  # where they are put by default (model.import.root)
REPORTS = Path("reports")
METRICS = REPORTS / "metrics"
MERGE_REPORTS = REPORTS / "merge"
EVALUATION = REPORTS / "evaluation"  # provenance of each metrics file: device, inputs, counts
FIGURES = REPORTS / "figures"


def prepared(task: str, split: str | None = None) -> Path:
    """``data/prepared/<task>/`` or the split file in it."""
    return PREPARED / task if split is None else PREPARED / task / f"{split}.safetensors"


def base_weights() -> Path:
    return BASE / "model.safetensors"


def base_config() -> Path:
    return BASE / "config.json"


def head(task: str) -> Path:
    return HEADS / f"{task}.safetensors"


def expert(task: str) -> Path:
    return EXPERTS / f"{task}.safetensors"


def expert_log(task: str) -> Path:
    return EXPERTS / f"{task}.log.json"


def exemplars(task: str) -> Path:
    return EXEMPLARS / f"{task}.json"


def features(variant: str, task: str, scale: float | None = None) -> Path:
    """A task's statistics; ``scale`` picks one value of a grid variant (``gram-aauto-…``)."""
    name = task if scale is None else f"{task}.a{scale}"
    return FEATURES / variant / f"{name}.safetensors"


def merged(run: str) -> Path:
    return MERGED / f"{run}.safetensors"


def merge_report(run: str) -> Path:
    return MERGE_REPORTS / f"{run}.json"


def metrics(model: str) -> Path:
    return METRICS / f"{model}.json"


def evaluation(model: str) -> Path:
    return EVALUATION / f"{model}.json"
