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


class SuiteLayout:
    """The same layout for another suite, under ``data/<suite>/``, ``models/<suite>/`` and ``reports/<suite>/``.

    The vision suite keeps the unprefixed folders above (its runs and ``dvc.lock`` predate suites); every
    other suite's artifacts sit beside them, so one workspace holds several suites at once.
    """

    def __init__(self, suite: str):
        self.suite = suite
        self.raw = Path("data/raw") / suite
        self.prepared_dir = Path("data") / suite / "prepared"
        self.exemplars_dir = Path("data") / suite / "exemplars"
        self.features_dir = Path("data") / suite / "features"
        self.base = Path("models") / suite / "base"
        self.experts = Path("models") / suite / "experts"
        self.merged_dir = Path("models") / suite / "merged"
        self.reports = REPORTS / suite

    def prepared(self, task: str, split: str | None = None) -> Path:
        return self.prepared_dir / task if split is None else self.prepared_dir / task / f"{split}.safetensors"

    def base_weights(self) -> Path:
        return self.base / "model.safetensors"

    def tokenizer(self) -> Path:
        return self.base / "tokenizer.json"

    def expert(self, task: str) -> Path:
        return self.experts / f"{task}.safetensors"

    def expert_log(self, task: str) -> Path:
        return self.experts / f"{task}.log.json"

    def exemplars(self, task: str) -> Path:
        return self.exemplars_dir / f"{task}.json"

    def features(self, variant: str, task: str, scale: float | None = None) -> Path:
        name = task if scale is None else f"{task}.a{scale}"
        return self.features_dir / variant / f"{name}.safetensors"

    def merged(self, run: str) -> Path:
        return self.merged_dir / f"{run}.safetensors"

    def merge_report(self, run: str) -> Path:
        return self.reports / "merge" / f"{run}.json"

    def metrics(self, model: str) -> Path:
        return self.reports / "metrics" / f"{model}.json"

    def evaluation(self, model: str) -> Path:
        return self.reports / "evaluation" / f"{model}.json"


TEXT = SuiteLayout("text")
# the generation suite (suite: lm): causal language models answering generated prompts, run by the text stages
LM = SuiteLayout("lm")
# the suites mergeflow.stages.text runs, by name
TEXT_LAYOUTS = {"text": TEXT, "lm": LM}
