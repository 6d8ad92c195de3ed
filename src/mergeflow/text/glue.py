"""GLUE from local folders: GLUE's own TSV files, or the Hugging Face ``datasets`` save-to-disk layout.

Both give one :class:`TextSplit` per split with Hugging Face's label ids (MNLI: entailment 0, neutral 1,
contradiction 2; QNLI and RTE: entailment 0, not_entailment 1). The protocol of the merging papers takes
GLUE's validation split as the test split (GLUE's test labels are hidden); validation is carved out of
train by the pipeline. A missing split, file or column is one line naming it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mergeflow.errors import MergeflowError


@dataclass(frozen=True)
class TextSplit:
    """Texts and labels of one split: ``texts_b`` None for single-sentence tasks; labels int64 class ids or
    float32 scores."""

    texts_a: list[str]
    texts_b: list[str] | None
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.texts_a)


@dataclass(frozen=True)
class GlueTask:
    """Where a GLUE task's columns are: in the TSV files (``tsv``: header names, or positions for CoLA's
    header-less files) and in the ``datasets`` layout (``hf``); its metric and labels (None: a score)."""

    folder: str  # the task's folder name in GLUE's download (CoLA, SST-2, ...)
    tsv: tuple  # (text_a, text_b or None, label) column names, or ints for header-less files
    hf: tuple[str, str | None, str]
    metric: str
    labels: tuple[str, ...] | None
    test_file: str = "dev.tsv"
    test_split: str = "validation"
    label_names: dict[str, int] | None = None  # text labels of the TSVs → ids


_NLI = {"entailment": 0, "not_entailment": 1}
GLUE: dict[str, GlueTask] = {
    "cola": GlueTask("CoLA", (3, None, 1), ("sentence", None, "label"), "matthews", ("unacceptable", "acceptable")),
    "sst2": GlueTask("SST-2", ("sentence", None, "label"), ("sentence", None, "label"), "accuracy",
                     ("negative", "positive")),
    "mrpc": GlueTask("MRPC", ("#1 String", "#2 String", "Quality"), ("sentence1", "sentence2", "label"),
                     "f1_accuracy", ("not_equivalent", "equivalent")),
    "stsb": GlueTask("STS-B", ("sentence1", "sentence2", "score"), ("sentence1", "sentence2", "label"),
                     "pearson_spearman", None),
    "qqp": GlueTask("QQP", ("question1", "question2", "is_duplicate"), ("question1", "question2", "label"),
                    "f1_accuracy", ("not_duplicate", "duplicate")),
    "mnli": GlueTask("MNLI", ("sentence1", "sentence2", "gold_label"), ("premise", "hypothesis", "label"), "accuracy",
                     ("entailment", "neutral", "contradiction"), "dev_matched.tsv", "validation_matched",
                     {"entailment": 0, "neutral": 1, "contradiction": 2}),
    "qnli": GlueTask("QNLI", ("question", "sentence", "label"), ("question", "sentence", "label"), "accuracy",
                     ("entailment", "not_entailment"), label_names=_NLI),
    "rte": GlueTask("RTE", ("sentence1", "sentence2", "label"), ("sentence1", "sentence2", "label"), "accuracy",
                    ("entailment", "not_entailment"), label_names=_NLI),
}


def get_glue(name: str) -> GlueTask:
    try:
        return GLUE[name]
    except KeyError:
        raise MergeflowError(f"unknown GLUE task {name!r}; known: {', '.join(GLUE)}") from None


def _labels(values: list[str], task: GlueTask, file: Path) -> np.ndarray:
    if task.labels is None:
        try:
            return np.array([float(v) for v in values], dtype=np.float32)
        except ValueError as exc:
            raise MergeflowError(f"{file}: a score is not a number ({exc})") from None
    out = []
    for v in values:
        if task.label_names and v in task.label_names:
            out.append(task.label_names[v])
            continue
        try:
            label = int(v)
        except ValueError:
            raise MergeflowError(f"{file}: label {v!r} is not one of {', '.join(task.label_names or ['0', '1'])}") \
                from None
        if not 0 <= label < len(task.labels):
            raise MergeflowError(f"{file}: label {label} outside 0..{len(task.labels) - 1}")
        out.append(label)
    return np.array(out, dtype=np.int64)


def read_tsv(folder: str | Path, name: str, split: str) -> TextSplit:
    """``split`` (train | test) of GLUE task ``name`` from GLUE's TSV files in ``folder``."""
    task = get_glue(name)
    folder = Path(folder)
    file = folder / ("train.tsv" if split == "train" else task.test_file)
    if not file.is_file():
        raise MergeflowError(f"{file}: GLUE {name} split {split!r} not found (expected GLUE's {file.name})")
    with file.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    header = isinstance(task.tsv[0], str)
    if header:
        if not rows:
            raise MergeflowError(f"{file}: empty")
        names, rows = rows[0], rows[1:]
        missing = [c for c in task.tsv if c is not None and c not in names]
        if missing:
            raise MergeflowError(f"{file}: no column {missing[0]!r} (columns: {', '.join(names)})")
        index = [names.index(c) if c is not None else None for c in task.tsv]
    else:
        index = list(task.tsv)
    width = max(i for i in index if i is not None)
    for line, row in enumerate(rows, start=2 if header else 1):
        if len(row) <= width:
            raise MergeflowError(f"{file}: line {line} has {len(row)} columns; expected at least {width + 1}")
    a, b, y = index
    return TextSplit([r[a] for r in rows], [r[b] for r in rows] if b is not None else None,
                     _labels([r[y] for r in rows], task, file))


def read_saved(folder: str | Path, name: str, split: str) -> TextSplit:
    """``split`` of GLUE task ``name`` from a ``datasets`` ``save_to_disk`` folder (a DatasetDict)."""
    try:
        import datasets
    except ImportError:
        raise MergeflowError("reading the datasets save-to-disk layout needs the `datasets` package: "
                             "pip install 'mergeflow[glue]'") from None
    task = get_glue(name)
    folder = Path(folder)
    wanted = "train" if split == "train" else task.test_split
    where = folder / wanted
    if not (where / "dataset_info.json").is_file():
        raise MergeflowError(f"{where}: GLUE {name} split {wanted!r} not found (a datasets save_to_disk folder)")
    data = datasets.load_from_disk(str(where))
    a, b, y = task.hf
    for column in (a, b, y):
        if column is not None and column not in data.column_names:
            raise MergeflowError(f"{where}: no column {column!r} (columns: {', '.join(data.column_names)})")
    labels = np.asarray(data[y], dtype=np.float32 if task.labels is None else np.int64)
    if task.labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= len(task.labels)):
        raise MergeflowError(f"{where}: label {int(labels.min() if labels.min() < 0 else labels.max())} outside "
                             f"0..{len(task.labels) - 1} (GLUE's hidden test labels are -1: use validation)")
    return TextSplit(list(data[a]), list(data[b]) if b is not None else None, labels)


def read_glue(folder: str | Path, name: str, split: str) -> TextSplit:
    """Either layout, whichever ``folder`` holds (TSV files, or save-to-disk split folders)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MergeflowError(f"{folder}: GLUE {name} folder not found")
    if any(folder.glob("*.tsv")):
        return read_tsv(folder, name, split)
    return read_saved(folder, name, split)


HUB_DATASET = "nyu-mll/glue"  # GLUE on the Hugging Face hub: one configuration per task


def download_glue(name: str, out: str | Path) -> Path:
    """Fetch GLUE task ``name`` with ``datasets`` (needs a network) into ``out``, in the save-to-disk layout
    that :func:`read_saved` reads. ``out`` is the fetch stage's fresh temporary folder: the stage marks it
    and renames it into place, and never replaces a folder it did not make."""
    get_glue(name)
    try:
        import datasets
    except ImportError:
        raise MergeflowError("data.download for GLUE needs the `datasets` package: pip install 'mergeflow[glue]'") \
            from None
    try:
        data = datasets.load_dataset(HUB_DATASET, name)
    except Exception as exc:  # noqa: BLE001 - network and hub failures come as many types
        raise MergeflowError(f"GLUE {name}: cannot download {HUB_DATASET} here ({type(exc).__name__}); put GLUE's "
                             "TSV files or a save_to_disk folder in data.local_dir and set data.download: false") \
            from None
    data.save_to_disk(str(out))
    return Path(out)
