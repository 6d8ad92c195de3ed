"""What a text- or lm-suite configuration must hold beyond the schema: text tasks, a text architecture, sequence
lengths its positions allow, and merge methods the text path implements."""

from __future__ import annotations

from mergeflow.errors import MergeflowError
from mergeflow.merge import METHODS
from mergeflow.text.models import check_text_model
from mergeflow.text.tasks import TEXT_TASKS, fitting_metrics

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


def unsupported_for_generation(method: str) -> str | None:
    """Why ``method`` cannot run on generation tasks (a causal LM writing answers), or None."""
    spec = METHODS[method]
    if spec.uses:
        return "it runs the model through each task's classifier, which a generation task does not have"
    kinds = {need.kind for need in spec.needs} - {"gram"}
    if kinds:
        return f"it needs {', '.join(sorted(kinds))} statistics of a classifier's loss, not recorded for answers"
    return None


def _check_generation(cfg, src: str) -> None:
    """The lm suite's tasks are generation tasks answered by a causal LM, or calibration tasks (a causal LM's
    texts); the text suite's are neither."""
    from mergeflow.families import family_for_model_type
    from mergeflow.text.models import TEXT_ARCHS

    lm = cfg.suite == "lm"
    wrong = [t for t in cfg.tasks if TEXT_TASKS[t].causal != lm]
    if wrong and TEXT_TASKS[wrong[0]].calibration:
        raise MergeflowError(f"{src}: data.tasks: {wrong[0]!r} is a calibration task (a causal LM's texts): set "
                             "suite: lm")
    if wrong:
        raise MergeflowError(f"{src}: data.tasks: {wrong[0]!r} is "
                             + ("not a generation task; the lm suite's tasks are answered by a causal language model "
                                f"({', '.join(t for t in TEXT_TASKS if TEXT_TASKS[t].generative)})" if lm else
                                "a generation task: set suite: lm (the text suite classifies and scores sequences)"))
    if not lm:
        return
    arch = cfg.raw["model"]["arch"]
    if arch in TEXT_ARCHS and family_for_model_type(TEXT_ARCHS[arch]["model_type"], arch).name != "hf-decoder":
        raise MergeflowError(f"{src}: model.arch = {arch!r} is an encoder; the lm suite's tasks need a causal "
                             "language model (e.g. mf-llama-small)")
    for method in [*cfg.raw["merge"]["methods"], *cfg.raw["sweeps"]]:
        why = unsupported_for_generation(method)
        if why is not None:
            raise MergeflowError(f"{src}: merge.methods: {method!r} is not available for the lm suite: {why}")
    _check_calibration(cfg, src)


def _check_calibration(cfg, src: str) -> None:
    """A run of calibration tasks merges published experts and scores nothing itself: each task's expert is
    imported, its texts are local, and every scale is a number (no validation split to choose one on)."""
    calibration = [t for t in cfg.tasks if TEXT_TASKS[t].calibration]
    if not calibration:
        return
    if len(calibration) != len(cfg.tasks):
        other = next(t for t in cfg.tasks if not TEXT_TASKS[t].calibration)
        raise MergeflowError(f"{src}: data.tasks: {other!r} is scored by mergeflow and {calibration[0]!r} is a "
                             "calibration task, scored outside: a run holds one kind or the other")
    raw = cfg.raw
    if raw["data"].get("local_dir") is None or raw["data"]["download"]:
        raise MergeflowError(f"{src}: data.local_dir must name the folder of the calibration texts "
                             f"(<local_dir>/<task>/texts.txt) and data.download be false: they cannot be downloaded")
    imported = (raw["model"].get("import") or {}).get("tasks") or {}
    missing = [t for t in calibration if t not in imported]
    if missing:
        raise MergeflowError(f"{src}: model.import.tasks: no expert for {missing[0]!r}; a calibration task's expert "
                             "is a published model (one Hugging Face folder per task)")
    for run in cfg.merge_runs():
        key = METHODS[run.method].scale
        if key is not None and run.hparams.get(key) == "auto":
            raise MergeflowError(f"{src}: merge.{run.method}.{key} = 'auto': calibration tasks are scored outside "
                                 "mergeflow, so there is no validation split to choose it on; set a number")


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
        t = TEXT_TASKS[task]
        fits = fitting_metrics(t)
        if metric not in fits:
            kind = ("a calibration" if t.calibration else "a generation" if t.generative else
                    "a regression" if t.regression else "a classification")
            raise MergeflowError(f"{src}: data.metrics.{task} = {metric!r}: {task} is {kind} task, "
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
    _check_generation(cfg, src)
    for method in [*raw["merge"]["methods"], *raw["sweeps"]]:
        why = unsupported(method)
        if why is not None:
            raise MergeflowError(f"{src}: merge.methods: {method!r} is not available for the text suite: {why}")
