"""The text task registry: every task declares its metric, its labels (or a score) and how a split is read.

Offline tasks are generated (:mod:`mergeflow.text.offline`); GLUE tasks are read from a local folder
(:mod:`mergeflow.text.glue`), ``<folder>/<task>/``; generation tasks (:mod:`mergeflow.text.generation`) are
generated prompts whose answers a causal language model writes; calibration tasks are a published expert's
texts (``<folder>/<task>/texts.txt``, one example per line), read only for the statistics of data-aware methods:
the merged model is scored outside mergeflow (the LOT paper's Qwen3 embedding and reranker experts, scored by
MTEB).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mergeflow.errors import MergeflowError
from mergeflow.text import generation, glue, offline
from mergeflow.text.glue import TextSplit
from mergeflow.text.metrics import get_metric


@dataclass(frozen=True)
class TextTask:
    """A text task.

    Attributes:
        name: registry key (the folder name under the raw and prepared folders).
        metric: a key of :data:`mergeflow.text.metrics.METRICS`.
        labels: class names in label order; None for a regression task (one output, a score) and a
            generation task (its answers are texts).
        read: ``read(raw_dir, split, options) -> TextSplit`` for split train | test (a generation task's
            ``texts_a`` are its prompts, its ``labels`` the answers).
        kind: ``offline`` (generated), ``glue`` (read from a local folder), ``generation`` (generated prompts
            a causal language model answers) or ``calibration`` (texts of a causal LM's published expert, for
            the statistics only; no split is scored here).
    """

    name: str
    metric: str
    labels: tuple[str, ...] | None
    read: Callable[[Path, str, dict], TextSplit]
    kind: str

    @property
    def generative(self) -> bool:
        return self.kind == "generation"

    @property
    def calibration(self) -> bool:
        return self.kind == "calibration"

    @property
    def causal(self) -> bool:
        """The task's model is the base's whole causal LM (no head of its own)."""
        return self.kind in ("generation", "calibration")

    @property
    def regression(self) -> bool:
        return self.labels is None and not self.causal

    @property
    def num_outputs(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    def score(self, predictions, references, metric: str | None = None) -> dict[str, float]:
        """The figures of ``metric`` (the task's own when None) in percent, ``score`` the headline."""
        return get_metric(metric or self.metric)(predictions, references)


TEXT_TASKS: dict[str, TextTask] = {}


def register_text_task(task: TextTask) -> TextTask:
    if task.name in TEXT_TASKS:
        raise ValueError(f"text task {task.name!r} registered twice")
    get_metric(task.metric)
    TEXT_TASKS[task.name] = task
    return task


def get_text_task(name: str) -> TextTask:
    try:
        return TEXT_TASKS[name]
    except KeyError:
        raise MergeflowError(f"unknown text task {name!r}; known: {', '.join(sorted(TEXT_TASKS))}") from None


def task_metric(raw: dict, name: str) -> str:
    """The metric task ``name`` is scored by in a run (``raw``: its configuration): ``data.metrics``' choice where
    it names the task (FusionBench's GPT-2 table scores every GLUE task by accuracy), else the task's own."""
    return (raw["data"].get("metrics") or {}).get(name, get_text_task(name).metric)


def scored_here(tasks: list[str]) -> bool:
    """Whether mergeflow scores a run of ``tasks``: not when they are calibration tasks (the merged model is
    scored outside, e.g. by MTEB; the configuration check refuses a run that mixes the two)."""
    return not any(get_text_task(t).calibration for t in tasks)


# metrics that score class ids, those that score a regression's values, and those that score written answers
CLASS_METRICS = ("accuracy", "f1_accuracy", "matthews")
SCORE_METRICS = ("pearson_spearman",)
ANSWER_METRICS = ("exact_match",)


def fitting_metrics(task: TextTask) -> tuple[str, ...]:
    """The metrics that can score ``task``'s predictions."""
    if task.calibration:
        return ("external",)
    return ANSWER_METRICS if task.generative else SCORE_METRICS if task.regression else CLASS_METRICS


def _offline_reader(name: str):
    def read(raw_dir: Path, split: str, options: dict) -> TextSplit:
        count = int(options.get(split, {"train": 2000, "test": 500}[split]))
        examples = offline.generate(name, split, count, int(options.get("seed", 0)))
        labels = np.array([e[2] for e in examples],
                          dtype=np.float32 if offline.TASKS[name][2] is None else np.int64)
        pair = examples[0][1] is not None
        return TextSplit([e[0] for e in examples], [e[1] for e in examples] if pair else None, labels)
    return read


def _generation_reader(name: str):
    def read(raw_dir: Path, split: str, options: dict) -> TextSplit:
        count = int(options.get(split, {"train": 2000, "test": 500}[split]))
        examples = generation.generate(name, split, count, int(options.get("seed", 0)))
        return TextSplit([p for p, _ in examples], None, np.array([a for _, a in examples], dtype=object))
    return read


def _glue_reader(name: str):
    def read(raw_dir: Path, split: str, options: dict) -> TextSplit:
        return glue.read_glue(raw_dir, name, split)
    return read


CALIBRATION_FILE = "texts.txt"


def _calibration_reader(name: str):
    def read(raw_dir: Path, split: str, options: dict) -> TextSplit:  # every text is train: nothing is scored
        file = Path(raw_dir) / CALIBRATION_FILE
        if not file.is_file():
            raise MergeflowError(f"{file}: not found; a calibration task reads its texts there, one example a line")
        with open(file, encoding="utf-8", errors="strict") as f:
            texts = [line.rstrip("\n") for line in f if line.strip()]
        if not texts:
            raise MergeflowError(f"{file}: no text (one example a line)")
        return TextSplit(texts, None, np.zeros(len(texts), dtype=np.int64))
    return read


# calibration tasks: the texts of a published expert (the LOT paper's Qwen3-Embedding and Qwen3-Reranker)
CALIBRATION_TASKS = {
    "embedding": "texts an embedding model encodes (queries and passages, with its instruction)",
    "reranking": "query-document pairs in a reranker's prompt",
}

for _name, (_draw, _metric, _labels) in offline.TASKS.items():
    register_text_task(TextTask(_name, _metric, _labels, _offline_reader(_name), "offline"))
for _name in generation.TASKS:
    register_text_task(TextTask(_name, "exact_match", None, _generation_reader(_name), "generation"))
for _name, _task in glue.GLUE.items():
    register_text_task(TextTask(_name, _task.metric, _task.labels, _glue_reader(_name), "glue"))
for _name in CALIBRATION_TASKS:
    register_text_task(TextTask(_name, "external", None, _calibration_reader(_name), "calibration"))
