"""``params.yaml``: loading, validation against the JSON schema, and typed access.

Validation happens before any work: a wrong key, type or range stops with one line naming the key, the
value and what is allowed. The merge runs (one per method plus one per sweep point) and the statistics
artifacts ("variants") they need are derived here, from the method registry, so that the CLI and both
engines agree on them.
"""

from __future__ import annotations

import importlib
import importlib.resources
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from mergeflow.archs import config_file
from mergeflow.data import TASKS
from mergeflow.errors import MergeflowError
from mergeflow.merge import METHODS
from mergeflow.merge.registry import SAFE_NAME, merge_schema, sweeps_schema
from mergeflow.variant import Variant  # noqa: F401  (part of this module's interface)
from mergeflow.workspace import check_path, is_path_like, overlaps

DEFAULT_PARAMS = Path("params.yaml")
MAX_PARAMS_BYTES = 1 << 20  # a params file is a few kilobytes
SWEEP_SEP = "--"


@cache
def schema() -> dict:
    """The JSON schema of params.yaml: workflow/schemas/params.schema.yaml (shipped with the package), its
    ``merge`` section built from the method registry, the one place a method's hyper-parameters are declared."""
    text = importlib.resources.files("mergeflow").joinpath("params.schema.yaml").read_text()
    full = yaml.safe_load(text)
    full["properties"]["merge"] = merge_schema(METHODS)
    full["properties"]["sweeps"] = sweeps_schema(METHODS)
    return full


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _describe(error: jsonschema.ValidationError, source: str) -> str:
    key = _key(error.absolute_path)
    value = error.instance
    v = error.validator
    if v == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(value) - set(allowed)) if isinstance(value, dict) else []
        where = f"{key}." if error.absolute_path else ""
        return (f"{source}: unknown key {where}{extra[0] if extra else '?'}; allowed keys"
                f"{' under ' + key if error.absolute_path else ''}: {', '.join(allowed) or '(none)'}")
    if v == "required":
        return f"{source}: {key}: {error.message}"
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        sign = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[v]
        return f"{source}: {key} = {value!r}: must be {sign} {error.validator_value}"
    if v == "enum":
        return f"{source}: {key} = {value!r}: must be one of {', '.join(map(str, error.validator_value))}"
    if v == "oneOf":  # a scale: a number in a range, or auto
        number = error.validator_value[0]
        low = "(" if "exclusiveMinimum" in number else "["
        high = ")" if "exclusiveMaximum" in number else "]"
        lo = number.get("minimum", number.get("exclusiveMinimum", "-inf"))
        hi = number.get("maximum", number.get("exclusiveMaximum", "inf"))
        return f"{source}: {key} = {value!r}: must be a number in {low}{lo}, {hi}{high} or 'auto'"
    if v == "type":
        return f"{source}: {key} = {value!r}: must be of type {error.validator_value}"
    if v == "pattern":
        return (f"{source}: {key} = {value!r}: must be a name of letters, digits and _ . + - (it becomes part of "
                "run names, file names and commands)")
    return f"{source}: {key} = {value!r}: {error.message}"


def validate(raw: Any, source: str = "params.yaml") -> None:
    """Raise :class:`MergeflowError` with one line for the first schema violation."""
    if not isinstance(raw, dict):
        raise MergeflowError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        # the deepest error of the first branch names the key most precisely
        error = errors[0]
        if error.context:
            error = min(error.context, key=lambda e: -len(e.absolute_path))
            error = errors[0] if error.validator == "const" else error
        raise MergeflowError(_describe(error, source))


@dataclass(frozen=True)
class MergeRun:
    """One merge to perform: a method with its resolved hyper-parameters (a sweep point overrides one)."""

    name: str
    method: str
    hparams: dict[str, Any]
    sweep: tuple[str, Any] | None = None
    variants: tuple[Variant, ...] = field(default=())


@dataclass(frozen=True)
class Config:
    """Typed view of a validated params.yaml. ``raw`` keeps the whole mapping (for provenance)."""

    raw: dict[str, Any]
    source: str = "params.yaml"

    def __getattr__(self, section: str) -> Any:
        if section in self.raw:
            value = self.raw[section]
            return _Section(value, section) if isinstance(value, dict) else value
        raise AttributeError(section)

    @property
    def suite(self) -> str:
        """``vision`` (open_clip image encoders, the default) or ``text`` (:mod:`mergeflow.stages.text`)."""
        return self.raw.get("suite", "vision")

    @property
    def tasks(self) -> list[str]:
        return list(self.raw["data"]["tasks"])

    def block(self, method: str) -> dict[str, Any]:
        return dict(self.raw["merge"].get(method) or {})

    def merge_runs(self) -> list[MergeRun]:
        """The base run of every configured method, then every sweep point, in params order."""
        seed = int(self.raw["exemplars"]["seed"])
        runs = []
        for method in self.raw["merge"]["methods"]:
            hp = METHODS[method].resolve(self.block(method))
            runs.append(MergeRun(method, method, hp, None, METHODS[method].variants(hp, seed)))
        for method, params in self.raw["sweeps"].items():
            for param, values in params.items():
                for value in values:
                    hp = METHODS[method].resolve({**self.block(method), param: value})
                    name = f"{method}{SWEEP_SEP}{param}-{value}"
                    runs.append(MergeRun(name, method, hp, (param, value), METHODS[method].variants(hp, seed)))
        return runs

    def run_inputs(self, run: MergeRun) -> list[str]:
        """What a merge run reads beyond the base, heads, experts and prepared splits: its statistics
        folders and, for a method built on another run's model (Surgery), that model."""
        files = [f"data/features/{v.name}" for v in run.variants]
        if "merged" in METHODS[run.method].uses:
            files.append(f"models/merged/{run.hparams['base']}.safetensors")
        return files

    def run(self, name: str) -> MergeRun:
        for run in self.merge_runs():
            if run.name == name:
                return run
        known = ", ".join(r.name for r in self.merge_runs())
        raise MergeflowError(f"{self.source}: no merge run {name!r}; configured runs: {known}")

    def variants(self) -> list[Variant]:
        """Every statistics artifact the configured runs need, without duplicates, in first-use order."""
        seen: dict[str, Variant] = {}
        for run in self.merge_runs():
            for v in run.variants:
                seen.setdefault(v.name, v)
        return list(seen.values())

    def models(self) -> list[str]:
        """Everything ``evaluate`` scores: zero-shot, the individual experts and every merge run."""
        return ["zeroshot", "individual", *(r.name for r in self.merge_runs())]


class _Section:
    """Attribute access to a params section: ``cfg.finetune.lr``."""

    def __init__(self, data: Any, path: str):
        self._data, self._path = data, path

    def __getattr__(self, key: str) -> Any:
        try:
            value = self._data[key]
        except (KeyError, TypeError):
            raise AttributeError(f"{self._path}.{key}") from None
        return _Section(value, f"{self._path}.{key}") if isinstance(value, dict) else value

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def to_dict(self) -> dict:
        return dict(self._data)


def _non_finite(value: Any, key: str = "") -> str | None:
    """The key of the first NaN or infinite number in ``value`` (YAML's .nan/.inf pass a JSON schema)."""
    if isinstance(value, float) and not math.isfinite(value):
        return key
    if isinstance(value, dict):
        items = ((f"{key}.{k}" if key else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{key}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for k, v in items:
        found = _non_finite(v, k)
        if found is not None:
            return found
    return None


def _check_names_and_paths(cfg: Config) -> None:
    """Every value that becomes a name or a path: a plain word, inside the workspace unless absolute on purpose."""
    src, raw = cfg.source, cfg.raw
    if not SAFE_NAME.fullmatch(str(raw["name"])):
        raise MergeflowError(f"{src}: name = {raw['name']!r}: must be a name of letters, digits and _ . + -")
    arch = raw["model"]["arch"]
    # a text base may be a Hugging Face Hub id, owner/name (a name for the Hub, never a path here)
    parts = str(arch).split("/", 1) if cfg.suite != "vision" else [str(arch)]
    if not all(SAFE_NAME.fullmatch(part) and not part.startswith(".") for part in parts):
        raise MergeflowError(f"{src}: model.arch = {arch!r}: must be a name of letters, digits and _ . + -"
                             + (" (or a Hub id, owner/name)" if cfg.suite != "vision" else ""))
    if cfg.suite == "vision" and config_file(arch) is None:
        raise MergeflowError(f"{src}: model.arch = {arch!r}: unknown architecture (ours: mf-vit-micro, mf-vit-small, "
                             "...; open_clip's: ViT-B-32, ViT-B-16, ViT-L-14, ...)")
    pretrained = raw["model"]["pretrained"]
    if pretrained is not None:
        if is_path_like(pretrained):
            check_path("model.pretrained", pretrained, src, absolute_ok=True)
        elif not SAFE_NAME.fullmatch(pretrained):
            raise MergeflowError(f"{src}: model.pretrained = {pretrained!r}: neither a tag (letters, digits, "
                                 "_ . + -) nor a checkpoint path")
    data = raw["data"]
    check_path("data.raw_dir", data["raw_dir"], src, absolute_ok=False)
    local = data.get("local_dir")
    if local is not None:
        check_path("data.local_dir", local, src, absolute_ok=True)
        if overlaps(local, data["raw_dir"]):
            raise MergeflowError(f"{src}: data.local_dir = {local!r} overlaps data.raw_dir = {data['raw_dir']!r}: the "
                                 "pipeline replaces what is in raw_dir; keep your copies in a folder of their own")
    real = [t for t in cfg.tasks if t in TASKS and TASKS[t].kind == "real"]
    if real and not data["download"] and local is None:
        raise MergeflowError(f"{src}: data.download is false but data.local_dir is not set: name the folder that "
                             f"holds your copies of {', '.join(real)} as <local_dir>/<task>/ (read in place, "
                             "never written)")
    spec = raw["model"].get("import") or {}
    if "root" in spec:
        check_path("model.import.root", spec["root"], src, absolute_ok=True)
    for key in ("base",):
        if spec.get(key) is not None:
            check_path(f"model.import.{key}", spec[key], src, absolute_ok=False)
    for task, theirs in (spec.get("tasks") or {}).items():
        check_path(f"model.import.tasks.{task}", theirs, src, absolute_ok=False)


def _check_semantics(cfg: Config) -> None:
    src = cfg.source
    bad = _non_finite(cfg.raw)
    if bad is not None:
        raise MergeflowError(f"{src}: {bad} = {_lookup(cfg.raw, bad)!r}: must be a finite number")
    _check_names_and_paths(cfg)
    if cfg.suite != "vision":  # text and lm: the text stages' suites
        # by name, not by an import statement: mergeflow.dag counts imports as code dependencies, and no vision
        # stage runs this check (the text stages import the module themselves)
        importlib.import_module("mergeflow.text.checks").check(cfg)
    for key in ("epochs", "warmup_ratio"):
        if cfg.suite == "vision" and cfg.raw["finetune"].get(key) is not None:
            raise MergeflowError(f"{src}: finetune.{key} is for the text suite; the image suite counts steps "
                                 f"(finetune.steps, finetune.warmup_steps)")
    for key, what in (("skills_size", "skills corpus"), ("formats_size", "corpus of the tasks' formats")):
        if cfg.suite != "lm" and cfg.raw["pretrain"].get(key):
            raise MergeflowError(f"{src}: pretrain.{key} is for the lm suite (a causal LM's {what})")
    if cfg.suite == "vision" and cfg.raw["data"].get("metrics"):
        raise MergeflowError(f"{src}: data.metrics is for the text suite; every image task is scored by accuracy")
    for task in cfg.tasks if cfg.suite == "vision" else ():
        if task not in TASKS:
            raise MergeflowError(f"{src}: data.tasks: unknown task {task!r}; known tasks: {', '.join(sorted(TASKS))}")
    for task in (cfg.raw["model"].get("import") or {}).get("tasks") or {}:
        if task not in cfg.tasks:
            raise MergeflowError(f"{src}: model.import.tasks: {task!r} is not in data.tasks")
    merge = cfg.raw["merge"]
    for method in merge["methods"]:
        try:
            METHODS[method].resolve(cfg.block(method))
        except MergeflowError as exc:
            raise MergeflowError(f"{src}: merge.{method}: {exc}") from None
    for method in merge["methods"]:
        base_run = METHODS[method].resolve(cfg.block(method)).get("base") if "merged" in METHODS[method].uses else None
        if base_run is not None and (base_run not in merge["methods"] or METHODS[base_run].task_aware
                                     or base_run == method):
            single = [m for m in merge["methods"] if not METHODS[m].task_aware and m != method]
            raise MergeflowError(f"{src}: merge.{method}.base = {base_run!r}: must be a single-model method of "
                                 f"merge.methods ({', '.join(single) or 'none configured'})")
    pool = int(cfg.raw["exemplars"]["pool"])
    for method, params in cfg.raw["sweeps"].items():
        if method not in merge["methods"]:
            raise MergeflowError(f"{src}: sweeps.{method}: {method!r} is not in merge.methods "
                                 f"({', '.join(merge['methods'])})")
        spec = METHODS[method]
        base = spec.resolve(cfg.block(method))
        for param, values in params.items():
            if param not in spec.hparams:
                raise MergeflowError(f"{src}: sweeps.{method}.{param}: {method} has no hyper-parameter {param!r}; "
                                     f"accepted: {', '.join(spec.hparams)}")
            for value in values:
                if param == "base" and "merged" in spec.uses and value not in merge["methods"]:
                    raise MergeflowError(f"{src}: sweeps.{method}.base = {value!r}: must be a single-model method "
                                         f"of merge.methods ({', '.join(merge['methods'])})")
                if value == base[param]:
                    raise MergeflowError(f"{src}: sweeps.{method}.{param} = {value!r}: equals the base value; "
                                         "sweep points must differ from merge." + f"{method}.{param}")
                try:
                    spec.resolve({**cfg.block(method), param: value})
                except MergeflowError as exc:
                    raise MergeflowError(f"{src}: sweeps.{method}.{param}: {exc}") from None
    for run in cfg.merge_runs():
        for v in run.variants:
            if v.count > pool:  # every kind reads the first n exemplars of the pool
                raise MergeflowError(f"{src}: {run.name} needs {v.count} exemplars per task but exemplars.pool = "
                                     f"{pool}; raise exemplars.pool to at least {v.count}")


def _lookup(raw: Any, key: str) -> Any:
    value = raw
    for part in key.replace("[", ".[").split("."):
        value = value[int(part[1:-1])] if part.startswith("[") else value[part]
    return value


def load(path: str | Path = DEFAULT_PARAMS) -> Config:
    """Read, validate and type a params file (a suites file gives a :class:`mergeflow.suites.Suites`). Every
    problem is a one-line :class:`MergeflowError`."""
    path = Path(path)
    if path.is_dir():
        raise MergeflowError(f"{path}: a folder, not a params file (--params names a YAML file)")
    if path.exists() and not path.is_file():
        raise MergeflowError(f"{path}: not a regular file (a device, pipe or socket); --params names a YAML file")
    if not path.is_file():
        raise MergeflowError(f"{path}: params file not found")
    if path.stat().st_size > MAX_PARAMS_BYTES:
        raise MergeflowError(f"{path}: {path.stat().st_size} bytes: too large for a params file; not read")
    try:
        raw = yaml.safe_load(path.read_text())
    except UnicodeDecodeError as exc:
        raise MergeflowError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise MergeflowError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if isinstance(raw, dict) and "suites" in raw:
        # a suites file (mergeflow.suites), imported by name as the text checks are: no stage reads one
        return importlib.import_module("mergeflow.suites").from_mapping(raw, str(path), load)
    return from_mapping(raw, str(path))


def from_mapping(raw: Any, source: str = "params.yaml") -> Config:
    """Validate and type an already-parsed params mapping (Snakemake's ``config``)."""
    validate(raw, source)
    cfg = Config(raw, source)
    _check_semantics(cfg)
    return cfg
