"""What a text-suite configuration must hold beyond the schema: text tasks, a text architecture, sequence
lengths its positions allow, and merge methods the text path implements."""

from __future__ import annotations

from mergeflow.errors import MergeflowError
from mergeflow.merge import METHODS
from mergeflow.text.models import check_text_model
from mergeflow.text.tasks import CLASS_METRICS, SCORE_METRICS, TEXT_TASKS

# statistics the text suite records (features.tokens): token Grams and energies, the body's Fisher and mean
# absolute gradients
TEXT_STAT_KINDS = {"gram", "fisher", "grad"}
# what the text merge stage gives the methods that run the model (mergeflow.text.task_data): unlabeled token
# batches through each task's own head, and a body's validation score. Surgery's output adapters sit between
# the encoder and a zero-shot head, a place a GLUE classifier (its head reads the whole sequence) lacks.
TEXT_USES = {"unlabeled", "validation"}


def unsupported(method: str) -> str | None:
    """Why ``method`` cannot run on the text suite, or None."""
    spec = METHODS[method]
    if set(spec.uses) - TEXT_USES:
        return ("it trains adapters on the encoder's output, between the encoder and a zero-shot head, which a "
                "text classifier's head does not have")
    kinds = {need.kind for need in spec.needs} - TEXT_STAT_KINDS
    if kinds:
        return f"it needs {', '.join(sorted(kinds))} statistics, which the text suite does not record"
    return None


def check(cfg) -> None:
    """Refuse a text configuration the text stages could not run, in one line naming the key."""
    src, raw = cfg.source, cfg.raw
    for task in cfg.tasks:
        if task not in TEXT_TASKS:
            raise MergeflowError(f"{src}: data.tasks: unknown text task {task!r}; known: "
                                 f"{', '.join(sorted(TEXT_TASKS))}")
    for task, metric in (raw["data"].get("metrics") or {}).items():
        if task not in cfg.tasks:
            raise MergeflowError(f"{src}: data.metrics: {task!r} is not in data.tasks")
        fits = SCORE_METRICS if TEXT_TASKS[task].labels is None else CLASS_METRICS
        if metric not in fits:
            raise MergeflowError(f"{src}: data.metrics.{task} = {metric!r}: {task} is "
                                 f"{'a regression' if TEXT_TASKS[task].labels is None else 'a classification'} task, "
                                 f"scored by {' or '.join(fits)}")
    if "max_length" not in raw["data"]:
        raise MergeflowError(f"{src}: data.max_length is required for the text suite (tokens per sequence)")
    check_text_model(raw["model"]["arch"], raw["model"]["pretrained"], int(raw["data"]["max_length"]), src)
    glue = [t for t in cfg.tasks if TEXT_TASKS[t].kind == "glue"]
    if glue and not raw["data"]["download"] and raw["data"].get("local_dir") is None:
        raise MergeflowError(f"{src}: data.download is false but data.local_dir is not set: name the folder that "
                             f"holds your GLUE copies of {', '.join(glue)} as <local_dir>/<task>/")
    spec = raw["model"].get("import") or {}
    if spec.get("format") not in (None, "hf"):
        raise MergeflowError(f"{src}: model.import.format = {spec['format']!r}: the text suite imports Hugging Face "
                             "folders (format: hf, one folder per task under root)")
    if spec.get("format") == "hf":
        if not spec.get("root"):
            raise MergeflowError(f"{src}: model.import.root is required: the folder holding one Hugging Face "
                                 "classifier folder per task")
        unknown = sorted(set(spec.get("tasks") or {}) - set(cfg.tasks))
        if unknown:
            raise MergeflowError(f"{src}: model.import.tasks: {unknown[0]!r} is not in data.tasks")
    for method in [*raw["merge"]["methods"], *raw["sweeps"]]:
        why = unsupported(method)
        if why is not None:
            raise MergeflowError(f"{src}: merge.methods: {method!r} is not available for the text suite: {why}")
