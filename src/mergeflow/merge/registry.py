"""The merge-method registry: name → pure function, paper, hyper-parameters and the statistics it needs."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mergeflow.errors import MergeflowError
from mergeflow.variant import Variant

# A free-form string hyper-parameter (another run's name, say) becomes part of a run name, a file name and a
# command argument: letters, digits and _ . + - only, so that no value can reach a shell as anything but a word.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


@dataclass(frozen=True)
class HParam:
    """A hyper-parameter: default, type and allowed values.

    ``low``/``high`` bound numbers, or a list's items (``open_low``/``open_high`` exclude the bound);
    ``choices`` lists allowed values (of a list's items); ``min_items`` the shortest list allowed; ``auto``
    allows the string ``auto`` (a scale chosen on validation by the merge stage); ``pipeline`` marks
    parameters the stage consumes (exemplar counts) rather than the function. The JSON schema of
    ``params.yaml``'s ``merge`` section is built from these (:func:`merge_schema`).
    """

    default: Any
    kind: type | tuple[type, ...]
    doc: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    choices: Sequence[Any] | None = None
    auto: bool = False
    pipeline: bool = False
    open_high: bool = False
    min_items: int = 0

    def check(self, name: str, value: Any) -> Any:
        if self.auto and value == "auto":
            return value
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, value
        if not ok:
            allowed = " or ".join(k.__name__ for k in kinds) + (" or 'auto'" if self.auto else "")
            raise MergeflowError(f"hyper-parameter {name} = {value!r}: must be {allowed}")
        if self.choices is not None:
            items = value if isinstance(value, list | tuple) else [value]
            for item in items:
                if item not in self.choices:
                    raise MergeflowError(f"hyper-parameter {name} = {value!r}: allowed values are "
                                         f"{', '.join(map(str, self.choices))}")
        if isinstance(value, str) and self.choices is None and not SAFE_NAME.fullmatch(value):
            raise MergeflowError(f"hyper-parameter {name} = {value!r}: must be a name of letters, digits and "
                                 "_ . + - (it becomes part of run names, file names and commands)")
        if isinstance(value, list | tuple) and len(value) < self.min_items:
            raise MergeflowError(f"hyper-parameter {name} = {value!r}: needs at least {self.min_items} item(s)")
        for item in value if isinstance(value, list | tuple) else [value]:
            self._check_bounds(name, value, item)
        return value

    def _check_bounds(self, name: str, value: Any, item: Any) -> None:
        if not isinstance(item, int | float) or isinstance(item, bool):
            return
        if not math.isfinite(item):
            raise MergeflowError(f"hyper-parameter {name} = {value!r}: must be finite")
        if self.low is not None and (item < self.low or (self.open_low and item == self.low)):
            raise MergeflowError(f"hyper-parameter {name} = {value!r}: must be {'>' if self.open_low else '>='} "
                                 f"{self.low}")
        if self.high is not None and (item > self.high or (self.open_high and item == self.high)):
            raise MergeflowError(f"hyper-parameter {name} = {value!r}: must be {'<' if self.open_high else '<='} "
                                 f"{self.high}")

    def json_schema(self) -> dict[str, Any]:
        """This hyper-parameter as a JSON schema (what :meth:`check` accepts)."""
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
        scalar: dict[str, Any] = {}
        if self.choices is not None:
            scalar["enum"] = list(self.choices)
        else:
            types = [names[k] for k in kinds if k is not list]
            if "number" in types:
                types = [t for t in types if t != "integer"]
            if types:
                scalar["type"] = types[0] if len(types) == 1 else types
            if "string" in types:
                scalar["pattern"] = f"^{SAFE_NAME.pattern}$"
        if self.low is not None:
            scalar["exclusiveMinimum" if self.open_low else "minimum"] = self.low
        if self.high is not None:
            scalar["exclusiveMaximum" if self.open_high else "maximum"] = self.high
        if list in kinds:
            if "type" not in scalar and "enum" not in scalar:
                scalar["type"] = "number"
            schema = {"type": "array", "items": scalar}
            if self.choices is not None:
                schema["uniqueItems"] = True
            if self.min_items:
                schema["minItems"] = self.min_items
        else:
            schema = scalar
        schema["description"] = self.doc
        if self.auto:
            doc = self.doc if "auto" in self.doc else f"{self.doc} (or auto: chosen on validation over the scale grid)"
            return {"description": doc,
                    "oneOf": [{k: v for k, v in schema.items() if k != "description"}, {"const": "auto"}]}
        return schema


@dataclass(frozen=True)
class Need:
    """Statistics a method reads: ``kind`` of the model ``θ_pre + scale·T_k`` on ``count`` exemplars.

    ``scale`` is a number or the name of the hyper-parameter holding it (CAT's ``alpha``); ``count`` names
    the hyper-parameter holding the exemplar count; ``when`` limits the need to some settings.
    """

    kind: str  # gram (with sqnorm and rows) | fisher | grad
    scale: float | str
    count: str
    when: Callable[[dict], bool] = field(default=lambda hp: True)


@dataclass(frozen=True)
class MethodSpec:
    """A registered merge method."""

    name: str
    pretty: str
    paper: str
    fn: Callable[..., dict]
    hparams: dict[str, HParam]
    needs: tuple[Need, ...] = ()
    scale: str | None = None  # the hyper-parameter that scales the merged task vector (tunable with `auto`)
    task_aware: bool = False  # the result keeps a per-task part: the task must be known at inference
    uses: tuple[str, ...] = ()  # what of mergeflow.merge.context.TaskData it reads: unlabeled, validation, merged
    training: bool = False  # it optimises something on data (its wall time is part of its cost)
    per_unit: bool = False  # each parameter's result depends on that parameter alone: it can be streamed
    row_kinds: tuple[str, ...] = ()  # unit kinds whose rows are merged independently (streamed in row blocks)
    prepare: Callable[..., dict] | None = None  # whole-model quantities a streamed merge computes first

    def resolve(self, given: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults overlaid with ``given``, each value checked; unknown names list the accepted ones."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.hparams))
        if unknown:
            raise MergeflowError(f"{self.name}: unknown hyper-parameter {unknown[0]!r}; accepted: "
                                 f"{', '.join(self.hparams) or '(none)'}")
        return {name: hp.check(name, given.get(name, hp.default)) for name, hp in self.hparams.items()}

    def variants(self, hp: dict[str, Any], seed: int) -> tuple:
        """The statistics artifacts (:class:`mergeflow.variant.Variant`) this method needs at ``hp``."""
        out = []
        for need in self.needs:
            if need.when(hp):
                scale = hp[need.scale] if isinstance(need.scale, str) else need.scale
                out.append(Variant(need.kind, str(scale), int(hp[need.count]), int(seed)))
        return tuple(out)

    def stat_kinds(self, hp: dict[str, Any]) -> set[str]:
        return {need.kind for need in self.needs if need.when(hp)}


METHODS: dict[str, MethodSpec] = {}


def register(name: str, pretty: str, paper: str, hparams: dict[str, HParam], needs: Sequence[Need] = (),
             scale: str | None = None, *, task_aware: bool = False, uses: Sequence[str] = (), training: bool = False,
             per_unit: bool = False, row_kinds: Sequence[str] = (), prepare: Callable[..., dict] | None = None):
    """Decorator: register a pure merge function under ``name``.

    A ``task_aware`` method returns a :mod:`mergeflow.merge.task_aware` result instead of a state dict; a
    method that ``uses`` the encoder or data gets them as ``data=`` (:class:`mergeflow.merge.context.TaskData`).
    A ``per_unit`` method merges every parameter from that parameter's task vectors and statistics alone, so
    :mod:`mergeflow.merge.stream` may merge a model a layer at a time; ``row_kinds`` names the unit kinds
    whose rows it merges independently (a vocabulary table may then be read in row blocks). A method with a
    whole-model step (TIES's trim thresholds) is per unit given ``prepare(parts, **hp) -> dict``: that step
    computed from the model's parts (``parts()`` yields ``(pretrained, experts)`` part by part), its result
    passed to the function as extra keyword arguments.
    """
    unknown = set(uses) - {"unlabeled", "validation", "merged"}
    if unknown:
        raise ValueError(f"merge method {name!r}: unknown use {sorted(unknown)[0]!r}")

    def wrap(fn):
        if name in METHODS:
            raise ValueError(f"merge method {name!r} registered twice")
        METHODS[name] = MethodSpec(name, pretty, paper, fn, dict(hparams), tuple(needs), scale, task_aware,
                                   tuple(uses), training, per_unit, tuple(row_kinds), prepare)
        return fn

    return wrap


def sweeps_schema(methods: dict[str, MethodSpec] | None = None) -> dict[str, Any]:
    """The JSON schema of ``params.yaml``'s ``sweeps`` section: every sweep value is checked by the schema of
    the hyper-parameter it replaces (a value that becomes a run name is checked like the main value)."""
    methods = METHODS if methods is None else methods
    properties = {}
    for name, spec in methods.items():
        items = {k: {"type": "array", "minItems": 1, "items": hp.json_schema()} for k, hp in spec.hparams.items()}
        properties[name] = {"type": "object", "additionalProperties": False, "properties": items}
    return {"type": "object", "additionalProperties": False, "properties": properties,
            "description": "built from the method registry (mergeflow.merge): values per hyper-parameter"}


def merge_schema(methods: dict[str, MethodSpec] | None = None) -> dict[str, Any]:
    """The JSON schema of ``params.yaml``'s ``merge`` section: ``methods`` and one block per method."""
    methods = METHODS if methods is None else methods
    properties: dict[str, Any] = {"methods": {"type": "array", "minItems": 1, "uniqueItems": True,
                                              "items": {"enum": sorted(methods)}}}
    for name, spec in methods.items():
        properties[name] = {"type": "object", "additionalProperties": False, "description": f"{spec.pretty}: "
                            f"{spec.paper}", "properties": {k: hp.json_schema() for k, hp in spec.hparams.items()}}
    return {"type": "object", "additionalProperties": False, "required": ["methods"], "properties": properties,
            "description": "built from the method registry (mergeflow.merge)"}


def alpha(default: float | str = 0.3, doc: str = "scale of the merged task vector") -> HParam:
    return HParam(default, float, doc, low=0.0, high=10.0, auto=True)
